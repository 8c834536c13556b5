"""`asyncsync bench` (asyncsync/_bench.py and cli/_bench.py) against the real reference sink:
the cells agree with the server's own count, the bounds hold, one token serves the sweep."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import clean_env, command, run_cli
from rich.console import Console

from asyncsync._bench import (
    BenchLimits,
    CellResult,
    CellSpec,
    RecordPool,
    best_cell,
    cells_json,
    run_sweep,
    synthetic_records,
)
from asyncsync._body import BodyEncoder
from asyncsync._config import RetryPolicy
from asyncsync._exceptions import ConfigError
from asyncsync._http import Transport
from asyncsync._transports import open_transport
from asyncsync.auth import OAuth2ClientCredentials, TokenManager
from asyncsync.cli._bench import parse_grid
from asyncsync.cli._bench_report import write_outputs
from asyncsync.sink import Sink, SinkConfig

CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-secret-value-42"
CELL_FIELDS = {
    "concurrency",
    "batch_size",
    "records_per_s",
    "requests_per_s",
    "mib_per_s",
    "latency_ms",
    "statuses",
    "errors",
    "retries",
    "duration_s",
}


def sink_config(**faults: Any) -> SinkConfig:
    return SinkConfig(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, seed=1, keep_records=False, **faults
    )


@contextlib.asynccontextmanager
async def client(sink: Sink) -> AsyncIterator[tuple[Transport, TokenManager]]:
    transport = open_transport(connections=16, timeout=10)
    tokens = TokenManager(
        OAuth2ClientCredentials(sink.token_url, CLIENT_ID, CLIENT_SECRET), transport=transport
    )
    try:
        yield transport, tokens
    finally:
        await tokens.aclose()
        await transport.aclose()


async def sweep(
    sink: Sink,
    grid: list[CellSpec],
    limits: BenchLimits,
    *,
    retry: RetryPolicy | None = None,
    on_cell: Any = None,
    record_bytes: int = 200,
) -> tuple[list[CellResult], int]:
    async with client(sink) as (transport, tokens):
        cells = await run_sweep(
            grid,
            transport=transport,
            url=sink.ingest_url,
            tokens=tokens,
            encoder=BodyEncoder("json"),
            pool=RecordPool(synthetic_records(500, record_bytes)),
            limits=limits,
            retry=retry or RetryPolicy(),
            on_cell=on_cell,
        )
        return cells, tokens.stats.requests


# --- the engine, in process ----------------------------------------------------------------


async def test_cells_agree_with_the_sinks_count() -> None:
    """Each cell's records (hence records/s, over the same duration) match what the sink stored,
    within 5%; one token request serves the whole sweep; every field of the contract is there."""
    grid = [CellSpec(c, b) for b in (1, 20) for c in (1, 4)]
    seen: list[tuple[int, int]] = []
    async with Sink(sink_config(latency=0.005)) as sink:

        def on_cell(cell: CellResult) -> None:
            stats = sink.stats()
            seen.append((stats["records"], stats["ingest_requests"]))

        cells, token_requests = await sweep(sink, grid, BenchLimits(duration=0.3), on_cell=on_cell)
        stats = sink.stats()
    assert token_requests == 1
    assert stats["token_requests"] == 1
    assert stats["duplicates"] == 0  # every batch had its own Idempotency-Key
    before = (0, 0)
    for cell, after in zip(cells, seen, strict=True):
        stored, requests = after[0] - before[0], after[1] - before[1]
        before = after
        assert cell.records > 0
        assert abs(cell.records - stored) <= 0.05 * stored, (cell.to_dict(), stored)
        assert cell.requests == requests
        sink_rate = stored / cell.duration_s
        assert cell.records_per_s == pytest.approx(sink_rate, rel=0.05)
        assert cell.statuses == {"200": requests}
    doc = json.loads(cells_json(cells))
    assert len(doc["cells"]) == 4
    for d in doc["cells"]:
        assert d.keys() >= CELL_FIELDS
        assert set(d["latency_ms"]) == {"p50", "p95", "p99", "max"}
        lat = d["latency_ms"]
        assert 5 <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]  # the sink's 5 ms
        assert d["mib_per_s"] > 0
    assert doc["best"] == max(doc["cells"], key=lambda d: d["records_per_s"])


async def test_auto_cell_runs_the_adaptive_limit_and_reports_where_it_settled() -> None:
    """--concurrency auto: a cell of up to 32 workers gated by the adaptive limit, on a server
    whose capacity is 4 (429 above 8): it delivers, the limit settles within [1, 32] and below
    the ceiling, and the cell says so ("auto", concurrency_final, concurrency_max_seen)."""
    grid = [CellSpec(32, 5, auto=True, initial=2)]
    async with Sink(sink_config(latency=0.005, capacity=4, retry_after=0.01)) as sink:
        cells, _ = await sweep(sink, grid, BenchLimits(duration=None, requests=300))
        stats = sink.stats()
    [cell] = cells
    assert cell.auto and cell.records > 0 and cell.records == stats["records"]
    assert cell.concurrency_final is not None and cell.concurrency_max_seen is not None
    assert 1 <= cell.concurrency_final <= cell.concurrency_max_seen <= 32
    assert cell.concurrency_max_seen > 2  # it moved from where it started
    assert cell.concurrency_final < 32  # capacity 4, hard limit 8: never settles at the top
    d = cell.to_dict()
    assert d.keys() >= CELL_FIELDS
    assert d["concurrency"] == "auto" and d["max_concurrency"] == 32
    assert d["concurrency_final"] == cell.concurrency_final
    assert d["concurrency_max_seen"] == cell.concurrency_max_seen
    assert cell.label == f"auto→{cell.concurrency_final}"


async def test_max_requests_bounds_the_whole_sweep() -> None:
    """--max-requests counts attempts across cells: the sink sees exactly that many, and the
    cells after the budget ran out are skipped."""
    grid = [CellSpec(4, 5)] * 4
    async with Sink(sink_config()) as sink:
        cells, _ = await sweep(sink, grid, BenchLimits(duration=30, max_requests=37))
        stats = sink.stats()
    assert stats["ingest_requests"] == 37
    assert sum(c.requests for c in cells) == 37
    assert [c.stopped for c in cells][-1] == "skipped"
    assert "max-requests" in [c.stopped for c in cells]


async def test_duration_bounds_each_cell() -> None:
    """A cell runs its --duration (from first attempt to last answer) within a margin."""
    async with Sink(sink_config(latency=0.01)) as sink:
        cells, _ = await sweep(sink, [CellSpec(2, 1), CellSpec(8, 3)], BenchLimits(duration=0.4))
    for cell in cells:
        assert cell.stopped == "duration"
        assert 0.3 <= cell.duration_s <= 0.4 + 0.3


async def test_requests_per_cell() -> None:
    """--requests N: each cell makes exactly N requests."""
    async with Sink(sink_config()) as sink:
        cells, _ = await sweep(
            sink, [CellSpec(3, 2), CellSpec(1, 7)], BenchLimits(duration=None, requests=10)
        )
        stats = sink.stats()
    assert [c.requests for c in cells] == [10, 10]
    assert [c.records for c in cells] == [20, 70]
    assert stats["records"] == 90


async def test_push_back_stops_a_cell_early_and_is_never_best() -> None:
    """Past 20% 503s a cell stops long before its duration; it counts retries, and `best`
    skips it."""
    retry = RetryPolicy(backoff_initial=0.01, backoff_max=0.02)
    async with Sink(sink_config(error_rate=0.5, error_statuses=[503])) as sink:
        started = time.monotonic()
        cells, _ = await sweep(sink, [CellSpec(4, 2)], BenchLimits(duration=20), retry=retry)
        took = time.monotonic() - started
    (cell,) = cells
    assert cell.stopped == "push-back"
    assert took < 5
    assert cell.statuses["503"] > 0
    assert cell.retries > 0
    # retries counted on the wire: each follows a 503 (or an error) of its key, and a retry
    # the cell refused at its end is not one
    assert cell.retries <= cell.statuses["503"] + cell.errors < cell.requests
    assert cell.pushback_share > 0.2
    assert best_cell(cells) is None


def test_best_cell_needs_under_one_percent_push_back() -> None:
    """The best cell is the fastest of those under 1% push-back and errors."""
    fast = CellResult(16, 200, records=10_000, requests=100, duration_s=1.0)
    fast.statuses.update({"200": 98, "429": 2})
    slower = CellResult(4, 200, records=5_000, requests=200, duration_s=1.0)
    slower.statuses.update({"200": 199, "429": 1})  # 0.5%
    assert best_cell([fast, slower]) is slower
    slower.errors = 2  # 1.5% with the transport errors
    assert best_cell([fast, slower]) is None


def test_synthetic_records_and_pool() -> None:
    """Synthetic records are valid JSON of the asked size; the pool cycles."""
    records = synthetic_records(3, 100)
    assert [len(r) for r in records] == [100] * 3
    assert [json.loads(r)["id"] for r in records] == [1, 2, 3]
    pool = RecordPool(records)
    assert pool.take(7) == records * 2 + records[:1]
    assert pool.take(2) == records[1:]
    with pytest.raises(ConfigError):
        RecordPool([])


def test_parse_grid() -> None:
    assert parse_grid("--concurrency", "1, 4,16,4") == [1, 4, 16]
    assert parse_grid("--concurrency", "auto", allow_auto=True) is None
    for bad in ("0", "1,x", "", "auto", "5000"):
        with pytest.raises(ConfigError, match="--concurrency: expected a comma-separated"):
            parse_grid("--concurrency", bad)


def test_png_needs_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With matplotlib the picture is written; without it, a note and no picture."""
    cells = [CellResult(c, 10, records=c * 100, requests=c * 10, duration_s=1.0) for c in (1, 4)]
    for c in cells:
        c.statuses["200"] = c.requests
        c.latency.add(0.02)
    written = write_outputs(cells, tmp_path, {"url": "http://x/"})
    png = tmp_path / "bench.png"
    assert png in written
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png.unlink()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    console = Console(file=__import__("io").StringIO(), width=200)
    written = write_outputs(cells, tmp_path, {"url": "http://x/"}, notes=console)
    assert not png.exists()
    assert [p.name for p in written] == ["bench.json", "bench.csv"]
    assert "matplotlib is not installed" in console.file.getvalue()  # type: ignore[attr-defined]


