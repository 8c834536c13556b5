"""Scale-out runs: ``--token-store``, ``--shard K/N`` and ``--processes N``.

``--token-store file:PATH|redis://HOST:PORT/DB``: the upload's token manager shares its token
through the store (:mod:`asyncsync.auth._stores`), keyed by the token URL and the client
identity (the client id; for a JSON login, the login body with its secret fields left out, so
two users never share a key). A bad spec is a ConfigError (exit 2) before any request.

``--shard K/N`` uploads shard K (0-based) of the N that
:func:`~asyncsync.sources._shards.plan_shards` cuts the file into, with its own checkpoint
``<source>.shard-K-of-N.asyncsync`` (whose fingerprint holds the shard's byte range) and dead-
letter file ``<source>.shard-K-of-N.failed.jsonl`` (unless ``--checkpoint``/``--failed`` say
otherwise). Line numbers stay global, and so do Idempotency-Keys: they derive from positions.

With ``--db``, shard K is key range K of those
:meth:`~asyncsync.sources.sql.SqlSource.plan_key_ranges` makes (``(start, end]`` on the key,
planned once by a ``--processes`` parent for every child): positions are row ordinals within the
shard, Idempotency-Keys stay unique because each shard has its own job id, the checkpoint is
``--checkpoint`` only (``.shard-K-of-N`` added under ``--processes``) and the dead-letter file
``<failed>.shard-K-of-N.jsonl`` by default.

``--processes N`` is N ``--shard K/N`` uploads at once, in N child processes, and one report:

* **children are subprocesses** (``python -m asyncsync.cli._processes``), each given its
  :class:`~._plan.RunPlan` (a pickle, secrets included: its settings, its checkpoint and
  dead-letter file, and the shard layout the parent planned once for all) on its stdin, and
  reporting on its stdout. Not ``fork``: the
  parent may hold threads, and a forked child inherits a held token-file lock. Not
  ``multiprocessing``: its spawn re-imports the parent's ``__main__`` (the console script, or
  a program embedding :func:`asyncsync.cli.main`), and it cannot put a child in its own
  process group atomically. A fresh interpreter costs ~0.4 s of imports per child, paid in
  parallel. Secrets travel only through that private pipe, never on a command line or in the
  environment.
* **signals**: each child runs in its own process group, so a Ctrl-C at the terminal reaches
  the parent alone, and the parent forwards every SIGINT/SIGTERM it gets to every child: the
  first drains (each child checkpoints and exits 4), a second aborts, as in one process. A
  child whose parent vanished (its report pipe breaks) stops itself the same way.
* **the token** is shared through a file store by default: ``token.json`` (0600) in a private
  temporary directory (0700) removed at the end, unless ``--token-store`` names one. Across
  all children, one token request per token lifetime.
* **progress**: every child sends its counters about five times a second (one JSON line);
  the parent sums them into one :class:`~asyncsync._summary.Counters` and shows one display.
* **summary**: the children's final summaries, summed; ``duration_s`` is the wall time of the
  whole run (planning and start-up included), ``records_per_s`` recomputed from it, latency
  percentiles from the children's pooled samples, ``job_id`` the shards' job ids joined by
  commas, ``interrupted`` if any shard was.
* **exit code**: the worst of the children's, in the order 3 > 2 > 4 > 1 > 0 (authentication
  failed > usage/config/input > interrupted > some records failed > ok). A child killed by a
  signal, or one that exited 0 or 1 without sending its summary, counts as 4.
* **state**: a checkpoint per shard (the ``--shard`` names), so a re-run with the same N
  resumes every shard; each child writes its own dead-letter file, which the parent appends
  to the run's one (``--failed``, default ``<source>.failed.jsonl``) in shard order at the end,
  then deletes (a crash in the middle of that copy can duplicate entries, never lose one).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import orjson
from rich.console import Console

from .._deadletter import merge_dead_letters
from .._exceptions import AsyncSyncError
from .._hooks import HookGroup, UploadHooks
from .._paths import CHECKPOINT_SUFFIX, shard_path
from .._summary import COUNTER_FIELDS, Counters, RunSummary, merge_summaries
from .._transports import resolve_transport
from ..checkpoint._state import CheckpointStore
from ._exit import (
    EXIT_INTERRUPTED,
    exit_code,
    merge_exit_codes,
    print_error,
    summary_exit_code,
)
from ._logs import logging_to_stderr
from ._metrics import MetricsExporter, MetricsRecorder, parse_listen_address
from ._plan import RunPlan, plan_processes, state_paths
from ._progress import ProgressDisplay, progress_wanted
from ._report import report
from ._run import TokenCount, close_token_store, open_run_token_store, run_async, run_plan
from ._settings import Settings

__all__ = ["REPORT_INTERVAL", "child_main", "merge_summaries", "run_processes"]

log = logging.getLogger("asyncsync")

#: seconds between two progress reports of a child
REPORT_INTERVAL: Final = 0.2
#: seconds children get to stop after SIGTERM when the parent itself fails, before SIGKILL
KILL_GRACE: Final = 5.0


# --------------------------------------------------------------------------------------------
# the parent


@dataclass(slots=True)
class _Child:
    plan: RunPlan
    proc: asyncio.subprocess.Process | None = None
    snapshot: dict[str, Any] = dataclasses.field(default_factory=dict)
    final: dict[str, Any] | None = None
    code: int | None = None
    #: its latest metrics snapshot (``--metrics``)
    metrics: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        assert self.plan.shard is not None
        return "{}/{}".format(*self.plan.shard)


def _warn_about_single_checkpoint(settings: Settings) -> None:
    """A half-done single-process job is not resumed by a multi-process run: say so."""
    single, _ = state_paths(settings)
    if single is None or not single.exists() or not settings.resume:
        return
    with contextlib.suppress(AsyncSyncError, OSError):
        state = CheckpointStore(single).load()
        if state is not None and not state.complete:
            assert settings.source is not None
            log.warning(
                "%s holds an unfinished single-process run; --processes keeps one checkpoint "
                "per shard (%s) and does not resume it",
                single,
                shard_path(settings.source, 0, settings.processes, CHECKPOINT_SUFFIX).name.replace(
                    "shard-0-", "shard-K-"
                ),
            )


def run_processes(settings: Settings, console: Console) -> int:
    """``upload --processes N``: plan, run N children, report once; returns the exit code."""
    # the stock loop: uvloop's subprocess_exec has no process_group, and the parent only
    # relays lines (the children run uvloop when installed)
    started = time.monotonic()
    exporter = None
    if settings.metrics is not None:
        # listening before the children start: the first scrape finds it (all zeros)
        exporter = MetricsExporter(*parse_listen_address(settings.metrics), read=list).start()
    try:
        return asyncio.run(_parent(settings, console, started=started, exporter=exporter))
    finally:
        if exporter is not None:
            exporter.close()


async def _parent(
    settings: Settings,
    console: Console,
    *,
    started: float,
    exporter: MetricsExporter | None = None,
) -> int:
    """The parent of a ``--processes`` run. ``exporter`` (``--metrics``) serves the sum of
    the children's metrics while they run; the caller starts and closes it."""
    plan = await plan_processes(settings)
    if settings.db is None:
        _warn_about_single_checkpoint(settings)
    # a bad --token-store is a usage error now, before any child or request
    await close_token_store(open_run_token_store(settings))
    tmpdir: str | None = None
    spec = settings.token_store
    try:
        if spec is None and settings.auth in ("oauth2", "login"):
            tmpdir = tempfile.mkdtemp(prefix="asyncsync-tokens-")  # 0700
            spec = f"file:{os.path.join(tmpdir, 'token.json')}"
        children = [_Child(_with_token_store(p, spec)) for p in plan.children]
        if exporter is not None:  # the children record (never serve); the parent serves the sum
            metrics = f"{exporter.host}:{exporter.port}"
            for child in children:
                child.plan = _with_settings(child.plan, metrics=metrics)
            exporter.read = lambda: [c.metrics for c in children if c.metrics is not None]
        display = None
        if progress_wanted(
            settings.progress, verbosity=settings.verbosity, log_format=settings.log_format
        ):
            display = ProgressDisplay(console, description=f"upload ({len(children)} processes)")
        summary = await _supervise(children, display, plan.total_bytes, started)
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    merge_dead_letters([c.plan.failed for c in children], plan.failed)
    codes = [c.code if c.code is not None else EXIT_INTERRUPTED for c in children]
    if summary is not None:
        report(
            summary,
            console,
            command=settings.command,
            failed=plan.failed,
            summary_json=settings.summary_json,
            verbosity=settings.verbosity,
            extra={
                "shards": _shard_summaries(children),
                "transport": resolve_transport(settings.transport),
            },
            log_format=settings.log_format,
        )
    return merge_exit_codes(codes)


