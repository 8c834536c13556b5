"""``asyncsync``: the command line. Thin: parse, build settings, run, report, map to exit codes.

Commands: ``upload``, ``replay`` (a dead-letter file, sent again), ``sink`` (the reference
server) and ``demo``. Exit codes, from the contract in DESIGN.md::

    0  every record delivered
    1  the run finished, some records were dead-lettered
    2  usage, configuration or unreadable input (ConfigError, SourceError, CheckpointError)
    3  authentication failed (AuthError)
    4  interrupted or aborted; resumable from the checkpoint (Interrupted, a crash)

Errors are one line on stderr, ``asyncsync: error: <TypeName>: <message>``, redacted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, TypeVar

from rich import box
from rich.console import Console
from rich.table import Table

from .. import __version__
from .._exceptions import (
    AsyncSyncError,
    AuthError,
    CheckpointError,
    ConfigError,
    Interrupted,
    SourceError,
)
from .._hooks import RetryDetails, UploadHooks
from .._redact import RedactingFilter, redact, register_secret
from .._summary import Counters, RunSummary
from ..checkpoint._checkpoint import default_checkpoint_path
from ._progress import ProgressDisplay, format_bytes
from ._settings import Settings, add_upload_arguments, resolve, usage_error_message

T = TypeVar("T")

if TYPE_CHECKING:
    from .._records import Batch
    from ..auth._providers import AuthProvider

__all__ = ["build_parser", "exit_code", "main"]

PROG = "asyncsync"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH, EXIT_INTERRUPTED = 0, 1, 2, 3, 4
_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (ConfigError, EXIT_USAGE),
    (SourceError, EXIT_USAGE),
    (CheckpointError, EXIT_USAGE),
    (AuthError, EXIT_AUTH),
    (Interrupted, EXIT_INTERRUPTED),
    (KeyboardInterrupt, EXIT_INTERRUPTED),
)

_EXIT_HELP = """\
exit status:
  0  every record delivered          3  authentication failed
  1  some records dead-lettered      4  interrupted or aborted (resumable)
  2  usage, configuration or unreadable input"""

_UPLOAD_EXAMPLES = f"""\
SOURCE is a .jsonl/.ndjson/.csv file, or - for JSON Lines on stdin. Each option can also be
set in the environment (ASYNCSYNC_<OPTION>, shown in brackets) or in a TOML file (--config;
keys are the long option names). Precedence: flags > environment > file > defaults.
Secrets never go on the command line: ASYNCSYNC_CLIENT_SECRET or --client-secret-file,
ASYNCSYNC_TOKEN or --token-file, and the variables a --login-body template names.
Records that cannot be delivered go to the dead-letter file (--failed; default
SOURCE.failed.jsonl beside a file, ./asyncsync-failed.jsonl for stdin).

examples:
  # OAuth2 client credentials; the secret comes from the environment
  export ASYNCSYNC_CLIENT_SECRET=...
  asyncsync upload export.jsonl --url https://api.example.com/ingest \\
      --token-url https://auth.example.com/oauth/token --client-id my-client

  # a JSON login (Salesforce Batch Apex style)
  export ASYNCSYNC_USERNAME=etl ASYNCSYNC_PASSWORD=...
  asyncsync upload export.csv --url https://api.example.com/ingest --auth login \\
      --token-url https://api.example.com/login \\
      --token-field session_token --expires-field session_token_expiration

  # stdin, a static bearer token, NDJSON bodies
  export ASYNCSYNC_TOKEN=...
  zcat export.jsonl.gz | asyncsync upload - --url https://api.example.com/ingest --body ndjson

  # settings from a file, summary as JSON
  asyncsync upload export.jsonl --config upload.toml --summary-json summary.json

{_EXIT_HELP}"""

_REPLAY_EXAMPLES = f"""\
Sends the records of a dead-letter file again (after the cause was fixed), with the same
options as upload. Records failing again go to a new dead-letter file,
FAILED.jsonl.replay-failed.jsonl (or --failed; never FAILED.jsonl itself); so do entries
whose record was not valid JSON, which cannot be replayed. An interrupted replay resumes
(checkpoint FAILED.jsonl.asyncsync, or --checkpoint).

