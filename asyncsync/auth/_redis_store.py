"""A token store in Redis shared by processes on many hosts: :class:`RedisTokenStore`.

``--token-store redis://HOST:PORT/DB`` (or ``rediss://``). The lock is ``SET lock NX PX
lease`` with a random owner value; while held, the lease is renewed every third of it
(compare-and-``PEXPIRE``), so a fetch that takes longer than the lease keeps its lock while a
dead holder's lease runs out within one lease (FIELD-NOTES 14). The release is a
compare-and-delete script: a holder whose lease has already expired never deletes the lock of
the process that took over. Each operation opens a short-lived client, with 1-2 s connect and
socket timeouts and no retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import orjson

from .._exceptions import ConfigError
from .._http import display_url
from ._manager import DEFAULT_FETCH_TIMEOUT
from ._store_common import (
    _ALLOWED_FORMS,
    DEFAULT_LEASE,
    TokenStoreLockTimeout,
    TokenStoreUnavailable,
    _check_key,
    _check_seconds,
    _entry,
    _pause,
    _wall_expiry,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["DEFAULT_PREFIX", "RedisTokenStore"]

logger = logging.getLogger("asyncsync.store")


#: Redis connect and per-command socket timeouts: an unreachable store must cost little.
DEFAULT_CONNECT_TIMEOUT: Final = 1.5
DEFAULT_SOCKET_TIMEOUT: Final = 2.0
#: Redis key prefix; the lock lives at ``<key>:lock``.
DEFAULT_PREFIX: Final = "asyncsync:token:"

# KEYS[1] = lock key, ARGV[1] = owner: delete only if the lock is still ours.
_RELEASE: Final = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("del", KEYS[1])
end
return 0
"""
# KEYS[1] = lock key, ARGV[1] = owner, ARGV[2] = lease (ms): extend only if still ours.
_RENEW: Final = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("pexpire", KEYS[1], ARGV[2])
end
return 0
"""


# --------------------------------------------------------------------------------------------
# Redis store


def _redis_module() -> Any:
    try:
        import redis.asyncio
    except ImportError:
        raise ConfigError(
            "--token-store redis://... needs the redis package: pip install 'asyncsync[redis]'",
            field="token_store",
        ) from None
    return redis


def _store_failures() -> tuple[type[BaseException], ...]:
    """What a Redis operation raises when the server is unreachable, slow or refuses."""
    from redis.exceptions import RedisError

    return (RedisError, OSError)


class RedisTokenStore:
    """A :class:`~asyncsync.auth._manager.TokenStore` in Redis, shared by processes on many hosts.

    The entry ``<prefix><key>`` holds ``{"token", "expires_at"}`` as JSON with a TTL equal to
    the token's remaining lifetime (``PX``), so Redis drops expired tokens by itself. The
    lock ``<prefix><key>:lock`` is a lease (``SET NX PX lease``, renewed every ``lease / 3``
    while held, released by compare-and-delete); a waiter polls with jitter for up to
    ``wait_timeout`` seconds (default: one lease for a dead holder's to run out, plus one
    fetch timeout), then raises :class:`TokenStoreLockTimeout` with a warning.

    Each operation opens its own client (a lock keeps one until released): no connection
    outlives its event loop, and nothing needs closing. Connection failures and timeouts
    (``connect_timeout``, ``socket_timeout``, no retries) raise
    :class:`TokenStoreUnavailable` with a warning; the manager then fetches the token itself.
    """

    __slots__ = (
        "_connect_timeout",
        "_key",
        "_lease",
        "_socket_timeout",
        "_url",
        "_wait_timeout",
        "_where",
        "lock_key",
        "redis_key",
    )

    def __init__(
        self,
        url: str,
        key: str,
        *,
        lease: float = DEFAULT_LEASE,
        wait_timeout: float | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self._key = _check_key(key)
        self._lease = _check_seconds("lease", lease)
        if wait_timeout is None:
            wait_timeout = self._lease + DEFAULT_FETCH_TIMEOUT
        self._wait_timeout = _check_seconds("wait_timeout", wait_timeout)
        self._connect_timeout = _check_seconds("connect_timeout", connect_timeout)
        self._socket_timeout = _check_seconds("socket_timeout", socket_timeout)
        self._url = _check_redis_url(url)
        self._where = display_url(url)  # without a password
        redis = _redis_module()
        try:
            # Parses the URL and its options; connects to nothing.
            redis.asyncio.ConnectionPool.from_url(url)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"--token-store {self._where}: invalid Redis URL ({type(exc).__name__})",
                field="token_store",
            ) from None
        self.redis_key = f"{prefix}{self._key}"
        self.lock_key = f"{self.redis_key}:lock"

    @property
    def key(self) -> str:
        return self._key

    @property
    def lease(self) -> float:
        return self._lease

    @property
    def wait_timeout(self) -> float:
        return self._wait_timeout

    def __repr__(self) -> str:
        return f"RedisTokenStore(url={self._where!r}, key={self._key!r}, lease={self._lease:g})"

    # -- TokenStore --------------------------------------------------------------------------

    async def load(self) -> tuple[str, float | None] | None:
        """This key's token and expiry, or None (absent, expired, or not a token entry)."""
        try:
            async with self._client() as client:
                async with asyncio.timeout(self._socket_timeout):
                    raw = await client.get(self.redis_key)
        except _store_failures() as exc:
            raise self._unavailable("load", exc) from exc
        if raw is None:
            return None
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            logger.warning("token store %s: the entry is not valid JSON; ignoring it", self._where)
            return None
        return _entry(doc, time.time())

    async def save(self, token: str, expires_at_wall: float | None) -> None:
        """Store the token with a TTL of its remaining lifetime (none if it has no expiry)."""
        expires_at = _wall_expiry(expires_at_wall)
        ttl_ms: int | None = None
        if expires_at is not None:
            ttl_ms = math.floor((expires_at - time.time()) * 1000.0)
            if ttl_ms <= 0:
                logger.debug("token store %s: not saving an expired token", self._where)
                return
        value = orjson.dumps({"token": token, "expires_at": expires_at})
        try:
            async with self._client() as client:
                async with asyncio.timeout(self._socket_timeout):
                    await client.set(self.redis_key, value, px=ttl_ms)
        except _store_failures() as exc:
            raise self._unavailable("save", exc) from exc

    def lock(self) -> AbstractAsyncContextManager[object]:
        """The lease lock around load-fetch-save."""
        return self._locked()

    async def aclose(self) -> None:
        """Nothing to close: every operation opens and closes its own client."""

    # -- plumbing ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[Redis]:
        redis = _redis_module()
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        options: dict[str, Any] = {
            "socket_connect_timeout": self._connect_timeout,
            # Every command runs under our own ``asyncio.timeout`` instead: on Python 3.11
            # redis-py's socket timeout goes through ``asyncio.wait_for``, which can swallow
            # a cancellation that races a completed send (CPython gh-86296).
            "socket_timeout": None,
            "retry": Retry(NoBackoff(), 0),
            "client_name": "asyncsync-token-store",
        }
        with contextlib.suppress(ImportError):  # redis >= 7: skip a probe per connection
            from redis.maint_notifications import MaintNotificationsConfig

            options["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
        client: Redis = redis.asyncio.Redis.from_url(self._url, **options)
        try:
            yield client
        finally:
            try:
                await client.aclose()
            except Exception as exc:  # closing must never turn a success into a failure
                logger.debug("token store %s: close failed (%s)", self._where, type(exc).__name__)

    def _unavailable(self, what: str, exc: BaseException) -> TokenStoreUnavailable:
        logger.warning(
            "token store %s: %s failed (%s); fetching without the store",
            self._where,
            what,
            type(exc).__name__,
        )
        return TokenStoreUnavailable(
            f"token store {self._where}: {what} failed: {type(exc).__name__}"
        )

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[object]:
        owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"
        lease_ms = max(1, math.ceil(self._lease * 1000.0))
        async with self._client() as client:
            try:
                await self._acquire(client, owner, lease_ms)
            except _store_failures() as exc:
                raise self._unavailable("lock", exc) from exc
            except BaseException:
                # Cancelled: our SET may have reached Redis before the cancellation reached
                # us. Compare-and-delete is harmless if the lock is not ours.
                await self._release(client, owner, quiet=True)
                raise
            renewer = asyncio.get_running_loop().create_task(
                self._renew(client, owner, lease_ms), name="asyncsync-token-store-lease"
            )
            try:
                yield self
            finally:
                renewer.cancel()
                await asyncio.wait([renewer])
                await self._release(client, owner)

    async def _acquire(self, client: Redis, owner: str, lease_ms: int) -> None:
        deadline = time.monotonic() + self._wait_timeout
        polls = 0
        while True:
            async with asyncio.timeout(self._socket_timeout):
                acquired = await client.set(self.lock_key, owner, nx=True, px=lease_ms)
            if acquired:
                return
            if time.monotonic() >= deadline:
                logger.warning(
                    "token store %s: another process held the lock for more than %.0fs; "
                    "fetching a token without it",
                    self._where,
                    self._wait_timeout,
                )
                raise TokenStoreLockTimeout(
                    f"token store {self._where}: lock not obtained within {self._wait_timeout:g}s"
                )
            polls += 1
            await _pause(polls, deadline)

    async def _renew(self, client: Redis, owner: str, lease_ms: int) -> None:
        """Extend our lease every third of it while the fetch runs; stop once it is lost."""
        while True:
            await asyncio.sleep(self._lease / 3.0)
            try:
                async with asyncio.timeout(self._socket_timeout):
                    kept = await client.eval(_RENEW, 1, self.lock_key, owner, lease_ms)
            except _store_failures() as exc:
                logger.debug(
                    "token store %s: renewing the lock lease failed (%s)",
                    self._where,
                    type(exc).__name__,
                )
                continue
            if not kept:
                logger.warning(
                    "token store %s: the lock lease expired while held; another process "
                    "may fetch a token at the same time",
                    self._where,
                )
                return

    async def _release(self, client: Redis, owner: str, *, quiet: bool = False) -> None:
        """Compare-and-delete; never raises an Exception (the manager would fail a good
        fetch): a lock left behind ends with its lease."""
        try:
            async with asyncio.timeout(self._socket_timeout):
                released = await client.eval(_RELEASE, 1, self.lock_key, owner)
        except Exception as exc:
            if not quiet:
                logger.warning(
                    "token store %s: releasing the lock failed (%s); it ends with its lease "
                    "within %.0fs",
                    self._where,
                    type(exc).__name__,
                    self._lease,
                )
            return
        if not released and not quiet:
            logger.warning(
                "token store %s: the lock lease had expired before its release; the lock "
                "(now another process's, if any) is left alone",
                self._where,
            )


def _check_redis_url(url: object) -> str:
    problem = _redis_url_problem(url)
    if problem is not None:
        raise ConfigError(
            f"--token-store: {problem}; expected {_ALLOWED_FORMS}", field="token_store"
        )
    assert isinstance(url, str)
    return url


def _redis_url_problem(url: object) -> str | None:
    if not isinstance(url, str):
        return "not a string"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"invalid Redis URL {display_url(url)!r}"
    if parts.scheme not in ("redis", "rediss"):
        return f"not a redis:// or rediss:// URL: {display_url(url)!r}"
    if not parts.hostname:
        return f"no host in {display_url(url)!r}"
    if port == 0:
        return f"port 0 in {display_url(url)!r}"
    db = parts.path.strip("/")
    if db and not db.isdigit():
        return f"the database must be a number, got {db!r} in {display_url(url)!r}"
    return None
