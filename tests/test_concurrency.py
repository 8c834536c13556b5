"""The adaptive concurrency limit: the control law on a simulated server, and the gate."""

from __future__ import annotations

import asyncio
import heapq
import math
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
    """A discrete-event server with capacity ``L``: with ``m`` requests at the server each
    answer takes ``base`` up to ``L``, ``base * m / L`` above (it queues); above ``hard`` it
    answers 429 at once. ``overhead`` is the client's own time per request (half before the
    server sees it, half after): it adds to the round trip without loading the server, as
    the client's CPU does on a loaded host. ``connect`` is the extra time of a request that
    opens a new connection (one more in flight than ever before): the pool grows during slow
    start, so its round trips are longer than the steady state's. ``service`` replaces the
    capacity model with any service time as a function of ``m``. The client keeps as many
    requests out as the limit allows (an endless backlog), or as many as ``ready(t)`` says
    the source has batches for. ``stall(t)`` is when the client runs again if it is frozen
    at ``t`` (descheduled on a loaded host: answers wait until then), else ``t``;
    ``slowdown(t)`` multiplies every service time that starts at ``t`` (a share of the CPU
    that varies with what else runs)."""

    capacity: Callable[[float], int]
    base: float = 0.020
    hard_factor: float = 2.0
    jitter: float = 0.1
    overhead: float = 0.0
    connect: float = 0.0
    ready: Callable[[float], int] | None = None
    service: Callable[[int], float] | None = None
    stall: Callable[[float], float] | None = None
    slowdown: Callable[[float], float] | None = None
    seed: int = 0
    now: float = 0.0
    ok: int = 0
    refused: int = 0
    connections: int = 0
    trace: list[tuple[float, int, bool]] = field(default_factory=list)

    def run(self, control: AdaptiveLimit, until: float) -> None:
        rng = random.Random(self.seed)
        half = self.overhead / 2
        events: list[tuple[float, int, str, float]] = []  # (at, id, what, sent at)
        in_flight = at_server = n = 0
        while self.now < until:
            cap = control.limit if self.ready is None else min(control.limit, self.ready(self.now))
            while in_flight < cap:
                in_flight += 1
                n += 1
                setup = 0.0
                if in_flight > self.connections:  # a new connection: connect first
                    self.connections = in_flight
                    setup = self.connect
                heapq.heappush(events, (self.now + half + setup, n, "arrive", self.now))
            at, i, what, sent = heapq.heappop(events)
            self.now = at
            if what == "arrive":
                at_server += 1
                cap = self.capacity(at)
                if self.service is None and at_server > self.hard_factor * cap:
                    at_server -= 1
                    heapq.heappush(events, (at + 0.001 + half, i, "refused", sent))
                    continue
                if self.service is not None:
                    service = self.service(at_server)
                else:
                    service = self.base * max(1.0, at_server / cap)
                service *= 1 + rng.uniform(-self.jitter, self.jitter)
                if self.slowdown is not None:
                    service *= self.slowdown(at)
                heapq.heappush(events, (at + service, i, "served", sent))
                continue
            if what == "served":
                at_server -= 1
                heapq.heappush(events, (at + half, i, "ok", sent))
                continue
            if what in ("ok", "refused") and self.stall is not None and self.stall(at) > at:
                heapq.heappush(events, (self.stall(at), i, what, sent))  # the client is frozen
                continue
            if what == "ok":
                self.ok += 1
                control.on_success(at - sent, in_flight)
            else:
                self.refused += 1
                control.on_backpressure()
            in_flight -= 1
            self.trace.append((at, control.limit, what == "ok"))

    def limits(self, start: float, end: float) -> list[int]:
        return [limit for t, limit, _ in self.trace if start <= t < end]

    def mean_limit(self, start: float, end: float) -> float:
        values = self.limits(start, end)
        return sum(values) / len(values)

    def goodput(self, start: float, end: float) -> float:
        """Successful answers per second in [start, end)."""
        return sum(1 for t, _, ok in self.trace if start <= t < end and ok) / (end - start)


