"""--metrics: Prometheus text at /metrics during a real upload, equal to the summary at the end."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import pytest
from rich.console import Console

from asyncsync._exceptions import ConfigError
from asyncsync.cli._metrics import MetricsExporter, parse_listen_address
from asyncsync.cli._plan import plan_run
from asyncsync.cli._processes import _parent
from asyncsync.cli._run import run_plan
from asyncsync.cli._settings import settings_from_argv
from asyncsync.sink import Sink, SinkConfig

parser = pytest.importorskip("prometheus_client.parser")

try:
    from tests.cli_helpers import clean_env, command
except ImportError:  # tests/ is not a package: pytest put it on sys.path itself
    from cli_helpers import clean_env, command  # type: ignore[no-redef]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
COUNTERS = (
    "asyncsync_records_read_total",
    "asyncsync_records_sent_total",
    "asyncsync_records_failed_total",
    "asyncsync_requests_total",
    "asyncsync_retries_total",
    "asyncsync_token_requests_total",
    "asyncsync_token_refreshes_total",
    "asyncsync_bytes_sent_total",
    "asyncsync_checkpoint_saves_total",
    "asyncsync_request_duration_seconds_count",
)


def parse(text: str) -> Samples:
    """Every sample, by name and labels, through prometheus_client's own parser."""
    out: Samples = {}
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {
        dict(labels)[label]: v
        for (n, labels), v in samples.items()
        if n == name and v and label in dict(labels)
    }


async def scrape(session: aiohttp.ClientSession, url: str) -> Samples:
    async with session.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return parse(await resp.text())


