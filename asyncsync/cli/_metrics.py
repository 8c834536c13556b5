"""``--metrics HOST:PORT``: the run's Prometheus metrics at ``/metrics``, while it lasts.

:class:`MetricsExporter` serves the numbers of one or several
:class:`~asyncsync._recorder.MetricsRecorder` s (a hooks implementation keeping plain numbers:
the pipeline only calls hooks and knows nothing of Prometheus) with prometheus_client's HTTP
server, the text built at scrape time from their snapshots. Each exporter has its own
``CollectorRegistry`` (no global state: two runs in one process, or the tests, never see each
other's numbers).

Where each metric comes from:

* ``records_read_total``, ``records_sent_total``, ``records_failed_total``, ``bytes_sent_total``,
  ``requests_in_flight``, ``queue_batches`` and ``concurrency_limit`` (with ``--concurrency
  auto``, where the limit has moved to) are read from the run's live counters when scraped:
  they are the numbers the summary prints (a resumed job's counters include the runs before
  it, as the summary does), and reading them costs the upload nothing;
* ``requests_total{status}`` and ``request_duration_seconds`` from ``on_request``,
  ``retries_total{reason}`` from ``on_retry``, ``token_requests_total`` and
  ``token_refreshes_total{reason}`` from ``on_token``, ``checkpoint_saves_total`` from
  ``on_checkpoint``, and ``run_info`` from ``on_run``. These count this process's run.

The scrape, on the server's thread, copies the recorders' dicts and lists (each copy is one C
call, whole under the GIL) and builds the families from them.

Several processes, one port (the snapshots summed: counters, the histogram and the gauges;
``concurrency_limit`` is the processes' limits together, ``run_info`` once per job id):

* ``--processes N``: each child keeps a recorder and sends its snapshot to the parent with
  its progress (five times a second, and once more with its summary);
* ``--engine dask``: each part's task keeps a recorder on its worker, and the client polls
  the workers for their parts' snapshots (:mod:`asyncsync.dask`, ``on_progress``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final

from .. import __version__
from .._exceptions import ConfigError
from .._recorder import BOUNDS, LIVE_COUNTERS, MetricsRecorder, Snapshot, merge_snapshots

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

__all__ = ["MetricsExporter", "MetricsRecorder", "merge_snapshots", "parse_listen_address"]

INSTALL_HINT: Final = "pip install 'asyncsync[metrics]'"
#: seconds: how often the server's loop looks for a shutdown request
SHUTDOWN_POLL: Final = 0.05
PREFIX: Final = "asyncsync_"


def parse_listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) to (host, port); ConfigError when malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(
            f"--metrics: expected HOST:PORT such as 127.0.0.1:9464, got {text!r}", field="metrics"
        )
    return host.strip("[]"), int(port_text)


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
                # every refresh reason is exported from the start (at 0), so that rate()
                # sees the first rise
                for name, help_, label, key in (
                    (
                        "requests",
                        "Requests to --url (retries included; token requests not), by HTTP "
                        "status or error",
                        "status",
                        "requests",
                    ),
                    (
                        "retries",
                        "Batches sent again, by reason (status, or error for a connection error)",
                        "reason",
                        "retries",
                    ),
                    (
                        "token_refreshes",
                        "Token refreshes started, by reason (proactive, 401, expired)",
                        "reason",
                        "token_refreshes",
                    ),
                ):
                    family = CounterMetricFamily(PREFIX + name, help_, labels=[label])
                    for value, n in sorted(m[key].items()):
                        family.add_metric([value], n)
                    yield family
                for name, help_ in (
                    ("token_requests", "Requests to the token endpoint"),
                    ("checkpoint_saves", "Checkpoints written"),
                ):
                    yield CounterMetricFamily(PREFIX + name, help_, value=m[name])
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
        """Listen now (before the run, so that the first scrape finds the endpoint).

        prometheus_client's WSGI app, on a threading ``wsgiref`` server of our own (as its
        ``start_http_server`` builds one) whose loop polls for shutdown every 50 ms instead
        of 0.5 s: :meth:`close` at the end of a run returns at once, not up to half a second
        later."""
        import socket
        import socketserver
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        from prometheus_client import make_wsgi_app

        class _Quiet(WSGIRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None  # no access log on stderr

        try:
            family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0][0]

            class _Server(socketserver.ThreadingMixIn, WSGIServer):
                daemon_threads = True
                address_family = family

            server = make_server(
                self.host, self.port, make_wsgi_app(self.registry), _Server, _Quiet
            )
        except OSError as exc:
            raise ConfigError(
                f"--metrics: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}",
                field="metrics",
            ) from None
        self._server = server
        self.port = server.server_port  # the one the system chose for port 0
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL},
            name="asyncsync-metrics",
            daemon=True,
        )
        thread.start()
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
