"""Scale-out at the command line: ``--token-store``, ``--shard K/N`` and ``--processes N``,
the real ``asyncsync`` command in subprocesses against the reference sink in this process.

What the server sees is the judge: every record exactly once, one token request for all the
processes that share a store, global line numbers in the dead-letter files, the merged
summary's counts equal to the server's, the contract's exit codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Run, clean_env, finish_cli, start_cli

from asyncsync._summary import merge_summaries
from asyncsync.cli._exit import merge_exit_codes
from asyncsync.cli._main import main
from asyncsync.cli._run import client_identity
from asyncsync.cli._settings import settings_from_argv
from asyncsync.sink import Sink, SinkConfig
from asyncsync.sources._shards import plan_shards

CLIENT_SECRET = "multiproc-secret-for-tests"
CONTRACT_KEYS = {
    "records_read", "records_sent", "records_failed", "batches", "requests", "retries",
    "auth_requests", "duration_s", "records_per_s",
}  # fmt: skip

pytestmark = pytest.mark.slow


# --- helpers ---------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children of --processes live in their own groups)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    for pid in [*descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Runner:
    """Starts CLI processes while this loop serves the sink; kills what is left at the end
    (with their children, which ``--processes`` puts in their own process groups)."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, *args: str, **extra: str) -> asyncio.subprocess.Process:
        env = clean_env(**{"ASYNCSYNC_CLIENT_SECRET": CLIENT_SECRET, **extra})
        proc = await start_cli(*args, cwd=self.cwd, env=env)
        self.procs.append(proc)
        return proc

    @staticmethod
    async def finish(proc: asyncio.subprocess.Process, limit: float = 40) -> Run:
        return await finish_cli(proc, limit=limit)

    async def run(self, *args: str, **extra: str) -> Run:
        return await self.finish(await self.start(*args, **extra))

    def close(self) -> None:
        for proc in self.procs:
            kill_tree(proc)


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[Runner]:
    r = Runner(tmp_path)
    try:
        yield r
    finally:
        r.close()


def sink_config(**options: Any) -> SinkConfig:
    # a client id of its own: store keys never meet another test's (or run's) token
    return SinkConfig(
        client_id=f"mp-{uuid.uuid4().hex[:8]}", client_secret=CLIENT_SECRET, seed=1, **options
    )


def oauth(sink: Sink) -> list[str]:
    return [
        "--url", sink.ingest_url, "--token-url", sink.token_url,
        "--client-id", sink.config.client_id, "--no-progress",
    ]  # fmt: skip


def ids_once(sink: Sink, n: int) -> None:
    """The sink stored the records 1..n, each exactly once."""
    seen = Counter(int(r["id"]) for r in sink.records())
    assert sorted(seen) == list(range(1, n + 1))
    assert max(seen.values()) == 1


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def corrupt(path: Path, line: int) -> None:
    rows = path.read_text().splitlines()
    rows[line - 1] = "{not json"
    path.write_text("\n".join(rows) + "\n")


def poison(path: Path, lines: Sequence[int]) -> None:
    rows = path.read_text().splitlines()
    for n in lines:
        rows[n - 1] = rows[n - 1][:-1] + ', "poison": true}'
    path.write_text("\n".join(rows) + "\n")


# --- --shard K/N ----------------------------------------------------------------------------


async def test_every_shard_of_3_uploads_each_record_once_with_global_lines(
    tmp_path, make_jsonl, runner
) -> None:
    """The three shards of a file, as three hosts would run them (sharing a token store):
    every record once, one token request, the malformed line dead-lettered by the shard that
    holds it, under its global line number, each shard with its own checkpoint."""
    source = make_jsonl(3000)
    corrupt(source, 1700)
    store = f"file:{tmp_path / 'token.json'}"
    async with Sink(sink_config(token_latency=0.3)) as sink:
        procs = []
        for k in range(3):
            args = ["--shard", f"{k}/3", "--summary-json", str(tmp_path / f"summary-{k}.json")]
            procs.append(
                await runner.start(
                    "upload", str(source), *oauth(sink), "--token-store", store, *args
                )
            )
        runs = [await runner.finish(p) for p in procs]
        stats = sink.stats()
        ids_once_except = Counter(int(r["id"]) for r in sink.records())
    assert sorted(ids_once_except) == [i for i in range(1, 3001) if i != 1700]
    assert max(ids_once_except.values()) == 1
    assert stats["token_requests"] == 1
    failed_in = []
    for k, run in enumerate(runs):
        assert (tmp_path / f"export.jsonl.shard-{k}-of-3.asyncsync").exists()
        dead = tmp_path / f"export.jsonl.shard-{k}-of-3.failed.jsonl"
        if dead.exists():
            failed_in.append(k)
            [entry] = read_jsonl(dead)
            assert entry["line"] == 1700 and entry["record"] == "{not json"
            assert run.code == 1, run.err
        else:
            assert run.code == 0, run.err
    assert failed_in == [1]  # line 1700 of 3000 lies in the middle shard
    assert not (tmp_path / "export.jsonl.failed.jsonl").exists()
    summaries = [json.loads((tmp_path / f"summary-{k}.json").read_text()) for k in range(3)]
    assert sum(s["records_read"] for s in summaries) == 3000
    assert sum(s["auth_requests"] for s in summaries) == 1


