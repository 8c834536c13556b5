"""SQL sources: SQLite files and the real PostgreSQL, read by keyset pagination."""

from __future__ import annotations

import asyncio
import base64
import itertools
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncsync._exceptions import ConfigError, SourceError
from asyncsync._records import Rejected
from asyncsync.sources._protocol import Source
from asyncsync.sources.sql import (
    PostgresSource,
    SqlBlock,
    SqliteSource,
    SqlSource,
    _encoding,
    _sqlite,
    display_url,
    key_from_token,
    key_token,
    open_sql_source,
)

# asyncpg is imported by the PostgreSQL fixtures only (``asyncpg_driver`` in conftest.py): the
# SQLite cases never need it, and without it the PostgreSQL ones skip, or fail under
# ASYNCSYNC_REQUIRE_SERVICES=1, like a PostgreSQL that is not running.

SECRET = "Sup3r-S3cret-pw"


# --------------------------------------------------------------------------- helpers


@dataclass
class Got:
    records: list[dict[str, Any]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    keys: list[Any] = field(default_factory=list)
    rejects: list[Rejected] = field(default_factory=list)
    blocks: int = 0


async def drain(src: SqlSource) -> Got:
    got = Got()
    async for block in src.blocks():
        assert isinstance(block, SqlBlock)
        assert block.keys is not None
        assert len(block.records) == len(block.positions) == len(block.keys)
        got.raw += block.records
        got.records += map(orjson.loads, block.records)
        got.positions += block.positions
        got.keys += block.keys
        got.rejects += block.rejects
        got.blocks += 1
    return got


class Db:
    """One backend, with tables made for (and dropped after) one test."""

    kind: str
    url: str

    def __init__(self) -> None:
        self.tables: list[str] = []

    def new_table(self) -> str:
        name = f"asyncsync_sql_{uuid.uuid4().hex[:12]}"
        self.tables.append(name)
        return name

    async def execute(self, sql: str) -> None:
        raise NotImplementedError

    async def insert(self, table: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class SqliteDb(Db):
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.url = f"sqlite:///{path}"
        self.conn = sqlite3.connect(path)

    async def execute(self, sql: str) -> None:
        self.conn.executescript(sql)
        self.conn.commit()

    async def insert(self, table: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
        marks = ", ".join("?" * len(columns))
        self.conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)
        self.conn.commit()

    async def close(self) -> None:
        self.conn.close()


class PgDb(Db):
    kind = "postgres"

    def __init__(self, url: str, conn: Any) -> None:
        super().__init__()
        self.url = url
        self.conn = conn

    async def execute(self, sql: str) -> None:
        await self.conn.execute(sql)

    async def insert(self, table: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
        await self.conn.copy_records_to_table(table, columns=columns, records=rows)

    async def close(self) -> None:
        try:
            for table in self.tables:
                await self.conn.execute(f"DROP TABLE IF EXISTS {table}")
        finally:
            await self.conn.close()


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[SqliteDb]:
    db = SqliteDb(tmp_path / "export.db")
    yield db
    await db.close()


@pytest.fixture
async def pg(postgres_url: str, asyncpg_driver: ModuleType) -> AsyncIterator[PgDb]:
    db = PgDb(postgres_url, await asyncpg_driver.connect(postgres_url))
    yield db
    await db.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    if request.param == "sqlite":
        made: Db = SqliteDb(tmp_path / "export.db")
    else:
        url = request.getfixturevalue("postgres_url")
        asyncpg = request.getfixturevalue("asyncpg_driver")
        made = PgDb(url, await asyncpg.connect(url))
    yield made
    await made.close()


async def people(db: Db, n: int, *, order: Callable[[list[int]], None] | None = None) -> str:
    """A table ``(id, name)`` of ``n`` rows with ids 1..n, inserted in shuffled order."""
    table = db.new_table()
    await db.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, name text NOT NULL)")
    ids = list(range(1, n + 1))
    (order or _shuffle)(ids)
    await db.insert(table, ["id", "name"], [(i, f"person {i}") for i in ids])
    return table


def _shuffle(ids: list[int]) -> None:
    ids[:] = ids[1::2] + ids[::2][::-1]  # deterministic, far from key order


def _checkpoint_roundtrip(token: Any) -> Any:
    """A token as a checkpoint stores and loads it (msgspec JSON, like CheckpointState)."""
    return msgspec.json.decode(msgspec.json.encode(token))


# --------------------------------------------------------------------------- streaming


async def test_source_protocol_and_name(db: Db) -> None:
    table = await people(db, 3)
    src = open_sql_source(db.url, table=table, key="id")
    assert isinstance(src, Source)
    assert src.kind == "sql"
    assert src.size is None
    assert isinstance(src, SqliteSource if db.kind == "sqlite" else PostgresSource)
    assert table in src.identity and "key id" in src.identity


async def test_every_row_once_in_key_order_across_pages(db: Db) -> None:
    table = await people(db, 100)
    src = open_sql_source(db.url, table=table, key="id", page_size=7)
    await src.check()
    got = await drain(src)
    assert [r["id"] for r in got.records] == list(range(1, 101))
    assert got.records[41] == {"id": 42, "name": "person 42"}
    assert got.positions == list(range(1, 101))
    assert got.keys == list(range(1, 101))
    assert got.rejects == []
    assert got.blocks == 15  # 14 full pages of 7, then 2 rows
    assert src.pages_read == 15


async def test_no_empty_trailing_page_when_rows_fill_the_last_page(db: Db) -> None:
    table = await people(db, 98)
    src = open_sql_source(db.url, table=table, key="id", page_size=7)
    got = await drain(src)
    assert got.positions == list(range(1, 99))
    assert src.pages_read == 14  # the 14th page has no extra row: nothing more to ask


async def test_empty_table(db: Db) -> None:
    table = await people(db, 0)
    src = open_sql_source(db.url, table=table, key="id", page_size=7)
    await src.check()
    got = await drain(src)
    assert got.blocks == 0 and got.records == []


async def test_query_form(db: Db) -> None:
    table = await people(db, 60)
    query = f"""
        SELECT id AS rid, upper(name) AS shout
        FROM {table}
        WHERE id % 3 = 0  -- a trailing comment and a semicolon are fine
        ;"""
    src = open_sql_source(db.url, query=query, key="rid", page_size=4)
    await src.check()
    got = await drain(src)
    assert [r["rid"] for r in got.records] == list(range(3, 61, 3))
    assert got.records[0] == {"rid": 3, "shout": "PERSON 3"}
    assert got.positions == list(range(1, 21))


async def test_key_is_matched_ignoring_case_when_unambiguous(db: Db) -> None:
    table = await people(db, 10)
    src = open_sql_source(db.url, table=table, key="ID", page_size=3)
    got = await drain(src)
    assert [r["id"] for r in got.records] == list(range(1, 11))


async def test_text_key_in_database_order(db: Db) -> None:
    table = db.new_table()
    await db.execute(f"CREATE TABLE {table} (code text PRIMARY KEY, n integer)")
    codes = [f"C-{i:04d}" for i in range(50)]
    await db.insert(table, ["code", "n"], [(c, i) for i, c in enumerate(reversed(codes))])
    got = await drain(open_sql_source(db.url, table=table, key="code", page_size=6))
    assert [r["code"] for r in got.records] == codes
    assert got.keys == codes


# --------------------------------------------------------------------------- memory


async def test_memory_bounded_one_page_at_a_time(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    n, page = 200_000, 2_000
    table = db.new_table()
    await db.execute(
        f"CREATE TABLE {table} (id integer PRIMARY KEY, name text NOT NULL, amount integer)"
    )
    if db.kind == "postgres":
        await db.execute(
            f"INSERT INTO {table} SELECT g, 'row ' || g, g % 1000 FROM generate_series(1, {n}) g"
        )
    else:
        await db.execute(
            f"WITH RECURSIVE c(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM c WHERE g < {n}) "
            f"INSERT INTO {table} SELECT g, 'row ' || g, g % 1000 FROM c"
        )
    fetched: list[int] = []  # rows materialised by each fetch
    if db.kind == "postgres":
        real_fetch = PostgresSource._fetch

        async def spy(self: PostgresSource, *args: Any) -> list[Any]:
            rows = await real_fetch(self, *args)
            fetched.append(len(rows))
            return rows

        monkeypatch.setattr(PostgresSource, "_fetch", spy)
    else:
        real_fetched = SqliteSource._fetched

        def spy_sqlite(self: SqliteSource, rows: Any) -> None:
            fetched.append(len(rows))
            real_fetched(self, rows)

        monkeypatch.setattr(SqliteSource, "_fetched", spy_sqlite)

    src = open_sql_source(db.url, table=table, key="id", page_size=page)
    total = 0
    blocks = 0
    expected_first = 1
    async for block in src.blocks():
        blocks += 1
        # the source fetched exactly the page it hands over: no read-ahead, no whole table
        assert len(fetched) == blocks
        assert fetched[-1] <= page + 1
        assert len(block.records) <= page
        assert block.positions[0] == expected_first
        expected_first = block.positions[-1] + 1
        total += len(block.records)
        del block
    assert total == n
    assert blocks == n // page
    assert max(fetched) == page + 1  # a page, plus the one row that tells whether more follow
    assert src.rows_read == n + blocks - 1


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("cut", [0, 6, 7, 8, 50, 98, 99])
async def test_resume_after_a_key_continues_exactly_there(db: Db, cut: int) -> None:
    table = await people(db, 100)
    full = await drain(open_sql_source(db.url, table=table, key="id", page_size=7))
    src = open_sql_source(db.url, table=table, key="id", page_size=7)
    token = _checkpoint_roundtrip(full.keys[cut])
    resumed = src.resumed(position=full.positions[cut], key=token)
    rest = await drain(resumed)
    assert rest.raw == full.raw[cut + 1 :]
    assert rest.positions == full.positions[cut + 1 :]
    assert rest.keys == full.keys[cut + 1 :]
    # it started at the key: only the remaining rows were read (plus one look-ahead a page)
    assert resumed.rows_read <= len(rest.raw) + resumed.pages_read


async def test_open_with_after_and_start_position(db: Db) -> None:
    table = await people(db, 30)
    src = open_sql_source(db.url, table=table, key="id", page_size=4, after=20, start_position=20)
    await src.check()
    got = await drain(src)
    assert [r["id"] for r in got.records] == list(range(21, 31))
    assert got.positions == list(range(21, 31))
    past = open_sql_source(db.url, table=table, key="id", after=30, start_position=30)
    assert (await drain(past)).records == []


async def test_resume_by_key_with_gaps_and_a_query(db: Db) -> None:
    """Keys are not positions: the key of a position resumes, whatever the keys are."""
    table = db.new_table()
    await db.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, name text)")
    await db.insert(table, ["id", "name"], [(i * 10 - 500, f"n{i}") for i in range(40)])
    query = f"SELECT * FROM {table} WHERE id <> -400"
    full = await drain(open_sql_source(db.url, query=query, key="id", page_size=5))
    assert full.positions == list(range(1, 40))
    cut = 17
    rest = await drain(
        open_sql_source(db.url, query=query, key="id", page_size=5).resumed(
            position=full.positions[cut], key=full.keys[cut]
        )
    )
    assert rest.raw == full.raw[cut + 1 :]
    assert rest.positions == full.positions[cut + 1 :]


PG_KEYS = {
    "text": [f"k{i:03d}" for i in range(23)],
    "timestamptz": [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=7 * i) for i in range(23)],
    "timestamp": [datetime(2026, 1, 1) + timedelta(microseconds=999 * i) for i in range(23)],
    "date": [date(2026, 1, 1) + timedelta(days=i) for i in range(23)],
    "uuid": sorted(uuid.UUID(int=(i * 7919) << 64) for i in range(23)),
    "numeric": [Decimal(i) / 8 for i in range(23)],
    "bytea": [bytes([i, 255 - i]) for i in range(23)],
    "float8": [i / 3 for i in range(23)],
    "time": [(datetime(2026, 1, 1) + timedelta(seconds=61 * i)).time() for i in range(23)],
}


@pytest.mark.parametrize("pg_type", sorted(PG_KEYS))
async def test_postgres_resume_tokens_for_key_types(pg: PgDb, pg_type: str) -> None:
    table = pg.new_table()
    await pg.execute(f"CREATE TABLE {table} (k {pg_type} PRIMARY KEY, n integer)")
    keys = PG_KEYS[pg_type]
    await pg.insert(table, ["k", "n"], [(k, i) for i, k in enumerate(keys)])
    full = await drain(open_sql_source(pg.url, table=table, key="k", page_size=4))
    assert len(full.records) == len(keys)
    for cut in (3, 4, 11):
        token = _checkpoint_roundtrip(full.keys[cut])
        rest = await drain(
            open_sql_source(pg.url, table=table, key="k", page_size=4).resumed(
                position=cut + 1, key=token
            )
        )
        assert rest.raw == full.raw[cut + 1 :], pg_type
        assert rest.positions == list(range(cut + 2, len(keys) + 1))


async def test_sqlite_resume_tokens_for_blob_and_real_keys(sqlite_db: SqliteDb) -> None:
    for column, keys in (
        ("blob", [bytes([i, 0, 255 - i]) for i in range(20)]),
        ("real", [i / 7 for i in range(20)]),
    ):
        table = sqlite_db.new_table()
        await sqlite_db.execute(f"CREATE TABLE {table} (k {column} PRIMARY KEY, n integer)")
        await sqlite_db.insert(table, ["k", "n"], [(k, i) for i, k in enumerate(keys)])
        full = await drain(open_sql_source(sqlite_db.url, table=table, key="k", page_size=3))
        cut = 7
        rest = await drain(
            open_sql_source(sqlite_db.url, table=table, key="k", page_size=3).resumed(
                position=cut + 1, key=_checkpoint_roundtrip(full.keys[cut])
            )
        )
        assert rest.raw == full.raw[cut + 1 :], column


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.integers(),
        st.text(),
        st.floats(allow_nan=False),
        st.datetimes(timezones=st.none() | st.just(UTC)),
        st.dates(),
        st.times(),
        st.uuids(),
        st.decimals(allow_nan=False, allow_infinity=False),
        st.binary(),
    )
)
def test_key_tokens_survive_a_checkpoint(value: Any) -> None:
    token = _checkpoint_roundtrip(key_token(value))
    back = key_from_token(token)
    assert type(back) is type(value)
    assert back == value


