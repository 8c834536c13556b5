"""Checkpoint: the watermark never passes a batch in flight; saves are atomic, durable, loud."""

from __future__ import annotations

import errno
import json
import os
import random
import re
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from asyncsync._exceptions import CheckpointError, SourceError
from asyncsync._paths import default_state_paths
from asyncsync._records import Batch, Rejected
from asyncsync._summary import Counters
from asyncsync.checkpoint import _state as _checkpoint
from asyncsync.checkpoint._checkpointer import Checkpointer
from asyncsync.checkpoint._state import CheckpointState, CheckpointStore, Fingerprint, Watermark
from asyncsync.checkpoint._watermark import WatermarkTracker


def default_checkpoint_path(source: str | Path | None) -> Path | None:
    """The default checkpoint path of a source (the policy in asyncsync._paths)."""
    return default_state_paths(source, fallback=False).checkpoint


SETTINGS: dict[str, Any] = {"batch_size": 200, "max_batch_bytes": 1_000_000, "body": "json"}


def mk(seq: int, first: int, last: int, offset: int | None = None) -> Batch:
    positions = list(range(first, last + 1))
    return Batch(seq, [b"{}"] * len(positions), positions, end_offset=offset)


def tens(n: int, start_seq: int = 0) -> list[Batch]:
    """Batches of 10 positions each: seq s holds 10s+1 .. 10s+10, ending at byte 100(s+1)."""
    return [mk(s, 10 * s + 1, 10 * s + 10, 100 * (s + 1)) for s in range(start_seq, n)]


def fp(**changes: Any) -> Fingerprint:
    return Fingerprint.of_stream("<stdin>", {**SETTINGS, **changes})


def state_of(tracker: WatermarkTracker, counters: Counters | None = None) -> CheckpointState:
    return tracker.snapshot(counters or Counters(), job_id="job", fingerprint=fp())


# --------------------------------------------------------------------------- tracker


def test_in_order_settlement_advances_the_watermark() -> None:
    """Settling batches in order moves the watermark to the last one, with its offset."""
    t = WatermarkTracker()
    for b in tens(3):
        t.dispatched(b)
        t.settled(b.seq, True)
    assert t.watermark == Watermark(3, 30, 300)
    assert t.in_flight == 0
    assert t.settled_beyond == []


def test_out_of_order_completion_never_passes_a_gap() -> None:
    """Batches settled beyond an in-flight one are ranges, not watermark progress."""
    t = WatermarkTracker()
    for b in tens(6):
        t.dispatched(b)
    for seq in (1, 2, 4):
        t.settled(seq, True)
    assert t.watermark == Watermark(0, 0, None)
    assert t.settled_beyond == [(11, 30), (41, 50)]
    assert t.in_flight == 3

    t.settled(0, True)  # the gap closes: jump over the run 1-2, stop at 3
    assert t.watermark == Watermark(3, 30, 300)
    assert t.settled_beyond == [(41, 50)]

    t.settled(3, False)  # dead-lettered settles too
    assert t.watermark == Watermark(5, 50, 500)
    assert t.settled_beyond == []
    assert t.in_flight == 1


def test_one_stuck_batch_keeps_state_small() -> None:
    """Thousands settled behind one stuck batch collapse into one range."""
    t = WatermarkTracker()
    batches = tens(5000)
    for b in batches:
        t.dispatched(b)
    order = list(range(1, 5000))
    random.Random(7).shuffle(order)
    for seq in order:
        t.settled(seq, True)
    assert t.watermark.next_seq == 0
    assert t.settled_beyond == [(11, 50_000)]
    t.settled(0, True)
    assert t.watermark == Watermark(5000, 50_000, 500_000)


def test_start_continues_numbering_from_the_watermark() -> None:
    """A resumed tracker accepts seqs from next_seq on and reports from the old position."""
    t = WatermarkTracker(Watermark(5, 50, 500))
    assert t.watermark == Watermark(5, 50, 500)
    assert t.next_dispatch_seq == 5
    for b in tens(8, start_seq=5):
        t.dispatched(b)
    t.settled(6, True)
    assert t.watermark == Watermark(5, 50, 500)
    t.settled(5, True)
    assert t.watermark == Watermark(7, 70, 700)


