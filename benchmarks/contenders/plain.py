"""Contender 1, the reference: a plain aiohttp loop.

One reader task reads the file in blocks and cuts 200-line batches into a bounded queue;
N workers POST each batch as a JSON array of the raw lines. No token manager, no retries, no
checkpoint: the practical limit of one Python process with aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp

from ._common import Result, emit, iter_batches, parse_args, run_async


async def upload(args: argparse.Namespace) -> Result:
    url: str = args.url
    workers: int = args.workers
    headers = {
        "Authorization": f"Bearer {args.token}",
        "Content-Type": "application/json",
    }
    result = Result()
    queue: asyncio.Queue[list[bytes] | None] = asyncio.Queue(maxsize=workers * 2)

    async def reader() -> None:
        for lines in iter_batches(args.data, args.batch):
            await queue.put(lines)
        for _ in range(workers):
            await queue.put(None)

    async def worker(session: aiohttp.ClientSession) -> None:
        while (lines := await queue.get()) is not None:
            body = b"[" + b",".join(lines) + b"]"
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    result.errors += 1
                else:
                    result.records += len(lines)
            result.requests += 1

    started, cpu0 = time.perf_counter(), time.process_time()
    connector = aiohttp.TCPConnector(limit=workers)
    async with aiohttp.ClientSession(connector=connector) as session, asyncio.TaskGroup() as tg:
        tg.create_task(reader())
        for _ in range(workers):
            tg.create_task(worker(session))
    result.duration_s = time.perf_counter() - started
    result.cpu_s = time.process_time() - cpu0
    return result


def main() -> None:
    args = parse_args(__doc__ or "")
    emit(run_async(upload(args), args.uvloop))


if __name__ == "__main__":
    main()
