"""Scale-out runs: ``--token-store``, ``--shard K/N`` and ``--processes N``.

``--token-store file:PATH|redis://HOST:PORT/DB``: the upload's token manager shares its token
through the store (:mod:`asyncsync._stores`), keyed by the token URL and the client identity
(the client id; for a JSON login, the login body with its secret fields left out, so two users
never share a key). A bad spec is a ConfigError (exit 2) before any request.

``--shard K/N`` uploads shard K (0-based) of the N that :func:`~asyncsync._shards.plan_shards`
cuts the file into, with its own checkpoint ``<source>.shard-K-of-N.asyncsync`` (whose
fingerprint holds the shard's byte range) and dead-letter file
``<source>.shard-K-of-N.failed.jsonl`` (unless ``--checkpoint``/``--failed`` say otherwise).
Line numbers stay global, and so do Idempotency-Keys: they derive from positions.

With ``--db``, shard K is key range K of those :meth:`~asyncsync._sql.SqlSource.plan_key_ranges`
makes (``(start, end]`` on the key, planned once by a ``--processes`` parent for every child):
positions are row ordinals within the shard, Idempotency-Keys stay unique because each shard has
its own job id, the checkpoint is ``--checkpoint`` only (``.shard-K-of-N`` added under
``--processes``) and the dead-letter file ``<failed>.shard-K-of-N.jsonl`` by default.

``--processes N`` is N ``--shard K/N`` uploads at once, in N child processes, and one report:

* **children are subprocesses** (``python -m asyncsync._multiproc``), each given its settings
  (a pickle, secrets included) on its stdin and reporting on its stdout. Not ``fork``: the
  parent may hold threads, and a forked child inherits a held token-file lock. Not
  ``multiprocessing``: its spawn re-imports the parent's ``__main__`` (the console script, or
  a program embedding :func:`asyncsync._cli.main`), and it cannot put a child in its own
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
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import orjson

from ._checkpoint import CHECKPOINT_SUFFIX, CheckpointStore, default_checkpoint_path
from ._exceptions import AsyncSyncError, ConfigError
from ._hooks import UploadHooks
from ._redact import redact
from ._shards import Shard, open_shard, plan_shards, shard_path, source_kind
from ._summary import Counters, LatencySample, RunSummary

if TYPE_CHECKING:
    from rich.console import Console

    from ._settings import Settings
    from ._sources import Source
    from ._sql import SqlSource
    from ._token import TokenStore

__all__ = [
    "EXIT_ORDER",
    "ShardJob",
    "close_token_store",
    "merge_exit_codes",
    "merge_summaries",
    "open_run_token_store",
    "run_processes",
    "shard_job",
]

log = logging.getLogger("asyncsync")

#: seconds between two progress reports of a child
REPORT_INTERVAL: Final = 0.2
#: worst first: authentication failed, usage/config/input, interrupted, some failed, ok
EXIT_ORDER: Final = (3, 2, 4, 1, 0)
EXIT_INTERRUPTED: Final = 4
#: seconds children get to stop after SIGTERM when the parent itself fails, before SIGKILL
KILL_GRACE: Final = 5.0
_TEMPLATE_VAR: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FAILED_SUFFIX: Final = ".failed.jsonl"
_COUNTER_FIELDS: Final = (
    "records_read",
    "records_sent",
    "records_failed",
    "bytes_read",
    "bytes_sent",
    "batches",
    "requests",
    "retries",
    "split_requests",
    "auth_requests",
    "in_flight",
)


# --------------------------------------------------------------------------------------------
# --token-store


def client_identity(settings: Settings, env: Mapping[str, str] | None = None) -> str | None:
    """Who the token belongs to, for the store key: the OAuth2 client id; for a JSON login,
    the login body template with its placeholders expanded except those of secret fields
    (the user name and any other non-secret field: two users never share a key, and the
    key, a hash, never depends on a password)."""
    if settings.auth != "login":
        return settings.client_id
    env = os.environ if env is None else env
    secrets = {s.reveal() for s in settings.login_secrets}

    def expand(m: re.Match[str]) -> str:
        value = env.get(m.group(1), "")
        return m.group(0) if value in secrets else value

    return "login:" + _TEMPLATE_VAR.sub(expand, settings.login_body)


def open_run_token_store(settings: Settings) -> TokenStore | None:
    """The store ``--token-store`` names, for this run's credentials; None without one.

    ConfigError for a bad spec or a group-readable token file: raised before any request.
    With ``--auth none`` or ``bearer`` no token is fetched: the spec is checked, then ignored
    with a warning.
    """
    spec = settings.token_store
    if spec is None:
        return None
    from ._stores import open_token_store
    from ._token import DEFAULT_FETCH_TIMEOUT

    if settings.auth not in ("oauth2", "login") or settings.token_url is None:
        open_token_store(spec, endpoint="http://unused.invalid/", client_id=None)
        log.warning("--token-store is ignored with --auth %s: no token is fetched", settings.auth)
        return None
    return open_token_store(
        spec,
        endpoint=settings.token_url,
        client_id=client_identity(settings),
        scope=settings.scope,
        fetch_timeout=DEFAULT_FETCH_TIMEOUT,
    )


async def close_token_store(store: TokenStore | None) -> None:
    aclose = getattr(store, "aclose", None)
    if aclose is not None:
        await aclose()


# --------------------------------------------------------------------------------------------
# --shard K/N


@dataclass(frozen=True, slots=True)
class ShardJob:
    """One shard's upload: the source reading its byte range, its checkpoint and failures."""

    shard: Shard
    source: Source
    checkpoint: Path | None
    failed: Path


