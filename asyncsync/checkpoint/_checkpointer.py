"""The checkpointer: tracker + store + a save throttle."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Final

import anyio
import anyio.to_thread

from .._exceptions import CheckpointError
from .._records import Batch, Rejected
from .._summary import Counters
from ._state import CheckpointState, CheckpointStore, Fingerprint
from ._watermark import WatermarkTracker

__all__ = ["DEFAULT_CHECKPOINT_INTERVAL", "Checkpointer"]

#: seconds between periodic saves
DEFAULT_CHECKPOINT_INTERVAL: Final = 1.0


class Checkpointer:
    """Tracker + store + throttle: what the pipeline talks to (its ``Ledger``).

    The per-batch calls go straight to the :class:`WatermarkTracker`; :meth:`tick` (after each
    settlement) saves at most once per ``interval`` seconds of ``clock``, in a worker thread,
    one save at a time. A save that fails raises :class:`CheckpointError`: the run stops
    rather than continue without a checkpoint. With ``store=None`` (stdin without
    ``--checkpoint``) nothing is written.
    """

    def __init__(
        self,
        store: CheckpointStore | None,
        tracker: WatermarkTracker,
        *,
        job_id: str,
        fingerprint: Fingerprint,
        interval: float = DEFAULT_CHECKPOINT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        previous: CheckpointState | None = None,
        before_save: Callable[[], None] | None = None,
    ) -> None:
        if not interval >= 0:
            raise ValueError(f"interval must be >= 0, got {interval!r}")
        self.store = store
        self.tracker = tracker
        self.job_id = job_id
        self.fingerprint = fingerprint
        #: the checkpoint this run resumes, or None for a new job
        self.previous = previous
        self.interval = interval
        self._clock = clock
        self._wall = wall_clock
        self._last_save = clock()
        self._lock = anyio.Lock()
        #: saves written, and seconds spent in them (for the cost of checkpointing)
        self.saves = 0
        self.save_seconds = 0.0
        self._before_save = before_save

    @classmethod
    def open(
        cls,
        store: CheckpointStore | None,
        fingerprint: Fingerprint,
        *,
        resume: bool = True,
        interval: float = DEFAULT_CHECKPOINT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        before_save: Callable[[], None] | None = None,
        job_id: str | None = None,
    ) -> Checkpointer:
        """Resume the job in ``store``, or start a new one.

        * no checkpoint, or a *complete* one: a new job (``job_id``, or a new uuid4 hex);
        * ``resume`` and an incomplete one: continue it, or raise :class:`CheckpointError`
          listing what changed when the fingerprint differs;
        * not ``resume``: delete the checkpoint and start a new job, so that a crash before
          the first save cannot resume the abandoned job.

        ``before_save`` is blocking work that must be durable before a save claims it (the
        dead-letter file's fsync), run in a worker thread just before each save.
        """
        previous = store.load() if store is not None else None
        if previous is not None and not resume:
            assert store is not None
            store.delete()
            previous = None
        if previous is not None and not previous.complete:
            assert store is not None
            changes = previous.fingerprint.diff(fingerprint)
            if changes:
                raise CheckpointError(
                    f"checkpoint {store.path} is for another job: "
                    + "; ".join(changes)
                    + ". Start over with --no-resume, or restore the source and settings"
                )
            return cls(
                store,
                WatermarkTracker.resume(previous),
                job_id=previous.job_id,
                fingerprint=fingerprint,
                interval=interval,
                clock=clock,
                wall_clock=wall_clock,
                previous=previous,
                before_save=before_save,
            )
        return cls(
            store,
            WatermarkTracker(),
            job_id=job_id or uuid.uuid4().hex,
            fingerprint=fingerprint,
            interval=interval,
            clock=clock,
            wall_clock=wall_clock,
            before_save=before_save,
        )

    @property
    def resumed(self) -> bool:
        return self.previous is not None

    # -- the pipeline's Ledger

    def skip(self, batch: Batch) -> bool:
        """True (and the batch counts as settled) when the resumed run already settled it."""
        if self.tracker.settled_before(batch):
            self.tracker.skip(batch)
            return True
        return False

    def skip_reject(self, reject: Rejected) -> bool:
        """True when this input reject is already in the dead-letter file."""
        return reject.position <= self.tracker.last_rejected

    def dispatched(self, batch: Batch) -> None:
        self.tracker.dispatched(batch)

    def settled(self, seq: int, delivered: bool = True) -> None:
        self.tracker.settled(seq, delivered)

    def rejected_through(self, position: int) -> None:
        self.tracker.rejected_through(position)

    def due(self) -> bool:
        """True when :meth:`tick` would save: the interval has passed and no save is running."""
        return self._clock() - self._last_save >= self.interval and not self._lock.locked()

    async def tick(self, counters: Counters) -> None:
        """Called after each settlement: :meth:`maybe_save`, inlined (this is per batch)."""
        if self._clock() - self._last_save >= self.interval and not self._lock.locked():
            async with self._lock:
                await self._save(self.snapshot(counters))

    # -- saving

    def snapshot(self, counters: Counters, *, complete: bool = False) -> CheckpointState:
        return self.tracker.snapshot(
            counters,
            job_id=self.job_id,
            fingerprint=self.fingerprint,
            complete=complete,
            updated_at=self._wall(),
        )

    async def maybe_save(self, counters: Counters) -> bool:
        """Save if ``interval`` has passed since the last save; True when it saved.

        Returns at once (False) when not due, or while another save is being written.
        """
        if self._clock() - self._last_save < self.interval or self._lock.locked():
            return False
        async with self._lock:
            await self._save(self.snapshot(counters))
        return True

    async def final_save(self, counters: Counters, *, complete: bool) -> CheckpointState:
        """Save now, after any save in progress; shielded, so it completes under cancellation.

        ``complete=True`` requires no batch in flight (:class:`RuntimeError` otherwise).
        """
        with anyio.CancelScope(shield=True):
            async with self._lock:
                state = self.snapshot(counters, complete=complete)
                await self._save(state)
        return state

    async def _save(self, state: CheckpointState) -> None:
        self._last_save = self._clock()
        if self.store is None:
            return
        started = time.perf_counter()
        if self._before_save is not None:
            await anyio.to_thread.run_sync(self._before_save)
        await self.store.asave(state)
        self.saves += 1
        self.save_seconds += time.perf_counter() - started
