"""Send one batch: body, headers, token, Idempotency-Key, response classification, retries.

Per request the hot path is: wait at the shared pause gate (one clock read), take the token
(the manager's lock-free fast path), build the headers, POST, read a bounded body, look the
status up in the policy table. Everything else happens only when something went wrong.

Retry timing is full jitter, ``uniform(0, min(backoff_max, backoff_initial * 2**(n-2)))``
before attempt ``n``, or the server's ``Retry-After``. The loop is written out rather than
driven by tenacity because three of its branches are not retries of the same call: a 401
resends with another token without spending an attempt, a 413 splits the batch into two new
ones, and a ``Retry-After`` pauses every worker through :class:`PauseGate`, not only this one.
The random source and the clock are injected so tests are deterministic and instant.

Counting (the summary invariant ``requests == batches + retries``): the first request of an
Idempotency-Key counts one batch, every later request with that key one retry, by the
reason of the answer before it (the status, ``401`` included, or ``error``). A batch split on
413 has its own key, sent once; its parts are new keys, and their requests also count in
``split_requests``. Counts are taken when a request is sent, so a run stopped in a backoff
counts no retry that never went out.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiohttp

from ._body import BodyEncoder
from ._config import Action, RetryPolicy
from ._exceptions import AuthError, ConfigError
from ._hooks import RetryDetails, UploadHooks
from ._records import Batch
from ._redact import redact
from ._summary import Counters
from ._token import Token, TokenManager

__all__ = ["BatchResult", "PauseGate", "RateLimiter", "Sender", "parse_retry_after"]

log = logging.getLogger("asyncsync.sender")

USER_AGENT = "asyncsync"
EXCERPT_LIMIT = 1024  # bytes of a failed response kept for the dead-letter file
OK_BODY_LIMIT = 64 * 1024  # bytes of a 2xx body read so the connection can be reused
MAX_REAUTH = 3  # 401s per batch answered by a refresh; past that the API refuses us

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """How one batch (or one half of a split batch) ended."""

    batch: Batch
    key: str
    delivered: bool
    status: int | None
    attempts: int
    error: str = ""


def parse_retry_after(value: str | None, *, now_wall: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            return None
        now = time.time() if now_wall is None else now_wall
        seconds = when.timestamp() - now
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


class PauseGate:
    """One shared pause: a ``Retry-After`` seen by any worker holds back every worker."""

    def __init__(self, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self._until = 0.0
        self._clock = clock
        self._sleep = sleep

    @property
    def paused_until(self) -> float:
        return self._until

    def pause_for(self, seconds: float) -> None:
        self._until = max(self._until, self._clock() + seconds)

    async def wait(self) -> None:
        # loop: another worker may extend the pause while we sleep
        while (delay := self._until - self._clock()) > 0:
            await self._sleep(delay)


class RateLimiter:
    """At most ``rate`` requests per second across all workers (evenly spaced slots)."""

    def __init__(
        self, rate: float, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        if rate <= 0:
            raise ConfigError(f"rate must be > 0 requests/s, got {rate!r}", field="rate")
        self._interval = 1.0 / rate
        self._next = 0.0
        self._clock = clock
        self._sleep = sleep

    async def acquire(self) -> None:
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await self._sleep(slot - now)


def describe_exception(exc: BaseException) -> str:
    """A short, secret-free reason for a transport failure (the one place they are named)."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "response payload error"
    if isinstance(exc, aiohttp.ClientOSError):
        return f"connection error: {exc.strerror or type(exc).__name__}"
    return redact(f"{type(exc).__name__}: {exc}")[:200]


