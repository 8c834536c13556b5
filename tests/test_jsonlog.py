"""--log-format json: every stderr line is one JSON object, and none holds a secret."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from asyncsync._redact import register_secret
from asyncsync.cli._jsonlog import JsonFormatter, json_line
from asyncsync.sink import Sink, SinkConfig

try:
    from tests.cli_helpers import clean_env, command
except ImportError:  # tests/ is not a package: pytest put it on sys.path itself
    from cli_helpers import clean_env, command  # type: ignore[no-redef]

SECRET = "demo-secret"


async def _run(*args: str, cwd: Path, env: dict[str, str]) -> tuple[int, list[dict[str, Any]], str]:
    proc = await asyncio.create_subprocess_exec(
        *command(), *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    text = err.decode()
    events = []
    for line in text.splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line on stderr: {line!r}")
    assert not out, out  # nothing on stdout either
    assert proc.returncode is not None
    return proc.returncode, events, text


@pytest.mark.slow
async def test_json_logs_through_401_storm_429s_and_revocation_hold_no_secret(
    tmp_path: Path,
) -> None:
    """-vv --log-format json: retries (429, 5xx, 401), token refreshes and the revocation are
    JSON events with their fields; the summary is one event; no token nor the secret appears."""
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(b'{"id":%d}\n' % i for i in range(1500)))
    config = SinkConfig(
        error_rate=0.05, throttle_every=25, retry_after=0.05, revoke_all_after=10, seed=1
    )
    async with Sink(config) as sink:
        code, events, text = await _run(
            "upload", str(source), "--url", sink.ingest_url, "--token-url", sink.token_url,
            "--client-id", "asyncsync-demo", "--revoke-url", sink.revoke_url,
            "--batch-size", "50", "--no-resume", "-vv", "--log-format", "json",
            cwd=tmp_path, env=clean_env(ASYNCSYNC_CLIENT_SECRET=SECRET),
        )  # fmt: skip
        stats = sink.stats()
        issued = set(sink._state.tokens) | set(sink._state.revoked_tokens)
    assert code == 0, text
    assert stats["revocation_requests"] == 1 and stats["unauthorized"]
    assert issued and stats["token_requests"] >= 2
    for secret in [SECRET, *issued]:
        assert secret not in text
    assert all({"ts", "level", "event", "message"} <= e.keys() for e in events)
    kinds = {e["event"] for e in events}
    assert {"retry", "token_obtained", "token_invalidated", "token_revoked", "summary"} <= kinds
    retries = [e for e in events if e["event"] == "retry"]
    assert {401, 429} <= {e["status"] for e in retries}
    assert all({"batch", "key", "attempt", "wait_s"} <= e.keys() for e in retries)
    (summary,) = [e for e in events if e["event"] == "summary"]
    assert summary["records_sent"] == 1500 and summary["requests"] == stats["ingest_requests"]
    assert events[-1] is summary


@pytest.mark.slow
async def test_json_errors_auth_failure_and_usage(tmp_path: Path) -> None:
    """Errors printed by the CLI are JSON events too: a refused secret (exit 3), a usage
    error found by argparse (exit 2); the secret given is never echoed."""
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"id":1}\n')
    wrong = "wrong-secret-4f9a"
    async with Sink(SinkConfig()) as sink:
        code, events, text = await _run(
            "upload", str(source), "--url", sink.ingest_url, "--token-url", sink.token_url,
            "--client-id", "asyncsync-demo", "--no-resume", "-vv", "--log-format=json",
            cwd=tmp_path, env=clean_env(ASYNCSYNC_CLIENT_SECRET=wrong),
        )  # fmt: skip
    assert code == 3
    assert wrong not in text
    errors = [e for e in events if e["event"] == "error"]
    assert errors and errors[-1]["error"] == "AuthError" and errors[-1]["exit_code"] == 3
    code, events, _ = await _run(
        "upload", str(source), "--log-format", "json", "--no-such-flag", "x",
        cwd=tmp_path, env=clean_env(),
    )  # fmt: skip
    assert code == 2
    assert events[-1]["event"] == "error" and events[-1]["error"] == "ConfigError"


def test_formatter_redacts_fields_and_message() -> None:
    """A token in the message or in an extra field is masked; standard attributes stay out."""
    register_secret("tok-abcdef123456")
    record = logging.LogRecord("asyncsync.x", logging.INFO, __file__, 1, "got %s", None, None)
    record.msg = "got tok-abcdef123456"
    record.event = "retry"
    record.key = "job-1-50"
    record.detail = "Authorization: Bearer tok-abcdef123456"
    data = json.loads(JsonFormatter().format(record))
    assert data["event"] == "retry" and data["key"] == "job-1-50"
    assert "tok-abcdef123456" not in json.dumps(data)
    assert "pathname" not in data and "args" not in data
    line = json.loads(json_line("INFO", "x", "m", {"nested": {"password": "pw=hunter22"}}, ts=0))
    assert "hunter22" not in json.dumps(line)