def test_key_tokens_shape_and_refusals() -> None:
    assert key_token(5) == 5
    assert key_token("x") == "x"
    assert key_token(math.inf) == ["float", "inf"]
    assert key_from_token(["float", "inf"]) == math.inf
    assert key_token(Decimal("10.50")) == ["decimal", "10.50"]
    assert key_token(date(2026, 1, 2)) == ["date", "2026-01-02"]
    with pytest.raises(TypeError):
        key_token(True)
    with pytest.raises(TypeError):
        key_token({"a": 1})
    with pytest.raises(ConfigError):
        key_from_token(["nope", "1"])
    with pytest.raises(ConfigError):
        key_from_token(["date", "yesterday"])


# --------------------------------------------------------------------------- encoding


async def test_postgres_type_encoding(pg: PgDb) -> None:
    table = pg.new_table()
    await pg.execute(
        f"""
        CREATE TABLE {table} (
            id bigint PRIMARY KEY, d date, ts timestamp, tstz timestamptz, t time, ttz timetz,
            n numeric, tiny numeric, nan numeric, u uuid, b bytea, j jsonb, js json,
            ints integer[], grid integer[], texts text[], nothing text, flag boolean,
            big bigint, iv interval, ivs interval[], f float8, fnan float8, finf float8,
            r real, ip inet, net cidr, rng int4range, pt point, bits bit varying, jarr jsonb[]
        );
        INSERT INTO {table} VALUES (
            1, '2026-11-28', '2026-11-28 12:34:56.5', '2026-11-28 12:00:00+05:30',
            '23:59:59.25', '12:00:00+05:30', 12345678901234567890.0123456789, 0.0000001, 'NaN',
            '6f1e2d3c-4b5a-4987-8654-3210fedcba98', '\\x00ff10',
            '{{"b": [1, 2.5, null], "a": "x"}}',
            '{{ "spaced" :
               true }}', '{{1,2,3}}', '{{{{1,2}},{{3,4}}}}', '{{"a","b c",NULL}}', NULL, true,
            9007199254740993, '1 year 2 mons -3 days 04:05:06.5', '{{"1 day","-00:00:01"}}',
            0.1, 'NaN', '-Infinity', 1.5, '192.168.0.1', '10.0.0.0/8', '[1,5)', '(1,2)', B'0101',
            ARRAY['{{"x": 1}}'::jsonb]
        );
        INSERT INTO {table} (id) VALUES (2);
        """
    )
    src = open_sql_source(pg.url, table=table, key="id")
    await src.check()
    got = await drain(src)
    assert got.rejects == []
    row = got.records[0]
    assert row == {
        "id": 1,
        "d": "2026-11-28",
        "ts": "2026-11-28T12:34:56.500000",
        "tstz": "2026-11-28T06:30:00+00:00",
        "t": "23:59:59.250000",
        "ttz": "12:00:00+05:30",
        "n": "12345678901234567890.0123456789",
        "tiny": "0.0000001",
        "nan": "NaN",
        "u": "6f1e2d3c-4b5a-4987-8654-3210fedcba98",
        "b": base64.b64encode(b"\x00\xff\x10").decode(),
        "j": {"a": "x", "b": [1, 2.5, None]},
        "js": {"spaced": True},
        "ints": [1, 2, 3],
        "grid": [[1, 2], [3, 4]],
        "texts": ["a", "b c", None],
        "nothing": None,
        "flag": True,
        "big": 9007199254740993,
        "iv": "P1Y2M-3DT4H5M6.5S",
        "ivs": ["P1D", "PT-1S"],
        "f": 0.1,
        "fnan": None,
        "finf": None,
        "r": 1.5,
        "ip": "192.168.0.1",
        "net": "10.0.0.0/8",
        "rng": {"lower": 1, "upper": 5, "lower_inc": True, "upper_inc": False, "empty": False},
        "pt": [1.0, 2.0],
        "bits": "0101",
        "jarr": [{"x": 1}],
    }
    raw = got.raw[0]
    assert b'"big":9007199254740993' in raw  # past 2**53, every digit in the JSON text
    assert b"\n" not in raw  # the json column's line break became a space
    assert set(got.records[1]) == set(row)
    assert all(v is None for k, v in got.records[1].items() if k != "id")


