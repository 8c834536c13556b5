"""Running the real `asyncsync` console script from tests, in a clean environment."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

Process = asyncio.subprocess.Process


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
    seconds: float = 0.0
    """Wall time from the start of the process to its exit (as :func:`run_cli` saw it)."""


# Runs the command and writes its peak RSS (KiB, Linux) to a file: RUSAGE_CHILDREN of a fresh
# interpreter whose only child is the command, so no other test's subprocess is counted.
_RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)\n"
)


async def start_cli(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdin: bool = False,
    rss_file: Path | None = None,
) -> Process:
    """Start the command (stdout and stderr piped; stdin piped only if ``stdin``).

    With ``rss_file``, the command's peak RSS in KiB is written there when it exits.
    """
    argv = [*command(), *args]
    if rss_file is not None:
        argv = [sys.executable, "-c", _RSS_WRAPPER, str(rss_file), *argv]
    return await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=clean_env() if env is None else env,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish_cli(
    proc: Process, *, stdin: bytes | None = None, limit: float = 30, started: float | None = None
) -> Run:
    """Feed ``stdin``, wait up to ``limit`` s for the exit (TimeoutError past it, the process
    left to the caller); ``started`` (monotonic) is when it started, for ``Run.seconds``."""
    out, err = await asyncio.wait_for(proc.communicate(stdin), limit)
    assert proc.returncode is not None
    seconds = 0.0 if started is None else time.monotonic() - started
    return Run(proc.returncode, out.decode(), err.decode(), seconds)


async def run_cli(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    limit: float = 30,
    rss_file: Path | None = None,
) -> Run:
    """Run the command to completion while this event loop keeps serving the sink.

    Past ``limit`` seconds (or if the test is cancelled) the process is killed.
    """
    started = time.monotonic()
    proc = await start_cli(*args, cwd=cwd, env=env, stdin=stdin is not None, rss_file=rss_file)
    try:
        return await finish_cli(proc, stdin=stdin, limit=limit, started=started)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
