"""Every example in the README runs: `console` blocks against the reference server, `python`
blocks as they are."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from asyncsync.sink import Sink, SinkConfig

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"```(console|python)\n(.*?)```", re.DOTALL)
EXPECT = re.compile(r"\s+#\s*exits\s+(\d+)\s*$")


def blocks(kind: str) -> list[str]:
    return [body for k, body in BLOCK.findall(README.read_text(encoding="utf-8")) if k == kind]


def console_script(port: int) -> str:
    """All console blocks as one bash script that checks each command's exit status."""
    lines = ["set -u"]
    for body in blocks("console"):
        for raw in body.splitlines():
            if not raw.startswith("$ "):
                continue
            command = raw[2:]
            expected = 0
            m = EXPECT.search(command)
            if m:
                expected = int(m.group(1))
                command = command[: m.start()]
            command = command.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
            lines.append(command)
            lines.append(
                f'rc=$?; if [ "$rc" != {expected} ]; then echo "README command exited $rc, '
                f'expected {expected}: "{shlex.quote(command)} >&2; exit 99; fi'
            )
    return "\n".join(lines) + "\n"


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCSYNC_")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def test_readme_has_examples() -> None:
    """The README keeps its runnable examples (so the tests below cannot pass vacuously)."""
    assert len(blocks("console")) >= 6
    assert len(blocks("python")) >= 3


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_console_examples_run(tmp_path: Path) -> None:
    """Each `$` line of the README's console blocks exits as the README says."""
    import asyncio

    async with Sink(SinkConfig()) as sink:
        port = int(sink.url.rsplit(":", 1)[1])
        script = console_script(port)
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            script,
            cwd=tmp_path,
            env=clean_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=110)
        stats = sink.stats()
    assert proc.returncode == 0, err.decode()[-3000:]
    # the examples really reached the server: several uploads, with tokens
    assert stats["records"] >= 4
    assert stats["token_requests"] >= 3


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_examples_run(index: int, tmp_path: Path) -> None:
    """Each python block of the README runs to completion (its own asserts included)."""
    code = blocks("python")[index]
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