# --- the command ---------------------------------------------------------------------------


def files(directory: Path) -> list[Path]:
    return list(directory.iterdir())


def bench_args(sink: Sink, *extra: str) -> list[str]:
    return [
        "bench", "--url", sink.ingest_url, "--token-url", sink.token_url,
        "--client-id", CLIENT_ID, *extra,
    ]  # fmt: skip


def secret_env(secret: str = CLIENT_SECRET) -> dict[str, str]:
    return clean_env(ASYNCSYNC_CLIENT_SECRET=secret)


@pytest.mark.slow
async def test_cli_writes_json_csv_png_with_one_token(tmp_path: Path) -> None:
    """The command writes bench.json (contract fields), bench.csv and bench.png, prints the
    table, and the token endpoint saw one request for the whole sweep."""
    async with Sink(sink_config(latency=0.002)) as sink:
        result = await run_cli(
            *bench_args(sink, "--synthetic", "50", "--record-bytes", "120",
                        "--concurrency", "1,3", "--batch-size", "1,10", "--requests", "6",
                        "--out", "out"),
            cwd=tmp_path, env=secret_env(),
        )  # fmt: skip
        stats = sink.stats()
    assert result.code == 0, result.err
    assert stats["token_requests"] == 1
    assert stats["ingest_requests"] == 24
    doc = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert [(c["concurrency"], c["batch_size"]) for c in doc["cells"]] == [
        (1, 1), (3, 1), (1, 10), (3, 10),
    ]  # fmt: skip
    assert all(c.keys() >= CELL_FIELDS for c in doc["cells"])
    assert sum(c["records"] for c in doc["cells"]) == stats["records"] == 6 * (1 + 1 + 10 + 10)
    assert doc["best"]["batch_size"] == 10
    assert doc["token_requests"] == 1
    with (tmp_path / "out" / "bench.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["batch_size"]) for r in rows] == [1, 1, 10, 10]
    assert (tmp_path / "out" / "bench.png").stat().st_size > 1000
    assert "records/s" in result.out and "best" in result.out
    assert CLIENT_SECRET not in result.out + result.err


@pytest.mark.slow
async def test_cli_concurrency_auto_reports_where_the_limit_settled(tmp_path: Path) -> None:
    """`bench --concurrency auto`: one cell per batch size under the adaptive limit; bench.json
    and the table say "auto" and where it settled."""
    async with Sink(sink_config(latency=0.002)) as sink:
        result = await run_cli(
            *bench_args(sink, "--synthetic", "50", "--concurrency", "auto",
                        "--max-concurrency", "16", "--initial-concurrency", "2",
                        "--batch-size", "1,10", "--requests", "30", "--out", "out"),
            cwd=tmp_path, env=secret_env(),
        )  # fmt: skip
        stats = sink.stats()
    assert result.code == 0, result.err
    doc = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert [(c["concurrency"], c["batch_size"]) for c in doc["cells"]] == [
        ("auto", 1), ("auto", 10),
    ]  # fmt: skip
    for c in doc["cells"]:
        assert c["max_concurrency"] == 16 and c["requests"] == 30
        assert 1 <= c["concurrency_final"] <= c["concurrency_max_seen"] <= 16
    assert sum(c["records"] for c in doc["cells"]) == stats["records"] == 30 * (1 + 10)
    assert "auto→" in result.out


@pytest.mark.slow
async def test_cli_dry_run_sends_exactly_one_record(tmp_path: Path) -> None:
    """--dry-run authenticates and sends one batch of one record, and writes no files."""
    async with Sink(sink_config()) as sink:
        result = await run_cli(
            *bench_args(sink, "--synthetic", "10", "--dry-run"), cwd=tmp_path, env=secret_env()
        )
        stats = sink.stats()
    assert result.code == 0, result.err
    assert (stats["token_requests"], stats["ingest_requests"], stats["records"]) == (1, 1, 1)
    assert "accepted" in result.out
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith("asyncsync-bench-") for p in files(tmp_path))


