"""The token manager: one token per lifetime, shared by every sender, fetched single-flight.

Timeline of one token (monotonic clock; ``L`` = lifetime, ``skew' = min(skew, L / 4)``)::

    sent        refresh_at = max(sent + L - skew', sent + min_interval)      hard_at
     |-------------- fast path -------------|--- advisory window ---------------|-- mandatory
                                             get() returns the current token   get() waits for
                                             and starts ONE background refresh  the refresh
                                             (failures back off, not raised)    (errors raised)

``hard_at = max(sent + L, sent + min_interval)``: a fresh token is served for at least
``min_interval`` even when the server calls it short-lived, so a token endpoint that answers
``expires_in: 0`` (or the same token again) cannot cause a fetch per call. When such tokens
keep coming (typically a client clock far off an absolute expiry) that floor doubles with
each one, up to ``skew``; a 401 from the API still refreshes (min_interval after the last
request). A token without a lifetime is kept until :meth:`TokenManager.invalidate` says the
API refused it.

Invariants:

* at most one fetch task exists at any time (``_task``); it is created and cleared without an
  ``await`` in between the check and the assignment, so no lock is needed on one event loop;
* waiters await the task through :func:`asyncio.shield`: cancelling any caller, including the
  one that started the fetch, never cancels the fetch the others wait on;
* token requests are at least ``min_interval`` apart, except for the retries of one fetch,
  which follow the backoff policy;
* a permanent failure (bad credentials...), or any failure that left callers without a
  usable token, is remembered for ``failure_cooldown`` seconds: callers who need a new token
  in that time get the same error without a request. A failed *proactive* refresh is not
  raised at all; it only delays the next one (doubling from ``failure_cooldown``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Protocol

from .._exceptions import AuthError, ConfigError
from .._http import TLSError, Transport, TransportError
from .._retry import Backoff, Budget
from .._transports import map_transport_exception, open_transport, resolve_transport
from ._events import (
    FetchReason,
    TokenEvent,
    TokenObserver,
    TokenRefreshStarted,
    TokenRequested,
)
from ._protocol import AuthProvider, TransientAuthError
from ._response import clamp_lifetime, token_value_problem
from ._simple import StaticToken

__all__ = [
    "DEFAULT_SKEW",
    "MemoryTokenStore",
    "Token",
    "TokenManager",
    "TokenStats",
    "TokenStore",
]

logger = logging.getLogger("asyncsync.token")

DEFAULT_SKEW: Final = 300.0
DEFAULT_FETCH_TIMEOUT: Final = 30.0
DEFAULT_MIN_INTERVAL: Final = 1.0
#: No cap on the number of requests of one fetch: it is bounded by time (``max_fetch_time``).
DEFAULT_MAX_ATTEMPTS: Final[int | None] = None
#: Seconds one fetch keeps retrying transient failures (5xx, 408, 429, timeouts, connection
#: errors) before it fails with an AuthError (exit 3): rides out an auth outage of a minute
#: or two. The CLI's ``--auth-retry-time``.
DEFAULT_MAX_FETCH_TIME: Final = 120.0
DEFAULT_BACKOFF_INITIAL: Final = 0.5
DEFAULT_BACKOFF_MAX: Final = 10.0
DEFAULT_FAILURE_COOLDOWN: Final = 30.0
#: A wait cut to the fetch's deadline may end a float ulp short of it: that is the deadline.
_DEADLINE_SLACK: Final = 1e-3
#: Cap on the pause between two failed *proactive* refreshes (it doubles from the cooldown).
PROACTIVE_BACKOFF_MAX: Final = 600.0

_NEG_INF: Final = -math.inf
_INF: Final = math.inf

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Reason = FetchReason


# --------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True, slots=True, repr=False)
class Token:
    """A token as the senders use it. ``value`` and ``authorization`` never appear in ``repr``.

    ``obtained_at`` and ``expires_at`` are on the manager's monotonic clock; ``obtained_at``
    is when the token request was sent. ``fingerprint`` is a short hash, safe to log.
    """

    value: str
    obtained_at: float
    expires_at: float | None
    token_type: str = "Bearer"
    authorization: str = field(init=False, compare=False)
    fingerprint: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "authorization", f"{self.token_type} {self.value}")
        object.__setattr__(self, "fingerprint", fingerprint(self.value))

    @property
    def lifetime(self) -> float | None:
        """Seconds from request to expiry, or None when the server gave none."""
        return None if self.expires_at is None else self.expires_at - self.obtained_at

    def __repr__(self) -> str:
        return (
            f"Token(value='***', fingerprint={self.fingerprint!r}, "
            f"obtained_at={self.obtained_at!r}, expires_at={self.expires_at!r}, "
            f"token_type={self.token_type!r})"
        )


def fingerprint(value: str) -> str:
    """First 12 hex digits of the token's SHA-256: tells tokens apart in logs, reveals nothing."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class TokenStats:
    """Counters: token HTTP requests (every attempt), refreshes by reason, failed fetches."""

    requests: int = 0
    refreshes_expiry: int = 0
    refreshes_401: int = 0
    failures: int = 0


