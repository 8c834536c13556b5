"""The reference partner server's aiohttp application: state, handlers, fault injection."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import hmac
import math
import random
import secrets
import socket
import struct
import time
import zlib
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO
from urllib.parse import unquote_plus

import orjson
from aiohttp import web

from ._config import Faults, Latency, SinkConfig

__all__ = ["ARRIVALS_KEPT", "STATE", "SinkState", "StatusCounts", "create_app", "set_faults"]

ARRIVALS_KEPT = 100_000
REALM = "asyncsync-sink"
NDJSON_TYPES = frozenset(
    {
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/jsonlines",
    }
)
_NOT_SET: Any = object()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _number(seconds: float) -> int | float:
    return int(seconds) if float(seconds).is_integer() else seconds


class StatusCounts(dict[str, int]):
    """``{"200": n, ...}`` as JSON has it, that also answers ``counts[200]`` (0 when absent)."""

    def __missing__(self, key: object) -> int:
        if isinstance(key, int) and not isinstance(key, bool):
            return dict.get(self, str(key), 0)
        return 0

    def get(self, key: Any, default: Any = None) -> Any:
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        return dict.get(self, key, default)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        return super().__contains__(key)


class _Reset(Exception):
    """Abort the connection without a response."""


class _BadBody(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


class _FaultRuntime:
    """Schedules derived from a :class:`Faults` object: RNGs, countdowns, the outage clock.

    Re-synchronised at every request, so a fault changed at runtime (by assignment, by
    ``Sink.set_faults`` or by ``POST /admin/faults``) takes effect with fresh schedules.
    """

    PURPOSES = ("fault", "status", "phase", "latency", "hang")

    def __init__(self) -> None:
        self.obj: Faults | None = None
        self.rng: dict[str, random.Random] = {}
        self.seed: Any = _NOT_SET
        self.outage_setting: Any = _NOT_SET
        self.outage_until = 0.0
        self.outage_req_setting: Any = _NOT_SET
        self.outage_req_left = 0
        self.revoke_setting: Any = _NOT_SET
        self.revoke_left: int | None = None
        self.throttle_setting: Any = _NOT_SET
        self.throttle_count = 0

    def restart(self, names: set[str] | frozenset[str] | None = None) -> None:
        """Forget the schedules for ``names`` (all when None); the next sync rebuilds them."""
        if names is None or "seed" in names:
            self.seed = _NOT_SET
        if names is None or "auth_outage" in names:
            self.outage_setting = _NOT_SET
        if names is None or "auth_outage_requests" in names:
            self.outage_req_setting = _NOT_SET
        if names is None or "revoke_all_after" in names:
            self.revoke_setting = _NOT_SET
        if names is None or "throttle_every" in names:
            self.throttle_setting = _NOT_SET

    def sync(self, faults: Faults, now: float) -> None:
        if faults is not self.obj:
            self.obj = faults
            self.restart()
        if faults.seed != self.seed or self.seed is _NOT_SET:
            self.seed = faults.seed
            self.rng = {
                p: random.Random(None if faults.seed is None else f"{faults.seed}/{p}")
                for p in self.PURPOSES
            }
        if faults.auth_outage != self.outage_setting:
            self.outage_setting = faults.auth_outage
            self.outage_until = now + faults.auth_outage
        if faults.auth_outage_requests != self.outage_req_setting:
            self.outage_req_setting = faults.auth_outage_requests
            self.outage_req_left = faults.auth_outage_requests
        if faults.revoke_all_after != self.revoke_setting:
            self.revoke_setting = faults.revoke_all_after
            self.revoke_left = faults.revoke_all_after or None
        if faults.throttle_every != self.throttle_setting:
            self.throttle_setting = faults.throttle_every
            self.throttle_count = 0

    def delay(self, latency: Latency) -> float:
        if isinstance(latency, tuple):
            return self.rng["latency"].uniform(*latency)
        return latency


class SinkState:
    """Everything a sink knows: tokens, accepted records and keys, counters."""

    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        self.faults: Faults = config.fault_settings()
        self.rt = _FaultRuntime()
        self.started = time.monotonic()
        self.tokens: dict[str, float] = {}  # token -> monotonic expiry (inf: never)
        self.revoked_tokens: set[str] = set()
        self.release = asyncio.Event()  # set at shutdown: hanging handlers give up
        self.store: BinaryIO | None = None
        self._client_id = config.client_id.encode()
        self._client_secret = config.client_secret.encode()
        self.in_flight = 0  # live gauges: not cleared by reset()
        self.token_in_flight = 0
        self.reset()

    # -- lifecycle ---------------------------------------------------------------------------

    def open_store(self) -> None:
        if self.config.store_path is not None and self.store is None:
            self.store = open(self.config.store_path, "ab", buffering=0)  # noqa: SIM115

    def close_store(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def reset(self) -> None:
        """Clear counters, records and accepted keys. Tokens stay valid; faults stay."""
        self.token_requests = 0
        self.token_by_endpoint: Counter[str] = Counter()
        self.token_statuses: Counter[int] = Counter()
        self.tokens_issued = 0
        self.max_token_in_flight = self.token_in_flight
        self.revocation_requests = 0
        self.revoked = 0
        self.ingest_requests = 0
        self.statuses: Counter[int] = Counter()
        self.max_in_flight = self.in_flight
        self.records: list[dict[str, Any]] = []
        self.record_count = 0
        self.accepted_keys: set[str] = set()
        self.batches = 0
        self.duplicates = 0
        self.duplicate_records = 0
        self.requests_without_key = 0
        self.unauthorized: Counter[str] = Counter()
        self.throttled = 0
        self.inside_window = 0
        self.windows_opened = 0
        self.throttle_until = -math.inf
        self.injected_errors = 0
        self.resets = 0
        self.hangs = 0
        self.rejected = 0
        self.too_large = 0
        self.malformed = 0
        self.formats: Counter[str] = Counter()
        self.encodings: Counter[str] = Counter()
        self.bytes_received = 0
        self.bytes_decoded = 0
        self.sends_by_key: dict[str, int] = {}
        self.key_digest: dict[str, tuple[int, int]] = {}
        self.digest_key: dict[tuple[int, int], str] = {}
        self.key_body_mismatches = 0
        self.bodies_under_several_keys = 0
        self.arrivals: deque[list[Any]] = deque(maxlen=ARRIVALS_KEPT)
        self.token_arrivals: deque[list[Any]] = deque(maxlen=ARRIVALS_KEPT)
        self.windows: deque[tuple[float, float]] = deque(maxlen=ARRIVALS_KEPT)
        self.rt.restart({"revoke_all_after", "throttle_every"})
        if self.store is not None:
            self.store.truncate(0)

    # -- tokens --------------------------------------------------------------------------------

    def issue_token(self, ttl: float | None = _NOT_SET) -> str:
        if ttl is _NOT_SET:
            ttl = self.config.token_ttl
        token = secrets.token_urlsafe(32)
        self.tokens[token] = math.inf if ttl is None else time.monotonic() + ttl
        self.tokens_issued += 1
        return token

    def revoke(self, token: str) -> bool:
        if self.tokens.pop(token, None) is None:
            return False
        self.revoked_tokens.add(token)
        self.revoked += 1
        return True

    def revoke_all(self) -> int:
        n = len(self.tokens)
        self.revoked_tokens.update(self.tokens)
        self.tokens.clear()
        self.revoked += n
        return n

    def bearer_problem(self, header: str | None, now: float) -> str | None:
        """Why this Authorization header is not acceptable, or None."""
        if not header:
            return "missing"
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "malformed"
        expiry = self.tokens.get(token)
        if expiry is None:
            return "revoked" if token in self.revoked_tokens else "unknown"
        if now >= expiry:
            return "expired"
        return None

    def client_matches(self, client_id: str, secret: str) -> bool:
        id_ok = hmac.compare_digest(client_id.encode(), self._client_id)
        secret_ok = hmac.compare_digest(secret.encode(), self._client_secret)
        return id_ok and secret_ok

    # -- throttling ------------------------------------------------------------------------------

    def open_window(self, seconds: float, now: float | None = None) -> None:
        start = time.monotonic() if now is None else now
        self.throttle_until = start + seconds
        self.windows.append((start, self.throttle_until))
        self.windows_opened += 1

    def retry_after_header(self, remaining: float) -> str:
        f = self.faults
        if f.retry_after_form == "date":
            when = time.time() + f.clock_offset + remaining
            return email.utils.formatdate(math.ceil(when), usegmt=True)
        if float(f.retry_after).is_integer():
            return str(math.ceil(remaining - 1e-9)) if remaining > 0 else "0"
        value = math.ceil(remaining * 1000) / 1000
        return f"{value:.3f}".rstrip("0").rstrip(".") or "0"

    # -- stats -----------------------------------------------------------------------------------

    def stats(self, detail: bool = False) -> dict[str, Any]:
        now = time.monotonic()
        sends = self.sends_by_key.values()
        out: dict[str, Any] = {
            "now": now,
            "uptime": now - self.started,
            "token_requests": self.token_requests,
            "token_requests_by_endpoint": dict(self.token_by_endpoint),
            "token_statuses": StatusCounts(
                (str(k), v) for k, v in sorted(self.token_statuses.items())
            ),
            "tokens_issued": self.tokens_issued,
            "max_concurrent_token_requests": self.max_token_in_flight,
            "revocation_requests": self.revocation_requests,
            "revoked": self.revoked,
            "ingest_requests": self.ingest_requests,
            "records": self.record_count,
            "batches": self.batches,
            "duplicates": self.duplicates,
            "duplicate_records": self.duplicate_records,
            "requests_without_key": self.requests_without_key,
            "statuses": StatusCounts((str(k), v) for k, v in sorted(self.statuses.items())),
            "max_concurrent_ingest": self.max_in_flight,
            "in_flight": self.in_flight,
            "unauthorized": dict(self.unauthorized),
            "throttled": self.throttled,
            "windows_opened": self.windows_opened,
            "inside_window_arrivals": self.inside_window,
            "injected_errors": self.injected_errors,
            "resets": self.resets,
            "hangs": self.hangs,
            "rejected": self.rejected,
            "too_large": self.too_large,
            "malformed": self.malformed,
            "formats": dict(self.formats),
            "encodings": dict(self.encodings),
            "bytes_received": self.bytes_received,
            "bytes_decoded": self.bytes_decoded,
            "keys_seen": len(self.sends_by_key),
            "resent_keys": sum(1 for n in sends if n > 1),
            "max_sends_per_key": max(sends, default=0),
            "key_body_mismatches": self.key_body_mismatches,
            "bodies_under_several_keys": self.bodies_under_several_keys,
        }
        if detail:
            out["arrivals"] = [list(a) for a in self.arrivals]
            out["token_arrivals"] = [list(a) for a in self.token_arrivals]
            out["windows"] = [list(w) for w in self.windows]
            out["sends_by_key"] = dict(self.sends_by_key)
        return out

    def records_jsonl(self) -> bytes:
        return b"".join(orjson.dumps(r) + b"\n" for r in self.records)


STATE = web.AppKey("asyncsync_sink_state", SinkState)


# -- helpers -------------------------------------------------------------------------------------


def _abort(request: web.BaseRequest) -> None:
    """Close the connection with a TCP RST, sending nothing."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _hang(st: SinkState, request: web.BaseRequest) -> web.Response:
    """Never answer; at shutdown drop the connection. Cancelled when the client leaves."""
    await st.release.wait()
    raise _Reset


