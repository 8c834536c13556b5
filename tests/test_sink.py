"""The reference partner server, driven by a plain aiohttp client (no asyncsync client code)."""

from __future__ import annotations

import ast
import asyncio
import base64
import email.utils
import gzip
import importlib
import json
import os
import pkgutil
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import orjson
import pytest

from asyncsync.sink import Faults, Sink, SinkConfig, main

SINK_DIR = Path(__file__).resolve().parent.parent / "asyncsync" / "sink"
REPO = SINK_DIR.parent.parent


def basic(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: form-urlencode each part, join with ':', then base64."""
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def fetch_token(session: aiohttp.ClientSession, sink: Sink) -> str:
    cfg = sink.config
    async with session.post(
        sink.token_url,
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic(cfg.client_id, cfg.client_secret)},
    ) as r:
        assert r.status == 200, await r.text()
        token = (await r.json())["access_token"]
        assert isinstance(token, str)
        return token


async def ingest(
    session: aiohttp.ClientSession,
    sink: Sink,
    token: str | None,
    body: Any = None,
    *,
    key: str | None = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    h = dict(headers or {})
    if token is not None:
        h.update(bearer(token))
    if key is not None:
        h["Idempotency-Key"] = key
    if data is None:
        data = orjson.dumps(body if body is not None else [{"id": 1}])
        h.setdefault("Content-Type", "application/json")
    async with session.post(sink.ingest_url, data=data, headers=h) as r:
        text = await r.read()
        payload = orjson.loads(text) if text and r.content_type == "application/json" else text
        return r.status, payload, r


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    async with Sink() as s:
        yield s


class SinkClock:
    """The sink's monotonic clock, moved by hand: token lifetimes, throttle windows and
    outages end when the test says, not when a busy machine gets round to it. Everything
    else of the ``time`` module (``time.time()`` for absolute dates) is the real one."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def sink_clock(monkeypatch: pytest.MonkeyPatch) -> SinkClock:
    """Install a :class:`SinkClock` as the sink's ``time``; create the Sink after this.

    The sink (the modules of ``asyncsync.sink``: state, token routes, ingest...) reads every
    deadline from ``time.monotonic()`` and takes no clock argument, so each of its modules'
    ``time`` is replaced. Should the sink stop reading the clock there, the tests using this
    fail (nothing expires), never pass vacuously.
    """
    import asyncsync.sink

    clock = SinkClock()
    patched = []
    for info in pkgutil.iter_modules(asyncsync.sink.__path__, "asyncsync.sink."):
        module = importlib.import_module(info.name)
        if getattr(module, "time", None) is time:
            monkeypatch.setattr(module, "time", clock)
            patched.append(info.name)
    assert patched, "the sink no longer reads the time module"
    return clock


# -- design rule -----------------------------------------------------------------------------


def test_sink_imports_nothing_from_the_client() -> None:
    allowed = set(sys.stdlib_module_names) | {"aiohttp", "orjson"}
    for path in SINK_DIR.glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: inside asyncsync.sink only
                    assert node.level == 1, f"{path.name} reaches outside the sink package"
                    continue
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


def test_sink_modules_import_no_circle() -> None:
    graph: dict[str, set[str]] = {}
    for path in SINK_DIR.glob("*.py"):
        deps = graph.setdefault(path.stem, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module)
                else:  # from . import _admin, ...
                    deps.update(a.name for a in node.names)

    def visit(module: str, trail: tuple[str, ...]) -> None:
        assert module not in trail, " -> ".join((*trail, module))
        for dep in graph.get(module, ()):
            visit(dep, (*trail, module))

    for module in graph:
        visit(module, ())


# -- token endpoint --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_id", "secret"),
    [
        ("asyncsync-demo", "demo-secret"),
        ("my:client+id é", "s3c:r+t/=%ü &x"),
    ],
)
async def test_token_with_basic_and_post_auth(
    session: aiohttp.ClientSession, client_id: str, secret: str
) -> None:
    async with Sink(SinkConfig(client_id=client_id, client_secret=secret, token_ttl=90)) as sink:
        async with session.post(
            sink.token_url,
            data={"grant_type": "client_credentials", "scope": "ingest"},
            headers={"Authorization": basic(client_id, secret)},
        ) as r:
            assert r.status == 200
            assert r.headers["Cache-Control"] == "no-store"
            body = await r.json()
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 90
        assert body["scope"] == "ingest"
        async with session.post(
            sink.token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        ) as r:
            assert r.status == 200
            body2 = await r.json()
        assert body2["access_token"] != body["access_token"]
        for token in (body["access_token"], body2["access_token"]):
            status, _, _ = await ingest(session, sink, token)
            assert status == 200
        stats = sink.stats()
        assert stats["token_requests"] == 2
        assert stats["token_requests_by_endpoint"] == {"/oauth/token": 2}
        assert stats["tokens_issued"] == 2