def test_seq_gaps_are_tolerated() -> None:
    """Seqs may skip numbers (batches never dispatched); next_seq counts dispatched batches."""
    t = WatermarkTracker()
    for b in (mk(0, 1, 10), mk(3, 11, 20), mk(9, 21, 30)):
        t.dispatched(b)
    t.settled(9, True)
    t.settled(0, True)
    assert t.watermark == Watermark(1, 10, None)
    assert t.settled_beyond == [(21, 30)]
    t.settled(3, True)
    assert t.watermark == Watermark(3, 30, None)


def test_misuse_raises_runtime_error() -> None:
    """Settling twice, settling the unknown, or dispatching out of order is a caller bug."""
    t = WatermarkTracker()
    a, b = tens(2)
    t.dispatched(a)
    with pytest.raises(RuntimeError, match="never dispatched"):
        t.settled(1, True)
    t.settled(0, True)
    with pytest.raises(RuntimeError, match="settled twice"):
        t.settled(0, True)
    with pytest.raises(RuntimeError, match="in source order"):
        t.dispatched(a)
    t.dispatched(b)
    with pytest.raises(RuntimeError, match="cannot be complete"):
        t.snapshot(Counters(), job_id="j", fingerprint=fp(), complete=True)


def test_rejected_through_only_moves_forward() -> None:
    """The reject position is a maximum."""
    t = WatermarkTracker(rejected_through=4)
    t.rejected_through(9)
    t.rejected_through(7)
    assert t.last_rejected == 9
    assert state_of(t).rejected_through == 9


def test_carried_ranges_are_normalised() -> None:
    """Ranges from a checkpoint are sorted and merged; those behind the watermark dropped."""
    t = WatermarkTracker(
        Watermark(1, 10, None), settled_before=[(21, 30), (11, 20), (15, 18), (3, 9), (41, 50)]
    )
    assert t.settled_beyond == [(11, 30), (41, 50)]


def test_resume_skips_settled_ranges_and_remembers_them_until_passed() -> None:
    """Ranges carried from the checkpoint are skipped and survive a second crash."""
    run1 = WatermarkTracker()
    for b in tens(6):
        run1.dispatched(b)
    for seq in (0, 2, 3, 5):
        run1.settled(seq, True)
    saved = CheckpointState.from_json(state_of(run1).to_json())
    assert saved.watermark == Watermark(1, 10, 100)
    assert saved.settled_beyond == ((21, 40), (51, 60))

    run2 = WatermarkTracker.resume(saved)
    b1, b2, b3, b4, b5 = tens(6, start_seq=1)
    assert not run2.settled_before(b1)
    run2.dispatched(b1)
    assert run2.settled_before(b2)
    run2.skip(b2)
    # a second crash here must not forget 31-40 nor 51-60
    assert state_of(run2).settled_beyond == ((21, 40), (51, 60))
    run2.settled(1, True)
    assert run2.watermark == Watermark(3, 30, 300)
    assert run2.settled_beyond == [(31, 40), (51, 60)]
    assert run2.settled_before(b3)
    run2.skip(b3)
    assert not run2.settled_before(b4)
    run2.dispatched(b4)
    assert run2.settled_before(b5)
    run2.skip(b5)
    assert run2.settled_beyond == [(51, 60)]
    run2.settled(4, True)
    assert run2.watermark == Watermark(6, 60, 600)
    assert run2.settled_beyond == []
    done = run2.snapshot(Counters(), job_id="job", fingerprint=fp(), complete=True)
    assert done.complete


