"""What a loopback server received, request by request, so tests check identities, not counts.

Two ways to record:

- :func:`serve`: a test-local aiohttp server on 127.0.0.1 that records every request (arrival
  time on the monotonic clock, path, headers, body) and answers with a handler the test
  chooses (200 by default);
- :func:`record_sink`: a middleware on the reference sink, installed before it starts, that
  records every request the sink answered and the status it answered, without changing
  what the sink does.

:func:`assert_delivered_once` then checks record identities: every expected record was
acknowledged, exactly once (or, where a resend may legitimately repeat it, only ever under one
``Idempotency-Key``).
"""

from __future__ import annotations

import contextlib
import gzip
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from asyncsync.sink import Sink

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Received:
    """One request as the server saw it."""

    arrived: float  # time.monotonic() when the server started handling it
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""  # decoded (gunzipped) body
    status: int | None = None  # what the server answered
    answered: float | None = None  # time.monotonic() when the answer was made

    @property
    def key(self) -> str | None:
        return self.headers.get("Idempotency-Key")

    @property
    def authorization(self) -> str | None:
        return self.headers.get("Authorization")

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def records(self) -> list[Any]:
        """The records of a JSON array, ``{"KEY": [...]}`` or NDJSON body."""
        if not self.body.strip():
            return []
        if self.headers.get("Content-Type", "").startswith("application/x-ndjson"):
            return [orjson.loads(line) for line in self.body.split(b"\n") if line.strip()]
        value = orjson.loads(self.body)
        if isinstance(value, dict) and len(value) == 1:
            (value,) = value.values()
        assert isinstance(value, list), f"not a batch body: {self.body[:200]!r}"
        return value


def _headers(request: web.BaseRequest) -> dict[str, str]:
    # canonical case for the few headers tests look up; the rest as sent
    out: dict[str, str] = {}
    for name, value in request.headers.items():
        canon = "-".join(part.capitalize() for part in name.split("-"))
        out[canon] = value
    return out


async def _body(request: web.BaseRequest) -> bytes:
    if not request.body_exists:
        return b""
    raw = await request.read()
    if request.headers.get("Content-Encoding", "").strip().lower() == "gzip":
        return gzip.decompress(raw)
    return raw


@dataclass
class Server:
    """A running test-local server: its base URL and what it received."""

    base: str
    received: list[Received] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base + path

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]


async def ok(request: web.Request) -> web.StreamResponse:
    return web.json_response({"ok": True})


@contextlib.asynccontextmanager
async def serve(routes: dict[str, Handler] | None = None) -> AsyncIterator[Server]:
    """Serve ``routes`` (path -> handler, any method; 200 where none is given) on 127.0.0.1.

    Each request is recorded (with its decoded body) before its handler runs; its status
    and the time of the answer are filled in afterwards.
    """
    routes = routes or {}
    server: Server | None = None

    async def dispatch(request: web.Request) -> web.StreamResponse:
        assert server is not None
        entry = Received(time.monotonic(), request.method, request.path, _headers(request))
        server.received.append(entry)
        entry.body = await _body(request)
        try:
            resp = await routes.get(request.path, ok)(request)
        except web.HTTPException as exc:
            entry.status, entry.answered = exc.status, time.monotonic()
            raise
        entry.status, entry.answered = resp.status, time.monotonic()
        return resp

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = Server(f"http://127.0.0.1:{runner.addresses[0][1]}")
        yield server
    finally:
        await runner.cleanup()


def record_sink(sink: Sink) -> list[Received]:
    """Record every request to ``sink`` (call before it starts); the list fills as it runs."""
    received: list[Received] = []

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        entry = Received(time.monotonic(), request.method, request.path, _headers(request))
        received.append(entry)
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            entry.status, entry.answered = exc.status, time.monotonic()
            raise
        entry.status, entry.answered = resp.status, time.monotonic()
        # read after the sink answered, so its own body limits apply first (cached if it read)
        with contextlib.suppress(Exception):
            entry.body = await _body(request)
        return resp

    sink.app.middlewares.append(middleware)
    return received


def assert_delivered_once(
    received: Iterable[Received],
    expected: Iterable[Any],
    *,
    path: str = "/ingest",
    ident: Callable[[Any], Any] = lambda record: record["id"],
    resends_acknowledged: bool = False,
) -> None:
    """Every expected record was acknowledged, and only ever sent under one Idempotency-Key.

    Acknowledged means in the body of a request answered 2xx: each expected identity exactly
    once (``resends_acknowledged``: at least once, for runs where a request the server
    acknowledged may be sent again, e.g. one in flight when a run was cancelled and resumed),
    and no other identity. Whatever the answer, a record goes out under one key only: a retry
    (429, 5xx, 401, a resumed run) keeps the key of its batch. The exception is a 413: its
    records go out again as parts of a split, under the parts' own keys.
    """
    requests = [r for r in received if r.path == path]
    want = Counter(ident(r) for r in expected)
    acked = Counter(ident(rec) for r in requests if r.ok for rec in r.records())
    missing = want - acked
    extra = acked - want
    assert not missing, f"{sum(missing.values())} records never acknowledged, e.g. {_few(missing)}"
    if resends_acknowledged:
        unexpected = set(acked) - set(want)
        assert not unexpected, f"unexpected records acknowledged: {_few(unexpected)}"
    else:
        assert not extra, f"{sum(extra.values())} extra acknowledgements, e.g. {_few(extra)}"
    keys: defaultdict[Any, set[str | None]] = defaultdict(set)
    for r in requests:
        if r.status != 413:
            for rec in r.records():
                keys[ident(rec)].add(r.key)
    several = {i: sorted(map(str, k)) for i, k in keys.items() if len(k) != 1}
    assert not several, f"{len(several)} records sent under several keys, e.g. {_few(several)}"


def _few(items: Iterable[Any]) -> str:
    if isinstance(items, dict):
        return repr(dict(list(items.items())[:5]))
    return repr(sorted(items, key=repr)[:5])
