"""The ack log (asyncsync.checkpoint._acklog): acknowledged batches between two checkpoint
saves, folded into the checkpoint by a resumed run; and the Ledger that writes it."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from asyncsync._deadletter import DeadLetterFile
from asyncsync._exceptions import CheckpointError
from asyncsync._records import Batch
from asyncsync._summary import Counters
from asyncsync.checkpoint._acklog import AckLog, _folded
from asyncsync.checkpoint._ledger import Ledger
from asyncsync.checkpoint._state import CheckpointState, CheckpointStore, Fingerprint, Watermark


def ack(seq: int, first: int, last: int, offset: int = -1) -> tuple[int, int, int, int, int]:
    return (seq, first, last, offset, last - first + 1)


def test_ack_log_fold_moves_the_watermark_over_contiguous_batches() -> None:
    """Entries right after the watermark move it (with their offset); those beyond a gap join
    the settled ranges; records are counted once; folding again changes nothing."""

    state = CheckpointState(
        job_id="j",
        fingerprint=Fingerprint.of_stream("<stdin>", {}),
        watermark=Watermark(10, 1_000, 5_000),
        settled_beyond=((1_301, 1_400),),
        counters={"records_sent": 1_100, "records_read": 1_100, "requests": 12},
    )
    c = Counters(requests=20, batches=18)
    entries = [
        (*ack(9, 901, 1_000, 5_000), 0, 0, 0, 0),  # saved already
        (*ack(10, 1_001, 1_100, 5_500), c.batches, 15, 0, 0),
        (*ack(11, 1_101, 1_200, 6_000), c.batches, 16, 0, 0),
        # 12 (1201-1300) was in flight; 13 is the range the checkpoint holds
        (*ack(14, 1_401, 1_500, 7_000), c.batches, 19, 0, 0),
        (*ack(15, 1_501, 1_600, 7_500), c.batches, 20, 0, 0),
    ]
    folded = _folded(state, entries)
    assert folded.watermark == Watermark(12, 1_200, 6_000)
    assert folded.settled_beyond == ((1_301, 1_600),)
    assert folded.counters["records_sent"] == folded.counters["records_read"] == 1_500
    assert folded.counters["requests"] == 20
    assert _folded(folded, entries) == folded
    # a keyed source's watermark (SQL) stays: its key is not in the log
    keyed = _folded(state, entries, advance=False)
    assert keyed.watermark == state.watermark
    assert keyed.settled_beyond == ((1_001, 1_200), (1_301, 1_600))


def test_ack_log_fold_stops_at_a_line_whose_dead_letter_may_be_lost() -> None:
    """The watermark does not pass a line missing from the batches (a rejected line, whose dead
    letter may have died in a buffer) unless the checkpoint says it was saved."""

    state = CheckpointState(
        job_id="j", fingerprint=Fingerprint.of_stream("x", {}), watermark=Watermark(3, 300)
    )
    gap = [(3, 302, 401, -1, 100, 0, 0, 0, 0), (4, 402, 501, -1, 100, 0, 0, 0, 0)]
    folded = _folded(state, gap)  # line 301 is no record
    assert folded.watermark == Watermark(3, 300)
    assert folded.settled_beyond == ((302, 501),)  # skipped by a resume, line 301 re-read
    saved = _folded(CheckpointState(**{**_fields(state), "rejected_through": 301}), gap)
    assert saved.watermark == Watermark(5, 501)


def _fields(state: object) -> dict[str, object]:
    import dataclasses

    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}  # type: ignore[arg-type]


def test_ack_log_ignores_torn_and_foreign_entries_and_rotates_safely(tmp_path: Path) -> None:
    """A torn last entry and another job's file are ignored; a switch never drops entries that
    no completed save covers."""

    log = AckLog(tmp_path / "c")
    c = Counters()
    log.start("job1")
    log.append(ack(0, 1, 10), c)
    log.switch(saves=1)  # to file 1
    log.append(ack(1, 11, 20), c)
    log.switch(saves=1)  # no save completed since the last switch: stays
    log.append(ack(2, 21, 30), c)
    assert [e[0] for e in log.read("job1")] == [0, 1, 2]
    log.switch(saves=2)  # back to file 0, whose entry the completed save covers
    log.append(ack(3, 31, 40), c)
    assert sorted(e[0] for e in log.read("job1")) == [1, 2, 3]
    log.close(delete=False)
    with log.paths[0].open("ab") as f:
        f.write(b"\x01" * 40)  # half an entry: the process died mid-write
    assert sorted(e[0] for e in log.read("job1")) == [1, 2, 3]
    assert log.read("job2") == []
    log.close(delete=True)
    assert not any(p.exists() for p in log.paths)


async def test_ledger_logs_acknowledged_batches_and_folds_them_on_resume(tmp_path: Path) -> None:
    """A delivered batch is in the ack log by the end of the event loop's turn; a crash
    before the next save (simulated: the ledger is dropped without finish) loses nothing, the
    next Ledger.open folds it."""
    ckpt = tmp_path / "job.ckpt"
    fp = Fingerprint.of_stream("<stdin>", {})
    counters = Counters()
    dead = DeadLetterFile(tmp_path / "failed.jsonl")
    ledger = Ledger.open(ckpt, fp, dead_letter=dead, counters=counters, interval=3600)
    assert ledger.resume_point() is None
    await ledger.start()
    for seq in range(3):
        batch = Batch(seq, [b"{}"] * 10, list(range(10 * seq + 1, 10 * seq + 11)))
        assert not ledger.skip(batch)
        ledger.dispatched(batch)
        counters.records_read += 10
        counters.records_sent += 10
        ledger.settled(seq, delivered=True)
    # written in one write() at the end of this turn of the event loop
    assert AckLog(ckpt).read(ledger.job_id) == []
    await anyio.lowlevel.checkpoint()
    assert len(AckLog(ckpt).read(ledger.job_id)) == 3
    state = CheckpointStore(ckpt).load()
    assert state is not None and state.watermark.position == 0  # no save since the start

    again = Counters()
    resumed = Ledger.open(ckpt, fp, dead_letter=dead, counters=again)
    mark = resumed.resume_point()
    assert resumed.job_id == ledger.job_id
    assert mark is not None and (mark.next_seq, mark.position) == (3, 30)
    assert again.records_sent == 30  # restored through the checkpoint, once
    await resumed.start()
    assert await resumed.finish(stopped=False)
    assert not any(p.exists() for p in AckLog(ckpt).paths)


async def test_ledger_open_repairs_a_torn_dead_letter_file(tmp_path: Path) -> None:
    """Resuming after a crash that tore the dead-letter file's last line cuts the torn tail
    when the checkpoint is opened, so the file is valid JSON Lines even when the resumed run
    dead-letters nothing more."""
    failed = tmp_path / "failed.jsonl"
    failed.write_bytes(b'{"record": 1, "position": 1}\n{"record": {"id": 7, "na')
    fp = Fingerprint.of_stream("<stdin>", {})
    ledger = Ledger.open(
        tmp_path / "job.ckpt", fp, dead_letter=DeadLetterFile(failed), counters=Counters()
    )
    assert failed.read_bytes() == b'{"record": 1, "position": 1}\n'
    await ledger.start()
    assert await ledger.finish(stopped=False)
    assert failed.read_bytes() == b'{"record": 1, "position": 1}\n'


async def test_ledger_keyed_source_does_not_move_the_watermark(tmp_path: Path) -> None:
    """keyed=True (SQL): the log's batches are skipped on resume but the watermark stays,
    because its key is not in the log."""
    ckpt = tmp_path / "job.ckpt"
    fp = Fingerprint.of_stream("db", {})
    dead = DeadLetterFile(tmp_path / "failed.jsonl")
    ledger = Ledger.open(ckpt, fp, dead_letter=dead, counters=Counters(), interval=3600)
    await ledger.start()
    batch = Batch(0, [b"{}"] * 5, [1, 2, 3, 4, 5], end_key=5)
    ledger.dispatched(batch)
    ledger.settled(0, delivered=True)
    await anyio.lowlevel.checkpoint()  # the ack log's write at the end of the turn
    resumed = Ledger.open(ckpt, fp, dead_letter=dead, counters=Counters(), keyed=True)
    mark = resumed.resume_point()
    assert mark is not None and mark.position == 0
    assert resumed.skip(batch)


async def test_ack_log_coalesces_a_turn_into_one_write_and_reports_a_failed_write(
    tmp_path: Path,
) -> None:
    """Entries acknowledged in one turn of the event loop land together at its end; a write
    that failed in the background is raised by the next append, naming the file."""
    log = AckLog(tmp_path / "c")
    c = Counters()
    log.start("job1")
    for seq in range(5):
        log.append(ack(seq, 10 * seq + 1, 10 * seq + 10), c)
    assert log.read("job1") == []
    await anyio.lowlevel.checkpoint()
    assert [e[0] for e in log.read("job1")] == [0, 1, 2, 3, 4]
    # the log's descriptor becomes unwritable (as on a full or vanished disk)
    assert log._fd is not None
    os.close(log._fd)
    log._fd = os.open(log.paths[0], os.O_RDONLY)
    log.append(ack(5, 51, 60), c)
    await anyio.lowlevel.checkpoint()
    with pytest.raises(CheckpointError, match=r"c\.acks0"):
        log.append(ack(6, 61, 70), c)
    log.close(delete=True)
