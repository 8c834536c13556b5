"""Worker processes of the multi-process token store tests (run by tests/test_stores.py).

    python tests/store_worker.py --store file:PATH|redis://HOST:PORT/DB --key KEY
        --token-url URL [--client-id ID] [--processes 1] [--tasks 50] [--lease S]
        [--wait-timeout S] [--fetch-timeout S]

The client secret comes from ``ASYNCSYNC_CLIENT_SECRET``. The script imports everything,
prints ``ready`` and waits for a line on stdin: a start barrier. Then it forks into
``--processes`` processes (the imports are paid once, not once per process); each builds its
own store and TokenManager, runs ``--tasks`` concurrent ``get()`` calls and prints one line::

    result {"pid": ..., "fingerprint": ..., "requests": ..., "elapsed": ...,
            "started_at": ..., "finished_at": ...}

``fingerprint`` is that of the one token all its tasks got, ``requests`` the token requests
that process made; ``started_at``/``finished_at`` are wall-clock times (``time.time()``), so
windows of different processes can be compared. The exit status is 0 only if every process
succeeded. Run it in a new session: killing its process group then kills every process of it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

import orjson

from asyncsync.auth._file_store import FileTokenStore
from asyncsync.auth._manager import TokenManager, TokenStore
from asyncsync.auth._oauth2 import OAuth2ClientCredentials
from asyncsync.auth._redis_store import RedisTokenStore


def build_store(args: argparse.Namespace) -> TokenStore:
    if args.store.startswith("file:"):
        return FileTokenStore(args.store[len("file:") :], args.key, wait_timeout=args.wait_timeout)
    return RedisTokenStore(args.store, args.key, lease=args.lease, wait_timeout=args.wait_timeout)


async def run(args: argparse.Namespace) -> None:
    provider = OAuth2ClientCredentials(
        args.token_url, args.client_id, os.environ["ASYNCSYNC_CLIENT_SECRET"]
    )
    store = build_store(args)
    started_at = time.time()  # wall clock: comparable across processes
    started = time.monotonic()
    async with TokenManager(provider, store=store, fetch_timeout=args.fetch_timeout) as manager:
        tokens = await asyncio.gather(*(manager.get() for _ in range(args.tasks)))
        requests = manager.stats.requests
    fingerprints = {token.fingerprint for token in tokens}
    if len(fingerprints) != 1:
        raise SystemExit(f"tasks got {len(fingerprints)} different tokens")
    result = {
        "pid": os.getpid(),
        "fingerprint": fingerprints.pop(),
        "requests": requests,
        "elapsed": round(time.monotonic() - started, 3),
        "started_at": started_at,
        "finished_at": time.time(),
    }
    # One write of one short line: atomic on a pipe, whatever the other processes write.
    os.write(sys.stdout.fileno(), b"result " + orjson.dumps(result) + b"\n")


def child(args: argparse.Namespace) -> int:
    try:
        asyncio.run(run(args))
    except BaseException as exc:
        logging.getLogger("store_worker").error("worker failed: %r", exc)
        return 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--token-url", required=True)
    parser.add_argument("--client-id", default="asyncsync-demo")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--lease", type=float, default=60.0)
    parser.add_argument("--wait-timeout", type=float, default=20.0)
    parser.add_argument("--fetch-timeout", type=float, default=30.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print("ready", flush=True)
    # The barrier is read before any event loop or thread exists, so forking is safe.
    if not sys.stdin.readline():
        raise SystemExit("no start signal")
    if args.processes == 1:
        raise SystemExit(child(args))
    pids = []
    for _ in range(args.processes):
        pid = os.fork()
        if pid == 0:
            code = child(args)
            logging.shutdown()
            os._exit(code)
        pids.append(pid)
    failed = sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in pids)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
