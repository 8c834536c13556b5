"""SQL sources: rows of a query or table, streamed by keyset pagination on a unique key.

``open_sql_source("sqlite:///export.db", table="accounts", key="id")`` or
``open_sql_source("postgresql://user@host/db", query="SELECT ...", key="id")``: each row becomes
one JSON object (column name → value), read one page at a time::

    SELECT * FROM (<query>) AS q WHERE q."key" > $last ORDER BY q."key" LIMIT <page_size + 1>

(the first page has ``WHERE q."key" IS NOT NULL`` instead). Only one page of rows is held at a
time, so memory does not grow with the table; no transaction or cursor stays open between pages,
so a run of hours holds no snapshot on the server. Each page is fast when the planner can push
the key condition into the query and walk an index on the key (a plain table, or a simple
``SELECT ... FROM t WHERE ...``); a query it cannot see through (aggregates, ``DISTINCT``, window
functions) is evaluated again for every page, which is correct but slow on big inputs.

The key must be unique and non-null, in the order the database sorts it (the comparison and
``ORDER BY`` use the same collation, so text keys work in any collation). This is checked, not
assumed: a NULL key is a :class:`SourceError` from :meth:`SqlSource.check` (before anything is
sent; the probe is free on a ``NOT NULL`` or primary-key column, an index lookup on an indexed
one, one scan of the query otherwise); two equal keys next to each other, within a page or
across a page boundary (one row more than the page is fetched for that), are a
:class:`SourceError` when read.

Positions and resume
--------------------
A row's position is its 1-based ordinal in key order, counted from ``start_position + 1``: the
pipeline's positions (strictly increasing ints) and the Idempotency-Keys derived from them work
unchanged. Each block also carries ``keys``: the *resume token* of every record's key value, in
the same order as ``records``. A resumed run needs the token of the watermark's last record and
the watermark position, and nothing else: ``source.resumed(position=P, key=T)`` continues at the
first row whose key is greater than the key of ``T``, numbered ``P + 1`` on. Reading starts
there in the database (one index seek), not by reading and skipping ``P`` rows.

A token is JSON as it is for the common key types (an int or a string), else a ``[type, text]``
pair that :func:`key_from_token` turns back into the value the driver binds:

=================  =====================================  ============================
key value          token                                  e.g.
=================  =====================================  ============================
int                the int                                ``1234``
str                the string                             ``"ACC-00001234"``
float              the float (``["float", "inf"]``, ...)  ``1.5``
Decimal            ``["decimal", str(value)]``            ``["decimal", "10.50"]``
UUID               ``["uuid", canonical]``                ``["uuid", "6f1e…"]``
datetime           ``["datetime", isoformat]``            ``["datetime", "2026-11-28T12:00:00"]``
date               ``["date", isoformat]``                ``["date", "2026-11-28"]``
time               ``["time", isoformat]``                ``["time", "12:00:00"]``
bytes              ``["bytes", base64]``                  ``["bytes", "AP8="]``
=================  =====================================  ============================

Any other key type (bool, json, intervals, network addresses, ...) is a :class:`SourceError`
from :meth:`SqlSource.check`. Resuming assumes the rows up to the key did not change between the
runs (as a file source assumes its file did not): the positions after the key are counted from
``P + 1`` again.

JSON encoding of values
-----------------------
orjson encodes each row, natively where it can:

=========================================  ====================================================
value (PostgreSQL type / SQLite storage)   JSON
=========================================  ====================================================
NULL                                       ``null``
bool                                       ``true`` / ``false``
int (int2/4/8, oid; SQLite INTEGER)        a number, every digit kept: ``9007199254740993``
                                           stays exact in the JSON text (a reader that parses
                                           numbers as doubles rounds it; that is the reader's)
float (float4/8; SQLite REAL)              a number; NaN and ±Infinity have no JSON form and
                                           become ``null``
numeric / Decimal                          a string in plain notation as PostgreSQL prints it:
                                           ``"10.50"``, ``"0.0000001"``, ``"NaN"``. Not a
                                           number: a double cannot hold ``numeric(38,10)`` (or
                                           0.1) exactly, and most JSON readers parse numbers
                                           as doubles; the string keeps every digit and the
                                           scale (``"10.50"`` is not ``10.5``)
text, varchar, char, name, citext, enum,   a string
money (formatted by the server), others
without a binary codec (tsvector, ...)
date                                       ``"2026-11-28"``
timestamp (no time zone)                   ``"2026-11-28T12:00:00"``: naive stays naive
timestamptz                                ``"2026-11-28T12:00:00+00:00"``: the driver gives it
                                           in UTC, the offset is always written
time                                       ``"12:00:00"``, ``"12:00:00.500000"``, ``"24:00:00"``
timetz                                     ``"12:00:00+05:30"`` (ISO-8601 offset, east positive)
±infinity dates and timestamps             asyncpg's sentinels: ``"9999-12-31"``,
                                           ``"0001-01-01T00:00:00"`` (a limitation of the
                                           driver's decoder)
interval                                   an ISO-8601 duration, as PostgreSQL's ``iso_8601``
                                           interval style prints it: ``"P1Y2M-3DT4H5M6.5S"``.
                                           Not seconds: a month or a day is not a fixed number
                                           of seconds, and the driver's ``timedelta`` would
                                           turn one month into 30 days
uuid                                       ``"6f1e2d3c-…"`` (canonical, lower case)
bytea / BLOB                               a base64 string (standard alphabet, padded)
json, jsonb                                embedded as JSON, not as a string: ``{"a": [1]}``
                                           (the server's text, with any line break turned into
                                           a space so an NDJSON body stays one line per
                                           record). SQLite has no JSON type: TEXT holding JSON
                                           stays a string
arrays                                     lists (nested for multi-dimensional arrays), each
                                           element encoded by these rules
inet, cidr                                 ``"192.168.0.1/24"`` (their text)
ranges                                     ``{"lower": …, "upper": …, "lower_inc": …,
                                           "upper_inc": …, "empty": …}``
composite (row) types                      an object (named fields) or a list (anonymous row)
point, box, ... (geometric)                lists of numbers
bit, varbit                                ``"0101"``
=========================================  ====================================================

A row that cannot be encoded (SQLite TEXT that is not valid UTF-8, a value of a type none of
the above covers) is a :class:`Rejected` with its position, its key and the reason; the run
goes on. Its ``raw`` is the row with each unencodable value replaced by its ``repr``.

Errors
------
A bad URL, a missing database file, an unreachable server, a failed login, a missing table, a
query that does not compile, a key that is not a column of the query (the message lists the
columns), a key of an unsupported type or with NULLs: :class:`SourceError` (exit 2) from
:meth:`SqlSource.check`, which connects and runs the first page with ``LIMIT 1``; call it before
any request is sent. :meth:`SqlSource.blocks` raises the same errors if ``check()`` was not
called. No message contains the password of the URL (it is also registered with
:func:`asyncsync._redact.register_secret`); :attr:`SqlSource.name` is the URL without it.

Off the event loop: SQLite is driven by one dedicated thread per :meth:`SqlSource.blocks` (and
per :meth:`SqlSource.check`), which also encodes the rows; the loop only receives finished
blocks. A cancelled read interrupts the running statement (``sqlite3.Connection.interrupt``).
PostgreSQL is asyncpg's own protocol on the loop: each page is one execution of a statement
prepared once per connection; rows are encoded on the loop (a few ms per 2000-row page).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import math
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from functools import partial
from itertools import islice, pairwise, repeat
from operator import eq
from pathlib import Path
from typing import Any, Final, TypeAlias, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import orjson

from .._exceptions import ConfigError, SourceError
from .._records import RecordBlock, Rejected
from .._redact import redact, register_secret
from ._files import _Worker

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "KeyToken",
    "PostgresSource",
    "SqlBlock",
    "SqlSource",
    "SqliteSource",
    "display_url",
    "key_from_token",
    "key_token",
    "open_sql_source",
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


# --------------------------------------------------------------------------- URLs


def _password(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.password:
        return unquote(parts.password)
    for name, value in parse_qsl(parts.query):
        if name == "password" and value:
            return value
    return None


def display_url(url: str) -> str:
    """``url`` without its password (in the user info or a ``password=`` parameter)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}@{hostport}" if user else hostport
    query = parts.query
    if query:
        query = urlencode([(k, v) for k, v in parse_qsl(query) if k != "password"])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _quote(identifier: str) -> str:
    """An SQL identifier, double-quoted (same rule in PostgreSQL and SQLite)."""
    if "\x00" in identifier:
        raise ConfigError(f"identifier {identifier!r} contains a NUL character", field="key")
    return '"' + identifier.replace('"', '""') + '"'


