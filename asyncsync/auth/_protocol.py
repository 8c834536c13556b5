"""How a token is fetched: the :class:`AuthProvider` protocol, what a fetch returns, how it fails.

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

(:mod:`._oauth2`, :mod:`._login` and :mod:`._simple`; :mod:`._response` reads a token
endpoint's answer, :mod:`._request` sends the request.)

Error contract of :meth:`AuthProvider.fetch`: :class:`TransientAuthError` for what is worth
retrying (connection errors, timeouts, 408, 429, 5xx; with ``Retry-After`` when the server sent
one), :class:`~asyncsync.AuthError` for everything else (bad credentials, 3xx, other 4xx, a
response without a token), and :class:`~asyncsync.ConfigError` when TLS verification fails (a
setting to fix, ``--ca-bundle``, not a fault to retry). No message, ``repr`` or log line holds
a secret or a token: secrets live in slots that ``__repr__`` does not show, and server bodies
appear only as a short redacted excerpt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .._exceptions import AuthError
from .._http import Transport

__all__ = ["AuthProvider", "TokenResponse", "TransientAuthError", "WallClock"]

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
