"""Sources: where records come from, as blocks of already-encoded JSON objects.

A source is anything with a ``name`` (for messages), a ``size`` (bytes it will read, for an
ETA; ``None`` when unknown), a ``kind`` and ``blocks()``: an async iterator of
:class:`RecordBlock`. Inputs that cannot be sent (malformed, not an object, ragged, too long)
travel in the same blocks as :class:`Rejected`, with their position; the run goes on. An input
that cannot be read *at all* is a :class:`SourceError`, raised by the constructor for a missing
file, so a run fails before it sends anything.

=============  ====================================  =========================================
source         position (1-based)                    resume
=============  ====================================  =========================================
JsonlSource    line number                           ``start_offset`` (+ ``start_line``)
CsvSource      line number where the row starts      ``start_offset`` (+ ``start_line``)
StdinSource    line number                           no
IterableSource index of the item                     no
=============  ====================================  =========================================

JSON Lines are *validated, never parsed into Python objects*: each line must be exactly one
JSON object, and the record sent is the line's own bytes, stripped of the line ending and of
surrounding JSON whitespace. Validation is msgspec decoding into an empty ``Struct`` (it skips
every member, so it checks the whole syntax, and it rejects non-objects in C); UTF-8 is checked
per block, because msgspec does not check it inside strings. ``benchmarks/micro_validate.py``
compares the alternatives. What passes unchanged: duplicate keys, numbers of any size or
exponent, ``\\u0000`` escapes. What is rejected: invalid UTF-8, raw control characters (NUL
included), lone surrogate escapes, nesting deeper than Python's recursion limit allows
(about 900 levels), anything after the object on the same line.

Per JSONL record the hot path makes two bytes objects (the line from ``BytesIO.readlines``,
whose memchr is ~3x faster than ``bytes.split``'s byte loop, and its stripped copy) and no
int: positions are a ``range``, end offsets a :class:`LineEnds` (``benchmarks/micro_jsonl.py``
times each stage).

Blocking reads run in one daemon thread per source (:class:`_Worker`), never on the event loop;
file sources keep one block ahead, so the thread parses while the loop waits on the network.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import csv
import io
import os
import queue
import stat
import sys
import threading
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from itertools import accumulate, islice, repeat
from operator import length_hint
from typing import IO, Any, Final, Protocol, TypeVar, cast, runtime_checkable

import msgspec
import orjson

from .._exceptions import ConfigError, SourceError
from .._records import LineEnds, RecordBlock, Rejected

__all__ = [
    "JSONL_EXTENSIONS",
    "CsvSource",
    "IterableSource",
    "JsonlSource",
    "Source",
    "StdinSource",
    "open_source",
]

T = TypeVar("T")

DEFAULT_BLOCK_SIZE: Final = 1 << 20
DEFAULT_MAX_LINE_BYTES: Final = 64 << 20
JSONL_EXTENSIONS: Final = (".jsonl", ".ndjson", ".json", ".jsonlines")
CSV_EXTENSIONS: Final = (".csv",)

_WS: Final = b" \t\r\n"  # JSON whitespace; bytes.strip() would also eat \x0b and \x0c
_BOM: Final = b"\xef\xbb\xbf"
#: a rejected line longer than this keeps only its start as ``Rejected.raw``
_RAW_LIMIT: Final = 64 * 1024


@runtime_checkable
class Source(Protocol):
    """What the pipeline reads from."""

    name: str
    size: int | None
    kind: str

    def blocks(self) -> AsyncIterator[RecordBlock]: ...


# --------------------------------------------------------------------------------------
# validation


class _AnyObject(msgspec.Struct, gc=False):
    """No fields: decoding skips (and so validates) every member and rejects non-objects.

    ``gc=False``: the instance (discarded at once) is not tracked by the garbage collector,
    a few ns less per line."""


_decode_object: Final = msgspec.json.Decoder(_AnyObject).decode


def _reason(line: bytes) -> str:
    """Why ``line`` (stripped, non-empty, valid UTF-8 or not) is not one JSON object."""
    if b"\x00" in line:
        return "contains a NUL byte"
    try:
        line.decode()
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 at byte {exc.start}"
    try:
        _decode_object(line)
    except msgspec.ValidationError as exc:
        # "Expected `object`, got `array`"
        parts = str(exc).split("`")
        got = parts[3] if len(parts) >= 5 else "another value"
        return f"not a JSON object ({got})"
    except msgspec.DecodeError as exc:
        msg = str(exc).removeprefix("JSON is malformed: ")
        return f"malformed JSON: {msg[:1].lower()}{msg[1:]}"
    except RecursionError:
        return "malformed JSON: nested too deeply"
    return "not a JSON object"  # pragma: no cover - only called for lines that failed


def _find_bad(lines: list[bytes], *, utf8_ok: bool) -> list[int]:
    """Indexes of the lines that are not exactly one JSON object, JSON whitespace around it
    allowed (empty lines included).

    ``utf8_ok`` says the caller checked every line is valid UTF-8 already.
    """
    bad: list[int] = []
    decode = _decode_object
    n = len(lines)
    it = iter(lines)
    while True:
        try:  # map in C, ~20 ns/line faster than a Python loop
            deque(map(decode, it), 0)
            break
        except (msgspec.DecodeError, RecursionError):
            # the line that failed is the last one taken: go on with the rest, still in C
            bad.append(n - length_hint(it) - 1)
    if not utf8_ok:
        seen = set(bad)
        for i, line in enumerate(lines):
            if i not in seen and not line.isascii():
                try:
                    line.decode()
                except UnicodeDecodeError:
                    bad.append(i)
        bad.sort()
    return bad


def _utf8_ok(data: bytes | memoryview, piece: int = 16 * 1024) -> bool:
    """Is ``data`` valid UTF-8? Decoded ``piece`` bytes at a time (a sequence cut at a piece's
    end is decoded with the next piece): one character past U+00FF turns a whole 1 MiB
    decode into a UCS-2 string, 3-5x slower (measured: 460 ns per 280-byte line, 95-170 in
    pieces; Latin-1-only text 20 -> 33)."""
    decode = codecs.utf_8_decode
    n = len(data)
    try:
        if n <= piece:
            decode(data, "strict", True)
            return True
        mv = memoryview(data)
        pos = 0
        while pos < n:
            pos += decode(mv[pos : pos + piece], "strict", pos + piece >= n)[1]
    except UnicodeDecodeError:
        return False
    return True


def _raw_text(data: bytes) -> str:
    if len(data) > _RAW_LIMIT:
        return data[:_RAW_LIMIT].decode("utf-8", "replace") + "…"
    return data.decode("utf-8", "replace")


# --------------------------------------------------------------------------------------
# blocking work off the loop


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.cancelled():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


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
        self._files: list[IO[bytes]] = []  # touched in the thread only
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

    def own(self, f: IO[bytes]) -> IO[bytes]:
        """Close ``f`` when the worker closes (call in the thread, from a job).

        The thread opens and closes the files: a file opened by a call that was abandoned
        (cancelled while a FIFO's ``open`` blocked, say) is still closed, and never while a
        read on it is in progress.
        """
        self._files.append(f)
        return f

    def close(self) -> None:
        """Close the owned files and stop the thread, after the call in progress if any."""
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


# --------------------------------------------------------------------------------------
# JSON Lines


class _LineParser:
    """Turns a byte stream, fed in chunks of any size, into :class:`RecordBlock` s.

    Pure and synchronous. Only complete lines are consumed; the rest is carried to the next
    chunk. A line longer than ``max_line_bytes`` is not kept: once the carry passes the limit
    it is dropped (its first bytes kept as a preview) and the stream is skipped up to the next
    newline, so memory stays under ``max_line_bytes`` plus one chunk whatever the input.
    """

    def __init__(
        self,
        *,
        line: int = 1,
        offset: int = 0,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        bom: bool = True,
        file_offsets: bool = True,
    ) -> None:
        self.line = line  # number of the next line to consume
        self.offset = offset  # stream offset of the first byte not consumed
        self._max = max_line_bytes
        self._bom = bom
        self._file_offsets = file_offsets
        self._carry: list[bytes] = []
        self._carry_len = 0
        self._skipped: int | None = None  # bytes of an over-long line skipped so far
        self._preview = b""

    def feed(self, chunk: bytes) -> RecordBlock | None:
        """Consume the complete lines that ``chunk`` finishes; ``None`` if nothing was consumed."""
        start = self.offset
        rejects: list[Rejected] = []
        if self._skipped is not None:
            nl = chunk.find(b"\n")
            if nl < 0:
                self._skipped += len(chunk)
                self.offset += len(chunk)
                return RecordBlock([], [], bytes_read=len(chunk))
            self._skipped += nl
            rejects.append(self._too_long(self.line, self._skipped, self._preview))
            self.line += 1
            self.offset += nl + 1
            self._skipped = None
            self._preview = b""
            chunk = chunk[nl + 1 :]
        # the lines with their b"\n": BytesIO finds them with memchr, several times faster
        # than bytes.split (a byte-by-byte loop); the strip in _lines drops the newline
        parts = io.BytesIO(chunk).readlines()
        rest = parts.pop() if parts and not chunk.endswith(b"\n") else b""
        carried = self._carry_len
        if parts and self._carry:
            self._carry.append(parts[0])
            parts[0] = b"".join(self._carry)
            self._carry = []
            self._carry_len = 0
        block = None
        if parts:
            # chunk[:body] is the part of this chunk made of complete lines
            body = len(chunk) - len(rest)
            utf8_ok = chunk.isascii() or _utf8_ok(memoryview(chunk)[:body])
            if utf8_ok and carried:
                first = parts[0]
                utf8_ok = first.isascii() or _utf8_ok(first)
            block = self._lines(parts, carried + body, rejects, utf8_ok)
        if rest:
            self._carry.append(rest)
            self._carry_len += len(rest)
            if self._carry_len > self._max:
                self._bom = False
                self._preview = b"".join(self._carry)[:_RAW_LIMIT]
                self._skipped = self._carry_len
                self.offset += self._carry_len
                self._carry = []
                self._carry_len = 0
        if block is None:
            if not rejects and self.offset == start:
                return None
            block = RecordBlock([], [], rejects)
        block.bytes_read = self.offset - start
        return block

    def finish(self) -> RecordBlock | None:
        """End of stream: the last line may lack its newline."""
        start = self.offset
        rejects: list[Rejected] = []
        block = None
        if self._skipped is not None:
            rejects.append(self._too_long(self.line, self._skipped, self._preview))
            self.line += 1
            self._skipped = None
        elif self._carry:
            last = b"".join(self._carry)
            self._carry = []
            self._carry_len = 0
            block = self._lines([last], len(last), rejects, last.isascii() or _utf8_ok(last))
        if block is None:
            if not rejects:
                return None
            block = RecordBlock([], [], rejects)
        block.bytes_read = self.offset - start
        return block

    def _too_long(self, line: int, size: int, preview: bytes) -> Rejected:
        return Rejected(
            raw=_raw_text(preview[:_RAW_LIMIT]) + ("…" if size > len(preview) else ""),
            position=line,
            line=line,
            reason=f"line {line}: line of {size} bytes exceeds max_line_bytes ({self._max})",
        )

    def _lines(
        self, parts: list[bytes], nbytes: int, rejects: list[Rejected], utf8_ok: bool
    ) -> RecordBlock:
        """Validate complete lines ``parts``: each line's bytes with its newline (the last one
        of the stream may lack it), ``nbytes`` in all."""
        base_offset = self.offset
        first = self.line
        self.line += len(parts)
        self.offset += nbytes
        check = parts  # what is validated: the lines, with their line endings
        if self._bom:
            self._bom = False
            head = parts[0].lstrip(_WS)
            if head.startswith(_BOM):
                check = parts.copy()
                check[0] = head[3:]
        too_long: set[int] = set()
        if nbytes > self._max + 1:
            too_long = {i for i, p in enumerate(parts) if len(p) - p.endswith(b"\n") > self._max}
        # JSON whitespace around the object (the newline, a CR) is valid JSON: validate the
        # lines as they are, then strip them
        bad = _find_bad(check, utf8_ok=utf8_ok)
        file_offsets = self._file_offsets
        end_offset = self.offset if file_offsets else None
        if not bad and not too_long:  # the fast path: every line is a record
            # strip() without arguments also strips \x0b and \x0c, which are not JSON
            # whitespace; but a valid line has only JSON whitespace around its object, so
            # this is strip(_WS), 1.5x faster
            lines = list(map(bytes.strip, check))
            # no int per record: consecutive positions, end offsets summed at batch ends only
            line_ends = None
            if file_offsets and _RECORD_OFFSETS:
                line_ends = LineEnds(base_offset, parts, self.offset)
            return _block(lines, range(first, first + len(lines)), rejects, end_offset, line_ends)
        lines = list(map(bytes.strip, check, repeat(_WS)))
        records: list[bytes] = []
        kept: list[int] = []  # indexes of the records in parts
        skip = set(bad) | too_long
        for i, line in enumerate(lines):
            if i not in skip:
                records.append(line)
                kept.append(i)
            elif i in too_long:
                part = parts[i].rstrip(b"\n")
                rejects.append(self._too_long(first + i, len(part), part[:_RAW_LIMIT]))
            elif line:  # blank lines are skipped; they still count in line numbers
                n = first + i
                rejects.append(Rejected(_raw_text(line), n, f"line {n}: {_reason(line)}", n))
        positions = [first + i for i in kept]
        if not records:
            return _block(records, positions, rejects, None, None)
        ends: list[int] | None = None
        if file_offsets:
            # offset just after each line (the last one may lack its newline: end of file)
            after = list(accumulate(map(len, parts), initial=base_offset))
            # resume point: just after the last *record* (rejects after it are read again)
            end_offset = after[kept[-1] + 1]
            if _RECORD_OFFSETS:
                ends = [after[i + 1] for i in kept]
        return _block(records, positions, rejects, end_offset, ends)


#: RecordBlock has per-record end offsets (``offsets``): then file sources fill them, and every
#: batch gets an exact ``end_offset``. Without them, only batches ending a block get one.
_RECORD_OFFSETS: Final = "offsets" in getattr(RecordBlock, "__dataclass_fields__", {})


def _block(
    records: list[bytes],
    positions: Sequence[int],
    rejects: list[Rejected],
    end_offset: int | None,
    offsets: Sequence[int] | None,
) -> RecordBlock:
    if offsets is None:
        return RecordBlock(records, positions, rejects, end_offset)
    block: RecordBlock = cast(Any, RecordBlock)(
        records, positions, rejects, end_offset, offsets=offsets
    )
    return block


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


class JsonlSource:
    """A JSON Lines file: one JSON object per line, sent as the line's own bytes.

    ``start_offset`` (a byte offset at a line start, e.g. a checkpoint's ``end_offset``)
    resumes there; ``start_line`` is the number of the line at that offset (counted from the
    file when omitted). Blank lines are skipped but counted; a UTF-8 BOM at the start and CRLF
    endings are accepted. A line longer than ``max_line_bytes`` is rejected without being held
    in memory. ``RecordBlock.end_offset`` is the offset just after the block's last *record*.
    ``stop_offset`` (a line start, e.g. a shard's end) stops reading there instead of at the
    end of the file.
    """

    kind = "jsonl"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        start_offset: int = 0,
        start_line: int | None = None,
        stop_offset: int | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        _check_positive("block_size", block_size)
        _check_positive("max_line_bytes", max_line_bytes)
        _check_start(start_offset, start_line, stop_offset)
        self.path = os.fspath(path)
        self.name = self.path
        self.start_offset = start_offset
        self.start_line = start_line
        self.stop_offset = stop_offset
        self.block_size = block_size
        self.max_line_bytes = max_line_bytes
        st = self.check()
        self.size: int | None = _range_size(st, start_offset, stop_offset)

    def check(self) -> os.stat_result:
        """Raise :class:`SourceError` unless the file exists and is readable (stat only)."""
        return _check_path(self.path)

    def _open(self, worker: _Worker) -> tuple[IO[bytes], int]:
        try:
            f = worker.own(open(self.path, "rb", buffering=0))  # noqa: SIM115
        except OSError as exc:
            raise SourceError(
                f"{self.path}: cannot open: {exc.strerror or exc}", path=self.path
            ) from exc
        return f, _seek_start(f, self.path, self.start_offset, self.start_line)

    async def blocks(self) -> AsyncIterator[RecordBlock]:
        worker = _Worker(f"asyncsync-read {os.path.basename(self.path)}")
        try:
            f, line = await worker.call(lambda: self._open(worker))
            parser = _LineParser(
                line=line,
                offset=self.start_offset,
                max_line_bytes=self.max_line_bytes,
                bom=self.start_offset == 0,
            )
            limit = None if self.stop_offset is None else self.stop_offset - self.start_offset
            read = _reader(f, self.block_size, self.path, limit=limit)

            def step() -> tuple[bool, RecordBlock | None]:
                # split and validate in the reader thread too: the event loop thread is the
                # bottleneck of a fast upload, and the thread gets the GIL whenever the loop
                # waits on the network (measured: 1.3x records/s at batch 200)
                chunk = read()
                return bool(chunk), (parser.feed(chunk) if chunk else None)

            async with contextlib.aclosing(_read_ahead(worker, step)) as blocks:
                async for block in blocks:
                    yield block
            if (last := parser.finish()) is not None:
                yield last
        finally:
            worker.close()


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


class StdinSource:
    """JSON Lines from standard input (or any binary stream), read as data arrives.

    Each read returns what is available (at most ``read_size`` bytes), so a slow producer's
    lines flow through as they come; the batcher's linger then decides when to send.
    Positions are line numbers. The stream is not closed.
    """

    kind = "stdin"
    size: int | None = None

    def __init__(
        self,
        stream: IO[bytes] | None = None,
        *,
        read_size: int = 64 * 1024,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        _check_positive("read_size", read_size)
        _check_positive("max_line_bytes", max_line_bytes)
        self._stream = stream
        self.name = "<stdin>" if stream is None else str(getattr(stream, "name", "<stream>"))
        self.read_size = read_size
        self.max_line_bytes = max_line_bytes

    async def blocks(self) -> AsyncIterator[RecordBlock]:
        stream = self._stream if self._stream is not None else sys.stdin.buffer
        worker = _Worker("asyncsync-read stdin")
        try:
            parser = _LineParser(max_line_bytes=self.max_line_bytes, file_offsets=False)
            read = _reader(stream, self.read_size, self.name)
            while chunk := await worker.call(read):
                if (block := parser.feed(chunk)) is not None:
                    yield block
            if (block := parser.finish()) is not None:
                yield block
        finally:
            worker.close()


# --------------------------------------------------------------------------------------
# CSV


class _RowTooLong(Exception):
    pass


class _CsvReader:
    """Runs in the source's worker thread: physical lines in, blocks of records out.

    Lines are read in binary and counted here, so every row has exact byte offsets even when
    quoted fields contain newlines (a text-mode file cannot ``tell()`` while iterating).
    """

    def __init__(self, src: CsvSource, worker: _Worker) -> None:
        self.src = src
        self.f = worker.own(open(src.path, "rb"))  # noqa: SIM115
        # with start_offset 0, start_line renumbers the file's first line
        self.lines_read = (src.start_line or 1) - 1 if src.start_offset == 0 else 0
        self.offset = 0
        self.row_lines: list[bytes] = []
        self.row_bytes = 0
        self.at_stop = False  # the parser asked for a line past src.stop_offset
        self.encoding = src.encoding
        self.reader = csv.reader(self._line_iter(), delimiter=src.delimiter, strict=False)
        self.header = self._read_header()
        self.width = len(self.header)
        if src.start_offset > 0:
            line = _seek_start(self.f, src.path, src.start_offset, src.start_line)
            self.offset = src.start_offset
            self.lines_read = line - 1
        self.encoding = src.rest_encoding
        self.reported = src.start_offset  # bytes_read so far (the header counts too)

    def _line_iter(self) -> Iterator[str]:
        readline = self.f.readline
        limit = self.src.max_row_bytes
        stop = self.src.stop_offset
        while True:
            want = limit + 1
            if stop is not None:
                if self.offset >= stop:
                    self.at_stop = True
                    return
                want = min(want, stop - self.offset)
            line = readline(want)
            if not line:
                return
            self.lines_read += 1
            self.offset += len(line)
            self.row_lines.append(line)
            self.row_bytes += len(line)
            if self.row_bytes > limit:
                raise _RowTooLong
            yield line.decode(self.encoding, "surrogateescape")

    def _next_row(self) -> tuple[int, list[str]] | None:
        """(line where the row starts, fields), or None at the end of the file."""
        self.row_lines.clear()
        self.row_bytes = 0
        start = self.lines_read + 1
        try:
            row = next(self.reader)
        except StopIteration:
            return None
        except _RowTooLong:
            raise SourceError(
                f"{self.src.path} line {start}: row longer than {self.src.max_row_bytes} bytes",
                path=self.src.path,
                line=start,
            ) from None
        except csv.Error as exc:
            raise SourceError(
                f"{self.src.path} line {start}: {exc}", path=self.src.path, line=start
            ) from exc
        except OSError as exc:
            raise SourceError(
                f"{self.src.path}: read failed: {exc.strerror or exc}", path=self.src.path
            ) from exc
        if self.at_stop:
            # the parser wanted more of this row past the range's end: a quoted field spans
            # the boundary, so the range was not cut at a row start (the file changed?)
            raise SourceError(
                f"{self.src.path} line {start}: the row starting here runs past the end of "
                f"the range being read (byte {self.src.stop_offset}); the shard plan does not "
                "match the file: was it changed since?",
                path=self.src.path,
                line=start,
            )
        return start, row

    def _read_header(self) -> list[str]:
        while (got := self._next_row()) is not None:
            start, row = got
            if not row:
                continue
            seen: set[str] = set()
            for name in row:
                if name in seen:
                    raise SourceError(
                        f"{self.src.path} line {start}: duplicate column {name!r} in the header",
                        path=self.src.path,
                        line=start,
                    )
                seen.add(name)
            return row
        raise SourceError(f"{self.src.path}: empty CSV file (no header row)", path=self.src.path)

    def read_block(self) -> RecordBlock | None:
        start_offset = self.reported
        records: list[bytes] = []
        positions: list[int] = []
        rejects: list[Rejected] = []
        header, width = self.header, self.width
        dumps = orjson.dumps
        end = None
        ends: list[int] | None = [] if _RECORD_OFFSETS else None
        for _ in range(self.src.block_rows):
            got = self._next_row()
            if got is None:
                break
            line, row = got
            if not row:
                continue  # blank line
            if len(row) != width:
                reason = f"row has {len(row)} fields, header has {width}"
            else:
                try:
                    records.append(dumps(dict(zip(header, row, strict=False))))
                except TypeError:
                    reason = f"invalid {self.encoding} text"
                else:
                    positions.append(line)
                    end = self.offset
                    if ends is not None:
                        ends.append(end)
                    continue
            raw = _raw_text(b"".join(self.row_lines).rstrip(b"\r\n"))
            rejects.append(Rejected(raw, line, f"line {line}: {reason}", line))
        self.reported = self.offset
        if self.offset == start_offset and not records and not rejects:
            return None
        block = _block(records, positions, rejects, end, ends if records else None)
        block.bytes_read = self.offset - start_offset
        return block


class CsvSource:
    """A CSV file with a header row: each row becomes a JSON object of strings.

    Keys come from the first non-blank row (duplicate names are a :class:`SourceError`).
    A row whose field count differs from the header's is rejected with the line it starts on;
    blank lines are skipped. Quoted fields may contain newlines. A position is the line where
    the row starts. ``start_offset`` resumes at a byte offset (a checkpoint's ``end_offset``:
    the end of a row); ``start_line`` is the line number there (counted when omitted). A row
    longer than ``max_row_bytes`` or a field longer than ``csv.field_size_limit()`` cannot be
    skipped safely (the parser may be inside a quoted field): it is a :class:`SourceError`
    naming the line. ``encoding`` must be ASCII-compatible (UTF-8, Latin-1, cp1252, ...).
    ``stop_offset`` (a row start, e.g. a shard's end) stops reading there; a row that runs
    past it (the range was cut inside a quoted field) is a :class:`SourceError`. The header is
    read from the top of the file whatever the range.
    """

    kind = "csv"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        start_offset: int = 0,
        start_line: int | None = None,
        stop_offset: int | None = None,
        delimiter: str = ",",
        encoding: str = "utf-8-sig",
        block_rows: int = 2048,
        max_row_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        _check_positive("block_rows", block_rows)
        _check_positive("max_row_bytes", max_row_bytes)
        _check_start(start_offset, start_line, stop_offset)
        if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '\r\n"':
            raise ConfigError(
                f"delimiter must be one character other than a quote or newline, got {delimiter!r}",
                field="delimiter",
            )
        try:
            name = codecs.lookup(encoding).name
        except LookupError:
            raise ConfigError(f"unknown encoding {encoding!r}", field="encoding") from None
        self.rest_encoding = "utf-8" if name == "utf-8-sig" else encoding
        probe = '\r\n",;\t|ab'
        if probe.encode(self.rest_encoding, "replace") != probe.encode("ascii"):
            raise ConfigError(
                f"encoding {encoding!r} is not ASCII-compatible (UTF-16/32 are not supported)",
                field="encoding",
            )
        self.path = os.fspath(path)
        self.name = self.path
        self.start_offset = start_offset
        self.start_line = start_line
        self.stop_offset = stop_offset
        self.delimiter = delimiter
        self.encoding = encoding
        self.block_rows = block_rows
        self.max_row_bytes = max_row_bytes
        st = self.check()
        self.size: int | None = _range_size(st, start_offset, stop_offset)

    def check(self) -> os.stat_result:
        """Raise :class:`SourceError` unless the file exists and is readable."""
        return _check_path(self.path)

    async def blocks(self) -> AsyncIterator[RecordBlock]:
        worker = _Worker(f"asyncsync-read {os.path.basename(self.path)}")
        try:
            try:
                reader = await worker.call(lambda: _CsvReader(self, worker))
            except OSError as exc:
                raise SourceError(
                    f"{self.path}: cannot open: {exc.strerror or exc}", path=self.path
                ) from exc

            def step() -> tuple[bool, RecordBlock | None]:
                block = reader.read_block()
                return block is not None, block

            async with contextlib.aclosing(_read_ahead(worker, step)) as blocks:
                async for block in blocks:
                    yield block
        finally:
            worker.close()


# --------------------------------------------------------------------------------------
# iterables


def _encode_item(item: Any, index: int) -> bytes | Rejected:
    """One item of an iterable: a dict (or anything orjson encodes to an object) or raw JSON."""
    if isinstance(item, bytes | bytearray | memoryview | str):
        if isinstance(item, str):
            try:
                data = item.encode()
            except UnicodeEncodeError:
                text = item.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
                return Rejected(text, index, f"record {index}: not valid Unicode (surrogates)")
        else:
            data = bytes(item)
        line = data.strip(_WS)
        if not line:
            return Rejected(_raw_text(data), index, f"record {index}: empty")
        if _find_bad([line], utf8_ok=line.isascii()):
            return Rejected(_raw_text(line), index, f"record {index}: {_reason(line)}")
        return line
    try:
        data = orjson.dumps(item)
    except TypeError as exc:
        if "64-bit" not in str(exc):
            return Rejected(_repr(item), index, f"record {index}: cannot encode as JSON: {exc}")
        try:  # orjson stops at 64-bit integers; msgspec encodes any int
            data = msgspec.json.encode(item)
        except (TypeError, ValueError, RecursionError) as exc2:
            return Rejected(_repr(item), index, f"record {index}: cannot encode as JSON: {exc2}")
    if not data.startswith(b"{"):
        return Rejected(
            _repr(item), index, f"record {index}: not a JSON object ({type(item).__name__})"
        )
    return data


def _repr(item: Any) -> str:
    text = repr(item)
    return text if len(text) <= _RAW_LIMIT else text[:_RAW_LIMIT] + "…"


def _encode_items(items: list[Any], first: int) -> RecordBlock:
    """A block from consecutive items at index ``first``: C-speed when they are all alike."""
    records: list[bytes] | None = None
    if items and type(items[0]) is bytes:
        with contextlib.suppress(TypeError):  # not all bytes
            lines = list(map(bytes.strip, items, repeat(_WS)))
            ascii_ok = all(map(bytes.isascii, lines))
            if not _find_bad(lines, utf8_ok=ascii_ok or all(map(_utf8_ok, lines))):
                records = lines
    elif items:
        with contextlib.suppress(TypeError):  # something orjson cannot encode: one by one
            out = list(map(orjson.dumps, items))
            if all(map(bytes.startswith, out, repeat(b"{"))):
                records = out
    if records is not None:
        return RecordBlock(records, range(first, first + len(items)))
    positions: list[int] = []
    block = RecordBlock([], positions)
    for i, item in enumerate(items, first):
        got = _encode_item(item, i)
        if isinstance(got, Rejected):
            block.rejects.append(got)
        else:
            block.records.append(got)
            positions.append(i)
    return block


class IterableSource:
    """Records from a sync or async iterable of dicts, or of raw JSON (bytes or str).

    A dict is encoded with orjson (msgspec for integers past 64 bits); raw JSON is validated
    like a JSONL line and sent as given. What cannot be encoded, or is not an object, is
    rejected with its 1-based index. Items are taken ``block_size`` at a time: lists and
    tuples are sliced in place; other sync iterables (generators, DB cursors, which may
    block) are advanced in a worker thread. An async iterable is drained by a helper task
    into a buffer of at most ``block_size`` items, and each block holds what has arrived, so
    a slow async stream's items reach the batcher (and its linger) as they come.
    """

    kind = "iterable"
    size: int | None = None

    def __init__(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        name: str = "<iterable>",
        block_size: int = 512,
    ) -> None:
        _check_positive("block_size", block_size)
        if isinstance(items, str | bytes | bytearray | memoryview | Mapping) or not isinstance(
            items, Iterable | AsyncIterable
        ):
            raise TypeError(
                f"records must be an iterable of dicts or of JSON bytes/str, "
                f"not {type(items).__name__}"
            )
        self._items = items
        self.name = name
        self.block_size = block_size

    async def blocks(self) -> AsyncIterator[RecordBlock]:
        items = self._items
        n = self.block_size
        if isinstance(items, AsyncIterable):
            inner = self._async_blocks(items)
            try:
                async for block in inner:
                    yield block
            finally:
                await inner.aclose()  # now, not at garbage collection: it owns a task
        elif isinstance(items, list | tuple):
            for start in range(0, len(items), n):
                yield _encode_items(list(items[start : start + n]), start + 1)
        else:
            worker = _Worker("asyncsync-read iterable")
            try:
                it = iter(items)
                index = 1
                while chunk := await worker.call(lambda: list(islice(it, n))):
                    yield _encode_items(chunk, index)
                    index += len(chunk)
            finally:
                worker.close()

    async def _async_blocks(self, items: AsyncIterable[Any]) -> AsyncGenerator[RecordBlock, None]:
        cap = self.block_size
        buf: list[Any] = []
        arrived = asyncio.Event()  # buf is not empty, or the pump is done
        room = asyncio.Event()  # buf has room
        room.set()
        done = False
        error: BaseException | None = None

        async def pump() -> None:
            nonlocal done, error
            try:
                async for item in items:
                    buf.append(item)
                    arrived.set()
                    if len(buf) >= cap:
                        room.clear()
                        await room.wait()
            except Exception as exc:  # re-raised by the consumer, in its own task
                error = exc
            finally:
                done = True
                arrived.set()

        task = asyncio.get_running_loop().create_task(pump(), name=f"asyncsync pump {self.name}")
        index = 1
        try:
            while True:
                await arrived.wait()
                arrived.clear()
                chunk = buf[:]
                buf.clear()
                room.set()
                if chunk:
                    yield _encode_items(chunk, index)
                    index += len(chunk)
                if done and not buf:
                    break
            await task  # re-raises what the pump could not keep (a BaseException)
            if error is not None:
                raise error
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


# --------------------------------------------------------------------------------------


def open_source(
    spec: str | os.PathLike[str] | Source | Iterable[Any] | AsyncIterable[Any],
    *,
    kind: str | None = None,
    start_offset: int = 0,
    start_line: int | None = None,
    stop_offset: int | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    delimiter: str = ",",
    encoding: str = "utf-8-sig",
) -> Source:
    """The source for a CLI argument or a library input.

    ``"-"`` is JSON Lines on stdin; a path is chosen by extension (``kind`` = ``"jsonl"`` or
    ``"csv"`` overrides it); a :class:`Source` is returned as it is; any other iterable or
    async iterable becomes an :class:`IterableSource`. ``start_offset``/``start_line`` and
    ``stop_offset`` read a file's byte range (a resume point, a shard).
    """
    if isinstance(spec, Source):
        return spec
    if isinstance(spec, str | os.PathLike):
        path = os.fspath(spec)
        if path == "-":
            return StdinSource(max_line_bytes=max_line_bytes)
        if kind is None:
            ext = os.path.splitext(path)[1].lower()
            if ext in JSONL_EXTENSIONS:
                kind = "jsonl"
            elif ext in CSV_EXTENSIONS:
                kind = "csv"
            else:
                allowed = ", ".join((*JSONL_EXTENSIONS, *CSV_EXTENSIONS))
                raise SourceError(
                    f"{path}: unknown input format {ext or '(no extension)'!r}; "
                    f"use one of {allowed}, or '-' for JSON Lines on stdin",
                    path=path,
                )
        if kind == "jsonl":
            return JsonlSource(
                path,
                start_offset=start_offset,
                start_line=start_line,
                stop_offset=stop_offset,
                max_line_bytes=max_line_bytes,
            )
        if kind == "csv":
            return CsvSource(
                path,
                start_offset=start_offset,
                start_line=start_line,
                stop_offset=stop_offset,
                delimiter=delimiter,
                encoding=encoding,
                max_row_bytes=max_line_bytes,
            )
        raise ConfigError(f"kind must be 'jsonl' or 'csv', got {kind!r}", field="kind")
    if isinstance(spec, Sequence | Iterable | AsyncIterable):
        return IterableSource(spec)
    raise TypeError(f"cannot read records from {type(spec).__name__}")