async def test_postgres_time_edge_values(pg: PgDb) -> None:
    table = pg.new_table()
    await pg.execute(
        f"CREATE TABLE {table} (k time PRIMARY KEY, tz timetz);"
        f"INSERT INTO {table} VALUES ('00:00', '00:00-08'), ('24:00:00', '23:59:59.000001+14')"
    )
    got = await drain(open_sql_source(pg.url, table=table, key="k"))
    assert got.records == [
        {"k": "00:00:00", "tz": "00:00:00-08:00"},
        {"k": "24:00:00", "tz": "23:59:59.000001+14:00"},
    ]
    assert got.keys == ["00:00:00", "24:00:00"]
    rest = await drain(
        open_sql_source(pg.url, table=table, key="k").resumed(position=1, key=got.keys[0])
    )
    assert rest.records == got.records[1:]


async def test_sqlite_type_encoding_and_an_unencodable_row(sqlite_db: SqliteDb) -> None:
    table = sqlite_db.new_table()
    await sqlite_db.execute(
        f"CREATE TABLE {table} (id integer PRIMARY KEY, i integer, f real, t text, b blob, "
        f"n text, doc text, flag boolean, d date);"
        f"INSERT INTO {table} VALUES (1, 9007199254740993, 0.1, 'héllo', x'00ff10', NULL, "
        f"""'{{"a": 1}}', 1, '2026-11-28');"""
        f"INSERT INTO {table} VALUES (2, -9223372036854775808, 1e999, CAST(x'41ff42' AS TEXT), "
        f"NULL, NULL, NULL, 0, NULL);"
        f"INSERT INTO {table} VALUES (3, 0, -1e999, 'after', x'', NULL, NULL, NULL, NULL);"
    )
    src = open_sql_source(sqlite_db.url, table=table, key="id", page_size=2)
    await src.check()
    got = await drain(src)
    assert got.records == [
        {
            "id": 1,
            "i": 9007199254740993,
            "f": 0.1,
            "t": "héllo",
            "b": "AP8Q",
            "n": None,
            "doc": '{"a": 1}',  # SQLite has no JSON type: text stays text
            "flag": 1,  # nor a boolean one
            "d": "2026-11-28",  # nor dates: what is stored is what is sent
        },
        {
            "id": 3,
            "i": 0,
            "f": None,
            "t": "after",
            "b": "",
            "n": None,
            "doc": None,
            "flag": None,
            "d": None,
        },
    ]
    assert b'"i":9007199254740993' in got.raw[0]
    assert got.positions == [1, 3]
    assert got.keys == [1, 3]
    [rejected] = got.rejects
    assert rejected.position == 2
    assert "row 2 (key 2)" in rejected.reason
    assert "'t'" in rejected.reason and "UTF-8" in rejected.reason
    dead = orjson.loads(orjson.dumps({"record": rejected.raw}))  # what the dead-letter writes
    assert dead["record"]["id"] == 2
    assert dead["record"]["t"] == repr("A\udcffB")