def _decode(raw: bytes, encoding: str, limit: int) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        if len(raw) > limit:
            raise _BadBody(413, "payload_too_large", f"body larger than {limit} bytes")
        return raw
    if encoding in ("gzip", "x-gzip"):
        wbits = 31
    elif encoding == "deflate":
        wbits = 15
    else:
        raise _BadBody(415, "unsupported_encoding", f"Content-Encoding {encoding!r} unsupported")
    out = bytearray()
    data = raw
    try:
        while True:
            d = zlib.decompressobj(wbits)
            out += d.decompress(data, limit + 1 - len(out))
            if d.unconsumed_tail or len(out) > limit:
                raise _BadBody(413, "payload_too_large", f"decoded body larger than {limit} bytes")
            if not d.eof:
                raise _BadBody(400, "malformed_body", f"truncated {encoding} body")
            data = d.unused_data
            if not data:
                break
            if wbits != 31:
                raise _BadBody(400, "malformed_body", f"trailing bytes after {encoding} body")
    except zlib.error as exc:
        message = f"not a valid {encoding} body ({exc})"
        if not raw.startswith(b"\x1f\x8b") and raw.lstrip()[:1] in (b"[", b"{"):
            message += "; it looks like uncompressed JSON"
        raise _BadBody(400, "malformed_body", message) from None
    return bytes(out)


