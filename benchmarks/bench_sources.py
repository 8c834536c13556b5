"""The export sources (issue 18): the same records as JSON Lines, ``.jsonl.gz`` and Parquet,
uploaded by the real CLI against the minisink; Parquet's records/s as a ratio to JSONL's, and
each upload's peak RSS (the CLI process's own).

    python -m benchmarks.bench_sources                        # 2 000 000 records, 3 reps
    python -m benchmarks.bench_sources --records 300000 --reps 1
    python -m benchmarks.run --scenarios f                    # the same, saved as a report

Targets (issue 18): the ``.jsonl.gz`` upload under 100 MB peak RSS; Parquet at least 0.8x the
records/s of the same data as JSONL. The three files are uploaded in turn, the order reversed
on every other repetition; each figure is the median over the repetitions (peak RSS: the
largest). Peak RSS and CPU come from :mod:`benchmarks.peak_rss`, a small launcher, so they
are the CLI's alone: launched straight from this process, ``ru_maxrss`` would count this
process's own memory too (see that module). Records/s is the CLI summary's
``records_per_s`` (start-up excluded).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .bench_processes import TOKEN, cli, start_sink

FILES = ("d.jsonl", "d.jsonl.gz", "d.parquet")
LABELS = {"d.jsonl": "JSON Lines", "d.jsonl.gz": "JSON Lines, gzip", "d.parquet": "Parquet"}
RSS_TARGET_MB = 100
RATIO_TARGET = 0.8


def record(i: int) -> dict[str, object]:
    return {
        "id": i,
        "account": f"ACC-{i:08d}",
        "name": f"Customer {i}",
        "email": f"customer{i}@example.com",
        "city": "Springfield",
        "balance": round(i * 1.37, 2),
        "updated_at": "2026-11-28T12:00:00Z",
    }


def make_data(workdir: Path, n: int) -> tuple[Path, Path, Path]:
    """``d.jsonl``, ``d.jsonl.gz`` and ``d.parquet`` (row groups of 100 000) of ``n`` records
    in ``workdir``, made once (kept when ``workdir`` already has all three)."""
    jsonl, gz, parquet = (workdir / name for name in FILES)
    if jsonl.exists() and gz.exists() and parquet.exists():
        return jsonl, gz, parquet
    workdir.mkdir(parents=True, exist_ok=True)
    with jsonl.open("wb") as f, gzip.open(gz, "wb", compresslevel=6) as g:
        for start in range(1, n + 1, 100_000):
            chunk = b"".join(
                orjson.dumps(record(i)) + b"\n" for i in range(start, min(n, start + 99_999) + 1)
            )
            f.write(chunk)
            g.write(chunk)
    writer = None
    for start in range(1, n + 1, 100_000):
        rows = [record(i) for i in range(start, min(n, start + 99_999) + 1)]
        table = pa.Table.from_pylist(rows)
        if writer is None:
            writer = pq.ParquetWriter(parquet, table.schema)
        writer.write_table(table, row_group_size=100_000)
    assert writer is not None
    writer.close()
    return jsonl, gz, parquet


@dataclass
class Upload:
    """One upload of one file."""

    file: str
    rep: int
    records: int = 0
    records_per_s: float = 0.0
    duration_s: float = 0.0
    peak_rss_mb: float = 0.0
    cpu_s: float = 0.0
    load_average: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)


def run(data: Path, url: str, workdir: Path, rep: int = 0) -> Upload:
    """Upload ``data`` once with the CLI (through the launcher that measures it)."""
    summary = workdir / "summary.json"
    figures = workdir / "figures.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCSYNC_")}
    env["ASYNCSYNC_TOKEN"] = TOKEN
    args = [
        sys.executable, "-m", "benchmarks.peak_rss", str(figures), "--",
        *cli(), "upload", str(data), "--url", f"{url}/ingest", "--auth", "bearer",
        "--no-resume", "--no-progress", "-q", "--checkpoint", str(workdir / "run.asyncsync"),
        "--failed", str(workdir / "failed.jsonl"), "--summary-json", str(summary),
    ]  # fmt: skip
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(args, env=env, cwd=root, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{data.name}: exit {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    result = json.loads(summary.read_text())
    measured = json.loads(figures.read_text())
    return Upload(
        data.name,
        rep,
        records=int(result["records_sent"]),
        records_per_s=float(result["records_per_s"]),
        duration_s=float(result["duration_s"]),
        peak_rss_mb=measured["peak_rss_kb"] / 1024,
        cpu_s=float(measured["cpu_s"]),
        load_average=os.getloadavg()[0],
    )


def measure(records: int, reps: int, data_dir: Path | None = None) -> list[Upload]:
    """Every upload, the files in turn (reversed every other repetition)."""
    with tempfile.TemporaryDirectory(prefix="bench-sources-") as tmp:
        workdir = Path(tmp)
        where = (data_dir / f"sources-{records}") if data_dir is not None else workdir
        files = make_data(where, records)
        sink, url = start_sink()
        uploads: list[Upload] = []
        try:
            for rep in range(reps):  # a noisy neighbour hits all alike
                order = files if rep % 2 == 0 else files[::-1]
                for f in order:
                    up = run(f, url, workdir, rep)
                    if up.records != records:
                        raise SystemExit(f"{f.name}: sent {up.records} of {records} records")
                    uploads.append(up)
                    print(
                        f"[sources] rep {rep + 1}/{reps} {f.name}: {up.records_per_s:,.0f} "
                        f"records/s, peak RSS {up.peak_rss_mb:.0f} MB",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            sink.kill()
            sink.wait()
    return uploads


def ratio(uploads: list[Upload]) -> float:
    """Median Parquet records/s over median JSONL records/s."""
    rate = {
        name: statistics.median(u.records_per_s for u in uploads if u.file == name)
        for name in ("d.jsonl", "d.parquet")
    }
    return rate["d.parquet"] / rate["d.jsonl"]


def paired_ratios(uploads: list[Upload]) -> list[float]:
    """Parquet records/s over JSONL records/s of the same repetition, for each one."""
    rate = {(u.file, u.rep): u.records_per_s for u in uploads}
    reps = sorted({u.rep for u in uploads})
    return [
        rate[("d.parquet", r)] / rate[("d.jsonl", r)]
        for r in reps
        if ("d.parquet", r) in rate and ("d.jsonl", r) in rate
    ]


def report(uploads: list[Upload], records: int, reps: int) -> list[str]:
    """The markdown table and its notes."""
    lines = [
        "| input | records | records/s | ratio to JSONL | peak RSS MB | client CPU µs/record "
        "| check |",
        "|---|---|---|---|---|---|---|",
    ]
    jsonl_rate = statistics.median(u.records_per_s for u in uploads if u.file == "d.jsonl")
    for name in FILES:
        mine = [u for u in uploads if u.file == name]
        rate = statistics.median(u.records_per_s for u in mine)
        rss = max(u.peak_rss_mb for u in mine)
        cpu = statistics.median(1e6 * u.cpu_s / u.records for u in mine)
        checks = []
        if name == "d.jsonl.gz":
            checks.append(f"RSS {'<' if rss < RSS_TARGET_MB else '>='} {RSS_TARGET_MB} MB")
        if name == "d.parquet":
            r = rate / jsonl_rate
            checks.append(f"{r:.2f}x {'>=' if r >= RATIO_TARGET else '<'} {RATIO_TARGET}x")
        lines.append(
            f"| {LABELS[name]} (`{name}`) | {records:,} | {rate:,.0f} | {rate / jsonl_rate:.2f} "
            f"| {rss:.0f} | {cpu:.2f} | {'; '.join(checks) or 'ok'} |"
        )
    spread = [
        f"{LABELS[name]} {max(rates) / min(rates) - 1:.0%}"
        for name in FILES
        if len(rates := [u.records_per_s for u in uploads if u.file == name]) > 1
    ]
    loads = [u.load_average for u in uploads]
    paired = paired_ratios(uploads)
    lines += [
        "",
        f"- Parquet / JSONL = **{ratio(uploads):.2f}x** (target >= {RATIO_TARGET}x); "
        f"median of {reps} run(s) per input, the order reversed on every other run.",
    ]
    if len(paired) > 1:
        lines.append(
            f"- Parquet / JSONL within each repetition (the two uploads run back to back): "
            f"median {statistics.median(paired):.2f}x, range {min(paired):.2f}x to "
            f"{max(paired):.2f}x ({', '.join(f'{r:.2f}' for r in paired)})."
        )
    lines += [
        f"- Load average (1 min) after each upload: {min(loads):.2f} to {max(loads):.2f}.",
        "- Peak RSS and CPU are the CLI process's own with its helper processes "
        "(`benchmarks/peak_rss.py`: the JSON Lines validation helper, the Parquet decoding "
        "helper; RSS is the largest one process reached, CPU the sum); records/s is the CLI "
        "summary's `records_per_s`. The records are 7 columns, ~180 bytes as JSON; Parquet "
        "with row groups of 100 000 (snappy, pyarrow's defaults).",
    ]
    if spread:
        lines.append("- Spread of records/s across runs (max/min - 1): " + ", ".join(spread) + ".")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, help="keep the generated files here")
    opts = parser.parse_args()
    uploads = measure(opts.records, opts.reps, opts.data_dir)
    print(f"load average now: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n".join(report(uploads, opts.records, opts.reps)))


if __name__ == "__main__":
    main()
