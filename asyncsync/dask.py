"""Uploads on a Dask cluster: :func:`upload_dask` and :func:`upload_dask_sync` (the ``dask`` extra).

::

    from asyncsync.dask import FileShards, upload_dask_sync

    summary = upload_dask_sync(
        FileShards("export.jsonl", 8),        # or a dask.bag / dask.dataframe of records
        "https://api.example.com/ingest",
        auth=OAuth2ClientCredentials(token_url, client_id, secret),
        workers=4,                            # a local cluster; or client=..., scheduler=...
        state_dir="export.dask",
    )

What runs where:

* **the data** is cut into parts, one Dask task each: the partitions of a ``dask.bag`` (dicts,
  or raw JSON bytes/str) or of a ``dask.dataframe`` (each row a JSON object, dates in ISO
  8601); the byte-range shards of a JSON Lines/CSV file (:class:`FileShards`, planned once
  by the client with :func:`~asyncsync.sources._shards.plan_shards`); or the key ranges of a
  SQL query (:class:`SqlRanges`, planned once with ``plan_key_ranges``).
* **one Uploader per worker**: an :class:`UploaderPlugin` (a Dask ``WorkerPlugin``) opens,
  in its ``setup``, an event loop thread, the HTTP transport, and the token manager with the
  shared token store, and closes them in ``teardown`` (when the run unregisters it). Every
  task the worker runs uploads through that one connection pool and token manager.
* **one token for the cluster**: the token managers of all workers share it through the
  token store: a ``redis://`` store for a cluster that spans hosts (required when the caller
  brings the cluster), a ``file:`` store (a private temporary one by default) when
  :func:`upload_dask` starts a local cluster itself. One token request per token lifetime.
* **state**: each part has its own checkpoint ``part-K-of-N.asyncsync`` and dead-letter
  part ``part-K-of-N.failed.jsonl`` in ``state_dir``, which every worker and the client must
  see at the same path (the machine's disk for a local cluster; a shared file system for a
  multi-host one). At the end the client appends the parts to the run's one dead-letter file
  (``failed``) and merges the tasks' summaries into one :class:`~asyncsync.RunSummary`.

**Exactly once under task retries.** Dask re-runs a task whose worker died (and one whose
result was lost with its worker). Every attempt of part K uses the job id ``<job_id>-K`` and
cuts the same batches (parts are read without linger: batches by count and bytes only), so
an Idempotency-Key ``<job_id>-K-<first>-<last>`` names the same records on every attempt:
a batch re-sent by the second attempt is a duplicate the API drops, never a second copy.
The checkpoint (saved before the first request) makes the second attempt resume after what
the first had acknowledged; a part already finished in this run (its marker
``part-K-of-N.done.json`` holds this run's id) returns its summary without sending again.
A re-run of the whole job with the same ``state_dir`` resumes unfinished parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson
from distributed import Client, LocalCluster, get_worker, wait
from distributed.diagnostics.plugin import WorkerPlugin

from ._atomic import atomic_write
from ._concurrency import DEFAULT_INITIAL_CONCURRENCY, DEFAULT_MAX_CONCURRENCY
from ._config import (
    DEFAULT_BODY,
    DEFAULT_HTTP,
    DEFAULT_LIMITS,
    DEFAULT_REJECTS,
    DEFAULT_RETRY,
    BatchLimits,
    BodyOptions,
    HttpOptions,
    RejectOptions,
    RetryPolicy,
    StateOptions,
)
from ._deadletter import merge_dead_letters
from ._exceptions import ConfigError
from ._hooks import UploadHooks
from ._http import Transport
from ._recorder import MetricsRecorder
from ._summary import COUNTER_FIELDS, Counters, Interrupted, RunSummary, merge_summaries
from ._transports import open_transport
from ._uploader import Uploader
from .auth._manager import (
    DEFAULT_FETCH_TIMEOUT,
    DEFAULT_MAX_FETCH_TIME,
    DEFAULT_SKEW,
    TokenManager,
    TokenStore,
)
from .auth._protocol import AuthProvider
from .auth._simple import StaticToken
from .sources._iterable import IterableSource
from .sources._protocol import Source
from .sources._shards import Shard, open_shard, plan_shards, source_kind

__all__ = [
    "FileShards",
    "SqlRanges",
    "UploaderPlugin",
    "upload_dask",
    "upload_dask_sync",
]

log = logging.getLogger("asyncsync")
T = TypeVar("T")

#: what ``token_store`` may be: a spec (``file:PATH``, ``redis://HOST:PORT/DB``), or a
#: picklable factory run on each worker
TokenStoreLike = str | Callable[[], TokenStore | None]
#: a picklable factory of the TLS setting, run on each worker (an SSLContext does not pickle)
SslFactory = Callable[[], Any]


@dataclass(frozen=True, slots=True)
class FileShards:
    """A JSON Lines or CSV file cut into ``shards`` byte ranges, one task each (None: two
    per worker thread of the cluster). The file must be at ``path`` on the client (which
    plans the cut) and on every worker."""

    path: str | os.PathLike[str]
    shards: int | None = None
    delimiter: str = ","


@dataclass(frozen=True, slots=True)
class SqlRanges:
    """A SQL table or query cut into ``shards`` ranges of ``key``, one task each (fewer when
    the table is small). ``db`` must be reachable from the client and every worker."""

    db: str
    key: str
    shards: int
    table: str | None = None
    query: str | None = None


DataLike = FileShards | SqlRanges | Any  # Any: a dask Bag or DataFrame


# --------------------------------------------------------------------------------------------
# what travels to the workers


@dataclass(frozen=True, slots=True, kw_only=True)
class _WorkerSpec:
    """How every worker builds its Uploader (pickled once, with the plugin)."""

    url: str
    auth: AuthProvider | None
    token_store: TokenStoreLike | None
    concurrency: int | Literal["auto"]
    max_concurrency: int
    initial_concurrency: int
    queue_size: int | None
    limits: BatchLimits
    retry: RetryPolicy
    body: BodyOptions
    http: HttpOptions
    rejects: RejectOptions
    ssl_factory: SslFactory | None
    token_skew: float
    auth_retry_time: float
    metrics: bool = False  # each part keeps a MetricsRecorder (polled with its counters)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Task:
    """One part: what to read, and its state files."""

    plugin: str
    run_id: str
    job_id: str
    index: int
    count: int
    kind: Literal["records", "frame", "file", "sql"]
    name: str
    checkpoint: str
    failed: str
    done: str
    path: str | None = None
    shard: Shard | None = None
    sql: SqlRanges | None = None
    key_range: tuple[Any, Any] | None = None


class _PartSource(IterableSource):
    """A partition's records. No linger: batches are cut by count and bytes only, so every
    attempt of the task forms the same batches, under the same Idempotency-Keys."""

    linger = False


class _Collect(UploadHooks):
    """Keeps the counters of one upload (for its latency samples and bytes read, and for the
    client's progress polls)."""

    def __init__(self) -> None:
        self.counters: Counters | None = None

    def on_start(self, counters: Counters, *, total_bytes: int | None) -> None:
        self.counters = counters


def _stop_worker(name: str, dask_worker: Any = None) -> bool:
    """Run on every worker when the client drains: :meth:`UploaderPlugin.stop`."""
    plugin = dask_worker.plugins.get(name) if dask_worker is not None else None
    if not isinstance(plugin, UploaderPlugin):
        return False
    plugin.stop()
    return True


def _poll(name: str, metrics: bool, dask_worker: Any = None) -> dict[int, dict[str, Any]]:
    """Run on every worker by the client's progress poll: the live counters (and with
    ``metrics`` the metrics snapshot) of each part this worker has run in this run. Read from
    the worker's thread while the plugin's loop updates them: plain ints, read whole."""
    plugin = dask_worker.plugins.get(name) if dask_worker is not None else None
    if not isinstance(plugin, UploaderPlugin):
        return {}
    out: dict[int, dict[str, Any]] = {}
    for index, collect in list(plugin.live.items()):
        c = collect.counters
        if c is None:
            continue
        part: dict[str, Any] = {"c": {f: getattr(c, f) for f in COUNTER_FIELDS}}
        if metrics and isinstance(collect, MetricsRecorder):
            part["m"] = collect.snapshot()
        out[index] = part
    return out


class UploaderPlugin(WorkerPlugin):
    """One :class:`~asyncsync.Uploader` per Dask worker, on an event loop thread of its own
    (the worker's own loop keeps serving the scheduler). ``setup`` opens the transport and the
    token manager (with the shared token store); ``teardown`` closes them."""

    def __init__(self, name: str, spec: _WorkerSpec) -> None:
        self.name = name
        self.spec = spec
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._uploader: Uploader | None = None
        self._tokens: TokenManager | None = None
        self._token_transport: Transport | None = None
        self._store: TokenStore | None = None
        #: the hooks of each part this worker ran, by part index (for the progress polls)
        self.live: dict[int, _Collect | MetricsRecorder] = {}
        #: the client asked to drain (Ctrl-C): parts in flight stop, no part starts
        self.stopping = False

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "spec": self.spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"], state["spec"])  # type: ignore[misc]

    # -- lifecycle (called by the worker)

    def setup(self, worker: Any) -> None:
        self._loop = _new_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="asyncsync-uploader", daemon=True
        )
        self._thread.start()
        self.call(self._open())

    def teardown(self, worker: Any) -> None:
        if self._loop is None:
            return
        try:
            self.call(self._close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._loop.close()
            self._loop = None

    def stop(self) -> None:
        """Drain (from any thread): the part uploading stops reading, lets its batches in
        flight finish and checkpoints; a part not started yet does not start."""
        self.stopping = True
        if self._loop is not None and self._uploader is not None:
            self._loop.call_soon_threadsafe(self._uploader.stop)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the plugin's loop from a task's thread; its result."""
        assert self._loop is not None, "the plugin is not set up"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _open(self) -> None:
        spec = self.spec
        ssl = spec.ssl_factory() if spec.ssl_factory is not None else spec.http.ssl
        http = dataclasses.replace(spec.http, ssl=ssl)
        if spec.auth is not None:
            store = spec.token_store
            if isinstance(store, str):
                self._store = _open_store(store, spec)
            elif store is not None:
                self._store = store()
            self._token_transport = open_transport(
                http.transport, connections=2, timeout=http.timeout, ssl=ssl
            )
            self._tokens = TokenManager(
                spec.auth,
                skew=spec.token_skew,
                store=self._store,
                transport=self._token_transport,
                fetch_timeout=min(http.timeout, DEFAULT_FETCH_TIMEOUT),
                max_fetch_time=spec.auth_retry_time,
            )
        self._uploader = Uploader(
            spec.url,
            auth=self._tokens,
            concurrency=spec.concurrency,
            max_concurrency=spec.max_concurrency,
            initial_concurrency=spec.initial_concurrency,
            queue_size=spec.queue_size,
            limits=spec.limits,
            retry=spec.retry,
            body=spec.body,
            http=http,
            rejects=spec.rejects,
        )
        await self._uploader.__aenter__()

    async def _close(self) -> None:
        try:
            if self._uploader is not None:
                await self._uploader.aclose()
        finally:
            try:
                if self._tokens is not None:
                    await self._tokens.aclose()
            finally:
                if self._token_transport is not None:
                    await self._token_transport.aclose()
                aclose = getattr(self._store, "aclose", None)
                if aclose is not None:
                    await aclose()

    # -- one task

    async def upload_part(self, data: Any, task: _Task) -> dict[str, Any]:
        """Upload one part with its own checkpoint and dead-letter part; its summary (a dict,
        with ``latencies`` and ``bytes_read`` for the merge)."""
        done = _read_done(Path(task.done), task.run_id)
        if done is not None:  # finished in this run already; Dask re-ran it (result lost)
            log.info("part %d/%d: finished already in this run", task.index, task.count)
            return done
        assert self._uploader is not None
        if self.stopping:  # the run is draining: leave the part to a re-run
            stopped = RunSummary.from_counters(
                Counters(), duration_s=0.0, job_id=task.job_id, interrupted=True
            )
            return {**stopped.to_dict(), "bytes_read": 0, "latencies": [], "part": task.index}
        source = _open_part(data, task)
        collect = MetricsRecorder() if self.spec.metrics else _Collect()
        self.live[task.index] = collect
        state = StateOptions(checkpoint=task.checkpoint, failed=task.failed, job_id=task.job_id)
        try:
            summary = await self._uploader.upload(source, state=state, hooks=collect)
        except Interrupted as exc:  # drained: its checkpoint holds what was acknowledged
            if exc.summary is None:
                raise
            summary = exc.summary
        result = summary.to_dict()
        counters = collect.counters
        result["bytes_read"] = counters.bytes_read if counters is not None else 0
        result["latencies"] = [round(v, 6) for v in counters.latencies.values] if counters else []
        result["part"] = task.index
        if not summary.interrupted:
            atomic_write(task.done, orjson.dumps({"run_id": task.run_id, "summary": result}))
        return result


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _open_store(spec: str, worker: _WorkerSpec) -> TokenStore:
    """A ``--token-store`` spec, keyed by the provider's token URL and client id."""
    from .auth._stores import open_token_store

    auth = worker.auth
    endpoint = getattr(auth, "token_url", None) or getattr(auth, "url", None)
    if not isinstance(endpoint, str):
        raise ConfigError(
            "token_store: a spec needs a provider with a token URL; pass a factory instead",
            field="token_store",
        )
    return open_token_store(
        spec,
        endpoint=endpoint,
        client_id=getattr(auth, "client_id", None),
        scope=getattr(auth, "scope", None),
        fetch_timeout=min(worker.http.timeout, DEFAULT_FETCH_TIMEOUT),
        auth_retry_time=worker.auth_retry_time,
    )


def _read_done(path: Path, run_id: str) -> dict[str, Any] | None:
    try:
        entry = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(entry, dict) or entry.get("run_id") != run_id:
        return None  # another run's: this run starts or resumes the part
    summary = entry.get("summary")
    return summary if isinstance(summary, dict) else None


def _open_part(data: Any, task: _Task) -> Source:
    if task.kind == "records":
        return _PartSource(list(data), name=task.name)
    if task.kind == "frame":
        text = data.to_json(orient="records", lines=True, date_format="iso")
        lines = [line for line in text.encode().split(b"\n") if line]
        return _PartSource(lines, name=task.name)
    if task.kind == "file":
        assert task.path is not None and task.shard is not None
        return open_shard(task.path, task.shard)
    assert task.sql is not None
    from .sources.sql import open_sql_source

    sql = task.sql
    source = open_sql_source(sql.db, query=sql.query, table=sql.table, key=sql.key)
    if task.key_range is None:
        return _PartSource([], name=task.name)
    return source.with_range(*task.key_range)


def _run_task(data: Any, *, task: _Task) -> dict[str, Any]:
    """The Dask task: one part, through this worker's plugin."""
    plugin = get_worker().plugins.get(task.plugin)
    if not isinstance(plugin, UploaderPlugin) or plugin._uploader is None:
        raise RuntimeError(f"worker plugin {task.plugin} is not set up on this worker")
    return plugin.call(plugin.upload_part(data, task))


# --------------------------------------------------------------------------------------------
# the client

#: seconds between two progress polls of the workers
PROGRESS_INTERVAL = 0.5
#: seconds the parts in flight get to drain after a Ctrl-C before the run is cancelled
DRAIN_GRACE = 30.0
#: ``on_progress``'s argument: every part's latest ``{"c": counters[, "m": metrics]}``
ProgressCallback = Callable[[Mapping[int, Mapping[str, Any]]], None]


def _fetches_tokens(auth: AuthProvider | None) -> bool:
    return auth is not None and not isinstance(auth, StaticToken)


@contextlib.contextmanager
def _cluster(
    client: Client | None, scheduler: str | None, workers: int | None
) -> Iterator[tuple[Client, bool]]:
    """The client to run on, and whether this call started the (local) cluster."""
    given = sum(x is not None for x in (client, scheduler, workers))
    if given != 1:
        raise ConfigError(
            "give exactly one of client, scheduler (tcp://HOST:PORT) or workers (N)",
            field="scheduler",
        )
    if client is not None:
        yield client, False
        return
    if scheduler is not None:
        with Client(scheduler) as remote:
            yield remote, False
        return
    assert workers is not None
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers!r}", field="workers")
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as local,
    ):
        yield local, True


