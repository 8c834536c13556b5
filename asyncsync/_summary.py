"""Run counters (live, read by progress displays) and the run summary (frozen, at the end)."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ._exceptions import AsyncSyncError

__all__ = [
    "COUNTER_FIELDS",
    "Counters",
    "DeliveryError",
    "Interrupted",
    "LatencySample",
    "RunSummary",
    "merge_summaries",
]


class LatencySample:
    """A bounded uniform sample of request latencies (reservoir sampling, algorithm R).

    Memory stays fixed however many requests a run makes; percentiles over 10 000 samples
    are accurate to well under a percent.
    """

    __slots__ = ("_rng", "count", "size", "values")

    def __init__(self, size: int = 10_000, *, seed: int | None = 0) -> None:
        self.size = size
        self.count = 0
        self.values: list[float] = []
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.count += 1
        if len(self.values) < self.size:
            self.values.append(value)
        else:
            j = int(self._rng.random() * self.count)
            if j < self.size:
                self.values[j] = value


@dataclass(slots=True)
class Counters:
    """Live counters of a run; hooks and displays only read them.

    Plain attributes, not a lock: everything runs on one event loop thread. Each field has
    one writer during a run (the per-batch path cannot afford indirection, so they write the
    attributes directly):

    ==================================================  ======================================
    field                                               written by
    ==================================================  ======================================
    records_read, records_sent, records_failed          the pipeline (as batches settle)
    bytes_read                                          the uploader (per source block)
    bytes_sent, batches, requests, retries,             the sender (per request)
    retries_by_status, split_requests, in_flight,
    latencies
    auth_requests                                       the uploader (from the token manager)
    queued                                              the pipeline (batches in its queue)
    concurrency_*                                       the uploader (from the limiter)
    ==================================================  ======================================

    Invariant (the sender keeps it): ``requests == batches + retries``. ``batches`` counts
    distinct Idempotency-Keys sent (the first request of each; a batch split on 413 or on a
    rejection, each of its parts, and each round of per-record results re-sent are distinct
    keys), ``retries`` every further request with a key already
    sent (after a 5xx, 429, transport error, or a 401; ``retries_by_status`` by reason:
    the status, ``"error"`` for transport errors). ``split_requests`` counts the requests
    (first sends and retries) for parts of a split batch: a subset of ``requests``.

    A resumed job starts from the checkpoint's counts, restored in one place
    (:meth:`asyncsync.checkpoint._state.CheckpointState.restore_counters`, called by
    ``Ledger.open``), so the summary covers the whole job and the invariant holds for it.
    """

    records_read: int = 0
    records_sent: int = 0
    records_failed: int = 0
    bytes_read: int = 0
    bytes_sent: int = 0
    batches: int = 0
    requests: int = 0
    retries: int = 0
    #: requests for parts of a split batch (a 413, a rejection, items re-sent), retries included
    split_requests: int = 0
    retries_by_status: Counter[str] = field(default_factory=Counter)
    auth_requests: int = 0
    in_flight: int = 0
    #: batches waiting in the pipeline's queue (for a moment -1: a worker took a batch
    #: before the reader counted it)
    queued: int = 0
    latencies: LatencySample = field(default_factory=LatencySample)
    concurrency_auto: bool = False
    concurrency_limit: int = 0
    concurrency_max_seen: int = 0
    concurrency_timeline: list[tuple[float, int]] | None = None


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSummary:
    """What a run did. ``to_dict()`` gives the contract's summary JSON keys."""

    records_read: int
    records_sent: int
    records_failed: int
    batches: int
    requests: int
    retries: int
    retries_by_status: dict[str, int]
    auth_requests: int
    duration_s: float
    split_requests: int = 0
    bytes_sent: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    job_id: str | None = None
    interrupted: bool = False
    concurrency_final: int | None = None
    concurrency_max_seen: int | None = None
    concurrency_timeline: list[tuple[float, int]] | None = None
    """``[[seconds since start, limit], ...]`` with ``--concurrency auto`` (bounded length)."""

    @property
    def records_per_s(self) -> float:
        return self.records_sent / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        """True when every record read was delivered."""
        return self.records_failed == 0 and not self.interrupted

    def raise_for_failures(self) -> RunSummary:
        """Raise :class:`DeliveryError` when a record was dead-lettered; else return self
        (as httpx's ``raise_for_status``: the caller decides that a failure is an error)."""
        if self.records_failed:
            raise DeliveryError(
                f"{self.records_failed} of {self.records_read} records could not be delivered "
                "and are in the dead-letter file",
                summary=self,
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["records_per_s"] = round(self.records_per_s, 1)
        data["duration_s"] = round(self.duration_s, 3)
        if self.concurrency_timeline is None:
            del data["concurrency_timeline"]
        else:
            data["concurrency_timeline"] = [list(p) for p in self.concurrency_timeline]
        return data

    @classmethod
    def from_counters(
        cls,
        counters: Counters,
        *,
        duration_s: float,
        job_id: str | None = None,
        interrupted: bool = False,
    ) -> RunSummary:
        lat = sorted(counters.latencies.values)

        def ms(q: float) -> float | None:
            v = _percentile(lat, q)
            return None if v is None else round(v * 1000, 2)

        return cls(
            records_read=counters.records_read,
            records_sent=counters.records_sent,
            records_failed=counters.records_failed,
            batches=counters.batches,
            requests=counters.requests,
            retries=counters.retries,
            retries_by_status=dict(counters.retries_by_status),
            auth_requests=counters.auth_requests,
            duration_s=duration_s,
            split_requests=counters.split_requests,
            bytes_sent=counters.bytes_sent,
            latency_p50_ms=ms(0.50),
            latency_p95_ms=ms(0.95),
            latency_p99_ms=ms(0.99),
            job_id=job_id,
            interrupted=interrupted,
            concurrency_final=counters.concurrency_limit or None,
            concurrency_max_seen=counters.concurrency_max_seen or None,
            concurrency_timeline=(
                list(counters.concurrency_timeline)
                if counters.concurrency_timeline is not None
                else None
            ),
        )


#: the counters a part of a scaled-out run reports while it runs (progress snapshots)
COUNTER_FIELDS: Final = (
    "records_read",
    "records_sent",
    "records_failed",
    "bytes_read",
    "bytes_sent",
    "batches",
    "requests",
    "retries",
    "split_requests",
    "auth_requests",
    "in_flight",
)


def merge_summaries(
    parts: Sequence[Mapping[str, Any]],
    *,
    duration_s: float,
    interrupted: bool = False,
) -> RunSummary:
    """One summary from the parts of a scaled-out run (``--processes`` children, Dask tasks):
    each part is a ``RunSummary.to_dict()`` plus ``latencies`` (its latency samples, seconds).
    Counters summed, ``duration_s`` the whole run's wall time, records/s recomputed from it,
    percentiles from the pooled samples, ``job_id`` the parts' joined by commas,
    ``interrupted`` if any part was (or the caller says so)."""
    total = Counters()
    pooled: list[float] = []
    jobs = []
    for part in parts:
        for name in COUNTER_FIELDS:
            if name != "in_flight":
                setattr(total, name, getattr(total, name) + int(part.get(name) or 0))
        total.retries_by_status.update(part.get("retries_by_status") or {})
        pooled.extend(part.get("latencies") or ())
        interrupted = interrupted or bool(part.get("interrupted"))
        if part.get("job_id"):
            jobs.append(str(part["job_id"]))
    sample = LatencySample(size=max(1, len(pooled)))
    sample.values = pooled
    sample.count = len(pooled)
    total.latencies = sample
    return RunSummary.from_counters(
        total,
        duration_s=duration_s,
        job_id=",".join(jobs) or None,
        interrupted=interrupted,
    )


class DeliveryError(AsyncSyncError):
    """Records could not be delivered (a permanent status, or retries exhausted) and are in the
    dead-letter file. A failed batch does not stop a run; this is raised only when the caller
    asks, by :meth:`RunSummary.raise_for_failures`, and carries that ``summary``."""

    def __init__(self, message: str, *, summary: RunSummary) -> None:
        super().__init__(message)
        self.summary = summary


class Interrupted(AsyncSyncError):
    """The run was stopped (``Uploader.stop()``/``abort()``, a signal in the CLI) after a clean
    drain; ``summary`` says what it did. Resume from the checkpoint."""

    def __init__(self, message: str, *, summary: RunSummary | None = None) -> None:
        super().__init__(message)
        self.summary = summary
