"""The batcher: deterministic cuts by count and bytes, source order, linger for slow streams."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncsync import _batcher
from asyncsync._batcher import batch
from asyncsync._body import BodyEncoder
from asyncsync._config import BatchLimits
from asyncsync._records import Batch, LineEnds, RecordBlock, Rejected, compact_positions
from asyncsync.sources._jsonl import JsonlSource

Event = tuple[int, bytes | None]  # (position, record bytes) or (position, None) for a reject


def rec(n: int, i: int = 0) -> bytes:
    """A JSON object of exactly ``n`` bytes (n >= 8)."""
    body = f'{{"i":{i},"p":"'
    return (body + "x" * (n - len(body) - 2) + '"}').encode()


def make_blocks(events: list[Event], cuts: Iterable[int]) -> list[RecordBlock]:
    """Split ``events`` at ``cuts``; each event takes len + 1 bytes of a virtual file."""
    blocks = []
    offset = 0
    bounds = sorted({0, *(c for c in cuts if 0 < c < len(events)), len(events)})
    for a, b in itertools.pairwise(bounds):
        block = RecordBlock([], [])
        for pos, data in events[a:b]:
            offset += (len(data) if data is not None else 3) + 1
            if data is None:
                block.rejects.append(Rejected("bad", pos, f"line {pos}: bad", pos))
            else:
                block.records.append(data)
                block.positions.append(pos)
                block.end_offset = offset
        block.bytes_read = 0
        blocks.append(block)
    return blocks


def offsets_of(events: list[Event]) -> dict[int, int]:
    """Position -> offset just after it, in the virtual file of make_blocks."""
    out = {}
    offset = 0
    for pos, data in events:
        offset += (len(data) if data is not None else 3) + 1
        out[pos] = offset
    return out


async def aiter_blocks(blocks: list[RecordBlock]) -> AsyncIterator[RecordBlock]:
    for b in blocks:
        yield b


async def collect(
    blocks: list[RecordBlock], limits: BatchLimits, **kw: Any
) -> list[Batch | list[Rejected]]:
    return [item async for item in batch(aiter_blocks(blocks), limits, linger=False, **kw)]


def run(blocks: list[RecordBlock], limits: BatchLimits, **kw: Any) -> list[Batch | list[Rejected]]:
    return asyncio.run(collect(blocks, limits, **kw))


def flat(items: list[Batch | list[Rejected]]) -> list[tuple[str, Any]]:
    """Batches (without end_offset, which depends on block ends) and single rejects, in order."""
    out: list[tuple[str, Any]] = []
    for item in items:
        if isinstance(item, Batch):
            out.append(("B", (item.seq, tuple(item.records), tuple(item.positions), item.nbytes)))
        else:
            assert item, "no empty reject lists"
            out += [("R", (r.position, r.reason)) for r in item]
    return out


def batches(items: list[Batch | list[Rejected]]) -> list[Batch]:
    return [i for i in items if isinstance(i, Batch)]


# --------------------------------------------------------------------------- cutting


async def test_cuts_by_count() -> None:
    """max_records per batch, the rest in a last partial batch; seq from start_seq."""
    events: list[Event] = [(i, rec(20, i)) for i in range(1, 12)]
    items = await collect(make_blocks(events, [4, 9]), BatchLimits(max_records=5), start_seq=7)
    got = batches(items)
    assert [list(b.positions) for b in got] == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11]]
    assert [b.seq for b in got] == [7, 8, 9]
    assert [b.nbytes for b in got] == [100, 100, 20]
    assert [b.records for b in got] == [
        [r for _, r in events[:5]],
        [r for _, r in events[5:10]],
        [events[10][1]],
    ]


async def test_cuts_by_bytes_exactly_at_the_limit() -> None:
    """A JSON array body of a batch is <= max_bytes, and the next record would not have fit."""
    # 10 records of 99 bytes: body of k records = 1 + 100 k; max 401 -> 4 per batch
    events: list[Event] = [(i, rec(99, i)) for i in range(1, 11)]
    items = await collect(make_blocks(events, [3]), BatchLimits(max_records=100, max_bytes=401))
    got = batches(items)
    assert [len(b) for b in got] == [4, 4, 2]
    enc = BodyEncoder()
    assert [len(enc.encode(b.records)) for b in got] == [401, 401, 201]
    items = await collect(make_blocks(events, []), BatchLimits(max_records=100, max_bytes=400))
    assert [len(b) for b in batches(items)] == [3, 3, 3, 1]


async def test_overhead_of_ndjson_and_wrapped_bodies() -> None:
    """The byte limit holds for the body actually sent, whatever its envelope."""
    events: list[Event] = [(i, rec(10 + i % 17, i)) for i in range(1, 200)]
    for enc in (BodyEncoder("json"), BodyEncoder("ndjson"), BodyEncoder(wrap="records")):
        limits = BatchLimits(max_records=1000, max_bytes=300)
        items = await collect(make_blocks(events, [50, 51, 120]), limits, overhead=enc.overhead)
        got = batches(items)
        assert sum(len(b) for b in got) == len(events)
        for b, nxt in itertools.pairwise(got):
            assert len(enc.encode(b.records)) <= 300
            assert len(enc.encode([*b.records, nxt.records[0]])) > 300  # maximal


async def test_record_larger_than_max_bytes_is_rejected_in_order() -> None:
    """A record that cannot fit alone is a Rejected (not sent), between its neighbours."""
    big = rec(500, 3)
    events: list[Event] = [(1, rec(20)), (2, rec(20)), (3, big), (4, rec(20)), (5, None)]
    items = await collect(make_blocks(events, []), BatchLimits(max_records=2, max_bytes=100))
    kinds = [
        ("B", list(i.positions)) if isinstance(i, Batch) else ("R", [r.position for r in i])
        for i in items
    ]
    assert kinds == [("B", [1, 2]), ("R", [3]), ("B", [4]), ("R", [5])]
    too_big = items[1][0]  # type: ignore[index]
    assert too_big.reason == "record of 500 bytes exceeds --max-batch-bytes 100"
    assert orjson.dumps({"record": too_big.raw}) == b'{"record":' + big + b"}"  # Fragment


async def test_rejects_come_in_source_order_relative_to_batches() -> None:
    """A reject after a batch's last record comes after that batch, even when it arrived first."""
    # batch [1, 2] closes only when record 4 does not fit; reject 3 must follow it
    events: list[Event] = [(1, rec(40)), (2, rec(40)), (3, None), (4, rec(40))]
    for cuts in ([], [2], [3], [1, 2, 3]):
        items = await collect(make_blocks(events, cuts), BatchLimits(max_bytes=90))
        assert flat(items) == [
            ("B", (0, (rec(40), rec(40)), (1, 2), 80)),
            ("R", (3, "line 3: bad")),
            ("B", (1, (rec(40),), (4,), 40)),
        ]