async def test_basic_credentials_must_be_form_urlencoded(session: aiohttp.ClientSession) -> None:
    """A client that skips the §2.3.1 encoding is caught: '+' would decode as a space."""
    async with Sink(SinkConfig(client_secret="a+b")) as sink:
        raw = base64.b64encode(b"asyncsync-demo:a+b").decode()
        async with session.post(
            sink.token_url,
            data={"grant_type": "client_credentials"},
            headers={"Authorization": f"Basic {raw}"},
        ) as r:
            assert r.status == 401
            assert (await r.json())["error"] == "invalid_client"


async def test_token_errors(session: aiohttp.ClientSession, sink: Sink) -> None:
    url = sink.token_url
    grant = {"grant_type": "client_credentials"}
    async with session.post(url, data=grant, headers={"Authorization": basic("x", "y")}) as r:
        assert r.status == 401
        assert (await r.json())["error"] == "invalid_client"
        assert r.headers["WWW-Authenticate"].startswith("Basic")
    bad_post = {**grant, "client_id": "asyncsync-demo", "client_secret": "wrong"}
    async with session.post(url, data=bad_post) as r:
        assert r.status == 401
        assert (await r.json())["error"] == "invalid_client"
    async with session.post(url, data=grant) as r:  # no client authentication at all
        assert r.status == 401
    good = basic("asyncsync-demo", "demo-secret")
    async with session.post(
        url, data={"grant_type": "password"}, headers={"Authorization": good}
    ) as r:
        assert r.status == 400
        assert (await r.json())["error"] == "unsupported_grant_type"
    async with session.post(url, data={}, headers={"Authorization": good}) as r:
        assert r.status == 400
        assert (await r.json())["error"] == "invalid_request"
    async with session.post(url, json=grant, headers={"Authorization": good}) as r:
        assert r.status == 400  # must be form-encoded
    both = {**grant, "client_secret": "demo-secret"}
    async with session.post(url, data=both, headers={"Authorization": good}) as r:
        assert r.status == 400  # two client authentication methods
    stats = sink.stats()
    assert stats["tokens_issued"] == 0
    assert stats["token_requests"] == 7
    assert stats["token_statuses"] == {"400": 4, "401": 3}
    assert stats["token_statuses"][401] == 3  # int keys work too
    assert stats["token_statuses"][200] == 0


# -- login -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("style", "fields"),
    [
        ("seconds", {"expires_in"}),
        ("iso", {"expires_in", "session_token_expiration"}),
        ("iso-only", {"session_token_expiration"}),
        ("none", set()),
    ],
)
async def test_login_expiry_styles(
    session: aiohttp.ClientSession, style: Any, fields: set[str]
) -> None:
    cfg = SinkConfig(users={"ann": "pw"}, token_ttl=120, login_expiry_style=style)
    async with Sink(cfg) as sink:
        async with session.post(sink.login_url, json={"Username": "ann", "Password": "pw"}) as r:
            assert r.status == 200
            body = await r.json()
        assert body["session_token"] == body["access_token"]
        assert set(body) - {"access_token", "session_token", "token_type"} == fields
        if "expires_in" in fields:
            assert body["expires_in"] == 120
        if "session_token_expiration" in fields:
            when = datetime.fromisoformat(body["session_token_expiration"])
            assert 100 < when.timestamp() - time.time() < 140
        status, _, _ = await ingest(session, sink, body["access_token"])
        assert status == 200
        assert sink.stats()["token_requests_by_endpoint"] == {"/login": 1}


async def test_login_rejects_bad_credentials(session: aiohttp.ClientSession, sink: Sink) -> None:
    async with session.post(sink.login_url, json={"username": "demo", "password": "x"}) as r:
        assert r.status == 401
    async with session.post(sink.login_url, json={"username": "nobody", "password": "x"}) as r:
        assert r.status == 401
    async with session.post(sink.login_url, data=b"not json") as r:
        assert r.status == 400
    login = {"username": "demo", "password": "demo-password"}
    async with session.post(sink.login_url, json=login) as r:
        assert r.status == 200


# -- bearer check ------------------------------------------------------------------------------


async def test_ingest_requires_a_valid_token(
    session: aiohttp.ClientSession, sink_clock: SinkClock
) -> None:
    async with Sink(SinkConfig(token_ttl=0.2)) as sink:
        status, body, r = await ingest(session, sink, None)
        assert status == 401
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert body["reason"] == "missing"
        status, body, r = await ingest(session, sink, "made-up")
        assert status == 401
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
        token = await fetch_token(session, sink)
        status, _, _ = await ingest(session, sink, token)
        assert status == 200
        sink_clock.advance(0.19)
        assert (await ingest(session, sink, token))[0] == 200  # still inside its lifetime
        sink_clock.advance(0.06)
        status, body, _ = await ingest(session, sink, token)
        assert status == 401
        assert body["reason"] == "expired"
        assert sink.stats()["unauthorized"] == {"missing": 1, "unknown": 1, "expired": 1}


async def test_token_ttl_is_announced_as_a_float_when_fractional(
    session: aiohttp.ClientSession,
) -> None:
    async with Sink(SinkConfig(token_ttl=1.5)) as sink:
        token = await fetch_token(session, sink)
        assert sink.stats()["tokens_issued"] == 1
        auth = {"Authorization": basic("asyncsync-demo", "demo-secret")}
        grant = {"grant_type": "client_credentials"}
        async with session.post(sink.token_url, data=grant, headers=auth) as r:
            body = await r.json()
        assert body["expires_in"] == 1.5
        assert body["access_token"] != token


