"""A minimal HTTP sink for the benchmarks: an aiohttp server meant to run in its own process.

Every request other than the endpoints below is an ingest request: the sink checks
``Authorization: Bearer <token>`` (the fixed ``--token``, or a token issued by ``/token`` that
has not expired), reads the whole body, optionally sleeps ``--latency`` seconds, and answers
200 (401 when the check fails).

- ``POST /token``: issues a token valid for ``--token-ttl`` seconds (OAuth2 client-credentials
  response shape). It takes ``--token-delay`` seconds to answer, so that concurrent token
  requests overlap and are counted in ``token_max_concurrent``.
- ``GET /stats``: counters as JSON. ``POST /stats/reset`` zeroes them.

When ready it prints its base URL (``http://127.0.0.1:PORT``) on one line of stdout. It uses
uvloop when installed (unless ``--no-uvloop``). SIGTERM or SIGINT stops it.

    python -m benchmarks.minisink --port 0 --token secret --latency 0.05 --token-ttl 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
import time
from dataclasses import asdict, dataclass

from aiohttp import web
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

__all__ = ["SinkStats", "main"]


@dataclass
class SinkStats:
    requests: int = 0
    bytes: int = 0
    unauthorized: int = 0
    token_requests: int = 0
    token_in_flight: int = 0
    token_max_concurrent: int = 0


class Sink:
    def __init__(self, *, token: str, latency: float, token_ttl: float, token_delay: float):
        self.expected = f"Bearer {token}"
        self.latency = latency
        self.token_ttl = token_ttl
        self.token_delay = token_delay
        self.stats = SinkStats()
        # "Bearer <issued token>" -> monotonic expiry
        self.issued: dict[str, float] = {}

    def _authorized(self, header: str | None) -> bool:
        if header == self.expected:
            return True
        if header is None:
            return False
        expiry = self.issued.get(header)
        return expiry is not None and time.monotonic() < expiry

    async def handle(self, request: BaseRequest) -> StreamResponse:
        path = request.path
        if path == "/token":
            return await self._token(request)
        if path.startswith("/stats"):
            return self._stats(request)
        stats = self.stats
        stats.requests += 1
        # Read the whole body in any case, as a real API would, without joining it.
        content = request.content
        n = 0
        while chunk := await content.readany():
            n += len(chunk)
        stats.bytes += n
        if not self._authorized(request.headers.get("Authorization")):
            stats.unauthorized += 1
            return web.Response(status=401, text='{"error":"invalid_token"}')
        if self.latency:
            await asyncio.sleep(self.latency)
        return web.Response(status=200)

    async def _token(self, request: BaseRequest) -> StreamResponse:
        stats = self.stats
        stats.token_requests += 1
        stats.token_in_flight += 1
        stats.token_max_concurrent = max(stats.token_max_concurrent, stats.token_in_flight)
        try:
            await request.read()
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            token = f"tok-{stats.token_requests}-{secrets.token_hex(8)}"
            self.issued[f"Bearer {token}"] = time.monotonic() + self.token_ttl
            ttl = self.token_ttl
            return web.json_response(
                {
                    "access_token": token,
                    "token_type": "Bearer",
                    "expires_in": int(ttl) if ttl == int(ttl) else ttl,
                }
            )
        finally:
            stats.token_in_flight -= 1

    def _stats(self, request: BaseRequest) -> StreamResponse:
        if request.method == "POST" and request.path == "/stats/reset":
            in_flight = self.stats.token_in_flight
            self.stats = SinkStats(token_in_flight=in_flight)
        return web.json_response(asdict(self.stats))


async def serve(args: argparse.Namespace) -> None:
    sink = Sink(
        token=args.token,
        latency=args.latency,
        token_ttl=args.token_ttl,
        token_delay=args.token_delay,
    )
    server = web.Server(sink.handle, access_log=None)
    runner = web.ServerRunner(server, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=1024, shutdown_timeout=1.0)
    await site.start()
    sockets = server_sockets(runner)
    port = sockets[0] if sockets else args.port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"http://{args.host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def server_sockets(runner: web.BaseRunner) -> list[int]:
    ports: list[int] = []
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            ports.append(int(addr[1]))
    return ports


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Minimal bearer-checking HTTP sink for the benchmarks."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token", default="bench-static-token")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--token-ttl", type=float, default=3600.0, help="issued token lifetime")
    parser.add_argument("--token-delay", type=float, default=0.02, help="/token answer time")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    loop_factory = None
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args))
    sys.exit(0)


if __name__ == "__main__":
    main()
