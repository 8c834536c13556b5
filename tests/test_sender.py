"""The sender: response classification, retries, Retry-After gate, 401 handling, 413 splits.

Every test that talks to a server runs once per transport (the ``transport_kind`` fixture of
tests/conftest.py, through ``serve``): the sender's contract does not depend on the client."""

from __future__ import annotations

import asyncio
import gzip
import logging
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, formatdate

import pytest
from aiohttp import web

from asyncsync import Action, AuthError, RetryPolicy
from asyncsync._body import BodyEncoder
from asyncsync._config import RejectOptions
from asyncsync._hooks import NO_HOOKS, InFlight, RequestDone, RetryDetails, UploadHooks
from asyncsync._http import AiohttpTransport, Transport
from asyncsync._records import Batch, BatchResult
from asyncsync._retry import PauseGate, RateLimiter, parse_retry_after
from asyncsync._sender import Sender
from asyncsync._summary import Counters
from asyncsync._transports import open_transport
from asyncsync.auth._manager import TokenManager
from asyncsync.auth._protocol import TokenResponse
from asyncsync.auth._simple import StaticToken

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class Recorder(UploadHooks):
    def __init__(self) -> None:
        self.retries: list[RetryDetails] = []

    def on_retry(self, details: RetryDetails) -> None:
        self.retries.append(details)


#: the transport make_sender opens, set by ``serve`` from the parametrized fixture
_KIND = ["aiohttp"]


@pytest.fixture
async def serve(transport_kind: str) -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    _KIND[0] = transport_kind
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/ingest"

    yield start
    for runner in runners:
        await runner.cleanup()


def make_batch(n: int = 4, first: int = 1) -> Batch:
    records = [b'{"i":%d}' % i for i in range(first, first + n)]
    return Batch(0, records, list(range(first, first + n)), None, sum(map(len, records)))


async def make_sender(
    url: str,
    *,
    tokens: TokenManager | None = None,
    policy: RetryPolicy | None = None,
    time_: FakeTime | None = None,
    hooks: UploadHooks | None = None,
    rejects: RejectOptions | None = None,
    encoder: BodyEncoder | None = None,
) -> tuple[Sender, Counters, Transport]:
    transport = open_transport(_KIND[0], connections=4, timeout=60)
    counters = Counters()
    t = time_ or FakeTime()
    sender = Sender(
        transport,
        url,
        tokens=tokens,
        encoder=encoder or BodyEncoder("json"),
        job_id="job",
        retry=policy or RetryPolicy(max_attempts=4, backoff_initial=0.5, backoff_max=4.0),
        counters=counters,
        hooks=hooks or NO_HOOKS,
        rejects=rejects or RejectOptions(),
        clock=t.clock,
        sleep=t.sleep,
        gate=PauseGate(clock=t.clock, sleep=t.sleep),
        rng=random.Random(7),
    )
    return sender, counters, transport


