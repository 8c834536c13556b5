"""``asyncsync bench``: measure an ingest endpoint over a grid of concurrency x batch size.

The auth, body and TLS flags are upload's own (the rows of :data:`._settings.OPTIONS` named in
:data:`BENCH_OPTIONS`, resolved by the same :func:`._settings.resolve`), so a command line
that uploads also benchmarks. The measuring is :mod:`asyncsync._bench`; the files and the
picture are :mod:`._bench_report`. Exit status: 0 the sweep ran (push-back included), 2 usage,
3 authentication, 4 interrupted (the cells so far are written), 1 a ``--dry-run`` whose one
record was not accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from rich.console import Console

from .._exceptions import ConfigError
from ._exit import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, PROG
from ._logs import logging_to_stderr
from ._settings import OPTIONS, Settings, add_upload_arguments, resolve

__all__ = [
    "BENCH_EPILOG",
    "BENCH_OPTIONS",
    "add_bench_arguments",
    "parse_grid",
    "run_bench",
]

#: the upload options bench takes as they are: target, auth, body, TLS, per-request limits
BENCH_OPTIONS: Final = frozenset(
    {o.name for o in OPTIONS if o.group in ("target", "authentication", "request body", "TLS")}
    | {"timeout", "max-attempts", "max-retry-time", "verbose", "quiet", "transport"}
    # --concurrency auto: the adaptive limit's ceiling and start
    | {"max-concurrency", "initial-concurrency"}
)
#: records read from SOURCE at most (the pool cycles)
MAX_POOL_RECORDS: Final = 100_000
MAX_POOL_BYTES: Final = 64 * 1024 * 1024
MAX_CONCURRENCY: Final = 4096
DEFAULT_DURATION: Final = 10.0
DEFAULT_MAX_REQUESTS: Final = 10_000
DEFAULT_RECORD_BYTES: Final = 256

BENCH_EPILOG = """\
WARNING: bench sends REAL records to --url: every acknowledged batch is stored by the
endpoint. Point it at a test tenant, or a sandbox that discards what it gets.

Each cell of the grid (every --concurrency with every --batch-size) sends batches for
--duration seconds (default 10) or --requests requests, through the same token, body and
retry handling as upload; one token serves the whole sweep. A cell stops early when more
than 20% of its requests are pushed back (429/503) or fail; the sweep never makes more than
--max-requests requests in all (default 10000). Ctrl-C stops it, keeping the cells so far.
--concurrency auto runs one cell per batch size under the adaptive limit of upload
--concurrency auto and reports where it settled (concurrency_final, concurrency_max_seen).
Results: a table on stdout, and DIR/bench.json, bench.csv and bench.png (the picture needs
the plot extra: pip install 'asyncsync[plot]').

examples:
  export ASYNCSYNC_CLIENT_SECRET=...
  asyncsync bench --url https://sandbox.example.com/ingest \\
      --token-url https://auth.example.com/oauth/token --client-id my-client \\
      --synthetic 10000 --record-bytes 300 --concurrency 1,4,16,64 --batch-size 1,50,200

  # first, one record only: are the credentials and the URL right?
  asyncsync bench --url https://sandbox.example.com/ingest ... --synthetic 1 --dry-run

exit status:
  0  the sweep ran (even if the endpoint pushed back)
  1  --dry-run: the record was not accepted
  2  usage, configuration or unreadable input
  3  authentication failed, or the server's TLS certificate was refused (see --ca-bundle)
  4  interrupted (the cells so far are written)"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", nargs="?", metavar="SOURCE",
        help="records to send (.jsonl/.ndjson/.csv, or - for stdin), cycled; or --synthetic",
    )  # fmt: skip
    grid = parser.add_argument_group("the grid")
    grid.add_argument(
        "--synthetic", type=_positive_int, metavar="N",
        help="send N generated records (cycled) instead of SOURCE",
    )  # fmt: skip
    grid.add_argument(
        "--record-bytes", type=_positive_int, metavar="B",
        help=f"size of each --synthetic record in bytes (default {DEFAULT_RECORD_BYTES})",
    )  # fmt: skip
    grid.add_argument(
        "--concurrency", dest="grid_concurrency", default="1,4,16,64", metavar="LIST",
        help="requests in flight per cell, comma-separated (default 1,4,16,64); or auto: one "
        "cell per batch size with the adaptive limit (--max-concurrency, --initial-concurrency), "
        "reporting where it settled",
    )  # fmt: skip
    grid.add_argument(
        "--batch-size", dest="grid_batch_size", default="1,50,200", metavar="LIST",
        help="records per request per cell, comma-separated (default 1,50,200)",
    )  # fmt: skip
    length = grid.add_mutually_exclusive_group()
    length.add_argument(
        "--duration", type=_positive_float, metavar="SECONDS",
        help=f"seconds per cell (default {DEFAULT_DURATION:g})",
    )  # fmt: skip
    length.add_argument(
        "--requests", type=_positive_int, metavar="N", help="requests per cell, instead"
    )  # fmt: skip
    grid.add_argument(
        "--max-requests", type=_positive_int, default=DEFAULT_MAX_REQUESTS, metavar="N",
        help=f"requests in the whole sweep at most (default {DEFAULT_MAX_REQUESTS})",
    )  # fmt: skip
    grid.add_argument(
        "--out", type=Path, metavar="DIR",
        help="where bench.json, bench.csv and bench.png go "
        "(default ./asyncsync-bench-<timestamp>/)",
    )  # fmt: skip
    grid.add_argument(
        "--dry-run", action="store_true",
        help="only authenticate and send one batch of one record",
    )  # fmt: skip
    grid.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="a live line per cell on stderr (default on, updating in place on a terminal)",
    )  # fmt: skip
    add_upload_arguments(parser, only=BENCH_OPTIONS)


