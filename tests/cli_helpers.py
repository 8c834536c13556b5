"""Running the real `asyncsync` console script from tests, in a clean environment."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def command() -> list[str]:
    """The installed console script when there is one, else the module it runs."""
    script = Path(sys.executable).with_name("asyncsync")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "asyncsync.cli._main"]


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment minus anything that configures asyncsync or fakes a TTY."""
    drop = ("ASYNCSYNC_", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@dataclass
class Run:
    code: int
    out: str
    err: str


async def run_cli(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    limit: float = 30,
) -> Run:
    """Run the command to completion while this event loop keeps serving the sink."""
    proc = await asyncio.create_subprocess_exec(
        *command(),
        *args,
        cwd=cwd,
        env=clean_env() if env is None else env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), limit)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())
