"""``asyncsync demo``: the whole job on a fresh machine, with nothing to configure.

It writes a sample export (100 k records of ~280 bytes by default) into a new directory,
starts the reference server in this process with short-lived tokens and a little trouble
(a few 5xx, connection resets, one 429 window, two records it rejects), uploads the export
through the same path as ``asyncsync upload`` with OAuth2 client credentials, and prints what
the client counted, what the server saw, and the dead-letter file. It then checks that the
run behaved as the design promises and exits 0 only if it did:

* every record read was delivered or dead-lettered, and the server stored each delivered
  record exactly once (retries are deduplicated by their Idempotency-Key);
* exactly the rejected records are in the dead-letter file with their status (their batches
  were split to isolate them);
* the token was fetched about once per lifetime, never twice at the same moment.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from .._hooks import UploadHooks
from .._summary import RunSummary
from ._exit import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from ._logs import logging_to_stderr
from ._plan import plan_run
from ._progress import ProgressDisplay, format_bytes, progress_wanted
from ._report import print_table, summary_rows
from ._run import TokenCount, run_plan
from ._settings import Settings, resolve

__all__ = ["DemoPlan", "run_demo", "write_export"]

TOKEN_TTL = 3.0  # seconds: several refreshes even in a short run
ERROR_RATE = 0.02
RESET_RATE = 0.005
RETRY_AFTER = 1.0
REJECT_FIELD = "legacy_code"  # the server answers 400 to a batch holding a record with it
POISONED = 2
SEED = 7
_COUNTRIES = ("DE", "FR", "NL", "SE", "US", "GB", "ES", "IT", "PL", "JP")
_STATUSES = ("paid", "paid", "paid", "refunded", "pending", "shipped")
_TAGS = ("web", "store", "promo", "b2b", "mobile", "gift")


@dataclass(frozen=True, slots=True)
class DemoPlan:
    """What the demo sets up, and so what it expects."""

    records: int
    poisoned: frozenset[int]  # 1-based line numbers of records the server will reject
    batch_size: int
    throttle_every: int  # the Nth ingest request opens the one 429 window (0: none)


def plan(records: int, batch_size: int = 200) -> DemoPlan:
    poisoned = (
        frozenset(max(1, records * (k + 1) // (POISONED + 1)) for k in range(POISONED))
        if records >= 10
        else frozenset()
    )
    batches = math.ceil(records / batch_size)
    # fires once, at ~60% of the batches; the next multiple is past the end of the run
    throttle_every = int(batches * 0.6) if batches >= 2 else 0
    return DemoPlan(records, poisoned, batch_size, throttle_every)


def write_export(path: Path, records: int, poisoned: frozenset[int] = frozenset()) -> int:
    """Write ``records`` JSON Lines of ~280 bytes (orders) to ``path``; returns its size."""
    rng = random.Random(SEED)
    base = 1_714_550_400  # 2024-05-01T08:00:00Z
    with path.open("w", encoding="utf-8") as fh:
        lines = []
        for i in range(1, records + 1):
            cust = rng.randrange(1, 50_000)
            ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base + i * 17))
            tags = json.dumps(rng.sample(_TAGS, 2))
            extra = f', "{REJECT_FIELD}": "LC-{i}"' if i in poisoned else ""
            lines.append(
                f'{{"id": "ord-{i:09d}", "created_at": "{ts}", "customer": {{"id": '
                f'"cus-{cust:06d}", "name": "Customer {cust}", "email": '
                f'"customer{cust}@example.com", "country": "{rng.choice(_COUNTRIES)}"}}, '
                f'"items": {rng.randrange(1, 9)}, "amount": {rng.randrange(100, 99_999) / 100}, '
                f'"currency": "EUR", "status": "{rng.choice(_STATUSES)}", "tags": {tags}{extra}}}\n'
            )
            if len(lines) >= 10_000:
                fh.writelines(lines)
                lines.clear()
        fh.writelines(lines)
    return path.stat().st_size


def _settings(source: Path, sink: Any, progress: bool | None, secret: str) -> Settings:
    """The demo's run, through the same checks as ``asyncsync upload``; a clean environment
    so that the user's own ASYNCSYNC_* variables do not change the demo."""
    flags = {
        "source": str(source),
        "url": sink.ingest_url,
        "token_url": sink.token_url,
        "client_id": sink.config.client_id,
        "progress": progress,
        "max_attempts": "10",
    }
    return resolve(flags, {"ASYNCSYNC_CLIENT_SECRET": secret})


@dataclass(frozen=True, slots=True)
class _Check:
    ok: bool
    text: str