async def test_sqlite_invalid_utf8_key_is_rejected_and_paging_goes_on(
    sqlite_db: SqliteDb,
) -> None:
    table = sqlite_db.new_table()
    await sqlite_db.execute(
        f"CREATE TABLE {table} (k text PRIMARY KEY, n integer);"
        f"INSERT INTO {table} VALUES ('a', 1), ('b', 2), (CAST(x'62ff' AS TEXT), 3), ('c', 4);"
    )
    got = await drain(open_sql_source(sqlite_db.url, table=table, key="k", page_size=3))
    assert [r["k"] for r in got.records] == ["a", "b", "c"]
    assert got.positions == [1, 2, 4]
    assert [r.position for r in got.rejects] == [3]


def test_unknown_value_type_is_a_reject_not_a_failure() -> None:
    class Odd:
        pass

    rows = [(1, "a"), (2, Odd()), (3, "c")]
    block = _encoding._encode_page(rows, ("id", "v"), 0, 10)
    assert block.positions == [10, 12]
    assert block.keys == [1, 3]
    [rej] = block.rejects
    assert rej.position == 11
    assert "key 2" in rej.reason and "'v'" in rej.reason and "Odd" in rej.reason
    orjson.dumps(rej.raw)


def test_python_values_without_a_database() -> None:
    """The ``default`` encoder for values drivers may hand over (timedelta, memoryview)."""
    enc = _encoding._dumps
    assert enc(timedelta(days=1, hours=2, microseconds=5)) == b'"P1DT2H0.000005S"'
    assert enc(timedelta(0)) == b'"PT0S"'
    assert enc(timedelta(seconds=-90)) == b'"-PT1M30S"'
    assert enc(memoryview(b"\x01\x02")) == b'"AQI="'
    assert enc(Decimal("1E+3")) == b'"1000"'
    aware = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=-3)))
    assert enc(aware) == b'"2026-01-01T12:00:00-03:00"'


