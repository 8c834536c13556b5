"""The real ``asyncsync`` command in a subprocess, against the reference sink in this process.

Each exit code of the contract, config precedence seen in what the server receives, secrets
absent from every output at -v, no progress output without a terminal, the demo, --help.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import clean_env, command, run_cli

from asyncsync.sink import STATE, Sink, SinkConfig

pytestmark = pytest.mark.slow  # every test here runs the CLI or the sink as a subprocess

REPO = Path(__file__).resolve().parent.parent
CLIENT_ID = "asyncsync-demo"
CLIENT_SECRET = "demo-secret-for-cli-tests"
CONTRACT_KEYS = {
    "records_read", "records_sent", "records_failed", "batches", "requests", "retries",
    "auth_requests", "duration_s", "records_per_s",
}  # fmt: skip
DEAD_LETTER_KEYS = {"record", "status", "error", "attempts", "idempotency_key"}


def oauth_args(sink: Sink) -> list[str]:
    return ["--url", sink.ingest_url, "--token-url", sink.token_url, "--client-id", CLIENT_ID]


def secret_env(**extra: str) -> dict[str, str]:
    return clean_env(ASYNCSYNC_CLIENT_SECRET=CLIENT_SECRET, **extra)


def sink_config(**faults: object) -> SinkConfig:
    return SinkConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, seed=1, **faults)  # type: ignore[arg-type]


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(read_text(path))  # type: ignore[no-any-return]


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_text(path: Path) -> str:
    return path.read_text()


def exists(path: Path) -> bool:
    return path.exists()


def poison(path: Path, lines: Sequence[int], field: str = "poison") -> None:
    """Give the records on these 1-based lines a field the sink rejects (400)."""
    rows = path.read_text().splitlines()
    for n in lines:
        rows[n - 1] = rows[n - 1][:-1] + f', "{field}": true}}'
    path.write_text("\n".join(rows) + "\n")


# --- help and version (no pipeline needed) -------------------------------------------------


@pytest.mark.parametrize("cmd", [[], ["upload"], ["replay"], ["demo"], ["sink"]])
async def test_help_for_every_command(tmp_path, cmd) -> None:
    """--help works for the program and each command, with examples for each command."""
    result = await run_cli(*cmd, "--help", cwd=tmp_path)
    assert result.code == 0, result.err
    assert "usage: asyncsync" in result.out
    if cmd:
        assert "examples:" in result.out
    if cmd in (["upload"], ["replay"]):
        assert "ASYNCSYNC_CLIENT_SECRET" in result.out
        assert "exit status" in result.out


async def test_version(tmp_path) -> None:
    from asyncsync import __version__

    result = await run_cli("--version", cwd=tmp_path)
    assert (result.code, result.out.strip()) == (0, f"asyncsync {__version__}")


async def test_usage_errors_exit_2_in_one_line(tmp_path) -> None:
    """A bad option exits 2 with one line naming it; a secret on argv is refused, not echoed."""
    result = await run_cli("upload", "x.jsonl", "--url", "http://h/", "--batch-size", "0",
                           cwd=tmp_path)  # fmt: skip
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        "asyncsync: error: ConfigError: --batch-size: expected an integer >= 1, got 0"
    ]
    result = await run_cli("upload", "x.jsonl", "--url", "http://h/", "--client-secret",
                           CLIENT_SECRET, cwd=tmp_path)  # fmt: skip
    assert result.code == 2
    assert "ASYNCSYNC_CLIENT_SECRET" in result.err
    assert CLIENT_SECRET not in result.err + result.out


# --- exit codes against the reference sink -------------------------------------------------


async def test_exit_0_all_delivered(tmp_path, make_jsonl) -> None:
    """Every record delivered: exit 0, the summary JSON has the contract's keys."""
    source = make_jsonl(500)
    summary_path = tmp_path / "summary.json"
    async with Sink(sink_config()) as sink:
        result = await run_cli(
            "upload", str(source), *oauth_args(sink), "--summary-json", str(summary_path),
            cwd=tmp_path, env=secret_env(),
        )  # fmt: skip
        stats = sink.stats()
    assert result.code == 0, result.err
    summary = read_json(summary_path)
    assert summary.keys() >= CONTRACT_KEYS
    assert (summary["records_read"], summary["records_sent"], summary["records_failed"]) == (
        500, 500, 0,
    )  # fmt: skip
    assert summary["batches"] == 3  # default batch size 200
    assert summary["auth_requests"] == stats["token_requests"] == 1
    assert stats["records"] == 500
    assert "records delivered" in result.err  # the human summary, on stderr
    assert result.out == ""
    assert not exists(Path(f"{source}.failed.jsonl"))


