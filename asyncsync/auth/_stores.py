"""Shared token stores: one token for every process and host that uses the same credentials.

``--token-store file:PATH`` and ``--token-store redis://HOST:PORT/DB`` (or ``rediss://``) give
:class:`~asyncsync.auth._manager.TokenManager` a :class:`~asyncsync.auth._manager.TokenStore`:
under the store's lock it re-reads the store, adopts a token another process saved, or fetches
one and saves it. The store is an optimisation, never the source of truth: every failure here
(an unreachable Redis, an unreadable file, a lock not obtained in time) is raised as a
:class:`TokenStoreError`, which the manager logs before fetching a token itself.

Locks are leases: they end when their holder dies, so a crashed process cannot stall the
others (FIELD-NOTES 14).

* **file**: ``fcntl.flock`` on a sidecar ``PATH.lock``. The kernel releases an ``flock`` when
  the last descriptor of its open file is closed, which happens when the holding process
  exits, however it exits (``SIGKILL`` included): the lease ends with the holder's life.
  Caveats: a child *forked* while the lock is held inherits the descriptor and with it the
  lock; and the file must be on a local file system (``flock`` over NFS is emulated, and
  slow). One lock per file: credentials sharing one file also share its lock.
* **Redis**: ``SET lock NX PX lease`` with a random owner value; while held, the lease is
  renewed every third of it (compare-and-``PEXPIRE``), so a fetch that takes longer than the
  lease keeps its lock while a dead holder's lease runs out within one lease. The release is
  a compare-and-delete script: a holder whose lease has already expired never deletes the
  lock of the process that took over.

Either way, a wait for the lock is bounded (``wait_timeout``): past it the store gives up
with a warning and the manager fetches without the lock (at worst one extra token request).
All file I/O runs in worker threads (FIELD-NOTES 16); a Redis store opens a short-lived
client per operation, with 1-2 s connect and socket timeouts and no retries.

Secrets (FIELD-NOTES 12): the key is a hash of the token URL and the client id, never of
the secret; a token file is created ``0600`` and a group- or world-accessible one is refused;
no token appears in a log line, a message or a ``repr``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import math
import os
import secrets
import socket
import stat
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import anyio.to_thread
import orjson

from .._atomic import atomic_write
from .._exceptions import AsyncSyncError, ConfigError
from .._http import display_url
from .._retry import Backoff
from ._manager import DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_FETCH_TIME, TokenStore

if sys.platform != "win32":
    import fcntl

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "DEFAULT_LEASE",
    "FileTokenStore",
    "RedisTokenStore",
    "TokenStoreError",
    "TokenStoreLockTimeout",
    "TokenStoreUnavailable",
    "lock_span",
    "open_token_store",
    "store_key",
]

logger = logging.getLogger("asyncsync.store")


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
#: The shortest lease :func:`open_token_store` gives (short --timeout and --auth-retry-time):
#: a lease renewed every third of it must not run out between two renewals on a busy host.
MIN_LEASE: Final = 60.0
#: Redis connect and per-command socket timeouts: an unreachable store must cost little.
DEFAULT_CONNECT_TIMEOUT: Final = 1.5
DEFAULT_SOCKET_TIMEOUT: Final = 2.0
#: Redis key prefix; the lock lives at ``<key>:lock``.
DEFAULT_PREFIX: Final = "asyncsync:token:"
#: Polling a held lock: the pause starts here, grows by half each round (with jitter) ...
POLL_MIN: Final = 0.02
#: ... up to this.
POLL_MAX: Final = 0.25
#: ... each pause drawn from [pause / 2, pause * 1.5]: waiters do not poll in step after a
#: release, and none polls at once (the retry formula of every loop, asyncsync._retry)
_POLL: Final = Backoff(1.5 * POLL_MIN, 1.5 * POLL_MAX, multiplier=1.5, jitter=2 / 3)
#: A token file larger than this is not a token file.
MAX_FILE_BYTES: Final = 1 << 20
FILE_VERSION: Final = 1

_ALLOWED_FORMS: Final = "file:PATH, redis://HOST:PORT/DB or rediss://HOST:PORT/DB"

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


# --------------------------------------------------------------------------------------------
# File store


def _refuse_if_shared(path: Path, st: os.stat_result) -> None:
    """ConfigError if the token file is not a regular file private to its owner."""
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(
            f"--token-store file:{path}: not a regular file; give the path of a token file",
            field="token_store",
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"--token-store file:{path}: the file is accessible to group or others "
            f"(mode {mode:04o}) and holds bearer tokens; refusing to use it. "
            f"Fix: chmod 600 {path}",
            field="token_store",
        )


def _try_flock(fd: int) -> bool:
    """One non-blocking attempt at the exclusive lock (in a worker thread)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def _unlock(fd: int) -> None:
    # Runs in ``finally`` on the event loop, on purpose: an await here could be skipped by a
    # cancellation and leak a held lock for the life of the process. Unlocking and closing a
    # lock file that holds no data are two syscalls that do not wait on the disk.
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class _LockAttempt:
    """Hands a locked descriptor from the polling thread to the event loop, exactly once.

    The loop's side may be cancelled at any moment (the thread is abandoned, not waited
    for): whichever side comes second under ``guard`` closes the descriptor, so a lock
    nobody will release can never stay behind in a live process.
    """

    __slots__ = ("abandoned", "fd", "guard", "wake")

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.wake = threading.Event()
        self.abandoned = False
        self.fd: int | None = None

    def hand_over(self, fd: int) -> bool:
        """From the thread: True if the loop's side takes ``fd``; False if it is gone."""
        with self.guard:
            if self.abandoned:
                return False
            self.fd = fd
            return True

    def abandon(self) -> int | None:
        """From the loop: stop the thread; the descriptor it handed over already, if any."""
        with self.guard:
            self.abandoned = True
            fd, self.fd = self.fd, None
        self.wake.set()
        return fd


