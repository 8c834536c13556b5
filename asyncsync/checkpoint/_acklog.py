"""The ack log: batches acknowledged since the last checkpoint save, so that a crash
re-sends only the batches that were in flight.

The checkpoint (:mod:`._state`) is saved durably about once a second; at 5 000 batches/s
a SIGKILL between two saves would re-send thousands of acknowledged batches (measured before
this log: 95-169 re-sent batches per kill against a bound of 24 in flight). Saving more often
costs ~12% of throughput and still misses. So every acknowledged batch is also appended here
at the end of the event loop's turn that acknowledged it (76 bytes, no fsync; one ``write``
for all the batches acknowledged in that turn): the page cache outlives the process. A SIGKILL
can only lose the entries of the turn it interrupts, batches that were in flight a moment
before. A resumed run folds the log into the checkpoint before opening it.

Data flow: the :class:`~._ledger.Ledger` passes every call to the
:class:`~._checkpointer.Checkpointer` and, for delivered batches, appends to the log.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import os
import struct
import zlib
from pathlib import Path

from .._exceptions import CheckpointError
from .._summary import Counters
from ._state import CheckpointState, CheckpointStore

__all__ = ["AckLog", "fold_ack_log"]


#: one acknowledged batch: seq, first and last position, end offset (-1: none), records,
#: then the run's batches, requests, retries and bytes sent at that moment; then a CRC-32
_ACK = struct.Struct("<9q")


class AckLog:
    """Batches acknowledged since the last checkpoint save, so a crash re-sends only those
    that were in flight.

    The checkpoint is saved durably (fsync, rename) once per interval; between saves every
    acknowledged batch is appended here, without fsync (76 bytes), in one ``write`` per turn of
    the event loop for all the batches acknowledged in it: the page cache outlives the process
    (SIGKILL, OOM kill, a crash) though not the machine, and after
    a power loss the last saved checkpoint is consistent too (it re-sends more). A resumed run
    folds these entries into the checkpoint before opening it (:func:`fold_ack_log`).

    Two files take turns so that neither grows: just before a periodic save takes its
    snapshot, appends move to the other file, truncated, but only once a save that started
    after the previous switch has completed, so that every entry it held is in a saved
    checkpoint. Each file starts with the job id; another job's file is ignored. Dead-lettered
    batches are not logged: their dead letters are durable only at the next save.
    """

    def __init__(self, checkpoint: Path) -> None:
        self.paths = tuple(checkpoint.with_name(f"{checkpoint.name}.acks{i}") for i in (0, 1))
        self._header = b""
        self._fd: int | None = None
        self._active = 0
        self._saves_at_switch = -1
        # entries acknowledged in this turn of the event loop, written in one write() at its
        # end (call_soon); without a running loop every append writes at once
        self._pending: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: CheckpointError | None = None

    def read(self, job_id: str) -> list[tuple[int, ...]]:
        """This job's entries in both files; a torn or damaged entry is left out."""
        header = job_id.encode() + b"\n"
        size = _ACK.size + 4
        entries: list[tuple[int, ...]] = []
        for path in self.paths:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise CheckpointError(f"cannot read {path}: {exc.strerror}") from exc
            if not data.startswith(header):
                continue
            for i in range(len(header), len(data) - size + 1, size):
                body = data[i : i + _ACK.size]
                if zlib.crc32(body).to_bytes(4, "little") == data[i + _ACK.size : i + size]:
                    entries.append(_ACK.unpack(body))
        return entries

    def start(self, job_id: str) -> None:
        """A fresh log for ``job_id`` (after the checkpoint that holds the old one is saved)."""
        self._header = job_id.encode() + b"\n"
        self._discard(self.paths[1])
        self._fd = self._create(self.paths[0])
        self._active = 0
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    def append(self, batch: tuple[int, int, int, int, int], c: Counters) -> None:
        """Log one acknowledged batch: written at the end of this turn of the event loop,
        together with the others acknowledged in it (one ``write`` for all), or at once
        without a running loop. A write error is raised here, by the next call."""
        if self._error is not None:
            raise self._error
        body = _ACK.pack(*batch, c.batches, c.requests, c.retries, c.bytes_sent)
        pending = self._pending
        pending.append(body + zlib.crc32(body).to_bytes(4, "little"))
        if len(pending) == 1:
            if self._loop is not None:
                self._loop.call_soon(self.flush)
            else:
                self.flush()
                if self._error is not None:
                    raise self._error

    def flush(self) -> None:
        """Write the pending entries (one ``write``; no fsync, see the class docstring)."""
        pending = self._pending
        if not pending or self._fd is None:
            pending.clear()
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        try:
            os.write(self._fd, data)
        except OSError as exc:
            self._error = CheckpointError(
                f"cannot write {self.paths[self._active]}: {exc.strerror}"
            )

    def switch(self, saves: int) -> None:
        """Called with no save running, before one starts; ``saves`` completed so far."""
        if saves <= self._saves_at_switch or self._fd is None:
            return  # the other file may hold entries no completed save covers yet
        self.flush()  # the pending entries go to the file they were logged for
        if self._error is not None:
            raise self._error
        fd = self._create(self.paths[1 - self._active])
        os.close(self._fd)
        self._fd, self._active, self._saves_at_switch = fd, 1 - self._active, saves

    def close(self, *, delete: bool) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if delete:
            for path in self.paths:
                self._discard(path)

    def _create(self, path: Path) -> int:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
            os.write(fd, self._header)
        except OSError as exc:
            raise CheckpointError(f"cannot write {path}: {exc.strerror}") from exc
        return fd

    @staticmethod
    def _discard(path: Path) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CheckpointError(f"cannot delete {path}: {exc.strerror}") from exc


