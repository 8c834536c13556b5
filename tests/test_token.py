"""TokenManager: single-flight, refresh windows, failures, cancellation, secrecy.

Every test runs against the real aiohttp token server in ``token_server.py`` on loopback;
the manager's clock and sleep are a fake, so hours of token lifetime take microseconds.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import statistics
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncsync import AuthError, ConfigError
from asyncsync._http import AiohttpTransport
from asyncsync._reqwest import ReqwestTransport
from asyncsync._transports import open_transport
from asyncsync.auth._login import JsonLogin
from asyncsync.auth._manager import (
    DEFAULT_BACKOFF_MAX,
    DEFAULT_MAX_FETCH_TIME,
    MemoryTokenStore,
    Token,
    TokenManager,
    TokenStats,
    effective_skew,
    refresh_at,
    usable_until,
)
from asyncsync.auth._oauth2 import OAuth2ClientCredentials
from asyncsync.auth._protocol import TokenResponse
from asyncsync.auth._response import MAX_LIFETIME, absolute_to_lifetime, expiry_to_lifetime
from asyncsync.auth._simple import CallableProvider, StaticToken

try:
    from tests.token_server import MISSING, TokenServer, json_response
except ImportError:  # tests/ is not a package: pytest put it on sys.path itself
    from token_server import MISSING, TokenServer, json_response  # type: ignore[no-redef]

SECRET = "s3cr3t-Value-7d1e"
WALL = 1_700_000_000.0


class FakeClock:
    """A monotonic clock the test moves; its sleep advances it instead of waiting."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def at_least(self, moment: float) -> None:
        self.now = max(self.now, moment)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


#: the transport kind managers open (token and revocation requests), set by ``server``
_KIND = ["auto"]


@pytest.fixture
async def server(transport_kind: str) -> AsyncIterator[TokenServer]:
    """The token server; every test using it runs once per transport."""
    _KIND[0] = transport_kind
    async with TokenServer(client_secret=SECRET) as srv:
        yield srv


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def oauth(server: TokenServer, **kwargs: Any) -> OAuth2ClientCredentials:
    kwargs.setdefault("wall_clock", lambda: WALL)
    return OAuth2ClientCredentials(server.url(), server.client_id, SECRET, **kwargs)


def manager(server: TokenServer, clock: FakeClock, **kwargs: Any) -> TokenManager:
    provider = kwargs.pop("provider", None) or oauth(server)
    kwargs.setdefault("transport", _KIND[0])
    return TokenManager(provider, clock=clock, sleep=clock.sleep, **kwargs)


async def settle(mgr: TokenManager) -> None:
    """Wait until no fetch is in flight (background refreshes included)."""
    while (task := mgr._task) is not None:
        await asyncio.wait([task])


# -- single flight -----------------------------------------------------------------------------


async def test_500_concurrent_gets_on_an_empty_manager_make_one_request(
    server: TokenServer, clock: FakeClock
) -> None:
    """FIELD-NOTES 1-3: the herd shares one fetch; waiters re-use it; never two in flight."""
    server.latency = 0.05
    async with manager(server, clock) as mgr:
        tokens = await asyncio.gather(*(mgr.get() for _ in range(500)))
        assert {t.value for t in tokens} == {server.issued[0]}
        assert server.token_requests == 1
        assert server.max_in_flight == 1
        assert mgr.stats == TokenStats(requests=1)
        assert tokens[0].authorization == f"Bearer {server.issued[0]}"


async def test_500_concurrent_gets_after_expiry_make_one_request(
    server: TokenServer, clock: FakeClock
) -> None:
    """After real expiry the herd again shares exactly one refresh."""
    server.latency = 0.05
    async with manager(server, clock) as mgr:
        first = await mgr.get()
        clock.advance(3601)
        tokens = await asyncio.gather(*(mgr.get() for _ in range(500)))
        assert {t.value for t in tokens} == {server.issued[1]}
        assert tokens[0] != first
        assert server.token_requests == 2
        assert server.max_in_flight == 1
        assert mgr.stats.refreshes_expiry == 1


async def test_valid_token_is_served_without_requests(
    server: TokenServer, clock: FakeClock
) -> None:
    """Outside the refresh window get() returns the same token and makes no request."""
    async with manager(server, clock) as mgr:
        first = await mgr.get()
        for _ in range(100):
            clock.advance(30)  # 3000 s: still before refresh_at = 3300 s
            assert await mgr.get() is first
        assert server.token_requests == 1


async def test_proactive_refresh_happens_once_in_the_window_without_blocking(
    server: TokenServer, clock: FakeClock
) -> None:
    """Inside the skew window callers keep the current token while one refresh runs."""
    server.latency = 0.05
    async with manager(server, clock) as mgr:
        first = await mgr.get()
        clock.advance(3300 + 1)  # lifetime 3600, skew 300
        tokens = await asyncio.gather(*(mgr.get() for _ in range(200)))
        assert {t.value for t in tokens} == {first.value}  # nobody waited
        await settle(mgr)
        assert server.token_requests == 2
        assert (await mgr.get()).value == server.issued[1]
        assert mgr.stats.refreshes_expiry == 1


# -- 401s --------------------------------------------------------------------------------------