async def test_shard_csv_with_quoted_newlines_and_redis_store(tmp_path, runner, redis_url) -> None:
    """CSV shards cut at row starts although fields span lines; the hosts share a Redis store."""
    source = tmp_path / "export.csv"
    source.write_text(
        "id,note\n" + "".join(f'{i},"first line\nsecond, ""quoted"" {i}"\n' for i in range(1, 901))
    )
    async with Sink(sink_config(token_latency=0.3)) as sink:
        args = [
            "upload",
            str(source),
            *oauth(sink),
            "--token-store",
            redis_url,
            "--batch-size",
            "50",
        ]
        procs = [await runner.start(*args, "--shard", f"{k}/3") for k in range(3)]
        runs = [await runner.finish(p) for p in procs]
        records = sink.records()
        stats = sink.stats()
    assert [r.code for r in runs] == [0, 0, 0], [r.err for r in runs]
    assert sorted(int(r["id"]) for r in records) == list(range(1, 901))
    assert {r["note"] for r in records if r["id"] == "7"} == {'first line\nsecond, "quoted" 7'}
    assert stats["token_requests"] == 1


# --- --processes N ---------------------------------------------------------------------------


async def test_processes_2_one_token_one_merged_summary(tmp_path, make_jsonl, runner) -> None:
    source = make_jsonl(4000)
    summary_path = tmp_path / "summary.json"
    async with Sink(sink_config(token_latency=0.3)) as sink:
        run = await runner.run(
            "upload", str(source), *oauth(sink), "--processes", "2",
            "--summary-json", str(summary_path),
        )  # fmt: skip
        stats = sink.stats()
        ids_once(sink, 4000)
    assert run.code == 0, run.err
    assert stats["token_requests"] == 1
    summary = json.loads(summary_path.read_text())
    assert set(summary) >= CONTRACT_KEYS
    assert summary["records_read"] == summary["records_sent"] == 4000
    assert summary["records_failed"] == 0 and summary["interrupted"] is False
    assert summary["batches"] == stats["batches"] in (20, 21)  # shards of ~2000 records / 200
    assert summary["requests"] == stats["ingest_requests"]
    assert summary["auth_requests"] == 1
    assert summary["duration_s"] > 0
    assert summary["records_per_s"] == pytest.approx(4000 / summary["duration_s"], rel=0.01)
    assert len(summary["job_id"].split(",")) == 2
    shards = summary["shards"]
    assert [s["shard"] for s in shards] == ["0/2", "1/2"]
    assert [s["exit_code"] for s in shards] == [0, 0]
    assert sum(s["records_sent"] for s in shards) == 4000
    assert sum(s["auth_requests"] for s in shards) == 1
    assert max(s["duration_s"] for s in shards) <= summary["duration_s"]
    for k in range(2):
        assert (tmp_path / f"export.jsonl.shard-{k}-of-2.asyncsync").exists()
        assert not (tmp_path / f"export.jsonl.shard-{k}-of-2.failed.jsonl").exists()
    assert "records delivered" in run.out + run.err  # one table, for the whole run
    assert (run.out + run.err).count("records delivered") == 1


async def test_processes_with_rejected_records_exit_1_and_merge_dead_letters(
    tmp_path, make_jsonl, runner
) -> None:
    source = make_jsonl(2000)
    poison(source, [15, 1500])
    corrupt(source, 1800)
    summary_path = tmp_path / "summary.json"
    async with Sink(sink_config(reject_field="poison")) as sink:
        run = await runner.run(
            "upload", str(source), *oauth(sink), "--processes", "2", "--batch-size", "10",
            "--summary-json", str(summary_path),
        )  # fmt: skip
        stored = sink.stats()["records"]
    assert run.code == 1, run.err
    summary = json.loads(summary_path.read_text())
    assert summary["records_failed"] == 3  # two rejected records, one malformed line
    assert summary["records_sent"] == stored == 2000 - 3
    assert summary["records_read"] == 2000
    # the rejected records are split out of their batches, one in each shard's
    second = plan_shards(source, 2)[1].first_line
    assert 15 < second <= 1500
    dead = read_jsonl(tmp_path / "export.jsonl.failed.jsonl")
    assert sorted(e["line"] for e in dead) == [15, 1500, 1800]
    assert not list(tmp_path.glob("*.shard-*.failed.jsonl"))  # gathered, then removed