examples:
  asyncsync replay export.jsonl.failed.jsonl --url https://api.example.com/ingest \\
      --token-url https://auth.example.com/oauth/token --client-id my-client

{_EXIT_HELP}"""

_DEMO_EXAMPLES = """\
Generates a sample export in a new directory, starts the reference server in this process
(tokens live 3 s; a few 5xx, connection resets, one 429 window, two records the server
rejects), uploads it with OAuth2 client credentials, and prints what the client and the
server counted. Exits 0 when the run behaved as expected.

examples:
  asyncsync demo
  asyncsync demo --records 1000000 --no-progress"""

_SINK_HELP = """\
usage: asyncsync sink [options]

Runs the reference partner server (token, login, ingest, revoke and stats endpoints, with
optional fault injection) until Ctrl-C, printing its URLs and the client id and secret to
use. The options are the server's own (below).

examples:
  asyncsync sink --port 8080
  asyncsync sink --port 8080 --token-ttl 60 --error-rate 0.05 --throttle-every 500

  # then, in another shell
  export ASYNCSYNC_CLIENT_SECRET=demo-secret
  asyncsync upload export.jsonl --url http://127.0.0.1:8080/ingest \\
      --token-url http://127.0.0.1:8080/oauth/token --client-id asyncsync-demo
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (argparse prints the usage too), exit status 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(
            f"{PROG}: error: ConfigError: {usage_error_message(message)} "
            f"(see '{self.prog} --help')\n"
        )
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog=PROG,
        description="Upload large record exports (JSONL, CSV, stdin) in batches to an\n"
        "authenticated HTTP API: one token per lifetime, nothing lost.",
        epilog="Run 'asyncsync COMMAND --help' for a command's options and examples.\n\n"
        + _EXIT_HELP,
        formatter_class=fmt,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    upload = sub.add_parser(
        "upload",
        help="upload a JSONL/CSV file or stdin",
        description="Upload the records of SOURCE to --url in batches.",
        epilog=_UPLOAD_EXAMPLES,
        formatter_class=fmt,
        allow_abbrev=False,
    )
    upload.add_argument("source", nargs="?", metavar="SOURCE", help="file path, or - for stdin")
    add_upload_arguments(upload)

    replay = sub.add_parser(
        "replay",
        help="send the records of a dead-letter file again",
        description="Send the records of a dead-letter file to --url again.",
        epilog=_REPLAY_EXAMPLES,
        formatter_class=fmt,
        allow_abbrev=False,
    )
    replay.add_argument("source", metavar="FAILED.jsonl", help="a dead-letter file")
    add_upload_arguments(replay)

    # dispatched before parsing (its options are the server's own); listed for --help
    sub.add_parser("sink", help="run the reference partner server", add_help=False)

    demo = sub.add_parser(
        "demo",
        help="a complete run against the reference server, nothing to configure",
        description="Upload a generated export to the reference server, with faults.",
        epilog=_DEMO_EXAMPLES,
        formatter_class=fmt,
        allow_abbrev=False,
    )
    demo.add_argument(
        "--records", type=_positive_int, default=100_000, metavar="N",
        help="records in the sample export (default 100000)",
    )  # fmt: skip
    demo.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="progress display (default: on when stderr is a terminal)",
    )  # fmt: skip
    demo.add_argument(
        "--dir", type=Path, default=None, metavar="DIR",
        help="where to write the export and the dead-letter file (default: a new temp dir)",
    )  # fmt: skip
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


# --- errors and exit codes -----------------------------------------------------------------


def exit_code(exc: BaseException) -> int:
    """The contract's exit code for an error that ended a run (4, aborted, for the unknown)."""
    for kind, code in _EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return EXIT_INTERRUPTED


