"""``asyncsync replay``: a dead-letter file sent again, by the real command, to the sink process.

The upload dead-letters the batches the sink rejects (``--reject-field``); the sink is then
fixed (``POST /admin/faults``) or not, and the replay sends the dead-lettered records again.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

try:
    from tests.test_kill_resume import BATCH, Job, run_sink, write_records
except ImportError:  # tests/ is not a package: pytest put it on sys.path itself
    from test_kill_resume import BATCH, Job, run_sink, write_records  # type: ignore[no-redef]

pytestmark = pytest.mark.slow  # every test here runs the CLI or the sink as a subprocess

POISONED = {7, 1_234, 1_250, 3_999}  # three batches of 100 hold them


def entries(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_replay_delivers_fixed_records(tmp_path: Path) -> None:
    """Batches rejected by the sink are dead-lettered (exit 1); once the sink is fixed, the
    replay delivers them (exit 0) and the sink holds every record, each once."""
    n = 5_000
    source = write_records(tmp_path / "export.jsonl", n, poison=POISONED.__contains__)
    with run_sink(tmp_path, "--reject-field", "poison") as sink:
        # whole batches dead-lettered (not only the rejected records), as replay's input
        upload = Job(tmp_path, sink, str(source), extra=("--on-reject", "batch"))
        first = upload.run()
        assert first.code == 1, first.err
        failed = entries(upload.failed)
        assert len(failed) == 3 * BATCH
        assert all(e["status"] == 400 for e in failed)

        sink.set_faults(reject_field=None)  # the partner fixed its side
        replay = Job(tmp_path, sink, str(upload.failed), command="replay", stateful=False)
        done = replay.run("--failed", str(tmp_path / "again.jsonl"))
        assert done.code == 0, done.err
        stats = sink.stats()
        ids = sink.record_ids()
    assert ids == list(range(1, n + 1))
    assert stats["key_body_mismatches"] == 0
    summary = replay.summary()
    assert (summary["records_read"], summary["records_sent"], summary["records_failed"]) == (
        3 * BATCH, 3 * BATCH, 0,
    )  # fmt: skip
    assert summary["batches"] == 3
    assert not (tmp_path / "again.jsonl").exists()  # nothing failed again
    # the replayed records are the original bytes, poison field and all
    assert sum(1 for e in failed if isinstance(e["record"], dict) and "poison" in e["record"]) == 4


def test_replay_failing_again_writes_a_new_dead_letter_file(tmp_path: Path) -> None:
    """Records that fail again, and entries whose record was not JSON (not replayable), go to
    FAILED.jsonl.replay-failed.jsonl at the replayed file's line numbers (exit 1); the file
    being replayed is left as it was."""
    source = tmp_path / "export.jsonl"
    write_records(source, 300, poison=POISONED.__contains__)
    with source.open("ab") as f:
        f.write(b'{"id": 301, "broken": \n')  # not JSON: dead-lettered as a string
    with run_sink(tmp_path, "--reject-field", "poison") as sink:
        upload = Job(tmp_path, sink, str(source), extra=("--on-reject", "batch"))
        assert upload.run().code == 1
        original = upload.failed.read_bytes()
        failed = entries(upload.failed)
        assert len(failed) == BATCH + 1
        broken = [i for i, e in enumerate(failed, 1) if isinstance(e["record"], str)]
        assert [failed[i - 1]["record"] for i in broken] == ['{"id": 301, "broken":']

        replay = Job(tmp_path, sink, str(upload.failed), command="replay", stateful=False)
        again = replay.run("--on-reject", "batch")  # still rejected: nothing was fixed
        assert again.code == 1, again.err
        accepted = sink.stats()["records"]
    assert upload.failed.read_bytes() == original  # never written to
    new_file = Path(f"{upload.failed}.replay-failed.jsonl")
    assert str(new_file) in again.err  # the summary names it
    retried = sorted(entries(new_file), key=lambda e: int(str(e["position"])))
    assert [e["position"] for e in retried] == list(range(1, BATCH + 2))
    assert [e["record"] for e in retried] == [e["record"] for e in failed]
    (unreplayable,) = (e for e in retried if e["position"] in broken)
    assert unreplayable["error"] == "not a JSON object"
    assert unreplayable["status"] is None and unreplayable["idempotency_key"] is None
    assert {e["status"] for e in retried if e is not unreplayable} == {400}
    assert accepted == 200  # the replay added nothing
    summary = replay.summary()
    assert (summary["records_read"], summary["records_sent"], summary["records_failed"]) == (
        BATCH + 1, 0, BATCH + 1,
    )  # fmt: skip


def test_replay_refuses_its_own_input_as_dead_letter_file(tmp_path: Path) -> None:
    """--failed naming the file being replayed, or a missing file, exits 2 before any request."""
    dead = tmp_path / "failed.jsonl"
    dead.write_bytes(orjson.dumps({"record": {"id": 1}, "position": 1}) + b"\n")
    with run_sink(tmp_path) as sink:
        replay = Job(tmp_path, sink, str(dead), command="replay", stateful=False)
        same = replay.run("--failed", str(dead))
        missing = Job(tmp_path, sink, str(tmp_path / "nope.jsonl"), command="replay").run()
        stats = sink.stats()
    assert same.code == 2, same.err
    assert "is the file being replayed" in same.err
    assert missing.code == 2, missing.err
    assert "SourceError" in missing.err
    assert stats["token_requests"] == stats["ingest_requests"] == 0
    assert dead.read_bytes() == orjson.dumps({"record": {"id": 1}, "position": 1}) + b"\n"