async def test_metrics_rise_during_a_faulty_upload_and_equal_the_summary_at_the_end(
    tmp_path: Path,
) -> None:
    """5xx, 429s and a 401 storm: /metrics scraped during the run never goes down, and at the
    end every counter equals the summary's number and the sink's own count."""
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(b'{"id":%d,"pad":"%s"}\n' % (i, b"x" * 40) for i in range(3000)))
    config = SinkConfig(
        latency=0.01,
        error_rate=0.08,
        throttle_every=20,
        retry_after=0.05,
        revoke_all_after=15,
        seed=3,
    )
    exporter = MetricsExporter("127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    scrapes: list[Samples] = []
    try:
        async with Sink(config) as sink, aiohttp.ClientSession() as session:
            settings = settings_from_argv(
                [
                    str(source), "--url", sink.ingest_url, "--token-url", sink.token_url,
                    "--client-id", "asyncsync-demo", "--batch-size", "50", "--concurrency", "4",
                    "--checkpoint", str(tmp_path / "ckpt"), "-q",
                ],
                {"ASYNCSYNC_CLIENT_SECRET": "demo-secret"},
            )  # fmt: skip
            plan = await plan_run(settings)
            run = asyncio.ensure_future(run_plan(plan, observe=lambda _tokens: exporter.recorder))
            while not run.done():
                scrapes.append(await scrape(session, url))
                await asyncio.sleep(0.05)
            summary, error = await run
            final = await scrape(session, url)  # the exporter is still ours to scrape
            stats = sink.stats()
    finally:
        exporter.close()

    assert error is None and summary is not None and summary.records_sent == 3000
    assert len(scrapes) >= 3
    mid = [s for s in scrapes if 0 < total(s, "asyncsync_records_sent_total") < 3000]
    assert mid, "no scrape saw the run in progress"
    for name in COUNTERS:
        values = [total(s, name) for s in [*scrapes, final]]
        assert values == sorted(values), f"{name} went down: {values}"

    assert total(final, "asyncsync_records_read_total") == summary.records_read == 3000
    assert total(final, "asyncsync_records_sent_total") == summary.records_sent
    assert summary.records_sent == stats["records"]
    assert total(final, "asyncsync_records_failed_total") == summary.records_failed == 0
    assert total(final, "asyncsync_requests_total") == summary.requests
    assert summary.requests == stats["ingest_requests"]
    requests_by_status = by_label(final, "asyncsync_requests_total", "status")
    assert requests_by_status == {k: float(v) for k, v in stats["statuses"].items()}
    assert {"200", "429", "401"} <= set(requests_by_status)
    assert by_label(final, "asyncsync_retries_total", "reason") == {
        k: float(v) for k, v in summary.retries_by_status.items()
    }
    assert total(final, "asyncsync_retries_total") == summary.retries
    assert total(final, "asyncsync_token_requests_total") == summary.auth_requests
    assert summary.auth_requests == stats["token_requests"] >= 2
    refreshes = by_label(final, "asyncsync_token_refreshes_total", "reason")
    assert refreshes.get("401", 0) >= 1
    assert total(final, "asyncsync_bytes_sent_total") == summary.bytes_sent
    assert total(final, "asyncsync_request_duration_seconds_count") == summary.requests
    assert total(final, "asyncsync_checkpoint_saves_total") >= 2  # the first and the last
    assert total(final, "asyncsync_requests_in_flight") == 0
    assert total(final, "asyncsync_queue_batches") == 0
    assert total(final, "asyncsync_concurrency_limit") == 4
    (info,) = [labels for (n, labels), v in final.items() if n == "asyncsync_run_info" and v]
    assert dict(info)["job_id"] == summary.job_id


async def test_concurrency_limit_gauge_follows_the_auto_limit(tmp_path: Path) -> None:
    """--concurrency auto: asyncsync_concurrency_limit is the limit the run has moved to (read
    live), not the number of workers (--max-concurrency): at the end it equals the summary's
    concurrency_final, on a server whose capacity (4, 429 above 8) keeps it well below 64."""
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(b'{"id":%d}\n' % i for i in range(2000)))
    exporter = MetricsExporter("127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    seen: list[float] = []
    try:
        async with (
            Sink(SinkConfig(latency=0.005, capacity=4, retry_after=0.01)) as sink,
            aiohttp.ClientSession() as session,
        ):
            settings = settings_from_argv(
                [
                    str(source), "--url", sink.ingest_url, "--token-url", sink.token_url,
                    "--client-id", "asyncsync-demo", "--batch-size", "10",
                    "--concurrency", "auto", "--initial-concurrency", "2",
                    "--max-concurrency", "64", "--no-resume", "-q",
                    "--checkpoint", str(tmp_path / "ckpt"),
                ],
                {"ASYNCSYNC_CLIENT_SECRET": "demo-secret"},
            )  # fmt: skip
            plan = await plan_run(settings)
            run = asyncio.ensure_future(run_plan(plan, observe=lambda _tokens: exporter.recorder))
            while not run.done():
                seen.append(total(await scrape(session, url), "asyncsync_concurrency_limit"))
                await asyncio.sleep(0.02)
            summary, error = await run
            final = await scrape(session, url)
    finally:
        exporter.close()
    assert error is None and summary is not None and summary.records_sent == 2000
    assert summary.concurrency_final is not None and summary.concurrency_max_seen is not None
    assert total(final, "asyncsync_concurrency_limit") == summary.concurrency_final < 64
    # 0 before the run starts; then the live limit, which slow start takes above the initial 2
    assert all(0 <= v <= summary.concurrency_max_seen for v in seen), seen
    assert max(seen) > 2, seen


def test_a_private_registry_per_run() -> None:
    """Two exporters in one process never share a metric (no global registry)."""
    a, b = MetricsExporter("127.0.0.1", 0), MetricsExporter("127.0.0.1", 0)
    assert a.registry is not b.registry


@pytest.mark.parametrize("text", ["9464", "host:", ":9464", "host:99999", "host:port"])
def test_bad_listen_address_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_listen_address(text)


def _cli_env() -> Mapping[str, str]:
    return clean_env(ASYNCSYNC_CLIENT_SECRET="demo-secret")


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
async def test_cli_serves_metrics_while_the_run_lasts(
    tmp_path: Path, unused_tcp_port: int, processes: int
) -> None:
    """`asyncsync upload --metrics HOST:PORT` (also with `--processes 2`: one port for the
    run): /metrics answers during the run, not after."""
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(b'{"id":%d}\n' % i for i in range(1000)))
    url = f"http://127.0.0.1:{unused_tcp_port}/metrics"
    async with Sink(SinkConfig(latency=0.02)) as sink, aiohttp.ClientSession() as session:
        proc = await asyncio.create_subprocess_exec(
            *command(), "upload", str(source), "--url", sink.ingest_url,
            "--token-url", sink.token_url, "--client-id", "asyncsync-demo",
            "--batch-size", "20", "--concurrency", "2", "--no-resume", "-q",
            "--metrics", f"127.0.0.1:{unused_tcp_port}", "--processes", str(processes),
            cwd=tmp_path, env=dict(_cli_env()), stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        seen: list[float] = []
        while proc.returncode is None:
            try:
                samples = await scrape(session, url)
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
                continue
            seen.append(total(samples, "asyncsync_records_sent_total"))
            await asyncio.sleep(0.1)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert seen and seen == sorted(seen) and seen[-1] > 0
        with pytest.raises(aiohttp.ClientConnectionError):
            await scrape(session, url)


@pytest.mark.slow
async def test_processes_serve_the_sum_of_every_child_on_one_port(tmp_path: Path) -> None:
    """--processes 2 --metrics: one endpoint, the children's numbers summed; scraped during
    the run it never goes down, and at the end it equals the merged summary and the sink's
    own counts (a parent serving one child's numbers, or none, fails here)."""
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(b'{"id":%d,"pad":"%s"}\n' % (i, b"x" * 40) for i in range(6000)))
    summary_path = tmp_path / "summary.json"
    config = SinkConfig(latency=0.01, error_rate=0.05, throttle_every=25, retry_after=0.05, seed=5)
    exporter = MetricsExporter("127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    scrapes: list[Samples] = []
    try:
        async with Sink(config) as sink, aiohttp.ClientSession() as session:
            settings = settings_from_argv(
                [
                    str(source), "--url", sink.ingest_url, "--token-url", sink.token_url,
                    "--client-id", "asyncsync-demo", "--batch-size", "50", "--concurrency", "4",
                    "--processes", "2", "--checkpoint", str(tmp_path / "ckpt"), "-q",
                    "--summary-json", str(summary_path),
                ],
                {"ASYNCSYNC_CLIENT_SECRET": "demo-secret"},
            )  # fmt: skip
            console = Console(file=io.StringIO())
            run = asyncio.ensure_future(
                _parent(settings, console, started=time.monotonic(), exporter=exporter)
            )
            while not run.done():
                scrapes.append(await scrape(session, url))
                await asyncio.sleep(0.05)
            code = await run
            final = await scrape(session, url)
            stats = sink.stats()
    finally:
        exporter.close()

    assert code == 0
    summary = json.loads(summary_path.read_text())
    assert summary["records_sent"] == 6000 == stats["records"]
    assert len(summary["shards"]) == 2
    for name in COUNTERS:
        values = [total(s, name) for s in [*scrapes, final]]
        assert values == sorted(values), f"{name} went down: {values}"
    assert any(0 < total(s, "asyncsync_records_sent_total") < 6000 for s in scrapes)
    assert total(final, "asyncsync_records_read_total") == summary["records_read"] == 6000
    assert total(final, "asyncsync_records_sent_total") == 6000
    assert total(final, "asyncsync_requests_total") == summary["requests"]
    assert summary["requests"] == stats["ingest_requests"]
    requests_by_status = by_label(final, "asyncsync_requests_total", "status")
    assert requests_by_status == {k: float(v) for k, v in stats["statuses"].items()}
    assert {"200", "429"} <= set(requests_by_status)
    assert total(final, "asyncsync_retries_total") == summary["retries"] > 0
    assert total(final, "asyncsync_token_requests_total") == stats["token_requests"]
    assert total(final, "asyncsync_bytes_sent_total") == summary["bytes_sent"]
    assert total(final, "asyncsync_request_duration_seconds_count") == summary["requests"]
    assert total(final, "asyncsync_checkpoint_saves_total") >= 4  # first and last, per child
    assert total(final, "asyncsync_concurrency_limit") == 8  # 2 processes x 4
    jobs = {dict(labels)["job_id"] for (n, labels), v in final.items() if n == "asyncsync_run_info"}
    assert jobs == set(summary["job_id"].split(","))


def test_missing_prometheus_client_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the metrics extra: a ConfigError (exit 2) saying what to install."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigError, match=r"asyncsync\[metrics\]"):
        MetricsExporter("127.0.0.1", 0)