async def test_exit_1_some_dead_lettered(tmp_path, make_jsonl) -> None:
    """A batch the server rejects: exit 1, records in SOURCE.failed.jsonl (the default)."""
    source = make_jsonl(100)
    poison(source, [42])
    async with Sink(sink_config(reject_field="poison")) as sink:
        result = await run_cli(
            "upload", str(source), *oauth_args(sink), "--batch-size", "10",
            cwd=tmp_path, env=secret_env(),
        )  # fmt: skip
        stats = sink.stats()
    assert result.code == 1, result.err
    dead_path = Path(f"{source}.failed.jsonl")
    dead = read_jsonl(dead_path)
    assert len(dead) == 1  # split out of its batch of 10
    assert all(d.keys() >= DEAD_LETTER_KEYS and d["status"] == 400 for d in dead)
    assert [d["line"] for d in dead] == [42]
    assert stats["records"] == 99
    assert str(dead_path) in result.err


async def test_exit_1_from_stdin_writes_failed_in_cwd(tmp_path, make_jsonl) -> None:
    """From stdin, the default dead-letter file is ./asyncsync-failed.jsonl."""
    source = make_jsonl(30)
    poison(source, [3])
    async with Sink(sink_config(reject_field="poison")) as sink:
        result = await run_cli(
            "upload", "-", *oauth_args(sink), "--batch-size", "10",
            cwd=tmp_path, env=secret_env(), stdin=source.read_bytes(),
        )  # fmt: skip
    assert result.code == 1, result.err
    assert len(read_jsonl(tmp_path / "asyncsync-failed.jsonl")) == 1


async def test_exit_2_unreadable_input(tmp_path) -> None:
    """A missing source exits 2 before any request; --insecure warns even so."""
    async with Sink(sink_config()) as sink:
        result = await run_cli(
            "upload", str(tmp_path / "missing.jsonl"), *oauth_args(sink), "--insecure",
            cwd=tmp_path, env=secret_env(),
        )  # fmt: skip
        stats = sink.stats()
    assert result.code == 2, result.err
    assert "asyncsync: error: SourceError: " in result.err
    assert "--insecure" in result.err
    assert stats["token_requests"] == stats["ingest_requests"] == 0


async def test_exit_3_bad_credentials(tmp_path, make_jsonl) -> None:
    """A refused client secret exits 3 after one token request, and is never printed."""
    source = make_jsonl(50)
    wrong = "wrong-secret-value-123"
    async with Sink(sink_config()) as sink:
        result = await run_cli(
            "upload", str(source), *oauth_args(sink), "-v",
            cwd=tmp_path, env=clean_env(ASYNCSYNC_CLIENT_SECRET=wrong),
        )  # fmt: skip
        stats = sink.stats()
    assert result.code == 3, result.err
    assert "asyncsync: error: AuthError: " in result.err
    assert wrong not in result.err + result.out
    assert stats["token_requests"] == 1
    assert stats["records"] == 0


