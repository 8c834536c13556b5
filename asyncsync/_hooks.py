"""Hooks: how progress displays and metrics exporters observe a run.

The pipeline calls these; it never imports a display. :class:`UploadHooks` is a Protocol whose
methods have no-op bodies: subclass it and override what you need (any object with the four
methods works too). Hooks run on the event loop: they must be quick and must not block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

from ._records import BatchResult
from ._summary import Counters, RunSummary

__all__ = ["NO_HOOKS", "RetryDetails", "UploadHooks"]


@dataclass(frozen=True, slots=True)
class RetryDetails:
    """One retry of one batch: why, which attempt comes next, and the wait before it."""

    batch_seq: int
    idempotency_key: str
    attempt: int  # the attempt about to be made (2 = first retry)
    reason: str  # "status 503", "ServerDisconnectedError", ...
    status: int | None
    wait_s: float


class UploadHooks(Protocol):
    """Observe a run: subclass and override any subset (the defaults do nothing).

    The bodies say ``return None``: an empty body would make mypy treat the method as
    abstract, and a subclass overriding only some of them could not be instantiated.
    """

    def on_start(self, counters: Counters, *, total_bytes: int | None) -> None:
        """The run starts; ``counters`` stays live until :meth:`on_finish`."""
        return None

    def on_retry(self, details: RetryDetails) -> None:
        """A batch will be sent again after ``details.wait_s`` seconds."""
        return None

    def on_batch_done(self, result: BatchResult) -> None:
        """A batch was acknowledged (``result.delivered``) or dead-lettered. Per batch: a
        hook that does not override this costs nothing."""
        return None

    def on_finish(self, summary: RunSummary) -> None:
        """The run is over (also after an error or interruption)."""
        return None


class _NoHooks(UploadHooks):
    """Every default: nothing observed."""


#: the hooks of a run given none
NO_HOOKS: Final[UploadHooks] = _NoHooks()
