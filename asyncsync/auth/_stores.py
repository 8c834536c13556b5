"""Shared token stores: one token for every process and host that uses the same credentials.

``--token-store file:PATH`` and ``--token-store redis://HOST:PORT/DB`` (or ``rediss://``) give
:class:`~asyncsync.auth._manager.TokenManager` a :class:`~asyncsync.auth._manager.TokenStore`:
under the store's lock it re-reads the store, adopts a token another process saved, or fetches
one and saves it. The store is an optimisation, never the source of truth: every failure here
(an unreachable Redis, an unreadable file, a lock not obtained in time) is raised as a
:class:`~._store_common.TokenStoreError`, which the manager logs before fetching a token
itself. This module picks the store ``--token-store`` names (:func:`open_token_store`);
what the stores share (errors, keys, lock timing) is in :mod:`._store_common`.

Locks are leases: they end when their holder dies, so a crashed process cannot stall the
others (FIELD-NOTES 14). A **file** store (:mod:`._file_store`) takes ``fcntl.flock`` on a
sidecar ``PATH.lock``, which the kernel releases when the holder exits, however it exits; a
**Redis** store (:mod:`._redis_store`) takes ``SET lock NX PX lease``, renewed while held and
released by compare-and-delete.

Either way, a wait for the lock is bounded (``wait_timeout``): past it the store gives up
with a warning and the manager fetches without the lock (at worst one extra token request).
All file I/O runs in worker threads (FIELD-NOTES 16); a Redis store opens a short-lived
client per operation, with 1-2 s connect and socket timeouts and no retries.

Secrets (FIELD-NOTES 12): the key is a hash of the token URL and the client id, never of
the secret; a token file is created ``0600`` and a group- or world-accessible one is refused;
no token appears in a log line, a message or a ``repr``.
"""

from __future__ import annotations

from typing import Final

from .._exceptions import ConfigError
from .._http import display_url
from ._file_store import FileTokenStore
from ._manager import DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_FETCH_TIME, TokenStore
from ._redis_store import RedisTokenStore
from ._store_common import _ALLOWED_FORMS, _check_seconds, lock_span, store_key

__all__ = ["MIN_LEASE", "open_token_store"]

#: The shortest lease :func:`open_token_store` gives (short --timeout and --auth-retry-time):
#: a lease renewed every third of it must not run out between two renewals on a busy host.
MIN_LEASE: Final = 60.0

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
