"""The adaptive concurrency limit: the control law on a simulated server, and the gate."""

from __future__ import annotations

import asyncio
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from asyncsync import BatchLimits, StateOptions, Uploader, upload
from asyncsync._concurrency import AdaptiveLimit, ConcurrencyLimiter
from asyncsync._exceptions import ConfigError
from asyncsync.sink import Sink, SinkConfig


@dataclass
class SimServer:
    """A discrete-event server with capacity ``L``: up to ``L`` in flight each answer takes
    ``base``; above, ``base * n / L`` (it queues); above ``hard`` it answers 429 at once.
    The client keeps as many requests out as the limit allows (an endless backlog)."""

    capacity: Callable[[float], int]
    base: float = 0.020
    hard_factor: float = 2.0
    jitter: float = 0.1
    seed: int = 0
    now: float = 0.0
    ok: int = 0
    refused: int = 0
    trace: list[tuple[float, int]] = field(default_factory=list)

    def run(self, control: AdaptiveLimit, until: float) -> None:
        rng = random.Random(self.seed)
        events: list[tuple[float, int, bool, float]] = []  # (done at, id, ok, sent at)
        in_flight = 0
        n = 0
        while self.now < until:
            while in_flight < control.limit:
                in_flight += 1
                n += 1
                cap = self.capacity(self.now)
                if in_flight > self.hard_factor * cap:
                    heapq.heappush(events, (self.now + 0.001, n, False, self.now))
                else:
                    service = self.base * max(1.0, in_flight / cap)
                    service *= 1 + rng.uniform(-self.jitter, self.jitter)
                    heapq.heappush(events, (self.now + service, n, True, self.now))
            done, _, ok, sent = heapq.heappop(events)
            self.now = done
            if ok:
                self.ok += 1
                control.on_success(done - sent, in_flight)
            else:
                self.refused += 1
                control.on_backpressure()
            in_flight -= 1
            self.trace.append((self.now, control.limit))

    def mean_limit(self, start: float, end: float) -> float:
        values = [limit for t, limit in self.trace if start <= t < end]
        return sum(values) / len(values)


def simulate(
    capacity: Callable[[float], int], until: float, *, seed: int = 0, initial: int = 8
) -> tuple[SimServer, AdaptiveLimit]:
    server = SimServer(capacity, seed=seed)
    control = AdaptiveLimit(initial=initial, maximum=256, clock=lambda: server.now)
    server.run(control, until)
    return server, control


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_settles_near_the_capacity(seed: int) -> None:
    """Against L=16 the limit settles within ±25% of 16 and back-pressure stays rare."""
    server, _ = simulate(lambda t: 16, 20.0, seed=seed)
    assert 12 <= server.mean_limit(5.0, 20.0) <= 20
    assert max(limit for t, limit in server.trace if t >= 5.0) <= 24
    assert server.refused <= 0.02 * (server.ok + server.refused)


@pytest.mark.parametrize("capacity", [1, 4, 64, 200])
def test_finds_small_and_large_capacities(capacity: int) -> None:
    """From 8, slow start and the law find capacities far below and above the start."""
    server, _ = simulate(lambda t: capacity, 30.0)
    mean = server.mean_limit(20.0, 30.0)
    assert capacity * 0.75 <= mean <= capacity * 1.25 + 2


def test_slow_start_ramps_in_a_few_round_trips() -> None:
    """8 -> 128 takes a handful of windows, not one request per window."""
    server, _ = simulate(lambda t: 128, 0.5)
    assert max(limit for _, limit in server.trace) >= 100


def test_follows_a_halving_and_a_doubling() -> None:
    """L goes 16 -> 8 at 10 s, 8 -> 32 at 20 s: the limit follows each within a few seconds."""

    def capacity(t: float) -> int:
        return 16 if t < 10 else 8 if t < 20 else 32

    server, _ = simulate(capacity, 30.0)
    assert 6 <= server.mean_limit(12.0, 20.0) <= 10
    assert 24 <= server.mean_limit(23.0, 30.0) <= 40


def test_unused_limit_does_not_grow() -> None:
    """A source that keeps 3 requests out never tests a limit of 8: it stays 8."""
    now = 0.0
    control = AdaptiveLimit(initial=8, clock=lambda: now)
    for _ in range(1000):
        now += 0.01
        control.on_success(0.02, 3)
    assert control.limit == 8


def test_one_decrease_per_window_and_floor() -> None:
    """Back-pressure answers that arrive together cut once; repeated cuts stop at 1."""
    now = 0.0
    control = AdaptiveLimit(initial=64, clock=lambda: now)
    control.on_success(0.1, 64)  # a window length of 0.1 s
    control.on_backpressure()
    after_first = control.limit
    assert after_first == 48
    for _ in range(20):
        control.on_backpressure()
    assert control.limit == after_first
    for _ in range(50):
        now += 1.0
        control.on_backpressure()
    assert control.limit == 1
    assert not control.slow_start


def test_ceiling() -> None:
    """The limit never passes max_concurrency."""
    server, control = simulate(lambda t: 1000, 5.0, initial=4)
    server_max = max(limit for _, limit in server.trace)
    assert server_max == control.maximum == 256


