"""What the shared token stores have in common: their errors, keys, entries and lock timing.

A store (:mod:`._file_store`, :mod:`._redis_store`; :func:`~._stores.open_token_store` picks
one) is an optimisation, never the source of truth: every failure is a
:class:`TokenStoreError`, which the manager logs before fetching a token itself. The key is a
hash of the token URL and the client id (:func:`store_key`), never of a secret; a lock is held
for a whole fetch (:func:`lock_span`) and polled with jitter (``_POLL``).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from typing import Final

from .._exceptions import AsyncSyncError, ConfigError
from .._retry import Backoff
from ._manager import DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_FETCH_TIME

__all__ = [
    "DEFAULT_FILE_WAIT",
    "DEFAULT_LEASE",
    "TokenStoreError",
    "TokenStoreLockTimeout",
    "TokenStoreUnavailable",
    "lock_span",
    "store_key",
]


def lock_span(fetch_timeout: float, retry_time: float) -> float:
    """How long a live process may hold a store's lock: its whole fetch, retries included.

    A fetch retries a failing token endpoint for up to ``retry_time`` seconds (the manager's
    ``max_fetch_time``, ``--auth-retry-time``), then sends one last request bounded by
    ``fetch_timeout``; one more ``fetch_timeout`` covers the store's load and save around it.
    A lock shorter than that lets a second process fetch during an outage, doubling the load
    on a token endpoint that is already failing.
    """
    return retry_time + 2 * fetch_timeout


#: Redis lease and file lock wait with the manager's defaults (30 s requests, 120 s of
#: retries): longer than its worst fetch. The Redis lease is also renewed while held.
DEFAULT_LEASE: Final = lock_span(DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_FETCH_TIME)
DEFAULT_FILE_WAIT: Final = DEFAULT_LEASE
#: Polling a held lock: the pause starts here, grows by half each round (with jitter) ...
POLL_MIN: Final = 0.02
#: ... up to this.
POLL_MAX: Final = 0.25
#: ... each pause drawn from [pause / 2, pause * 1.5]: waiters do not poll in step after a
#: release, and none polls at once (the retry formula of every loop, asyncsync._retry)
_POLL: Final = Backoff(1.5 * POLL_MIN, 1.5 * POLL_MAX, multiplier=1.5, jitter=2 / 3)

_ALLOWED_FORMS: Final = "file:PATH, redis://HOST:PORT/DB or rediss://HOST:PORT/DB"


# --------------------------------------------------------------------------------------------
# Errors and keys


class TokenStoreError(AsyncSyncError):
    """The shared token store failed; the manager logs it and fetches a token itself."""


class TokenStoreUnavailable(TokenStoreError):
    """The store cannot be reached, read or written (Redis down, file unreadable...)."""


class TokenStoreLockTimeout(TokenStoreError):
    """Another process held the store's lock longer than ``wait_timeout``."""


def store_key(endpoint: str, client_id: str | None, *, scope: str | None = None) -> str:
    """The store key of one set of credentials: a hash of token URL and client id.

    32 hex digits of SHA-256 over ``endpoint`` and ``client_id`` (for a JSON login, pass the
    user name, never the password): processes with the same endpoint and client share a
    token, and the key reveals neither, nor ever depends on a secret. ``scope`` (with any
    audience or resource that changes what the token grants) keeps tokens of one client
    with different grants apart; None leaves the key as without it.
    """
    if not isinstance(endpoint, str) or not endpoint:
        raise ConfigError("the token store key needs the token endpoint URL", field="token_store")
    parts = ["asyncsync-token-store-v1", endpoint, client_id or ""]
    if scope:
        parts.append(scope)
    material = "\x00".join(parts)
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not key or any(c.isspace() for c in key):
        raise ConfigError("a token store key must be a non-empty string without spaces")
    return key


def _check_seconds(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{name} must be seconds > 0, got {value!r}", field=name)
    return float(value)


def _entry(doc: object, now_wall: float) -> tuple[str, float | None] | None:
    """A stored ``{"token", "expires_at"}`` as ``(token, expiry)``; None if unusable or expired."""
    if not isinstance(doc, dict):
        return None
    token = doc.get("token")
    expires_at = doc.get("expires_at")
    if not isinstance(token, str) or not token:
        return None
    if expires_at is None:
        return token, None
    if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
        return None
    expires_at = float(expires_at)
    if not math.isfinite(expires_at) or expires_at <= now_wall:
        return None
    return token, expires_at


def _wall_expiry(expires_at_wall: float | None) -> float | None:
    """The expiry to store: None (unknown or infinite) or a finite epoch time."""
    if expires_at_wall is None or math.isinf(expires_at_wall):
        return None
    return float(expires_at_wall)


async def _pause(attempt: int, deadline: float) -> None:
    """Sleep the jittered pause after ``attempt`` failed polls, never past ``deadline``."""
    left = deadline - time.monotonic()
    await asyncio.sleep(max(0.0, min(_POLL.delay(attempt), left)))