class TrackerModel(RuleBasedStateMachine):
    """Any interleaving of dispatch and settle matches a brute-force model of the watermark."""

    def __init__(self) -> None:
        super().__init__()
        self.start = Watermark(0, 0, None)
        self.tracker = WatermarkTracker(self.start)
        self.batches: list[Batch] = []  # in dispatch order
        self.settled: set[int] = set()  # seqs
        self.next_seq = 0
        self.next_pos = 1

    @rule(
        size=st.integers(1, 5),
        rejects=st.integers(0, 2),
        seq_gap=st.sampled_from([0, 0, 0, 1, 3]),
        has_offset=st.booleans(),
    )
    def dispatch(self, size: int, rejects: int, seq_gap: int, has_offset: bool) -> None:
        first = self.next_pos + rejects  # rejects between batches take positions
        last = first + size - 1
        seq = self.next_seq + seq_gap
        b = mk(seq, first, last, last * 7 if has_offset else None)
        self.tracker.dispatched(b)
        self.batches.append(b)
        self.next_seq = seq + 1
        self.next_pos = last + 1

    @precondition(lambda self: len(self.settled) < len(self.batches))
    @rule(data=st.data(), delivered=st.booleans())
    def settle(self, data: st.DataObject, delivered: bool) -> None:
        pending = [b.seq for b in self.batches if b.seq not in self.settled]
        seq = data.draw(st.sampled_from(pending))
        self.tracker.settled(seq, delivered)
        self.settled.add(seq)

    @invariant()
    def matches_brute_force(self) -> None:
        prefix = 0
        while prefix < len(self.batches) and self.batches[prefix].seq in self.settled:
            prefix += 1
        if prefix:
            last_done = self.batches[prefix - 1]
            expected = Watermark(prefix, last_done.last, last_done.end_offset)
        else:
            expected = self.start
        w = self.tracker.watermark
        assert w == expected
        # never past an unsettled batch: the one at the watermark is in flight
        if prefix < len(self.batches):
            assert self.batches[prefix].seq not in self.settled
            assert w.position < self.batches[prefix].first
        ranges: list[tuple[int, int]] = []
        run: list[Batch] = []
        for b in [*self.batches[prefix:], None]:
            if b is not None and b.seq in self.settled:
                run.append(b)
            elif run:
                ranges.append((run[0].first, run[-1].last))
                run = []
        assert self.tracker.settled_beyond == ranges
        assert self.tracker.in_flight == len(self.batches) - len(self.settled)
        # every settled-beyond range lies past the watermark and covers no unsettled batch
        for b in self.batches:
            covered = any(f <= b.first and b.last <= last for f, last in ranges)
            assert not covered or b.seq in self.settled


TestTrackerModel = TrackerModel.TestCase
TestTrackerModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 4), min_size=1, max_size=40),
    seed=st.integers(0, 2**32 - 1),
    crashes=st.integers(1, 4),
)
def test_resume_after_crashes_settles_every_batch_exactly_once(
    sizes: list[int], seed: int, crashes: int
) -> None:
    """Crash at random moments, resume from the saved JSON: no batch settled twice or lost."""
    rng = random.Random(seed)
    bounds = []
    pos = 1
    for size in sizes:
        bounds.append((pos, pos + size - 1))
        pos += size + rng.choice((0, 0, 1))  # sometimes a reject between batches
    settled_count = {b: 0 for b in bounds}
    state: CheckpointState | None = None
    for attempt in range(crashes + 1):
        final = attempt == crashes
        tracker = WatermarkTracker.resume(state) if state else WatermarkTracker()
        start = tracker.watermark
        todo = [b for b in bounds if b[0] > start.position]
        in_flight: list[int] = []
        seq = start.next_seq
        for first, last in todo:
            batch = mk(seq, first, last)
            seq += 1
            if tracker.settled_before(batch):
                tracker.skip(batch)
                continue
            tracker.dispatched(batch)
            in_flight.append(batch.seq)
        by_seq = {s: b for s, b in zip(range(start.next_seq, seq), todo, strict=True)}
        rng.shuffle(in_flight)
        cut = len(in_flight) if final else rng.randint(0, len(in_flight))
        for s in in_flight[:cut]:
            tracker.settled(s, rng.random() < 0.9)
            settled_count[by_seq[s]] += 1
        state = CheckpointState.from_json(state_of(tracker).to_json())
    assert state is not None
    assert all(n == 1 for n in settled_count.values()), settled_count
    assert state.watermark.position == bounds[-1][1]
    assert state.settled_beyond == ()


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_of_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file's fingerprint holds its absolute path, size and head hash."""
    (tmp_path / "a.jsonl").write_bytes(b'{"a":1}\n' * 100)
    monkeypatch.chdir(tmp_path)
    f = Fingerprint.of_file("a.jsonl", SETTINGS)
    assert f.kind == "file"
    assert f.path == str((tmp_path / "a.jsonl").resolve())
    assert f.size == 800
    assert f.head_sha256 is not None
    assert len(f.head_sha256) == 64
    assert f.diff(Fingerprint.of_file(tmp_path / "a.jsonl", dict(SETTINGS))) == []


