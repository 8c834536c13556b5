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
import dataclasses
import enum
import logging
import os
import signal
import ssl as ssl_module
import struct
import time
import uuid
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp

from ._auth import AuthProvider
from ._batcher import batch as make_batches
from ._body import BodyEncoder
from ._checkpoint import Checkpointer, CheckpointState, CheckpointStore, Fingerprint
from ._config import DEFAULT_LIMITS, DEFAULT_RETRY, BatchLimits, RetryPolicy
from ._deadletter import DeadLetterFile
from ._exceptions import CheckpointError, ConfigError, Interrupted
from ._hooks import UploadHooks
from ._pipeline import Pipeline, default_queue_size
from ._records import Batch, RecordBlock, Rejected
from ._sender import PauseGate, RateLimiter, Sender
from ._sources import Source, open_source
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
                self._auth, session=self._session, skew=self._token_skew, store=self._token_store
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
                src = _resume_source(src, position=mark.position, offset=mark.offset)
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
            acks = _AckLog(self._checkpoint)
            acks.start(job_id)
            ledger: _AckLoggingLedger | None = _AckLoggingLedger(ckpt, acks, counters)
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
            fingerprint = Fingerprint.of_stream(src.name, settings)
        store = CheckpointStore(self._checkpoint)
        if self._resume:
            # the watermark of a keyed source (SQL) carries a key the ack log does not hold
            keyless = src.kind in ("jsonl", "csv", "stdin", "iterable", "replay")
            _fold_ack_log(store, _AckLog(self._checkpoint), advance=keyless)
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


def _resume_source(src: Source, *, position: int, offset: int | None) -> Source:
    """``src`` from just after ``position``: by seeking for files, by skipping otherwise."""
    if position <= 0:
        return src
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


#: one acknowledged batch: seq, first and last position, end offset (-1: none), records,
#: then the run's batches, requests, retries and bytes sent at that moment; then a CRC-32
_ACK = struct.Struct("<9q")


class _AckLog:
    """Batches acknowledged since the last checkpoint save, so a crash re-sends only those
    that were in flight.

    The checkpoint is saved durably (fsync, rename) once per interval; between saves every
    acknowledged batch is appended here at once, without fsync (76 bytes, ~1-2 µs): the page
    cache outlives the process (SIGKILL, OOM kill, a crash) though not the machine, and after
    a power loss the last saved checkpoint is consistent too (it re-sends more). A resumed run
    folds these entries into the checkpoint before opening it (:func:`_fold_ack_log`).

    Two files take turns so that neither grows: just before a periodic save takes its
    snapshot, appends move to the other file, truncated, but only once a save that started
    after the previous switch has completed, so that every entry it held is in a saved
    checkpoint. Each file starts with the job id; another job's file is ignored. Dead-lettered
    batches are not logged: their dead letters are durable only at the next save.
    """

    def __init__(self, checkpoint: Path) -> None:
        self.paths = tuple(checkpoint.with_name(f"{checkpoint.name}.acks{i}") for i in (0, 1))
        self._header = b""
        self._fd: int | None = None
        self._active = 0
        self._saves_at_switch = -1

    def read(self, job_id: str) -> list[tuple[int, ...]]:
        """This job's entries in both files; a torn or damaged entry is left out."""
        header = job_id.encode() + b"\n"
        size = _ACK.size + 4
        entries: list[tuple[int, ...]] = []
        for path in self.paths:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise CheckpointError(f"cannot read {path}: {exc.strerror}") from exc
            if not data.startswith(header):
                continue
            for i in range(len(header), len(data) - size + 1, size):
                body = data[i : i + _ACK.size]
                if zlib.crc32(body).to_bytes(4, "little") == data[i + _ACK.size : i + size]:
                    entries.append(_ACK.unpack(body))
        return entries

    def start(self, job_id: str) -> None:
        """A fresh log for ``job_id`` (after the checkpoint that holds the old one is saved)."""
        self._header = job_id.encode() + b"\n"
        self._discard(self.paths[1])
        self._fd = self._create(self.paths[0])
        self._active = 0

    def append(self, batch: tuple[int, int, int, int, int], c: Counters) -> None:
        body = _ACK.pack(*batch, c.batches, c.requests, c.retries, c.bytes_sent)
        assert self._fd is not None
        try:
            os.write(self._fd, body + zlib.crc32(body).to_bytes(4, "little"))
        except OSError as exc:
            raise CheckpointError(
                f"cannot write {self.paths[self._active]}: {exc.strerror}"
            ) from exc

    def switch(self, saves: int) -> None:
        """Called with no save running, before one starts; ``saves`` completed so far."""
        if saves <= self._saves_at_switch or self._fd is None:
            return  # the other file may hold entries no completed save covers yet
        fd = self._create(self.paths[1 - self._active])
        os.close(self._fd)
        self._fd, self._active, self._saves_at_switch = fd, 1 - self._active, saves

    def close(self, *, delete: bool) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if delete:
            for path in self.paths:
                self._discard(path)

    def _create(self, path: Path) -> int:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
            os.write(fd, self._header)
        except OSError as exc:
            raise CheckpointError(f"cannot write {path}: {exc.strerror}") from exc
        return fd

    @staticmethod
    def _discard(path: Path) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CheckpointError(f"cannot delete {path}: {exc.strerror}") from exc


