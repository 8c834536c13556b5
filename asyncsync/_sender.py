"""Send one batch: body, headers, token, Idempotency-Key, response classification, retries.

Per request the hot path is: wait at the shared pause gate (one clock read), take the token
(the manager's lock-free fast path), build the headers, POST through the transport (which
reads a bounded body), look the status up in the policy table. Everything else happens only
when something went wrong.

Retry timing is :class:`~asyncsync._retry.Backoff` (full jitter): before attempt ``n``,
``uniform(0, min(backoff_max, backoff_initial * 2**(n-2)))``, or the server's ``Retry-After``.
The loop is written out rather than driven by a retry library because three of its branches
are not retries of the same call: a 401 resends with another token without spending an
attempt, a 413 splits the batch into two new ones, and a ``Retry-After`` pauses every worker
through :class:`~asyncsync._retry.PauseGate`, not only this one. The random source and the
clock are injected so tests are deterministic and instant.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping

from ._body import BodyEncoder
from ._concurrency import BACKPRESSURE_STATUSES, ConcurrencyLimiter
from ._config import Action, RetryPolicy
from ._exceptions import AuthError
from ._hooks import RetryDetails, UploadHooks
from ._http import Response, Transport, TransportError
from ._records import Batch, BatchResult
from ._redact import redact
from ._retry import Backoff, Budget, Clock, PauseGate, RateLimiter, Sleep, parse_retry_after
from ._summary import Counters
from .auth._manager import Token, TokenManager

__all__ = ["Sender"]

log = logging.getLogger("asyncsync.sender")

USER_AGENT = "asyncsync"
EXCERPT_LIMIT = 1024  # bytes of a failed response kept for the dead-letter file
OK_BODY_LIMIT = 64 * 1024  # bytes of a body read so the connection can be reused
MAX_REAUTH = 3  # 401s per batch answered by a refresh; past that the API refuses us


class Sender:
    """Delivers batches to one URL through a :class:`~asyncsync._http.Transport`; shared by
    every worker of a run."""

    def __init__(
        self,
        transport: Transport,
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
        limiter: ConcurrencyLimiter | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._transport = transport
        self._url = url
        self._tokens = tokens
        self._encoder = encoder
        self._job_id = job_id
        self._retry = retry
        self._counters = counters
        self._hooks = hooks
        self._base_headers = {"User-Agent": USER_AGENT, **encoder.headers, **(headers or {})}
        # None: the transport's own timeout applies (cheaper than a per-request one)
        self._timeout = timeout
        self._gate = gate or PauseGate(clock=clock, sleep=sleep)
        self._rate = rate
        # None (a fixed --concurrency): the workers are the limit, nothing to do per attempt
        self._limiter = limiter
        self._clock = clock
        self._sleep = sleep
        self._backoff = Backoff(retry.backoff_initial, retry.backoff_max, rng=rng)
        self._budget = Budget(attempts=retry.max_attempts, seconds=retry.max_retry_time)
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
            result = await self._send_one(part)
            if isinstance(result, BatchResult):
                results.append(result)
            else:  # split: send the left half first
                pending.extend(reversed(result))
        results.sort(key=lambda r: r.batch.first)
        return results

    async def _send_one(self, batch: Batch) -> BatchResult | tuple[Batch, Batch]:
        key = self.key_for(batch)
        body = self._encoder.encode(batch.records)
        counters = self._counters
        counters.batches += 1
        policy = self._retry
        budget = self._budget
        actions = self._actions
        transport = self._transport
        url = self._url
        timeout = self._timeout
        attempts = 0
        reauths = 0
        first_unauthorized: float | None = None
        started = self._clock()
        status: int | None = None
        reason = ""
        gate = self._gate
        limiter = self._limiter
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
            if limiter is not None:  # --concurrency auto: one slot per attempt
                await limiter.acquire()
            attempts += 1
            counters.requests += 1
            counters.in_flight += 1
            sent_at = self._clock()
            retry_after: float | None = None
            rtt = -1.0  # an ack's round trip; -1: no latency signal
            congested = False  # back-pressure: 429/502/503/504, a timeout, a reset
            try:
                resp = await transport.post(
                    url, body=body, headers=headers, timeout=timeout, max_body=OK_BODY_LIMIT
                )
            except TransportError as exc:
                if not exc.retryable:  # TLS verification, an unusable URL: ends the run
                    raise
                status, action, reason = None, Action.RETRY, str(exc)
                congested = True
            else:
                status = resp.status
                action = actions.get(status) or policy.action_for(status)
                if action is Action.ACK:
                    rtt = self._clock() - sent_at
                    counters.latencies.add(rtt)
                    counters.bytes_sent += len(body)
                    return BatchResult(batch, key, True, status, attempts)
                congested = status in BACKPRESSURE_STATUSES
                reason = self._describe_status(resp, resp.body[:EXCERPT_LIMIT], token)
                if action is Action.RETRY:
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            finally:
                counters.in_flight -= 1
                if limiter is not None:
                    if rtt >= 0:
                        limiter.release_ok(rtt)
                    elif congested:
                        limiter.release_backpressure()
                    else:  # a 401, another 4xx, a 500, a cancellation: no signal
                        limiter.release()

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
            if budget.exhausted(attempts, elapsed):
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
                wait = self._backoff.delay(attempts)
            wait = min(wait, budget.left(elapsed))
            counters.retries += 1
            counters.retries_by_status[str(status) if status is not None else "error"] += 1
            details = RetryDetails(batch.seq, key, attempts + 1, reason, status, wait)
            log.info(
                "retry %d of batch %s in %.2fs: %s", details.attempt, key, wait, details.reason
            )
            self._hooks.on_retry(details)
            if retry_after is None and wait > 0:
                await self._sleep(wait)

    def _describe_status(self, resp: Response, excerpt: bytes, token: Token | None) -> str:
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