def parse_grid(flag: str, text: str, *, allow_auto: bool = False) -> list[int] | None:
    """``"1,4,16"`` → ``[1, 4, 16]`` (order kept, repeats dropped); ``"auto"`` → None."""
    raw = text.strip().lower()
    if raw == "auto" and allow_auto:
        return None
    values: list[int] = []
    for part in raw.split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            value = 0
        if value < 1 or (flag == "--concurrency" and value > MAX_CONCURRENCY):
            top = f" and <= {MAX_CONCURRENCY}" if flag == "--concurrency" else ""
            also = " (or auto)" if allow_auto else ""
            raise ConfigError(
                f"{flag}: expected a comma-separated list of integers >= 1{top}{also}, "
                f"got {text!r}",
                field=flag[2:].replace("-", "_"),
            )
        if value not in values:
            values.append(value)
    return values


def _bench_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment without the variables of upload options bench does not take (an
    ``ASYNCSYNC_CONCURRENCY`` meant for upload must not break a bench)."""
    dropped = {o.env_var for o in OPTIONS if o.name not in BENCH_OPTIONS}
    return {k: v for k, v in env.items() if k not in dropped}


def run_bench(ns: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    """``asyncsync bench`` after parsing; errors propagate (the caller maps them)."""
    env = os.environ if env is None else env
    concurrency = parse_grid("--concurrency", ns.grid_concurrency, allow_auto=True)
    batch_sizes = parse_grid("--batch-size", ns.grid_batch_size)
    assert batch_sizes is not None
    if (ns.source is None) == (ns.synthetic is None):
        raise ConfigError(
            "give either SOURCE (records to send, cycled) or --synthetic N, not both"
            if ns.source is not None
            else "give SOURCE (a .jsonl/.ndjson/.csv file, or -) or --synthetic N",
            field="source",
        )
    if ns.record_bytes is not None and ns.synthetic is None:
        raise ConfigError("--record-bytes only applies with --synthetic", field="record_bytes")
    settings = resolve(ns, _bench_env(env), require_source=False)
    with logging_to_stderr(settings.verbosity, settings.secret_values()):
        if settings.insecure:
            sys.stderr.write(
                f"{PROG}: warning: --insecure: TLS certificates are not verified; anyone on "
                "the network path can read the token and the records\n"
            )
        from ._run import run_async

        return run_async(_bench(ns, settings, concurrency, batch_sizes))


async def _load_pool(ns: argparse.Namespace) -> list[bytes]:
    from .._bench import synthetic_records

    if ns.synthetic is not None:
        return synthetic_records(ns.synthetic, ns.record_bytes or DEFAULT_RECORD_BYTES)
    from ..sources._open import open_source

    source = open_source(ns.source)  # SourceError (exit 2) for a missing or unknown file
    records: list[bytes] = []
    size = 0
    async for block in source.blocks():
        for record in block.records:
            records.append(record)
            size += len(record)
            if len(records) >= MAX_POOL_RECORDS or size >= MAX_POOL_BYTES:
                return records
    if not records:
        raise ConfigError(f"{ns.source}: no valid record to send", field="source")
    return records


@contextlib.contextmanager
def _stop_on_sigint(stop: asyncio.Event) -> Iterator[None]:
    """First Ctrl-C/SIGTERM: end the cell that runs and write what was measured; a second
    one: the default (KeyboardInterrupt)."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []

    def on_signal() -> None:
        if stop.is_set():
            for sig in installed:
                loop.remove_signal_handler(sig)
            raise KeyboardInterrupt
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


