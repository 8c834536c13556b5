"""Settings, as frozen keyword-only dataclasses with visible module-level defaults.

Every value is validated at construction; a bad one raises :class:`ConfigError` naming the
field. The CLI builds these from flags, environment and TOML; library users build them
directly.
"""

from __future__ import annotations

import enum
import os
import ssl as ssl_module
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from ._exceptions import ConfigError

__all__ = [
    "DEFAULT_BODY",
    "DEFAULT_HTTP",
    "DEFAULT_LIMITS",
    "DEFAULT_REJECTS",
    "DEFAULT_RETRY",
    "DEFAULT_STATE",
    "DEFAULT_STATUS_ACTIONS",
    "Action",
    "BatchLimits",
    "BodyFormat",
    "BodyOptions",
    "HttpOptions",
    "RejectOptions",
    "RetryPolicy",
    "StateOptions",
]

BodyFormat = Literal["json", "ndjson"]


class Action(enum.Enum):
    """What the sender does with a response status."""

    ACK = "ack"  # delivered
    RETRY = "retry"  # transient: back off and send again (Retry-After honoured)
    SPLIT = "split"  # too large: split the batch in halves (413)
    REAUTH = "reauth"  # 401: invalidate the token used and resend once
    DEAD = "dead"  # permanent: every record of the batch goes to the dead-letter file


DEFAULT_STATUS_ACTIONS: Mapping[int, Action] = MappingProxyType(
    {
        401: Action.REAUTH,
        408: Action.RETRY,
        413: Action.SPLIT,
        425: Action.RETRY,
        429: Action.RETRY,
        500: Action.RETRY,
        502: Action.RETRY,
        503: Action.RETRY,
        504: Action.RETRY,
    }
)


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(
            f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}", field=name
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """When and how long to retry a batch.

    Backoff before attempt ``n`` (n >= 2) is full jitter:
    ``uniform(0, min(backoff_max, backoff_initial * 2 ** (n - 2)))``, or the server's
    ``Retry-After`` when it sent one (capped by ``retry_after_max``). A batch is given up
    after ``max_attempts`` sends or ``max_retry_time`` seconds since its first send,
    whichever comes first. ``statuses`` maps a status to an :class:`Action`; statuses not
    in it are ACK for 2xx and DEAD otherwise. Connection errors and timeouts are RETRY.

    Token-endpoint retries are not in this policy: the :class:`~asyncsync.TokenManager` owns
    its retry budget (``max_fetch_time``, 120 s by default; ``--auth-retry-time``).
    """

    max_attempts: int = 8
    max_retry_time: float = 600.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 300.0
    statuses: Mapping[int, Action] = field(default_factory=lambda: DEFAULT_STATUS_ACTIONS)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(
                f"max_attempts must be >= 1, got {self.max_attempts!r}", field="max_attempts"
            )
        _positive("max_retry_time", self.max_retry_time)
        _positive("backoff_initial", self.backoff_initial, allow_zero=True)
        _positive("backoff_max", self.backoff_max, allow_zero=True)
        _positive("retry_after_max", self.retry_after_max, allow_zero=True)
        for status, action in self.statuses.items():
            if not 100 <= status <= 599 or not isinstance(action, Action):
                raise ConfigError(
                    f"statuses: {status!r} -> {action!r} is not an HTTP status and an Action",
                    field="statuses",
                )

    def action_for(self, status: int) -> Action:
        action = self.statuses.get(status)
        if action is not None:
            return action
        return Action.ACK if 200 <= status < 300 else Action.DEAD


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchLimits:
    """Where the batcher cuts: record count, encoded bytes, and linger time.

    ``linger`` (seconds) only applies to slow streams (stdin, iterables): an open batch is
    sent at the latest ``linger`` seconds after its first record arrived, full or not. File
    sources cut by count and bytes only, so a resumed run re-forms exactly the same batches.
    """

    max_records: int = 200
    max_bytes: int = 5 * 1024 * 1024
    linger: float = 1.0

    def __post_init__(self) -> None:
        if self.max_records < 1:
            raise ConfigError(
                f"batch size must be >= 1, got {self.max_records!r}", field="batch_size"
            )
        if self.max_bytes < 16:
            raise ConfigError(
                f"max batch bytes must be >= 16, got {self.max_bytes!r}", field="max_batch_bytes"
            )
        _positive("linger", self.linger, allow_zero=True)


#: headers asyncsync sets itself, per request
_RESERVED_HEADERS = frozenset({"authorization", "idempotency-key", "content-length"})


