"""``--processes 2`` against one process, on the CSV path (parse-heavy), against the minisink.

    python -m benchmarks.bench_processes                  # 300 000 records, median of 3
    python -m benchmarks.bench_processes --records 1000000 --reps 5 --processes 1,2

Generates ``benchmarks/data/accounts-N.csv`` from the seeded JSONL data (``datagen.py``) on
first use, starts ``benchmarks.minisink`` (a fixed bearer token, no latency: a low-CPU sink)
in its own process, then runs ``asyncsync upload DATA.csv --auth bearer --processes P`` for
each P, the runs interleaved (P=1, P=2, P=1, ...) so that a noisy neighbour hits both alike.

Two figures per run:

* **wall**: the whole command, from ``exec`` to exit (interpreter start-up, planning, every
  child's start-up and the upload): what a user waits for. The speed-up is the ratio of the
  median wall times.
* **rate**: ``records_per_s`` of the run's summary (for P > 1 the merged summary, whose
  duration is the parent's wall time from planning to the last child's exit, children's
  start-up included; for P = 1 the pipeline's own time, start-up excluded: this favours P=1).

The load average is printed before and after: the machine is shared, so a busy neighbour shows.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from .datagen import DATA_DIR, data_file

TOKEN = "bench-processes-token"


def csv_file(records: int, data_dir: Path = DATA_DIR) -> Path:
    """``accounts-N.csv``: the records of ``accounts-N.jsonl``, one row each, with a header."""
    path = data_dir / f"accounts-{records}.csv"
    if path.exists():
        return path
    source = data_file(records, data_dir)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with source.open("rb") as f, tmp.open("w", newline="", encoding="utf-8") as out:
        writer = None
        for line in f:
            obj = orjson.loads(line)
            if writer is None:
                writer = csv.writer(out)
                writer.writerow(obj.keys())
            writer.writerow(obj.values())
    tmp.replace(path)
    return path


def cli() -> list[str]:
    script = Path(sys.executable).with_name("asyncsync")
    return [str(script)] if script.exists() else [sys.executable, "-m", "asyncsync._cli"]


def start_sink() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.minisink", "--port", "0", "--token", TOKEN],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise SystemExit(f"the minisink did not start (said {url!r})")
    return proc, url


def run_once(data: Path, url: str, processes: int, workdir: Path) -> dict[str, float]:
    summary = workdir / f"summary-{processes}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCSYNC_")}
    env["ASYNCSYNC_TOKEN"] = TOKEN
    args = [
        *cli(),
        "upload",
        str(data),
        "--url",
        f"{url}/ingest",
        "--auth",
        "bearer",
        "--processes",
        str(processes),
        "--no-resume",
        "--no-progress",
        "-q",
        "--checkpoint",
        str(workdir / "run.asyncsync"),
        "--failed",
        str(workdir / "failed.jsonl"),
        "--summary-json",
        str(summary),
    ]
    started = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"--processes {processes} exited {done.returncode}: {done.stderr}")
    result = json.loads(summary.read_text())
    return {
        "wall_s": wall,
        "records_per_s": result["records_per_s"],
        "records_sent": result["records_sent"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--processes", default="1,2", help="comma-separated (default 1,2)")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="LOAD",
        help="first wait (up to --max-wait s) until the 1-minute load average is below LOAD",
    )
    parser.add_argument("--max-wait", type=float, default=600.0, metavar="SECONDS")
    args = parser.parse_args()
    if args.wait_quiet:
        deadline = time.monotonic() + args.max_wait
        while os.getloadavg()[0] >= args.wait_quiet and time.monotonic() < deadline:
            time.sleep(5)
    counts = [int(p) for p in args.processes.split(",")]
    data = csv_file(args.records)
    print(f"data: {data} ({data.stat().st_size / 1e6:.1f} MB, {args.records:,} records)")
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()}")
    sink, url = start_sink()
    runs: dict[int, list[dict[str, float]]] = {p: [] for p in counts}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-processes-") as tmp:
            run_once(data, url, counts[0], Path(tmp))  # warm-up: page cache, .pyc files
            for rep in range(args.reps):
                for p in counts:
                    r = run_once(data, url, p, Path(tmp))
                    assert r["records_sent"] == args.records, r
                    runs[p].append(r)
                    print(
                        f"  rep {rep + 1} --processes {p}: wall {r['wall_s']:.2f} s, "
                        f"{r['records_per_s']:,.0f} records/s (summary)"
                    )
    finally:
        sink.terminate()
        try:
            sink.wait(10)
        except subprocess.TimeoutExpired:
            sink.kill()
            sink.wait()
    print(f"load average after: {os.getloadavg()}")
    base = counts[0]
    base_wall = statistics.median(r["wall_s"] for r in runs[base])
    base_rate = statistics.median(r["records_per_s"] for r in runs[base])
    print(f"\n| --processes | wall s (median of {args.reps}) | speed-up (wall) | "
          "records/s (summary) | speed-up (rate) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for p in counts:
        wall = statistics.median(r["wall_s"] for r in runs[p])
        rate = statistics.median(r["records_per_s"] for r in runs[p])
        speedup, rate_speedup = base_wall / wall, rate / base_rate
        print(f"| {p} | {wall:.2f} | {speedup:.2f}x | {rate:,.0f} | {rate_speedup:.2f}x |")


if __name__ == "__main__":
    main()
