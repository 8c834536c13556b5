"""JSON validation in a helper process: the same verdicts as the parser's own, and a broken
helper costs speed, never a record."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recording import assert_delivered_once, record_sink
from test_sources import _line, drain, parse
from test_upload_e2e import oauth

from asyncsync import StateOptions, upload
from asyncsync.sink import Sink, SinkConfig
from asyncsync.sources import _jsoncheck, _prevalidate
from asyncsync.sources._jsonl import JsonlSource
from asyncsync.sources._prevalidate import Prevalidator, worth_it


def helper_verdict(
    path: Path, *, block_size: int, max_line_bytes: int = 1 << 20, start: int = 0, line: int = 1
) -> tuple[set[int], int]:
    """The helper's check run in this process: (flagged line numbers, last THROUGH)."""
    flagged: set[int] = set()
    through = [line]

    def emit(upto: int, bad: list[int]) -> None:
        assert upto >= through[-1]
        assert all(through[-1] <= n < upto for n in bad), (through[-1], upto, bad)
        through.append(upto)
        flagged.update(bad)

    fd = os.open(path, os.O_RDONLY)
    try:
        _jsoncheck.check_range(fd, start, None, line, block_size, max_line_bytes, emit)
    finally:
        os.close(fd)
    return flagged, through[-1]


def child_pids() -> set[int]:
    """Live child processes of this process that run the helper."""
    found: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"_jsoncheck" in cmd:
                found.add(int(pid))
    return found


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(_line, max_size=25),
    crlf=st.booleans(),
    trailing_newline=st.booleans(),
    bom=st.booleans(),
    block_size=st.integers(min_value=1, max_value=64),
    max_line_bytes=st.sampled_from([12, 40, 1 << 20]),
)
def test_fuzz_helper_flags_exactly_the_lines_the_parser_does_not_deliver(
    tmp_path_factory: pytest.TempPathFactory,
    lines: list[bytes],
    crlf: bool,
    trailing_newline: bool,
    bom: bool,
    block_size: int,
    max_line_bytes: int,
) -> None:
    sep = b"\r\n" if crlf else b"\n"
    data = (b"\xef\xbb\xbf" if bom else b"") + sep.join(lines)
    data += sep if trailing_newline and lines else b""
    path = tmp_path_factory.mktemp("pv") / "f.jsonl"
    path.write_bytes(data)
    flagged, through = helper_verdict(path, block_size=block_size, max_line_bytes=max_line_bytes)
    records, _, _ = parse(data, chunk=len(data) + 1, max_line_bytes=max_line_bytes)
    physical = data.count(b"\n") + (not data.endswith(b"\n") and bool(data))
    delivered = {n for n, _ in records}
    # every line has a verdict, and a line is flagged exactly when it is not delivered
    # (rejected, blank or over-long)
    assert through == physical + 1
    assert flagged == set(range(1, physical + 1)) - delivered


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(_line, max_size=30),
    block_size=st.integers(min_value=1, max_value=200),
)
def test_fuzz_source_with_the_helper_matches_the_source_without(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes], block_size: int
) -> None:
    """Records, positions, rejects and their reasons, end offsets: all identical."""
    data = b"\xef\xbb\xbf" + b"\n".join(lines)
    path = tmp_path_factory.mktemp("pv") / "f.jsonl"
    path.write_bytes(data)
    plain = asyncio.run(drain(JsonlSource(path, block_size=block_size, prevalidate=False)))
    helped = asyncio.run(drain(JsonlSource(path, block_size=block_size, prevalidate=True)))
    assert helped[:2] == plain[:2]
    assert [b.end_offset for b in helped[2]] == [b.end_offset for b in plain[2]]


