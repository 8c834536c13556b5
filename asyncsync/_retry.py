"""Retry timing shared by every retry loop: the sender, the token fetch, the store locks.

One backoff formula::

    cap(n)   = min(maximum, initial * multiplier ** (n - 1))      n = failed attempts so far
    delay(n) = uniform(cap(n) * (1 - jitter), cap(n))

``jitter=1`` (the default) is "full jitter" (AWS architecture blog, 2015): spread as widely as
possible, so many clients that failed together do not retry together. The token fetch and the
sender use it; the stores poll a held lock with a smaller multiplier and a jitter that never
polls at once. The random source is injected, so tests are deterministic.

One ``Retry-After`` parser (RFC 9110 §10.2.3: delta-seconds or an HTTP-date), the shared
:class:`PauseGate` (a ``Retry-After`` seen by one worker holds back all of them) and the
:class:`RateLimiter` (``--rate``). Both take an injected clock and sleep.

:class:`Budget` bounds a retry loop by attempts *and* by time, whichever ends first: the loop
asks ``budget.allows(attempts, wait)`` before each pause.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Final

from ._exceptions import ConfigError

__all__ = [
    "Backoff",
    "Budget",
    "Clock",
    "PauseGate",
    "RateLimiter",
    "Sleep",
    "parse_retry_after",
]

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

#: Past this exponent ``multiplier ** n`` only overflows; every cap is ``maximum`` long before.
_MAX_EXPONENT: Final = 60


def _check(name: str, value: float, *, low: float = 0.0, allow_low: bool = True) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or value < low
        or (value == low and not allow_low)
    ):
        op = ">=" if allow_low else ">"
        raise ConfigError(f"{name} must be a number {op} {low:g}, got {value!r}", field=name)
    return float(value)


class Backoff:
    """The pause after ``n`` failed attempts: ``uniform(cap * (1 - jitter), cap)``, capped.

    ``Backoff(0.5, 30)`` waits up to 0.5 s after the first failure, up to 1 s after the second,
    then 2, 4, ... up to 30 s.
    """

    __slots__ = ("_initial", "_jitter", "_maximum", "_multiplier", "_rng")

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        multiplier: float = 2.0,
        jitter: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self._initial = _check("backoff_initial", initial)
        self._maximum = _check("backoff_max", maximum)
        self._multiplier = _check("multiplier", multiplier, low=1.0)
        if not 0.0 <= jitter <= 1.0:
            raise ConfigError(f"jitter must be within [0, 1], got {jitter!r}", field="jitter")
        self._jitter = float(jitter)
        self._rng = rng if rng is not None else random.Random()

    def __repr__(self) -> str:
        return (
            f"Backoff(initial={self._initial:g}, maximum={self._maximum:g}, "
            f"multiplier={self._multiplier:g}, jitter={self._jitter:g})"
        )

    def cap(self, attempt: int) -> float:
        """The longest pause after ``attempt`` failed attempts (``attempt >= 1``)."""
        exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
        return min(self._maximum, self._initial * self._multiplier**exponent)

    def delay(self, attempt: int) -> float:
        """A jittered pause after ``attempt`` failed attempts, within ``[cap*(1-jitter), cap]``."""
        cap = self.cap(attempt)
        return self._rng.uniform(cap * (1.0 - self._jitter), cap)


@dataclass(frozen=True, slots=True)
class Budget:
    """How long one retry loop may go on: ``attempts`` requests and ``seconds`` since its start.

    ``None`` leaves that side unbounded. The loop stops when either is spent, and never starts
    a pause that would end past the time budget.
    """

    attempts: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.attempts is not None and (
            isinstance(self.attempts, bool)
            or not isinstance(self.attempts, int)
            or self.attempts < 1
        ):
            raise ConfigError(
                f"max_attempts must be an int >= 1, got {self.attempts!r}", field="max_attempts"
            )
        if self.seconds is not None:
            _check("max_retry_time", self.seconds, allow_low=False)

    def exhausted(self, attempts: int, elapsed: float) -> bool:
        """True when no further attempt may be made."""
        return (self.attempts is not None and attempts >= self.attempts) or (
            self.seconds is not None and elapsed >= self.seconds
        )

    def allows(self, attempts: int, elapsed: float, wait: float) -> bool:
        """True when another attempt may be made after pausing ``wait`` seconds."""
        if self.attempts is not None and attempts >= self.attempts:
            return False
        return self.seconds is None or elapsed + wait <= self.seconds

    def left(self, elapsed: float) -> float:
        """Seconds of the time budget still left (``inf`` when unbounded)."""
        return math.inf if self.seconds is None else max(0.0, self.seconds - elapsed)


# ``Retry-After: 120``. RFC 9110 allows only 1*DIGIT; a sign or a fraction is accepted (and a
# negative wait means now) because servers send them, but only ASCII: str.isdigit() and
# float() also take "²" or "١٢", which no server means as a number of seconds.
_SECONDS_RE: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", re.ASCII)


def parse_retry_after(value: str | None, *, now_wall: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date), or None.

    None for a missing or unreadable value (it is ignored rather than trusted). A date in the
    past, or a negative number, is 0. An HTTP-date without a zone (``-0000``) is UTC, as
    every HTTP-date is. ``now_wall`` is the wall clock (epoch seconds; default: now). The
    result may be ``inf`` (a number too large for a float); callers cap it.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _SECONDS_RE.fullmatch(text):
        seconds = float(text)
    else:
        try:
            moment = parsedate_to_datetime(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            when = moment.timestamp()
        except (TypeError, ValueError, IndexError, OverflowError, OSError):
            return None
        seconds = when - (time.time() if now_wall is None else now_wall)
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


class PauseGate:
    """One shared pause: a ``Retry-After`` seen by any worker holds back every worker."""

    __slots__ = ("_clock", "_sleep", "_until")

    def __init__(self, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self._until = 0.0
        self._clock = clock
        self._sleep = sleep

    @property
    def paused_until(self) -> float:
        """The clock reading the pause ends at (0 when none was ever set)."""
        return self._until

    def pause_for(self, seconds: float) -> None:
        self._until = max(self._until, self._clock() + seconds)

    async def wait(self) -> None:
        # loop: another worker may extend the pause while we sleep
        while (delay := self._until - self._clock()) > 0:
            await self._sleep(delay)


class RateLimiter:
    """At most ``rate`` requests per second across all workers (evenly spaced slots)."""

    __slots__ = ("_clock", "_interval", "_next", "_sleep")

    def __init__(
        self, rate: float, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
            raise ConfigError(f"rate must be > 0 requests/s, got {rate!r}", field="rate")
        self._interval = 1.0 / rate
        self._next = 0.0
        self._clock = clock
        self._sleep = sleep

    async def acquire(self) -> None:
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await self._sleep(slot - now)
