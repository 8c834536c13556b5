"""The Parquet helper process (``_parquet_helper``): the records it sends are those of the
in-process path, byte for byte, in order, with the same positions; shards, resumes and read
errors come out the same; and when it cannot go on (fails to start, dies, is slow to start)
this process reads on from the first row not delivered, so no row is lost or sent twice."""

from __future__ import annotations

import asyncio
import os
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asyncsync._exceptions import SourceError
from asyncsync.sources import _parquet_helper
from asyncsync.sources._parquet import ParquetSource, plan_row_group_shards
from asyncsync.sources._parquet_helper import ParquetHelper

ROWS = 5000


def table(n: int = ROWS) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(1, n + 1), pa.int64()),
            "name": pa.array([f'name "{i}"' if i % 97 == 0 else f"n{i}" for i in range(n)]),
            "score": pa.array([i / 7 if i % 11 else None for i in range(n)], pa.float64()),
            "day": pa.array([date(2026, 1, 1 + i % 28) for i in range(n)], pa.date32()),
            "tags": pa.array([[f"t{i % 3}"] * (i % 3) for i in range(n)]),
        }
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "h.parquet"
    pq.write_table(table(), p, row_group_size=700)  # 8 groups, the last one short
    return p


def drain(src: Any) -> tuple[list[bytes], list[int], int]:
    """Records, positions and the bytes counted as read."""

    async def go() -> tuple[list[bytes], list[int], int]:
        records: list[bytes] = []
        positions: list[int] = []
        read = 0
        async for block in src.blocks():
            assert block.rejects == []
            records += block.records
            positions += block.positions
            read += block.bytes_read
        return records, positions, read

    return asyncio.run(go())


def here(path: Path, **kw: Any) -> tuple[list[bytes], list[int], int]:
    return drain(ParquetSource(path, helper=False, batch_rows=300, **kw))


def helped(path: Path, **kw: Any) -> tuple[list[bytes], list[int], int]:
    return drain(ParquetSource(path, helper=True, batch_rows=300, **kw))


class Spy:
    """Counts the helpers that hand over frames, and can make them misbehave."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = 0
        self.frames = 0
        self.kill_after: int | None = None
        self.not_ready_for = 0
        real_frames = ParquetHelper.frames
        real_ready = ParquetHelper.ready
        spy = self

        def frames(helper: ParquetHelper, **kw: Any) -> Any:
            spy.started += 1
            for frame in real_frames(helper, **kw):
                spy.frames += 1
                yield frame
                if spy.kill_after is not None and spy.frames >= spy.kill_after:
                    assert helper._proc is not None
                    helper._proc.kill()  # dies mid-stream: what it had not written is lost

        def ready(helper: ParquetHelper, wait: float = 0.0) -> bool:
            if spy.not_ready_for > 0:
                spy.not_ready_for -= 1
                return False
            return real_ready(helper, wait)

        monkeypatch.setattr(ParquetHelper, "frames", frames)
        monkeypatch.setattr(ParquetHelper, "ready", ready)


def wait_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``ready`` wait for the helper (up to 30 s), so that the helper does the work."""
    real_ready = ParquetHelper.ready

    def ready(helper: ParquetHelper, wait: float = 0.0) -> bool:
        for _ in range(3000):
            if real_ready(helper) or helper._out is None:
                return helper._out is not None
            import time

            time.sleep(0.01)
        return False

    monkeypatch.setattr(ParquetHelper, "ready", ready)


