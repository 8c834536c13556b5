"""The end of a run: the human summary table on stderr and the ``--summary-json`` file."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from .._atomic import atomic_write
from .._exceptions import ConfigError
from .._summary import RunSummary
from ._exit import PROG
from ._progress import format_bytes

__all__ = ["print_table", "report", "summary_rows", "write_summary_json"]


def summary_rows(summary: RunSummary, *, failed: Path | None = None) -> list[tuple[str, str]]:
    """The human summary, as (label, value) rows."""
    retries = f"{summary.retries:,}"
    if summary.retries_by_status:
        by = sorted(summary.retries_by_status.items(), key=lambda kv: -kv[1])
        retries += " (" + ", ".join(f"{k}: {v:,}" for k, v in by) + ")"
    rows = [
        ("records read", f"{summary.records_read:,}"),
        ("records delivered", f"{summary.records_sent:,}"),
        ("records dead-lettered", f"{summary.records_failed:,}"),
        ("batches", f"{summary.batches:,}"),
        (
            "requests",
            f"{summary.requests:,}"
            + (f" ({summary.split_requests:,} for split parts)" if summary.split_requests else ""),
        ),
        ("retries", retries),
        ("token requests", f"{summary.auth_requests:,}"),
        ("duration", f"{summary.duration_s:,.2f} s"),
        (
            "throughput",
            f"{summary.records_per_s:,.0f} records/s"
            + (
                f", {format_bytes(summary.bytes_sent / summary.duration_s)}/s"
                if summary.duration_s > 0
                else ""
            ),
        ),
    ]
    if summary.latency_p50_ms is not None:
        rows.append(
            (
                "latency p50/p95/p99",
                f"{summary.latency_p50_ms:g} / {summary.latency_p95_ms:g} / "
                f"{summary.latency_p99_ms:g} ms",
            )
        )
    if summary.concurrency_timeline is not None:
        rows.append(
            (
                "concurrency (auto)",
                f"{summary.concurrency_final} at the end, {summary.concurrency_max_seen} at most",
            )
        )
    if summary.records_failed and failed is not None:
        rows.append(("dead-letter file", str(failed)))
    if summary.interrupted:
        rows.append(("status", "interrupted"))
    return rows


def print_table(console: Console, title: str, rows: Sequence[tuple[str, str]]) -> None:
    """A small two-column table: rich on a terminal, plain aligned text otherwise."""
    if console.is_terminal:
        table = Table(title=title, box=box.SIMPLE, show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column(justify="right")
        for label, value in rows:
            table.add_row(label, value)
        console.print(table)
        return
    width = max(len(label) for label, _ in rows)
    lines = [title] + [f"  {label:<{width}}  {value}" for label, value in rows]
    console.file.write("\n".join(lines) + "\n")
    console.file.flush()


def write_summary_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write atomically and durably: a reader never sees half a summary."""
    try:
        atomic_write(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"--summary-json: cannot write {path}: {exc.strerror}", field="summary_json"
        ) from None


def report(
    summary: RunSummary,
    console: Console,
    *,
    command: str,
    failed: Path | None,
    summary_json: Path | None,
    verbosity: int,
    extra: Mapping[str, Any] | None = None,
    log_format: str = "text",
) -> None:
    """The summary JSON (``summary.to_dict()`` plus ``extra``), then the table unless -q;
    with ``log_format="json"`` one ``summary`` event on stderr instead of the table."""
    data = {**summary.to_dict(), **(extra or {})}
    if summary_json is not None:
        write_summary_json(summary_json, data)
    if verbosity < 0:
        return
    if log_format == "json":
        from ._jsonlog import write_json_event

        if failed is not None and summary.records_failed:
            data["failed_file"] = str(failed)
        write_json_event(
            "INFO",
            "summary",
            f"{command} {'interrupted' if summary.interrupted else 'finished'}: "
            f"{summary.records_sent} of {summary.records_read} records delivered",
            {"command": command, **data},
        )
        return
    print_table(console, f"{PROG} {command}", summary_rows(summary, failed=failed))
