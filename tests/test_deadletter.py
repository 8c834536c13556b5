"""The dead-letter file (asyncsync._deadletter): the contract's entry format, appended, never
re-serialised, durable on sync()/close()."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from asyncsync._deadletter import DeadLetterFile
from asyncsync._exceptions import ConfigError
from asyncsync._records import Batch, BatchResult, Rejected


def entries(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_failed_batch_entries_embed_the_original_bytes(tmp_path: Path) -> None:
    """Each record of an undelivered batch is one entry, in the contract's key order, with the
    record's own bytes (number formatting kept) and a redacted error."""
    path = tmp_path / "f.jsonl"
    dead = DeadLetterFile(path)
    batch = Batch(0, [b'{"n":1.50}', b'{"n":2}'], [7, 9])
    dead.write_result(BatchResult(batch, "job-0-7", False, 400, 1, "status 400: Bearer abc.def"))
    dead.close()
    raw = path.read_bytes().splitlines()
    assert raw[0].startswith(b'{"record":{"n":1.50},"line":7,"position":7,"status":400,')
    got = entries(path)
    assert [list(e) for e in got] == [
        ["record", "line", "position", "status", "error", "attempts", "idempotency_key"]
    ] * 2
    assert [e["position"] for e in got] == [7, 9]
    assert all(e["idempotency_key"] == "job-0-7" and e["attempts"] == 1 for e in got)
    assert "abc.def" not in got[0]["error"]  # type: ignore[operator]
    assert dead.count == 2


def test_rejects_and_sources_without_lines(tmp_path: Path) -> None:
    """Input rejects carry no status or key; ``lines=False`` (iterables, SQL) drops ``line``."""
    path = tmp_path / "f.jsonl"
    dead = DeadLetterFile(path, lines=False)
    dead.write_rejects([Rejected("{bad", 3, "record 3: not JSON", 3)])
    dead.close()
    [entry] = entries(path)
    assert "line" not in entry
    assert entry == {
        "record": "{bad",
        "position": 3,
        "status": None,
        "error": "record 3: not JSON",
        "attempts": 0,
        "idempotency_key": None,
    }


def test_appends_across_runs_and_opens_lazily(tmp_path: Path) -> None:
    """A resumed run appends; a run with nothing to dead-letter creates no file."""
    path = tmp_path / "f.jsonl"
    DeadLetterFile(path).close()
    assert not path.exists()
    for position in (1, 2):
        dead = DeadLetterFile(path)
        dead.write_rejects([Rejected("x", position, "bad", position)])
        dead.sync()  # durable before a checkpoint covers it
        dead.close()
        dead.close()  # idempotent
    assert [e["position"] for e in entries(path)] == [1, 2]


def test_unwritable_dead_letter_file_is_a_config_error(tmp_path: Path) -> None:
    """The path is checked at the first write: ConfigError naming ``failed``."""
    dead = DeadLetterFile(tmp_path / "missing-dir" / "f.jsonl")
    with pytest.raises(ConfigError) as caught:
        dead.write_rejects([Rejected("x", 1, "bad", 1)])
    assert caught.value.field == "failed"


def test_torn_last_line_is_cut_before_appending(tmp_path: Path) -> None:
    """A SIGKILL can cut the last entry mid-line (the buffer goes out in chunks). The next
    run cuts the torn tail off before it appends: the file stays JSON Lines and the first
    new entry is not glued to the fragment. (The torn entry was never synced, so no
    checkpoint covers it: the resumed run dead-letters that record again.)"""
    path = tmp_path / "f.jsonl"
    dead = DeadLetterFile(path)
    dead.write_rejects([Rejected("a", 1, "bad", 1), Rejected("b", 2, "bad", 2)])
    dead.close()
    whole = path.read_bytes()
    path.write_bytes(whole[: whole.index(b"\n") + 1 + 20])  # entry 2 cut after 20 bytes
    dead = DeadLetterFile(path)
    dead.write_rejects([Rejected("b", 2, "bad", 2), Rejected("c", 3, "bad", 3)])
    dead.close()
    assert [e["position"] for e in entries(path)] == [1, 2, 3]
    assert path.read_bytes().endswith(b"\n")


def test_repair_of_a_file_that_is_one_torn_line(tmp_path: Path) -> None:
    """No newline at all: the only line is torn and goes; a whole file is left as it is."""
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"record": {"id"')
    assert DeadLetterFile(path).repair() == 16
    assert path.read_bytes() == b""
    path.write_bytes(b'{"a": 1}\n')
    assert DeadLetterFile(path).repair() == 0
    assert path.read_bytes() == b'{"a": 1}\n'
    assert DeadLetterFile(tmp_path / "missing.jsonl").repair() == 0
    assert not (tmp_path / "missing.jsonl").exists()
