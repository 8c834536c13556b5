"""Contender 3: httpx.AsyncClient with a semaphore bounding the batches in flight."""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from ._common import Result, emit, iter_batches, parse_args, run_async


async def upload(args: argparse.Namespace) -> Result:
    url: str = args.url
    workers: int = args.workers
    headers = {"Authorization": f"Bearer {args.token}", "Content-Type": "application/json"}
    result = Result()
    sem = asyncio.Semaphore(workers)
    tasks: set[asyncio.Task[None]] = set()

    async def send(client: httpx.AsyncClient, lines: list[bytes]) -> None:
        try:
            resp = await client.post(url, content=b"[" + b",".join(lines) + b"]", headers=headers)
            result.requests += 1
            if resp.status_code == 200:
                result.records += len(lines)
            else:
                result.errors += 1
        finally:
            sem.release()

    started, cpu0 = time.perf_counter(), time.process_time()
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
        for lines in iter_batches(args.data, args.batch):
            await sem.acquire()
            task = asyncio.create_task(send(client, lines))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    result.duration_s = time.perf_counter() - started
    result.cpu_s = time.process_time() - cpu0
    return result


def main() -> None:
    args = parse_args(__doc__ or "")
    emit(run_async(upload(args), args.uvloop))


if __name__ == "__main__":
    main()
