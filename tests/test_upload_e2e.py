"""End to end: the library against the reference partner server on loopback."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from cli_helpers import run_cli
from recording import assert_delivered_once, record_sink, serve

from asyncsync import (
    AuthError,
    BatchLimits,
    BodyOptions,
    HttpOptions,
    RejectOptions,
    RetryPolicy,
    StateOptions,
    Uploader,
    upload,
)
from asyncsync.auth._oauth2 import OAuth2ClientCredentials
from asyncsync.sink import Sink, SinkConfig

FAST_RETRY = RetryPolicy(max_attempts=10, backoff_initial=0.01, backoff_max=0.05)


def oauth(sink: Sink) -> OAuth2ClientCredentials:
    return OAuth2ClientCredentials(sink.token_url, "asyncsync-demo", "demo-secret")


def file_records(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def dead_letters(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_50k_records_exactly_once_with_one_token(
    make_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    """50 k records, 32 workers: every record arrives once, one token request, no dead letters."""
    source = make_jsonl(50_000)
    failed = tmp_path / "failed.jsonl"
    sink = Sink(SinkConfig(keep_records=False))
    received = record_sink(sink)
    async with sink:
        summary = await upload(
            source,
            sink.ingest_url,
            auth=oauth(sink),
            concurrency=32,
            state=StateOptions(failed=failed),
        )
        stats = sink.stats()
    assert summary.records_read == summary.records_sent == 50_000
    assert summary.records_failed == 0 and summary.auth_requests == 1
    assert summary.batches == 250 and summary.requests == 250
    assert stats["records"] == 50_000 and stats["duplicates"] == 0
    assert stats["token_requests"] == 1 and stats["max_concurrent_ingest"] <= 32
    assert not failed.exists() or failed.read_bytes() == b""
    # identities, not counts: each record in exactly one request, and that request a 200
    assert all(r.ok for r in received) and len(received) == 250 + 1  # + the token request
    assert_delivered_once(received, file_records(source))


async def test_short_token_lifetime_refreshes_only_on_expiry(
    make_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    """TTL 1 s over a ~3 s run: about one token per lifetime, never two at once."""
    source = make_jsonl(3_000)
    sink = Sink(SinkConfig(token_ttl=1.0, latency=0.02))
    received = record_sink(sink)
    async with sink:
        summary = await upload(
            source,
            sink.ingest_url,
            auth=oauth(sink),
            concurrency=8,
            limits=BatchLimits(max_records=20),
            http=HttpOptions(rate=50),
            state=StateOptions(failed=tmp_path / "f.jsonl"),
        )
        stats = sink.stats()
    assert summary.records_sent == 3_000
    lifetimes = summary.duration_s / 1.0
    # effective skew is 25% of a 1 s lifetime: a refresh every ~0.75 s
    assert 2 <= stats["token_requests"] <= lifetimes / 0.75 + 2
    assert stats["max_concurrent_token_requests"] == 1
    # a request delayed past the 0.25 s margin on a loaded machine may still meet expiry
    assert stats["unauthorized"].get("expired", 0) <= 2
    # each record acknowledged once; a batch re-sent after such a 401 kept its key
    assert_delivered_once(received, file_records(source))


async def test_revoke_all_mid_run_costs_one_token_request(
    make_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    """Every token revoked mid-run: the 401 storm of 16 workers makes exactly one new fetch."""
    source = make_jsonl(20_000)
    sink = Sink(SinkConfig(revoke_all_after=30, keep_records=False))
    received = record_sink(sink)
    async with sink:
        summary = await upload(
            source,
            sink.ingest_url,
            auth=oauth(sink),
            concurrency=16,
            limits=BatchLimits(max_records=100),
            state=StateOptions(failed=tmp_path / "f.jsonl"),
        )
        stats = sink.stats()
    assert summary.records_sent == 20_000 and summary.records_failed == 0
    assert stats["token_requests"] == 2 and summary.auth_requests == 2
    assert stats["records"] == 20_000
    # each record acknowledged once; the batches refused with 401 went out again under
    # their own key (with the new token)
    assert_delivered_once(received, file_records(source))
    refused = [r for r in received if r.path == "/ingest" and r.status == 401]
    assert refused and {r.key for r in refused} <= {r.key for r in received if r.ok}


async def test_retry_after_pauses_all_workers(
    make_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    """A 429 window with Retry-After: no new request reaches the server inside the window."""
    source = make_jsonl(4_000)
    config = SinkConfig(throttle_every=20, retry_after=1, keep_records=False, require_auth=False)
    async with Sink(config) as sink:
        summary = await upload(
            source,
            sink.ingest_url,
            concurrency=16,
            limits=BatchLimits(max_records=50),
            retry=FAST_RETRY,
            state=StateOptions(failed=tmp_path / "f.jsonl"),
        )
        stats = sink.stats(detail=True)
    assert summary.records_sent == 4_000 and summary.records_failed == 0
    assert stats["throttled"] >= 1
    # only requests already in flight when the first 429 went out may land in a window
    assert stats["inside_window_arrivals"] <= 16 * stats["windows_opened"]
    assert summary.retries_by_status.get("429", 0) >= 1


@pytest.mark.slow
@pytest.mark.parametrize("form", ["seconds", "date"])
async def test_cli_retry_after_pauses_every_worker(
    make_jsonl: Callable[..., Path], tmp_path: Path, form: str
) -> None:
    """The CLI, 8 workers, against a loopback server that answers one request 429 with
    ``Retry-After: 2`` (or an HTTP date about 2 s ahead) and 200 to everything else, even
    inside the pause: until the pause ends no request arrives but those the other 7 workers
    had in flight when the 429 went out; then the run goes on and delivers everything."""
    concurrency = 8
    source = make_jsonl(500)
    throttle: dict[str, float] = {}
    count = 0

    async def ingest(request: web.Request) -> web.Response:
        nonlocal count
        count += 1
        if count == 25:  # the run is well under way: every worker is busy
            if form == "seconds":
                value, seconds = "2", 2.0
            else:  # whole seconds only: the date is 1-2 s ahead
                target = math.floor(time.time() + 2)
                value, seconds = formatdate(target, usegmt=True), target - time.time()
            now = time.monotonic()
            throttle.update(at=now, end=now + seconds)
            return web.json_response(
                {"error": "slow down"}, status=429, headers={"Retry-After": value}
            )
        await asyncio.sleep(0.02)  # requests spend a moment in flight
        return web.json_response({"ok": True})

    async with serve({"/ingest": ingest}) as server:
        result = await run_cli(
            "upload", str(source), "--url", server.url("/ingest"), "--auth", "none",
            "--concurrency", str(concurrency), "--batch-size", "5", "--max-attempts", "3",
            "--failed", str(tmp_path / "failed.jsonl"), "--summary-json", str(tmp_path / "s.json"),
            "-q", cwd=tmp_path,
        )  # fmt: skip
    assert result.code == 0, result.err
    summary = orjson.loads((tmp_path / "s.json").read_bytes())
    assert summary["records_sent"] == 500 and summary["retries_by_status"] == {"429": 1}
    requests = server.at("/ingest")
    assert_delivered_once(requests, file_records(source))
    [throttled] = [r for r in requests if r.status == 429]
    at, end = throttle["at"], throttle["end"]
    margin = 0.05  # the client reads its clocks a little after the server read them
    inside = [r for r in requests if at < r.arrived < end - margin]
    n_inside = len(inside)
    # only requests other workers had in flight when the 429 went out may land in the pause
    assert n_inside <= concurrency - 1, f"{n_inside} requests inside a {end - at:.2f} s pause"
    assert throttled.key not in {r.key for r in inside}
    retry = [r for r in requests if r.key == throttled.key and r is not throttled]
    assert len(retry) == 1 and retry[0].ok
    # the pause ends, and not much later than announced (1.5 s of slack: a busy 2-core box)
    assert end - margin <= retry[0].arrived <= end + 1.5
    after = [r.arrived for r in requests if r.arrived >= end - margin and r.key != throttled.key]
    assert after and min(after) <= end + 1.5


async def test_faults_lose_nothing_and_retries_keep_their_key(
    make_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    """20% 5xx plus resets (some after storing): every record arrives once, keys are stable."""
    source = make_jsonl(10_000)
    config = SinkConfig(
        error_rate=0.2, reset_rate=0.05, fault_phase="either", seed=3, keep_records=True
    )
    async with Sink(config) as sink:
        summary = await upload(
            source,
            sink.ingest_url,
            auth=oauth(sink),
            concurrency=16,
            limits=BatchLimits(max_records=50),
            retry=FAST_RETRY,
            state=StateOptions(failed=tmp_path / "f.jsonl"),
        )
        stats = sink.stats()
        records = sink.records()
    assert summary.records_sent == 10_000 and summary.records_failed == 0
    assert summary.retries > 0 and stats["resent_keys"] > 0
    assert stats["key_body_mismatches"] == 0 and stats["bodies_under_several_keys"] == 0
    assert sorted(r["id"] for r in records) == list(range(1, 10_001))


async def test_rejected_batches_are_dead_lettered_complete(
    tmp_path: Path,
) -> None:
    """--on-reject batch: a 400 for batches holding a bad field puts each of their records in
    the dead-letter file (the default split is in test_rejects_e2e)."""
    source = tmp_path / "in.jsonl"
    lines = [orjson.dumps({"id": i, **({"poison": 1} if i in (7, 33) else {})}) for i in range(60)]
    source.write_bytes(b"\n".join(lines) + b"\n")
    failed = tmp_path / "failed.jsonl"
    async with Sink(SinkConfig(reject_field="poison", require_auth=False)) as sink:
        summary = await upload(
            source,
            sink.ingest_url,
            limits=BatchLimits(max_records=10),
            state=StateOptions(failed=failed),
            rejects=RejectOptions(on_reject="batch"),
        )
    entries = dead_letters(failed)
    # ids 7 and 33 sit in batches 1-10 and 31-40 (lines are 1-based)
    assert summary.records_failed == 20 and summary.records_sent == 40
    assert sorted(e["line"] for e in entries) == list(range(1, 11)) + list(range(31, 41))
    assert all(e["status"] == 400 and e["attempts"] == 1 for e in entries)
    assert {e["idempotency_key"] for e in entries} == {
        f"{summary.job_id}-1-10",
        f"{summary.job_id}-31-40",
    }
    assert [e["record"] for e in entries][:2] == [{"id": 0}, {"id": 1}]


async def test_413_splits_batches(make_jsonl: Callable[..., Path], tmp_path: Path) -> None:
    """The server takes at most ~2 KB bodies: batches split until they fit; nothing lost."""
    source = make_jsonl(500)
    sink = Sink(SinkConfig(max_body_bytes=2_000, require_auth=False))
    received = record_sink(sink)
    async with sink:
        summary = await upload(
            source,
            sink.ingest_url,
            limits=BatchLimits(max_records=50),
            state=StateOptions(failed=tmp_path / "f.jsonl"),
        )
        stats = sink.stats()
    assert summary.records_sent == 500 and summary.records_failed == 0
    assert stats["too_large"] > 0 and stats["records"] == 500
    # each record acknowledged once, in one part; only a 413'd request's records go out again
    assert any(r.status == 413 for r in received)
    assert_delivered_once(received, file_records(source))


async def test_malformed_lines_are_dead_lettered_with_line_numbers(tmp_path: Path) -> None:
    """Malformed and non-object lines go to the dead-letter file; the rest are delivered."""
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"id":1}\n{"id":2\n\n[1,2]\n{"id":5}\n')
    failed = tmp_path / "failed.jsonl"
    async with Sink(SinkConfig(require_auth=False)) as sink:
        summary = await upload(source, sink.ingest_url, state=StateOptions(failed=failed))
        records = sink.records()
    entries = dead_letters(failed)
    assert [r["id"] for r in records] == [1, 5]
    assert [(e["line"], e["record"], e["status"]) for e in entries] == [
        (2, '{"id":2', None),
        (4, "[1,2]", None),
    ]
    assert all(e["idempotency_key"] is None for e in entries)
    assert summary.records_read == 4 and summary.records_failed == 2


@pytest.mark.parametrize(("body", "gzip"), [("ndjson", False), ("json", True), ("ndjson", True)])
async def test_body_formats_decode_at_server(
    make_jsonl: Callable[..., Path], tmp_path: Path, body: str, gzip: bool
) -> None:
    """NDJSON and gzip bodies arrive intact."""
    source = make_jsonl(1_000)
    async with Sink(SinkConfig()) as sink:
        summary = await upload(
            source,
            sink.ingest_url,
            auth=oauth(sink),
            body=BodyOptions(format=body, gzip=gzip),
            state=StateOptions(failed=tmp_path / "f.jsonl"),
        )
        records = sink.records()
        stats = sink.stats()
    assert summary.records_sent == 1_000
    assert sorted(r["id"] for r in records) == list(range(1, 1_001))
    assert ("gzip" in stats["encodings"]) == gzip


@pytest.mark.parametrize("via", ["library", pytest.param("cli", marks=pytest.mark.slow)])
async def test_wrapped_body(make_jsonl: Callable[..., Path], tmp_path: Path, via: str) -> None:
    """--wrap KEY sends {"KEY": [...]}: one key, that key, and the list is exactly the batch's
    records (the lines its Idempotency-Key names), byte for byte as objects."""
    source = make_jsonl(100)
    sent = file_records(source)
    async with serve() as server:
        url = server.url("/ingest")
        if via == "library":
            summary = await upload(
                source, url, body=BodyOptions(wrap="items"), limits=BatchLimits(max_records=30),
                state=StateOptions(failed=tmp_path / "f.jsonl"),
            )  # fmt: skip
            assert summary.records_sent == 100
        else:
            result = await run_cli(
                "upload", str(source), "--url", url, "--auth", "none", "--wrap", "items",
                "--batch-size", "30", "--failed", str(tmp_path / "f.jsonl"), "-q", cwd=tmp_path,
            )  # fmt: skip
            assert result.code == 0, result.err
    requests = server.at("/ingest")
    assert len(requests) == 4  # 30 + 30 + 30 + 10
    for r in requests:
        assert r.headers["Content-Type"].startswith("application/json")
        body = orjson.loads(r.body)
        assert isinstance(body, dict) and list(body) == ["items"], r.body[:100]
        assert r.key is not None
        first, last = (int(n) for n in r.key.rsplit("-", 2)[1:])
        assert body["items"] == sent[first - 1 : last]
    assert_delivered_once(requests, sent)


async def test_iterables_of_dicts_and_bytes(tmp_path: Path) -> None:
    """The library takes sync and async iterables of dicts or raw JSON bytes."""

    async def agen() -> object:
        for i in range(50):
            yield {"id": i}

    async with (
        Sink(SinkConfig(require_auth=False)) as sink,
        Uploader(sink.ingest_url, state=StateOptions(failed=tmp_path / "f.jsonl")) as up,
    ):
        s1 = await up.upload([{"id": i} for i in range(100)])
        s2 = await up.upload(b'{"id":%d}' % i for i in range(100, 130))
        s3 = await up.upload(agen())
        assert (s1.records_sent, s2.records_sent, s3.records_sent) == (100, 30, 50)
        assert len(sink.records()) == 180


async def test_auth_refused_ends_run(make_jsonl: Callable[..., Path], tmp_path: Path) -> None:
    """A bad client secret: AuthError after one token request, nothing sent."""
    source = make_jsonl(1_000)
    async with Sink(SinkConfig()) as sink:
        with pytest.raises(AuthError) as info:
            await upload(
                source,
                sink.ingest_url,
                auth=OAuth2ClientCredentials(sink.token_url, "asyncsync-demo", "wrong-secret"),
                concurrency=8,
                state=StateOptions(failed=tmp_path / "f.jsonl"),
            )
        stats = sink.stats()
    assert stats["token_requests"] == 1 and stats["ingest_requests"] == 0
    assert "wrong-secret" not in str(info.value)


async def test_cancellation_leaves_no_task_behind(
    make_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    """Cancelling upload() mid-run cancels every worker; no task of ours survives."""
    source = make_jsonl(5_000)
    async with Sink(SinkConfig(latency=0.05, require_auth=False)) as sink:
        before = asyncio.all_tasks()
        task = asyncio.create_task(
            upload(
                source,
                sink.ingest_url,
                concurrency=8,
                limits=BatchLimits(max_records=20),
                state=StateOptions(failed=tmp_path / "f.jsonl"),
            )
        )
        await asyncio.sleep(0.3)
        # mid-run: the workers exist and the filter below recognises them
        assert any("asyncsync/_" in _code_file(t) for t in asyncio.all_tasks())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
        leftover = {t for t in asyncio.all_tasks() - before if not t.done()}
        leftover.discard(asyncio.current_task())  # type: ignore[arg-type]
        # the sink's own handler tasks may still be finishing their latency sleep
        ours = [t for t in leftover if "asyncsync/_" in _code_file(t)]
        assert ours == []


def _code_file(task: asyncio.Task[object]) -> str:
    code = getattr(task.get_coro(), "cr_code", None)
    return code.co_filename if code is not None else ""