def test_fingerprint_diff_says_what_changed(tmp_path: Path) -> None:
    """Appends, edits, settings and source changes are each named in plain words."""
    src = tmp_path / "a.jsonl"
    src.write_bytes(b"x" * 1000)
    before = Fingerprint.of_file(src, SETTINGS)
    with src.open("ab") as f:
        f.write(b"y" * 200)
    assert before.diff(Fingerprint.of_file(src, SETTINGS)) == [
        "source size changed: 1000 -> 1200 bytes"
    ]
    src.write_bytes(b"z" * 1000)
    assert before.diff(Fingerprint.of_file(src, SETTINGS)) == [
        "source content changed: the first 64 KiB differ"
    ]
    src.write_bytes(b"x" * 1000)
    changed = Fingerprint.of_file(src, {**SETTINGS, "batch_size": 100, "wrap": "items"})
    assert before.diff(changed) == [
        "batch_size changed: 200 -> 100",
        "wrap changed: not set -> items",
    ]
    other = tmp_path / "b.jsonl"
    other.write_bytes(b"x" * 1000)
    assert before.diff(Fingerprint.of_file(other, SETTINGS)) == [
        f"source changed: {src.resolve()} -> {other.resolve()}"
    ]
    assert before.diff(Fingerprint.of_stream("<stdin>", SETTINGS)) == [
        "source kind changed: file -> stream",
        f"source changed: {src.resolve()} -> <stdin>",
    ]


def test_fingerprint_errors(tmp_path: Path) -> None:
    """A missing source is a SourceError; a setting that is not a JSON scalar a TypeError."""
    with pytest.raises(SourceError, match=r"missing\.jsonl"):
        Fingerprint.of_file(tmp_path / "missing.jsonl", SETTINGS)
    with pytest.raises(TypeError, match="headers"):
        Fingerprint.of_stream("<stdin>", {"headers": ["a"]})  # type: ignore[dict-item]


# --------------------------------------------------------------------------- state and store


def test_snapshot_load_round_trip(tmp_path: Path) -> None:
    """What is saved is what is loaded, counters included."""
    t = WatermarkTracker()
    for b in tens(4):
        t.dispatched(b)
    t.settled(0, True)
    t.settled(2, False)
    t.rejected_through(25)
    counters = Counters(records_read=20, records_sent=10, records_failed=10, requests=3)
    counters.retries_by_status["503"] = 2
    counters.in_flight = 2
    state = t.snapshot(counters, job_id="j1", fingerprint=fp(), updated_at=0.0)
    store = CheckpointStore(tmp_path / "x.asyncsync")
    store.save(state)
    loaded = store.load()
    assert loaded == state
    assert loaded.watermark == Watermark(1, 10, 100)
    assert loaded.settled_beyond == ((21, 30),)
    assert loaded.updated_at == "1970-01-01T00:00:00.000+00:00"
    assert "in_flight" not in loaded.counters

    fresh = Counters()
    loaded.restore_counters(fresh)
    assert (fresh.records_read, fresh.records_sent, fresh.requests) == (20, 10, 3)
    assert fresh.retries_by_status == {"503": 2}
    assert fresh.in_flight == 0


def test_state_holds_no_secret(tmp_path: Path) -> None:
    """A state built from counters has only positions, counts and the fingerprint."""
    state = state_of(WatermarkTracker(), Counters(auth_requests=2))
    doc = json.loads(state.to_json())
    assert set(doc) == {
        "version",
        "job_id",
        "fingerprint",
        "watermark",
        "settled_beyond",
        "rejected_through",
        "counters",
        "retries_by_status",
        "updated_at",
        "complete",
    }
    assert all(isinstance(v, int) for v in doc["counters"].values())
    text = state.to_json().decode().lower()
    for word in ("token", "secret", "password", "authorization", "bearer"):
        assert word not in text


