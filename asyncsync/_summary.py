"""Run counters (live, read by progress displays) and the run summary (frozen, at the end)."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Counters", "LatencySample", "RunSummary"]


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
    retries_by_status, in_flight, latencies
    auth_requests                                       the uploader (from the token manager)
    concurrency_*                                       the uploader (from the limiter)
    ==================================================  ======================================

    A resumed job starts from the checkpoint's counts, restored in one place
    (:meth:`asyncsync.checkpoint._state.CheckpointState.restore_counters`, called by
    ``Ledger.open``), so the summary covers the whole job.
    """

    records_read: int = 0
    records_sent: int = 0
    records_failed: int = 0
    bytes_read: int = 0
    bytes_sent: int = 0
    batches: int = 0
    requests: int = 0
    retries: int = 0
    retries_by_status: Counter[str] = field(default_factory=Counter)
    auth_requests: int = 0
    in_flight: int = 0
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
            from ._exceptions import DeliveryError

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