def _file_source(settings: Settings, what: str) -> str:
    field = "processes" if what.startswith("--processes") else "shard"
    if settings.command != "upload":
        raise ConfigError(f"{what} applies to upload only, not {settings.command}", field=field)
    source = settings.source
    if source is None or source == "-":
        raise ConfigError(
            f"{what} needs a file source (.jsonl, .ndjson or .csv) or --db: stdin cannot be split",
            field=field,
        )
    return source


#: plans made or received in this process, by file (path, size, mtime) and N: a child of
#: ``--processes`` gets its parent's, so every shard of a run uses one plan and no child scans
#: the file again
_plans: dict[tuple[str, int, int, int], list[Shard]] = {}


def _plan_key(source: str, n: int) -> tuple[str, int, int, int] | None:
    try:
        st = os.stat(source)
    except OSError:
        return None  # plan_shards says why
    return (os.path.abspath(source), st.st_size, st.st_mtime_ns, n)


def _plan(source: str, n: int, kind: str) -> list[Shard]:
    key = _plan_key(source, n)
    plan = _plans.get(key) if key is not None else None
    if plan is None:
        plan = plan_shards(source, n, kind)
        if key is not None:
            _plans.clear()  # one file at a time: no growth in a long-lived process
            _plans[key] = plan
    return plan


#: key ranges of --db sources, by (database, query, table, key, N): a child of --processes gets
#: its parent's, so every shard of a run uses one plan
_sql_plans: dict[tuple[Any, ...], list[tuple[Any, Any]]] = {}


def _sql_plan_key(settings: Settings, n: int) -> tuple[Any, ...]:
    return (settings.db, settings.query, settings.table, settings.key, n)


async def _sql_ranges(settings: Settings, sql: SqlSource, n: int) -> list[tuple[Any, Any]]:
    key = _sql_plan_key(settings, n)
    ranges = _sql_plans.get(key)
    if ranges is None:
        ranges = await sql.plan_key_ranges(n)
        _sql_plans.clear()
        _sql_plans[key] = ranges
    return ranges


def _check_scale_out(settings: Settings, what: str) -> None:
    field = "processes" if what.startswith("--processes") else "shard"
    if settings.command != "upload":
        raise ConfigError(f"{what} applies to upload only, not {settings.command}", field=field)
    if settings.shard is not None and settings.processes > 1:
        raise ConfigError(
            "--shard K/N and --processes exclude each other (--processes N runs every "
            "--shard K/N itself)",
            field=field,
        )


async def sql_shard_job(settings: Settings, sql: SqlSource) -> ShardJob | None:
    """``--shard K/N --db ...``: the rows of key range K of the N that
    :meth:`~asyncsync._sql.SqlSource.plan_key_ranges` makes (none when there are fewer
    ranges than N). Positions count from 1 in each shard; the checkpoint is ``--checkpoint``
    only (none by default), the dead-letter file ``<failed>.shard-K-of-N`` by default."""
    if settings.shard is None:
        return None
    k, n = settings.shard
    _check_scale_out(settings, "--shard K/N")
    ranges = await _sql_ranges(settings, sql, n)
    source: Any
    if k < len(ranges):
        start, end = ranges[k]
        log.info("shard %d/%d of %s: keys after %r up to %r", k, n, sql.name, start, end)
        source = sql.with_range(start, end)
    else:
        from ._sources import open_source

        log.info("shard %d/%d of %s: no rows (%d key ranges)", k, n, sql.name, len(ranges))
        source = open_source([])
    failed = settings.failed
    if settings.origins.get("failed") == "auto":
        failed = _with_shard(settings.failed, k, n)
    return ShardJob(Shard(k, 0, 0, 1, n), source, settings.checkpoint, failed)