async def _bench(
    ns: argparse.Namespace,
    settings: Settings,
    concurrency: list[int] | None,
    batch_sizes: list[int],
) -> int:
    """``concurrency`` None: --concurrency auto, one cell per batch size with the adaptive
    limit (up to --max-concurrency, from --initial-concurrency)."""
    from .._bench import BenchLimits, CellSpec, RecordPool, run_cell, run_sweep
    from .._body import BodyEncoder
    from .._http import display_url
    from .._transports import open_transport
    from ._bench_report import CellProgress, print_table, write_outputs
    from ._run import open_tokens

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    # a pipe or a file gets the whole table, not 80 columns of it
    out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    pool = RecordPool(await _load_pool(ns))
    encoder = BodyEncoder(settings.body, wrap=settings.wrap, gzip=settings.gzip)
    ssl = settings.ssl_context()
    quiet = settings.verbosity < 0
    common: dict[str, Any] = {
        "url": settings.url,
        "encoder": encoder,
        "pool": pool,
        "retry": settings.retry,
        "headers": dict(settings.headers),
        "request_timeout": None,  # the transport's: --timeout
    }
    async with open_tokens(settings, store=None, ssl=ssl) as tokens:
        if tokens is not None:
            await tokens.get()  # bad credentials: AuthError (exit 3) before any record
        top = settings.max_concurrency if concurrency is None else max(concurrency)
        connections = 1 if ns.dry_run else top
        transport = open_transport(
            settings.transport, connections=connections, timeout=settings.timeout, ssl=ssl
        )
        try:
            if ns.dry_run:
                from .._bench import RequestBudget

                cell = await run_cell(
                    CellSpec(1, 1),
                    transport=transport,
                    tokens=tokens,
                    limits=BenchLimits(duration=None, requests=1, max_requests=1),
                    budget=RequestBudget(1),
                    positions=[1],
                    job_id=f"bench-dry-run-{int(time.time())}",
                    **common,
                )
                token_requests = tokens.stats.requests if tokens is not None else 0
                statuses = ", ".join(f"{k}: {v}" for k, v in cell.statuses.items()) or "none"
                lat = cell.latency_ms()["max"]
                out.print(
                    f"dry run: {token_requests} token request(s); 1 record sent to "
                    f"{display_url(settings.url)}: status {statuses}"
                    + (f" in {lat:.1f} ms" if lat is not None else "")
                    + ("; accepted" if cell.records == 1 else "; NOT accepted")
                )
                return EXIT_OK if cell.records == 1 else EXIT_FAILED

            duration = ns.duration if ns.requests is None else None
            if duration is None and ns.requests is None:
                duration = DEFAULT_DURATION
            limits = BenchLimits(
                duration=duration,
                requests=ns.requests,
                max_requests=ns.max_requests,
                drain=min(settings.timeout, 30.0),
            )
            if concurrency is None:
                grid = [
                    CellSpec(top, b, auto=True, initial=settings.initial_concurrency)
                    for b in batch_sizes
                ]
            else:
                grid = [CellSpec(c, b) for b in batch_sizes for c in concurrency]
            if ns.requests is not None and ns.requests * len(grid) > ns.max_requests:
                err.print(
                    f"{PROG}: warning: {len(grid)} cells x {ns.requests} requests is more than "
                    f"--max-requests {ns.max_requests}: the last cells will be cut or skipped",
                    markup=False,
                )
            directory = ns.out or Path(f"asyncsync-bench-{time.strftime('%Y%m%d-%H%M%S')}")
            directory.mkdir(parents=True, exist_ok=True)
            if not quiet:
                what = f"{duration:g} s" if duration is not None else f"{ns.requests} requests"
                err.print(
                    f"{PROG} bench: {len(grid)} cells of {what} against "
                    f"{display_url(settings.url)} (real records are sent; at most "
                    f"{ns.max_requests:,} requests)",
                    markup=False,
                )
            display = CellProgress(err, live=ns.progress, quiet=quiet, total=len(grid))
            stop = asyncio.Event()
            with _stop_on_sigint(stop):
                cells = await run_sweep(
                    grid,
                    transport=transport,
                    tokens=tokens,
                    limits=limits,
                    stop=stop,
                    progress=display.update,
                    on_cell=display.done,
                    **common,
                )
        finally:
            await transport.aclose()
        token_requests = tokens.stats.requests if tokens is not None else 0
    interrupted = stop.is_set()
    meta = {
        "url": display_url(settings.url),
        "token_requests": token_requests,
        "duration_per_cell_s": duration,
        "requests_per_cell": ns.requests,
        "max_requests": ns.max_requests,
        "record_bytes_avg": round(pool.bytes_per_record, 1),
        "body": settings.body,
        "gzip": settings.gzip,
        "interrupted": interrupted,
    }
    written = write_outputs(cells, directory, meta, notes=err if not quiet else None)
    print_table(out, cells)
    if not quiet:
        err.print(
            f"{PROG} bench: {token_requests} token request(s); results in "
            + ", ".join(str(p) for p in written),
            markup=False,
        )
    if interrupted:
        err.print(f"{PROG}: bench interrupted: the cells so far are written", markup=False)
        return EXIT_INTERRUPTED
    return EXIT_OK
