"""A dead-letter file as a source: the records it holds, to send again (``asyncsync replay``).

* A record is sent as the bytes the dead-letter file holds, which are the original input's
  (the file embeds them unchanged), so nothing is re-serialised.
* An entry whose ``record`` is a string (the input line was not valid JSON), or anything
  else but an object, cannot be replayed: it is rejected, ``"not a JSON object"``. So is a
  line that is not a dead-letter entry at all.
* Positions are the dead-letter file's line numbers; an interrupted replay resumes by
  skipping that many lines (the file has no offsets of its records' own).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Final

import msgspec
import orjson

from .._exceptions import SourceError
from .._records import RecordBlock, Rejected
from ._jsonl import JsonlSource
from ._protocol import SourceBase

__all__ = ["DeadLetterSource"]


class _Entry(msgspec.Struct):
    """A dead-letter entry; only ``record`` matters here, as its exact bytes."""

    record: msgspec.Raw


_decode_entry: Final = msgspec.json.Decoder(_Entry).decode


class DeadLetterSource(SourceBase):
    """The records of a dead-letter file, positioned by line; what cannot be sent, rejected.

    Its defaults are a stream's: fingerprinted by name, resumed by skipping, no ``state_path``
    (where a replay's own state files go is the CLI's policy, see :mod:`asyncsync._paths`).
    """

    kind = "replay"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if os.fspath(path) == "-":
            raise SourceError("replay reads a dead-letter file: give its path, not -", path="-")
        self._lines = JsonlSource(os.fspath(path))  # SourceError now when it cannot be read
        self.name = self._lines.name
        self.size: int | None = self._lines.size

    async def blocks(self) -> AsyncIterator[RecordBlock]:
        lines = self._lines.blocks()
        try:
            async for block in lines:
                yield _records_of(block)
        finally:
            aclose = getattr(lines, "aclose", None)
            if aclose is not None:  # the source's file and reader thread, now
                await aclose()


def _records_of(block: RecordBlock) -> RecordBlock:
    """Dead-letter entries in, their records out, at the entries' line numbers."""
    records: list[bytes] = []
    positions: list[int] = []
    rejects = list(block.rejects)  # lines that are not even a JSON object
    for entry, line in zip(block.records, block.positions, strict=True):
        try:
            record = bytes(_decode_entry(entry).record)
        except msgspec.ValidationError as exc:
            rejects.append(Rejected(entry.decode(), line, f"not a dead-letter entry: {exc}", line))
            continue
        if record.startswith(b"{"):
            records.append(record)
            positions.append(line)
        else:
            rejects.append(Rejected(orjson.loads(record), line, "not a JSON object", line))
    # the pipeline takes a block's last reject as the highest position dead-lettered
    rejects.sort(key=lambda r: r.position)
    return RecordBlock(records, positions, rejects, bytes_read=block.bytes_read)
