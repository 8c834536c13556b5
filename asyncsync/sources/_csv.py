"""CSV files with a header row: each row becomes a JSON object of strings."""

from __future__ import annotations

import codecs
import contextlib
import csv
import os
from collections.abc import (
    AsyncIterator,
    Callable,
    Iterator,
    Mapping,
)
from pathlib import Path
from typing import IO, Any

import orjson

from .._exceptions import ConfigError, SourceError
from .._records import RecordBlock, Rejected
from ..checkpoint._state import Fingerprint, SettingValue
from ._protocol import SkipThrough, Source, SourceBase
from ._reading import (
    DEFAULT_MAX_LINE_BYTES,
    _check_path,
    _check_positive,
    _check_start,
    _range_size,
    _read_ahead,
    _seek_start,
    _Worker,
    file_fingerprint,
)
from ._validate import _RECORD_OFFSETS, _block, _raw_text

__all__ = ["CsvSource"]


class _RowTooLong(Exception):
    pass


class _CsvReader:
    """Runs in the source's worker thread: physical lines in, blocks of records out.

    Lines are read in binary and counted here, so every row has exact byte offsets even when
    quoted fields contain newlines (a text-mode file cannot ``tell()`` while iterating).
    """

    def __init__(
        self, src: CsvSource, worker: _Worker, opener: Callable[[], IO[bytes]] | None = None
    ) -> None:
        self.src = src
        # ``opener``: another binary stream of the file's bytes (a decompressed one)
        self.f = worker.own(opener() if opener is not None else open(src.path, "rb"))  # noqa: SIM115
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


class CsvSource(SourceBase):
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
    has_lines = True

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
        self.state_path: Path | None = Path(self.path)
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

    def resumed(self, *, position: int, offset: int | None = None, key: Any = None) -> Source:
        """Seek to ``offset`` (a row end); rows may span lines, so the line there is counted."""
        if position <= 0:
            return self
        if offset is None:
            return SkipThrough(self, position)
        return CsvSource(
            self.path,
            start_offset=offset,
            stop_offset=self.stop_offset,  # a shard ends where it ended
            delimiter=self.delimiter,
            encoding=self.encoding,
            block_rows=self.block_rows,
            max_row_bytes=self.max_row_bytes,
        )

    def fingerprint(self, settings: Mapping[str, SettingValue]) -> Fingerprint:
        return file_fingerprint(self.path, self.start_offset, self.stop_offset, settings)

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
