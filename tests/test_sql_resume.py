"""SQL sources resume by key through the checkpoint: cancel mid-run, resume, nothing lost."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from recording import assert_delivered_once, record_sink

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
    sink = Sink(SinkConfig(latency=0.01, require_auth=False))
    received = record_sink(sink)
    # once 2,000 rows are stored, the next batch is stored but its 200 held back: the run
    # is cancelled with that batch delivered and not acknowledged, so the resumed run must
    # send it again, under the same key, for the sink to store it only once
    held: list[str] = []
    holding = asyncio.Event()

    @web.middleware
    async def hold(request: web.Request, handler: Any) -> web.StreamResponse:
        resp = await handler(request)
        if not held and resp.status == 200 and sink.stats()["records"] >= 2_000:
            held.append(request.headers["Idempotency-Key"])
            holding.set()
            await asyncio.sleep(30)  # cancelled when the client goes away
        return resp

    sink.app.middlewares.append(hold)
    async with sink:
        src = open_sql_source(url, table="t", key=key, page_size=300)
        await src.check()
        task = asyncio.create_task(upload(src, sink.ingest_url, **options))
        await asyncio.wait_for(holding.wait(), 20)
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
    # the sink deduplicates by Idempotency-Key: each row stored once means every re-sent
    # batch (in flight at the cancel) kept its key in the resumed run
    stored = Counter(r["id"] for r in records)
    again = sorted(i for i, count in stored.items() if count > 1)
    assert not again, f"{len(again)} rows stored more than once, e.g. {again[:5]}"
    assert stored == Counter(range(1, n + 1))
    assert_delivered_once(received, [{"id": i} for i in range(1, n + 1)], resends_acknowledged=True)
    [key_held] = held
    assert [r.ok for r in received if r.key == key_held] == [False, True]  # held, then re-sent
    assert summary.records_sent == n
    assert stats["key_body_mismatches"] == 0
    [(clone, kw)] = resumed
    assert kw == {"position": mark.position, "offset": None, "key": expected_key}
    # the resumed run read only the rows after the key (plus one look-ahead row a page)
    assert clone.rows_read <= n - mark.position + clone.pages_read
