"""The library's front door: :class:`Uploader` and the one-call :func:`upload`.

::

    async with Uploader(url, auth=OAuth2ClientCredentials(...)) as up:
        summary = await up.upload("export.jsonl")

An ``Uploader`` owns one ``aiohttp.ClientSession`` (connection limit = workers, keep-alive)
and one :class:`TokenManager`, shared by every upload made through it. Its lifecycle is
explicit: use it inside ``async with`` (or call :meth:`Uploader.aclose`); after close it
refuses work with a ``RuntimeError``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import enum
import logging
import os
import signal
import ssl as ssl_module
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp

from ._acklog import AckLog, AckLoggingLedger, fold_ack_log
from ._auth import AuthProvider
from ._batcher import batch as make_batches
from ._body import BodyEncoder
from ._checkpoint import Checkpointer, CheckpointStore, Fingerprint
from ._config import DEFAULT_LIMITS, DEFAULT_RETRY, BatchLimits, RetryPolicy
from ._deadletter import DeadLetterFile
from ._exceptions import ConfigError, Interrupted
from ._hooks import UploadHooks
from ._pipeline import Pipeline, default_queue_size
from ._records import RecordBlock
from ._sender import PauseGate, RateLimiter, Sender
from ._sources import Source, open_source
from ._sql import SqlSource
from ._summary import Counters, RunSummary
from ._token import TokenManager, TokenStore

__all__ = ["Uploader", "upload"]

log = logging.getLogger("asyncsync")

SourceLike = str | os.PathLike[str] | Source | Iterable[Any] | AsyncIterable[Any]

#: seconds in-flight batches get to finish after the first Ctrl-C
DEFAULT_GRACE = 30.0


class _State(enum.Enum):
    UNOPENED = 1
    OPEN = 2
    CLOSED = 3


class Uploader:
    """Uploads record sources to ``url`` in batches, with one shared token manager.

    Every keyword is validated here; a bad value raises :class:`ConfigError` naming it.
    ``auth`` is an auth provider (a :class:`TokenManager` is built around it), a ready
    ``TokenManager`` (shared, not closed by the uploader), or None for no authentication.
    ``token_store`` (with a provider) shares the token with other processes (see
    :func:`~asyncsync._stores.open_token_store`); the caller closes it.
    """

    def __init__(
        self,
        url: str,
        *,
        auth: AuthProvider | TokenManager | None = None,
        concurrency: int = 16,
        queue_size: int | None = None,
        limits: BatchLimits = DEFAULT_LIMITS,
        retry: RetryPolicy = DEFAULT_RETRY,
        body: Literal["json", "ndjson"] = "json",
        wrap: str | None = None,
        gzip: bool = False,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        rate: float | None = None,
        failed: str | os.PathLike[str] | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        resume: bool = True,
        job_id: str | None = None,
        hooks: UploadHooks | None = None,
        ssl: ssl_module.SSLContext | bool | None = None,
        token_skew: float = 300.0,
        token_store: TokenStore | None = None,
        revoke_on_close: bool = False,
        grace: float = DEFAULT_GRACE,
        install_signal_handlers: bool = False,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"url must start with http:// or https://, got {url!r}", field="url")
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency!r}", field="concurrency")
        if queue_size is not None and queue_size < 1:
            raise ConfigError(f"queue size must be >= 1, got {queue_size!r}", field="queue_size")
        if timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout!r}", field="timeout")
        if body not in ("json", "ndjson"):
            raise ConfigError(f"body must be json or ndjson, got {body!r}", field="body")
        if wrap is not None and body != "json":
            raise ConfigError("wrap only applies to --body json", field="wrap")
        if rate is not None and rate <= 0:
            raise ConfigError(f"rate must be > 0 requests/s, got {rate!r}", field="rate")
        if token_skew < 0:
            raise ConfigError(f"token skew must be >= 0, got {token_skew!r}", field="token_skew")
        if token_store is not None and isinstance(auth, TokenManager):
            raise ConfigError(
                "token_store applies to a token manager the uploader builds; give the store "
                "to your TokenManager instead",
                field="token_store",
            )
        self._token_store = token_store
        self._revoke_on_close = revoke_on_close
        self.url = url
        self._auth = auth
        self._concurrency = concurrency
        self._queue_size = queue_size or default_queue_size(concurrency)
        self._limits = limits
        self._retry = retry
        self._encoder = BodyEncoder(body, wrap=wrap, gzip=gzip)
        self._wrap = wrap
        self._headers = _check_headers(headers or {})
        self._timeout = timeout
        self._rate = rate
        self._failed = Path(failed) if failed is not None else None
        self._checkpoint = Path(checkpoint) if checkpoint is not None else None
        self._resume = resume
        self._job_id = job_id
        self._hooks = hooks or UploadHooks()
        self._ssl = ssl
        self._token_skew = token_skew
        self._grace = grace
        self._signals = install_signal_handlers
        self._state = _State.UNOPENED
        self._session: aiohttp.ClientSession | None = None
        self._tokens: TokenManager | None = None
        self._owns_tokens = False
        self._gate = PauseGate()

    def __repr__(self) -> str:
        return (
            f"Uploader(url={self.url!r}, concurrency={self._concurrency}, state={self._state.name})"
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
        connector = aiohttp.TCPConnector(
            limit=self._concurrency,
            ssl=self._ssl if self._ssl is not None else True,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            raise_for_status=False,
        )
        if isinstance(self._auth, TokenManager):
            self._tokens = self._auth
        elif self._auth is not None:
            self._tokens = TokenManager(
                self._auth,
                session=self._session,
                skew=self._token_skew,
                store=self._token_store,
                # --timeout bounds token requests too (a hung token endpoint, exit 3)
                fetch_timeout=min(self._timeout, 30.0),
                # a token endpoint down (5xx, 429, timeouts) is retried for this long
                max_fetch_time=self._retry.auth_retry_time,
                revoke_on_close=self._revoke_on_close,
            )
            self._owns_tokens = True
        self._state = _State.OPEN

    async def aclose(self) -> None:
        """Revoke the token if asked, close connections. Idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        try:
            if self._tokens is not None and self._owns_tokens:
                await self._tokens.aclose()
        finally:
            if self._session is not None:
                await self._session.close()

    async def upload(self, source: SourceLike) -> RunSummary:
        """Upload every record of ``source``; returns the run summary.

        ``source`` is a path (.jsonl/.ndjson/.csv), ``"-"`` for stdin, a source object, or
        any sync or async iterable of dicts or of raw JSON bytes. Records that cannot be
        delivered are written to the dead-letter file; authentication failure raises
        :class:`AuthError`; a stop by signal drains, checkpoints and raises
        :class:`Interrupted`.
        """
        if self._state is not _State.OPEN:
            if self._state is _State.CLOSED:
                raise RuntimeError("Cannot upload with an Uploader that has been closed.")
            await self._open()
        assert self._session is not None
        src = open_source(source)  # SourceError here, before any request
        counters = Counters()
        dead = DeadLetterFile(self._failed_path(src), lines=src.kind in ("jsonl", "csv", "stdin"))
        ckpt = self._open_checkpoint(src)
        start_seq = 0
        if ckpt is not None:
            ckpt.before_save = dead.sync
            job_id = ckpt.job_id
            if ckpt.previous is not None:
                ckpt.previous.restore_counters(counters)
                mark = ckpt.tracker.watermark
                start_seq = mark.next_seq
                src = _resume_source(src, position=mark.position, offset=mark.offset, key=mark.key)
                log.info(
                    "resuming job %s after position %d (%d records already sent)",
                    job_id,
                    mark.position,
                    counters.records_sent,
                )
        else:
            job_id = self._job_id or uuid.uuid4().hex
        if ckpt is not None:
            # durable before the first request: a crash before the first periodic save must
            # resume this job id (the same Idempotency-Keys), not start one whose keys the
            # server cannot deduplicate; and an unwritable checkpoint stops us before sending
            await ckpt.final_save(counters, complete=False)
            assert self._checkpoint is not None
            acks = AckLog(self._checkpoint)
            acks.start(job_id)
            ledger: AckLoggingLedger | None = AckLoggingLedger(ckpt, acks, counters)
        else:
            ledger = None
        auth_base = self._tokens.stats.requests if self._tokens is not None else 0
        auth_before = counters.auth_requests
        sender = Sender(
            self._session,
            self.url,
            tokens=self._tokens,
            encoder=self._encoder,
            job_id=job_id,
            retry=self._retry,
            counters=counters,
            hooks=self._hooks,
            headers=self._headers,
            gate=self._gate,
            rate=RateLimiter(self._rate) if self._rate else None,
        )
        batches = make_batches(
            _count_bytes(src.blocks(), counters),
            self._limits,
            linger=src.kind in ("stdin", "iterable"),
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
            hooks=self._hooks,
            ledger=ledger,
        )
        self._hooks.on_start(counters, total_bytes=src.size)
        started = time.monotonic()
        interrupted = False
        try:
            with self._signal_handlers(pipeline):
                await pipeline.run()
            interrupted = pipeline.stopped
        finally:
            if self._tokens is not None:
                counters.auth_requests = auth_before + self._tokens.stats.requests - auth_base
            # the dead-letter file is made durable before the checkpoint that covers it
            dead.close()
            if ckpt is not None and ledger is not None:
                complete = not pipeline.stopped and ckpt.tracker.in_flight == 0
                saved = False
                try:
                    await ckpt.final_save(counters, complete=complete)
                    saved = True
                finally:
                    ledger.acks.close(delete=saved)  # the save covers every entry
            summary = RunSummary.from_counters(
                counters,
                duration_s=time.monotonic() - started,
                job_id=job_id,
                interrupted=interrupted or pipeline.stopped,
            )
            self._hooks.on_finish(summary)
        if interrupted:
            raise Interrupted(
                f"interrupted after {summary.records_sent} records were delivered"
                + ("; run again to resume from the checkpoint" if self._checkpoint else "")
            )
        return summary

    def _open_checkpoint(self, src: Source) -> Checkpointer | None:
        if self._checkpoint is None:
            return None
        settings: dict[str, str | int | float | bool | None] = {
            "batch_size": self._limits.max_records,
            "max_batch_bytes": self._limits.max_bytes,
            "body": self._encoder.format,
            "wrap": self._wrap,
        }
        if src.kind in ("jsonl", "csv"):
            start, stop = getattr(src, "start_offset", 0), getattr(src, "stop_offset", None)
            if start or stop is not None:  # a byte range of the file (a shard) is its own job
                settings["byte_range"] = f"{start}-{'' if stop is None else stop}"
            fingerprint = Fingerprint.of_file(src.name, settings)
        else:
            # an SQL source is its URL (without password), query and key
            fingerprint = Fingerprint.of_stream(getattr(src, "identity", src.name), settings)
        store = CheckpointStore(self._checkpoint)
        if self._resume:
            # the watermark of a keyed source (SQL) carries a key the ack log does not hold
            keyless = src.kind in ("jsonl", "csv", "stdin", "iterable", "replay")
            fold_ack_log(store, AckLog(self._checkpoint), advance=keyless)
        return Checkpointer.open(store, fingerprint, resume=self._resume)

    def _failed_path(self, src: Source) -> Path:
        if self._failed is not None:
            return self._failed
        if src.kind in ("jsonl", "csv"):
            return Path(f"{src.name}.failed.jsonl")
        return Path("asyncsync-failed.jsonl")

    @contextlib.contextmanager
    def _signal_handlers(self, pipeline: Pipeline) -> Iterator[None]:
        """First SIGINT/SIGTERM drains (bounded by ``grace``); a second one aborts."""
        if not self._signals:
            yield
            return
        loop = asyncio.get_running_loop()
        hits = 0

        def on_signal() -> None:
            nonlocal hits
            hits += 1
            if hits == 1:
                pipeline.stop()
                loop.call_later(self._grace, pipeline.abort)
            else:
                pipeline.abort()

        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, on_signal)
                installed.append(sig)
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)


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


