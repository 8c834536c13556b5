"""``asyncsync``: the command line. Thin: parse, build settings, plan, run, report, and map
errors to exit codes (:mod:`._exit`).

Commands: ``upload``, ``replay`` (a dead-letter file, sent again), ``bench`` (an endpoint
measured over a grid, :mod:`._bench`), ``sink`` (the reference server) and ``demo``. The
parts: :mod:`._settings` (flags, environment, TOML), :mod:`._plan` (every default path, the
shard layout), :mod:`._run` (the uploader, signals), :mod:`._report` (table, JSON),
:mod:`._progress`, :mod:`._processes` (``--processes N``), :mod:`._demo`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from rich.console import Console

from .. import __version__
from .._exceptions import ConfigError
from .._hooks import HookGroup, UploadHooks
from ._exit import EXIT_USAGE, PROG, exit_code, print_error, summary_exit_code
from ._logs import logging_to_stderr
from ._plan import plan_run
from ._progress import ProgressDisplay, progress_wanted
from ._report import report
from ._run import TokenCount, run_async, run_plan
from ._settings import Settings, add_upload_arguments, resolve, usage_error_message

__all__ = ["build_parser", "main", "run_upload"]

_EXIT_HELP = """\
exit status:
  0  every record delivered
  1  some records dead-lettered
  2  usage, configuration or unreadable input
  3  authentication failed, or the server's TLS certificate was refused (see --ca-bundle)
  4  interrupted or aborted (resumable)"""

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

    #: set by main() when argv asks for --log-format json: usage errors are JSON events too
    json_errors = False

    def error(self, message: str) -> NoReturn:
        text = f"{usage_error_message(message)} (see '{self.prog} --help')"
        if _Parser.json_errors:
            from ._jsonlog import write_json_event

            write_json_event(
                "ERROR", "error", text, {"error": "ConfigError", "exit_code": EXIT_USAGE}
            )
        else:
            sys.stderr.write(f"{PROG}: error: ConfigError: {text}\n")
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

    from ._bench import BENCH_EPILOG, add_bench_arguments

    bench = sub.add_parser(
        "bench",
        help="benchmark an ingest endpoint over a grid of concurrency x batch size",
        description="Send real batches to --url for every cell of a concurrency x batch size "
        "grid, with one token, and measure records/s, latency and push-back.",
        epilog=BENCH_EPILOG,
        formatter_class=fmt,
        allow_abbrev=False,
    )
    add_bench_arguments(bench)

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


# --- upload and replay --------------------------------------------------------------------


def run_upload(settings: Settings) -> int:
    """``upload`` and ``replay`` after parsing; errors propagate to :func:`main`."""
    console = Console(stderr=True, highlight=False)
    if settings.insecure:
        # on every run, even with -q: this is a security downgrade, not chatter
        warning = (
            "--insecure: TLS certificates are not verified; anyone on the network path can "
            "read the token and the records"
        )
        if settings.log_format == "json":
            from ._jsonlog import write_json_event

            write_json_event("WARNING", "insecure", warning)
        else:
            sys.stderr.write(f"{PROG}: warning: {warning}\n")
    if settings.engine == "dask":
        from ._dask import run_dask

        return run_dask(settings, console)  # tasks on a Dask cluster, one report
    if settings.processes > 1:
        from ._processes import run_processes

        return run_processes(settings, console)  # N children, one report
    return run_async(_upload(settings, console))


async def _upload(settings: Settings, console: Console) -> int:
    plan = await plan_run(settings)
    exporter = None
    if settings.metrics is not None:
        from ._metrics import MetricsExporter, parse_listen_address

        exporter = MetricsExporter(*parse_listen_address(settings.metrics)).start()

    def observe(token_requests: TokenCount) -> UploadHooks | None:
        display = None
        if progress_wanted(
            settings.progress, verbosity=settings.verbosity, log_format=settings.log_format
        ):
            display = ProgressDisplay(console, token_requests=token_requests)
        return HookGroup([display, exporter.recorder if exporter is not None else None])

    try:
        summary, error = await run_plan(plan, observe=observe)
    finally:
        if exporter is not None:
            exporter.close()
    # an interrupted or failed run still has a summary worth showing and writing
    if summary is not None:
        from .._transports import resolve_transport

        report(
            summary,
            console,
            command=settings.command,
            failed=plan.failed,
            summary_json=settings.summary_json,
            verbosity=settings.verbosity,
            log_format=settings.log_format,
            extra={"transport": resolve_transport(settings.transport)},
        )
    if error is not None:
        raise error
    assert summary is not None
    return summary_exit_code(summary)


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
    # known before parsing, so that a usage error is a JSON event too
    log_format = _argv_log_format(args, os.environ)
    _Parser.json_errors = log_format == "json"
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
        if ns.command == "bench":
            from ._bench import run_bench

            verbosity = -1 if ns.quiet else (ns.verbose or 0)
            return run_bench(ns, os.environ)
        settings = resolve(ns, os.environ, command=ns.command)
        verbosity = settings.verbosity
        log_format = settings.log_format
        with logging_to_stderr(verbosity, settings.secret_values(), log_format=log_format):
            return run_upload(settings)
    except (Exception, KeyboardInterrupt) as exc:
        print_error(exc, verbosity=verbosity, log_format=log_format)
        return exit_code(exc)
    finally:
        _Parser.json_errors = False


def _argv_log_format(args: Sequence[str], env: Mapping[str, str]) -> str:
    """``--log-format`` as given on argv (or in the environment), before parsing: the last
    one wins, as argparse has it."""
    fmt = env.get("ASYNCSYNC_LOG_FORMAT", "text").strip().lower()
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--log-format" and i + 1 < len(args):
            fmt = args[i + 1].strip().lower()
        elif arg.startswith("--log-format="):
            fmt = arg.split("=", 1)[1].strip().lower()
    return "json" if fmt == "json" else "text"


if __name__ == "__main__":  # pragma: no cover - `python -m asyncsync.cli._main`
    raise SystemExit(main())