async def test_sigint_drains_every_shard_then_a_rerun_resumes_each(
    tmp_path, make_jsonl, runner
) -> None:
    """SIGINT to the parent reaches every child: all drain and checkpoint, exit 4; the same
    command again resumes each shard and delivers the rest, nothing twice."""
    source = make_jsonl(2000)
    summary_path = tmp_path / "summary.json"
    args = [
        "upload", str(source), "--processes", "2", "--batch-size", "10", "--concurrency", "2",
        "--summary-json", str(summary_path),
    ]  # fmt: skip
    async with Sink(sink_config(latency=0.04)) as sink:
        proc = await runner.start(*args, *oauth(sink))
        deadline = time.monotonic() + 20
        while sink.stats()["records"] < 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        children = descendants(proc.pid)
        assert len(children) >= 2, "the children never started"
        proc.send_signal(signal.SIGINT)
        first = await runner.finish(proc)
        stored = sink.stats()["records"]
        interrupted = json.loads(summary_path.read_text())
        assert not any(Path(f"/proc/{pid}").exists() for pid in children)  # noqa: ASYNC240
        second = await runner.run(*args, *oauth(sink))
        stats = sink.stats()
        ids_once(sink, 2000)
    assert first.code == 4, first.err
    assert interrupted["interrupted"] is True
    assert interrupted["records_sent"] == stored < 2000
    assert second.code == 0, second.err
    resumed = json.loads(summary_path.read_text())
    assert resumed["records_sent"] == 2000 and resumed["interrupted"] is False
    assert stats["duplicate_records"] == 0


async def test_children_of_a_killed_parent_stop_and_checkpoint(
    tmp_path, make_jsonl, runner
) -> None:
    """SIGKILL to the parent (no forwarding possible): each child sees its report pipe break,
    stops itself the SIGINT way (drain, checkpoint) within a moment, and leaves no orphan."""
    source = make_jsonl(2000)
    args = ["upload", str(source), "--processes", "2", "--batch-size", "10", "--concurrency", "2"]
    async with Sink(sink_config(latency=0.04)) as sink:
        proc = await runner.start(*args, *oauth(sink))
        deadline = time.monotonic() + 20
        while sink.stats()["records"] < 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        children = descendants(proc.pid)
        assert len(children) >= 2, "the children never started"
        proc.kill()
        await proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = [pid for pid in children if _running(pid)]
            if not alive:
                break
            await asyncio.sleep(0.05)
        assert not alive, "children outlived their parent"
    for k in range(2):
        state = json.loads((tmp_path / f"export.jsonl.shard-{k}-of-2.asyncsync").read_text())
        assert state["watermark"]["position"] > 0


