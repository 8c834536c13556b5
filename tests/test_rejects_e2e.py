"""Rejected records end to end: the real ``asyncsync upload`` against the reference sink.

Exactly the records the server refuses end in the dead-letter file, each with the server's own
status and message; everything else is delivered once (a Counter of record ids over what the
sink stored); the extra requests stay within the stated bounds; a SIGKILL during splits and
a resume lose nothing and never send a record under a second key.
"""

from __future__ import annotations

import json
import math
import random
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from cli_helpers import clean_env, run_cli
from test_kill_resume import Job, run_sink, write_records

from asyncsync.sink import STATE, Sink, SinkConfig

CLIENT_ID = "asyncsync-demo"
CLIENT_SECRET = "rejects-e2e-secret"
N = 10_000
BATCH = 200
POISON = frozenset({57, 1_234, 2_999, 3_000, 5_555, 8_001, 9_998})  # two share a batch


def sink_config(**options: Any) -> SinkConfig:
    return SinkConfig(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, seed=1, reject_field="poison", **options
    )


async def upload(
    sink: Sink, source: Path, tmp: Path, *extra: str
) -> tuple[int, str, dict[str, Any], list[dict[str, Any]]]:
    summary, failed = tmp / "summary.json", tmp / "failed.jsonl"
    result = await run_cli(
        "upload", str(source), "--url", sink.ingest_url, "--token-url", sink.token_url,
        "--client-id", CLIENT_ID, "--batch-size", str(BATCH), "--summary-json", str(summary),
        "--failed", str(failed), "-q", *extra,
        cwd=tmp, env=clean_env(ASYNCSYNC_CLIENT_SECRET=CLIENT_SECRET),
    )  # fmt: skip
    dead = [orjson.loads(x) for x in failed.read_bytes().splitlines()] if failed.exists() else []
    return result.code, result.err, json.loads(summary.read_text()), dead


def stored_ids(sink: Sink) -> Counter[int]:
    return Counter(int(r["id"]) for r in sink.app[STATE].records)


def assert_exactly_the_poison(
    code: int, err: str, summary: dict[str, Any], dead: list[dict[str, Any]], sink: Sink
) -> None:
    assert code == 1, err
    assert sorted(d["line"] for d in dead) == sorted(POISON)
    assert summary["records_failed"] == len(POISON)
    assert summary["records_sent"] == N - len(POISON)
    stored = stored_ids(sink)
    assert set(stored) == set(range(1, N + 1)) - POISON
    assert set(stored.values()) == {1}  # every other record delivered once


@pytest.fixture
def export(tmp_path: Path) -> Path:
    return write_records(tmp_path / "export.jsonl", N, poison=POISON.__contains__)


@pytest.mark.slow
async def test_seven_poison_records_split_out(tmp_path: Path, export: Path) -> None:
    """10 k records, 7 poison, batch 200: exit 1, exactly the 7 dead-lettered with status 400
    and the server's message, every other record delivered once, ≤ 7·2·8 extra requests."""
    async with Sink(sink_config()) as sink:
        code, err, summary, dead = await upload(sink, export, tmp_path)
        stats = sink.stats()
        assert_exactly_the_poison(code, err, summary, dead, sink)
    assert all(d["status"] == 400 and "forbidden field 'poison'" in d["error"] for d in dead)
    batches = math.ceil(N / BATCH)
    extra = summary["requests"] - batches
    assert summary["split_requests"] == extra <= len(POISON) * 2 * math.ceil(math.log2(BATCH))
    # the invariant with rejection splits: each part is a key (a batch) of its own
    assert summary["requests"] == summary["batches"] + summary["retries"]
    assert summary["requests"] == stats["ingest_requests"]
    assert summary["batches"] == stats["keys_seen"] == batches + summary["split_requests"]
    print(f"7-poison run: {summary['requests']} requests, {extra} for split parts")


@pytest.mark.slow
async def test_seven_poison_records_elasticsearch_results(tmp_path: Path, export: Path) -> None:
    """The same with --results elasticsearch: per-item 400s dead-lettered with the item's
    error, per-item 429s delivered when sent again."""
    async with Sink(sink_config(results="elasticsearch", item_throttle_rate=0.02)) as sink:
        code, err, summary, dead = await upload(
            sink, export, tmp_path, "--results", "elasticsearch"
        )
        stats = sink.stats()
        assert_exactly_the_poison(code, err, summary, dead, sink)
    assert stats["throttled_items"] > 50 and stats["rejected_items"] == len(POISON)
    assert all(d["status"] == 400 and "mapper_parsing_exception" in d["error"] for d in dead)
    assert summary["split_requests"] > 0  # the throttled items, sent again as parts
    # the invariant with items re-sent: each part is a key (a batch) of its own; a part
    # whose items are all throttled again is retried under its key (a retry)
    assert summary["requests"] == summary["batches"] + summary["retries"]
    assert summary["requests"] == stats["ingest_requests"]
    assert summary["batches"] == stats["keys_seen"]
    assert summary["requests"] == math.ceil(N / BATCH) + summary["split_requests"]
    assert stats["bodies_under_several_keys"] == stats["key_body_mismatches"] == 0


