"""``asyncsync.dask``: uploads on a local Dask cluster of worker processes, against the
reference sink served by this test's event loop (the Dask client runs in a thread).

What the sink sees is the judge: every record once, one token request for the whole cluster,
no record under two Idempotency-Keys when a worker process is killed mid-task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from cli_helpers import clean_env, finish_cli, start_cli

pytest.importorskip("distributed", reason="the dask extra is not installed")

import dask.bag as db
from distributed import Client, LocalCluster

from asyncsync import BatchLimits, OAuth2ClientCredentials
from asyncsync.dask import FileShards, upload_dask
from asyncsync.sink import STATE, Sink, SinkConfig

SECRET = "dask-secret-for-tests"

pytestmark = pytest.mark.slow


def sink_config(**options: Any) -> SinkConfig:
    return SinkConfig(
        client_id=f"dask-{uuid.uuid4().hex[:8]}", client_secret=SECRET, seed=1, **options
    )


def oauth(sink: Sink) -> OAuth2ClientCredentials:
    return OAuth2ClientCredentials(sink.token_url, sink.config.client_id, SECRET)


def record(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"user-{i}", "score": i % 97}


@contextlib.contextmanager
def local_cluster(n: int = 2) -> Iterator[Client]:
    with (
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def ids_once(sink: Sink, n: int) -> Counter[int]:
    seen = Counter(int(r["id"]) for r in sink.records())
    assert sorted(seen) == list(range(1, n + 1)), "a record is missing"
    assert max(seen.values()) == 1, "a record was stored twice"
    return seen


async def test_local_cluster_of_2_uploads_200k_records_once_with_one_token(tmp_path) -> None:
    """A bag of 200 k records on 2 worker processes: each record once, one token request for
    the cluster (the workers share a file store), the merged summary equal to the sink's."""
    n = 200_000
    bag = db.from_sequence(range(1, n + 1), npartitions=8).map(record)
    async with Sink(sink_config()) as sink:
        summary = await upload_dask(
            bag,
            sink.ingest_url,
            auth=oauth(sink),
            workers=2,
            state_dir=tmp_path / "state",
            limits=BatchLimits(max_records=500),
        )
        stats = sink.stats()
        ids_once(sink, n)
    assert stats["token_requests"] == 1
    assert summary.records_read == summary.records_sent == n
    assert summary.records_failed == 0 and summary.ok
    assert summary.batches == stats["batches"] == n // 500
    assert summary.requests == summary.batches + summary.retries
    assert summary.auth_requests == 1
    assert len(summary.job_id.split(",")) == 8
    assert not (tmp_path / "state" / "failed.jsonl").exists()
    parts = sorted(p.name for p in (tmp_path / "state").glob("part-*.asyncsync"))
    assert parts == [f"part-{k}-of-8.asyncsync" for k in range(8)]


async def test_file_shards_keep_global_lines_and_merge_dead_letters(tmp_path, make_jsonl) -> None:
    """A JSONL file cut into 4 shards: the malformed line is in the run's one dead-letter
    file under its global line number; every other record once."""
    source = make_jsonl(4000)
    rows = source.read_text().splitlines()
    rows[2999] = "{not json"
    source.write_text("\n".join(rows) + "\n")
    async with Sink(sink_config()) as sink:
        summary = await upload_dask(
            FileShards(source, 4),
            sink.ingest_url,
            auth=oauth(sink),
            workers=2,
            state_dir=tmp_path / "state",
            failed=tmp_path / "failed.jsonl",
        )
        seen = Counter(int(r["id"]) for r in sink.records())
        stats = sink.stats()
    assert sorted(seen) == [i for i in range(1, 4001) if i != 3000]
    assert max(seen.values()) == 1
    assert stats["token_requests"] == 1
    assert summary.records_read == 4000 and summary.records_failed == 1
    [entry] = [line for line in (tmp_path / "failed.jsonl").read_text().splitlines() if line]
    assert '"line":3000' in entry
    assert not list((tmp_path / "state").glob("part-*.failed.jsonl"))  # gathered, deleted


def parts_sending(sink: Sink) -> set[str]:
    """The parts whose batches reached the sink (keys are ``RUN-K-FIRST-LAST``)."""
    return {key.split("-")[1] for key in list(sink.app[STATE].key_digest)}


