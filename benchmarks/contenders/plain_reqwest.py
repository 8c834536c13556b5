"""Contender: a plain pyreqwest loop (Rust reqwest/hyper on its own runtime threads).

The same shape as the plain aiohttp loop: one reader, a bounded queue, N workers POSTing
JSON arrays of the raw lines. No token manager, no retries, no checkpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from ._common import Result, emit, iter_batches, parse_args, run_async, skip


async def upload(args: argparse.Namespace) -> Result:
    try:
        from pyreqwest.client import ClientBuilder
    except ImportError:
        skip("pyreqwest is not installed (pip install 'asyncsync[fast]')")
    url: str = args.url
    workers: int = args.workers
    headers = {"Authorization": f"Bearer {args.token}", "Content-Type": "application/json"}
    result = Result()
    queue: asyncio.Queue[list[bytes] | None] = asyncio.Queue(maxsize=workers * 2)

    async def reader() -> None:
        for lines in iter_batches(args.data, args.batch):
            await queue.put(lines)
        for _ in range(workers):
            await queue.put(None)

    async def worker(client: object) -> None:
        while (lines := await queue.get()) is not None:
            body = b"[" + b",".join(lines) + b"]"
            resp = await client.post(url).headers(headers).body_bytes(body).build().send()  # type: ignore[attr-defined]
            await resp.bytes()
            if resp.status != 200:
                result.errors += 1
            else:
                result.records += len(lines)
            result.requests += 1

    started, cpu0 = time.perf_counter(), time.process_time()
    client = ClientBuilder().max_connections(workers).follow_redirects(False).build()
    async with client, asyncio.TaskGroup() as tg:
        tg.create_task(reader())
        for _ in range(workers):
            tg.create_task(worker(client))
    result.duration_s = time.perf_counter() - started
    result.cpu_s = time.process_time() - cpu0
    return result


def main() -> None:
    args = parse_args(__doc__ or "")
    emit(run_async(upload(args), args.uvloop))


if __name__ == "__main__":
    main()
