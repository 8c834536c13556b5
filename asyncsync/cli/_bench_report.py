"""What ``asyncsync bench`` shows and writes: the live line per cell (stderr), the table
(stdout), ``bench.json``, ``bench.csv`` and ``bench.png`` (with matplotlib, the ``plot``
extra; without it a note says so and the picture is skipped)."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from .._atomic import atomic_write
from .._bench import CellResult, best_cell, cells_json
from ._exit import PROG

__all__ = ["CSV_FIELDS", "CellProgress", "plot", "print_table", "write_csv", "write_outputs"]

CSV_FIELDS = (
    "concurrency",
    "batch_size",
    "records_per_s",
    "requests_per_s",
    "mib_per_s",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "statuses",
    "errors",
    "retries",
    "duration_s",
    "records",
    "requests",
    "pushback_share",
    "stopped",
)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _statuses(cell: CellResult) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(cell.statuses.items())) or "-"


class CellProgress:
    """One line per cell on stderr: rewritten in place on a terminal (``live``), else printed
    once when the cell ends."""

    def __init__(self, console: Console, *, live: bool | None, quiet: bool, total: int) -> None:
        self.console = console
        self.quiet = quiet
        self.live = console.is_terminal if live is None else live
        self.total = total
        self.index = 0

    def _line(self, cell: CellResult, elapsed: float) -> str:
        lat = cell.latency_ms()
        return (
            f"[{self.index + 1}/{self.total}] concurrency {cell.label:>4} "
            f"batch {cell.batch_size:>5}  {elapsed:6.1f} s  {cell.records_per_s:>11,.0f} rec/s "
            f"{cell.requests_per_s:>9,.0f} req/s  p95 {_ms(lat['p95'])} ms  "
            f"{_statuses(cell)}  errors {cell.errors}  retries {cell.retries}"
        )

    def update(self, cell: CellResult, elapsed: float) -> None:
        if self.quiet or not self.live:
            return
        self.console.file.write("\r\x1b[2K" + self._line(cell, elapsed))
        self.console.file.flush()

    def done(self, cell: CellResult) -> None:
        if not self.quiet:
            line = self._line(cell, cell.duration_s)
            if cell.stopped not in ("duration", "requests"):
                line += f"  (stopped: {cell.stopped})"
            prefix = "\r\x1b[2K" if self.live else ""
            self.console.file.write(prefix + line + "\n")
            self.console.file.flush()
        self.index += 1


def print_table(console: Console, cells: Sequence[CellResult]) -> None:
    """The results, best cell marked ``*``."""
    best = best_cell(cells)
    table = Table(box=box.SIMPLE, pad_edge=False)
    for name in (
        "conc",
        "batch",
        "records/s",
        "requests/s",
        "MiB/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "statuses",
        "errors",
        "retries",
        "s",
        "",
    ):
        table.add_column(name, justify="left" if name in ("statuses", "") else "right")
    for c in cells:
        lat = c.latency_ms()
        note = (
            "* best" if c is best else ("" if c.stopped in ("duration", "requests") else c.stopped)
        )
        table.add_row(
            c.label,
            str(c.batch_size),
            f"{c.records_per_s:,.0f}",
            f"{c.requests_per_s:,.0f}",
            f"{c.mib_per_s:,.2f}",
            _ms(lat["p50"]),
            _ms(lat["p95"]),
            _ms(lat["p99"]),
            _ms(lat["max"]),
            _statuses(c),
            str(c.errors),
            str(c.retries),
            f"{c.duration_s:.2f}",
            note,
        )
    console.print(table)
    if best is None:
        console.print("no cell stayed under 1% push-back and errors: no best cell", markup=False)


def write_csv(cells: Sequence[CellResult]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for c in cells:
        d = c.to_dict()
        lat = d["latency_ms"]
        writer.writerow(
            [
                d["concurrency"],
                d["batch_size"],
                d["records_per_s"],
                d["requests_per_s"],
                d["mib_per_s"],
                *("" if lat[q] is None else lat[q] for q in ("p50", "p95", "p99", "max")),
                ";".join(f"{k}={v}" for k, v in d["statuses"].items()),
                d["errors"],
                d["retries"],
                d["duration_s"],
                d["records"],
                d["requests"],
                d["pushback_share"],
                d["stopped"],
            ]
        )
    return buf.getvalue().encode()


def plot(cells: Sequence[CellResult], path: Path, *, title: str = "") -> bool:
    """``bench.png``: records/s against concurrency (one line per batch size, log-2 x axis)
    and p95 latency beside it. False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ran = [c for c in cells if c.requests > 0]
    best = best_cell(cells)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for size in sorted({c.batch_size for c in ran}):
        line = sorted(
            (c for c in ran if c.batch_size == size), key=lambda c: c.effective_concurrency
        )
        xs = [c.effective_concurrency for c in line]
        left.plot(xs, [c.records_per_s for c in line], marker="o", label=f"batch {size}")
        p95 = [c.latency_ms()["p95"] for c in line]
        right.plot(
            xs, [float("nan") if v is None else v for v in p95], marker="o", label=f"batch {size}"
        )
        pushed = [c for c in line if c.pushback_share >= 0.01]
        if pushed:
            left.scatter(
                [c.effective_concurrency for c in pushed],
                [c.records_per_s for c in pushed],
                marker="x",
                color="red",
                zorder=3,
                s=60,
            )
    if best is not None:
        left.scatter(
            [best.effective_concurrency],
            [best.records_per_s],
            marker="*",
            s=260,
            color="gold",
            edgecolor="black",
            zorder=4,
            label=f"best: {best.label} x {best.batch_size}",
        )
    rates = [c.records_per_s for c in ran if c.records_per_s > 0]
    if rates and max(rates) / min(rates) > 30:
        # batch 1 and batch 200 differ a hundredfold: on a linear axis one line is flat
        left.set_yscale("log")
    for ax, ylabel in ((left, "records/s"), (right, "p95 latency (ms)")):
        ax.set_xscale("log", base=2)
        xs_all = sorted({c.effective_concurrency for c in ran})
        if xs_all:
            ax.set_xticks(xs_all, [str(x) for x in xs_all])
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_yscale() == "linear":
            ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    left.set_title("throughput (x: >= 1% push-back or errors)", fontsize=10)
    right.set_title("latency of attempts, p95", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(
    cells: Sequence[CellResult],
    directory: Path,
    meta: Mapping[str, Any],
    *,
    notes: Console | None = None,
) -> list[Path]:
    """``bench.json``, ``bench.csv`` and (with matplotlib) ``bench.png`` in ``directory``."""
    written = []
    path = directory / "bench.json"
    atomic_write(path, cells_json(cells, **meta))
    written.append(path)
    path = directory / "bench.csv"
    atomic_write(path, write_csv(cells))
    written.append(path)
    path = directory / "bench.png"
    title = f"asyncsync bench: {meta.get('url', '')}"
    if plot(cells, path, title=title):
        written.append(path)
    elif notes is not None:
        notes.print(
            f"{PROG}: note: matplotlib is not installed, so no bench.png "
            "(pip install 'asyncsync[plot]')",
            markup=False,
        )
    return written