def shard_job(settings: Settings) -> ShardJob | None:
    """The shard ``--shard K/N`` asks for (None without it): planned, opened, and given its
    default checkpoint and dead-letter paths. SourceError/ConfigError before any request."""
    if settings.shard is None:
        return None
    k, n = settings.shard
    if settings.processes > 1:
        raise ConfigError(
            "--shard K/N and --processes exclude each other (--processes N runs every "
            "--shard K/N itself)",
            field="shard",
        )
    source = _file_source(settings, "--shard K/N")
    kind = source_kind(source)
    shard = _plan(source, n, kind)[k]
    log.info(
        "shard %d/%d of %s: bytes %d-%d, from line %d",
        k,
        n,
        source,
        shard.start,
        shard.stop,
        shard.first_line,
    )
    checkpoint = settings.checkpoint or shard_path(source, k, n, CHECKPOINT_SUFFIX)
    failed = settings.failed
    if settings.origins.get("failed") == "auto":
        failed = shard_path(source, k, n, _FAILED_SUFFIX)
    return ShardJob(shard, open_shard(source, shard, kind), checkpoint, failed)


# --------------------------------------------------------------------------------------------
# merging


def merge_exit_codes(codes: list[int]) -> int:
    """The worst exit code by :data:`EXIT_ORDER`; an unknown code counts as 4 (aborted)."""
    known = [c if c in EXIT_ORDER else EXIT_INTERRUPTED for c in codes]
    for code in EXIT_ORDER:
        if code in known:
            return code
    return 0


def merge_summaries(
    parts: list[Mapping[str, Any]],
    *,
    duration_s: float,
    interrupted: bool = False,
) -> RunSummary:
    """One summary from the children's (their ``to_dict()`` plus ``latencies``): counters
    summed, the whole run's wall time, records/s recomputed, percentiles from pooled samples."""
    total = Counters()
    pooled: list[float] = []
    jobs = []
    for part in parts:
        for name in _COUNTER_FIELDS:
            if name != "in_flight":
                setattr(total, name, getattr(total, name) + int(part.get(name) or 0))
        total.retries_by_status.update(part.get("retries_by_status") or {})
        pooled.extend(part.get("latencies") or ())
        interrupted = interrupted or bool(part.get("interrupted"))
        if part.get("job_id"):
            jobs.append(str(part["job_id"]))
    sample = LatencySample(size=max(1, len(pooled)))
    sample.values = pooled
    sample.count = len(pooled)
    total.latencies = sample
    return RunSummary.from_counters(
        total,
        duration_s=duration_s,
        job_id=",".join(jobs) or None,
        interrupted=interrupted,
    )


# --------------------------------------------------------------------------------------------
# the parent


def _with_shard(path: Path, k: int, n: int) -> Path:
    """``dir/name.shard-K-of-N.ext`` for a path the user named (``--checkpoint``, ``--failed``)."""
    return path.with_name(f"{path.stem}.shard-{k}-of-{n}{path.suffix}")


@dataclass(slots=True)
class _Child:
    shard: Shard
    settings: Settings
    failed: Path
    proc: asyncio.subprocess.Process | None = None
    snapshot: dict[str, Any] = dataclasses.field(default_factory=dict)
    final: dict[str, Any] | None = None
    code: int | None = None

    @property
    def label(self) -> str:
        return self.shard.label


async def _plan_sql(settings: Settings, n: int) -> list[tuple[Any, Any]]:
    """The key ranges of a ``--processes N --db`` run, planned once here for every child."""
    from ._sql import open_sql_source

    assert settings.db is not None and settings.key is not None  # checked by resolve()
    sql = open_sql_source(settings.db, query=settings.query, table=settings.table, key=settings.key)
    await sql.check()
    return await _sql_ranges(settings, sql, n)


def _child_settings(
    settings: Settings, shard: Shard, store: str | None, source: str | None
) -> tuple[Settings, Path]:
    k, n = shard.index, shard.count
    failed = (
        shard_path(source, k, n, _FAILED_SUFFIX)
        if settings.origins.get("failed") == "auto" and source is not None
        else _with_shard(settings.failed, k, n)
    )
    origins = dict(settings.origins)
    origins["failed"] = "flag"
    child = dataclasses.replace(
        settings,
        shard=(k, n),
        processes=1,
        progress=False,
        summary_json=None,
        token_store=store,
        checkpoint=(
            _with_shard(settings.checkpoint, k, n) if settings.checkpoint is not None else None
        ),
        failed=failed,
        origins=origins,
    )
    return child, failed


