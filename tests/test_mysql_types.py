"""MySQL/MariaDB column types to JSON, against the real MariaDB (127.0.0.1:3306, database
``test``): the exact text of each value, as ``MysqlSource`` sends it.

Skipped with the reason when MariaDB (or aiomysql) is absent; a failure under
``ASYNCSYNC_REQUIRE_SERVICES=1`` (conftest.py), like the PostgreSQL tests."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import orjson
import pytest
from conftest import require_driver

from asyncsync.sources.sql import SqlBlock, open_sql_source


@pytest.fixture
def aiomysql_driver() -> ModuleType:
    return require_driver("aiomysql", "mysql")


@pytest.fixture
async def table(mysql_url: str, aiomysql_driver: ModuleType) -> AsyncIterator[tuple[str, Any]]:
    """A fresh table name and an open connection (autocommit); the table is dropped after."""
    conn = await aiomysql_driver.connect(
        host="127.0.0.1", port=3306, user="root", db="test", autocommit=True
    )
    name = f"asyncsync_types_{uuid.uuid4().hex[:12]}"
    try:
        yield name, conn
    finally:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP TABLE IF EXISTS `{name}`")
        conn.close()


async def execute(conn: Any, *statements: str) -> None:
    async with conn.cursor() as cur:
        for sql in statements:
            await cur.execute(sql)


async def records(url: str, name: str) -> list[bytes]:
    """Every record of the table, in key order, as the exact bytes the source produces."""
    src = open_sql_source(url, table=name, key="id")
    await src.check()
    out: list[bytes] = []
    async for block in src.blocks():
        assert isinstance(block, SqlBlock)
        assert block.rejects == []
        out += block.records
    return out


async def test_each_mysql_type_encodes_exactly(mysql_url: str, table: tuple[str, Any]) -> None:
    name, conn = table
    await execute(
        conn,
        f"""CREATE TABLE `{name}` (
            id INT PRIMARY KEY,
            dec_v DECIMAL(30,10), dec0 DECIMAL(5,0), dec_neg DECIMAL(6,2),
            dt DATETIME, dt6 DATETIME(6), ts TIMESTAMP NULL, d DATE,
            t TIME, t6 TIME(6),
            blob_v BLOB, vb VARBINARY(8), bin_v BINARY(3),
            js JSON, bits BIT(12), flag TINYINT(1), tiny TINYINT,
            big_u BIGINT UNSIGNED, big BIGINT,
            f FLOAT, dbl DOUBLE,
            txt VARCHAR(40), en ENUM('a','b'), yr YEAR
        )""",
        "SET time_zone = '+00:00'",
        f"""INSERT INTO `{name}` VALUES (
            1,
            12345678901234567890.0123456789, 42, -0.50,
            '2026-11-28 12:34:56', '2026-11-28 12:34:56.500000', '2026-11-28 12:00:00',
            '2026-11-28',
            '-838:59:59', '12:00:00.250000',
            x'00ff10', x'0102', 'ab',
            '{{"b": [1, 2.5, null], "a": "x"}}', b'101', 1, -128,
            18446744073709551615, -9223372036854775808,
            1.5, 0.1,
            'héllo "q"\\n', 'b', 2026
        )""",
        f"INSERT INTO `{name}` (id) VALUES (2)",
    )
    got = await records(mysql_url, name)
    assert len(got) == 2
    row = orjson.loads(got[0])
    assert row == {
        "id": 1,
        "dec_v": "12345678901234567890.0123456789",
        "dec0": "42",
        "dec_neg": "-0.50",
        "dt": "2026-11-28T12:34:56",
        "dt6": "2026-11-28T12:34:56.500000",
        "ts": "2026-11-28T12:00:00",
        "d": "2026-11-28",
        "t": "-838:59:59",
        "t6": "12:00:00.250000",
        "blob_v": base64.b64encode(b"\x00\xff\x10").decode(),
        "vb": base64.b64encode(b"\x01\x02").decode(),
        "bin_v": base64.b64encode(b"ab\x00").decode(),
        "js": '{"b": [1, 2.5, null], "a": "x"}',
        "bits": base64.b64encode(b"\x00\x05").decode(),
        "flag": 1,
        "tiny": -128,
        "big_u": 18446744073709551615,
        "big": -9223372036854775808,
        "f": 1.5,
        "dbl": 0.1,
        "txt": 'héllo "q"\n',
        "en": "b",
        "yr": 2026,
    }
    raw = got[0]
    # every digit of the big integers is in the JSON text, not rounded through a double
    assert b'"big_u":18446744073709551615' in raw
    assert b'"big":-9223372036854775808' in raw
    assert b'"dbl":0.1,' in raw
    # the NULL row: every column but the key is null
    empty = orjson.loads(got[1])
    assert set(empty) == set(row)
    assert empty["id"] == 2
    assert all(v is None for k, v in empty.items() if k != "id")


async def test_mysql_float_special_values_and_zero_dates(
    mysql_url: str, table: tuple[str, Any]
) -> None:
    """FLOAT comes as the server's shortest text of it (0.1, not 0.10000000149011612); a
    zero date is not a date (the driver gives its text), so JSON gets that text."""
    name, conn = table
    await execute(
        conn,
        "SET SESSION sql_mode = ''",  # allow the zero date MariaDB stores for bad input
        f"CREATE TABLE `{name}` (id INT PRIMARY KEY, f FLOAT, d DATE, dt DATETIME)",
        f"INSERT INTO `{name}` VALUES (1, 0.1, '0000-00-00', '0000-00-00 00:00:00')",
    )
    got = await records(mysql_url, name)
    row = orjson.loads(got[0])
    assert b'"f":0.1,' in got[0]  # the server's shortest text of the float, not 0.10000000149
    assert row["d"] == "0000-00-00"
    assert row["dt"] == "0000-00-00 00:00:00"
