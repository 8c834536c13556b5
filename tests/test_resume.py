"""Checkpoint and resume through the library: cancel mid-run, resume, nothing lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from asyncsync import BatchLimits, CheckpointError, StateOptions, upload
from asyncsync.checkpoint._state import CheckpointStore
from asyncsync.sink import Sink, SinkConfig


async def test_cancel_then_resume_delivers_everything_once(
    make_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    """A run cancelled mid-way resumes after its watermark: every record arrives, and the only
    re-sent batches are ones that were in flight (same keys, deduplicated by the server)."""
    source = make_jsonl(6_000)
    ckpt = tmp_path / "job.ckpt"
    options = {
        "concurrency": 4,
        "limits": BatchLimits(max_records=50),
        "state": StateOptions(checkpoint=ckpt, failed=tmp_path / "failed.jsonl"),
    }
    async with Sink(SinkConfig(latency=0.01, require_auth=False)) as sink:
        task = asyncio.create_task(upload(source, sink.ingest_url, **options))
        while sink.stats()["records"] < 2_000:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        state = CheckpointStore(ckpt).load()
        assert state is not None and not state.complete
        first_run = sink.stats()["records"]
        assert 2_000 <= first_run < 6_000
        # the watermark never claims a batch the server has not acknowledged
        assert state.watermark.position <= first_run

        summary = await upload(source, sink.ingest_url, **options)
        stats = sink.stats(detail=True)
        records = sink.records()
    assert sorted(r["id"] for r in records) == list(range(1, 6_001))
    assert summary.job_id == state.job_id
    # duplicates only for batches in flight at the cancel, each under its original key
    assert stats["duplicates"] <= 4 + 8  # workers + queued batches
    assert stats["key_body_mismatches"] == 0
    assert summary.records_sent == 6_000 and summary.records_read == 6_000
    final = CheckpointStore(ckpt).load()
    assert final is not None and final.complete


async def test_fingerprint_mismatch_is_refused(
    make_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    """A checkpoint for other settings (batch size) is refused, naming what changed."""
    source = make_jsonl(2_000)
    ckpt = tmp_path / "job.ckpt"
    async with Sink(SinkConfig(latency=0.02, require_auth=False)) as sink:
        task = asyncio.create_task(
            upload(
                source,
                sink.ingest_url,
                concurrency=2,
                limits=BatchLimits(max_records=20),
                state=StateOptions(checkpoint=ckpt, failed=tmp_path / "f.jsonl"),
            )
        )
        while sink.stats()["records"] < 200:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(CheckpointError, match="batch_size"):
            await upload(
                source,
                sink.ingest_url,
                limits=BatchLimits(max_records=40),
                state=StateOptions(checkpoint=ckpt, failed=tmp_path / "f.jsonl"),
            )
        # --no-resume starts over
        summary = await upload(
            source,
            sink.ingest_url,
            limits=BatchLimits(max_records=40),
            state=StateOptions(checkpoint=ckpt, resume=False, failed=tmp_path / "f.jsonl"),
        )
    assert summary.records_sent == 2_000


async def test_dead_letters_survive_resume_without_duplicates(tmp_path: Path) -> None:
    """Rejected lines written before a resume are not written again; the file is appended."""
    source = tmp_path / "in.jsonl"
    lines = [b"{bad json" if i % 100 == 0 else orjson.dumps({"id": i}) for i in range(1, 3_001)]
    source.write_bytes(b"\n".join(lines) + b"\n")
    failed = tmp_path / "failed.jsonl"
    ckpt = tmp_path / "job.ckpt"
    options = {
        "concurrency": 2,
        "limits": BatchLimits(max_records=25),
        "state": StateOptions(checkpoint=ckpt, failed=failed),
    }
    async with Sink(SinkConfig(latency=0.01, require_auth=False)) as sink:
        task = asyncio.create_task(upload(source, sink.ingest_url, **options))
        while sink.stats()["records"] < 1_000:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        summary = await upload(source, sink.ingest_url, **options)
        assert sink.stats()["records"] == 2_970
    lines_failed = [orjson.loads(x)["line"] for x in failed.read_bytes().splitlines()]
    assert sorted(lines_failed) == list(range(100, 3_001, 100))
    assert summary.records_failed == 30 and summary.records_sent == 2_970
