"""The sources large exports come in: gzip/zstd files, Parquet, MySQL/MariaDB, through the
real CLI against the reference sink (a process), killed and resumed."""

from __future__ import annotations

import gzip
import random
import signal
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from test_kill_resume import Job, assert_exactly_once, kill_targets, run_sink, write_records

pytestmark = pytest.mark.slow


class DbJob(Job):
    """A ``--db`` job: no source argument."""

    def args(self, *more: str) -> list[str]:
        return [a for a in super().args(*more) if a != ""]


def records_at_sink(sink: object) -> list[bytes]:
    return sink.get("/records").splitlines()  # type: ignore[attr-defined, no-any-return]


def ids(lines: list[bytes]) -> Counter[int]:
    return Counter(orjson.loads(line)["id"] for line in lines)


# --- compressed ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".ndjson.gz", ".jsonl.zst"])
def test_compressed_jsonl_byte_exact(tmp_path: Path, suffix: str) -> None:
    """Every line of a gzip/zstd JSONL file arrives once, as its own bytes."""
    plain = write_records(tmp_path / "plain.jsonl", 3000)
    data = plain.read_bytes()
    path = tmp_path / f"export{suffix}"
    if suffix.endswith(".gz"):  # two members: a concatenated dump
        half = data.index(b"\n", len(data) // 2) + 1
        path.write_bytes(gzip.compress(data[:half]) + gzip.compress(data[half:]))
    else:
        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    with run_sink(tmp_path) as sink:
        done = Job(tmp_path, sink, str(path)).run()
        assert done.code == 0, done.err
        got = records_at_sink(sink)
    assert sorted(got) == sorted(data.splitlines())
    assert set(ids(got).values()) == {1}


def test_compressed_csv(tmp_path: Path) -> None:
    rows = "".join(f"{i},name {i}\n" for i in range(1, 1001))
    path = tmp_path / "export.csv.gz"
    path.write_bytes(gzip.compress(("id,name\n" + rows).encode()))
    with run_sink(tmp_path) as sink:
        done = Job(tmp_path, sink, str(path)).run()
        assert done.code == 0, done.err
        got = [orjson.loads(r) for r in records_at_sink(sink)]
    assert Counter(int(r["id"]) for r in got) == Counter(range(1, 1001))
    assert got[0] == {"id": "1", "name": "name 1"} or "name" in got[0]


def test_truncated_gzip_delivers_what_precedes_and_names_the_record(tmp_path: Path) -> None:
    data = write_records(tmp_path / "plain.jsonl", 4000).read_bytes()
    packed = gzip.compress(data)
    path = tmp_path / "export.jsonl.gz"
    path.write_bytes(packed[: len(packed) * 2 // 3])
    with run_sink(tmp_path) as sink:
        job = Job(tmp_path, sink, str(path))
        done = job.run()
        got = ids(records_at_sink(sink))
    assert done.code == 1, done.err  # partial delivery, the damage dead-lettered
    last = max(got)
    assert got == Counter(range(1, last + 1))  # every record before the damage, once
    assert 1000 < last < 4000
    assert f"{path}" in done.err and f"after line {last} (the last good record)" in done.err
    dead = [orjson.loads(line) for line in job.failed.read_bytes().splitlines()]
    assert len(dead) == 1 and f"after line {last}" in str(dead[0])


@pytest.mark.parametrize("name", ["export.jsonl.gz", "export.csv.gz"])
def test_damage_before_the_first_record_exits_2_with_nothing_sent(
    tmp_path: Path, name: str
) -> None:
    """Exit 2 when no record precedes the damage (1 is for a partial delivery, above)."""
    if name.endswith(".csv.gz"):  # the header whole in a member of its own, then damage
        rows = b"".join(b"%d,n%d\n" % (i, i) for i in range(1, 3000))
        packed = gzip.compress(b"id,name\n") + gzip.compress(rows)[:40]
    else:
        packed = gzip.compress(write_records(tmp_path / "p.jsonl", 3000).read_bytes())[:40]
    path = tmp_path / name
    path.write_bytes(packed)
    with run_sink(tmp_path) as sink:
        done = Job(tmp_path, sink, str(path)).run()
        assert sink.stats()["records"] == 0
    assert done.code == 2, done.err
    assert str(path) in done.err and "damaged gzip archive" in done.err
    assert "nothing sent" in done.err


def test_gz_suffix_without_gzip_bytes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "export.jsonl.gz"
    path.write_bytes(b'{"id": 1}\n')
    with run_sink(tmp_path) as sink:
        done = Job(tmp_path, sink, str(path)).run()
    assert done.code == 2 and "not a gzip file" in done.err


def test_compressed_shards_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "export.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"id": 1}\n'))
    with run_sink(tmp_path) as sink:
        done = Job(tmp_path, sink, str(path), stateful=False).run("--shard", "0/2")
    assert done.code == 2 and "cannot be split into shards" in done.err


@pytest.mark.timeout(90)
def test_gzip_sigkill_then_resume_exactly_once(tmp_path: Path) -> None:
    n = 20_000
    data = write_records(tmp_path / "plain.jsonl", n).read_bytes()
    path = tmp_path / "export.jsonl.gz"
    path.write_bytes(gzip.compress(data))
    rng = random.Random(7)
    with run_sink(tmp_path, "--latency", "0.03") as sink:
        job = Job(tmp_path, sink, str(path))
        for target in kill_targets(rng, n, 2):
            with job.start() as running:
                sink.wait_records(target)
                running.signal(signal.SIGKILL)
                assert running.finish().code == -signal.SIGKILL
        done = job.run()
        assert done.code == 0, done.err
        assert_exactly_once(sink, n)


# --- Parquet ---------------------------------------------------------------------------------


def write_parquet(path: Path, n: int, group: int = 1000) -> Path:
    table = pa.table(
        {
            "id": pa.array(range(1, n + 1), pa.int64()),
            "name": [f"Customer {i}" for i in range(1, n + 1)],
            "price": pa.array([Decimal(i) / 100 for i in range(n)], pa.decimal128(12, 2)),
            "tags": [["a", "b"]] * n,
        }
    )
    pq.write_table(table, path, row_group_size=group)
    return path


def test_parquet_every_row_once_with_sql_encoding(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "export.parquet", 5000)
    with run_sink(tmp_path) as sink:
        done = Job(tmp_path, sink, str(path)).run()
        assert done.code == 0, done.err
        got = [orjson.loads(r) for r in records_at_sink(sink)]
    assert Counter(r["id"] for r in got) == Counter(range(1, 5001))
    first = min(got, key=lambda r: r["id"])
    assert first == {"id": 1, "name": "Customer 1", "price": "0.00", "tags": ["a", "b"]}


def test_parquet_shards_by_row_group(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "export.parquet", 5000, group=700)
    with run_sink(tmp_path) as sink:
        for k in range(3):
            done = Job(tmp_path, sink, str(path), stateful=False).run("--shard", f"{k}/3")
            assert done.code == 0, done.err
        got = ids(records_at_sink(sink))
    assert got == Counter(range(1, 5001))


@pytest.mark.timeout(90)
def test_parquet_sigkill_then_resume_exactly_once(tmp_path: Path) -> None:
    n = 20_000
    path = write_parquet(tmp_path / "export.parquet", n, group=3000)
    rng = random.Random(3)
    with run_sink(tmp_path, "--latency", "0.03") as sink:
        job = Job(tmp_path, sink, str(path))
        for target in kill_targets(rng, n, 2):
            with job.start() as running:
                sink.wait_records(target)
                running.signal(signal.SIGKILL)
                assert running.finish().code == -signal.SIGKILL
        done = job.run()
        assert done.code == 0, done.err
        assert_exactly_once(sink, n)


def helpers_of(path: Path) -> list[int]:
    """Pids of the Parquet helper processes decoding ``path``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"_parquet_decode" in cmdline and str(path).encode() in cmdline:
            found.append(int(proc.name))
    return found


@pytest.mark.timeout(120)
def test_parquet_helper_sigkill_then_resume_exactly_once(tmp_path: Path) -> None:
    """A file large enough for the helper process (8 MiB): the CLI killed while the helper
    decodes, resumed; every row once, and no helper left behind."""
    n = 20_000
    rng = random.Random(11)
    table = pa.table(
        {
            "id": pa.array(range(1, n + 1), pa.int64()),
            "blob": [rng.randbytes(225).hex() for _ in range(n)],  # 450 bytes snappy keeps
        }
    )
    path = tmp_path / "large.parquet"
    pq.write_table(table, path, row_group_size=2500)
    assert path.stat().st_size >= 8 << 20
    seen_helper = False
    with run_sink(tmp_path, "--latency", "0.03") as sink:
        job = Job(tmp_path, sink, str(path))
        for target in kill_targets(rng, n, 2):
            with job.start() as running:
                sink.wait_records(target)
                seen_helper = seen_helper or bool(helpers_of(path))
                running.signal(signal.SIGKILL)
                assert running.finish().code == -signal.SIGKILL
        done = job.run()
        assert done.code == 0, done.err
        assert_exactly_once(sink, n)
        got = {orjson.loads(r)["id"]: r for r in records_at_sink(sink)}
    assert seen_helper
    want = table.slice(n - 1).to_pylist()[0]
    assert orjson.loads(got[n]) == want
    for _ in range(100):  # a killed CLI's helper ends on its broken pipe
        if not helpers_of(path):
            break
        time.sleep(0.1)
    assert helpers_of(path) == []


def test_parquet_unsupported_type_names_file_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    bad = pa.array([[(1, "v")]], pa.map_(pa.int32(), pa.string()))
    pq.write_table(pa.table({"id": [1], "attrs": bad}), path)
    with run_sink(tmp_path) as sink:
        done = Job(tmp_path, sink, str(path)).run()
        assert sink.stats()["records"] == 0
    assert done.code == 2
    assert str(path) in done.err and "column 'attrs'" in done.err


# --- MySQL / MariaDB -------------------------------------------------------------------------


def _mysql_table(name: str, n: int) -> None:
    pymysql = pytest.importorskip("pymysql")
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", database="test")
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {name}")
            cur.execute(
                f"CREATE TABLE {name} (id INT PRIMARY KEY, name VARCHAR(40), "
                "price DECIMAL(12,2), at DATETIME, pad VARCHAR(200))"
            )
            rows = [
                (i, f"Customer {i}", Decimal(i) / 100, "2026-11-28 12:00:00", "x" * 120)
                for i in range(1, n + 1)
            ]
            cur.executemany(f"INSERT INTO {name} VALUES (%s, %s, %s, %s, %s)", rows)
        conn.commit()
    finally:
        conn.close()


def test_mysql_every_row_once_and_shards(tmp_path: Path, mysql_url: str) -> None:
    _mysql_table("w18_rows", 3000)
    db = ("--db", mysql_url, "--table", "w18_rows", "--key", "id")
    with run_sink(tmp_path) as sink:
        done = DbJob(tmp_path, sink, "", stateful=False, extra=db).run()
        assert done.code == 0, done.err
        got = [orjson.loads(r) for r in records_at_sink(sink)]
    assert Counter(r["id"] for r in got) == Counter(range(1, 3001))
    one = min(got, key=lambda r: r["id"])
    assert one["price"] == "0.01" and one["at"] == "2026-11-28T12:00:00"
    with run_sink(tmp_path) as sink:
        for k in range(2):
            done = DbJob(tmp_path, sink, "", stateful=False, extra=db).run("--shard", f"{k}/2")
            assert done.code == 0, done.err
        assert ids(records_at_sink(sink)) == Counter(range(1, 3001))


@pytest.mark.timeout(90)
def test_mysql_sigkill_then_resume_exactly_once(tmp_path: Path, mysql_url: str) -> None:
    n = 20_000
    _mysql_table("w18_kill", n)
    db = ("--db", mysql_url, "--table", "w18_kill", "--key", "id")
    rng = random.Random(11)
    with run_sink(tmp_path, "--latency", "0.03") as sink:
        job = DbJob(tmp_path, sink, "", extra=db)
        for target in kill_targets(rng, n, 2):
            with job.start() as running:
                sink.wait_records(target)
                running.signal(signal.SIGKILL)
                assert running.finish().code == -signal.SIGKILL
        done = job.run()
        assert done.code == 0, done.err
        assert_exactly_once(sink, n)


def test_mysql_missing_key_column(tmp_path: Path, mysql_url: str) -> None:
    _mysql_table("w18_nokey", 3)
    db = ("--db", mysql_url, "--table", "w18_nokey", "--key", "account_id")
    with run_sink(tmp_path) as sink:
        done = DbJob(tmp_path, sink, "", stateful=False, extra=db).run()
    assert done.code == 2
    assert "key column 'account_id' is not a column of the table" in done.err