def test_missing_checkpoint_loads_as_none(tmp_path: Path) -> None:
    """No file: nothing to resume."""
    assert CheckpointStore(tmp_path / "none.asyncsync").load() is None


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\x00\xff garbage", "is corrupt"),
        (b'{"version": 1, "job_id": "j", "fingerpr', "is corrupt"),
        (b'{"version": 1, "job_id": 5}', "is corrupt"),
        (b'{"version": 99, "job_id": "j"}', "format version 99"),
        (b"[]", "is corrupt"),
    ],
)
def test_corrupt_checkpoint_raises(tmp_path: Path, content: bytes, match: str) -> None:
    """A file that is not a checkpoint of this version is refused, naming the path."""
    path = tmp_path / "bad.asyncsync"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as info:
        CheckpointStore(path).load()
    assert str(path) in str(info.value)


def test_inconsistent_checkpoint_raises(tmp_path: Path) -> None:
    """Settled ranges behind the watermark are not trusted."""
    good = json.loads(state_of(WatermarkTracker(Watermark(3, 30, None))).to_json())
    good["settled_beyond"] = [[11, 20]]
    path = tmp_path / "x.asyncsync"
    path.write_text(json.dumps(good))
    with pytest.raises(CheckpointError, match="inconsistent"):
        CheckpointStore(path).load()


def test_unreadable_checkpoint_raises(tmp_path: Path) -> None:
    """A checkpoint path that cannot be read (here a directory) is an error with the reason."""
    path = tmp_path / "dir.asyncsync"
    path.mkdir()
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*dir\.asyncsync"):
        CheckpointStore(path).load()


def test_leftover_temp_file_does_not_corrupt(tmp_path: Path) -> None:
    """A temp file left by a crash mid-save is ignored by load and replaced by the next save."""
    store = CheckpointStore(tmp_path / "x.asyncsync")
    first = state_of(WatermarkTracker(Watermark(1, 10, 100)))
    store.save(first)
    store.tmp_path.write_bytes(b'{"version": 1, "job_id": "half-writ')
    assert store.load() == first
    second = state_of(WatermarkTracker(Watermark(2, 20, 200)))
    store.save(second)
    assert store.load() == second
    assert not store.tmp_path.exists()


class Crash(BaseException):
    """The process dies here (not an OSError: nothing cleans up)."""


