"""Sources: JSONL, CSV, stdin and iterables become blocks of exact record bytes and rejects."""

from __future__ import annotations

import asyncio
import csv
import gc
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncsync._batcher import batch
from asyncsync._config import BatchLimits
from asyncsync._exceptions import ConfigError, SourceError
from asyncsync._records import Batch, RecordBlock, Rejected
from asyncsync.sources import _csv, _jsonl, _validate
from asyncsync.sources._csv import CsvSource
from asyncsync.sources._iterable import IterableSource
from asyncsync.sources._jsonl import JsonlSource, StdinSource, _LineParser
from asyncsync.sources._open import open_source
from asyncsync.sources._protocol import Source

Got = tuple[list[tuple[int, bytes]], list[Rejected], list[RecordBlock]]


async def drain(src: Source) -> Got:
    records: list[tuple[int, bytes]] = []
    rejects: list[Rejected] = []
    blocks: list[RecordBlock] = []
    async for block in src.blocks():
        assert len(block.records) == len(block.positions)
        records += zip(block.positions, block.records, strict=True)
        rejects += block.rejects
        blocks.append(block)
    return records, rejects, blocks


def write(tmp_path: Path, data: bytes, name: str = "in.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def parse(data: bytes, *, chunk: int = 7, max_line_bytes: int = 1 << 20) -> Got:
    """The JSONL parser alone, fed ``chunk`` bytes at a time."""
    parser = _LineParser(max_line_bytes=max_line_bytes)
    blocks = [parser.feed(data[i : i + chunk]) for i in range(0, len(data), chunk)]
    blocks.append(parser.finish())
    records: list[tuple[int, bytes]] = []
    rejects: list[Rejected] = []
    for b in blocks:
        if b is not None:
            records += zip(b.positions, b.records, strict=True)
            rejects += b.rejects
    return records, rejects, [b for b in blocks if b is not None]


# --------------------------------------------------------------------------- JSONL


async def test_jsonl_records_are_the_original_line_bytes(tmp_path: Path) -> None:
    """Each line is sent as written (spacing, key order, number spelling), at its line number."""
    lines = [b'{"b": 2, "a": 1}', b'{"x":1.50,"y":"\\u00e9"}', b'{"nested":{"k":[1,{"z":null}]}}']
    records, rejects, blocks = await drain(JsonlSource(write(tmp_path, b"\n".join(lines) + b"\n")))
    assert records == [(1, lines[0]), (2, lines[1]), (3, lines[2])]
    assert rejects == []
    assert blocks[-1].end_offset == sum(len(x) + 1 for x in lines)


async def test_jsonl_bom_crlf_and_blank_lines(tmp_path: Path) -> None:
    """A BOM at the start, CRLF endings and blank lines are fine; blank lines count."""
    data = b'\xef\xbb\xbf{"a":1}\r\n\r\n   \t \r\n{"b":2}\r\n\n{"c":3}'
    records, rejects, _ = await drain(JsonlSource(write(tmp_path, data)))
    assert records == [(1, b'{"a":1}'), (4, b'{"b":2}'), (6, b'{"c":3}')]
    assert rejects == []


async def test_jsonl_surrounding_whitespace_is_stripped_not_reformatted(tmp_path: Path) -> None:
    """Leading and trailing JSON whitespace goes; the object's inner spacing stays."""
    data = b'  \t{ "a" : [ 1 , 2 ] }  \t\r\n'
    records, _, _ = await drain(JsonlSource(write(tmp_path, data)))
    assert records == [(1, b'{ "a" : [ 1 , 2 ] }')]


async def test_jsonl_malformed_and_non_object_lines_are_rejected_with_line_numbers(
    tmp_path: Path,
) -> None:
    """Bad lines become Rejected(raw, position=line, line=line, reason='line N: ...')."""
    data = b"\n".join(
        [
            b'{"ok":1}',
            b'{"a":1',  # truncated
            b"[1,2]",
            b'"just a string"',
            b"42",
            b"null",
            b'{"a":1} {"b":2}',  # two objects on one line
            b"{'a':1}",
            b'{"a":NaN}',
            b'{"a":1,}',
            b'{"ok":2}',
        ]
    )
    records, rejects, _ = await drain(JsonlSource(write(tmp_path, data)))
    assert records == [(1, b'{"ok":1}'), (11, b'{"ok":2}')]
    assert [r.line for r in rejects] == list(range(2, 11))
    assert [r.position for r in rejects] == list(range(2, 11))
    for r in rejects:
        assert r.reason.startswith(f"line {r.line}: ")
    by_line = {r.line: r for r in rejects}
    assert by_line[2].raw == '{"a":1'
    assert by_line[2].reason.startswith("line 2: malformed JSON")
    assert by_line[3].reason == "line 3: not a JSON object (array)"
    assert by_line[4].reason == "line 4: not a JSON object (str)"
    assert by_line[5].reason == "line 5: not a JSON object (int)"
    assert by_line[6].reason == "line 6: not a JSON object (null)"
    assert "trailing" in by_line[7].reason


async def test_jsonl_invalid_utf8_and_nul_bytes_are_rejected(tmp_path: Path) -> None:
    """msgspec does not check UTF-8 inside strings; the source does."""
    bad = [
        b'{"a":"\xff"}',
        b'{"\xc3":1}',  # truncated sequence in a key
        b'{"a":"\xc0\xaf"}',  # overlong
        b'{"a":"\xed\xa0\x80"}',  # UTF-8-encoded surrogate
        b'{"a":"x\x00y"}',
        b'{"a":1}\x00',
        b"\x00",
        b'{"a":"\x01"}',  # raw control character
        b'{"a":"\\ud800"}',  # lone surrogate escape
    ]
    good = b'{"a":"\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80"}'
    data = b"\n".join([*bad, good]) + b"\n"
    records, rejects, _ = await drain(JsonlSource(write(tmp_path, data)))
    assert records == [(len(bad) + 1, good)]
    assert [r.line for r in rejects] == list(range(1, len(bad) + 1))
    assert "invalid UTF-8" in rejects[0].reason
    assert rejects[0].raw == '{"a":"\ufffd"}'  # decoded with errors="replace"
    assert "NUL" in rejects[4].reason and "NUL" in rejects[5].reason


async def test_jsonl_non_ascii_block_with_one_bad_line(tmp_path: Path) -> None:
    """A mostly valid non-ASCII file: only the bad line goes, even across tiny blocks."""
    lines = [orjson.dumps({"name": f"Jürgen Ø {i}", "city": "東京"}) for i in range(200)]
    lines[137] = b'{"name":"\xe6\x97"}'
    data = b"\n".join(lines) + b"\n"
    for block_size in (5, 64, 1 << 20):
        records, rejects, _ = await drain(JsonlSource(write(tmp_path, data), block_size=block_size))
        assert [r.line for r in rejects] == [138]
        assert [p for p, _ in records] == [i + 1 for i in range(200) if i != 137]
        assert [r for _, r in records] == [x for i, x in enumerate(lines) if i != 137]


async def test_jsonl_big_numbers_duplicate_keys_and_deep_nesting_pass_unchanged(
    tmp_path: Path,
) -> None:
    """Valid JSON the validator accepts is delivered byte for byte, never re-serialised."""
    lines = [
        b'{"n":' + b"9" * 100 + b"}",
        b'{"n":-' + b"1" * 300 + b".5e-99999}",
        b'{"f":1e400,"g":-0,"h":1E+2}',
        b'{"a":1,"a":2,"a":{"a":3}}',
        b'{"d":' + b"[" * 400 + b"]" * 400 + b"}",
        b'{"d":' + b'{"x":' * 300 + b"1" + b"}" * 300 + b"}",
        b'{"\\u0000":"\\u0000\\n\\"\\\\\\/\\b\\f\\r\\t"}',
        b'{"s":"\xf4\x8f\xbf\xbf","t":"\\ud83d\\ude00"}',
    ]
    records, rejects, _ = await drain(JsonlSource(write(tmp_path, b"\n".join(lines))))
    assert rejects == []
    assert [r for _, r in records] == lines


async def test_jsonl_nesting_past_the_validator_limit_is_rejected_not_a_crash(
    tmp_path: Path,
) -> None:
    """100 000 levels: rejected as too deeply nested; the next line still goes."""
    data = b'{"d":' + b"[" * 100_000 + b"]" * 100_000 + b'}\n{"ok":1}\n'
    records, rejects, _ = await drain(JsonlSource(write(tmp_path, data)))
    assert records == [(2, b'{"ok":1}')]
    assert rejects[0].line == 1
    assert "nested too deeply" in rejects[0].reason
    assert len(rejects[0].raw) <= 64 * 1024 + 1  # raw is capped


async def test_jsonl_empty_file_and_blank_only_file(tmp_path: Path) -> None:
    """No records, no rejects, no error."""
    for data in (b"", b"\n\n  \r\n\t\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\r\n"):
        records, rejects, _ = await drain(JsonlSource(write(tmp_path, data)))
        assert (records, rejects) == ([], [])


async def test_jsonl_binary_garbage_is_all_rejected_with_line_numbers(tmp_path: Path) -> None:
    """Random bytes: every non-blank line is rejected with its line number, nothing crashes."""
    data = random.Random(7).randbytes(300_000)
    records, rejects, blocks = await drain(JsonlSource(write(tmp_path, data), block_size=4096))
    lines = data.split(b"\n")
    expected = [i + 1 for i, line in enumerate(lines) if line.strip(b" \t\r\n")]
    assert records == []
    assert [r.line for r in rejects] == expected
    assert sum(b.bytes_read for b in blocks) == len(data)


async def test_jsonl_huge_line_is_rejected_in_bounded_memory(tmp_path: Path) -> None:
    """A 10 KiB line over a 1 KiB limit: rejected with its number, the rest goes on."""
    huge = b'{"big":"' + b"x" * 10_240 + b'"}'
    data = b'{"a":1}\n' + huge + b'\n{"b":2}\n' + huge + b"\n" + huge
    path = write(tmp_path, data)
    for block_size in (256, 4096, 1 << 20):
        src = JsonlSource(path, block_size=block_size, max_line_bytes=1024)
        records, rejects, blocks = await drain(src)
        assert records == [(1, b'{"a":1}'), (3, b'{"b":2}')]
        assert [r.line for r in rejects] == [2, 4, 5]
        for r in rejects:
            assert f"line of {len(huge)} bytes exceeds max_line_bytes (1024)" in r.reason
            assert r.raw.startswith('{"big":"xxx')
        assert sum(b.bytes_read for b in blocks) == len(data)


def test_jsonl_parser_never_holds_more_than_the_limit_plus_a_chunk() -> None:
    """The carry of a partial line is dropped once it passes max_line_bytes."""
    parser = _LineParser(max_line_bytes=1024)
    chunk = b"y" * 256
    peak = 0
    for _ in range(400):  # a 100 KiB line
        parser.feed(chunk)
        peak = max(peak, parser._carry_len)
    block = parser.feed(b'yy\n{"a":1}\n')
    assert peak <= 1024 + 256
    assert block is not None
    assert [r.line for r in block.rejects] == [1]
    assert block.records == [b'{"a":1}'] and list(block.positions) == [2]


async def test_jsonl_20mb_line_stays_in_bounded_memory(tmp_path: Path) -> None:
    """Peak traced memory while reading a 20 MB line is about max_line_bytes + block_size."""
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as f:
        f.write(b'{"a":1}\n{"big":"')
        for _ in range(20):
            f.write(b"z" * (1 << 20))
        f.write(b'"}\n{"b":2}\n')
    gc.collect()
    tracemalloc.start()
    try:
        src = JsonlSource(path, block_size=64 * 1024, max_line_bytes=128 * 1024)
        records, rejects, _ = await drain(src)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [p for p, _ in records] == [1, 3]
    assert [r.line for r in rejects] == [2]
    assert peak < 2 * 1024 * 1024, peak


async def test_jsonl_block_offsets_and_bytes_read(tmp_path: Path) -> None:
    """end_offset is just after each block's last record; bytes_read adds up to the file."""
    lines = [orjson.dumps({"i": i, "pad": "p" * (i % 13)}) for i in range(500)]
    lines[499] = b"oops"  # trailing reject: the last block's end_offset stays at its last record
    data = b"\n".join(lines) + b"\n"
    _, _, blocks = await drain(JsonlSource(write(tmp_path, data), block_size=1000))
    assert sum(b.bytes_read for b in blocks) == len(data)
    for b in blocks:
        if b.records:
            last = b.positions[-1]
            assert b.end_offset == sum(len(x) + 1 for x in lines[:last])
        else:
            assert b.end_offset is None


async def test_jsonl_resume_from_any_end_offset_yields_exactly_the_rest(tmp_path: Path) -> None:
    """A new source at (end_offset, next line) continues exactly where the block ended."""
    rng = random.Random(3)
    lines = []
    for i in range(300):
        choice = rng.random()
        if choice < 0.1:
            lines.append(b"")
        elif choice < 0.2:
            lines.append(b"{broken")
        else:
            lines.append(orjson.dumps({"i": i, "s": "é" * rng.randrange(20)}))
    data = b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n"
    path = write(tmp_path, data)
    full, full_rejects, blocks = await drain(JsonlSource(path, block_size=397))
    assert len(blocks) > 10
    for b in blocks:
        if b.end_offset is None:
            continue
        last = b.positions[-1]
        for start_line in (last + 1, None):
            rest, rest_rejects, _ = await drain(
                JsonlSource(path, start_offset=b.end_offset, start_line=start_line)
            )
            assert rest == [r for r in full if r[0] > last]
            assert [r.position for r in rest_rejects] == [
                r.position for r in full_rejects if r.position > last
            ]


async def test_jsonl_resume_at_a_bad_offset_is_a_source_error(tmp_path: Path) -> None:
    """An offset that is not a line start (the file changed) or past the end is refused."""
    path = write(tmp_path, b'{"a":1}\n{"b":2}\n')
    with pytest.raises(SourceError, match="not at the start of a line"):
        await drain(JsonlSource(path, start_offset=3))
    with pytest.raises(SourceError, match="past the end"):
        await drain(JsonlSource(path, start_offset=100))
    records, _, _ = await drain(JsonlSource(path, start_offset=16))
    assert records == []
    no_newline = write(tmp_path, b'{"a":1}\n{"b":2}', "n.jsonl")
    records, _, _ = await drain(JsonlSource(no_newline, start_offset=15))
    assert records == []
    with pytest.raises(SourceError, match="not at the start of a line"):
        await drain(JsonlSource(no_newline, start_offset=14))


async def test_missing_unreadable_or_directory_path_fails_at_construction(tmp_path: Path) -> None:
    """SourceError naming the path, raised before anything is read (or sent)."""
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(SourceError, match=r"nope\.jsonl: no such file") as info:
        JsonlSource(missing)
    assert info.value.path == str(missing)
    with pytest.raises(SourceError, match="is a directory"):
        JsonlSource(tmp_path)
    with pytest.raises(SourceError, match="no such file"):
        CsvSource(tmp_path / "nope.csv")
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(missing))


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    """Keyword settings are validated at construction, naming the field."""
    path = write(tmp_path, b"")
    with pytest.raises(ConfigError) as info:
        JsonlSource(path, block_size=0)
    assert info.value.field == "block_size"
    with pytest.raises(ConfigError):
        JsonlSource(path, start_offset=-1)
    with pytest.raises(ConfigError):
        JsonlSource(path, start_line=0)