def _processing_worker(client: Client, deadline: float) -> tuple[int, list[str]]:
    """The pid of a worker that is running a task now, and the keys of the tasks it has."""
    pids = client.run(os.getpid)
    while time.monotonic() < deadline:
        busy = [(addr, keys) for addr, keys in client.processing().items() if keys]
        if busy:
            addr, keys = busy[0]
            return int(pids[addr]), [str(k) for k in keys]
        time.sleep(0.05)
    raise AssertionError("no worker ran a task")


def _processing_starts(client: Client, key: str) -> list[float]:
    """When the scheduler sent ``key`` to a worker (each transition to processing)."""

    def starts(dask_scheduler: Any) -> list[float]:
        return [t[5] for t in dask_scheduler.story(key) if t[2] == "processing"]

    return list(client.run_on_scheduler(starts))


async def test_killed_worker_task_reruns_elsewhere_without_a_record_under_two_keys(
    tmp_path,
) -> None:
    """SIGKILL a worker process mid-task: Dask re-runs its task (on the other worker, or on
    the one its nanny restarts): the scheduler sends it to a worker again after the kill, and
    the re-run resumes from the part's checkpoint, re-sending what was in flight under the
    same Idempotency-Keys: every record is delivered, none is stored twice, no body travels
    under two keys, one token request in all. (A batch in flight at the kill may never have
    been stored, the client died mid-request, so the sink need not see a duplicate.)"""
    n = 40_000
    bag = db.from_sequence(range(1, n + 1), npartitions=4).map(record)
    store = f"file:{tmp_path / 'token.json'}"
    async with Sink(sink_config(latency=0.02)) as sink:
        with local_cluster(2) as client:
            run = asyncio.ensure_future(
                upload_dask(
                    bag,
                    sink.ingest_url,
                    auth=oauth(sink),
                    client=client,
                    token_store=store,
                    state_dir=tmp_path / "state",
                    concurrency=2,
                    limits=BatchLimits(max_records=100),
                )
            )
            deadline = time.monotonic() + 30
            # both workers sending (two parts' keys seen), so the one killed has requests in
            # flight: under load a worker may still be starting its task when 3000 are stored
            while sink.stats()["records"] < 3000 or len(parts_sending(sink)) < 2:
                assert not run.done(), run
                assert time.monotonic() < deadline, "the upload did not start"
                await asyncio.sleep(0.02)
            pid, keys = await asyncio.to_thread(_processing_worker, client, deadline)
            killed = time.time()
            os.kill(pid, signal.SIGKILL)
            killed_at = sink.stats()["records"]
            summary = await asyncio.wait_for(run, 50)
            pids_after = set((await asyncio.to_thread(client.run, os.getpid)).values())
            starts = {k: await asyncio.to_thread(_processing_starts, client, k) for k in keys}
        stats = sink.stats()
        ids_once(sink, n)
    assert 0 < killed_at < n, "the kill came after the upload"
    assert stats["bodies_under_several_keys"] == 0
    assert stats["token_requests"] == 1
    # the killed process is gone, and a task it held was sent to a worker again after the
    # kill (the one it was running; one queued behind it may have been moved too)
    assert pid not in pids_after
    rerun = [k for k, at in starts.items() if len(at) >= 2 and max(at) > killed]
    assert rerun, (keys, starts, killed)
    assert summary.records_read == summary.records_sent == n  # from the part's checkpoint on


async def test_cli_engine_dask_workers_2_uploads_each_record_once(tmp_path, make_jsonl) -> None:
    """``upload --engine dask --workers 2``: each record once, one token request, one merged
    summary JSON, part checkpoints in ``<source>.dask/``."""
    source = make_jsonl(5000)
    async with Sink(sink_config()) as sink:
        proc = await start_cli(
            "upload", str(source), "--url", sink.ingest_url, "--token-url", sink.token_url,
            "--client-id", sink.config.client_id, "--no-progress",
            "--engine", "dask", "--workers", "2",
            "--summary-json", str(tmp_path / "summary.json"),
            cwd=tmp_path, env=clean_env(ASYNCSYNC_CLIENT_SECRET=SECRET),
        )  # fmt: skip
        run = await finish_cli(proc, limit=50)
        stats = sink.stats()
        ids_once(sink, 5000)
    assert run.code == 0, run.err
    assert stats["token_requests"] == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["records_sent"] == 5000 and summary["auth_requests"] == 1
    assert sorted(p.name for p in (tmp_path / "export.jsonl.dask").glob("*.asyncsync")) == [
        f"part-{k}-of-4.asyncsync" for k in range(4)
    ]


