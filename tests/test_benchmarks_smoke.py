"""Smoke test of the benchmark harness: a tiny run produces the table with sane numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECORDS = 2_000


@pytest.mark.slow
def test_quick_run_produces_table(tmp_path: Path) -> None:
    """`python -m benchmarks.run --quick` on 2k records: every contender row is there, sane."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--scenarios",
            "a",
            "--records",
            str(RECORDS),
            "--reps",
            "1",
            "--sink",
            "aiohttp",
            "--out",
            str(out),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]

    report = proc.stdout
    assert "### (a)" in report
    assert "| contender | records | records/s | requests/s | peak RSS MB |" in report
    for label in ("plain aiohttp loop", "requests + 32 threads", "httpx.AsyncClient"):
        assert f"| {label}" in report
    assert "| uvloop |" in report

    [md] = out.glob("*-a-quick.md")
    assert md.read_text().strip() == report.strip()
    [raw] = out.glob("*-a-quick.json")
    runs = {r["contender"]: r for r in json.loads(raw.read_text())["runs"]}

    # Every contender must run and deliver everything: asyncsync, library and CLI, included
    # (an asyncsync that errors, or is skipped as not importable, fails this test).
    for key in ("plain", "requests", "httpx", "lib", "cli"):
        run = runs[key]
        assert run["status"] == "ok", (key, run["status"], run["reason"])
        assert run["records"] == RECORDS
        assert run["requests"] == RECORDS // 200
        assert run["errors"] == 0
        assert 1_000 < run["records_per_s"] < 50_000_000
        assert 5 < run["peak_rss_mb"] < 1_000
        assert run["sink"]["requests"] == run["requests"]
        assert run["sink"]["unauthorized"] == 0
    for label in ("asyncsync library", "asyncsync CLI"):
        assert f"| {label}" in report

    # asyncsync and the plain loops it is measured against must run, on both transports
    # (issue 13: the smoke test fails when the library or the CLI contender errors)
    for key in ("lib", "cli", "cli_aiohttp", "plain_reqwest", "plain_msgspec"):
        run = runs[key]
        assert run["status"] == "ok", (key, run["reason"])
        assert run["records"] == RECORDS and run["errors"] == 0
        assert run["records_per_s"] > 0
        assert run["sink"]["requests"] == run["requests"]
    assert runs["cli"]["extra"]["transport"] == "reqwest"
    assert runs["cli_aiohttp"]["extra"]["transport"] == "aiohttp"
    # Node + undici runs when node and undici are installed, else says why not
    node = runs["node"]
    assert node["status"] in ("ok", "skipped"), node["reason"]
    if node["status"] == "ok":
        assert node["records"] == RECORDS
    else:
        assert "node" in node["reason"] or "undici" in node["reason"]
    # the peer chart is drawn next to the markdown
    [png] = out.glob("*-a-quick.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_sources_scenario_reports_the_parquet_ratio(tmp_path: Path) -> None:
    """Scenario f (issue 18): the three inputs uploaded by the CLI, every record delivered,
    the Parquet/JSONL ratio and each upload's own peak RSS in the saved report."""
    records = 3_000
    out = tmp_path / "results"
    args = ["--quick", "--scenarios", "f", "--records", str(records), "--reps", "1"]
    args += ["--out", str(out), "--data-dir", str(tmp_path / "data")]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = proc.stdout
    assert "### (f)" in report and "Parquet / JSONL = **" in report
    for name in ("d.jsonl", "d.jsonl.gz", "d.parquet"):
        assert f"(`{name}`) | {records:,} |" in report
    [raw] = out.glob("*-f-quick.json")
    runs = {r["contender"]: r for r in json.loads(raw.read_text())["runs"]}
    assert set(runs) == {"cli:d.jsonl", "cli:d.jsonl.gz", "cli:d.parquet"}
    for run in runs.values():
        assert run["records"] == records
        assert run["records_per_s"] > 0
        assert 5 < run["peak_rss_mb"] < 1_000
        assert run["cpu_s"] > 0