async def test_jsonl_source_reports_size_and_kind(tmp_path: Path) -> None:
    """size is what is left to read (for an ETA)."""
    path = write(tmp_path, b'{"a":1}\n{"b":2}\n')
    assert JsonlSource(path).size == 16
    assert JsonlSource(path, start_offset=8).size == 8
    assert JsonlSource(path).kind == "jsonl"
    assert JsonlSource(path).name == str(path)


async def test_jsonl_reads_off_the_event_loop(tmp_path: Path) -> None:
    """A FIFO that a writer fills slowly: the loop keeps ticking while the source waits."""
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    src = JsonlSource(fifo)
    assert src.size is None
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    def writer() -> None:
        with open(fifo, "wb") as f:
            for i in range(3):
                time.sleep(0.05)
                f.write(b'{"i":%d}\n' % i)
                f.flush()

    t = threading.Thread(target=writer)
    t.start()
    tick_task = asyncio.create_task(ticker())
    try:
        records, _, _ = await drain(src)
    finally:
        tick_task.cancel()
        t.join()
    assert [p for p, _ in records] == [1, 2, 3]
    assert ticks >= 10


def reader_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"asyncsync-read {name}"]


async def gone(name: str) -> bool:
    """Wait (up to 2 s) for the source's reader thread to end."""
    for _ in range(200):
        if not reader_threads(name):
            return True
        await asyncio.sleep(0.01)
    return False


