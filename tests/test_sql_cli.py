"""`asyncsync upload --db ...`: rows from SQLite and PostgreSQL reach the reference server."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import orjson
import pytest
from cli_helpers import run_cli

from asyncsync.sink import Sink, SinkConfig

pytestmark = pytest.mark.slow  # every test here runs the CLI or the sink as a subprocess


async def test_upload_from_sqlite_table(tmp_path: Path) -> None:
    """--db sqlite:///... --table T --key K: every row once, as a JSON object."""
    db = tmp_path / "export.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT, balance REAL)")
        conn.executemany(
            "INSERT INTO accounts VALUES (?, ?, ?)", [(i, f"n{i}", i / 2) for i in range(1, 1001)]
        )
    async with Sink(SinkConfig(require_auth=False)) as sink:
        result = await run_cli(
            "upload", "--url", sink.ingest_url, "--db", f"sqlite:///{db}", "--table",
            "accounts", "--key", "id", "--batch-size", "100", "--summary-json", "s.json",
            cwd=tmp_path,
        )  # fmt: skip
        records = sink.records()
    assert result.code == 0, result.err
    # batches arrive in any order with concurrent workers; each row exactly once
    assert sorted(r["id"] for r in records) == list(range(1, 1001))
    assert records[1] == {"id": 2, "name": "n2", "balance": 1.0}
    summary = orjson.loads((tmp_path / "s.json").read_bytes())
    assert summary["records_sent"] == 1000 and summary["batches"] == 10


async def test_upload_from_postgres_query(tmp_path: Path, postgres_url: str) -> None:
    """--db postgresql://... --query ... --key K streams a real PostgreSQL query."""
    import asyncpg

    table = f"asyncsync_cli_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, amount numeric(12,2))")
        await conn.executemany(
            f"INSERT INTO {table} VALUES ($1, $2)", [(i, i * 1.25) for i in range(1, 2501)]
        )
        async with Sink(SinkConfig(require_auth=False)) as sink:
            result = await run_cli(
                "upload", "--url", sink.ingest_url, "--db", postgres_url, "--query",
                f"SELECT id, amount FROM {table} WHERE id % 5 <> 0", "--key", "id",
                cwd=tmp_path,
            )  # fmt: skip
            records = sink.records()
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
    assert result.code == 0, result.err
    assert len(records) == 2000
    assert records[0] == {"id": 1, "amount": "1.25"}  # numeric as an exact string