# --------------------------------------------------------------------------- errors


def assert_secret_free(exc: BaseException) -> None:
    text = f"{exc} {exc!r} {getattr(exc, 'path', '')}"
    assert SECRET not in text


async def test_bad_url_scheme() -> None:
    for url in (f"oracle://me:{SECRET}@127.0.0.1/db", "nonsense", f"redis://u:{SECRET}@h/0"):
        with pytest.raises(SourceError, match="unsupported database URL") as info:
            open_sql_source(url, table="t", key="id")
        assert_secret_free(info.value)
    with pytest.raises(SourceError, match="invalid SQLite URL"):
        open_sql_source("sqlite://relative.db", table="t", key="id")


@pytest.mark.usefixtures("asyncpg_driver")  # no server needed, but the driver is
async def test_unreachable_postgres_port_names_no_password() -> None:
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:1/test"
    src = open_sql_source(url, table="t", key="id")
    assert src.name == "postgresql://postgres@127.0.0.1:1/test"
    with pytest.raises(SourceError, match="cannot connect") as info:
        await src.check()
    assert_secret_free(info.value)
    with pytest.raises(SourceError) as info:
        await drain(src)
    assert_secret_free(info.value)


def test_display_url_drops_passwords() -> None:
    assert display_url(f"postgresql://u:{SECRET}@h:5/db?sslmode=require&password={SECRET}") == (
        "postgresql://u@h:5/db?sslmode=require"
    )
    assert display_url("postgres://h/db") == "postgres://h/db"