def _parts(data: DataLike, base: _Task, threads: int) -> list[tuple[Any, _Task]]:
    """Each part's input (a delayed partition, or None) and its task."""

    def task(index: int, count: int, kind: Any, name: str, **extra: Any) -> _Task:
        stem = os.path.join(os.path.dirname(base.checkpoint), f"part-{index}-of-{count}")
        return dataclasses.replace(
            base,
            job_id=f"{base.job_id}-{index}",
            index=index,
            count=count,
            kind=kind,
            name=name,
            checkpoint=stem + ".asyncsync",
            failed=stem + ".failed.jsonl",
            done=stem + ".done.json",
            **extra,
        )

    if isinstance(data, FileShards):
        path = os.fspath(data.path)
        kind = source_kind(path)
        count = data.shards if data.shards is not None else max(1, 2 * threads)
        shards = plan_shards(path, count, kind, delimiter=data.delimiter)
        return [
            (None, task(s.index, len(shards), "file", path, path=path, shard=s))
            for s in shards
            if s.size > 0
        ]
    if isinstance(data, SqlRanges):
        from .sources.sql import open_sql_source

        sql = open_sql_source(data.db, query=data.query, table=data.table, key=data.key)

        async def plan() -> list[tuple[Any, Any]]:
            await sql.check()
            return list(await sql.plan_key_ranges(data.shards))

        ranges = asyncio.run(plan())
        return [
            (None, task(k, len(ranges), "sql", f"sql part {k}", sql=data, key_range=r))
            for k, r in enumerate(ranges)
        ]
    kind = _collection_kind(data)
    parts = data.to_delayed()
    name = str(getattr(data, "name", None) or getattr(data, "_name", "dask"))
    return [
        (part, task(k, len(parts), kind, f"dask {name} partition {k}/{len(parts)}"))
        for k, part in enumerate(parts)
    ]


