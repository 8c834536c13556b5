"""Crash and resume of the real ``asyncsync upload`` against the reference sink, both processes.

The sink runs as its own process (``python -m asyncsync.sink``, deduplicating by
Idempotency-Key) so that it outlives every client it serves; the client is killed with SIGKILL
or stopped with SIGINT at random moments (seeded) and resumed with the same command. What is
checked is what the server holds: every record exactly once, a repeat only under a key it had
seen, never the same body under two keys, and no more re-sent batches than could be in flight.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from cli_helpers import clean_env, command

CLIENT_SECRET = "kill-resume-secret"
CONCURRENCY = 8
BATCH = 100
#: ``default_queue_size(8)``: the reader may hold this many batches dispatched but not sent
QUEUE = 2 * CONCURRENCY
#: batches a SIGKILL can force a resume to send again: the ones being sent (at most one per
#: worker) plus, generously, the queued ones (dispatched, so the watermark waits for them)
RESEND_BOUND = CONCURRENCY + QUEUE


# --- the sink as a process -------------------------------------------------------------------


@dataclass
class SinkProcess:
    """A running ``python -m asyncsync.sink``, seen through its HTTP endpoints."""

    proc: subprocess.Popen[str]
    info: dict[str, str] = field(default_factory=dict)

    @property
    def ingest(self) -> str:
        return self.info["ingest"]

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.info["url"] + path, timeout=10) as resp:
            body: bytes = resp.read()
            return body

    def stats(self, *, detail: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.get("/stats?detail=1" if detail else "/stats"))
        return data

    def record_ids(self) -> list[int]:
        return sorted(orjson.loads(line)["id"] for line in self.get("/records").splitlines())

    def set_faults(self, **changes: object) -> None:
        request = urllib.request.Request(
            self.info["url"] + "/admin/faults",
            data=json.dumps(changes).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200

    def wait_records(self, at_least: int, *, limit: float = 20.0) -> int:
        """Poll until the sink holds ``at_least`` records; the count then."""
        deadline = time.monotonic() + limit
        while (n := self.stats()["records"]) < at_least:
            assert time.monotonic() < deadline, f"the sink has {n} records, waited for {at_least}"
            time.sleep(0.005)
        return int(n)

    def settle(self) -> dict[str, Any]:
        """Stats once the requests of a dead client have all been answered or dropped."""
        deadline = time.monotonic() + 5
        while (stats := self.stats(detail=True))["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.01)
        return stats


@contextmanager
def run_sink(tmp_path: Path, *options: str) -> Iterator[SinkProcess]:
    """Start the sink on a free loopback port; always killed on the way out."""
    log = (tmp_path / "sink.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncsync.sink", "--port", "0", "--seed", "1",
         "--client-secret", CLIENT_SECRET, *options],
        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
        env=clean_env(),
    )  # fmt: skip
    try:
        sink = SinkProcess(proc)
        assert proc.stdout is not None
        while "password" not in sink.info:
            line = proc.stdout.readline()
            assert line, f"the sink exited early: {(tmp_path / 'sink.log').read_text()}"
            name, _, value = line.strip().partition(": ")
            sink.info[name] = value
        yield sink
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()


# --- the client as a process -----------------------------------------------------------------


@dataclass
class Job:
    """One job's files, and the command that starts (or resumes) it."""

    tmp: Path
    sink: SinkProcess
    source: str
    command: str = "upload"
    stateful: bool = True  # with --checkpoint
    extra: tuple[str, ...] = ()

    @property
    def checkpoint(self) -> Path:
        return self.tmp / "job.ckpt"

    @property
    def failed(self) -> Path:
        return self.tmp / "failed.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.tmp / "summary.json"

    def args(self, *more: str) -> list[str]:
        state = ["--checkpoint", str(self.checkpoint)] if self.stateful else []
        if self.command == "upload":  # a replay has its own default
            state += ["--failed", str(self.failed)]
        return [
            *command(), self.command, self.source, "--url", self.sink.ingest,
            "--auth", "oauth2", "--token-url", self.sink.info["token"],
            "--client-id", self.sink.info["client_id"], *state,
            "--summary-json", str(self.summary_path),
            "--no-progress", "--concurrency", str(CONCURRENCY), "--batch-size", str(BATCH),
            *self.extra, *more,
        ]  # fmt: skip

    def start(self, *more: str, stdin: bytes | None = None) -> Client:
        proc = subprocess.Popen(
            self.args(*more),
            cwd=self.tmp,
            env=clean_env(ASYNCSYNC_CLIENT_SECRET=CLIENT_SECRET),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return Client(proc, stdin)

    def run(self, *more: str, stdin: bytes | None = None, limit: float = 30) -> Finished:
        with self.start(*more, stdin=stdin) as running:
            return running.finish(limit=limit)

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.summary_path.read_text())
        return data