async def test_no_auth_mode(session: aiohttp.ClientSession) -> None:
    async with Sink(SinkConfig(require_auth=False)) as sink:
        status, body, _ = await ingest(session, sink, None, [{"a": 1}, {"a": 2}])
        assert (status, body) == (200, {"accepted": 2})


# -- bodies ----------------------------------------------------------------------------------


async def test_bodies_decode(session: aiohttp.ClientSession, sink: Sink) -> None:
    token = await fetch_token(session, sink)
    records = [{"id": i, "name": f"r{i}", "tags": ["x"]} for i in range(5)]
    ndjson = b"".join(orjson.dumps(r) + b"\n" for r in records)
    nd = {"Content-Type": "application/x-ndjson"}
    js = {"Content-Type": "application/json"}
    gz = {"Content-Encoding": "gzip"}
    cases: list[tuple[bytes, dict[str, str]]] = [
        (orjson.dumps(records), js),
        (ndjson, nd),
        (ndjson.replace(b"\n", b"\r\n") + b"\n\n", nd),  # CRLF and blank lines
        (orjson.dumps({"records": records}), js),
        (gzip.compress(orjson.dumps(records)), {**js, **gz}),
        (gzip.compress(ndjson), {**nd, **gz}),
    ]
    for i, (data, headers) in enumerate(cases):
        status, body, _ = await ingest(
            session, sink, token, data=data, headers=headers, key=f"k{i}"
        )
        assert (status, body) == (200, {"accepted": 5}), i
    assert sink.records() == records * len(cases)
    stats = sink.stats()
    assert stats["records"] == 30
    assert stats["batches"] == 6
    assert stats["formats"] == {"json": 2, "ndjson": 3, "wrapped": 1}
    assert stats["encodings"] == {"identity": 4, "gzip": 2}
    async with session.get(sink.records_url) as r:
        lines = (await r.read()).splitlines()
    assert [orjson.loads(x) for x in lines] == records * len(cases)


@pytest.mark.parametrize(
    ("data", "headers", "status"),
    [
        (b"[{", {}, 400),
        (b"[1, 2]", {}, 400),
        (b'{"a": [{}], "b": [{}]}', {}, 400),
        (b'{"a": {}}', {}, 400),
        (b'"text"', {}, 400),
        (b'{"a":1}\n{"b":', {"Content-Type": "application/x-ndjson"}, 400),
        (b'{"a":1}, {"b":2}\n', {"Content-Type": "application/x-ndjson"}, 400),
        (b"[]garbage", {"Content-Encoding": "gzip"}, 400),
        (gzip.compress(b"[{}]")[:-6], {"Content-Encoding": "gzip"}, 400),
        (b"[{}]", {"Content-Encoding": "br"}, 415),
    ],
)
async def test_malformed_bodies(
    session: aiohttp.ClientSession, sink: Sink, data: bytes, headers: dict[str, str], status: int
) -> None:
    token = sink.issue_token()
    headers = {"Content-Type": "application/json", **headers}
    got, body, _ = await ingest(session, sink, token, data=data, headers=headers)
    assert got == status
    assert "error" in body
    assert sink.stats()["records"] == 0


# -- dedupe ------------------------------------------------------------------------------------


async def test_dedupe_by_idempotency_key(session: aiohttp.ClientSession, sink: Sink) -> None:
    token = await fetch_token(session, sink)
    batch = [{"id": 1}, {"id": 2}]
    assert (await ingest(session, sink, token, batch, key="b1"))[:2] == (200, {"accepted": 2})
    status, body, _ = await ingest(session, sink, token, batch, key="b1")
    assert status == 200
    assert body["accepted"] == 2
    assert (await ingest(session, sink, token, [{"id": 3}], key="b2"))[0] == 200
    assert (await ingest(session, sink, token, [{"id": 4}]))[0] == 200  # no key
    stats = sink.stats(detail=True)
    assert sink.records() == [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 4}]
    assert stats["records"] == 4
    assert stats["batches"] == 3
    assert stats["duplicates"] == 1
    assert stats["duplicate_records"] == 2
    assert stats["requests_without_key"] == 1
    assert stats["sends_by_key"] == {"b1": 2, "b2": 1}
    assert stats["resent_keys"] == 1
    assert stats["max_sends_per_key"] == 2
    assert stats["key_body_mismatches"] == 0
    assert stats["bodies_under_several_keys"] == 0
    # the same key with another body, and the same body under another key, are flagged
    await ingest(session, sink, token, [{"id": 9}], key="b1")
    await ingest(session, sink, token, batch, key="b3")
    stats = sink.stats()
    assert stats["key_body_mismatches"] == 1
    assert stats["bodies_under_several_keys"] == 1