async def test_401_storm_makes_one_request(server: TokenServer, clock: FakeClock) -> None:
    """200 workers refused with the same token invalidate it and get(): one new token."""
    server.latency = 0.02
    async with manager(server, clock) as mgr:
        refused = await mgr.get()

        async def worker() -> Token:
            mgr.invalidate(refused)
            return await mgr.get()

        tokens = await asyncio.gather(*(worker() for _ in range(200)))
        assert {t.value for t in tokens} == {server.issued[1]}
        assert server.token_requests == 2
        assert server.max_in_flight == 1
        assert mgr.stats.refreshes_401 == 1


async def test_invalidating_an_old_token_makes_no_request(
    server: TokenServer, clock: FakeClock
) -> None:
    """FIELD-NOTES 4: a 401 for a token already replaced is a no-op."""
    async with manager(server, clock) as mgr:
        old = await mgr.get()
        clock.advance(3601)
        new = await mgr.get()
        assert mgr.invalidate(old) is False
        assert await mgr.get() is new
        assert server.token_requests == 2
        assert mgr.stats.refreshes_401 == 0


# -- failures ----------------------------------------------------------------------------------


async def test_bad_secret_fails_after_one_request_and_then_fails_fast(
    server: TokenServer, clock: FakeClock
) -> None:
    """FIELD-NOTES 8: permanent error at once; the next 100 get() make no request."""
    provider = OAuth2ClientCredentials(server.url(), server.client_id, "wrong-" + SECRET)
    async with manager(server, clock, provider=provider, failure_cooldown=30) as mgr:
        with pytest.raises(AuthError) as info:
            await mgr.get()
        assert info.value.status == 401
        assert info.value.permanent
        assert info.value.endpoint == server.url()
        assert SECRET not in str(info.value)
        assert server.token_requests == 1
        for _ in range(100):
            with pytest.raises(AuthError, match="invalid_client"):
                await mgr.get()
        assert server.token_requests == 1
        clock.advance(31)  # cool-down over: one more try
        with pytest.raises(AuthError):
            await mgr.get()
        assert server.token_requests == 2
        assert mgr.stats.failures == 2


async def test_permanent_error_reaches_every_waiter(server: TokenServer, clock: FakeClock) -> None:
    """All concurrent callers get the AuthError of the one failed fetch."""
    server.latency = 0.02
    server.script = [json_response(400, {"error": "invalid_grant"})]
    async with manager(server, clock) as mgr:
        results = await asyncio.gather(*(mgr.get() for _ in range(50)), return_exceptions=True)
        assert all(isinstance(r, AuthError) and r.status == 400 for r in results)
        assert server.token_requests == 1


async def test_outage_in_the_proactive_window_keeps_the_token_and_backs_off(
    server: TokenServer, clock: FakeClock
) -> None:
    """FIELD-NOTES 7: 5xx while the token is still valid: keep it, back off, fail at expiry."""
    async with manager(server, clock, max_attempts=3, failure_cooldown=30) as mgr:
        start = clock.now
        current = await mgr.get()
        server.fail_status = 503
        for second in range(3300, 3600):  # every second of the 300 s window
            clock.at_least(start + second)
            assert await mgr.get() is current
            await settle(mgr)
        proactive = server.token_requests - 1
        # Cycles 30 s apart at least, doubling; each at most 3 attempts.
        assert 3 <= proactive <= 6 * 3
        assert proactive % 3 == 0
        assert mgr.stats.failures == proactive // 3

        clock.at_least(start + 3601)  # really expired now: the error surfaces
        with pytest.raises(AuthError) as info:
            await mgr.get()
        assert info.value.status == 503
        assert not info.value.permanent
        assert "3 attempts" in str(info.value)
        before = server.token_requests
        server.fail_status = None  # endpoint back, but we are in the cool-down
        with pytest.raises(AuthError):
            await mgr.get()
        assert server.token_requests == before
        clock.advance(31)
        assert (await mgr.get()).value == server.issued[-1]


async def test_permanent_error_in_the_proactive_window_keeps_the_token(
    server: TokenServer, clock: FakeClock
) -> None:
    """Credentials revoked mid-run: the valid token is served until it really expires."""
    async with manager(server, clock, failure_cooldown=30) as mgr:
        current = await mgr.get()
        server.client_secret = "rotated"
        clock.advance(3400)
        assert await mgr.get() is current
        await settle(mgr)
        assert server.token_requests == 2
        for _ in range(10):
            clock.advance(1)
            assert await mgr.get() is current
            await settle(mgr)
        assert server.token_requests == 2  # no retry inside the cool-down
        clock.advance(300)
        with pytest.raises(AuthError, match="invalid_client"):
            await mgr.get()


async def test_transient_errors_are_retried_with_jittered_backoff(
    server: TokenServer, clock: FakeClock
) -> None:
    """503, 502, then success: three requests, waits inside the full-jitter bounds."""
    server.script = [json_response(503, {}), json_response(502, b"bad gateway")]
    async with manager(server, clock, backoff_initial=0.5) as mgr:
        token = await mgr.get()
        assert token.value == server.issued[0]
        assert server.token_requests == 3
        assert len(clock.sleeps) == 2
        assert 0 <= clock.sleeps[0] <= 0.5
        assert 0 <= clock.sleeps[1] <= 1.0
        assert mgr.stats.requests == 3