def _with_token_store(plan: RunPlan, spec: str | None) -> RunPlan:
    """Every child shares the run's token through one store."""
    return _with_settings(plan, token_store=spec)


def _with_settings(plan: RunPlan, **changes: Any) -> RunPlan:
    return dataclasses.replace(plan, settings=dataclasses.replace(plan.settings, **changes))


def _shard_summaries(children: list[_Child]) -> list[dict[str, Any]]:
    """Under ``shards`` in the summary JSON, each child's own: its exit code, counts and
    pipeline time (start-up excluded), for a look at one shard or at the parallel speed-up."""
    shards = []
    for child in children:
        part = child.final or child.snapshot
        entry: dict[str, Any] = {"shard": child.label, "exit_code": child.code}
        for key in ("records_read", "records_sent", "records_failed", "requests", "retries"):
            entry[key] = part.get(key, 0)
        for key in ("auth_requests", "duration_s", "job_id", "interrupted"):
            entry[key] = part.get(key)
        shards.append(entry)
    return shards


async def _supervise(
    children: list[_Child], display: UploadHooks | None, total_bytes: int | None, started: float
) -> RunSummary | None:
    """Start the children, relay signals, progress and stderr, wait; the merged summary."""
    loop = asyncio.get_running_loop()
    total = Counters()
    procs: list[asyncio.subprocess.Process] = []
    received: list[signal.Signals] = []

    def forward(sig: signal.Signals) -> None:
        received.append(sig)
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, forward, sig)
            installed.append(sig)
    try:
        for child in children:
            if received:
                break  # stopped while starting: the shards not started yet stay as they are
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "asyncsync.cli._processes",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                process_group=0,  # no terminal signal reaches it but through forward()
            )
            child.proc = proc
            procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write(_job_bytes(child.plan))
            with contextlib.suppress(ConnectionError):
                await proc.stdin.drain()
            proc.stdin.close()
        if display is not None:
            display.on_start(total, total_bytes=total_bytes)
        started_children = [c for c in children if c.proc is not None]
        await asyncio.gather(*(_watch(child, children, total) for child in started_children))
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await _reap(procs)
    parts = [c.final if c.final is not None else c.snapshot for c in children]
    if children and not any(parts):  # none got as far as reading: nothing to report
        if display is not None:
            display.on_finish(RunSummary.from_counters(total, duration_s=0.0))
        return None
    missing = any(c.final is None for c in children)
    summary = merge_summaries(
        [p for p in parts if p], duration_s=time.monotonic() - started, interrupted=missing
    )
    if display is not None:
        display.on_finish(summary)
    return summary