@dataclass(frozen=True, slots=True, kw_only=True)
class BodyOptions:
    """What a request body looks like.

    ``format`` ``"json"`` sends a JSON array of the batch's records (or, with ``wrap``, an
    object ``{wrap: [...]}``); ``"ndjson"`` one record per line. ``gzip`` compresses it
    (``Content-Encoding: gzip``). ``headers`` are sent with every request; those asyncsync
    sets itself (``Authorization``, ``Idempotency-Key``, ``Content-Length``) are refused.
    """

    format: BodyFormat = "json"
    wrap: str | None = None
    gzip: bool = False
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.format not in ("json", "ndjson"):
            raise ConfigError(f"body must be json or ndjson, got {self.format!r}", field="body")
        if self.wrap is not None and self.format != "json":
            raise ConfigError("wrap only applies to --body json", field="wrap")
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            if not name or any(c in name for c in " :\r\n") or any(c in value for c in "\r\n"):
                raise ConfigError(f"invalid header {name!r}", field="header")
            if name.lower() in _RESERVED_HEADERS:
                raise ConfigError(f"header {name!r} is set by asyncsync itself", field="header")
            headers[name] = value
        object.__setattr__(self, "headers", MappingProxyType(headers))


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpOptions:
    """How requests are made: ``timeout`` (seconds, a whole request, token requests included
    up to 30 s), ``ssl`` (an ``SSLContext``, False to skip verification, None for the
    default), ``rate`` (requests per second at most, None for no limit) and the
    ``transport`` by name: ``"reqwest"`` (pyreqwest, the ``fast`` extra), ``"aiohttp"``, or
    ``"auto"`` (reqwest when pyreqwest is installed, else aiohttp)."""

    timeout: float = 60.0
    ssl: ssl_module.SSLContext | bool | None = None
    rate: float | None = None
    transport: str = "auto"

    def __post_init__(self) -> None:
        if self.transport not in ("auto", "aiohttp", "reqwest"):
            raise ConfigError(
                f"transport must be one of auto, aiohttp, reqwest, got {self.transport!r}",
                field="transport",
            )
        if not self.timeout > 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {self.timeout!r}", field="timeout")
        if self.rate is not None and not self.rate > 0:
            raise ConfigError(f"rate must be > 0 requests/s, got {self.rate!r}", field="rate")


@dataclass(frozen=True, slots=True, kw_only=True)
class StateOptions:
    """Where a run keeps its state.

    ``checkpoint``: the checkpoint file (None: no checkpoint, no resume). ``resume``: continue
    the job it holds (False: start over, deleting it). ``failed``: the dead-letter file (None:
    beside a file source, else ``./asyncsync-failed.jsonl``, see :mod:`asyncsync._paths`).
    ``job_id``: the Idempotency-Key prefix of a new job (None: a new uuid4); a job resumed
    from a checkpoint keeps the checkpoint's. A fixed one makes the keys of a re-run from
    scratch (a Dask task re-run on another worker) those of the first attempt.
    """

    checkpoint: Path | None = None
    failed: Path | None = None
    resume: bool = True
    job_id: str | None = None

    def __init__(
        self,
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        failed: str | os.PathLike[str] | None = None,
        resume: bool = True,
        job_id: str | None = None,
    ) -> None:
        if job_id is not None and not job_id:
            raise ConfigError("job_id must not be empty", field="job_id")
        object.__setattr__(self, "checkpoint", None if checkpoint is None else Path(checkpoint))
        object.__setattr__(self, "failed", None if failed is None else Path(failed))
        object.__setattr__(self, "resume", resume)
        object.__setattr__(self, "job_id", job_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectOptions:
    """What a rejection costs.

    ``on_reject``: ``"split"`` (default) halves a batch of more than one record answered 400
    or 422 until each rejected record stands alone, and dead-letters only those; ``"batch"``
    dead-letters the whole batch. ``max_split_requests``: a run-wide budget of requests for
    parts (None: no limit): the halves of a split on a rejection or a 413, probes, items sent
    again after per-record results, and every retry of a part; ``split_requests`` never
    exceeds it. What it cannot pay for is dead-lettered, saying so. ``results``: read a
    2xx/207 answer as one result per record: ``"elasticsearch"``, ``"salesforce"``, or a
    dotted path to the results array (``"."`` for a top-level array); None reads no results
    (any 2xx delivers the batch).
    """

    on_reject: Literal["split", "batch"] = "split"
    max_split_requests: int | None = None
    results: str | None = None

    def __post_init__(self) -> None:
        if self.on_reject not in ("split", "batch"):
            raise ConfigError(
                f"on_reject must be split or batch, got {self.on_reject!r}", field="on_reject"
            )
        if self.max_split_requests is not None and (
            isinstance(self.max_split_requests, bool)
            or not isinstance(self.max_split_requests, int)
            or self.max_split_requests < 0
        ):
            raise ConfigError(
                f"max_split_requests must be an integer >= 0, got {self.max_split_requests!r}",
                field="max_split_requests",
            )
        if self.results is not None:
            from ._results import results_reader

            try:
                results_reader(self.results)
            except ValueError as exc:
                raise ConfigError(f"results: {exc}", field="results") from None


DEFAULT_RETRY = RetryPolicy()
DEFAULT_REJECTS = RejectOptions()
DEFAULT_LIMITS = BatchLimits()
DEFAULT_BODY = BodyOptions()
DEFAULT_HTTP = HttpOptions()
DEFAULT_STATE = StateOptions()