async def test_empty_blocks_and_reject_only_blocks() -> None:
    """Blocks with nothing, or only rejects, are fine."""
    blocks = [RecordBlock([], []), RecordBlock([], [], [Rejected("x", 1, "line 1: x", 1)])]
    items = await collect(blocks, BatchLimits())
    assert flat(items) == [("R", (1, "line 1: x"))]
    assert await collect([], BatchLimits()) == []


async def test_many_rejects_behind_an_open_batch_close_it() -> None:
    """One good line, then garbage: the open batch goes once enough rejects wait behind it."""
    n = _batcher._MAX_HELD_REJECTS
    events: list[Event] = [(1, rec(20)), *((i, None) for i in range(2, 3 * n))]
    blocks = make_blocks(events, range(0, len(events), 100))
    yielded = 0

    async def source() -> AsyncIterator[RecordBlock]:
        nonlocal yielded
        for b in blocks:
            yielded += 1
            yield b

    items = []
    async for item in batch(source(), BatchLimits(), linger=False):
        items.append(item)
        if isinstance(item, Batch):
            break
    assert isinstance(items[0], Batch)  # before every reject that follows it
    assert yielded <= n // 100 + 2 < len(blocks)  # ...and without waiting for the end


# --------------------------------------------------------------------------- properties