def _print_error(exc: BaseException, *, verbosity: int = 0) -> None:
    if isinstance(exc, KeyboardInterrupt):
        message = "Interrupted: stopped by Ctrl-C"
    else:
        message = f"{type(exc).__name__}: {exc}"
    if verbosity >= 2 and not isinstance(exc, AsyncSyncError | KeyboardInterrupt):
        sys.stderr.write(redact("".join(traceback.format_exception(exc))))
    sys.stderr.write(f"{PROG}: error: {redact(message)}\n")


# --- logging -------------------------------------------------------------------------------


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is now: the progress display redirects it, so that
    log lines print above the live bar instead of tearing it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


@contextlib.contextmanager
def logging_to_stderr(verbosity: int, secrets: Iterable[str] = ()) -> Iterator[None]:
    """Route the ``asyncsync`` loggers to stderr for one command, through the redacting
    filter; -q: errors only, default: warnings, -v: info (each retry and refresh), -vv: debug.
    Restores the logger on exit, so that embedding ``main()`` leaves no trace."""
    for secret in secrets:
        register_secret(secret)
    logger = logging.getLogger("asyncsync")
    handler = _StderrHandler()
    handler.addFilter(RedactingFilter())
    if verbosity >= 1:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    else:
        handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


# --- building the run from the settings ----------------------------------------------------


def build_auth(settings: Settings) -> AuthProvider | None:
    """The auth provider ``settings.auth`` names, with the secrets revealed only here."""
    from ..auth._providers import JsonLogin, OAuth2ClientCredentials, StaticToken

    if settings.auth == "none":
        return None
    if settings.auth == "bearer":
        assert settings.token is not None  # resolve() checked
        return StaticToken(settings.token.reveal())
    assert settings.token_url is not None  # resolve() checked
    if settings.auth == "oauth2":
        assert settings.client_id is not None
        assert settings.client_secret is not None
        return OAuth2ClientCredentials(
            settings.token_url,
            settings.client_id,
            settings.client_secret.reveal(),
            scope=settings.scope,
            auth_method=settings.client_auth,
            revoke_url=settings.revoke_url,
        )
    return JsonLogin(
        settings.token_url,
        body_template=settings.login_body,
        token_field=settings.token_field,
        expires_field=settings.expires_field,
        revoke_url=settings.revoke_url,
    )


class RunHooks(UploadHooks):
    """Forwards to the display (if any) and keeps the summary, which the uploader hands to
    ``on_finish`` even when the run ends by an error or an interruption."""

    def __init__(self, display: UploadHooks | None = None) -> None:
        self.display = display
        self.summary: RunSummary | None = None
        #: the live count of token requests, once the upload has a token manager
        self.token_requests: Callable[[], int] | None = None

    def on_start(self, counters: Counters, *, total_bytes: int | None) -> None:
        if self.display is not None:
            self.display.on_start(counters, total_bytes=total_bytes)

    def on_retry(self, details: RetryDetails) -> None:
        if self.display is not None:
            self.display.on_retry(details)

    def on_batch_done(self, batch: Batch, *, delivered: bool, status: int | None) -> None:
        if self.display is not None:
            self.display.on_batch_done(batch, delivered=delivered, status=status)

    def on_finish(self, summary: RunSummary) -> None:
        self.summary = summary
        if self.display is not None:
            self.display.on_finish(summary)


def progress_wanted(settings: Settings, stream: TextIO | None = None) -> bool:
    """--progress forces it, --no-progress and -q turn it off, else only on a terminal."""
    if settings.verbosity < 0:
        return False
    if settings.progress is not None:
        return settings.progress
    stream = sys.stderr if stream is None else stream
    return stream.isatty()


def writable_default(path: Path | None) -> Path | None:
    """A default state file (checkpoint, dead letters) beside the source, or in the working
    directory when the source's directory cannot be written (exports on a read-only mount)."""
    if path is None or os.access(path.parent, os.W_OK):
        return path
    fallback = Path.cwd() / path.name
    logging.getLogger("asyncsync").warning(
        "%s is not writable: writing %s instead", path.parent, fallback
    )
    return fallback


