"""Shards: a file source cut into N byte ranges, each uploaded on its own (``--shard K/N``,
``--processes N``).

:func:`plan_shards` splits a JSON Lines or CSV file into ``n`` contiguous byte ranges
``[start, stop)`` that cover the file exactly, without overlap or gap, each starting at the
start of a record. A :class:`Shard` also carries ``first_line``, the global 1-based number of
the line at ``start``: a shard's reader numbers its lines from there, so positions, dead-letter
``line`` numbers, checkpoints and Idempotency-Keys (derived from positions) are those a
single-process run of the whole file would use.

The plan depends only on the file's bytes and ``n``: every host of an indexed job, and every
re-run of an interrupted one, computes the same shards. It costs one or two sequential passes
over the file at ``bytes.count`` speed (about 1 GB/s from the page cache), plus, for a CSV
file that contains quote characters, one pass through the :mod:`csv` module (below).

**JSON Lines**: a raw newline cannot occur inside a JSON text (it is escaped in strings), so
every physical line start is a record start. Shard ``i`` starts at the first line start at or
after ``i * size / n``.

**CSV**: the header row (the first non-blank row, which may span lines) belongs to every
shard: each shard's reader reads it from the top of the file for its keys, then seeks to its
``start``. Data, from just after the header to the end, is cut likewise, at *row* starts. A
quoted field may contain newlines, so a physical line start is not always a row start:

* a file without any ``"`` after its header (most exports) has no quoted field, so every
  line start is a row start: the boundaries are line starts, found as for JSON Lines;
* otherwise the rows are scanned with the :mod:`csv` module itself, with the dialect the
  reader uses (``strict=False``, the same delimiter), so a boundary is a row start exactly as
  the reader will see it, whatever the quoting (RFC 4180 or not: a stray ``"`` inside an
  unquoted field, text after a closing quote). That pass runs in C (``csv.reader`` over a
  latin-1 text stream that splits lines on ``\\n`` only, as the reader does), at roughly
  50-100 MB/s; quote-parity counting would be faster but is wrong for non-RFC input, which
  would silently split a record in two: correctness first.

As a second line of defence, a CSV reader given a ``stop_offset`` raises a
:class:`~asyncsync.SourceError` when a row runs past it (a boundary inside a quoted field: the
file changed after planning), instead of sending a half row.

Rows (and lines) that cannot be parsed are the reader's business, as in a single-process run:
the planner never rejects input, except what makes the reader fail too (no header row,
a field over ``csv.field_size_limit()``).
"""

from __future__ import annotations

import codecs
import csv
import os
import stat
from collections import deque
from dataclasses import dataclass
from itertools import islice
from typing import IO, TYPE_CHECKING, Final

from .._exceptions import ConfigError, SourceError
from ._compressed import compression_of
from ._open import CSV_EXTENSIONS, JSONL_EXTENSIONS, PARQUET_EXTENSIONS, open_source
from ._protocol import Source

if TYPE_CHECKING:
    from _csv import Reader as _CsvReader

__all__ = ["Shard", "open_shard", "plan_shards", "shard_label", "source_kind"]

