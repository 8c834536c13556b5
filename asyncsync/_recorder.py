"""Plain-number metrics of a run: :class:`MetricsRecorder`, a hooks implementation.

It keeps what a metrics system needs (requests by status, retries by reason, token events,
a latency histogram, checkpoint saves) as plain ints and lists updated on the
event loop, and hands them out as a JSON-able :meth:`~MetricsRecorder.snapshot`, with the
run's live counters. It imports no metrics library: ``asyncsync.cli._metrics`` serves the
snapshots in the Prometheus format, from one process or summed over several
(``--processes``, ``--engine dask``) with :func:`merge_snapshots`.

Cost: the per-request hook adds to two ints, a float and a list slot (about 0.7 µs with the
event built); prometheus_client's ``Counter``/``Histogram`` take a lock per update and walk
the buckets in Python (2.7 µs per request here).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any, Final

from ._hooks import (
    CheckpointSaved,
    RequestDone,
    RetryDetails,
    RunStarted,
    TokenEvent,
    TokenRefreshStarted,
    UploadHooks,
)
from ._summary import Counters

__all__ = [
    "LATENCY_BUCKETS",
    "LIVE_COUNTERS",
    "REFRESH_REASONS",
    "MetricsRecorder",
    "Snapshot",
    "merge_snapshots",
]

#: seconds; a request to an ingest API takes from a millisecond to its timeout
LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
#: the histogram's ``le`` labels
BOUNDS: Final = (*map(str, LATENCY_BUCKETS), "+Inf")
REFRESH_REASONS: Final = ("proactive", "401", "expired")
#: the live counters a snapshot carries, with their help text
LIVE_COUNTERS: Final = (
    ("records_read", "Records read from the source"),
    ("records_sent", "Records acknowledged by the API"),
    ("records_failed", "Records dead-lettered"),
    ("bytes_sent", "Request body bytes acknowledged"),
)

#: a recorder's numbers at one moment: plain JSON types (a child sends it to its parent)
Snapshot = Mapping[str, Any]


class MetricsRecorder(UploadHooks):
    """The hooks half: what the metrics need, as plain numbers updated on the event loop."""

    def __init__(self) -> None:
        self._counters: Counters | None = None
        self._requests: dict[int | None, int] = {}  # by status; None: a connection error
        self._retries: dict[str, int] = {}  # by label
        self._token_requests = 0
        self._refreshes = dict.fromkeys(REFRESH_REASONS, 0)
        self._checkpoints = 0
        # per bucket (not cumulative); the last one is +Inf
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        self._concurrency = 0  # the run's limit as on_run told it (fixed --concurrency N)
        self._job_id: str | None = None

    @property
    def counters(self) -> Counters | None:
        """The run's live counters (from ``on_start``)."""
        return self._counters

    def snapshot(self) -> dict[str, Any]:
        """The numbers now, as JSON types (safe to call from another thread)."""
        c = self._counters
        requests = dict(self._requests)  # one C call each: a consistent copy
        buckets = list(self._buckets)
        live = {name: (getattr(c, name) if c is not None else 0) for name, _ in LIVE_COUNTERS}
        return {
            **live,
            "in_flight": c.in_flight if c is not None else 0,
            # --concurrency auto moves the limit during the run: read it live
            "concurrency_limit": (c.concurrency_limit if c is not None else 0) or self._concurrency,
            "requests": {("error" if s is None else str(s)): n for s, n in requests.items()},
            "retries": dict(self._retries),
            "token_requests": self._token_requests,
            "token_refreshes": dict(self._refreshes),
            "checkpoint_saves": self._checkpoints,
            "latency_buckets": buckets,
            "latency_sum": self._latency_sum,
            "queue_batches": max(0, c.queued) if c is not None else 0,
            "job_ids": [self._job_id] if self._job_id is not None else [],
        }

    # -- hooks (on the event loop) -----------------------------------------------------------

    def on_start(self, counters: Counters, *, total_bytes: int | None) -> None:
        self._counters = counters

    def on_run(self, event: RunStarted) -> None:
        self._concurrency = event.concurrency
        self._job_id = event.job_id

    def on_request(self, event: RequestDone) -> None:
        requests = self._requests
        status = event.status
        requests[status] = requests.get(status, 0) + 1
        latency = event.latency_s
        self._buckets[bisect_left(LATENCY_BUCKETS, latency)] += 1
        self._latency_sum += latency

    def on_retry(self, details: RetryDetails) -> None:
        label = details.label
        self._retries[label] = self._retries.get(label, 0) + 1

    def on_token(self, event: TokenEvent) -> None:
        if isinstance(event, TokenRefreshStarted):
            self._refreshes[event.reason] = self._refreshes.get(event.reason, 0) + 1
        else:
            self._token_requests += 1

    def on_checkpoint(self, event: CheckpointSaved) -> None:
        self._checkpoints += 1


def _add(into: dict[str, int], part: Mapping[str, Any]) -> None:
    for key, value in part.items():
        into[key] = into.get(key, 0) + int(value)


def merge_snapshots(parts: Iterable[Snapshot]) -> dict[str, Any]:
    """Several processes' snapshots as one: every number summed, the job ids listed."""
    out: dict[str, Any] = {
        **{name: 0 for name, _ in LIVE_COUNTERS},
        "in_flight": 0,
        "concurrency_limit": 0,
        "requests": {},
        "retries": {},
        "token_requests": 0,
        "token_refreshes": dict.fromkeys(REFRESH_REASONS, 0),
        "checkpoint_saves": 0,
        "latency_buckets": [0] * (len(LATENCY_BUCKETS) + 1),
        "latency_sum": 0.0,
        "queue_batches": 0,
        "job_ids": [],
    }
    for part in parts:
        for name in (
            *(n for n, _ in LIVE_COUNTERS),
            "in_flight",
            "concurrency_limit",
            "token_requests",
            "checkpoint_saves",
            "queue_batches",
        ):
            out[name] += int(part.get(name) or 0)
        for name in ("requests", "retries", "token_refreshes"):
            _add(out[name], part.get(name) or {})
        buckets = part.get("latency_buckets")
        if buckets:
            total = out["latency_buckets"]
            out["latency_buckets"] = [a + int(b) for a, b in zip(total, buckets, strict=True)]
        out["latency_sum"] += float(part.get("latency_sum") or 0.0)
        out["job_ids"] += list(part.get("job_ids") or [])
    return out
