"""Adaptive concurrency: a limit on requests in flight that finds the endpoint's capacity.

Two parts. :class:`AdaptiveLimit` is the control law: pure arithmetic on per-attempt signals
and an injected clock, no I/O, so a discrete-event simulation drives it deterministically.
:class:`ConcurrencyLimiter` is the gate every *attempt* passes (acquire before the POST,
release with its outcome after it): a FIFO semaphore whose size the control law moves.

Signals (per attempt, never per retry sequence: a batch deferred three times and then
accepted is three back-pressure signals and one round trip, not one very slow success; the
bug of vectordotdev/vector#26123):

* the round-trip time of a successful attempt (2xx), measured from the moment the request
  left (after any ``Retry-After`` pause and rate-limit wait), and the number in flight then;
* back-pressure: 429, 502, 503, 504, a timeout, a connection reset or refused;
* nothing else. A 401, a 400/413/422 or a 500 says something about the request or the
  server's code, not about load: no RTT sample (an error answer can be much faster or slower
  than a real one, vectordotdev/vector#3493) and no decrease.

The law: Vegas's queue estimate, checked against measured goodput::

    a window closes at the first answer one smoothed RTT after it opened; the window after a
    change of the limit is skipped (its answers were sent under the old limit)

    slow start, every window (rate = answers/s over the window):
        base  = min(base, rtt)                  (windows with at least 4 answers)
        queue = n * (1 - base / rtt)            n: mean requests in flight at the answers
        queue >= beta -> limit = n - queue + alpha (at most limit - 1); slow start ends
        else, if the limit was used:
            rate < sqrt(2) * rate at the limit k before (half this one)
                      -> limit = k * rate / rate_k (between k and limit - 1); slow start ends
            else      -> limit *= 2
        when slow start ends (here or by back-pressure) the base is probed at once

    steady state, every epoch of 4 windows and at least 0.2 s (rtt, n, goodput = answers/s):
        base = min(base, rtt); G[limit] = goodput (averaged with a recent value; all of G is
        forgotten when the same limit now delivers 25% less: the endpoint changed)
        1. G[k] > 1.1 G[limit] for a higher k measured in the last 10 s -> limit = k (the
           lowest such k; only if the limit was used)
        rising: G[limit] >= G[j] for every lower j measured, and
                ln(G[limit] / G[k]) >= e ln(limit / k), k the highest measured <= 7/8 limit
                (else the nearest below); e = 0.5, or 0.65 once queue >= alpha
        flat above: the nearest higher limit, measured in the last 5 s, gave <= 1.05 G[limit]
        2. the limit was used, and rising, or queue < alpha and not flat above
                      -> limit += 1; += step instead when queue < alpha and no higher limit
                         is remembered (step doubles, up to limit/4)
        decreases (3, 4): at most one per window, only when the limit binds (n >= 0.9 limit),
        and never down to a limit measured to deliver 5% less than this one (just above it)
        3. queue <= beta (and not raised by 2), the limit was used, and the nearest lower
           limit measured delivered within 5% of the best G remembered (or none is known)
                      -> limit = min(limit - 1, floor(7/8 limit))
        4. queue > beta -> limit = max(n - queue + alpha, limit / 2)
        no latency rule (slow start's queue exit, 3, 4) sets a limit below 4 (LATENCY_FLOOR)
        nor lowers one that is 4 or less (the probe below is a measurement, two windows)
    back-pressure (at most once per window): limit = min(limit - 1, 0.75 limit); slow start
    ends; the measured goodput of this limit and above is forgotten (no goal for rule 1)
    probe (right after slow start, then every 30 s): halve the limit for two windows and
    measure base in the second; the first probe only lowers base, later ones replace it

with ``alpha = max(1, 0.05 n)`` and ``beta = max(2, 0.15 n)``.

Why this law:

* A server with capacity L answers in ``base`` up to L in flight, then in ``base * n / L``
  (it queues). ``n * (1 - base/rtt)`` is then exactly ``n - L``: Vegas's estimate is the
  queue, so the law can jump to ``L + alpha`` in one step instead of creeping there (the
  gradient controllers' strength: Netflix concurrency-limits, Envoy), and the cut goes to
  the estimated capacity, not to half: near equilibrium a cut is a step of a few requests.
* The estimate is only as good as ``base``. Slow start's windows are short and their round
  trips include opening the connections the pool grows by, so the base they give is too
  high (about 10% against the reference server, 20 ms: 24 ms read, 22 ms true), the queue
  reads too small and the limit settles too high (23-26 against L=16). So when slow start
  ends the law halves the limit for two windows and measures the base there, below the
  knee, at once: three round trips at half the limit, instead of 30 s off the knee.
* The knee the client sees is not L: with per-request client time ``c`` (encoding,
  parsing, the event loop) it is ``L (base + c) / base`` in flight, because the requests
  being encoded or parsed are in flight for the client but not at the server. Measured on
  a 2-core host against L=16 (benchmarks/bench_adaptive.py, scenario ``rtt``): the round
  trip is flat at about 22 ms to 16 in flight and grows from there (25.3 ms at 20), so the
  knee is about 17.5; 16 delivers 0.89x of the best, 20 0.99x. The law aims at the smallest
  limit whose goodput is within a few % of the best, which is this knee (it settles 17-19).
* The latency signal alone is wrong whenever the round trip grows with the client's own
  load rather than the endpoint's queue. On a busy client (or a fast endpoint such as nginx,
  where the client is the bottleneck) every request more in flight adds its share of the
  client's CPU to everybody's RTT, and goodput is flat in the limit. Vegas then holds
  wherever it measured ``base`` (a round trip proportional to the requests out reads as no
  queue at the lowest limit seen), or ratchets down when a lower limit gives it a lower
  base. Goodput is
  the quantity the user wants, so the law keeps a short memory of the goodput each limit
  delivered and lets it decide where latency cannot: a return to a limit that delivered
  clearly more (rule 1); a raise while goodput still grows at least half as fast as the
  limit (rule 2; a server whose throughput keeps rising past its latency knee is not
  throttled; once the round trip shows a queue, the gain must be clearer, elasticity 0.65:
  at the knee an epoch's goodput varies by ~8%, and with 0.5 one noisy epoch in a few read
  as "rising" and stepped the limit to 21-23 against L=16, out of the ±25% band); no raise
  into limits just measured to deliver no more (flat above), and a
  walk down by 1/8 per epoch while the limit below delivers as much (rule 3: the same work
  with fewer in flight; multiplicative, so a flat endpoint is left in a few epochs, not one
  request per epoch); no decrease to a limit measured to deliver clearly less (3 and 4).
  "As much" is against the best goodput remembered, not the limit just above: against
  nginx each step down cost about 4%, inside the tolerance, and steps judged one by one
  walked down to 1 at 0.8x.
* Below 4 in flight only back-pressure lowers the limit, not latency. On a client-bound
  pipeline (nginx on a busy host: the client's own work per request is the bottleneck)
  the round trip grows with the requests out from 1 on, so Vegas reads a queue of about
  ``n - 1`` at every limit and a capacity of 1-2, and cuts to 2-3; yet the client needs a
  few requests out to overlap its work with the network and its stalls (medians over 5
  seeds against nginx: 1 in flight 0.80x of the best, 2 0.89x, 4 0.99x). Goodput cannot stop
  that walk on a shared host: its epochs differ by 20-50% (the client's share of the CPU
  changes, a stall returns a burst of slow answers at the full limit, which also reads
  as a queue), so a 5-10% loss per step is invisible, and the old law ended at 1-3 (0.83x
  of the best fixed limit against nginx, 0.88-0.97x on the simulated client-bound
  endpoint with stalls). At 4 and below the estimate is also at its coarsest: one
  request of jitter is a quarter of ``n`` or more, against ``alpha = 1`` and
  ``beta = 2``. A server that really takes fewer than 4 at a time then holds a short
  queue (its round trip grows, its goodput does not fall), and one that refuses says so
  with back-pressure, which still goes down to 1. Against nginx the law now holds 4-8
  in flight, at 0.92x of the best fixed limit (benchmarks/README.md, 2026-12-05).
* A limit that does not bind is not what makes requests wait. When the source keeps fewer
  requests out than the limit (mean in flight under 90% of it: the client cannot encode
  batches faster, as against nginx), lowering the limit would not shorten a round trip,
  only clip the bursts in which it does bind; so the latency rules do not lower it then.
* Slow start stops on goodput as well as on the queue: when doubling the limit raised the
  answers per second by less than sqrt(2) (elasticity 1/2), the knee lies between the two
  limits, at about ``k * rate / rate_k`` in flight by Little's law (below the knee goodput
  is ``k / base``; past it, the capacity ``rate``). Against L=16 with the inflated base it
  would otherwise double to 64 and draw 429s from the hard limit at 32.
* The measurements are averaged before they are compared: decisions in steady state use an
  epoch of four windows and at least 0.2 s (a one-RTT window holds about ``limit``
  answers, and a few milliseconds of a fast endpoint are scheduler noise on a loaded host),
  ``base`` only comes from windows with enough answers, the goodput gradient is taken
  against a limit about 1/8 below and only counts when no lower limit did better (a noisy
  low reference is no gradient), and rule 1 needs a 10% difference. The memory lasts 10 s
  and is dropped when the endpoint changes, so a capacity that halves is not chased upward;
  "changes" means the same limit delivering 25% less, because a fast endpoint on a loaded
  host varies by 10-20% from one epoch to the next and a tighter test forgot everything
  every other epoch.
* AIMD on back-pressure alone (Vector's ARC, TCP Reno) only learns the knee by crossing it:
  it saws between the hard limit and half of it, drawing 429s every cycle and losing
  throughput on the way down (vectordotdev/vector#7371). The latency and goodput signals
  stop the increase *before* the server refuses; back-pressure remains the safety net, a
  hard multiplicative cut (0.75) once per window.
* Slow start doubles per window, so 8 -> 256 takes five round trips, not 250 (Vector's slow
  ramp, #3255). In steady state the additive step doubles while the queue stays empty above
  every limit measured lately, so a capacity that doubles mid-run is found in a handful of
  epochs, while near a known knee the limit moves one at a time.
* At most one decrease per window: the answers that arrive in the window after a cut were
  sent under the old limit and say nothing about the new one.
* The limit never grows when it was not used (a slow source): a window whose peak in flight
  stayed under 80% of the limit cannot have tested it, and its goodput is not remembered.
* ``base`` only ever falls between probes, so an endpoint that becomes slower for good
  would read as a permanent queue; the periodic probe (Envoy's minRTT window) re-measures
  it below the knee.

Floor 1 (back-pressure; 4 for the latency rules), ceiling ``maximum``; the limit is an
integer.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from typing import Final

from ._exceptions import ConfigError

__all__ = [
    "BACKPRESSURE_STATUSES",
    "DEFAULT_INITIAL_CONCURRENCY",
    "DEFAULT_MAX_CONCURRENCY",
    "AdaptiveLimit",
    "ConcurrencyLimiter",
]

DEFAULT_MAX_CONCURRENCY: Final = 256
DEFAULT_INITIAL_CONCURRENCY: Final = 8
#: statuses that mean "too much load"; every other status is no signal
BACKPRESSURE_STATUSES: Final = frozenset({429, 502, 503, 504})

BACKOFF_RATIO: Final = 0.75
PROBE_INTERVAL: Final = 30.0  # seconds between re-measurements of the unloaded RTT
PROBE_WINDOWS: Final = 2  # the first drains the queue, the second measures
EPOCH_WINDOWS: Final = 4  # steady-state decisions are made on this many round-trip windows
GOODPUT_TOLERANCE: Final = 0.05  # goodput differences below this share are noise
CHANGE_DROP: Final = 0.25  # the same limit delivering this share less: the endpoint changed
GOODPUT_ELASTICITY: Final = 0.5  # d ln(goodput) / d ln(limit) above this: still worth raising
QUEUED_ELASTICITY: Final = 0.65  # the same, once the round trip shows a queue
MEMORY_SECONDS: Final = 10.0  # a level's measured goodput is trusted this long
HOLD_SECONDS: Final = 5.0  # a limit above measured flat this recently is not raised to again
EPOCH_SECONDS: Final = 0.2  # ... and last at least this long (goodput over a few ms is noise)
#: latency and flat-goodput decreases stop here; only back-pressure takes the limit lower
LATENCY_FLOOR: Final = 4
TIMELINE_POINTS: Final = 512  # the limit over time is decimated past this many points
_BASE_SAMPLES: Final = 4  # a slow-start window with fewer answers is too noisy for ``base``
_REFERENCE: Final = 0.875  # the goodput gradient is taken against a limit at most this share
_USED: Final = 0.8  # a window tested the limit when its peak in flight reached this share
_BINDING: Final = 0.9  # the limit binds when the mean in flight is at least this share of it

Clock = Callable[[], float]


class AdaptiveLimit:
    """The control law (see the module docstring). Feed it :meth:`on_success` and
    :meth:`on_backpressure`; read :attr:`limit`. Single-threaded, no I/O."""

    __slots__ = (
        "_base",
        "_clock",
        "_e_inflight",
        "_e_peak",
        "_e_rtt",
        "_e_samples",
        "_e_start",
        "_e_windows",
        "_first_probe",
        "_goodput",
        "_inflight_sum",
        "_last_decrease",
        "_limit",
        "_next_probe",
        "_peak",
        "_probe_interval",
        "_probe_left",
        "_probe_saved",
        "_rtt",
        "_rtt_sum",
        "_samples",
        "_settling",
        "_ss_rate",
        "_step",
        "_window_start",
        "maximum",
        "minimum",
        "on_change",
        "slow_start",
    )

    def __init__(
        self,
        *,
        initial: int = DEFAULT_INITIAL_CONCURRENCY,
        maximum: int = DEFAULT_MAX_CONCURRENCY,
        minimum: int = 1,
        probe_interval: float = PROBE_INTERVAL,
        clock: Clock = time.monotonic,
    ) -> None:
        for name, value in (("max_concurrency", maximum), ("initial_concurrency", initial)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}", field=name)
        if initial > maximum:
            raise ConfigError(
                f"initial_concurrency ({initial}) must not exceed max_concurrency ({maximum})",
                field="initial_concurrency",
            )
        self.minimum = max(1, minimum)
        self.maximum = maximum
        self._limit = initial
        self._clock = clock
        self.slow_start = True
        self.on_change: Callable[[int], None] | None = None
        self._base = math.inf
        self._rtt = 0.0  # smoothed window RTT: the window length; 0 until the first sample
        self._step = 1
        self._last_decrease = -math.inf
        self._probe_interval = probe_interval
        self._next_probe = clock() + probe_interval if probe_interval > 0 else math.inf
        self._probe_left = 0
        self._probe_saved = 0
        self._settling = False
        self._first_probe = True
        self._ss_rate: tuple[int, float] | None = None  # slow start: (limit, answers/s) before
        #: limit -> (goodput in successes/s measured at that limit, when)
        self._goodput: dict[int, tuple[float, float]] = {}
        self._reset_window(clock())
        self._reset_epoch(clock())

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def base_rtt(self) -> float:
        """The unloaded round trip measured so far (``inf`` before the first window)."""
        return self._base

    def _reset_window(self, now: float) -> None:
        self._window_start = now
        self._samples = 0
        self._rtt_sum = 0.0
        self._inflight_sum = 0
        self._peak = 0

    def _reset_epoch(self, now: float) -> None:
        self._e_start = now
        self._e_windows = 0
        self._e_samples = 0
        self._e_rtt = 0.0
        self._e_inflight = 0
        self._e_peak = 0

    def _set(self, value: float) -> None:
        new = max(self.minimum, min(self.maximum, int(value)))
        if new != self._limit:
            self._limit = new
            # the next window's answers were mostly sent under the old limit: judge the one after
            self._settling = True
            if self.on_change is not None:
                self.on_change(new)

    def on_success(self, rtt: float, in_flight: int) -> None:
        """A 2xx attempt took ``rtt`` seconds with ``in_flight`` attempts out (itself included)."""
        now = self._clock()
        self._samples += 1
        self._rtt_sum += rtt
        self._inflight_sum += in_flight
        if in_flight > self._peak:
            self._peak = in_flight
        if self._rtt == 0.0:
            self._rtt = rtt
        if now - self._window_start >= self._rtt:
            self._close_window(now)

    def on_backpressure(self) -> None:
        """The server refused or failed for load (429/502/503/504, timeout, reset)."""
        now = self._clock()
        self._end_slow_start(now)
        self._step = 1
        if now - self._last_decrease < max(self._rtt, 1e-3):
            return  # one cut per window: these answers were sent under the old limit
        self._last_decrease = now
        if self._probe_left:  # the probe is void: restore, then cut
            self._probe_left = 0
            self._limit = max(self._limit, self._probe_saved)
        # the levels that drew back-pressure are no goal for the goodput climb
        self._goodput = {k: v for k, v in self._goodput.items() if k < self._limit}
        self._set(min(self._limit - 1, self._limit * BACKOFF_RATIO))
        self._reset_window(now)
        self._reset_epoch(now)

    def _close_window(self, now: float) -> None:
        samples, rtt_sum, inflight_sum, peak = (
            self._samples,
            self._rtt_sum,
            self._inflight_sum,
            self._peak,
        )
        elapsed = max(now - self._window_start, 1e-9)
        self._reset_window(now)
        rtt = rtt_sum / samples
        self._rtt = 0.5 * self._rtt + 0.5 * rtt
        if self._settling:
            self._settling = False
            self._reset_epoch(now)
            return
        if self._probe_left:
            self._probe_left -= 1
            if self._probe_left == 0:  # the measuring window: below the knee, rtt is base
                # the first probe corrects slow start's base (too high while the pool grew);
                # later ones re-learn it, so an endpoint that became slower is not a queue
                self._base = min(self._base, rtt) if self._first_probe else rtt
                self._first_probe = False
                self._set(self._probe_saved)
            self._reset_epoch(now)
            return
        if now >= self._next_probe:
            self._next_probe = now + self._probe_interval
            if self._limit > self.minimum and not self.slow_start:
                self._probe_saved = self._limit
                self._probe_left = PROBE_WINDOWS
                self._set(self._limit / 2)
                return
        if self.slow_start:
            self._slow_start_window(
                now, rtt, inflight_sum / samples, peak, samples, samples / elapsed
            )
            return
        self._e_windows += 1
        self._e_samples += samples
        self._e_rtt += rtt_sum
        self._e_inflight += inflight_sum
        self._e_peak = max(self._e_peak, peak)
        if self._e_windows >= EPOCH_WINDOWS and now - self._e_start >= EPOCH_SECONDS:
            self._close_epoch(now)

    def _remember(self, now: float, goodput: float) -> None:
        old = self._goodput.get(self._limit)
        if old is not None and now - old[1] < MEMORY_SECONDS:
            if goodput < (1 - CHANGE_DROP) * old[0]:
                # the same limit now delivers clearly less: the endpoint changed, forget it all
                self._goodput = {}
            else:
                goodput = 0.5 * (goodput + old[0])
        self._goodput[self._limit] = (goodput, now)

    def _known(self, now: float) -> dict[int, float]:
        return {k: g for k, (g, t) in self._goodput.items() if now - t < MEMORY_SECONDS}

    def _slow_start_window(
        self, now: float, rtt: float, n: float, peak: int, samples: int, rate: float
    ) -> None:
        if samples >= _BASE_SAMPLES:
            self._base = min(self._base, rtt)
        limit = self._limit
        used = peak >= _USED * limit
        queue = _queue(n, rtt, self._base)
        _, beta = _band(n)
        if queue < beta:
            if not used:
                return
            before = self._ss_rate
            if before is not None and before[0] < limit and before[1] > 0:
                k, k_rate = before
                if math.log(rate / k_rate) < GOODPUT_ELASTICITY * math.log(limit / k):
                    # more in flight, hardly more goodput: past the knee, whatever the RTT
                    # says. Below the knee goodput is k / base, at it rate: so the knee is
                    # about k * rate / k_rate in flight (Little's law)
                    self._end_slow_start(now)
                    self._reset_epoch(now)
                    self._set(min(limit - 1, max(k, math.ceil(k * rate / k_rate))))
                    return
            self._ss_rate = (limit, rate)
            self._set(limit * 2)
            return
        self._end_slow_start(now)
        self._reset_epoch(now)
        alpha, _ = _band(n)
        self._set(max(min(self._limit - 1, math.ceil(n - queue + alpha)), self._latency_floor()))

    def _latency_floor(self) -> int:
        """The lowest limit a latency or flat-goodput rule may set (no decrease at or below)."""
        return min(self._limit, LATENCY_FLOOR)

    def _end_slow_start(self, now: float) -> None:
        if self.slow_start:
            self.slow_start = False
            # slow start's base is an upper bound (the pool was growing, the windows are
            # short): measure it below the knee at once instead of in PROBE_INTERVAL
            if self._probe_interval > 0:
                self._next_probe = now

    def _close_epoch(self, now: float) -> None:
        samples = self._e_samples
        rtt = self._e_rtt / samples
        n = self._e_inflight / samples
        goodput = samples / max(now - self._e_start, 1e-9)
        used = self._e_peak >= _USED * self._limit
        self._reset_epoch(now)
        self._base = min(self._base, rtt)
        limit = self._limit
        if used:
            self._remember(now, goodput)
        known = self._known(now)
        here = known.get(limit, goodput)
        # 1. a higher limit measured recently delivered clearly more: go back there
        better = [
            k for k, g in known.items() if k > limit and g > (1 + 2 * GOODPUT_TOLERANCE) * here
        ]
        if better and used:
            self._step = 1
            self._set(min(better))
            return
        queue = _queue(n, rtt, self._base)
        alpha, beta = _band(n)
        below = [k for k in known if k < limit]
        rising = False
        if below and used:
            # against a limit far enough below for the difference to stand out of the noise
            far = [k for k in below if k <= limit * _REFERENCE]
            k = max(far or below)
            # and no lower limit delivered more (a noisy low reference is no gradient)
            if known[k] > 0 and here >= max(known[j] for j in below):
                # with a queue already (past the latency knee) a raise needs a clearer gain:
                # epoch noise (~8% at the knee) must not read as goodput still rising
                elasticity = GOODPUT_ELASTICITY if queue < alpha else QUEUED_ELASTICITY
                rising = math.log(here / known[k]) >= elasticity * math.log(limit / k)
        # the nearest limit above, measured recently, delivered no more than this one
        above = [k for k in known if k > limit]
        flat_above = bool(above) and (
            known[min(above)] <= (1 + GOODPUT_TOLERANCE) * here
            and now - self._goodput[min(above)][1] < HOLD_SECONDS
        )
        # 2. goodput still rising with the limit, or no queue and no sign that more in flight
        # buys nothing: raise it
        if used and (rising or (queue < alpha and not flat_above)):
            if queue < alpha and not above:  # unexplored: the step doubles while it is empty
                self._set(limit + self._step)
                self._step = min(self._step * 2, max(1, limit // 4))
            else:  # a limit above was measured lately: one at a time
                self._set(limit + 1)
            return
        self._step = 1
        if now - self._last_decrease < self._rtt or n < _BINDING * limit:
            # a limit that does not bind (the source, not the gate, keeps fewer requests out)
            # is not what makes them wait: lowering it would change nothing but the bursts
            return
        # 3 and 4 only lower the limit to levels not measured to deliver clearly less
        target = limit
        if queue <= beta:
            # 3. a small queue, or a limit above that delivered no more: goodput does not
            # rise with the requests in flight, so do the same work with fewer. Walk down
            # by 1/8 (multiplicative: a flat endpoint is left in a few epochs) unless the
            # limit below delivered clearly less
            # (against the best goodput remembered, not this limit's: steps of 4% each,
            # each within the tolerance, must not add up to a walk down to 1)
            best = max([here, *known.values()])
            if used and (not below or known[max(below)] >= best * (1 - GOODPUT_TOLERANCE)):
                target = min(limit - 1, math.floor(limit * _REFERENCE))
        else:
            # 4. a queue: cut to the estimated capacity plus alpha, at most by half
            target = max(math.ceil(n - queue + alpha), math.ceil(limit / 2))
        for k in below:
            if k >= target and known[k] < (1 - GOODPUT_TOLERANCE) * here:
                target = k + 1
        target = max(target, self._latency_floor())
        if target < limit:
            self._last_decrease = now
            self._set(target)


def _queue(n: float, rtt: float, base: float) -> float:
    """Vegas's estimate of the requests waiting: ``n (1 - base / rtt)`` (0 with no base yet)."""
    return n * (1.0 - base / rtt) if rtt > 0 and base < math.inf else 0.0


