"""The sender's rejection splits and per-record results, against a loopback server.

The server is a small aiohttp app in the test: it rejects a body holding a "bad" record with a
400 naming its index (or answers per-record results), so each test controls exactly which
records fail and counts every request.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from asyncsync import ConfigError, RetryPolicy
from asyncsync._body import BodyEncoder
from asyncsync._config import RejectOptions
from asyncsync._hooks import NO_HOOKS
from asyncsync._records import Batch, BatchResult
from asyncsync._retry import PauseGate
from asyncsync._sender import Sender, _probe_index
from asyncsync._summary import Counters
from asyncsync._transports import open_transport

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}/ingest"

    yield start
    for runner in runners:
        await runner.cleanup()


def make_batch(n: int, first: int = 1, bad: set[int] = frozenset()) -> Batch:  # type: ignore[assignment]
    records = [
        orjson.dumps({"i": i, **({"bad": True} if i in bad else {})})
        for i in range(first, first + n)
    ]
    return Batch(0, records, range(first, first + n), None, sum(map(len, records)))


async def run(
    url: str, batch: Batch, rejects: RejectOptions, *, attempts: int = 4, kind: str = "aiohttp"
) -> tuple[list[BatchResult], Counters, Sender]:
    t = FakeTime()
    counters = Counters()
    async with open_transport(kind, connections=4, timeout=30) as transport:
        sender = Sender(
            transport,
            url,
            tokens=None,
            encoder=BodyEncoder("json"),
            job_id="job",
            retry=RetryPolicy(max_attempts=attempts, backoff_initial=0.1, backoff_max=1.0),
            counters=counters,
            hooks=NO_HOOKS,
            rejects=rejects,
            clock=t.clock,
            sleep=t.sleep,
            gate=PauseGate(clock=t.clock, sleep=t.sleep),
            rng=random.Random(3),
        )
        results = await sender.send(batch)
    return results, counters, sender


class Rejecter:
    """400 to a body holding a record with "bad", naming its index; else 200. Records every
    request's key and the records it accepted."""

    def __init__(self) -> None:
        self.requests = 0
        self.accepted: Counter[int] = Counter()
        self.keys: dict[str, list[int]] = {}

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        records = await request.json()
        ids = [r["i"] for r in records]
        key = request.headers["Idempotency-Key"]
        assert self.keys.setdefault(key, ids) == ids, "one key, two bodies"
        for index, r in enumerate(records):
            if "bad" in r:
                return web.json_response(
                    {"error": "invalid", "message": f"record {index} has a bad field"},
                    status=400,
                )
        self.accepted.update(ids)
        return web.json_response({"accepted": len(ids)})


def settle_map(results: list[BatchResult]) -> tuple[list[int], list[int]]:
    delivered = [p for r in results if r.delivered for p in r.batch.positions]
    dead = [p for r in results if not r.delivered for p in r.batch.positions]
    return delivered, dead