def _job_bytes(plan: RunPlan) -> bytes:
    # MappingProxyType does not pickle; the child rebuilds it
    settings = dataclasses.replace(plan.settings, origins=dict(plan.settings.origins))
    return pickle.dumps(dataclasses.replace(plan, settings=settings), pickle.HIGHEST_PROTOCOL)


def _read_job(data: bytes) -> RunPlan:
    plan: RunPlan = pickle.loads(data)  # from our parent, through a private pipe
    origins = MappingProxyType(dict(plan.settings.origins))
    return dataclasses.replace(plan, settings=dataclasses.replace(plan.settings, origins=origins))


async def _watch(child: _Child, children: list[_Child], total: Counters) -> None:
    proc = child.proc
    assert proc is not None and proc.stdout is not None and proc.stderr is not None
    prefix = f"[shard {child.label}] "
    as_json = child.plan.settings.log_format == "json"

    async def relay_stderr() -> None:
        assert proc.stderr is not None
        async for line in _lines(proc.stderr):
            text = line.decode("utf-8", "replace").rstrip("\n")
            # with json logs the child's line is an event: the shard becomes a field of it
            text = _json_with_shard(text, child.label) if as_json else prefix + text
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    relay = asyncio.create_task(relay_stderr())
    try:
        async for line in _lines(proc.stdout):
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # not ours (the child's stdout is its report channel only)
            if "m" in message:
                child.metrics = message["m"]
            if message.get("t") == "p":
                child.snapshot = message["c"]
                for name in COUNTER_FIELDS:
                    value = sum(int(c.snapshot.get(name) or 0) for c in children)
                    setattr(total, name, value)
            elif message.get("t") == "s":
                child.final = message["summary"]
        await relay
    finally:
        if not relay.done():
            relay.cancel()
    code = await proc.wait()
    if code < 0 or (code in (0, 1) and child.final is None):
        code = EXIT_INTERRUPTED  # killed, or gone without its summary: not a clean result
    child.code = code


