"""Arrow record batches to JSON objects, column by column (the Parquet source's hot path).

Each column becomes an Arrow array of JSON texts (its *fragments*, ``null`` for a missing
value), mostly with ``pyarrow.compute`` kernels, which run in C++ without the GIL: the
event loop keeps sending while a batch is converted. One ``binary_join_element_wise`` then
puts ``{"name":`` + fragment + ``,"next":`` ... ``}`` together for every row, and the
records are cut out of its data buffer at once. Nothing is built per row in Python.

The JSON is byte for byte what ``orjson.dumps`` of the row as a dict gives with the SQL
sources' ``default`` (the encoding table in :mod:`._parquet`): every kernel below is used
only where its output is that text, and the rest goes through orjson value by value.

================================  ================================================================
column                            fragments
================================  ================================================================
integers, bool                    cast to string (the same digits, ``true``/``false``)
float32/64                        one ``orjson.dumps`` of the column's list, cut at the commas
string, large_string              ``"`` + text + ``"``; the few values holding a ``"``, ``\\`` or a
                                  control character: ``orjson.dumps`` of each
decimal, scale 0 to 6             ``"`` + cast to string + ``"`` (plain notation at those scales)
date32 (years 1-9999)             cast to string (``YYYY-MM-DD``)
timestamp s/ms/us, naive, UTC or  ``strftime`` ISO-8601; microseconds only when not zero, the
a fixed offset (years 2-9998)     offset as ``+HH:MM`` (``datetime.isoformat``)
time32/64 (s/ms/us)               cast to string; microseconds only when not zero
null                              ``null``
anything else                     ``orjson.dumps`` of each value (nested types, binary, duration,
                                  date64, named time zones, values outside the fast ranges)
================================  ================================================================

A value orjson cannot encode raises :class:`TypeError` (the caller then goes row by row, to
reject just those rows); a value Python cannot hold (a date past 9999) raises the
:class:`ValueError` that ``to_pylist`` raises.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from functools import partial
from typing import Any, Final

import orjson

__all__ = ["ArrowJsonEncoder"]

#: a string needing escapes in JSON: a quote, a backslash or a control character
_NEEDS_ESCAPE: Final = r'[\x00-\x1f"\\]'
_FIXED_OFFSET: Final = re.compile(r"[+-]\d\d:\d\d")
#: Python's datetime range, kept clear of its ends (a fixed offset moves the local time)
_MIN_SECONDS: Final = -62_135_596_800 + 2 * 86_400  # 0001-01-03T00:00:00Z
_MAX_SECONDS: Final = 253_402_300_799 - 2 * 86_400  # 9999-12-29T23:59:59Z
_MIN_DAY: Final = -719_162  # 0001-01-01
_MAX_DAY: Final = 2_932_896  # 9999-12-31
_UNIT: Final = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _pa() -> tuple[Any, Any]:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pa, pc


#: one column's JSON: a text for every row (bytes), or a binary array without nulls and
#: whether each of its items still needs quotes around it
Fragment = bytes | tuple[Any, bool]
Fragments = Callable[[Any], Fragment]


class ArrowJsonEncoder:
    """Encodes the record batches of one schema (see the module docstring).

    ``default`` is orjson's ``default`` for the values it does not encode natively;
    ``to_python`` turns one column's Arrow values into Python values (maps into dicts).
    """

    def __init__(
        self,
        schema: Any,
        default: Callable[[Any], Any],
        to_python: Callable[[Any, Any], list[Any]],
    ) -> None:
        import numpy  # noqa: F401 - loaded now, before the upload starts, as is compute

        pa, _ = _pa()
        self._pa = pa
        self._dumps = partial(orjson.dumps, default=default)
        self._to_python = to_python
        self._columns: list[Fragments] = [self._plan(f.type) for f in schema]
        # '{"a":' before the first column, ',"b":' before each next one
        self._keys = [
            (b"," if i else b"{") + orjson.dumps(name) + b":" for i, name in enumerate(schema.names)
        ]

    # ------------------------------------------------------------------ one batch

    def encode(self, batch: Any) -> list[bytes]:
        """The JSON object of every row of ``batch``, in order."""
        return self.cut(self.join(batch), batch.num_rows)

    def join(self, batch: Any) -> Any:
        """Every row's JSON, newline-ended, in one binary array (or the one text of every
        row, as bytes, when no column varies): the Arrow part of :meth:`encode`, mostly
        without the GIL."""
        _, pc = _pa()
        if batch.num_rows == 0:
            return b""
        parts: list[Any] = []
        literal = b""
        for key, column, fragments in zip(self._keys, batch.columns, self._columns, strict=True):
            literal += key
            got = fragments(column)
            if isinstance(got, bytes):
                literal += got
                continue
            array, quoted = got
            parts += [_scalar(literal + b'"' if quoted else literal), array]
            literal = b'"' if quoted else b""
        literal += b"}" if self._keys else b"{}"
        if not parts:
            return literal
        parts.append(_scalar(literal + b"\n"))
        return pc.binary_join_element_wise(*parts, _scalar(b""))

    @staticmethod
    def cut(joined: Any, n: int) -> list[bytes]:
        """The ``n`` records of :meth:`join`'s result, as bytes (with the GIL)."""
        if n == 0:
            return []
        if isinstance(joined, bytes):
            return [joined] * n
        records = _cut(joined, n)
        if len(records) != n:  # pragma: no cover - a line break inside a fragment
            raise RuntimeError(f"{n} rows made {len(records)} JSON lines")
        return records

    # ------------------------------------------------------------------ per column type

    def _plan(self, t: Any) -> Fragments:
        pa = self._pa
        pt = pa.types
        if pt.is_dictionary(t):
            inner = self._plan(t.value_type)
            return lambda arr: inner(arr.dictionary_decode())
        if pt.is_null(t):
            return lambda arr: b"null"
        if pt.is_integer(t) or pt.is_boolean(t):
            return _cast_text
        if pt.is_floating(t):
            return _floats
        if pt.is_string(t) or pt.is_large_string(t):
            return self._strings
        if pt.is_decimal(t) and 0 <= t.scale <= 6:
            return _quoted_cast
        if pt.is_date32(t):
            return self._checked(_dates, "int32", _MIN_DAY, _MAX_DAY)
        if pt.is_timestamp(t) and (t.tz is None or _plain_zone(t.tz)):
            per = _UNIT[t.unit]
            low, high = _MIN_SECONDS * per, _MAX_SECONDS * per
            return self._checked(partial(_timestamps, tz=t.tz is not None), "int64", low, high)
        if pt.is_time32(t) or pt.is_time64(t):
            high = 86_400 * _UNIT[t.unit] - 1
            return self._checked(_times, "int64" if pt.is_time64(t) else "int32", 0, high)
        return self._python

    def _checked(self, fast: Fragments, raw: str, low: int, high: int) -> Fragments:
        """``fast`` while every value is within ``[low, high]`` (as ``raw`` integers),
        else the Python path (which raises as ``to_pylist`` does for what Python cannot
        hold)."""
        pa, pc = _pa()
        raw_type = getattr(pa, raw)()

        def fragments(arr: Any) -> Any:
            bounds = pc.min_max(arr.view(raw_type))
            lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
            if lo is None or (low <= lo and hi <= high):
                return fast(arr)
            return self._python(arr)

        return fragments

    def _strings(self, arr: Any) -> Fragment:
        """The text itself, quoted around by the joiner (or here, when there are nulls);
        a value needing escapes (a rare ``"``, ``\\`` or control character): orjson's."""
        import numpy as np

        pa, pc = _pa()
        arr.validate(full=True)  # UTF-8, as decoding in to_pylist would check
        text = arr.cast(pa.binary())
        nulls = arr.null_count > 0
        data = arr.buffers()[2]
        if data is not None and _maybe_escaped(np.frombuffer(data, np.uint8)):
            escape = pc.match_substring_regex(arr, _NEEDS_ESCAPE)
            if pc.any(escape).as_py():
                odd = [orjson.dumps(v)[1:-1] for v in pc.filter(arr, escape).to_pylist()]
                text = pc.replace_with_mask(text, escape, _bytes_array(odd))
        if not nulls:
            return text, True
        return _null_text(_in_quotes(text)), False

    def _python(self, arr: Any) -> Fragment:
        """orjson on each value: the encoding by definition, at Python speed."""
        values = self._to_python(arr, arr.type)
        return _bytes_array(list(map(self._dumps, values))), False