async def test_split_isolates_each_rejected_record(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """Two bad records among 200: only they are dead-lettered, each with its own 400 and the
    server's message; the other 198 delivered once; within 2·k·⌈log2 n⌉ extra requests."""
    server = Rejecter()
    url = await serve(server.handle)
    results, counters, _ = await run(url, make_batch(200, bad={17, 150}), RejectOptions())
    delivered, dead = settle_map(results)
    assert sorted(dead) == [17, 150]
    assert sorted(delivered + dead) == list(range(1, 201))
    assert all(n == 1 for n in server.accepted.values()) and len(server.accepted) == 198
    for r in results:
        if not r.delivered:
            assert r.status == 400 and "record 0 has a bad field" in r.error
            assert r.key == f"job-{r.batch.first}-{r.batch.first}"
    extra = server.requests - 1
    assert extra <= 2 * 2 * math.ceil(math.log2(200))
    assert counters.split_requests == extra
    assert counters.requests == counters.batches == server.requests


async def test_parts_keep_their_keys_across_runs(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """A batch splits the same way every time: a second run (a resume) sends the same parts
    under the same keys, so no record is ever delivered under a second key."""
    server = Rejecter()
    url = await serve(server.handle)
    batch = make_batch(64, bad={5, 40})
    await run(url, batch, RejectOptions())
    keys = dict(server.keys)
    await run(url, batch, RejectOptions())
    assert server.keys == keys  # the handler asserts one body per key as well


async def test_wholly_bad_batch_costs_ten_extra_requests(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """Every record rejected alike: halves, quarters, and one record of each quarter sent
    alone rejected the same way; the batch is dead-lettered whole after 1 + 2 + 4 + 4
    requests (not 2n), saying why."""
    server = Rejecter()
    url = await serve(server.handle)
    batch = make_batch(200, bad=set(range(1, 201)))
    results, counters, _ = await run(url, batch, RejectOptions())
    assert server.requests == 11 and counters.split_requests == 10
    [result] = results
    assert not result.delivered and len(result.batch) == 200 and result.status == 400
    assert "wholly bad" in result.error and result.key == "job-1-200"
    assert server.accepted == Counter()
    singles = [ids for ids in server.keys.values() if len(ids) == 1]
    assert len({(i - 1) // 50 for [i] in singles}) == 4  # one probe in each quarter


async def test_bad_records_one_per_quarter_are_isolated(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """Four bad records, one in each quarter, with identical messages (digits aside): not
    taken for a wholly bad batch (a probe record is accepted), exactly the 4 dead-lettered,
    the 196 others delivered once, within 2·k·⌈log2 n⌉ extra requests."""
    server = Rejecter()
    url = await serve(server.handle)
    bad = {10, 60, 110, 160}
    results, counters, _ = await run(url, make_batch(200, bad=bad), RejectOptions())
    delivered, dead = settle_map(results)
    assert sorted(dead) == sorted(bad)
    assert sorted(delivered) == sorted(set(range(1, 201)) - bad)
    assert len(server.accepted) == 196 and set(server.accepted.values()) == {1}
    assert all(r.status == 400 and "record 0 has a bad field" in r.error for r in results
               if not r.delivered)  # fmt: skip
    extra = server.requests - 1
    assert counters.split_requests == extra <= 2 * len(bad) * math.ceil(math.log2(200))
    assert counters.requests == counters.batches == server.requests  # one key per body


async def test_wholly_bad_rule_is_exactly_the_probes(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """The documented limit of the rule: bad records sitting exactly on the four probe
    records (a stable hash of each quarter's key) make the batch look wholly bad; one bad
    record off a probe and the batch is isolated instead."""
    quarters = [(1, 50), (51, 100), (101, 150), (151, 200)]
    on_probes = {a + _probe_index(f"job-{a}-{b}", b - a + 1) for a, b in quarters}
    server = Rejecter()
    url = await serve(server.handle)
    [whole], _, _ = await run(url, make_batch(200, bad=on_probes), RejectOptions())
    assert not whole.delivered and len(whole.batch) == 200 and "wholly bad" in whole.error
    off = sorted(on_probes)
    off[-1] = off[-1] + 1 if off[-1] < 200 else off[-1] - 1
    results, _, _ = await run(url, make_batch(200, bad=set(off)), RejectOptions())
    assert sorted(settle_map(results)[1]) == off


async def test_bad_records_in_every_quarter_are_not_mistaken_below_four(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """Three bad records cannot reject all four quarters: they are isolated one by one."""
    server = Rejecter()
    url = await serve(server.handle)
    results, _, _ = await run(url, make_batch(200, bad={10, 60, 110}), RejectOptions())
    _, dead = settle_map(results)
    assert sorted(dead) == [10, 60, 110]


async def test_split_budget_spent_dead_letters_whole(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """--max-split-requests 2: one split (two requests) is paid for; the rejected half is then
    dead-lettered whole, the reason naming the budget."""
    server = Rejecter()
    url = await serve(server.handle)
    results, counters, _ = await run(
        url, make_batch(100, bad={7}), RejectOptions(max_split_requests=2)
    )
    assert server.requests == 3 and counters.split_requests == 2
    delivered, dead = settle_map(results)
    assert dead == list(range(1, 51)) and delivered == list(range(51, 101))
    [failed] = [r for r in results if not r.delivered]
    assert "--max-split-requests 2" in failed.error


async def test_split_budget_pays_for_413_splits(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """A 413 split's halves are requests for parts too: --max-split-requests 2 pays for the
    first split, then each half (still too large) is dead-lettered whole with its 413 and
    the budget named; split_requests never passes the budget."""
    keys: list[str] = []

    async def too_large_above_25(request: web.Request) -> web.Response:
        keys.append(request.headers["Idempotency-Key"])
        if len(await request.json()) > 25:
            return web.json_response({"error": "too large"}, status=413)
        return web.json_response({"ok": True})

    url = await serve(too_large_above_25)
    results, counters, _ = await run(url, make_batch(100), RejectOptions(max_split_requests=2))
    assert keys == ["job-1-100", "job-1-50", "job-51-100"]
    assert counters.split_requests == 2
    assert [(r.batch.first, r.batch.last, r.delivered, r.status) for r in results] == [
        (1, 50, False, 413),
        (51, 100, False, 413),
    ]
    assert all("not split: the run's split budget, --max-split-requests 2" in r.error
               for r in results)  # fmt: skip


async def test_split_budget_pays_for_items_sent_again(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """Items to send again make a part (a new key): with --max-split-requests 0 they are
    dead-lettered with their own error and the budget named, not sent again."""
    handler = results_server("elasticsearch", {4: 400, 7: 429})
    url = await serve(handler)
    results, counters, _ = await run(
        url, make_batch(10), RejectOptions(results="elasticsearch", max_split_requests=0)
    )
    assert handler.requests == [list(range(1, 11))] and counters.split_requests == 0
    delivered, dead = settle_map(results)
    assert sorted(dead) == [4, 7] and len(delivered) == 8
    [throttled] = [r for r in results if r.batch.first == 7]
    assert throttled.status == 429 and "bad 7" in throttled.error
    assert "not sent again: the run's split budget, --max-split-requests 0" in throttled.error


async def test_split_budget_pays_for_retries_of_parts(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """A part's retry (a 503 on it) is a request for a part: with the budget spent on the
    split itself, the part is dead-lettered with its 503, not retried past the budget."""
    server = Rejecter()
    failed_once: set[str] = set()

    async def handler(request: web.Request) -> web.StreamResponse:
        key = request.headers["Idempotency-Key"]
        if key == "job-51-100" and key not in failed_once:
            failed_once.add(key)
            return web.json_response({"error": "busy"}, status=503)
        return await server.handle(request)

    url = await serve(handler)
    results, counters, _ = await run(
        url, make_batch(100, bad={7}), RejectOptions(max_split_requests=2)
    )
    assert counters.split_requests == 2 and counters.retries == 0
    [left, right] = results
    assert not left.delivered and left.status == 400 and "--max-split-requests 2" in left.error
    assert not right.delivered and right.status == 503
    assert "not retried: the run's split budget, --max-split-requests 2" in right.error
    # with no budget the part is retried, and the bad record isolated
    failed_once.clear()
    results, counters, _ = await run(url, make_batch(100, bad={7}), RejectOptions())
    assert settle_map(results)[1] == [7] and counters.retries == 1


async def test_on_reject_batch_keeps_whole_batch(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """--on-reject batch: the whole batch is dead-lettered after one request."""
    server = Rejecter()
    url = await serve(server.handle)
    results, counters, _ = await run(url, make_batch(50, bad={9}), RejectOptions(on_reject="batch"))
    assert server.requests == 1 and counters.split_requests == 0
    [result] = results
    assert not result.delivered and len(result.batch) == 50


def results_server(shape: str, fail: dict[int, int], *, throttle_once: bool = True) -> Any:
    """A per-record answer in ``shape``: record ``i`` fails with ``fail[i]`` (a 429 only the
    first time it is seen when ``throttle_once``)."""
    seen: Counter[int] = Counter()
    stored: Counter[int] = Counter()
    requests: list[list[int]] = []

    async def handler(request: web.Request) -> web.Response:
        ids = [r["i"] for r in await request.json()]
        requests.append(ids)
        statuses = []
        for i in ids:
            seen[i] += 1
            status = fail.get(i, 201)
            if status == 429 and throttle_once and seen[i] > 1:
                status = 201
            statuses.append(status)
            if status < 400:
                stored[i] += 1
        if shape == "elasticsearch":
            items = [
                {"index": {"status": s, **({"error": {"reason": f"bad {i}"}} if s >= 400 else {})}}
                for i, s in zip(ids, statuses, strict=True)
            ]
            body: Any = {"errors": any(s >= 400 for s in statuses), "items": items}
        elif shape == "salesforce":
            body = [
                {"success": True, "errors": []}
                if s < 400
                else {
                    "success": False,
                    "errors": [
                        {
                            "statusCode": "REQUEST_LIMIT_EXCEEDED" if s == 429 else "INVALID",
                            "message": f"bad {i}",
                        }
                    ],
                }
                for i, s in zip(ids, statuses, strict=True)
            ]
        else:  # {"data": {"results": [...]}}
            body = {
                "data": {
                    "results": [
                        {"status": s, **({"errors": [f"bad {i}"]} if s >= 400 else {})}
                        for i, s in zip(ids, statuses, strict=True)
                    ]
                }
            }
        return web.json_response(body, status=207 if shape == "data.results" else 200)

    handler.stored = stored  # type: ignore[attr-defined]
    handler.requests = requests  # type: ignore[attr-defined]
    return handler


async def test_per_record_results_past_64_kib_on_each_transport(
    serve: Callable[[Handler], Awaitable[str]], transport_kind: str
) -> None:
    """A results answer of ~2 MB (far past the 64 KiB read when only the status matters) is
    read whole on either transport: the one rejected item, the last, is found and dead-lettered,
    every other record delivered."""
    n = 4000
    pad = "x" * 400

    async def handler(request: web.Request) -> web.Response:
        ids = [r["i"] for r in await request.json()]
        items = [
            {"index": {"status": 400, "error": {"reason": f"bad {i}"}}}
            if i == n
            else {"index": {"status": 201, "note": pad}}
            for i in ids
        ]
        return web.json_response({"errors": True, "items": items})

    url = await serve(handler)
    results, _, _ = await run(
        url, make_batch(n), RejectOptions(results="elasticsearch"), kind=transport_kind
    )
    delivered, dead = settle_map(results)
    assert dead == [n]
    assert sorted(delivered) == list(range(1, n))


@pytest.mark.parametrize("shape", ["elasticsearch", "salesforce", "data.results"])
async def test_per_record_results(serve: Callable[[Handler], Awaitable[str]], shape: str) -> None:
    """Items 400 are dead-lettered with the item's error; items 429 are sent again as a part
    of their own (a key of their own) and delivered; every other record delivered once."""
    handler = results_server(shape, {3: 400, 7: 429, 12: 429, 19: 400})
    url = await serve(handler)
    results, counters, sender = await run(url, make_batch(20), RejectOptions(results=shape))
    delivered, dead = settle_map(results)
    assert sorted(dead) == [3, 19]
    assert sorted(delivered) == [p for p in range(1, 21) if p not in (3, 19)]
    assert all(n == 1 for n in handler.stored.values())
    assert handler.requests == [list(range(1, 21)), [7, 12]]
    for r in results:
        if not r.delivered:
            assert f"bad {r.batch.first}" in r.error
            if shape != "salesforce":
                assert r.status == 400
    retry_part = make_batch(20).subset([6, 11])
    assert not retry_part.dense
    key = sender.key_for(retry_part)
    assert key.startswith("job-7-12-") and key.count("-") == 3  # range and a digest only
    assert sender.key_for(make_batch(30).subset([6, 11])) == key  # the same records
    assert sender.key_for(make_batch(20).subset([6, 12])) != key
    assert counters.batches == 2 and counters.split_requests == 1


class ReplayingResults:
    """Elasticsearch-shaped per-record answers from a server that deduplicates by key, as the
    reference sink does: a key's first answer is kept and replayed, unless every item in it
    was throttled (nothing done, nothing kept). Record ``i`` is a 400 item when in ``bad``,
    a 429 item the first ``throttle[i]`` times it is processed. ``hang_after``: requests
    past that many are never answered (the client is killed there)."""

    def __init__(self, bad: set[int], throttle: dict[int, int]) -> None:
        self.bad = bad
        self.throttle = dict(throttle)
        self.answers: dict[str, Any] = {}
        self.stored: Counter[int] = Counter()
        self.bodies: dict[str, tuple[int, ...]] = {}
        self.keys: dict[tuple[int, ...], set[str]] = {}
        self.handled = 0
        self.hang_after: int | None = None
        self.hung = 0
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        ids = tuple(r["i"] for r in await request.json())
        key = request.headers["Idempotency-Key"]
        if self.hang_after is not None and self.handled >= self.hang_after:
            self.hung += 1
            await self.release.wait()  # the client is gone: nothing done
            return web.json_response({}, status=503)
        self.handled += 1
        assert self.bodies.setdefault(key, ids) == ids, "one key, two bodies"
        self.keys.setdefault(ids, set()).add(key)
        if key in self.answers:
            return web.json_response(self.answers[key])
        statuses = []
        for i in ids:
            if i in self.bad:
                statuses.append(400)
            elif self.throttle.get(i, 0) > 0:
                self.throttle[i] -= 1
                statuses.append(429)
            else:
                statuses.append(201)
        items = [{"index": {"status": s, **({"error": f"item {i}: {s}"} if s >= 400 else {})}}
                 for i, s in zip(ids, statuses, strict=True)]  # fmt: skip
        answer = {"errors": any(s >= 400 for s in statuses), "items": items}
        if any(s != 429 for s in statuses):  # something done: store and keep the answer
            self.stored.update(i for i, s in zip(ids, statuses, strict=True) if s == 201)
            self.answers[key] = answer
        return web.json_response(answer)


THROTTLE = {5: 1, 7: 3, 9: 1, 16: 3}  # {7, 16} comes back wholly throttled once


async def test_items_throttled_again_keep_their_key(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """Items throttled again and again: a part of records that comes back wholly throttled
    is retried as it is, under the same key (the same records make the same key), never
    under a second one; every good record stored once, the bad one dead-lettered."""
    server = ReplayingResults({3}, THROTTLE)
    url = await serve(server.handle)
    results, counters, _ = await run(
        url, make_batch(20), RejectOptions(results="elasticsearch"), attempts=6
    )
    delivered, dead = settle_map(results)
    assert dead == [3] and sorted(delivered) == [p for p in range(1, 21) if p != 3]
    assert server.stored == Counter(delivered)  # each delivered record stored once
    assert all(len(keys) == 1 for keys in server.keys.values()), server.keys
    # the batch, {5, 7, 9, 16}, then {7, 16} twice (wholly throttled once): three keys
    assert list(server.keys) == [tuple(range(1, 21)), (5, 7, 9, 16), (7, 16)]
    assert counters.requests == server.handled == 4
    assert (
        counters.batches == 3 and counters.retries == 1 and counters.retries_by_status["429"] == 1
    )
    assert counters.split_requests == 3  # every request for a part


async def test_killed_anywhere_in_item_resends_then_resumed(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """The client killed after each possible number of requests, then the batch sent again
    by a fresh run (a resume): every good record stored exactly once, never a body under
    two keys, the bad records dead-lettered and every other one delivered."""
    full = ReplayingResults({3, 12}, THROTTLE)
    url = await serve(full.handle)
    await run(url, make_batch(20), RejectOptions(results="elasticsearch"), attempts=6)
    for kill_after in range(full.handled):  # killed while request kill_after + 1 is out
        server = ReplayingResults({3, 12}, THROTTLE)
        server.hang_after = kill_after
        url = await serve(server.handle)
        first = asyncio.create_task(
            run(url, make_batch(20), RejectOptions(results="elasticsearch"), attempts=6)
        )
        while not server.hung and not first.done():
            await asyncio.sleep(0.001)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        server.hang_after = None
        server.release.set()
        results, _, _ = await run(
            url, make_batch(20), RejectOptions(results="elasticsearch"), attempts=6
        )
        delivered, dead = settle_map(results)
        assert sorted(dead) == [3, 12], kill_after
        assert server.stored == Counter(range(1, 21)) - Counter([3, 12]), kill_after
        assert all(len(keys) == 1 for keys in server.keys.values()), (kill_after, server.keys)


async def test_retryable_items_give_up_under_the_retry_budget(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    """An item throttled every time is dead-lettered once the batch's attempts are spent."""
    handler = results_server("elasticsearch", {5: 429}, throttle_once=False)
    url = await serve(handler)
    results, _, _ = await run(
        url, make_batch(8), RejectOptions(results="elasticsearch"), attempts=3
    )
    _, dead = settle_map(results)
    assert dead == [5]
    [failed] = [r for r in results if not r.delivered]
    assert failed.status == 429 and "gave up after 3 attempts" in failed.error
    assert len(handler.requests) == 3


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            {"errors": True, "items": [{"index": {"status": 201}}]},
            "holds 1 results for a batch of 4",
        ),
        ({"took": 3}, "no 'items'"),
        (b"<html>busy</html>", "not JSON"),
    ],
)
async def test_unreadable_results_fail_the_whole_batch(
    serve: Callable[[Handler], Awaitable[str]], body: Any, reason: str
) -> None:
    """An answer whose array length differs from the batch (or no array, or not JSON) is an
    error for the whole batch, said clearly; nothing is guessed."""

    async def handler(request: web.Request) -> web.Response:
        if isinstance(body, bytes):
            return web.Response(body=body, content_type="text/html")
        return web.json_response(body)

    url = await serve(handler)
    results, _, _ = await run(url, make_batch(4), RejectOptions(results="elasticsearch"))
    [result] = results
    assert not result.delivered and len(result.batch) == 4 and result.status == 200
    assert reason in result.error and "per-record results" in result.error


def test_reject_options_are_checked() -> None:
    """Bad values raise ConfigError naming the field."""
    with pytest.raises(ConfigError, match="on_reject"):
        RejectOptions(on_reject="drop")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_split_requests"):
        RejectOptions(max_split_requests=-1)
    with pytest.raises(ConfigError, match="dotted path"):
        RejectOptions(results="a..b")
