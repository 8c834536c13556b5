"""``POST /ingest``: bearer check, faults, body decoding, deduplication by
``Idempotency-Key``, storing the records.

The order of the steps is part of the behaviour clients are tested against: a hang or a
revocation happens before the token is checked, a throttle answer comes before the body is
read, an injected fault comes after the body was found well formed, and a fault drawn for
the ``after`` phase answers once the records are stored (the client must resend them and
the key must deduplicate them).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from typing import Any

import orjson
from aiohttp import web

from ._bodies import BadBody, decode, forbidden_record, item_results, parse, rejection
from ._capacity import capacity_at, hard_limit_for, service_time
from ._faults import Reset, abort, hang, injected, throttled
from ._responses import REALM, json_response
from ._state import STATE, SinkState

__all__ = ["ingest"]


async def ingest(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    now = time.monotonic()
    st.rt.sync(st.faults, now)
    st.ingest_requests += 1
    key = request.headers.get("Idempotency-Key")
    entry: list[Any] = [now, None, key]
    st.arrivals.append(entry)
    if key is None:
        st.requests_without_key += 1
    else:
        st.sends_by_key[key] = st.sends_by_key.get(key, 0) + 1
    st.in_flight += 1
    st.max_in_flight = max(st.max_in_flight, st.in_flight)
    try:
        resp = await _answer(request, st, key, now)
    except Reset:
        st.resets += 1
        entry[1] = "reset"
        abort(request)
        return web.Response(status=503)  # never reaches the client
    finally:
        st.in_flight -= 1
    entry[1] = resp.status
    st.statuses[resp.status] += 1
    return resp


async def _answer(request: web.Request, st: SinkState, key: str | None, now: float) -> web.Response:
    f = st.faults
    rt = st.rt
    if rt.revoke_all_due():
        st.revoke_all()
    if rt.hangs(f):
        st.hangs += 1
        await hang(st.release)

    if st.config.require_auth:
        problem = st.bearer_problem(request.headers.get("Authorization"), now)
        if problem is not None:
            st.unauthorized[problem] += 1
            challenge = f'Bearer realm="{REALM}"'
            if problem != "missing":
                challenge += f', error="invalid_token", error_description="token {problem}"'
            return json_response(
                401,
                {"error": "invalid_token", "reason": problem},
                {"WWW-Authenticate": challenge},
            )

    if now < st.throttle_until:
        st.throttled += 1
        st.inside_window += 1
        return throttled(f, st.throttle_until - now)
    if rt.throttle_due(f):
        st.open_window(f.retry_after, now)
        st.throttled += 1
        return throttled(f, f.retry_after)

    capacity = 0
    if f.capacity or f.capacity_schedule:
        capacity = capacity_at(f.capacity, f.capacity_schedule, now - rt.schedule_start)
        if capacity and st.in_flight > hard_limit_for(f.hard_limit, capacity):
            st.overloaded += 1
            return json_response(f.overload_status, {"error": "overloaded"})

    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        st.too_large += 1
        limit = st.config.client_max_size
        return json_response(413, {"error": "payload_too_large", "message": f"over {limit} bytes"})
    st.bytes_received += len(raw)

    delay = rt.delay(f.latency)
    if capacity:  # queueing above the knee: in flight at arrival, this request included
        delay = service_time(delay, st.in_flight, capacity)
    if delay:
        await asyncio.sleep(delay)

    encoding = request.headers.get("Content-Encoding", "")
    limit = st.config.client_max_size
    if f.max_body_bytes is not None:
        limit = min(limit, f.max_body_bytes)
    try:
        body = decode(raw, encoding, limit)
        records, kind = parse(body, request.content_type)
    except BadBody as exc:
        if exc.status == 413:
            st.too_large += 1
        else:
            st.malformed += 1
        return json_response(exc.status, {"error": exc.error, "message": exc.message})
    st.bytes_decoded += len(body)
    st.formats[kind] += 1
    st.encodings[encoding.strip().lower() or "identity"] += 1

    if st.config.keep_records and key is not None:
        # Evidence for the tests: a resend must carry the same body under the same key.
        digest = (len(body), zlib.crc32(body))
        first = st.key_digest.setdefault(key, digest)
        if first != digest:
            st.key_body_mismatches += 1
        owner = st.digest_key.setdefault(digest, key)
        if owner != key:
            st.bodies_under_several_keys += 1

    field = f.reject_field
    if field is not None and f.results == "none":
        index = forbidden_record(records, field)
        if index is not None:
            st.rejected += 1
            return json_response(400, rejection(index, field))

    fault = rt.draw(f)
    after: int | str | None = None
    if fault is not None:
        if rt.phase(f) == "before":
            return _inject(st, fault)
        after = fault

    if f.results != "none":
        return _per_record(st, key, records, after)

    n = len(records)
    duplicate = key is not None and key in st.accepted_keys
    if duplicate:
        st.duplicates += 1
        st.duplicate_records += n
    if not (duplicate and st.config.dedupe):
        # No await between the key check and here: concurrent repeats cannot both store.
        if key is not None:
            st.accepted_keys.add(key)
        if not duplicate:
            st.batches += 1
        st.record_count += n
        if st.config.keep_records:
            st.records.extend(records)
        if st.store is not None and records:
            st.store.write(b"".join(orjson.dumps(r) + b"\n" for r in records))

    if after is not None:
        return _inject(st, after)
    if duplicate:
        return json_response(200, {"accepted": n, "duplicate": True})
    return json_response(200, {"accepted": n})


def _per_record(
    st: SinkState, key: str | None, records: list[Any], after: int | str | None
) -> web.Response:
    """200 with one result per record: a record holding ``reject_field`` is a 400 item, a
    fraction ``item_throttle_rate`` are 429 items; only the others are stored. A repeated key
    gets the answer it got the first time (as an idempotent API replays its response), so a
    client that lost the answer learns the same items failed; but an answer in which every
    item was throttled did nothing, and is not kept (as no answer to a 429 is): a repeat
    of that key is processed afresh, so a client may retry such a request as it is."""
    f = st.faults
    if key is not None and st.config.dedupe and key in st.results_by_key:
        st.duplicates += 1
        st.duplicate_records += len(records)
        body = st.results_by_key[key]
        if after is not None:
            return _inject(st, after)
        return web.Response(status=200, body=body, content_type="application/json")
    rng = st.rt.rng["item"]
    statuses: list[int] = []
    kept: list[Any] = []
    for record in records:
        if f.reject_field is not None and f.reject_field in record:
            statuses.append(400)
            st.rejected_items += 1
        elif f.item_throttle_rate and rng.random() < f.item_throttle_rate:
            statuses.append(429)
            st.throttled_items += 1
        else:
            statuses.append(201)
            kept.append(record)
    body = orjson.dumps(item_results(f.results, statuses, f.reject_field))
    # every item throttled: nothing was done, nothing is kept
    done = not statuses or any(s != 429 for s in statuses)
    if done:
        st.batches += 1
        st.record_count += len(kept)
        if st.config.keep_records:
            st.records.extend(kept)
        if st.store is not None and kept:
            st.store.write(b"".join(orjson.dumps(r) + b"\n" for r in kept))
        if key is not None:
            st.accepted_keys.add(key)
            st.results_by_key[key] = body
    if after is not None:
        return _inject(st, after)
    return web.Response(status=200, body=body, content_type="application/json")


def _inject(st: SinkState, fault: int | str) -> web.Response:
    if fault == "reset":
        raise Reset
    assert isinstance(fault, int)
    st.injected_errors += 1
    return injected(fault)
