"""The library's front door: :class:`Uploader` and the one-call :func:`upload`.

::

    async with Uploader(url, auth=OAuth2ClientCredentials(...)) as up:
        summary = await up.upload("export.jsonl")

An ``Uploader`` owns one HTTP transport (connection limit = workers, keep-alive) and one
:class:`TokenManager`, shared by every upload made through it. Its lifecycle is explicit: use
it inside ``async with`` (or call :meth:`Uploader.aclose`); after close it refuses work with a
``RuntimeError``.

The uploader never asks what kind of source it holds: each source declares how it resumes,
its fingerprint, whether batches linger, whether it has line numbers and where its default
state files go (:mod:`asyncsync.sources._protocol`). Stopping is the caller's policy:
:meth:`Uploader.stop` drains, :meth:`Uploader.abort` cancels (the CLI wires them to signals).
"""

from __future__ import annotations

import enum
import logging
import os
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from types import TracebackType
from typing import Any, Literal

from ._batcher import batch as make_batches
from ._body import BodyEncoder
from ._concurrency import (
    DEFAULT_INITIAL_CONCURRENCY,
    DEFAULT_MAX_CONCURRENCY,
    AdaptiveLimit,
    ConcurrencyLimiter,
)
from ._config import (
    DEFAULT_BODY,
    DEFAULT_HTTP,
    DEFAULT_LIMITS,
    DEFAULT_REJECTS,
    DEFAULT_RETRY,
    DEFAULT_STATE,
    BatchLimits,
    BodyOptions,
    HttpOptions,
    RejectOptions,
    RetryPolicy,
    StateOptions,
)
from ._deadletter import DeadLetterFile
from ._exceptions import ConfigError
from ._hooks import NO_HOOKS, CheckpointSaved, RunStarted, UploadHooks, overrides
from ._http import Transport
from ._paths import default_state_paths
from ._pipeline import Pipeline, default_queue_size
from ._records import RecordBlock
from ._retry import PauseGate, RateLimiter
from ._sender import Sender
from ._summary import Counters, Interrupted, RunSummary
from ._transports import open_transport
from .auth._manager import TokenManager
from .auth._protocol import AuthProvider
from .checkpoint._ledger import Ledger
from .sources._open import open_source
from .sources._protocol import Source

__all__ = ["SourceLike", "Uploader", "upload"]

log = logging.getLogger("asyncsync")

SourceLike = str | os.PathLike[str] | Source | Iterable[Any] | AsyncIterable[Any]


class _State(enum.Enum):
    UNOPENED = 1
    OPEN = 2
    CLOSED = 3


