"""Micro-benchmark of checkpointing: the per-batch tracker calls and the ways to save.

    .venv/bin/python -m benchmarks.micro_checkpoint [--batches 200000] [--saves 300] [--dir D]

1. ``WatermarkTracker.dispatched`` + ``settled`` per batch: in order, completed out of order
   within a window (as N workers do), and with one batch stuck while 20 000 settle behind it;
   plus the whole per-batch path of the pipeline's ledger (``Checkpointer.dispatched`` +
   ``settled`` + ``await tick()`` when no save is due).
2. One save of a realistic state (32 settled ranges beyond the watermark), four ways:
   temp file + fsync + ``os.replace`` (with and without an fsync of the directory), and
   SQLite in WAL mode with ``synchronous=FULL`` and ``NORMAL``; and the chosen one through
   ``CheckpointStore.asave`` from the event loop (adds the hop to a worker thread).
3. The cost of checkpointing at 5 000 batches/s (1 M records/s at batch 200) with one save
   per second, as a share of one core (tracker) and of wall time (save, in a thread).

``--dir`` should be on the file system the checkpoints will live on (fsync cost is the file
system's); the default is the system temp directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from asyncsync._records import Batch
from asyncsync._summary import Counters
from asyncsync.checkpoint._checkpointer import Checkpointer
from asyncsync.checkpoint._state import CheckpointState, CheckpointStore, Fingerprint
from asyncsync.checkpoint._watermark import WatermarkTracker

RATE = 5_000  # batches/s: 1 M records/s at batch 200
CHOSEN = "temp + fsync + replace + dir fsync"
ASAVE = "the same through CheckpointStore.asave"


def make_batches(n: int, start: int = 0) -> list[Batch]:
    # only positions[0] and [-1] are read by the tracker: two-element lists keep memory low
    return [
        Batch(s, [], [s * 200 + 1, s * 200 + 200], end_offset=(s + 1) * 56_000)
        for s in range(start, start + n)
    ]


def bench_in_order(batches: list[Batch]) -> float:
    t = WatermarkTracker()
    dispatched, settled = t.dispatched, t.settled
    t0 = time.perf_counter()
    for b in batches:
        dispatched(b)
        settled(b.seq, True)
    dt = time.perf_counter() - t0
    assert t.watermark.next_seq == len(batches)
    return dt / len(batches) * 1e9


def bench_window(batches: list[Batch], window: int, seed: int = 1) -> float:
    """Dispatch ``window`` batches, settle them in a random order, repeat."""
    rng = random.Random(seed)
    orders = []
    for i in range(0, len(batches), window):
        seqs = [b.seq for b in batches[i : i + window]]
        rng.shuffle(seqs)
        orders.append((batches[i : i + window], seqs))
    t = WatermarkTracker()
    dispatched, settled = t.dispatched, t.settled
    t0 = time.perf_counter()
    for chunk, seqs in orders:
        for b in chunk:
            dispatched(b)
        for s in seqs:
            settled(s, True)
    dt = time.perf_counter() - t0
    assert t.watermark.next_seq == len(batches)
    return dt / len(batches) * 1e9


def bench_stuck(batches: list[Batch], behind: int = 20_000) -> tuple[float, float, int]:
    """Batch 0 stays in flight while ``behind`` later batches settle; then it settles.

    Returns ns per batch, ms for one ``settled_beyond`` read while stuck, and its length.
    """
    batches = batches[: behind + 1]
    t = WatermarkTracker()
    t0 = time.perf_counter()
    for b in batches:
        t.dispatched(b)
    for b in batches[1:]:
        t.settled(b.seq, True)
    s0 = time.perf_counter()
    ranges = t.settled_beyond
    s1 = time.perf_counter()
    t.settled(0, True)
    dt = time.perf_counter() - t0 - (s1 - s0)
    assert t.watermark.next_seq == len(batches)
    return dt / len(batches) * 1e9, (s1 - s0) * 1e3, len(ranges)


async def bench_ledger(batches: list[Batch]) -> float:
    """The pipeline's per-batch ledger calls, with a throttle that is never due."""
    ck = Checkpointer(
        None,
        WatermarkTracker(),
        job_id="bench",
        fingerprint=Fingerprint.of_stream("bench", {}),
        interval=1e9,
    )
    counters = Counters()
    t0 = time.perf_counter()
    for b in batches:
        ck.skip(b)
        ck.dispatched(b)
        ck.settled(b.seq, delivered=True)
        await ck.tick(counters)
    dt = time.perf_counter() - t0
    return dt / len(batches) * 1e9