def _fold_ack_log(store: CheckpointStore, acks: _AckLog, *, advance: bool = True) -> None:
    """Save the checkpoint with the batches its ack log says were acknowledged after it.

    The watermark moves over those that follow it without a gap (as the run's tracker would
    have, unless that passes a line whose dead letter may not be durable, or not ``advance``);
    the others join ``settled_beyond`` (a resume skips them, re-forming the same
    batches); their records join the counters. Idempotent: an entry the checkpoint already
    covers is left out.
    """
    state = store.load()
    if state is None or state.complete:
        return
    entries = acks.read(state.job_id)
    if entries:
        store.save(_folded(state, entries, advance=advance))


def _folded(
    state: CheckpointState, entries: list[tuple[int, ...]], *, advance: bool = True
) -> CheckpointState:
    mark = state.watermark
    ranges = sorted(state.settled_beyond)
    firsts = [first for first, _ in ranges]
    counters = dict(state.counters)
    new: dict[int, tuple[int, ...]] = {}  # seq -> entry
    for entry in entries:
        first, last, records = entry[1], entry[2], entry[4]
        i = bisect.bisect_right(firsts, first) - 1
        if last <= mark.position or (i >= 0 and last <= ranges[i][1]):
            continue  # saved before the checkpoint was: counted in it already
        new[entry[0]] = entry
        for name in ("records_read", "records_sent"):
            counters[name] = counters.get(name, 0) + records
    for column, name in enumerate(("batches", "requests", "retries", "bytes_sent"), 5):
        counters[name] = max(counters.get(name, 0), *(e[column] for e in entries))
    next_seq, position, offset = mark.next_seq, mark.position, mark.offset
    while advance and next_seq in new:
        entry = new[next_seq]
        first, last, records = entry[1], entry[2], entry[4]
        # the watermark may pass a position no record holds (a rejected line) only when its
        # dead letter is durable: saved before the checkpoint was (else a resume re-reads it)
        saved = state.rejected_through
        if first - 1 > max(position, saved) or (last - first + 1 != records and last > saved):
            break
        del new[next_seq]
        next_seq, position, offset = next_seq + 1, last, entry[3] if entry[3] >= 0 else None
    merged: list[tuple[int, int]] = []
    for first, last in sorted([*ranges, *((e[1], e[2]) for e in new.values())]):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
        else:
            merged.append((first, last))
    return dataclasses.replace(
        state,
        watermark=dataclasses.replace(mark, next_seq=next_seq, position=position, offset=offset),
        settled_beyond=tuple(r for r in merged if r[1] > position),
        counters=counters,
    )


class _AckLoggingLedger:
    """The checkpoint as the pipeline's ledger, with each acknowledged batch in the ack log."""

    def __init__(self, ckpt: Checkpointer, acks: _AckLog, counters: Counters) -> None:
        self.ckpt = ckpt
        self.acks = acks
        self._counters = counters
        # seq -> (seq, first, last, end offset or -1, records) of each batch in flight
        self._open: dict[int, tuple[int, int, int, int, int]] = {}

    def skip(self, batch: Batch) -> bool:
        return self.ckpt.skip(batch)

    def skip_reject(self, reject: Rejected) -> bool:
        return self.ckpt.skip_reject(reject)

    def dispatched(self, batch: Batch) -> None:
        self.ckpt.dispatched(batch)
        end = batch.end_offset
        self._open[batch.seq] = (
            batch.seq, batch.positions[0], batch.positions[-1], -1 if end is None else end,
            len(batch),
        )  # fmt: skip

    def settled(self, seq: int, *, delivered: bool) -> None:
        batch = self._open.pop(seq)
        self.ckpt.settled(seq, delivered)
        if delivered:
            self.acks.append(batch, self._counters)

    def rejected_through(self, position: int) -> None:
        self.ckpt.rejected_through(position)

    def due(self) -> bool:
        return self.ckpt.due()

    async def tick(self, counters: Counters) -> None:
        if self.ckpt.due():
            self.acks.switch(self.ckpt.saves)
        await self.ckpt.tick(counters)


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