def fold_ack_log(store: CheckpointStore, acks: AckLog, *, advance: bool = True) -> None:
    """Save the checkpoint with the batches its ack log says were acknowledged after it.

    The watermark moves over those that follow it without a gap (as the run's tracker would
    have, unless that passes a line whose dead letter may not be durable, or not ``advance``);
    the others join ``settled_beyond`` (a resume skips them, re-forming the same
    batches); their records join the counters. Idempotent: an entry the checkpoint already
    covers is left out.
    """
    state = store.load()
    if state is None or state.complete:
        return
    entries = acks.read(state.job_id)
    if entries:
        store.save(_folded(state, entries, advance=advance))


def _folded(
    state: CheckpointState, entries: list[tuple[int, ...]], *, advance: bool = True
) -> CheckpointState:
    mark = state.watermark
    ranges = sorted(state.settled_beyond)
    firsts = [first for first, _ in ranges]
    counters = dict(state.counters)
    new: dict[int, tuple[int, ...]] = {}  # seq -> entry
    for entry in entries:
        first, last, records = entry[1], entry[2], entry[4]
        i = bisect.bisect_right(firsts, first) - 1
        if last <= mark.position or (i >= 0 and last <= ranges[i][1]):
            continue  # saved before the checkpoint was: counted in it already
        new[entry[0]] = entry
        for name in ("records_read", "records_sent"):
            counters[name] = counters.get(name, 0) + records
    for column, name in enumerate(("batches", "requests", "retries", "bytes_sent"), 5):
        counters[name] = max(counters.get(name, 0), *(e[column] for e in entries))
    next_seq, position, offset = mark.next_seq, mark.position, mark.offset
    while advance and next_seq in new:
        entry = new[next_seq]
        first, last, records = entry[1], entry[2], entry[4]
        # the watermark may pass a position no record holds (a rejected line) only when its
        # dead letter is durable: saved before the checkpoint was (else a resume re-reads it)
        saved = state.rejected_through
        if first - 1 > max(position, saved) or (last - first + 1 != records and last > saved):
            break
        del new[next_seq]
        next_seq, position, offset = next_seq + 1, last, entry[3] if entry[3] >= 0 else None
    merged: list[tuple[int, int]] = []
    for first, last in sorted([*ranges, *((e[1], e[2]) for e in new.values())]):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
        else:
            merged.append((first, last))
    return dataclasses.replace(
        state,
        watermark=dataclasses.replace(mark, next_seq=next_seq, position=position, offset=offset),
        settled_beyond=tuple(r for r in merged if r[1] > position),
        counters=counters,
    )
