"""Contender 5: the ``asyncsync upload`` CLI, with checkpoint, dead-letter file and summary JSON.

This wrapper runs the CLI as its only child and reports the CLI's own figures: its summary
JSON (records, requests, token requests, duration) and its peak RSS and CPU time from
``getrusage(RUSAGE_CHILDREN)``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._common import Result, emit, parse_args, skip


def find_cli() -> str | None:
    local = Path(sys.executable).parent / "asyncsync"
    if local.exists():
        return str(local)
    return shutil.which("asyncsync")


def upload(
    args: argparse.Namespace, cli: str, workdir: Path, extra: tuple[str, ...] = ()
) -> Result:
    summary_path = workdir / "summary.json"
    cmd = [cli, "upload", str(args.data), "--url", args.url]
    env = dict(os.environ)
    if args.auth == "oauth2":
        cmd += ["--auth", "oauth2", "--token-url", args.token_url, "--client-id", args.client_id]
        env["ASYNCSYNC_CLIENT_SECRET"] = args.client_secret
        if args.token_skew is not None:
            cmd += ["--token-skew", str(args.token_skew)]
    else:
        cmd += ["--auth", "bearer"]
        env["ASYNCSYNC_TOKEN"] = args.token
    cmd += [
        "--concurrency",
        str(args.workers),
        "--batch-size",
        str(args.batch),
        "--checkpoint",
        str(workdir / "checkpoint.json"),
        "--failed",
        str(workdir / "failed.jsonl"),
        "--summary-json",
        str(summary_path),
        "--no-progress",
        *extra,
    ]
    if args.transport is not None:
        cmd += ["--transport", args.transport]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1) or not summary_path.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SystemExit(f"asyncsync upload exited {proc.returncode}: {' | '.join(tail)}")
    summary = json.loads(summary_path.read_text())
    return Result(
        records=int(summary["records_sent"]),
        requests=int(summary["requests"]),
        errors=int(summary.get("records_failed", 0)),
        duration_s=float(summary["duration_s"]),
        auth_requests=int(summary.get("auth_requests", 0)),
        # The CLI's whole process, start-up included: its summary has no CPU figure.
        cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        loop="cli",
        extra={
            "exit_code": proc.returncode,
            "process_wall_s": wall,
            "peak_rss_kb": after.ru_maxrss,
            "transport": summary.get("transport"),
        },
    )


def main(extra: tuple[str, ...] = (), doc: str | None = None) -> None:
    args = parse_args(doc or __doc__ or "")
    cli = find_cli()
    if cli is None:
        skip("not installed: no asyncsync executable")
    probe = subprocess.run([cli, "upload", "--help"], capture_output=True, check=False)
    if probe.returncode != 0:
        skip("not available: `asyncsync upload --help` failed")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        emit(upload(args, cli, args.workdir, extra))
    else:
        with tempfile.TemporaryDirectory(prefix="asyncsync-bench-") as tmp:
            emit(upload(args, cli, Path(tmp), extra))


if __name__ == "__main__":
    main()