class Client:
    """A running ``asyncsync``; stdin, if any, fed by a thread; killed on the way out."""

    def __init__(self, proc: subprocess.Popen[bytes], stdin: bytes | None) -> None:
        self.proc = proc
        self.err = b""
        self._feeder: threading.Thread | None = None
        # stderr drained as it comes, so that a chatty run never blocks on a full pipe
        self._reader = threading.Thread(target=self._read_err, daemon=True)
        self._reader.start()
        if stdin is not None:
            self._feeder = threading.Thread(target=self._feed, args=(stdin,), daemon=True)
            self._feeder.start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.err = self.proc.stderr.read()

    def _feed(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):  # a killed client closes the pipe
            self.proc.stdin.write(data)
        with contextlib.suppress(OSError):
            self.proc.stdin.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish(limit=10)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, *, limit: float = 30) -> Finished:
        try:
            self.proc.wait(timeout=limit)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(10)
            if self._feeder is not None:
                self._feeder.join(10)
            for pipe in (self.proc.stdout, self.proc.stderr, self.proc.stdin):
                if pipe is not None:
                    pipe.close()
        return Finished(self.proc.returncode, self.err.decode())


@dataclass
class Finished:
    code: int
    err: str


def write_records(path: Path, n: int, poison: Callable[[int], bool] = lambda i: False) -> Path:
    """``n`` records, ids 1..n; ``poison(i)`` adds a field the sink can be told to reject."""
    pad = "x" * 120
    with path.open("wb") as f:
        for i in range(1, n + 1):
            rec: dict[str, object] = {"id": i, "name": f"Customer {i}", "pad": pad}
            if poison(i):
                rec["poison"] = True
            f.write(orjson.dumps(rec) + b"\n")
    return path


def resent_since(before: dict[str, int], after: dict[str, int]) -> int:
    """Keys sent before a kill and sent again after it."""
    return sum(1 for key, n in before.items() if after.get(key, 0) > n)


