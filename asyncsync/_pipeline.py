"""The pipeline: one reader, a bounded queue, N sender workers, in one task group.

Data flows one way::

    source.blocks() ─> batcher ─> reader ─> [bounded handoff] ─> workers ─> sender
                                    │                              │
                                    └─> dead-letter (rejects)      ├─> dead-letter (failures)
                                                                   └─> ledger.settled (ack)
                                         ledger ─> checkpoint (contiguous watermark)

Invariants:

* Memory is bounded by the queue: the reader blocks on a full handoff (backpressure), so a
  10 M-record file needs the memory of ``queue_size + concurrency`` batches.
* Every record read is settled exactly once: acknowledged, or written to the dead-letter
  file. The ledger (checkpoint) only ever hears of settled batches.
* A fatal error (authentication refused, checkpoint unwritable, TLS failure) in any task
  cancels the others; the first one is re-raised alone, not wrapped in a group.
* :meth:`Pipeline.stop` (first Ctrl-C) stops the reader; workers finish the batch they hold
  and take no new one; queued batches are left for the resumed run. :meth:`Pipeline.abort`
  (second Ctrl-C, or the grace period over) cancels in-flight requests: they are not settled,
  so the checkpoint stays behind them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import anyio
import anyio.lowlevel

from ._deadletter import DeadLetterFile
from ._handoff import EndOfHandoff, Handoff, HandoffBroken
from ._hooks import CheckpointSaved, QueueDepth, UploadHooks, overrides
from ._records import Batch, BatchResult, Rejected
from ._sender import Sender
from ._summary import Counters

__all__ = ["NullLedger", "Pipeline", "PipelineLedger", "default_queue_size"]

log = logging.getLogger("asyncsync.pipeline")


class PipelineLedger(Protocol):
    """Where settled batches are recorded (:class:`asyncsync.checkpoint._ledger.Ledger`); the
    pipeline knows nothing more. Every call is per batch: keep them cheap."""

    def skip(self, batch: Batch) -> bool:
        """True when a resumed run already settled this batch."""
        ...

    def skip_reject(self, reject: Rejected) -> bool:
        """True when a resumed run already dead-lettered this input record."""
        ...

    def dispatched(self, batch: Batch) -> None: ...

    def settled(self, seq: int, *, delivered: bool) -> None: ...

    def rejected_through(self, position: int) -> None: ...

    def due(self) -> bool:
        """True when a save is due (checked after every settlement: keep it cheap)."""
        ...

    async def tick(self, counters: Counters) -> None:
        """Persist now if still due."""
        ...

    @property
    def saves(self) -> int:
        """Checkpoints written so far."""
        ...


class NullLedger:
    """No checkpoint: nothing to skip, nothing to record."""

    def skip(self, batch: Batch) -> bool:
        return False

    def skip_reject(self, reject: Rejected) -> bool:
        return False

    def dispatched(self, batch: Batch) -> None:
        pass

    def settled(self, seq: int, *, delivered: bool) -> None:
        pass

    def rejected_through(self, position: int) -> None:
        pass

    def due(self) -> bool:
        return False

    async def tick(self, counters: Counters) -> None:
        pass

    @property
    def saves(self) -> int:
        return 0


class Pipeline:
    """Runs batches through ``sender`` with ``concurrency`` workers. Single use."""

    def __init__(
        self,
        batches: AsyncIterator[Batch | list[Rejected]],
        *,
        sender: Sender,
        concurrency: int,
        queue_size: int,
        dead_letter: DeadLetterFile,
        counters: Counters,
        hooks: UploadHooks,
        ledger: PipelineLedger | None = None,
    ) -> None:
        self._batches = batches
        self._sender = sender
        self._concurrency = concurrency
        self._queue_size = queue_size
        self._dead = dead_letter
        self._counters = counters
        self._hooks = hooks
        self._ledger: PipelineLedger = ledger or NullLedger()
        self._stopping = False
        # checked once: with hooks that do not want them, no per-batch event is built
        self._on_queue = hooks.on_queue if overrides(hooks, "on_queue") else None
        self._on_checkpoint = hooks.on_checkpoint if overrides(hooks, "on_checkpoint") else None
        self._scope: anyio.CancelScope | None = None
        self.stopped = False  # True when stop() or abort() ended the run early

    def stop(self) -> None:
        """Stop reading; let in-flight batches finish; leave queued ones for a resume."""
        if not self._stopping:
            log.warning("stopping: finishing in-flight batches")
        self._stopping = True
        self.stopped = True

    def abort(self) -> None:
        """Cancel everything now, in-flight requests included."""
        self.stopped = True
        self._stopping = True
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> None:
        queue = Handoff[Batch](self._queue_size, consumers=self._concurrency)
        try:
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                tg.start_soon(self._read, queue)
                for _ in range(self._concurrency):
                    tg.start_soon(self._work, queue)
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        finally:
            self._scope = None

    async def _read(self, queue: Handoff[Batch]) -> None:
        counters = self._counters
        ledger = self._ledger
        on_queue = self._on_queue
        try:
            async for item in self._batches:
                if self._stopping:
                    break
                if isinstance(item, list):
                    fresh = [r for r in item if not ledger.skip_reject(r)]
                    if fresh:
                        self._dead.write_rejects(fresh)
                        counters.records_read += len(fresh)
                        counters.records_failed += len(fresh)
                    if item:
                        ledger.rejected_through(item[-1].position)
                    continue
                if ledger.skip(item):
                    continue
                ledger.dispatched(item)
                try:
                    if not queue.put_nowait(item):
                        await queue.put(item)
                except HandoffBroken:
                    if self.stopped:  # the workers stopped taking batches: so do we
                        break
                    # The workers left because the run is cancelled (from outside, or for
                    # a worker's error): a put woken by the last one's leave() has not seen
                    # that yet (anyio delivers it to tasks that wait). Take it now, so the
                    # run ends with the cancellation or the worker's error, not this one.
                    await anyio.lowlevel.checkpoint()
                    raise
                counters.queued += 1
                if on_queue is not None:
                    on_queue(QueueDepth(max(0, counters.queued)))
        finally:
            queue.close()
        # the batcher may hold an open file: close it now, not at garbage collection
        aclose = getattr(self._batches, "aclose", None)
        if aclose is not None:
            await aclose()

    async def _work(self, queue: Handoff[Batch]) -> None:
        counters = self._counters
        # a hook that does not override on_batch_done costs nothing per batch
        on_done: Callable[[BatchResult], None] | None = None
        if overrides(self._hooks, "on_batch_done"):
            on_done = self._hooks.on_batch_done
        on_queue = self._on_queue
        ledger = self._ledger
        try:
            while not self._stopping:
                try:
                    batch = queue.get_nowait()
                    if batch is None:
                        batch = await queue.get()
                except EndOfHandoff:
                    break
                # the reader counts after its put: it may not have yet (-1 for a moment)
                counters.queued -= 1
                if on_queue is not None:
                    on_queue(QueueDepth(max(0, counters.queued)))
                if self.stopped:  # stop() came while we waited for the batch
                    break
                results = await self._sender.send(batch)
                delivered = True
                for result in results:
                    n = len(result.batch)
                    counters.records_read += n
                    if result.delivered:
                        counters.records_sent += n
                    else:
                        delivered = False
                        counters.records_failed += n
                        self._dead.write_result(result)
                    if on_done is not None:
                        on_done(result)
                ledger.settled(batch.seq, delivered=delivered)
                if ledger.due():
                    saves = ledger.saves
                    await ledger.tick(counters)
                    if self._on_checkpoint is not None and ledger.saves > saves:
                        self._on_checkpoint(CheckpointSaved(ledger.saves, final=False))
        finally:
            queue.leave()


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that ended the run, not the cancellations it caused in the other tasks."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            return exc
    return group.exceptions[0]


def default_queue_size(concurrency: int) -> int:
    """Two batches per worker: enough to keep every worker busy, small enough to bound memory."""
    return max(2, math.ceil(2 * concurrency))
