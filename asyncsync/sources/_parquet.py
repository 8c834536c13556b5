"""Parquet files (pyarrow, extra ``parquet``): one JSON object per row, streamed by row group.

Rows are read one record batch at a time (``ParquetFile.iter_batches``, one row group per
call), never the whole file: memory holds a few batches (each about 2 MiB of decoded
columns: 1 024 to 16 384 rows) and their JSON, plus pyarrow's buffers for the row group
being read. Each row becomes one JSON object with the schema's column names, its values
encoded as the SQL sources encode theirs (:mod:`.sql._encoding`), converted column by column
(:mod:`._arrow_json`). A file of 8 MiB or more, on a machine with two cores or more, is
decoded and encoded in a helper process (:mod:`._parquet_helper`, started by the
constructor, so that it imports pyarrow while this process does): this process only cuts the
records out of the newline-ended JSON it sends, as the JSON Lines reader cuts lines. It
decodes row groups itself while the helper is not ready (after waiting up to a second for
it), and from the first row not delivered if the helper stops. Otherwise a decoding thread
decodes each batch and joins its JSON with Arrow kernels (mostly without the GIL), up to two
batches ahead, while the reading thread cuts the records out. The records are the same bytes
either way.

==================================  ==========================================================
Arrow / Parquet type                JSON
==================================  ==========================================================
null, bool, integers, floats        ``null``, ``true``/``false``, numbers (NaN, ±inf: ``null``)
decimal128/256                      a string in plain notation, every digit kept: ``"10.50"``
string, large_string                a string
binary, large_binary, fixed binary  a base64 string
date32/64                           ``"2026-11-28"``
timestamp (no time zone)            ``"2026-11-28T12:00:00"`` (naive stays naive)
timestamp with a time zone          ``"2026-11-28T12:00:00+00:00"`` (offset always written)
time32/64                           ``"12:00:00"``, ``"12:00:00.500000"``
duration                            an ISO-8601 duration: ``"PT1H30M"``
list, large_list, fixed_size_list   a list, each element by these rules
struct                              an object
map with string keys                an object
dictionary-encoded columns          as their value type
==================================  ==========================================================

Any other type (a map with non-string keys, unions, intervals, half floats, extension types,
nanosecond timestamps that a microsecond value cannot hold) is a :class:`SourceError` naming
the file and the column, raised by the constructor: before anything is sent.

Positions are row numbers (1-based, in file order). A resume seeks to the row group holding
the next row (the footer has every group's row count) and skips the rows before it within
that group: at most one row group is read again. ``--shard K/N`` and ``--processes N`` split
the file by row group: shard K gets a contiguous run of groups, balanced by row count, and
numbers its rows as the whole file does (a file with fewer row groups than N leaves some
shards empty).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import logging
import os
import queue
import threading
import weakref
from collections.abc import AsyncIterator, Generator, Mapping
from functools import partial
from itertools import accumulate
from pathlib import Path
from typing import Any, Final

import orjson

from .._exceptions import SourceError
from .._records import RecordBlock, Rejected
from ..checkpoint._state import Fingerprint, SettingValue
from ._arrow_json import ArrowJsonEncoder
from ._parquet_helper import READY_WAIT, ParquetHelper
from ._prevalidate import worth_it
from ._protocol import Source, SourceBase
from ._reading import _check_path, _read_ahead, _Worker, file_fingerprint

logger = logging.getLogger("asyncsync.sources")

__all__ = ["ParquetSource", "plan_row_group_shards"]

#: rows per record batch: about this many bytes of decoded column data, within the bounds
BATCH_BYTES: Final = 2 << 20
MIN_BATCH_ROWS: Final = 1024
MAX_BATCH_ROWS: Final = 16384


def _file_size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _close_helpers(helpers: list[ParquetHelper]) -> None:
    while helpers:
        helpers.pop().close()


def _pq() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SourceError("Parquet input needs pyarrow: pip install 'asyncsync[parquet]'") from None
    return pq


def _default(obj: Any) -> Any:
    from .sql._encoding import _default as sql_default

    return sql_default(obj)


def _unsupported(t: Any) -> str | None:
    """Why the Arrow type ``t`` has no JSON encoding here (None: it has one)."""
    import pyarrow.types as pt

    if pt.is_dictionary(t):
        return _unsupported(t.value_type)
    if pt.is_float16(t):
        return "half floats (float16)"
    if pt.is_timestamp(t) and t.unit == "ns":
        return "nanosecond timestamps (a microsecond ISO-8601 value cannot hold them)"
    if pt.is_time64(t) and t.unit == "ns":
        return "nanosecond times"
    if pt.is_duration(t) and t.unit == "ns":
        return "nanosecond durations"
    if (
        pt.is_null(t)
        or pt.is_boolean(t)
        or pt.is_integer(t)
        or pt.is_floating(t)
        or pt.is_decimal(t)
        or pt.is_string(t)
        or pt.is_large_string(t)
        or pt.is_binary(t)
        or pt.is_large_binary(t)
        or pt.is_fixed_size_binary(t)
        or pt.is_date(t)
        or pt.is_timestamp(t)
        or pt.is_time(t)
        or pt.is_duration(t)
    ):
        return None
    if pt.is_list(t) or pt.is_large_list(t) or pt.is_fixed_size_list(t):
        return _unsupported(t.value_type)
    if pt.is_struct(t):
        for i in range(t.num_fields):
            if (why := _unsupported(t.field(i).type)) is not None:
                return why
        return None
    if pt.is_map(t):
        if not (pt.is_string(t.key_type) or pt.is_large_string(t.key_type)):
            return f"maps with {t.key_type} keys (a JSON object needs string keys)"
        return _unsupported(t.item_type)
    return f"type {t}"


def _has_maps(t: Any) -> bool:
    import pyarrow.types as pt

    if pt.is_map(t):
        return True
    if pt.is_dictionary(t):
        return _has_maps(t.value_type)
    if pt.is_list(t) or pt.is_large_list(t) or pt.is_fixed_size_list(t):
        return _has_maps(t.value_type)
    if pt.is_struct(t):
        return any(_has_maps(t.field(i).type) for i in range(t.num_fields))
    return False


def _maps_to_dicts(value: Any, t: Any) -> Any:
    """pyarrow gives a map as a list of (key, value) pairs: an object in JSON."""
    import pyarrow.types as pt

    if value is None:
        return None
    if pt.is_dictionary(t):
        return _maps_to_dicts(value, t.value_type)
    if pt.is_map(t):
        return {k: _maps_to_dicts(v, t.item_type) for k, v in value}
    if pt.is_list(t) or pt.is_large_list(t) or pt.is_fixed_size_list(t):
        return [_maps_to_dicts(v, t.value_type) for v in value]
    if pt.is_struct(t):
        return {
            t.field(i).name: _maps_to_dicts(value[t.field(i).name], t.field(i).type)
            for i in range(t.num_fields)
        }
    return value


def _column_values(arr: Any, t: Any) -> list[Any]:
    """The Python values of one column (maps as dicts)."""
    values: list[Any] = arr.to_pylist()
    return [_maps_to_dicts(v, t) for v in values] if _has_maps(t) else values


def _check_schema(path: str, schema: Any) -> None:
    names = schema.names
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise SourceError(
            f"{path}: two columns are named {dup!r}; each becomes a JSON member", path=path
        )
    for field in schema:
        if (why := _unsupported(field.type)) is not None:
            raise SourceError(
                f"{path}: column {field.name!r} ({field.type}): unsupported type: {why} "
                "has no JSON encoding",
                path=path,
            )


class ParquetSource(SourceBase):
    """A Parquet file, or the row groups ``[start_group, stop_group)`` of it (a shard).

    ``first_row`` is the number of the first row of ``start_group`` (counted from the footer
    when omitted); ``skip_through`` skips the rows up to that number (a resume within a
    group). See the module docstring for the encoding.
    """

    kind = "parquet"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        start_group: int = 0,
        stop_group: int | None = None,
        first_row: int | None = None,
        skip_through: int = 0,
        batch_rows: int | None = None,
        shard_range: tuple[int, int | None] | None = None,
        helper: bool | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.name = self.path
        self.state_path: Path | None = Path(self.path)
        _check_path(self.path)
        #: decode in a helper process (None: when the file is large and there are two cores)
        self.helper = helper
        #: the helper started for this source, until :meth:`_rows` takes it (a list: the
        #: finalizer closes what is left in it, not what was handed on)
        self._helpers: list[ParquetHelper] = []
        weakref.finalize(self, _close_helpers, self._helpers)
        if helper if helper is not None else worth_it(_file_size(self.path)):
            # started first: it imports pyarrow while this process does, and is ready sooner
            self._helpers.append(ParquetHelper(self.path))
        try:
            pq = _pq()
            try:
                meta = pq.read_metadata(self.path)
                schema = pq.read_schema(self.path)
            except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                raise SourceError(
                    f"{self.path}: not a readable Parquet file: {exc}", path=self.path
                ) from None
            _check_schema(self.path, schema)
        except BaseException:
            _close_helpers(self._helpers)
            raise
        self.schema = schema
        groups = meta.num_row_groups
        self.group_rows = [meta.row_group(i).num_rows for i in range(groups)]
        self.group_bytes = [meta.row_group(i).total_byte_size for i in range(groups)]
        #: row number (1-based) of each group's first row
        self.group_first = list(accumulate(self.group_rows, initial=1))
        stop = groups if stop_group is None else min(stop_group, groups)
        self.start_group = min(max(0, start_group), stop)
        self.stop_group = stop
        self.first_row = self.group_first[self.start_group] if first_row is None else first_row
        self.skip_through = skip_through
        if batch_rows is None:
            per_row = max(1.0, sum(self.group_bytes) / max(1, sum(self.group_rows)))
            batch_rows = int(
                min(MAX_BATCH_ROWS, max(MIN_BATCH_ROWS, BATCH_BYTES / max(1, per_row)))
            )
        self.batch_rows = batch_rows
        # the range a checkpoint is for: the shard's, kept through resumes
        self.shard_range = shard_range if shard_range is not None else (start_group, stop_group)
        self.size: int | None = sum(self.group_bytes[self.start_group : self.stop_group])
        self._maps = [_has_maps(f.type) for f in schema]
        if not self._helpers:  # made now, before the upload; else only if needed
            self._encoder  # noqa: B018

    @functools.cached_property
    def _encoder(self) -> ArrowJsonEncoder:
        """The JSON encoder: with a helper, this process may never need it (nor the numpy
        and pyarrow compute modules it imports, ~15 MB)."""
        return ArrowJsonEncoder(self.schema, _default, _column_values)

    def resumed(self, *, position: int, offset: int | None = None, key: Any = None) -> Source:
        """From the row group holding row ``position + 1``, skipping the rows before it."""
        if position <= 0:
            return self
        # the group g with group_first[g] <= position + 1 < group_first[g + 1]
        g = bisect.bisect_right(self.group_first, position + 1) - 1
        g = max(self.start_group, min(g, self.stop_group))
        src = ParquetSource(
            self.path,
            start_group=g,
            stop_group=self.stop_group,
            skip_through=position,
            batch_rows=self.batch_rows,
            shard_range=self.shard_range,
            helper=False,  # this one's, if started
        )
        src.helper = self.helper
        src._helpers += self._helpers
        self._helpers.clear()
        return src

    def fingerprint(self, settings: Mapping[str, SettingValue]) -> Fingerprint:
        start, stop = self.shard_range
        if start or stop is not None:
            settings = {**settings, "row_groups": f"{start}-{'' if stop is None else stop}"}
        return file_fingerprint(self.path, 0, None, settings)

    def _rows(self) -> Generator[RecordBlock, None, None]:
        """In the worker thread: one block per record batch.

        With a helper process (:mod:`._parquet_helper`, on the second core), the records
        come as newline-ended JSON and are only cut out here. If it is not ready within
        ``READY_WAIT`` (its start, ~0.3 s, is mostly importing pyarrow), this process
        decodes, a row group at a time, until it is; the helper takes over at the next
        group. If it cannot go on (it failed to start, died, met a row only the row-by-row
        path handles), this process reads on from the first row not delivered yet. Without
        a helper, :meth:`_rows_here`."""
        if self.start_group >= self.stop_group:
            return
        per_row = self._per_row()
        helper = self._helpers.pop() if self._helpers else None  # the constructor's, once
        if helper is None and self.helper:
            helper = ParquetHelper(self.path)
        if helper is None:
            yield from self._rows_here(
                self.start_group, self.stop_group, self.first_row, self.skip_through
            )
            return
        try:
            g, first_row = self.start_group, self.first_row
            wait = READY_WAIT  # once: importing here what the helper imports costs as much
            while g < self.stop_group and not helper.ready(wait):
                wait = 0.0
                if not helper.alive:  # it failed to start: all the rest here, at once
                    yield from self._rows_here(g, self.stop_group, first_row, self.skip_through)
                    return
                yield from self._rows_here(g, g + 1, first_row, self.skip_through)
                g += 1
                first_row = self.group_first[g]
            if g == self.stop_group:
                return
            #: the first row not delivered yet (nor skipped as before the resume point)
            next_row = max(first_row, self.skip_through + 1)
            frames = helper.frames(
                start_group=g,
                stop_group=self.stop_group,
                first_row=first_row,
                skip_through=self.skip_through,
                batch_rows=self.batch_rows,
            )
            for first, rows, count, data in frames:
                bytes_read = int(rows * per_row)
                if data is None:  # before the resume point: nothing to send
                    yield RecordBlock([], [], bytes_read=bytes_read)
                    continue
                records = data.split(b"\n")
                records.pop()  # after the last newline
                if len(records) != count or first != next_row:
                    logger.debug("Parquet helper out of step at row %d; decoding here", first)
                    break
                yield RecordBlock(records, range(first, first + count), bytes_read=bytes_read)
                next_row = first + count
            else:
                if helper.finished:
                    return
        finally:
            helper.close()
        if next_row >= self.group_first[self.stop_group]:
            return
        g = bisect.bisect_right(self.group_first, next_row) - 1
        yield from self._rows_here(
            g, self.stop_group, self.group_first[g], next_row - 1, recount=False
        )

    def _per_row(self) -> float:
        """Bytes of the file per row (for progress)."""
        rows: int = sum(self.group_rows[self.start_group : self.stop_group])
        return float(sum(self.group_bytes[self.start_group : self.stop_group])) / max(1, rows)

    def _rows_here(
        self,
        start_group: int,
        stop_group: int,
        first_row: int,
        skip_through: int,
        *,
        recount: bool = True,
    ) -> Generator[RecordBlock, None, None]:
        """In the worker thread, without a helper: one block per record batch of groups
        ``[start_group, stop_group)``, the rows up to ``skip_through`` skipped (counted as
        read only when ``recount``).

        A second thread decodes the batches and joins each one's JSON (Arrow work, mostly
        without the GIL), up to two batches ahead; this one cuts the records out (Python
        work). So the two halves overlap, and neither waits on the GIL for the other."""
        groups = list(range(start_group, stop_group))
        if not groups:
            return
        dumps = partial(orjson.dumps, default=_default)
        per_row = self._per_row()
        ahead: queue.Queue[Any] = queue.Queue(maxsize=2)
        stop = threading.Event()
        producer = threading.Thread(
            target=self._produce,
            args=(groups, first_row, skip_through, ahead, stop),
            name=f"asyncsync-decode {os.path.basename(self.path)}",
            daemon=True,
        )
        producer.start()
        try:
            while True:
                item = ahead.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                batch, n, first, joined = item
                if batch is None:  # before the resume point: nothing to send
                    yield RecordBlock([], [], bytes_read=int(n * per_row) if recount else 0)
                    continue
                if joined is None:  # a value orjson cannot encode: row by row
                    block = self._encode_rows(batch, first, dumps)
                else:
                    records = self._encoder.cut(joined, batch.num_rows)
                    block = RecordBlock(records, range(first, first + len(records)))
                block.bytes_read = int(n * per_row)
                yield block
        finally:
            stop.set()
            while producer.is_alive():  # unblock a producer waiting to put
                with contextlib.suppress(queue.Empty):
                    ahead.get(timeout=0.05)

    def joined_batches(
        self, groups: list[int], first_row: int, skip_through: int
    ) -> Generator[tuple[Any, int, int, Any], None, None]:
        """``(batch, rows, first row, joined JSON)`` for each record batch of ``groups``
        (``batch`` None before the resume point, ``joined`` None where orjson must go row
        by row): the decoding, in the decoding thread or the helper process."""
        f = _pq().ParquetFile(self.path)
        try:
            row = first_row
            # one thread: decoding columns on pyarrow's pool costs more CPU in all (~15 %
            # here) and hands the GIL back and forth with the event loop; one row group per
            # call: over several, the reader reads ahead (peak RSS 224 -> 148 MB, 2 M rows)
            batches = (
                batch
                for g in groups
                for batch in f.iter_batches(
                    batch_size=self.batch_rows, row_groups=[g], use_threads=False
                )
            )
            for batch in batches:
                n = batch.num_rows
                first = row
                row += n
                if row - 1 <= skip_through:
                    yield None, n, first, None
                    continue
                skip = max(0, skip_through - first + 1)
                if skip:
                    batch = batch.slice(skip)
                    first += skip
                try:
                    joined = self._encoder.join(batch)
                except TypeError:
                    joined = None
                yield batch, n, first, joined
        finally:
            f.close()

    def _produce(
        self,
        groups: list[int],
        first_row: int,
        skip_through: int,
        ahead: queue.Queue[Any],
        stop: threading.Event,
    ) -> None:
        """In the decoding thread: the items of :meth:`joined_batches`, then None; an
        exception instead, if reading fails."""

        def put(item: Any) -> bool:
            while not stop.is_set():
                with contextlib.suppress(queue.Full):
                    ahead.put(item, timeout=0.1)
                    return True
            return False

        try:
            for item in self.joined_batches(groups, first_row, skip_through):
                if not put(item):
                    return
            put(None)
        except BaseException as exc:  # handed to the reading thread
            put(exc)

    def _encode_rows(self, batch: Any, first: int, dumps: Any) -> RecordBlock:
        names = self.schema.names
        types = [field.type for field in self.schema]
        columns = [c.to_pylist() for c in batch.columns]
        for i, is_map in enumerate(self._maps):
            if is_map:
                columns[i] = [_maps_to_dicts(v, types[i]) for v in columns[i]]
        rows = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
        records, positions, rejects = [], [], []
        for pos, r in enumerate(rows, first):
            try:
                records.append(dumps(r))
                positions.append(pos)
            except TypeError as exc:
                rejects.append(Rejected(repr(r)[:65536], pos, f"row {pos}: cannot encode: {exc}"))
        return RecordBlock(records, positions, rejects)

    async def blocks(self) -> AsyncIterator[RecordBlock]:
        worker = _Worker(f"asyncsync-read {os.path.basename(self.path)}")
        it = self._rows()
        try:

            def step() -> tuple[bool, RecordBlock | None]:
                try:
                    return True, next(it)
                except StopIteration:
                    return False, None
                except (OSError, ValueError, OverflowError) as exc:  # a date past 9999
                    raise SourceError(f"{self.path}: read failed: {exc}", path=self.path) from exc

            async with contextlib.aclosing(_read_ahead(worker, step)) as blocks:
                async for block in blocks:
                    yield block
        finally:
            worker.close(it.close)  # in the thread: stops the decoding thread, if still going


def plan_row_group_shards(path: str, n: int) -> list[tuple[int, int, int]]:
    """``n`` shards of whole row groups, contiguous, balanced by rows: each
    ``(start group, stop group, number of its first row)``."""
    src = ParquetSource(path, helper=False)
    total = sum(src.group_rows)
    cum = src.group_first  # group_first[g] - 1 rows before group g
    cuts = [0]
    for i in range(1, n):
        target = i * total / n
        # the group boundary nearest the target, never before the previous cut
        g = bisect.bisect_left(cum, target + 1)
        if g > 0 and abs(cum[g - 1] - 1 - target) <= abs(cum[min(g, len(cum) - 1)] - 1 - target):
            g -= 1
        cuts.append(max(cuts[-1], min(g, len(src.group_rows))))
    stops = [*cuts[1:], len(src.group_rows)]
    return [(start, stop, cum[start]) for start, stop in zip(cuts, stops, strict=True)]