_sizes = st.integers(min_value=8, max_value=120)
_event_kinds = st.lists(st.one_of(_sizes, st.none(), st.just(400)), max_size=60)


def events_from(kinds: list[int | None]) -> list[Event]:
    return [(i, None if k is None else rec(k, i)) for i, k in enumerate(kinds, 1)]


@settings(max_examples=200, deadline=None)
@given(
    kinds=_event_kinds,
    cuts_a=st.lists(st.integers(min_value=0, max_value=60)),
    cuts_b=st.lists(st.integers(min_value=0, max_value=60)),
    max_records=st.integers(min_value=1, max_value=8),
    max_bytes=st.integers(min_value=130, max_value=600),
    held=st.sampled_from([2, 3, 1024]),
)
def test_property_cuts_do_not_depend_on_block_boundaries(
    kinds: list[int | None],
    cuts_a: list[int],
    cuts_b: list[int],
    max_records: int,
    max_bytes: int,
    held: int,
) -> None:
    """Same records, any split into blocks: the same batches and rejects, in the same order."""
    events = events_from(kinds)
    limits = BatchLimits(max_records=max_records, max_bytes=max_bytes)
    with mock.patch.object(_batcher, "_MAX_HELD_REJECTS", held):
        a = run(make_blocks(events, cuts_a), limits)
        b = run(make_blocks(events, cuts_b), limits)
        one_by_one = run(make_blocks(events, range(len(events))), limits)
    assert flat(a) == flat(b) == flat(one_by_one)

    # every record once, in order; too large ones rejected; limits hold; order is source order
    got = batches(a)
    sent = [p for bt in got for p in bt.positions]
    fits = {p for p, d in events if d is not None and len(d) + 2 <= max_bytes}
    assert sent == sorted(fits)
    rejected = [key[0] for kind, key in flat(a) if kind == "R"]
    assert sorted(rejected) == [p for p, _ in events if p not in fits]
    keys: list[int] = []
    for item in a:
        keys += [item.last] if isinstance(item, Batch) else [r.position for r in item]
    assert keys == sorted(keys)
    assert [bt.seq for bt in got] == list(range(len(got)))
    for bt in got:
        assert len(bt) <= max_records
        assert 1 + sum(len(r) + 1 for r in bt.records) <= max_bytes
        assert bt.nbytes == sum(map(len, bt.records))
    # end_offset, when given, is just after the batch's last record
    offsets = offsets_of(events)
    for bt in batches(a) + batches(b):
        assert bt.end_offset is None or bt.end_offset == offsets[bt.last]


@settings(max_examples=100, deadline=None)
@given(
    kinds=st.lists(_sizes, min_size=1, max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=40)),
    max_records=st.integers(min_value=1, max_value=6),
)
def test_property_batch_ending_at_a_block_end_has_its_offset(
    kinds: list[int], cuts: list[int], max_records: int
) -> None:
    """end_offset is set exactly for the batches that end at the last record of a block."""
    events = events_from(kinds)
    blocks = make_blocks(events, cuts)
    block_ends = {b.positions[-1]: b.end_offset for b in blocks if b.positions}
    for bt in batches(run(blocks, BatchLimits(max_records=max_records))):
        assert bt.end_offset == block_ends.get(bt.last)


@dataclass(slots=True)
class OffsetBlock(RecordBlock):
    """What RecordBlock would carry with per-record end offsets."""

    offsets: list[int] | None = None


