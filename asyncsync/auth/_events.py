"""What the token manager tells an observer: each token request, each refresh started.

The manager stands alone (it knows nothing of uploads or metrics); whoever builds it may pass
``observer=``, a callable taking one of these frozen events. The uploader and the CLI wire it
to :meth:`asyncsync.UploadHooks.on_token`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["TokenEvent", "TokenObserver", "TokenRefreshStarted", "TokenRequested"]

#: why a token is being obtained: the first one, a refresh before expiry (in the advisory
#: window), after the API answered 401, or because the token had run out (mandatory window)
FetchReason = Literal["initial", "proactive", "401", "expired"]
RefreshReason = Literal["proactive", "401", "expired"]


@dataclass(frozen=True, slots=True)
class TokenRequested:
    """One HTTP request to the token endpoint (every attempt of a fetch counts)."""

    reason: FetchReason
    attempt: int  # 1 for the first request of this fetch


@dataclass(frozen=True, slots=True)
class TokenRefreshStarted:
    """A refresh of the current token started (the first fetch is not a refresh)."""

    reason: RefreshReason


TokenEvent = TokenRequested | TokenRefreshStarted
TokenObserver = Callable[[TokenEvent], None]