def _parse(body: bytes, content_type: str) -> tuple[list[Any], str]:
    """Records of a body, and its format name. Raises _BadBody."""
    try:
        if content_type in NDJSON_TYPES:
            lines = [line for line in body.split(b"\n") if line.strip()]
            records = orjson.loads(b"[" + b",".join(lines) + b"]") if lines else []
            if len(records) != len(lines):
                raise _BadBody(400, "malformed_body", "an NDJSON line must hold one JSON value")
            kind = "ndjson"
        else:
            value = orjson.loads(body)
            if isinstance(value, list):
                records, kind = value, "json"
            elif isinstance(value, dict) and len(value) == 1:
                (records,) = value.values()
                if not isinstance(records, list):
                    raise _BadBody(400, "malformed_body", "a wrapped body must hold one list")
                kind = "wrapped"
            else:
                raise _BadBody(
                    400,
                    "malformed_body",
                    'body must be a JSON array of objects or {"KEY": [objects]}',
                )
    except orjson.JSONDecodeError as exc:
        raise _BadBody(400, "malformed_body", f"invalid JSON: {exc}") from None
    if not all(type(r) is dict for r in records):
        raise _BadBody(400, "malformed_body", "every record must be a JSON object")
    return records, kind


# -- token endpoints ---------------------------------------------------------------------------


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
                    await _hang(st, request)
                delay = st.rt.delay(f.token_latency)
                if delay:
                    await asyncio.sleep(delay)
                if st.rt.outage_req_left > 0 or time.monotonic() < st.rt.outage_until:
                    if st.rt.outage_req_left > 0:
                        st.rt.outage_req_left -= 1
                    resp: web.StreamResponse = _json(
                        503,
                        {
                            "error": "temporarily_unavailable",
                            "error_description": "the authorization server is unavailable",
                        },
                    )
                else:
                    resp = await handler(request)
            except _Reset:
                _abort(request)
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
    return _json(status, {"error": error, "error_description": description}, headers)


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
async def _oauth_token(request: web.Request) -> web.StreamResponse:
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
        body["expires_in"] = _number(ttl)
    scope = form.get("scope")
    if isinstance(scope, str):
        body["scope"] = scope
    return _json(200, body, {"Cache-Control": "no-store", "Pragma": "no-cache"})