async def test_wrong_database_names_no_password(pg: PgDb) -> None:
    parts = urlsplit(pg.url)
    netloc = f"{parts.username or 'postgres'}:{SECRET}@{parts.hostname}:{parts.port or 5432}"
    url = urlunsplit((parts.scheme, netloc, "/no_such_db_asyncsync", "", ""))
    src = open_sql_source(url, table="t", key="id")
    with pytest.raises(SourceError, match="no_such_db_asyncsync") as info:
        await src.check()
    assert_secret_free(info.value)


async def test_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    src = open_sql_source(f"sqlite:///{path}", table="t", key="id")
    with pytest.raises(SourceError, match="no such file"):
        await src.check()
    with pytest.raises(SourceError, match="no such file"):
        await drain(src)
    assert not path.exists()


async def test_not_a_database_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("just text, long enough to not be a database header at all\n" * 20)
    with pytest.raises(SourceError, match="not a database"):
        await open_sql_source(f"sqlite:///{path}", table="t", key="id").check()


async def test_missing_table(db: Db) -> None:
    url = db.url
    if db.kind == "postgres":
        parts = urlsplit(url)
        netloc = f"{parts.username or 'postgres'}:{SECRET}@{parts.hostname}:{parts.port or 5432}"
        url = urlunsplit(parts._replace(netloc=netloc))
    src = open_sql_source(url, table="no_such_table_asyncsync", key="id")
    with pytest.raises(SourceError, match="no_such_table_asyncsync") as info:
        await src.check()
    assert_secret_free(info.value)
    with pytest.raises(SourceError, match="no_such_table_asyncsync"):
        await drain(src)


