"""The cost of ``--metrics``: the CLI with and without it, alternating, against nginx.

::

    python -m benchmarks.ab_metrics [--reps 6] [--out benchmarks/results]

Each repetition runs both (the order reversed every other repetition) at batch 1 (50 k
records, one record per request) and at batch 200 (1 M records), 32 workers, the default
transport, checkpoint and dead-letter file on; records/s is each run's summary
``records_per_s`` (start-up excluded). Prints the medians and saves them as
``<date>-metrics-ab.{md,json}``. The target (issue 17): at most 3% fewer records/s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .datagen import data_file
from .sinks import NginxSink, find_nginx

TOKEN = "bench-static-token"
CASES = ((1, 50_000), (200, 1_000_000))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_cli(data: Path, url: str, batch: int, metrics: bool) -> float:
    with tempfile.TemporaryDirectory() as d:
        cmd = [
            str(Path(sys.executable).parent / "asyncsync"), "upload", str(data), "--url", url,
            "--auth", "bearer", "--concurrency", "32", "--batch-size", str(batch),
            "--checkpoint", f"{d}/ckpt", "--failed", f"{d}/failed.jsonl",
            "--summary-json", f"{d}/summary.json", "--no-progress", "-q",
        ]  # fmt: skip
        if metrics:
            cmd += ["--metrics", f"127.0.0.1:{free_port()}"]
        env = dict(os.environ, ASYNCSYNC_TOKEN=TOKEN)
        subprocess.run(cmd, env=env, check=True)
        summary = json.loads(Path(d, "summary.json").read_text())
        if summary["records_sent"] != summary["records_read"]:
            raise SystemExit(f"not every record was delivered: {summary}")
        return float(summary["records_per_s"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab_metrics")
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    nginx = find_nginx()
    if nginx is None:
        print("no nginx: skipped", file=sys.stderr)
        return 0
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    with NginxSink(nginx, token=TOKEN) as sink:
        for batch, records in CASES:
            data = data_file(records)
            runs: dict[str, list[float]] = {"off": [], "on": []}
            for rep in range(args.reps):
                order = ("off", "on") if rep % 2 == 0 else ("on", "off")
                for which in order:
                    runs[which].append(run_cli(data, sink.ingest_url, batch, which == "on"))
            off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
            rows.append(
                {"batch": batch, "records": records, "off": runs["off"], "on": runs["on"],
                 "median_off": off, "median_on": on, "ratio": on / off}
            )  # fmt: skip
            print(f"batch {batch}: off {off:,.0f} on {on:,.0f} rec/s: {on / off:.3f}x", flush=True)
    load_after = os.getloadavg()
    stem = args.out / f"{dt.date.today().isoformat()}-metrics-ab"
    stem.with_suffix(".json").write_text(
        json.dumps({"rows": rows, "load": [load_before, load_after]}, indent=1)
    )
    lines = [
        "# `--metrics` on and off (CLI, nginx, 32 workers, default transport)",
        "",
        f"{args.reps} alternating pairs per row; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after. Command: `python -m benchmarks.ab_metrics "
        f"--reps {args.reps}`.",
        "",
        "| batch | records | off: records/s (median) | on: records/s (median) | on / off | "
        "spread off | spread on |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spread = {k: max(r[k]) / min(r[k]) - 1 for k in ("off", "on")}
        lines.append(
            f"| {r['batch']} | {r['records']:,} | {r['median_off']:,.0f} | {r['median_on']:,.0f} "
            f"| {r['ratio']:.3f} | {spread['off']:.0%} | {spread['on']:.0%} |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"saved {stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
