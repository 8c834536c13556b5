"""Contender 2: requests with a ThreadPoolExecutor, one requests.Session per thread.

Written the way many users write it first: ``executor.map`` over the batches, which submits
every batch up front (so memory grows with the input).
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from ._common import Result, emit, iter_batches, parse_args


def upload(args: argparse.Namespace) -> Result:
    url: str = args.url
    headers = {"Authorization": f"Bearer {args.token}", "Content-Type": "application/json"}
    local = threading.local()

    def send(lines: list[bytes]) -> tuple[int, int]:
        session: requests.Session | None = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        resp = session.post(url, data=b"[" + b",".join(lines) + b"]", headers=headers)
        resp.content  # noqa: B018 - read the whole response
        return resp.status_code, len(lines)

    result = Result(loop="threads")
    started, cpu0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        for status, n in pool.map(send, iter_batches(args.data, args.batch)):
            result.requests += 1
            if status == 200:
                result.records += n
            else:
                result.errors += 1
    result.duration_s = time.perf_counter() - started
    result.cpu_s = time.process_time() - cpu0
    return result


def main() -> None:
    args = parse_args(__doc__ or "")
    emit(upload(args))


if __name__ == "__main__":
    main()