# --------------------------------------------------------------------------------------------
# Expiry arithmetic (pure; property-tested)


def effective_skew(lifetime: float, skew: float) -> float:
    """How early before expiry a refresh starts: ``min(skew, 25% of the lifetime)``."""
    return min(skew, 0.25 * max(lifetime, 0.0))


def refresh_at(
    obtained_at: float, expires_at: float | None, *, skew: float, min_interval: float
) -> float:
    """When ``get()`` starts a (background) refresh of a token; ``inf`` if it never expires."""
    if expires_at is None:
        return _INF
    lifetime = expires_at - obtained_at
    return max(expires_at - effective_skew(lifetime, skew), obtained_at + min_interval)


def usable_until(obtained_at: float, expires_at: float | None, *, min_interval: float) -> float:
    """Until when ``get()`` may return a token without waiting for a new one."""
    if expires_at is None:
        return _INF
    return max(expires_at, obtained_at + min_interval)


# --------------------------------------------------------------------------------------------
# Shared store seam


class TokenStore(Protocol):
    """A token shared across processes or hosts (memory, file, Redis).

    The manager takes ``lock()``, then ``load()``s: a valid token another process saved is
    adopted; otherwise it fetches and ``save()``s. Expiry is absolute wall-clock time (epoch
    seconds) or None. The store is an optimisation: its errors are logged, never fatal.
    A lock held across processes must expire if its holder dies (a lease longer than the
    worst fetch).
    """

    async def load(self) -> tuple[str, float | None] | None:
        """The stored token and its absolute expiry, or None."""
        ...

    async def save(self, token: str, expires_at_wall: float | None) -> None:
        """Store ``token`` for the other processes."""
        ...

    def lock(self) -> AbstractAsyncContextManager[object]:
        """An exclusive lock around load-fetch-save."""
        ...


class MemoryTokenStore:
    """A :class:`TokenStore` in this process's memory (for tests and several managers)."""

    __slots__ = ("_entry", "_lock", "loads", "saves")

    def __init__(self) -> None:
        self._entry: tuple[str, float | None] | None = None
        self._lock = asyncio.Lock()
        self.loads = 0
        self.saves = 0

    def __repr__(self) -> str:
        return f"MemoryTokenStore(holds_token={self._entry is not None})"

    async def load(self) -> tuple[str, float | None] | None:
        self.loads += 1
        return self._entry

    async def save(self, token: str, expires_at_wall: float | None) -> None:
        self.saves += 1
        self._entry = (token, expires_at_wall)

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[object]:
        async with self._lock:
            yield self

    def lock(self) -> AbstractAsyncContextManager[object]:
        return self._locked()


# --------------------------------------------------------------------------------------------
# The manager


def _copy_error(error: AuthError) -> AuthError:
    """A new exception per caller: re-raising one instance from many tasks tangles tracebacks."""
    return AuthError(
        str(error), endpoint=error.endpoint, status=error.status, permanent=error.permanent
    )