def _normalise_query(query: str) -> str:
    text = query.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    if not text:
        raise ConfigError("--query is empty", field="query")
    return text


# --------------------------------------------------------------------------- the sources


class SqlSource:
    """Rows of a query (or a whole table) in key order: a :class:`Source` of kind ``"sql"``.

    Use :func:`open_sql_source`. ``after`` (a key value or its token) starts after that key;
    ``start_position`` is the position of the row with that key (positions continue from
    ``start_position + 1``). ``pages_read`` and ``rows_read`` count what was fetched.
    """

    kind = "sql"
    size: int | None = None
    scheme = ""

    def __init__(
        self,
        url: str,
        *,
        key: str,
        query: str | None = None,
        table: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        after: Any = None,
        start_position: int = 0,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        range_start: Any = None,
        range_end: Any = None,
    ) -> None:
        if (query is None) == (table is None):
            raise ConfigError("give exactly one of --query and --table", field="query")
        if not isinstance(key, str) or not key.strip():
            raise ConfigError("--key must name a column (unique, ordered)", field="key")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ConfigError(
                f"page size must be an int >= 1, got {page_size!r}", field="page_size"
            )
        if isinstance(start_position, bool) or not isinstance(start_position, int):
            raise ConfigError("start_position must be an int", field="start_position")
        if start_position < 0:
            raise ConfigError("start_position must be >= 0", field="start_position")
        if table is not None and not table.strip():
            raise ConfigError("--table is empty", field="table")
        if not connect_timeout > 0:
            raise ConfigError("connect timeout must be > 0", field="connect_timeout")
        self.url = url
        self._secret = _password(url)
        register_secret(self._secret)
        self.name = display_url(url)
        self.query = _normalise_query(query) if query is not None else None
        self.table = table.strip() if table is not None else None
        self.key = key.strip()
        self.page_size = page_size
        # a key range (range_start, range_end]: a shard of --shard/--processes (tokens)
        self.range_start = range_start
        self.range_end = range_end
        self._until_value = key_from_token(range_end) if range_end is not None else None
        if after is None:
            after = range_start
        self.after = after
        self._after_value = key_from_token(after) if after is not None else None
        self.start_position = start_position
        self.connect_timeout = connect_timeout
        self.pages_read = 0
        self.rows_read = 0
        self._checked = False

    def __repr__(self) -> str:
        what = f"table={self.table!r}" if self.table is not None else f"query={self.query!r}"
        return f"{type(self).__name__}({self.name!r}, {what}, key={self.key!r})"

    @property
    def identity(self) -> str:
        """What a checkpoint must match to resume: database, query or table, and key."""
        what = f"table {self.table}" if self.table is not None else f"query {self.query}"
        identity = f"{self.name} {what} key {self.key}"
        if self.range_start is not None or self.range_end is not None:
            bounds = orjson.dumps([self.range_start, self.range_end]).decode()
            identity += f" range {bounds}"
        return identity

    def _bound(self) -> tuple[Any, ...]:
        """The extra (last) statement parameter of a key range's upper bound, if any."""
        return () if self.range_end is None else (self._until_value,)

    def _copy(self, **changes: Any) -> SqlSource:
        """This source with some constructor arguments changed (``after`` reset unless given)."""
        options: dict[str, Any] = {
            "key": self.key,
            "query": self.query,
            "table": self.table,
            "page_size": self.page_size,
            "start_position": self.start_position,
            "connect_timeout": self.connect_timeout,
            "range_start": self.range_start,
            "range_end": self.range_end,
        }
        options.update(changes)
        clone = type(self)(self.url, **options)
        clone._checked = self._checked
        return clone

    def with_range(self, start: Any, end: Any) -> SqlSource:
        """This source limited to the keys in ``(start, end]`` (tokens; None: unbounded)."""
        return self._copy(range_start=start, range_end=end)

    async def plan_key_ranges(self, n: int) -> list[tuple[KeyToken | None, KeyToken | None]]:
        """Split the keys into at most ``n`` contiguous ranges ``(start, end]`` (key tokens,
        None for unbounded) that cover every row once: ``end`` of one is ``start`` of the
        next. The boundaries are the keys at ``k * rows / n`` (``percentile_disc`` on
        PostgreSQL, ``OFFSET`` on SQLite); equal boundaries are merged, so there are fewer
        than ``n`` ranges when there are fewer distinct boundaries (fewer rows than ``n``)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"the number of shards must be an integer >= 1, got {n!r}")
        bounds: list[KeyToken] = []
        for value in await self._boundaries(n):
            if value is None:
                continue
            token = self._token(value)
            if not bounds or token != bounds[-1]:
                bounds.append(token)
        edges: list[KeyToken | None] = [None, *bounds, None]
        return list(pairwise(edges))

    async def _boundaries(self, n: int) -> list[Any]:
        """The key values ending each range but the last, in key order."""
        raise NotImplementedError

    def _token(self, value: Any) -> KeyToken:
        try:
            return key_token(value)
        except TypeError as exc:
            raise self._error(f"key column {self.key!r}: {exc}") from None

    def resumed(self, *, position: int, key: Any) -> SqlSource:
        """This source continuing after ``key`` (a value or token), at position ``position + 1``."""
        return self._copy(after=key, start_position=position)

    async def check(self) -> None:
        """Connect, compile the query, run its first page with ``LIMIT 1`` and look for NULL
        keys: :class:`SourceError` (never containing the password) if anything is wrong."""
        raise NotImplementedError

    def blocks(self) -> AsyncIterator[RecordBlock]:
        raise NotImplementedError

    # -- shared helpers

    def _scrub(self, text: str) -> str:
        if self._secret:
            for form in {self._secret, self._secret.replace("%", "%25")}:
                text = text.replace(form, "***")
        return redact(text)

    def _error(self, what: str, detail: object = None) -> SourceError:
        message = f"{self.name}: {what}"
        if detail is not None and str(detail):
            message += f": {detail}"
        return SourceError(self._scrub(message), path=self.name)

    def _resolve_key(self, names: Sequence[str]) -> int:
        """Index of the key column among the query's columns (exact name, else the only one
        equal ignoring case); the columns must be distinct."""
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise self._error(
                    f"the query returns two columns named {name!r}; give them distinct "
                    "names (AS ...), each becomes a JSON member"
                )
            seen.add(name)
        if self.key in seen:
            return list(names).index(self.key)
        folded = [i for i, name in enumerate(names) if name.lower() == self.key.lower()]
        if len(folded) == 1:
            return folded[0]
        shown = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
        raise self._error(
            f"key column {self.key!r} is not a column of the "
            + ("table" if self.table is not None else "query")
            + f" (columns: {shown or 'none'})"
        )

    def _check_token(self, value: Any) -> None:
        try:
            key_token(value)
        except TypeError as exc:
            raise self._error(f"key column {self.key!r}: {exc}") from None

    def _duplicate(self, value: Any, position: int) -> SourceError:
        text = repr(value)
        return self._error(
            f"key column {self.key!r} is not unique: value {text[:200]} repeats at row "
            f"{position}; keyset pagination needs a unique key"
        )

    def _null_key(self) -> SourceError:
        return self._error(
            f"key column {self.key!r} has NULL values; keyset pagination needs a "
            "non-null, unique key (filter them out in --query)"
        )

    def _page_sql(self, base: str, key_sql: str, param: Callable[[int], str]) -> tuple[str, ...]:
        """The (first page, next page, NULL probe) statements. With a key range's upper
        bound, its value is the last parameter of the first two."""
        inner = f"(\n{base}\n) AS q"
        first_until = after_until = ""
        if self.range_end is not None:
            first_until = f" AND q.{key_sql} <= {param(2)}"
            after_until = f" AND q.{key_sql} <= {param(3)}"
        first = (
            f"SELECT * FROM {inner} WHERE q.{key_sql} IS NOT NULL{first_until} "
            f"ORDER BY q.{key_sql} LIMIT {param(1)}"
        )
        after = (
            f"SELECT * FROM {inner} WHERE q.{key_sql} > {param(1)}{after_until} "
            f"ORDER BY q.{key_sql} LIMIT {param(2)}"
        )
        nulls = f"SELECT 1 FROM {inner} WHERE q.{key_sql} IS NULL LIMIT 1"
        return first, after, nulls

    def _check_page(self, keys: Sequence[Any], extra: Any, has_extra: bool, first: int) -> None:
        """Adjacent equal keys in a page (and the row after it) mean the key is not unique;
        the key's type must be one a resume can use."""
        if keys:
            self._check_token(keys[0])
        if len(keys) > 1 and any(map(eq, keys, islice(keys, 1, None))):
            for i in range(1, len(keys)):
                if keys[i] == keys[i - 1]:
                    raise self._duplicate(keys[i], first + i)
        if has_extra and keys and extra == keys[-1]:
            raise self._duplicate(extra, first + len(keys))


