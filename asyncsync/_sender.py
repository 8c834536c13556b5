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
records of n, at most 2·k·⌈log2 n⌉ more requests, probes included). The wholly-bad rule, for
a batch of at least :data:`MIN_DETECT` records as first rejected: if both halves, then all
four quarters, are rejected with the batch's status and message (digits masked), one record
of each quarter, picked by a stable hash of the quarter's key, is sent alone; only if all
four are rejected that way too is the batch dead-lettered whole (10 extra requests instead
of 2n). A probe that is accepted or answered otherwise stops the probing, and each quarter is
isolated around its (settled) probe record. So good records are dead-lettered as part of a
"wholly bad" batch only when the probe record of every quarter is itself bad.

With per-record results (``--results``), a 2xx answer settles each record on its own; items
with a retryable status are sent again as a part of their own; an answer in which every item
is retryable did nothing, and is retried as it is (same records, same key), like a 429.

Keys: a part's key is a function of its exact records (:meth:`Sender.key_for`): never of a
round or of the path that led to it. A batch always splits the same way and probes the same
records, and a server that deduplicates by key replays the answers it gave, so a resumed run
walks the same parts under the same keys; a record settled by a probe is never sent again
in another part. No body is ever sent under two keys, and a record is stored under one.

The split budget (``max_split_requests``, run-wide, shared by every worker) pays for every
request for a part: both halves of a split (a 413 or a rejection) before they are made, a
probe, an again-part of items, and each retry of a part as it goes out; so
``split_requests`` never exceeds it. What the budget cannot pay for is dead-lettered with
its last answer, the error naming the budget: a rejected part whole, a 413 batch whole,
items not sent again, a part not retried.

Counting (the summary invariant ``requests == batches + retries``): the first request of an
Idempotency-Key counts one batch, every later request with that key one retry, by the
reason of the answer before it (the status, ``401`` included, or ``error``; the items' status,
e.g. ``429``, for an answer in which every item is to retry). A batch split (on a 413 or a
rejection) has its own key; its parts, probes and again-parts are new keys: their first
requests count as batches, and every request for a part (retries included) also counts in
``split_requests``. Counts are taken when a request is sent, so a run stopped in a backoff
counts no retry that never went out; ``hooks.on_retry`` is called at the same point, so its
events add up to the same counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import time
from collections.abc import Iterable, Mapping
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
#: levels of splitting (halves, quarters) rejected alike before a batch is probed as wholly bad
WHOLE_BAD_LEVELS = 2
#: the fewest records a rejected batch needs for the wholly-bad test (every quarter has two)
MIN_DETECT = 8
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


@dataclass(frozen=True, slots=True)
class _Throttled:
    """Per-record results in which every item failed with a retryable status: nothing was
    done, so the request is retried as it is, under its own key."""

    status: int
    reason: str


#: what a send can turn into besides a settled batch: halves (413), a rejection, results
_Outcome = tuple[Batch, Batch] | _Rejected | _Partial


def _signature(result: BatchResult) -> tuple[int | None, str]:
    """A rejection's status and message with numbers masked (record indexes differ)."""
    return result.status, _DIGITS.sub("#", result.error)


