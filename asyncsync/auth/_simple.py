"""Providers that send no token request of their own.

:class:`StaticToken` serves a token given up front; :class:`CallableProvider` awaits the user's
own coroutine function and reads what it returns.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from .._exceptions import AuthError, ConfigError
from .._http import (
    RequestTimeout,
    Transport,
    TransportError,
    map_aiohttp_exception,
)
from ._protocol import TokenResponse, TransientAuthError
from ._response import token_value_problem

__all__ = ["CallableProvider", "StaticToken"]


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