def kill_targets(rng: random.Random, n: int, kills: int) -> list[int]:
    """One random record count per kill, in increasing, well separated stretches of the job."""
    low, high = n // 10, n * 8 // 10
    step = (high - low) // kills
    return [rng.randrange(low + k * step, low + (k + 1) * step - step // 4) for k in range(kills)]


def assert_exactly_once(sink: SinkProcess, n: int) -> dict[str, Any]:
    """Every record arrived once; a repeat only under a key already accepted, same body."""
    stats = sink.settle()
    assert sink.record_ids() == list(range(1, n + 1))
    assert stats["records"] == n
    assert stats["key_body_mismatches"] == 0  # a key always carries the same records
    assert stats["bodies_under_several_keys"] == 0  # never the same records under a new key
    # the sink counts a duplicate only for a key it had already accepted; each is a re-send
    assert stats["duplicates"] <= sum(v - 1 for v in stats["sends_by_key"].values())
    return stats


# --- SIGKILL ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_sigkill_three_times_then_resume(tmp_path: Path) -> None:
    """SIGKILL at three random moments, resume each time: every record arrives exactly once,
    a repeat only under a key sent before, at most the in-flight batches re-sent per kill, and
    the final summary covers the whole job."""
    n = 40_000
    source = write_records(tmp_path / "export.jsonl", n)
    rng = random.Random(5)
    with run_sink(tmp_path, "--latency", "0.03") as sink:
        job = Job(tmp_path, sink, str(source))
        sent: list[dict[str, int]] = []  # what the sink had received by each kill
        for target in kill_targets(rng, n, 3):
            with job.start() as running:
                sink.wait_records(target)
                running.signal(signal.SIGKILL)
                assert running.finish().code == -signal.SIGKILL
            assert job.checkpoint.exists()  # saved before the first request
            sent.append(sink.settle()["sends_by_key"])
        done = job.run()
        assert done.code == 0, done.err
        stats = assert_exactly_once(sink, n)
    sent.append(stats["sends_by_key"])
    resent = [resent_since(sent[k], sent[k + 1]) for k in range(3)]
    print(f"re-sent batches per SIGKILL: {resent} (bound {RESEND_BOUND} each)")
    assert all(r <= RESEND_BOUND for r in resent), resent
    summary = job.summary()
    assert (summary["records_read"], summary["records_sent"], summary["records_failed"]) == (
        n, n, 0,
    )  # fmt: skip
    assert summary["interrupted"] is False
    keys = stats["keys_seen"]
    assert keys == n // BATCH
    # counted by the client across four runs: a killed run's counters are known up to its
    # last acknowledged batch, so the batches then in flight count in it and again in the
    # resume, and its requests after it are unknown: off by at most the in-flight per kill
    slack = 3 * CONCURRENCY
    assert keys <= summary["batches"] <= keys + slack
    sends = stats["ingest_requests"]
    assert sends - slack <= summary["requests"] <= sends + slack
    assert summary["retries"] == 0
    assert 1 <= summary["auth_requests"] <= stats["token_requests"] == 4


# --- SIGINT ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigint_drains_then_resume_sends_nothing_twice(tmp_path: Path) -> None:
    """SIGINT: in-flight batches finish, exit 4 saying how to resume; the resume exits 0 with
    no duplicate at all, and the summary counts the whole job exactly."""
    n = 20_000
    source = write_records(tmp_path / "export.jsonl", n)
    with run_sink(tmp_path, "--latency", "0.03") as sink:
        job = Job(tmp_path, sink, str(source))
        with job.start() as running:
            sink.wait_records(random.Random(2).randrange(n // 5, n // 2))
            running.signal(signal.SIGINT)
            first = running.finish()
        assert first.code == 4, first.err
        assert "Interrupted" in first.err
        assert "run again to resume from the checkpoint" in first.err
        interrupted = job.summary()
        assert interrupted["interrupted"] is True
        stored = sink.settle()["records"]
        assert interrupted["records_sent"] == stored < n  # drained: all acknowledged, no more

        done = job.run()
        assert done.code == 0, done.err
        stats = assert_exactly_once(sink, n)
    assert stats["duplicates"] == 0
    assert stats["resent_keys"] == 0
    summary = job.summary()
    assert summary["interrupted"] is False
    assert summary["job_id"] == interrupted["job_id"]
    assert (summary["records_read"], summary["records_sent"], summary["records_failed"]) == (
        n, n, 0,
    )  # fmt: skip
    assert summary["batches"] == stats["keys_seen"] == n // BATCH
    assert summary["requests"] == stats["ingest_requests"]
    assert summary["retries"] == 0
    assert summary["auth_requests"] == stats["token_requests"] == 2
    assert not job.checkpoint.with_name("job.ckpt.acks0").exists()  # the job is complete


@pytest.mark.slow
def test_second_sigint_aborts_at_once_and_the_checkpoint_holds(tmp_path: Path) -> None:
    """A second SIGINT during the drain cancels in-flight requests at once (exit 4); the
    checkpoint only held acknowledged batches, so the resume completes the job exactly once."""
    n = 20_000
    source = write_records(tmp_path / "export.jsonl", n)
    with run_sink(tmp_path, "--latency", "0.02") as sink:
        job = Job(tmp_path, sink, str(source))
        with job.start() as running:
            sink.wait_records(n // 4)
            sink.set_faults(latency=30.0)  # from now on a drain would take 30 s
            time.sleep(0.2)
            running.signal(signal.SIGINT)
            time.sleep(0.2)
            running.signal(signal.SIGINT)
            aborted_at = time.monotonic()
            first = running.finish()
            took = time.monotonic() - aborted_at
        assert first.code == 4, first.err
        # A drain that waited for the in-flight requests would take their 30 s latency; 10 s
        # leaves margin for a loaded 2-core box.
        assert took < 10, f"the second SIGINT took {took:.2f} s to end the run"
        assert job.summary()["interrupted"] is True
        sink.set_faults(latency=0.005)
        before = sink.settle()["sends_by_key"]

        done = job.run()
        assert done.code == 0, done.err
        stats = assert_exactly_once(sink, n)
    assert resent_since(before, stats["sends_by_key"]) <= CONCURRENCY  # the cancelled ones
    summary = job.summary()
    assert (summary["records_read"], summary["records_sent"]) == (n, n)


# --- fingerprint, dead letters, unwritable checkpoint ----------------------------------------


@pytest.mark.slow
def test_fingerprint_mismatch_exits_2_and_no_resume_starts_over(tmp_path: Path) -> None:
    """Resuming with another --batch-size exits 2 naming the change; --no-resume starts over."""
    n = 10_000
    source = write_records(tmp_path / "export.jsonl", n)
    with run_sink(tmp_path, "--latency", "0.03") as sink:
        job = Job(tmp_path, sink, str(source))
        with job.start() as running:
            sink.wait_records(n // 5)
            running.signal(signal.SIGINT)
            assert running.finish().code == 4
        requests = sink.stats()["ingest_requests"]

        other = job.run("--batch-size", "50")
        assert other.code == 2, other.err
        assert "CheckpointError" in other.err
        assert "batch_size changed: 100 -> 50" in other.err
        assert "--no-resume" in other.err
        assert sink.stats()["ingest_requests"] == requests  # refused before sending

        over = job.run("--batch-size", "50", "--no-resume")
        assert over.code == 0, over.err
        stats = sink.settle()
    summary = job.summary()
    assert summary["records_sent"] == summary["records_read"] == n  # the new job only
    assert summary["batches"] == n // 50
    assert stats["ingest_requests"] == requests + n // 50


@pytest.mark.slow
def test_dead_letters_are_appended_on_resume(tmp_path: Path) -> None:
    """Dead letters written before an interruption stay, and none is written twice."""
    n = 20_000
    poisoned = set(range(150, n + 1, 1_000))
    source = write_records(tmp_path / "export.jsonl", n, poison=poisoned.__contains__)
    with run_sink(tmp_path, "--latency", "0.03", "--reject-field", "poison") as sink:
        job = Job(tmp_path, sink, str(source))
        with job.start() as running:
            deadline = time.monotonic() + 20
            while sink.stats()["rejected"] < 4:
                assert time.monotonic() < deadline, "no batch was rejected"
                time.sleep(0.005)
            running.signal(signal.SIGINT)
            assert running.finish().code == 4
        before = job.failed.read_bytes()
        assert before

        done = job.run()
        assert done.code == 1, done.err
        assert str(job.failed) in done.err
        stats = sink.settle()
    after = job.failed.read_bytes()
    assert after.startswith(before)  # appended, never truncated
    lines = [orjson.loads(line)["line"] for line in after.splitlines()]
    expected = sorted(poisoned)
    assert sorted(lines) == expected  # each rejected record (split out of its batch), once
    assert stats["records"] == n - len(expected)
    summary = job.summary()
    assert summary["records_failed"] == len(expected)
    assert summary["records_sent"] + summary["records_failed"] == summary["records_read"] == n


@pytest.mark.slow
def test_unwritable_checkpoint_stops_before_sending(tmp_path: Path) -> None:
    """A checkpoint that cannot be written exits 2 naming it, having sent nothing, not even a
    token request: caught by the option check when its parent is a file, else by the first
    save, made before the first request (here its temp file's name is taken by a directory,
    which stops root too)."""
    source = write_records(tmp_path / "export.jsonl", 1_000)
    (tmp_path / "f").write_text("a regular file\n")
    blocked = tmp_path / "job.ckpt"
    (tmp_path / "job.ckpt.tmp").mkdir()
    with run_sink(tmp_path) as sink:
        job = Job(tmp_path, sink, str(source), stateful=False)
        parent_is_file = job.run("--checkpoint", str(tmp_path / "f" / "c"))
        unwritable = job.run("--checkpoint", str(blocked))
        stats = sink.stats()
    assert parent_is_file.code == 2, parent_is_file.err
    assert "ConfigError: --checkpoint: expected a path in an existing directory" in (
        parent_is_file.err
    )
    assert unwritable.code == 2, unwritable.err
    assert f"CheckpointError: cannot write checkpoint {blocked}: Is a directory" in (unwritable.err)
    assert not blocked.exists()
    assert stats["token_requests"] == stats["ingest_requests"] == 0


@pytest.mark.slow
def test_checkpoint_failing_mid_run_stops_the_run(tmp_path: Path) -> None:
    """A checkpoint that stops being writable mid-run ends the run (exit 2, the path named)
    rather than letting it go on without one."""
    n = 40_000
    source = write_records(tmp_path / "export.jsonl", n)
    state = tmp_path / "state"
    state.mkdir()
    ckpt = state / "job.ckpt"
    with run_sink(tmp_path, "--latency", "0.05") as sink:
        job = Job(tmp_path, sink, str(source), stateful=False)
        with job.start("--checkpoint", str(ckpt)) as running:
            sink.wait_records(n // 10)
            state.rename(tmp_path / "gone")  # atomic, whatever the client is writing there
            state.write_text("no longer a directory\n")  # ENOTDIR for every later save
            result = running.finish()
        stored = sink.settle()["records"]
    assert result.code == 2, result.err
    assert "CheckpointError" in result.err and str(ckpt) in result.err
    assert stored < n


# --- stdin -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_stdin_with_checkpoint_resumes_by_record_count(tmp_path: Path) -> None:
    """From stdin with --checkpoint, a killed run resumes by record count when the same input
    is piped again: every record once, only in-flight batches sent again."""
    n = 20_000
    data = write_records(tmp_path / "export.jsonl", n).read_bytes()
    with run_sink(tmp_path, "--latency", "0.03") as sink:
        job = Job(tmp_path, sink, "-")
        with job.start(stdin=data) as running:
            sink.wait_records(random.Random(6).randrange(n // 5, n // 2))
            running.signal(signal.SIGKILL)
            assert running.finish().code == -signal.SIGKILL
        before = sink.settle()["sends_by_key"]
        done = job.run(stdin=data)
        assert done.code == 0, done.err
        stats = assert_exactly_once(sink, n)
    assert resent_since(before, stats["sends_by_key"]) <= RESEND_BOUND
    summary = job.summary()
    assert (summary["records_read"], summary["records_sent"]) == (n, n)


@pytest.mark.slow
def test_stdin_without_checkpoint_keeps_no_state(tmp_path: Path) -> None:
    """From stdin without --checkpoint nothing is saved: no checkpoint file, no ack log."""
    n = 2_000
    data = write_records(tmp_path / "export.jsonl", n).read_bytes()
    with run_sink(tmp_path) as sink:
        job = Job(tmp_path, sink, "-", stateful=False)
        done = job.run(stdin=data)
        assert done.code == 0, done.err
        assert sink.settle()["records"] == n
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["export.jsonl", "sink.log", "summary.json"]


@pytest.mark.slow
def test_sigkill_loses_no_dead_letter(tmp_path: Path) -> None:
    """With malformed lines and rejected batches, a SIGKILL then a resume loses no dead letter:
    every one is in the file (a crash may repeat the few written after the last save)."""
    n = 20_000
    poisoned = set(range(120, n + 1, 700))
    malformed = set(range(333, n + 1, 900))
    source = write_records(tmp_path / "export.jsonl", n, poison=poisoned.__contains__)
    rows = source.read_bytes().splitlines()
    for i in malformed:
        rows[i - 1] = rows[i - 1][:-1]  # no closing brace
    source.write_bytes(b"\n".join(rows) + b"\n")
    with run_sink(tmp_path, "--latency", "0.03", "--reject-field", "poison") as sink:
        job = Job(tmp_path, sink, str(source))
        with job.start() as running:
            sink.wait_records(random.Random(7).randrange(n // 4, n // 2))
            running.signal(signal.SIGKILL)
            assert running.finish().code == -signal.SIGKILL
        done = job.run()
        assert done.code == 1, done.err
        stored = sink.settle()
        ids = sink.record_ids()
    assert len(set(ids)) == len(ids) == stored["records"]  # each once
    assert stored["key_body_mismatches"] == stored["bodies_under_several_keys"] == 0
    lines = {orjson.loads(x)["line"] for x in job.failed.read_bytes().splitlines()}
    assert lines >= poisoned | malformed
    assert lines | set(ids) == set(range(1, n + 1))  # every record delivered or dead-lettered
    assert not lines & set(ids)
