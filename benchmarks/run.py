"""Benchmark harness (issue 6): asyncsync against the clients users would otherwise write.

    python -m benchmarks.run                     # all scenarios, full sizes, 3 repetitions
    python -m benchmarks.run --quick             # small sizes, 1 repetition (CI, development)
    python -m benchmarks.run --scenarios a,b --reps 5 --records 200000

Every contender runs in its own subprocess against the same sink process, in alternating order
across repetitions; each figure is the median over the repetitions. Peak RSS is the
contender process's own ``ru_maxrss`` (from ``wait4``). Results are printed as markdown and
saved to ``benchmarks/results/<date>-<scenarios>.md`` (and ``.json`` with every run).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .contenders._common import SKIP_EXIT
from .datagen import DATA_DIR, data_file
from .sinks import ROOT, MiniSink, NginxSink, Sink, child_env, find_nginx

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TOKEN = "bench-static-token"
ALL_SCENARIOS = "abcdef"


# --- contenders -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    module: str
    asyncio: bool  # runs an asyncio event loop (uvloop applies)
    tokens: bool = False  # can fetch OAuth2 tokens (scenario d)
    args: tuple[str, ...] = ()  # extra arguments for the contender module


PLAIN = Contender("plain", "plain aiohttp loop", "plain", asyncio=True)
PLAIN_MSGSPEC = Contender(
    "plain_msgspec", "plain aiohttp + msgspec validation", "plain_msgspec", asyncio=True
)
PLAIN_REQWEST = Contender("plain_reqwest", "plain pyreqwest loop", "plain_reqwest", asyncio=True)
NODE = Contender("node", "Node 20 + undici Pool", "node_undici", asyncio=False)
REQUESTS = Contender("requests", "requests + 32 threads", "requests_threads", asyncio=False)
HTTPX = Contender("httpx", "httpx.AsyncClient + semaphore", "httpx_async", asyncio=True)
LIB = Contender(
    "lib", "asyncsync library (auto transport)", "asyncsync_lib", asyncio=True, tokens=True
)
CLI = Contender(
    "cli", "asyncsync CLI, reqwest", "asyncsync_cli", asyncio=False, tokens=True,
    args=("--transport", "reqwest"),
)  # fmt: skip
CLI_METRICS = Contender(
    "cli-metrics", "asyncsync CLI --metrics", "asyncsync_cli_metrics", asyncio=False, tokens=True
)
CLI_AIOHTTP = Contender(
    "cli_aiohttp", "asyncsync CLI, aiohttp", "asyncsync_cli", asyncio=False, tokens=True,
    args=("--transport", "aiohttp"),
)  # fmt: skip
CONTENDERS = {
    c.key: c
    for c in (
        PLAIN, PLAIN_MSGSPEC, PLAIN_REQWEST, NODE, REQUESTS, HTTPX, LIB, CLI, CLI_AIOHTTP,
        CLI_METRICS,
    )
}  # fmt: skip
#: the peers of scenarios a and b, in table order
PEERS = (
    PLAIN, PLAIN_MSGSPEC, PLAIN_REQWEST, NODE, REQUESTS, HTTPX, LIB, CLI, CLI_AIOHTTP, CLI_METRICS
)  # fmt: skip
HTTPX_NOTE = (
    "httpx: its connection pool serialises much of the work under one lock, a known slowdown "
    "at high concurrency (encode/httpx, httpcore pool); its documented settings "
    "(Limits(max_connections=32, max_keepalive_connections=32), one shared AsyncClient) are "
    "used, and users who hit this switch clients: read its row as that, not as what httpx "
    "costs at low concurrency."
)


# --- scenarios --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    sizes: tuple[int, ...]  # record counts; more than one only for the RSS scenario
    quick_sizes: tuple[int, ...]
    batch: int
    workers: int
    contenders: tuple[Contender, ...]
    # Slow contenders send a prefix of the data (rates are what is compared): key -> records.
    caps: dict[str, int] = field(default_factory=dict)
    quick_caps: dict[str, int] = field(default_factory=dict)
    latency: float = 0.0
    token_ttl: float | None = None  # set: contenders that can, use OAuth2 against /token
    token_skew: float | None = None  # asyncsync's --token-skew for this scenario
    quick_token_ttl: float | None = None
    max_reps: int | None = None
    plain_sink_ok: bool = True  # nginx may replace the minisink (no latency, no tokens)
    note: str = ""


SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario(
            "a",
            "bulk: batch 200, 32 workers",
            sizes=(1_000_000,),
            quick_sizes=(50_000,),
            batch=200,
            workers=32,
            contenders=PEERS,
            caps={"requests": 300_000, "httpx": 50_000},
            quick_caps={"requests": 20_000, "httpx": 10_000},
            note=HTTPX_NOTE,
        ),
        Scenario(
            "b",
            "per-request overhead: batch 1, 32 workers",
            sizes=(50_000,),
            quick_sizes=(5_000,),
            batch=1,
            workers=32,
            contenders=PEERS,
            caps={"requests": 5_000, "httpx": 1_000},
            quick_caps={"requests": 1_000, "httpx": 500},
            note=HTTPX_NOTE,
        ),
        Scenario(
            "c",
            "latency-bound: sink adds 50 ms, batch 200, 64 workers",
            sizes=(1_000_000,),
            quick_sizes=(100_000,),
            batch=200,
            workers=64,
            latency=0.05,
            contenders=(PLAIN, REQUESTS, HTTPX, LIB, CLI),
            caps={"requests": 300_000, "httpx": 50_000},
            quick_caps={"requests": 50_000, "httpx": 20_000},
            plain_sink_ok=False,
        ),
        Scenario(
            "d",
            "token lifetime {ttl:g} s over a long run (sink adds 50 ms, batch 10, 16 workers)",
            sizes=(64_000,),  # 16 x 10 / 0.05 s = 3,200 records/s at best: ~20 s
            quick_sizes=(16_000,),  # ~5 s with 1 s tokens
            batch=10,
            workers=16,
            latency=0.05,
            token_ttl=2.0,
            quick_token_ttl=1.0,
            # the default skew, as users run it: min(300 s, 25% of the lifetime), a refresh
            # every 0.75 of a lifetime, so about 1.33 token requests per lifetime (issue 13)
            token_skew=None,
            contenders=(PLAIN, LIB, CLI),
            max_reps=1,
            plain_sink_ok=False,
            note="The plain loop uses the static token (reference speed only). "
            "Runs once per contender: token counting is not a timing measurement. "
            "asyncsync runs with its default skew (25% of a 2 s lifetime): a refresh every "
            "1.5 s, so about 1.33 token requests per lifetime elapsed is the expected count.",
        ),
        Scenario(
            "e",
            "peak RSS at two input sizes: batch 200, 32 workers",
            sizes=(1_000_000, 5_000_000),
            quick_sizes=(100_000, 500_000),
            batch=200,
            workers=32,
            contenders=(PLAIN, LIB),
        ),
        Scenario(
            "f",
            "export sources: the same records as JSON Lines, .jsonl.gz and Parquet (CLI)",
            sizes=(2_000_000,),
            quick_sizes=(200_000,),
            batch=200,  # the CLI's defaults
            workers=32,
            contenders=(),  # benchmarks/bench_sources.py runs it
            note="Targets (issue 18): Parquet >= 0.8x the records/s of JSONL; the .jsonl.gz "
            "upload under 100 MB peak RSS.",
        ),
    )
}


# --- one run ----------------------------------------------------------------------------------


@dataclass
class Run:
    scenario: str
    contender: str
    records_expected: int
    rep: int
    status: str = "ok"  # ok | skipped | error
    reason: str = ""
    records: int = 0
    requests: int = 0
    errors: int = 0
    duration_s: float = 0.0
    records_per_s: float = 0.0
    requests_per_s: float = 0.0
    auth_requests: int | None = None
    peak_rss_mb: float = 0.0
    cpu_s: float = 0.0
    process_wall_s: float = 0.0
    loop: str = "-"
    sink_cpu_pct: float | None = None
    sink: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def run_contender(
    contender: Contender,
    scenario: Scenario,
    sink: Sink,
    data: Path,
    records: int,
    rep: int,
    *,
    uvloop: bool,
    token_url: str | None,
    timeout: float,
) -> Run:
    run = Run(scenario.key, contender.key, records, rep)
    cmd = [
        sys.executable,
        "-m",
        f"benchmarks.contenders.{contender.module}",
        "--url",
        sink.ingest_url,
        "--data",
        str(data),
        "--workers",
        str(scenario.workers),
        "--batch",
        str(scenario.batch),
        "--token",
        TOKEN,
        "--uvloop" if uvloop else "--no-uvloop",
        *contender.args,
    ]
    if token_url and contender.tokens:
        cmd += ["--auth", "oauth2", "--token-url", token_url]
        if scenario.token_skew is not None:
            cmd += ["--token-skew", str(scenario.token_skew)]
    sink.reset()
    sink_cpu0 = sink.cpu_seconds()
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        # Own session, so a timeout also ends what the contender started (the CLI).
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=ROOT,
            env=child_env(),
            start_new_session=True,
        )
        timer = threading.Timer(timeout, _kill_group, (proc.pid,))
        timer.start()
        try:
            assert proc.stdout is not None
            out = proc.stdout.read().decode(errors="replace")
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            timer.cancel()
            proc.stdout.close()  # type: ignore[union-attr]
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    run.process_wall_s = time.perf_counter() - started
    sink_cpu1 = sink.cpu_seconds()
    lines = [ln for ln in out.splitlines() if ln.strip()]
    try:
        payload: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        payload = {}
    if proc.returncode == SKIP_EXIT and "skipped" in payload:
        run.status, run.reason = "skipped", str(payload["skipped"])
        return run
    if proc.returncode != 0 or "records" not in payload:
        run.status = "error"
        if run.process_wall_s >= timeout:
            run.reason = f"timed out after {timeout:g} s"
            return run
        last = last_words(stderr or out)
        run.reason = f"exit {proc.returncode}: {last}" if last else f"exit {proc.returncode}"
        return run
    extra = payload.get("extra") or {}
    run.records = int(payload["records"])
    run.requests = int(payload["requests"])
    run.errors = int(payload.get("errors") or 0)
    run.duration_s = float(payload["duration_s"])
    run.auth_requests = payload.get("auth_requests")
    run.loop = str(payload.get("loop", "-"))
    run.extra = extra
    run.records_per_s = run.records / run.duration_s if run.duration_s > 0 else 0.0
    run.requests_per_s = run.requests / run.duration_s if run.duration_s > 0 else 0.0
    # ru_maxrss is in KiB on Linux. The CLI wrapper reports its child's figures.
    run.peak_rss_mb = float(extra.get("peak_rss_kb", usage.ru_maxrss)) / 1024
    run.cpu_s = float(payload.get("cpu_s") or (usage.ru_utime + usage.ru_stime))
    if sink_cpu0 is not None and sink_cpu1 is not None and run.duration_s > 0:
        run.sink_cpu_pct = 100 * (sink_cpu1 - sink_cpu0) / run.duration_s
    run.sink = sink.stats()
    return run


def last_words(text: str) -> str:
    """The last meaningful line of a traceback or message, safe in a markdown table cell."""
    for line in reversed(text.splitlines()):
        line = line.strip(" |+-^~\t")
        if line:
            return line.replace("|", "/")[:200]
    return ""


# --- aggregation and report -------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def fmt_size(n: int) -> str:
    if n >= 1_000_000 and n % 100_000 == 0:
        return f"{n / 1_000_000:g} M"
    if n >= 1_000 and n % 100 == 0:
        return f"{n / 1_000:g} k"
    return str(n)


@dataclass
class Row:
    contender: Contender
    size: int  # the scenario's input size
    records_expected: int  # what this contender sends (a prefix when capped)
    runs: list[Run]

    @property
    def ok_runs(self) -> list[Run]:
        return [r for r in self.runs if r.status == "ok"]

    def med(self, attr: str) -> float:
        return median([float(getattr(r, attr)) for r in self.ok_runs])


def check_row(row: Row, scenario: Scenario) -> str:
    problems: list[str] = []
    for r in row.ok_runs:
        if r.records != r.records_expected:
            problems.append(f"sent {r.records:,}/{r.records_expected:,}")
        if r.errors:
            problems.append(f"{r.errors} failed")
        if r.sink is not None:
            if r.sink["requests"] != r.requests:
                problems.append(f"sink saw {r.sink['requests']} requests, client {r.requests}")
            if r.sink["unauthorized"] and scenario.token_ttl is None:
                problems.append(f"{r.sink['unauthorized']}x 401")
        if r.sink_cpu_pct is not None and r.sink_cpu_pct > 85:
            problems.append(f"sink CPU {r.sink_cpu_pct:.0f}%: sink-bound?")
    return "; ".join(dict.fromkeys(problems)) or "ok"


def token_cell(row: Row) -> str:
    runs = row.ok_runs
    sink_counts = [r.sink["token_requests"] for r in runs if r.sink is not None]
    client = [r.auth_requests for r in runs if r.auth_requests is not None]
    if not client and not any(sink_counts):
        return "–"
    if sink_counts:
        cell = fmt_int(median(sink_counts))
        if client and median(client) != median(sink_counts):
            cell += f" (client says {fmt_int(median(client))})"
        return cell
    return fmt_int(median(client))


def scenario_table(scenario: Scenario, rows: list[Row], ttl: float | None) -> list[str]:
    headers = ["contender", "records", "records/s", "requests/s", "peak RSS MB", "token requests"]
    bound = None
    if scenario.latency:
        bound = scenario.workers * scenario.batch / scenario.latency
    if scenario.key != "d" and bound:
        headers.append("of latency bound")
    if ttl is not None:
        headers += ["lifetimes elapsed", "max concurrent token req.", "401s"]
    headers += ["client CPU µs/record", "ratio to plain (rec/s)", "sink CPU %", "check"]
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    plain_rate: dict[int, float] = {
        row.size: row.med("records_per_s") for row in rows if row.contender is PLAIN and row.ok_runs
    }
    for row in rows:
        label = row.contender.label
        if len(scenario.sizes) > 1:
            label += f" @ {fmt_size(row.records_expected)}"
        if not row.ok_runs:
            bad = row.runs[0]
            cells = [label, fmt_size(row.records_expected), f"{bad.status} ({bad.reason})"]
            cells += [""] * (len(headers) - len(cells))
            out.append("| " + " | ".join(cells) + " |")
            continue
        rate = row.med("records_per_s")
        cells = [
            label,
            fmt_size(row.records_expected),
            fmt_int(rate),
            fmt_int(row.med("requests_per_s")),
            f"{row.med('peak_rss_mb'):.0f}",
            token_cell(row),
        ]
        if scenario.key != "d" and bound:
            cells.append(f"{rate / bound:.2f}")
        if ttl is not None:
            r = row.ok_runs[0]
            if r.sink is not None and (r.auth_requests is not None or r.sink["token_requests"]):
                cells += [
                    str(math.ceil(r.duration_s / ttl)),
                    str(r.sink["token_max_concurrent"]),
                    str(r.sink["unauthorized"]),
                ]
            else:
                cells += ["–", "–", str(r.sink["unauthorized"]) if r.sink else "–"]
        cpu_per_record = [1e6 * r.cpu_s / r.records for r in row.ok_runs if r.records]
        cells.append(f"{median(cpu_per_record):.2f}" if cpu_per_record else "–")
        ref = plain_rate.get(row.size)
        cells.append(f"{rate / ref:.2f}" if ref else "–")
        sink_cpu = [r.sink_cpu_pct for r in row.ok_runs if r.sink_cpu_pct is not None]
        cells.append(f"{median(sink_cpu):.0f}" if sink_cpu else "–")
        cells.append(check_row(row, scenario))
        out.append("| " + " | ".join(cells) + " |")
    return out


def scenario_notes(scenario: Scenario, rows: list[Row], ttl: float | None, reps: int) -> list[str]:
    notes: list[str] = []
    if scenario.latency and scenario.key != "d":
        bound = scenario.workers * scenario.batch / scenario.latency
        notes.append(
            f"Latency bound = workers x batch / latency = {scenario.workers} x {scenario.batch}"
            f" / {scenario.latency} s = {fmt_int(bound)} records/s."
        )
    if ttl is not None:
        notes.append(
            f"Token lifetime {ttl:g} s. Lifetimes elapsed = ceil(duration / lifetime); target:"
            " token requests <= 1.33 x lifetimes elapsed + 1 with the default skew (a refresh at"
            " 75% of each lifetime), max concurrent token requests = 1."
        )
    if scenario.key == "e":
        for key in ("lib", "plain"):
            sized = [r for r in rows if r.contender.key == key and r.ok_runs]
            if len(sized) >= 2:
                small, big = sized[0], sized[-1]
                growth = big.med("peak_rss_mb") / small.med("peak_rss_mb") - 1
                notes.append(
                    f"{small.contender.label}: peak RSS {small.med('peak_rss_mb'):.0f} MB at "
                    f"{fmt_size(small.records_expected)} vs {big.med('peak_rss_mb'):.0f} MB at "
                    f"{fmt_size(big.records_expected)} ({growth:+.1%})."
                )
    capped = [
        f"{r.contender.label} {fmt_size(r.records_expected)}"
        for r in rows
        if r.records_expected < r.size and r.ok_runs
    ]
    if capped:
        notes.append(
            "Slow contenders send a prefix of the data (their rate is steady): "
            + ", ".join(capped)
            + "."
        )
    spreads = [
        f"{r.contender.label}"
        + (f" @ {fmt_size(r.size)}" if len(scenario.sizes) > 1 else "")
        + f" {max(rates) / min(rates) - 1:.0%}"
        for r in rows
        if len(rates := [x.records_per_s for x in r.ok_runs]) > 1 and min(rates) > 0
    ]
    if spreads:
        notes.append("Spread of records/s across runs (max/min - 1): " + ", ".join(spreads) + ".")
    effective_reps = min(reps, scenario.max_reps or reps)
    notes.append(
        f"Median of {effective_reps} run(s) per contender, order alternating between runs."
    )
    if scenario.note:
        notes.append(scenario.note)
    return notes


def versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in ("aiohttp", "httpx", "requests", "uvloop", "orjson", "msgspec", "asyncsync"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def machine_info(sink_kinds: set[str], uvloop_used: bool) -> dict[str, str]:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    v = versions()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": f"{os.cpu_count()} (usable {len(os.sched_getaffinity(0))})",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "aiohttp": v["aiohttp"],
        "httpx": v["httpx"],
        "requests": v["requests"],
        "uvloop": (
            f"yes ({v['uvloop']}) in every asyncio contender and the minisink;"
            " the CLI runs the loop it chooses itself"
            if uvloop_used
            else "no: the default asyncio loop in every contender (the CLI: its own choice)"
        ),
        "asyncsync": f"{v['asyncsync']} (git {commit or '?'})",
        "sink": ", ".join(sorted(sink_kinds)),
    }


# --- orchestration ----------------------------------------------------------------------------


def make_sink(scenario: Scenario, args: argparse.Namespace, ttl: float | None) -> Sink:
    nginx = find_nginx(args.nginx) if args.sink in ("auto", "nginx") else None
    if args.sink == "nginx" and nginx is None:
        raise SystemExit("--sink nginx: nginx not found (install it or pass --nginx PATH)")
    if nginx is not None and scenario.plain_sink_ok and ttl is None:
        return NginxSink(nginx, token=TOKEN)
    return MiniSink(
        token=TOKEN,
        latency=scenario.latency,
        token_ttl=ttl if ttl is not None else 3600.0,
        uvloop=args.uvloop,
    )


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_scenario(
    scenario: Scenario, args: argparse.Namespace, sink_kinds: set[str]
) -> tuple[list[str], list[Run]]:
    sizes = scenario.quick_sizes if args.quick else scenario.sizes
    if args.records:
        sizes = (args.records,) if len(sizes) == 1 else (args.records, args.records * 5)
    caps = scenario.quick_caps if args.quick else scenario.caps
    ttl = scenario.quick_token_ttl if args.quick else scenario.token_ttl
    reps = min(args.reps, scenario.max_reps or args.reps)
    # The plain loop always runs: it is the reference of the ratios.
    contenders = [c for c in scenario.contenders if c.key in args.contenders or c is PLAIN]
    # Per input size, the (contender, records) pairs in table order.
    plan = [(size, [(c, min(size, caps.get(c.key, size))) for c in contenders]) for size in sizes]
    files = {n: data_file(n, args.data_dir) for _, entries in plan for _, n in entries}

    runs: dict[tuple[int, str], list[Run]] = {}
    skipped: dict[str, Run] = {}  # contenders that could not run: not tried again
    with make_sink(scenario, args, ttl) as sink:
        sink_kinds.add(sink.kind)
        token_url = sink.url + "/token" if ttl is not None else None
        for size, entries in plan:
            for rep in range(reps):
                order = entries if rep % 2 == 0 else entries[::-1]
                for c, n in order:
                    if c.key in skipped:
                        runs.setdefault((size, c.key), [skipped[c.key]])
                        continue
                    run = run_contender(
                        c,
                        scenario,
                        sink,
                        files[n],
                        n,
                        rep,
                        uvloop=args.uvloop,
                        token_url=token_url,
                        timeout=args.timeout,
                    )
                    runs.setdefault((size, c.key), []).append(run)
                    if run.status == "ok":
                        log(
                            f"[{scenario.key}] rep {rep + 1}/{reps} {c.label} "
                            f"{fmt_size(n)}: {fmt_int(run.records_per_s)} records/s, "
                            f"{fmt_int(run.requests_per_s)} requests/s, "
                            f"{run.peak_rss_mb:.0f} MB"
                        )
                    else:
                        log(f"[{scenario.key}] {c.label}: {run.status} ({run.reason})")
                        skipped[c.key] = run
    rows = [
        Row(c, size, n, runs[(size, c.key)])
        for size, entries in plan
        for c, n in entries
        if (size, c.key) in runs
    ]
    title = f"### ({scenario.key}) {scenario.title.format(ttl=ttl)}"
    lines = [title, ""]
    lines += scenario_table(scenario, rows, ttl)
    lines.append("")
    lines += [f"- {n}" for n in scenario_notes(scenario, rows, ttl, args.reps)]
    lines.append("")
    all_runs = [r for rs in runs.values() for r in rs]
    return lines, all_runs


def run_sources(
    scenario: Scenario, args: argparse.Namespace, sink_kinds: set[str]
) -> tuple[list[str], list[Run]]:
    """Scenario f: :mod:`benchmarks.bench_sources` (one row per input file)."""
    from . import bench_sources

    size = args.records or (scenario.quick_sizes if args.quick else scenario.sizes)[0]
    uploads = bench_sources.measure(size, args.reps, args.data_dir)
    sink_kinds.add("aiohttp minisink")
    lines = [f"### ({scenario.key}) {scenario.title}", ""]
    lines += bench_sources.report(uploads, size, args.reps)
    lines += ["", f"- {scenario.note}", ""]
    runs = [
        Run(
            scenario.key,
            f"cli:{u.file}",
            size,
            u.rep,
            records=u.records,
            duration_s=u.duration_s,
            records_per_s=u.records_per_s,
            peak_rss_mb=u.peak_rss_mb,
            cpu_s=u.cpu_s,
            loop="cli",
            extra={"load_average": u.load_average},
        )
        for u in uploads
    ]
    return lines, runs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark asyncsync against a plain aiohttp loop, requests and httpx.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes and 1 repetition")
    p.add_argument(
        "--scenarios",
        default=ALL_SCENARIOS,
        help="comma-separated subset of a,b,c,d,e,f (default: all)",
    )
    p.add_argument("--reps", type=int, help="repetitions per contender (default 3; quick 1)")
    p.add_argument(
        "--records",
        type=int,
        help="records per run, overriding the scenario's size (e: this and 5x this)",
    )
    p.add_argument(
        "--contenders",
        help=f"comma-separated subset of {','.join(CONTENDERS)} (default: all)",
    )
    p.add_argument(
        "--sink",
        choices=["auto", "aiohttp", "nginx"],
        default="auto",
        help="auto: nginx for scenarios without latency or tokens when installed, else minisink",
    )
    p.add_argument("--nginx", help="path of the nginx binary (default: from PATH)")
    p.add_argument(
        "--uvloop",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="uvloop in every asyncio contender and the minisink, when installed",
    )
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="where to save the report")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per contender run")
    args = p.parse_args(argv)
    keys = [k.strip() for k in args.scenarios.replace(" ", "").split(",") if k.strip()]
    if len(keys) == 1 and len(keys[0]) > 1:
        keys = list(keys[0])  # --scenarios abc
    unknown = [k for k in keys if k not in SCENARIOS]
    if unknown or not keys:
        p.error(f"unknown scenario(s) {unknown}; choose from {','.join(SCENARIOS)}")
    args.scenario_keys = keys
    if args.contenders is None:
        args.contenders = list(CONTENDERS)
    else:
        args.contenders = [k.strip() for k in args.contenders.split(",") if k.strip()]
        bad = [k for k in args.contenders if k not in CONTENDERS]
        if bad:
            p.error(f"unknown contender(s) {bad}; choose from {','.join(CONTENDERS)}")
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.reps < 1:
        p.error("--reps must be >= 1")
    if args.records is not None and args.records < 1:
        p.error("--records must be >= 1")
    return args


def draw_peer_chart(runs: list[Run], path: Path, *, title: str) -> str | None:
    """The peer table of scenarios a and b as a PNG bar chart (median records/s, as a ratio to
    the plain aiohttp loop, one panel per scenario); None when drawn, else why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'asyncsync[bench]')"
    panels = []
    for key in ("a", "b"):
        by_contender: dict[str, list[float]] = {}
        for r in runs:
            if r.scenario == key and r.status == "ok" and r.records_per_s > 0:
                by_contender.setdefault(r.contender, []).append(r.records_per_s)
        plain = by_contender.get(PLAIN.key)
        if not plain:
            continue
        ref = median(plain)
        rows = [
            (CONTENDERS[k].label, median(v), min(v), max(v))
            for k, v in by_contender.items()
            if k in CONTENDERS
        ]
        rows.sort(key=lambda row: row[1])
        panels.append((SCENARIOS[key], ref, rows))
    if not panels:
        return "no run of scenario a or b with the plain loop"
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 5.2), squeeze=False)
    for ax, (scenario, ref, rows) in zip(axes[0], panels, strict=True):
        labels = [row[0] for row in rows]
        ratios = [row[1] / ref for row in rows]
        lows = [(row[1] - row[2]) / ref for row in rows]
        highs = [(row[3] - row[1]) / ref for row in rows]
        colors = [
            "#d62728"
            if label.startswith("asyncsync")
            else "#7f7f7f"
            if label == "plain aiohttp loop"
            else "#1f77b4"
            for label in labels
        ]
        bars = ax.barh(labels, ratios, xerr=[lows, highs], color=colors, capsize=3)
        unit = "requests/s" if scenario.batch == 1 else "records/s"
        for bar, row in zip(bars, rows, strict=True):
            rate = row[1]  # at batch 1, records/s are requests/s
            ax.text(
                row[3] / ref, bar.get_y() + bar.get_height() / 2,  # right of the range bar
                f"  {row[1] / ref:.2f}x  ({fmt_int(rate)} {unit})", va="center", fontsize=8,
            )  # fmt: skip
        ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xlabel("records/s, ratio to the plain aiohttp loop (median; bars: range)")
        ax.set_title(f"({scenario.key}) {scenario.title}", fontsize=10)
        ax.set_xlim(0, max(r + h for r, h in zip(ratios, highs, strict=True)) * 1.6)
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def chart_from_files(paths: Sequence[Path], out: Path) -> int:
    """Draw the peer chart from saved result files (``--chart A.json B.json --out X.png``):
    scenarios a and b run separately still make one picture."""
    runs = [Run(**r) for p in paths for r in json.loads(p.read_text())["runs"]]
    why_not = draw_peer_chart(runs, out, title="asyncsync peers")
    log(f"saved {out}" if why_not is None else f"no chart: {why_not}")
    return 0 if why_not is None else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--chart"]:
        files = [Path(a) for a in argv[1:] if a.endswith(".json")]
        outs = [Path(a) for a in argv[1:] if a.endswith(".png")]
        return chart_from_files(files, outs[0] if outs else RESULTS_DIR / "peers.png")
    args = parse_args(argv)
    started = time.perf_counter()
    uvloop_used = args.uvloop and uvloop_available()
    sink_kinds: set[str] = set()
    info_at_start = machine_info(set(), uvloop_used)
    sections: list[str] = []
    all_runs: list[Run] = []
    for key in args.scenario_keys:
        if key == "f":
            lines, runs = run_sources(SCENARIOS[key], args, sink_kinds)
        else:
            lines, runs = run_scenario(SCENARIOS[key], args, sink_kinds)
        sections += lines
        all_runs += runs
    info = machine_info(sink_kinds, uvloop_used)
    info["date"] = info_at_start["date"]
    info["load average at start"] = info_at_start["load average at start"]
    info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    info["harness run time"] = f"{time.perf_counter() - started:.0f} s"
    set_name = "".join(args.scenario_keys) + ("-quick" if args.quick else "")
    header = [
        f"## asyncsync benchmarks: scenarios {', '.join(args.scenario_keys)}"
        + (" (quick sizes)" if args.quick else ""),
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in info.items()),
        "",
        "Records/s and requests/s are measured inside each contender process, from the start",
        "of its upload to the end (interpreter start-up excluded; for the CLI, its summary's",
        "`duration_s`). Peak RSS is the contender process's maximum resident set. Client CPU",
        "is the contender's CPU time (all threads) during the upload per record sent; for the",
        "CLI, its whole process, start-up included. Token requests are counted by the sink;",
        "'client says' shows the contender's own `auth_requests` when it differs. The",
        "requests contender uses `executor.map`, which submits every batch up front, as",
        "commonly written; its memory grows with the input.",
        "",
    ]
    busy = max(os.getloadavg()[0], float(info["load average at start"].split()[0]))
    cores = len(os.sched_getaffinity(0))
    if busy > cores:
        header += [
            f"**Busy machine**: load average {busy:.1f} on {cores} cores during the run, so",
            "wall-clock rates are depressed and noisy; client CPU per record is the steadier",
            "figure. Re-run on a quiet machine for the numbers to quote.",
            "",
        ]
    report = "\n".join(header + sections)
    print(report)
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"{dt.datetime.now(dt.UTC):%Y-%m-%d}-{set_name}"
        md = args.out / f"{stem}.md"
        md.write_text(report + "\n")
        raw = {"machine": info, "args": sys.argv[1:], "runs": [asdict(r) for r in all_runs]}
        (args.out / f"{stem}.json").write_text(json.dumps(raw, indent=1) + "\n")
        log(f"saved {md.relative_to(ROOT) if md.is_relative_to(ROOT) else md}")
        png = args.out / f"{stem}.png"
        why_not = draw_peer_chart(all_runs, png, title=f"asyncsync peers ({set_name})")
        log(f"saved {png.name}" if why_not is None else f"no chart: {why_not}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
