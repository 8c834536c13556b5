"""Reading a token endpoint's answer: a :class:`TokenResponse`, or an ``AuthError`` that says why.

:func:`parse_token_response` classifies one response (2xx with a token, transient 408/429/5xx
with ``Retry-After``, or a permanent refusal); :func:`expiry_to_lifetime` turns any expiry a
server may send (seconds, epoch seconds or milliseconds, ISO-8601) into a lifetime, once, at
receipt; :func:`lookup_field` reads dotted paths. Whatever the server sent is quoted only as
a short redacted excerpt (:func:`redacted_excerpt`), never with a secret or a token in it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Final

import orjson

from .._exceptions import AuthError
from .._http import display_url
from .._retry import parse_retry_after
from ._protocol import TokenResponse, TransientAuthError

__all__ = [
    "MAX_LIFETIME",
    "absolute_to_lifetime",
    "clamp_lifetime",
    "expiry_to_lifetime",
    "lookup_field",
    "parse_token_response",
    "redacted_excerpt",
    "token_value_problem",
]

logger = logging.getLogger("asyncsync.auth")

#: Longest lifetime believed from a server; anything longer is capped (a year).
MAX_LIFETIME: Final = 365.0 * 24 * 3600
#: A number above this in an expiry field is an epoch timestamp in seconds, not a lifetime.
EPOCH_THRESHOLD: Final = 1e9
#: A number above this is an epoch timestamp in milliseconds (1e11 s would be the year 5138).
EPOCH_MS_THRESHOLD: Final = 1e11
#: Longest server-body excerpt put into an error message.
EXCERPT_CHARS: Final = 160
EXCERPT_SCAN: Final = 4096

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