# Arrow values are made from buffers here, never with ``pa.scalar``/``pa.array``: those look
# for pandas first, and importing pandas in the middle of an upload costs a fifth of a second
# and tens of MB.


@functools.cache
def _scalar(data: bytes) -> Any:
    """A binary scalar holding ``data``."""
    return _bytes_array([data])[0]


def _bytes_array(items: list[bytes]) -> Any:
    """A binary array of ``items``; :class:`TypeError` past 2 GiB (the caller then encodes
    row by row)."""
    import numpy as np

    pa, _ = _pa()
    n = len(items)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.fromiter(map(len, items), np.int64, n), out=offsets[1:])
    if offsets[n] >= 2**31:
        raise TypeError("a column of more than 2 GiB of JSON in one batch")
    data = pa.py_buffer(b"".join(items))
    return pa.Array.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets.astype(np.int32)), data]
    )


def _in_quotes(text: Any) -> Any:
    """``"`` + each item of binary ``text`` + ``"`` (nulls stay null)."""
    _, pc = _pa()
    return pc.binary_join_element_wise(_scalar(b""), text, _scalar(b""), _scalar(b'"'))


# ---------------------------------------------------------------------- column kernels


def _maybe_escaped(data: Any) -> bool:
    """Whether the bytes (a numpy array) hold a control character, ``"`` or ``\\``."""
    return bool((data < 0x20).any() or (data == 0x22).any() or (data == 0x5C).any())


