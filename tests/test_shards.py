"""Shard planning: N byte ranges that cover a JSONL or CSV file exactly, cut at record starts,
numbered with global lines; and sources that read exactly one range.

The properties (hypothesis, random files and N): the shards are contiguous from the first
record byte to the end of the file, each starts at a line start (JSONL) or a row start as the
csv module sees it (CSV, quoted newlines and non-RFC quotes included), ``first_line`` is the
global line number there, and reading every shard gives exactly what reading the whole file
gives: the same records, positions and rejects, in order.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from asyncsync._exceptions import ConfigError, SourceError
from asyncsync._paths import shard_path
from asyncsync._records import Rejected
from asyncsync.sources._csv import CsvSource
from asyncsync.sources._jsonl import JsonlSource
from asyncsync.sources._protocol import Source
from asyncsync.sources._shards import Shard, open_shard, plan_shards

Read = tuple[list[tuple[int, bytes]], list[tuple[int, str]]]

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


async def _drain(src: Source) -> Read:
    records: list[tuple[int, bytes]] = []
    rejects: list[tuple[int, str]] = []
    async for block in src.blocks():
        records += zip(block.positions, block.records, strict=True)
        rejects += [(r.position, _raw(r)) for r in block.rejects]
    return records, rejects


def _raw(r: Rejected) -> str:
    return str(r.raw)


def read(src: Source) -> Read:
    return asyncio.run(_drain(src))


def read_shards(path: Path, shards: list[Shard]) -> Read:
    records: list[tuple[int, bytes]] = []
    rejects: list[tuple[int, str]] = []
    for shard in shards:
        got_records, got_rejects = read(open_shard(path, shard))
        records += got_records
        rejects += got_rejects
    return records, rejects


def read_all_shards(path: Path, n: int) -> Read:
    return read_shards(path, plan_shards(path, n))


def check_cover(data: bytes, shards: list[Shard], n: int, data_start: int = 0) -> None:
    """Contiguous, complete, at line starts, numbered globally."""
    assert [s.index for s in shards] == list(range(n))
    assert all(s.count == n for s in shards)
    assert shards[0].start == data_start
    assert shards[-1].stop == len(data)
    for a, b in itertools.pairwise(shards):
        assert a.stop == b.start
    for s in shards:
        assert s.start <= s.stop
        # a line start, or the end of the file (an empty shard)
        assert s.start in (0, len(data)) or data[s.start - 1 : s.start] == b"\n"
        assert s.first_line == data.count(b"\n", 0, s.start) + 1


# --- JSON Lines ------------------------------------------------------------------------------

_jsonl_line = st.one_of(
    st.builds(lambda i: orjson.dumps({"id": i, "pad": "x" * (i % 37)}), st.integers(0, 10**6)),
    st.sampled_from([b"", b"   ", b"not json", b"[1, 2]", b'{"a": "\\u00e9"}', b"{}\r"]),
)


@PROPERTY
@given(
    lines=st.lists(_jsonl_line, max_size=40),
    final_newline=st.booleans(),
    bom=st.booleans(),
    n=st.integers(1, 9),
)
@example(lines=[], final_newline=False, bom=False, n=3)
@example(lines=[b"{}"], final_newline=False, bom=False, n=5)
def test_jsonl_shards_cover_the_file_and_read_like_the_whole(
    tmp_path: Path, lines: list[bytes], final_newline: bool, bom: bool, n: int
) -> None:
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    if bom:
        data = b"\xef\xbb\xbf" + data
    path = tmp_path / "x.jsonl"
    path.write_bytes(data)
    shards = plan_shards(path, n)
    check_cover(data, shards, n)
    assert read_shards(path, shards) == read(JsonlSource(path))


def test_jsonl_shards_balance_bytes_and_number_lines_globally(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"id": i}) + b"\n" for i in range(1, 1001)))
    shards = plan_shards(path, 4, "jsonl")
    sizes = [s.size for s in shards]
    assert max(sizes) - min(sizes) <= 2 * len(b'{"id":1000}\n')
    firsts = []
    for shard in shards:
        records, _ = read(open_shard(path, shard))
        assert records[0][0] == shard.first_line
        assert orjson.loads(records[0][1])["id"] == shard.first_line
        firsts.append(shard.first_line)
    assert firsts[0] == 1 and firsts == sorted(set(firsts))


def test_more_shards_than_lines_leaves_empty_shards(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}\n')
    shards = plan_shards(path, 6)
    check_cover(path.read_bytes(), shards, 6)
    assert sum(1 for s in shards if s.size) == 2
    assert [r[0] for r in read_shards(path, shards)[0]] == [1, 2]
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert [(s.start, s.stop, s.first_line) for s in plan_shards(empty, 2)] == [(0, 0, 1)] * 2


def test_a_line_longer_than_a_shard_stays_whole(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    long = orjson.dumps({"blob": "y" * 100_000})
    path.write_bytes(b'{"a": 1}\n' + long + b'\n{"a": 2}\n')
    shards = plan_shards(path, 8)
    check_cover(path.read_bytes(), shards, 8)
    assert read_shards(path, shards) == read(JsonlSource(path))


def test_plan_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        plan_shards(tmp_path / "missing.jsonl", 2)
    with pytest.raises(SourceError, match="unknown input format"):
        plan_shards(tmp_path / "x.txt", 2)
    with pytest.raises(ConfigError, match=">= 1"):
        plan_shards(tmp_path / "x.jsonl", 0)
    (tmp_path / "h.csv").write_bytes(b"\n\n")
    with pytest.raises(SourceError, match="no header row"):
        plan_shards(tmp_path / "h.csv", 2)


def test_shard_paths() -> None:
    assert shard_path("d/x.csv", 1, 3, ".asyncsync") == Path("d/x.csv.shard-1-of-3.asyncsync")
    assert shard_path("x.jsonl", 0, 2, ".failed.jsonl").name == "x.jsonl.shard-0-of-2.failed.jsonl"
    assert Shard(2, 10, 20, 5, 4).label == "2/4"


# --- CSV -------------------------------------------------------------------------------------

# fields as csv.writer quotes them (RFC 4180): commas, quotes and newlines inside quotes
_rfc_field = st.text(alphabet='ab ,"\n\r\t', max_size=8)
# raw field text as people write it by hand: stray quotes in unquoted fields, text after a
# closing quote, quoted fields spanning lines
_raw_field = st.one_of(
    st.text(alphabet="ab x", max_size=5),
    st.sampled_from(['5" screen', '"x"y', '"a\nb"', '"a""b"', '""', '"\n"', 'ab"', '"a,b"']),
)


def _write_rfc(rows: list[list[str]], width: int) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([f"c{i}" for i in range(width)])
    for row in rows:
        writer.writerow((row + [""] * width)[:width])
    return out.getvalue().encode()


@PROPERTY
@given(
    rows=st.lists(st.lists(_rfc_field, min_size=1, max_size=3), max_size=25),
    blank_lines=st.booleans(),
    n=st.integers(1, 7),
)
def test_csv_shards_cut_at_row_starts_whatever_the_quoted_newlines(
    tmp_path: Path, rows: list[list[str]], blank_lines: bool, n: int
) -> None:
    data = _write_rfc(rows, 3)
    if blank_lines:
        data = b"\n" + data.replace(b"\n", b"\n\n", 2)
    path = tmp_path / "x.csv"
    path.write_bytes(data)
    try:
        whole = read(CsvSource(path))
    except SourceError:
        assume(False)  # what the reader refuses whole, the planner may refuse too
    shards = plan_shards(path, n)
    header_end = shards[0].start
    check_cover(data, shards, n, data_start=header_end)
    assert read_shards(path, shards) == whole


@PROPERTY
@given(
    rows=st.lists(st.lists(_raw_field, min_size=1, max_size=3), min_size=1, max_size=25),
    crlf=st.booleans(),
    bom=st.booleans(),
    n=st.integers(1, 7),
)
@example(rows=[['5" screen'], ['"a\nb"'], ["x"]], crlf=False, bom=False, n=3)
@example(rows=[['"x"y'], ['"\n"'], ['ab"']], crlf=True, bom=True, n=2)
def test_csv_shards_follow_the_csv_module_on_non_rfc_quotes(
    tmp_path: Path, rows: list[list[str]], crlf: bool, bom: bool, n: int
) -> None:
    """Quote parity would split these files inside a row; the planner must not."""
    end = "\r\n" if crlf else "\n"
    text = "h1,h2,h3" + end + "".join(",".join(row) + end for row in rows)
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    path = tmp_path / "x.csv"
    path.write_bytes(data)
    try:
        whole = read(CsvSource(path))
    except SourceError:
        # consistent: refused by the planner or by a shard's reader, before any request
        with pytest.raises(SourceError):
            read_all_shards(path, n)
        return
    shards = plan_shards(path, n)
    check_cover(data, shards, n, data_start=shards[0].start)
    assert read_shards(path, shards) == whole


def test_csv_header_belongs_to_every_shard_and_lines_stay_global(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    body = "".join(f'{i},"line one\nline two {i}"\n' for i in range(1, 201))
    path.write_text("\ufeffid,note\n" + body)
    shards = plan_shards(path, 3)
    assert shards[0].start == len("\ufeffid,note\n".encode())
    for shard in shards:
        records, rejects = read(open_shard(path, shard))
        assert not rejects
        first = orjson.loads(records[0][1])
        assert set(first) == {"id", "note"}
        # row i starts on line 2i (header on line 1, two lines per row)
        assert records[0][0] == shard.first_line == 2 * int(first["id"])


def test_csv_without_quotes_uses_line_starts(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(b"a,b\n" + b"".join(b"%d,x\n" % i for i in range(500)))
    shards = plan_shards(path, 4)
    check_cover(path.read_bytes(), shards, 4, data_start=4)
    assert read_shards(path, shards) == read(CsvSource(path))


def test_csv_reader_refuses_a_row_running_past_its_stop(tmp_path: Path) -> None:
    """A range cut inside a quoted field (a plan that no longer matches the file) is a
    SourceError naming the line, never half a row sent."""
    path = tmp_path / "x.csv"
    path.write_bytes(b'a,b\n1,"x\ny"\n2,z\n')
    inside = path.read_bytes().index(b"y")  # a line start inside the quoted field
    with pytest.raises(SourceError, match="line 2: the row starting here runs past"):
        read(CsvSource(path, stop_offset=inside))
    # a stop at a row start is fine, and the next range reads on from there
    row3 = path.read_bytes().index(b"2,z")
    assert [p for p, _ in read(CsvSource(path, stop_offset=row3))[0]] == [2]
    assert [p for p, _ in read(CsvSource(path, start_offset=row3, start_line=4))[0]] == [4]


def test_sources_read_only_their_range(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a":1}\n{"a":2}\n{"a":3}\n')
    src = JsonlSource(path, start_offset=8, start_line=2, stop_offset=16)
    assert src.size == 8
    assert read(src) == ([(2, b'{"a":2}')], [])
    with pytest.raises(ConfigError, match="stop_offset"):
        JsonlSource(path, start_offset=8, stop_offset=4)
