"""The ledger: one object that records a run's settled batches durably.

It owns the :class:`~._checkpointer.Checkpointer` (watermark + periodic saves), the
:class:`~._acklog.AckLog` (every acknowledged batch at once, between saves) and the order of
durability: the dead-letter file, given to the constructor, is flushed and fsynced before every
save, so a checkpoint never claims a dead-lettered record that is not durably in the file.

Life of a run::

    ledger = Ledger.open(path, source.fingerprint(settings), dead_letter=dead, counters=c)
    mark = ledger.resume_point()           # None for a new job; else read from after it
    await ledger.start()                   # durable before the first request
    ... the pipeline calls skip/dispatched/settled/rejected_through/due/tick per batch ...
    await ledger.finish(stopped=...)       # dead letters closed, last save, ack log dropped

The per-batch calls are the hot path (benchmarked): those with nothing to add are the
checkpointer's own bound methods, not wrappers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from .._deadletter import DeadLetterFile
from .._records import Batch, Rejected
from .._summary import Counters
from ._acklog import AckLog, fold_ack_log
from ._checkpointer import DEFAULT_CHECKPOINT_INTERVAL, Checkpointer
from ._state import CheckpointStore, Fingerprint, Watermark

__all__ = ["Ledger"]

log = logging.getLogger("asyncsync")


class Ledger:
    """The checkpoint of one run, as the pipeline's ledger, with the ack log and the dead-letter
    file it must make durable first. Build it with :meth:`open`."""

    skip: Callable[[Batch], bool]
    skip_reject: Callable[[Rejected], bool]
    rejected_through: Callable[[int], None]
    due: Callable[[], bool]

    def __init__(
        self,
        checkpointer: Checkpointer,
        acks: AckLog,
        *,
        dead_letter: DeadLetterFile,
        counters: Counters,
    ) -> None:
        self._ckpt = checkpointer
        self._acks = acks
        self._dead = dead_letter
        self._counters = counters
        # seq -> (seq, first, last, end offset or -1, records) of each batch in flight
        self._open: dict[int, tuple[int, int, int, int, int]] = {}
        # the per-batch calls with nothing to add go straight to the checkpointer
        self.skip = checkpointer.skip
        self.skip_reject = checkpointer.skip_reject
        self.rejected_through = checkpointer.rejected_through
        self.due = checkpointer.due
        # the checkpointer's dispatched/settled only delegate to its tracker: call it directly
        self._track_dispatched = checkpointer.tracker.dispatched
        self._track_settled = checkpointer.tracker.settled

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        fingerprint: Fingerprint,
        *,
        dead_letter: DeadLetterFile,
        counters: Counters,
        resume: bool = True,
        keyed: bool = False,
        interval: float = DEFAULT_CHECKPOINT_INTERVAL,
        job_id: str | None = None,
    ) -> Ledger:
        """Resume the job checkpointed at ``path`` (its counters restored into ``counters``),
        or start a new one. ``keyed``: the source's watermark carries a key the ack log does
        not hold, so folding the log must not move the watermark.
        ``job_id``: a new job's (None: a new uuid4); a resumed one keeps its own.
        :class:`~asyncsync.CheckpointError` when the checkpoint is unusable or for another job."""
        store = CheckpointStore(path)
        acks = AckLog(Path(path))
        # a crash may have torn the dead-letter file's last line: cut it now, so the file is
        # valid JSON Lines even if this run dead-letters nothing (its records were never
        # checkpointed: this run redoes them)
        dead_letter.repair()
        if resume:
            fold_ack_log(store, acks, advance=not keyed)
        ckpt = Checkpointer.open(
            store,
            fingerprint,
            resume=resume,
            interval=interval,
            before_save=dead_letter.sync,
            job_id=job_id,
        )
        if ckpt.previous is not None:
            ckpt.previous.restore_counters(counters)
        return cls(ckpt, acks, dead_letter=dead_letter, counters=counters)

    @property
    def job_id(self) -> str:
        """Kept across resumes: a re-formed batch carries the key it was first sent with."""
        return self._ckpt.job_id

    @property
    def checkpointer(self) -> Checkpointer:
        return self._ckpt

    def resume_point(self) -> Watermark | None:
        """Where a resumed job continues (read from after ``position``); None for a new job."""
        return None if self._ckpt.previous is None else self._ckpt.tracker.watermark

    async def start(self) -> None:
        """Save before the first request: a crash before the first periodic save must resume
        this job id (the same Idempotency-Keys), not start one whose keys the server cannot
        deduplicate; and an unwritable checkpoint stops the run before it sends anything."""
        await self._ckpt.final_save(self._counters, complete=False)
        self._acks.start(self.job_id)

    # -- the pipeline's ledger (per batch)

    def dispatched(self, batch: Batch) -> None:
        self._track_dispatched(batch)
        end = batch.end_offset
        positions = batch.positions
        seq = batch.seq
        self._open[seq] = (
            seq, positions[0], positions[-1], -1 if end is None else end, len(batch.records),
        )  # fmt: skip

    def settled(self, seq: int, *, delivered: bool) -> None:
        batch = self._open.pop(seq)
        self._track_settled(seq, delivered)
        if delivered:
            self._acks.append(batch, self._counters)

    @property
    def saves(self) -> int:
        """Checkpoints written so far (the first one by :meth:`start`)."""
        return self._ckpt.saves

    async def tick(self, counters: Counters) -> None:
        if self._ckpt.due():
            self._acks.switch(self._ckpt.saves)
        await self._ckpt.tick(counters)

    # -- the end

    async def finish(self, *, stopped: bool) -> bool:
        """Close the dead-letter file (durable), then save the last checkpoint: complete when
        the run was not ``stopped`` and nothing is in flight. The ack log goes once the save
        covers it. Returns whether the job is complete."""
        self._dead.close()
        complete = not stopped and self._ckpt.tracker.in_flight == 0
        saved = False
        try:
            await self._ckpt.final_save(self._counters, complete=complete)
            saved = True
        finally:
            self._acks.close(delete=saved)
        return complete
