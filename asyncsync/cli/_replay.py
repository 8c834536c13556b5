"""``asyncsync replay``: send the records of a dead-letter file again.

Thin by design: the dead-letter file becomes a source (:class:`DeadLetterSource`) and the
same :class:`Uploader` as ``upload`` sends it, with the same batching, auth, retries,
checkpoint and exit codes. Only the source and the dead-letter path differ::

    FAILED.jsonl ─> JSON Lines ─> each entry's "record" ─> Uploader ─> --url
                   (line numbers)      │                      │ failed again
                                       └─> not replayable ────┴─> FAILED.jsonl.replay-failed.jsonl

* A record is sent as the bytes the dead-letter file holds, which are the original input's
  (the file embeds them unchanged), so nothing is re-serialised.
* An entry whose ``record`` is a string (the input line was not valid JSON), or anything
  else but an object, cannot be replayed: it goes straight to the new dead-letter file,
  ``"not a JSON object"``. So does a line that is not a dead-letter entry at all.
* Positions are the dead-letter file's line numbers: the new dead-letter file says which
  entry failed again, and an interrupted replay resumes by count (its checkpoint is
  ``FAILED.jsonl.asyncsync`` unless ``--checkpoint``).
* Records failing again go to a new file, never the one being read (appending to a file
  while reading it could replay forever).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import msgspec
import orjson

from .._exceptions import ConfigError, SourceError
from .._records import RecordBlock, Rejected
from ..sources._files import JsonlSource
from ._settings import Settings

__all__ = ["REPLAY_FAILED_SUFFIX", "DeadLetterSource", "replay_settings"]

#: the default dead-letter file of a replay: ``FAILED.jsonl`` + this
REPLAY_FAILED_SUFFIX: Final = ".replay-failed.jsonl"


class _Entry(msgspec.Struct):
    """A dead-letter entry; only ``record`` matters here, as its exact bytes."""

    record: msgspec.Raw


_decode_entry: Final = msgspec.json.Decoder(_Entry).decode


class DeadLetterSource:
    """The records of a dead-letter file, positioned by line; what cannot be sent, rejected."""

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


def replay_settings(settings: Settings) -> Settings:
    """``settings`` for a replay: a dead-letter file of its own, never the one it reads.

    The default is ``FAILED.jsonl.replay-failed.jsonl``; ``--failed`` naming the file being
    replayed is a :class:`ConfigError`.
    """
    source = settings.source
    if source is None or source == "-":
        raise ConfigError("replay reads a dead-letter file: give its path", field="source")
    failed = settings.failed
    if settings.origins.get("failed") == "auto":
        failed = Path(source + REPLAY_FAILED_SUFFIX)
    if _same_file(failed, Path(source)):
        raise ConfigError(
            f"--failed {failed} is the file being replayed; records that fail again go to a "
            f"new file (default {source}{REPLAY_FAILED_SUFFIX})",
            field="failed",
        )
    return dataclasses.replace(settings, failed=failed)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return a.resolve() == b.resolve()