def open_sql_source(
    db_url: str,
    *,
    query: str | None = None,
    table: str | None = None,
    key: str,
    page_size: int = DEFAULT_PAGE_SIZE,
    after: Any = None,
    start_position: int = 0,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    range_start: Any = None,
    range_end: Any = None,
) -> SqlSource:
    """The source for ``--db URL --query SQL --key COLUMN`` (or ``--table NAME``).

    ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (SQLAlchemy's
    convention: what follows ``sqlite:///`` is the path), ``postgresql://`` or
    ``postgres://`` (any URL asyncpg accepts). No I/O here: call :meth:`SqlSource.check`
    to connect and validate before sending anything.
    """
    if not isinstance(db_url, str):
        raise SourceError(f"database URL must be a string, not {type(db_url).__name__}")
    scheme = db_url.partition(":")[0].lower() if ":" in db_url else ""
    kwargs: dict[str, Any] = {
        "key": key,
        "query": query,
        "table": table,
        "page_size": page_size,
        "after": after,
        "start_position": start_position,
        "connect_timeout": connect_timeout,
        "range_start": range_start,
        "range_end": range_end,
    }
    if scheme == "sqlite":
        return SqliteSource(db_url, **kwargs)
    if scheme in ("postgresql", "postgres"):
        return PostgresSource(db_url, **kwargs)
    shown = display_url(db_url) if scheme else "(no scheme)"
    raise SourceError(
        f"unsupported database URL {redact(shown)!r}: expected sqlite:///PATH or "
        "postgresql://USER@HOST:PORT/DB",
        path=redact(shown),
    )