async def test_cli_engine_dask_scheduler_needs_a_token_store(tmp_path, make_jsonl) -> None:
    """A running cluster without --token-store: exit 2 naming it, before any request."""
    source = make_jsonl(10)
    async with Sink(sink_config()) as sink:
        proc = await start_cli(
            "upload", str(source), "--url", sink.ingest_url, "--token-url", sink.token_url,
            "--client-id", sink.config.client_id, "--no-progress",
            "--engine", "dask", "--scheduler", "tcp://127.0.0.1:1",
            cwd=tmp_path, env=clean_env(ASYNCSYNC_CLIENT_SECRET=SECRET),
        )  # fmt: skip
        run = await finish_cli(proc, limit=20)
        stats = sink.stats()
    assert run.code == 2
    assert "--token-store" in run.err
    assert stats["token_requests"] == 0 and stats["records"] == 0


@pytest.mark.parametrize("on_reject", ["split", "batch"])
async def test_cli_engine_dask_on_reject(tmp_path, on_reject: str) -> None:
    """--on-reject (issue 14) reaches the workers: with ``split`` only the records the sink
    rejects are in the run's dead-letter file, with ``batch`` their whole batches; every
    other record is stored once, exit 1."""
    poison = {7, 777, 1500}
    source = tmp_path / "export.jsonl"
    source.write_bytes(
        b"".join(
            json.dumps({"id": i, **({"poison": True} if i in poison else {})}).encode() + b"\n"
            for i in range(1, 2001)
        )
    )
    failed = tmp_path / "failed.jsonl"
    async with Sink(sink_config(reject_field="poison")) as sink:
        proc = await start_cli(
            "upload", str(source), "--url", sink.ingest_url, "--token-url", sink.token_url,
            "--client-id", sink.config.client_id, "--no-progress", "--batch-size", "100",
            "--engine", "dask", "--workers", "2", "--failed", str(failed),
            "--on-reject", on_reject, "--summary-json", str(tmp_path / "summary.json"),
            cwd=tmp_path, env=clean_env(ASYNCSYNC_CLIENT_SECRET=SECRET),
        )  # fmt: skip
        run = await finish_cli(proc, limit=50)
        stored = Counter(int(r["id"]) for r in sink.records())
    assert run.code == 1, run.err
    dead = Counter(int(json.loads(line)["line"]) for line in failed.read_text().splitlines())
    assert set(dead.values()) == {1} and set(stored.values()) == {1}
    assert set(stored) | set(dead) == set(range(1, 2001)) and not set(stored) & set(dead)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["requests"] == summary["batches"] + summary["retries"]
    assert summary["records_failed"] == len(dead)
    if on_reject == "split":
        assert set(dead) == poison and summary["split_requests"] > 0
    else:  # whole batches of up to 100 records, each holding a poison record
        assert poison < set(dead) and len(dead) <= 100 * len(poison)
        assert summary["split_requests"] == 0


async def test_progress_polls_sum_every_part_and_end_equal_to_the_summary(tmp_path) -> None:
    """on_progress (the CLI's display and --metrics with --engine dask): the polls see the
    run in progress, never go down, and the last one equals the merged summary; with
    metrics=True each part's snapshot counts its requests by status as the sink does."""
    n = 20_000
    bag = db.from_sequence(range(1, n + 1), npartitions=4).map(record)
    seen: list[dict[int, Any]] = []
    async with Sink(sink_config(latency=0.01, throttle_every=30, retry_after=0.02)) as sink:
        summary = await upload_dask(
            bag,
            sink.ingest_url,
            auth=oauth(sink),
            workers=2,
            state_dir=tmp_path / "state",
            limits=BatchLimits(max_records=100),
            concurrency=2,
            on_progress=lambda parts: seen.append(dict(parts)),
            metrics=True,
            progress_interval=0.05,
        )
        stats = sink.stats()
        ids_once(sink, n)

    def summed(parts: dict[int, Any], name: str) -> int:
        return sum(int(p["c"][name]) for p in parts.values())

    sent = [summed(parts, "records_sent") for parts in seen]
    assert sent == sorted(sent), sent
    assert any(0 < v < n for v in sent), sent
    last = seen[-1]
    assert sorted(last) == [0, 1, 2, 3]
    for name in ("records_read", "records_sent", "requests", "retries", "batches"):
        assert summed(last, name) == getattr(summary, name), name
    from asyncsync._recorder import merge_snapshots

    merged = merge_snapshots(p["m"] for p in last.values())
    assert merged["requests"] == {k: v for k, v in stats["statuses"].items()}
    assert "429" in merged["requests"]
    assert sum(merged["latency_buckets"]) == summary.requests == stats["ingest_requests"]
    assert sorted(merged["job_ids"]) == sorted(summary.job_id.split(","))