def _null_text(arr: Any) -> Any:
    """Binary ``arr`` with its nulls as the text ``null``."""
    _, pc = _pa()
    return pc.fill_null(arr, _scalar(b"null")) if arr.null_count else arr


def _cast_text(arr: Any) -> Fragment:
    pa, _ = _pa()
    return _null_text(arr.cast(pa.string()).cast(pa.binary())), False


def _quoted_cast(arr: Any) -> Fragment:
    """Cast to string, in quotes."""
    pa, _ = _pa()
    return _quoted(arr.cast(pa.string()).cast(pa.binary()), arr.null_count > 0)


def _quoted(text: Any, nulls: bool) -> Fragment:
    """Binary ``text`` to go in quotes: the joiner's, or here when ``null`` goes bare."""
    if not nulls:
        return text, True
    return _null_text(_in_quotes(text)), False


def _floats(arr: Any) -> Fragment:
    """orjson's own float text (shortest round trip, ``2.0``, NaN and infinities as
    ``null``): one dumps of the list, cut at its commas (a number has none)."""
    import numpy as np

    pa, _ = _pa()
    n = len(arr)
    body = orjson.dumps(arr.to_pylist())[1:-1]
    commas = np.flatnonzero(np.frombuffer(body, np.uint8) == ord(","))
    if len(commas) != n - 1:  # pragma: no cover - cannot happen for numbers
        raise RuntimeError("float column did not encode to one number per value")
    offsets = np.empty(n + 1, np.int32)
    offsets[0] = 0
    offsets[1:n] = commas - np.arange(n - 1)  # each comma removed shifts what follows
    offsets[n] = len(body) - (n - 1)
    data = body.replace(b",", b"")
    array = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return array, False


_dates = _quoted_cast


def _timestamps(arr: Any, *, tz: bool) -> Fragment:
    """``datetime.isoformat()``: ``T``, microseconds only when not zero, ``+HH:MM``."""
    pa, pc = _pa()
    t = arr.type
    if t.unit == "ms":
        arr = arr.cast(pa.timestamp("us", t.tz))
    text = pc.strftime(arr, "%Y-%m-%dT%H:%M:%S%z" if tz else "%Y-%m-%dT%H:%M:%S")
    if t.unit != "s":
        text = pc.replace_substring_regex(text, r"\.000000([+-]|$)", r"\1")
    if tz:
        text = pc.replace_substring_regex(text, r"([+-]\d\d)(\d\d)$", r"\1:\2")
    return _quoted(text.cast(pa.binary()), arr.null_count > 0)


def _times(arr: Any) -> Fragment:
    """``time.isoformat()``: microseconds only when not zero."""
    pa, pc = _pa()
    t = arr.type
    if t.unit != "s":
        if t.unit == "ms":
            arr = arr.cast(pa.time64("us"))
        text = pc.replace_substring_regex(arr.cast(pa.string()), r"\.000000$", "")
    else:
        text = arr.cast(pa.string())
    return _quoted(text.cast(pa.binary()), arr.null_count > 0)


def _plain_zone(tz: str) -> bool:
    """A zone whose offset never changes and that Python writes as ``+HH:MM``."""
    return tz == "UTC" or _FIXED_OFFSET.fullmatch(tz) is not None


def _cut(joined: Any, n: int) -> list[bytes]:
    """The ``n`` newline-ended texts of binary array ``joined``, as bytes, without the
    newlines: one copy of the data buffer, one split."""
    import numpy as np

    _, offsets, data = joined.buffers()
    ends = np.frombuffer(offsets, np.int32, count=n + 1, offset=joined.offset * 4)
    start, end = int(ends[0]), int(ends[n])
    blob = data.slice(start, end - start).to_pybytes()
    records: list[bytes] = blob.split(b"\n")
    records.pop()  # after the last newline
    return records
