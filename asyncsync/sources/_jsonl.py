"""JSON Lines: files (:class:`JsonlSource`) and standard input (:class:`StdinSource`)."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import (
    AsyncIterator,
    Mapping,
)
from itertools import accumulate, repeat
from pathlib import Path
from typing import IO, Any

from .._exceptions import SourceError
from .._records import LineEnds, RecordBlock, Rejected
from ..checkpoint._state import Fingerprint, SettingValue
from ._prevalidate import Prevalidator, worth_it
from ._protocol import SkipThrough, Source, SourceBase
from ._reading import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_MAX_LINE_BYTES,
    _check_path,
    _check_positive,
    _check_start,
    _range_size,
    _read_ahead,
    _reader,
    _seek_start,
    _Worker,
    file_fingerprint,
)
from ._validate import (
    _BOM,
    _RAW_LIMIT,
    _RECORD_OFFSETS,
    _WS,
    _block,
    _find_bad,
    _raw_text,
    _reason,
    _utf8_ok,
)

__all__ = ["JsonlSource", "StdinSource"]


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
        prevalidator: Prevalidator | None = None,
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
        # a helper process checking the same lines on another core (see _prevalidate)
        self._prevalidator = prevalidator

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
            if self._prevalidator is not None:
                # the helper checks UTF-8 too; should it fail, each line is checked alone
                utf8_ok = False
            else:
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

    def carried(self) -> bytes:
        """The start of the line not finished yet (its first bytes, if it is over-long)."""
        return self._preview if self._skipped is not None else b"".join(self._carry)

    def _too_long(self, line: int, size: int, preview: bytes) -> Rejected:
        return Rejected(
            raw=_raw_text(preview[:_RAW_LIMIT]) + ("…" if size > len(preview) else ""),
            position=line,
            line=line,
            reason=f"line {line}: line of {size} bytes exceeds max_line_bytes ({self._max})",
        )

    def _find_bad(self, check: list[bytes], first: int, utf8_ok: bool) -> list[int]:
        """Indexes of the lines of ``check`` (the first is line ``first``) that are not one
        JSON object: the helper's verdict when there is one, each flagged line confirmed here
        (the helper is a filter, not the judge); otherwise checked here."""
        helper = self._prevalidator
        if helper is not None:
            flagged = helper.bad(first, len(check))
            if flagged is not None:
                if not flagged:
                    return flagged
                confirmed = _find_bad([check[i] for i in flagged], utf8_ok=False)
                return [flagged[j] for j in confirmed]
            self._prevalidator = None  # it could not answer: on our own from here
        return _find_bad(check, utf8_ok=utf8_ok)

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
        bad = self._find_bad(check, first, utf8_ok)
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


class JsonlSource(SourceBase):
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
    has_lines = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        start_offset: int = 0,
        start_line: int | None = None,
        stop_offset: int | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        prevalidate: bool | None = None,
    ) -> None:
        _check_positive("block_size", block_size)
        _check_positive("max_line_bytes", max_line_bytes)
        _check_start(start_offset, start_line, stop_offset)
        self.path = os.fspath(path)
        self.prevalidate = prevalidate
        self.name = self.path
        self.state_path: Path | None = Path(self.path)
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

    def resumed(self, *, position: int, offset: int | None = None, key: Any = None) -> Source:
        """Seek to ``offset``: the line after the watermark's last record is the next one."""
        if position <= 0:
            return self
        if offset is None:
            return SkipThrough(self, position)
        return JsonlSource(
            self.path,
            start_offset=offset,
            start_line=position + 1,
            stop_offset=self.stop_offset,  # a shard ends where it ended
            block_size=self.block_size,
            max_line_bytes=self.max_line_bytes,
            prevalidate=self.prevalidate,
        )

    def fingerprint(self, settings: Mapping[str, SettingValue]) -> Fingerprint:
        return file_fingerprint(self.path, self.start_offset, self.stop_offset, settings)

    def _open(self, worker: _Worker) -> tuple[IO[bytes], int]:
        try:
            f = worker.own(open(self.path, "rb", buffering=0))  # noqa: SIM115
        except OSError as exc:
            raise SourceError(
                f"{self.path}: cannot open: {exc.strerror or exc}", path=self.path
            ) from exc
        return f, _seek_start(f, self.path, self.start_offset, self.start_line)

    def _start_helper(self, worker: _Worker, f: IO[bytes], line: int) -> Prevalidator:
        """In the worker thread: the helper process, stopped when the worker closes."""
        helper = Prevalidator(
            f.fileno(),
            start=self.start_offset,
            stop=self.stop_offset,
            start_line=line,
            block_size=self.block_size,
            max_line_bytes=self.max_line_bytes,
        )
        worker.own(helper)
        return helper

    async def blocks(self) -> AsyncIterator[RecordBlock]:
        worker = _Worker(f"asyncsync-read {os.path.basename(self.path)}")
        try:
            f, line = await worker.call(lambda: self._open(worker))
            helper = None
            if self.prevalidate if self.prevalidate is not None else worth_it(self.size):
                helper = await worker.call(lambda: self._start_helper(worker, f, line))
            parser = _LineParser(
                line=line,
                offset=self.start_offset,
                max_line_bytes=self.max_line_bytes,
                bom=self.start_offset == 0,
                prevalidator=helper,
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


class StdinSource(SourceBase):
    """JSON Lines from standard input (or any binary stream), read as data arrives.

    Each read returns what is available (at most ``read_size`` bytes), so a slow producer's
    lines flow through as they come; the batcher's linger then decides when to send.
    Positions are line numbers. The stream is not closed.
    """

    kind = "stdin"
    size: int | None = None
    linger = True
    has_lines = True

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