def test_crash_before_rename_keeps_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A temp file written in part never replaces the real one."""
    store = CheckpointStore(tmp_path / "x.asyncsync")
    old = state_of(WatermarkTracker(Watermark(1, 10, 100)))
    store.save(old)
    real_write = os.write

    def half_write(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise Crash

    monkeypatch.setattr(_checkpoint.os, "write", half_write)
    with pytest.raises(Crash):
        store.save(state_of(WatermarkTracker(Watermark(2, 20, 200))))
    monkeypatch.undo()
    assert store.tmp_path.exists()  # as a real crash would leave it
    assert store.load() == old


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """os.write may write less than asked; save loops until all is written."""
    real_write = os.write
    monkeypatch.setattr(_checkpoint.os, "write", lambda fd, data: real_write(fd, data[:7]))
    store = CheckpointStore(tmp_path / "x.asyncsync")
    state = state_of(WatermarkTracker(Watermark(4, 40, 400)))
    store.save(state)
    assert store.load() == state


@pytest.mark.parametrize(
    ("target", "error", "reason"),
    [
        ("write", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "No space left on device"),
        ("fsync", OSError(errno.EIO, os.strerror(errno.EIO)), "Input/output error"),
        ("replace", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "ENOSPC"),
        ("open", PermissionError(errno.EACCES, os.strerror(errno.EACCES)), "Permission denied"),
    ],
)
def test_failed_write_raises_checkpoint_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    error: OSError,
    reason: str,
) -> None:
    """Disk full, I/O error, permission denied: a CheckpointError with path and reason."""
    store = CheckpointStore(tmp_path / "x.asyncsync")
    old = state_of(WatermarkTracker(Watermark(1, 10, 100)))
    store.save(old)

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(_checkpoint.os, target, fail)
    with pytest.raises(CheckpointError, match=reason) as info:
        store.save(state_of(WatermarkTracker(Watermark(2, 20, 200))))
    monkeypatch.undo()
    assert str(store.path) in str(info.value)
    assert info.value.__cause__ is error
    assert store.load() == old
    assert not store.tmp_path.exists()


@pytest.mark.parametrize(
    ("obstacle", "reason"),
    [("parent-is-a-file", "Not a directory [ENOTDIR]"), ("temp-is-a-directory", "[EISDIR]")],
)
def test_unwritable_location_raises_checkpoint_error(
    tmp_path: Path, obstacle: str, reason: str
) -> None:
    """A location the run cannot write to stops the save with a clear error naming the path.

    Real file-system obstacles that stop root too (CI runs as root, which file modes do not
    stop): the checkpoint's directory is a regular file, or its temp file's name is taken by
    a directory. Permission denied itself (EACCES) is test_failed_write_raises_checkpoint_error.
    """
    if obstacle == "parent-is-a-file":
        (tmp_path / "f").write_text("a regular file\n")
        store = CheckpointStore(tmp_path / "f" / "x.asyncsync")
    else:
        store = CheckpointStore(tmp_path / "x.asyncsync")
        store.tmp_path.mkdir()
    with pytest.raises(CheckpointError, match=re.escape(reason)) as info:
        store.save(state_of(WatermarkTracker()))
    assert f"cannot write checkpoint {store.path}: " in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert not store.path.exists()
    if obstacle == "temp-is-a-directory":
        assert store.load() is None  # nothing half-written took the checkpoint's name


async def test_asave_runs_off_the_loop_and_serialises(tmp_path: Path) -> None:
    """Concurrent asaves never interleave: the file always holds one whole state."""
    store = CheckpointStore(tmp_path / "x.asyncsync")
    states = [state_of(WatermarkTracker(Watermark(i, 10 * i, None))) for i in range(20)]
    async with anyio.create_task_group() as tg:
        for s in states:
            tg.start_soon(store.asave, s)
    assert store.load() in states
    assert not store.tmp_path.exists()


def test_delete(tmp_path: Path) -> None:
    """Delete removes the checkpoint and any temp file; deleting nothing is fine."""
    store = CheckpointStore(tmp_path / "x.asyncsync")
    store.save(state_of(WatermarkTracker()))
    store.tmp_path.write_bytes(b"junk")
    store.delete()
    assert not store.path.exists()
    assert not store.tmp_path.exists()
    store.delete()


def test_default_checkpoint_path() -> None:
    """Beside the source for files; none for stdin."""
    assert default_checkpoint_path("data/export.jsonl") == Path("data/export.jsonl.asyncsync")
    assert default_checkpoint_path(Path("/x/y.csv")) == Path("/x/y.csv.asyncsync")
    assert default_checkpoint_path("-") is None
    assert default_checkpoint_path(None) is None


# --------------------------------------------------------------------------- checkpointer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def checkpointer(store: CheckpointStore | None, clock: FakeClock, **kw: Any) -> Checkpointer:
    return Checkpointer(
        store, WatermarkTracker(), job_id="job", fingerprint=fp(), clock=clock, **kw
    )


async def test_maybe_save_is_throttled(tmp_path: Path) -> None:
    """At most one save per interval of the injected clock."""
    clock = FakeClock()
    store = CheckpointStore(tmp_path / "x.asyncsync")
    ck = checkpointer(store, clock, interval=1.0)
    counters = Counters()
    b0, b1 = tens(2)
    ck.dispatched(b0)
    ck.settled(0, delivered=True)
    assert not await ck.maybe_save(counters)
    assert store.load() is None
    clock.now += 0.999
    assert not await ck.maybe_save(counters)
    clock.now += 0.001
    assert await ck.maybe_save(counters)
    assert store.load().watermark == Watermark(1, 10, 100)  # type: ignore[union-attr]
    ck.dispatched(b1)
    ck.settled(1, delivered=True)
    await ck.tick(counters)  # not due: the file is unchanged
    assert store.load().watermark.next_seq == 1  # type: ignore[union-attr]
    clock.now += 5
    await ck.tick(counters)
    assert store.load().watermark.next_seq == 2  # type: ignore[union-attr]
    assert ck.saves == 2


async def test_maybe_save_does_not_queue_behind_a_running_save(tmp_path: Path) -> None:
    """While a save is being written, maybe_save returns at once; final_save waits for it."""
    release = anyio.Event()
    started = anyio.Event()
    written: list[CheckpointState] = []

    class SlowStore(CheckpointStore):
        async def asave(self, state: CheckpointState) -> None:
            started.set()
            await release.wait()
            written.append(state)

    clock = FakeClock()
    ck = checkpointer(SlowStore(tmp_path / "x"), clock, interval=0.0)
    counters = Counters()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ck.maybe_save, counters)
        await started.wait()
        assert not await ck.maybe_save(counters)
        tg.start_soon(partial(ck.final_save, counters, complete=False))
        await anyio.sleep(0.01)
        assert written == []
        release.set()
    assert len(written) == 2
    assert written[-1].complete is False


async def test_final_save_completes_under_cancellation(tmp_path: Path) -> None:
    """A cancelled run still writes its final checkpoint."""
    store = CheckpointStore(tmp_path / "x.asyncsync")
    ck = checkpointer(store, FakeClock())
    for b in tens(2):
        ck.dispatched(b)
    ck.settled(1, delivered=True)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await ck.final_save(Counters(), complete=False)
    saved = store.load()
    assert saved is not None
    assert saved.settled_beyond == ((11, 20),)


async def test_final_save_complete_requires_nothing_in_flight(tmp_path: Path) -> None:
    """A job is complete only when every batch is settled."""
    store = CheckpointStore(tmp_path / "x.asyncsync")
    ck = checkpointer(store, FakeClock())
    b0, b1 = tens(2)
    ck.dispatched(b0)
    ck.dispatched(b1)
    ck.settled(0, delivered=True)
    with pytest.raises(RuntimeError, match="cannot be complete"):
        await ck.final_save(Counters(), complete=True)
    ck.settled(1, delivered=False)
    state = await ck.final_save(Counters(records_sent=10, records_failed=10), complete=True)
    assert state.complete
    assert store.load() == state


async def test_failed_save_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint that cannot be written raises from tick, not silently."""

    def disk_full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_checkpoint.os, "replace", disk_full)
    clock = FakeClock()
    ck = checkpointer(CheckpointStore(tmp_path / "x.asyncsync"), clock)
    clock.now += 2
    with pytest.raises(CheckpointError, match="No space left on device"):
        await ck.tick(Counters())


