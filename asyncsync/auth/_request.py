"""Talking to a token endpoint over HTTP: the URL check, the capped POST, the revocation POST.

Shared by the HTTP providers (:class:`~asyncsync.OAuth2ClientCredentials`,
:class:`~asyncsync.JsonLogin`). Redirects are never followed (credentials must not cross
them); a retryable transport failure becomes a :class:`TransientAuthError`; an answer over
:data:`MAX_RESPONSE_BYTES` is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

from .._exceptions import AuthError, ConfigError
from .._http import (
    RequestTimeout,
    Transport,
    TransportError,
    display_url,
)
from ._protocol import TransientAuthError

__all__ = ["MAX_RESPONSE_BYTES"]

#: Token responses larger than this are refused (a token endpoint answers a few hundred bytes).
MAX_RESPONSE_BYTES: Final = 1 << 20

_FORM: Final = "application/x-www-form-urlencoded"


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