class FileTokenStore:
    """A :class:`~asyncsync.auth._manager.TokenStore` in a JSON file shared by local processes.

    The file maps store keys to ``{"token", "expires_at", "saved_at"}`` (expiry in epoch
    seconds, or null), so several credentials may share one file; a save drops expired
    entries. It is created ``0600`` whatever the umask, written atomically (temp file and
    rename), and refused with a :class:`~asyncsync.ConfigError` when it exists and is
    accessible to group or others: at construction, and again at every read.

    ``lock()`` takes ``fcntl.flock`` on ``PATH.lock`` (see the module docstring: the kernel
    releases it when the holder dies), polling with jitter from a worker thread; after
    ``wait_timeout`` seconds it raises :class:`TokenStoreLockTimeout` with a warning.
    """

    __slots__ = ("_key", "_lock_path", "_wait_timeout", "path")

    def __init__(
        self, path: str | os.PathLike[str], key: str, *, wait_timeout: float = DEFAULT_FILE_WAIT
    ) -> None:
        if sys.platform == "win32":
            raise ConfigError(
                "--token-store file:PATH needs POSIX file locks; use redis://HOST:PORT/DB",
                field="token_store",
            )
        self._key = _check_key(key)
        self._wait_timeout = _check_seconds("wait_timeout", wait_timeout)
        self.path = Path(os.path.abspath(Path(path).expanduser()))
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        # One stat at construction (configuration time): a shared file is a usage error,
        # reported before the run starts rather than as a warning in the middle of it.
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ConfigError(
                f"--token-store file:{self.path}: cannot read it: {exc.strerror}",
                field="token_store",
            ) from None
        else:
            _refuse_if_shared(self.path, st)

    @property
    def key(self) -> str:
        return self._key

    @property
    def wait_timeout(self) -> float:
        return self._wait_timeout

    def __repr__(self) -> str:
        return f"FileTokenStore(path={str(self.path)!r}, key={self._key!r})"

    # -- TokenStore --------------------------------------------------------------------------

    async def load(self) -> tuple[str, float | None] | None:
        """This key's token and expiry, or None (no file, no entry, expired, unreadable)."""
        return await anyio.to_thread.run_sync(self._load_sync)

    async def save(self, token: str, expires_at_wall: float | None) -> None:
        """Store this key's token; other keys' live entries are kept."""
        await anyio.to_thread.run_sync(self._save_sync, token, expires_at_wall)

    def lock(self) -> AbstractAsyncContextManager[object]:
        """The cross-process lock around load-fetch-save."""
        return self._locked()

    async def aclose(self) -> None:
        """Nothing to close: every operation opens and closes its own files."""

    # -- lock ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[object]:
        attempt = _LockAttempt()
        try:
            acquired = await anyio.to_thread.run_sync(
                self._acquire_sync, attempt, abandon_on_cancel=True
            )
        except BaseException:
            # Cancelled (or failed) while the thread polls: it must not keep a lock nobody
            # will release. Either we take its descriptor here, or it sees ``abandoned``.
            fd = attempt.abandon()
            if fd is not None:
                _unlock(fd)
            raise
        if not acquired or attempt.fd is None:
            logger.warning(
                "token store %s: another process held the lock for more than %.0fs; "
                "fetching a token without it",
                self.path,
                self._wait_timeout,
            )
            raise TokenStoreLockTimeout(
                f"token store {self.path}: lock not obtained within {self._wait_timeout:g}s"
            )
        fd = attempt.fd
        try:
            yield self
        finally:
            _unlock(fd)

    def _acquire_sync(self, attempt: _LockAttempt) -> bool:
        """In a worker thread: poll the flock with jittered, growing pauses until it is ours
        (True, ``attempt.fd`` set), the wait times out, or the caller gives up (False)."""
        deadline = time.monotonic() + self._wait_timeout
        try:
            self._lock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd: int | None = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise self._unavailable("cannot open its lock file", exc) from exc
        assert fd is not None
        try:
            polls = 0
            while not attempt.abandoned:
                try:
                    locked = _try_flock(fd)
                except OSError as exc:
                    raise self._unavailable("cannot lock its lock file", exc) from exc
                if locked:
                    if not attempt.hand_over(fd):
                        return False  # the caller is gone; ``finally`` drops the lock
                    fd = None  # the event loop's now
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                polls += 1
                attempt.wake.wait(min(_POLL.delay(polls), left))
            return False
        finally:
            if fd is not None:
                os.close(fd)  # also drops a lock taken but not handed over

    # -- file I/O (worker threads) -------------------------------------------------------------

    def _unavailable(self, what: str, exc: OSError) -> TokenStoreUnavailable:
        reason = exc.strerror or type(exc).__name__
        logger.warning("token store %s: %s: %s", self.path, what, reason)
        return TokenStoreUnavailable(f"token store {self.path}: {what}: {reason}")

    def _read_entries(self) -> dict[str, Any]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise self._unavailable("cannot open it", exc) from exc
        try:
            with os.fdopen(fd, "rb") as fh:
                _refuse_if_shared(self.path, os.fstat(fh.fileno()))
                raw = fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise self._unavailable("cannot read it", exc) from exc
        try:
            if len(raw) > MAX_FILE_BYTES:
                raise ValueError("too large")
            doc = orjson.loads(raw)
            if not isinstance(doc, dict) or not isinstance(doc.get("tokens"), dict):
                raise ValueError("not a token file")
        except ValueError:
            # Never quote the content: it may hold tokens.
            logger.warning(
                "token store %s is not a valid token file; ignoring it (the next save replaces it)",
                self.path,
            )
            return {}
        tokens: dict[str, Any] = doc["tokens"]
        return tokens

    def _load_sync(self) -> tuple[str, float | None] | None:
        return _entry(self._read_entries().get(self._key), time.time())

    def _save_sync(self, token: str, expires_at_wall: float | None) -> None:
        now = time.time()
        expires_at = _wall_expiry(expires_at_wall)
        # Read-modify-write: callers hold the lock (the manager saves only under it), so no
        # other process rewrites the file in between.
        entries = {
            key: doc
            for key, doc in self._read_entries().items()
            if key != self._key and _entry(doc, now) is not None
        }
        if expires_at is None or expires_at > now:
            entries[self._key] = {"token": token, "expires_at": expires_at, "saved_at": now}
        data = orjson.dumps({"version": FILE_VERSION, "tokens": entries})
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(self.path, data, mode=0o600)
        except OSError as exc:
            raise self._unavailable("cannot write it", exc) from exc


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


