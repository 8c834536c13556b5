"""Retry timing: the backoff formula, the budget, Retry-After, the pause gate, the rate limiter."""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from asyncsync import ConfigError
from asyncsync._retry import Backoff, Budget, PauseGate, RateLimiter, parse_retry_after

NOW = 1_780_000_000.0


class EdgeRng(random.Random):
    """A random source that always picks one end of the range: the bounds, exactly."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return b if self.high else a


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


# -- Backoff -----------------------------------------------------------------------------------


def test_backoff_caps_double_up_to_the_maximum() -> None:
    """cap(n) = min(maximum, initial * 2**(n-1)): 0.5, 1, 2, 4, then 4 for ever."""
    backoff = Backoff(0.5, 4.0, rng=EdgeRng(high=True))
    assert [backoff.cap(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert [backoff.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_backoff_full_jitter_spans_zero_to_the_cap() -> None:
    """Full jitter: each pause is drawn from [0, cap(n)]."""
    rng = EdgeRng(high=False)
    backoff = Backoff(0.5, 30.0, rng=rng)
    assert [backoff.delay(n) for n in range(1, 4)] == [0.0, 0.0, 0.0]
    assert rng.calls == [(0.0, 0.5), (0.0, 1.0), (0.0, 2.0)]


def test_backoff_partial_jitter_and_multiplier() -> None:
    """jitter=0.5 keeps at least half of each cap; multiplier 1.5 grows more slowly."""
    rng = EdgeRng(high=False)
    backoff = Backoff(1.0, 10.0, multiplier=1.5, jitter=0.5, rng=rng)
    assert backoff.delay(1) == 0.5
    assert backoff.delay(3) == pytest.approx(1.125)
    assert rng.calls[1] == pytest.approx((1.125, 2.25))


def test_backoff_with_a_real_rng_stays_within_bounds() -> None:
    """A seeded generator: every pause inside [0, cap(n)], deterministic per seed."""
    first = [Backoff(0.5, 30.0, rng=random.Random(7)).delay(n) for n in range(1, 20)]
    again = [Backoff(0.5, 30.0, rng=random.Random(7)).delay(n) for n in range(1, 20)]
    assert first == again
    for n, pause in enumerate(first, start=1):
        assert 0.0 <= pause <= min(30.0, 0.5 * 2 ** (n - 1))


def test_backoff_survives_huge_attempt_numbers() -> None:
    """No overflow however many attempts have failed."""
    backoff = Backoff(0.5, 30.0, rng=EdgeRng(high=True))
    assert backoff.delay(10_000) == 30.0
    assert backoff.cap(0) == 0.5


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial": -1.0, "maximum": 1.0}, "backoff_initial"),
        ({"initial": math.nan, "maximum": 1.0}, "backoff_initial"),
        ({"initial": 1.0, "maximum": -1.0}, "backoff_max"),
        ({"initial": 1.0, "maximum": 1.0, "multiplier": 0.5}, "multiplier"),
        ({"initial": 1.0, "maximum": 1.0, "jitter": 1.5}, "jitter"),
    ],
)
def test_backoff_settings_are_validated(kwargs: dict[str, float], field: str) -> None:
    """A bad setting is a ConfigError naming the field."""
    with pytest.raises(ConfigError) as info:
        Backoff(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


# -- Budget -------------------------------------------------------------------------------------


def test_budget_bounds_attempts_and_time_whichever_ends_first() -> None:
    """Attempts and seconds both bound a loop; a pause past the time budget is not started."""
    budget = Budget(attempts=3, seconds=60.0)
    assert not budget.exhausted(2, 10.0)
    assert budget.exhausted(3, 10.0)
    assert budget.exhausted(1, 60.0)
    assert budget.allows(2, 10.0, 50.0)
    assert not budget.allows(2, 10.0, 50.1)
    assert not budget.allows(3, 0.0, 0.0)
    assert budget.left(45.0) == 15.0 and budget.left(99.0) == 0.0


def test_budget_sides_may_be_unbounded() -> None:
    """None on either side: only the other one ends the loop."""
    by_time = Budget(seconds=120.0)
    assert by_time.allows(10_000, 0.0, 119.0) and not by_time.allows(1, 100.0, 21.0)
    by_count = Budget(attempts=5)
    assert by_count.allows(4, 1e9, 1e9) and not by_count.allows(5, 0.0, 0.0)
    assert by_count.left(1e9) == math.inf


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"attempts": 0}, "max_attempts"), ({"attempts": True}, "max_attempts"),
     ({"seconds": 0.0}, "max_retry_time"), ({"seconds": -1.0}, "max_retry_time")],
)  # fmt: skip
def test_budget_is_validated(kwargs: dict[str, float], field: str) -> None:
    """Zero attempts or no time at all is a ConfigError naming the field."""
    with pytest.raises(ConfigError) as info:
        Budget(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


# -- Retry-After ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5", 5.0), (" 0 ", 0.0), ("120", 120.0), ("-3", 0.0), ("1.5", 1.5), ("+2", 2.0),
     ("soon", None), ("", None), ("   ", None), (None, None), ("²", None), ("١٢", None),
     ("inf", None), ("nan", None), ("0x10", None), ("1_000", None), ("5 s", None)],
)  # fmt: skip
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    """Delta-seconds (ASCII only; a sign or a fraction tolerated); nonsense is ignored."""
    assert parse_retry_after(value, now_wall=NOW) == expected


def test_retry_after_http_date_against_the_wall_clock() -> None:
    """An HTTP-date is converted against now_wall; one in the past means now."""
    now = datetime.fromtimestamp(NOW, UTC)
    ahead = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(ahead, now_wall=NOW) == 30.0
    past = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(past, now_wall=NOW) == 0.0
    # "-0000" (no zone information) is read as UTC: every HTTP-date is GMT
    assert parse_retry_after(ahead.replace("GMT", "-0000"), now_wall=NOW) == 30.0


@pytest.mark.parametrize(
    "value", ["Mon, 99", "Mon, 01 Jan 99999 00:00:00 GMT", "Tue, 32 Foo 2026 25:61:61 GMT"]
)
def test_retry_after_garbage_dates_are_ignored(value: str) -> None:
    """A malformed or out-of-range date is None, never an exception."""
    assert parse_retry_after(value, now_wall=NOW) is None


def test_retry_after_huge_number_is_infinite_for_the_caller_to_cap() -> None:
    """More digits than a float holds: inf (callers cap it with retry_after_max)."""
    assert parse_retry_after("9" * 400, now_wall=NOW) == math.inf


def test_retry_after_defaults_to_the_real_wall_clock() -> None:
    """Without now_wall the current time is used."""
    ahead = format_datetime(datetime.now(UTC) + timedelta(seconds=100), usegmt=True)
    got = parse_retry_after(ahead)
    assert got is not None and 90.0 <= got <= 100.0


# -- PauseGate -------------------------------------------------------------------------------------


async def test_pause_gate_holds_every_waiter_until_the_pause_ends() -> None:
    """pause_for sets one shared end; wait() sleeps until it; the longer pause wins."""
    t = FakeTime()
    gate = PauseGate(clock=t.clock, sleep=t.sleep)
    assert gate.paused_until == 0.0
    await gate.wait()
    assert t.sleeps == []
    gate.pause_for(7.0)
    gate.pause_for(3.0)  # shorter: does not shorten the pause
    assert gate.paused_until == 1007.0
    await gate.wait()
    assert t.sleeps == [7.0] and t.now == 1007.0


async def test_pause_gate_is_extended_while_sleeping() -> None:
    """Another worker extends the pause while one sleeps: the sleeper waits again."""
    t = FakeTime()
    extended = False

    async def sleep(seconds: float) -> None:
        nonlocal extended
        await t.sleep(seconds)
        if not extended:
            extended = True
            gate.pause_for(5.0)

    gate = PauseGate(clock=t.clock, sleep=sleep)
    gate.pause_for(2.0)
    await gate.wait()
    assert t.sleeps == [2.0, 5.0] and t.now == 1007.0


# -- RateLimiter -------------------------------------------------------------------------------


async def test_rate_limiter_spaces_slots_evenly() -> None:
    """rate 4/s: slots 0.25 s apart; a caller after a gap does not get a burst."""
    t = FakeTime()
    limiter = RateLimiter(4, clock=t.clock, sleep=t.sleep)
    for _ in range(4):
        await limiter.acquire()
    assert t.now - 1000.0 == pytest.approx(0.75)
    t.now += 10.0
    await limiter.acquire()
    await limiter.acquire()
    assert t.sleeps[-1] == pytest.approx(0.25)


@pytest.mark.parametrize("rate", [0, -1.0, math.nan])
def test_rate_limiter_refuses_a_rate_that_is_not_positive(rate: float) -> None:
    """--rate 0 (or less, or NaN) is a ConfigError naming the field."""
    with pytest.raises(ConfigError) as info:
        RateLimiter(rate)
    assert info.value.field == "rate"


# -- mutation-testing additions (docs/mutation.md) ----------------------------------------------


@pytest.mark.parametrize("rate", [True, "4"])
def test_rate_limiter_refuses_a_rate_that_is_not_a_number(rate: object) -> None:
    """A bool is not a rate (True is not 1 request/s), nor is a string; the message says why."""
    with pytest.raises(ConfigError, match=r"^rate must be > 0 requests/s, got ") as info:
        RateLimiter(rate)  # type: ignore[arg-type]
    assert info.value.field == "rate"


async def test_rate_limiter_takes_a_fractional_rate() -> None:
    """rate 0.5/s is valid: one slot every 2 s."""
    t = FakeTime()
    limiter = RateLimiter(0.5, clock=t.clock, sleep=t.sleep)
    await limiter.acquire()
    await limiter.acquire()
    assert t.sleeps == [2.0]


async def test_rate_limiter_first_slot_is_now_even_on_a_young_clock() -> None:
    """The first request never waits, whatever the clock reads (a monotonic clock may be < 1);
    a slot that is due now is taken without a sleep."""
    t = FakeTime()
    t.now = 0.0
    limiter = RateLimiter(4, clock=t.clock, sleep=t.sleep)
    await limiter.acquire()
    assert t.sleeps == []
    t.now = 0.25  # exactly the next slot
    await limiter.acquire()
    assert t.sleeps == []


def test_retry_after_date_with_an_offset_is_read_in_its_own_zone() -> None:
    """An HTTP-date with a numeric zone is that instant, not the same wall time in UTC."""
    assert parse_retry_after("Thu, 01 Jan 2026 01:00:30 +0100", now_wall=1_767_225_600.0) == 30.0


def test_retry_after_date_without_a_zone_is_utc_whatever_the_local_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``-0000`` (no zone) is UTC, also on a machine whose local zone is not."""
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        got = parse_retry_after("Thu, 01 Jan 2026 00:00:30 -0000", now_wall=1_767_225_600.0)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert got == 30.0


async def test_pause_gate_waits_out_a_pause_shorter_than_a_second() -> None:
    """Retry-After: 0.5 holds the workers for half a second too."""
    t = FakeTime()
    gate = PauseGate(clock=t.clock, sleep=t.sleep)
    gate.pause_for(0.5)
    await gate.wait()
    assert t.sleeps == [0.5]