def _json_with_shard(text: str, label: str) -> str:
    """A child's JSON log line with ``shard`` added; a line that is not one (a crash's last
    words) becomes a ``child_output`` event, redacted."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        from ._jsonlog import json_line

        return json_line("ERROR", "child_output", text, {"shard": label}, ts=time.time())
    data["shard"] = label
    return orjson.dumps(data).decode()


async def _lines(stream: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The lines of ``stream``, however long (``readline`` fails past the reader's limit)."""
    carry = b""
    while chunk := await stream.read(1 << 16):
        *lines, carry = (carry + chunk).split(b"\n")
        for line in lines:
            yield line
    if carry:
        yield carry


async def _reap(procs: list[asyncio.subprocess.Process]) -> None:
    """Every child has exited when this returns: SIGTERM (drain), then SIGKILL."""
    alive = [p for p in procs if p.returncode is None]
    for proc in alive:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    if alive:
        _, pending = await asyncio.wait(
            [asyncio.ensure_future(p.wait()) for p in alive], timeout=KILL_GRACE
        )
        for proc in alive:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in alive:
            await proc.wait()
        for task in pending:
            task.cancel()


# --------------------------------------------------------------------------------------------
# the child


class _Reporter(UploadHooks):
    """The child's hook: its counters to the parent every :data:`REPORT_INTERVAL` seconds,
    then its summary, one JSON line each on the report descriptor. If the parent is gone (the
    pipe breaks), the child stops itself with SIGTERM: it drains and checkpoints."""

    def __init__(
        self, fd: int, token_requests: TokenCount, metrics: MetricsRecorder | None = None
    ) -> None:
        self._fd = fd
        self._token_requests = token_requests
        self._metrics = metrics
        self._counters: Counters | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._orphaned = False

    def on_start(self, counters: Counters, *, total_bytes: int | None) -> None:
        self._counters = counters
        self._tick()

    def _tick(self) -> None:
        c = self._counters
        if c is None:
            return
        snapshot = {name: getattr(c, name) for name in COUNTER_FIELDS}
        snapshot["auth_requests"] = max(c.auth_requests, self._token_requests())
        message: dict[str, Any] = {"t": "p", "c": snapshot}
        if self._metrics is not None:
            message["m"] = self._metrics.snapshot()
        self._send(message)
        with contextlib.suppress(RuntimeError):  # no running loop: no more ticks
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(REPORT_INTERVAL, self._tick)

    def on_finish(self, summary: RunSummary) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        final = summary.to_dict()
        final["bytes_read"] = self._counters.bytes_read if self._counters is not None else 0
        final["latencies"] = (
            [round(v, 6) for v in self._counters.latencies.values] if self._counters else []
        )
        message: dict[str, Any] = {"t": "s", "summary": final}
        if self._metrics is not None:
            message["m"] = self._metrics.snapshot()  # the final numbers
        self._send(message)

    def _send(self, message: dict[str, Any]) -> None:
        if self._orphaned:
            return
        data = memoryview(orjson.dumps(message) + b"\n")
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:
            self._orphaned = True
            os.kill(os.getpid(), signal.SIGTERM)  # drain and checkpoint, exit 4


def _child_hooks(settings: Settings, report_fd: int) -> Callable[[TokenCount], UploadHooks]:
    """The child's hooks: its reports, and with ``--metrics`` a recorder whose snapshots ride
    along with them (the parent serves the sum)."""

    def observe(tokens: TokenCount) -> UploadHooks:
        if settings.metrics is None:
            return _Reporter(report_fd, tokens)
        recorder = MetricsRecorder()
        return HookGroup([_Reporter(report_fd, tokens, recorder), recorder])

    return observe


def child_main() -> int:
    """``python -m asyncsync.cli._processes``: one shard of a ``--processes`` run.

    Reads its pickled :class:`~._plan.RunPlan` from stdin, reports on stdout (JSON lines; the
    process's own stdout is moved to stderr so nothing else can write there), exits with the
    upload's exit code.
    """
    report_fd = os.dup(1)
    os.dup2(2, 1)
    plan = _read_job(sys.stdin.buffer.read())
    settings = plan.settings
    with logging_to_stderr(
        settings.verbosity, settings.secret_values(), log_format=settings.log_format
    ):
        try:
            summary, error = run_async(run_plan(plan, observe=_child_hooks(settings, report_fd)))
            if error is not None:
                raise error
        except (Exception, KeyboardInterrupt) as exc:
            print_error(
                exc,
                verbosity=settings.verbosity,
                stopped_by="a signal",
                log_format=settings.log_format,
            )
            return exit_code(exc)
    assert summary is not None
    return summary_exit_code(summary)


def _exit(code: int) -> None:
    """Exit now: every file of the upload is closed and synced by then, and the interpreter's
    own teardown (modules, heap) costs ~0.15 s for nothing the parent needs."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover - run by run_processes in a child process
    _exit(child_main())