def _warn_about_single_checkpoint(source: str, settings: Settings) -> None:
    """A half-done single-process job is not resumed by a multi-process run: say so."""
    path = settings.checkpoint or default_checkpoint_path(source)
    if path is None or not path.exists() or not settings.resume:
        return
    with contextlib.suppress(AsyncSyncError, OSError):
        state = CheckpointStore(path).load()
        if state is not None and not state.complete:
            log.warning(
                "%s holds an unfinished single-process run; --processes keeps one checkpoint "
                "per shard (%s) and does not resume it",
                path,
                shard_path(source, 0, settings.processes, CHECKPOINT_SUFFIX).name.replace(
                    "shard-0-", "shard-K-"
                ),
            )


def run_processes(settings: Settings, console: Console) -> int:
    """``upload --processes N``: plan, run N children, report once; returns the exit code."""
    from ._cli import progress_wanted, report

    started = time.monotonic()
    n = settings.processes
    if settings.shard is not None:
        raise ConfigError(
            "--shard K/N and --processes exclude each other (--processes N runs every "
            "--shard K/N itself)",
            field="processes",
        )
    plan: list[Any]
    if settings.db is not None:
        _check_scale_out(settings, f"--processes {n}")
        plan = asyncio.run(_plan_sql(settings, n))
        source = None
    else:
        source = _file_source(settings, f"--processes {n}")
        plan = _plan(source, n, source_kind(source))
    # a bad --token-store is a usage error now, before any child or request
    store = open_run_token_store(settings)
    tmpdir: str | None = None
    spec = settings.token_store
    try:
        if store is None and settings.auth in ("oauth2", "login"):
            tmpdir = tempfile.mkdtemp(prefix="asyncsync-tokens-")  # 0700
            spec = f"file:{os.path.join(tmpdir, 'token.json')}"
        children = []
        if source is None:  # --db: one child per key range
            for k in range(len(plan)):
                shard = Shard(k, 0, 0, 1, n)
                child, failed = _child_settings(settings, shard, spec, source)
                children.append(_Child(shard, child, failed))
        else:
            _warn_about_single_checkpoint(source, settings)
            for shard in plan:
                if shard.size == 0:
                    continue  # more shards than records: nothing to do, no process
                child, failed = _child_settings(settings, shard, spec, source)
                children.append(_Child(shard, child, failed))
        display = None
        if progress_wanted(settings):
            from ._progress import ProgressDisplay

            display = ProgressDisplay(console, description=f"upload ({len(children)} processes)")
        # the stock loop: uvloop's subprocess_exec has no process_group, and the parent only
        # relays lines (the children run uvloop when installed)
        summary = asyncio.run(_supervise(children, plan, display, started))
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    _merge_dead_letters([c.failed for c in children], settings.failed)
    codes = [c.code if c.code is not None else EXIT_INTERRUPTED for c in children]
    if summary is not None:
        if settings.summary_json is not None:
            _write_json(settings.summary_json, _summary_json(summary, children))
        report(dataclasses.replace(settings, summary_json=None), summary, console)
    return merge_exit_codes(codes)


def _summary_json(summary: RunSummary, children: list[_Child]) -> dict[str, Any]:
    """The merged summary, and under ``shards`` each child's own: its exit code, counts and
    pipeline time (start-up excluded), for a look at one shard or at the parallel speed-up."""
    data = summary.to_dict()
    shards = []
    for child in children:
        part = child.final or child.snapshot
        entry: dict[str, Any] = {"shard": child.label, "exit_code": child.code}
        for key in ("records_read", "records_sent", "records_failed", "requests", "retries"):
            entry[key] = part.get(key, 0)
        for key in ("auth_requests", "duration_s", "job_id", "interrupted"):
            entry[key] = part.get(key)
        shards.append(entry)
    data["shards"] = shards
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically, as the single-process summary is written."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(
            f"--summary-json: cannot write {path}: {exc.strerror}", field="summary_json"
        ) from None


async def _supervise(
    children: list[_Child], plan: list[Any], display: UploadHooks | None, started: float
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
                "asyncsync._multiproc",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                process_group=0,  # no terminal signal reaches it but through forward()
            )
            child.proc = proc
            procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write(_job_bytes(child.settings, plan))
            with contextlib.suppress(ConnectionError):
                await proc.stdin.drain()
            proc.stdin.close()
        if display is not None:
            display.on_start(total, total_bytes=sum(c.shard.size for c in children) or None)
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


