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

Rejections (``RejectOptions``): a batch of several records answered 400 or 422 is split in
halves, like a 413, until each rejected record stands alone (a binary search: for k bad
records of n, at most 2·k·⌈log2 n⌉ more requests); a batch whose halves and quarters are all
rejected alike is taken as wholly bad and dead-lettered whole. With per-record results
(``--results``), a 2xx answer settles each record on its own; items with a retryable status
are sent again as a part of their own. Every part's key derives from its records
(:meth:`Sender.key_for`), and a batch always splits the same way, so a resumed run sends the
same parts under the same keys.

Counting (the summary invariant ``requests == batches + retries``): the first request of an
Idempotency-Key counts one batch, every later request with that key one retry, by the
reason of the answer before it (the status, ``401`` included, or ``error``). A batch split
(on a 413 or a rejection) has its own key; its parts are new keys, and so is each round of
items re-sent after per-record results: their first requests count as batches, and every
request for a part also counts in ``split_requests``. Counts are taken when a request is
sent, so a run stopped in a backoff counts no retry that never went out; ``hooks.on_retry``
is called at the same point, so its events add up to the same counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from ._body import BodyEncoder
from ._concurrency import BACKPRESSURE_STATUSES, ConcurrencyLimiter
from ._config import DEFAULT_REJECTS, Action, RejectOptions, RetryPolicy
from ._exceptions import AuthError
from ._hooks import InFlight, RequestDone, RetryDetails, UploadHooks, overrides
from ._http import Response, Transport, TransportError
from ._records import Batch, BatchResult
from ._redact import redact
from ._results import RESULTS_BODY_LIMIT, ResultsError, ResultsReader, results_reader
from ._retry import Backoff, Budget, Clock, PauseGate, RateLimiter, Sleep, parse_retry_after
from ._summary import Counters
from .auth._manager import Token, TokenManager

__all__ = ["Sender"]

log = logging.getLogger("asyncsync.sender")

USER_AGENT = "asyncsync"
EXCERPT_LIMIT = 1024  # bytes of a failed response kept for the dead-letter file
OK_BODY_LIMIT = 64 * 1024  # bytes of a body read so the connection can be reused
MAX_REAUTH = 3  # 401s per batch answered by a refresh; past that the API refuses us
#: statuses that mean "something in this body is wrong": a batch is split to find what
REJECT_STATUSES = frozenset({400, 422})
#: levels of splitting after which a batch rejected alike at every part is wholly bad
WHOLE_BAD_LEVELS = 2
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True, slots=True)
class _Rejected:
    """A batch of several records answered 400/422: to isolate the rejected records."""

    result: BatchResult


@dataclass(frozen=True, slots=True)
class _Partial:
    """Per-record results: the records ``settled`` (delivered or dead), and ``again``: those
    to send again, continuing the retry budget (``attempts`` made since ``started``)."""

    settled: list[BatchResult]
    again: Batch | None
    attempts: int
    started: float


#: what a send can turn into besides a settled batch: halves (413), a rejection, results
_Outcome = tuple[Batch, Batch] | _Rejected | _Partial