def _collection_kind(data: Any) -> Literal["records", "frame"]:
    import dask.bag
    import dask.dataframe

    if isinstance(data, dask.bag.Bag):
        return "records"
    if isinstance(data, dask.dataframe.DataFrame):
        return "frame"
    raise ConfigError(
        "data must be a dask.bag.Bag, a dask.dataframe.DataFrame, FileShards or SqlRanges, "
        f"not {type(data).__name__}",
        field="data",
    )


def upload_dask_sync(
    data: DataLike,
    url: str,
    *,
    auth: AuthProvider | None = None,
    client: Client | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    token_store: TokenStoreLike | None = None,
    state_dir: str | os.PathLike[str] = "asyncsync-dask",
    failed: str | os.PathLike[str] | None = None,
    job_id: str | None = None,
    resume: bool = True,
    concurrency: int | Literal["auto"] = 16,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    initial_concurrency: int = DEFAULT_INITIAL_CONCURRENCY,
    queue_size: int | None = None,
    limits: BatchLimits = DEFAULT_LIMITS,
    retry: RetryPolicy = DEFAULT_RETRY,
    body: BodyOptions = DEFAULT_BODY,
    http: HttpOptions = DEFAULT_HTTP,
    rejects: RejectOptions = DEFAULT_REJECTS,
    ssl_factory: SslFactory | None = None,
    token_skew: float = DEFAULT_SKEW,
    auth_retry_time: float = DEFAULT_MAX_FETCH_TIME,
    on_progress: ProgressCallback | None = None,
    metrics: bool = False,
    progress_interval: float = PROGRESS_INTERVAL,
) -> RunSummary:
    """Upload ``data`` on a Dask cluster; the merged summary (see the module docstring).

    The cluster: a ``client`` (a synchronous ``distributed.Client``), a ``scheduler`` address
    (``tcp://HOST:PORT``), or ``workers`` N for a local cluster of N single-threaded worker
    processes started (and stopped) here. ``token_store`` (a ``file:``/``redis://`` spec or a
    picklable factory) is required with a provider that fetches tokens, except on a local
    cluster started here (a private temporary file store then). ``state_dir`` holds each
    part's checkpoint and dead-letter part (shared by every worker and the client);
    ``failed`` is the run's dead-letter file (default ``state_dir/failed.jsonl``); ``resume``
    False starts every part over. ``rejects`` applies to every part; its
    ``max_split_requests`` budget is per part (each task's upload has its own). An
    SSLContext does not pickle: pass ``ssl_factory``.
    ``on_progress`` is called about every ``progress_interval`` seconds (from a client
    thread, and once more after the last part) with the latest numbers of every part
    started so far: ``{part index: {"c": counters}}``, ``counters`` the
    :data:`~asyncsync._summary.COUNTER_FIELDS` of the part's upload, plus ``"m"``, its
    metrics snapshot (:class:`~asyncsync._recorder.MetricsRecorder`), with ``metrics=True``.
    Raises what a task raised (:class:`~asyncsync.AuthError` ...) after cancelling the rest.
    """
    started = time.monotonic()
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"url must start with http:// or https://, got {url!r}", field="url")
    if http.ssl is not None and not isinstance(http.ssl, bool):
        raise ConfigError(
            "http.ssl: an SSLContext cannot travel to Dask workers; pass ssl_factory, a "
            "picklable function that builds it on each worker",
            field="ssl",
        )
    spec = _WorkerSpec(
        url=url,
        auth=auth,
        token_store=token_store,
        concurrency=concurrency,
        max_concurrency=max_concurrency,
        initial_concurrency=initial_concurrency,
        queue_size=queue_size,
        limits=limits,
        retry=retry,
        body=body,
        http=http,
        rejects=rejects,
        ssl_factory=ssl_factory,
        token_skew=token_skew,
        auth_retry_time=auth_retry_time,
        metrics=metrics,
    )
    Uploader(  # validates, opens nothing
        url,
        concurrency=concurrency,
        max_concurrency=max_concurrency,
        initial_concurrency=initial_concurrency,
        queue_size=queue_size,
    )
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    target = Path(failed) if failed is not None else state / "failed.jsonl"
    run_id = uuid.uuid4().hex
    base = _Task(
        plugin=f"asyncsync-{run_id}",
        run_id=run_id,
        job_id=job_id or run_id,
        index=0,
        count=1,
        kind="records",
        name="",
        checkpoint=str(state / "part"),
        failed="",
        done="",
    )
    tmpdir: str | None = None
    parts: list[tuple[Any, _Task]] = []
    try:
        with _cluster(client, scheduler, workers) as (cl, local):
            threads = sum(cl.nthreads().values())
            parts = _parts(data, base, threads)
            if not resume:
                for _, t in parts:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(t.checkpoint)
            if _fetches_tokens(auth) and token_store is None:
                if not local:
                    raise ConfigError(
                        "token_store is required on a cluster this call did not start (every "
                        "worker must share the token): redis://HOST:PORT/DB",
                        field="token_store",
                    )
                tmpdir = tempfile.mkdtemp(prefix="asyncsync-tokens-")  # 0700
                spec = dataclasses.replace(
                    spec, token_store=f"file:{os.path.join(tmpdir, 'token.json')}"
                )
            results = _run_on(
                cl,
                UploaderPlugin(base.plugin, spec),
                parts,
                on_progress=on_progress,
                interval=progress_interval,
            )
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    merge_dead_letters([Path(t.failed) for _, t in parts], target)
    return merge_summaries(results, duration_s=time.monotonic() - started)


