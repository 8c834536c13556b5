"""The export sources: a big ``.jsonl.gz`` upload's peak RSS, and Parquet throughput against
the same records as JSON Lines, through the real CLI against the minisink.

    python -m benchmarks.bench_sources                        # 2 000 000 records, 3 reps
    python -m benchmarks.bench_sources --records 300000 --reps 1

Targets (issue 18): the ``.jsonl.gz`` upload under 100 MB peak RSS; Parquet at least 0.8x the
records/s of the same data as JSONL. Peak RSS is the child's ``ru_maxrss`` (wait4).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .bench_processes import TOKEN, cli, start_sink


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
    jsonl, gz, parquet = workdir / "d.jsonl", workdir / "d.jsonl.gz", workdir / "d.parquet"
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


def run(data: Path, url: str, workdir: Path) -> tuple[float, float]:
    """(records/s from the summary, peak RSS of the upload in MB)."""
    summary = workdir / "summary.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCSYNC_")}
    env["ASYNCSYNC_TOKEN"] = TOKEN
    args = [
        *cli(), "upload", str(data), "--url", f"{url}/ingest", "--auth", "bearer",
        "--no-resume", "--no-progress", "-q", "--checkpoint", str(workdir / "run.asyncsync"),
        "--failed", str(workdir / "failed.jsonl"), "--summary-json", str(summary),
    ]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        assert proc.stderr is not None
        raise SystemExit(f"{data.name}: exit {proc.returncode}: {proc.stderr.read().decode()}")
    result = json.loads(summary.read_text())
    return float(result["records_per_s"]), usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--reps", type=int, default=3)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sources-") as tmp:
        workdir = Path(tmp)
        files = make_data(workdir, opts.records)
        sink, url = start_sink()
        try:
            results: dict[str, list[tuple[float, float]]] = {f.name: [] for f in files}
            for _ in range(opts.reps):  # interleaved: a noisy neighbour hits all alike
                for f in files:
                    results[f.name].append(run(f, url, workdir))
        finally:
            sink.kill()
            sink.wait()
    print(f"{opts.records} records, {opts.reps} reps, median records/s and max peak RSS:")
    rates = {}
    for name, runs in results.items():
        rates[name] = statistics.median(r for r, _ in runs)
        print(
            f"  {name:12s} {rates[name]:>10,.0f} rec/s  peak RSS {max(m for _, m in runs):6.1f} MB"
        )
    print(f"  parquet / jsonl = {rates['d.parquet'] / rates['d.jsonl']:.2f}x")


if __name__ == "__main__":
    main()