def _fatal_transport_error(exc: BaseException, url: str) -> Exception | None:
    """Errors no retry can fix: TLS verification and unusable URLs end the run."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError) or (
        isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, ssl.SSLError)
    ):
        detail = getattr(exc, "os_error", exc)
        return ConfigError(
            f"TLS verification failed for {url}: {detail} (use --ca-bundle PATH for a private CA)",
            field="url",
        )
    if isinstance(exc, aiohttp.InvalidURL):
        return ConfigError(f"invalid URL {url!r}", field="url")
    return None


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of the body; a longer body is left unread (the connection closes)."""
    length = resp.content_length
    if length is not None and length <= limit:
        return await resp.read()  # the common case: one read, the connection is reused
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await resp.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class Sender:
    """Delivers batches to one URL; shared by every worker of a run."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        tokens: TokenManager | None,
        encoder: BodyEncoder,
        job_id: str,
        retry: RetryPolicy,
        counters: Counters,
        hooks: UploadHooks,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        gate: PauseGate | None = None,
        rate: RateLimiter | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self._url = url
        self._tokens = tokens
        self._encoder = encoder
        self._job_id = job_id
        self._retry = retry
        self._counters = counters
        self._hooks = hooks
        self._base_headers = {"User-Agent": USER_AGENT, **encoder.headers, **(headers or {})}
        # None: the session's timeout applies (cheaper than a per-request one)
        self._timeout = aiohttp.ClientTimeout(total=timeout) if timeout is not None else None
        self._gate = gate or PauseGate(clock=clock, sleep=sleep)
        self._rate = rate
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        #: the policy table for every status, looked up once per response
        self._actions = {status: retry.action_for(status) for status in range(100, 600)}

    def key_for(self, batch: Batch) -> str:
        """The Idempotency-Key: the same on every retry and on a resumed run of this job."""
        return f"{self._job_id}-{batch.first}-{batch.last}"

    async def send(self, batch: Batch) -> list[BatchResult]:
        """Deliver ``batch``; one result, or one per part when a 413 split it."""
        first = await self._send_one(batch)
        if isinstance(first, BatchResult):  # the common case: no split
            return [first]
        pending = list(reversed(first))
        results: list[BatchResult] = []
        while pending:
            part = pending.pop()
            result = await self._send_one(part, part=True)
            if isinstance(result, BatchResult):
                results.append(result)
            else:  # split: send the left half first
                pending.extend(reversed(result))
        results.sort(key=lambda r: r.batch.first)
        return results

    def _backoff(self, attempt: int) -> float:
        cap = min(self._retry.backoff_max, self._retry.backoff_initial * 2 ** max(0, attempt - 2))
        return self._rng.uniform(0, cap)

    async def _send_one(
        self, batch: Batch, *, part: bool = False
    ) -> BatchResult | tuple[Batch, Batch]:
        key = self.key_for(batch)
        body = self._encoder.encode(batch.records)
        counters = self._counters
        policy = self._retry
        actions = self._actions
        attempts = 0
        reauths = 0
        first_unauthorized: float | None = None
        started = self._clock()
        status: int | None = None
        reason = ""
        retry_reason: str | None = None  # None until the key was sent; then why it is re-sent
        gate = self._gate
        while True:
            if gate.paused_until > 0:  # a Retry-After was seen at some point
                await gate.wait()
            if self._rate is not None:
                await self._rate.acquire()
            token: Token | None = None
            headers = dict(self._base_headers)
            headers["Idempotency-Key"] = key
            if self._tokens is not None:
                token = await self._tokens.get()
                headers["Authorization"] = token.authorization
            attempts += 1
            counters.requests += 1
            if retry_reason is None:
                counters.batches += 1  # the first request with this Idempotency-Key
            else:
                counters.retries += 1
                counters.retries_by_status[retry_reason] += 1
            if part:
                counters.split_requests += 1
            counters.in_flight += 1
            sent_at = self._clock()
            retry_after: float | None = None
            try:
                async with self._post(body, headers) as resp:
                    status = resp.status
                    action = actions.get(status) or policy.action_for(status)
                    if action is Action.ACK:
                        await _read_bounded(resp, OK_BODY_LIMIT)
                        counters.latencies.add(self._clock() - sent_at)
                        counters.bytes_sent += len(body)
                        return BatchResult(batch, key, True, status, attempts)
                    excerpt = await _read_bounded(resp, EXCERPT_LIMIT)
                    reason = self._describe_status(resp, excerpt, token)
                    if action is Action.RETRY:
                        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                fatal = _fatal_transport_error(exc, self._url)
                if fatal is not None:
                    raise fatal from exc
                status, action, reason = None, Action.RETRY, describe_exception(exc)
            finally:
                counters.in_flight -= 1

            if action is Action.REAUTH:
                assert token is not None or self._tokens is None
                if self._tokens is None or token is None:
                    action = Action.DEAD
                    reason = "401 Unauthorized (no authentication configured)"
                else:
                    now = self._clock()
                    # a token that had run out by the time the answer came was not refused
                    expired = token.expires_at is not None and now >= token.expires_at
                    if first_unauthorized is None:
                        first_unauthorized = now
                    elif reauths >= MAX_REAUTH or (
                        token.obtained_at >= first_unauthorized and not expired
                    ):
                        # a token fetched after the first 401 was refused too: the API will
                        # not take our credentials; looping would only hammer the token endpoint
                        raise AuthError(
                            f"{self._url} answered 401 to a freshly obtained token "
                            f"({reauths + 1} times for batch {key})",
                            endpoint=self._url,
                            status=401,
                        )
                    reauths += 1
                    attempts -= 1  # a 401 does not spend the retry budget
                    retry_reason = "401"  # but the re-send is a retry, counted as one
                    self._tokens.invalidate(token)
                    continue
            if action is Action.SPLIT:
                if len(batch) > 1:
                    log.info("413 for batch %s of %d records: splitting", key, len(batch))
                    return batch.split()
                action = Action.DEAD
            if action is Action.DEAD:
                return BatchResult(batch, key, False, status, attempts, reason)

            # RETRY
            elapsed = self._clock() - started
            if attempts >= policy.max_attempts or elapsed >= policy.max_retry_time:
                why = (
                    f"gave up after {attempts} attempts"
                    if attempts >= policy.max_attempts
                    else f"gave up after {elapsed:.1f}s"
                )
                return BatchResult(batch, key, False, status, attempts, f"{why}: {reason}")
            if retry_after is not None:
                wait = min(retry_after, policy.retry_after_max)
                self._gate.pause_for(wait)
            else:
                wait = self._backoff(attempts + 1)
            wait = min(wait, max(0.0, policy.max_retry_time - elapsed))
            retry_reason = str(status) if status is not None else "error"
            details = RetryDetails(batch.seq, key, attempts + 1, reason, status, wait)
            log.info(
                "retry %d of batch %s in %.2fs: %s", details.attempt, key, wait, details.reason
            )
            self._hooks.on_retry(details)
            if retry_after is None and wait > 0:
                await self._sleep(wait)

    def _post(self, body: bytes, headers: dict[str, str]) -> aiohttp.client._RequestContextManager:
        if self._timeout is None:
            return self._session.post(self._url, data=body, headers=headers, allow_redirects=False)
        return self._session.post(
            self._url, data=body, headers=headers, allow_redirects=False, timeout=self._timeout
        )

    def _describe_status(
        self, resp: aiohttp.ClientResponse, excerpt: bytes, token: Token | None
    ) -> str:
        status = resp.status
        if 300 <= status < 400:
            location = resp.headers.get("Location", "?")
            if token is not None:  # a hostile server may put the token it got in the URL
                location = location.replace(token.value, "***")
            return f"status {status}: redirect to {redact(location)[:200]} not followed"
        text = excerpt.decode("utf-8", errors="replace")
        if token is not None:
            text = text.replace(token.value, "***")
        text = redact(text).strip()
        reason = resp.reason or ""
        return f"status {status} {reason}: {text}" if text else f"status {status} {reason}".strip()