def _signature(result: BatchResult) -> tuple[int | None, str]:
    """A rejection's status and message with numbers masked (record indexes differ)."""
    return result.status, _DIGITS.sub("#", result.error)


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
        rejects: RejectOptions = DEFAULT_REJECTS,
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
        # checked once: with hooks that do not want them, no per-request event is built
        self._on_request = hooks.on_request if overrides(hooks, "on_request") else None
        self._on_in_flight = hooks.on_in_flight if overrides(hooks, "on_in_flight") else None
        self._base_headers = {"User-Agent": USER_AGENT, **encoder.headers, **(headers or {})}
        self._key_prefix = f"{job_id}-"
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
        self._accepted: Token | None = None  # the last token the API took (told once)
        self._split = rejects.on_reject == "split"
        self._split_budget = rejects.max_split_requests
        self._split_left = rejects.max_split_requests  # run-wide: every worker draws on it
        self._results: ResultsReader | None = (
            None if rejects.results is None else results_reader(rejects.results)
        )
        # per-record results need the whole answer; otherwise read only enough to reuse it
        self._max_body = OK_BODY_LIMIT if self._results is None else RESULTS_BODY_LIMIT

    def key_for(self, batch: Batch) -> str:
        """The Idempotency-Key: the same on every retry and on a resumed run of this job.

        Derived from the record range, which names the body when the batch is dense (a batch
        as cut, or a part of one split in halves). A subset of a batch (items sent again)
        adds a digest of its positions, so two subsets of one range never share a key, and
        the round it is sent in (``-rN``): a server that deduplicates by key has marked the
        previous key done, and must not answer the new request from it. Every piece is
        decided by the answers before it, so a resumed run derives the same keys."""
        key = f"{self._key_prefix}{batch.first}-{batch.last}"
        if not batch.dense:
            digest = hashlib.blake2b(
                ",".join(map(str, batch.positions)).encode(), digest_size=8
            ).hexdigest()
            key = f"{key}-{digest}"
        if batch.resend:
            key = f"{key}-r{batch.resend}"
        return key

    async def send(self, batch: Batch) -> list[BatchResult]:
        """Deliver ``batch``; one result, or one per part when it was split (a 413, a
        rejection) or answered per record. The results partition the batch's records: each
        is delivered or dead-lettered exactly once, and the batch is settled when all are."""
        first = await self._send_one(batch)
        if isinstance(first, BatchResult):  # the common case: no split
            return [first]
        results = await self._follow(first, detect=True)
        if len(results) > 1:
            results.sort(key=lambda r: r.batch.first)
        return results

    async def _deliver(
        self, part: Batch, *, attempts: int = 0, started: float | None = None, detect: bool = True
    ) -> list[BatchResult]:
        """Send one part of a split batch and follow whatever it turns into."""
        out = await self._send_one(part, part=True, attempts=attempts, started=started)
        if isinstance(out, BatchResult):
            return [out]
        return await self._follow(out, detect=detect)

    async def _follow(self, out: _Outcome, *, detect: bool) -> list[BatchResult]:
        if isinstance(out, tuple):  # a 413: both halves, the left first
            left, right = out
            return [*await self._deliver(left), *await self._deliver(right)]
        if isinstance(out, _Partial):
            results = list(out.settled)
            if out.again is not None:
                results += await self._deliver(
                    out.again, attempts=out.attempts, started=out.started
                )
            return results
        return await self._isolate(out.result, detect=detect)

    async def _isolate(self, rejected: BatchResult, *, detect: bool) -> list[BatchResult]:
        """Split a rejected batch until each rejected record stands alone (a binary search:
        for k bad records of n, at most 2·k·⌈log2 n⌉ requests).

        With ``detect`` (the batch as first rejected), the first :data:`WHOLE_BAD_LEVELS`
        levels go breadth first: when every half, then every quarter, is rejected with the
        same status and message (digits aside) as the batch, the batch is taken as wholly bad
        and dead-lettered whole, at 6 requests instead of 2n (a schema mismatch, every record
        refused). A part the run-wide split budget cannot pay for is dead-lettered whole.
        """
        signature = _signature(rejected)
        levels = WHOLE_BAD_LEVELS if detect else 1
        level = [rejected]
        settled: list[BatchResult] = []
        for depth in range(1, levels + 1):
            parts: list[Batch] = []
            for r in level:
                if self._take_split():
                    parts.extend(r.batch.split())
                else:
                    settled.append(self._unsplit(r))
            outs = [await self._send_one(p, part=True) for p in parts]
            alike = bool(outs) and all(
                isinstance(o, _Rejected) and _signature(o.result) == signature for o in outs
            )
            if alike and not settled and depth < levels:
                level = [o.result for o in outs if isinstance(o, _Rejected)]
                continue
            if alike and not settled and detect:
                log.warning(
                    "batch %s: every part rejected alike at %d levels of splitting: "
                    "dead-lettering its %d records whole",
                    rejected.key,
                    levels,
                    len(rejected.batch),
                )
                return [
                    BatchResult(
                        rejected.batch,
                        rejected.key,
                        False,
                        rejected.status,
                        rejected.attempts,
                        f"{rejected.error} (every half and quarter of the batch was rejected "
                        "the same way: taken as wholly bad, dead-lettered whole without "
                        "isolating each record)",
                    )
                ]
            for o in outs:
                if isinstance(o, BatchResult):
                    settled.append(o)
                else:
                    settled += await self._follow(o, detect=False)
            return settled
        return settled  # pragma: no cover - the last level always returns

    def _take_split(self) -> bool:
        """Reserve the two requests of one rejection split from the run-wide budget."""
        left = self._split_left
        if left is None:
            return True
        if left < 2:
            return False
        self._split_left = left - 2
        return True

    def _unsplit(self, r: BatchResult) -> BatchResult:
        log.warning("batch %s rejected; the split budget is spent: dead-lettering it", r.key)
        return BatchResult(
            r.batch,
            r.key,
            False,
            r.status,
            r.attempts,
            f"{r.error} (not split to isolate the rejected records: the run's split budget, "
            f"--max-split-requests {self._split_budget}, is spent)",
        )

    async def _send_one(
        self,
        batch: Batch,
        *,
        part: bool = False,
        attempts: int = 0,
        started: float | None = None,
    ) -> BatchResult | _Outcome:
        """Send ``batch`` under its key until it settles, or say what it turned into: halves
        (413), a rejection to isolate, or per-record results with items to send again.
        ``attempts``/``started``: items re-sent continue the retry budget of their batch."""
        # the hot path: one key, one body, one headers dict (a copy of the base one), few
        # clock reads; everything else only when something went wrong
        if batch.dense and not batch.resend:
            key = f"{self._key_prefix}{batch.first}-{batch.last}"
        else:
            key = self.key_for(batch)
        body = self._encoder.encode(batch.records)
        counters = self._counters
        policy = self._retry
        budget = self._budget
        actions = self._actions
        transport = self._transport
        url = self._url
        timeout = self._timeout
        max_body = self._max_body
        clock = self._clock
        tokens = self._tokens
        reauths = 0
        first_unauthorized: float | None = None
        if started is None:
            started = clock()
        status: int | None = None
        reason = ""
        # None until the key was sent; then the retry the next request is (why, which attempt)
        retry: RetryDetails | None = None
        gate = self._gate
        on_request = self._on_request
        on_in_flight = self._on_in_flight
        if attempts:  # items the server asked to retry: back off as for a retry
            wait = min(self._backoff.delay(attempts), budget.left(self._clock() - started))
            if wait > 0:
                await self._sleep(wait)
        limiter = self._limiter
        while True:
            if gate.paused_until > 0:  # a Retry-After was seen at some point
                await gate.wait()
            if self._rate is not None:
                await self._rate.acquire()
            token: Token | None = None
            headers = self._base_headers.copy()
            headers["Idempotency-Key"] = key
            if tokens is not None:
                token = await tokens.get()
                headers["Authorization"] = token.authorization
            if limiter is not None:  # --concurrency auto: one slot per attempt
                await limiter.acquire()
            attempts += 1
            counters.requests += 1
            if retry is None:
                counters.batches += 1  # the first request with this Idempotency-Key
            else:
                # counted, and told to the hooks, as the re-send goes out: on_retry events
                # add up to retries / retries_by_status exactly (a 401 re-send included)
                counters.retries += 1
                counters.retries_by_status[retry.label] += 1
                self._hooks.on_retry(retry)
            if part:
                counters.split_requests += 1
            counters.in_flight += 1
            if on_in_flight is not None:
                on_in_flight(InFlight(counters.in_flight))
            sent_at = clock()
            retry_after: float | None = None
            rtt = -1.0  # an ack's round trip; -1: no latency signal
            congested = False  # back-pressure: 429/502/503/504, a timeout, a reset
            try:
                resp = await transport.post(
                    url, body=body, headers=headers, timeout=timeout, max_body=max_body
                )
            except TransportError as exc:
                if on_request is not None:
                    on_request(
                        RequestDone(batch.seq, attempts, None, self._clock() - sent_at, len(body))
                    )
                if not exc.retryable:  # TLS verification, an unusable URL: ends the run
                    raise
                status, action, reason = None, Action.RETRY, str(exc)
                congested = True
            else:
                status = resp.status
                action = actions.get(status) or policy.action_for(status)
                if action is Action.ACK:
                    if token is not None and token is not self._accepted:
                        # the API takes this token: our credentials work (once per token)
                        self._accepted = token
                        assert tokens is not None
                        tokens.accepted(token)
                    latency = rtt = clock() - sent_at
                    counters.latencies.add(latency)
                    counters.bytes_sent += len(body)
                    if on_request is not None:
                        on_request(RequestDone(batch.seq, attempts, status, latency, len(body)))
                    if self._results is None:
                        return BatchResult(batch, key, True, status, attempts)
                    return self._read_results(batch, key, resp, attempts, started)
                if on_request is not None:
                    on_request(
                        RequestDone(batch.seq, attempts, status, self._clock() - sent_at, len(body))
                    )
                congested = status in BACKPRESSURE_STATUSES
                reason = self._describe_status(resp, resp.body[:EXCERPT_LIMIT], token)
                if action is Action.RETRY:
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            finally:
                counters.in_flight -= 1
                if on_in_flight is not None:
                    on_in_flight(InFlight(counters.in_flight))
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
                    if first_unauthorized is None:
                        first_unauthorized = now
                    elif reauths >= MAX_REAUTH or (
                        token.obtained_at >= first_unauthorized
                        # a token that ran out (in flight, or during this batch's retries)
                        # was not refused: the manager tells expiry from refusal
                        and not self._tokens.refused_by_expiry(token)
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
                    # but the re-send is a retry, counted as one when it goes out
                    # (DESIGN: requests = batches + retries)
                    retry = RetryDetails(batch.seq, key, attempts + 1, reason, 401, 0.0)
                    log.info(
                        "retry %d of batch %s after a 401, with a new token",
                        retry.attempt,
                        key,
                        extra={"event": "retry", "batch": batch.seq, "key": key, "status": 401,
                               "attempt": retry.attempt, "wait_s": 0.0},
                    )  # fmt: skip
                    continue
            if action is Action.SPLIT:
                if len(batch) > 1:
                    log.info(
                        "413 for batch %s of %d records: splitting",
                        key,
                        len(batch),
                        extra={"event": "split", "batch": batch.seq, "key": key, "status": 413},
                    )
                    return batch.split()
                action = Action.DEAD
            if action is Action.DEAD:
                result = BatchResult(batch, key, False, status, attempts, reason)
                if status in REJECT_STATUSES and self._split and len(batch) > 1:
                    log.info("%s for batch %s of %d records: splitting", status, key, len(batch))
                    return _Rejected(result)
                return result

            # RETRY
            elapsed = clock() - started
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
            # counted when the re-send goes out (a run stopped in this pause sends no retry)
            retry = RetryDetails(batch.seq, key, attempts + 1, reason, status, wait)
            log.info(
                "retry %d of batch %s in %.2fs: %s",
                retry.attempt,
                key,
                wait,
                retry.reason,
                extra={"event": "retry", "batch": batch.seq, "key": key, "status": status,
                       "attempt": retry.attempt, "wait_s": round(wait, 3)},
            )  # fmt: skip
            if retry_after is None and wait > 0:
                await self._sleep(wait)

    def _read_results(
        self, batch: Batch, key: str, resp: Response, attempts: int, started: float
    ) -> BatchResult | _Partial:
        """A 2xx answer read as one result per record (``--results``)."""
        assert self._results is not None
        status = resp.status
        try:
            items = self._results(resp.body, len(batch))
        except ResultsError as exc:
            log.warning("batch %s: %s", key, exc)
            return BatchResult(
                batch, key, False, status, attempts, f"status {status}: per-record results: {exc}"
            )
        failed = [i for i, item in enumerate(items) if not item.ok]
        if not failed:
            return BatchResult(batch, key, True, status, attempts)
        settled: list[BatchResult] = []
        if len(failed) < len(items):
            bad = set(failed)
            ok = [i for i in range(len(items)) if i not in bad]
            settled.append(BatchResult(batch.subset(ok), key, True, status, attempts))
        elapsed = self._clock() - started
        exhausted = self._budget.exhausted(attempts, elapsed)
        again: list[int] = []
        for i in failed:
            item = items[i]
            if item.retryable and not exhausted:
                again.append(i)
                continue
            error = f"status {status}, record {i + 1} of {len(batch)}: {item.message}"
            if item.retryable:
                error = f"gave up after {attempts} attempts: {error}"
            item_status = item.status if item.status is not None else status
            settled.append(BatchResult(batch.subset([i]), key, False, item_status, attempts, error))
        if again:
            log.info(
                "batch %s: %d of %d records to send again (%s)",
                key,
                len(again),
                len(batch),
                items[again[0]].message,
            )
            return _Partial(settled, batch.subset(again, resend=True), attempts, started)
        return _Partial(settled, None, attempts, started)

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
