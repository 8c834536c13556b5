"""The pipeline (asyncsync._pipeline): reader, bounded handoff, workers, ledger; with a fake
sender (a tiny object, no HTTP), so each invariant is checked on its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncsync._deadletter import DeadLetterFile
from asyncsync._handoff import EndOfHandoff, Handoff, HandoffBroken
from asyncsync._hooks import NO_HOOKS, UploadHooks
from asyncsync._pipeline import Pipeline
from asyncsync._records import Batch, BatchResult, Rejected
from asyncsync._summary import Counters


class FakeSender:
    """Delivers every batch, except seqs in ``refuse`` (status 400); ``delay`` per batch;
    ``boom`` at seq ``explode``. Counts the most batches in flight at once."""

    def __init__(
        self,
        *,
        refuse: set[int] = frozenset(),
        delay: float = 0.0,
        explode: int = -1,  # type: ignore[assignment]
    ) -> None:
        self.refuse, self.delay, self.explode = refuse, delay, explode
        self.sent: list[int] = []
        self.running = self.max_running = 0

    async def send(self, batch: Batch) -> list[BatchResult]:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if batch.seq == self.explode:
                raise RuntimeError("boom")
            self.sent.append(batch.seq)
            ok = batch.seq not in self.refuse
            return [
                BatchResult(batch, f"k-{batch.seq}", ok, 200 if ok else 400, 1, "" if ok else "no")
            ]
        finally:
            self.running -= 1


class SpyLedger:
    """Records the calls a ledger gets; says batch 0 was settled by an earlier run."""

    def __init__(self) -> None:
        self.dispatch_order: list[int] = []
        self.outcomes: dict[int, bool] = {}
        self.rejected = 0

    def skip(self, batch: Batch) -> bool:
        return batch.seq == 0

    def skip_reject(self, reject: Rejected) -> bool:
        return False

    def dispatched(self, batch: Batch) -> None:
        self.dispatch_order.append(batch.seq)

    def settled(self, seq: int, *, delivered: bool) -> None:
        assert seq not in self.outcomes, "settled twice"
        self.outcomes[seq] = delivered

    def rejected_through(self, position: int) -> None:
        self.rejected = position

    def due(self) -> bool:
        return False

    async def tick(self, counters: Counters) -> None:
        pass


async def batches(n: int, *, rejects_at: int = -1) -> AsyncIterator[Batch | list[Rejected]]:
    for seq in range(n):
        if seq == rejects_at:
            yield [Rejected("{bad", 10 * seq, "not JSON", 10 * seq)]
        yield Batch(seq, [b"{}"] * 10, list(range(10 * seq + 1, 10 * seq + 11)))


_OPEN: list[DeadLetterFile] = []


@pytest.fixture(autouse=True)
def _close_dead_letter_files() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def make(sender: FakeSender, source: Any, tmp_path: Path, **kw: Any) -> tuple[Pipeline, Counters]:
    counters = Counters()
    _OPEN.append(dead := DeadLetterFile(tmp_path / "failed.jsonl"))
    pipeline = Pipeline(
        source,
        sender=sender,  # type: ignore[arg-type]
        concurrency=kw.pop("concurrency", 4),
        queue_size=kw.pop("queue_size", 8),
        dead_letter=dead,
        counters=counters,
        hooks=kw.pop("hooks", NO_HOOKS),
        **kw,
    )
    return pipeline, counters


async def test_every_batch_is_settled_once_and_failures_are_dead_lettered(tmp_path: Path) -> None:
    """Delivered or not, each dispatched batch is settled exactly once; a batch the ledger
    says was settled before is neither sent nor dispatched; rejects go to the dead letters."""
    sender, ledger = FakeSender(refuse={3}), SpyLedger()
    pipeline, counters = make(sender, batches(20, rejects_at=5), tmp_path, ledger=ledger)
    await pipeline.run()
    assert sorted(sender.sent) == list(range(1, 20))
    assert ledger.dispatch_order == list(range(1, 20))  # in source order
    assert ledger.outcomes == {seq: seq != 3 for seq in range(1, 20)}
    assert ledger.rejected == 50
    assert counters.records_sent == 180 and counters.records_failed == 11
    assert counters.records_read == 191
    assert not pipeline.stopped


async def test_workers_bound_what_is_in_flight(tmp_path: Path) -> None:
    """No more than ``concurrency`` batches are sent at once."""
    sender = FakeSender(delay=0.005)
    pipeline, _ = make(sender, batches(40), tmp_path, concurrency=3, queue_size=2)
    await pipeline.run()
    assert sender.max_running == 3 and len(sender.sent) == 40


async def test_stop_finishes_in_flight_and_leaves_the_rest(tmp_path: Path) -> None:
    """stop(): batches in flight are settled, nothing new is sent, the run returns stopped."""
    sender, ledger = FakeSender(delay=0.02), SpyLedger()
    pipeline, _ = make(sender, batches(200), tmp_path, ledger=ledger)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.run)
        await asyncio.sleep(0.05)
        pipeline.stop()
    assert pipeline.stopped
    assert 0 < len(sender.sent) < 199
    assert set(ledger.outcomes) == set(sender.sent)  # everything sent was settled


async def test_abort_cancels_in_flight_without_settling_them(tmp_path: Path) -> None:
    """abort(): requests in flight are cancelled and never settled (the checkpoint stays
    behind them)."""
    sender, ledger = FakeSender(delay=10), SpyLedger()
    pipeline, _ = make(sender, batches(50), tmp_path, ledger=ledger)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pipeline.run)
            await asyncio.sleep(0.05)
            pipeline.abort()
    assert pipeline.stopped and ledger.outcomes == {} and ledger.dispatched


async def test_an_error_in_a_worker_is_raised_alone(tmp_path: Path) -> None:
    """The first real error ends the run, not wrapped in an exception group."""
    pipeline, _ = make(FakeSender(explode=7), batches(30), tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        await pipeline.run()


async def test_on_batch_done_receives_batch_results(tmp_path: Path) -> None:
    """A hook overriding on_batch_done gets every BatchResult; one that does not, nothing."""
    results: list[BatchResult] = []

    class Spy(UploadHooks):
        def on_batch_done(self, result: BatchResult) -> None:
            results.append(result)

    pipeline, _ = make(FakeSender(refuse={2}), batches(5), tmp_path, hooks=Spy())
    await pipeline.run()
    assert sorted((r.batch.seq, r.delivered) for r in results) == [
        (0, True), (1, True), (2, False), (3, True), (4, True)
    ]  # fmt: skip


# the bounded handoff between the reader and the workers (asyncsync._handoff)


async def test_handoff_is_bounded_and_fifo() -> None:
    """A full handoff refuses put_nowait and makes put() wait until a consumer takes one."""
    q = Handoff[int](2, consumers=1)
    assert q.put_nowait(1) and q.put_nowait(2)
    assert not q.put_nowait(3)
    waiting = asyncio.create_task(q.put(3))
    await asyncio.sleep(0)
    assert not waiting.done() and len(q) == 2
    assert q.get_nowait() == 1
    await waiting
    assert [q.get_nowait(), q.get_nowait(), q.get_nowait()] == [2, 3, None]


async def test_handoff_close_drains_then_ends_every_consumer() -> None:
    """After close(), queued items are still taken; then every waiting consumer ends."""
    q = Handoff[int](4, consumers=3)
    q.put_nowait(7)
    q.close()
    assert await q.get() == 7
    with pytest.raises(EndOfHandoff):
        await q.get()
    q2 = Handoff[int](4, consumers=2)
    getters = [asyncio.create_task(q2.get()) for _ in range(2)]
    await asyncio.sleep(0)
    q2.close()
    for task in getters:
        with pytest.raises(EndOfHandoff):
            await task


async def test_handoff_breaks_a_waiting_producer_when_every_consumer_leaves() -> None:
    q = Handoff[int](1, consumers=2)
    q.put_nowait(1)
    waiting = asyncio.create_task(q.put(2))
    await asyncio.sleep(0)
    q.leave()
    await asyncio.sleep(0)
    assert not waiting.done()  # one consumer is still there
    q.leave()
    with pytest.raises(HandoffBroken):
        await waiting


async def test_handoff_a_cancelled_consumer_loses_no_item() -> None:
    """A consumer woken for an item and cancelled before it runs passes the item on."""
    q = Handoff[int](4, consumers=2)
    first = asyncio.create_task(q.get())
    second = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.put_nowait(5)  # wakes `first`
    first.cancel()
    assert await second == 5
    with pytest.raises(asyncio.CancelledError):
        await first
