"""A/B for the Parquet source: the CLI uploading the same records from ``d.jsonl``, from
``d.parquet`` (with its decoding helper process) and from ``d.parquet`` decoded in the CLI
process (the helper turned off), alternately; the CLI process's own CPU per record apart
from its helper's, and each one's peak RSS.

    python -m benchmarks.ab_parquet DATA_DIR [REPS] [CASES]

``DATA_DIR`` holds ``d.jsonl`` and ``d.parquet`` as :mod:`benchmarks.bench_sources` makes
them (``python -m benchmarks.run --scenarios f --data-dir D`` leaves them in
``D/sources-2000000``). ``CASES`` is a comma-separated subset of ``jsonl,parquet,here``
(default all); the order is reversed on every other repetition. Scenario f's "client CPU"
is the sum of the CLI and its helpers; here they are apart: the CLI's is the core the event
loop and the GIL are on, the one that bounds a fast upload.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .bench_processes import TOKEN, start_sink

#: runs the CLI in this interpreter, then writes RUSAGE_SELF / RUSAGE_CHILDREN
WRAPPER = r"""
import json, os, resource, sys
out = sys.argv.pop(1)
if sys.argv.pop(1) == "here":
    import asyncsync.sources._parquet as parquet
    parquet.worth_it = lambda size: False
from asyncsync.cli import main
sys.argv[0] = "asyncsync"
try:
    code = main()
except SystemExit as exc:
    code = exc.code
me = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(out, "w") as f:
    json.dump({"cpu": me.ru_utime + me.ru_stime, "helper_cpu": kids.ru_utime + kids.ru_stime,
               "rss_kb": me.ru_maxrss, "helper_rss_kb": kids.ru_maxrss}, f)
os._exit(code or 0)
"""

CASES = {
    "jsonl": ("d.jsonl", "auto"),
    "parquet": ("d.parquet", "auto"),
    "here": ("d.parquet", "here"),
}


def run(data: Path, mode: str, url: str, workdir: Path) -> dict[str, float]:
    figures, summary = workdir / "figures.json", workdir / "summary.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCSYNC_")}
    env["ASYNCSYNC_TOKEN"] = TOKEN
    args = [
        sys.executable, "-c", WRAPPER, str(figures), mode, "upload", str(data),
        "--url", f"{url}/ingest", "--auth", "bearer", "--no-resume", "--no-progress", "-q",
        "--checkpoint", str(workdir / "run.asyncsync"), "--failed", str(workdir / "failed.jsonl"),
        "--summary-json", str(summary),
    ]  # fmt: skip
    proc = subprocess.run(args, env=env, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{data.name} ({mode}): exit {proc.returncode}: {proc.stderr[-2000:]!r}")
    s = json.loads(summary.read_text())
    f = json.loads(figures.read_text())
    n = s["records_sent"]
    return {
        "rate": s["records_per_s"],
        "cpu_us": f["cpu"] / n * 1e6,
        "helper_us": f["helper_cpu"] / n * 1e6,
        "rss_mb": f["rss_kb"] / 1024,
        "helper_rss_mb": f["helper_rss_kb"] / 1024,
        "load": os.getloadavg()[0],
    }


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    data = Path(argv[0])
    reps = int(argv[1]) if len(argv) > 1 else 5
    cases = argv[2].split(",") if len(argv) > 2 else list(CASES)
    sink, url = start_sink()
    results: dict[str, list[dict[str, float]]] = {c: [] for c in cases}
    try:
        with tempfile.TemporaryDirectory(prefix="ab-parquet-") as tmp:
            for rep in range(reps):
                for case in cases if rep % 2 == 0 else cases[::-1]:
                    name, mode = CASES[case]
                    got = run(data / name, mode, url, Path(tmp))
                    results[case].append(got)
                    print(case, {k: round(v, 2) for k, v in got.items()}, file=sys.stderr)
    finally:
        sink.kill()
        sink.wait()
    base = statistics.median(r["rate"] for r in results[cases[0]])
    print(
        f"| case | records/s (median) | vs {cases[0]} | range | CLI CPU µs/record | helper "
        "CPU µs/record | peak RSS MB, CLI / helper | load average |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for case in cases:
        rs = results[case]

        def med(key: str, rs: list[dict[str, float]] = rs) -> float:
            return statistics.median(r[key] for r in rs)

        rates = [r["rate"] for r in rs]
        loads = [r["load"] for r in rs]
        print(
            f"| {case} | {med('rate'):,.0f} | {med('rate') / base:.2f}x | {min(rates):,.0f}-"
            f"{max(rates):,.0f} | {med('cpu_us'):.2f} | {med('helper_us'):.2f} | "
            f"{max(r['rss_mb'] for r in rs):.0f} / {max(r['helper_rss_mb'] for r in rs):.0f} | "
            f"{min(loads):.1f}-{max(loads):.1f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
