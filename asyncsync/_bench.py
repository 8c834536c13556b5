"""Benchmark an ingest endpoint: a grid of concurrency x batch size, real batches, one token.

Each cell of the grid runs ``concurrency`` workers that send batches of ``batch_size``
records (taken from a :class:`RecordPool`, cycling) through the same :class:`~._sender.Sender`
an upload uses (token, ``Idempotency-Key``, retries, ``Retry-After``), over a
:class:`_MeteredTransport` that sees every attempt: its latency, its status or its transport
error, and refuses new attempts once the cell is over. One :class:`~.auth.TokenManager`
serves the whole sweep, so the token endpoint sees one request per token lifetime.

A cell ends at the first of:

* its ``duration`` (seconds) or its ``requests`` quota;
* the sweep's ``max_requests`` (attempts across every cell; later cells are skipped);
* push-back: more than ``stop_share`` of its attempts (after ``min_sample``) were answered
  429/503, another error status, or no response at all;
* ``stop`` (an :class:`asyncio.Event`; the CLI sets it on Ctrl-C).

Then no new attempt starts, the attempts in flight finish (so the server and the cell count
the same requests), and workers still waiting to retry are cancelled. ``duration_s`` runs from
the cell's first attempt to its last answer.

Latency percentiles are over attempts that got a response (any status); ``errors`` counts
attempts that got none (connection refused or reset, timeout). ``records`` are those in
acknowledged (2xx) batches. This module knows nothing of the terminal: progress goes to a
callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from ._body import BodyEncoder
from ._concurrency import DEFAULT_INITIAL_CONCURRENCY, AdaptiveLimit, ConcurrencyLimiter
from ._config import RetryPolicy
from ._exceptions import ConfigError
from ._hooks import NO_HOOKS
from ._http import DEFAULT_MAX_BODY, Response, Transport, TransportError
from ._records import Batch
from ._retry import Clock
from ._sender import Sender
from ._summary import Counters, LatencySample
from .auth._manager import TokenManager

__all__ = [
    "BACKPRESSURE_STATUSES",
    "BenchLimits",
    "CellResult",
    "CellSpec",
    "RecordPool",
    "RequestBudget",
    "best_cell",
    "run_cell",
    "run_sweep",
    "synthetic_records",
]

#: statuses that mean "slow down": the server is at capacity
BACKPRESSURE_STATUSES: Final = frozenset({429, 503})
#: a cell stops early when this share of its attempts pushed back or failed
DEFAULT_STOP_SHARE: Final = 0.20
#: ... judged only after this many attempts (one 429 in two requests is no trend)
DEFAULT_MIN_SAMPLE: Final = 20
#: the `best` cell must stay under this share of push-back and errors
BEST_MAX_SHARE: Final = 0.01
#: latencies kept per cell for percentiles (reservoir sample; max is exact)
LATENCY_SAMPLE: Final = 100_000
_MIB: Final = 1024 * 1024


class _CellOver(Exception):
    """The cell is over (time, quota, push-back, stop): no new attempt."""


# --- records -------------------------------------------------------------------------------


def synthetic_records(count: int, record_bytes: int) -> list[bytes]:
    """``count`` JSON objects of ``record_bytes`` bytes each (at least the envelope's ~40):
    ``{"id":N,"bench":true,"pad":"xxx..."}``."""
    if count < 1:
        raise ConfigError(f"--synthetic must be >= 1, got {count}", field="synthetic")
    out: list[bytes] = []
    for i in range(1, count + 1):
        head = b'{"id":%d,"bench":true,"pad":"' % i
        pad = max(0, record_bytes - len(head) - 2)
        out.append(head + b"x" * pad + b'"}')
    return out


class RecordPool:
    """Records handed out in order, starting over at the end (a benchmark may send more
    records than its source has)."""

    __slots__ = ("_at", "_records", "bytes_per_record")

    def __init__(self, records: Sequence[bytes]) -> None:
        if not records:
            raise ConfigError("no records to send: the source holds no valid record")
        self._records = list(records)
        self._at = 0
        self.bytes_per_record = sum(map(len, self._records)) / len(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def take(self, n: int) -> list[bytes]:
        records = self._records
        out: list[bytes] = []
        while len(out) < n:
            chunk = records[self._at : self._at + n - len(out)]
            out.extend(chunk)
            self._at = (self._at + len(chunk)) % len(records)
        return out


# --- configuration and results -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CellSpec:
    """One cell: ``concurrency`` requests in flight, or with ``auto`` the adaptive limit
    (:mod:`asyncsync._concurrency`), starting at ``initial`` and never above ``concurrency``."""

    concurrency: int
    batch_size: int
    auto: bool = False
    initial: int = DEFAULT_INITIAL_CONCURRENCY


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchLimits:
    """How long each cell runs and what bounds the sweep (see the module docstring)."""

    duration: float | None = 10.0
    requests: int | None = None
    max_requests: int = 10_000
    stop_share: float = DEFAULT_STOP_SHARE
    min_sample: int = DEFAULT_MIN_SAMPLE
    #: seconds the attempts in flight get to finish once a cell is over
    drain: float = 30.0

    def __post_init__(self) -> None:
        if self.duration is None and self.requests is None:
            raise ConfigError("a cell needs a duration or a request count", field="duration")
        if self.duration is not None and not self.duration > 0:
            raise ConfigError(f"duration must be > 0, got {self.duration!r}", field="duration")
        if self.requests is not None and self.requests < 1:
            raise ConfigError(f"requests must be >= 1, got {self.requests!r}", field="requests")
        if self.max_requests < 1:
            raise ConfigError(
                f"max_requests must be >= 1, got {self.max_requests!r}", field="max_requests"
            )


@dataclass(slots=True)
class CellResult:
    """What one cell measured. ``stopped`` says why it ended: ``duration``, ``requests``,
    ``max-requests``, ``push-back``, ``interrupted``, ``skipped`` (never started)."""

    concurrency: int
    batch_size: int
    #: --concurrency auto: ``concurrency`` is the ceiling; the limit settled at
    #: ``concurrency_final`` and reached ``concurrency_max_seen`` at most
    auto: bool = False
    concurrency_final: int | None = None
    concurrency_max_seen: int | None = None
    records: int = 0
    requests: int = 0
    bytes_sent: int = 0
    duration_s: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    retries: int = 0
    stopped: str = ""
    latency: LatencySample = field(default_factory=lambda: LatencySample(LATENCY_SAMPLE))
    latency_max: float = 0.0

    @property
    def label(self) -> str:
        """The cell's concurrency as shown: ``16``, or ``auto→12`` where the limit settled."""
        if not self.auto:
            return str(self.concurrency)
        return f"auto→{self.concurrency_final}" if self.concurrency_final else "auto"

    @property
    def effective_concurrency(self) -> int:
        """Requests allowed in flight at the end: the fixed number, or the settled limit."""
        if self.auto and self.concurrency_final:
            return self.concurrency_final
        return self.concurrency

    def _rate(self, n: float) -> float:
        return n / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def records_per_s(self) -> float:
        return self._rate(self.records)

    @property
    def requests_per_s(self) -> float:
        return self._rate(self.requests)

    @property
    def mib_per_s(self) -> float:
        return self._rate(self.bytes_sent / _MIB)

    @property
    def backpressure(self) -> int:
        return sum(self.statuses.get(str(s), 0) for s in BACKPRESSURE_STATUSES)

    @property
    def failed_statuses(self) -> int:
        """Answers that are neither 2xx, push-back, nor a 401 (answered by a refresh)."""
        return sum(
            n
            for s, n in self.statuses.items()
            if not s.startswith("2") and int(s) not in BACKPRESSURE_STATUSES and s != "401"
        )

    @property
    def pushback_share(self) -> float:
        """Share of attempts answered 429/503, another error status, or nothing at all."""
        if not self.requests:
            return 0.0
        return (self.backpressure + self.failed_statuses + self.errors) / self.requests

    def latency_ms(self) -> dict[str, float | None]:
        values = sorted(self.latency.values)

        def pick(q: float) -> float | None:
            if not values:
                return None
            k = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
            return round(values[k] * 1000, 3)

        return {
            "p50": pick(0.50),
            "p95": pick(0.95),
            "p99": pick(0.99),
            "max": round(self.latency_max * 1000, 3) if values else None,
        }

    def to_dict(self) -> dict[str, Any]:
        """The contract's cell (``bench.json``), plus counts and why it stopped."""
        auto: dict[str, Any] = {}
        if self.auto:
            auto = {
                "max_concurrency": self.concurrency,
                "concurrency_final": self.concurrency_final,
                "concurrency_max_seen": self.concurrency_max_seen,
            }
        return {
            "concurrency": "auto" if self.auto else self.concurrency,
            **auto,
            "batch_size": self.batch_size,
            "records_per_s": round(self.records_per_s, 3),
            "requests_per_s": round(self.requests_per_s, 3),
            "mib_per_s": round(self.mib_per_s, 4),
            "latency_ms": self.latency_ms(),
            "statuses": dict(sorted(self.statuses.items())),
            "errors": self.errors,
            "retries": self.retries,
            "duration_s": round(self.duration_s, 4),
            "records": self.records,
            "requests": self.requests,
            "bytes": self.bytes_sent,
            "pushback_share": round(self.pushback_share, 5),
            "stopped": self.stopped,
        }


def best_cell(cells: Sequence[CellResult]) -> CellResult | None:
    """The cell with the most records/s among those whose push-back and error share stayed
    under 1% (and that delivered something)."""
    fit = [c for c in cells if c.records > 0 and c.pushback_share < BEST_MAX_SHARE]
    return max(fit, key=lambda c: c.records_per_s, default=None)


# --- the meter -----------------------------------------------------------------------------


class RequestBudget:
    """Attempts left across the sweep."""

    __slots__ = ("left",)

    def __init__(self, total: int) -> None:
        self.left = total


class _MeteredTransport:
    """Wraps the real transport for one cell: counts and times every attempt, and refuses
    new ones (:class:`_CellOver`) once the cell is over."""

    def __init__(
        self,
        inner: Transport,
        cell: CellResult,
        *,
        limits: BenchLimits,
        budget: RequestBudget,
        clock: Clock,
    ) -> None:
        self._inner = inner
        self._cell = cell
        self._limits = limits
        self._budget = budget
        self._clock = clock
        self._quota = limits.requests
        self.over: str = ""
        self.in_flight = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        self.ended = asyncio.Event()
        #: Idempotency-Keys that went out: requests - keys = the retries sent
        self.keys: set[str] = set()

    def end(self, why: str) -> None:
        if not self.over:
            self.over = why
            self.ended.set()

    async def post(
        self,
        url: str,
        *,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float | None = None,  # noqa: ASYNC109 - the Transport protocol's
        max_body: int = DEFAULT_MAX_BODY,
    ) -> Response:
        if self.over:
            raise _CellOver(self.over)
        if self._budget.left <= 0:
            self.end("max-requests")
            raise _CellOver(self.over)
        if self._quota is not None:
            if self._quota <= 0:
                self.end("requests")
                raise _CellOver(self.over)
            self._quota -= 1
        self._budget.left -= 1
        cell = self._cell
        cell.requests += 1
        self.keys.add(headers["Idempotency-Key"])
        self.in_flight += 1
        self.idle.clear()
        sent_at = self._clock()
        if self.first_at is None:
            self.first_at = sent_at
        try:
            resp = await self._inner.post(
                url, body=body, headers=headers, timeout=timeout, max_body=max_body
            )
        except TransportError:
            cell.errors += 1
            raise
        else:
            elapsed = self._clock() - sent_at
            cell.latency.add(elapsed)
            if elapsed > cell.latency_max:
                cell.latency_max = elapsed
            cell.statuses[str(resp.status)] += 1
            return resp
        finally:
            self.last_at = self._clock()
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()
            self._judge()

    def _judge(self) -> None:
        cell = self._cell
        if cell.requests >= self._limits.min_sample and (
            cell.pushback_share > self._limits.stop_share
        ):
            self.end("push-back")
        elif self._quota is not None and self._quota <= 0:
            self.end("requests")
        elif self._budget.left <= 0:
            self.end("max-requests")

    async def aclose(self) -> None:
        """The inner transport belongs to the sweep."""


# --- one cell ------------------------------------------------------------------------------


ProgressFn = Callable[[CellResult, float], None]


async def run_cell(
    spec: CellSpec,
    *,
    transport: Transport,
    url: str,
    tokens: TokenManager | None,
    encoder: BodyEncoder,
    pool: RecordPool,
    limits: BenchLimits,
    retry: RetryPolicy,
    budget: RequestBudget,
    positions: list[int],
    job_id: str,
    headers: Mapping[str, str] | None = None,
    request_timeout: float | None = None,
    stop: asyncio.Event | None = None,
    progress: ProgressFn | None = None,
    progress_every: float = 0.25,
    clock: Clock = time.monotonic,
) -> CellResult:
    """Run one cell of the grid and return what it measured (see the module docstring).

    ``positions`` is the sweep's running record position (one item, updated): every batch of
    the sweep gets positions no other batch had, hence its own ``Idempotency-Key``.
    """
    cell = CellResult(spec.concurrency, spec.batch_size, auto=spec.auto)
    if budget.left <= 0:
        cell.stopped = "skipped"
        return cell
    meter = _MeteredTransport(transport, cell, limits=limits, budget=budget, clock=clock)
    counters = Counters()
    limiter: ConcurrencyLimiter | None = None
    if spec.auto:  # spec.concurrency workers, each attempt gated by the adaptive limit
        limiter = ConcurrencyLimiter(
            AdaptiveLimit(initial=min(spec.initial, spec.concurrency), maximum=spec.concurrency),
            clock=clock,
        )
    sender = Sender(
        meter,
        url,
        tokens=tokens,
        encoder=encoder,
        job_id=job_id,
        retry=retry,
        counters=counters,
        hooks=NO_HOOKS,
        headers=headers,
        timeout=request_timeout,
        limiter=limiter,
    )
    seq = 0

    async def worker() -> None:
        nonlocal seq
        while not meter.over:
            records = pool.take(spec.batch_size)
            first = positions[0]
            positions[0] += len(records)
            batch = Batch(seq, records, range(first, first + len(records)))
            seq += 1
            try:
                results = await sender.send(batch)
            except _CellOver:
                return
            for result in results:
                if result.delivered:
                    cell.records += len(result.batch.records)
            cell.bytes_sent = counters.bytes_sent

    started = clock()
    tasks = [asyncio.create_task(worker()) for _ in range(spec.concurrency)]
    all_done = asyncio.ensure_future(asyncio.gather(*tasks, return_exceptions=True))
    ticker: asyncio.Task[None] | None = None
    if progress is not None:

        async def tick() -> None:
            while True:
                await asyncio.sleep(progress_every)
                cell.duration_s = clock() - (meter.first_at or started)
                progress(cell, clock() - started)

        ticker = asyncio.create_task(tick())
    waits: list[asyncio.Future[Any]] = [all_done, asyncio.ensure_future(meter.ended.wait())]
    if stop is not None:
        waits.append(asyncio.ensure_future(stop.wait()))
    try:
        await asyncio.wait(waits, timeout=limits.duration, return_when=asyncio.FIRST_COMPLETED)
        if stop is not None and stop.is_set():
            meter.end("interrupted")
        meter.end("duration")
        # the attempts in flight finish (the server counts them too); workers still waiting
        # to retry are cancelled
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(meter.idle.wait(), timeout=limits.drain)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(all_done, return_exceptions=True)
        for w in waits[1:]:
            w.cancel()
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    errors = [r for r in all_done.result() if isinstance(r, BaseException)]
    real = [e for e in errors if not isinstance(e, asyncio.CancelledError | _CellOver)]
    if real:
        raise real[0]
    cell.bytes_sent = counters.bytes_sent
    # requests = batches + retries, counted on the wire: the sender counts a request as it
    # tries to send it, and a retry the cell refused (_CellOver) never went out
    cell.retries = cell.requests - len(meter.keys)
    cell.stopped = meter.over
    if limiter is not None:
        cell.concurrency_final = limiter.limit
        cell.concurrency_max_seen = limiter.max_seen
    if meter.first_at is not None and meter.last_at is not None:
        cell.duration_s = max(meter.last_at - meter.first_at, 1e-9)
    if progress is not None:
        progress(cell, clock() - started)
    return cell


# --- the sweep -----------------------------------------------------------------------------


async def run_sweep(
    grid: Sequence[CellSpec],
    *,
    transport: Transport,
    url: str,
    tokens: TokenManager | None,
    encoder: BodyEncoder,
    pool: RecordPool,
    limits: BenchLimits,
    retry: RetryPolicy,
    headers: Mapping[str, str] | None = None,
    request_timeout: float | None = None,
    stop: asyncio.Event | None = None,
    progress: ProgressFn | None = None,
    on_cell: Callable[[CellResult], None] | None = None,
    clock: Clock = time.monotonic,
) -> list[CellResult]:
    """Every cell of ``grid`` in order, with one token manager and one request budget.

    Cells after an interruption are not run (the result holds only the cells that ran or
    were skipped for the budget). ``on_cell`` is called after each cell.
    """
    budget = RequestBudget(limits.max_requests)
    positions = [1]
    job_id = f"bench-{uuid.uuid4().hex[:12]}"
    cells: list[CellResult] = []
    for spec in grid:
        cell = await run_cell(
            spec,
            transport=transport,
            url=url,
            tokens=tokens,
            encoder=encoder,
            pool=pool,
            limits=limits,
            retry=retry,
            budget=budget,
            positions=positions,
            job_id=job_id,
            headers=headers,
            request_timeout=request_timeout,
            stop=stop,
            progress=progress,
            clock=clock,
        )
        cells.append(cell)
        if on_cell is not None:
            on_cell(cell)
        if cell.stopped == "interrupted":
            break
    return cells


def cells_json(cells: Sequence[CellResult], **extra: Any) -> bytes:
    """``bench.json``: ``{"cells": [...], "best": {...} | null, **extra}``."""
    best = best_cell(cells)
    doc = {
        "cells": [c.to_dict() for c in cells],
        "best": best.to_dict() if best is not None else None,
        **extra,
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
