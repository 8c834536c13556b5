"""``upload --engine dask``: the upload as tasks on a Dask cluster (:mod:`asyncsync.dask`).

``--workers N`` starts a local cluster of N single-threaded worker processes (a file token
store in a private temporary directory unless ``--token-store`` names one); ``--scheduler
tcp://HOST:PORT`` uses a running cluster and needs ``--token-store`` (``redis://`` when the
workers span hosts). The source is a file (cut into byte-range shards, two per worker
thread) or ``--db`` (key ranges, ``--processes``-style: two per worker thread).

State: a directory of per-part checkpoints and dead-letter parts, ``<source>.dask/`` beside
a file source (``./asyncsync-dask/`` for ``--db``), or ``PATH.dask/`` with ``--checkpoint
PATH``; every worker must see it at the same path. The parts' dead letters end in the run's one file
(``--failed``, default ``<source>.failed.jsonl``), the summary is one merged report, and
the exit code the contract's (0, 1 when records failed; errors as for one process).

Progress and ``--metrics``: the client polls the workers twice a second for every part's
counters (and metrics snapshot), sums them into one :class:`~asyncsync._summary.Counters`
for the progress display (on an event loop thread of its own: the Dask client's calls
block the main thread, which keeps Ctrl-C), and serves the summed metrics on the one
``--metrics`` port, as ``--processes`` does.

Ctrl-C or SIGTERM drains (:func:`asyncsync.dask._drain`): every worker's part in flight stops
reading, finishes its batches in flight and checkpoints, parts not started do not start, and
the run reports its summary and exits 4; a re-run resumes every part. A second Ctrl-C (or 30 s
without the drain ending) cancels the rest and exits 4 as well; the checkpoints keep what
was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import ssl
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from .._config import BodyOptions, HttpOptions, RejectOptions
from .._exceptions import ConfigError
from .._hooks import UploadHooks
from .._summary import COUNTER_FIELDS, Counters, RunSummary
from .._transports import resolve_transport
from ._exit import summary_exit_code
from ._plan import state_paths
from ._progress import ProgressDisplay, progress_wanted
from ._report import report
from ._run import build_auth
from ._settings import Settings

__all__ = ["run_dask"]


def _check(settings: Settings) -> None:
    if settings.command != "upload":
        raise ConfigError("--engine dask applies to upload only", field="engine")
    if (settings.scheduler is None) == (settings.workers is None):
        raise ConfigError(
            "--engine dask needs --scheduler tcp://HOST:PORT or --workers N (one of them)",
            field="engine",
        )
    if settings.processes > 1 or settings.shard is not None:
        raise ConfigError(
            "--engine dask excludes --processes and --shard (Dask schedules the shards)",
            field="engine",
        )
    if settings.db is None and (settings.source is None or settings.source == "-"):
        raise ConfigError(
            "--engine dask needs a file source (.jsonl, .ndjson or .csv) or --db: "
            "stdin cannot be split",
            field="engine",
        )
    if (
        settings.scheduler is not None
        and settings.auth in ("oauth2", "login")
        and settings.token_store is None
    ):
        raise ConfigError(
            "--engine dask --scheduler needs --token-store redis://HOST:PORT/DB: every "
            "worker must share the token",
            field="token_store",
        )


def run_dask(settings: Settings, console: Console) -> int:
    """Plan, run on the cluster, report once; the exit code."""
    _check(settings)
    from ..dask import FileShards, SqlRanges

    data: Any
    if settings.db is not None:
        assert settings.key is not None  # checked by resolve()
        shards = 2 * settings.workers if settings.workers is not None else 8
        data = SqlRanges(
            settings.db, settings.key, shards, table=settings.table, query=settings.query
        )
        default_dir = Path("asyncsync-dask")
    else:
        assert settings.source is not None
        data = FileShards(settings.source)
        default_dir = Path(settings.source + ".dask")
    # --checkpoint names a file: the parts' directory sits beside it, named after it
    state_dir = default_dir if settings.checkpoint is None else Path(f"{settings.checkpoint}.dask")
    _, failed = state_paths(settings)
    ssl_factory = None
    if settings.ca_bundle is not None:
        settings.ssl_context()  # a bad bundle is a ConfigError here, not on a worker
        ssl_factory = functools.partial(ssl.create_default_context, cafile=str(settings.ca_bundle))
    total = Counters()
    display: UploadHooks | None = None
    if progress_wanted(
        settings.progress, verbosity=settings.verbosity, log_format=settings.log_format
    ):
        display = ProgressDisplay(console, description="upload (dask)")
    exporter = None
    if settings.metrics is not None:
        from ._metrics import MetricsExporter, parse_listen_address

        exporter = MetricsExporter(*parse_listen_address(settings.metrics), read=list).start()
    latest: Mapping[int, Mapping[str, Any]] = {}

    def on_progress(parts: Mapping[int, Mapping[str, Any]]) -> None:
        nonlocal latest
        latest = parts
        for name in COUNTER_FIELDS:
            setattr(total, name, sum(int(p["c"].get(name) or 0) for p in parts.values()))

    if exporter is not None:
        exporter.read = lambda: [p["m"] for p in latest.values() if "m" in p]
    try:
        with _shown(display, total) as done, _sigterm_interrupts():
            # Ctrl-C (or SIGTERM): the parts drain, the summary says interrupted, exit 4
            summary = _upload(settings, data, state_dir, failed, ssl_factory, on_progress)
            done.append(summary)
    finally:
        if exporter is not None:
            exporter.close()
    report(
        summary,
        console,
        command=settings.command,
        failed=failed,
        summary_json=settings.summary_json,
        verbosity=settings.verbosity,
        log_format=settings.log_format,
        extra={"transport": resolve_transport(settings.transport)},
    )
    return summary_exit_code(summary)


@contextlib.contextmanager
def _shown(display: UploadHooks | None, total: Counters) -> Iterator[list[RunSummary]]:
    """The progress display on an event loop thread of its own, reading ``total``; it ends
    with the summary the caller appends to the list it is given (or ``total`` as it is)."""
    done: list[RunSummary] = []
    if display is None:
        yield done
        return
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="asyncsync-progress", daemon=True)
    thread.start()
    loop.call_soon_threadsafe(functools.partial(display.on_start, total, total_bytes=None))
    try:
        yield done
    finally:
        finished = done[0] if done else RunSummary.from_counters(total, duration_s=0.0)
        asyncio.run_coroutine_threadsafe(_finish(display, finished), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread, as Ctrl-C does (a drain)."""
    try:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


