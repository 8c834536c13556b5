"""Hooks: how progress displays and metrics exporters observe a run.

The pipeline calls these; it never imports a display or a metrics library. :class:`UploadHooks`
is a Protocol whose methods have no-op bodies: subclass it and override what you need (any
object with the methods it wants works too; a method it lacks is never called). Hooks run on
the event loop: they must be quick and must not block.

Every event is immutable: a frozen dataclass, or for the two made per request or per batch
that a metrics exporter wants (:class:`RequestDone`, :class:`QueueDepth`) a ``NamedTuple``,
which costs a third of a frozen dataclass to build (0.34 against 0.88 µs here). The one
exception is :class:`~asyncsync._records.BatchResult` (``on_batch_done``), the pipeline's
own record of a batch: slotted, read-only by convention. Between
them they carry everything a metrics system needs (StatsD, OpenTelemetry, Prometheus:
asyncsync imports none of them):

=====================  ==========================================  ===========================
method                 event                                       when
=====================  ==========================================  ===========================
``on_start``           the live :class:`Counters`                  the run starts
``on_run``             :class:`RunStarted`                         the run starts (job id,
                                                                   concurrency)
``on_request``         :class:`RequestDone`                        each request to the URL
                                                                   ended: status or "error",
                                                                   latency, bytes
``on_retry``           :class:`RetryDetails`                       a batch is re-sent (as the
                                                                   retry goes out)
``on_token``           :class:`TokenRequested` /                   a token request; a refresh
                       :class:`TokenRefreshStarted`                (proactive, 401, expired)
``on_in_flight``       :class:`InFlight`                           requests in flight changed
``on_queue``           :class:`QueueDepth`                         a batch was queued or taken
``on_checkpoint``      :class:`CheckpointSaved`                    a checkpoint was written
``on_batch_done``      :class:`BatchResult`                        a batch settled
``on_finish``          :class:`RunSummary`                         the run is over
=====================  ==========================================  ===========================

Cost: the per-request and per-batch calls (``on_request``, ``on_in_flight``, ``on_queue``,
``on_batch_done``) are made only when the hooks override them; :func:`overrides` is checked
once per run, so the default hooks build no event object at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol

from ._records import BatchResult
from ._summary import Counters, RunSummary
from .auth._events import TokenEvent, TokenRefreshStarted, TokenRequested

__all__ = [
    "NO_HOOKS",
    "CheckpointSaved",
    "HookGroup",
    "InFlight",
    "QueueDepth",
    "RequestDone",
    "RetryDetails",
    "RunStarted",
    "TokenEvent",
    "TokenRefreshStarted",
    "TokenRequested",
    "UploadHooks",
    "overrides",
]


@dataclass(frozen=True, slots=True)
class RetryDetails:
    """One retry of one batch: why, which attempt comes next, and the wait before it."""

    batch_seq: int
    idempotency_key: str
    attempt: int  # the attempt about to be made (2 = first retry)
    reason: str  # "status 503", "ServerDisconnectedError", ...
    status: int | None
    wait_s: float

    @property
    def label(self) -> str:
        """The retry's reason as a metric label: the status ("429", "503", "401"), or
        "error" for a connection error or timeout (as the summary's ``retries_by_status``)."""
        return "error" if self.status is None else str(self.status)


class RequestDone(NamedTuple):
    """One request to the upload URL ended (retries are requests too)."""

    batch_seq: int
    attempt: int
    status: int | None  # None: a connection error or timeout
    latency_s: float  # from sending to the answer (or the error)
    bytes_sent: int  # the request body's length

    @property
    def label(self) -> str:
        """The status as a metric label: "200", "429", ... or "error"."""
        return "error" if self.status is None else str(self.status)


@dataclass(frozen=True, slots=True)
class RunStarted:
    """The run starts: its job id (the Idempotency-Key prefix) and the concurrency limit."""

    job_id: str
    concurrency: int
    queue_size: int


@dataclass(frozen=True, slots=True)
class InFlight:
    """Requests in flight now (after a request was sent or ended)."""

    count: int


class QueueDepth(NamedTuple):
    """Batches waiting in the queue now (after the reader queued one or a worker took one)."""

    batches: int


@dataclass(frozen=True, slots=True)
class CheckpointSaved:
    """A checkpoint was written (``final`` for the save at the end of the run)."""

    saves: int  # checkpoints written so far in this run
    final: bool


class UploadHooks(Protocol):
    """Observe a run: subclass and override any subset (the defaults do nothing).

    The bodies say ``return None``: an empty body would make mypy treat the method as
    abstract, and a subclass overriding only some of them could not be instantiated.
    """

    def on_start(self, counters: Counters, *, total_bytes: int | None) -> None:
        """The run starts; ``counters`` stays live until :meth:`on_finish`."""
        return None

    def on_run(self, event: RunStarted) -> None:
        """The run starts (after :meth:`on_start`): job id and concurrency."""
        return None

    def on_request(self, event: RequestDone) -> None:
        """A request to the upload URL ended. Per request: keep it cheap."""
        return None

    def on_retry(self, details: RetryDetails) -> None:
        """A batch is being sent again, after a wait of ``details.wait_s`` seconds (a re-send
        after a 401 is a retry too, with no wait). Called as the retry goes out, where the
        summary counts it: these events add up to ``retries`` and ``retries_by_status`` (by
        ``details.label``); a retry that never went out (the run stopped in its wait, or no
        new token came) is neither counted nor told."""
        return None

    def on_token(self, event: TokenEvent) -> None:
        """A token request was made, or a refresh started (wired from the token manager's
        ``observer``)."""
        return None

    def on_in_flight(self, event: InFlight) -> None:
        """The number of requests in flight changed. Twice per request: keep it cheap."""
        return None

    def on_queue(self, event: QueueDepth) -> None:
        """The queue's depth changed. Twice per batch: keep it cheap."""
        return None

    def on_checkpoint(self, event: CheckpointSaved) -> None:
        """A checkpoint was written."""
        return None

    def on_batch_done(self, result: BatchResult) -> None:
        """A batch was acknowledged (``result.delivered``) or dead-lettered. Per batch."""
        return None

    def on_finish(self, summary: RunSummary) -> None:
        """The run is over (also after an error or interruption)."""
        return None


#: every method of :class:`UploadHooks`
HOOK_METHODS: Final = (
    "on_start",
    "on_run",
    "on_request",
    "on_retry",
    "on_token",
    "on_in_flight",
    "on_queue",
    "on_checkpoint",
    "on_batch_done",
    "on_finish",
)


def overrides(hooks: object, name: str) -> bool:
    """True when ``hooks`` implements ``name`` (the per-request paths call only those).

    A :class:`HookGroup` answers for its members; a structural hooks object without the
    method does not want it.
    """
    if isinstance(hooks, HookGroup):
        return name in hooks.wanted
    impl = getattr(type(hooks), name, None)
    return impl is not None and impl is not getattr(UploadHooks, name)


class HookGroup(UploadHooks):
    """Several hooks as one: each event goes to every member that implements it, in order."""

    def __init__(self, hooks: Iterable[UploadHooks | None]) -> None:
        self.members: tuple[UploadHooks, ...] = tuple(h for h in hooks if h is not None)
        #: the methods at least one member implements
        self.wanted = frozenset(
            m for m in HOOK_METHODS if any(overrides(h, m) for h in self.members)
        )
        self._by_method = {
            m: tuple(getattr(h, m) for h in self.members if overrides(h, m)) for m in HOOK_METHODS
        }

    def on_start(self, counters: Counters, *, total_bytes: int | None) -> None:
        for f in self._by_method["on_start"]:
            f(counters, total_bytes=total_bytes)

    def on_run(self, event: RunStarted) -> None:
        for f in self._by_method["on_run"]:
            f(event)

    def on_request(self, event: RequestDone) -> None:
        for f in self._by_method["on_request"]:
            f(event)

    def on_retry(self, details: RetryDetails) -> None:
        for f in self._by_method["on_retry"]:
            f(details)

    def on_token(self, event: TokenEvent) -> None:
        for f in self._by_method["on_token"]:
            f(event)

    def on_in_flight(self, event: InFlight) -> None:
        for f in self._by_method["on_in_flight"]:
            f(event)

    def on_queue(self, event: QueueDepth) -> None:
        for f in self._by_method["on_queue"]:
            f(event)

    def on_checkpoint(self, event: CheckpointSaved) -> None:
        for f in self._by_method["on_checkpoint"]:
            f(event)

    def on_batch_done(self, result: BatchResult) -> None:
        for f in self._by_method["on_batch_done"]:
            f(result)

    def on_finish(self, summary: RunSummary) -> None:
        for f in self._by_method["on_finish"]:
            f(summary)


class _NoHooks(UploadHooks):
    """Every default: nothing observed."""


#: the hooks of a run given none
NO_HOOKS: Final[UploadHooks] = _NoHooks()
