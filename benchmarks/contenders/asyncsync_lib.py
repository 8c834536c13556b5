"""Contender 4: asyncsync as a library (``Uploader``), static bearer or OAuth2 credentials."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ._common import Result, emit, parse_args, run_async, skip


async def upload(args: argparse.Namespace, asyncsync: Any) -> Result:
    if args.auth == "oauth2":
        auth = asyncsync.OAuth2ClientCredentials(args.token_url, args.client_id, args.client_secret)
    else:
        auth = asyncsync.StaticToken(args.token)
    limits = asyncsync.BatchLimits(max_records=args.batch)
    started, cpu0 = time.perf_counter(), time.process_time()
    extra: dict[str, Any] = {}
    if args.token_skew is not None:
        extra["token_skew"] = args.token_skew
    async with asyncsync.Uploader(
        args.url, auth=auth, concurrency=args.workers, limits=limits, **extra
    ) as up:
        summary = await up.upload(Path(args.data))
    duration = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    return Result(
        records=summary.records_sent,
        requests=summary.requests,
        errors=getattr(summary, "records_failed", 0),
        duration_s=duration,
        cpu_s=cpu,
        auth_requests=summary.auth_requests,
        extra={"summary_duration_s": summary.duration_s},
    )


def main() -> None:
    args = parse_args(__doc__ or "")
    try:
        import asyncsync

        auth_name = "OAuth2ClientCredentials" if args.auth == "oauth2" else "StaticToken"
        for name in ("Uploader", "BatchLimits", auth_name):
            getattr(asyncsync, name)
    except (ImportError, AttributeError) as exc:
        skip(f"not importable: {exc}")
    emit(run_async(upload(args, asyncsync), args.uvloop))


if __name__ == "__main__":
    main()