def _running(pid: int) -> bool:
    """Alive and not a zombie (a child of a dead parent is reaped by init, or by us)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_processes_bad_credentials_exit_3(tmp_path, make_jsonl, runner) -> None:
    source = make_jsonl(500)
    async with Sink(sink_config()) as sink:
        run = await runner.run(
            "upload", str(source), *oauth(sink), "--processes", "2",
            ASYNCSYNC_CLIENT_SECRET="wrong-secret",
        )  # fmt: skip
        stats = sink.stats()
    assert run.code == 3, run.err
    assert "AuthError" in run.err and "wrong-secret" not in run.err + run.out
    assert stats["records"] == 0


# --- --token-store between independent commands -----------------------------------------------


async def test_two_commands_sharing_a_file_store_make_one_token_request(
    tmp_path, make_jsonl, runner
) -> None:
    first = make_jsonl(1000, "a.jsonl")
    second = make_jsonl(1000, "b.jsonl")
    token_file = tmp_path / "tokens" / "token.json"
    token_file.parent.mkdir()
    store = f"file:{token_file}"
    async with Sink(sink_config(token_latency=0.5)) as sink:
        procs = [
            await runner.start("upload", str(p), *oauth(sink), "--token-store", store)
            for p in (first, second)
        ]
        runs = [await runner.finish(p) for p in procs]
        stats = sink.stats()
    assert [r.code for r in runs] == [0, 0], [r.err for r in runs]
    assert stats["token_requests"] == 1
    assert stats["records"] == 2000
    assert token_file.stat().st_mode & 0o077 == 0


# --- usage errors: exit 2 before any request --------------------------------------------------

NOWHERE = "http://127.0.0.1:9/ingest"  # nothing listens: a request would not end in exit 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--shard", "0/2", "--processes", "2"], "exclude each other"),
        (["--token-store", "file:{tmp}/open.json"], "group"),
        (["--token-store", "ftp://x"], "--token-store"),
        (["--processes", "2", "--token-store", "file:{tmp}/open.json"], "group"),
    ],
)
def test_scale_out_usage_errors_exit_2(
    tmp_path, make_jsonl, capsys, monkeypatch, extra, message
) -> None:
    monkeypatch.setenv("ASYNCSYNC_CLIENT_SECRET", CLIENT_SECRET)
    source = make_jsonl(10)
    shared = tmp_path / "open.json"
    shared.write_text("{}")
    shared.chmod(0o644)
    args = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    code = main([
        "upload", str(source), "--url", NOWHERE, "--token-url", NOWHERE,
        "--client-id", "c", "--no-progress", *args,
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err


def test_shard_and_processes_need_a_file(capsys) -> None:
    for flags in (["--shard", "0/2"], ["--processes", "2"]):
        code = main(["upload", "-", "--url", NOWHERE, "--auth", "none", *flags])
        err = capsys.readouterr().err
        assert code == 2
        assert "needs a file source" in err
        assert "stdin cannot be split" in err  # --db can: see test_sql_shards.py


# --- merging ---------------------------------------------------------------------------------


def test_exit_codes_merge_worst_first() -> None:
    assert merge_exit_codes([0, 0]) == 0
    assert merge_exit_codes([0, 1]) == 1
    assert merge_exit_codes([1, 4, 0]) == 4
    assert merge_exit_codes([4, 2, 1]) == 2
    assert merge_exit_codes([2, 3, 4]) == 3
    assert merge_exit_codes([0, 7]) == 4  # unknown: aborted
    assert merge_exit_codes([]) == 0


def test_summaries_merge_by_sum_with_the_runs_wall_time() -> None:
    parts = [
        {"records_read": 10, "records_sent": 9, "records_failed": 1, "batches": 2,
         "requests": 3, "retries": 1, "retries_by_status": {"503": 1}, "auth_requests": 1,
         "bytes_sent": 100, "job_id": "a", "latencies": [0.010, 0.020]},
        {"records_read": 5, "records_sent": 5, "records_failed": 0, "batches": 1,
         "requests": 2, "retries": 1, "retries_by_status": {"503": 1}, "auth_requests": 0,
         "bytes_sent": 50, "job_id": "b", "latencies": [0.030], "interrupted": True},
    ]  # fmt: skip
    summary = merge_summaries(parts, duration_s=2.0)
    assert (summary.records_read, summary.records_sent, summary.records_failed) == (15, 14, 1)
    assert (summary.batches, summary.requests, summary.retries) == (3, 5, 2)
    assert summary.retries_by_status == {"503": 2}
    assert summary.auth_requests == 1 and summary.bytes_sent == 150
    assert summary.records_per_s == 7.0 and summary.duration_s == 2.0
    assert summary.latency_p50_ms == 20.0 and summary.job_id == "a,b"
    assert summary.interrupted is True


def test_login_store_identity_is_the_user_never_the_password() -> None:
    base = ["x.jsonl", "--url", NOWHERE, "--auth", "login", "--token-url", NOWHERE]
    ann = {"ASYNCSYNC_USERNAME": "ann", "ASYNCSYNC_PASSWORD": "pw-of-ann-123"}
    bob = {"ASYNCSYNC_USERNAME": "bob", "ASYNCSYNC_PASSWORD": "pw-of-ann-123"}
    who_ann = client_identity(settings_from_argv(base, ann), ann)
    who_bob = client_identity(settings_from_argv(base, bob), bob)
    assert who_ann != who_bob
    assert who_ann is not None and "ann" in who_ann and "pw-of-ann" not in who_ann
    oauth2 = settings_from_argv(
        ["x.jsonl", "--url", NOWHERE, "--token-url", NOWHERE, "--client-id", "cid"],
        {"ASYNCSYNC_CLIENT_SECRET": "s"},
    )
    assert client_identity(oauth2) == "cid"