# --------------------------------------------------------------------------- SQLite


def _sqlite_connect(path: str) -> sqlite3.Connection:
    """Open ``path`` read-only (never creates a file). Patched by tests."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None)


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


class _SqlitePlan:
    __slots__ = ("after_sql", "after_text_sql", "first_sql", "key_index", "names", "nulls_sql")

    def __init__(self, names: tuple[str, ...], key_index: int, sqls: tuple[str, ...]) -> None:
        self.names = names
        self.key_index = key_index
        self.first_sql, self.after_sql, self.nulls_sql = sqls
        # a key that is not valid UTF-8 is compared as the bytes it is made of
        self.after_text_sql = self.after_sql.replace("> ?1", "> CAST(?1 AS TEXT)", 1)


class _SqliteReader:
    """One connection, used only in the source's worker thread."""

    def __init__(self, src: SqliteSource, worker: _Worker) -> None:
        self.src = src
        path = src.path
        if not os.path.exists(path):
            raise src._error(f"no such file {path!r}")
        if os.path.isdir(path):
            raise src._error(f"{path!r} is a directory")
        try:
            self.conn = _sqlite_connect(path)
        except sqlite3.Error as exc:
            raise src._error("cannot open the database", exc) from None
        worker.own(cast(Any, self.conn))
        self.plan = self._plan()

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self.conn
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "decode" not in str(exc).lower():
                raise
        conn.text_factory = _lenient_text  # invalid UTF-8 in this page: reject those rows
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.text_factory = str

    def _plan(self) -> _SqlitePlan:
        src = self.src
        if src.table is not None:
            # "schema.table" is quoted part by part; a name with quotes is taken as written
            table = src.table
            if '"' not in table:
                table = ".".join(_quote(part) for part in table.split("."))
            base = f"SELECT * FROM {table}"
        else:
            assert src.query is not None
            base = src.query
        try:
            cur = self.conn.execute(f"SELECT * FROM (\n{base}\n) AS q LIMIT 0")
        except sqlite3.Error as exc:
            raise src._error(_what(src), exc) from None
        names = tuple(d[0] for d in cur.description or ())
        for name in names:
            # SQLite renames a repeated column of a subquery "name:1", "name:2", ...
            stem, colon, number = name.rpartition(":")
            if colon and number.isdigit() and stem in names:
                src._resolve_key((stem, stem))  # the same error as PostgreSQL's duplicates
        key_index = src._resolve_key(names)
        self.base = base
        sqls = src._page_sql(base, _quote(names[key_index]), lambda i: f"?{i}")
        bound = src._bound()
        try:
            self.conn.execute(sqls[0], (0, *bound)).fetchall()
            self.conn.execute(sqls[1], (None, 0, *bound)).fetchall()
        except sqlite3.Error as exc:
            raise src._error(_what(src), exc) from None
        return _SqlitePlan(names, key_index, sqls)

    def check(self) -> None:
        src, plan = self.src, self.plan
        try:
            bound = src._bound()
            if src._after_value is None:
                rows = self._run(plan.first_sql, (1, *bound))
            else:
                rows = self._run(plan.after_sql, (src._after_value, 1, *bound))
            if rows:
                src._check_token(rows[0][plan.key_index])
            self.null_probe()
        except sqlite3.Error as exc:
            raise src._error(_what(src), exc) from None

    def boundaries(self, n: int) -> list[Any]:
        """The keys at rows ``k * count / n`` (k = 1 .. n-1), 1-based, in key order."""
        key_sql = _quote(self.plan.names[self.plan.key_index])
        inner = f"(\n{self.base}\n) AS q WHERE q.{key_sql} IS NOT NULL"
        try:
            count = self._run(f"SELECT count(*) FROM {inner}")[0][0]
            sql = f"SELECT q.{key_sql} FROM {inner} ORDER BY q.{key_sql} LIMIT 1 OFFSET ?"
            out = []
            for k in range(1, n):
                offset = k * count // n - 1
                if offset >= 0:
                    rows = self._run(sql, (offset,))
                    if rows:
                        out.append(rows[0][0])
        except sqlite3.Error as exc:
            raise self.src._error(_what(self.src), exc) from None
        return out

    def null_probe(self) -> None:
        if self._run(self.plan.nulls_sql):
            raise self.src._null_key()

    def page(self, last: Any, has_last: bool, position: int) -> tuple[SqlBlock, Any, bool]:
        """The page after ``last``: (block, key of its last row, whether more may follow)."""
        src, plan = self.src, self.plan
        n = src.page_size
        bound = src._bound()
        try:
            if not has_last:
                rows = self._run(plan.first_sql, (n + 1, *bound))
            elif isinstance(last, str) and not _utf8_encodable(last):
                raw = last.encode("utf-8", "surrogateescape")
                rows = self._run(plan.after_text_sql, (raw, n + 1, *bound))
            else:
                rows = self._run(plan.after_sql, (last, n + 1, *bound))
        except sqlite3.Error as exc:
            raise src._error(f"reading rows after key {_short(last)}", exc) from None
        src._fetched(rows)
        more = len(rows) > n
        extra = rows.pop()[plan.key_index] if more else None
        ki = plan.key_index
        keys = [row[ki] for row in rows]
        src._check_page(keys, extra, more, position)
        block = _encode_page(rows, plan.names, ki, position)
        return block, (keys[-1] if keys else last), more and bool(rows)