@_token_endpoint("/login")
async def _login(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    try:
        payload = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _json(400, {"error": "invalid_request", "message": "body must be JSON"})
    if not isinstance(payload, dict):
        return _json(400, {"error": "invalid_request", "message": "body must be a JSON object"})
    username = payload.get("username", payload.get("Username"))
    password = payload.get("password", payload.get("Password"))
    expected = st.config.users.get(username) if isinstance(username, str) else None
    if (
        expected is None
        or not isinstance(password, str)
        or not hmac.compare_digest(password.encode(), expected.encode())
    ):
        return _json(401, {"error": "invalid_login", "message": "bad username or password"})
    token = st.issue_token()
    body: dict[str, Any] = {"access_token": token, "session_token": token, "token_type": "Bearer"}
    ttl = st.config.token_ttl
    style = st.config.login_expiry_style
    if ttl is not None:
        if style in ("seconds", "iso"):
            body["expires_in"] = _number(ttl)
        if style in ("iso", "iso-only"):
            when = datetime.now(UTC) + timedelta(seconds=ttl + st.faults.clock_offset)
            body["session_token_expiration"] = when.isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            )
    return _json(200, body, {"Cache-Control": "no-store"})


async def _revoke(request: web.Request) -> web.StreamResponse:
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


# -- ingest ----------------------------------------------------------------------------------------