@pytest.mark.slow
async def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    """A bad grid, no records, or --initial-concurrency above --max-concurrency exit 2 in
    one line."""
    url = ["--url", "http://127.0.0.1:9/ingest"]
    for args, message in (
        (["--synthetic", "5", "--concurrency", "1,x"], "--concurrency: expected"),
        (["--synthetic", "5", "--batch-size", "0"], "--batch-size: expected"),
        (
            [
                "--synthetic",
                "5",
                "--concurrency",
                "auto",
                "--initial-concurrency",
                "9",
                "--max-concurrency",
                "8",
            ],
            "must not exceed",
        ),
        ([], "give SOURCE"),
        (["--synthetic", "5", "--duration", "1", "--requests", "3"], "not allowed with"),
    ):
        result = await run_cli("bench", *url, *args, cwd=tmp_path, env=clean_env())
        assert result.code == 2, (args, result.err)
        assert message in result.err, result.err
        assert len(result.err.strip().splitlines()) == 1, result.err


@pytest.mark.slow
async def test_cli_bad_credentials_exit_3(tmp_path: Path) -> None:
    """Refused credentials exit 3 before any record is sent."""
    async with Sink(sink_config()) as sink:
        result = await run_cli(
            *bench_args(sink, "--synthetic", "5", "--requests", "2"),
            cwd=tmp_path, env=secret_env("wrong-secret-xyz"),
        )  # fmt: skip
        stats = sink.stats()
    assert result.code == 3, result.err
    assert "AuthError" in result.err
    assert stats["ingest_requests"] == 0


