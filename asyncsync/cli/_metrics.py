"""``--metrics HOST:PORT``: the run's Prometheus metrics at ``/metrics``, while it lasts.

Two halves. :class:`MetricsRecorder` is an :class:`~asyncsync.UploadHooks` implementation that
keeps plain numbers (the pipeline only calls hooks and knows nothing of Prometheus);
:class:`MetricsExporter` serves them with prometheus_client's HTTP server, built at scrape
time from one or several recorders' :meth:`~MetricsRecorder.snapshot` s. Each exporter has
its own ``CollectorRegistry`` (no global state: two runs in one process, or the tests, never
see each other's numbers).

Where each metric comes from:

* ``records_read_total``, ``records_sent_total``, ``records_failed_total``, ``bytes_sent_total``,
  ``requests_in_flight`` and ``concurrency_limit`` (with ``--concurrency auto``, where the
  limit has moved to) are read from the run's live counters when scraped: they are the
  numbers the summary prints (a resumed job's counters include the runs before it, as the
  summary does), and reading them costs the upload nothing;
* ``requests_total{status}`` and ``request_duration_seconds`` from ``on_request``,
  ``retries_total{reason}`` from ``on_retry``, ``token_requests_total`` and
  ``token_refreshes_total{reason}`` from ``on_token``, ``checkpoint_saves_total`` from
  ``on_checkpoint``, ``queue_batches`` from ``on_queue``, and
  ``run_info`` from ``on_run``. These count this process's run.

Cost: the per-request hook adds to two ints, a float and a list slot (about 0.5 µs); the
prometheus_client ``Counter``/``Histogram`` objects it replaced took a lock per update and
walked the buckets in Python (3.4 µs per request here). The scrape, on the server's thread,
copies the recorder's dicts and lists (each copy is one C call, whole under the GIL) and
builds the families from them.

``--processes N``: each child keeps a recorder and sends its snapshot to the parent with its
progress (five times a second, and once more with its summary); the parent's exporter serves
the sum of the children's latest snapshots on the one ``--metrics`` port: counters, the
histogram and the gauges summed (``concurrency_limit`` is the processes' limits together),
``run_info`` once per shard's job id.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from .. import __version__
from .._exceptions import ConfigError
from .._hooks import (
    CheckpointSaved,
    QueueDepth,
    RequestDone,
    RetryDetails,
    RunStarted,
    TokenEvent,
    TokenRefreshStarted,
    UploadHooks,
)
from .._summary import Counters

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

__all__ = ["MetricsExporter", "MetricsRecorder", "merge_snapshots", "parse_listen_address"]

PREFIX: Final = "asyncsync_"
#: seconds; a request to an ingest API takes from a millisecond to its timeout
LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
#: the histogram's ``le`` labels
BOUNDS: Final = (*map(str, LATENCY_BUCKETS), "+Inf")
INSTALL_HINT: Final = "pip install 'asyncsync[metrics]'"
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


def parse_listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) to (host, port); ConfigError when malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(
            f"--metrics: expected HOST:PORT such as 127.0.0.1:9464, got {text!r}", field="metrics"
        )
    return host.strip("[]"), int(port_text)


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
        self._queue = 0
        self._concurrency = 0  # the run's limit as on_run told it (fixed --concurrency N)
        self._job_id: str | None = None

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
            "queue_batches": self._queue,
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

    def on_queue(self, event: QueueDepth) -> None:
        self._queue = event.batches

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


class MetricsExporter:
    """Serves metrics at ``http://HOST:PORT/metrics`` from :meth:`start` to :meth:`close`.

    :attr:`read` gives the snapshots to serve at each scrape (summed); by default the
    exporter's own :attr:`recorder`'s, which the run's hooks keep up to date. It may be
    replaced while the exporter serves (``--processes``: the children's latest snapshots).
    """

    def __init__(
        self, host: str, port: int, *, read: Callable[[], Iterable[Snapshot]] | None = None
    ) -> None:
        try:
            import prometheus_client as prom
            from prometheus_client.core import (
                CounterMetricFamily,
                GaugeMetricFamily,
                HistogramMetricFamily,
            )
        except ImportError:
            raise ConfigError(
                f"--metrics needs the prometheus_client package: {INSTALL_HINT}", field="metrics"
            ) from None
        self.host = host
        self.port = port
        self._server: WSGIServer | None = None
        self.recorder = MetricsRecorder()
        recorder = self.recorder
        self.read: Callable[[], Iterable[Snapshot]] = (
            read if read is not None else lambda: [recorder.snapshot()]
        )
        self.registry = prom.CollectorRegistry(auto_describe=True)
        exporter = self

        class _Collector:
            def collect(self) -> Iterator[Any]:
                m = merge_snapshots(exporter.read())
                for name, help_ in LIVE_COUNTERS:
                    yield CounterMetricFamily(PREFIX + name, help_, value=m[name])
                requests = CounterMetricFamily(
                    PREFIX + "requests",
                    "Requests to --url (retries included; token requests not), by HTTP "
                    "status or error",
                    labels=["status"],
                )
                for label, n in sorted(m["requests"].items()):
                    requests.add_metric([label], n)
                yield requests
                retries = CounterMetricFamily(
                    PREFIX + "retries",
                    "Batches sent again, by reason (status, or error for a connection error)",
                    labels=["reason"],
                )
                for label, n in sorted(m["retries"].items()):
                    retries.add_metric([label], n)
                yield retries
                yield CounterMetricFamily(
                    PREFIX + "token_requests",
                    "Requests to the token endpoint",
                    value=m["token_requests"],
                )
                refreshes = CounterMetricFamily(
                    PREFIX + "token_refreshes",
                    "Token refreshes started, by reason (proactive, 401, expired)",
                    labels=["reason"],
                )
                # every reason exported from the start (at 0), so rate() sees the first rise
                for label, n in m["token_refreshes"].items():
                    refreshes.add_metric([label], n)
                yield refreshes
                yield CounterMetricFamily(
                    PREFIX + "checkpoint_saves",
                    "Checkpoints written",
                    value=m["checkpoint_saves"],
                )
                cumulative, buckets = 0, []
                for bound, n in zip(BOUNDS, m["latency_buckets"], strict=True):
                    cumulative += n
                    buckets.append((bound, cumulative))
                histogram = HistogramMetricFamily(
                    PREFIX + "request_duration_seconds",
                    "Latency of each request to --url (one attempt)",
                )
                histogram.add_metric([], buckets, sum_value=m["latency_sum"])
                yield histogram
                for name, help_, key in (
                    ("requests_in_flight", "Requests to --url in flight", "in_flight"),
                    (
                        "concurrency_limit",
                        "Requests allowed in flight at once (--concurrency auto: the current "
                        "limit; --processes: all processes' together)",
                        "concurrency_limit",
                    ),
                    ("queue_batches", "Batches waiting in the queue", "queue_batches"),
                ):
                    yield GaugeMetricFamily(PREFIX + name, help_, value=m[key])
                info = GaugeMetricFamily(
                    PREFIX + "run_info",
                    "The run: job id and version",
                    labels=["job_id", "version"],
                )
                for job_id in m["job_ids"]:
                    info.add_metric([job_id, __version__], 1)
                yield info

        self.registry.register(_Collector())

    def start(self) -> MetricsExporter:
        """Listen now (before the run, so that the first scrape finds the endpoint)."""
        from prometheus_client import start_http_server

        try:
            self._server, _ = start_http_server(self.port, addr=self.host, registry=self.registry)
            self.port = self._server.server_port  # the one the system chose for port 0
        except OSError as exc:
            raise ConfigError(
                f"--metrics: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}",
                field="metrics",
            ) from None
        return self

    def close(self) -> None:
        """Stop serving (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> MetricsExporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
