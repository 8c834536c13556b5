"""JSON validation without parsing, and the blocks the parsers build (shared by JSON Lines,
CSV and iterables)."""

from __future__ import annotations

import codecs
from collections import deque
from collections.abc import (
    Sequence,
)
from operator import length_hint
from typing import Any, Final, cast

import msgspec

from .._records import RecordBlock, Rejected

_WS: Final = b" \t\r\n"  # JSON whitespace; bytes.strip() would also eat \x0b and \x0c
_BOM: Final = b"\xef\xbb\xbf"
#: a rejected line longer than this keeps only its start as ``Rejected.raw``
_RAW_LIMIT: Final = 64 * 1024


class _AnyObject(msgspec.Struct, gc=False):
    """No fields: decoding skips (and so validates) every member and rejects non-objects.

    ``gc=False``: the instance (discarded at once) is not tracked by the garbage collector,
    a few ns less per line."""


_decode_object: Final = msgspec.json.Decoder(_AnyObject).decode


def _reason(line: bytes) -> str:
    """Why ``line`` (stripped, non-empty, valid UTF-8 or not) is not one JSON object."""
    if b"\x00" in line:
        return "contains a NUL byte"
    try:
        line.decode()
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 at byte {exc.start}"
    try:
        _decode_object(line)
    except msgspec.ValidationError as exc:
        # "Expected `object`, got `array`"
        parts = str(exc).split("`")
        got = parts[3] if len(parts) >= 5 else "another value"
        return f"not a JSON object ({got})"
    except msgspec.DecodeError as exc:
        msg = str(exc).removeprefix("JSON is malformed: ")
        return f"malformed JSON: {msg[:1].lower()}{msg[1:]}"
    except RecursionError:
        return "malformed JSON: nested too deeply"
    return "not a JSON object"  # pragma: no cover - only called for lines that failed


def _find_bad(lines: list[bytes], *, utf8_ok: bool) -> list[int]:
    """Indexes of the lines that are not exactly one JSON object, JSON whitespace around it
    allowed (empty lines included).

    ``utf8_ok`` says the caller checked every line is valid UTF-8 already.
    """
    bad: list[int] = []
    decode = _decode_object
    n = len(lines)
    it = iter(lines)
    while True:
        try:  # map in C, ~20 ns/line faster than a Python loop
            deque(map(decode, it), 0)
            break
        except (msgspec.DecodeError, RecursionError):
            # the line that failed is the last one taken: go on with the rest, still in C
            bad.append(n - length_hint(it) - 1)
    if not utf8_ok:
        seen = set(bad)
        for i, line in enumerate(lines):
            if i not in seen and not line.isascii():
                try:
                    line.decode()
                except UnicodeDecodeError:
                    bad.append(i)
        bad.sort()
    return bad


def _utf8_ok(data: bytes | memoryview, piece: int = 16 * 1024) -> bool:
    """Is ``data`` valid UTF-8? Decoded ``piece`` bytes at a time (a sequence cut at a piece's
    end is decoded with the next piece): one character past U+00FF turns a whole 1 MiB
    decode into a UCS-2 string, 3-5x slower (measured: 460 ns per 280-byte line, 95-170 in
    pieces; Latin-1-only text 20 -> 33)."""
    decode = codecs.utf_8_decode
    n = len(data)
    try:
        if n <= piece:
            decode(data, "strict", True)
            return True
        mv = memoryview(data)
        pos = 0
        while pos < n:
            pos += decode(mv[pos : pos + piece], "strict", pos + piece >= n)[1]
    except UnicodeDecodeError:
        return False
    return True


def _raw_text(data: bytes) -> str:
    if len(data) > _RAW_LIMIT:
        return data[:_RAW_LIMIT].decode("utf-8", "replace") + "…"
    return data.decode("utf-8", "replace")


#: RecordBlock has per-record end offsets (``offsets``): then file sources fill them, and every
#: batch gets an exact ``end_offset``. Without them, only batches ending a block get one.
_RECORD_OFFSETS: Final = "offsets" in getattr(RecordBlock, "__dataclass_fields__", {})


def _block(
    records: list[bytes],
    positions: Sequence[int],
    rejects: list[Rejected],
    end_offset: int | None,
    offsets: Sequence[int] | None,
) -> RecordBlock:
    if offsets is None:
        return RecordBlock(records, positions, rejects, end_offset)
    block: RecordBlock = cast(Any, RecordBlock)(
        records, positions, rejects, end_offset, offsets=offsets
    )
    return block