async def test_missing_key_column_lists_the_columns(db: Db) -> None:
    table = await people(db, 3)
    src = open_sql_source(db.url, table=table, key="nokey")
    with pytest.raises(SourceError, match=r"'nokey' is not a column .*columns: id, name"):
        await src.check()
    with pytest.raises(SourceError, match="nokey"):
        await drain(src)


async def test_bad_query(db: Db) -> None:
    src = open_sql_source(db.url, query="SELEC id FROM nowhere", key="id")
    with pytest.raises(SourceError, match="query failed"):
        await src.check()


async def test_duplicate_column_names_are_refused(db: Db) -> None:
    table = await people(db, 3)
    src = open_sql_source(db.url, query=f"SELECT id, name, name FROM {table}", key="id")
    with pytest.raises(SourceError, match="two columns named 'name'"):
        await src.check()


async def test_null_keys_fail_the_check(db: Db) -> None:
    table = db.new_table()
    await db.execute(f"CREATE TABLE {table} (k integer, v text)")
    await db.insert(table, ["k", "v"], [(1, "a"), (None, "b"), (3, "c")])
    src = open_sql_source(db.url, table=table, key="k")
    with pytest.raises(SourceError, match="NULL"):
        await src.check()
    with pytest.raises(SourceError, match="NULL"):
        await drain(src)


@pytest.mark.parametrize("where", ["across", "within"])
async def test_duplicate_keys_fail_loudly(db: Db, where: str) -> None:
    table = db.new_table()
    await db.execute(f"CREATE TABLE {table} (k integer, v text)")
    dup = 5 if where == "across" else 3  # page size 5: rows 5 and 6 straddle a boundary
    rows = [(i, f"v{i}") for i in range(1, 12)] + [(dup, "again")]
    await db.insert(table, ["k", "v"], rows)
    src = open_sql_source(db.url, table=table, key="k", page_size=5)
    await src.check()
    with pytest.raises(SourceError, match=f"not unique: value {dup} repeats"):
        await drain(src)


async def test_unorderable_or_unresumable_key_type(pg: PgDb) -> None:
    table = pg.new_table()
    await pg.execute(f"CREATE TABLE {table} (flag boolean, j json)")
    await pg.execute(f"INSERT INTO {table} VALUES (true, '{{}}')")
    with pytest.raises(SourceError, match="cannot be used to resume"):
        await open_sql_source(pg.url, table=table, key="flag").check()
    with pytest.raises(SourceError, match="ordering operator"):
        await open_sql_source(pg.url, table=table, key="j").check()


async def test_resume_key_of_the_wrong_type(pg: PgDb) -> None:
    table = await people(pg, 3)
    src = open_sql_source(pg.url, table=table, key="id", after="not a number")
    with pytest.raises(SourceError, match="cannot use key"):
        await src.check()


