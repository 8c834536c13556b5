"""The errors asyncsync raises.

Every error is an :class:`AsyncSyncError`, so a caller can catch them all in one place::

    AsyncSyncError
    ├── ConfigError        a setting is invalid (names the field)          exit 2
    ├── SourceError        the input cannot be read (names file and line)  exit 2
    ├── AuthError          a token could not be obtained or is refused      exit 3
    ├── DeliveryError      records were dead-lettered: raised only on request,
    │                      by RunSummary.raise_for_failures()
    ├── CheckpointError    the checkpoint cannot be read, matched or written exit 2
    └── Interrupted        the run was stopped by a signal; resumable       exit 4

Messages never contain a token or a secret. ``DeliveryError`` and ``Interrupted`` carry the
run's :class:`RunSummary`, so they are defined beside it, in :mod:`asyncsync._summary` (this
module stays at the bottom of the import graph).
"""

from __future__ import annotations

__all__ = [
    "AsyncSyncError",
    "AuthError",
    "CheckpointError",
    "ConfigError",
    "SourceError",
]


class AsyncSyncError(Exception):
    """Base class of every error asyncsync raises on purpose."""


class ConfigError(AsyncSyncError, ValueError):
    """A setting is invalid; the message names the field and what is allowed."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SourceError(AsyncSyncError):
    """The input cannot be read at all (missing, unreadable, not a known format)."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


class AuthError(AsyncSyncError):
    """A token could not be obtained, or the API refused a freshly fetched one."""

    def __init__(
        self,
        message: str,
        *,
        endpoint: str | None = None,
        status: int | None = None,
        permanent: bool = True,
    ) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.status = status
        self.permanent = permanent


class CheckpointError(AsyncSyncError):
    """The checkpoint cannot be written, read, or does not match this job."""
