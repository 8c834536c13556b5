"""asyncsync's own CPU per record and per request, with HTTP taken out.

Replaces the HTTP exchange with an instant 200 and uploads a generated export through the
real pipeline (source, batcher, queue, workers, sender, counters), so what remains is our
overhead alone. Usage::

    python -m benchmarks.overhead --records 1000000 --batch 200
    python -m benchmarks.overhead --records 50000 --batch 1
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import asyncsync
from asyncsync import _sender

from .datagen import data_file


class _Instant200:
    status = 200
    content_length = 2
    headers: dict[str, str] = {}  # noqa: RUF012
    reason = "OK"

    async def read(self) -> bytes:
        return b"{}"

    async def __aenter__(self) -> _Instant200:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def _instant_post(self: Any, body: bytes, headers: dict[str, str]) -> _Instant200:
    return _Instant200()


async def measure(path: Path, batch: int, workers: int) -> tuple[float, float, int, int]:
    async with asyncsync.Uploader(
        "http://127.0.0.1:9/ingest",
        auth=asyncsync.StaticToken("overhead-token"),
        concurrency=workers,
        limits=asyncsync.BatchLimits(max_records=batch),
        failed=path.with_suffix(".failed.jsonl"),
    ) as up:
        wall, cpu = time.perf_counter(), time.process_time()
        summary = await up.upload(path)
        return (
            time.perf_counter() - wall,
            time.process_time() - cpu,
            summary.records_sent,
            summary.requests,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    _sender.Sender._post = _instant_post  # type: ignore[method-assign,assignment]
    path = data_file(args.records)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    for _ in range(args.reps):
        wall, cpu, records, requests = runner(measure(path, args.batch, args.workers))
        print(
            f"batch {args.batch}: {records:,} records, {requests:,} requests: "
            f"{cpu / records * 1e6:.3f} us CPU/record, {cpu / requests * 1e6:.1f} us CPU/request, "
            f"{records / wall:,.0f} records/s without HTTP"
        )


if __name__ == "__main__":
    main()