def _job_bytes(settings: Settings, plan: list[Any]) -> bytes:
    # MappingProxyType does not pickle; the child rebuilds it
    job = (dataclasses.replace(settings, origins=dict(settings.origins)), plan)
    return pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)


async def _watch(child: _Child, children: list[_Child], total: Counters) -> None:
    proc = child.proc
    assert proc is not None and proc.stdout is not None and proc.stderr is not None
    prefix = f"[shard {child.label}] "

    async def relay_stderr() -> None:
        assert proc.stderr is not None
        async for line in _lines(proc.stderr):
            sys.stderr.write(prefix + line.decode("utf-8", "replace").rstrip("\n") + "\n")
            sys.stderr.flush()

    relay = asyncio.create_task(relay_stderr())
    try:
        async for line in _lines(proc.stdout):
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # not ours (the child's stdout is its report channel only)
            if message.get("t") == "p":
                child.snapshot = message["c"]
                for name in _COUNTER_FIELDS:
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


def _merge_dead_letters(parts: list[Path], target: Path) -> None:
    """Append each child's dead-letter file to ``target``, in shard order, then delete it."""
    existing = [p for p in parts if p != target and p.exists()]
    if not existing:
        return
    try:
        with open(target, "ab") as out:
            for part in existing:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        log.warning(
            "could not gather the shards' dead-letter files into %s (%s); they are kept: %s",
            target,
            exc.strerror or exc,
            ", ".join(str(p) for p in existing),
        )
        return
    for part in existing:
        with contextlib.suppress(OSError):
            part.unlink()


# --------------------------------------------------------------------------------------------
# the child


class _Reporter(UploadHooks):
    """The child's hook: its counters to the parent every :data:`REPORT_INTERVAL` seconds,
    then its summary, one JSON line each on the report descriptor. If the parent is gone (the
    pipe breaks), the child stops itself with SIGTERM: it drains and checkpoints."""

    def __init__(self, fd: int, token_requests: Callable[[], Callable[[], int] | None]) -> None:
        self._fd = fd
        self._token_requests = token_requests
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
        snapshot = {name: getattr(c, name) for name in _COUNTER_FIELDS}
        live = self._token_requests()
        if live is not None:
            snapshot["auth_requests"] = max(c.auth_requests, live())
        self._send({"t": "p", "c": snapshot})
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
        self._send({"t": "s", "summary": final})

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


def _child_error(exc: BaseException, verbosity: int) -> None:
    import traceback

    if isinstance(exc, KeyboardInterrupt):
        message = "Interrupted: stopped by a signal"
    else:
        message = f"{type(exc).__name__}: {exc}"
    if verbosity >= 2 and not isinstance(exc, AsyncSyncError | KeyboardInterrupt):
        sys.stderr.write(redact("".join(traceback.format_exception(exc))))
    sys.stderr.write(f"asyncsync: error: {redact(message)}\n")


def child_main() -> int:
    """``python -m asyncsync._multiproc``: one shard of a ``--processes`` run.

    Reads its pickled :class:`Settings` and the run's shard plan from stdin, reports on stdout
    (JSON lines; the process's own stdout is moved to stderr so nothing else can write there),
    exits with the upload's exit code.
    """
    report_fd = os.dup(1)
    os.dup2(2, 1)
    job: tuple[Settings, list[Any]] = pickle.loads(sys.stdin.buffer.read())  # from our parent
    settings, plan = job
    settings = dataclasses.replace(settings, origins=MappingProxyType(dict(settings.origins)))
    if settings.db is not None and settings.shard is not None:
        _sql_plans[_sql_plan_key(settings, settings.shard[1])] = plan
    key = _plan_key(settings.source, len(plan)) if settings.source and plan else None
    if key is not None:
        _plans[key] = plan
    from rich.console import Console

    from ._cli import RunHooks, exit_code, logging_to_stderr, run_async, upload_with

    hooks = RunHooks()
    hooks.display = _Reporter(report_fd, lambda: hooks.token_requests)
    console = Console(stderr=True, highlight=False)
    with logging_to_stderr(settings.verbosity, settings.secret_values()):
        try:
            summary = run_async(upload_with(settings, hooks, console=console))
        except (Exception, KeyboardInterrupt) as exc:
            _child_error(exc, settings.verbosity)
            return exit_code(exc)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return 1 if summary.records_failed else 0


def _exit(code: int) -> None:
    """Exit now: every file of the upload is closed and synced by then, and the interpreter's
    own teardown (modules, heap) costs ~0.15 s for nothing the parent needs."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover - run by run_processes in a child process
    _exit(child_main())
