"""Reliability end to end: an auth outage is ridden out, bad credentials are not, and the
summary's counts add up (``requests == batches + retries``) against a real loopback server.

The 60 s outage runs through an :class:`Uploader` whose token manager has an injected clock
and sleep (no minute of waiting); the others run the real ``asyncsync`` command against the
reference sink, on the wall clock, kept short.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from cli_helpers import clean_env, run_cli

from asyncsync import StateOptions, TokenManager, Uploader
from asyncsync._summary import merge_summaries
from asyncsync.auth._manager import DEFAULT_BACKOFF_MAX
from asyncsync.auth._oauth2 import OAuth2ClientCredentials
from asyncsync.sink import Sink, SinkConfig

CLIENT_ID = "asyncsync-demo"
CLIENT_SECRET = "reliability-secret-4f1c"


def sink_config(**options: Any) -> SinkConfig:
    return SinkConfig(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, seed=1, **options)


def oauth_args(sink: Sink) -> list[str]:
    return ["--url", sink.ingest_url, "--token-url", sink.token_url, "--client-id", CLIENT_ID]


def read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


class FakeTime:
    """The token manager's clock; its sleep advances it instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


# -- an auth outage ------------------------------------------------------------------------------


async def test_a_60s_auth_outage_with_an_injected_clock_delivers_everything(
    make_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    """The token endpoint answers 503 for a simulated 60 s, then tokens: every record is
    delivered once, 8 workers wait on one fetch, which made 12-26 token requests over
    60-70 simulated seconds (the default time budget is 120 s; the backoff caps at 10 s)."""
    source = make_jsonl(4_000)
    fake = FakeTime()
    async with Sink(sink_config(keep_records=False)) as sink:
        sink.set_faults(auth_outage_requests=1_000_000)  # down until the fake clock says so
        until = fake.now + 60

        async def sleep(seconds: float) -> None:
            await fake.sleep(seconds)
            if fake.now >= until:
                sink.set_faults(auth_outage_requests=0)

        provider = OAuth2ClientCredentials(sink.token_url, CLIENT_ID, CLIENT_SECRET)
        async with (
            TokenManager(provider, clock=fake, sleep=sleep) as tokens,
            Uploader(
                sink.ingest_url,
                auth=tokens,
                concurrency=8,
                state=StateOptions(failed=tmp_path / "f"),
            ) as up,
        ):
            summary = await up.upload(source)
        stats = sink.stats()
    assert summary.records_sent == summary.records_read == 4_000
    assert summary.records_failed == 0
    assert stats["records"] == 4_000 and stats["duplicates"] == 0
    waited = sum(fake.sleeps)
    assert 60 <= waited <= 60 + DEFAULT_BACKOFF_MAX
    token_requests = stats["token_requests"]
    assert token_requests == len(fake.sleeps) + 1 == summary.auth_requests
    assert 12 <= token_requests <= 26
    assert stats["token_statuses"] == {"503": token_requests - 1, "200": 1}
    assert stats["max_concurrent_token_requests"] == 1
    assert summary.requests == summary.batches + summary.retries == stats["ingest_requests"]


async def end_outage(sink: Sink, after: float) -> None:
    """End the token endpoint's outage ``after`` seconds past its first (503'd) request."""
    while sink.stats()["token_requests"] == 0:
        await asyncio.sleep(0.01)
    await asyncio.sleep(after)
    sink.set_faults(auth_outage_requests=0)


@pytest.mark.slow
async def test_cli_rides_out_a_3s_auth_outage(
    make_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    """Wall clock: the token endpoint answers 503 for 3 s from the command's first token
    request, then tokens. Exit 0, every record delivered, the retries paced by backoff."""
    source = make_jsonl(2_000)
    summary_path = tmp_path / "summary.json"
    async with Sink(sink_config(keep_records=False)) as sink:
        sink.set_faults(auth_outage_requests=1_000_000)
        ender = asyncio.create_task(end_outage(sink, 3.0))
        result = await run_cli(
            "upload", str(source), *oauth_args(sink), "--summary-json", str(summary_path),
            "-q", cwd=tmp_path, env=clean_env(ASYNCSYNC_CLIENT_SECRET=CLIENT_SECRET), limit=60,
        )  # fmt: skip
        await ender
        stats = sink.stats()
    assert result.code == 0, result.err
    summary = read_json(summary_path)
    assert summary["records_sent"] == stats["records"] == 2_000
    assert summary["records_failed"] == 0 and stats["duplicates"] == 0
    assert summary["auth_requests"] == stats["token_requests"]
    assert stats["token_statuses"].get("200") == 1
    # 3 s of full jitter from 0.5 s: a handful of 503s (at least one per doubling step
    # whose cap sums below 3 s), not a burst
    assert 2 <= stats["token_statuses"]["503"] <= 15
    assert summary["requests"] == summary["batches"] + summary["retries"]


@pytest.mark.slow
async def test_cli_gives_up_after_auth_retry_time(
    make_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    """An outage longer than --auth-retry-time: exit 3 after about that long, nothing sent."""
    source = make_jsonl(100)
    async with Sink(sink_config()) as sink:
        sink.set_faults(auth_outage=60.0)
        result = await run_cli(
            "upload", str(source), *oauth_args(sink), "--auth-retry-time", "1.5",
            cwd=tmp_path, env=clean_env(ASYNCSYNC_CLIENT_SECRET=CLIENT_SECRET), limit=30,
        )  # fmt: skip
        stats = sink.stats()
    assert result.code == 3, result.err
    assert "503" in result.err and "attempts in" in result.err
    assert stats["ingest_requests"] == 0
    assert 2 <= stats["token_requests"] <= 15
    assert set(stats["token_statuses"]) == {"503"}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["wrong-secret", "unknown-client"])
async def test_cli_bad_credentials_exit_3_with_at_most_3_token_requests(
    make_jsonl: Callable[..., Path], tmp_path: Path, how: str
) -> None:
    """invalid_client is not an outage: exit 3 at once, <= 3 token requests, nothing sent,
    the secret never printed."""
    source = make_jsonl(500)
    wrong = "wrong-secret-value-9d2a"
    secret = wrong if how == "wrong-secret" else CLIENT_SECRET
    client_id = CLIENT_ID if how == "wrong-secret" else "somebody-else"
    async with Sink(sink_config()) as sink:
        result = await run_cli(
            "upload", str(source), "--url", sink.ingest_url, "--token-url", sink.token_url,
            "--client-id", client_id, "--concurrency", "8", "-v",
            cwd=tmp_path, env=clean_env(ASYNCSYNC_CLIENT_SECRET=secret), limit=30,
        )  # fmt: skip
        stats = sink.stats()
    assert result.code == 3, result.err
    assert "invalid_client" in result.err and "401" in result.err
    assert 1 <= stats["token_requests"] <= 3
    assert stats["ingest_requests"] == 0 and stats["records"] == 0
    assert secret not in result.err + result.out


# -- the summary invariant -----------------------------------------------------------------------


def fatten(path: Path, every: int, padding: int) -> int:
    """Give every ``every``-th record a ``padding``-byte field; returns how many got one."""
    rows = path.read_bytes().splitlines()
    fat = 0
    for i in range(every - 1, len(rows), every):
        record = orjson.loads(rows[i])
        record["notes"] = "x" * padding
        rows[i] = orjson.dumps(record)
        fat += 1
    path.write_bytes(b"\n".join(rows) + b"\n")
    return fat


@pytest.mark.slow
async def test_requests_equal_batches_plus_retries_end_to_end(
    make_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    """Tokens that expire mid-run (no expires_in: only a 401 tells), 5xx, 429 windows and
    413 splits in one CLI run. From the summary JSON: ``requests == batches + retries``,
    equal to the ingest requests the server saw; ``batches`` equals the distinct keys it saw;
    ``retries_by_status["401"]`` equals the 401s it answered, and likewise for every other
    retried status; ``split_requests`` counts the requests for the halves of 413'd batches."""
    source = make_jsonl(3_000)
    fat = fatten(source, every=97, padding=2_500)  # ~8 KB batches of 20: over 6.5 KB, split
    summary_path = tmp_path / "summary.json"
    config = sink_config(
        keep_records=False,
        token_ttl=1.5,
        token_expires_in=False,
        error_rate=0.05,
        throttle_every=45,
        retry_after=0.2,
        max_body_bytes=6_500,
    )
    async with Sink(config) as sink:
        result = await run_cli(
            "upload", str(source), *oauth_args(sink), "--summary-json", str(summary_path),
            "--batch-size", "20", "--concurrency", "4", "--rate", "50", "-q",
            cwd=tmp_path, env=clean_env(ASYNCSYNC_CLIENT_SECRET=CLIENT_SECRET), limit=90,
        )  # fmt: skip
        stats = sink.stats()
    assert result.code == 0, result.err
    summary = read_json(summary_path)
    statuses: dict[str, int] = dict(stats["statuses"])
    by_reason: dict[str, int] = summary["retries_by_status"]

    # every record once; every fault kind happened
    assert summary["records_sent"] == stats["records"] == 3_000 and stats["duplicates"] == 0
    assert statuses.get("401", 0) >= 1 and stats["unauthorized"].get("expired", 0) >= 1
    assert statuses.get("429", 0) >= 1 and statuses.get("413", 0) >= 1
    assert sum(statuses.get(s, 0) for s in ("500", "502", "503")) >= 1

    # the invariant, and the server agrees with each term
    assert summary["requests"] == summary["batches"] + summary["retries"]
    assert summary["requests"] == stats["ingest_requests"]
    assert summary["batches"] == stats["keys_seen"]
    assert summary["retries"] == sum(by_reason.values())
    assert by_reason["401"] == statuses["401"]
    for status, answered in statuses.items():
        if status not in ("200", "413"):  # every other answer was retried
            assert by_reason.get(status) == answered, (status, by_reason, statuses)
    assert summary["retries"] == stats["ingest_requests"] - stats["keys_seen"]

    # 413: the batch that got it is one key (not retried); its halves are keys of their own
    assert statuses["413"] == stats["too_large"] >= fat // 2
    assert summary["split_requests"] >= 2 * statuses["413"]
    assert summary["split_requests"] <= summary["requests"]


def test_merged_summary_of_several_processes_sums_split_requests() -> None:
    """--processes N: the merged summary sums every term of the invariant, split_requests
    included, so the equation holds for the whole run."""
    parts = [
        {"batches": 10, "requests": 14, "retries": 4, "split_requests": 2,
         "retries_by_status": {"401": 1, "503": 3}},
        {"batches": 7, "requests": 9, "retries": 2, "split_requests": 4,
         "retries_by_status": {"401": 2}},
    ]  # fmt: skip
    merged = merge_summaries(parts, duration_s=1.0)
    assert (merged.batches, merged.requests, merged.retries) == (17, 23, 6)
    assert merged.requests == merged.batches + merged.retries
    assert merged.split_requests == 6
    assert merged.retries_by_status == {"401": 3, "503": 3}
    assert merged.to_dict()["split_requests"] == 6