async def test_cli_engine_dask_serves_metrics_and_shows_progress(
    tmp_path, make_jsonl, unused_tcp_port: int
) -> None:
    """``--engine dask --metrics HOST:PORT --progress``: one endpoint for the cluster, whose
    records_sent_total rises during the run; the progress display is fed by the workers."""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    source = make_jsonl(6000)
    url = f"http://127.0.0.1:{unused_tcp_port}/metrics"
    sent: list[float] = []
    async with Sink(sink_config(latency=0.02)) as sink, aiohttp.ClientSession() as session:
        proc = await start_cli(
            "upload", str(source), "--url", sink.ingest_url, "--token-url", sink.token_url,
            "--client-id", sink.config.client_id, "--progress", "--batch-size", "50",
            "--concurrency", "2", "--engine", "dask", "--workers", "2",
            "--metrics", f"127.0.0.1:{unused_tcp_port}",
            "--summary-json", str(tmp_path / "summary.json"),
            cwd=tmp_path, env=clean_env(ASYNCSYNC_CLIENT_SECRET=SECRET),
        )  # fmt: skip
        while proc.returncode is None:
            try:
                async with session.get(url) as resp:
                    text = await resp.text()
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
                continue
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "asyncsync_records_sent_total":
                        sent.append(sample.value)
            await asyncio.sleep(0.1)
        run = await finish_cli(proc, limit=60)
        ids_once(sink, 6000)
    assert run.code == 0, run.err
    assert sent == sorted(sent), sent
    assert any(0 < v < 6000 for v in sent), sent
    assert "upload (" in run.err and "6,000 records (" in run.err  # the display's last line
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["records_sent"] == 6000


async def test_cli_engine_dask_ctrl_c_drains_and_a_rerun_delivers_the_rest(
    tmp_path, make_jsonl
) -> None:
    """SIGINT to ``upload --engine dask``: the parts drain (exit 4, the summary says
    interrupted, fewer records sent than read in all); the same command again resumes every
    part from its checkpoint: each record stored once over both runs."""
    n = 20_000
    source = make_jsonl(n)
    summary_path = tmp_path / "summary.json"
    async with Sink(sink_config(latency=0.03)) as sink:
        args = (
            "upload", str(source), "--url", sink.ingest_url, "--token-url", sink.token_url,
            "--client-id", sink.config.client_id, "--no-progress", "--batch-size", "50",
            "--concurrency", "2", "--engine", "dask", "--workers", "2",
            "--summary-json", str(summary_path),
        )  # fmt: skip
        env = clean_env(ASYNCSYNC_CLIENT_SECRET=SECRET)
        proc = await start_cli(*args, cwd=tmp_path, env=env)
        deadline = time.monotonic() + 60
        while sink.stats()["records"] < 1000 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        first = await finish_cli(proc, limit=60)
        stored_first = sink.stats()["records"]
        assert first.code == 4, first.err
        interrupted = json.loads(summary_path.read_text())
        assert interrupted["interrupted"] is True
        assert 1000 <= interrupted["records_sent"] < n
        assert interrupted["records_sent"] <= stored_first
        proc = await start_cli(*args, cwd=tmp_path, env=env)
        second = await finish_cli(proc, limit=90)
        assert second.code == 0, second.err
        ids_once(sink, n)
    resumed = json.loads(summary_path.read_text())
    assert resumed["interrupted"] is False and resumed["records_sent"] == n