async def test_no_store_writes_nothing(tmp_path: Path) -> None:
    """Without a store (stdin, no --checkpoint) the ledger tracks but never writes."""
    clock = FakeClock()
    ck = checkpointer(None, clock)
    clock.now += 2
    assert await ck.maybe_save(Counters())
    await ck.final_save(Counters(), complete=True)
    assert ck.saves == 0
    assert os.listdir(tmp_path) == []


def test_open_starts_or_resumes_a_job(tmp_path: Path) -> None:
    """New job without a checkpoint; the same job id and watermark when resuming."""
    store = CheckpointStore(tmp_path / "x.asyncsync")
    fresh = Checkpointer.open(store, fp())
    assert not fresh.resumed
    assert len(fresh.job_id) == 32
    t = WatermarkTracker()
    for b in tens(3):
        t.dispatched(b)
    t.settled(0, True)
    t.settled(2, True)
    store.save(t.snapshot(Counters(), job_id=fresh.job_id, fingerprint=fp()))

    again = Checkpointer.open(store, fp())
    assert again.resumed
    assert again.job_id == fresh.job_id
    assert again.tracker.watermark == Watermark(1, 10, 100)
    assert again.skip(mk(1, 11, 20)) is False
    again.dispatched(mk(1, 11, 20))
    assert again.skip(mk(2, 21, 30)) is True  # counted as settled, not sent
    again.settled(1, delivered=True)
    assert again.tracker.watermark == Watermark(3, 30, None)


def test_open_refuses_a_checkpoint_of_another_job(tmp_path: Path) -> None:
    """A fingerprint mismatch is a CheckpointError saying what changed."""
    store = CheckpointStore(tmp_path / "x.asyncsync")
    store.save(state_of(WatermarkTracker(Watermark(1, 10, 100))))
    with pytest.raises(CheckpointError, match=r"batch_size changed: 200 -> 100.*--no-resume"):
        Checkpointer.open(store, fp(batch_size=100))


def test_open_without_resume_deletes_and_starts_over(tmp_path: Path) -> None:
    """--no-resume: the old checkpoint goes at once, and the job id is new."""
    store = CheckpointStore(tmp_path / "x.asyncsync")
    store.save(state_of(WatermarkTracker(Watermark(1, 10, 100))))
    ck = Checkpointer.open(store, fp(batch_size=100), resume=False)
    assert not ck.resumed
    assert ck.job_id != "job"
    assert ck.tracker.watermark == Watermark()
    assert store.load() is None