def _band(n: float) -> tuple[float, float]:
    """``alpha`` and ``beta``: the queue the law aims for, and the queue it cuts at."""
    return max(1.0, 0.05 * n), max(2.0, 0.15 * n)


class ConcurrencyLimiter:
    """A FIFO gate of :attr:`limit` attempts in flight, resized by an :class:`AdaptiveLimit`.

    ``await acquire()`` before an attempt; exactly one of :meth:`release_ok`,
    :meth:`release_backpressure` or :meth:`release` after it (in a ``finally``). Waiters are
    served in arrival order, so batches go out in the order workers asked for them. Records
    the highest limit and the limit over time (bounded) for the summary.
    """

    def __init__(self, control: AdaptiveLimit, *, clock: Clock = time.monotonic) -> None:
        self.control = control
        self._clock = clock
        self._start = clock()
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.max_seen = control.limit
        self.timeline: list[tuple[float, int]] = [(0.0, control.limit)]
        self._timeline_step = 0.0  # minimum seconds between points; doubles as it decimates
        self.on_limit: Callable[[int], None] | None = None
        control.on_change = self._changed

    @property
    def limit(self) -> int:
        return self.control.limit

    def _changed(self, limit: int) -> None:
        self.max_seen = max(self.max_seen, limit)
        t = round(self._clock() - self._start, 3)
        timeline = self.timeline
        if t - timeline[-1][0] < self._timeline_step and len(timeline) > 1:
            timeline[-1] = (timeline[-1][0], limit)  # same slot: keep the latest value
        else:
            timeline.append((t, limit))
        if len(timeline) > TIMELINE_POINTS:  # keep every other point; coarser from now on
            kept = timeline[::2]
            if kept[-1] != timeline[-1]:
                kept.append(timeline[-1])
            self.timeline = kept
            self._timeline_step = max(2 * self._timeline_step, t / TIMELINE_POINTS)
        if self.on_limit is not None:
            self.on_limit(limit)
        self._wake()

    async def acquire(self) -> None:
        if self.in_flight < self.control.limit and not self._waiters:
            self.in_flight += 1  # fast path: no await, no yield to the loop
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():  # the slot was ours already: hand it on
                self.in_flight -= 1
                self._wake()
            elif fut in self._waiters:  # a release may have dropped it already (_wake skips
                self._waiters.remove(fut)  # cancelled waiters), before this task ran
            raise

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and self.in_flight < self.control.limit:
            fut = waiters.popleft()
            if not fut.done():
                self.in_flight += 1
                fut.set_result(None)

    def release_ok(self, rtt: float) -> None:
        """The attempt got a 2xx after ``rtt`` seconds."""
        self.control.on_success(rtt, self.in_flight)
        self.release()

    def release_backpressure(self) -> None:
        """The attempt met back-pressure (see :data:`BACKPRESSURE_STATUSES`)."""
        self.control.on_backpressure()
        self.release()

    def release(self) -> None:
        """The attempt ended with no signal (a 4xx, a 500, a cancellation)."""
        self.in_flight -= 1
        self._wake()
