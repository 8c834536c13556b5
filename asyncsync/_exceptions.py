"""The errors asyncsync raises.

Every error is an :class:`AsyncSyncError`, so a caller can catch them all in one place::

    AsyncSyncError
    ├── ConfigError        a setting is invalid (names the field)          exit 2
    ├── SourceError        the input cannot be read (names file and line)  exit 2
    ├── AuthError          a token could not be obtained or is refused      exit 3
    ├── DeliveryError      a batch could not be delivered                   (dead-lettered)
    ├── CheckpointError    the checkpoint cannot be read, matched or written exit 2
    └── Interrupted        the run was stopped by a signal; resumable       exit 4

Messages never contain a token or a secret.
"""

from __future__ import annotations

__all__ = [
    "AsyncSyncError",
    "AuthError",
    "CheckpointError",
    "ConfigError",
    "DeliveryError",
    "Interrupted",
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


class DeliveryError(AsyncSyncError):
    """A batch could not be delivered: a permanent status or retries exhausted."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        attempts: int = 0,
        excerpt: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts
        self.excerpt = excerpt


class CheckpointError(AsyncSyncError):
    """The checkpoint cannot be written, read, or does not match this job."""


class Interrupted(AsyncSyncError):
    """The run was stopped by a signal after a clean drain; resume from the checkpoint."""