async def test_dedupe_off_stores_repeats_but_counts_them(session: aiohttp.ClientSession) -> None:
    async with Sink(SinkConfig(dedupe=False)) as sink:
        token = sink.issue_token()
        for _ in range(2):
            assert (await ingest(session, sink, token, [{"id": 1}], key="k"))[0] == 200
        assert sink.records() == [{"id": 1}, {"id": 1}]
        assert sink.stats()["duplicates"] == 1
        assert sink.stats()["batches"] == 1


async def test_concurrent_repeats_of_a_key_store_once(session: aiohttp.ClientSession) -> None:
    async with Sink(SinkConfig(latency=0.05)) as sink:
        token = sink.issue_token()
        results = await asyncio.gather(
            *(ingest(session, sink, token, [{"id": 1}], key="same") for _ in range(5))
        )
        assert [r[0] for r in results] == [200] * 5
        assert sink.records() == [{"id": 1}]
        assert sink.stats()["max_concurrent_ingest"] == 5


# -- size and rejection --------------------------------------------------------------------------


async def test_max_body_bytes_is_measured_decoded(session: aiohttp.ClientSession) -> None:
    async with Sink(SinkConfig(max_body_bytes=1000)) as sink:
        token = sink.issue_token()
        small = orjson.dumps([{"pad": "x" * 900}])
        big = orjson.dumps([{"pad": "x" * 1000}])
        assert (await ingest(session, sink, token, data=small))[0] == 200
        assert (await ingest(session, sink, token, data=big))[0] == 413
        squeezed = gzip.compress(big)
        assert len(squeezed) < 1000
        gz = {"Content-Encoding": "gzip"}
        status, body, _ = await ingest(session, sink, token, data=squeezed, headers=gz)
        assert status == 413
        assert body["error"] == "payload_too_large"
        assert sink.stats()["too_large"] == 2


async def test_client_max_size_guards_raw_and_decoded(session: aiohttp.ClientSession) -> None:
    async with Sink(SinkConfig(client_max_size=10_000)) as sink:
        token = sink.issue_token()
        raw = orjson.dumps([{"pad": "x" * 20_000}])
        assert (await ingest(session, sink, token, data=raw))[0] == 413
        bomb = gzip.compress(orjson.dumps([{"pad": "x" * 1_000_000}]))
        gz = {"Content-Encoding": "gzip"}
        assert (await ingest(session, sink, token, data=bomb, headers=gz))[0] == 413


async def test_reject_field(session: aiohttp.ClientSession) -> None:
    async with Sink(SinkConfig(reject_field="poison")) as sink:
        token = sink.issue_token()
        batch = [{"id": 1}, {"id": 2, "poison": True}, {"id": 3}]
        status, body, r = await ingest(session, sink, token, batch, key="k")
        assert status == 400
        assert r.content_type == "application/json"
        assert body["error"] == "rejected_record"
        assert body["index"] == 1
        assert body["field"] == "poison"
        assert sink.records() == []
        assert (await ingest(session, sink, token, [{"id": 1}], key="k2"))[0] == 200
        assert sink.stats()["rejected"] == 1


async def test_per_record_answers_are_replayed_unless_nothing_was_done(
    session: aiohttp.ClientSession,
) -> None:
    """Results mode: a repeated key gets its first answer (nothing stored twice), except an
    answer in which every item was throttled: nothing was done, so it is not kept and a
    repeat of that key is processed afresh."""
    config = SinkConfig(require_auth=False, reject_field="poison", results="elasticsearch")
    async with Sink(config) as sink:
        sink.set_faults(item_throttle_rate=1.0)
        status, body, _ = await ingest(session, sink, None, [{"id": 1}, {"id": 2}], key="t")
        assert status == 200 and [i["index"]["status"] for i in body["items"]] == [429, 429]
        assert sink.records() == [] and sink.stats()["batches"] == 0
        sink.set_faults(item_throttle_rate=0.0)
        status, body, _ = await ingest(session, sink, None, [{"id": 1}, {"id": 2}], key="t")
        assert [i["index"]["status"] for i in body["items"]] == [201, 201]
        assert sink.records() == [{"id": 1}, {"id": 2}]
        # an answer with something done is kept: the repeat replays it, stores nothing
        mixed = [{"id": 3}, {"id": 4, "poison": True}]
        first = await ingest(session, sink, None, mixed, key="m")
        sink.set_faults(item_throttle_rate=1.0)
        again = await ingest(session, sink, None, mixed, key="m")
        assert first[1] == again[1] and [i["index"]["status"] for i in again[1]["items"]] == [
            201,
            400,
        ]
        assert sink.records() == [{"id": 1}, {"id": 2}, {"id": 3}]
        assert sink.stats()["duplicates"] == 1


# -- throttling ---------------------------------------------------------------------------------


