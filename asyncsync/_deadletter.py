"""The dead-letter file: every record that could not be delivered, with the reason.

JSON Lines, one object per record (the contract in DESIGN.md)::

    {"record": <the original object, or the raw line as a string>, "line": 12,
     "position": 12, "status": 400, "error": "status 400 Bad Request: ...",
     "attempts": 1, "idempotency_key": "job-12-40"}

``line`` is present for file sources (where a position is a line number), ``position``
always. The file is opened for append: a resumed run adds to it, never truncates it.
Records are embedded as their original bytes (``orjson.Fragment``), never re-serialised.

Writes go to a buffer; :meth:`DeadLetterFile.sync` (called off the event loop before every
checkpoint save) flushes and fsyncs it, so a checkpoint never covers a dead-lettered record
that is not durably in the file.

A crash (SIGKILL, power loss) can cut the last line short: the buffer is written out in
chunks, and a chunk may end mid-entry. Such a torn tail was never synced, so no checkpoint
covers its records: the resumed run sends or dead-letters them again. :meth:`repair` cuts it
off (back to the last complete line) before anything is appended, so the file stays valid
JSON Lines; the ledger calls it when a run opens its checkpoint, and the first write does
otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from ._exceptions import ConfigError
from ._records import BatchResult, Rejected
from ._redact import redact

__all__ = ["DeadLetterFile", "merge_dead_letters"]

log = logging.getLogger("asyncsync")

#: how far back :meth:`DeadLetterFile.repair` reads at a time, looking for the last newline
_SCAN_CHUNK = 64 * 1024


class DeadLetterFile:
    """Append-only writer of dead-lettered records."""

    def __init__(self, path: str | os.PathLike[str], *, lines: bool = True) -> None:
        self.path = Path(path)
        self._lines = lines
        self._file: IO[bytes] | None = None
        self._lock = threading.Lock()  # sync() runs in a worker thread
        self._repaired = False
        self.count = 0

    def repair(self) -> int:
        """Cut a torn last line (one a crash cut short: no newline after it) off the file;
        the number of bytes removed. Done once per instance, before the first append; a
        missing or unreadable file is left alone (the first write reports it). ConfigError
        when a torn file cannot be written."""
        if self._repaired:
            return 0
        try:
            with open(self.path, "rb") as f:
                end = f.seek(0, os.SEEK_END)
                if end > 0:
                    f.seek(end - 1)
                whole = end == 0 or f.read(1) == b"\n"
        except OSError:  # missing (nothing to repair) or unreadable (the first write says so)
            whole = True
        if whole:
            self._repaired = True
            return 0
        try:
            with open(self.path, "r+b") as f:
                keep = 0  # no newline at all: the only line is torn
                pos = end
                while pos > 0:
                    step = min(_SCAN_CHUNK, pos)
                    pos -= step
                    f.seek(pos)
                    i = f.read(step).rfind(b"\n")
                    if i >= 0:
                        keep = pos + i + 1
                        break
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise ConfigError(
                f"cannot open dead-letter file {self.path}: {exc.strerror}", field="failed"
            ) from exc
        self._repaired = True
        log.warning(
            "dead-letter file %s ended in a torn line (a crash cut it short): %d bytes cut "
            "off; its records were not checkpointed and are processed again",
            self.path,
            end - keep,
        )
        return end - keep

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self.repair()  # appending to a torn line would garble the new entry too
            try:
                self._file = open(self.path, "ab")  # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise ConfigError(
                    f"cannot open dead-letter file {self.path}: {exc.strerror}", field="failed"
                ) from exc
        return self._file

    def _entry(
        self,
        record: Any,
        position: int,
        status: int | None,
        error: str,
        attempts: int,
        key: str | None,
    ) -> bytes:
        obj: dict[str, Any] = {"record": record}
        if self._lines:
            obj["line"] = position
        obj["position"] = position
        obj["status"] = status
        obj["error"] = redact(error)
        obj["attempts"] = attempts
        obj["idempotency_key"] = key
        return orjson.dumps(obj) + b"\n"

    def write_result(self, result: BatchResult) -> None:
        """Every record of a batch that was not delivered."""
        out = b"".join(
            self._entry(
                orjson.Fragment(raw),
                pos,
                result.status,
                result.error,
                result.attempts,
                result.key,
            )
            for raw, pos in zip(result.batch.records, result.batch.positions, strict=True)
        )
        with self._lock:
            self._open().write(out)
            self.count += len(result.batch)

    def write_rejects(self, rejects: list[Rejected]) -> None:
        """Input records that never got into a batch (malformed, too large, ragged)."""
        out = b"".join(self._entry(r.raw, r.position, None, r.reason, 0, None) for r in rejects)
        with self._lock:
            self._open().write(out)
            self.count += len(rejects)

    def sync(self) -> None:
        """Flush and fsync (blocking: call it in a thread)."""
        with self._lock:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None


def merge_dead_letters(parts: Sequence[Path], target: Path) -> None:
    """Append each part's dead-letter file (a ``--processes`` child's, a Dask task's) to
    ``target``, in shard order, then delete it. A crash in the middle of the copy can
    duplicate entries, never lose one; a copy that fails keeps the parts (a warning)."""
    existing = [p for p in parts if p != target and p.exists()]
    if not existing:
        return
    try:
        with open(target, "ab") as out:
            for part in existing:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        log.warning(
            "could not gather the shards' dead-letter files into %s (%s); they are kept: %s",
            target,
            exc.strerror or exc,
            ", ".join(str(p) for p in existing),
        )
        return
    for part in existing:
        with contextlib.suppress(OSError):
            part.unlink()