def test_settings_errors() -> None:
    url = "sqlite:///x.db"
    with pytest.raises(ConfigError):
        open_sql_source(url, key="id")
    with pytest.raises(ConfigError):
        open_sql_source(url, key="id", table="t", query="SELECT 1")
    with pytest.raises(ConfigError):
        open_sql_source(url, key=" ", table="t")
    with pytest.raises(ConfigError):
        open_sql_source(url, key="id", table="t", page_size=0)
    with pytest.raises(ConfigError):
        open_sql_source(url, key="id", query=" ; ")


async def test_schema_qualified_and_quoted_table_names(pg: PgDb) -> None:
    table = pg.new_table()
    mixed = f'{table}_Mixed "Case"'
    pg.tables.append('"' + mixed.replace('"', '""') + '"')
    await pg.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY)")
    await pg.execute(f"INSERT INTO {table} VALUES (1), (2)")
    await pg.execute(f'CREATE TABLE "{mixed.replace(chr(34), chr(34) * 2)}" (id int PRIMARY KEY)')
    got = await drain(open_sql_source(pg.url, table=f"public.{table}", key="id"))
    assert [r["id"] for r in got.records] == [1, 2]
    quoted = '"' + mixed.replace('"', '""') + '"'
    assert (await drain(open_sql_source(pg.url, table=quoted, key="id"))).records == []


async def test_sqlite_schema_qualified_and_quoted_table_names(sqlite_db: SqliteDb) -> None:
    table = sqlite_db.new_table()
    await sqlite_db.execute(
        f"CREATE TABLE {table} (id integer PRIMARY KEY); INSERT INTO {table} VALUES (1), (2);"
        f'CREATE TABLE "{table} Mixed ""Case""" (id integer PRIMARY KEY);'
    )
    got = await drain(open_sql_source(sqlite_db.url, table=f"main.{table}", key="id"))
    assert [r["id"] for r in got.records] == [1, 2]
    quoted = f'"{table} Mixed ""Case"""'
    assert (await drain(open_sql_source(sqlite_db.url, table=quoted, key="id"))).records == []


# --------------------------------------------------------------------------- the event loop


@pytest.fixture
def slow_sqlite(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """SQLite connections with ``slow(x)``: sleeps 20 ms per call (in the reading thread).

    Returns the set of the threads ``slow`` ran in, filled as it runs.
    """
    real = _sqlite._sqlite_connect
    threads: set[int] = set()

    def connect(path: str) -> sqlite3.Connection:
        conn = real(path)

        def slow(x: Any) -> Any:
            threads.add(threading.get_ident())
            time.sleep(0.02)
            return x

        conn.create_function("slow", 1, slow)
        return conn

    monkeypatch.setattr(_sqlite, "_sqlite_connect", connect)
    return threads


async def test_sqlite_reads_off_the_event_loop(sqlite_db: SqliteDb, slow_sqlite: set[int]) -> None:
    table = await people(sqlite_db, 60)
    src = open_sql_source(
        sqlite_db.url, query=f"SELECT id, slow(name) AS name FROM {table}", key="id", page_size=30
    )
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    try:
        started = time.monotonic()
        got = await drain(src)
        elapsed = time.monotonic() - started
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(got.records) == 60
    assert elapsed >= 1.2  # 60+ slow calls of 20 ms
    assert slow_sqlite and threading.get_ident() not in slow_sqlite  # never on the loop's thread
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) >= 40
    # A page read on the loop would block it for >= 0.6 s (30 calls of 20 ms, a sleep that
    # cannot end early); 0.45 s leaves room for scheduling delays on a loaded 2-core box.
    assert max(gaps) < 0.45, max(gaps)  # the loop was never blocked by a page


@pytest.mark.usefixtures("slow_sqlite")
async def test_cancelling_a_slow_sqlite_page_returns_at_once(sqlite_db: SqliteDb) -> None:
    table = await people(sqlite_db, 200)
    src = open_sql_source(
        sqlite_db.url, query=f"SELECT id, slow(name) AS name FROM {table}", key="id", page_size=150
    )

    async def consume() -> None:
        await drain(src)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.2)  # inside the first page (150 slow calls: 3 s)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Waiting for the page instead would take the rest of its 3 s (>= 2.5 s even if the sleep
    # above overran); 1 s leaves room for a loaded 2-core box.
    assert time.monotonic() - started < 1.0