def _utf8_encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "…"


def _what(src: SqlSource) -> str:
    if src.table is not None:
        return f"cannot read table {src.table!r}"
    return "query failed"


class SqliteSource(SqlSource):
    """A SQLite database file, read-only, through the stdlib driver in a worker thread."""

    scheme = "sqlite"

    def __init__(self, url: str, **kwargs: Any) -> None:
        if not url.lower().startswith("sqlite:///") or len(url) <= len("sqlite:///"):
            raise SourceError(
                f"invalid SQLite URL {redact(url)!r}: expected sqlite:///relative/path.db "
                "or sqlite:////absolute/path.db",
                path=redact(url),
            )
        super().__init__(url, **kwargs)
        self.path = url[len("sqlite:///") :]
        self.name = url

    def _fetched(self, rows: Sequence[Any]) -> None:
        """Called (in the worker thread) with each page as fetched: a seam for tests."""
        self.pages_read += 1
        self.rows_read += len(rows)

    async def check(self) -> None:
        worker = _Worker(f"asyncsync-sql {os.path.basename(self.path)}")
        try:
            reader = await worker.call(lambda: _SqliteReader(self, worker))
            await worker.call(reader.check)
        finally:
            worker.close()
        self._checked = True

    async def _boundaries(self, n: int) -> list[Any]:
        worker = _Worker(f"asyncsync-sql {os.path.basename(self.path)}")
        try:
            reader = await worker.call(lambda: _SqliteReader(self, worker))
            return await worker.call(partial(reader.boundaries, n))
        finally:
            worker.close()

    async def blocks(self) -> AsyncIterator[RecordBlock]:
        worker = _Worker(f"asyncsync-sql {os.path.basename(self.path)}")
        reader: _SqliteReader | None = None
        done = False
        try:
            reader = await worker.call(lambda: _SqliteReader(self, worker))
            if not self._checked:
                await worker.call(reader.null_probe)
            last, has_last = self._after_value, self.after is not None
            position = self.start_position + 1
            while True:
                page = partial(reader.page, last, has_last, position)
                block, last, more = await worker.call(page)
                has_last = True
                position += len(block.records) + len(block.rejects)
                if block.records or block.rejects:
                    yield block
                if not more:
                    break
            done = True
        finally:
            if reader is not None and not done:
                # cancelled or failed while a statement may be running: stop it
                with contextlib.suppress(sqlite3.Error):
                    reader.conn.interrupt()
            worker.close()