def simulate(
    capacity: Callable[[float], int],
    until: float,
    *,
    seed: int = 0,
    initial: int = 8,
    **server: Any,
) -> tuple[SimServer, AdaptiveLimit]:
    sim = SimServer(capacity, seed=seed, **server)
    control = AdaptiveLimit(initial=initial, maximum=256, clock=lambda: sim.now)
    sim.run(control, until)
    return sim, control


@pytest.mark.parametrize("overhead", [0.0, 0.002])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_settles_near_the_capacity(seed: int, overhead: float) -> None:
    """Against L=16 the limit is within ±25% of 16 from 10 s on and for good. When the
    client's own overhead adds 2 ms to every 20 ms round trip, the knee the client sees is
    16 * 22 / 20 = 17.6 in flight (that many keep 16 at the server): within ±25% of that.
    Back-pressure stays under 2% and goodput at 0.9x of what the server can do."""
    server, _ = simulate(lambda t: 16, 30.0, seed=seed, overhead=overhead)
    knee = 16 * (0.020 + overhead) / 0.020
    assert all(0.75 * knee <= limit <= 1.25 * knee for limit in server.limits(10.0, 30.0))
    assert server.refused <= 0.02 * (server.ok + server.refused)
    assert server.goodput(10.0, 30.0) >= 0.9 * 16 / 0.020


@pytest.mark.parametrize("capacity", [1, 4, 64, 200])
def test_finds_small_and_large_capacities(capacity: int) -> None:
    """From 8, slow start and the law find capacities far below and above the start."""
    server, _ = simulate(lambda t: capacity, 30.0)
    mean = server.mean_limit(20.0, 30.0)
    assert capacity * 0.75 <= mean <= capacity * 1.25 + 2