async def _finish(display: UploadHooks, summary: RunSummary) -> None:
    display.on_finish(summary)


def _upload(
    settings: Settings,
    data: Any,
    state_dir: Path,
    failed: Path,
    ssl_factory: Any,
    on_progress: Any,
) -> RunSummary:
    from ..dask import upload_dask_sync

    return upload_dask_sync(
        data,
        settings.url,
        auth=build_auth(settings),
        scheduler=settings.scheduler,
        workers=settings.workers,
        token_store=settings.token_store,
        state_dir=state_dir,
        failed=failed,
        resume=settings.resume,
        concurrency=settings.concurrency,
        max_concurrency=settings.max_concurrency,
        initial_concurrency=settings.initial_concurrency,
        queue_size=settings.queue_size,
        limits=settings.limits,
        retry=settings.retry,
        body=BodyOptions(
            format=settings.body,
            wrap=settings.wrap,
            gzip=settings.gzip,
            headers=dict(settings.headers),
        ),
        http=HttpOptions(
            timeout=settings.timeout,
            rate=settings.rate,
            ssl=False if settings.insecure else None,
            transport=settings.transport,
        ),
        rejects=RejectOptions(
            on_reject=settings.on_reject,
            max_split_requests=settings.max_split_requests,
            results=settings.results,
        ),
        ssl_factory=ssl_factory,
        token_skew=settings.token_skew,
        auth_retry_time=settings.auth_retry_time,
        on_progress=on_progress,
        metrics=settings.metrics is not None,
    )