async def test_retry_after_is_honoured_on_429(server: TokenServer, clock: FakeClock) -> None:
    """429 with Retry-After: 7 waits exactly 7 s before the next request."""
    server.script = [json_response(429, {"error": "slow_down"}, {"Retry-After": "7"})]
    async with manager(server, clock) as mgr:
        await mgr.get()
        assert clock.sleeps == [7.0]
        assert server.token_requests == 2


async def test_retry_after_beyond_the_budget_gives_up_at_once(
    server: TokenServer, clock: FakeClock
) -> None:
    """A Retry-After longer than max_fetch_time is not slept through."""
    server.fail_status, server.retry_after = 429, "3600"
    async with manager(server, clock, max_fetch_time=60) as mgr:
        with pytest.raises(AuthError, match="429"):
            await mgr.get()
        assert clock.sleeps == []
        assert server.token_requests == 1


async def test_attempts_are_bounded(server: TokenServer, clock: FakeClock) -> None:
    """A token endpoint down for good: max_attempts requests, then an AuthError."""
    server.fail_status = 500
    async with manager(server, clock, max_attempts=4) as mgr:
        with pytest.raises(AuthError, match="4 attempts"):
            await mgr.get()
        assert server.token_requests == 4


async def test_hung_endpoint_times_out_and_frees_every_waiter(
    server: TokenServer, clock: FakeClock
) -> None:
    """FIELD-NOTES 9: the fetch has its own timeout; all waiters get AuthError, none hang."""
    server.hang = True
    async with manager(server, clock, fetch_timeout=0.2, max_attempts=2) as mgr:
        began = time.monotonic()
        results = await asyncio.gather(*(mgr.get() for _ in range(50)), return_exceptions=True)
        assert time.monotonic() - began < 3
        assert all(isinstance(r, AuthError) for r in results)
        assert "timed out" in str(results[0])
        assert server.token_requests == 2
        assert mgr._task is None


async def test_unreachable_endpoint_is_transient_then_fails(clock: FakeClock) -> None:
    """Connection refused is retried within the budget, then an AuthError."""
    async with TokenServer() as srv:
        url = srv.url()
    provider = OAuth2ClientCredentials(url, "id", SECRET)
    async with TokenManager(provider, clock=clock, sleep=clock.sleep, max_attempts=2) as mgr:
        with pytest.raises(AuthError, match="2 attempts") as info:
            await mgr.get()
        assert not info.value.permanent
        assert mgr.stats.requests == 2


# -- an auth outage: retries bounded by time, not by count -------------------------------------


def outage_sleep(clock: FakeClock, server: TokenServer, until: float) -> Any:
    """The manager's sleep: moves the fake clock; the endpoint answers again from ``until``."""

    async def sleep(seconds: float) -> None:
        await clock.sleep(seconds)
        if clock.now >= until:
            server.fail_status = None

    return sleep


async def test_a_60s_token_endpoint_outage_is_ridden_out(
    server: TokenServer,
) -> None:
    """Default settings, 503 for a simulated 60 s, then tokens; 40 seeds of the jitter.

    Every caller gets the one token; the waiting adds up to 60 s and never more than one
    backoff cap (10 s) beyond it; 12-24 token requests (the full-jitter schedule: 0.5 s
    doubling to a 10 s cap), never two at once.
    """
    assert (DEFAULT_MAX_FETCH_TIME, DEFAULT_BACKOFF_MAX) == (120.0, 10.0)
    counts: list[int] = []
    for seed in range(40):
        rng = random.Random(seed)
        clock = FakeClock()
        server.fail_status = 503
        before = server.token_requests
        sleep = outage_sleep(clock, server, until=clock.now + 60)
        async with TokenManager(oauth(server), clock=clock, sleep=sleep, rng=rng) as mgr:
            tokens = await asyncio.gather(*(mgr.get() for _ in range(20)))
            assert {t.value for t in tokens} == {server.issued[-1]}
            requests = server.token_requests - before
            assert mgr.stats == TokenStats(requests=requests)  # one fetch, no failure
        waited = sum(clock.sleeps)
        assert 60 <= waited <= 60 + DEFAULT_BACKOFF_MAX, (seed, waited)
        assert len(clock.sleeps) == requests - 1
        assert all(0 <= w <= DEFAULT_BACKOFF_MAX for w in clock.sleeps)
        assert 12 <= requests <= 26, (seed, requests)
        counts.append(requests)
    assert server.max_in_flight == 1
    assert 14 <= statistics.median(counts) <= 20


async def test_an_outage_past_the_time_budget_is_an_auth_error(
    server: TokenServer, clock: FakeClock
) -> None:
    """503 for good: the fetch gives up when 120 s (default) have passed, not after N tries;
    the last wait is cut to end at the deadline, and one request goes out there."""
    server.fail_status = 503
    async with manager(server, clock) as mgr:
        with pytest.raises(AuthError) as info:
            await mgr.get()
        assert info.value.status == 503 and not info.value.permanent
        assert "in 120s" in str(info.value)
        assert sum(clock.sleeps) == pytest.approx(120.0)
        assert server.token_requests == len(clock.sleeps) + 1
        assert 20 <= server.token_requests <= 40
        before = server.token_requests
        with pytest.raises(AuthError):  # within the cool-down: no request
            await mgr.get()
        assert server.token_requests == before