CHUNK: Final = 1 << 20
_BOM: Final = codecs.BOM_UTF8


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count``: the bytes ``[start, stop)`` of the file.

    ``start`` is a record start (for CSV: a row start after the header), ``first_line`` the
    global 1-based number of the line that begins there. ``start == stop`` is an empty shard
    (more shards than records).
    """

    index: int
    start: int
    stop: int
    first_line: int
    count: int = 1

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def label(self) -> str:
        """``K/N``, as ``--shard`` takes it."""
        return shard_label(self.index, self.count)


def shard_label(index: int, count: int) -> str:
    return f"{index}/{count}"


def source_kind(path: str | os.PathLike[str]) -> str:
    """``"jsonl"``, ``"csv"`` or ``"parquet"`` from the extension, as :func:`open_source`
    decides. A compressed file cannot be cut into byte ranges: :class:`SourceError`."""
    name = os.fspath(path)
    compression = compression_of(name)
    if compression is not None:
        raise SourceError(
            f"{name}: a {compression}-compressed file cannot be split into shards "
            "(--shard/--processes cut a file by bytes, and a compressed stream cannot be "
            "entered in the middle); upload it in one process, or decompress it first",
            path=name,
        )
    ext = os.path.splitext(name)[1].lower()
    if ext in JSONL_EXTENSIONS:
        return "jsonl"
    if ext in CSV_EXTENSIONS:
        return "csv"
    if ext in PARQUET_EXTENSIONS:
        return "parquet"
    allowed = ", ".join((*JSONL_EXTENSIONS, *CSV_EXTENSIONS, *PARQUET_EXTENSIONS))
    raise SourceError(
        f"{path}: unknown input format {ext or '(no extension)'!r}; use one of {allowed}",
        path=os.fspath(path),
    )


def plan_shards(
    path: str | os.PathLike[str],
    n: int,
    kind: str | None = None,
    *,
    delimiter: str = ",",
) -> list[Shard]:
    """Cut ``path`` into ``n`` shards (see the module docstring); ``kind`` defaults from the
    extension. :class:`SourceError` when the file cannot be read (or a CSV has no header)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"the number of shards must be an integer >= 1, got {n!r}", field="shard")
    name = os.fspath(path)
    kind = source_kind(name) if kind is None else kind
    if kind == "parquet":
        from ._parquet import plan_row_group_shards

        # a shard is a range of row groups; first_line is the number of its first row
        groups = plan_row_group_shards(name, n)
        return [Shard(i, a, b, row, n) for i, (a, b, row) in enumerate(groups)]
    if kind not in ("jsonl", "csv"):
        raise ConfigError(f"kind must be 'jsonl' or 'csv', got {kind!r}", field="kind")
    try:
        if not stat.S_ISREG(os.stat(name).st_mode):  # a FIFO would block open() and never seek
            raise SourceError(f"{name}: cannot be split into shards: not a regular file", path=name)
        with open(name, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if kind == "jsonl":
                return _plan_lines(f, name, n, data_start=0, data_line=1, size=size)
            return _plan_csv(f, name, n, size=size, delimiter=delimiter)
    except FileNotFoundError:
        raise SourceError(f"{name}: no such file", path=name) from None
    except IsADirectoryError:
        raise SourceError(f"{name}: is a directory", path=name) from None
    except OSError as exc:
        raise SourceError(f"{name}: cannot read: {exc.strerror or exc}", path=name) from exc


def open_shard(
    path: str | os.PathLike[str], shard: Shard, kind: str | None = None, **options: object
) -> Source:
    """The source reading exactly ``shard`` of ``path``, numbering lines globally."""
    return open_source(
        path,
        kind=kind or source_kind(path),
        start_offset=shard.start,
        start_line=shard.first_line,
        stop_offset=shard.stop,
        **options,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------------------------
# line starts


def _targets(data_start: int, size: int, n: int) -> list[int]:
    """The ideal cut points of shards 1..n-1, spread evenly over the data bytes."""
    span = size - data_start
    return [data_start + i * span // n for i in range(1, n)]


def _next_line_start(f: IO[bytes], offset: int, size: int) -> int:
    """The first line start at or after ``offset`` (``size`` when there is none)."""
    if offset <= 0:
        return 0
    f.seek(offset - 1)
    pos = offset - 1
    while pos < size:
        chunk = f.read(CHUNK)
        if not chunk:
            break
        nl = chunk.find(b"\n")
        if nl >= 0:
            return pos + nl + 1
        pos += len(chunk)
    return size


def _count(f: IO[bytes], start: int, stop: int, what: bytes) -> int:
    """Occurrences of the byte ``what`` in ``[start, stop)``."""
    f.seek(start)
    left = stop - start
    n = 0
    while left > 0:
        chunk = f.read(min(CHUNK, left))
        if not chunk:
            break
        n += chunk.count(what)
        left -= len(chunk)
    return n


def _shards(cuts: list[int], lines: list[int], size: int) -> list[Shard]:
    """Shards from the n start offsets and their line numbers."""
    n = len(cuts)
    stops = [*cuts[1:], size]
    return [
        Shard(i, start, stop, line, n)
        for i, (start, stop, line) in enumerate(zip(cuts, stops, lines, strict=True))
    ]


def _number(f: IO[bytes], cuts: list[int], first: int, first_line: int) -> list[int]:
    """The line numbers at the (ascending) offsets ``cuts``, counting on from the line
    ``first_line`` that starts at offset ``first``."""
    lines = []
    at, line = first, first_line
    for cut in cuts:
        line += _count(f, at, cut, b"\n")
        at = cut
        lines.append(line)
    return lines


def _plan_lines(
    f: IO[bytes], name: str, n: int, *, data_start: int, data_line: int, size: int
) -> list[Shard]:
    """Boundaries at line starts: shard ``i`` starts at the first line start at or after its
    target. Every line start after ``data_start`` must be a record start."""
    cuts = [data_start]
    for target in _targets(data_start, size, n):
        cuts.append(max(cuts[-1], _next_line_start(f, target, size)))
    return _shards(cuts, _number(f, cuts, data_start, data_line), size)


# --------------------------------------------------------------------------------------------
# CSV


def _open_text(name: str) -> IO[str]:
    """The file as the CSV reader sees its structure: lines split on ``\\n`` alone, decoded
    latin-1 (any byte is one character, and every ASCII-compatible encoding puts quotes,
    delimiters and line ends on the same bytes), past a UTF-8 BOM (the reader decodes it
    away, and a quote right after it opens a quoted field)."""
    text = open(name, encoding="latin-1", newline="\n")  # noqa: SIM115 - the caller closes
    if text.read(len(_BOM)) != _BOM.decode("latin-1"):
        text.seek(0)
    return text


def _plan_csv(f: IO[bytes], name: str, n: int, *, size: int, delimiter: str) -> list[Shard]:
    with _open_text(name) as text:
        reader = csv.reader(text, delimiter=delimiter, strict=False)
        try:
            # the header: the first non-blank row, as the reader takes it
            for row in reader:
                if row:
                    break
            else:
                raise SourceError(f"{name}: empty CSV file (no header row)", path=name)
            data_line = reader.line_num + 1
            data_start = _line_offsets(f, [data_line], size)[0]
            if _count(f, data_start, size, b'"') == 0:
                # no quoted field: every line start is a row start
                return _plan_lines(
                    f, name, n, data_start=data_start, data_line=data_line, size=size
                )
            # lines where the ideal cuts fall, then the first row starting on or after each
            starts = [data_start]
            for target in _targets(data_start, size, n):
                starts.append(max(starts[-1], _next_line_start(f, target, size)))
            want = _number(f, starts, data_start, data_line)[1:]
            got = _row_starts(reader, want, data_line)
        except csv.Error as exc:
            line = reader.line_num
            raise SourceError(f"{name} line {line}: {exc}", path=name, line=line) from exc
    lines = [data_line, *got]
    return _shards(_line_offsets(f, lines, size), lines, size)


def _row_starts(reader: _CsvReader, want: list[int], first: int) -> list[int]:
    """For each line number in ``want`` (ascending), the first line on or after it where a
    row starts; past the last row, one more than the file's lines (its end).

    Rows are skipped in C (``islice``), never past a wanted line by more than the rows it
    takes: the skip is a fraction of the lines left to the target, divided by the most lines
    a row has taken so far.
    """
    out: list[int] = []
    taken = 0  # rows consumed since the header
    done = False
    for line in want:
        while not done and reader.line_num + 1 < line:
            gap = line - (reader.line_num + 1)
            lines_per_row = max(1, -(-(reader.line_num - first + 1) // max(1, taken)))
            skip = max(1, gap // (2 * lines_per_row))
            before = reader.line_num
            deque(islice(reader, skip), maxlen=0)
            taken += skip
            if reader.line_num == before:  # the end of the file
                done = True
        out.append(reader.line_num + 1)
    return out


def _line_offsets(f: IO[bytes], lines: list[int], size: int) -> list[int]:
    """The offsets where the (ascending, 1-based) ``lines`` start; ``size`` past the end."""
    out: list[int] = []
    f.seek(0)
    pos = 0  # offset of the chunk
    seen = 0  # newlines before the chunk
    chunk = b""
    for line in lines:
        need = line - 1  # newlines before the line
        if need == 0:
            out.append(0)
            continue
        while True:
            here = chunk.count(b"\n")
            if seen + here >= need:
                break
            seen += here
            pos += len(chunk)
            chunk = f.read(CHUNK)
            if not chunk:
                break
        if not chunk:
            out.append(size)
            continue
        at = -1
        for _ in range(need - seen):
            at = chunk.index(b"\n", at + 1)
        # keep the chunk from this line on, so later lines count from here
        seen = need
        pos += at + 1
        chunk = chunk[at + 1 :]
        out.append(pos)
    return out
