"""asyncsync's own CPU per record and per request, with HTTP taken out.

Replaces the transport with one that answers 200 at once (no socket) and uploads a generated
export through the real pipeline (source, batcher, queue, workers, sender, counters,
checkpoint with its ack log, dead-letter file), so what remains is our overhead alone: the
part of the per-request cost that the transport does not explain. Usage::

    python -m benchmarks.overhead --records 1000000 --batch 200
    python -m benchmarks.overhead --records 50000 --batch 1
    python -m benchmarks.overhead --records 50000 --batch 1 --profile 40   # cProfile, top 40
    python -m benchmarks.overhead --prevalidate off   # JSON validation in this process
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncsync
from asyncsync import _uploader
from asyncsync._http import Response

from .datagen import data_file

_OK = Response(200, {}, b"{}", "OK")


class InstantTransport:
    """A Transport that answers every POST with 200 at once."""

    closed = False

    async def post(
        self,
        url: str,
        *,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float | None = None,  # noqa: ASYNC109
        max_body: int = 0,
    ) -> Response:
        return _OK

    async def aclose(self) -> None:
        self.closed = True


async def measure(
    path: Path, batch: int, workers: int, state: Path, prevalidate: bool | None = None
) -> tuple[float, float, int, int]:
    async with asyncsync.Uploader(
        "http://127.0.0.1:9/ingest",
        auth=asyncsync.StaticToken("overhead-token"),
        concurrency=workers,
        limits=asyncsync.BatchLimits(max_records=batch),
        state=asyncsync.StateOptions(
            checkpoint=state / "checkpoint.json", failed=state / "failed.jsonl", resume=False
        ),
    ) as up:
        wall, cpu = time.perf_counter(), time.process_time()
        summary = await up.upload(asyncsync.JsonlSource(path, prevalidate=prevalidate))
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
    parser.add_argument("--profile", type=int, metavar="N", help="cProfile one run, print top N")
    parser.add_argument(
        "--prevalidate",
        choices=["auto", "on", "off"],
        default="auto",
        help="JSON validation in a helper process (auto: for files of 8 MiB or more); the "
        "CPU figures are this process's only, the helper's CPU is not in them",
    )
    args = parser.parse_args()
    _uploader.open_transport = lambda *a, **k: InstantTransport()  # type: ignore[assignment]
    path = data_file(args.records)
    prevalidate = {"auto": None, "on": True, "off": False}[args.prevalidate]
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    with tempfile.TemporaryDirectory(prefix="asyncsync-overhead-") as tmp:
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            runner(measure(path, args.batch, args.workers, Path(tmp), prevalidate))
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)
            return
        for _ in range(args.reps):
            wall, cpu, records, requests = runner(
                measure(path, args.batch, args.workers, Path(tmp), prevalidate)
            )
            print(
                f"batch {args.batch}: {records:,} records, {requests:,} requests: "
                f"{cpu / records * 1e6:.3f} us CPU/record, "
                f"{cpu / requests * 1e6:.1f} us CPU/request, "
                f"{records / wall:,.0f} records/s without HTTP"
            )


if __name__ == "__main__":
    main()