async def upload_with(settings: Settings, hooks: RunHooks, *, console: Console) -> RunSummary:
    """One upload as ``settings`` say, reporting to ``hooks`` (and a progress display)."""
    unsupported = settings.unsupported()
    if unsupported:
        raise ConfigError(
            f"{', '.join(unsupported)}: not supported yet (see the scale-out issue)",
            field=unsupported[0].lstrip("-").replace("-", "_"),
        )
    source: Any = settings.source
    if settings.command == "replay":
        from ._replay import DeadLetterSource, replay_settings

        settings = replay_settings(settings)  # a dead-letter file of its own
        source = DeadLetterSource(settings.source or "")  # SourceError before any request
    from .._uploader import Uploader

    up: Uploader | None = None

    def token_requests() -> int:
        tokens = up.tokens if up is not None else None
        return tokens.stats.requests if tokens is not None else 0

    hooks.token_requests = token_requests
    if hooks.display is None and progress_wanted(settings):
        hooks.display = ProgressDisplay(console, token_requests=token_requests)
    if settings.db is not None:
        from ..sources._sql import open_sql_source

        assert settings.key is not None  # checked by resolve()
        sql = open_sql_source(
            settings.db, query=settings.query, table=settings.table, key=settings.key
        )
        await sql.check()  # a bad URL, table, query or key: SourceError (exit 2) before sending
        source = sql
    from ._processes import close_token_store, open_run_token_store, shard_job, sql_shard_job

    # --shard K/N: the shard's byte range (or key range), checkpoint and dead-letter file;
    # --token-store: the shared store (a bad one is a ConfigError here, before any request)
    shard = await sql_shard_job(settings, sql) if settings.db is not None else shard_job(settings)
    store = open_run_token_store(settings)
    failed: Path | None = shard.failed if shard is not None else settings.failed
    # files checkpoint beside themselves unless told otherwise; stdin only when told
    checkpoint = (
        shard.checkpoint
        if shard is not None
        else settings.checkpoint
        if settings.checkpoint is not None or settings.source is None
        else default_checkpoint_path(settings.source)
    )
    if settings.origins.get("failed") == "auto":
        failed = writable_default(failed)
    if settings.checkpoint is None:
        checkpoint = writable_default(checkpoint)
    up = Uploader(
        settings.url,
        auth=build_auth(settings),
        concurrency=settings.concurrency,
        queue_size=settings.queue_size,
        limits=settings.limits,
        retry=settings.retry,
        body=settings.body,
        wrap=settings.wrap,
        gzip=settings.gzip,
        headers=dict(settings.headers),
        timeout=settings.timeout,
        rate=settings.rate,
        failed=failed,
        checkpoint=checkpoint,
        resume=settings.resume,
        hooks=hooks,
        ssl=settings.ssl_context(),
        token_skew=settings.token_skew,
        token_store=store,
        # --revoke-url: revoke once at the end (RFC 7009), unless other processes share it
        revoke_on_close=settings.revoke_url is not None and store is None,
        # the first SIGINT/SIGTERM drains and raises Interrupted (exit 4), the second aborts
        install_signal_handlers=True,
    )
    try:
        async with up:
            return await up.upload(shard.source if shard is not None else source)
    finally:
        await close_token_store(store)


# --- reporting -----------------------------------------------------------------------------


def summary_rows(summary: RunSummary, *, failed: Path | None = None) -> list[tuple[str, str]]:
    """The human summary, as (label, value) rows."""
    retries = f"{summary.retries:,}"
    if summary.retries_by_status:
        by = sorted(summary.retries_by_status.items(), key=lambda kv: -kv[1])
        retries += " (" + ", ".join(f"{k}: {v:,}" for k, v in by) + ")"
    rows = [
        ("records read", f"{summary.records_read:,}"),
        ("records delivered", f"{summary.records_sent:,}"),
        ("records dead-lettered", f"{summary.records_failed:,}"),
        ("batches", f"{summary.batches:,}"),
        ("requests", f"{summary.requests:,}"),
        ("retries", retries),
        ("token requests", f"{summary.auth_requests:,}"),
        ("duration", f"{summary.duration_s:,.2f} s"),
        (
            "throughput",
            f"{summary.records_per_s:,.0f} records/s"
            + (
                f", {format_bytes(summary.bytes_sent / summary.duration_s)}/s"
                if summary.duration_s > 0
                else ""
            ),
        ),
    ]
    if summary.latency_p50_ms is not None:
        rows.append(
            (
                "latency p50/p95/p99",
                f"{summary.latency_p50_ms:g} / {summary.latency_p95_ms:g} / "
                f"{summary.latency_p99_ms:g} ms",
            )
        )
    if summary.records_failed and failed is not None:
        rows.append(("dead-letter file", str(failed)))
    if summary.interrupted:
        rows.append(("status", "interrupted"))
    return rows


