"""The token endpoints: ``POST /oauth/token`` (OAuth2 client credentials, RFC 6749),
``POST /login`` (JSON username/password) and ``POST /revoke`` (RFC 7009).

``/oauth/token`` and ``/login`` share counting, latency, hangs and auth outages
(:func:`_token_endpoint`); revocation is counted apart and never faulted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus

import orjson
from aiohttp import web

from ._faults import Reset, abort, hang
from ._responses import REALM, json_response, number
from ._state import STATE

__all__ = ["login", "oauth_token", "revoke"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _token_endpoint(name: str) -> Callable[[Handler], Handler]:
    """Counting, latency, hang and outage shared by the token endpoints."""

    def wrap(handler: Handler) -> Handler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            st = request.app[STATE]
            now = time.monotonic()
            st.rt.sync(st.faults, now)
            st.token_requests += 1
            st.token_by_endpoint[name] += 1
            entry: list[Any] = [now, name, None]
            st.token_arrivals.append(entry)
            st.token_in_flight += 1
            st.max_token_in_flight = max(st.max_token_in_flight, st.token_in_flight)
            try:
                f = st.faults
                if f.token_hang:
                    await hang(st.release)
                delay = st.rt.delay(f.token_latency)
                if delay:
                    await asyncio.sleep(delay)
                if st.rt.auth_down(time.monotonic()):
                    resp: web.StreamResponse = json_response(
                        503,
                        {
                            "error": "temporarily_unavailable",
                            "error_description": "the authorization server is unavailable",
                        },
                    )
                else:
                    resp = await handler(request)
            except Reset:
                abort(request)
                entry[2] = "reset"
                return web.Response(status=503)
            except web.HTTPException as exc:  # e.g. 413 from aiohttp's body limit
                entry[2] = exc.status
                st.token_statuses[exc.status] += 1
                raise
            finally:
                st.token_in_flight -= 1
            entry[2] = resp.status
            st.token_statuses[resp.status] += 1
            return resp

        return wrapper

    return wrap


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if status == 401:
        headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
    return json_response(status, {"error": error, "error_description": description}, headers)


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """RFC 6749 §2.3.1: base64(form-urlencoded id ":" form-urlencoded secret). Strict."""
    try:
        raw = base64.b64decode(header.strip(), validate=True).decode("utf-8")
        client_id, sep, secret = raw.partition(":")
        if not sep:
            return None
        return unquote_plus(client_id, errors="strict"), unquote_plus(secret, errors="strict")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


@_token_endpoint("/oauth/token")
async def oauth_token(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    if request.content_type != "application/x-www-form-urlencoded":
        return _oauth_error(
            400, "invalid_request", "use Content-Type application/x-www-form-urlencoded"
        )
    form = await request.post()
    header = request.headers.get("Authorization", "")
    scheme, _, param = header.partition(" ")
    form_secret = form.get("client_secret")
    if scheme.lower() == "basic":
        if form_secret is not None:
            return _oauth_error(400, "invalid_request", "more than one client authentication")
        creds = _basic_credentials(param)
        if creds is None:
            return _oauth_error(401, "invalid_client", "malformed Basic credentials")
    else:
        form_id = form.get("client_id")
        if not isinstance(form_id, str) or not isinstance(form_secret, str):
            return _oauth_error(401, "invalid_client", "client authentication required")
        creds = (form_id, form_secret)
    if not st.client_matches(*creds):
        return _oauth_error(401, "invalid_client", "client authentication failed")
    grant = form.get("grant_type")
    if grant is None:
        return _oauth_error(400, "invalid_request", "grant_type is required")
    if grant != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "only client_credentials")
    token = st.issue_token()
    body: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
    ttl = st.config.token_ttl
    if ttl is not None and st.config.token_expires_in:
        body["expires_in"] = number(ttl)
    scope = form.get("scope")
    if isinstance(scope, str):
        body["scope"] = scope
    return json_response(200, body, {"Cache-Control": "no-store", "Pragma": "no-cache"})


@_token_endpoint("/login")
async def login(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    try:
        payload = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return json_response(400, {"error": "invalid_request", "message": "body must be JSON"})
    if not isinstance(payload, dict):
        return json_response(
            400, {"error": "invalid_request", "message": "body must be a JSON object"}
        )
    username = payload.get("username", payload.get("Username"))
    password = payload.get("password", payload.get("Password"))
    expected = st.config.users.get(username) if isinstance(username, str) else None
    if (
        expected is None
        or not isinstance(password, str)
        or not hmac.compare_digest(password.encode(), expected.encode())
    ):
        return json_response(401, {"error": "invalid_login", "message": "bad username or password"})
    token = st.issue_token()
    body: dict[str, Any] = {"access_token": token, "session_token": token, "token_type": "Bearer"}
    ttl = st.config.token_ttl
    style = st.config.login_expiry_style
    if ttl is not None:
        if style in ("seconds", "iso"):
            body["expires_in"] = number(ttl)
        if style in ("iso", "iso-only"):
            when = datetime.now(UTC) + timedelta(seconds=ttl + st.faults.clock_offset)
            body["session_token_expiration"] = when.isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            )
    return json_response(200, body, {"Cache-Control": "no-store"})


async def revoke(request: web.Request) -> web.StreamResponse:
    """RFC 7009: always 200, whether the token was known or not."""
    st = request.app[STATE]
    st.revocation_requests += 1
    token: Any = None
    if request.content_type == "application/json":
        with contextlib.suppress(orjson.JSONDecodeError):
            payload = orjson.loads(await request.read())
            if isinstance(payload, dict):
                token = payload.get("token")
    else:
        token = (await request.post()).get("token")
    if isinstance(token, str):
        st.revoke(token)
    return web.Response(status=200, headers={"Cache-Control": "no-store"})