def _probe_index(key: str, size: int) -> int:
    """Which record of a part (``size`` records, named by ``key``) is sent alone as a probe:
    a stable hash, so a resumed run probes the same record, and a regular pattern of bad
    records (every 50th) does not line up with it."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % size


def _tail(r: BatchResult) -> tuple[bool, int | None, int, str]:
    """A result's fields after ``batch`` and ``key``."""
    return r.delivered, r.status, r.attempts, r.error


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

        A function of the exact set of records, nothing else: the record range, which names
        the body when the batch is dense (a batch as cut, a part of one split in halves, a
        single record), plus a digest of the positions for a subset picked out of a batch
        (items sent again after per-record results). So the same records always travel under
        the same key and two different sets never share one, whatever round or path brought
        them there: a resumed run that is answered the same way sends the same keys."""
        key = f"{self._key_prefix}{batch.first}-{batch.last}"
        if not batch.dense:
            digest = hashlib.blake2b(
                ",".join(map(str, batch.positions)).encode(), digest_size=8
            ).hexdigest()
            key = f"{key}-{digest}"
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

        With ``detect`` (the batch as first rejected, of at least :data:`MIN_DETECT`
        records), the first :data:`WHOLE_BAD_LEVELS` levels go breadth first. When both
        halves, then all four quarters, are rejected with the batch's status and message
        (digits aside), one record of each quarter (picked by a hash of the quarter's key:
        the same on a resumed run) is sent alone. Only if all four are rejected the same way
        too is the batch taken as wholly bad and dead-lettered whole: 10 requests instead
        of 2n (a schema mismatch, every record refused). The first probe that is not rejected
        that way stops the probing, and the quarters are isolated as usual, each around its
        probe record (already settled: never sent again in another part, so under no second
        key). So bad records spread one per quarter are isolated, not taken for a wholly bad
        batch, unless each sits exactly where its quarter's probe falls. A split or probe the
        run-wide split budget cannot pay for leaves its part dead-lettered whole.
        """
        if not detect or len(rejected.batch) < MIN_DETECT:
            return await self._bisect(rejected)
        signature = _signature(rejected)

        def alike(out: BatchResult | _Outcome) -> bool:
            if isinstance(out, _Rejected):
                out = out.result
            return (
                isinstance(out, BatchResult) and not out.delivered and _signature(out) == signature
            )

        level = [rejected]
        for _ in range(WHOLE_BAD_LEVELS):
            settled: list[BatchResult] = []
            parts: list[Batch] = []
            for r in level:
                if self._charge(2):
                    parts.extend(r.batch.split())
                else:
                    settled.append(self._unsplit(r))
            outs = [await self._send_one(p, part=True) for p in parts]
            if settled or not all(map(alike, outs)):
                for o in outs:
                    if isinstance(o, BatchResult):
                        settled.append(o)
                    else:
                        settled += await self._follow(o, detect=False)
                return settled
            level = [o.result for o in outs if isinstance(o, _Rejected)]
        # every half and quarter rejected alike: one record of each quarter, alone
        probes: list[tuple[int, list[BatchResult]]] = []
        for q in level:
            if not self._charge(1):
                break
            i = _probe_index(q.key, len(q.batch))
            out = await self._send_one(q.batch.subset([i]), part=True)
            if isinstance(out, BatchResult):
                probes.append((i, [out]))
                if alike(out):
                    continue
            else:  # per-record results for the one record
                probes.append((i, await self._follow(out, detect=False)))
            break
        if len(probes) == len(level) and all(len(rs) == 1 and alike(rs[0]) for _, rs in probes):
            log.warning(
                "batch %s: both halves, all quarters and one record of each quarter rejected "
                "alike: dead-lettering its %d records whole",
                rejected.key,
                len(rejected.batch),
            )
            return [
                BatchResult(
                    rejected.batch,
                    rejected.key,
                    False,
                    rejected.status,
                    rejected.attempts,
                    f"{rejected.error} (both halves, all four quarters, and one record of "
                    "each quarter sent alone were rejected the same way: taken as wholly bad, "
                    "dead-lettered whole without isolating each record)",
                )
            ]
        results: list[BatchResult] = []
        for n, q in enumerate(level):
            if n >= len(probes):
                results += await self._bisect(q)
                continue
            i, probed = probes[n]
            results += probed
            size = len(q.batch)
            rest = [q.batch.subset(ix) for ix in (range(i), range(i + 1, size)) if ix]
            if not self._charge(len(rest)):
                # the quarter was rejected; what is left of it cannot be paid for
                results += [self._unsplit(BatchResult(p, q.key, *_tail(q))) for p in rest]
                continue
            results += await self._send_parts(rest)
        return results

    async def _bisect(self, rejected: BatchResult) -> list[BatchResult]:
        """One level of the binary search: both halves sent, then each followed (so a part's
        halves go before the next part's, which decides what a limited budget pays first)."""
        if not self._charge(2):
            return [self._unsplit(rejected)]
        return await self._send_parts(rejected.batch.split())

    async def _send_parts(self, parts: Iterable[Batch]) -> list[BatchResult]:
        """Send each part (paid for already), then follow what each turned into."""
        outs = [await self._send_one(p, part=True) for p in parts]
        results: list[BatchResult] = []
        for o in outs:
            results += [o] if isinstance(o, BatchResult) else await self._follow(o, detect=False)
        return results

    def _charge(self, requests: int) -> bool:
        """Pay ``requests`` requests for parts from the run-wide split budget, or none."""
        left = self._split_left
        if left is None:
            return True
        if left < requests:
            return False
        self._split_left = left - requests
        return True

    def _spent(self) -> str:
        return f"the run's split budget, --max-split-requests {self._split_budget}, is spent"

    def _unsplit(self, r: BatchResult) -> BatchResult:
        log.warning("batch %s rejected; the split budget is spent: dead-lettering it", r.key)
        return BatchResult(
            r.batch,
            r.key,
            False,
            r.status,
            r.attempts,
            f"{r.error} (not split to isolate the rejected records: {self._spent()})",
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
        if batch.dense:
            key = f"{self._key_prefix}{batch.first}-{batch.last}"
        else:
            key = self.key_for(batch)
        body = self._encoder.encode(batch.records)
        # locals only for what the first request uses more than once (each costs a store)
        counters = self._counters
        clock = self._clock
        tokens = self._tokens
        reauths = 0
        first_unauthorized: float | None = None
        status: int | None = None
        reason = ""
        # None until the key was sent; then the retry the next request is (why, which attempt)
        retry: RetryDetails | None = None
        on_request = self._on_request
        on_in_flight = self._on_in_flight
        if attempts and started is not None:  # items the server asked to retry: back off
            wait = min(self._backoff.delay(attempts), self._budget.left(self._clock() - started))
            if wait > 0:
                await self._sleep(wait)
        limiter = self._limiter
        while True:
            if part and retry is not None and not self._charge(1):
                # the first request of a part was paid by whoever made the part; its
                # retries are requests for a part too, paid the same way
                return BatchResult(
                    batch, key, False, status, attempts, f"{reason} (not retried: {self._spent()})"
                )
            if self._gate.paused_until > 0:  # a Retry-After was seen at some point
                await self._gate.wait()
            if self._rate is not None:
                await self._rate.acquire()
            token: Token | None = None
            headers = self._base_headers.copy()
            headers["Idempotency-Key"] = key
            if tokens is not None:
                # the common case, a token in hand, without a coroutine; get() when not
                token = tokens.ready() or await tokens.get()
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
            if started is None:  # the retry budget runs from the first request of the key
                started = sent_at
            retry_after: float | None = None
            rtt = -1.0  # an ack's round trip; -1: no latency signal
            congested = False  # back-pressure: 429/502/503/504, a timeout, a reset
            try:
                resp = await self._transport.post(
                    self._url,
                    body=body,
                    headers=headers,
                    timeout=self._timeout,
                    max_body=self._max_body,
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
                action = self._actions.get(status) or self._retry.action_for(status)
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
                    read = self._read_results(batch, key, resp, attempts, started)
                    if not isinstance(read, _Throttled):
                        return read
                    # nothing done, every item to retry: a retry of this very request
                    # (the same records are the same key), a push-back, not a latency
                    status, action, reason = read.status, Action.RETRY, read.reason
                    rtt = -1.0
                    congested = status in BACKPRESSURE_STATUSES
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
                    if self._charge(2):  # the halves' first requests
                        log.info(
                            "413 for batch %s of %d records: splitting",
                            key,
                            len(batch),
                            extra={"event": "split", "batch": batch.seq, "key": key,
                                   "status": 413},
                        )  # fmt: skip
                        return batch.split()
                    reason = f"{reason} (not split: {self._spent()})"
                action = Action.DEAD
            if action is Action.DEAD:
                result = BatchResult(batch, key, False, status, attempts, reason)
                if status in REJECT_STATUSES and self._split and len(batch) > 1:
                    log.info("%s for batch %s of %d records: splitting", status, key, len(batch))
                    return _Rejected(result)
                return result

            # RETRY
            policy = self._retry
            budget = self._budget
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
    ) -> BatchResult | _Partial | _Throttled:
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
        elapsed = self._clock() - started
        exhausted = self._budget.exhausted(attempts, elapsed)
        if not exhausted and len(failed) == len(items) and all(i.retryable for i in items):
            # Nothing was done: the same records again, so the same key (key_for). Sending
            # them under another key would put one body under two keys; a server that
            # deduplicates by key keeps no answer in which it did nothing (like a 429).
            first = items[0]
            assert first.status is not None  # retryable items have a status
            return _Throttled(
                first.status,
                f"status {status}, all {len(batch)} records to retry: {first.message}",
            )
        settled: list[BatchResult] = []
        if len(failed) < len(items):
            bad = set(failed)
            ok = [i for i in range(len(items)) if i not in bad]
            settled.append(BatchResult(batch.subset(ok), key, True, status, attempts))
        again = [i for i in failed if items[i].retryable and not exhausted]
        # the again part is a new key: its first request is paid from the split budget
        paid = bool(again) and self._charge(1)
        for i in failed:
            item = items[i]
            if paid and item.retryable:
                continue
            error = f"status {status}, record {i + 1} of {len(batch)}: {item.message}"
            if item.retryable:
                error = (
                    f"gave up after {attempts} attempts: {error}"
                    if exhausted
                    else f"{error} (not sent again: {self._spent()})"
                )
            item_status = item.status if item.status is not None else status
            settled.append(BatchResult(batch.subset([i]), key, False, item_status, attempts, error))
        if paid:
            log.info(
                "batch %s: %d of %d records to send again (%s)",
                key,
                len(again),
                len(batch),
                items[again[0]].message,
            )
            return _Partial(settled, batch.subset(again), attempts, started)
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