def export(tmp_path: Path, n: int = 3000) -> tuple[Path, set[int]]:
    """n lines, every 97th bad in a different way, a few blank."""
    out = []
    bad = set()
    for i in range(1, n + 1):
        if i % 97 == 0:
            out.append([b'{"id": 1', b"[1, 2]", b"\xff\xfe{}", b"nope"][i // 97 % 4])
            bad.add(i)
        elif i % 500 == 0:
            out.append(b"")
        else:
            out.append(b'{"id": %d, "name": "r\xc3\xa9cord %d"}' % (i, i))
    path = tmp_path / "export.jsonl"
    path.write_bytes(b"\n".join(out) + b"\n")
    return path, bad


async def test_resumed_shard_with_the_helper_matches_the_source_without(tmp_path: Path) -> None:
    path, bad = export(tmp_path)
    data = path.read_bytes()
    start = data.index(b"\n", 10_000) + 1
    stop = data.index(b"\n", 60_000) + 1
    line = data[:start].count(b"\n") + 1
    kw = {"start_offset": start, "start_line": line, "stop_offset": stop, "block_size": 4096}
    plain = await drain(JsonlSource(path, prevalidate=False, **kw))  # type: ignore[arg-type]
    helped = await drain(JsonlSource(path, prevalidate=True, **kw))  # type: ignore[arg-type]
    assert helped[:2] == plain[:2]
    last = data[:stop].count(b"\n")  # the shard's last line
    assert {r.line for r in helped[1]} == {n for n in bad if line <= n <= last}
    assert helped[0][0][0] == line and helped[0][-1][1] == data[:stop].splitlines()[-1]


@pytest.mark.parametrize(
    "script",
    [
        "",  # says nothing and exits: a helper that failed to start
        "print(5, flush=True)",  # answers for lines 1-4, then dies
        "print('garbage', flush=True)",  # unreadable
        "print(10**9, *range(1, 4000), flush=True)",  # flags every line: a false accuser
    ],
    ids=["silent", "dies", "garbage", "flags-all"],
)
async def test_a_broken_helper_costs_speed_never_a_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str
) -> None:
    path, bad = export(tmp_path)
    fake = tmp_path / "fake_helper.py"
    fake.write_text(script + "\n")
    monkeypatch.setattr(_prevalidate, "_jsoncheck", SimpleNamespace(__file__=str(fake)))
    plain = await drain(JsonlSource(path, prevalidate=False, block_size=4096))
    helped = await drain(JsonlSource(path, prevalidate=True, block_size=4096))
    assert helped[:2] == plain[:2]
    assert {r.line for r in helped[1]} == bad
    assert len(helped[0]) == 3000 - len(bad) - 6


async def test_helper_runs_in_parallel_and_is_gone_when_the_source_stops(tmp_path: Path) -> None:
    path, _ = export(tmp_path)
    before = child_pids()
    blocks = JsonlSource(path, prevalidate=True, block_size=4096).blocks()
    await anext(blocks)
    assert len(child_pids() - before) == 1  # it exists while the source reads
    await blocks.aclose()  # stopping early
    for _ in range(100):
        if not child_pids() - before:
            break
        await asyncio.sleep(0.02)
    assert not child_pids() - before


def test_prevalidator_answers_in_order_then_nothing_once_closed(tmp_path: Path) -> None:
    path, _ = export(tmp_path)
    with open(path, "rb") as f:
        helper = Prevalidator(
            f.fileno(), start=0, stop=None, start_line=1, block_size=4096, max_line_bytes=1 << 20
        )
        assert helper.alive
        assert helper.bad(1, 10) == []
        assert helper.bad(97, 1) == [0]
        helper.close()
        assert not helper.alive
        assert helper.bad(2900, 5) is None  # closed: the parser validates itself


def test_worth_it_only_for_large_files_on_two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not worth_it(None)  # a pipe: no size
    assert not worth_it(_prevalidate.MIN_BYTES - 1)
    if sys.platform == "linux":
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
        assert worth_it(_prevalidate.MIN_BYTES)
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
        assert not worth_it(_prevalidate.MIN_BYTES)


async def test_upload_of_a_large_file_uses_the_helper_and_delivers_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 9.7 MB export through the library against the reference server: the helper checks the
    lines, every good record is acknowledged once, exactly the bad lines are dead-lettered."""
    started: list[Prevalidator] = []
    init = Prevalidator.__init__

    def spy(self: Prevalidator, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        started.append(self)

    monkeypatch.setattr(Prevalidator, "__init__", spy)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    pad = "x" * 250
    lines = [b'{"id": %d, "pad": "%s"}' % (i, pad.encode()) for i in range(1, 36_001)]
    bad = {i for i in range(1, 36_001) if i % 4_001 == 0}
    for i in bad:
        lines[i - 1] = lines[i - 1][:-1]  # the closing brace cut off
    source = tmp_path / "export.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    assert source.stat().st_size > _prevalidate.MIN_BYTES  # the helper is worth it
    failed = tmp_path / "failed.jsonl"
    sink = Sink(SinkConfig(keep_records=False))
    received = record_sink(sink)
    async with sink:
        summary = await upload(
            source,
            sink.ingest_url,
            auth=oauth(sink),
            concurrency=8,
            state=StateOptions(failed=failed),
        )
    assert len(started) == 1 and not started[0].alive  # used, then stopped
    good = [orjson.loads(line) for i, line in enumerate(lines, 1) if i not in bad]
    assert_delivered_once(received, good)
    dead = [orjson.loads(line) for line in failed.read_bytes().splitlines()]
    assert sorted(d["line"] for d in dead) == sorted(bad)
    assert all("malformed JSON" in d["error"] for d in dead)
    assert summary.records_failed == len(bad) and summary.records_sent == len(good)