def _run_on(
    client: Client,
    plugin: UploaderPlugin,
    parts: Sequence[tuple[Any, _Task]],
    *,
    on_progress: ProgressCallback | None = None,
    interval: float = PROGRESS_INTERVAL,
    grace: float = DRAIN_GRACE,
) -> list[dict[str, Any]]:
    from dask.delayed import delayed

    client.register_plugin(plugin, name=plugin.name)
    futures: list[Any] = []
    poller = _Poller(client, plugin, on_progress, interval) if on_progress is not None else None
    try:
        if poller is not None:
            poller.start()
        # the task rides in a partial: dask does not look inside it for collections
        jobs = [delayed(functools.partial(_run_task, task=t), pure=False)(d) for d, t in parts]
        futures = client.compute(jobs)
        results: list[dict[str, Any]]
        try:
            results = client.gather(futures)
        except KeyboardInterrupt:
            results = _drain(client, plugin, futures, grace)
        if poller is not None:
            poller.stop(final=True)  # the parts' last numbers, before the plugin goes
        return results
    except BaseException:
        with contextlib.suppress(Exception):
            client.cancel(futures)
        raise
    finally:
        if poller is not None:
            poller.stop(final=False)
        with contextlib.suppress(Exception):
            client.unregister_worker_plugin(plugin.name)


