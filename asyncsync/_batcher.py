"""The batcher: cuts a stream of record blocks into batches by count, bytes and time.

Cut points depend only on the sequence of records, never on how the source split it into
blocks: a batch is closed when it holds ``max_records`` records, when the next record would
take its body past ``max_bytes``, or (see below) when many rejects separate it from the next
record. So a resumed run, reading the same records from a checkpoint's offset, re-forms the
same batches with the same Idempotency-Keys. Only ``linger`` (for slow streams) cuts by time.

Byte accounting is exact for the body the sender builds: a body of records ``r1..rn`` is
``overhead + sum(len(r) + 1)`` bytes (:attr:`BodyEncoder.overhead`: 1 for a JSON array, 0
for NDJSON), uncompressed. A single record that cannot fit in ``max_bytes`` alone is rejected.

Output order is source order: a ``list[Rejected]`` comes before every batch whose last record
follows it, and after every batch that ends before it. Rejects that follow the open batch's
last record wait for that batch to close; at most ``_MAX_HELD_REJECTS`` of them may wait
(the open batch is closed when more arrive before the next record), so memory is bounded
even by a file of garbage after one good line.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left, bisect_right
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from itertools import accumulate, repeat
from operator import add
from typing import Any, Final

import orjson

from ._config import BatchLimits
from ._records import Batch, LineEnds, RecordBlock, Rejected, compact_positions

__all__ = ["batch"]

#: rejects that may wait behind an open batch before it is closed (see the module docstring)
_MAX_HELD_REJECTS: Final = 1024

Item = Batch | list[Rejected]


class _Cutter:
    """The deterministic part: blocks in, batches and reject lists out. Pure, synchronous."""

    def __init__(self, limits: BatchLimits, *, start_seq: int, overhead: int) -> None:
        self.max_records = limits.max_records
        self.max_bytes = limits.max_bytes
        #: sum(len(r) + 1) of a batch must stay within this
        self.budget = limits.max_bytes - overhead
        self.seq = start_seq
        # the open batch
        self.recs: list[bytes] = []
        self.poss: Sequence[int] = []
        self.cost = 0
        self.end_offset: int | None = None
        self.end_key: Any = None
        self.since: float | None = None  # loop time its first record arrived
        # rejects after the open batch's last record (empty while no batch is open)
        self.held: list[Rejected] = []

    def feed(self, block: RecordBlock, now: float = 0.0) -> list[Item]:
        out: list[Item] = []
        recs, poss, rejs = block.records, block.positions, block.rejects
        offsets: Sequence[int] | None = getattr(block, "offsets", None)
        keys: Sequence[Any] | None = getattr(block, "keys", None)
        n = len(recs)
        if n == 0:
            self._arrive(rejs, out)
            return out
        # block.end_offset is just after the block's last record; it is the batch's end
        # offset only if that record is the batch's last one (not rejected here)
        tail_offset = block.end_offset
        lens = list(map(len, recs))  # the one per-record pass; the rest is per batch
        size = sum(lens) + n
        # cum[j] - cum[i] is the cost of records [i, j). Not needed (nor any oversized
        # record possible) when the open batch and the whole block fit in the byte budget:
        # the usual case, 1 MiB blocks against a 5 MiB limit; then only the count cuts.
        cum: list[int] | None = None
        if self.cost + size > self.budget:
            if max(lens) + 1 > self.budget:
                if lens[-1] + 1 > self.budget:
                    tail_offset = None
                if keys is not None:
                    keep = [len(r) + 1 <= self.budget for r in recs]
                    keys = [k for k, ok in zip(keys, keep, strict=True) if ok]
                recs, poss, lens, offsets, rejs = self._drop_oversized(
                    recs, poss, lens, offsets, rejs
                )
                n = len(recs)
                if n == 0:
                    self._arrive(rejs, out)
                    return out
            cum = list(accumulate(map(add, lens, repeat(1)), initial=0))
        # A JSONL block whose every line is its record and a newline (the last line of a file
        # may lack it): the cost of records [0, j) is then their lines' length, and the end
        # offset of record j - 1 is base + that cost, without summing the lines' lengths again.
        # Each line is at least its record and a newline, so equal totals mean exactly that.
        line_base: int | None = None
        if type(offsets) is LineEnds and size == offsets.end - offsets.base + (
            not offsets.newline_at_end()
        ):
            line_base = offsets.base
        if cum is None and not rejs and not self.held and keys is None:
            # the usual block: no reject, nothing held, no byte cut: whole batches by count
            self._feed_by_count(recs, poss, lens, offsets, line_base, tail_offset, now, out)
            return out
        done = 0  # the cost of records [0, i) of this block
        rpos = [r.position for r in rejs]
        forced = (
            self._forced_cuts(poss, rpos) if len(rpos) + len(self.held) >= _MAX_HELD_REJECTS else []
        )
        fi = 0  # next forced cut
        ri = 0  # next reject of this block not yet emitted or held
        i = 0
        max_records, budget = self.max_records, self.budget
        while i < n:
            if fi < len(forced) and forced[fi] == i:
                fi += 1
                if self.recs:
                    self._close(out)
            stop = forced[fi] if fi < len(forced) else n
            room = max_records - len(self.recs)
            j = min(i + room, stop)
            if cum is not None and cum[j] - cum[i] > budget - self.cost:
                j = bisect_right(cum, cum[i] + budget - self.cost, i, j + 1) - 1
            if j == i:  # record i does not fit: close the open batch (it is not empty)
                self._close(out)
                continue
            taken = recs[i:j]
            # rejects before record j - 1 now precede the open batch's last record
            k = bisect_left(rpos, poss[j - 1], ri)
            if self.held or k > ri:
                out.append(self.held + rejs[ri:k])
                self.held = []
                ri = k
            if not self.recs:
                self.since = now
                self.recs = taken
                self.poss = compact_positions(poss[i:j])
            else:
                self.recs += taken
                self.poss = _concat(self.poss, compact_positions(poss[i:j]))
            cost = cum[j] - cum[i] if cum is not None else sum(lens[i:j]) + j - i
            self.cost += cost
            done += cost
            if keys is not None:
                self.end_key = keys[j - 1]
            if line_base is not None:
                self.end_offset = line_base + done if j < n else block.end_offset
            elif offsets is not None:
                self.end_offset = offsets[j - 1]
            else:
                self.end_offset = tail_offset if j == n else None
            i = j
            if len(self.recs) == max_records:
                self._close(out)
        self._arrive(rejs[ri:], out)
        return out

    def _feed_by_count(
        self,
        recs: list[bytes],
        poss: Sequence[int],
        lens: list[int],
        offsets: Sequence[int] | None,
        line_base: int | None,
        tail_offset: int | None,
        now: float,
        out: list[Item],
    ) -> None:
        """:meth:`feed` for a block that cuts by count only (the same cuts, fewer steps)."""
        n = len(recs)
        max_records = self.max_records
        done = 0  # the cost of records [0, i) of this block

        def end(j: int) -> int | None:  # the end offset of record j - 1
            if line_base is not None:
                return line_base + done if j < n else tail_offset
            if offsets is not None:
                return offsets[j - 1]
            return tail_offset if j == n else None

        i = 0
        if self.recs:  # fill the open batch first
            i = min(max_records - len(self.recs), n)
            done = sum(lens[:i]) + i
            self.recs += recs[:i]
            self.poss = _concat(self.poss, compact_positions(poss[:i]))
            self.cost += done
            self.end_offset = end(i)
            if len(self.recs) < max_records:
                return
            self._close(out)
        seq = self.seq
        ranged = type(poss) is range  # its slices are ranges already
        while n - i >= max_records:
            j = i + max_records
            cost = sum(lens[i:j]) + max_records
            done += cost
            positions = poss[i:j] if ranged else compact_positions(poss[i:j])
            out.append(Batch(seq, recs[i:j], positions, end(j), cost - max_records))
            seq += 1
            i = j
        self.seq = seq
        if i < n:  # the rest opens a batch
            self.since = now
            self.recs = recs[i:]
            self.poss = compact_positions(poss[i:])
            self.cost = sum(lens[i:]) + n - i
            done += self.cost
            self.end_offset = end(n)

    def flush(self) -> list[Item]:
        """Close the open batch now (linger), then emit what waited behind it."""
        out: list[Item] = []
        if self.recs:
            self._close(out)
        return out

    def finish(self) -> list[Item]:
        return self.flush()

    def _close(self, out: list[Item]) -> None:
        """Emit the open batch, then the rejects that waited behind it."""
        out.append(
            Batch(
                self.seq,
                self.recs,
                self.poss,
                self.end_offset,
                self.cost - len(self.recs),
                self.end_key,
            )
        )
        self.seq += 1
        self.recs = []
        self.poss = []
        self.cost = 0
        self.end_offset = None
        self.end_key = None
        self.since = None
        if self.held:
            out.append(self.held)
            self.held = []

    def _arrive(self, rejs: list[Rejected], out: list[Item]) -> None:
        """Rejects that follow every record seen so far."""
        if not rejs:
            return
        if not self.recs:
            out.append(list(rejs))
            return
        self.held.extend(rejs)
        if len(self.held) >= _MAX_HELD_REJECTS:
            self._close(out)

    def _forced_cuts(self, poss: Sequence[int], rpos: list[int]) -> list[int]:
        """Indexes of records preceded by at least _MAX_HELD_REJECTS rejects (since the
        previous record): the open batch closes before them, wherever the block boundaries
        fall (the held rejects count for the first record)."""
        cuts = []
        prev = 0
        carried = len(self.held)
        for i, p in enumerate(poss):
            k = bisect_left(rpos, p, prev)
            if k - prev + carried >= _MAX_HELD_REJECTS:
                cuts.append(i)
            prev = k
            carried = 0
        return cuts

    def _drop_oversized(
        self,
        recs: list[bytes],
        poss: Sequence[int],
        lens: list[int],
        offsets: Sequence[int] | None,
        rejs: list[Rejected],
    ) -> tuple[list[bytes], Sequence[int], list[int], Sequence[int] | None, list[Rejected]]:
        keep = [i for i, n in enumerate(lens) if n + 1 <= self.budget]
        dropped = [
            Rejected(
                raw=orjson.Fragment(recs[i]),
                position=poss[i],
                reason=f"record of {lens[i]} bytes exceeds --max-batch-bytes {self.max_bytes}",
            )
            for i, n in enumerate(lens)
            if n + 1 > self.budget
        ]
        merged = sorted([*rejs, *dropped], key=lambda r: r.position)
        return (
            [recs[i] for i in keep],
            [poss[i] for i in keep],
            [lens[i] for i in keep],
            [offsets[i] for i in keep] if offsets is not None else None,
            merged,
        )


def _concat(a: Sequence[int], b: Sequence[int]) -> Sequence[int]:
    """Positions ``a`` then ``b``, both compact (see :func:`compact_positions`), and so
    is the result: a range when both are ranges that meet, else a list."""
    if type(a) is range and type(b) is range and a.stop == b.start:
        return range(a.start, b.stop)
    if type(a) is list:
        a.extend(b)  # the open batch's own list (made by a slice or by us): ours to extend
        return a
    return [*a, *b]


async def batch(
    blocks: AsyncIterable[RecordBlock],
    limits: BatchLimits,
    *,
    linger: bool,
    start_seq: int = 0,
    overhead: int = 1,
) -> AsyncIterator[Batch | list[Rejected]]:
    """Batches (and lists of rejected inputs) from ``blocks``, in source order.

    ``overhead`` is the body's fixed cost (:attr:`BodyEncoder.overhead`). ``Batch.seq``
    counts from ``start_seq``. ``Batch.end_offset`` is the byte offset just after the batch's
    last record when the source tells it: always when its blocks carry per-record
    ``offsets``, otherwise when the batch ends at the last record of a block (``None``
    elsewhere). With ``linger``, an open batch is sent at the latest ``limits.linger``
    seconds after its first record arrived, even if no more records come (slow streams);
    without it, batches are cut only by count and bytes.
    """
    cutter = _Cutter(limits, start_seq=start_seq, overhead=overhead)
    it = aiter(blocks)
    if not linger:
        try:
            async for block in it:
                for item in cutter.feed(block):
                    yield item
            for item in cutter.finish():
                yield item
        finally:
            await _aclose(it)
        return

    loop = asyncio.get_running_loop()
    wait = limits.linger
    # The next block is awaited in a task, so that a timeout flushes the open batch without
    # cancelling (and losing) a read in progress; the same task is awaited again afterwards.
    pending: asyncio.Future[RecordBlock] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(it))
            if cutter.since is not None and not pending.done():
                timeout = cutter.since + wait - loop.time()
                if timeout > 0:
                    await asyncio.wait((pending,), timeout=timeout)
                if not pending.done():
                    for item in cutter.flush():
                        yield item
                    continue
            try:
                block = await pending
            except StopAsyncIteration:
                pending = None
                break
            pending = None
            for item in cutter.feed(block, loop.time()):
                yield item
        for item in cutter.finish():
            yield item
    finally:
        if pending is not None:
            if not pending.done():
                pending.cancel()
                await asyncio.wait((pending,))
            if not pending.cancelled():
                pending.exception()  # retrieved: we are already leaving with an error or early
        await _aclose(it)


async def _aclose(it: AsyncIterator[RecordBlock]) -> None:
    """Close the source's iterator (its files and threads) when the batcher stops early."""
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()
