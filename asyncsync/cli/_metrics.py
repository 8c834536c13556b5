"""``--metrics HOST:PORT``: the run's Prometheus metrics at ``/metrics``, while it lasts.

An :class:`~asyncsync.UploadHooks` implementation: the pipeline only calls hooks and knows
nothing of Prometheus. Each run gets its own ``CollectorRegistry`` (no global state: two runs
in one process, or the tests, never see each other's numbers).

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

The scrapes are served by prometheus_client's HTTP server thread; the hooks run on the event
loop. prometheus_client's metrics are thread-safe, and the live counters are plain ints read
whole.
"""

from __future__ import annotations

from collections.abc import Iterator
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

__all__ = ["MetricsExporter", "parse_listen_address"]

PREFIX: Final = "asyncsync_"
#: seconds; a request to an ingest API takes from a millisecond to its timeout
LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
INSTALL_HINT: Final = "pip install 'asyncsync[metrics]'"


def parse_listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) to (host, port); ConfigError when malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(
            f"--metrics: expected HOST:PORT such as 127.0.0.1:9464, got {text!r}", field="metrics"
        )
    return host.strip("[]"), int(port_text)


class MetricsExporter(UploadHooks):
    """Serves the run's metrics at ``http://HOST:PORT/metrics`` from :meth:`start` to
    :meth:`close`; the hooks keep them up to date."""

    def __init__(self, host: str, port: int) -> None:
        try:
            import prometheus_client as prom
            from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        except ImportError:
            raise ConfigError(
                f"--metrics needs the prometheus_client package: {INSTALL_HINT}", field="metrics"
            ) from None
        self.host = host
        self.port = port
        self._counters: Counters | None = None
        self._server: WSGIServer | None = None
        registry = self.registry = prom.CollectorRegistry(auto_describe=True)
        self._requests = prom.Counter(
            PREFIX + "requests",
            "Requests to --url (retries included; token requests not), by HTTP status or error",
            ["status"],
            registry=registry,
        )
        self._retries = prom.Counter(
            PREFIX + "retries",
            "Batches sent again, by reason (status, or error for a connection error)",
            ["reason"],
            registry=registry,
        )
        self._token_requests = prom.Counter(
            PREFIX + "token_requests", "Requests to the token endpoint", registry=registry
        )
        self._token_refreshes = prom.Counter(
            PREFIX + "token_refreshes",
            "Token refreshes started, by reason (proactive, 401, expired)",
            ["reason"],
            registry=registry,
        )
        self._checkpoints = prom.Counter(
            PREFIX + "checkpoint_saves", "Checkpoints written", registry=registry
        )
        self._duration = prom.Histogram(
            PREFIX + "request_duration_seconds",
            "Latency of each request to --url (one attempt)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._queue = prom.Gauge(
            PREFIX + "queue_batches", "Batches waiting in the queue", registry=registry
        )
        self._concurrency = 0  # the run's limit as on_run told it (fixed --concurrency N)
        self._info = prom.Gauge(
            PREFIX + "run_info", "The run: job id and version", ["job_id", "version"],
            registry=registry,
        )  # fmt: skip
        self._by_status: dict[int | None, Any] = {}
        # reason labels exported at 0 from the start, so that rate() sees the first increase
        for reason in ("proactive", "401", "expired"):
            self._token_refreshes.labels(reason)
        exporter = self

        class _Live:
            """The live counters, read at scrape time."""

            def collect(self) -> Iterator[Any]:
                c = exporter._counters
                for name, help_, value in (
                    ("records_read", "Records read from the source", c and c.records_read),
                    ("records_sent", "Records acknowledged by the API", c and c.records_sent),
                    ("records_failed", "Records dead-lettered", c and c.records_failed),
                    ("bytes_sent", "Request body bytes acknowledged", c and c.bytes_sent),
                ):
                    yield CounterMetricFamily(PREFIX + name, help_, value=value or 0)
                yield GaugeMetricFamily(
                    PREFIX + "requests_in_flight",
                    "Requests to --url in flight",
                    value=c.in_flight if c is not None else 0,
                )
                # --concurrency auto moves the limit during the run: read it live
                limit = c.concurrency_limit if c is not None else 0
                yield GaugeMetricFamily(
                    PREFIX + "concurrency_limit",
                    "Requests allowed in flight at once (--concurrency auto: the current limit)",
                    value=limit or exporter._concurrency,
                )

        registry.register(_Live())

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

    # -- hooks (on the event loop) -----------------------------------------------------------

    def on_start(self, counters: Counters, *, total_bytes: int | None) -> None:
        self._counters = counters

    def on_run(self, event: RunStarted) -> None:
        self._concurrency = event.concurrency
        self._info.labels(event.job_id, __version__).set(1)

    def on_request(self, event: RequestDone) -> None:
        # per request: the labelled child is looked up once per status, not per call
        child = self._by_status.get(event.status)
        if child is None:
            child = self._by_status[event.status] = self._requests.labels(event.label)
        child.inc()
        self._duration.observe(event.latency_s)

    def on_retry(self, details: RetryDetails) -> None:
        self._retries.labels(details.label).inc()

    def on_token(self, event: TokenEvent) -> None:
        if isinstance(event, TokenRefreshStarted):
            self._token_refreshes.labels(event.reason).inc()
        else:
            self._token_requests.inc()

    def on_queue(self, event: QueueDepth) -> None:
        self._queue.set(event.batches)

    def on_checkpoint(self, event: CheckpointSaved) -> None:
        self._checkpoints.inc()