async def test_throttle_seconds_form_and_window(
    session: aiohttp.ClientSession, sink_clock: SinkClock
) -> None:
    async with Sink(SinkConfig(throttle_every=3, retry_after=0.3)) as sink:
        token = sink.issue_token()
        got = [(await ingest(session, sink, token))[0] for _ in range(2)]
        assert got == [200, 200]
        status, body, r = await ingest(session, sink, token)
        assert status == 429
        assert r.headers["Retry-After"] == "0.3"
        assert body["error"] == "rate_limited"
        sink_clock.advance(0.1)
        status, _, r = await ingest(session, sink, token)  # inside the window
        assert status == 429
        assert 0 < float(r.headers["Retry-After"]) <= 0.3
        assert r.headers["Retry-After"] == "0.2"  # what is left of the window
        sink_clock.advance(float(r.headers["Retry-After"]))
        got = [(await ingest(session, sink, token))[0] for _ in range(3)]
        assert got == [200, 200, 429]
        stats = sink.stats(detail=True)
        assert stats["windows_opened"] == 2
        assert stats["throttled"] == 3
        assert stats["inside_window_arrivals"] == 1
        (start, end), _ = stats["windows"]
        assert end - start == pytest.approx(0.3)
        inside = [a for a in stats["arrivals"] if start < a[0] < end]
        assert [a[1] for a in inside] == [429]


async def test_throttle_whole_seconds_round_up(session: aiohttp.ClientSession) -> None:
    async with Sink(SinkConfig(throttle_every=1, retry_after=2)) as sink:
        token = sink.issue_token()
        _, _, r = await ingest(session, sink, token)
        assert r.headers["Retry-After"] == "2"
        _, _, r = await ingest(session, sink, token)
        assert r.headers["Retry-After"] == "2"  # 1.99... rounds up, never down


async def test_throttle_http_date_form(session: aiohttp.ClientSession) -> None:
    cfg = SinkConfig(throttle_every=1, retry_after=2, retry_after_form="date")
    async with Sink(cfg) as sink:
        token = sink.issue_token()
        before = time.time()
        status, _, r = await ingest(session, sink, token)
        after = time.time()
        assert status == 429
        when = email.utils.parsedate_to_datetime(r.headers["Retry-After"]).timestamp()
        # the server's now + 2 s, rounded up to a whole second; its now is in [before, after]
        assert before + 2 <= when <= after + 3
        assert r.headers["Retry-After"].endswith("GMT")


async def test_throttle_status_and_manual_window(
    session: aiohttp.ClientSession, sink_clock: SinkClock
) -> None:
    async with Sink(SinkConfig(throttle_status=503, retry_after=5)) as sink:
        token = sink.issue_token()
        assert (await ingest(session, sink, token))[0] == 200
        sink.open_throttle_window(0.2)
        status, _, r = await ingest(session, sink, token)
        assert status == 503
        assert r.headers["Retry-After"] == "1"
        sink_clock.advance(0.19)
        assert (await ingest(session, sink, token))[0] == 503  # the window lasts 0.2 s
        sink_clock.advance(0.06)
        assert (await ingest(session, sink, token))[0] == 200


# -- random faults -------------------------------------------------------------------------------


async def _statuses(session: aiohttp.ClientSession, cfg: SinkConfig, n: int) -> list[int]:
    async with Sink(cfg) as sink:
        token = sink.issue_token()
        return [(await ingest(session, sink, token, key=f"k{i}"))[0] for i in range(n)]


async def test_error_rate_is_seeded(session: aiohttp.ClientSession) -> None:
    cfg = SinkConfig(error_rate=0.25, seed=7)
    first = await _statuses(session, cfg, 400)
    errors = [s for s in first if s != 200]
    assert 0.18 < len(errors) / len(first) < 0.32
    assert set(errors) <= {500, 502, 503}
    assert len(set(errors)) == 3
    assert await _statuses(session, SinkConfig(error_rate=0.25, seed=7), 400) == first
    assert await _statuses(session, SinkConfig(error_rate=0.25, seed=8), 400) != first


async def test_reset_closes_the_connection(session: aiohttp.ClientSession) -> None:
    async with Sink(SinkConfig(reset_rate=1.0)) as sink:
        token = sink.issue_token()
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await ingest(session, sink, token, key="k")
        sink.faults.reset_rate = 0.0
        assert (await ingest(session, sink, token, key="k"))[0] == 200
        stats = sink.stats(detail=True)
        assert stats["resets"] == 1
        assert [a[1] for a in stats["arrivals"]] == ["reset", 200]
        assert stats["duplicates"] == 0  # the reset happened before the batch was stored


async def test_faults_after_acceptance_make_the_retry_a_duplicate(
    session: aiohttp.ClientSession,
) -> None:
    async with Sink(SinkConfig(error_rate=1.0, fault_phase="after")) as sink:
        token = sink.issue_token()
        status, _, _ = await ingest(session, sink, token, [{"id": 1}], key="k")
        assert status in (500, 502, 503)
        sink.faults.error_rate = 0.0
        status, body, _ = await ingest(session, sink, token, [{"id": 1}], key="k")
        assert (status, body) == (200, {"accepted": 1, "duplicate": True})
        assert sink.records() == [{"id": 1}]
        assert sink.stats()["duplicates"] == 1