@pytest.mark.slow
@pytest.mark.parametrize(("shape", "spec"), [("salesforce", "salesforce"), ("salesforce", ".")])
async def test_salesforce_and_path_results(
    tmp_path: Path, export: Path, shape: str, spec: str
) -> None:
    """sObject Collections answers, read by name or by the generic path rule ('.')."""
    async with Sink(sink_config(results=shape, item_throttle_rate=0.01)) as sink:
        code, err, summary, dead = await upload(sink, export, tmp_path, "--results", spec)
        assert_exactly_the_poison(code, err, summary, dead, sink)
    assert all("FIELD_INTEGRITY_EXCEPTION" in d["error"] for d in dead)


@pytest.mark.slow
async def test_all_rejected_stays_within_its_bound(tmp_path: Path) -> None:
    """Every record rejected: each batch costs 1 + 2 + 4 + 4 requests (halves, quarters and
    one record of each quarter rejected alike), not 2n; the whole input is dead-lettered,
    saying why."""
    n = 4_000
    source = write_records(tmp_path / "export.jsonl", n, poison=lambda i: True)
    async with Sink(sink_config()) as sink:
        code, err, summary, dead = await upload(sink, source, tmp_path)
    assert code == 1, err
    batches = n // BATCH
    assert len(dead) == summary["records_failed"] == n
    assert summary["requests"] == 11 * batches and summary["split_requests"] == 10 * batches
    assert all("wholly bad" in d["error"] for d in dead)
    print(f"all-bad run: {summary['requests']} requests for {batches} batches")


@pytest.mark.slow
async def test_max_split_requests_budget(tmp_path: Path, export: Path) -> None:
    """--max-split-requests 4: two splits are paid for, then rejected batches go whole."""
    async with Sink(sink_config()) as sink:
        code, err, summary, dead = await upload(
            sink, export, tmp_path, "--max-split-requests", "4", "--concurrency", "1"
        )
    assert code == 1, err
    assert summary["split_requests"] == 4
    assert {d["line"] for d in dead} >= POISON
    assert any("--max-split-requests 4" in d["error"] for d in dead)


@pytest.mark.slow
async def test_on_reject_batch_keeps_old_behaviour(tmp_path: Path, export: Path) -> None:
    """--on-reject batch: every record of each rejected batch is dead-lettered, no split."""
    async with Sink(sink_config()) as sink:
        code, err, summary, dead = await upload(sink, export, tmp_path, "--on-reject", "batch")
    assert code == 1, err
    batches = {(p - 1) // BATCH for p in POISON}
    assert summary["records_failed"] == len(dead) == len(batches) * BATCH
    assert summary["split_requests"] == 0 and summary["requests"] == N // BATCH


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "results",
    [None, "elasticsearch"],
)
def test_sigkill_during_splits_then_resume(tmp_path: Path, results: str | None) -> None:
    """SIGKILL while rejected batches are being split, then --resume: every good record
    stored exactly once, never under a second key, exactly the poison records dead-lettered
    (a crash may repeat a dead letter written after the last save, never lose one)."""
    n = 10_000
    poisoned = set(range(40, n + 1, 397))  # 26 bad records: splits all through the run
    source = write_records(tmp_path / "export.jsonl", n, poison=poisoned.__contains__)
    options = ["--latency", "0.01", "--reject-field", "poison"]
    if results:
        options += ["--results", results, "--item-throttle-rate", "0.01"]
    with run_sink(tmp_path, *options) as sink:
        job = Job(tmp_path, sink, str(source), extra=("--results", results) if results else ())
        with job.start() as running:
            sink.wait_records(random.Random(3).randrange(n // 4, n // 2))
            running.signal(signal.SIGKILL)
            assert running.finish().code == -signal.SIGKILL
        done = job.run()
        assert done.code == 1, done.err
        stats = sink.settle()
        ids = sink.record_ids()
    assert ids == sorted(set(range(1, n + 1)) - poisoned)  # each good record once
    assert stats["key_body_mismatches"] == 0  # a key always carries the same records
    assert stats["bodies_under_several_keys"] == 0  # never the same records under a new key
    lines = [orjson.loads(x)["line"] for x in job.failed.read_bytes().splitlines()]
    assert set(lines) == poisoned
    summary = job.summary()
    assert summary["records_sent"] == n - len(poisoned)
