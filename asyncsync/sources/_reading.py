"""Blocking reads off the event loop: one worker thread per source, read-ahead, and the
checks a file source makes before anything is sent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import stat
import subprocess
import threading
from collections.abc import (
    AsyncGenerator,
    Callable,
    Mapping,
)
from typing import IO, Any, Final, Protocol, TypeVar

from .._exceptions import ConfigError, SourceError
from .._records import RecordBlock
from ..checkpoint._state import Fingerprint, SettingValue

__all__ = ["DEFAULT_BLOCK_SIZE", "DEFAULT_MAX_LINE_BYTES"]


T = TypeVar("T")

DEFAULT_BLOCK_SIZE: Final = 1 << 20
DEFAULT_MAX_LINE_BYTES: Final = 64 << 20


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.cancelled():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class _Closeable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=_Closeable)


class _Worker:
    """One daemon thread running one source's blocking calls, one at a time, in order.

    Not a pool thread: a read from a pipe or a terminal may never return, and a pool thread
    (non-daemon) would then keep the process alive at exit, and shielded cancellation would
    hang the caller. Cancelling the awaiting task abandons the call: the thread finishes it
    and drops the result. Calls queued after ``close()`` never run.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop | None, asyncio.Future[Any] | None, Callable[[], Any]]
            | None
        ] = queue.SimpleQueue()
        self._files: list[_Closeable] = []  # touched in the thread only
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[[], T]) -> T:
        return await self.submit(fn)

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``fn`` now and return its future, to await later (a read-ahead).

        A future that is cancelled (or dropped by a caller that stops early, after cancelling
        it) is never settled: the call still runs, its result or error is dropped."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, fut, fn))
        return fut

    def own(self, f: C) -> C:
        """Close ``f`` when the worker closes (call in the thread, from a job).

        The thread opens and closes the files: a file opened by a call that was abandoned
        (cancelled while a FIFO's ``open`` blocked, say) is still closed, and never while a
        read on it is in progress.
        """
        self._files.append(f)
        return f

    def close(self, *last: Callable[[], object]) -> None:
        """Close the owned files and stop the thread, after the call in progress if any;
        ``last`` are calls to make in the thread before that (errors dropped)."""
        for fn in last:
            self._jobs.put((None, None, fn))
        self._jobs.put((None, None, self._close_files))
        self._jobs.put(None)

    def _close_files(self) -> None:
        for f in self._files:
            f.close()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, fut, fn = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn()
            except BaseException as exc:  # delivered to the awaiting task
                error = exc
            if loop is not None and fut is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    loop.call_soon_threadsafe(_settle, fut, result, error)
            del job, loop, fut, fn, result, error


def stop_helper(proc: subprocess.Popen[bytes] | None, out: IO[bytes] | None) -> None:
    """Stop a source's helper process (the JSON Lines validator, the Parquet decoder): kill
    it, reap it, close its stdin and the pipe the source read its answers from."""
    if proc is not None:
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
    if out is not None:
        out.close()


def _check_path(path: str) -> os.stat_result:
    """Fail early and clearly: before any request is sent."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file", path=path) from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}", path=path) from exc
    if stat.S_ISDIR(st.st_mode):
        raise SourceError(f"{path}: is a directory", path=path)
    if not os.access(path, os.R_OK):
        raise SourceError(f"{path}: cannot read: permission denied", path=path)
    return st


def _count_lines(f: IO[bytes], end: int) -> int:
    """Number of newlines in the first ``end`` bytes of ``f`` (leaves f at ``end``)."""
    f.seek(0)
    n = 0
    left = end
    while left > 0:
        data = f.read(min(left, DEFAULT_BLOCK_SIZE))
        if not data:
            break
        n += data.count(b"\n")
        left -= len(data)
    return n


def _seek_start(f: IO[bytes], path: str, offset: int, line: int | None) -> int:
    """Position ``f`` at ``offset`` (a line start) and return the number of that line."""
    if offset == 0:
        return 1 if line is None else line
    size = os.fstat(f.fileno()).st_size
    if offset > size:
        raise SourceError(
            f"{path}: start offset {offset} is past the end of the file ({size} bytes); "
            "was the file replaced since the checkpoint?",
            path=path,
        )
    f.seek(offset - 1)
    if f.read(1) != b"\n" and offset < size:  # at the end, the last line may lack its newline
        raise SourceError(
            f"{path}: start offset {offset} is not at the start of a line; "
            "was the file changed since the checkpoint?",
            path=path,
        )
    if line is None:
        line = _count_lines(f, offset) + 1
    f.seek(offset)
    return line


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value!r}", field=name)


def _check_start(start_offset: int, start_line: int | None, stop_offset: int | None = None) -> None:
    if start_offset < 0:
        raise ConfigError(f"start_offset must be >= 0, got {start_offset}", field="start_offset")
    if start_line is not None:
        _check_positive("start_line", start_line)
    if stop_offset is not None and stop_offset < start_offset:
        raise ConfigError(
            f"stop_offset must be >= start_offset ({start_offset}), got {stop_offset}",
            field="stop_offset",
        )


def _range_size(st: os.stat_result, start_offset: int, stop_offset: int | None) -> int | None:
    """Bytes a file source will read: to ``stop_offset`` (a shard's end) or to the end."""
    if not _is_regular(st):
        return None
    end = st.st_size if stop_offset is None else min(stop_offset, st.st_size)
    return max(0, end - start_offset)


async def _read_ahead(
    worker: _Worker, step: Callable[[], tuple[bool, RecordBlock | None]]
) -> AsyncGenerator[RecordBlock, None]:
    """The blocks of ``step()`` calls in ``worker`` (``(more, block or None)``), one call
    ahead: the next block is read and parsed while this one is batched and sent, so the
    thread works whenever the loop waits on the network (else each waits for the other)."""
    pending: asyncio.Future[tuple[bool, RecordBlock | None]] | None = worker.submit(step)
    try:
        while pending is not None:
            more, block = await pending
            pending = worker.submit(step) if more else None
            if block is not None:
                yield block
    finally:
        if pending is not None:  # stopped early: the call in progress is dropped
            pending.cancel()


def _reader(f: IO[bytes], size: int, path: str, *, limit: int | None = None) -> Callable[[], bytes]:
    """Reads of at most ``size`` bytes; ``limit`` bytes in all (a shard's range), if given."""
    read = getattr(f, "read1", None) or f.read
    left = limit

    def call() -> bytes:
        nonlocal left
        want = size if left is None else min(size, left)
        if want <= 0:
            return b""
        try:
            data = bytes(read(want))
        except OSError as exc:
            raise SourceError(f"{path}: read failed: {exc.strerror or exc}", path=path) from exc
        if left is not None:
            left -= len(data)
        return data

    return call


def _is_regular(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)


def file_fingerprint(
    path: str, start_offset: int, stop_offset: int | None, settings: Mapping[str, SettingValue]
) -> Fingerprint:
    """A file's fingerprint; a byte range of it (a shard) is a job of its own."""
    if start_offset or stop_offset is not None:
        stop = "" if stop_offset is None else stop_offset
        settings = {**settings, "byte_range": f"{start_offset}-{stop}"}
    return Fingerprint.of_file(path, settings)
