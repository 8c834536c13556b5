"""``--engine dask --workers 2`` against ``--processes 2``, JSON Lines, against the minisink.

    python -m benchmarks.bench_dask                   # 300 000 records, median of 3
    python -m benchmarks.bench_dask --records 1000000 --reps 5

Starts ``benchmarks.minisink`` (fixed bearer token, no latency) in its own process, then runs
``asyncsync upload DATA.jsonl --auth bearer`` with ``--processes 2`` and with ``--engine dask
--workers 2``, interleaved so a noisy neighbour hits both alike. Per run: **wall** (the whole
command, exec to exit: for Dask that includes starting the scheduler, two nanny and two
worker processes, ~3-4 s on 2 cores), and **rate**, the merged summary's ``records_per_s``
(records over the run's wall time from planning on, start-up of children/cluster included).
The machine is shared: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from .bench_processes import TOKEN, cli, start_sink
from .datagen import data_file

MODES = {
    "processes-2": ["--processes", "2"],
    "dask-workers-2": ["--engine", "dask", "--workers", "2"],
}


def run_once(data: Path, url: str, mode: str, workdir: Path) -> dict[str, float]:
    summary = workdir / f"summary-{mode}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCSYNC_")}
    env["ASYNCSYNC_TOKEN"] = TOKEN
    state = workdir / f"{mode}.asyncsync"  # dask: the parts go to the directory PATH.dask/
    args = [
        *cli(), "upload", str(data), "--url", f"{url}/ingest", "--auth", "bearer",
        *MODES[mode], "--no-resume", "--no-progress", "-q",
        "--checkpoint", str(state), "--failed", str(workdir / "failed.jsonl"),
        "--summary-json", str(summary),
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{mode} exited {done.returncode}: {done.stderr[-2000:]}")
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
    args = parser.parse_args()
    data = data_file(args.records)
    print(f"data: {data} ({data.stat().st_size / 1e6:.1f} MB, {args.records:,} records)")
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()}")
    sink, url = start_sink()
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-dask-") as tmp:
            for rep in range(args.reps):
                for mode in MODES:
                    r = run_once(data, url, mode, Path(tmp))
                    assert r["records_sent"] == args.records, r
                    runs[mode].append(r)
                    print(
                        f"  rep {rep + 1} {mode}: wall {r['wall_s']:.2f} s, "
                        f"{r['records_per_s']:,.0f} records/s (summary)"
                    )
    finally:
        sink.terminate()
        sink.wait()
    print(f"load average after: {os.getloadavg()}")
    for mode, rs in runs.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        rate = statistics.median(r["records_per_s"] for r in rs)
        print(f"{mode}: median wall {wall:.2f} s, median {rate:,.0f} records/s")


if __name__ == "__main__":
    main()