async def test_the_auth_retry_budget_is_configurable(server: TokenServer, clock: FakeClock) -> None:
    """max_fetch_time=30: a 45 s outage fails after 30 s; the next fetch, after the
    cool-down, finds the endpoint back."""
    server.fail_status = 503
    async with manager(server, clock, max_fetch_time=30, failure_cooldown=20) as mgr:
        with pytest.raises(AuthError, match="in 30s"):
            await mgr.get()
        assert sum(clock.sleeps) == pytest.approx(30.0)
        clock.advance(20)
        server.fail_status = None
        assert (await mgr.get()).value == server.issued[-1]


async def test_retry_after_paces_an_outage(server: TokenServer, clock: FakeClock) -> None:
    """503 with Retry-After: 20 for 60 s: requests at 0, 20, 40 and 60 s, nothing between."""
    server.fail_status, server.retry_after = 503, "20"
    async with TokenManager(
        oauth(server), clock=clock, sleep=outage_sleep(clock, server, until=clock.now + 60)
    ) as mgr:
        await mgr.get()
    assert clock.sleeps == [20.0, 20.0, 20.0]
    assert server.token_requests == 4


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (None, 401),  # wrong client secret: the server's own invalid_client
        (json_response(400, {"error": "invalid_client"}), 400),
        (json_response(400, {"error": "invalid_grant"}), 400),
        (json_response(403, {"error": "access_denied"}), 403),
    ],
)
async def test_bad_credentials_are_not_retried_within_the_time_budget(
    server: TokenServer, clock: FakeClock, answer: Any, status: int
) -> None:
    """The time budget is for outages only: refused credentials end at once, one request,
    and the callers after it fail fast without a request."""
    if answer is None:
        server.client_secret = "rotated"
    else:
        server.script = [answer] * 10
    async with manager(server, clock) as mgr:
        results = await asyncio.gather(*(mgr.get() for _ in range(20)), return_exceptions=True)
        assert all(isinstance(r, AuthError) and r.permanent for r in results)
        assert {r.status for r in results if isinstance(r, AuthError)} == {status}
        for _ in range(5):
            clock.advance(1)
            with pytest.raises(AuthError):
                await mgr.get()
    assert server.token_requests == 1 and clock.sleeps == []


# -- cancellation and lifecycle ----------------------------------------------------------------


async def test_cancelled_initiator_does_not_break_the_others(
    server: TokenServer, clock: FakeClock
) -> None:
    """FIELD-NOTES 15: cancelling the caller that started the fetch does not cancel it."""
    server.latency = 0.2
    async with manager(server, clock) as mgr:
        initiator = asyncio.create_task(mgr.get())
        await asyncio.sleep(0.05)  # the fetch is in flight, started by the initiator
        others = [asyncio.create_task(mgr.get()) for _ in range(50)]
        await asyncio.sleep(0)
        initiator.cancel()
        tokens = await asyncio.gather(*others)
        with pytest.raises(asyncio.CancelledError):
            await initiator
        assert {t.value for t in tokens} == {server.issued[0]}
        assert server.token_requests == 1


async def test_all_waiters_cancelled_still_installs_the_token(
    server: TokenServer, clock: FakeClock
) -> None:
    """Even if every caller gives up, the fetch completes and later callers reuse it."""
    server.latency = 0.1
    async with manager(server, clock) as mgr:
        callers = [asyncio.create_task(mgr.get()) for _ in range(5)]
        await asyncio.sleep(0.02)
        for caller in callers:
            caller.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
        await settle(mgr)
        assert (await mgr.get()).value == server.issued[0]
        assert server.token_requests == 1


async def test_close_while_waiting_raises_runtime_error_not_cancelled(
    server: TokenServer, clock: FakeClock
) -> None:
    """Closing the manager mid-fetch: waiters get RuntimeError; later use is RuntimeError."""
    server.latency = 1.0
    mgr = manager(server, clock)
    waiter = asyncio.create_task(mgr.get())
    await asyncio.sleep(0.05)
    await mgr.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await waiter
    with pytest.raises(RuntimeError, match="closed"):
        await mgr.get()
    with pytest.raises(RuntimeError):
        async with mgr:
            pass
    await mgr.aclose()  # idempotent


async def test_revocation_happens_once_on_close(server: TokenServer, clock: FakeClock) -> None:
    """revoke_on_close: one RFC 7009 request with the current token, even if closed twice."""
    provider = oauth(server, revoke_url=server.url("/revoke"))
    mgr = manager(server, clock, provider=provider, revoke_on_close=True)
    token = await mgr.get()
    await mgr.aclose()
    await mgr.aclose()
    (seen,) = server.revoked
    assert seen.form == {"token": token.value, "token_type_hint": "access_token"}
    assert seen.headers["Authorization"].startswith("Basic ")