@pytest.mark.slow
async def test_cli_ctrl_c_writes_the_partial_results(tmp_path: Path) -> None:
    """Ctrl-C ends the cell that runs, writes the cells so far, and exits 4."""
    async with Sink(sink_config(latency=0.01)) as sink:
        proc = await asyncio.create_subprocess_exec(
            *command(), *bench_args(sink, "--synthetic", "20", "--concurrency", "1,2,4",
                                    "--batch-size", "5", "--duration", "2", "--out", "out"),
            cwd=tmp_path, env=secret_env(), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while sink.stats()["ingest_requests"] < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        stats = sink.stats()
    assert proc.returncode == 4, err.decode()
    doc = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert doc["interrupted"] is True
    assert doc["cells"][-1]["stopped"] == "interrupted"
    assert len(doc["cells"]) < 3
    assert sum(c["records"] for c in doc["cells"]) == stats["records"]


@pytest.mark.slow
async def test_cli_help_warns_that_records_are_real(tmp_path: Path) -> None:
    """`bench --help` warns that real records are sent, shows examples and the exit codes,
    and takes upload's auth, body and TLS flags."""
    result = await run_cli("bench", "--help", cwd=tmp_path)
    assert result.code == 0, result.err
    assert "REAL records" in result.out
    assert "examples:" in result.out and "exit status" in result.out
    for flag in ("--token-url", "--login-body", "--gzip", "--wrap", "--ca-bundle", "--insecure"):
        assert flag in result.out
    assert "--checkpoint" not in result.out