async def test_per_record_offsets_give_every_batch_its_end_offset() -> None:
    """Blocks with an ``offsets`` attribute: each batch's end_offset is its last record's."""
    events: list[Event] = [(i, rec(10 + i, i)) for i in range(1, 30)]
    ends = offsets_of(events)
    blocks = []
    for b in make_blocks(events, [7, 8, 20]):
        blocks.append(
            OffsetBlock(
                b.records,
                b.positions,
                b.rejects,
                b.end_offset,
                offsets=[ends[p] for p in b.positions],
            )
        )
    got = batches(await collect(blocks, BatchLimits(max_records=4)))
    assert len(got) == 8
    assert [bt.end_offset for bt in got] == [ends[bt.last] for bt in got]


# --------------------------------------------------------------------------- JSONL resume


@pytest.mark.parametrize(("block_size", "max_records"), [(3 * 30, 3), (200, 4), (1 << 20, 7)])
async def test_resume_at_a_batch_end_offset_reforms_the_same_batches(
    tmp_path: Path, block_size: int, max_records: int
) -> None:
    """Reading on from (end_offset, last + 1, seq + 1) gives exactly the batches that followed."""
    lines = [orjson.dumps({"i": f"{i:020d}"}) for i in range(60)]  # 29 bytes + newline each
    lines[10] = b"{bad json....................}"
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    limits = BatchLimits(max_records=max_records)

    async def run_from(offset: int = 0, line: int = 1, seq: int = 0) -> list[Batch]:
        src = JsonlSource(path, start_offset=offset, start_line=line, block_size=block_size)
        items = [i async for i in batch(src.blocks(), limits, linger=False, start_seq=seq)]
        return batches(items)

    full = await run_from()
    with_offsets = [bt for bt in full if bt.end_offset is not None]
    assert with_offsets
    for bt in with_offsets:
        rest = await run_from(bt.end_offset, bt.last + 1, bt.seq + 1)  # type: ignore[arg-type]
        expected = [x for x in full if x.seq > bt.seq]
        assert flat(rest) == flat(expected)  # type: ignore[arg-type]
        # end offsets are known where a batch ends a block, and blocks now end elsewhere
        for x, y in zip(rest, expected, strict=True):
            assert None in (x.end_offset, y.end_offset) or x.end_offset == y.end_offset


# --------------------------------------------------------------------------- linger


async def timed_source(
    plan: list[tuple[float, list[int]]], produced: dict[int, float]
) -> AsyncIterator[RecordBlock]:
    """Yield a block of the given positions after each delay; note when each was produced."""
    for delay, positions in plan:
        await asyncio.sleep(delay)
        now = time.monotonic()
        for p in positions:
            produced[p] = now
        yield RecordBlock([rec(20, p) for p in positions], positions)


async def test_linger_flushes_a_partial_batch_of_a_slow_stream() -> None:
    """With linger, a partial batch goes out ~linger after its first record, not at EOF."""
    produced: dict[int, float] = {}
    plan = [(0, [1]), (0.03, [2]), (0.5, [3])]
    limits = BatchLimits(max_records=100, linger=0.15)
    out: list[tuple[float, Batch]] = []
    async for item in batch(timed_source(plan, produced), limits, linger=True):
        assert isinstance(item, Batch)
        out.append((time.monotonic(), item))
    assert [list(b.positions) for _, b in out] == [[1, 2], [3]]
    first_sent = out[0][0]
    assert first_sent - produced[1] >= 0.13
    assert first_sent < produced[3]  # did not wait for the next record


async def test_linger_bounds_the_wait_of_a_trickling_stream() -> None:
    """Records every 50 ms, linger 100 ms: no record waits much longer than linger."""
    produced: dict[int, float] = {}
    plan = [(0.05, [i]) for i in range(1, 21)]
    limits = BatchLimits(max_records=1000, linger=0.1)
    sent: dict[int, float] = {}
    async for item in batch(timed_source(plan, produced), limits, linger=True):
        assert isinstance(item, Batch)
        for p in item.positions:
            sent[p] = time.monotonic()
    assert sorted(sent) == list(range(1, 21))
    waits = [sent[p] - produced[p] for p in range(1, 20)]
    # Without the linger flush record 1 would wait for the end of the stream: >= 0.95 s (19
    # sleeps of 50 ms, which never end early). With it, ~0.1 s; 0.6 s leaves room for
    # scheduling delays on a loaded 2-core box.
    assert max(waits) < 0.6
    assert len({sent[p] for p in sent}) >= 3  # several batches, not one at EOF


