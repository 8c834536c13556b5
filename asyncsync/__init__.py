"""asyncsync: push large record exports into authenticated HTTP APIs.

The public face is re-exported here; every concept lives in a private module.
"""

from __future__ import annotations

from ._config import DEFAULT_LIMITS, DEFAULT_RETRY, Action, BatchLimits, RetryPolicy
from ._exceptions import (
    AsyncSyncError,
    AuthError,
    CheckpointError,
    ConfigError,
    DeliveryError,
    Interrupted,
    SourceError,
)
from ._records import Batch, RecordBlock, Rejected

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_RETRY",
    "Action",
    "AsyncSyncError",
    "AuthError",
    "Batch",
    "BatchLimits",
    "CheckpointError",
    "ConfigError",
    "DeliveryError",
    "Interrupted",
    "RecordBlock",
    "Rejected",
    "RetryPolicy",
    "SourceError",
    "__version__",
]
