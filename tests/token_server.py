"""A small real token server on 127.0.0.1 for the token manager and provider tests.

Not the product's reference sink: just enough of an OAuth2 / JSON-login endpoint to count
requests (and how many are in flight at once) and to misbehave on demand.

Routes: ``POST /oauth/token`` (client credentials, basic or post), ``POST /login`` (JSON
login), ``POST /revoke`` (RFC 7009), ``POST /redirect`` (302 to another origin) and
``POST /elsewhere`` (the redirect target, which must never be reached).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import orjson
from aiohttp import web

MISSING: Any = object()  # ttl value meaning "no expiry field in the answer"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Recorded:
    """One request as the server saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    form: dict[str, str] = field(default_factory=dict)


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Handler:
    """A scripted answer: ``status`` with ``payload`` as JSON (or raw bytes)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        return web.Response(
            status=status, body=body, headers=headers, content_type="application/json"
        )

    return handler


class TokenServer:
    """Issues unique tokens; every knob is a plain attribute a test may change at any time."""

    def __init__(self, *, client_id: str = "client-1", client_secret: str = "s3cr3t") -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.login_username = "bob"
        self.login_password = "hunter2"
        self.ttl: Any = 3600  # the expiry value answered (any JSON value, or MISSING)
        self.latency = 0.0
        self.hang = False  # never answer (until the server closes)
        self.fail_status: int | None = None  # answer this status to every token request
        self.fail_body: Any = {"error": "temporarily_unavailable"}
        self.retry_after: str | None = None
        self.same_token: str | None = None  # answer this token every time
        self.script: list[Handler] = []  # answers used first, one per request
        self.login_shape: Callable[[str, Any], Any] = lambda token, ttl: {
            "access_token": token,
            **({} if ttl is MISSING else {"expires_in": ttl}),
        }
        self.requests: list[Recorded] = []
        self.issued: list[str] = []
        self.revoked: list[Recorded] = []
        self.elsewhere_hits = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._counter = itertools.count(1)
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> TokenServer:
        app = web.Application()
        app.router.add_post("/oauth/token", self._token)
        app.router.add_post("/login", self._login)
        app.router.add_post("/revoke", self._revoke)
        app.router.add_post("/redirect", self._redirect)
        app.router.add_post("/elsewhere", self._elsewhere)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        return self

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> TokenServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def url(self, path: str = "/oauth/token") -> str:
        return self.base_url + path

    @property
    def token_requests(self) -> int:
        return len(self.requests)

    # -- handlers ----------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> Recorded:
        body = await request.read()
        form: dict[str, str] = {}
        if request.content_type == "application/x-www-form-urlencoded":
            form = dict(parse_qsl(body.decode("ascii"), keep_blank_values=True))
        return Recorded(request.path, dict(request.headers), body, form)

    async def _common(self, request: web.Request) -> web.StreamResponse | None:
        """Counting, latency, hanging and scripted failures shared by /oauth/token and /login."""
        self.requests.append(await self._record(request))
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.hang:
            await self._release.wait()
            raise web.HTTPServiceUnavailable()
        if self.script:
            return await self.script.pop(0)(request)
        if self.fail_status is not None:
            headers = {"Retry-After": self.retry_after} if self.retry_after else None
            return await json_response(self.fail_status, self.fail_body, headers)(request)
        return None

    def _new_token(self) -> str:
        token = self.same_token or f"tok-{next(self._counter)}-{secrets.token_hex(8)}"
        self.issued.append(token)
        return token

    async def _token(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            early = await self._common(request)
            if early is not None:
                return early
            form = self.requests[-1].form
            if form.get("grant_type") != "client_credentials":
                return await json_response(400, {"error": "unsupported_grant_type"})(request)
            if not self._client_ok(request, form):
                return await json_response(
                    401,
                    {"error": "invalid_client", "error_description": "client auth failed"},
                    {"WWW-Authenticate": 'Basic realm="token"'},
                )(request)
            payload: dict[str, Any] = {"access_token": self._new_token(), "token_type": "bearer"}
            if self.ttl is not MISSING:
                payload["expires_in"] = self.ttl
            return await json_response(200, payload)(request)
        finally:
            self.in_flight -= 1

    def _client_ok(self, request: web.Request, form: dict[str, str]) -> bool:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            decoded = base64.b64decode(header[6:]).decode("ascii")
            raw_id, _, raw_secret = decoded.partition(":")
            pair = (unquote_plus(raw_id), unquote_plus(raw_secret))
        else:
            pair = (form.get("client_id", ""), form.get("client_secret", ""))
        return pair == (self.client_id, self.client_secret)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            early = await self._common(request)
            if early is not None:
                return early
            try:
                body = orjson.loads(self.requests[-1].body)
            except orjson.JSONDecodeError:
                return await json_response(400, {"error": "bad json"})(request)
            user = body.get("Username", body.get("username"))
            password = body.get("Password", body.get("password"))
            if (user, password) != (self.login_username, self.login_password):
                return await json_response(401, {"message": "INVALID_LOGIN"})(request)
            return await json_response(200, self.login_shape(self._new_token(), self.ttl))(request)
        finally:
            self.in_flight -= 1

    async def _revoke(self, request: web.Request) -> web.StreamResponse:
        self.revoked.append(await self._record(request))
        return web.Response(status=200)

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await self._record(request))
        host = "localhost" if "127.0.0.1" in self.base_url else "127.0.0.1"
        port = self.base_url.rsplit(":", 1)[1]
        raise web.HTTPFound(f"http://{host}:{port}/elsewhere?code=abc")

    async def _elsewhere(self, request: web.Request) -> web.StreamResponse:
        self.elsewhere_hits += 1
        return await json_response(200, {"access_token": "leaked", "expires_in": 60})(request)
