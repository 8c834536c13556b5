"""Adaptive concurrency (issue 15): ``--concurrency auto`` against a sweep of fixed limits.

Scenarios, each over several seeds (the seed drives the sink's latency jitter, 18-22 ms, and
the client's backoff jitter):

* ``knee``: the reference sink's capacity model, L=16, latency 20 ms, 429 above 2L. A fixed
  sweep (1..64) and ``auto``: goodput (records/s delivered), back-pressure answers per request,
  and when the limit settles within ±25% of L.
* ``halve``: L 16 -> 8 at 10 s. Goodput from 10 s to 20 s (and 15-20 s) against the best fixed
  limit at L=8.
* ``double``: L 16 -> 32 at 10 s. When the limit gets (and stays) within ±25% of 32.
* ``fast``: nginx answering 200 (the client's CPU is the limit): fixed sweep vs ``auto``,
  with each cell's spread over the seeds (is the best fixed limit a real optimum or noise?).
* ``rtt``: where the knee is as the client sees it. Against L=16, for limits 12..32: goodput
  and the median round trip of the successful requests, once with that many fixed workers
  and once through the ``auto`` gate held at that limit (``auto``'s own machinery: every
  worker waits at the gate with its batch, so there is no gap between an answer and the next
  request; the fixed workers have one).

The client runs in this process (the library), each sink in its own. Not a unit test::

    python -m benchmarks.bench_adaptive                       # 3 seeds, ~8 minutes on 2 cores
    python -m benchmarks.bench_adaptive --seeds 5 --scenarios knee,halve
    python -m benchmarks.bench_adaptive --quick               # 1 seed, short cells

Writes ``benchmarks/results/<date>-<name>.json`` and ``.md`` and ``.png`` (the limit over
time against L); ``--name`` defaults to ``adaptive``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncsync._uploader
from asyncsync import BatchLimits, Interrupted, StateOptions, StaticToken, UploadHooks, upload
from asyncsync._concurrency import AdaptiveLimit
from asyncsync._hooks import RequestDone
from asyncsync._records import BatchResult
from benchmarks.sinks import ROOT, NginxSink, _free_port, child_env, find_nginx

RESULTS = Path(__file__).resolve().parent / "results"
SWEEP = (1, 2, 4, 8, 16, 32, 64)
RTT_SWEEP = (12, 16, 20, 24, 28, 32)
RECORD = b'{"id":%d,"name":"adaptive concurrency benchmark","payload":"xxxxxxxxxxxxxxxxxxxxxxxx"}'


class RefSink:
    """``python -m asyncsync.sink`` with the capacity model, in its own process."""

    def __init__(self, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "asyncsync.sink", "--port", str(self.port), "--no-auth",
             "--no-keep-records", *args],
            cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                self.stats()
                return
            time.sleep(0.1)
        self.close()
        raise RuntimeError("reference sink did not start")

    @property
    def ingest_url(self) -> str:
        return self.url + "/ingest"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/stats", timeout=10) as resp:
            data: dict[str, Any] = json.loads(resp.read())
        return data

    def close(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


class Pinned(AdaptiveLimit):
    """The ``auto`` gate held at one limit: the control law's signals are ignored."""

    __slots__ = ()
    pin = 16

    def __init__(self, **kwargs: Any) -> None:
        kwargs["initial"] = kwargs["maximum"] = min(self.pin, kwargs["maximum"])
        super().__init__(**kwargs)

    def on_success(self, rtt: float, in_flight: int) -> None:
        return None

    def on_backpressure(self) -> None:
        return None


@contextlib.contextmanager
def pinned_gate(limit: int) -> Iterator[None]:
    """``concurrency="auto"`` runs through the gate held at ``limit`` inside this block."""
    saved = asyncsync._uploader.AdaptiveLimit
    Pinned.pin = limit
    asyncsync._uploader.AdaptiveLimit = Pinned  # type: ignore[misc]
    try:
        yield
    finally:
        asyncsync._uploader.AdaptiveLimit = saved  # type: ignore[misc]


