"""`--revoke-url`: the token is revoked once at the end of the run (RFC 7009)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from asyncsync.sink import Sink, SinkConfig

pytestmark = pytest.mark.slow  # every test here runs the CLI or the sink as a subprocess


async def test_token_revoked_once_at_the_end(tmp_path: Path) -> None:
    """One token for the run, one revocation after the last batch, none without the flag."""
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(b'{"id":%d}\n' % i for i in range(500)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCSYNC_")}
    env["ASYNCSYNC_CLIENT_SECRET"] = "demo-secret"
    async with Sink(SinkConfig()) as sink:
        for revoke in (False, True):
            args = [
                "upload", str(source), "--url", sink.ingest_url, "--token-url", sink.token_url,
                "--client-id", "asyncsync-demo", "--batch-size", "50", "--no-resume", "-q",
            ]  # fmt: skip
            if revoke:
                args += ["--revoke-url", sink.revoke_url]
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "asyncsync.cli._main", *args, cwd=tmp_path, env=env,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
            assert proc.returncode == 0, err.decode()
            stats = sink.stats()
            assert stats["revocation_requests"] == (1 if revoke else 0)
        assert stats["token_requests"] == 2
        assert stats["records"] == 1000  # two jobs, two sets of keys
