"""SQL key-range shards: ``--shard K/N`` and ``--processes N`` with ``--db`` (issue 8)."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import uuid
from pathlib import Path

import orjson
import pytest
from cli_helpers import run_cli

from asyncsync.sink import Sink, SinkConfig
from asyncsync.sources.sql import SqlSource, open_sql_source

ROWS = 1000


def make_db(path: Path, rows: int = ROWS) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("CREATE TABLE s (code TEXT PRIMARY KEY, n INTEGER)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i * 3, f"n{i}") for i in range(rows)])
        conn.executemany("INSERT INTO s VALUES (?, ?)", [(f"k-{i:05d}x", i) for i in range(rows)])
    conn.close()
    return path


async def read_keys(src: SqlSource) -> list[object]:
    await src.check()
    keys: list[object] = []
    async for block in src.blocks():
        keys.extend(orjson.loads(r)[src.key] for r in block.records)
    return keys


@pytest.mark.parametrize(("table", "key"), [("t", "id"), ("s", "code")])
@pytest.mark.parametrize("rows", [ROWS, 3, 1, 0])
async def test_ranges_cover_every_row_once(tmp_path: Path, table: str, key: str, rows: int) -> None:
    db = make_db(tmp_path / "x.db", rows)
    whole = open_sql_source(f"sqlite:///{db}", table=table, key=key, page_size=97)
    everything = await read_keys(whole)
    assert len(everything) == rows
    for n in range(1, 6):
        ranges = await whole.plan_key_ranges(n)
        assert 1 <= len(ranges) <= n
        assert ranges[0][0] is None and ranges[-1][1] is None
        for (_, end), (start, _) in itertools.pairwise(ranges):
            assert end == start  # contiguous
        seen: list[object] = []
        for start, end in ranges:
            part = await read_keys(whole.with_range(start, end))
            if rows >= n:
                assert part, (n, start, end)  # no empty range when there are rows enough
            seen.extend(part)
        assert seen == everything, n  # in order, so: union == all, and no overlap


async def test_range_is_part_of_identity_and_survives_resume(tmp_path: Path) -> None:
    db = make_db(tmp_path / "x.db")
    whole = open_sql_source(f"sqlite:///{db}", table="t", key="id")
    start, end = (await whole.plan_key_ranges(3))[1]
    shard = whole.with_range(start, end)
    assert shard.identity != whole.identity
    assert shard.identity != whole.with_range(end, None).identity
    resumed = shard.resumed(position=10, key=start + 30)  # 10 rows of the range sent
    assert resumed.identity == shard.identity
    keys = await read_keys(resumed)
    assert keys[0] == start + 33 and keys[-1] == end
    assert keys == [k for k in await read_keys(shard) if k > start + 30]


async def test_plan_key_ranges_postgres(postgres_url: str) -> None:
    import asyncpg

    table = f"asyncsync_shards_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, code text UNIQUE)")
        await conn.executemany(
            f"INSERT INTO {table} VALUES ($1, $2)", [(i * 7, f"c{i:04d}") for i in range(1, 501)]
        )
        for key in ("id", "code"):
            whole = open_sql_source(postgres_url, table=table, key=key, page_size=64)
            everything = await read_keys(whole)
            assert len(everything) == 500
            for n in (1, 2, 3, 5):
                ranges = await whole.plan_key_ranges(n)
                assert len(ranges) == n
                seen: list[object] = []
                for start, end in ranges:
                    part = await read_keys(whole.with_range(start, end))
                    assert len(part) in range(500 // n - 1, 500 // n + 2)
                    seen.extend(part)
                assert seen == everything
        tiny = open_sql_source(
            postgres_url, query=f"SELECT * FROM {table} WHERE id <= 14", key="id"
        )
        ranges = await tiny.plan_key_ranges(5)  # 2 rows: duplicate boundaries merged
        assert len(ranges) <= 3
        parts = [await read_keys(tiny.with_range(s, e)) for s, e in ranges]
        assert [k for part in parts for k in part] == [7, 14]
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()


@pytest.mark.slow
async def test_cli_shards_deliver_every_row_once(tmp_path: Path) -> None:
    db = make_db(tmp_path / "x.db")
    async with Sink(SinkConfig(require_auth=False)) as sink:
        results = await asyncio.gather(*(
            run_cli(
                "upload", "--url", sink.ingest_url, "--db", f"sqlite:///{db}", "--table", "t",
                "--key", "id", "--shard", f"{k}/3", "--batch-size", "50", "--no-progress",
                "--checkpoint", f"c{k}.asyncsync", cwd=tmp_path,
            )
            for k in range(3)
        ))  # fmt: skip
        records = sink.records()
    for result in results:
        assert result.code == 0, result.err
    ids = [r["id"] for r in records]
    assert sorted(ids) == [i * 3 for i in range(ROWS)]  # every row, none twice
    # one checkpoint per shard, each with its own fingerprint
    fingerprints = {(tmp_path / f"c{k}.asyncsync").read_bytes() for k in range(3)}
    assert len(fingerprints) == 3


@pytest.mark.slow
async def test_cli_processes_with_db(tmp_path: Path) -> None:
    db = make_db(tmp_path / "x.db")
    async with Sink(SinkConfig(require_auth=False)) as sink:
        result = await run_cli(
            "upload", "--url", sink.ingest_url, "--db", f"sqlite:///{db}", "--table", "s",
            "--key", "code", "--processes", "2", "--batch-size", "100", "--no-progress",
            "--summary-json", "s.json", cwd=tmp_path,
        )  # fmt: skip
        records = sink.records()
    assert result.code == 0, result.err
    assert sorted(r["code"] for r in records) == [f"k-{i:05d}x" for i in range(ROWS)]
    summary = orjson.loads((tmp_path / "s.json").read_bytes())
    assert summary["records_sent"] == ROWS
    assert len(summary["shards"]) == 2
    # each shard its own job id, so Idempotency-Keys (job id + batch) never collide: the sink
    # deduplicates by key, so a collision would have dropped rows above
    assert len(set(summary["job_id"].split(","))) == 2


@pytest.mark.slow
async def test_cli_shard_beyond_the_ranges_sends_nothing(tmp_path: Path) -> None:
    db = make_db(tmp_path / "x.db", rows=1)  # one row: one key range, shards 1 and 2 are empty
    async with Sink(SinkConfig(require_auth=False)) as sink:
        results = [
            await run_cli(
                "upload", "--url", sink.ingest_url, "--db", f"sqlite:///{db}", "--table", "t",
                "--key", "id", "--shard", f"{k}/3", "--no-progress", cwd=tmp_path,
            )
            for k in range(3)
        ]  # fmt: skip
        records = sink.records()
    assert [r.code for r in results] == [0, 0, 0], results
    assert [r["id"] for r in records] == [0]