def test_helper_sends_the_same_records(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wait_ready(monkeypatch)
    spy = Spy(monkeypatch)
    expected = here(path)
    assert len(expected[0]) == ROWS and expected[1] == list(range(1, ROWS + 1))
    assert helped(path) == expected
    assert spy.started == 1 and spy.frames == 22  # 7 groups of 700 rows (300, 300, 100), then 100


def test_helper_shards_and_resumes_as_in_process(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wait_ready(monkeypatch)
    spy = Spy(monkeypatch)
    for start, stop, first in plan_row_group_shards(str(path), 3):
        kw = {"start_group": start, "stop_group": stop, "first_row": first}
        assert helped(path, **kw) == here(path, **kw)
    for done in (1, 299, 300, 700, 1234, 4999):
        want = drain(ParquetSource(path, helper=False, batch_rows=300).resumed(position=done))
        got = drain(ParquetSource(path, helper=True, batch_rows=300).resumed(position=done))
        assert got[:2] == want[:2] and got[1][0] == done + 1
    assert spy.started == 9


def test_slow_helper_takes_over_at_a_group(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoded here until the helper is ready, then by the helper from the next group."""
    wait_ready(monkeypatch)
    spy = Spy(monkeypatch)
    spy.not_ready_for = 3  # groups 0, 1, 2 here
    expected = here(path)
    assert helped(path) == expected
    assert spy.started == 1 and spy.frames == 13  # groups 3-7


def test_starting_helper_is_waited_for(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not ready at the first batch: the source waits for it (``READY_WAIT``) rather than
    decode here (and import what the helper imports)."""
    from asyncsync.sources import _parquet

    monkeypatch.setattr(_parquet, "READY_WAIT", 60.0)
    here_groups: list[int] = []
    real_rows_here = ParquetSource._rows_here

    def rows_here(self: ParquetSource, start_group: int, *a: Any, **kw: Any) -> Any:
        here_groups.append(start_group)
        return real_rows_here(self, start_group, *a, **kw)

    monkeypatch.setattr(ParquetSource, "_rows_here", rows_here)
    spy = Spy(monkeypatch)
    expected = here(path)
    here_groups.clear()
    assert helped(path) == expected  # drained at once, while the helper is starting
    assert spy.frames == 22 and here_groups == []


@pytest.mark.parametrize("after", [1, 4, 11])
def test_helper_killed_mid_stream_loses_nothing(
    path: Path, monkeypatch: pytest.MonkeyPatch, after: int
) -> None:
    wait_ready(monkeypatch)
    spy = Spy(monkeypatch)
    spy.kill_after = after
    records, positions, _ = helped(path)
    assert (records, positions) == here(path)[:2]  # each row once, in order
    assert spy.frames < 22  # the helper did die before the end


def test_helper_that_cannot_start(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_parquet_helper, "_CODE", "import sys; sys.exit(3)")
    spy = Spy(monkeypatch)
    wait_ready(monkeypatch)
    assert helped(path)[:2] == here(path)[:2]
    assert spy.frames == 0

    monkeypatch.setattr(_parquet_helper.sys, "executable", str(path.parent / "no-python"))
    assert helped(path)[:2] == here(path)[:2]


def test_read_error_is_the_in_process_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A value Python cannot hold (a date past 9999) in the 3rd group: the helper stops
    before it, this process reads on and fails with the in-process error, after the same
    records."""
    wait_ready(monkeypatch)
    days = pa.array([0] * 25 + [4_000_000 * 86_400_000] + [0] * 4, pa.int64()).cast(pa.date64())
    p = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": range(30), "d": days}), p, row_group_size=10)

    def until_error(helper: bool) -> tuple[list[bytes], str]:
        got: list[bytes] = []

        async def go() -> None:
            async for block in ParquetSource(p, helper=helper, batch_rows=5).blocks():
                got.extend(block.records)

        with pytest.raises(SourceError) as info:
            asyncio.run(go())
        return got, str(info.value)

    spy = Spy(monkeypatch)
    assert until_error(True) == until_error(False)
    assert spy.frames == 5  # rows 1-25, in batches of 5
    assert len(until_error(True)[0]) == 25


def test_helper_stopped_when_the_upload_stops(path: Path) -> None:
    src = ParquetSource(path, helper=True, batch_rows=300)
    [helper] = src._helpers
    assert helper._proc is not None
    proc = helper._proc

    async def first_block() -> None:
        async with asyncio.timeout(30):
            blocks = src.blocks()
            async for _ in blocks:
                break
            await blocks.aclose()  # type: ignore[attr-defined]

    asyncio.run(first_block())
    for _ in range(500):
        if proc.poll() is not None:
            break
        import time

        time.sleep(0.01)
    assert proc.poll() is not None


def test_unused_helper_ends_with_its_source(path: Path) -> None:
    src = ParquetSource(path, helper=True)
    proc = src._helpers[0]._proc
    assert proc is not None
    del src
    assert proc.wait(10) is not None


def test_no_helper_for_small_files(path: Path) -> None:
    assert os.path.getsize(path) < 8 << 20
    assert ParquetSource(path)._helpers == []