def test_probe_remeasures_a_slower_base() -> None:
    """When the endpoint itself becomes slower, the periodic probe re-learns the base RTT
    instead of reading the slowdown as a queue forever."""
    server = SimServer(lambda t: 16)
    control = AdaptiveLimit(initial=8, clock=lambda: server.now)
    server.run(control, 10.0)
    server.base = 0.060
    server.run(control, 70.0)
    assert control.base_rtt >= 0.05
    assert 12 <= server.mean_limit(62.0, 70.0) <= 20


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"maximum": 0}, "max_concurrency"),
        ({"initial": 0}, "initial_concurrency"),
        ({"initial": 10, "maximum": 5}, "initial_concurrency"),
    ],
)
def test_bad_settings(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        AdaptiveLimit(**kwargs)
    assert info.value.field == field


# -- the gate ---------------------------------------------------------------------------------


async def test_gate_is_fifo_and_follows_the_limit() -> None:
    """Waiters go in arrival order; a raised limit admits more at once, a lowered one waits
    for releases."""
    now = 0.0
    control = AdaptiveLimit(initial=2, maximum=8, clock=lambda: now)
    gate = ConcurrencyLimiter(control, clock=lambda: now)
    order: list[int] = []

    async def worker(i: int) -> None:
        await gate.acquire()
        order.append(i)

    await gate.acquire()
    await gate.acquire()
    tasks = [asyncio.create_task(worker(i)) for i in range(4)]
    await asyncio.sleep(0)
    assert order == [] and gate.in_flight == 2
    gate.release()
    await asyncio.sleep(0)
    assert order == [0]
    now = 1.0
    control._set(5)  # as a window close would
    await asyncio.sleep(0)
    assert order == [0, 1, 2, 3] and gate.in_flight == 5
    assert gate.max_seen == 5 and gate.timeline[-1] == (1.0, 5)
    await asyncio.gather(*tasks)


async def test_gate_cancelled_waiter_leaves_no_hole() -> None:
    """A waiter cancelled in the queue takes no slot; the next one gets it."""
    control = AdaptiveLimit(initial=1, maximum=4)
    gate = ConcurrencyLimiter(control)
    await gate.acquire()
    first = asyncio.create_task(gate.acquire())
    second = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    gate.release()
    await second
    assert gate.in_flight == 1
    gate.release()
    assert gate.in_flight == 0


def test_timeline_is_bounded() -> None:
    """The limit over time keeps at most a few hundred points however often it moves."""
    now = 0.0
    control = AdaptiveLimit(initial=2, maximum=100, clock=lambda: now)
    gate = ConcurrencyLimiter(control, clock=lambda: now)
    for i in range(100_000):
        now += 0.01
        control._set(2 + i % 50)
    assert len(gate.timeline) <= 513
    assert gate.timeline[0] == (0.0, 2)
    assert gate.timeline[-1][1] == control.limit  # the latest value is kept
    assert gate.timeline[-1][0] >= 0.99 * now


# -- end to end: the uploader against the capacity sink ---------------------------------------


async def test_auto_upload_reports_the_limit(tmp_path: Path) -> None:
    """concurrency="auto" delivers everything through the gate and the summary (and its JSON)
    carries the final limit, the highest one and the limit over time."""
    records = [{"i": i} for i in range(400)]
    state = StateOptions(failed=tmp_path / "failed.jsonl")
    cfg = SinkConfig(require_auth=False, latency=0.01, capacity=4, overload_status=503)
    async with Sink(cfg) as sink:
        summary = await upload(
            records,
            sink.ingest_url,
            concurrency="auto",
            max_concurrency=32,
            initial_concurrency=2,
            limits=BatchLimits(max_records=2),
            state=state,
        )
        stats = sink.stats()
    assert summary.records_sent == 400 and summary.records_failed == 0
    assert summary.concurrency_final is not None and 1 <= summary.concurrency_final <= 32
    assert summary.concurrency_max_seen is not None
    assert summary.concurrency_max_seen >= max(2, summary.concurrency_final)
    assert stats["max_concurrent_ingest"] <= 32
    data = summary.to_dict()
    assert data["concurrency_timeline"][0] == [0.0, 2]
    assert data["concurrency_final"] == summary.concurrency_final


async def test_fixed_concurrency_has_no_timeline(tmp_path: Path) -> None:
    """A fixed limit reports itself as final and highest, and no timeline."""
    state = StateOptions(failed=tmp_path / "failed.jsonl")
    async with Sink(SinkConfig(require_auth=False)) as sink:
        summary = await upload([{"i": 1}], sink.ingest_url, concurrency=3, state=state)
    assert (summary.concurrency_final, summary.concurrency_max_seen) == (3, 3)
    assert "concurrency_timeline" not in summary.to_dict()


async def test_attempt_signals_from_the_sender() -> None:
    """A release without a signal (what the sender does for a 400, 401 or 500) leaves the
    limit alone; back-pressure cuts it and ends slow start."""
    now = 0.0
    control = AdaptiveLimit(initial=16, maximum=64, clock=lambda: now)
    gate = ConcurrencyLimiter(control, clock=lambda: now)
    await gate.acquire()
    gate.release()  # a 400 / 401: no signal
    assert control.limit == 16 and control.slow_start
    await gate.acquire()
    gate.release_backpressure()
    assert control.limit == 12 and not control.slow_start
    assert gate.in_flight == 0


@pytest.mark.parametrize(
    ("value", "ok"), [("auto", True), (0, False), ("fast", False), (True, False)]
)
def test_uploader_checks_concurrency(value: object, ok: bool) -> None:
    if ok:
        Uploader("http://127.0.0.1:1/", concurrency=value)  # type: ignore[arg-type]
    else:
        with pytest.raises(ConfigError) as info:
            Uploader("http://127.0.0.1:1/", concurrency=value)  # type: ignore[arg-type]
        assert info.value.field == "concurrency"
    with pytest.raises(ConfigError) as info:
        Uploader(
            "http://127.0.0.1:1/", concurrency="auto", initial_concurrency=9, max_concurrency=4
        )
    assert info.value.field == "initial_concurrency"
