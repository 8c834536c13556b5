"""Where a request's CPU goes at batch 1: one loop shape, four ways of sending (issue 13).

Runs N one-record requests (32 workers, nginx on loopback, 280-byte JSONL records) in this
process and prints the main thread's CPU and the other threads' (pyreqwest's runtime, the
reader thread) per request, so the main thread, the one that holds the GIL, is seen apart::

    python -m benchmarks.per_request MODE [--records N] [--loop-counts] [--no-uvloop]

MODE:
  plain      the plain pyreqwest loop: ``build().send()`` + ``bytes()`` (unbounded read)
  streamed   the same loop on the streamed API the transport uses (bounded read)
  transport  the same loop through ``ReqwestTransport.post``
  lib        ``asyncsync.Uploader`` (no checkpoint), ``transport="reqwest"``

``--loop-counts`` (stdlib loop, instrumented: slower) also prints event-loop iterations,
``call_soon_threadsafe`` calls and task wake-ups per request. For instruction counts that
do not depend on the machine's load, run a mode under callgrind at two sizes and take the
difference per request (start-up cancels out)::

    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file=cg.%p \\
        python -m benchmarks.per_request lib --records 1000     # then 3000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .datagen import data_file
from .sinks import NginxSink, find_nginx

TOKEN = "bench-static-token"
WORKERS = 32
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


async def _loop_shape(data: Path, send: Callable[[bytes], Awaitable[None]]) -> None:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(WORKERS * 2)

    async def reader() -> None:
        with data.open("rb") as f:
            for line in f:
                await queue.put(b"[" + line.rstrip(b"\n") + b"]")
        for _ in range(WORKERS):
            await queue.put(None)

    async def worker() -> None:
        while (body := await queue.get()) is not None:
            await send(body)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(reader())
        for _ in range(WORKERS):
            tg.create_task(worker())


async def run(mode: str, url: str, data: Path) -> None:
    if mode == "lib":
        import asyncsync

        async with asyncsync.Uploader(
            url,
            auth=asyncsync.StaticToken(TOKEN),
            concurrency=WORKERS,
            limits=asyncsync.BatchLimits(max_records=1),
            http=asyncsync.HttpOptions(transport="reqwest"),
        ) as up:
            await up.upload(data)
        return
    if mode == "transport":
        from asyncsync._reqwest import ReqwestTransport

        async with ReqwestTransport(connections=WORKERS) as transport:

            async def post(body: bytes) -> None:
                await transport.post(url, body=body, headers=HEADERS)

            await _loop_shape(data, post)
        return
    from pyreqwest.client import ClientBuilder

    client: Any = ClientBuilder().max_connections(WORKERS).follow_redirects(False).build()

    async def plain(body: bytes) -> None:
        resp = await client.post(url).headers(HEADERS).body_bytes(body).build().send()
        await resp.bytes()

    async def streamed(body: bytes) -> None:
        builder = client.post(url).headers(HEADERS).body_bytes(body)
        async with builder.streamed_read_buffer_limit(65537).build_streamed() as resp:
            await resp.bytes()

    async with client:
        await _loop_shape(data, plain if mode == "plain" else streamed)


def _instrument(counts: collections.Counter[str]) -> None:
    base: Any = asyncio.BaseEventLoop
    run_once, threadsafe, soon = base._run_once, base.call_soon_threadsafe, base.call_soon

    def counted_run_once(self: Any) -> None:
        counts["loop iterations"] += 1
        run_once(self)

    def counted_threadsafe(self: Any, *args: Any, **kw: Any) -> Any:
        counts["call_soon_threadsafe"] += 1
        return threadsafe(self, *args, **kw)

    def counted_soon(self: Any, callback: Any, *args: Any, **kw: Any) -> Any:
        counts["call_soon: " + getattr(callback, "__qualname__", type(callback).__name__)] += 1
        return soon(self, callback, *args, **kw)

    base._run_once = counted_run_once
    base.call_soon_threadsafe = counted_threadsafe
    base.call_soon = counted_soon


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", choices=["plain", "streamed", "transport", "lib"])
    p.add_argument("--records", type=int, default=20_000)
    p.add_argument("--loop-counts", action="store_true")
    p.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args()
    nginx = find_nginx()
    if nginx is None:
        raise SystemExit("nginx not found")
    counts: collections.Counter[str] = collections.Counter()
    runner: Callable[[Any], Any] = asyncio.run
    if args.loop_counts:
        _instrument(counts)
    elif args.uvloop:
        import uvloop

        runner = uvloop.run
    data = data_file(args.records)
    sink = NginxSink(nginx, token=TOKEN)
    sink.start()
    try:
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0, w0 = time.thread_time(), time.perf_counter()
        runner(run(args.mode, sink.url + "/ingest", data))
        main_s, wall = time.thread_time() - t0, time.perf_counter() - w0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        sink.stop()
    n = args.records
    total = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    print(
        f"{args.mode}: {n / wall:,.0f} requests/s; CPU per request: main thread "
        f"{main_s / n * 1e6:.1f} us, other threads {(total - main_s) / n * 1e6:.1f} us"
    )
    for key, value in counts.most_common(8):
        print(f"  {key}: {value / n:.3f} per request")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
