"""Settings, as frozen keyword-only dataclasses with visible module-level defaults.

Every value is validated at construction; a bad one raises :class:`ConfigError` naming the
field. The CLI builds these from flags, environment and TOML; library users build them
directly.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

from ._exceptions import ConfigError

__all__ = [
    "DEFAULT_AUTH_RETRY_TIME",
    "DEFAULT_LIMITS",
    "DEFAULT_RETRY",
    "DEFAULT_STATUS_ACTIONS",
    "Action",
    "BatchLimits",
    "BodyFormat",
    "RetryPolicy",
]

BodyFormat = Literal["json", "ndjson"]

#: Seconds a token fetch keeps retrying transient failures (5xx, 429, timeouts, connection
#: errors) before the run fails with an AuthError (exit 3): rides out an auth outage of a
#: minute or two.
DEFAULT_AUTH_RETRY_TIME: Final = 120.0


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

    ``auth_retry_time`` is for the token endpoint, not for batches: the token manager an
    :class:`~asyncsync.Uploader` builds keeps retrying transient token-request failures
    (5xx, 408, 429, timeouts, connection errors) for this many seconds, with capped
    exponential backoff, before the run fails with an ``AuthError``. Bad credentials are not
    retried.
    """

    max_attempts: int = 8
    max_retry_time: float = 600.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 300.0
    auth_retry_time: float = DEFAULT_AUTH_RETRY_TIME
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
        _positive("auth_retry_time", self.auth_retry_time)
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


DEFAULT_RETRY = RetryPolicy()
DEFAULT_LIMITS = BatchLimits()
