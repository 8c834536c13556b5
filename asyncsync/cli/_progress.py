"""The progress display of ``asyncsync upload``: a hook that polls the live counters.

Why rich rather than tqdm: rich is already a dependency (the summary table uses it), it
renders several live figures on one line (records and bytes sent, records/s, ETA, retries,
token requests, dead-lettered) where tqdm is built around one counter, and its ``Live``
display redirects other writes to stderr (``-v`` log lines) above the bar instead of tearing
it. tqdm would be one more dependency for less.

The display never runs in the pipeline's path: the pipeline only bumps plain counters, and
this hook reads them about five times a second from a callback on the same event loop, so
there is no lock and no thread. It is used only when stderr is a terminal (or with
``--progress``), never with ``--no-progress`` or ``-q``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .._hooks import UploadHooks
from .._summary import Counters, RunSummary

__all__ = ["ProgressDisplay", "format_bytes", "progress_wanted"]

POLL_INTERVAL = 0.2  # seconds: ~5 updates a second
RATE_WINDOW = 3.0  # seconds of history behind the records/s figure


def progress_wanted(
    progress: bool | None,
    *,
    verbosity: int = 0,
    stream: TextIO | None = None,
    log_format: str = "text",
) -> bool:
    """--progress forces it, --no-progress and -q turn it off, else only on a terminal, and
    never by default with json logs (every stderr line is then a JSON object)."""
    if verbosity < 0:
        return False
    if progress is not None:
        return progress
    if log_format == "json":
        return False
    stream = sys.stderr if stream is None else stream
    return stream.isatty()


def format_bytes(n: float) -> str:
    """``1536`` → ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class ProgressDisplay(UploadHooks):
    """A one-line live display on ``console`` for the duration of one upload.

    ``token_requests`` reads the token manager's live request count when the counters only
    get it at the end of the run.
    """

    def __init__(
        self,
        console: Console,
        *,
        token_requests: Callable[[], int] | None = None,
        interval: float = POLL_INTERVAL,
        description: str = "upload",
    ) -> None:
        self._console = console
        self._token_requests = token_requests
        self._interval = interval
        self._description = description
        self._counters: Counters | None = None
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._samples: deque[tuple[float, int]] = deque()

    def on_start(self, counters: Counters, *, total_bytes: int | None) -> None:
        self._counters = counters
        columns = [
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
        ]
        if total_bytes:
            # ETA from input bytes read against the file's size
            columns += [TaskProgressColumn(), TimeRemainingColumn()]
        else:
            columns += [TimeElapsedColumn()]
        columns.append(TextColumn("{task.fields[line]}"))
        self._progress = Progress(
            *columns, console=self._console, auto_refresh=False, transient=False
        )
        self._task = self._progress.add_task(self._description, total=total_bytes or None, line="")
        self._progress.start()
        self._samples.clear()
        self._tick()

    def _line(self, c: Counters, *, rate: float | None = None) -> str:
        if rate is None:  # records/s over the last few seconds
            now = time.monotonic()
            self._samples.append((now, c.records_sent))
            while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW:
                self._samples.popleft()
            t0, r0 = self._samples[0]
            rate = (c.records_sent - r0) / (now - t0) if now > t0 else 0.0
        tokens = c.auth_requests
        if self._token_requests is not None:
            tokens = max(tokens, self._token_requests())
        parts = [
            f"{c.records_sent:,} records ({format_bytes(c.bytes_sent)}) sent",
            f"{rate:,.0f} rec/s",
            *([f"limit {c.concurrency_limit}"] if c.concurrency_auto else []),
            f"{c.retries:,} retries",
            f"{tokens:,} token requests",
        ]
        if c.records_failed:
            parts.append(f"[yellow]{c.records_failed:,} dead-lettered[/]")
        return " • ".join(parts)

    def _update(self, *, completed: float | None = None, rate: float | None = None) -> None:
        c = self._counters
        if self._progress is None or c is None or self._task is None:
            return
        self._progress.update(
            self._task,
            completed=c.bytes_read if completed is None else completed,
            line=self._line(c, rate=rate),
        )
        self._progress.refresh()

    def _tick(self) -> None:
        self._update()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on a loop (a caller driving hooks by hand): no polling
            return
        self._timer = loop.call_later(self._interval, self._tick)

    def on_finish(self, summary: RunSummary) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._progress is None:
            return
        # the last frame: a full bar for a finished run, the whole run's records/s
        total = self._progress.tasks[0].total
        finished = not summary.interrupted and summary.records_read > 0
        self._update(completed=total if total and finished else None, rate=summary.records_per_s)
        self._progress.stop()
        self._progress = None