class Acks(UploadHooks):
    """When each batch was acknowledged, for goodput over time windows; and the round trip
    of every successful request."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.times: list[tuple[float, int]] = []
        self.rtts: list[float] = []

    def on_request(self, event: RequestDone) -> None:
        if event.status is not None and 200 <= event.status < 300:
            self.rtts.append(event.latency_s)

    def on_batch_done(self, result: BatchResult) -> None:
        if result.delivered:
            self.times.append((time.monotonic() - self.start, len(result.batch)))

    def rate(self, t0: float, t1: float) -> float:
        return sum(n for t, n in self.times if t0 <= t < t1) / (t1 - t0)


def records_for(seconds: float) -> Iterator[bytes]:
    deadline = time.monotonic() + seconds
    i = 0
    while True:
        i += 1
        if i % 64 == 0 and time.monotonic() >= deadline:
            return
        yield RECORD % i


async def run_client(
    url: str,
    concurrency: int | str,
    seconds: float,
    *,
    batch: int,
    token: str | None = None,
) -> tuple[dict[str, Any], Acks]:
    acks = Acks()
    state = StateOptions(failed=Path(os.devnull))
    try:
        summary = await upload(
            records_for(seconds),
            url,
            concurrency=concurrency,  # type: ignore[arg-type]
            limits=BatchLimits(max_records=batch),
            auth=StaticToken(token) if token is not None else None,
            state=state,
            hooks=acks,
        )
    except Interrupted as exc:
        if exc.summary is None:
            raise
        summary = exc.summary
    return summary.to_dict(), acks


def settle_time(timeline: list[list[float]], target: float, end: float) -> float | None:
    """The earliest time after which the limit stays within ±25% of ``target`` to ``end``."""
    low, high = 0.75 * target, 1.25 * target
    since: float | None = None
    for t, limit in timeline:
        if low <= limit <= high:
            if since is None:
                since = t
        else:
            since = None
    return since if since is not None and since < end else None


def in_band(timeline: list[list[float]], target: float, t0: float, t1: float) -> float:
    """Share of [t0, t1) the limit spent within ±25% of ``target`` (step function)."""
    inside = 0.0
    for (t, limit), nxt in zip(timeline, [*timeline[1:], [t1, 0]], strict=True):
        a, b = max(t, t0), min(nxt[0], t1)
        if b > a and 0.75 * target <= limit <= 1.25 * target:
            inside += b - a
    return inside / (t1 - t0)


def capacity_cell(
    capacity_args: list[str],
    concurrency: int | str,
    seconds: float,
    seed: int,
    batch: int,
    *,
    gate: int | None = None,
) -> dict[str, Any]:
    sink = RefSink("--latency", "0.018-0.022", "--seed", str(seed), *capacity_args)
    try:
        if gate is not None:
            with pinned_gate(gate):
                summary, acks = asyncio.run(
                    run_client(sink.ingest_url, "auto", seconds, batch=batch)
                )
        else:
            summary, acks = asyncio.run(
                run_client(sink.ingest_url, concurrency, seconds, batch=batch)
            )
        stats = sink.stats()
    finally:
        sink.close()
    steady = acks.rtts[len(acks.rtts) // 5 :]  # past the first fifth: connections are open
    requests = max(1, stats["ingest_requests"])
    return {
        "concurrency": concurrency,
        "seed": seed,
        "records_per_s": summary["records_sent"] / summary["duration_s"],
        "requests": stats["ingest_requests"],
        "backpressure": stats["overloaded"],
        "backpressure_share": stats["overloaded"] / requests,
        "duration_s": summary["duration_s"],
        "concurrency_final": summary["concurrency_final"],
        "concurrency_max_seen": summary["concurrency_max_seen"],
        "timeline": summary.get("concurrency_timeline"),
        "acks_per_s": [round(acks.rate(t, t + 1), 1) for t in range(int(seconds))],
        "rtt_ms_median": 1000 * median(steady),
    }


def fast_cell(url: str, token: str, concurrency: int | str, seconds: float) -> dict[str, Any]:
    cpu = time.process_time()
    summary, _ = asyncio.run(
        run_client(
            url + "/ingest",
            concurrency,
            seconds,
            batch=200,
            token=token,
        )
    )
    cpu = time.process_time() - cpu  # every thread of this process: the client's CPU
    return {
        "concurrency": concurrency,
        "records_per_s": summary["records_sent"] / summary["duration_s"],
        "cpu_us_per_record": 1e6 * cpu / max(1, summary["records_sent"]),
        "load": os.getloadavg()[0],
        "concurrency_final": summary["concurrency_final"],
        "concurrency_max_seen": summary["concurrency_max_seen"],
        "timeline": summary.get("concurrency_timeline"),
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_adaptive")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--scenarios", default="knee,rtt,halve,double,fast")
    p.add_argument("--name", default="adaptive", help="results file stem after the date")
    p.add_argument("--fixed-seconds", type=float, default=5.0)
    p.add_argument("--auto-seconds", type=float, default=20.0)
    p.add_argument("--quick", action="store_true", help="1 seed, short cells")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.fixed_seconds, args.auto_seconds = 1, 2.0, 12.0
    seeds = list(range(1, args.seeds + 1))
    scenarios = args.scenarios.split(",")
    load_before = os.getloadavg()
    out: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_before": load_before,
        "settings": vars(args) | {"out": str(args.out)},
    }
    batch = 10
    knee = ["--capacity", "16"]
    if "knee" in scenarios:
        cells = []
        for c in [*SWEEP, "auto"]:
            for seed in seeds:
                secs = args.auto_seconds if c == "auto" else args.fixed_seconds
                cell = capacity_cell(knee, c, secs, seed, batch)
                print(f"knee c={c} seed={seed}: {cell['records_per_s']:.0f} rec/s, "
                      f"bp {cell['backpressure_share']:.2%}", flush=True)  # fmt: skip
                cells.append(cell)
        out["knee"] = cells
    if "rtt" in scenarios:
        cells = []
        for seed in seeds:
            for c in RTT_SWEEP:  # alternate the two ways at every limit
                for mode in ("fixed", "gate"):
                    cell = capacity_cell(
                        knee, c, args.fixed_seconds, seed, batch, gate=c if mode == "gate" else None
                    ) | {"mode": mode}
                    print(f"rtt {mode} c={c} seed={seed}: {cell['records_per_s']:.0f} rec/s, "
                          f"RTT {cell['rtt_ms_median']:.1f} ms", flush=True)  # fmt: skip
                    cells.append(cell)
        out["rtt"] = cells
    if "halve" in scenarios:
        cells = []
        for c in (4, 8, 16):  # the best fixed limit once L=8
            for seed in seeds:
                cells.append(capacity_cell(["--capacity", "8"], c, args.fixed_seconds, seed, batch))
        for seed in seeds:
            cell = capacity_cell(
                ["--capacity-schedule", "0:16,10:8"], "auto", args.auto_seconds + 5, seed, batch
            )
            print(f"halve seed={seed}: {cell['acks_per_s']}", flush=True)
            cells.append(cell)
        out["halve"] = cells
    if "double" in scenarios:
        cells = []
        for c in (16, 32, 64):
            for seed in seeds:
                cells.append(
                    capacity_cell(["--capacity", "32"], c, args.fixed_seconds, seed, batch)
                )
        for seed in seeds:
            cell = capacity_cell(
                ["--capacity-schedule", "0:16,10:32"], "auto", args.auto_seconds + 5, seed, batch
            )
            print(f"double seed={seed}: final {cell['concurrency_final']}", flush=True)
            cells.append(cell)
        out["double"] = cells
    if "fast" in scenarios:
        binary = find_nginx()
        cells = []
        if binary is None:
            print("fast: no nginx, skipped", flush=True)
        else:
            token = "bench-token"
            with NginxSink(binary, token=token) as nginx:
                for seed in seeds:
                    for c in [*SWEEP, "auto"]:
                        secs = args.fixed_seconds * (2 if c == "auto" else 1)
                        cell = fast_cell(nginx.url, token, c, secs) | {"seed": seed}
                        print(f"fast c={c} seed={seed}: {cell['records_per_s']:.0f} rec/s, "
                              f"{cell['cpu_us_per_record']:.2f} µs CPU/record, final "
                              f"{cell['concurrency_final']}, load {cell['load']:.1f}",
                              flush=True)  # fmt: skip
                        cells.append(cell)
        out["fast"] = cells
    out["load_after"] = os.getloadavg()
    out["targets"] = targets(out)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{datetime.date.today().isoformat()}-{args.name}"
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1))
    md = report(out)
    stem.with_suffix(".md").write_text(md)
    print(md)
    plot(out, stem.with_suffix(".png"))
    return 0


def _by(cells: list[dict[str, Any]], key: str = "records_per_s") -> dict[Any, float]:
    groups: dict[Any, list[float]] = {}
    for cell in cells:
        groups.setdefault(cell["concurrency"], []).append(cell[key])
    return {c: median(v) for c, v in groups.items()}


def targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(name: str, measured: str, ok: bool) -> None:
        rows.append({"target": name, "measured": measured, "met": ok})

    if "knee" in out:
        cells = out["knee"]
        by = _by(cells)
        best_c = max((c for c in by if c != "auto"), key=lambda c: by[c])
        ratio = by["auto"] / by[best_c]
        row(
            "knee: goodput auto >= 0.9x best fixed",
            f"{by['auto']:.0f} vs {by[best_c]:.0f} rec/s (fixed {best_c}): {ratio:.2f}x",
            ratio >= 0.9,
        )
        autos = [c for c in cells if c["concurrency"] == "auto"]
        bp = max(c["backpressure_share"] for c in autos)
        row("knee: back-pressure answers <= 2% of requests", f"worst seed {bp:.2%}", bp <= 0.02)
        settles = [settle_time(c["timeline"], 16, c["duration_s"]) for c in autos]
        shares = [in_band(c["timeline"], 16, 10.0, c["duration_s"]) for c in autos]
        worst = max((s if s is not None else float("inf")) for s in settles)
        when = ", ".join("never" if s is None else f"{s:.1f}" for s in settles)
        row(
            "knee: limit within ±25% of L=16 within 10 s",
            f"settled (for good) at {when} s; in band {min(shares):.0%}+ of 10 s..end; final "
            f"{', '.join(str(c['concurrency_final']) for c in autos)}",
            worst <= 10.0,
        )
    if out.get("rtt"):
        table = _rtt_table(out["rtt"])
        best = max(row["gate"][0] for row in table.values())
        knee_at = min(c for c, row in table.items() if row["gate"][0] >= 0.97 * best)
        flat = table[min(table)]["gate"][1]
        row(
            "rtt: the smallest limit within 3% of the best goodput lies in 12..20 (L ±25%)",
            f"{knee_at} through the auto gate (best {best:.0f} rec/s; at 20: "
            f"{table[20]['gate'][0] / best:.2f}x; RTT {flat:.1f} ms at {min(table)}, "
            f"{table[20]['gate'][1]:.1f} at 20); fixed workers at 20: "
            f"{table[20]['fixed'][0] / max(r['fixed'][0] for r in table.values()):.2f}x their best",
            12 <= knee_at <= 20,
        )
    if "halve" in out:
        cells = out["halve"]
        fixed = _by([c for c in cells if c["concurrency"] != "auto"])
        best = max(fixed.values())
        autos = [c for c in cells if c["concurrency"] == "auto"]
        rec = [statistics.mean(c["acks_per_s"][15:20]) for c in autos]
        rec_all = [statistics.mean(c["acks_per_s"][10:20]) for c in autos]
        ratio = min(rec) / best
        row(
            "halve: goodput >= 0.8x new best within 10 s",
            f"seconds 15-20 after start: {min(rec):.0f} rec/s (worst seed) vs best fixed at L=8 "
            f"{best:.0f}: {ratio:.2f}x; whole 10 s after the change {min(rec_all) / best:.2f}x",
            ratio >= 0.8,
        )
    if "double" in out:
        cells = out["double"]
        autos = [c for c in cells if c["concurrency"] == "auto"]
        times = []
        for c in autos:
            after = [[t - 10.0, v] for t, v in c["timeline"] if t >= 10.0]
            before = [t for t in c["timeline"] if t[0] < 10.0]
            start = [[0.0, before[-1][1]]] if before else []
            times.append(settle_time(start + after, 32, c["duration_s"] - 10.0))
        worst = max((s if s is not None else float("inf")) for s in times)
        fixed = _by([c for c in cells if c["concurrency"] != "auto"])
        row(
            "double: limit follows (±25% of 32) within 15 s",
            f"{', '.join('never' if s is None else f'{s:.1f}' for s in times)} s after the "
            f"change; final {', '.join(str(c['concurrency_final']) for c in autos)}; "
            f"fixed at L=32: {', '.join(f'{k}: {v:.0f}' for k, v in fixed.items())} rec/s",
            worst <= 15.0,
        )
    if out.get("fast"):
        by = _by(out["fast"])
        best_c = max((c for c in by if c != "auto"), key=lambda c: by[c])
        ratio = by["auto"] / by[best_c]
        # per seed, against that seed's best fixed cell (run minutes apart, not seconds)
        seeds = sorted({c["seed"] for c in out["fast"]})
        per_seed = []
        for seed in seeds:
            mine = {c["concurrency"]: c["records_per_s"] for c in out["fast"] if c["seed"] == seed}
            per_seed.append(mine["auto"] / max(v for k, v in mine.items() if k != "auto"))
        spread = [c["records_per_s"] for c in out["fast"] if c["concurrency"] == best_c]
        row(
            "fast (nginx): auto >= 0.9x best fixed",
            f"{by['auto']:.0f} vs {by[best_c]:.0f} rec/s (fixed {best_c}): {ratio:.2f}x; per seed "
            f"vs that seed's best fixed: {', '.join(f'{r:.2f}' for r in per_seed)}; fixed "
            f"{best_c} over the seeds {min(spread):.0f}..{max(spread):.0f}",
            ratio >= 0.9,
        )
    return rows


def report(out: dict[str, Any]) -> str:
    lines = [
        f"# Adaptive concurrency, {out['date']}",
        "",
        f"{out['machine']['cpus']} CPUs, Python {out['machine']['python']}, load average "
        f"before {out['load_before'][0]:.1f}, after {out['load_after'][0]:.1f} (shared machine).",
        f"Settings: {json.dumps(out['settings'])}",
        "",
        "| target | measured (median over seeds unless said) | met |",
        "|---|---|---|",
    ]
    for r in out["targets"]:
        lines.append(f"| {r['target']} | {r['measured']} | {'yes' if r['met'] else 'NO'} |")
    for name in ("knee", "halve", "double", "fast"):
        if not out.get(name):
            continue
        cpu = all("cpu_us_per_record" in x for x in out[name])
        lines += ["", f"## {name}", ""]
        if cpu:
            lines += [
                "| concurrency | records/s (median) | seeds (min..max) | client CPU µs/record "
                "(median) | final limit |",
                "|---|---|---|---|---|",
            ]
        else:
            lines += ["| concurrency | records/s (median) | seeds (min..max) |", "|---|---|---|"]
        by = _by(out[name])
        for c, v in by.items():
            mine = [x for x in out[name] if x["concurrency"] == c]
            values = [x["records_per_s"] for x in mine]
            line = f"| {c} | {v:.0f} | {len(values)} ({min(values):.0f}..{max(values):.0f}) |"
            if cpu:
                finals = ", ".join(str(x["concurrency_final"]) for x in mine)
                line += f" {median([x['cpu_us_per_record'] for x in mine]):.2f} | {finals} |"
            lines.append(line)
    if out.get("rtt"):
        lines += [
            "",
            "## rtt: the knee as the client sees it (L=16, 20 ms)",
            "",
            "| limit | fixed workers: records/s | RTT ms | auto gate held there: records/s "
            "| RTT ms |",
            "|---|---|---|---|---|",
        ]
        table = _rtt_table(out["rtt"])
        for c, row in table.items():
            lines.append(
                f"| {c} | {row['fixed'][0]:.0f} | {row['fixed'][1]:.1f} | {row['gate'][0]:.0f} "
                f"| {row['gate'][1]:.1f} |"
            )
    return "\n".join(lines) + "\n"


def _rtt_table(cells: list[dict[str, Any]]) -> dict[int, dict[str, tuple[float, float]]]:
    """limit -> mode -> (median records/s, median RTT ms) over the seeds."""
    table: dict[int, dict[str, tuple[float, float]]] = {}
    for c in sorted({x["concurrency"] for x in cells}):
        for mode in ("fixed", "gate"):
            mine = [x for x in cells if x["concurrency"] == c and x["mode"] == mode]
            table.setdefault(c, {})[mode] = (
                median([x["records_per_s"] for x in mine]),
                median([x["rtt_ms_median"] for x in mine]),
            )
    return table


def plot(out: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", flush=True)
        return
    panels = [
        (name, capacity)
        for name, capacity in (
            ("knee", lambda t: 16),
            ("halve", lambda t: 16 if t < 10 else 8),
            ("double", lambda t: 16 if t < 10 else 32),
            ("fast", None),
        )
        if out.get(name)
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3 * len(panels)), squeeze=False)
    for ax, (name, capacity) in zip(axes[:, 0], panels, strict=True):
        autos = [c for c in out[name] if c["concurrency"] == "auto" and c["timeline"]]
        end = max(c["duration_s"] if "duration_s" in c else c["timeline"][-1][0] for c in autos)
        for c in autos:
            ts = [p[0] for p in c["timeline"]] + [end]
            vs = [p[1] for p in c["timeline"]] + [c["timeline"][-1][1]]
            ax.step(ts, vs, where="post", alpha=0.7, label=f"limit, seed {c['seed']}")
        if capacity is not None:
            grid = [i / 10 for i in range(int(end * 10) + 1)]
            ax.plot(grid, [capacity(t) for t in grid], "k--", label="capacity L")
            ax.fill_between(
                grid,
                [0.75 * capacity(t) for t in grid],
                [1.25 * capacity(t) for t in grid],
                color="grey",
                alpha=0.15,
                label="L ±25%",
            )
        ax.set_title(f"{name}: --concurrency auto")
        ax.set_xlabel("seconds")
        ax.set_ylabel("limit")
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