async def test_jsonl_cancelled_while_a_fifo_open_blocks(tmp_path: Path) -> None:
    """Cancelling while open() waits for a writer: the task ends now, the file is closed later."""
    fifo = tmp_path / "never.jsonl"
    os.mkfifo(fifo)
    task = asyncio.create_task(drain(JsonlSource(fifo)))
    await asyncio.sleep(0.05)
    assert reader_threads("never.jsonl")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    with open(fifo, "wb"):  # noqa: ASYNC230 - a writer at last: the abandoned open returns
        pass
    assert await gone("never.jsonl")


async def test_jsonl_stopping_early_closes_the_file_and_thread(tmp_path: Path) -> None:
    """aclose() mid-file ends the reader thread."""
    path = write(tmp_path, b'{"a":1}\n' * 10_000, "early.jsonl")
    gen = JsonlSource(path, block_size=100).blocks()
    await anext(gen)
    assert reader_threads("early.jsonl")
    await gen.aclose()
    assert await gone("early.jsonl")


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
async def test_read_ahead_stops_cleanly_and_keeps_errors_in_order(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next block is read while this one is used: stopping early drops that read (no
    stray error or warning); a read that fails comes after every block read before it."""
    if kind == "jsonl":
        path = write(tmp_path, b'{"a":1}\n' * 1000, "ahead.jsonl")
        src: Source = JsonlSource(path, block_size=64)
        cls: Any = _LineParser
        name = "feed"
    else:
        path = write(tmp_path, b"a\n" + b"1\n" * 5000, "ahead.csv")
        src = CsvSource(path, block_rows=16)
        cls = _csv._CsvReader
        name = "read_block"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gen = src.blocks()
        await anext(gen)  # the next block is already being read
        await gen.aclose()
        assert await gone(path.name)
        gc.collect()

    real = getattr(cls, name)
    calls = 0

    def failing(self: Any, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise SourceError("read failed", path=str(path))
        return real(self, *args)

    monkeypatch.setattr(cls, name, failing)
    got: list[RecordBlock] = []

    async def collect() -> None:
        async for block in src.blocks():
            got.append(block)

    with pytest.raises(SourceError, match="read failed"):
        await collect()
    assert len(got) == 2
    assert await gone(path.name)


# --------------------------------------------------------------------------- JSONL fuzz

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_objects = st.dictionaries(st.text(max_size=10), _json_values, max_size=5)


def _dumps(obj: Any, ascii_only: bool) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only, separators=(",", ":")).encode()


_encoded = st.builds(_dumps, _objects, st.booleans())
_ws = st.text(alphabet=" \t", max_size=3).map(str.encode)
_good_line = st.builds(lambda pre, obj, post: pre + obj + post, _ws, _encoded, _ws)
_bad_line = st.binary(max_size=40).filter(lambda b: b"\n" not in b)
_mutated = st.builds(lambda obj, cut: obj[:cut], _encoded, st.integers(min_value=0, max_value=30))
_bom_line = st.builds(lambda pre, line: pre + b"\xef\xbb\xbf" + line, _ws, _good_line)
# \x0b and \x0c are whitespace to bytes.strip() but not to JSON: such lines are rejected
_odd_ws = st.text(alphabet=" \t\r\x0b\x0c\x85\xa0", max_size=3).map(str.encode)
_odd_ws_line = st.builds(lambda pre, obj, post: pre + obj + post, _odd_ws, _encoded, _odd_ws)
_line = st.one_of(
    _good_line,
    _good_line,
    _bad_line,
    _mutated,
    _bom_line,
    _odd_ws_line,
    st.just(b""),
    st.just(b"  \r"),
)


def _no_constants(name: str) -> Any:
    raise ValueError(name)


def _oracle(line: bytes) -> bool:
    """Is the stripped line exactly one JSON object? (stdlib json, without NaN/Infinity)."""
    try:
        obj = json.loads(line.decode(), parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return False
    if not isinstance(obj, dict):
        return False
    try:
        orjson.dumps(obj)
    except TypeError as exc:
        # stdlib accepts lone surrogate escapes ("\ud800"); the validator, like orjson, does not
        return "surrogates" not in str(exc)
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(_line, max_size=25),
    crlf=st.booleans(),
    trailing_newline=st.booleans(),
    chunk=st.integers(min_value=1, max_value=64),
)
def test_fuzz_jsonl_parser(
    lines: list[bytes], crlf: bool, trailing_newline: bool, chunk: int
) -> None:
    """Every non-blank line is delivered byte-identical (stripped) or rejected with its number."""
    sep = b"\r\n" if crlf else b"\n"
    data = sep.join(lines) + (sep if trailing_newline and lines else b"")
    records, rejects, blocks = parse(data, chunk=chunk)
    delivered = dict(records)
    rejected = {r.line: r for r in rejects}
    assert len(delivered) == len(records) and len(rejected) == len(rejects)
    assert not delivered.keys() & rejected.keys()
    physical = data.split(b"\n")
    for i, raw in enumerate(physical, 1):
        line = raw.strip(b" \t\r\n")
        if i == 1 and line.startswith(b"\xef\xbb\xbf"):  # a BOM at the start of the stream
            line = line[3:].strip(b" \t\r\n")
        if not line:
            assert i not in delivered and i not in rejected
        elif i in delivered:
            assert delivered[i] == line
            assert _oracle(line)
        else:
            assert i in rejected, (i, line)
            assert rejected[i].reason.startswith(f"line {i}: ")
            assert rejected[i].position == i
            assert not _oracle(line)
    # the same records whatever the chunking
    assert parse(data, chunk=len(data) + 1)[:2] == (records, rejects)
    assert sum(b.bytes_read for b in blocks) == len(data)


@settings(max_examples=40, deadline=None)
@given(lines=st.lists(_line, max_size=30), block_size=st.integers(min_value=1, max_value=200))
def test_fuzz_jsonl_source_matches_the_parser(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes], block_size: int
) -> None:
    """The file source (with a BOM) gives what the parser gives, for any block size."""
    data = b"\xef\xbb\xbf" + b"\n".join(lines)
    path = tmp_path_factory.mktemp("fuzz") / "f.jsonl"
    path.write_bytes(data)
    records, rejects, _ = asyncio.run(drain(JsonlSource(path, block_size=block_size)))
    expected = parse(data, chunk=len(data) + 1)
    assert (records, rejects) == expected[:2]


@settings(max_examples=500, deadline=None)
@given(
    text=st.text(max_size=40).map(str.encode),
    noise=st.lists(st.tuples(st.integers(min_value=0, max_value=60), st.binary(max_size=3))),
    piece=st.integers(min_value=4, max_value=9),
)
def test_fuzz_utf8_check_in_pieces_is_a_full_decode(
    text: bytes, noise: list[tuple[int, bytes]], piece: int
) -> None:
    """Checking UTF-8 piece by piece agrees with decoding it whole, wherever pieces cut."""
    data = bytearray(text)
    for at, junk in noise:  # broken, cut and stray sequences among valid ones
        data[at:at] = junk
    try:
        bytes(data).decode()
    except UnicodeDecodeError:
        valid = False
    else:
        valid = True
    assert _validate._utf8_ok(bytes(data), piece) is valid
    assert _validate._utf8_ok(memoryview(bytes(data)), piece) is valid


# --------------------------------------------------------------------------- CSV


async def test_csv_rows_become_objects_of_strings(tmp_path: Path) -> None:
    """Header gives the keys; values stay strings; encoded with orjson."""
    path = write(
        tmp_path, b'\xef\xbb\xbfid,name,amount\r\n1,Ann,3.50\r\n2,"Bob, Jr.",\r\n', "a.csv"
    )
    records, rejects, blocks = await drain(CsvSource(path))
    assert rejects == []
    assert records == [
        (2, orjson.dumps({"id": "1", "name": "Ann", "amount": "3.50"})),
        (3, orjson.dumps({"id": "2", "name": "Bob, Jr.", "amount": ""})),
    ]
    assert blocks[-1].end_offset == path.stat().st_size
    assert sum(b.bytes_read for b in blocks) == CsvSource(path).size


async def test_csv_quoted_newlines_keep_line_numbers_right(tmp_path: Path) -> None:
    """A row's position is the physical line where it starts."""
    data = b'a,b\n1,"two\nlines"\n2,x\n3,"three\r\n\r\nlines"\n4,y\n'
    records, rejects, _ = await drain(CsvSource(write(tmp_path, data, "q.csv")))
    assert rejects == []
    assert [p for p, _ in records] == [2, 4, 5, 8]
    assert orjson.loads(records[0][1]) == {"a": "1", "b": "two\nlines"}
    assert orjson.loads(records[2][1]) == {"a": "3", "b": "three\r\n\r\nlines"}


async def test_csv_ragged_rows_are_rejected_with_their_line(tmp_path: Path) -> None:
    """More or fewer fields than the header: rejected with the raw row text."""
    data = b'a,b\n1,2\n1,2,3\n\n1\n"multi\nline",2,3\n5,6\n'
    records, rejects, _ = await drain(CsvSource(write(tmp_path, data, "r.csv")))
    assert [p for p, _ in records] == [2, 8]
    assert [(r.line, r.position) for r in rejects] == [(3, 3), (5, 5), (6, 6)]
    assert rejects[0].reason == "line 3: row has 3 fields, header has 2"
    assert rejects[0].raw == "1,2,3"
    assert rejects[2].raw == '"multi\nline",2,3'


async def test_csv_empty_or_headerless_file_is_a_source_error(tmp_path: Path) -> None:
    """No header row: SourceError (exit 2); a header alone is an empty export."""
    for data in (b"", b"\n\r\n\n"):
        with pytest.raises(SourceError, match="empty CSV"):
            await drain(CsvSource(write(tmp_path, data, "e.csv")))
    records, rejects, _ = await drain(CsvSource(write(tmp_path, b"a,b\n", "h.csv")))
    assert (records, rejects) == ([], [])


async def test_csv_duplicate_header_is_a_source_error(tmp_path: Path) -> None:
    """Two columns with one name would silently lose data."""
    with pytest.raises(SourceError, match="duplicate column 'a'") as info:
        await drain(CsvSource(write(tmp_path, b"\n\na,b,a\n1,2,3\n", "d.csv")))
    assert info.value.line == 3


async def test_csv_invalid_utf8_row_is_rejected(tmp_path: Path) -> None:
    """An undecodable field rejects its row, not the file."""
    data = b"a,b\n1,\xff\xfe\n2,ok\n"
    records, rejects, _ = await drain(CsvSource(write(tmp_path, data, "u.csv")))
    assert [p for p, _ in records] == [3]
    assert [r.line for r in rejects] == [2]
    assert "invalid utf-8" in rejects[0].reason


async def test_csv_delimiter_and_encoding(tmp_path: Path) -> None:
    """Any one-character delimiter; any ASCII-compatible encoding."""
    data = "name;city\nJosé;Zürich\n".encode("latin-1")
    src = CsvSource(write(tmp_path, data, "l.csv"), delimiter=";", encoding="latin-1")
    records, _, _ = await drain(src)
    assert orjson.loads(records[0][1]) == {"name": "José", "city": "Zürich"}
    with pytest.raises(ConfigError) as info:
        CsvSource(write(tmp_path, b"", "x.csv"), encoding="utf-16")
    assert info.value.field == "encoding"
    with pytest.raises(ConfigError):
        CsvSource(write(tmp_path, b"", "x.csv"), encoding="no-such-codec")
    with pytest.raises(ConfigError):
        CsvSource(write(tmp_path, b"", "x.csv"), delimiter=",,")


async def test_csv_nul_bytes_pass_as_escaped_characters(tmp_path: Path) -> None:
    """CSV has no notion of NUL being special; JSON escapes it (\\u0000)."""
    records, rejects, _ = await drain(CsvSource(write(tmp_path, b"a\nx\x00y\n", "n.csv")))
    assert rejects == []
    assert records == [(2, b'{"a":"x\\u0000y"}')]


async def test_csv_oversized_field_or_row_is_a_source_error_with_line(tmp_path: Path) -> None:
    """Past csv.field_size_limit or max_row_bytes csv cannot resync: stop, naming the line."""
    big = b"a,b\n1,2\n3," + b"x" * (csv.field_size_limit() + 10) + b"\n5,6\n"
    with pytest.raises(SourceError, match="line 3: field larger than field limit") as info:
        await drain(CsvSource(write(tmp_path, big, "f.csv")))
    assert info.value.line == 3
    data = b'a,b\n1,2\n3,"' + b"y\n" * 600 + b'"\n'
    with pytest.raises(SourceError, match="line 3: row longer than 1000 bytes"):
        await drain(CsvSource(write(tmp_path, data, "g.csv"), max_row_bytes=1000))


async def test_csv_resume_from_end_offset(tmp_path: Path) -> None:
    """Resuming at a block's end offset yields exactly the remaining rows, numbered right."""
    rows = [["id", "text"]]
    for i in range(400):
        text = f"row {i}" + ("\nsecond line" if i % 7 == 0 else "") + ("," if i % 5 == 0 else "")
        rows.append([str(i), text] if i % 11 else [str(i)])
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    path = write(tmp_path, buf.getvalue().encode(), "resume.csv")
    full, full_rejects, blocks = await drain(CsvSource(path, block_rows=37))
    assert len(blocks) > 5 and full_rejects
    for b in blocks:
        if b.end_offset is None:
            continue
        last = b.positions[-1]
        src = CsvSource(path, start_offset=b.end_offset)
        rest, rest_rejects, rest_blocks = await drain(src)
        assert sum(x.bytes_read for x in rest_blocks) == src.size
        assert rest == [r for r in full if r[0] > last]
        assert [r.line for r in rest_rejects] == [r.line for r in full_rejects if r.position > last]


@settings(max_examples=60, deadline=None)
@given(
    header=st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=4, unique=True),
    rows=st.lists(st.lists(st.text(max_size=12), min_size=0, max_size=5), max_size=20),
)
def test_fuzz_csv_round_trip(
    tmp_path_factory: pytest.TempPathFactory, header: list[str], rows: list[list[str]]
) -> None:
    """Rows written by csv.writer come back as header->value objects or as ragged rejects."""
    header = [h.replace("\x00", "") or "k" for h in header]
    if len(set(header)) != len(header) or header == [""]:
        return
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    starts = []
    line = 1 + buf.getvalue().count("\n")
    for row in rows:
        starts.append(line)
        before = buf.tell()
        w.writerow(row)
        line += buf.getvalue()[before:].count("\n")
    data = buf.getvalue().encode("utf-8", "surrogatepass")
    path = tmp_path_factory.mktemp("csv") / "f.csv"
    path.write_bytes(data)
    records, rejects, _ = asyncio.run(drain(CsvSource(path)))
    got = dict(records)
    rejected = {r.line: r for r in rejects}
    for start, row in zip(starts, rows, strict=True):
        if row == [] or row == [""]:
            # csv.writer writes [] and [""] as an empty line (or '""'): a blank row or one field
            continue
        if len(row) == len(header):
            assert orjson.loads(got[start]) == dict(zip(header, row, strict=True))
        else:
            assert start in rejected


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=400))
def test_fuzz_csv_garbage_never_crashes(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    """Arbitrary bytes: records, rejects with line numbers, or a SourceError; nothing else."""
    path = tmp_path_factory.mktemp("csvg") / "g.csv"
    path.write_bytes(b"h1,h2\n" + data)
    try:
        records, rejects, _ = asyncio.run(drain(CsvSource(path)))
    except SourceError as exc:
        error: SourceError | None = exc
    else:
        error = None
    if error is not None:
        assert error.path == str(path)
        return
    for pos, rec in records:
        assert set(orjson.loads(rec)) == {"h1", "h2"}
        assert pos >= 2
    for r in rejects:
        assert r.reason.startswith(f"line {r.line}: ")


# --------------------------------------------------------------------------- stdin


async def test_stdin_pipe_with_slow_writes_flows_as_data_arrives() -> None:
    """Each line is delivered while the writer is still writing (no waiting for EOF)."""
    r, w = os.pipe()
    stream = open(r, "rb")  # noqa: SIM115, ASYNC230 - closed below
    got = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        with open(w, "wb", buffering=0) as f:
            for i in range(4):
                f.write(b'{"i":%d' % i)  # half a line...
                time.sleep(0.01)
                f.write(b"}\n")  # ...then the rest
                if not got.wait(5):
                    errors.append(f"line {i + 1} not delivered before the next write")
                got.clear()
            f.write(b"[1]\n")

    t = threading.Thread(target=writer)
    t.start()
    records: list[tuple[int, bytes]] = []
    rejects: list[Rejected] = []
    try:
        async for block in StdinSource(stream).blocks():
            records += zip(block.positions, block.records, strict=True)
            rejects += block.rejects
            if block.records:
                got.set()
            assert block.end_offset is None
    finally:
        t.join()
        stream.close()
    assert errors == []
    assert records == [(i + 1, b'{"i":%d}' % i) for i in range(4)]
    assert [r.line for r in rejects] == [5]


async def test_stdin_cancel_while_waiting_does_not_hang() -> None:
    """A read blocked on an idle pipe is abandoned on cancellation."""
    r, w = os.pipe()
    stream = open(r, "rb")  # noqa: SIM115, ASYNC230 - closed below
    try:
        task = asyncio.create_task(drain(StdinSource(stream)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 2)
    finally:
        os.close(w)  # EOF: the abandoned read returns and the thread ends
        await asyncio.sleep(0.05)
        stream.close()


def test_stdin_is_the_default_stream() -> None:
    """`open_source("-")` reads the process's real stdin."""
    code = (
        "import asyncio\n"
        "from asyncsync.sources._open import open_source\n"
        "async def main():\n"
        "    src = open_source('-')\n"
        "    async for b in src.blocks():\n"
        "        for p, r in zip(b.positions, b.records):\n"
        "            print(p, r.decode())\n"
        "        for r in b.rejects:\n"
        "            print(r.reason)\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=b'{"a":1}\r\n\nnope\n{"b":2}',
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.decode().splitlines() == [
        '1 {"a":1}',
        "line 3: malformed JSON: invalid character (byte 4)",
        '4 {"b":2}',
    ]


# --------------------------------------------------------------------------- iterables


async def test_iterable_of_dicts_sync_list() -> None:
    """Dicts are encoded with orjson; positions are 1-based indexes; blocks of block_size."""
    items = [{"i": i} for i in range(1200)]
    records, rejects, blocks = await drain(IterableSource(items, block_size=500))
    assert [len(b.records) for b in blocks] == [500, 500, 200]
    assert records == [(i + 1, orjson.dumps({"i": i})) for i in range(1200)]
    assert rejects == []


async def test_iterable_generator_runs_in_a_worker_thread() -> None:
    """A sync generator (a DB cursor, say) may block: it is advanced off the loop."""
    threads: set[str] = set()

    def gen() -> Iterator[dict[str, int]]:
        for i in range(1000):
            threads.add(threading.current_thread().name)
            yield {"i": i}

    records, _, blocks = await drain(IterableSource(gen()))
    assert len(records) == 1000 and len(blocks) == 2
    assert threading.current_thread().name not in threads


async def test_iterable_of_raw_json_bytes_and_str_is_validated() -> None:
    """Raw JSON items are sent as given (stripped) or rejected with their index."""
    items: list[Any] = [
        b'{"a": 1}',
        ' {"b":2}\n',
        bytearray(b'{"c":3}'),
        b"[1]",
        "{bad",
        b"",
        b'{"d":"\xff"}',
        "\udc80",
        memoryview(b'{"e":5}'),
    ]
    records, rejects, _ = await drain(IterableSource(items))
    assert records == [(1, b'{"a": 1}'), (2, b'{"b":2}'), (3, b'{"c":3}'), (9, b'{"e":5}')]
    assert [r.position for r in rejects] == [4, 5, 6, 7, 8]
    assert all(r.line is None for r in rejects)
    assert rejects[0].reason == "record 4: not a JSON object (array)"
    assert rejects[2].reason == "record 6: empty"
    assert "invalid UTF-8" in rejects[3].reason
    assert rejects[4].raw == "\ufffd"  # a lone surrogate cannot go into the dead-letter file
    assert orjson.dumps([r.raw for r in rejects])


async def test_iterable_all_bytes_fast_path_with_one_bad_item() -> None:
    """A block of bytes items with one bad one keeps the rest."""
    items = [orjson.dumps({"i": i}) for i in range(100)]
    items[50] = b'{"i":'
    records, rejects, _ = await drain(IterableSource(items))
    assert [p for p, _ in records] == [i for i in range(1, 101) if i != 51]
    assert [r.position for r in rejects] == [51]


async def test_iterable_unencodable_and_non_object_items_are_rejected() -> None:
    """Sets, custom objects, non-str keys, lists, scalars: Rejected with their index."""

    class Thing:
        def __repr__(self) -> str:
            return "<Thing>"

    items: list[Any] = [
        {"ok": 1},
        {"s": {1, 2}},
        Thing(),
        {1: "a"},
        [1, 2],
        3,
        {"big": 2**100},
        {"ok": 2},
    ]
    records, rejects, _ = await drain(IterableSource(items))
    assert records == [
        (1, b'{"ok":1}'),
        (7, b'{"big":1267650600228229401496703205376}'),
        (8, b'{"ok":2}'),
    ]
    assert [r.position for r in rejects] == [2, 3, 4, 5, 6]
    assert rejects[0].reason.startswith("record 2: cannot encode as JSON")
    assert rejects[1].raw == "<Thing>"
    assert rejects[3].reason == "record 5: not a JSON object (list)"


async def test_iterable_async_generator() -> None:
    """Async iterables work, dicts and bytes alike."""

    async def agen() -> AsyncIterator[Any]:
        for i in range(1500):
            yield {"i": i} if i % 2 else orjson.dumps({"i": i})

    records, rejects, blocks = await drain(IterableSource(agen(), block_size=256))
    assert records == [(i + 1, orjson.dumps({"i": i})) for i in range(1500)]
    assert rejects == []
    assert max(len(b.records) for b in blocks) <= 256


async def test_iterable_slow_async_stream_delivers_items_as_they_come() -> None:
    """Each item of a slow async stream is handed over without waiting for a full block."""
    seen: list[float] = []
    sent: list[float] = []

    async def slow() -> AsyncIterator[dict[str, int]]:
        for i in range(3):
            sent.append(time.monotonic())
            yield {"i": i}
            await asyncio.sleep(0.1)

    async for block in IterableSource(slow(), block_size=512).blocks():
        seen += [time.monotonic()] * len(block.records)
    assert len(seen) == 3
    for i in range(2):
        assert seen[i] < sent[i + 1]  # handed over before the next item even exists


async def test_iterable_errors_propagate_and_early_close_stops_the_pump() -> None:
    """The iterable's own exception reaches the consumer; aclose() cancels the helper task."""

    async def failing() -> AsyncIterator[dict[str, int]]:
        yield {"a": 1}
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await drain(IterableSource(failing()))

    def failing_sync() -> Iterator[dict[str, int]]:
        yield {"a": 1}
        raise KeyError("sync boom")

    with pytest.raises(KeyError, match="sync boom"):
        await drain(IterableSource(failing_sync()))

    async def endless() -> AsyncIterator[dict[str, int]]:
        i = 0
        while True:
            yield {"i": i}
            i += 1
            await asyncio.sleep(0)

    tasks_before = len(asyncio.all_tasks())
    gen = IterableSource(endless()).blocks()
    await anext(gen)
    await gen.aclose()
    assert len(asyncio.all_tasks()) == tasks_before


def test_iterable_rejects_non_iterables_and_single_records() -> None:
    """A dict, a str or bytes is one record, not an iterable of them: TypeError."""
    for bad in ({"a": 1}, "abc", b"{}", 42):
        with pytest.raises(TypeError):
            IterableSource(bad)


# --------------------------------------------------------------------------- open_source


def test_open_source_picks_by_extension(tmp_path: Path) -> None:
    """.jsonl/.ndjson/.json -> JSONL, .csv -> CSV, '-' -> stdin, iterables, sources."""
    for ext in (".jsonl", ".ndjson", ".json", ".JSONL"):
        assert isinstance(open_source(write(tmp_path, b"", f"f{ext}")), JsonlSource)
    assert isinstance(open_source(str(write(tmp_path, b"a\n", "f.csv"))), CsvSource)
    assert isinstance(open_source("-"), StdinSource)
    assert isinstance(open_source([{"a": 1}]), IterableSource)

    async def agen() -> AsyncIterator[dict[str, int]]:
        yield {"a": 1}

    assert isinstance(open_source(agen()), IterableSource)
    src = JsonlSource(write(tmp_path, b"", "x.jsonl"))
    assert open_source(src) is src
    txt = write(tmp_path, b"", "data.txt")
    with pytest.raises(SourceError, match=r"unknown input format '\.txt'.*\.jsonl.*\.csv"):
        open_source(txt)
    assert isinstance(open_source(txt, kind="jsonl"), JsonlSource)
    assert isinstance(open_source(txt, kind="csv"), CsvSource)
    with pytest.raises(ConfigError):
        open_source(txt, kind="xml")


def test_sources_satisfy_the_protocol(tmp_path: Path) -> None:
    """Every source has name, size, kind and blocks()."""
    path = write(tmp_path, b"a\n", "f.csv")
    for src, kind in [
        (JsonlSource(write(tmp_path, b"")), "jsonl"),
        (CsvSource(path), "csv"),
        (StdinSource(), "stdin"),
        (IterableSource([]), "iterable"),
    ]:
        assert isinstance(src, Source)
        assert src.kind == kind
        assert isinstance(src.name, str)


# --------------------------------------------------------------------------- per-record offsets


@dataclass(slots=True)
class OffsetBlock(RecordBlock):
    """RecordBlock with the per-record end offsets proposed for _records.py."""

    offsets: list[int] | None = None


@pytest.fixture
def record_offsets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the sources as they will when RecordBlock has an ``offsets`` field."""
    monkeypatch.setattr(_jsonl, "_RECORD_OFFSETS", True)
    monkeypatch.setattr(_csv, "_RECORD_OFFSETS", True)
    monkeypatch.setattr(_validate, "RecordBlock", OffsetBlock)


@pytest.mark.usefixtures("record_offsets")
async def test_jsonl_per_record_offsets(tmp_path: Path) -> None:
    """offsets[i] is the byte offset just after record i's line, whatever the block size."""
    lines = [b'\xef\xbb\xbf{"a":1}', b"", b"{bad", b' {"b":2} ', b"[]", b'{"c":3}', b'{"d":4}']
    data = b"\r\n".join(lines)  # the last line has no newline
    ends = {}
    offset = 0
    for i, line in enumerate(lines, 1):
        offset += len(line) + 2
        ends[i] = min(offset, len(data))
    for block_size in (3, 16, 1 << 20):
        _, _, blocks = await drain(JsonlSource(write(tmp_path, data), block_size=block_size))
        for b in blocks:
            assert isinstance(b, OffsetBlock)
            if b.records:
                assert list(b.offsets) == [ends[p] for p in b.positions]
                assert b.end_offset == b.offsets[-1]


@pytest.mark.usefixtures("record_offsets")
async def test_csv_per_record_offsets(tmp_path: Path) -> None:
    """offsets[i] is the byte offset just after row i (its last physical line)."""
    data = b'a,b\n1,"x\ny"\n2\n3,z\n'
    _, _, blocks = await drain(CsvSource(write(tmp_path, data, "o.csv"), block_rows=1))
    got = [(p, o) for b in blocks if b.records for p, o in zip(b.positions, b.offsets, strict=True)]  # type: ignore[attr-defined]
    assert got == [(2, 12), (5, len(data))]


@pytest.mark.usefixtures("record_offsets")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(_line, max_size=40),
    crlf=st.booleans(),
    trailing_newline=st.booleans(),
    chunk=st.integers(min_value=1, max_value=300),
    max_records=st.integers(min_value=1, max_value=9),
    start=st.integers(min_value=0, max_value=3),
)
def test_fuzz_jsonl_offsets_and_batch_ends_are_exact(
    lines: list[bytes],
    crlf: bool,
    trailing_newline: bool,
    chunk: int,
    max_records: int,
    start: int,
) -> None:
    """offsets[i] is the offset just after record i's line, whatever the block boundaries
    (clean blocks, CRLF, whitespace, rejects, a last line without newline), and every batch
    ends at its last record's line end, with exact byte counts and compact positions."""
    from asyncsync._batcher import _Cutter

    sep = b"\r\n" if crlf else b"\n"
    data = sep.join(lines) + (sep if trailing_newline and lines else b"")
    line_end = {}
    offset = 0
    for i, raw in enumerate(data.split(b"\n"), 1):
        offset = min(offset + len(raw) + 1, len(data))
        line_end[i] = offset
    parser = _LineParser(line=1 + start, offset=0)  # numbering may start anywhere
    blocks = [parser.feed(data[i : i + chunk]) for i in range(0, len(data), chunk)]
    blocks.append(parser.finish())
    cutter = _Cutter(BatchLimits(max_records=max_records), start_seq=0, overhead=1)
    items: list[Any] = []
    for b in blocks:
        if b is None:
            continue
        assert b.offsets is not None or not b.records
        if b.records:
            assert list(b.offsets) == [line_end[p - start] for p in b.positions]
            assert b.end_offset == line_end[b.positions[-1] - start]
        items += cutter.feed(b)
    items += cutter.finish()
    sent = []
    for bt in items:
        if isinstance(bt, Batch):
            assert bt.end_offset == line_end[bt.last - start]
            assert bt.nbytes == sum(map(len, bt.records))
            assert list(bt.positions) == sorted(set(bt.positions))
            consecutive = bt.last - bt.first == len(bt) - 1
            assert isinstance(bt.positions, range) == consecutive
            sent += zip(bt.positions, bt.records, strict=True)
    records, _, _ = parse(data, chunk=len(data) + 1)
    assert sent == [(p + start, r) for p, r in records]


async def test_with_per_record_offsets_every_batch_resumes_exactly(tmp_path: Path) -> None:
    """Every batch gets an end offset; resuming after any batch re-forms the rest exactly."""
    rng = random.Random(5)
    lines = [
        orjson.dumps({"i": i, "p": "é" * rng.randrange(30)}) if rng.random() > 0.1 else b"{x"
        for i in range(200)
    ]
    path = write(tmp_path, b"\n".join(lines) + b"\n")
    limits = BatchLimits(max_records=7)

    async def run(offset: int = 0, line: int = 1, seq: int = 0) -> list[Any]:
        src = JsonlSource(path, start_offset=offset, start_line=line, block_size=333)
        return [x async for x in batch(src.blocks(), limits, linger=False, start_seq=seq)]

    full = [x for x in await run() if isinstance(x, Batch)]
    assert all(b.end_offset is not None for b in full)
    for b in full[::5]:
        rest = [x for x in await run(b.end_offset, b.last + 1, b.seq + 1) if isinstance(x, Batch)]
        assert rest == full[b.seq + 1 :]
