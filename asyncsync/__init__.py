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
from ._hooks import RetryDetails, UploadHooks
from ._records import Batch, RecordBlock, Rejected
from ._summary import Counters, RunSummary
from ._uploader import Uploader, upload
from .auth._manager import MemoryTokenStore, Token, TokenManager, TokenStats, TokenStore
from .auth._providers import (
    AuthProvider,
    CallableProvider,
    JsonLogin,
    OAuth2ClientCredentials,
    StaticToken,
    TokenResponse,
)
from .checkpoint._checkpoint import CheckpointStore, Fingerprint, default_checkpoint_path
from .sources._files import CsvSource, IterableSource, JsonlSource, Source, StdinSource, open_source

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_RETRY",
    "Action",
    "AsyncSyncError",
    "AuthError",
    "AuthProvider",
    "Batch",
    "BatchLimits",
    "CallableProvider",
    "CheckpointError",
    "CheckpointStore",
    "ConfigError",
    "Counters",
    "CsvSource",
    "DeliveryError",
    "Fingerprint",
    "Interrupted",
    "IterableSource",
    "JsonLogin",
    "JsonlSource",
    "MemoryTokenStore",
    "OAuth2ClientCredentials",
    "RecordBlock",
    "Rejected",
    "RetryDetails",
    "RetryPolicy",
    "RunSummary",
    "Source",
    "SourceError",
    "StaticToken",
    "StdinSource",
    "Token",
    "TokenManager",
    "TokenResponse",
    "TokenStats",
    "TokenStore",
    "UploadHooks",
    "Uploader",
    "__version__",
    "default_checkpoint_path",
    "open_source",
    "upload",
]
