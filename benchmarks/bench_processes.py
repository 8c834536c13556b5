"""``--processes 2`` against one process, on the CSV path (parse-heavy), against the minisink.

    python -m benchmarks.bench_processes                  # 300 000 records, median of 3
    python -m benchmarks.bench_processes --records 1000000 --reps 5 --processes 1,2

Generates ``benchmarks/data/accounts-N.csv`` from the seeded JSONL data (``datagen.py``) on
first use, starts ``benchmarks.minisink`` (a fixed bearer token, no latency: a low-CPU sink)
in its own process, then runs ``asyncsync upload DATA.csv --auth bearer --processes P`` for
each P, the runs interleaved (P=1, P=2, P=1, ...) so that a noisy neighbour hits both alike.

Three figures per run:

* **wall**: the whole command, from ``exec`` to exit (interpreter start-up, planning, every
  child's start-up and the upload): what a user waits for. The speed-up is the ratio of the
  median wall times.
* **rate**: ``records_per_s`` of the run's summary (for P > 1 the merged summary, whose
  duration is the parent's wall time from planning to the last child's exit, children's
  start-up included; for P = 1 the pipeline's own time, start-up excluded: this favours P=1).
* **pipeline**: the upload alone, start-up excluded: for P = 1 the summary's duration, for
  P > 1 the slowest shard's (``shards`` in the merged summary JSON). Its ratio is the parallel
  efficiency of the work itself; wall and rate add the fixed cost of starting P interpreters
  (about 0.35 s on 2 cores), which a short run cannot amortise.

The load average is printed before and after: the machine is shared, so a busy neighbour shows.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
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
    return [str(script)] if script.exists() else [sys.executable, "-m", "asyncsync.cli._main"]


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


def _busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _process_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(
    data: Path, url: str, processes: int, workdir: Path, sink_pid: int
) -> dict[str, float]:
    """One run; ``foreign_cores`` is the CPU that neither it nor the sink used during it
    (other tenants of the machine), in cores: a rep with much of it is not comparable."""
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
    busy0, sink0 = _busy_seconds(), _process_seconds(sink_pid)
    ours0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, check=False)
    wall = time.perf_counter() - started
    ours1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = (ours1.ru_utime - ours0.ru_utime) + (ours1.ru_stime - ours0.ru_stime)
    sink = _process_seconds(sink_pid) - sink0
    foreign = max(0.0, _busy_seconds() - busy0 - ours - sink)
    if done.returncode != 0:
        raise SystemExit(f"--processes {processes} exited {done.returncode}: {done.stderr}")
    result = json.loads(summary.read_text())
    shards = result.get("shards") or [result]
    return {
        "wall_s": wall,
        "records_per_s": result["records_per_s"],
        "records_sent": result["records_sent"],
        # the upload itself, start-up excluded: the slowest shard's pipeline
        "pipeline_s": max(s["duration_s"] for s in shards),
        "client_cpu_s": ours,
        "sink_cpu_s": sink,
        "foreign_cores": foreign / wall,
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
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=None,
        metavar="CORES",
        help="report medians over the reps during which other processes used at most CORES",
    )
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
            run_once(data, url, counts[0], Path(tmp), sink.pid)  # warm-up: page cache, .pyc
            for rep in range(args.reps):
                for p in counts:
                    r = run_once(data, url, p, Path(tmp), sink.pid)
                    assert r["records_sent"] == args.records, r
                    runs[p].append(r)
                    print(
                        f"  rep {rep + 1} --processes {p}: wall {r['wall_s']:.2f} s, "
                        f"{r['records_per_s']:,.0f} records/s (summary), "
                        f"pipeline {r['pipeline_s']:.2f} s, CPU {r['client_cpu_s']:.2f} s "
                        f"(+ sink {r['sink_cpu_s']:.2f} s), others {r['foreign_cores']:.2f} cores"
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
    if args.max_foreign is not None:
        clean = {
            p: [r for r in rs if r["foreign_cores"] <= args.max_foreign] for p, rs in runs.items()
        }
        if all(clean.values()):
            kept = ", ".join(f"P={p}: {len(rs)}/{len(runs[p])}" for p, rs in clean.items())
            print(f"reps kept (others <= {args.max_foreign} cores): {kept}")
            runs = clean
        else:
            print(f"every rep of some P had others > {args.max_foreign} cores: keeping them all")

    def median(p: int, key: str) -> float:
        return statistics.median(r[key] for r in runs[p])

    print(
        f"\n| --processes | wall s (median of {args.reps}) | speed-up (wall) | "
        "records/s (summary) | speed-up (rate) | pipeline s | speed-up (pipeline) |"
    )
    print("|---|---|---|---|---|---|---|")
    for p in counts:
        wall, rate, pipe = median(p, "wall_s"), median(p, "records_per_s"), median(p, "pipeline_s")
        print(
            f"| {p} | {wall:.2f} | {median(base, 'wall_s') / wall:.2f}x | {rate:,.0f} | "
            f"{rate / median(base, 'records_per_s'):.2f}x | {pipe:.2f} | "
            f"{median(base, 'pipeline_s') / pipe:.2f}x |"
        )


if __name__ == "__main__":
    main()
