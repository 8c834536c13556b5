"""The same run on both transports (issue 13): the CLI with ``--transport aiohttp`` and
``--transport reqwest``, and the library with ``HttpOptions(transport=...)``, against the
reference sink misbehaving (5xx, resets, 401s from revoked tokens, 413s, Retry-After).

The parametrized ``transport_kind`` fixture (tests/conftest.py) runs each case once per kind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import clean_env, run_cli

from asyncsync import BatchLimits, HttpOptions, RetryPolicy, StateOptions, upload
from asyncsync.auth._oauth2 import OAuth2ClientCredentials
from asyncsync.sink import Sink, SinkConfig

FAST_RETRY = RetryPolicy(max_attempts=10, backoff_initial=0.01, backoff_max=0.05)


def oauth(sink: Sink) -> OAuth2ClientCredentials:
    return OAuth2ClientCredentials(sink.token_url, "asyncsync-demo", "demo-secret")


@pytest.mark.slow
async def test_cli_every_record_once_on_each_transport(
    make_jsonl: Callable[..., Path], tmp_path: Path, transport_kind: str
) -> None:
    """5xx and resets (some after the server stored the batch), a checkpoint and a dead-letter
    file: exit 0, every record stored once, one token, and the summary says which transport."""
    source = make_jsonl(3_000)
    summary_path = tmp_path / "summary.json"
    config = SinkConfig(error_rate=0.1, reset_rate=0.05, fault_phase="either", seed=5)
    async with Sink(config) as sink:
        result = await run_cli(
            "upload", str(source), "--url", sink.ingest_url, "--token-url", sink.token_url,
            "--client-id", "asyncsync-demo", "--transport", transport_kind,
            "--batch-size", "50", "--concurrency", "8", "--checkpoint", str(tmp_path / "ck"),
            "--summary-json", str(summary_path), "-q",
            cwd=tmp_path, env=clean_env(ASYNCSYNC_CLIENT_SECRET="demo-secret"),
        )  # fmt: skip
        stats = sink.stats()
        records = sink.records()
    assert result.code == 0, result.err
    summary = json.loads(summary_path.read_text())
    assert summary["transport"] == transport_kind
    assert summary["records_sent"] == 3_000 and summary["retries"] > 0
    assert summary["requests"] == summary["batches"] + summary["retries"]
    assert sorted(r["id"] for r in records) == list(range(1, 3_001))
    assert stats["token_requests"] == 1 and stats["key_body_mismatches"] == 0


@pytest.mark.slow
async def test_cli_tls_refusal_exits_3_on_each_transport(
    make_jsonl: Callable[..., Path], tmp_path: Path, transport_kind: str
) -> None:
    """An https URL whose certificate no trusted CA signed: exit 3, naming --ca-bundle."""
    import ssl

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    source = make_jsonl(10)
    async with Sink(SinkConfig(require_auth=False), ssl_context=server_ctx) as sink:
        result = await run_cli(
            "upload", str(source), "--url", sink.ingest_url, "--auth", "none",
            "--transport", transport_kind, cwd=tmp_path,
        )  # fmt: skip
        stats = sink.stats()
    assert result.code == 3, result.err
    assert "--ca-bundle" in result.err.strip().splitlines()[-1]
    assert stats["records"] == 0


async def test_library_revoked_tokens_413_and_retry_after_on_each_transport(
    make_jsonl: Callable[..., Path], tmp_path: Path, transport_kind: str
) -> None:
    """Every token revoked mid-run (a 401 storm: one refresh), bodies over the server's limit
    (413: split), a 429 window with Retry-After: nothing lost, nothing twice."""
    source = make_jsonl(2_000)
    config = SinkConfig(
        revoke_all_after=10, max_body_bytes=6_000, throttle_every=15, retry_after=1, seed=2
    )
    async with Sink(config) as sink:
        summary = await upload(
            source,
            sink.ingest_url,
            auth=oauth(sink),
            concurrency=8,
            limits=BatchLimits(max_records=40),
            retry=FAST_RETRY,
            http=HttpOptions(transport=transport_kind),
            state=StateOptions(failed=tmp_path / "f.jsonl"),
        )
        stats = sink.stats()
        records = sink.records()
    assert summary.records_sent == 2_000 and summary.records_failed == 0
    assert sorted(r["id"] for r in records) == list(range(1, 2_001))
    assert stats["too_large"] > 0 and stats["throttled"] > 0
    assert stats["token_requests"] == 2 and summary.auth_requests == 2
    assert summary.retries_by_status.get("429", 0) >= 1