class Uploader:
    """Uploads record sources to ``url`` in batches, with one shared token manager.

    Every argument is validated here; a bad value raises :class:`ConfigError` naming it.
    ``auth`` is an auth provider (a :class:`TokenManager` with default skew, a 120 s token
    retry budget, no shared store and no revocation is built around it), a ready
    ``TokenManager`` (for those options, ``max_fetch_time`` included; shared, not closed by
    the uploader), or None for no authentication. The settings come in
    groups, each a frozen dataclass with visible defaults: ``limits`` (where batches are cut),
    ``retry``, ``body`` (format, wrap, gzip, headers), ``http`` (timeout, TLS, rate limit),
    ``state`` (checkpoint, dead-letter file, resume, job id), ``rejects`` (how a rejected
    batch is split, per-record results). ``hooks`` observe the run
    (:class:`UploadHooks`: typed events for progress displays and metrics); a token manager
    the uploader builds tells ``hooks.on_token`` of its requests, a ready one is wired by
    its builder (``TokenManager(observer=...)``).

    ``concurrency`` is a number of requests in flight, or ``"auto"``: the limit starts at
    ``initial_concurrency``, is moved by each attempt's round trip and back-pressure
    (:mod:`asyncsync._concurrency`) and never passes ``max_concurrency``; the connection
    pool holds ``max_concurrency`` connections.
    """

    def __init__(
        self,
        url: str,
        *,
        auth: AuthProvider | TokenManager | None = None,
        concurrency: int | Literal["auto"] = 16,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        initial_concurrency: int = DEFAULT_INITIAL_CONCURRENCY,
        queue_size: int | None = None,
        limits: BatchLimits = DEFAULT_LIMITS,
        retry: RetryPolicy = DEFAULT_RETRY,
        body: BodyOptions = DEFAULT_BODY,
        http: HttpOptions = DEFAULT_HTTP,
        state: StateOptions = DEFAULT_STATE,
        rejects: RejectOptions = DEFAULT_REJECTS,
        hooks: UploadHooks | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"url must start with http:// or https://, got {url!r}", field="url")
        auto = concurrency == "auto"
        if not auto and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise ConfigError(
                f"concurrency must be an int >= 1 or 'auto', got {concurrency!r}",
                field="concurrency",
            )
        if auto:  # validates max_concurrency and initial_concurrency
            AdaptiveLimit(initial=initial_concurrency, maximum=max_concurrency)
        if queue_size is not None and queue_size < 1:
            raise ConfigError(f"queue size must be >= 1, got {queue_size!r}", field="queue_size")
        for name, value, kind in (
            ("limits", limits, BatchLimits),
            ("retry", retry, RetryPolicy),
            ("body", body, BodyOptions),
            ("http", http, HttpOptions),
            ("state", state, StateOptions),
            ("rejects", rejects, RejectOptions),
        ):
            if not isinstance(value, kind):
                raise ConfigError(
                    f"{name} must be a {kind.__name__}, got {type(value).__name__}", field=name
                )
        self.url = url
        self._auth = auth
        self._auto = auto
        self._max_concurrency = max_concurrency
        self._initial_concurrency = initial_concurrency
        # auto: max_concurrency workers, gated by the limiter (a waiting worker holds one batch)
        self._concurrency = max_concurrency if auto else int(concurrency)
        self._queue_size = queue_size or default_queue_size(
            initial_concurrency if auto else self._concurrency
        )
        self._limits = limits
        self._retry = retry
        self._body = body
        self._encoder = BodyEncoder(body.format, wrap=body.wrap, gzip=body.gzip)
        self._http = http
        self._state_options = state
        self._rejects = rejects
        self._hooks: UploadHooks = hooks if hooks is not None else NO_HOOKS
        self._state = _State.UNOPENED
        self._transport: Transport | None = None
        self._tokens: TokenManager | None = None
        self._owns_tokens = False
        self._gate = PauseGate()
        self._running: set[Pipeline] = set()
        # stop()/abort() before a pipeline exists (during setup) still stop this upload
        self._stop_requested = False
        self._abort_requested = False

    def __repr__(self) -> str:
        return (
            f"Uploader(url={self.url!r}, "
            f"concurrency={'auto' if self._auto else self._concurrency}, "
            f"state={self._state.name})"
        )

    @property
    def tokens(self) -> TokenManager | None:
        """The token manager shared by every request (None without authentication)."""
        return self._tokens

    async def __aenter__(self) -> Uploader:
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _open(self) -> None:
        if self._state is _State.CLOSED:
            raise RuntimeError("Cannot use an Uploader that has been closed.")
        if self._state is _State.OPEN:
            return
        http = self._http
        self._transport = open_transport(
            http.transport, connections=self._concurrency, timeout=http.timeout, ssl=http.ssl
        )
        if isinstance(self._auth, TokenManager):
            self._tokens = self._auth
        elif self._auth is not None:
            self._tokens = TokenManager(
                self._auth,
                transport=self._transport,
                # the request timeout bounds token requests too (a hung token endpoint, exit 3);
                # a token endpoint down is retried for the manager's default max_fetch_time
                # (120 s): pass a TokenManager of your own as ``auth`` to change it
                fetch_timeout=min(http.timeout, 30.0),
                observer=self._hooks.on_token if overrides(self._hooks, "on_token") else None,
            )
            self._owns_tokens = True
        self._state = _State.OPEN

    async def aclose(self) -> None:
        """Close the token manager it built (revoking if asked) and the connections. Idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        try:
            if self._tokens is not None and self._owns_tokens:
                await self._tokens.aclose()
        finally:
            if self._transport is not None:
                await self._transport.aclose()

    def stop(self) -> None:
        """Drain: stop reading, let batches in flight finish, checkpoint; the upload then
        raises :class:`Interrupted`. Safe from a signal handler on the loop; idempotent."""
        self._stop_requested = True
        for pipeline in self._running:
            pipeline.stop()

    def abort(self) -> None:
        """Cancel now, in-flight requests included; the checkpoint keeps what was
        acknowledged. The upload raises :class:`Interrupted`."""
        self._stop_requested = self._abort_requested = True
        for pipeline in self._running:
            pipeline.abort()

    async def upload(
        self,
        source: SourceLike,
        *,
        state: StateOptions | None = None,
        hooks: UploadHooks | None = None,
    ) -> RunSummary:
        """Upload every record of ``source``; returns the run summary.

        ``state`` and ``hooks``, when given, replace the uploader's for this upload only: one
        uploader (one connection pool, one token manager) serving uploads that each keep
        their own checkpoint and dead-letter file, as a Dask worker does for its tasks.
        (Token events stay with the token manager's observer: the uploader's ``hooks``, for a
        manager it built, as that manager serves every upload.)

        ``source`` is a path (.jsonl/.ndjson/.csv), ``"-"`` for stdin, a :class:`Source`, or
        any sync or async iterable of dicts or of raw JSON bytes. Records that cannot be
        delivered are written to the dead-letter file; authentication failure raises
        :class:`AuthError`; :meth:`stop` or :meth:`abort` ends it with :class:`Interrupted`
        (carrying the summary) after the checkpoint is saved.
        """
        if self._state is not _State.OPEN:
            if self._state is _State.CLOSED:
                raise RuntimeError("Cannot upload with an Uploader that has been closed.")
            await self._open()
        assert self._transport is not None
        src = open_source(source)  # SourceError here, before any request
        options = state if state is not None else self._state_options
        hooks = hooks if hooks is not None else self._hooks
        counters = Counters()
        failed = options.failed or default_state_paths(src.state_path).failed
        dead = DeadLetterFile(failed, lines=src.has_lines)
        ledger: Ledger | None = None
        start_seq = 0
        if options.checkpoint is not None:
            ledger = Ledger.open(
                options.checkpoint,
                src.fingerprint(self._fingerprint_settings()),
                dead_letter=dead,
                counters=counters,  # a resumed job's counters are restored into these
                resume=options.resume,
                keyed=src.keyed,
                job_id=options.job_id,
            )
            job_id = ledger.job_id
            mark = ledger.resume_point()
            if mark is not None:
                start_seq = mark.next_seq
                src = src.resumed(position=mark.position, offset=mark.offset, key=mark.key)
                log.info(
                    "resuming job %s after position %d (%d records already sent)",
                    job_id,
                    mark.position,
                    counters.records_sent,
                )
            await ledger.start()
            if overrides(hooks, "on_checkpoint"):
                hooks.on_checkpoint(CheckpointSaved(ledger.saves, final=False))
        else:
            job_id = options.job_id or uuid.uuid4().hex
        auth_base = self._tokens.stats.requests if self._tokens is not None else 0
        auth_before = counters.auth_requests
        limiter: ConcurrencyLimiter | None = None
        if self._auto:
            limiter = ConcurrencyLimiter(
                AdaptiveLimit(initial=self._initial_concurrency, maximum=self._max_concurrency)
            )

            def on_limit(limit: int) -> None:
                counters.concurrency_limit = limit

            limiter.on_limit = on_limit
            counters.concurrency_auto = True
        counters.concurrency_limit = limiter.limit if limiter is not None else self._concurrency
        sender = Sender(
            self._transport,
            self.url,
            tokens=self._tokens,
            encoder=self._encoder,
            job_id=job_id,
            retry=self._retry,
            counters=counters,
            hooks=hooks,
            rejects=self._rejects,
            headers=self._body.headers,
            gate=self._gate,
            rate=RateLimiter(self._http.rate) if self._http.rate else None,
            limiter=limiter,
        )
        batches = make_batches(
            _count_bytes(src.blocks(), counters),
            self._limits,
            linger=src.linger,
            start_seq=start_seq,
            overhead=self._encoder.overhead,
        )
        pipeline = Pipeline(
            batches,
            sender=sender,
            concurrency=self._concurrency,
            queue_size=self._queue_size,
            dead_letter=dead,
            counters=counters,
            hooks=hooks,
            ledger=ledger,
        )
        if self._abort_requested:
            pipeline.abort()
        elif self._stop_requested:
            pipeline.stop()
        hooks.on_start(counters, total_bytes=src.size)
        if overrides(hooks, "on_run"):
            hooks.on_run(RunStarted(job_id, counters.concurrency_limit, self._queue_size))
        started = time.monotonic()
        self._running.add(pipeline)
        try:
            await pipeline.run()
        finally:
            self._running.discard(pipeline)
            if not self._running:
                self._stop_requested = self._abort_requested = False
            if limiter is not None:
                counters.concurrency_max_seen = limiter.max_seen
                counters.concurrency_timeline = limiter.timeline
            else:
                counters.concurrency_max_seen = self._concurrency
            if self._tokens is not None:
                counters.auth_requests = auth_before + self._tokens.stats.requests - auth_base
            if ledger is None:
                dead.close()
            else:  # the dead letters are made durable before the checkpoint covering them
                await ledger.finish(stopped=pipeline.stopped)
                if overrides(hooks, "on_checkpoint"):
                    hooks.on_checkpoint(CheckpointSaved(ledger.saves, final=True))
            summary = RunSummary.from_counters(
                counters,
                duration_s=time.monotonic() - started,
                job_id=job_id,
                interrupted=pipeline.stopped,
            )
            hooks.on_finish(summary)
        if pipeline.stopped:
            raise Interrupted(
                f"interrupted after {summary.records_sent} records were delivered"
                + ("; run again to resume from the checkpoint" if ledger is not None else ""),
                summary=summary,
            )
        return summary

    def _fingerprint_settings(self) -> dict[str, str | int | float | bool | None]:
        """The settings that decide batch boundaries and bodies: a resume must keep them."""
        return {
            "batch_size": self._limits.max_records,
            "max_batch_bytes": self._limits.max_bytes,
            "body": self._encoder.format,
            "wrap": self._body.wrap,
        }


async def _count_bytes(
    blocks: AsyncIterator[RecordBlock], counters: Counters
) -> AsyncIterator[RecordBlock]:
    """Input bytes consumed, for progress and ETA (one addition per block, not per record)."""
    try:
        async for block in blocks:
            counters.bytes_read += block.bytes_read
            yield block
    finally:
        aclose = getattr(blocks, "aclose", None)
        if aclose is not None:  # the source's file and reader thread, now
            await aclose()


async def upload(
    source: SourceLike,
    url: str,
    *,
    auth: AuthProvider | TokenManager | None = None,
    concurrency: int | Literal["auto"] = 16,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    initial_concurrency: int = DEFAULT_INITIAL_CONCURRENCY,
    queue_size: int | None = None,
    limits: BatchLimits = DEFAULT_LIMITS,
    retry: RetryPolicy = DEFAULT_RETRY,
    body: BodyOptions = DEFAULT_BODY,
    http: HttpOptions = DEFAULT_HTTP,
    state: StateOptions = DEFAULT_STATE,
    rejects: RejectOptions = DEFAULT_REJECTS,
    hooks: UploadHooks | None = None,
) -> RunSummary:
    """One call: open an :class:`Uploader` with these arguments, upload ``source``, close.

    Undelivered records are in the dead-letter file and counted in the summary; call
    :meth:`RunSummary.raise_for_failures` to turn them into a :class:`DeliveryError`.
    """
    async with Uploader(
        url,
        auth=auth,
        concurrency=concurrency,
        max_concurrency=max_concurrency,
        initial_concurrency=initial_concurrency,
        queue_size=queue_size,
        limits=limits,
        retry=retry,
        body=body,
        http=http,
        state=state,
        rejects=rejects,
        hooks=hooks,
    ) as up:
        return await up.upload(source)
