"""Hooks: how progress displays and metrics exporters observe a run.

The pipeline calls these; it never imports a display. Every method has a no-op default, so
a hook implements only what it needs. Hooks run on the event loop: they must be quick and
must not block.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._records import Batch
from ._summary import Counters, RunSummary

__all__ = ["RetryDetails", "UploadHooks"]


@dataclass(frozen=True, slots=True)
class RetryDetails:
    """One retry of one batch: why, which attempt comes next, and the wait before it."""

    batch_seq: int
    idempotency_key: str
    attempt: int  # the attempt about to be made (2 = first retry)
    reason: str  # "status 503", "ServerDisconnectedError", ...
    status: int | None
    wait_s: float


class UploadHooks:
    """Observe a run: subclass and override any subset (the defaults do nothing)."""

    def on_start(self, counters: Counters, *, total_bytes: int | None) -> None:
        """The run starts; ``counters`` stays live until :meth:`on_finish`."""

    def on_retry(self, details: RetryDetails) -> None:
        """A batch will be sent again after ``details.wait_s`` seconds."""

    def on_batch_done(self, batch: Batch, *, delivered: bool, status: int | None) -> None:
        """A batch was acknowledged (``delivered``) or dead-lettered."""

    def on_finish(self, summary: RunSummary) -> None:
        """The run is over (also after an error or interruption)."""
