"""Contender: the plain aiohttp loop plus msgspec validation of every line.

The plain loop trusts its input; asyncsync checks that every JSONL line is exactly one JSON
object before sending it. This contender does the same check (a msgspec decoder into an empty
struct: validates, builds nothing) so that validation's cost is seen apart from the
framework's: its gap to the plain loop is the price of validating, the rest of asyncsync's gap
is bookkeeping. No token manager, no retries, no checkpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import msgspec

from ._common import Result, emit, iter_batches, parse_args, run_async


class _AnyObject(msgspec.Struct, gc=False):
    """Any JSON object: unknown fields are skipped, so decoding only validates."""


async def upload(args: argparse.Namespace) -> Result:
    url: str = args.url
    workers: int = args.workers
    headers = {"Authorization": f"Bearer {args.token}", "Content-Type": "application/json"}
    result = Result()
    queue: asyncio.Queue[list[bytes] | None] = asyncio.Queue(maxsize=workers * 2)
    decode = msgspec.json.Decoder(_AnyObject).decode

    async def reader() -> None:
        for lines in iter_batches(args.data, args.batch):
            good = []
            for line in lines:
                try:
                    decode(line)
                except (msgspec.ValidationError, msgspec.DecodeError):
                    result.errors += 1
                    continue
                good.append(line)
            await queue.put(good)
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