async def test_hang_never_answers(session: aiohttp.ClientSession) -> None:
    # shutdown_timeout=30: a shutdown that waited for the hanging handler would take 30 s
    async with Sink(SinkConfig(hang=True), shutdown_timeout=30) as sink:
        token = sink.issue_token()
        timeout = aiohttp.ClientTimeout(total=0.2)
        with pytest.raises(asyncio.TimeoutError):
            await session.post(sink.ingest_url, json=[{}], headers=bearer(token), timeout=timeout)
        assert sink.stats()["hangs"] == 1
        started = time.monotonic()
    # shutdown does not wait for hanging handlers: waiting would take the 30 s shutdown
    # timeout; 10 s leaves margin for a loaded 2-core box
    assert time.monotonic() - started < 10


async def test_latency_range_and_concurrency(session: aiohttp.ClientSession) -> None:
    async with Sink(SinkConfig(latency=(0.4, 0.5), seed=1)) as sink:
        token = sink.issue_token()
        started = time.monotonic()
        results = await asyncio.gather(
            *(ingest(session, sink, token, key=f"k{i}") for i in range(8))
        )
        elapsed = time.monotonic() - started
        assert {r[0] for r in results} == {200}
        # one after the other, the 8 delays would add up to >= 3.2 s; together they take
        # <= 0.5 s, and 2 s leaves 1.5 s for a loaded 2-core box
        assert 0.4 <= elapsed < 2.0
        assert sink.stats()["max_concurrent_ingest"] == 8
        assert sink.stats()["in_flight"] == 0


# -- revocation and outages --------------------------------------------------------------------


async def test_revoke_endpoint(session: aiohttp.ClientSession, sink: Sink) -> None:
    token = await fetch_token(session, sink)
    async with session.post(sink.revoke_url, data={"token": token}) as r:
        assert r.status == 200
    async with session.post(sink.revoke_url, data={"token": "unknown"}) as r:
        assert r.status == 200
    status, body, _ = await ingest(session, sink, token)
    assert (status, body["reason"]) == (401, "revoked")
    assert sink.stats()["revoked"] == 1
    assert sink.stats()["revocation_requests"] == 2


async def test_revoke_all_after_n_requests(session: aiohttp.ClientSession) -> None:
    async with Sink(SinkConfig(revoke_all_after=3)) as sink:
        token = await fetch_token(session, sink)
        got = [(await ingest(session, sink, token))[0] for _ in range(4)]
        assert got == [200, 200, 200, 401]
        fresh = await fetch_token(session, sink)
        got = [(await ingest(session, sink, fresh))[0] for _ in range(5)]
        assert got == [200] * 5  # once only
        assert (await ingest(session, sink, token))[0] == 401
        assert sink.stats()["revoked"] == 1


async def test_auth_outage_for_n_requests(session: aiohttp.ClientSession) -> None:
    async with Sink(SinkConfig(auth_outage_requests=2)) as sink:
        grant = {"grant_type": "client_credentials"}
        auth = {"Authorization": basic("asyncsync-demo", "demo-secret")}
        got = []
        for _ in range(3):
            async with session.post(sink.token_url, data=grant, headers=auth) as r:
                got.append(r.status)
        assert got == [503, 503, 200]
        login = {"username": "demo", "password": "demo-password"}
        async with session.post(sink.login_url, json=login) as r:
            assert r.status == 200
        assert sink.stats()["token_statuses"] == {"200": 2, "503": 2}


async def test_auth_outage_for_a_duration(
    session: aiohttp.ClientSession, sink_clock: SinkClock
) -> None:
    async with Sink(SinkConfig(auth_outage=0.2)) as sink:
        login = {"username": "demo", "password": "demo-password"}
        async with session.post(sink.login_url, json=login) as r:
            assert r.status == 503
            assert (await r.json())["error"] == "temporarily_unavailable"
        sink_clock.advance(0.19)
        async with session.post(sink.login_url, json=login) as r:
            assert r.status == 503  # the outage lasts 0.2 s
        sink_clock.advance(0.06)
        async with session.post(sink.login_url, json=login) as r:
            assert r.status == 200
        sink.set_faults(auth_outage=0.2)  # restarts the clock
        async with session.post(sink.login_url, json=login) as r:
            assert r.status == 503


async def test_concurrent_token_requests_are_measured(session: aiohttp.ClientSession) -> None:
    async with Sink(SinkConfig(token_latency=0.05)) as sink:
        await asyncio.gather(*(fetch_token(session, sink) for _ in range(3)))
        stats = sink.stats(detail=True)
        assert stats["max_concurrent_token_requests"] == 3
        assert [a[1:] for a in stats["token_arrivals"]] == [["/oauth/token", 200]] * 3


# -- admin -----------------------------------------------------------------------------------------