async def test_exit_4_on_sigint(tmp_path, make_jsonl) -> None:
    """SIGINT mid-run drains in-flight batches and exits 4; the summary says interrupted."""
    source = make_jsonl(2000)
    summary_path = tmp_path / "summary.json"
    async with Sink(sink_config(latency=0.2)) as sink:
        proc = await asyncio.create_subprocess_exec(
            *command(), "upload", str(source), *oauth_args(sink), "--batch-size", "20",
            "--concurrency", "2", "--summary-json", str(summary_path),
            cwd=tmp_path, env=secret_env(), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while sink.stats()["records"] < 40 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert sink.stats()["records"] >= 40, "the upload never got going"
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        stored = sink.stats()["records"]
    assert proc.returncode == 4, err.decode()
    assert "Interrupted" in err.decode()
    summary = read_json(summary_path)
    assert summary["interrupted"] is True
    assert summary["records_sent"] == stored < 2000


# --- configuration precedence, seen by the server ------------------------------------------


async def test_config_precedence_in_behaviour(tmp_path, make_jsonl) -> None:
    """Batch size from the TOML file, overridden by the environment, overridden by a flag."""
    source = make_jsonl(100)
    async with Sink(sink_config()) as sink:
        config = tmp_path / "asyncsync.toml"
        config.write_text(
            f'url = "{sink.ingest_url}"\ntoken-url = "{sink.token_url}"\n'
            f'client_id = "{CLIENT_ID}"\nbatch_size = 50\nquiet = true\n'
        )

        async def batches(*flags: str, **env: str) -> int:
            summary = tmp_path / "summary.json"
            result = await run_cli(
                "upload", str(source), "--config", str(config), "--summary-json", str(summary),
                "--no-resume", *flags, cwd=tmp_path, env=secret_env(**env),
            )  # fmt: skip
            assert result.code == 0, result.err
            assert result.err == ""  # quiet = true in the file
            return int(read_json(summary)["batches"])

        assert await batches() == 2  # the file: 50
        assert await batches(ASYNCSYNC_BATCH_SIZE="25") == 4  # the environment beats the file
        assert await batches("--batch-size", "10", ASYNCSYNC_BATCH_SIZE="25") == 10  # the flag


# --- secrets -------------------------------------------------------------------------------


@pytest.mark.parametrize("verbosity", ["-v", "-vv"])
async def test_secrets_absent_from_all_output(tmp_path, make_jsonl, verbosity) -> None:
    """At -v (and -vv) with refreshes, retries and a dead-lettered batch, neither the client
    secret nor any token the sink issued appears in stdout, stderr, summary or dead letters."""
    source = make_jsonl(1200)
    poison(source, [7])
    summary_path = tmp_path / "summary.json"
    dead_path = tmp_path / "dead.jsonl"
    # 60 batches, 4 at a time, 50 ms each: ~0.8 s, over several 0.4 s token lifetimes
    config = sink_config(token_ttl=0.4, error_rate=0.1, reject_field="poison", latency=0.05)
    async with Sink(config) as sink:
        result = await run_cli(
            "upload", str(source), *oauth_args(sink), verbosity, "--batch-size", "20",
            "--concurrency", "4", "--summary-json", str(summary_path), "--failed", str(dead_path),
            cwd=tmp_path, env=secret_env(),
        )  # fmt: skip
        state = sink.app[STATE]
        tokens = set(state.tokens) | set(state.revoked_tokens)
        stats = sink.stats()
    assert result.code == 1, result.err
    assert stats["token_requests"] >= 2, "expected refreshes to be exercised"
    assert stats["injected_errors"] > 0, "expected retries to be exercised"
    assert "retry" in result.err  # -v logs each retry
    outputs = {
        "stdout": result.out,
        "stderr": result.err,
        "summary": read_text(summary_path),
        "dead-letter": read_text(dead_path),
    }
    for name, text in outputs.items():
        assert CLIENT_SECRET not in text, f"client secret in {name}"
        leaked = [t for t in tokens if t in text]
        assert not leaked, f"{len(leaked)} issued token(s) in {name}"


# --- progress ------------------------------------------------------------------------------


async def test_no_progress_without_a_terminal(tmp_path, make_jsonl) -> None:
    """stderr is a pipe: no ANSI escapes, no live display, only the plain summary table."""
    source = make_jsonl(2000)
    async with Sink(sink_config(latency=0.005)) as sink:
        result = await run_cli(
            "upload", str(source), *oauth_args(sink), "--batch-size", "50",
            cwd=tmp_path, env=secret_env(),
        )  # fmt: skip
    assert result.code == 0, result.err
    assert "\x1b" not in result.err
    assert "rec/s" not in result.err
    assert "records delivered" in result.err


def _read_all(fd: int, sink: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side closed
            return
        if not chunk:
            return
        sink.append(chunk)


async def test_progress_on_a_terminal(tmp_path, make_jsonl) -> None:
    """stderr is a terminal: the live display shows records/s and token requests."""
    source = make_jsonl(3000)
    master, slave = pty.openpty()
    chunks: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(master, chunks), daemon=True)
    reader.start()
    try:
        async with Sink(sink_config(latency=0.02)) as sink:
            proc = await asyncio.create_subprocess_exec(
                *command(), "upload", str(source), *oauth_args(sink), "--batch-size", "50",
                "--concurrency", "2", cwd=tmp_path, env=secret_env(TERM="xterm"),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=slave,
            )  # fmt: skip
            os.close(slave)
            slave = -1
            code = await asyncio.wait_for(proc.wait(), 30)
    finally:
        if slave >= 0:
            os.close(slave)
        reader.join(5)
        os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert code == 0, text
    assert "rec/s" in text
    assert "token requests" in text


# --- the demo ------------------------------------------------------------------------------


async def test_demo_completes(tmp_path) -> None:
    """`asyncsync demo --records 2000` runs against the in-process sink and exits 0."""
    result = await run_cli("demo", "--records", "2000", "--dir", str(tmp_path / "demo"),
                           cwd=tmp_path, limit=45)  # fmt: skip
    assert result.code == 0, result.out + result.err
    assert "result: OK" in result.out
    assert "dead-letter file:" in result.out
    assert exists(tmp_path / "demo" / "export.jsonl.failed.jsonl")