async def test_ack_sends_body_key_and_token(serve: Callable[[Handler], Awaitable[str]]) -> None:
    """A 2xx acknowledges; the request carries the JSON array, the key and the bearer token."""
    seen: list[tuple[bytes, dict[str, str]]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((await request.read(), dict(request.headers)))
        return web.json_response({"ok": True})

    url = await serve(handler)
    tokens = TokenManager(StaticToken("tok-123456"))
    sender, counters, session = await make_sender(url, tokens=tokens)
    async with session:
        [result] = await sender.send(make_batch(3, first=10))
    await tokens.aclose()
    assert result.delivered and result.status == 200 and result.attempts == 1
    body, headers = seen[0]
    assert body == b'[{"i":10},{"i":11},{"i":12}]'
    assert headers["Authorization"] == "Bearer tok-123456"
    assert headers["Idempotency-Key"] == "job-10-12"
    assert headers["Content-Type"] == "application/json"
    assert counters.requests == 1 and counters.retries == 0


async def test_retries_transient_statuses_with_same_key(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """503 then 500 then 200: three requests, the same key each time, backoff within jitter caps."""
    statuses = [503, 500, 200]
    keys: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        keys.append(request.headers["Idempotency-Key"])
        return web.Response(status=statuses[len(keys) - 1])

    url = await serve(handler)
    t = FakeTime()
    hooks = Recorder()
    sender, counters, session = await make_sender(url, time_=t, hooks=hooks)
    async with session:
        [result] = await sender.send(make_batch())
    assert result.delivered and result.attempts == 3
    assert len(set(keys)) == 1 and len(keys) == 3
    assert counters.retries == 2 and counters.retries_by_status == {"503": 1, "500": 1}
    # full jitter: wait before attempt n lies in [0, min(max, initial * 2**(n-2))]
    assert 0 <= t.sleeps[0] <= 0.5 and 0 <= t.sleeps[1] <= 1.0
    assert [d.attempt for d in hooks.retries] == [2, 3]


async def test_gives_up_after_max_attempts(serve: Callable[[Handler], Awaitable[str]]) -> None:
    """Retries exhausted: the batch fails with the attempt count and the last status."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=502, text="bad gateway upstream")

    url = await serve(handler)
    sender, counters, session = await make_sender(url)
    async with session:
        [result] = await sender.send(make_batch())
    assert not result.delivered and result.status == 502 and result.attempts == 4
    assert "gave up after 4 attempts" in result.error and "bad gateway" in result.error


async def test_permanent_4xx_is_not_retried(serve: Callable[[Handler], Awaitable[str]]) -> None:
    """A 400 goes to the dead-letter path at once, with an excerpt of the response
    (--on-reject batch: the whole batch, as before splits on rejection)."""
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.json_response({"error": "field x is required"}, status=400)

    url = await serve(handler)
    sender, _, session = await make_sender(url, rejects=RejectOptions(on_reject="batch"))
    async with session:
        [result] = await sender.send(make_batch())
    assert calls == 1 and not result.delivered and result.attempts == 1
    assert "field x is required" in result.error


async def test_policy_is_data(serve: Callable[[Handler], Awaitable[str]]) -> None:
    """A user's table can make 409 a success and 400 retryable."""
    statuses = [400, 409]

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=statuses.pop(0))

    url = await serve(handler)
    policy = RetryPolicy(statuses={400: Action.RETRY, 409: Action.ACK}, max_attempts=3)
    sender, _, session = await make_sender(url, policy=policy)
    async with session:
        [result] = await sender.send(make_batch())
    assert result.delivered and result.status == 409 and result.attempts == 2


async def test_413_splits_until_single_records(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """413 above 2 records: a batch of 5 is split into parts of <= 2; a single record never 413s."""
    sizes: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        n = len(await request.json())
        sizes.append(n)
        return web.Response(status=413 if n > 2 else 200)

    url = await serve(handler)
    sender, counters, session = await make_sender(url)
    async with session:
        results = await sender.send(make_batch(5))
    assert all(r.delivered for r in results)
    assert sorted(p for r in results for p in r.batch.positions) == [1, 2, 3, 4, 5]
    assert len({r.key for r in results}) == len(results)
    assert all(len(r.batch) <= 2 for r in results)
    assert sizes == [5, 2, 3, 1, 2]  # 5 -> 2 + 3, 3 -> 1 + 2


async def test_counts_requests_as_batches_plus_retries(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """Counted when sent: the first request of a key is a batch, each later one a retry by
    the answer before it (a transport error is ``error``); a 413'd batch is one batch, its
    parts are batches of their own and every request for them is a split request."""
    answers = iter([503, 429, 413])  # then 200 for the parts, a 500 once for the first part
    part_errors = 1

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal part_errors
        status = next(answers, None)
        if status is None and part_errors:
            part_errors -= 1
            status = 500
        return web.Response(status=status or 200)

    url = await serve(handler)
    hooks = Recorder()
    sender, counters, session = await make_sender(url, hooks=hooks)
    async with session:
        results = await sender.send(make_batch(4))
    assert [r.delivered for r in results] == [True, True]
    # key 1-4: 503, 429, 413 (3 requests); part 1-2: 500, 200; part 3-4: 200
    assert counters.requests == 6 == counters.batches + counters.retries
    assert counters.batches == 3 and counters.retries == 3
    assert counters.retries_by_status == {"503": 1, "429": 1, "500": 1}
    assert counters.split_requests == 3 <= counters.requests
    # on_retry is told of exactly the retries counted (metrics derive retries_total from it)
    assert Counter(d.label for d in hooks.retries) == counters.retries_by_status


async def test_401_resend_and_transport_error_are_counted_retries(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """A re-send after a 401 spends no attempt but is a retry (reason ``401``); a dropped
    connection is a retry with reason ``error``."""
    issued: list[str] = []
    calls = 0

    async def fetch() -> TokenResponse:
        issued.append(f"token-{len(issued)}")
        return TokenResponse(access_token=issued[-1], expires_in=3600)

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            assert request.transport is not None
            request.transport.close()  # no answer at all
            return web.Response(status=200)
        ok = request.headers["Authorization"] == "Bearer token-1"
        return web.Response(status=200 if ok else 401)

    from asyncsync.auth._simple import CallableProvider

    url = await serve(handler)
    tokens = TokenManager(CallableProvider(fetch))
    hooks = Recorder()
    sender, counters, session = await make_sender(url, tokens=tokens, hooks=hooks)
    async with session:
        [result] = await sender.send(make_batch())
    await tokens.aclose()
    assert result.delivered and result.attempts == 2  # the error spent one, the 401 none
    assert counters.requests == 3 == counters.batches + counters.retries
    assert counters.batches == 1
    assert counters.retries_by_status == {"error": 1, "401": 1}
    assert counters.split_requests == 0
    # one on_retry per counted retry, as each went out: the error's, then the 401 re-send's
    assert [(d.label, d.attempt) for d in hooks.retries] == [("error", 2), ("401", 2)]
    assert hooks.retries[1].wait_s == 0.0


async def test_single_record_413_is_dead(serve: Callable[[Handler], Awaitable[str]]) -> None:
    """A record that is too large on its own is dead-lettered, not split forever."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=413)

    url = await serve(handler)
    sender, _, session = await make_sender(url)
    async with session:
        results = await sender.send(make_batch(2))
    assert [r.delivered for r in results] == [False, False]
    assert all(r.status == 413 for r in results)


async def test_redirect_not_followed(serve: Callable[[Handler], Awaitable[str]]) -> None:
    """A 307 is an error naming the location; the other origin never sees the request."""
    other_hits = 0

    async def other(request: web.Request) -> web.Response:
        nonlocal other_hits
        other_hits += 1
        return web.Response()

    other_url = await serve(other)

    async def handler(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(other_url)

    url = await serve(handler)
    tokens = TokenManager(StaticToken("tok-abcdef"))
    sender, _, session = await make_sender(url, tokens=tokens)
    async with session:
        [result] = await sender.send(make_batch())
    await tokens.aclose()
    assert not result.delivered and result.status == 307
    assert other_url in result.error and other_hits == 0


async def test_stale_401_resends_without_spending_attempts(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """A 401 for token A: invalidate A, resend with B; one token fetch, attempts stay 1."""
    issued: list[str] = []

    async def fetch() -> TokenResponse:
        issued.append(f"token-{len(issued)}")
        return TokenResponse(access_token=issued[-1], expires_in=3600)

    async def handler(request: web.Request) -> web.Response:
        ok = request.headers["Authorization"] == "Bearer token-1"
        return web.Response(status=200 if ok else 401)

    from asyncsync.auth._simple import CallableProvider

    url = await serve(handler)
    tokens = TokenManager(CallableProvider(fetch))
    sender, counters, session = await make_sender(url, tokens=tokens)
    async with session:
        [result] = await sender.send(make_batch())
    await tokens.aclose()
    assert result.delivered and result.attempts == 1
    assert issued == ["token-0", "token-1"] and counters.requests == 2


async def test_401_on_fresh_token_is_auth_error(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """The API refuses a token fetched after the first 401: AuthError, after 2 token fetches."""
    fetches = 0

    async def fetch() -> TokenResponse:
        nonlocal fetches
        fetches += 1
        return TokenResponse(access_token=f"token-{fetches}", expires_in=3600)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=401)

    from asyncsync.auth._simple import CallableProvider

    url = await serve(handler)
    t = FakeTime()
    tokens = TokenManager(CallableProvider(fetch), clock=t.clock, sleep=t.sleep, min_interval=0)
    sender, _, session = await make_sender(url, tokens=tokens, time_=t)
    async with session:
        with pytest.raises(AuthError) as info:
            await sender.send(make_batch())
    await tokens.aclose()
    assert info.value.status == 401 and fetches == 2
    assert "token-" not in str(info.value)


async def test_connection_errors_retry(serve: Callable[[Handler], Awaitable[str]]) -> None:
    """A refused connection is transient: retried, then failed with a transport reason."""
    sender, counters, session = await make_sender("http://127.0.0.1:9/ingest")
    async with session:
        [result] = await sender.send(make_batch())
    assert not result.delivered and result.status is None and result.attempts == 4
    assert "cannot connect" in result.error and counters.retries_by_status["error"] == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5", 5.0), (" 0 ", 0.0), ("-3", 0.0), ("1.5", 1.5), ("soon", None), ("", None), (None, None)],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    """Retry-After as delta-seconds; nonsense is ignored rather than trusted."""
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    """Retry-After as an HTTP-date is converted once against the wall clock."""
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    header = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(header, now_wall=now.timestamp()) == 30.0
    past = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(past, now_wall=now.timestamp()) == 0.0


async def test_retry_after_pauses_every_worker(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """One 429 with Retry-After: 7 holds back the gate for all senders, and is the wait used."""
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.Response(status=429, headers={"Retry-After": "7"})
        return web.Response(status=200)

    url = await serve(handler)
    t = FakeTime()
    sender, _, session = await make_sender(url, time_=t)
    async with session:
        [result] = await sender.send(make_batch())
        start = t.now
        # the pause is held by the shared gate (every worker waits there), not by this
        # sender's own sleep: the gate says 1000 + 7
        assert sender._gate.paused_until == 1007.0 <= t.now
    assert result.delivered and result.attempts == 2
    assert t.sleeps == [7.0] and start >= 1007.0


@pytest.mark.parametrize("form", ["seconds", "date"])
async def test_retry_after_holds_back_another_sender_on_the_real_clock(
    serve: Callable[[Handler], Awaitable[str]], form: str
) -> None:
    """Two senders share one gate against a loopback server, on the real clock. Sender A's
    first request is answered 429 with ``Retry-After: 2`` (or an HTTP date about 2 s ahead)
    while B keeps sending one batch after another. Until the pause ends no request arrives but
    the one B may have had in flight; then A's retry and B's next batch go out promptly."""
    a_key = "job-1-1"
    arrivals: list[tuple[float, str]] = []
    throttle: dict[str, float] = {}  # when the 429 was answered, and the pause it announced

    async def handler(request: web.Request) -> web.Response:
        key = request.headers["Idempotency-Key"]
        arrivals.append((time.monotonic(), key))
        if key == a_key and not throttle:
            if form == "seconds":
                value, seconds = "2", 2.0
            else:  # whole seconds only: the date is 1-2 s ahead
                target = math.floor(time.time() + 2)
                value, seconds = formatdate(target, usegmt=True), target - time.time()
            now = time.monotonic()
            throttle.update(at=now, end=now + seconds)
            return web.Response(status=429, headers={"Retry-After": value})
        await asyncio.sleep(0.02)  # B's requests spend a moment in flight
        return web.Response(status=200)

    url = await serve(handler)
    gate = PauseGate()  # the real clock and sleep
    policy = RetryPolicy(max_attempts=4, backoff_initial=0.01, backoff_max=0.05)
    started = time.monotonic()
    async with open_transport(_KIND[0], connections=4, timeout=60) as transport:

        def sender() -> Sender:
            return Sender(
                transport, url, tokens=None, encoder=BodyEncoder("json"), job_id="job",
                retry=policy, counters=Counters(), hooks=NO_HOOKS, gate=gate,
            )  # fmt: skip

        a, b = sender(), sender()

        async def worker_a() -> BatchResult:
            await asyncio.sleep(0.1)  # B is busy by then
            [result] = await a.send(make_batch(1, first=1))
            return result

        async def worker_b() -> int:
            # until 0.3 s after the pause (bounded, should A never be throttled)
            n = 0
            while time.monotonic() < min(throttle.get("end", started + 4), started + 4) + 0.3:
                n += 1
                [result] = await b.send(make_batch(1, first=1000 + n))
                assert result.delivered
            return n

        result, _ = await asyncio.gather(worker_a(), worker_b())
    assert result.delivered and result.attempts == 2
    at, end = throttle["at"], throttle["end"]
    margin = 0.05  # the client reads its clocks a little after the server read them
    inside = [key for t, key in arrivals if at < t < end - margin]
    # B had at most one request in flight when the 429 went out; nothing else starts
    assert len(inside) <= 1 and a_key not in inside, (len(inside), end - at)
    a_times = [t for t, key in arrivals if key == a_key]
    assert len(a_times) == 2
    # the pause ends: A's retry and B's next batch within 1.5 s of its end (a busy 2-core box)
    assert end - margin <= a_times[1] <= end + 1.5
    b_after = [t for t, key in arrivals if key != a_key and t >= end - margin]
    assert b_after and b_after[0] <= end + 1.5


async def test_rate_limiter_spaces_requests() -> None:
    """--rate 10: ten acquisitions span 0.9 s of slots."""
    t = FakeTime()
    limiter = RateLimiter(10, clock=t.clock, sleep=t.sleep)
    for _ in range(10):
        await limiter.acquire()
    assert t.now - 1000.0 == pytest.approx(0.9)


async def test_401_for_a_token_that_expired_in_flight_is_not_a_refusal(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """Tokens that run out while their request is in flight get 401s: refresh and resend
    (bounded), rather than ending the run as if the API refused fresh credentials."""
    t = FakeTime()
    fetches = 0
    calls = 0

    async def fetch() -> TokenResponse:
        nonlocal fetches
        fetches += 1
        return TokenResponse(access_token=f"token-{fetches}", expires_in=1.0)

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls <= 2:
            t.now += 5.0  # a slow request: the token expires before the answer
            return web.Response(status=401)
        return web.Response(status=200)

    from asyncsync.auth._simple import CallableProvider

    url = await serve(handler)
    tokens = TokenManager(CallableProvider(fetch), clock=t.clock, sleep=t.sleep, min_interval=0)
    sender, _, session = await make_sender(url, tokens=tokens, time_=t)
    async with session:
        [result] = await sender.send(make_batch())
    await tokens.aclose()
    assert result.delivered and calls == 3 and fetches == 3


def numbered_tokens() -> tuple[list[str], Callable[[], Awaitable[TokenResponse]]]:
    """A provider of token-1, token-2 ... with no lifetime (no expires_in: only a 401 tells)."""
    issued: list[str] = []

    async def fetch() -> TokenResponse:
        issued.append(f"token-{len(issued) + 1}")
        return TokenResponse(access_token=issued[-1], expires_in=None)

    return issued, fetch


async def test_401_for_a_token_without_lifetime_that_ran_out_during_retries(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """No expires_in. token-1 worked and was refused at age 10 s: the manager learns ~10 s.
    A batch's 401 brings token-2 (fetched after that 401); token-2 gets a 503, then, 10 s
    later, a 401: it ran out during the batch's retries, it was not refused. The batch is
    re-sent with token-3, not ended as "401 to a freshly obtained token"."""
    from asyncsync.auth._simple import CallableProvider

    t = FakeTime()
    issued, fetch = numbered_tokens()
    answers = {"Bearer token-1": [200, 401], "Bearer token-2": [503, 401]}

    async def handler(request: web.Request) -> web.Response:
        queue = answers.get(request.headers["Authorization"], [])
        status = queue.pop(0) if queue else 200
        if request.headers["Authorization"] == "Bearer token-2" and status == 401:
            t.now += 10.0  # token-2's requests took long: it ran out
        return web.Response(status=status)

    url = await serve(handler)
    tokens = TokenManager(CallableProvider(fetch), clock=t.clock, sleep=t.sleep, min_interval=0)
    sender, counters, session = await make_sender(url, tokens=tokens, time_=t)
    async with session:
        [first] = await sender.send(make_batch())
        t.now += 10.0  # token-1 in use for 10 s
        [second] = await sender.send(make_batch(first=100))
    await tokens.aclose()
    assert first.delivered and second.delivered
    assert issued == ["token-1", "token-2", "token-3"]
    assert counters.retries_by_status == {"401": 2, "503": 1}


async def test_401_for_a_token_another_request_had_used_is_expiry(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """No expires_in, two batches in flight. After token-1's 401s both get token-2; one is
    delivered with it, the other's request with token-2 is then answered 401 (it ran out in
    flight). The API took token-2, so our credentials work: refresh, not AuthError."""
    from asyncsync.auth._simple import CallableProvider

    t = FakeTime()
    issued, fetch = numbered_tokens()
    delivered_with_2 = asyncio.Event()

    class Watch(UploadHooks):
        def on_request(self, event: object) -> None:
            if getattr(event, "status", None) == 200:
                delivered_with_2.set()

    async def handler(request: web.Request) -> web.Response:
        auth = request.headers["Authorization"]
        if auth == "Bearer token-1":
            return web.Response(status=401)
        if auth == "Bearer token-2" and request.headers["Idempotency-Key"] == "job-1-4":
            await asyncio.wait_for(delivered_with_2.wait(), 5)  # the other batch's 200 first
            return web.Response(status=401)
        return web.Response(status=200)

    url = await serve(handler)
    tokens = TokenManager(CallableProvider(fetch), clock=t.clock, sleep=t.sleep, min_interval=0)
    sender, _, session = await make_sender(url, tokens=tokens, time_=t, hooks=Watch())
    async with session:
        results = await asyncio.gather(
            sender.send(make_batch()), sender.send(make_batch(first=100))
        )
    await tokens.aclose()
    assert all(r.delivered for [r] in results)
    assert issued == ["token-1", "token-2", "token-3"]


async def test_401_for_a_new_token_after_a_working_one_is_still_a_refusal(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """Credentials revoked mid-run: token-1 worked for 100 s, then everything is 401. The
    new token-2, refused at once (younger than the learned lifetime, never taken), is a
    refusal: AuthError after 2 token fetches, no refresh loop."""
    from asyncsync.auth._simple import CallableProvider

    t = FakeTime()
    issued, fetch = numbered_tokens()
    revoked = False

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=401 if revoked else 200)

    url = await serve(handler)
    tokens = TokenManager(CallableProvider(fetch), clock=t.clock, sleep=t.sleep, min_interval=0)
    sender, _, session = await make_sender(url, tokens=tokens, time_=t)
    async with session:
        [first] = await sender.send(make_batch())
        t.now += 100.0
        revoked = True
        with pytest.raises(AuthError, match="freshly obtained"):
            await sender.send(make_batch(first=100))
    await tokens.aclose()
    assert first.delivered and issued == ["token-1", "token-2"]


async def test_gzip_request_body_arrives_compressed(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """--gzip: the body goes out gzip-compressed with Content-Encoding: gzip, and the server
    gets back exactly the JSON array (no transport re-encodes or decodes it)."""
    seen: list[tuple[str | None, int, bytes]] = []

    async def handler(request: web.Request) -> web.Response:
        # aiohttp's server inflates the body for us; Content-Length is what was on the wire
        length = int(request.headers["Content-Length"])
        seen.append((request.headers.get("Content-Encoding"), length, await request.read()))
        return web.Response(status=200)

    url = await serve(handler)
    sender, counters, session = await make_sender(url, encoder=BodyEncoder("json", gzip=True))
    async with session:
        [result] = await sender.send(make_batch(3, first=1))
    assert result.delivered
    [(encoding, length, body)] = seen
    plain = b'[{"i":1},{"i":2},{"i":3}]'
    assert encoding == "gzip" and body == plain
    assert counters.bytes_sent == length == len(gzip.compress(plain, 5, mtime=0))


async def test_keep_alive_reuses_connections(serve: Callable[[Handler], Awaitable[str]]) -> None:
    """30 batches, at most 4 in flight: the server sees at most 4 connections (keep-alive),
    not one per request."""
    peers: set[object] = set()

    async def handler(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        return web.Response(status=200)

    url = await serve(handler)
    sender, counters, session = await make_sender(url)
    async with session:

        async def send(first: int) -> None:
            [result] = await sender.send(make_batch(2, first=first))
            assert result.delivered

        for round_ in range(10):
            await asyncio.gather(*(send(100 * round_ + 10 * i) for i in range(3)))
    assert counters.requests == 30
    assert 1 <= len(peers) <= 4, peers


# --- Mutation-driven tests of the per-attempt decisions (docs/mutation.md, sender row) ---


class EventLog(UploadHooks):
    """Every per-request event, in order."""

    def __init__(self) -> None:
        self.events: list[object] = []

    def on_request(self, event: RequestDone) -> None:
        self.events.append(event)

    def on_in_flight(self, event: InFlight) -> None:
        self.events.append(event)


async def test_request_and_in_flight_events_for_an_error_a_retry_and_an_ack(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """A dropped connection, a 503 and a 200, each answered 0.25 s after it was sent: one
    RequestDone per request (attempt, status or None, latency, bytes), and the in-flight
    count goes 1 then 0 around each."""
    t = FakeTime()
    calls = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        t.now += 0.25
        if calls == 1:
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=200)
        return web.Response(status=503 if calls == 2 else 200)

    url = await serve(handler)
    hooks = EventLog()
    sender, counters, session = await make_sender(url, time_=t, hooks=hooks)
    batch = Batch(5, [b'{"i":1}', b'{"i":2}'], [1, 2], None, 14)
    async with session:
        [result] = await sender.send(batch)
    assert result.delivered and result.attempts == 3
    size = len(b'[{"i":1},{"i":2}]')
    assert hooks.events == [
        InFlight(1), RequestDone(5, 1, None, 0.25, size), InFlight(0),
        InFlight(1), RequestDone(5, 2, 503, 0.25, size), InFlight(0),
        InFlight(1), RequestDone(5, 3, 200, 0.25, size), InFlight(0),
    ]  # fmt: skip
    assert counters.in_flight == 0 and counters.bytes_sent == size


async def test_per_request_timeout_is_passed_to_the_transport(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """``timeout=0.2`` (the transport's own is 60 s): a first answer that takes 2 s is a
    transport error, retried under the same key."""
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(2)
        return web.Response(status=200)

    url = await serve(handler)
    counters = Counters()
    t = FakeTime()
    async with AiohttpTransport(connections=4, timeout=60) as transport:
        sender = Sender(
            transport, url, tokens=None, encoder=BodyEncoder("json"), job_id="job",
            retry=RetryPolicy(max_attempts=3, backoff_initial=0.0), counters=counters,
            hooks=NO_HOOKS, timeout=0.2, clock=t.clock, sleep=t.sleep,
            gate=PauseGate(clock=t.clock, sleep=t.sleep),
        )  # fmt: skip
        started = time.monotonic()
        [result] = await sender.send(make_batch())
    assert result.delivered and result.attempts == 2
    assert counters.retries_by_status == {"error": 1}
    assert time.monotonic() - started < 1.5


async def test_token_replaces_a_configured_authorization_header(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """A configured ``Authorization`` header is replaced by the token's, not sent beside it."""
    seen: list[list[str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.getall("Authorization"))
        return web.Response(status=200)

    url = await serve(handler)
    tokens = TokenManager(StaticToken("tok-123456"))
    async with AiohttpTransport(connections=4, timeout=60) as transport:
        sender = Sender(
            transport, url, tokens=tokens, encoder=BodyEncoder("json"), job_id="job",
            retry=RetryPolicy(), counters=Counters(), hooks=NO_HOOKS,
            headers={"Authorization": "Basic dXNlcjpwdw=="},
        )  # fmt: skip
        [result] = await sender.send(make_batch())
    await tokens.aclose()
    assert result.delivered and seen == [["Bearer tok-123456"]]


def expiring_tokens(t: FakeTime) -> tuple[list[str], Callable[[], Awaitable[TokenResponse]]]:
    issued: list[str] = []

    async def fetch() -> TokenResponse:
        issued.append(f"token-{len(issued) + 1}")
        return TokenResponse(access_token=issued[-1], expires_in=1.0)

    return issued, fetch


@pytest.mark.parametrize("unauthorized", [3, 10])
async def test_401s_for_tokens_that_expire_in_flight_are_bounded(
    serve: Callable[[Handler], Awaitable[str]], unauthorized: int
) -> None:
    """Every token runs out in flight (refused_by_expiry): up to MAX_REAUTH (3) refreshes per
    batch; three 401s then a 200 deliver, a fourth 401 is an AuthError saying 4 times."""
    from asyncsync.auth._simple import CallableProvider

    t = FakeTime()
    issued, fetch = expiring_tokens(t)
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls <= unauthorized:
            t.now += 5.0  # the token expires before the answer
            return web.Response(status=401)
        return web.Response(status=200)

    url = await serve(handler)
    tokens = TokenManager(CallableProvider(fetch), clock=t.clock, sleep=t.sleep, min_interval=0)
    hooks = Recorder()
    sender, counters, session = await make_sender(url, tokens=tokens, time_=t, hooks=hooks)
    async with session:
        if unauthorized == 3:
            [result] = await sender.send(make_batch())
            assert result.delivered and result.attempts == 1
            assert counters.retries_by_status == {"401": 3}
            # a 401 re-send spends no attempt: each is attempt 1 again, sent at once
            details = RetryDetails(0, "job-1-4", 1, "status 401 Unauthorized", 401, 0.0)
            assert hooks.retries == [details] * 3
        else:
            with pytest.raises(AuthError, match=r"\(4 times for batch job-1-4\)") as info:
                await sender.send(make_batch())
            assert calls == 4 and info.value.endpoint == url
    await tokens.aclose()


def results_handler(answers: list[list[int]]) -> Handler:
    """Per-record results as a top-level array (``--results .``), one list of statuses per
    request; each item padded so the answer is above 64 KiB."""

    async def handler(request: web.Request) -> web.Response:
        statuses = answers.pop(0)
        items = [{"status": s, "pad": "x" * 20_000} for s in statuses]
        return web.json_response(items)

    return handler


async def test_results_larger_than_the_default_body_limit_are_read_whole(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """With per-record results the whole answer is read (80 KB here, over the 64 KiB read
    for an answer without results): each record is settled from it."""
    url = await serve(results_handler([[201, 201, 201, 201]]))
    sender, _, session = await make_sender(url, rejects=RejectOptions(results="."))
    async with session:
        [result] = await sender.send(make_batch())
    assert result.delivered and result.error == "" and result.key == "job-1-4"


@pytest.mark.parametrize(("initial", "expected"), [(0.5, 1), (0.0, 0)])
async def test_items_sent_again_back_off_first(
    serve: Callable[[Handler], Awaitable[str]], initial: float, expected: int
) -> None:
    """An item answered 429 is re-sent after the backoff for its batch's next attempt (a
    jittered wait in [0, initial]), on the batch's clock; no sleep at all when it is 0."""
    url = await serve(results_handler([[201, 429, 201, 201], [201]]))
    t = FakeTime()
    policy = RetryPolicy(max_attempts=4, backoff_initial=initial, backoff_max=4.0)
    sender, _, session = await make_sender(
        url, time_=t, policy=policy, rejects=RejectOptions(results=".")
    )
    async with session:
        results = await sender.send(make_batch())
    assert all(r.delivered for r in results) and len(results) == 2
    assert len(t.sleeps) == expected and all(0 < s <= initial for s in t.sleeps)


async def test_retry_after_is_waited_out_on_a_clock_starting_at_zero(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """The gate holds the retry back even when its clock reads below 1 (the pause ends at
    0.5): the wait is the gate's, not skipped."""
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.Response(status=503, headers={"Retry-After": "0.5"})
        return web.Response(status=200)

    url = await serve(handler)
    t = FakeTime()
    t.now = 0.0
    sender, _, session = await make_sender(url, time_=t)
    async with session:
        [result] = await sender.send(make_batch())
    assert result.delivered and result.attempts == 2 and t.sleeps == [0.5]


async def test_a_status_outside_the_table_is_classified_by_the_policy(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """A status the 100-599 table does not hold (799) is looked up in the policy: not 2xx,
    so dead at once, not retried."""
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=799)

    url = await serve(handler)
    sender, _, session = await make_sender(url)
    async with session:
        [result] = await sender.send(make_batch())
    assert calls == 1 and not result.delivered and result.status == 799


async def test_acknowledged_requests_add_up_bytes_and_latencies(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """Two batches acknowledged 0.25 s after sending: bytes_sent is their sum, and each
    latency is sampled."""
    t = FakeTime()

    async def handler(request: web.Request) -> web.Response:
        t.now += 0.25
        return web.Response(status=200)

    url = await serve(handler)
    sender, counters, session = await make_sender(url, time_=t)
    async with session:
        await sender.send(make_batch(2))
        await sender.send(make_batch(3, first=10))
    assert counters.bytes_sent == len(b'[{"i":1},{"i":2}]') + len(b'[{"i":10},{"i":11},{"i":12}]')
    assert list(counters.latencies.values) == [0.25, 0.25]


async def test_401_without_authentication_is_dead_at_once(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """No token manager: a 401 cannot be answered with a new token; dead, not retried."""
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=401)

    url = await serve(handler)
    sender, counters, session = await make_sender(url)
    async with session:
        [result] = await sender.send(make_batch())
    assert calls == 1 and not result.delivered and result.status == 401
    assert result.error == "401 Unauthorized (no authentication configured)"
    assert counters.retries == 0


async def test_a_token_echoed_in_a_rejection_is_masked(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """A 400 whose body quotes the token (no "Bearer" before it, which the generic
    redaction would catch): the dead-letter reason has it masked."""

    async def handler(request: web.Request) -> web.Response:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        return web.Response(status=400, text=f"unknown client {token}")

    url = await serve(handler)
    tokens = TokenManager(StaticToken("tok-123456"))
    sender, _, session = await make_sender(
        url, tokens=tokens, rejects=RejectOptions(on_reject="batch")
    )
    async with session:
        [result] = await sender.send(make_batch())
    await tokens.aclose()
    assert "tok-123456" not in result.error and "***" in result.error


async def test_retries_are_logged_as_structured_events(
    serve: Callable[[Handler], Awaitable[str]], caplog: pytest.LogCaptureFixture
) -> None:
    """A 401 (a new token, sent at once) then a 503 (a backoff): one ``retry`` event each,
    with its message and the fields the JSON log carries."""
    from asyncsync.auth._simple import CallableProvider

    t = FakeTime()
    issued, fetch = numbered_tokens()
    answers = {"Bearer token-1": 401, "Bearer token-2": 503}

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=answers.pop(request.headers["Authorization"], 200))

    url = await serve(handler)
    tokens = TokenManager(CallableProvider(fetch), clock=t.clock, sleep=t.sleep, min_interval=0)
    hooks = Recorder()
    sender, _, session = await make_sender(url, tokens=tokens, time_=t, hooks=hooks)
    caplog.set_level(logging.INFO, logger="asyncsync.sender")
    async with session:
        [result] = await sender.send(make_batch())
    await tokens.aclose()
    assert result.delivered and result.attempts == 2
    [wait] = t.sleeps
    retries = [r for r in caplog.records if getattr(r, "event", None) == "retry"]
    assert [r.getMessage() for r in retries] == [
        "retry 1 of batch job-1-4 after a 401, with a new token",
        f"retry 2 of batch job-1-4 in {wait:.2f}s: status 503 Service Unavailable",
    ]
    fields = ("event", "batch", "key", "status", "attempt", "wait_s")
    assert [tuple(getattr(r, f) for f in fields) for r in retries] == [
        ("retry", 0, "job-1-4", 401, 1, 0.0),
        ("retry", 0, "job-1-4", 503, 2, round(wait, 3)),
    ]
    assert hooks.retries == [
        RetryDetails(0, "job-1-4", 1, "status 401 Unauthorized", 401, 0.0),
        RetryDetails(0, "job-1-4", 2, "status 503 Service Unavailable", 503, wait),
    ]


async def test_splits_are_logged(
    serve: Callable[[Handler], Awaitable[str]], caplog: pytest.LogCaptureFixture
) -> None:
    """A 413 for 4 records is logged as a ``split`` event; a 422 for 2 records (split to
    find the rejected one) is logged with its status."""

    async def handler(request: web.Request) -> web.Response:
        records = await request.json()
        if len(records) > 2:
            return web.Response(status=413)
        if len(records) == 2 and records[0]["i"] == 1:
            return web.Response(status=422)
        return web.Response(status=200)

    url = await serve(handler)
    sender, _, session = await make_sender(url)
    caplog.set_level(logging.INFO, logger="asyncsync.sender")
    async with session:
        results = await sender.send(make_batch())
    assert all(r.delivered for r in results) and len(results) == 3
    [split] = [r for r in caplog.records if getattr(r, "event", None) == "split"]
    assert split.getMessage() == "413 for batch job-1-4 of 4 records: splitting"
    fields = ("event", "batch", "key", "status")
    assert tuple(getattr(split, f) for f in fields) == ("split", 0, "job-1-4", 413)
    messages = [r.getMessage() for r in caplog.records]
    assert "422 for batch job-1-2 of 2 records: splitting" in messages


async def test_single_record_413_is_dead_at_once(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """A record alone answered 413 cannot be split: dead after one request, not retried."""
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=413, text="too large")

    url = await serve(handler)
    sender, counters, session = await make_sender(url)
    async with session:
        [result] = await sender.send(make_batch(1))
    assert calls == 1 and result.attempts == 1 and counters.retries == 0
    assert not result.delivered and result.error == "status 413 Request Entity Too Large: too large"


async def test_gives_up_when_the_retry_time_is_spent(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """503s that take 3 s each, ``max_retry_time=5``: given up on time after 2 of 10
    attempts, saying so (not "after 2 attempts"), with the batch's key."""
    t = FakeTime()

    async def handler(request: web.Request) -> web.Response:
        t.now += 3.0
        return web.Response(status=503)

    url = await serve(handler)
    policy = RetryPolicy(max_attempts=10, max_retry_time=5.0, backoff_initial=4.0)
    sender, _, session = await make_sender(url, time_=t, policy=policy)
    async with session:
        [result] = await sender.send(make_batch())
    assert result.delivered is False and result.key == "job-1-4" and result.batch.first == 1
    assert result.attempts == 2 and result.status == 503
    [wait] = t.sleeps
    assert 0 < wait <= 2.0  # 3 s of the 5 were spent before it
    assert result.error == f"gave up after {6 + wait:.1f}s: status 503 Service Unavailable"


async def test_retry_after_is_waited_at_the_gate_not_by_the_sender(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """After a 429 with ``Retry-After: 7`` the sender leaves the wait to the shared gate
    (every worker waits there): its own sleep is not used."""
    t = FakeTime()
    own_sleeps: list[float] = []

    async def sender_sleep(seconds: float) -> None:
        own_sleeps.append(seconds)
        await t.sleep(seconds)

    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.Response(status=429, headers={"Retry-After": "7"})
        return web.Response(status=200)

    url = await serve(handler)
    async with AiohttpTransport(connections=4, timeout=60) as transport:
        sender = Sender(
            transport, url, tokens=None, encoder=BodyEncoder("json"), job_id="job",
            retry=RetryPolicy(), counters=Counters(), hooks=NO_HOOKS, clock=t.clock,
            sleep=sender_sleep, gate=PauseGate(clock=t.clock, sleep=t.sleep),
        )  # fmt: skip
        [result] = await sender.send(make_batch())
    assert result.delivered and result.attempts == 2
    assert t.sleeps == [7.0] and own_sleeps == []


async def test_a_zero_backoff_retries_without_sleeping(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """``backoff_initial=0``: a 503 is retried at once, with no ``sleep(0)``."""
    statuses = [503, 200]

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=statuses.pop(0))

    url = await serve(handler)
    t = FakeTime()
    policy = RetryPolicy(max_attempts=3, backoff_initial=0.0)
    sender, _, session = await make_sender(url, time_=t, policy=policy)
    async with session:
        [result] = await sender.send(make_batch())
    assert result.delivered and result.attempts == 2 and t.sleeps == []


async def test_in_flight_counts_concurrent_requests(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """Two batches in flight at once (the server answers once both arrived): the in-flight
    count reaches 2, and is back at 0 after."""
    arrived = 0
    both = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            both.set()
        await asyncio.wait_for(both.wait(), 5)
        return web.Response(status=200)

    url = await serve(handler)
    hooks = EventLog()
    sender, counters, session = await make_sender(url, hooks=hooks)
    async with session:
        await asyncio.gather(sender.send(make_batch()), sender.send(make_batch(first=100)))
    counts = [e.count for e in hooks.events if isinstance(e, InFlight)]
    assert max(counts) == 2 and counts[-1] == 0 == counters.in_flight


def rejecting_handler(bad: int) -> Handler:
    """400 "bad record" for any body holding a record ``i <= bad``; 200 otherwise."""

    async def handler(request: web.Request) -> web.Response:
        records = await request.json()
        if any(r["i"] <= bad for r in records):
            return web.Response(status=400, text="bad record")
        return web.Response(status=200)

    return handler


async def test_a_wholly_bad_batch_is_dead_lettered_whole_and_logged(
    serve: Callable[[Handler], Awaitable[str]], caplog: pytest.LogCaptureFixture
) -> None:
    """Every half and quarter rejected alike, and one record of each quarter alone too: one
    dead result for the batch, saying why, after 1 + 2 + 4 + 4 requests."""
    url = await serve(rejecting_handler(8))
    sender, counters, session = await make_sender(url)
    caplog.set_level(logging.INFO, logger="asyncsync.sender")
    async with session:
        [result] = await sender.send(make_batch(8))
    assert result.delivered is False and result.attempts == 1 and result.status == 400
    assert result.error == (
        "status 400 Bad Request: bad record (both halves, all four quarters, and one record "
        "of each quarter sent alone were rejected the same way: taken as wholly bad, "
        "dead-lettered whole without isolating each record)"
    )
    assert (
        "batch job-1-8: both halves, all quarters and one record of each quarter rejected "
        "alike: dead-lettering its 8 records whole"
    ) in [r.getMessage() for r in caplog.records]
    assert counters.requests == 11 and counters.split_requests == 10


async def test_a_bad_half_is_isolated_record_by_record(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """16 records, the first 8 bad: the halves differ, so the bad half is not taken as
    wholly bad at its own levels; each of its records is dead-lettered alone."""
    url = await serve(rejecting_handler(8))
    sender, _, session = await make_sender(url)
    async with session:
        results = await sender.send(make_batch(16))
    dead = [list(r.batch.positions) for r in results if not r.delivered]
    assert dead == [[i] for i in range(1, 9)]
    assert [p for r in results if r.delivered for p in r.batch.positions] == list(range(9, 17))


async def test_a_split_budget_of_4_pays_for_two_splits(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """``max_split_requests=4``: 4 records with record 1 bad are split twice (2 requests
    each), isolating record 1; the budget is then spent exactly."""
    url = await serve(rejecting_handler(1))
    sender, _, session = await make_sender(url, rejects=RejectOptions(max_split_requests=4))
    async with session:
        results = await sender.send(make_batch())
    dead = [r for r in results if not r.delivered]
    assert [list(r.batch.positions) for r in dead] == [[1]] and "split budget" not in dead[0].error
    assert sender._split_left == 0


async def test_below_the_first_levels_a_rejected_part_is_isolated_depth_first(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """16 records, 1, 3, 5 and 7 bad: the halves differ, so the bad half 1-8 is isolated as
    a binary search, one part at a time (each part's halves before the next part's), which
    decides what a limited split budget pays for first."""
    sent: list[tuple[int, int]] = []

    async def handler(request: web.Request) -> web.Response:
        records = [r["i"] for r in await request.json()]
        sent.append((records[0], records[-1]))
        if any(i in (1, 3, 5, 7) for i in records):
            return web.Response(status=400, text="bad record")
        return web.Response(status=200)

    url = await serve(handler)
    sender, _, session = await make_sender(url)
    async with session:
        results = await sender.send(make_batch(16))
    assert [r.batch.first for r in results if not r.delivered] == [1, 3, 5, 7]
    assert sent[:7] == [(1, 16), (1, 8), (9, 16), (1, 4), (5, 8), (1, 2), (3, 4)]
    assert sent[7:9] == [(1, 1), (2, 2)]
