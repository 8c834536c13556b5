"""Rows to JSON (each value type's encoding) and key values to resume tokens and back."""

from __future__ import annotations

import base64
import ipaddress
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from functools import partial
from itertools import repeat
from typing import Any, Final, TypeAlias, cast

import orjson

from ..._exceptions import ConfigError
from ..._records import RecordBlock, Rejected

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_PAGE_SIZE",
    "KeyToken",
    "SqlBlock",
    "key_from_token",
    "key_token",
]

DEFAULT_PAGE_SIZE: Final = 2000
DEFAULT_CONNECT_TIMEOUT: Final = 10.0

#: a key value as stored in a checkpoint (see the module docstring)
KeyToken: TypeAlias = int | float | str | list[str]

_RAW_LIMIT: Final = 64 * 1024


@dataclass(slots=True)
class SqlBlock(RecordBlock):
    """A :class:`RecordBlock` whose records carry their key: ``keys[i]`` is the resume token
    of ``records[i]``'s key value. (If ``RecordBlock`` gains a ``keys`` field, this class is
    the same thing under another name.)"""

    keys: list[KeyToken] | None = None


# --------------------------------------------------------------------------- encoding


def _b64(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(data).decode("ascii")


def _iso_duration(td: timedelta) -> str:
    """A ``timedelta`` as an ISO-8601 duration (``-`` in front when negative)."""
    us = (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds
    sign = "-" if us < 0 else ""
    days, rest = divmod(abs(us), 86_400_000_000)
    hours, rest = divmod(rest, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    seconds, micros = divmod(rest, 1_000_000)
    out = f"{sign}P" + (f"{days}D" if days else "")
    clock = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if seconds or micros:
        clock += f"{seconds}.{micros:06d}".rstrip("0") + "S" if micros else f"{seconds}S"
    if clock:
        out += "T" + clock
    return out if days or clock else "PT0S"


_ADDRESSES: Final = (
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
)


def _default(obj: Any) -> Any:
    """orjson's ``default``: the values it does not encode natively (see the table)."""
    if isinstance(obj, Decimal):
        return format(obj, "f")
    if isinstance(obj, bytes | bytearray | memoryview):
        return _b64(obj)
    if isinstance(obj, uuid.UUID):  # asyncpg's UUID is a subclass, which orjson leaves to us
        return str(obj)
    if isinstance(obj, timedelta):
        return _iso_duration(obj)
    if isinstance(obj, _ADDRESSES):
        return str(obj)
    if isinstance(obj, tuple):  # geometric types (tuple subclasses)
        return list(obj)
    # asyncpg types, by shape (asyncpg is optional)
    items = getattr(obj, "items", None)
    if callable(items):  # asyncpg.Record: a named composite value
        return dict(items())
    if hasattr(obj, "isempty") and hasattr(obj, "lower_inc"):  # asyncpg.Range
        return {
            "lower": obj.lower,
            "upper": obj.upper,
            "lower_inc": obj.lower_inc,
            "upper_inc": obj.upper_inc,
            "empty": obj.isempty,
        }
    as_string = getattr(obj, "as_string", None)
    if callable(as_string):  # asyncpg.BitString
        return as_string()
    raise TypeError(f"values of type {type(obj).__name__} have no JSON encoding")


_dumps: Final = partial(orjson.dumps, default=_default)


def _safe_value(value: Any) -> Any:
    """``value`` if it can be encoded, else its ``repr`` (for a rejected row's ``raw``)."""
    try:
        return orjson.Fragment(_dumps(value))
    except TypeError:
        text = repr(value)
        return text if len(text) <= _RAW_LIMIT else text[:_RAW_LIMIT] + "…"


def _bad_column(row: dict[str, Any]) -> tuple[str, str]:
    """The first column of ``row`` that cannot be encoded, and why."""
    for name, value in row.items():
        try:
            _dumps(value)
        except TypeError as exc:
            return name, str(exc)
    return "?", "cannot encode the row"  # pragma: no cover - only called for a failed row


def _reject(row: dict[str, Any], key: Any, position: int) -> Rejected:
    column, why = _bad_column(row)
    key_text = repr(key)
    if len(key_text) > 200:
        key_text = key_text[:200] + "…"
    raw = {name: _safe_value(value) for name, value in row.items()}
    return Rejected(
        raw,
        position,
        f"row {position} (key {key_text}): cannot encode column {column!r} as JSON: {why}",
    )


def _encode_page(
    rows: Sequence[Sequence[Any]],
    names: tuple[str, ...],
    key_index: int,
    first_position: int,
) -> SqlBlock:
    """One page of rows → a block of JSON objects, positions from ``first_position``."""
    n = len(rows)
    dicts = list(map(dict, map(zip, repeat(names), rows)))
    keys = [row[key_index] for row in rows]
    try:  # the common case, at C speed: every row encodes
        records = list(map(_dumps, dicts))
    except TypeError:
        records = []
        positions: list[int] = []
        tokens: list[KeyToken] = []
        rejects: list[Rejected] = []
        for position, (row, key) in enumerate(zip(dicts, keys, strict=True), first_position):
            try:
                data = _dumps(row)
                token = key_token(key)
            except TypeError:
                rejects.append(_reject(row, key, position))
                continue
            records.append(data)
            positions.append(position)
            tokens.append(token)
        block = SqlBlock(records, positions, rejects, keys=tokens)
    else:
        block = SqlBlock(
            records, list(range(first_position, first_position + n)), keys=_tokens(keys)
        )
    block.bytes_read = sum(map(len, block.records))
    return block


# --------------------------------------------------------------------------- key tokens


def _tokens(keys: list[Any]) -> list[KeyToken]:
    return [k if (t := type(k)) is int or t is str else key_token(k) for k in keys]


def key_token(value: Any) -> KeyToken:
    """The JSON form of a key value, for a checkpoint (see the module docstring).

    :class:`TypeError` for a type that cannot be a resume key.
    """
    t = type(value)
    if t is int or t is str:
        return cast(int | str, value)
    if t is float:
        return value if math.isfinite(value) else ["float", repr(value)]
    if isinstance(value, datetime):
        return ["datetime", value.isoformat()]
    if isinstance(value, date):
        return ["date", value.isoformat()]
    if isinstance(value, time):
        return ["time", value.isoformat()]
    if isinstance(value, uuid.UUID):
        return ["uuid", str(value)]
    if isinstance(value, Decimal):
        return ["decimal", str(value)]
    if isinstance(value, bytes | bytearray | memoryview):
        return ["bytes", _b64(value)]
    if isinstance(value, int) and not isinstance(value, bool):  # an int subclass
        return int(value)
    if isinstance(value, str):
        return str(value)
    raise TypeError(f"a key of type {t.__name__} cannot be used to resume")


_FROM_TEXT: Final[dict[str, Callable[[str], Any]]] = {
    "float": float,
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "time": time.fromisoformat,
    "uuid": uuid.UUID,
    "decimal": Decimal,
    "bytes": lambda text: base64.b64decode(text, validate=True),
}


def key_from_token(token: Any) -> Any:
    """The key value of a token made by :func:`key_token`; a plain value is returned as is.

    :class:`ConfigError` for a malformed token.
    """
    if isinstance(token, list | tuple):
        if len(token) == 2 and isinstance(token[1], str) and token[0] in _FROM_TEXT:
            try:
                return _FROM_TEXT[token[0]](token[1])
            except (ValueError, InvalidOperation) as exc:
                raise ConfigError(f"invalid resume key {token!r}: {exc}", field="after") from None
        raise ConfigError(f"invalid resume key {token!r}", field="after")
    return token
