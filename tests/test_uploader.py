"""The Uploader (asyncsync._uploader): lifecycle, grouped options, stop()/abort(), the
Interrupted summary, and sources it has never heard of."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest

from asyncsync import (
    BatchLimits,
    BatchResult,
    ConfigError,
    DeliveryError,
    Interrupted,
    StateOptions,
    Uploader,
    UploadHooks,
    upload,
)
from asyncsync._records import RecordBlock, Rejected
from asyncsync.checkpoint._state import CheckpointStore
from asyncsync.sink import Sink, SinkConfig
from asyncsync.sources._protocol import Source, SourceBase


class Countdown(SourceBase):
    """A source type the package has never seen: records from a generator of ours, line
    numbers included, one malformed record at position 3."""

    kind = "countdown"  # the uploader must not care
    has_lines = True

    def __init__(self, n: int) -> None:
        self.name = f"countdown-{n}"
        self.n = n

    async def blocks(self) -> AsyncIterator[RecordBlock]:
        for first in range(1, self.n + 1, 10):
            positions = [p for p in range(first, min(first + 10, self.n + 1)) if p != 3]
            records = [orjson.dumps({"id": p}) for p in positions]
            rejects = [Rejected("{bad", 3, "line 3: not JSON", 3)] if first == 1 else []
            yield RecordBlock(records, positions, rejects)


async def test_a_source_type_defined_in_a_test_works_unchanged(tmp_path: Path) -> None:
    """Any Source (here: a SourceBase subclass from this file) uploads, checkpoints, resumes
    and dead-letters with the line numbers it declares; no change to the package."""
    failed = tmp_path / "failed.jsonl"
    state = StateOptions(checkpoint=tmp_path / "c.ckpt", failed=failed)
    src = Countdown(95)
    assert isinstance(src, Source)
    async with Sink(SinkConfig(require_auth=False)) as sink:
        summary = await upload(src, sink.ingest_url, state=state)
        ids = sorted(r["id"] for r in sink.records())
    assert ids == [i for i in range(1, 96) if i != 3]
    assert summary.records_sent == 94 and summary.records_failed == 1
    [entry] = [orjson.loads(line) for line in failed.read_bytes().splitlines()]
    assert entry["line"] == entry["position"] == 3
    saved = CheckpointStore(tmp_path / "c.ckpt").load()
    assert saved is not None and saved.complete
    assert saved.fingerprint.path == "countdown-95"


async def test_default_dead_letter_file_sits_beside_a_file_source(tmp_path: Path) -> None:
    """No ``failed``: the source's declared state_path decides (``<file>.failed.jsonl``)."""
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"id":1}\n{bad\n')
    async with Sink(SinkConfig(require_auth=False)) as sink:
        summary = await upload(source, sink.ingest_url)
    assert summary.records_failed == 1
    assert (tmp_path / "in.jsonl.failed.jsonl").exists()


async def _run_until(up: Uploader, source: Path, sink: Sink, records: int) -> asyncio.Task[object]:
    task: asyncio.Task[object] = asyncio.create_task(up.upload(source))
    while sink.stats()["records"] < records:
        await asyncio.sleep(0.01)
    return task


@pytest.mark.parametrize("how", ["stop", "abort"])
async def test_stop_and_abort_raise_interrupted_with_the_summary(
    make_jsonl: Callable[..., Path], tmp_path: Path, how: str
) -> None:
    """stop() drains, abort() cancels: either way Interrupted carries the run's summary and the
    checkpoint never claims more than the server acknowledged; a second run finishes."""
    source = make_jsonl(5_000)
    ckpt = tmp_path / "job.ckpt"
    state = StateOptions(checkpoint=ckpt, failed=tmp_path / "f.jsonl")
    async with Sink(SinkConfig(latency=0.02, require_auth=False)) as sink:
        async with Uploader(
            sink.ingest_url, concurrency=4, limits=BatchLimits(max_records=50), state=state
        ) as up:
            task = await _run_until(up, source, sink, 500)
            getattr(up, how)()
            with pytest.raises(Interrupted) as caught:
                await task
            received = sink.stats()["records"]
            summary = caught.value.summary
            assert summary is not None and summary.interrupted
            assert 0 < summary.records_sent <= received < 5_000
            saved = CheckpointStore(ckpt).load()
            assert saved is not None and not saved.complete
            assert saved.watermark.position <= received
            if how == "stop":  # a drain settles what was in flight: nothing left over
                assert summary.records_sent == received
            final = await up.upload(source)  # the same Uploader, the next run: resumes
        records = sink.records()
    assert sorted({r["id"] for r in records}) == list(range(1, 5_001))
    assert final.records_sent == 5_000 and not final.interrupted


async def test_stop_before_the_upload_starts_stops_it(tmp_path: Path) -> None:
    """A stop() that comes during setup (a signal before the pipeline exists) still stops the
    upload: Interrupted, nothing sent."""
    async with (
        Sink(SinkConfig(require_auth=False)) as sink,
        Uploader(sink.ingest_url, state=StateOptions(failed=tmp_path / "f")) as up,
    ):
        up.stop()
        with pytest.raises(Interrupted) as caught:
            await up.upload([{"id": i} for i in range(100)])
        assert caught.value.summary is not None
        assert caught.value.summary.records_sent == 0
        # the request is spent: the next upload runs
        summary = await up.upload([{"id": i} for i in range(100)])
    assert summary.records_sent == 100


async def test_closed_uploader_refuses_work(tmp_path: Path) -> None:
    """Using an Uploader after close is a RuntimeError, not a silent no-op."""
    up = Uploader("http://127.0.0.1:9/ingest", state=StateOptions(failed=tmp_path / "f.jsonl"))
    async with up:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await up.upload([{"a": 1}])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"body": "ndjson"}, "body"),
        ({"state": {"failed": "x"}}, "state"),
        ({"concurrency": 0}, "concurrency"),
        ({"queue_size": 0}, "queue_size"),
    ],
)
def test_bad_arguments_are_config_errors_naming_the_field(
    kwargs: dict[str, object], field: str
) -> None:
    """A grouped option given as a bare value (the old keyword style) names the group."""
    with pytest.raises(ConfigError) as caught:
        Uploader("http://x/ingest", **kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


async def test_hooks_receive_each_batch_result(tmp_path: Path) -> None:
    """on_batch_done gets the BatchResult: the batch, delivered or not, the status."""
    seen: list[BatchResult] = []

    class Spy(UploadHooks):
        def on_batch_done(self, result: BatchResult) -> None:
            seen.append(result)

    async with Sink(SinkConfig(require_auth=False)) as sink:
        await upload(
            [{"id": i} for i in range(25)],
            sink.ingest_url,
            limits=BatchLimits(max_records=10),
            state=StateOptions(failed=tmp_path / "f.jsonl"),
            hooks=Spy(),
        )
    assert sorted(len(r.batch) for r in seen) == [5, 10, 10]
    assert all(r.delivered and r.status == 200 for r in seen)


async def test_raise_for_failures_makes_dead_letters_an_error(tmp_path: Path) -> None:
    """A run with dead letters returns normally; raise_for_failures() raises DeliveryError
    carrying the summary (and returns the summary when nothing failed)."""
    async with Sink(SinkConfig(require_auth=False)) as sink:
        good = await upload([{"id": 1}], sink.ingest_url, state=StateOptions(failed=tmp_path / "f"))
        bad = await upload(
            [{"id": 1}, "nope"], sink.ingest_url, state=StateOptions(failed=tmp_path / "g")
        )
    assert good.raise_for_failures() is good
    with pytest.raises(DeliveryError, match="1 of 2 records") as caught:
        bad.raise_for_failures()
    assert caught.value.summary is bad
