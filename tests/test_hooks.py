"""Hooks: typed events carry everything a metrics system needs; unused hooks cost nothing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from asyncsync import (
    BatchLimits,
    BatchResult,
    CheckpointSaved,
    HookGroup,
    InFlight,
    OAuth2ClientCredentials,
    QueueDepth,
    RequestDone,
    RetryDetails,
    RetryPolicy,
    RunStarted,
    RunSummary,
    StateOptions,
    TokenEvent,
    TokenManager,
    TokenRefreshStarted,
    TokenRequested,
    Uploader,
    UploadHooks,
)
from asyncsync._hooks import NO_HOOKS, overrides
from asyncsync._summary import Counters
from asyncsync.sink import Sink, SinkConfig

try:
    from tests.test_token import FakeClock, manager, settle
    from tests.token_server import TokenServer
except ImportError:  # tests/ is not a package: pytest put it on sys.path itself
    from test_token import FakeClock, manager, settle  # type: ignore[no-redef]
    from token_server import TokenServer  # type: ignore[no-redef]


class Recorder(UploadHooks):
    """Keeps every event, by type."""

    def __init__(self) -> None:
        self.events: list[object] = []

    def on_run(self, event: RunStarted) -> None:
        self.events.append(event)

    def on_request(self, event: RequestDone) -> None:
        self.events.append(event)

    def on_retry(self, details: RetryDetails) -> None:
        self.events.append(details)

    def on_token(self, event: TokenEvent) -> None:
        self.events.append(event)

    def on_in_flight(self, event: InFlight) -> None:
        self.events.append(event)

    def on_queue(self, event: QueueDepth) -> None:
        self.events.append(event)

    def on_checkpoint(self, event: CheckpointSaved) -> None:
        self.events.append(event)

    def on_batch_done(self, result: BatchResult) -> None:
        self.events.append(result)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def _export(path: Path, n: int) -> Path:
    path.write_bytes(b"".join(b'{"id":%d,"pad":"%s"}\n' % (i, b"x" * 40) for i in range(n)))
    return path


async def test_hooks_receive_typed_events_that_add_up_to_the_summary(tmp_path: Path) -> None:
    """5xx, 429 and a 401 storm: every request, retry, token request, checkpoint and queue
    change arrives as a frozen event, and the events add up to the summary."""
    source = _export(tmp_path / "in.jsonl", 2000)
    config = SinkConfig(
        error_rate=0.1, throttle_every=15, retry_after=0.05, revoke_all_after=12, seed=7
    )
    rec = Recorder()
    async with Sink(config) as sink:
        provider = OAuth2ClientCredentials(sink.token_url, "asyncsync-demo", "demo-secret")
        async with Uploader(
            sink.ingest_url,
            auth=provider,
            concurrency=4,
            limits=BatchLimits(max_records=50),
            retry=RetryPolicy(backoff_initial=0.001, backoff_max=0.01),
            state=StateOptions(checkpoint=tmp_path / "ckpt", failed=tmp_path / "failed.jsonl"),
            hooks=rec,
        ) as up:
            summary = await up.upload(source)
        stats = sink.stats()

    assert summary.records_sent == 2000
    requests = rec.of(RequestDone)
    assert len(requests) == summary.requests == stats["ingest_requests"]
    assert Counter(r.label for r in requests) == Counter(
        {k: v for k, v in stats["statuses"].items()}
    )
    assert all(r.latency_s >= 0 and r.bytes_sent > 0 for r in requests)
    retries = rec.of(RetryDetails)
    assert len(retries) == summary.retries
    assert Counter(r.label for r in retries) == Counter(summary.retries_by_status)
    assert {"401", "429"} <= set(summary.retries_by_status)
    tokens = rec.of(TokenRequested)
    assert len(tokens) == summary.auth_requests == stats["token_requests"]
    assert tokens[0].reason == "initial"
    assert [e.reason for e in rec.of(TokenRefreshStarted)] == ["401"]
    (run,) = rec.of(RunStarted)
    assert run.concurrency == 4 and run.job_id == summary.job_id
    saves = rec.of(CheckpointSaved)
    assert saves[0].final is False and saves[-1].final is True
    assert [s.saves for s in saves] == sorted(s.saves for s in saves)
    depths = [q.batches for q in rec.of(QueueDepth)]
    assert depths and min(depths) >= 0 and depths[-1] == 0
    in_flight = [e.count for e in rec.of(InFlight)]
    assert len(in_flight) == 2 * summary.requests and min(in_flight) >= 0
    assert max(in_flight) <= 4 and in_flight[-1] == 0
    assert sum(len(r.batch) for r in rec.of(BatchResult)) == 2000
    with pytest.raises(AttributeError):
        requests[0].status = 1  # type: ignore[misc]


def test_default_hooks_want_no_per_request_event() -> None:
    """The no-op default (and hooks overriding only on_finish) want no per-request call: the
    sender checks the flag once and builds no event object."""
    for name in ("on_request", "on_in_flight", "on_queue", "on_batch_done", "on_token"):
        assert not overrides(NO_HOOKS, name)

    class OnlyFinish(UploadHooks):
        def on_finish(self, summary: RunSummary) -> None:
            pass

    group = HookGroup([OnlyFinish(), None])
    assert group.wanted == {"on_finish"}
    assert not overrides(group, "on_request")
    assert overrides(HookGroup([OnlyFinish(), Recorder()]), "on_request")


def test_a_structural_hooks_object_lacking_a_method_is_not_called_for_it() -> None:
    """An object with only the original four methods keeps working: new events skip it."""

    class Old:
        def on_start(self, counters: Counters, *, total_bytes: int | None) -> None: ...
        def on_retry(self, details: RetryDetails) -> None: ...
        def on_batch_done(self, result: BatchResult) -> None: ...
        def on_finish(self, summary: RunSummary) -> None: ...

    assert not overrides(Old(), "on_request")
    assert overrides(Old(), "on_batch_done")
    group = HookGroup([Old()])  # type: ignore[list-item]
    group.on_request(RequestDone(0, 1, 200, 0.01, 10))  # nobody wants it: no AttributeError


async def test_token_manager_observer_tells_requests_and_refresh_reasons() -> None:
    """The manager's own observer: initial fetch, proactive refresh (advisory window),
    expired (past expiry), 401 — each refresh with its reason, each request counted."""
    clock = FakeClock()
    seen: list[TokenEvent] = []
    async with TokenServer(client_secret="s3cr3t-Value-7d1e") as server:
        mgr = manager(server, clock, observer=seen.append)
        async with mgr:
            token = await mgr.get()  # initial
            clock.advance(3300 + 1)  # advisory window: background refresh
            await mgr.get()
            await settle(mgr)
            clock.advance(3600 + 10)  # past the hard expiry: the caller waits
            await mgr.get()
            current = mgr.current
            assert current is not None and current != token
            mgr.invalidate(current)  # the API said 401
            await mgr.get()
            stats = mgr.stats
    assert [e.reason for e in seen if isinstance(e, TokenRefreshStarted)] == [
        "proactive",
        "expired",
        "401",
    ]
    requests = [e for e in seen if isinstance(e, TokenRequested)]
    assert len(requests) == stats.requests == 4
    assert [r.reason for r in requests] == ["initial", "proactive", "expired", "401"]


async def test_a_failing_observer_does_not_fail_the_fetch() -> None:
    """An observer's bug is logged, never raised into get()."""
    clock = FakeClock()

    def broken(event: TokenEvent) -> None:
        raise RuntimeError("observer bug")

    async with TokenServer(client_secret="s3cr3t-Value-7d1e") as server:
        mgr = manager(server, clock, observer=broken)
        async with mgr:
            assert (await mgr.get()).value


def test_token_manager_knows_nothing_of_the_pipeline() -> None:
    """The manager's observer is a plain callable: no upload hooks needed."""
    assert "observer" in TokenManager.__init__.__code__.co_varnames
