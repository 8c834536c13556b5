"""Parquet rows to JSON: the exact bytes of every supported Arrow type (README, "Parquet"),
and every unsupported one refused before anything is read, naming the file and the column.

These pin the encoding byte for byte, so a faster conversion cannot change what is sent."""

from __future__ import annotations

import asyncio
import base64
import math
import subprocess
import sys
import threading
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asyncsync._exceptions import SourceError
from asyncsync.cli import main
from asyncsync.sources._parquet import ParquetSource


def drain(src: ParquetSource) -> tuple[list[bytes], list[int]]:
    async def go() -> tuple[list[bytes], list[int]]:
        records: list[bytes] = []
        positions: list[int] = []
        async for block in src.blocks():
            assert block.rejects == []
            records += block.records
            positions += block.positions
        return records, positions

    return asyncio.run(go())


def write(tmp_path: Path, table: pa.Table, **kw: Any) -> Path:
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, **kw)
    return path


def one_column(tmp_path: Path, arr: pa.Array, **kw: Any) -> list[bytes]:
    """The JSON of each row of a one-column file ``{"v": ...}``, as the source sends it."""
    records, _ = drain(ParquetSource(write(tmp_path, pa.table({"v": arr}), **kw)))
    return records


def values(records: list[bytes]) -> list[bytes]:
    """The JSON text of ``v`` in each ``{"v":...}`` record."""
    out = []
    for r in records:
        assert r.startswith(b'{"v":') and r.endswith(b"}"), r
        out.append(r[5:-1])
    return out