def _drain(
    client: Client, plugin: UploaderPlugin, futures: list[Any], grace: float
) -> list[dict[str, Any]]:
    """The first Ctrl-C (KeyboardInterrupt) while the parts run: every worker drains (the
    part uploading checkpoints and returns its interrupted summary; a part not started
    returns at once); the summaries within ``grace`` seconds. A second Ctrl-C, or the grace
    running out, raises (the caller cancels what is left; the checkpoints still hold what
    was acknowledged)."""
    log.warning("interrupted: draining the parts in flight (Ctrl-C again to abort)")
    client.run(_stop_worker, plugin.name, on_error="return")
    wait(futures, timeout=grace)  # a TimeoutError when the grace runs out
    results: list[dict[str, Any]] = client.gather(futures)
    return results


class _Poller:
    """Polls every worker for its parts' numbers (``client.run``) on a thread of its own and
    hands ``on_progress`` the latest of every part. A part whose worker died keeps its last
    numbers until its re-run reports (which resumes from its checkpoint, counters included)."""

    def __init__(
        self,
        client: Client,
        plugin: UploaderPlugin,
        on_progress: ProgressCallback,
        interval: float,
    ) -> None:
        self._client = client
        self._name = plugin.name
        self._metrics = plugin.spec.metrics
        self._on_progress = on_progress
        self._interval = interval
        self._latest: dict[int, dict[str, Any]] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="asyncsync-dask-progress")

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, final: bool) -> None:
        if self._done.is_set():
            return
        self._done.set()
        self._thread.join()
        if final:
            self._poll()

    def _run(self) -> None:
        while not self._done.wait(self._interval):
            self._poll()

    def _poll(self) -> None:
        try:
            answers = self._client.run(_poll, self._name, self._metrics, on_error="return")
        except Exception as exc:  # the cluster is going away: the summary will tell
            log.debug("progress poll failed: %s", exc)
            return
        for answer in answers.values():
            if isinstance(answer, dict):
                self._latest.update(answer)
        self._on_progress(dict(self._latest))


async def upload_dask(data: DataLike, url: str, **options: Any) -> RunSummary:
    """:func:`upload_dask_sync` in a worker thread: the caller's event loop keeps running
    (the Dask client calls block)."""
    return await asyncio.to_thread(upload_dask_sync, data, url, **options)