# --------------------------------------------------------------------------- PostgreSQL


def _json_fragment(text: str) -> orjson.Fragment:
    if "\n" in text or "\r" in text:  # whitespace only: JSON strings cannot hold raw breaks
        text = text.replace("\r", " ").replace("\n", " ")
    return orjson.Fragment(text)


def _clock(micros: int) -> str:
    seconds, frac = divmod(micros, 1_000_000)
    minutes, sec = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    text = f"{hours:02d}:{minute:02d}:{sec:02d}"
    return f"{text}.{frac:06d}" if frac else text


def _time_decode(value: tuple[int]) -> str:
    return _clock(value[0])


def _time_encode(value: Any) -> tuple[int]:
    if isinstance(value, str):
        if value.startswith("24:00:00"):
            return (86_400_000_000,)
        value = time.fromisoformat(value)
    if not isinstance(value, time):
        raise TypeError(f"expected a time or an ISO-8601 time string, got {type(value).__name__}")
    return (
        (((value.hour * 60) + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond,
    )


def _timetz_decode(value: tuple[int, int]) -> str:
    micros, west = value
    east = -west
    sign = "-" if east < 0 else "+"
    hours, rest = divmod(abs(east), 3600)
    minutes, seconds = divmod(rest, 60)
    offset = f"{sign}{hours:02d}:{minutes:02d}" + (f":{seconds:02d}" if seconds else "")
    return _clock(micros) + offset


def _timetz_encode(value: Any) -> tuple[int, int]:
    if isinstance(value, str):
        value = time.fromisoformat(value)
    if not isinstance(value, time):
        raise TypeError(f"expected a time or an ISO-8601 time string, got {type(value).__name__}")
    offset = value.utcoffset() or timedelta(0)
    return (_time_encode(value.replace(tzinfo=None))[0], -int(offset.total_seconds()))


def _identity(value: Any) -> Any:
    return value


async def _set_codecs(conn: Any) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, schema="pg_catalog", encoder=_identity, decoder=_json_fragment, format="text"
        )
    # the text of an interval in the 'iso_8601' style set at connection
    await conn.set_type_codec(
        "interval", schema="pg_catalog", encoder=str, decoder=_identity, format="text"
    )
    await conn.set_type_codec(
        "time", schema="pg_catalog", encoder=_time_encode, decoder=_time_decode, format="tuple"
    )
    await conn.set_type_codec(
        "timetz",
        schema="pg_catalog",
        encoder=_timetz_encode,
        decoder=_timetz_decode,
        format="tuple",
    )


def _asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - asyncpg is installed in the test environment
        raise SourceError(
            "PostgreSQL sources need asyncpg: pip install 'asyncsync[postgres]'"
        ) from None
    return asyncpg


@dataclass(slots=True)
class _PgPlan:
    names: tuple[str, ...]
    key_index: int
    first: Any  # prepared statements
    after: Any
    nulls: Any


class PostgresSource(SqlSource):
    """A PostgreSQL query through asyncpg: one connection per :meth:`blocks`, one statement
    prepared per page shape, executed once per page."""

    scheme = "postgresql"

    async def _connect(self) -> Any:
        asyncpg = _asyncpg()
        try:
            conn = await asyncpg.connect(
                self.url,
                timeout=self.connect_timeout,
                server_settings={"IntervalStyle": "iso_8601", "application_name": "asyncsync"},
            )
        except TimeoutError:  # before OSError: it is one
            raise self._error(f"timed out connecting after {self.connect_timeout:g} s") from None
        except OSError as exc:
            raise self._error("cannot connect", exc.strerror or exc) from None
        except asyncpg.PostgresError as exc:
            raise self._error("cannot connect", _pg_message(exc)) from None
        except (ValueError, asyncpg.InterfaceError) as exc:
            raise self._error("invalid database URL or connection failure", exc) from None
        try:
            await _set_codecs(conn)
        except BaseException:
            conn.terminate()
            raise
        return conn

    @staticmethod
    async def _close(conn: Any) -> None:
        try:
            await asyncio.wait_for(conn.close(), 5)
        except BaseException:
            conn.terminate()
            raise

    async def _base_query(self, conn: Any) -> str:
        if self.table is None:
            assert self.query is not None
            return self.query
        # the server's own parsing of the name: case folding, quotes, schema, search_path
        try:
            resolved = await conn.fetchval("SELECT to_regclass($1)::text", self.table)
        except _asyncpg().PostgresError as exc:
            raise self._error(f"invalid table name {self.table!r}", _pg_message(exc)) from None
        if resolved is None:
            raise self._error(f"no such table {self.table!r}")
        return f"SELECT * FROM {resolved}"

    async def _boundaries(self, n: int) -> list[Any]:
        if n < 2:
            return []
        conn = await self._connect()
        try:
            plan = await self._plan(conn)
            base = await self._base_query(conn)
            key_sql = _quote(plan.names[plan.key_index])
            fractions = [k / n for k in range(1, n)]
            sql = (
                f"SELECT percentile_disc($1::float8[]) WITHIN GROUP (ORDER BY q.{key_sql}) "
                f"FROM (\n{base}\n) AS q WHERE q.{key_sql} IS NOT NULL"
            )
            try:
                values = await conn.fetchval(sql, fractions)
            except _asyncpg().PostgresError as exc:
                raise self._error(_what(self), _pg_message(exc)) from None
        finally:
            await self._close(conn)
        return list(values or ())

    async def _plan(self, conn: Any) -> _PgPlan:
        asyncpg = _asyncpg()
        base = await self._base_query(conn)
        try:
            probe = await conn.prepare(f"SELECT * FROM (\n{base}\n) AS q LIMIT 0")
            names = tuple(a.name for a in probe.get_attributes())
            key_index = self._resolve_key(names)
            first_sql, after_sql, nulls_sql = self._page_sql(
                base, _quote(names[key_index]), lambda i: f"${i}"
            )
            first = await conn.prepare(first_sql)
            after = await conn.prepare(after_sql)
            nulls = await conn.prepare(nulls_sql)
        except asyncpg.PostgresError as exc:
            raise self._error(_what(self), _pg_message(exc)) from None
        return _PgPlan(names, key_index, first, after, nulls)

    async def _fetch(self, plan: _PgPlan, last: Any, has_last: bool, limit: int) -> list[Any]:
        """One page: the rows after ``last`` (all rows when not ``has_last``)."""
        asyncpg = _asyncpg()
        try:
            bound = self._bound()
            if has_last:
                rows: list[Any] = await plan.after.fetch(last, limit, *bound)
            else:
                rows = await plan.first.fetch(limit, *bound)
        except (asyncpg.DataError, TypeError, ValueError) as exc:
            if has_last:  # the key to resume after cannot be bound to the key's type
                raise self._error(f"cannot use key {_short(last)}", exc) from None
            raise self._error("reading rows", exc) from None
        except asyncpg.PostgresError as exc:
            raise self._error(f"reading rows after key {_short(last)}", _pg_message(exc)) from None
        except (OSError, asyncpg.InterfaceError) as exc:
            raise self._error("connection lost", exc) from None
        self.pages_read += 1
        self.rows_read += len(rows)
        return rows

    async def _null_probe(self, plan: _PgPlan) -> None:
        try:
            found = await plan.nulls.fetchval()
        except _asyncpg().PostgresError as exc:
            raise self._error(_what(self), _pg_message(exc)) from None
        if found is not None:
            raise self._null_key()

    async def check(self) -> None:
        conn = await self._connect()
        try:
            plan = await self._plan(conn)
            rows = await self._fetch(plan, self._after_value, self.after is not None, 1)
            if rows:
                self._check_token(rows[0][plan.key_index])
            await self._null_probe(plan)
        finally:
            await self._close(conn)
        self.pages_read = self.rows_read = 0
        self._checked = True

    async def blocks(self) -> AsyncIterator[RecordBlock]:
        conn = await self._connect()
        try:
            plan = await self._plan(conn)
            if not self._checked:
                await self._null_probe(plan)
            n, ki, names = self.page_size, plan.key_index, plan.names
            last, has_last = self._after_value, self.after is not None
            position = self.start_position + 1
            while True:
                rows = await self._fetch(plan, last, has_last, n + 1)
                more = len(rows) > n
                extra = rows.pop()[ki] if more else None
                if not rows:
                    break
                keys = [row[ki] for row in rows]
                self._check_page(keys, extra, more, position)
                block = _encode_page(rows, names, ki, position)
                last, has_last = keys[-1], True
                position += len(rows)
                del rows, keys  # only one page of rows alive at a time
                yield block
                if not more:
                    break
        finally:
            await self._close(conn)


def _pg_message(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    hint = getattr(exc, "hint", None)
    return f"{message} ({hint})" if hint else str(message)