def _checks(
    demo: DemoPlan, summary: RunSummary, stats: dict[str, Any], dead: list[dict[str, Any]]
) -> list[_Check]:
    checks = [
        _Check(
            summary.records_read == demo.records
            and summary.records_sent + summary.records_failed == demo.records,
            f"every record delivered or dead-lettered: {demo.records:,} read = "
            f"{summary.records_sent:,} delivered + {summary.records_failed:,} dead-lettered",
        ),
        _Check(
            stats.get("records") == summary.records_sent,
            f"the server stored each delivered record once: {stats.get('records', 0):,} unique "
            f"records, {stats.get('duplicates', 0):,} retried batches deduplicated by key",
        ),
    ]
    dead_ids = [d["record"].get("id") for d in dead if isinstance(d.get("record"), dict)]
    want = {f"ord-{i:09d}" for i in demo.poisoned}
    checks.append(
        _Check(
            sorted(dead_ids) == sorted(want)
            and len(dead) == summary.records_failed == len(want)
            and all(d.get("status") == 400 for d in dead),
            f"exactly the {len(want)} rejected records are in the dead-letter file, each with "
            f"the server's 400 and its reason ({len(dead):,} entries; their batches were split "
            f"to isolate them in {summary.split_requests:,} requests)",
        )
    )
    # proactive refresh at 75% of a lifetime (skew is capped at 25% of it), plus the first
    lifetimes = summary.duration_s / (TOKEN_TTL * 0.75)
    bound = math.ceil(lifetimes) + 1
    concurrent = stats.get("max_concurrent_token_requests", 0)
    checks.append(
        _Check(
            1 <= summary.auth_requests <= bound
            and stats.get("token_requests") == summary.auth_requests
            and concurrent <= 1,
            f"one token per lifetime: {summary.auth_requests} token request(s) in "
            f"{summary.duration_s:.1f} s with {TOKEN_TTL:g} s tokens (at most {bound}), "
            f"never two at once",
        )
    )
    return checks


def _read_dead_letters(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


async def _run(demo: DemoPlan, source: Path, progress: bool | None, out: Console) -> int:
    from ..sink import Sink, SinkConfig

    config = SinkConfig(
        token_ttl=TOKEN_TTL,
        error_rate=ERROR_RATE,
        reset_rate=RESET_RATE,
        fault_phase="either",  # some faults after storing: the retry must be deduplicated
        throttle_every=demo.throttle_every,
        retry_after=RETRY_AFTER,
        reject_field=REJECT_FIELD,
        keep_records=False,
        seed=SEED,
    )
    async with Sink(config) as sink:
        settings = _settings(source, sink, progress, config.client_secret)
        out.print(
            f"server: {sink.url}  (tokens live {TOKEN_TTL:g} s; {ERROR_RATE:.0%} 5xx, "
            f"{RESET_RATE:.1%} resets, one 429 window of {RETRY_AFTER:g} s, "
            f"{len(demo.poisoned)} records it rejects)"
        )
        err = Console(stderr=True, highlight=False)

        def observe(token_requests: TokenCount) -> UploadHooks | None:
            if not progress_wanted(settings.progress):
                return None
            return ProgressDisplay(err, token_requests=token_requests)

        with logging_to_stderr(0, settings.secret_values()):
            try:
                run = await plan_run(settings)
                summary, error = await run_plan(run, observe=observe)
            finally:
                stats = sink.stats()
    if error is not None:
        raise error
    assert summary is not None
    if summary.interrupted:
        return EXIT_INTERRUPTED
    dead = _read_dead_letters(run.failed)
    out.print()
    print_table(out, "client (asyncsync)", summary_rows(summary, failed=run.failed))
    out.print()
    print_table(
        out,
        "server (reference sink)",
        [
            ("token requests it saw", f"{stats.get('token_requests', 0):,}"),
            ("most at the same time", f"{stats.get('max_concurrent_token_requests', 0):,}"),
            ("ingest requests", f"{stats.get('ingest_requests', 0):,}"),
            ("unique records stored", f"{stats.get('records', 0):,}"),
            ("duplicate batches", f"{stats.get('duplicates', 0):,}"),
            ("5xx injected", f"{stats.get('injected_errors', 0):,}"),
            ("connections reset", f"{stats.get('resets', 0):,}"),
            ("429s sent", f"{stats.get('throttled', 0):,}"),
            ("batches rejected (400)", f"{stats.get('rejected', 0):,}"),
        ],
    )
    if dead:
        first = dead[0]
        why = " ".join(str(first.get("error", "")).split())
        out.print(f"\ndead-letter file: {run.failed} ({len(dead):,} records); the first:")
        out.print(
            f"  line {first.get('line')}, status {first.get('status')}, "
            f"attempts {first.get('attempts')}: {why[:160]}",
            markup=False,
        )
    checks = _checks(demo, summary, stats, dead)
    out.print("\nchecks:")
    for check in checks:
        out.print(f"  {'ok  ' if check.ok else 'FAIL'}  {check.text}", markup=False)
    ok = all(c.ok for c in checks)
    out.print(f"\nresult: {'OK' if ok else 'UNEXPECTED (see FAIL above)'}")
    return EXIT_OK if ok else EXIT_FAILED


def run_demo(
    *, records: int = 100_000, progress: bool | None = None, directory: Path | None = None
) -> int:
    """The ``demo`` command; returns the exit status (errors propagate to ``main``)."""
    out = Console(highlight=False, soft_wrap=True)
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="asyncsync-demo-"))
    else:
        directory.mkdir(parents=True, exist_ok=True)
    source = directory / "export.jsonl"
    for stale in (source, Path(f"{source}.failed.jsonl")):
        stale.unlink(missing_ok=True)  # a rerun in the same --dir starts clean
    demo = plan(records)
    size = write_export(source, records, demo.poisoned)
    out.print(f"asyncsync demo\nexport: {source} ({records:,} records, {format_bytes(size)})")
    return asyncio.run(_run(demo, source, progress, out))