def realistic_state(ranges: int = 32) -> CheckpointState:
    t = WatermarkTracker()
    batches = make_batches(10_000 + 2 * ranges)
    for b in batches:
        t.dispatched(b)
    for b in batches[:10_000]:
        t.settled(b.seq)
    for b in batches[10_001::2]:  # every other batch beyond: `ranges` gaps
        t.settled(b.seq)
    c = Counters(records_read=2_000_000, records_sent=1_999_000, records_failed=1_000)
    c.retries_by_status.update({"429": 17, "503": 3})
    settings = {"batch_size": 200, "max_batch_bytes": 4_000_000, "body": "json", "wrap": None}
    fp = Fingerprint(
        kind="file",
        path="/data/export.jsonl",
        size=560_000_000,
        head_sha256="0" * 64,
        settings=settings,
    )
    return t.snapshot(c, job_id="9f" * 16, fingerprint=fp)


async def time_saves(
    savers: dict[str, Callable[[], None]], store: CheckpointStore, state: CheckpointState, n: int
) -> dict[str, list[float]]:
    """Interleave the methods, one save each per round, so disk noise from other processes
    hits all of them alike; the last one is ``store.asave`` awaited on the event loop."""
    names = [*savers, ASAVE]
    out: dict[str, list[float]] = {name: [] for name in names}
    for save in savers.values():
        save()  # create files, warm caches
    await store.asave(state)
    for _ in range(n):
        for name, save in savers.items():
            t0 = time.perf_counter()
            save()
            out[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await store.asave(state)
        out[ASAVE].append(time.perf_counter() - t0)
    return out


def file_saver(path: Path, state: CheckpointState, *, dir_fsync: bool) -> Callable[[], None]:
    if dir_fsync:
        store = CheckpointStore(path)
        return lambda: store.save(state)
    tmp = path.with_name(path.name + ".tmp")

    def save() -> None:
        data = state.to_json()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    return save


def sqlite_saver(path: Path, state: CheckpointState, synchronous: str) -> Callable[[], None]:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("CREATE TABLE IF NOT EXISTS checkpoint (id INTEGER PRIMARY KEY, body BLOB)")

    def save() -> None:
        data = state.to_json()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT OR REPLACE INTO checkpoint (id, body) VALUES (1, ?)", (data,))
        db.execute("COMMIT")

    return save


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=200_000)
    ap.add_argument("--saves", type=int, default=300)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()

    batches = make_batches(args.batches)
    print(f"tracker, {args.batches} batches (best of 5), ns per batch:")
    in_order = min(bench_in_order(batches) for _ in range(5))
    print(f"  in order                          {in_order:7.0f}")
    for window in (32, 256):
        ns = min(bench_window(batches, window) for _ in range(5))
        print(f"  out of order, window {window:<4}         {ns:7.0f}")
    stuck_ns, read_ms, nranges = min(bench_stuck(batches) for _ in range(3))
    print(f"  one stuck, 20 000 settled behind  {stuck_ns:7.0f}")
    print(f"    settled_beyond while stuck: {nranges} range(s) in {read_ms:.3f} ms")
    ledger = min(asyncio.run(bench_ledger(batches)) for _ in range(5))
    print(f"  Checkpointer skip+dispatched+settled+tick  {ledger:7.0f}")

    state = realistic_state()
    data = state.to_json()
    t0 = time.perf_counter()
    for _ in range(1000):
        state.to_json()
    enc_us = (time.perf_counter() - t0) / 1000 * 1e6
    print(
        f"\nstate: {len(data)} bytes, {len(state.settled_beyond)} ranges; "
        f"encode {enc_us:.1f} µs, included below"
    )

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ckpt-bench-") as d:
        root = Path(d)
        print(f"saves in {root}, interleaved (median, p90 of {args.saves}):")
        savers = {
            CHOSEN: file_saver(root / "a.asyncsync", state, dir_fsync=True),
            "temp + fsync + replace (no dir fsync)": file_saver(
                root / "b.asyncsync", state, dir_fsync=False
            ),
            "SQLite WAL synchronous=FULL": sqlite_saver(root / "c.sqlite", state, "FULL"),
            "SQLite WAL synchronous=NORMAL": sqlite_saver(root / "d.sqlite", state, "NORMAL"),
        }
        results = asyncio.run(
            time_saves(savers, CheckpointStore(root / "e.asyncsync"), state, args.saves)
        )
    for name, times in results.items():
        times.sort()
        med = statistics.median(times) * 1e3
        p90 = times[int(0.9 * len(times))] * 1e3
        print(f"  {name:44} {med:7.3f} ms  p90 {p90:7.3f} ms  {1e3 / med:8.0f} saves/s")

    chosen = statistics.median(results[ASAVE]) * 1e3
    tracker_share = ledger * RATE / 1e9
    print(
        f"\nat {RATE} batches/s, one save/s: ledger calls {tracker_share:.2%} of one core; "
        f"saving {chosen / 1e3:.2%} of wall time (in a worker thread)"
    )


if __name__ == "__main__":
    main()