async def _ingest(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    now = time.monotonic()
    st.rt.sync(st.faults, now)
    st.ingest_requests += 1
    key = request.headers.get("Idempotency-Key")
    entry: list[Any] = [now, None, key]
    st.arrivals.append(entry)
    if key is None:
        st.requests_without_key += 1
    else:
        st.sends_by_key[key] = st.sends_by_key.get(key, 0) + 1
    st.in_flight += 1
    st.max_in_flight = max(st.max_in_flight, st.in_flight)
    try:
        resp = await _ingest_inner(request, st, key, now)
    except _Reset:
        st.resets += 1
        entry[1] = "reset"
        _abort(request)
        return web.Response(status=503)  # never reaches the client
    finally:
        st.in_flight -= 1
    entry[1] = resp.status
    st.statuses[resp.status] += 1
    return resp


async def _ingest_inner(
    request: web.Request, st: SinkState, key: str | None, now: float
) -> web.Response:
    f = st.faults
    rt = st.rt
    if rt.revoke_left is not None:
        if rt.revoke_left == 0:
            rt.revoke_left = None
            st.revoke_all()
        else:
            rt.revoke_left -= 1
    if f.hang or (f.hang_rate and rt.rng["hang"].random() < f.hang_rate):
        st.hangs += 1
        await _hang(st, request)

    if st.config.require_auth:
        problem = st.bearer_problem(request.headers.get("Authorization"), now)
        if problem is not None:
            st.unauthorized[problem] += 1
            challenge = f'Bearer realm="{REALM}"'
            if problem != "missing":
                challenge += f', error="invalid_token", error_description="token {problem}"'
            return _json(
                401,
                {"error": "invalid_token", "reason": problem},
                {"WWW-Authenticate": challenge},
            )

    if now < st.throttle_until:
        st.throttled += 1
        st.inside_window += 1
        return _throttled(st, st.throttle_until - now)
    if f.throttle_every:
        rt.throttle_count += 1
        if rt.throttle_count >= f.throttle_every:
            rt.throttle_count = 0
            st.open_window(f.retry_after, now)
            st.throttled += 1
            return _throttled(st, f.retry_after)

    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        st.too_large += 1
        limit = st.config.client_max_size
        return _json(413, {"error": "payload_too_large", "message": f"over {limit} bytes"})
    st.bytes_received += len(raw)

    delay = rt.delay(f.latency)
    if delay:
        await asyncio.sleep(delay)

    encoding = request.headers.get("Content-Encoding", "")
    limit = st.config.client_max_size
    if f.max_body_bytes is not None:
        limit = min(limit, f.max_body_bytes)
    try:
        body = _decode(raw, encoding, limit)
        records, kind = _parse(body, request.content_type)
    except _BadBody as exc:
        if exc.status == 413:
            st.too_large += 1
        else:
            st.malformed += 1
        return _json(exc.status, {"error": exc.error, "message": exc.message})
    st.bytes_decoded += len(body)
    st.formats[kind] += 1
    st.encodings[encoding.strip().lower() or "identity"] += 1

    if st.config.keep_records and key is not None:
        digest = (len(body), zlib.crc32(body))
        first = st.key_digest.setdefault(key, digest)
        if first != digest:
            st.key_body_mismatches += 1
        owner = st.digest_key.setdefault(digest, key)
        if owner != key:
            st.bodies_under_several_keys += 1

    field = f.reject_field
    if field is not None:
        for index, record in enumerate(records):
            if field in record:
                st.rejected += 1
                return _json(
                    400,
                    {
                        "error": "rejected_record",
                        "message": f"record {index} has the forbidden field {field!r}",
                        "field": field,
                        "index": index,
                    },
                )

    fault = _draw_fault(st)
    after: int | str | None = None
    if fault is not None:
        phase = f.fault_phase
        if phase == "either":
            phase = "before" if rt.rng["phase"].random() < 0.5 else "after"
        if phase == "before":
            return _inject(st, fault)
        after = fault

    n = len(records)
    duplicate = key is not None and key in st.accepted_keys
    if duplicate:
        st.duplicates += 1
        st.duplicate_records += n
    if not (duplicate and st.config.dedupe):
        # No await between the key check and here: concurrent repeats cannot both store.
        if key is not None:
            st.accepted_keys.add(key)
        if not duplicate:
            st.batches += 1
        st.record_count += n
        if st.config.keep_records:
            st.records.extend(records)
        if st.store is not None and records:
            st.store.write(b"".join(orjson.dumps(r) + b"\n" for r in records))

    if after is not None:
        return _inject(st, after)
    if duplicate:
        return _json(200, {"accepted": n, "duplicate": True})
    return _json(200, {"accepted": n})


def _throttled(st: SinkState, remaining: float) -> web.Response:
    return _json(
        st.faults.throttle_status,
        {"error": "rate_limited", "retry_after": round(remaining, 3)},
        {"Retry-After": st.retry_after_header(remaining)},
    )


def _draw_fault(st: SinkState) -> int | str | None:
    f = st.faults
    if not (f.error_rate or f.reset_rate):
        return None
    roll = st.rt.rng["fault"].random()
    if roll < f.reset_rate:
        return "reset"
    if roll < f.reset_rate + f.error_rate:
        return st.rt.rng["status"].choice(f.error_statuses)
    return None


def _inject(st: SinkState, fault: int | str) -> web.Response:
    if fault == "reset":
        raise _Reset
    assert isinstance(fault, int)
    st.injected_errors += 1
    return _json(fault, {"error": "injected_fault", "status": fault})


# -- stats, records, admin ---------------------------------------------------------------------


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on")


async def _stats(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    return _json(200, st.stats(detail=_truthy(request.query.get("detail"))))


async def _records(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    if st.config.keep_records:
        body = st.records_jsonl()
    elif st.config.store_path is not None:
        body = await asyncio.to_thread(_read_file, st.config.store_path)
    else:
        body = b""
    return web.Response(body=body, content_type="application/x-ndjson")


def _read_file(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


async def _index(request: web.Request) -> web.StreamResponse:
    return _json(
        200,
        {
            "service": "asyncsync reference sink",
            "endpoints": [
                "POST /oauth/token",
                "POST /login",
                "POST /ingest",
                "POST /revoke",
                "GET /stats[?detail=1]",
                "GET /records",
                "GET|POST /admin/faults",
                "POST /admin/revoke-all",
                "POST /admin/reset",
                "POST /admin/throttle",
            ],
        },
    )


async def _read_json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(
            body=orjson.dumps({"error": "invalid_json", "message": str(exc)}),
            content_type="application/json",
        ) from None
    if not isinstance(value, dict):
        raise web.HTTPBadRequest(
            body=orjson.dumps({"error": "invalid_json", "message": "expected a JSON object"}),
            content_type="application/json",
        )
    return value


def set_faults(st: SinkState, changes: Mapping[str, Any]) -> None:
    """Merge ``changes`` into the running faults and restart the schedules they touch."""
    st.faults.update(changes)
    st.rt.restart(frozenset(changes))
    st.rt.sync(st.faults, time.monotonic())


async def _admin_faults(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    if request.method == "POST":
        changes = await _read_json_object(request)
        try:
            set_faults(st, changes)
        except (ValueError, TypeError) as exc:
            return _json(400, {"error": "invalid_faults", "message": str(exc)})
    return _json(200, st.faults.to_dict())


async def _admin_revoke_all(request: web.Request) -> web.StreamResponse:
    return _json(200, {"revoked": request.app[STATE].revoke_all()})


async def _admin_reset(request: web.Request) -> web.StreamResponse:
    request.app[STATE].reset()
    return _json(200, {"reset": True})


async def _admin_throttle(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    payload = await _read_json_object(request)
    seconds = payload.get("seconds", st.faults.retry_after)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        return _json(400, {"error": "invalid_seconds", "message": "seconds must be >= 0"})
    st.open_window(float(seconds))
    return _json(200, {"until": st.throttle_until})


# -- the application -----------------------------------------------------------------------------


def create_app(config: SinkConfig | None = None, state: SinkState | None = None) -> web.Application:
    """The sink as an aiohttp application (serve it with any runner, or the test client).

    Serve it with ``auto_decompress=False`` (the sink decodes ``Content-Encoding`` itself, to
    bound decoded sizes) and preferably ``handler_cancellation=True``; :class:`Sink` does both.
    """
    if state is None:
        state = SinkState(config if config is not None else SinkConfig())
    app = web.Application(client_max_size=state.config.client_max_size)
    app[STATE] = state

    async def on_startup(app: web.Application) -> None:
        st = app[STATE]
        st.started = time.monotonic()
        st.release.clear()
        st.rt.restart()
        st.rt.sync(st.faults, st.started)
        st.open_store()

    async def on_shutdown(app: web.Application) -> None:
        app[STATE].release.set()

    async def on_cleanup(app: web.Application) -> None:
        app[STATE].close_store()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/", _index)
    app.router.add_post("/oauth/token", _oauth_token)
    app.router.add_post("/login", _login)
    app.router.add_post("/ingest", _ingest)
    app.router.add_post("/revoke", _revoke)
    app.router.add_get("/stats", _stats)
    app.router.add_get("/records", _records)
    if state.config.admin:
        app.router.add_get("/admin/faults", _admin_faults)
        app.router.add_post("/admin/faults", _admin_faults)
        app.router.add_post("/admin/revoke-all", _admin_revoke_all)
        app.router.add_post("/admin/reset", _admin_reset)
        app.router.add_post("/admin/throttle", _admin_throttle)
    return app