def test_slow_start_ramps_in_a_few_round_trips() -> None:
    """8 -> 128 takes a handful of windows, not one request per window."""
    server, _ = simulate(lambda t: 128, 0.5)
    assert max(server.limits(0.0, 0.5)) >= 100


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_follows_a_halving_within_10_s(seed: int) -> None:
    """L 16 -> 8 at 10 s: by 20 s the limit is within ±25% of 8 and goodput is back to at
    least 0.8x of what L=8 can deliver (400 answers/s)."""
    server, _ = simulate(lambda t: 16 if t < 10 else 8, 25.0, seed=seed)
    assert all(6 <= limit <= 10 for limit in server.limits(20.0, 25.0))
    assert server.goodput(15.0, 20.0) >= 0.8 * 8 / 0.020


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_follows_a_doubling_within_15_s(seed: int) -> None:
    """L 16 -> 32 at 10 s: from 25 s on the limit is within ±25% of 32 (until the base-RTT
    probe at 30 s halves it for two windows)."""
    server, _ = simulate(lambda t: 16 if t < 10 else 32, 30.0, seed=seed)
    assert all(24 <= limit <= 40 for limit in server.limits(25.0, 30.0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_settles_at_the_knee_the_client_sees(seed: int) -> None:
    """What the benchmark showed: 2 ms of client time per request (the knee the client sees
    is 16 * 22 / 20 = 17.6 in flight) and 5 ms to open each new connection, so the round
    trips measured during slow start, while the pool grows, read a base RTT about 10% too
    high and the queue too small. The limit must still settle within 12..20 (±25% of L)
    from 10 s on, at a goodput within 10% of the server's."""
    server, _ = simulate(lambda t: 16, 30.0, seed=seed, overhead=0.002, connect=0.005)
    assert all(12 <= limit <= 20 for limit in server.limits(10.0, 30.0))
    assert server.goodput(10.0, 30.0) >= 0.9 * 16 / 0.020


@pytest.mark.parametrize("initial", [8, 32])
def test_flat_goodput_walks_down_to_a_low_limit(initial: int) -> None:
    """A client-CPU-bound endpoint (nginx on a busy client): every request in flight adds
    0.1 ms of the client's own time to everybody's round trip, so goodput is flat (10,000
    answers/s at any limit) and the RTT grows with the limit. Vegas measures its base at
    the lowest limit it has seen and holds about there; the law must walk down to a low
    limit within a few seconds, and goodput must not suffer for it."""

    def service(m: int) -> float:
        return 0.0001 * m

    server, _ = simulate(lambda t: 1, 10.0, service=service, jitter=0.05, initial=initial)
    assert max(server.limits(5.0, 10.0)) <= 8
    assert server.goodput(5.0, 10.0) >= 0.95 * 1 / 0.0001


def test_small_losses_do_not_add_up_to_a_walk_down() -> None:
    """Goodput flat from 8 in flight on and 4.5% lower for every request fewer below 8
    (a fast endpoint where a few requests out keep the client's threads busy): each step
    down looks free against the limit just above it (inside the 5% tolerance), and a walk
    compared step by step ends at 1 with 30% less goodput. Compared with the best goodput
    remembered, it stops within a step of 8."""

    def service(m: int) -> float:
        return m / (20_000 * (1 - 0.045 * max(0, 8 - m)))

    server, _ = simulate(lambda t: 1, 10.0, service=service, jitter=0.02, initial=16)
    assert min(server.limits(5.0, 10.0)) >= 6
    assert server.goodput(5.0, 10.0) >= 0.9 * 20_000


def test_a_limit_that_does_not_bind_is_not_cut() -> None:
    """A source-bound client (nginx again: encoding the batches is the bottleneck): the
    source has 2 batches ready most of the time and 12 in bursts, and the round trip grows
    with the requests out. The limit only binds in the bursts; cutting it would not shorten
    the round trips, only clip the bursts. It must stay at least 12."""

    def service(m: int) -> float:
        return 0.0002 * m

    def ready(t: float) -> int:
        return 12 if int(t * 20) % 5 == 0 else 2

    server, _ = simulate(lambda t: 1, 10.0, service=service, ready=ready, initial=16)
    assert min(server.limits(1.0, 10.0)) >= 12


def test_rising_goodput_is_not_throttled() -> None:
    """A server whose latency grows with load ((1 + m/8) ** 0.3) but whose goodput keeps
    rising with it: Vegas alone reads the latency as a queue and stops near 12; the goodput
    gradient keeps raising the limit."""

    def service(m: int) -> float:
        return 0.002 * (1 + m / 8) ** 0.3

    server, _ = simulate(lambda t: 1, 20.0, service=service, jitter=0.05)
    assert server.mean_limit(10.0, 20.0) >= 64
    assert server.goodput(10.0, 20.0) >= 2 * 16 / service(16)  # twice what 16 would deliver


def test_client_bound_does_not_ratchet_down() -> None:
    """An endpoint where the round trip is the client's own queue (throughput flat from 3 in
    flight on, RTT proportional to the number out: a fast sink on a busy client). The
    Vegas estimate drifts down with every lower limit; the goodput guard stops it where
    goodput starts to fall, instead of at 1. The walk-down may measure 2 once (that is how
    it learns that 2 delivers half): at most 5% of the answers come at a limit below 3."""

    def service(m: int) -> float:
        return 0.0005 * max(m, 3) if m >= 3 else 0.0005 * (6 - m)

    server, _ = simulate(lambda t: 1, 10.0, service=service)
    limits = server.limits(2.0, 10.0)
    assert sum(1 for limit in limits if limit < 3) <= 0.05 * len(limits)
    assert min(limits) >= 2
    assert server.goodput(2.0, 10.0) >= 0.9 * 1 / 0.0005


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
    assert max(server.limits(0.0, 5.0)) == control.maximum == 256


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


async def test_gate_waiter_cancelled_then_skipped_by_a_release() -> None:
    """A waiter cancelled, and a release that pops (and skips) its cancelled future before
    the cancelled task runs: the task ends with CancelledError, not a ValueError from
    removing a future the queue no longer holds (the README's auto example hit this)."""
    control = AdaptiveLimit(initial=1, maximum=4)
    gate = ConcurrencyLimiter(control)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    gate.release()  # before the waiter's task runs its cancellation
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.in_flight == 0
    await gate.acquire()
    assert gate.in_flight == 1


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


def test_progress_line_shows_the_live_limit_in_auto_mode() -> None:
    """The progress line names the current limit with --concurrency auto (it moves), and
    leaves it out for a fixed --concurrency N."""
    import io

    from rich.console import Console

    from asyncsync._summary import Counters
    from asyncsync.cli._progress import ProgressDisplay

    display = ProgressDisplay(Console(file=io.StringIO()))
    counters = Counters(concurrency_auto=True, concurrency_limit=12)
    assert "limit 12" in display._line(counters, rate=0.0)
    counters.concurrency_limit = 5
    assert "limit 5" in display._line(counters, rate=0.0)
    assert "limit" not in display._line(Counters(concurrency_limit=16), rate=0.0)


class FixedLimit(AdaptiveLimit):
    """A limit that never moves: what ``--concurrency N`` does, for the best fixed limit."""

    __slots__ = ()

    def on_success(self, rtt: float, in_flight: int) -> None:
        return None

    def on_backpressure(self) -> None:
        return None


def client_bound(m: int) -> float:
    """The round trip against a fast endpoint on a busy client (nginx on 2 shared cores):
    the client's own 0.4 ms per request is the bottleneck, so the round trip grows with the
    requests out from 1 on and goodput is nearly flat in the limit: 0.84x of the best at 1,
    0.92x at 2, 0.98x at 4, best at 8-16, 0.92x at 64 (more requests out cost the client a
    little more each). What bench_adaptive measured against nginx: 0.80, 0.89, 0.99, 1,
    0.95, 0.89."""
    return 0.0004 * (m + 0.25) * (1 + 0.002 * m)


def stalls(t: float) -> float:
    """A loaded host: the client is frozen for 30 ms every 0.5 s (its answers wait)."""
    return math.floor(t / 0.5) * 0.5 + 0.03 if t % 0.5 < 0.03 else t


def shared_cpu(seed: int) -> Callable[[float], float]:
    """A loaded host: the client's share of the CPU changes every 0.3 s, its requests taking
    1 to 3 times as long (epochs of goodput differ by tens of %, as against nginx)."""

    def slowdown(t: float) -> float:
        return random.Random(seed * 1_000_003 + int(t / 0.3)).uniform(1.0, 3.0)

    return slowdown


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("loaded", [False, True])
def test_client_bound_holds_a_limit_near_the_best(seed: int, loaded: bool) -> None:
    """Against a client-bound endpoint (goodput nearly flat in the limit, the round trip
    proportional to the requests out) Vegas reads every limit as a queue of n - 1 and the
    capacity as 1-2, and a walk down by small steps never sees a loss it can tell from the
    noise: the old law ended at 1-3 (0.94x of the best fixed limit on a quiet host, 0.90-0.97x on
    a loaded one, where stalls and a varying CPU share make every epoch's goodput differ).
    The limit must never go below 4 after slow start, and goodput must be within 5% of the
    best fixed limit's."""

    def run(control: AdaptiveLimit | None) -> SimServer:
        sim = SimServer(
            lambda t: 1,
            service=client_bound,
            stall=stalls if loaded else None,
            slowdown=shared_cpu(seed) if loaded else None,
            seed=seed,
        )
        if control is None:
            control = AdaptiveLimit(initial=8, maximum=256, clock=lambda: sim.now)
        sim.run(control, 20.0)
        return sim

    fixed = [run(FixedLimit(initial=k, maximum=k)).goodput(2.0, 20.0) for k in (1, 2, 4, 8, 16)]
    server = run(None)
    assert min(server.limits(2.0, 20.0)) >= 4
    assert server.goodput(2.0, 20.0) >= 0.95 * max(fixed)


@pytest.mark.parametrize("seed", range(6))
def test_goodput_noise_past_the_knee_does_not_raise_the_limit(seed: int) -> None:
    """Past the knee the goodput is flat, but an epoch's count of answers is noisy (here
    ±50% service jitter, 2 ms of client time): a noisy epoch must not read as goodput still
    rising with the limit. Once a queue shows, a raise needs a gain of elasticity 0.65, not
    0.5: the limit stays within 12..20 (±25% of L=16) from 10 s on. (The benchmark's knee
    runs stepped to 21-23 under the plain 0.5; so does this simulation, in 2 of these 6
    seeds.)"""
    server, _ = simulate(lambda t: 16, 30.0, seed=seed, overhead=0.002, jitter=0.5)
    assert all(12 <= limit <= 20 for limit in server.limits(10.0, 30.0))
    assert server.goodput(10.0, 30.0) >= 0.9 * 16 / 0.020