async def test_without_linger_a_slow_stream_waits_for_count_or_end() -> None:
    """linger=False: cuts by count and bytes only (file sources, deterministic)."""
    produced: dict[int, float] = {}
    plan = [(0, [1]), (0.2, [2])]
    items = [
        i async for i in batch(timed_source(plan, produced), BatchLimits(linger=0.01), linger=False)
    ]
    assert [list(b.positions) for b in batches(items)] == [[1, 2]]


async def test_linger_keeps_the_pending_read_and_propagates_errors() -> None:
    """A timeout does not lose the block being awaited; a source error still surfaces."""

    async def source() -> AsyncIterator[RecordBlock]:
        yield RecordBlock([rec(20, 1)], [1])
        await asyncio.sleep(0.2)  # several linger timeouts while this read is pending
        yield RecordBlock([rec(20, 2)], [2])
        await asyncio.sleep(0.05)
        raise OSError("disk gone")

    got: list[int] = []

    async def consume() -> None:
        async for item in batch(source(), BatchLimits(linger=0.02), linger=True):
            assert isinstance(item, Batch)
            got.extend(item.positions)

    with pytest.raises(OSError, match="disk gone"):
        await consume()
    assert got == [1, 2]


@pytest.mark.parametrize(("linger", "max_records"), [(True, 2), (False, 1)])
async def test_closing_the_batcher_early_closes_the_source(linger: bool, max_records: int) -> None:
    """aclose() cancels the pending read and closes the source generator (its files, threads)."""
    closed = asyncio.Event()

    async def source() -> AsyncIterator[RecordBlock]:
        try:
            yield RecordBlock([rec(20, 1)], [1])
            await asyncio.sleep(10)
            yield RecordBlock([rec(20, 2)], [2])
        finally:
            closed.set()

    limits = BatchLimits(max_records=max_records, linger=0.01)
    gen = batch(source(), limits, linger=linger)
    first = await anext(gen)  # with linger: flushed while the next read is pending
    assert isinstance(first, Batch)
    await gen.aclose()
    assert closed.is_set()
    assert len(asyncio.all_tasks()) == 1


async def test_linger_zero_sends_what_has_arrived_whenever_the_source_pauses() -> None:
    """linger 0: a partial batch goes as soon as the next block is not ready."""
    produced: dict[int, float] = {}
    plan = [(0, [1, 2]), (0.05, [3])]
    items = [
        i async for i in batch(timed_source(plan, produced), BatchLimits(linger=0), linger=True)
    ]
    assert [list(b.positions) for b in batches(items)] == [[1, 2], [3]]


# --------------------------------------------------------------------------- compact forms


def test_line_ends_are_the_running_sums_in_any_order() -> None:
    """LineEnds answers like the list of running sums, forwards, backwards, by slice."""
    lines = [b"ab\n", b"\n", b"cde\r\n", b"f"]
    expected = [13, 14, 19, 20]
    ends = LineEnds(10, lines, 20)
    assert len(ends) == 4
    assert [ends[i] for i in (1, 3, 0, 2, -1, -4)] == [14, 20, 13, 19, 20, 13]
    assert list(ends) == expected and ends[1:3] == [14, 19] and ends[::-1] == expected[::-1]
    assert not ends.newline_at_end() and LineEnds(0, [b"x\n"], 2).newline_at_end()
    for bad in (4, -5):
        with pytest.raises(IndexError):
            ends[bad]


def test_compact_positions() -> None:
    """Consecutive positions become a range; others stay as they are."""
    assert compact_positions([3, 4, 5]) == range(3, 6)
    assert compact_positions([7]) == range(7, 8)
    assert compact_positions([3, 5]) == [3, 5]
    assert compact_positions([]) == []
    r = range(1, 9)
    assert compact_positions(r) is r