# Each case: an Arrow array and the exact JSON text of each of its values. Every array has a
# null, which must come out as JSON null.
CASES: dict[str, tuple[pa.Array, list[bytes]]] = {
    "null": (pa.array([None, None], pa.null()), [b"null", b"null"]),
    "bool": (pa.array([True, False, None]), [b"true", b"false", b"null"]),
    "int8": (pa.array([-128, 127, None], pa.int8()), [b"-128", b"127", b"null"]),
    "int16": (pa.array([-32768, 7, None], pa.int16()), [b"-32768", b"7", b"null"]),
    "int32": (pa.array([-(2**31), 0, None], pa.int32()), [b"-2147483648", b"0", b"null"]),
    "int64": (
        pa.array([-(2**63), 2**63 - 1, 9007199254740993, None], pa.int64()),
        [b"-9223372036854775808", b"9223372036854775807", b"9007199254740993", b"null"],
    ),
    "uint8": (pa.array([255, None], pa.uint8()), [b"255", b"null"]),
    "uint64": (
        pa.array([2**64 - 1, 0, None], pa.uint64()),
        [b"18446744073709551615", b"0", b"null"],
    ),
    "float64": (
        pa.array(
            [
                0.1,
                -0.0,
                1e300,
                5e-324,
                1e16,
                123456789.125,
                2.0,
                math.nan,
                math.inf,
                -math.inf,
                None,
            ],
            pa.float64(),
        ),
        [
            b"0.1",
            b"-0.0",
            b"1e+300",
            b"5e-324",
            b"1e+16",
            b"123456789.125",
            b"2.0",
            b"null",
            b"null",
            b"null",
            b"null",
        ],
    ),
    "float32": (
        pa.array([0.1, 1.5, 3.4028234663852886e38, math.nan, None], pa.float32()),
        [b"0.10000000149011612", b"1.5", b"3.4028234663852886e+38", b"null", b"null"],
    ),
    "string": (
        pa.array(["plain", "", 'q"b\\s/', "tab\tnl\ncr\r\x00\x1f\x7f", "héllo ✓ 😀", None]),
        [
            b'"plain"',
            b'""',
            b'"q\\"b\\\\s/"',
            b'"tab\\tnl\\ncr\\r\\u0000\\u001f\x7f"',
            '"héllo ✓ 😀"'.encode(),
            b"null",
        ],
    ),
    "large_string": (pa.array(["a", None], pa.large_string()), [b'"a"', b"null"]),
    "dictionary": (
        pa.array(["x", "y", "x", None]).dictionary_encode(),
        [b'"x"', b'"y"', b'"x"', b"null"],
    ),
    "decimal128": (
        pa.array(
            [
                Decimal("10.50"),
                Decimal("-0.01"),
                Decimal("0.00"),
                Decimal("12345678901234567890.0123456789"),
                None,
            ],
            pa.decimal128(30, 10),
        ),
        [
            b'"10.5000000000"',
            b'"-0.0100000000"',
            b'"0.0000000000"',
            b'"12345678901234567890.0123456789"',
            b"null",
        ],
    ),
    "decimal128_scale0": (
        pa.array([Decimal(7), Decimal(-12), None], pa.decimal128(5, 0)),
        [b'"7"', b'"-12"', b"null"],
    ),
    "decimal128_scale2": (
        pa.array([Decimal("0.00"), Decimal("1.10"), None], pa.decimal128(12, 2)),
        [b'"0.00"', b'"1.10"', b"null"],
    ),
    "decimal256": (
        pa.array([Decimal("-" + "9" * 50 + ".5"), None], pa.decimal256(60, 1)),
        [b'"-' + b"9" * 50 + b'.5"', b"null"],
    ),
    "date32": (
        pa.array([date(2026, 11, 28), date(1, 1, 1), None], pa.date32()),
        [b'"2026-11-28"', b'"0001-01-01"', b"null"],
    ),
    "date64": (pa.array([date(2026, 11, 28), None], pa.date64()), [b'"2026-11-28"', b"null"]),
    "timestamp_s": (
        pa.array([datetime(2026, 11, 28, 12, 0), None], pa.timestamp("s")),
        [b'"2026-11-28T12:00:00"', b"null"],
    ),
    "timestamp_ms": (
        pa.array([datetime(2026, 11, 28, 12, 0, 0, 500000), None], pa.timestamp("ms")),
        [b'"2026-11-28T12:00:00.500000"', b"null"],
    ),
    "timestamp_us": (
        pa.array(
            [datetime(2026, 11, 28, 12, 34, 56, 123456), datetime(1970, 1, 1), None],
            pa.timestamp("us"),
        ),
        [b'"2026-11-28T12:34:56.123456"', b'"1970-01-01T00:00:00"', b"null"],
    ),
    "timestamp_utc": (
        pa.array(
            [
                datetime(2026, 11, 28, 12, 0, tzinfo=UTC),
                datetime(2026, 1, 1, 0, 0, 0, 1, UTC),
                None,
            ],
            pa.timestamp("us", tz="UTC"),
        ),
        [b'"2026-11-28T12:00:00+00:00"', b'"2026-01-01T00:00:00.000001+00:00"', b"null"],
    ),
    "timestamp_offset": (
        pa.array([datetime(2026, 11, 28, 12, 0, tzinfo=UTC), None], pa.timestamp("ms", "+05:30")),
        [b'"2026-11-28T17:30:00+05:30"', b"null"],
    ),
    "timestamp_zone": (
        pa.array(
            [datetime(2026, 11, 28, 12, 0, tzinfo=UTC), datetime(2026, 7, 1, 12, 0, tzinfo=UTC)],
            pa.timestamp("s", "America/New_York"),
        ),
        [b'"2026-11-28T07:00:00-05:00"', b'"2026-07-01T08:00:00-04:00"'],
    ),
    "time32_s": (pa.array([time(12, 0), None], pa.time32("s")), [b'"12:00:00"', b"null"]),
    "time32_ms": (
        pa.array([time(12, 0, 0, 500000), time(0, 0), None], pa.time32("ms")),
        [b'"12:00:00.500000"', b'"00:00:00"', b"null"],
    ),
    "time64_us": (
        pa.array([time(23, 59, 59, 999999), None], pa.time64("us")),
        [b'"23:59:59.999999"', b"null"],
    ),
    "duration_s": (
        pa.array([timedelta(hours=1, minutes=30), timedelta(0), None], pa.duration("s")),
        [b'"PT1H30M"', b'"PT0S"', b"null"],
    ),
    "duration_ms": (
        pa.array(
            [timedelta(days=2, seconds=1, milliseconds=500), -timedelta(seconds=1), None],
            pa.duration("ms"),
        ),
        [b'"P2DT1.5S"', b'"-PT1S"', b"null"],
    ),
    "duration_us": (pa.array([timedelta(microseconds=1)], pa.duration("us")), [b'"PT0.000001S"']),
    "binary": (
        pa.array([b"\x00\xff\x10", b"", None], pa.binary()),
        [b'"' + base64.b64encode(b"\x00\xff\x10") + b'"', b'""', b"null"],
    ),
    "large_binary": (pa.array([b"abc", None], pa.large_binary()), [b'"YWJj"', b"null"]),
    "fixed_binary": (pa.array([b"\x01\x02", None], pa.binary(2)), [b'"AQI="', b"null"]),
    "list": (
        pa.array([[1, 2, None], [], None], pa.list_(pa.int32())),
        [b"[1,2,null]", b"[]", b"null"],
    ),
    "large_list": (
        pa.array([["a", None]], pa.large_list(pa.string())),
        [b'["a",null]'],
    ),
    "fixed_size_list": (
        pa.array([[1.5, 2.0], None], pa.list_(pa.float64(), 2)),
        [b"[1.5,2.0]", b"null"],
    ),
    "list_of_decimal_and_binary": (
        pa.array([[Decimal("1.20"), None]], pa.list_(pa.decimal128(5, 2))),
        [b'["1.20",null]'],
    ),
    "nested_list": (
        pa.array([[[1], [2, 3]], [None]], pa.list_(pa.list_(pa.int64()))),
        [b"[[1],[2,3]]", b"[null]"],
    ),
    "struct": (
        pa.array(
            [
                {"a": 1, "b": "x", "c": {"d": [b"\x01"], "e": date(2026, 1, 2)}},
                {"a": None, "b": None, "c": None},
                None,
            ],
            pa.struct(
                [
                    ("a", pa.int64()),
                    ("b", pa.string()),
                    ("c", pa.struct([("d", pa.list_(pa.binary())), ("e", pa.date32())])),
                ]
            ),
        ),
        [
            b'{"a":1,"b":"x","c":{"d":["AQ=="],"e":"2026-01-02"}}',
            b'{"a":null,"b":null,"c":null}',
            b"null",
        ],
    ),
    "map": (
        pa.array([[("k", 1), ("j", None)], [], None], pa.map_(pa.string(), pa.int64())),
        [b'{"k":1,"j":null}', b"{}", b"null"],
    ),
    "map_in_list_in_struct": (
        pa.array(
            [{"m": [[("x", Decimal("1.5"))]]}],
            pa.struct([("m", pa.list_(pa.map_(pa.string(), pa.decimal128(4, 1))))]),
        ),
        [b'{"m":[{"x":"1.5"}]}'],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_type_encodes_exactly(tmp_path: Path, name: str) -> None:
    arr, expected = CASES[name]
    got = values(one_column(tmp_path, arr))
    assert got == expected
    for text in got:  # every value is valid JSON on its own
        orjson.loads(text)


def test_a_row_of_every_type_is_one_object_in_schema_order(tmp_path: Path) -> None:
    names = list(CASES)
    n = max(len(arr) for arr, _ in CASES.values())

    def padded(arr: pa.Array) -> pa.Array:
        return pa.concat_arrays([arr, pa.nulls(n - len(arr), arr.type)])

    table = pa.table({name: padded(arr) for name, (arr, _) in CASES.items()})
    records, positions = drain(ParquetSource(write(tmp_path, table, row_group_size=3)))
    assert positions == list(range(1, n + 1))
    for i, record in enumerate(records):
        expected = b",".join(
            orjson.dumps(name) + b":" + (want[i] if i < len(want) else b"null")
            for name, (_, want) in CASES.items()
        )
        assert record == b"{" + expected + b"}"
    assert list(orjson.loads(records[0])) == names


def test_column_names_are_escaped_and_kept(tmp_path: Path) -> None:
    table = pa.table({'we"ird\n': [1], "ünï": ["x"], "": [None]})
    records, _ = drain(ParquetSource(write(tmp_path, table)))
    assert records == ['{"we\\"ird\\n":1,"ünï":"x","":null}'.encode()]


@pytest.mark.parametrize("batch_rows", [1, 7, 2048])
def test_batches_row_groups_and_resume_keep_every_row_once(tmp_path: Path, batch_rows: int) -> None:
    n = 50
    table = pa.table({"id": list(range(1, n + 1)), "d": [Decimal(i) / 4 for i in range(n)]})
    path = write(tmp_path, table, row_group_size=8)
    records, positions = drain(ParquetSource(path, batch_rows=batch_rows))
    assert positions == list(range(1, n + 1))
    assert [orjson.loads(r)["id"] for r in records] == list(range(1, n + 1))
    for done in (0, 1, 8, 9, 23, 49, 50):
        rest, pos = drain(ParquetSource(path, batch_rows=batch_rows).resumed(position=done))
        assert pos == list(range(done + 1, n + 1))
        assert rest == records[done:]


UNSUPPORTED = {
    "map_int_keys": pa.array([[(1, "v")]], pa.map_(pa.int32(), pa.string())),
    "float16": pa.array([1.0], pa.float16()) if hasattr(pa, "float16") else None,
    "timestamp_ns": pa.array([1], pa.timestamp("ns")),
    "time_ns": pa.array([1], pa.time64("ns")),
    "duration_ns": pa.array([1], pa.duration("ns")),
    "list_of_ns": pa.array([[1]], pa.list_(pa.timestamp("ns"))),
    "struct_of_f16": pa.array([{"h": None}], pa.struct([("h", pa.float16())])),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_unsupported_type_is_refused_naming_file_and_column(tmp_path: Path, name: str) -> None:
    arr = UNSUPPORTED[name]
    if arr is None:
        pytest.skip("this pyarrow has no float16 arrays")
    path = tmp_path / "bad.parquet"
    # coerce_timestamps=None keeps nanoseconds as they are (the Parquet 2.6 default)
    pq.write_table(pa.table({"id": [1], name: arr}), path, version="2.6")
    if pq.read_schema(path).field(name).type != arr.type:
        pytest.skip(f"this pyarrow writes {arr.type} as another type")
    with pytest.raises(SourceError) as info:
        ParquetSource(path)
    assert str(path) in str(info.value) and f"column {name!r}" in str(info.value)


def test_unsupported_type_exits_2_before_sending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.parquet"
    bad = pa.array([[(1, "v")]], pa.map_(pa.int32(), pa.string()))
    pq.write_table(pa.table({"id": [1], "attrs": bad}), path)
    # nothing listens on the URL: the run must end before it tries to send
    code = main(["upload", str(path), "--url", "http://127.0.0.1:9/ingest", "--no-resume", "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(path) in err and "column 'attrs'" in err


#: the cases the encoder hands to orjson value by value (``to_pylist``)
PYTHON_PATH = (
    *(k for k, (arr, _) in CASES.items() if pa.types.is_nested(arr.type)),
    *("duration_s", "duration_ms", "duration_us", "binary", "large_binary", "fixed_binary"),
    *("decimal128", "timestamp_zone"),
)


def test_reading_never_imports_pandas(tmp_path: Path) -> None:
    """``pa.array``/``pa.scalar`` import pandas when it is installed (a fifth of a second and
    tens of MB, in the middle of an upload): the encoder builds its arrays from buffers.
    (pyarrow's own ``to_pylist`` imports it for many types: the types it is used for, rare in
    exports, are left out.)"""
    flat = {k: arr for k, (arr, _) in CASES.items() if k not in PYTHON_PATH}
    n = max(map(len, flat.values()))
    table = pa.table(
        {
            name: pa.concat_arrays([arr, pa.nulls(n - len(arr), arr.type)])
            for name, arr in flat.items()
        }
    )
    path = write(tmp_path, table)
    code = (
        "import asyncio, sys\n"
        "from asyncsync.sources._parquet import ParquetSource\n"
        "async def main():\n"
        f"    async for block in ParquetSource({str(path)!r}).blocks():\n"
        "        assert block.records\n"
        "asyncio.run(main())\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False", out.stderr


def test_stopping_early_ends_the_decoding_thread(tmp_path: Path) -> None:
    """A run that stops reading (an abort, a shard's end) leaves no decoding thread behind:
    closing the source's blocks stops it, however far ahead it had decoded."""
    n = 20_000
    path = write(tmp_path, pa.table({"id": list(range(n))}), row_group_size=1000)

    async def first_block_then_stop() -> int:
        blocks = ParquetSource(path, batch_rows=100).blocks()
        block = await anext(blocks)
        await blocks.aclose()
        return len(block.records)

    assert asyncio.run(first_block_then_stop()) == 100
    for thread in threading.enumerate():
        if thread.name.startswith(("asyncsync-decode", "asyncsync-read")):
            thread.join()  # ends: a hang here is the failure (pytest-timeout)
    assert not [t for t in threading.enumerate() if t.name.startswith("asyncsync-decode")]