async def test_revocation_errors_are_logged_not_raised(
    server: TokenServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing revocation endpoint does not make aclose() raise."""
    provider = oauth(server, revoke_url=server.url("/missing"))
    mgr = manager(server, clock, provider=provider, revoke_on_close=True)
    token = await mgr.get()
    await mgr.aclose()
    assert "revoking token" in caplog.text
    assert token.value not in caplog.text


async def test_given_transport_is_not_closed(server: TokenServer, clock: FakeClock) -> None:
    """A caller's transport stays open; the manager closes only the one it created, of the
    kind it was asked for."""
    transport = open_transport(_KIND[0], connections=2, timeout=30)
    async with manager(server, clock, transport=transport) as mgr:
        await mgr.get()
    assert not transport.closed  # type: ignore[attr-defined]
    await transport.aclose()
    owned = manager(server, clock)
    await owned.get()
    created = owned._transport
    await owned.aclose()
    expected = AiohttpTransport if _KIND[0] == "aiohttp" else ReqwestTransport
    assert isinstance(created, expected)
    assert created.closed
    with pytest.raises(ConfigError) as info:
        TokenManager(oauth(server), transport="carrier-pigeon")
    assert info.value.field == "transport"


def test_config_errors_name_the_field() -> None:
    """Bad manager settings are ConfigErrors naming the field."""
    provider = StaticToken("abc")
    for kwargs, field in [
        ({"skew": -1}, "skew"),
        ({"fetch_timeout": 0}, "fetch_timeout"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"max_fetch_time": 0}, "max_fetch_time"),
        ({"min_interval": math.nan}, "min_interval"),
    ]:
        with pytest.raises(ConfigError) as info:
            TokenManager(provider, **kwargs)
        assert info.value.field == field


# -- lifetimes ---------------------------------------------------------------------------------


def iso(seconds_from_wall: float) -> str:
    return datetime.fromtimestamp(WALL + seconds_from_wall, UTC).isoformat()


@pytest.mark.parametrize(
    ("ttl", "lifetime"),
    [
        (MISSING, None),
        (None, None),
        (0, 0.0),
        (-30, 0.0),
        ("120", 120.0),
        (iso(600), 600.0),
        (WALL + 900, 900.0),
        ("not-a-time", None),
    ],
    ids=["missing", "null", "zero", "negative", "string", "iso", "epoch", "garbage"],
)
async def test_expires_in_variants(
    server: TokenServer, clock: FakeClock, ttl: object, lifetime: float | None
) -> None:
    """Lifetime counts from the request; absurd values become 0 or None, never a loop."""
    server.ttl = ttl
    async with manager(server, clock, min_interval=1.0) as mgr:
        sent = clock.now
        token = await mgr.get()
        if lifetime is None:
            assert token.expires_at is None
            clock.advance(10 * 365 * 86400)  # kept until a 401 says otherwise
            assert await mgr.get() is token
            assert server.token_requests == 1
        else:
            assert token.obtained_at == sent
            assert token.expires_at == pytest.approx(sent + lifetime)
            # Served for at least min_interval, however short the server says it lives.
            assert await mgr.get() is token
            clock.advance(max(lifetime, 1.0) + 0.01)
            assert (await mgr.get()).value == server.issued[1]
            assert server.token_requests == 2


async def test_short_lived_tokens_are_rate_limited_by_min_interval(
    server: TokenServer, clock: FakeClock
) -> None:
    """FIELD-NOTES 6: 0.2 s tokens with a 300 s skew: at most one fetch per min_interval."""
    server.ttl = 0.2
    async with manager(server, clock, min_interval=1.0) as mgr:
        began = clock.now
        while clock.now - began < 30:
            await mgr.get()
            await settle(mgr)
            clock.advance(0.05)
        assert server.token_requests <= 30 / 1.0 + 2


async def test_the_same_token_again_does_not_loop(server: TokenServer, clock: FakeClock) -> None:
    """An endpoint answering the same token: refreshes stay on the lifetime's schedule."""
    server.same_token = "same-token-value"
    server.ttl = 8  # effective skew 2 s: refresh every 6 s
    async with manager(server, clock) as mgr:
        began = clock.now
        while clock.now - began < 60:
            assert (await mgr.get()).value == "same-token-value"
            await settle(mgr)
            clock.advance(0.1)
        assert server.token_requests <= 60 / 6 + 2


async def test_client_clock_ahead_of_absolute_expiry_does_not_renew_in_a_loop(
    server: TokenServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """FIELD-NOTES 11: every token looks expired on arrival: fetches back off to the skew."""
    server.ttl = iso(-7200)  # our wall clock is 2 h ahead of the server's 1 h expiry
    async with manager(server, clock, min_interval=1.0, skew=300) as mgr:
        began = clock.now
        while clock.now - began < 3600:
            await mgr.get()
            await settle(mgr)
            clock.advance(0.5)
        # 1 + 1 + 2 + 4 + ... + 256 s, then every 300 s: about 20 in an hour, not 3600.
        assert server.token_requests <= 22
        assert caplog.text.count("a lifetime of 0.0s") == 1


async def test_hung_callable_is_bounded_by_the_managers_timeout(clock: FakeClock) -> None:
    """A provider that ignores its timeout is still cut off by fetch_timeout."""

    async def never() -> str:
        await asyncio.Event().wait()
        return "unreachable"

    provider = CallableProvider(never)
    async with TokenManager(
        provider, clock=clock, sleep=clock.sleep, fetch_timeout=0.05, max_attempts=2
    ) as mgr:
        with pytest.raises(AuthError, match="timed out"):
            await mgr.get()
        assert mgr.stats.requests == 2


async def test_invalidating_a_reissued_token_is_rate_limited(
    server: TokenServer, clock: FakeClock
) -> None:
    """get-invalidate in a loop with a server that re-issues one token: min_interval apart."""
    server.same_token = "same-token-value"
    async with manager(server, clock, min_interval=2.0) as mgr:
        began = clock.now
        for _ in range(20):
            mgr.invalidate(await mgr.get())
        elapsed = clock.now - began
        assert server.token_requests <= elapsed / 2.0 + 1


# -- other providers and the store -------------------------------------------------------------


async def test_json_login_through_the_manager(server: TokenServer, clock: FakeClock) -> None:
    """JsonLogin with dotted fields works behind the manager; epoch expiry converted once."""
    server.ttl = WALL + 1200
    server.login_shape = lambda token, ttl: {"data": {"token": token, "exp": ttl}}
    provider = JsonLogin(
        server.url("/login"),
        token_field="data.token",
        expires_field="data.exp",
        env={"ASYNCSYNC_USERNAME": "bob", "ASYNCSYNC_PASSWORD": "hunter2"},
        wall_clock=lambda: WALL,
    )
    async with manager(server, clock, provider=provider) as mgr:
        token = await asyncio.gather(*(mgr.get() for _ in range(20)))
        assert token[0].lifetime == pytest.approx(1200)
        assert server.token_requests == 1


async def test_callable_provider_and_static_token(clock: FakeClock) -> None:
    """User callables and static tokens are managed the same way."""
    calls = 0

    async def fetch_token() -> tuple[str, float]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return f"cb-{calls}", 60.0

    async with TokenManager(CallableProvider(fetch_token), clock=clock, sleep=clock.sleep) as m:
        tokens = await asyncio.gather(*(m.get() for _ in range(100)))
        assert {t.value for t in tokens} == {"cb-1"}
        assert calls == 1
    async with TokenManager(StaticToken("static-abc"), clock=clock, sleep=clock.sleep) as m:
        token = await m.get()
        clock.advance(10**9)
        assert await m.get() is token


async def test_store_is_shared_between_managers(server: TokenServer, clock: FakeClock) -> None:
    """Two managers on one store: one fetch; after a 401 the second adopts the new token."""
    store = MemoryTokenStore()
    server.latency = 0.02
    async with (
        manager(server, clock, store=store, wall_clock=lambda: WALL) as one,
        manager(server, clock, store=store, wall_clock=lambda: WALL) as two,
    ):
        tokens = await asyncio.gather(*(m.get() for m in (one, two) for _ in range(50)))
        assert {t.value for t in tokens} == {server.issued[0]}
        assert server.token_requests == 1
        refused = tokens[0]
        assert one.invalidate(refused)
        assert two.invalidate(refused)
        new_one = await one.get()
        new_two = await two.get()
        assert new_one.value == new_two.value == server.issued[1]
        assert server.token_requests == 2
        assert store.saves == 2
        assert "s3cr3t" not in repr(store)


async def test_broken_store_falls_back_to_fetching(server: TokenServer, clock: FakeClock) -> None:
    """The store is an optimisation: its errors are logged and the manager fetches."""

    class Broken(MemoryTokenStore):
        async def load(self) -> tuple[str, float | None] | None:
            raise OSError("disk gone")

        async def save(self, token: str, expires_at_wall: float | None) -> None:
            raise OSError("disk gone")

    async with manager(server, clock, store=Broken()) as mgr:
        assert (await mgr.get()).value == server.issued[0]


# -- secrecy -----------------------------------------------------------------------------------


async def test_no_secret_or_token_in_any_repr_or_log(
    server: TokenServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """FIELD-NOTES 12: reprs, error texts and DEBUG logs never hold a secret or a token."""
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    provider = oauth(server, revoke_url=server.url("/revoke"))
    mgr = manager(server, clock, provider=provider, revoke_on_close=True, max_attempts=2)
    token = await mgr.get()
    texts += [repr(token), str(token), repr(mgr), str(mgr), repr(provider), repr(mgr.stats)]
    mgr.invalidate(token)
    server.script = [json_response(503, {"error": f"echo client_secret={SECRET}"})]
    token = await mgr.get()
    clock.advance(3400)
    server.fail_status, server.fail_body = 500, {"access_token": "nope", "secret": SECRET}
    await mgr.get()
    await settle(mgr)
    clock.advance(300)
    with pytest.raises(AuthError) as info:
        await mgr.get()
    texts += [str(info.value), repr(info.value), str(info.value.__cause__)]
    texts.append(repr(TokenResponse(token.value, 1.0)))
    await mgr.aclose()
    login = JsonLogin(
        server.url("/login"), env={"ASYNCSYNC_USERNAME": "bob", "ASYNCSYNC_PASSWORD": SECRET}
    )
    texts += [repr(login), repr(StaticToken(SECRET)), repr(MemoryTokenStore())]
    everything = "\n".join(texts) + "\n" + caplog.text
    assert "token" in caplog.text  # the logs did say something
    for secret in [SECRET, *server.issued]:
        assert secret not in everything
    assert server.revoked  # the revocation did send the token, to the revocation endpoint


# -- properties of the expiry arithmetic -------------------------------------------------------

lifetimes = st.floats(min_value=0, max_value=MAX_LIFETIME, allow_nan=False)
skews = st.floats(min_value=0, max_value=3600, allow_nan=False)
intervals = st.floats(min_value=0, max_value=60, allow_nan=False)
moments = st.floats(min_value=-1e6, max_value=1e9, allow_nan=False)


@given(lifetime=lifetimes, skew=skews)
def test_effective_skew_is_the_smaller_of_skew_and_a_quarter(lifetime: float, skew: float) -> None:
    """0 <= effective skew <= skew and <= 25% of the lifetime; equal to one of them."""
    eff = effective_skew(lifetime, skew)
    assert 0 <= eff <= skew
    assert eff <= 0.25 * lifetime
    assert eff in (skew, 0.25 * lifetime)


@given(obtained=moments, lifetime=lifetimes, skew=skews, interval=intervals)
def test_refresh_window_ordering(
    obtained: float, lifetime: float, skew: float, interval: float
) -> None:
    """obtained + min_interval <= refresh_at <= usable_until; at least 75% of the lifetime."""
    expires = obtained + lifetime
    soft = refresh_at(obtained, expires, skew=skew, min_interval=interval)
    hard = usable_until(obtained, expires, min_interval=interval)
    assert soft >= obtained + interval
    assert soft <= hard
    assert soft >= obtained + 0.75 * lifetime - 1e-6 * max(1.0, abs(obtained))
    if lifetime >= interval:
        assert soft <= expires
        assert hard == expires
    assert refresh_at(obtained, None, skew=skew, min_interval=interval) == math.inf
    assert usable_until(obtained, None, min_interval=interval) == math.inf


@given(now=st.floats(min_value=1e9, max_value=4e9), delta=st.floats(min_value=-1e9, max_value=1e9))
def test_absolute_expiry_becomes_a_clamped_lifetime(now: float, delta: float) -> None:
    """An absolute expiry converts once to a lifetime in [0, MAX_LIFETIME]."""
    lifetime = absolute_to_lifetime(now + delta, now)
    assert 0 <= lifetime <= MAX_LIFETIME
    if 0 <= delta <= MAX_LIFETIME:
        assert lifetime == pytest.approx(delta, abs=1e-3)


@given(delta=st.integers(min_value=0, max_value=int(MAX_LIFETIME)))
def test_iso_and_epoch_forms_agree(delta: int) -> None:
    """The same expiry as ISO-8601, epoch seconds, epoch ms and seconds gives one lifetime."""
    expected = float(delta)
    forms = [
        datetime.fromtimestamp(WALL + delta, UTC).isoformat(),
        WALL + delta,
        (WALL + delta) * 1000,
    ]
    for form in forms:
        assert expiry_to_lifetime(form, now_wall=WALL) == pytest.approx(expected, abs=1e-3)
    if delta <= 1e9:
        assert expiry_to_lifetime(delta, now_wall=WALL) == expected
        assert expiry_to_lifetime(str(delta), now_wall=WALL) == expected


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lifetime=st.one_of(st.none(), st.floats(min_value=-10, max_value=50)),
    steps=st.lists(st.floats(min_value=0, max_value=20), min_size=1, max_size=40),
    interval=st.floats(min_value=0.1, max_value=5),
)
def test_manager_serves_only_usable_tokens_and_spaces_requests(
    lifetime: float | None, steps: list[float], interval: float
) -> None:
    """Any lifetime, any clock walk: returned tokens are usable; requests min_interval apart."""

    async def scenario() -> None:
        clock = FakeClock()
        sent: list[float] = []

        async def fetch_token() -> tuple[str, float | None]:
            sent.append(clock.now)
            return f"t{len(sent)}", lifetime

        async with TokenManager(
            CallableProvider(fetch_token),
            clock=clock,
            sleep=clock.sleep,
            min_interval=interval,
            skew=10,
        ) as mgr:
            for step in steps:
                clock.advance(step)
                token = await mgr.get()
                # Never past max(expiry, obtained + the short-token floor, capped at skew).
                assert clock.now < usable_until(
                    token.obtained_at, token.expires_at, min_interval=max(interval, 10)
                )
                assert clock.now >= token.obtained_at
                await settle(mgr)
        gaps = [b - a for a, b in itertools.pairwise(sent)]
        assert all(gap >= interval - 1e-9 for gap in gaps)

    asyncio.run(scenario())


# -- mutation-testing additions (docs/mutation.md) -------------------------------------------


def counting_provider(lifetime: float | None = 3600.0) -> tuple[CallableProvider, list[int]]:
    """A provider issuing tok-1, tok-2, ... (each ``lifetime`` seconds); the list counts calls."""
    calls: list[int] = []

    async def fetch_token() -> tuple[str, float | None]:
        calls.append(len(calls) + 1)
        return f"tok-{len(calls)}", lifetime

    return CallableProvider(fetch_token), calls


async def test_refresh_starts_exactly_at_the_refresh_moment(clock: FakeClock) -> None:
    """At ``expires_at - skew`` (not a tick later) get() starts the background refresh."""
    provider, calls = counting_provider(3600.0)
    async with TokenManager(provider, clock=clock, sleep=clock.sleep) as mgr:
        first = await mgr.get()
        clock.now = first.obtained_at + 3600.0 - 300.0  # exactly refresh_at
        assert await mgr.get() is first  # still served while the refresh runs
        await settle(mgr)
        assert len(calls) == 2 and mgr.stats.refreshes_expiry == 1


async def test_a_token_is_not_served_at_its_expiry(clock: FakeClock) -> None:
    """At exactly ``expires_at`` the token is no longer usable: get() waits for a new one."""
    provider, calls = counting_provider(3600.0)
    async with TokenManager(provider, clock=clock, sleep=clock.sleep) as mgr:
        first = await mgr.get()
        assert first.expires_at is not None
        clock.now = first.expires_at
        assert (await mgr.get()).value == "tok-2"


async def test_refresh_counters_count_every_refresh(clock: FakeClock) -> None:
    """Two expiry refreshes and two 401 refreshes are counted as two each."""
    provider, calls = counting_provider(100.0)
    async with TokenManager(provider, skew=10.0, clock=clock, sleep=clock.sleep) as mgr:
        for _ in range(2):
            token = await mgr.get()
            assert token.expires_at is not None
            clock.now = token.expires_at
            await mgr.get()
        for _ in range(2):
            clock.advance(5.0)  # past min_interval
            assert mgr.invalidate(await mgr.get())
            await mgr.get()
        assert mgr.stats.refreshes_expiry == 2
        assert mgr.stats.refreshes_401 == 2
        assert mgr.stats.requests == 5 == len(calls)


async def test_invalidate_logs_once_and_does_nothing_after_close(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The first 401 for a token is logged (with its fingerprint), repeats are not; a closed
    manager ignores a 401 and refuses get() with a clear RuntimeError."""
    caplog.set_level(logging.INFO, logger="asyncsync.token")
    provider, calls = counting_provider()
    mgr = TokenManager(provider, clock=clock, sleep=clock.sleep)
    token = await mgr.get()

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "invalidated" in r.getMessage()]

    assert mgr.invalidate(token)
    assert lines() == [f"token {token.fingerprint} invalidated after a 401"]
    assert mgr.invalidate(token)  # still current and stale: True, no new log line
    assert len(lines()) == 1
    second = await mgr.get()
    await mgr.aclose()
    assert not mgr.invalidate(second)
    with pytest.raises(
        RuntimeError, match=r"^Cannot get a token, as the TokenManager has been closed\.$"
    ):
        await mgr.get()
    assert len(calls) == 2


async def test_close_without_revoke_on_close_revokes_nothing(
    server: TokenServer, clock: FakeClock
) -> None:
    """revoke_on_close is off by default: closing sends no revocation request."""
    provider = oauth(server, revoke_url=server.url("/revoke"))
    mgr = manager(server, clock, provider=provider)
    await mgr.get()
    await mgr.aclose()
    assert server.revoked == []


async def test_close_while_waiting_names_the_cause(server: TokenServer, clock: FakeClock) -> None:
    """The waiter's RuntimeError says the manager was closed while it waited."""
    server.latency = 1.0
    mgr = manager(server, clock)
    waiter = asyncio.create_task(mgr.get())
    await asyncio.sleep(0.05)
    await mgr.aclose()
    with pytest.raises(
        RuntimeError, match=r"^The TokenManager was closed while waiting for a token\.$"
    ):
        await waiter


async def test_a_config_error_reaches_the_caller_with_message_and_field(clock: FakeClock) -> None:
    """A setting no retry can fix (TLS verification) is re-raised as it is: same text, field."""

    class TlsRefused:
        endpoint = "https://auth.invalid/token"

        async def fetch(self, transport: object, *, timeout: float) -> TokenResponse:  # noqa: ASYNC109
            raise ConfigError("certificate verify failed for the token URL", field="ca_bundle")

        async def revoke(self, transport: object, token: str) -> None:
            return None

    provider: Any = TlsRefused()
    async with TokenManager(provider, clock=clock, sleep=clock.sleep, transport=object()) as m:  # type: ignore[arg-type]
        with pytest.raises(ConfigError) as info:
            await m.get()
        assert str(info.value) == "certificate verify failed for the token URL"
        assert info.value.field == "ca_bundle"


async def test_failure_logs_say_fetch_for_the_first_token_and_refresh_after(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The error log names what failed: the first fetch, or a refresh of an expired token."""
    fail = True
    calls = 0

    async def fetch_token() -> tuple[str, float]:
        nonlocal calls
        calls += 1
        if fail:
            raise AuthError("refused", permanent=True)
        return f"tok-{calls}", 100.0

    async with TokenManager(
        CallableProvider(fetch_token), clock=clock, sleep=clock.sleep, failure_cooldown=0.0
    ) as mgr:
        with pytest.raises(AuthError):
            await mgr.get()
        assert "token fetch failed: refused" in caplog.text
        assert "token refresh failed" not in caplog.text
        fail = False
        clock.advance(5.0)
        token = await mgr.get()
        fail = True
        assert token.expires_at is not None
        clock.now = token.expires_at + 5.0
        with pytest.raises(AuthError):
            await mgr.get()
        assert "token refresh failed: refused" in caplog.text
