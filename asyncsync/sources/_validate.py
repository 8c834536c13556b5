"""JSON validation without parsing, and the blocks the parsers build (shared by JSON Lines,
CSV and iterables)."""

from __future__ import annotations

from collections.abc import (
    Sequence,
)
from typing import Any, Final, cast

import msgspec

from .._records import RecordBlock, Rejected
from ._jsoncheck import BOM as _BOM
from ._jsoncheck import WS as _WS
from ._jsoncheck import decode_object as _decode_object
from ._jsoncheck import find_bad as _find_bad
from ._jsoncheck import utf8_ok as _utf8_ok

__all__ = ["_BOM", "_WS", "_find_bad", "_utf8_ok"]

#: a rejected line longer than this keeps only its start as ``Rejected.raw``
_RAW_LIMIT: Final = 64 * 1024


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
