"""Authentication: the token manager, the providers that fetch tokens, the shared stores.

:class:`TokenManager` hands every sender a valid token (one fetch per lifetime, single
flight); an :class:`AuthProvider` knows how to ask one endpoint for a token; a
:class:`TokenStore` shares one token between processes and hosts.
"""

from __future__ import annotations

from ._events import TokenEvent, TokenObserver, TokenRefreshStarted, TokenRequested
from ._file_store import FileTokenStore
from ._login import JsonLogin
from ._manager import MemoryTokenStore, Token, TokenManager, TokenStats, TokenStore
from ._oauth2 import OAuth2ClientCredentials
from ._protocol import AuthProvider, TokenResponse, TransientAuthError
from ._redis_store import RedisTokenStore
from ._simple import CallableProvider, StaticToken
from ._stores import open_token_store

__all__ = [
    "AuthProvider",
    "CallableProvider",
    "FileTokenStore",
    "JsonLogin",
    "MemoryTokenStore",
    "OAuth2ClientCredentials",
    "RedisTokenStore",
    "StaticToken",
    "Token",
    "TokenEvent",
    "TokenManager",
    "TokenObserver",
    "TokenRefreshStarted",
    "TokenRequested",
    "TokenResponse",
    "TokenStats",
    "TokenStore",
    "TransientAuthError",
    "open_token_store",
]