def test_open_after_a_complete_job_starts_a_new_one(tmp_path: Path) -> None:
    """A complete checkpoint is history: the next run is a new job."""
    store = CheckpointStore(tmp_path / "x.asyncsync")
    t = WatermarkTracker(Watermark(3, 30, 300))
    store.save(t.snapshot(Counters(), job_id="old", fingerprint=fp(), complete=True))
    ck = Checkpointer.open(store, fp())
    assert not ck.resumed
    assert ck.job_id != "old"


def test_skip_reject_uses_the_resumed_position(tmp_path: Path) -> None:
    """Rejects already in the dead-letter file are not written again on resume."""
    store = CheckpointStore(tmp_path / "x.asyncsync")
    t = WatermarkTracker()
    t.rejected_through(12)
    store.save(t.snapshot(Counters(), job_id="j", fingerprint=fp()))
    ck = Checkpointer.open(store, fp())
    assert ck.skip_reject(Rejected(b"x", 12, "malformed"))
    assert not ck.skip_reject(Rejected(b"x", 13, "malformed"))
    ck.rejected_through(13)
    assert ck.skip_reject(Rejected(b"x", 13, "malformed"))


# --------------------------------------------------------------- mutation-testing additions


def keyed(seq: int, first: int, last: int, key: Any) -> Batch:
    """A batch of an SQL source: it ends at the resume token ``key``."""
    positions = list(range(first, last + 1))
    return Batch(seq, [b"{}"] * len(positions), positions, end_key=key)


def test_sql_end_keys_follow_the_watermark_in_and_out_of_order() -> None:
    """The watermark carries the end key of the last settled batch, through merged runs."""
    start = Watermark(0, 0, None, ("k", 0))
    t = WatermarkTracker(start)
    assert t.watermark.key == ("k", 0)
    batches = [keyed(s, 10 * s + 1, 10 * s + 10, ("k", s)) for s in range(6)]
    for b in batches:
        t.dispatched(b)
    t.settled(0)
    assert t.watermark.key == ("k", 0)
    # 2 alone, then 4, then 3 joins both neighbours (left run extended, right run merged)
    t.settled(2)
    t.settled(4)
    t.settled(3)
    t.settled(1)  # the watermark jumps over the run 2..4 and takes its end key
    assert t.watermark == Watermark(5, 50, None, ("k", 4))
    t.settled(5)
    assert t.watermark == Watermark(6, 60, None, ("k", 5))


def test_sql_end_key_of_a_single_settled_run() -> None:
    """A run of one batch (created, not extended) hands its own key to the watermark."""
    t = WatermarkTracker()
    a, b = keyed(0, 1, 5, "a"), keyed(1, 6, 9, "b")
    t.dispatched(a)
    t.dispatched(b)
    t.settled(1)
    t.settled(0)
    assert t.watermark == Watermark(2, 9, None, "b")


def test_a_new_tracker_has_rejected_nothing() -> None:
    """No input reject is recorded before one is reported (the default, and 0 given)."""
    assert WatermarkTracker().last_rejected == 0
    assert WatermarkTracker(rejected_through=0).last_rejected == 0
    assert WatermarkTracker(rejected_through=-3).last_rejected == 0


@pytest.mark.parametrize("start", [Watermark(-1, 0), Watermark(0, -1)])
def test_a_negative_watermark_is_refused(start: Watermark) -> None:
    """Either a negative seq or a negative position is a corrupt start, named in the error."""
    with pytest.raises(ValueError, match=r"^watermark must not be negative: Watermark\("):
        WatermarkTracker(start)


def test_misuse_messages_say_what_went_wrong() -> None:
    """The whole message of each caller bug, not only a fragment of it."""
    t = WatermarkTracker()
    a, b = tens(2)
    t.dispatched(b)
    with pytest.raises(RuntimeError) as info:
        t.dispatched(a)
    assert str(info.value) == (
        "batch 0 dispatched after batch 1: batches must be dispatched once each, in source order"
    )
    with pytest.raises(RuntimeError) as info:
        t.snapshot(Counters(), job_id="j", fingerprint=fp(), complete=True)
    assert str(info.value) == (
        "a job with 1 batches in flight and 0 ranges settled beyond the watermark "
        "cannot be complete"
    )
