"""SQL sources resume by key through the checkpoint: cancel mid-run, resume, nothing lost."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from asyncsync import BatchLimits, StateOptions, upload
from asyncsync.checkpoint._state import CheckpointStore
from asyncsync.sink import Sink, SinkConfig
from asyncsync.sources.sql import SqlSource, open_sql_source


@pytest.mark.parametrize("keytype", ["int", "text"])
async def test_sql_cancel_then_resume_by_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keytype: str
) -> None:
    db = tmp_path / "x.db"
    conn = sqlite3.connect(db)
    n = 6000
    if keytype == "int":
        conn.execute("CREATE TABLE t (id integer PRIMARY KEY, name text)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"n{i}") for i in range(1, n + 1)])
        key = "id"
    else:
        conn.execute("CREATE TABLE t (code text PRIMARY KEY, id integer)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(f"c{i:06d}", i) for i in range(1, n + 1)])
        key = "code"
    conn.commit()
    conn.close()
    url = f"sqlite:///{db}"
    resumed: list[tuple[SqlSource, dict[str, Any]]] = []
    real = SqlSource.resumed

    def spy(self: SqlSource, **kw: Any) -> SqlSource:
        clone = real(self, **kw)
        resumed.append((clone, kw))
        return clone

    monkeypatch.setattr(SqlSource, "resumed", spy)
    ckpt = tmp_path / "job.ckpt"
    options: dict[str, Any] = {
        "concurrency": 4,
        "limits": BatchLimits(max_records=50),
        "state": StateOptions(checkpoint=ckpt, failed=tmp_path / "failed.jsonl"),
    }
    async with Sink(SinkConfig(latency=0.01, require_auth=False)) as sink:
        src = open_sql_source(url, table="t", key=key, page_size=300)
        await src.check()
        task = asyncio.create_task(upload(src, sink.ingest_url, **options))
        while sink.stats()["records"] < 2_000:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        state = CheckpointStore(ckpt).load()
        assert state is not None and not state.complete
        mark = state.watermark
        assert mark.position > 0
        expected_key = mark.position if keytype == "int" else f"c{mark.position:06d}"
        assert mark.key == expected_key
        src2 = open_sql_source(url, table="t", key=key, page_size=300)
        summary = await upload(src2, sink.ingest_url, **options)
        records = sink.records()
        stats = sink.stats(detail=True)
    assert sorted({r["id"] for r in records}) == list(range(1, n + 1))
    assert summary.records_sent == n
    assert stats["key_body_mismatches"] == 0
    [(clone, kw)] = resumed
    assert kw == {"position": mark.position, "offset": None, "key": expected_key}
    # the resumed run read only the rows after the key (plus one look-ahead row a page)
    assert clone.rows_read <= n - mark.position + clone.pages_read
