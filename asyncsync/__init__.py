"""asyncsync: push large record exports into authenticated HTTP APIs.

The public face: every name a user needs, re-exported from the private module that holds
it. Internals (counters, record blocks, checkpoint state, the transport) stay private.
"""

from __future__ import annotations

from ._config import (
    Action,
    BatchLimits,
    BodyOptions,
    HttpOptions,
    RejectOptions,
    RetryPolicy,
    StateOptions,
)
from ._exceptions import (
    AsyncSyncError,
    AuthError,
    CheckpointError,
    ConfigError,
    SourceError,
)
from ._hooks import (
    CheckpointSaved,
    HookGroup,
    InFlight,
    QueueDepth,
    RequestDone,
    RetryDetails,
    RunStarted,
    TokenEvent,
    TokenRefreshStarted,
    TokenRequested,
    UploadHooks,
)
from ._records import BatchResult
from ._summary import DeliveryError, Interrupted, RunSummary
from ._uploader import Uploader, upload
from .auth._file_store import FileTokenStore
from .auth._login import JsonLogin
from .auth._manager import MemoryTokenStore, Token, TokenManager, TokenStore
from .auth._oauth2 import OAuth2ClientCredentials
from .auth._protocol import AuthProvider, TokenResponse, TransientAuthError
from .auth._redis_store import RedisTokenStore
from .auth._simple import CallableProvider, StaticToken
from .sources._csv import CsvSource
from .sources._jsonl import JsonlSource
from .sources._protocol import Source

__version__ = "0.1.0"

__all__ = [
    "Action",
    "AsyncSyncError",
    "AuthError",
    "AuthProvider",
    "BatchLimits",
    "BatchResult",
    "BodyOptions",
    "CallableProvider",
    "CheckpointError",
    "CheckpointSaved",
    "ConfigError",
    "CsvSource",
    "DeliveryError",
    "FileTokenStore",
    "HookGroup",
    "HttpOptions",
    "InFlight",
    "Interrupted",
    "JsonLogin",
    "JsonlSource",
    "MemoryTokenStore",
    "OAuth2ClientCredentials",
    "QueueDepth",
    "RedisTokenStore",
    "RejectOptions",
    "RequestDone",
    "RetryDetails",
    "RetryPolicy",
    "RunStarted",
    "RunSummary",
    "Source",
    "SourceError",
    "StateOptions",
    "StaticToken",
    "Token",
    "TokenEvent",
    "TokenManager",
    "TokenRefreshStarted",
    "TokenRequested",
    "TokenResponse",
    "TokenStore",
    "TransientAuthError",
    "UploadHooks",
    "Uploader",
    "__version__",
    "upload",
]