async def test_admin_endpoints(session: aiohttp.ClientSession, sink: Sink) -> None:
    token = await fetch_token(session, sink)
    assert (await ingest(session, sink, token, key="a"))[0] == 200
    async with session.get(sink.url + "/admin/faults") as r:
        assert (await r.json())["error_rate"] == 0.0
    async with session.post(
        sink.url + "/admin/faults", json={"error_rate": 1.0, "error_statuses": [502]}
    ) as r:
        assert r.status == 200
        assert (await r.json())["error_statuses"] == [502]
    assert sink.faults.error_rate == 1.0
    assert (await ingest(session, sink, token, key="b"))[0] == 502
    async with session.post(sink.url + "/admin/faults", json={"error_rate": 2}) as r:
        assert r.status == 400
    async with session.post(sink.url + "/admin/faults", json={"no_such": 1}) as r:
        assert r.status == 400
        assert "no_such" in (await r.json())["message"]
    assert sink.faults.error_rate == 1.0  # a rejected change changes nothing
    async with session.post(sink.url + "/admin/faults", json={"error_rate": 0}) as r:
        assert r.status == 200
    async with session.post(sink.url + "/admin/throttle", json={"seconds": 5}) as r:
        assert r.status == 200
    assert (await ingest(session, sink, token))[0] == 429
    async with session.post(sink.url + "/admin/revoke-all") as r:
        assert await r.json() == {"revoked": 1}
    async with session.post(sink.url + "/admin/reset") as r:
        assert r.status == 200
    stats = sink.stats()
    assert stats["ingest_requests"] == 0
    assert stats["records"] == 0
    assert sink.records() == []
    # the reset also ended the throttle window and forgot accepted keys
    token = await fetch_token(session, sink)
    assert (await ingest(session, sink, token, key="a"))[:2] == (200, {"accepted": 1})
    async with session.get(sink.stats_url, params={"detail": "1"}) as r:
        stats = await r.json()
    assert stats["records"] == 1
    assert len(stats["arrivals"]) == 1


async def test_admin_can_be_disabled(session: aiohttp.ClientSession) -> None:
    async with Sink(SinkConfig(admin=False)) as sink:
        status = (await session.post(sink.url + "/admin/reset")).status
        assert status == 404


async def test_runtime_fault_assignment(session: aiohttp.ClientSession, sink: Sink) -> None:
    token = sink.issue_token()
    sink.faults = Faults(reject_field="x")
    assert (await ingest(session, sink, token, [{"x": 1}]))[0] == 400
    sink.faults.reject_field = None
    assert (await ingest(session, sink, token, [{"x": 1}]))[0] == 200


# -- storage -------------------------------------------------------------------------------------


async def test_store_path_without_keeping_records(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    path = tmp_path / "received.jsonl"
    async with Sink(SinkConfig(store_path=str(path), keep_records=False)) as sink:
        token = sink.issue_token()
        await ingest(session, sink, token, [{"id": 1}, {"id": 2}], key="a")
        await ingest(session, sink, token, [{"id": 1}, {"id": 2}], key="a")
        await ingest(session, sink, token, [{"id": 3}], key="b")
        assert sink.records() == [{"id": 1}, {"id": 2}, {"id": 3}]
        async with session.get(sink.records_url) as r:
            assert (await r.read()).splitlines() == [b'{"id":1}', b'{"id":2}', b'{"id":3}']
        assert sink.stats()["records"] == 3
    assert path.read_bytes() == b'{"id":1}\n{"id":2}\n{"id":3}\n'


async def test_https(session: aiohttp.ClientSession) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with Sink(ssl_context=server_ctx) as sink:
        assert sink.url.startswith("https://127.0.0.1:")
        async with session.post(
            sink.token_url,
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic("asyncsync-demo", "demo-secret")},
            ssl=client_ctx,
        ) as r:
            assert r.status == 200


# -- config ----------------------------------------------------------------------------------------


def test_config_validation() -> None:
    assert SinkConfig(error_rate=0.5).fault_settings().error_rate == 0.5
    assert SinkConfig(faults=Faults(seed=3)).fault_settings().seed == 3
    assert "demo-secret" not in repr(SinkConfig())
    with pytest.raises(ValueError, match="not both"):
        SinkConfig(error_rate=0.1, faults=Faults(seed=1))
    with pytest.raises(ValueError, match="error_rate"):
        SinkConfig(error_rate=1.5)
    with pytest.raises(ValueError, match="latency"):
        Faults(latency=(0.2, 0.1))
    with pytest.raises(ValueError, match="login_expiry_style"):
        SinkConfig(login_expiry_style="epoch")  # type: ignore[arg-type]
    assert Faults(latency=[0.1, 0.2]).latency == (0.1, 0.2)  # type: ignore[arg-type]


# -- process mode ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_process_mode(session: aiohttp.ClientSession) -> None:
    env = {**os.environ, "SINK_CLIENT_SECRET": "from-env+1", "PYTHONPATH": str(REPO)}
    argv = ["-m", "asyncsync.sink", "--port", "0", "--token-ttl", "30"]
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv, stdout=pipe, stderr=pipe, env=env
    )
    assert proc.stdout is not None
    try:
        printed: dict[str, str] = {}
        while "password" not in printed:
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line, "the sink exited before printing its URLs"
            name, _, value = line.decode().strip().partition(": ")
            printed[name] = value
        for name in ("token", "login", "ingest", "revoke", "stats"):
            assert printed[name].startswith("http://127.0.0.1:")
        assert printed["client_secret"] == "from-env+1"
        async with session.post(
            printed["token"],
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic(printed["client_id"], printed["client_secret"])},
        ) as r:
            assert r.status == 200
            body = await r.json()
        assert body["expires_in"] == 30
        async with session.post(
            printed["ingest"], json=[{"id": 1}], headers=bearer(body["access_token"])
        ) as r:
            assert r.status == 200
        async with session.get(printed["stats"]) as r:
            stats = await r.json()
        assert stats["records"] == 1
        assert stats["token_requests"] == 1
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 20)
    assert rc == 0, (await proc.stderr.read()).decode() if proc.stderr else rc