def print_table(console: Console, title: str, rows: Sequence[tuple[str, str]]) -> None:
    """A small two-column table: rich on a terminal, plain aligned text otherwise."""
    if console.is_terminal:
        table = Table(title=title, box=box.SIMPLE, show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column(justify="right")
        for label, value in rows:
            table.add_row(label, value)
        console.print(table)
        return
    width = max(len(label) for label, _ in rows)
    lines = [title] + [f"  {label:<{width}}  {value}" for label, value in rows]
    console.file.write("\n".join(lines) + "\n")
    console.file.flush()


def write_summary_json(path: Path, summary: RunSummary) -> None:
    """Write atomically: a reader never sees half a summary."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(summary.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(
            f"--summary-json: cannot write {path}: {exc.strerror}", field="summary_json"
        ) from None


def report(settings: Settings, summary: RunSummary, console: Console) -> None:
    if settings.summary_json is not None:
        write_summary_json(settings.summary_json, summary)
    if settings.verbosity >= 0:
        print_table(
            console, f"{PROG} {settings.command}", summary_rows(summary, failed=settings.failed)
        )


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop when it is installed (the ``fast`` extra), else on asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def run_upload(settings: Settings) -> int:
    """``upload`` and ``replay`` after parsing; errors propagate to :func:`main`."""
    console = Console(stderr=True, highlight=False)
    if settings.command == "replay":
        from ._replay import replay_settings

        settings = replay_settings(settings)  # the summary names its dead-letter file
    if settings.insecure:
        # on every run, even with -q: this is a security downgrade, not chatter
        sys.stderr.write(
            f"{PROG}: warning: --insecure: TLS certificates are not verified; anyone on the "
            "network path can read the token and the records\n"
        )
    if settings.processes > 1:
        from ._processes import run_processes

        return run_processes(settings, console)  # N children, one report
    hooks = RunHooks()
    try:
        summary = run_async(upload_with(settings, hooks, console=console))
    finally:
        # an interrupted or failed run still has a summary worth showing and writing
        if hooks.summary is not None:
            report(settings, hooks.summary, console)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if summary.records_failed else EXIT_OK


# --- commands ------------------------------------------------------------------------------


def _run_sink(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        sys.stdout.write(_SINK_HELP + "\n")
        argv = ["--help"]
    try:
        from ..sink import main as sink_main
    except ImportError as exc:  # pragma: no cover - the sink ships with the package
        raise ConfigError(f"the reference sink is not available: {exc}") from None
    try:
        return sink_main(argv, prog=f"{PROG} sink")
    except SystemExit as exc:
        return _code(exc)


def _code(exc: SystemExit) -> int:
    return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``asyncsync`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbosity = 0
    try:
        if args and args[0] == "sink":
            return _run_sink(args[1:])
        parser = build_parser()
        try:
            ns = parser.parse_args(args)
        except SystemExit as exc:
            return _code(exc)
        if ns.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        if ns.command == "demo":
            from ._demo import run_demo

            return run_demo(records=ns.records, progress=ns.progress, directory=ns.dir)
        settings = resolve(ns, os.environ, command=ns.command)
        verbosity = settings.verbosity
        with logging_to_stderr(verbosity, settings.secret_values()):
            return run_upload(settings)
    except (Exception, KeyboardInterrupt) as exc:
        _print_error(exc, verbosity=verbosity)
        return exit_code(exc)


if __name__ == "__main__":  # pragma: no cover - `python -m asyncsync.cli._main`
    raise SystemExit(main())
