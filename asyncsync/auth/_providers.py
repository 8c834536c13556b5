"""How a token is fetched: the :class:`AuthProvider` protocol and the providers asyncsync ships.

A provider knows how to ask one endpoint for a token and how to read the answer; it knows
nothing about caching, single-flight or retries (that is :class:`~asyncsync.TokenManager`).

=============================  ==========================================================
provider                       what it does
=============================  ==========================================================
:class:`OAuth2ClientCredentials`  RFC 6749 §4.4, client_secret_basic (§2.3.1) or _post
:class:`JsonLogin`             POST a templated JSON body, read (dotted) token and expiry
:class:`StaticToken`           a bearer token given up front; never expires
:class:`CallableProvider`      the user's own ``async () -> TokenResponse | str | tuple``
=============================  ==========================================================

Error contract of :meth:`AuthProvider.fetch`: :class:`TransientAuthError` for what is worth
retrying (connection errors, timeouts, 408, 429, 5xx; with ``Retry-After`` when the server sent
one), :class:`~asyncsync.AuthError` for everything else (bad credentials, 3xx, other 4xx, a
response without a token), and :class:`~asyncsync.ConfigError` when TLS verification fails (a
setting to fix, ``--ca-bundle``, not a fault to retry). No message, ``repr`` or log line holds
a secret or a token: secrets live in slots that ``__repr__`` does not show, and server bodies
appear only as a short redacted excerpt.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol
from urllib.parse import quote_plus, urlencode, urlsplit

import orjson

from .._exceptions import AuthError, ConfigError
from .._http import (
    RequestTimeout,
    Transport,
    TransportError,
    display_url,
    map_aiohttp_exception,
)
from .._retry import parse_retry_after

__all__ = [
    "DEFAULT_LOGIN_TEMPLATE",
    "MAX_LIFETIME",
    "AuthProvider",
    "CallableProvider",
    "JsonLogin",
    "OAuth2ClientCredentials",
    "StaticToken",
    "TokenResponse",
    "TransientAuthError",
    "parse_token_response",
]

logger = logging.getLogger("asyncsync.auth")

#: Longest lifetime believed from a server; anything longer is capped (a year).
MAX_LIFETIME: Final = 365.0 * 24 * 3600
#: A number above this in an expiry field is an epoch timestamp in seconds, not a lifetime.
EPOCH_THRESHOLD: Final = 1e9
#: A number above this is an epoch timestamp in milliseconds (1e11 s would be the year 5138).
EPOCH_MS_THRESHOLD: Final = 1e11
#: Token responses larger than this are refused (a token endpoint answers a few hundred bytes).
MAX_RESPONSE_BYTES: Final = 1 << 20
#: Longest server-body excerpt put into an error message.
EXCERPT_CHARS: Final = 160
EXCERPT_SCAN: Final = 4096

DEFAULT_LOGIN_TEMPLATE: Final = (
    '{"username": "${ASYNCSYNC_USERNAME}", "password": "${ASYNCSYNC_PASSWORD}"}'
)

WallClock = Callable[[], float]


class TransientAuthError(AuthError):
    """A token request failed in a way worth retrying (internal: the manager retries it)."""

    def __init__(
        self,
        message: str,
        *,
        endpoint: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, endpoint=endpoint, status=status, permanent=False)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True, repr=False)
class TokenResponse:
    """What a provider obtained: the token, its lifetime in seconds, and its scheme.

    ``expires_in`` counts from the moment the request was *sent*; ``None`` means unknown: the
    token is kept until a 401 invalidates it.
    """

    access_token: str = field(repr=False)
    expires_in: float | None
    token_type: str = "Bearer"

    def __repr__(self) -> str:
        return (
            f"TokenResponse(access_token='***', expires_in={self.expires_in!r}, "
            f"token_type={self.token_type!r})"
        )


class AuthProvider(Protocol):
    """How to obtain (and optionally revoke) a token. Implementations hold the credentials."""

    @property
    def endpoint(self) -> str | None:
        """Where tokens come from, safe to show in messages (no credentials, no query)."""
        ...

    async def fetch(
        self,
        transport: Transport,
        *,
        timeout: float,  # noqa: ASYNC109 - the transport's per-request budget, by protocol
    ) -> TokenResponse:
        """Request one token; raise :class:`TransientAuthError` or ``AuthError`` on failure."""
        ...

    async def revoke(self, transport: Transport, token: str) -> None:
        """Revoke ``token`` (RFC 7009) if the provider knows how; may be a no-op."""
        ...


# --------------------------------------------------------------------------------------------
# Expiry arithmetic


def clamp_lifetime(seconds: float) -> float:
    """A lifetime as the manager uses it: ``[0, MAX_LIFETIME]``; NaN is not accepted."""
    if math.isnan(seconds):
        raise ValueError("lifetime is NaN")
    return min(max(seconds, 0.0), MAX_LIFETIME)


def absolute_to_lifetime(expires_at_wall: float, now_wall: float) -> float:
    """Convert an absolute expiry (epoch seconds) to a lifetime, once, at receipt.

    Zero or negative (already past, or a client clock ahead of the server's) becomes 0: the
    manager then serves the token for its minimum interval, which prevents a renew loop.
    """
    return clamp_lifetime(expires_at_wall - now_wall)


_NUMBER_RE: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _number_to_lifetime(value: float, now_wall: float) -> float:
    if value > EPOCH_MS_THRESHOLD:
        return absolute_to_lifetime(value / 1000.0, now_wall)
    if value > EPOCH_THRESHOLD:
        return absolute_to_lifetime(value, now_wall)
    return clamp_lifetime(value)


def expiry_to_lifetime(value: object, *, now_wall: float, field_name: str = "expires") -> float:
    """Read an expiry field as a lifetime in seconds; ``ValueError`` if it is not one.

    Accepted: seconds (a number or a numeric string); an epoch timestamp (a number above
    1e9 in seconds, above 1e11 in milliseconds); an ISO-8601 timestamp (``Z`` or an offset;
    naive means UTC). The result is clamped to ``[0, MAX_LIFETIME]``.
    """
    if isinstance(value, bool):
        raise ValueError(f"{field_name} is a boolean")
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return MAX_LIFETIME
        if math.isnan(number):
            raise ValueError(f"{field_name} is NaN")
        return _number_to_lifetime(number, now_wall)
    if isinstance(value, str):
        text = value.strip()
        if _NUMBER_RE.fullmatch(text):
            return _number_to_lifetime(float(text), now_wall)
        try:
            moment = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise ValueError(f"{field_name} is neither a number nor an ISO-8601 time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return absolute_to_lifetime(moment.timestamp(), now_wall)
    raise ValueError(f"{field_name} is a {type(value).__name__}")


# --------------------------------------------------------------------------------------------
# Redaction helpers


_SECRET_VALUE_RE: Final = re.compile(
    r"""(?ix)
    ( ["']?[\w.-]{0,40}(?:token|secret|passw|pwd|assertion|session|signature|key|code|credential
      |auth)[\w.-]{0,40}["']? \s{0,8} [:=] \s{0,8} )
    ( "(?:[^"\\]|\\.)*" | '(?:[^'\\]|\\.)*' | [^\s,&;}\]]+ )
    """
)
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]+")


def redacted_excerpt(
    body: bytes | str, *, secrets: Collection[str] = (), limit: int = EXCERPT_CHARS
) -> str:
    """A short, single-line, redacted excerpt of a server body for an error message.

    Values of keys that look secret (``*token*``, ``*secret*``, ``password``...) become
    ``***``, as does any of ``secrets``; HTML pages are summarised, not quoted.
    """
    # Only the head matters, and bounding it bounds the regex work on a hostile body. The
    # final cut below is far shorter, so a secret split by this one is dropped entirely.
    text = body[:EXCERPT_SCAN].decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = text[:EXCERPT_SCAN].strip()
    if not text:
        return ""
    if text[:1] == "<":
        return "(an HTML page)"
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _SECRET_VALUE_RE.sub(lambda m: m.group(1) + "***", text)
    text = _CONTROL_RE.sub(" ", text)
    text = " ".join(text.split())
    if len(text) > limit:
        # Redaction ran on the whole text first, so a cut can never expose part of a secret.
        text = text[: limit - 3] + "..."
    return text


def token_value_problem(value: object) -> str | None:
    """Why ``value`` cannot be a bearer token, or None if it can (never quotes the value)."""
    if not isinstance(value, str):
        return f"the token is a {type(value).__name__}, not a string"
    if not value:
        return "the token is empty"
    if not all("\x21" <= ch <= "\x7e" for ch in value):
        return "the token holds characters not allowed in an HTTP header"
    return None


_MISSING: Final = object()


def lookup_field(document: object, path: str) -> object:
    """Value at a dotted ``path`` ("data.session.token"); a literal dotted key wins."""
    if isinstance(document, Mapping) and path in document:
        return document[path]
    current: object = document
    for part in path.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return _MISSING
    return current


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


_ERROR_CODE_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _holds_secret(text: str, secrets: Collection[str]) -> bool:
    return any(secret and secret in text for secret in secrets)


def _scrubbed(text: str, secrets: Collection[str], limit: int = EXCERPT_CHARS) -> str:
    """Server-chosen text that is not a body (a URL, a header, key names) for a message:
    secrets masked (before the cut, as in :func:`redacted_excerpt`), one line, short."""
    text = text[:EXCERPT_SCAN]
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = " ".join(_CONTROL_RE.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_token_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    endpoint: str | None,
    token_field: str = "access_token",
    expires_field: str | None = "expires_in",
    token_type_field: str | None = "token_type",
    now_wall: float,
    secrets: Collection[str] = (),
) -> TokenResponse:
    """Classify one token endpoint response: a :class:`TokenResponse` or an ``AuthError``.

    2xx with a token: success. 408, 429, 5xx: :class:`TransientAuthError` carrying
    ``Retry-After``. 3xx, 400 (``invalid_client``, ``invalid_grant``...), 401, 403, other
    4xx, and a 2xx without a token or that is not JSON: a permanent ``AuthError``.
    """
    where = endpoint or "the token endpoint"
    if 300 <= status < 400:
        location = _header(headers, "Location")
        # the path may hold anything the server chose to echo: redacted, like a body
        target = _scrubbed(display_url(location), secrets) if location else "nowhere"
        raise AuthError(
            f"token request to {where} was redirected (HTTP {status}) to {target}; "
            "credentials are not sent across redirects, configure the final URL",
            endpoint=endpoint,
            status=status,
        )
    if status in (408, 429) or 500 <= status < 600:
        retry_after = parse_retry_after(_header(headers, "Retry-After"), now_wall=now_wall)
        message = f"token endpoint {where} answered HTTP {status}"
        excerpt = redacted_excerpt(body, secrets=secrets)
        if excerpt:
            message += f": {excerpt}"
        raise TransientAuthError(message, endpoint=endpoint, status=status, retry_after=retry_after)
    document: object = _MISSING
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses numbers past a double's range ("expires_in": 1e400), which is valid
        # JSON all the same: the stdlib reads it (as inf; the lifetime is clamped)
        with contextlib.suppress(ValueError, RecursionError):
            document = json.loads(body)
    if not 200 <= status < 300:
        raise AuthError(
            _refusal_message(where, status, document, body, secrets),
            endpoint=endpoint,
            status=status,
        )
    if not isinstance(document, dict):
        what = "an HTML page" if body.lstrip()[:1] == b"<" else "no JSON object"
        ctype = _scrubbed(_header(headers, "Content-Type") or "no content type", secrets, 80)
        raise AuthError(
            f"token endpoint {where} answered HTTP {status} with {what} ({ctype})",
            endpoint=endpoint,
            status=status,
        )
    value = lookup_field(document, token_field)
    if value is _MISSING:
        keys = _scrubbed(", ".join(sorted(str(k) for k in document)[:12]) or "none", secrets)
        raise AuthError(
            f"token endpoint {where} answered HTTP {status} without {token_field!r} "
            f"(top-level keys: {keys})",
            endpoint=endpoint,
            status=status,
        )
    problem = token_value_problem(value)
    if problem is not None:
        raise AuthError(
            f"token endpoint {where}: {token_field!r}: {problem}", endpoint=endpoint, status=status
        )
    assert isinstance(value, str)
    expires_in: float | None = None
    if expires_field is not None:
        raw = lookup_field(document, expires_field)
        if raw is not _MISSING and raw is not None:
            try:
                expires_in = expiry_to_lifetime(raw, now_wall=now_wall, field_name=expires_field)
            except ValueError as exc:
                logger.warning(
                    "ignoring the expiry from %s: %s; the token is kept until it is refused",
                    where,
                    exc,
                )
    token_type = "Bearer"
    if token_type_field is not None:
        raw_type = lookup_field(document, token_type_field)
        if (
            isinstance(raw_type, str)
            and raw_type.lower() != "bearer"
            and _ERROR_CODE_RE.fullmatch(raw_type)
            and not _holds_secret(raw_type, secrets)
        ):
            token_type = raw_type
    return TokenResponse(value, expires_in, token_type)


def _refusal_message(
    where: str, status: int, document: object, body: bytes, secrets: Collection[str]
) -> str:
    message = f"token endpoint {where} refused the request: HTTP {status}"
    if isinstance(document, dict):
        code = document.get("error")
        if (
            isinstance(code, str)
            and _ERROR_CODE_RE.fullmatch(code)
            and not _holds_secret(code, secrets)
        ):
            message += f" {code}"
        description = document.get("error_description")
        if isinstance(description, str):
            excerpt = redacted_excerpt(description, secrets=secrets)
        elif code is None:
            excerpt = redacted_excerpt(body, secrets=secrets)
        else:
            excerpt = ""
    else:
        excerpt = redacted_excerpt(body, secrets=secrets)
    if excerpt:
        message += f": {excerpt}"
    return message


# --------------------------------------------------------------------------------------------
# HTTP plumbing shared by the HTTP providers


def _transient(exc: TransportError, endpoint: str | None, timeout: float) -> TransientAuthError:
    """A retryable transport failure of a token request, worded for the token endpoint."""
    what = f"timed out after {timeout:g}s" if isinstance(exc, RequestTimeout) else str(exc)
    return TransientAuthError(
        f"token request to {endpoint or 'the provider'} failed: {what}", endpoint=endpoint
    )


async def _post(
    transport: Transport,
    url: str,
    *,
    endpoint: str,
    headers: Mapping[str, str],
    data: bytes,
    total_timeout: float,
) -> tuple[int, Mapping[str, str], bytes]:
    """POST (redirects are never followed); retryable transport failures become
    TransientAuthError, the others (TLS verification: a setting, ``--ca-bundle``) pass."""
    try:
        response = await transport.post(
            url,
            body=data,
            headers=headers,
            timeout=total_timeout,
            max_body=MAX_RESPONSE_BYTES + 1,
        )
    except TransportError as exc:
        if not exc.retryable:
            raise
        raise _transient(exc, endpoint, total_timeout) from exc
    if len(response.body) > MAX_RESPONSE_BYTES:
        raise AuthError(
            f"token endpoint {endpoint} answered more than {MAX_RESPONSE_BYTES} bytes",
            endpoint=endpoint,
            status=response.status,
        )
    return response.status, response.headers, response.body


def _check_url(url: str, field_name: str) -> str:
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{field_name} must be an http(s) URL", field=field_name)
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigError(f"{field_name} is not a valid URL", field=field_name) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{field_name} must be an http(s) URL, got {display_url(url)!r}", field=field_name
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{field_name} must not hold credentials; pass them as provider arguments",
            field=field_name,
        )
    return url


_FORM: Final = "application/x-www-form-urlencoded"


def _form_encode(value: str) -> str:
    """application/x-www-form-urlencoded, as RFC 6749 §2.3.1 asks for client credentials."""
    return quote_plus(value, safe="")


def basic_credentials(client_id: str, client_secret: str) -> str:
    """The ``Authorization`` value for client_secret_basic (RFC 6749 §2.3.1).

    Each of id and secret is form-urlencoded first, then ``id:secret`` is base64-encoded, so an
    id with ``:`` and a secret with ``+``, spaces or non-ASCII survive the round trip.
    """
    pair = f"{_form_encode(client_id)}:{_form_encode(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode("ascii")).decode("ascii")


# --------------------------------------------------------------------------------------------
# Providers


class OAuth2ClientCredentials:
    """OAuth 2.0 client credentials grant (RFC 6749 §4.4), revocation per RFC 7009.

    ``auth_method="basic"`` sends the client credentials in an ``Authorization: Basic`` header
    (encoded per §2.3.1); ``"post"`` sends them as ``client_id``/``client_secret`` form fields.
    ``extra`` adds form fields (``audience``, ``resource``...).
    """

    __slots__ = (
        "_auth_header",
        "_body",
        "_client_id",
        "_client_secret",
        "_wall_clock",
        "auth_method",
        "endpoint",
        "revoke_url",
        "scope",
        "token_url",
    )

    _RESERVED: Final = frozenset({"grant_type", "client_id", "client_secret"})

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str | Sequence[str] | None = None,
        auth_method: Literal["basic", "post"] = "basic",
        extra: Mapping[str, str] | None = None,
        revoke_url: str | None = None,
        wall_clock: WallClock = time.time,
    ) -> None:
        self.token_url = _check_url(token_url, "token_url")
        self.revoke_url = None if revoke_url is None else _check_url(revoke_url, "revoke_url")
        if not isinstance(client_id, str) or not client_id:
            raise ConfigError("client_id must be a non-empty string", field="client_id")
        if not isinstance(client_secret, str) or not client_secret:
            raise ConfigError("client_secret must be a non-empty string", field="client_secret")
        if auth_method not in ("basic", "post"):
            raise ConfigError(
                f"auth_method must be 'basic' or 'post', got {auth_method!r}", field="client_auth"
            )
        if scope is not None and not isinstance(scope, str):
            scope = " ".join(scope)
        extra = dict(extra or {})
        clash = self._RESERVED.intersection(extra)
        if clash:
            raise ConfigError(
                f"extra form fields may not set {', '.join(sorted(clash))}", field="extra"
            )
        self.endpoint: str | None = display_url(token_url)
        self.scope = scope or None
        self.auth_method = auth_method
        self._client_id = client_id
        self._client_secret = client_secret
        self._wall_clock = wall_clock
        self._auth_header = basic_credentials(client_id, client_secret)
        fields: list[tuple[str, str]] = [("grant_type", "client_credentials")]
        if self.scope:
            fields.append(("scope", self.scope))
        fields.extend(extra.items())
        fields.extend(self._client_fields())
        self._body = urlencode(fields).encode("ascii")

    def _client_fields(self) -> list[tuple[str, str]]:
        if self.auth_method == "post":
            return [("client_id", self._client_id), ("client_secret", self._client_secret)]
        return []

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": _FORM, "Accept": "application/json"}
        if self.auth_method == "basic":
            headers["Authorization"] = self._auth_header
        return headers

    def __repr__(self) -> str:
        return (
            f"OAuth2ClientCredentials(token_url={self.endpoint!r}, "
            f"client_id={self._client_id!r}, client_secret='***', scope={self.scope!r}, "
            f"auth_method={self.auth_method!r})"
        )

    async def fetch(
        self,
        transport: Transport,
        *,
        timeout: float,  # noqa: ASYNC109 - the transport's per-request budget, by protocol
    ) -> TokenResponse:
        endpoint = self.endpoint or self.token_url
        status, headers, body = await _post(
            transport,
            self.token_url,
            endpoint=endpoint,
            headers=self._headers(),
            data=self._body,
            total_timeout=timeout,
        )
        return parse_token_response(
            status,
            headers,
            body,
            endpoint=endpoint,
            now_wall=self._wall_clock(),
            # and as the request carried it: form-encoded, and inside the Basic credential
            secrets=(
                self._client_secret,
                _form_encode(self._client_secret),
                self._auth_header.removeprefix("Basic "),
            ),
        )

    async def revoke(self, transport: Transport, token: str) -> None:
        if self.revoke_url is None:
            return
        fields = [("token", token), ("token_type_hint", "access_token"), *self._client_fields()]
        await _revoke(
            transport,
            self.revoke_url,
            headers=self._headers(),
            data=urlencode(fields).encode("ascii"),
        )


async def _revoke(
    transport: Transport, url: str, *, headers: Mapping[str, str], data: bytes
) -> None:
    endpoint = display_url(url)
    status, _, _ = await _post(
        transport, url, endpoint=endpoint, headers=headers, data=data, total_timeout=30.0
    )
    if not 200 <= status < 300:
        raise AuthError(
            f"token revocation at {endpoint} answered HTTP {status}",
            endpoint=endpoint,
            status=status,
        )


_VAR_RE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_template(template: str, env: Mapping[str, str]) -> tuple[bytes, tuple[str, ...]]:
    """Expand ``${VAR}`` from ``env``, JSON-escaped; return the body and the expanded values.

    A missing variable, or a result that is not valid JSON, is a ``ConfigError`` that names
    the variable or the position, never a value.
    """
    missing = sorted({m for m in _VAR_RE.findall(template) if m not in env})
    if missing:
        raise ConfigError(
            f"login body template: environment variable {', '.join(missing)} is not set",
            field="login_body",
        )
    values: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        value = env[match.group(1)]
        values.append(value)
        return orjson.dumps(value)[1:-1].decode("utf-8")

    expanded = _VAR_RE.sub(substitute, template)
    try:
        orjson.loads(expanded)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(
            "login body template is not valid JSON after ${VAR} expansion "
            f"(line {exc.lineno}, column {exc.colno})",
            field="login_body",
        ) from None
    return expanded.encode("utf-8"), tuple(values)


class JsonLogin:
    """A JSON login endpoint (the Salesforce Batch Apex style): POST a body, read a token.

    ``body_template`` is JSON where ``${VAR}`` expands from ``env`` (default: the process
    environment), JSON-escaped, once at construction. ``token_field`` and ``expires_field``
    are dotted paths into the response (``"data.session.token"``); the expiry may be seconds,
    an ISO-8601 time or an epoch timestamp (see :func:`expiry_to_lifetime`).
    """

    __slots__ = (
        "_body",
        "_headers",
        "_secrets",
        "_wall_clock",
        "endpoint",
        "expires_field",
        "revoke_url",
        "token_field",
        "url",
    )

    def __init__(
        self,
        url: str,
        *,
        body_template: str = DEFAULT_LOGIN_TEMPLATE,
        token_field: str = "access_token",
        expires_field: str | None = "expires_in",
        env: Mapping[str, str] | None = None,
        revoke_url: str | None = None,
        headers: Mapping[str, str] | None = None,
        wall_clock: WallClock = time.time,
    ) -> None:
        self.url = _check_url(url, "url")
        self.revoke_url = None if revoke_url is None else _check_url(revoke_url, "revoke_url")
        if not token_field:
            raise ConfigError("token_field must not be empty", field="token_field")
        if expires_field == "":
            raise ConfigError("expires_field must not be empty", field="expires_field")
        self.endpoint: str | None = display_url(url)
        self.token_field = token_field
        self.expires_field = expires_field
        self._body, values = expand_template(body_template, os.environ if env is None else env)
        # an echoed body shows the values JSON-escaped, as the body carried them: mask both
        escaped = (orjson.dumps(v)[1:-1].decode("utf-8") for v in values)
        self._secrets = tuple(dict.fromkeys((*values, *escaped)))
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            **(headers or {}),
        }
        self._wall_clock = wall_clock

    def __repr__(self) -> str:
        return (
            f"JsonLogin(url={self.endpoint!r}, body_template='***', "
            f"token_field={self.token_field!r}, expires_field={self.expires_field!r})"
        )

    async def fetch(
        self,
        transport: Transport,
        *,
        timeout: float,  # noqa: ASYNC109 - the transport's per-request budget, by protocol
    ) -> TokenResponse:
        endpoint = self.endpoint or self.url
        status, headers, body = await _post(
            transport,
            self.url,
            endpoint=endpoint,
            headers=self._headers,
            data=self._body,
            total_timeout=timeout,
        )
        return parse_token_response(
            status,
            headers,
            body,
            endpoint=endpoint,
            token_field=self.token_field,
            expires_field=self.expires_field,
            token_type_field=None,
            now_wall=self._wall_clock(),
            secrets=self._secrets,
        )

    async def revoke(self, transport: Transport, token: str) -> None:
        """Log out: POST to ``revoke_url`` with the token as bearer and as an RFC 7009 form."""
        if self.revoke_url is None:
            return
        await _revoke(
            transport,
            self.revoke_url,
            headers={"Content-Type": _FORM, "Authorization": f"Bearer {token}"},
            data=urlencode([("token", token), ("token_type_hint", "access_token")]).encode(),
        )


class StaticToken:
    """A bearer token given up front (``ASYNCSYNC_TOKEN``); it never expires."""

    __slots__ = ("_token",)

    endpoint: str | None = None

    def __init__(self, token: str) -> None:
        problem = token_value_problem(token)
        if problem is not None:
            raise ConfigError(f"static token: {problem}", field="token")
        self._token = token

    def __repr__(self) -> str:
        return "StaticToken(token='***')"

    async def fetch(
        self,
        transport: Transport,
        *,
        timeout: float,  # noqa: ASYNC109 - the transport's per-request budget, by protocol
    ) -> TokenResponse:
        return TokenResponse(self._token, None)

    async def revoke(self, transport: Transport, token: str) -> None:
        return None


TokenCallable = Callable[[], Awaitable["TokenResponse | str | tuple[str, float | None]"]]


class CallableProvider:
    """A provider from the user's ``async () -> TokenResponse | str | (token, expires_in)``.

    Transport errors (aiohttp, ``OSError``, timeouts) it raises are retried; an ``AuthError``
    passes through; any other exception is a permanent ``AuthError`` naming its type only
    (its message may hold anything).
    """

    __slots__ = ("_fn", "endpoint")

    def __init__(self, fn: TokenCallable) -> None:
        if not callable(fn):
            raise ConfigError("the token provider must be an async callable", field="auth")
        self._fn = fn
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        self.endpoint: str | None = f"<callable {name}>"

    def __repr__(self) -> str:
        return f"CallableProvider({self.endpoint})"

    async def fetch(
        self,
        transport: Transport,
        *,
        timeout: float,  # noqa: ASYNC109 - the transport's per-request budget, by protocol
    ) -> TokenResponse:
        try:
            result: Any = await self._fn()
        except AuthError:
            raise
        except Exception as exc:
            # a transport error of the user's own client (aiohttp, a socket, a timeout) is
            # worth retrying; anything else is a permanent failure named by type only
            mapped = (
                exc
                if isinstance(exc, TransportError)
                else map_aiohttp_exception(exc, timeout=timeout)
            )
            if mapped is not None and mapped.retryable:
                raise TransientAuthError(
                    f"token callable {self.endpoint} failed: "
                    + (
                        f"timed out after {timeout:g}s"
                        if isinstance(mapped, RequestTimeout)
                        else str(mapped)
                    ),
                    endpoint=self.endpoint,
                ) from exc
            raise AuthError(
                f"token callable {self.endpoint} raised {type(exc).__name__}",
                endpoint=self.endpoint,
            ) from exc
        if isinstance(result, TokenResponse):
            return result
        if isinstance(result, str):
            return TokenResponse(result, None)
        if (
            isinstance(result, tuple)
            and len(result) == 2
            and isinstance(result[0], str)
            and (result[1] is None or isinstance(result[1], int | float))
            and not isinstance(result[1], bool)
        ):
            lifetime = None if result[1] is None else float(result[1])
            if lifetime is not None and math.isnan(lifetime):
                lifetime = None
            return TokenResponse(result[0], lifetime)
        raise AuthError(
            f"token callable {self.endpoint} returned a {type(result).__name__}; expected "
            "TokenResponse, str or (str, float | None)",
            endpoint=self.endpoint,
        )

    async def revoke(self, transport: Transport, token: str) -> None:
        return None