def test_cli_flags_map_onto_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from asyncsync.sink._cli import build_parser, config_from_args

    monkeypatch.setenv("SINK_CLIENT_SECRET", "env-secret")
    args = build_parser().parse_args(
        [
            "--latency", "0.01-0.05", "--error-rate", "0.2", "--reset-rate", "0.1",
            "--throttle-every", "50", "--retry-after", "2", "--retry-after-date",
            "--revoke-all-after", "100", "--auth-outage", "1.5", "--reject-field", "bad",
            "--max-body-bytes", "1000", "--no-dedupe", "--no-keep-records", "--seed", "4",
            "--token-ttl", "none", "--user", "ann:pw:x", "--store", "out.jsonl",
        ]
    )  # fmt: skip
    cfg = config_from_args(args)
    assert cfg.client_secret == "env-secret"
    assert cfg.latency == (0.01, 0.05)
    assert (cfg.error_rate, cfg.reset_rate, cfg.seed) == (0.2, 0.1, 4)
    assert (cfg.throttle_every, cfg.retry_after, cfg.retry_after_form) == (50, 2.0, "date")
    assert (cfg.revoke_all_after, cfg.auth_outage) == (100, 1.5)
    assert (cfg.reject_field, cfg.max_body_bytes) == ("bad", 1000)
    assert (cfg.dedupe, cfg.keep_records, cfg.store_path) == (False, False, "out.jsonl")
    assert cfg.token_ttl is None
    assert cfg.users == {"ann": "pw:x"}
    explicit = build_parser().parse_args(["--client-secret", "flag"])
    assert config_from_args(explicit).client_secret == "flag"


def test_main_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--error-rate", "3"])
    assert exc.value.code == 2
    assert "error_rate" in capsys.readouterr().err


def test_stats_are_json() -> None:
    stats = json.loads(json.dumps(Sink().stats(detail=True)))
    assert stats["records"] == 0


# -- the parts, without a server -------------------------------------------------------------


def test_body_decoding_is_bounded_and_formats_are_named() -> None:
    from asyncsync.sink._bodies import BadBody, decode, forbidden_record, parse

    bomb = gzip.compress(b"[" + b" " * 10_000 + b"]")
    with pytest.raises(BadBody) as err:
        decode(bomb, "gzip", 1_000)
    assert err.value.status == 413
    two = gzip.compress(b'[{"a":') + gzip.compress(b"1}]")
    assert decode(two, " GZIP ", 1_000) == b'[{"a":1}]'
    with pytest.raises(BadBody) as err:
        decode(b"x", "br", 1_000)
    assert err.value.status == 415
    with pytest.raises(BadBody, match="uncompressed JSON"):
        decode(b'[{"a": 1}]', "gzip", 1_000)

    assert parse(b'[{"a":1}]', "application/json") == ([{"a": 1}], "json")
    assert parse(b'{"rows":[{"a":1}]}', "application/json") == ([{"a": 1}], "wrapped")
    assert parse(b'{"a":1}\n\n{"a":2}\n', "application/x-ndjson") == (
        [{"a": 1}, {"a": 2}],
        "ndjson",
    )
    for bad in (b"[1]", b'{"a":[1],"b":[2]}', b"[{"):
        with pytest.raises(BadBody):
            parse(bad, "application/json")
    assert forbidden_record([{"a": 1}, {"b": 2}, {"b": 3}], "b") == 1
    assert forbidden_record([{"a": 1}], "b") is None


def test_fault_schedules() -> None:
    from asyncsync.sink._faults import FaultRuntime

    def draws(faults: Faults) -> list[int | str | None]:
        rt = FaultRuntime()
        rt.sync(faults, 0.0)
        out = []
        for _ in range(50):
            rt.hangs(faults)
            out.append(rt.draw(faults))
        return out

    # Each decision has its own RNG: turning hangs on leaves the error draws as they were.
    plain = draws(Faults(error_rate=0.3, reset_rate=0.1, seed=7))
    assert plain == draws(Faults(error_rate=0.3, reset_rate=0.1, hang_rate=0.5, seed=7))
    assert {"reset", None} < set(plain)

    faults = Faults(revoke_all_after=2, throttle_every=3, auth_outage=5.0, auth_outage_requests=1)
    rt = FaultRuntime()
    rt.sync(faults, 100.0)
    assert [rt.revoke_all_due() for _ in range(5)] == [False, False, True, False, False]
    assert [rt.throttle_due(faults) for _ in range(6)] == [False, False, True] * 2
    assert [rt.auth_down(200.0), rt.auth_down(104.9), rt.auth_down(105.0)] == [True, True, False]