def _resume_source(src: Source, *, position: int, offset: int | None, key: Any = None) -> Source:
    """``src`` from just after ``position``: by seeking for files, by skipping otherwise."""
    if position <= 0:
        return src
    if isinstance(src, SqlSource) and key is not None:
        return src.resumed(position=position, key=key)  # one index seek, no re-reading
    if offset is not None and src.kind in ("jsonl", "csv"):
        # JSONL: the line after the watermark's last record is the next one; CSV rows may
        # span lines, so let the source count them
        start_line = position + 1 if src.kind == "jsonl" else None
        return open_source(
            src.name,
            kind=src.kind,
            start_offset=offset,
            start_line=start_line,
            stop_offset=getattr(src, "stop_offset", None),  # a shard ends where it ended
        )
    return _SkipThrough(src, position)


class _SkipThrough:
    """A source without offsets (stdin, iterables), resumed by skipping records by position."""

    def __init__(self, inner: Source, position: int) -> None:
        self._inner = inner
        self._through = position
        self.name = inner.name
        self.size = inner.size
        self.kind = inner.kind

    async def blocks(self) -> AsyncIterator[RecordBlock]:
        through = self._through
        async for block in self._inner.blocks():
            if block.positions and block.positions[-1] <= through:
                block.records, block.positions = [], []
            elif block.positions and block.positions[0] <= through:
                cut = bisect.bisect_right(block.positions, through)
                block.records, block.positions = block.records[cut:], block.positions[cut:]
            block.rejects = [r for r in block.rejects if r.position > through]
            yield block


def _check_headers(headers: Mapping[str, str]) -> dict[str, str]:
    reserved = {"authorization", "idempotency-key", "content-length"}
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not name or any(c in name for c in " :\r\n") or any(c in value for c in "\r\n"):
            raise ConfigError(f"invalid header {name!r}", field="header")
        if name.lower() in reserved:
            raise ConfigError(f"header {name!r} is set by asyncsync itself", field="header")
        out[name] = value
    return out


async def upload(source: SourceLike, url: str, **options: Any) -> RunSummary:
    """One call: open an :class:`Uploader` with ``options``, upload ``source``, close."""
    async with Uploader(url, **options) as up:
        return await up.upload(source)