# --------------------------------------------------------------------------------------------
# --token-store


def open_token_store(
    spec: str,
    *,
    endpoint: str,
    client_id: str | None,
    scope: str | None = None,
    fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
    auth_retry_time: float = DEFAULT_MAX_FETCH_TIME,
) -> TokenStore:
    """The store ``--token-store`` names, keyed by :func:`store_key` of the credentials
    (``endpoint``: the token URL; ``client_id``: the client, or a login's user name).

    ``fetch_timeout`` and ``auth_retry_time`` are the manager's (``fetch_timeout`` and
    ``max_fetch_time``): a lock is held for a whole fetch, so both locks last longer than
    the worst one, ``span = max(60, auth_retry_time + 2 * fetch_timeout)`` seconds
    (:func:`lock_span`). ``file:PATH`` gives a :class:`FileTokenStore` that waits up to
    ``span`` for its lock; ``redis://HOST:PORT/DB`` or ``rediss://...`` a
    :class:`RedisTokenStore` whose lease is ``span`` (its waiters wait one lease plus one
    request). Anything else is a ConfigError.
    """
    fetch_timeout = _check_seconds("fetch_timeout", fetch_timeout)
    auth_retry_time = _check_seconds("auth_retry_time", auth_retry_time)
    span = max(MIN_LEASE, lock_span(fetch_timeout, auth_retry_time))
    key = store_key(endpoint, client_id, scope=scope)
    text = spec.strip() if isinstance(spec, str) else ""
    if text.startswith("file:"):
        path = text[len("file:") :]
        if not path:
            raise ConfigError(
                f"--token-store: file: needs a path; expected {_ALLOWED_FORMS}",
                field="token_store",
            )
        return FileTokenStore(path, key, wait_timeout=span)
    if text.startswith(("redis://", "rediss://")):
        return RedisTokenStore(text, key, lease=span, wait_timeout=span + fetch_timeout)
    shown = display_url(text) if "@" in text else text[:200]
    raise ConfigError(
        f"--token-store: expected {_ALLOWED_FORMS}, got {shown!r}", field="token_store"
    )