class TokenManager:
    """Hands every sender a valid token; fetches one per lifetime, single-flight.

    ``await get()`` returns the current :class:`Token`; after a 401, ``invalidate(token)``
    with the token that was refused. ``async with`` closes it; ``aclose()`` revokes the
    current token first when ``revoke_on_close`` is set. See the module docstring for the
    timeline and the invariants.

    Retries of one fetch are bounded by time, not by count: transient failures (connection
    errors, timeouts, 408, 429, 5xx) wait :class:`~asyncsync._retry.Backoff` ``uniform(0,
    min(backoff_max, backoff_initial * 2 ** (n - 1)))`` after attempt ``n`` (full jitter,
    capped at 10 s by default), or the server's ``Retry-After``, and are retried until
    ``max_fetch_time`` seconds (default 120) have passed since the fetch's first request (a
    :class:`~asyncsync._retry.Budget`): the last wait is cut short so that one request goes
    out at the deadline, and a ``Retry-After`` beyond the deadline ends the fetch at once.
    ``max_attempts`` (default None: no cap) also bounds the number of requests. Each request
    is bounded by ``fetch_timeout``, so one fetch lasts at most about ``max_fetch_time +
    fetch_timeout`` (a shared token store's lock is sized from that). Bad credentials (400
    ``invalid_client`` / ``invalid_grant``, 401, 403...) are never retried.

    ``transport``: the :class:`~asyncsync._http.Transport` token and revocation requests go
    through (the uploader passes its own), or the name of the kind the manager opens itself
    (``"auto"``, ``"aiohttp"``, ``"reqwest"``; None is ``"auto"``) when it first needs it
    and closes in :meth:`aclose`. ``store``: a :class:`TokenStore` shared with other
    processes. ``revoke_on_close``: revoke the current token in :meth:`aclose`.
    ``observer``: a callable told of each token request and each refresh, with its reason
    (:mod:`asyncsync.auth._events`; for metrics); it runs on the loop and must be quick.
    """

    __slots__ = (
        "_accepted_since",
        "_backoff",
        "_budget",
        "_clock",
        "_closed",
        "_consecutive_failures",
        "_counts_requests",
        "_failure",
        "_failure_cooldown",
        "_failure_until",
        "_failures",
        "_fetch_reason",
        "_fetch_timeout",
        "_hard_at",
        "_last_request_at",
        "_learned_lifetime",
        "_min_interval",
        "_next_proactive_at",
        "_observer",
        "_owns_transport",
        "_proactive_backoff",
        "_provider",
        "_refresh_at",
        "_refreshes_401",
        "_refreshes_expiry",
        "_requests",
        "_revoke_on_close",
        "_revoked",
        "_rng",
        "_short_streak",
        "_skew",
        "_sleep",
        "_stale",
        "_store",
        "_task",
        "_token",
        "_transport",
        "_transport_kind",
        "_wall_clock",
    )

    def __init__(
        self,
        provider: AuthProvider,
        *,
        skew: float = DEFAULT_SKEW,
        store: TokenStore | None = None,
        revoke_on_close: bool = False,
        transport: Transport | str | None = None,
        fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
        max_fetch_time: float = DEFAULT_MAX_FETCH_TIME,
        backoff_initial: float = DEFAULT_BACKOFF_INITIAL,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        failure_cooldown: float = DEFAULT_FAILURE_COOLDOWN,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        wall_clock: Clock = time.time,
        rng: random.Random | None = None,
        observer: TokenObserver | None = None,
    ) -> None:
        for name, value, allow_zero in (
            ("skew", skew, True),
            ("fetch_timeout", fetch_timeout, False),
            ("min_interval", min_interval, True),
            ("max_fetch_time", max_fetch_time, False),
            ("backoff_initial", backoff_initial, True),
            ("backoff_max", backoff_max, True),
            ("failure_cooldown", failure_cooldown, True),
        ):
            if not isinstance(value, int | float) or math.isnan(value) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}", field=name)
            if value == 0 and not allow_zero:
                raise ConfigError(f"{name} must be > 0, got {value!r}", field=name)
        if max_attempts is not None and (
            not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1
        ):
            raise ConfigError(
                f"max_attempts must be None or an int >= 1, got {max_attempts!r}",
                field="max_attempts",
            )
        self._provider = provider
        if transport is None or isinstance(transport, str):
            self._transport_kind = resolve_transport(transport or "auto")  # ConfigError early
            self._transport: Transport | None = None
        else:
            self._transport_kind = "given"
            self._transport = transport
        self._owns_transport = self._transport is None
        self._skew = float(skew)
        self._fetch_timeout = float(fetch_timeout)
        self._min_interval = float(min_interval)
        # the fetch's retry loop: attempts and time, whichever runs out first
        self._budget = Budget(attempts=max_attempts, seconds=float(max_fetch_time))
        self._rng = rng if rng is not None else random.Random()
        self._backoff = Backoff(float(backoff_initial), float(backoff_max), rng=self._rng)
        # failed proactive refreshes: from the cool-down, doubling, at least half of each cap
        self._proactive_backoff = Backoff(
            float(failure_cooldown), PROACTIVE_BACKOFF_MAX, jitter=0.5, rng=self._rng
        )
        self._failure_cooldown = float(failure_cooldown)
        self._revoke_on_close = revoke_on_close
        self._clock = clock
        self._sleep = sleep
        self._store = store
        self._wall_clock = wall_clock

        self._token: Token | None = None
        # The fast path's only test: before _refresh_at, get() has nothing to do but return.
        self._refresh_at = _NEG_INF
        self._hard_at = _NEG_INF
        self._stale = False
        # the newest ``obtained_at`` of a token the API has taken (a 2xx): our credentials work
        self._accepted_since = _NEG_INF
        # without expires_in: the shortest age at which a token the API had taken was refused
        self._learned_lifetime: float | None = None
        self._task: asyncio.Task[Token | AuthError | ConfigError] | None = None
        self._last_request_at = _NEG_INF
        self._next_proactive_at = _NEG_INF
        self._consecutive_failures = 0
        self._short_streak = 0
        self._failure: AuthError | None = None
        self._failure_until = _NEG_INF
        self._closed = False
        self._revoked = False
        self._requests = 0
        # a static token is not fetched from anywhere: it is not a token request
        self._counts_requests = not isinstance(provider, StaticToken)
        self._refreshes_expiry = 0
        self._refreshes_401 = 0
        self._failures = 0
        #: told of each token request and refresh (metrics); never of a token's value
        self._observer = observer
        self._fetch_reason: Reason = "initial"

    def __repr__(self) -> str:
        token = self._token
        return (
            f"TokenManager(provider={self._provider!r}, "
            f"token={'none' if token is None else token.fingerprint}, "
            f"stale={self._stale}, closed={self._closed})"
        )

    # -- public API -------------------------------------------------------------------------

    @property
    def endpoint(self) -> str | None:
        """The provider's endpoint, for messages."""
        return getattr(self._provider, "endpoint", None)

    @property
    def max_fetch_time(self) -> float:
        """Seconds one fetch keeps retrying transient failures (``--auth-retry-time``)."""
        seconds = self._budget.seconds
        assert seconds is not None  # always set here: the budget is time
        return seconds

    @property
    def current(self) -> Token | None:
        """The token ``get()`` would hand out now (possibly stale or expired), or None."""
        return self._token

    @property
    def stats(self) -> TokenStats:
        return TokenStats(
            requests=self._requests,
            refreshes_expiry=self._refreshes_expiry,
            refreshes_401=self._refreshes_401,
            failures=self._failures,
        )

    def ready(self) -> Token | None:
        """The token :meth:`get` would answer at once, or None when it would have to wait
        (none yet, or due for a refresh). The senders' per-request fast path: no coroutine."""
        token = self._token
        if token is not None and self._clock() < self._refresh_at:
            return token
        return None

    async def get(self) -> Token:
        """A token valid beyond the refresh skew; waits only when there is none usable.

        Raises ``AuthError`` when no token can be obtained (bad credentials, endpoint down
        past the retry budget, or within the cool-down after either), ``ConfigError`` when a
        setting is wrong (TLS verification of the endpoint failed), ``RuntimeError`` once
        closed.
        """
        token = self._token
        if token is not None and self._clock() < self._refresh_at:
            return token
        return await self._get_slow()

    def accepted(self, token: Token) -> None:
        """The API took ``token`` (a 2xx): our credentials work, at least up to its
        ``obtained_at`` (see :meth:`refused_by_expiry`). Cheap: senders call it on success."""
        if token.obtained_at > self._accepted_since:
            self._accepted_since = token.obtained_at

    def refused_by_expiry(self, token: Token) -> bool:
        """Whether a 401 for ``token`` is most likely its expiry (refresh and resend), rather
        than the API refusing our credentials (end the run).

        Expiry when the token's known lifetime has run out; when the API has taken this
        token or a newer one (it worked, so it ran out, or was revoked: a new one is the
        answer); or, when the server gives no lifetime, when the token is at least 90 % of
        the age at which an earlier token the API had taken was first refused (a token that
        expired while its request was in flight, or during its batch's retries). A token
        refused before it was ever taken, younger than that, is a refusal.
        """
        now = self._clock()
        if token.expires_at is not None:
            return now >= token.expires_at
        if self._accepted_since >= token.obtained_at:
            return True
        life = self._learned_lifetime
        return life is not None and now - token.obtained_at >= 0.9 * life

    def invalidate(self, token: Token) -> bool:
        """The API refused ``token`` (401): stale it if it is still current; True if it was.

        A 401 for a token that has since been replaced is the stale-401 race: nothing
        happens, the caller retries with the current token.
        """
        current = self._token
        if current is None or self._closed or current.value != token.value:
            return False
        if current.expires_at is None and self._accepted_since >= current.obtained_at:
            # a token that had worked, refused at this age: the server's lifetime, learned
            age = self._clock() - current.obtained_at
            if self._learned_lifetime is None or age < self._learned_lifetime:
                self._learned_lifetime = age
        if not self._stale:
            logger.info(
                "token %s invalidated after a 401",
                current.fingerprint,
                extra={"event": "token_invalidated", "fingerprint": current.fingerprint},
            )
        self._stale = True
        self._refresh_at = _NEG_INF
        return True

    async def aclose(self) -> None:
        """Stop: cancel a fetch in flight, revoke the token if asked (once), close the
        transport if the manager opened it."""
        if self._closed:
            return
        self._closed = True
        self._refresh_at = _NEG_INF
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        token = self._token
        if self._revoke_on_close and token is not None and not self._revoked:
            self._revoked = True
            await self._revoke(token)
        if self._owns_transport and self._transport is not None:
            transport, self._transport = self._transport, None
            await transport.aclose()

    async def __aenter__(self) -> TokenManager:
        if self._closed:
            raise RuntimeError("Cannot open a TokenManager that has been closed.")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- slow path ---------------------------------------------------------------------------

    async def _get_slow(self) -> Token:
        if self._closed:
            raise RuntimeError("Cannot get a token, as the TokenManager has been closed.")
        now = self._clock()
        token = self._token
        if token is not None and not self._stale and now < self._hard_at:
            # Advisory window: serve the current token; at most one background refresh, and
            # none while a failed one is backing off.
            if self._task is None:
                if now >= self._next_proactive_at:
                    self._start_fetch("proactive")
                    self._refresh_at = self._hard_at
                else:
                    self._refresh_at = min(self._next_proactive_at, self._hard_at)
            return token
        task = self._task
        if task is None:
            failure = self._failure
            if failure is not None and now < self._failure_until:
                raise _copy_error(failure) from failure
            reason: Reason = "initial" if token is None else ("401" if self._stale else "expired")
            task = self._start_fetch(reason)
        return await self._wait(task)

    def _start_fetch(self, reason: Reason) -> asyncio.Task[Token | AuthError | ConfigError]:
        if reason == "401":
            self._refreshes_401 += 1
        elif reason != "initial":
            self._refreshes_expiry += 1
        self._fetch_reason = reason
        if self._observer is not None and reason != "initial":
            self._notify(TokenRefreshStarted(reason))
        task = asyncio.get_running_loop().create_task(
            self._run_fetch(reason), name=f"asyncsync-token-fetch-{reason}"
        )
        self._task = task
        return task

    async def _wait(self, task: asyncio.Task[Token | AuthError | ConfigError]) -> Token:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and self._closed and (current is None or not current.cancelling()):
                raise RuntimeError(
                    "The TokenManager was closed while waiting for a token."
                ) from None
            raise
        if isinstance(result, AuthError):
            raise _copy_error(result) from result
        if isinstance(result, TLSError):  # keeps its kind: the CLI exits 3 for it
            raise TLSError(str(result), url=result.url) from result
        if isinstance(result, ConfigError):
            raise ConfigError(str(result), field=result.field) from result
        return result

    async def _run_fetch(self, reason: Reason) -> Token | AuthError | ConfigError:
        """The one fetch in flight. Never raises (but CancelledError): waiters get the result."""
        try:
            wait = self._last_request_at + self._min_interval - self._clock()
            if wait > 0:
                await self._sleep(wait)
            token = await self._obtain()
        except AuthError as error:
            self._on_failure(error, reason)
            return error
        except ConfigError as error:
            # a setting no retry can fix (TLS verification): every waiter gets it as it is
            self._failures += 1
            logger.error(
                "token %s failed: %s", "fetch" if reason == "initial" else "refresh", error
            )
            return error
        except Exception as exc:
            # A bug in a provider or store: still release every waiter with an AuthError.
            wrapped = AuthError(
                f"obtaining a token from {self.endpoint or 'the provider'} failed: "
                f"{type(exc).__name__}",
                endpoint=self.endpoint,
            )
            wrapped.__cause__ = exc
            self._on_failure(wrapped, reason)
            return wrapped
        else:
            self._install(token, reason)
            return token
        finally:
            self._task = None

    def _install(self, token: Token, reason: str) -> None:
        lifetime = token.lifetime
        if lifetime is not None and lifetime < self._min_interval:
            self._short_streak += 1
        else:
            self._short_streak = 0
        # Tokens that keep arriving "already expired" (a client clock hours off an absolute
        # expiry, a server answering expires_in: 0) are served for a doubling floor, up to
        # the skew: FIELD-NOTES 11, no renew loop. A real expiry still surfaces as a 401.
        floor = self._min_interval
        if self._short_streak > 1:
            floor = min(
                self._min_interval * 2.0 ** min(self._short_streak - 1, 30),
                max(self._skew, self._min_interval),
            )
        if self._short_streak == 1:
            logger.warning(
                "token endpoint %s gave token %s a lifetime of %.1fs (a clock off, or a "
                "broken expiry?); serving each such token for at least %.1fs",
                self.endpoint or "-",
                token.fingerprint,
                lifetime,
                floor,
            )
        self._token = token
        self._stale = False
        self._refresh_at = refresh_at(
            token.obtained_at, token.expires_at, skew=self._skew, min_interval=floor
        )
        self._hard_at = usable_until(token.obtained_at, token.expires_at, min_interval=floor)
        if self._store is not None and token.expires_at is not None:
            # FIELD-NOTES 14: processes sharing a token would all reach for the store's lock
            # at the same second; spread them over the first tenth of the window.
            spread = 0.1 * (self._hard_at - self._refresh_at)
            self._refresh_at -= self._rng.uniform(0.0, spread)
            self._refresh_at = max(self._refresh_at, token.obtained_at + floor)
        self._next_proactive_at = _NEG_INF
        self._consecutive_failures = 0
        self._failure = None
        self._failure_until = _NEG_INF
        refresh_in = self._refresh_at - self._clock()
        logger.info(
            "token %s obtained (reason=%s, lifetime=%s, refresh %s)",
            token.fingerprint,
            reason,
            "unknown" if lifetime is None else f"{lifetime:.0f}s",
            "on 401 only" if math.isinf(refresh_in) else f"in {refresh_in:.0f}s",
            extra={"event": "token_obtained", "reason": reason, "fingerprint": token.fingerprint},
        )

    def _on_failure(self, error: AuthError, reason: str) -> None:
        self._failures += 1
        self._consecutive_failures += 1
        now = self._clock()
        token = self._token
        still_usable = token is not None and not self._stale and now < self._hard_at
        if error.permanent or not still_usable:
            # Somebody needs a token and cannot get one; or the credentials are refused.
            # Either way later callers fail fast instead of hammering the endpoint.
            self._failure = error
            self._failure_until = now + self._failure_cooldown
        if still_usable:
            # FIELD-NOTES 7: keep serving the token we have; try again later, with backoff.
            pause = self._proactive_backoff.delay(min(self._consecutive_failures, 31))
            pause = max(pause, self._min_interval)
            if error.permanent:
                pause = max(pause, self._failure_cooldown)
            self._next_proactive_at = now + pause
            self._refresh_at = min(self._next_proactive_at, self._hard_at)
            logger.warning(
                "proactive token refresh failed (%s); keeping token %s for up to %.0fs, "
                "next try in %.0fs",
                error,
                token.fingerprint if token else "-",
                self._hard_at - now,
                pause,
            )
        else:
            logger.error(
                "token %s failed: %s", "fetch" if reason == "initial" else "refresh", error
            )

    def _notify(self, event: TokenEvent) -> None:
        observer = self._observer
        if observer is None:
            return
        try:
            observer(event)
        except Exception as exc:  # an observer's bug must not fail a token fetch
            logger.warning("token observer failed: %s", type(exc).__name__)

    # -- obtaining a token -------------------------------------------------------------------

    async def _obtain(self) -> Token:
        """Obtain a new token: from the shared store if one holds a usable token, else fetch.

        With a store, load-fetch-save happens under its lock, and the store is re-read after
        taking it: another process may have refreshed while we waited.
        """
        store = self._store
        if store is None:
            return await self._fetch()
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(store.lock())
            except Exception as exc:
                logger.warning(
                    "token store lock failed (%s); fetching without it", type(exc).__name__
                )
                return await self._fetch()
            adopted = await self._load_from_store(store)
            if adopted is not None:
                return adopted
            token = await self._fetch()
            await self._save_to_store(store, token)
            return token
        raise AssertionError("unreachable")  # pragma: no cover

    async def _load_from_store(self, store: TokenStore) -> Token | None:
        try:
            entry = await store.load()
        except Exception as exc:
            logger.warning("token store load failed (%s); fetching", type(exc).__name__)
            return None
        if entry is None:
            return None
        value, expires_at_wall = entry
        current = self._token
        if token_value_problem(value) is not None or (
            current is not None and current.value == value
        ):
            # Never adopt the token we are replacing: it is expiring or was refused.
            return None
        now = self._clock()
        expires_at: float | None = None
        if expires_at_wall is not None:
            remaining = expires_at_wall - self._wall_clock()
            if math.isnan(remaining) or remaining <= self._min_interval:
                return None
            expires_at = now + clamp_lifetime(remaining)
        token = Token(value, obtained_at=now, expires_at=expires_at)
        logger.info("token %s adopted from the shared store", token.fingerprint)
        return token

    async def _save_to_store(self, store: TokenStore, token: Token) -> None:
        expires_at_wall = None
        if token.expires_at is not None:
            expires_at_wall = self._wall_clock() + (token.expires_at - self._clock())
        try:
            await store.save(token.value, expires_at_wall)
        except Exception as exc:
            logger.warning("token store save failed (%s)", type(exc).__name__)

    def _open_transport(self) -> Transport:
        transport = self._transport
        if transport is None:
            # created here, not in __init__: a transport needs the running event loop
            transport = self._transport = open_transport(
                self._transport_kind, connections=4, timeout=self._fetch_timeout, ssl=None
            )
            self._owns_transport = True
        return transport

    async def _fetch(self) -> Token:
        """Request a token from the provider, retrying transient failures within the budget."""
        transport = self._open_transport()
        budget = self._budget
        started = self._clock()
        attempts = 0
        while True:
            attempts += 1
            if self._observer is not None and self._counts_requests:
                self._notify(TokenRequested(self._fetch_reason, attempts))
            try:
                return await self._attempt(transport)
            except TransientAuthError as error:
                elapsed = self._clock() - started
                left = budget.left(elapsed)
                server_wait = error.retry_after
                # The budget is time (attempts only when max_attempts is set). Give up when it
                # is spent (a millisecond of slack: a wait cut to the deadline may land a
                # float ulp short of it), or when the server asks for a pause past the
                # deadline: sleeping only to give up would waste the caller's time.
                if (
                    budget.exhausted(attempts, elapsed)
                    or left <= _DEADLINE_SLACK
                    or (server_wait is not None and server_wait > left)
                ):
                    raise AuthError(
                        f"{error} (gave up after {attempts} attempt{'s' if attempts != 1 else ''}"
                        f" in {elapsed:.0f}s)",
                        endpoint=error.endpoint,
                        status=error.status,
                        permanent=False,
                    ) from error
                # the last wait is cut short: one more request goes out at the deadline
                wait = server_wait if server_wait is not None else self._backoff.delay(attempts)
                wait = min(wait, left)
                logger.debug(
                    "token request attempt %d failed (%s); retrying in %.2fs",
                    attempts,
                    error,
                    wait,
                )
            await self._sleep(wait)

    async def _attempt(self, transport: Transport) -> Token:
        """One token request. Lifetime counts from when it was sent (FIELD-NOTES 11)."""
        self._requests += self._counts_requests
        sent_at = self._clock()
        self._last_request_at = sent_at
        endpoint = self.endpoint
        where = endpoint or "the provider"
        try:
            async with asyncio.timeout(self._fetch_timeout):
                response = await self._provider.fetch(transport, timeout=self._fetch_timeout)
        except AuthError:
            raise
        except TimeoutError as exc:  # our own bound: a provider that ignored its timeout
            raise TransientAuthError(
                f"token request to {where} failed: timed out after {self._fetch_timeout:g}s",
                endpoint=endpoint,
            ) from exc
        except Exception as exc:
            # a provider of the user's own may let its client's errors through
            mapped = exc if isinstance(exc, TransportError) else map_transport_exception(exc)
            if mapped is None:
                raise
            if not mapped.retryable:
                raise mapped from exc
            raise TransientAuthError(
                f"token request to {where} failed: {mapped}", endpoint=endpoint
            ) from exc
        problem = token_value_problem(response.access_token)
        if problem is not None:
            raise AuthError(f"{where}: {problem}", endpoint=endpoint)
        lifetime = response.expires_in
        if lifetime is not None:
            lifetime = None if math.isnan(lifetime) else clamp_lifetime(lifetime)
        return Token(
            response.access_token,
            obtained_at=sent_at,
            expires_at=None if lifetime is None else sent_at + lifetime,
            token_type=response.token_type or "Bearer",
        )

    async def _revoke(self, token: Token) -> None:
        transport = self._transport
        if transport is None:
            if not self._owns_transport:
                return
            transport = self._open_transport()
        try:
            async with asyncio.timeout(self._fetch_timeout):
                await self._provider.revoke(transport, token.value)
        except Exception as exc:
            logger.warning("revoking token %s failed: %s", token.fingerprint, _safe(exc))
        else:
            logger.info(
                "token %s revoked",
                token.fingerprint,
                extra={"event": "token_revoked", "fingerprint": token.fingerprint},
            )


def _safe(exc: BaseException) -> str:
    """An exception for a log line: our own errors are secret-free, others by type only."""
    if isinstance(exc, AuthError | TransportError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return type(exc).__name__
