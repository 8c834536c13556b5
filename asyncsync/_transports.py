"""Choosing a transport by name: ``auto``, ``aiohttp`` or ``reqwest``.

Above both transport modules (``_http`` for aiohttp, ``_reqwest`` for pyreqwest), so neither
imports the other. ``auto`` is reqwest when pyreqwest imports (the ``fast`` extra), else
aiohttp, the plain install's default.
"""

from __future__ import annotations

import ssl as ssl_module
from functools import cache
from typing import Final

from ._exceptions import ConfigError
from ._http import AiohttpTransport, Transport, TransportError, map_aiohttp_exception

__all__ = [
    "TRANSPORTS",
    "map_transport_exception",
    "open_transport",
    "reqwest_available",
    "resolve_transport",
]

#: Transport names ``open_transport`` knows.
TRANSPORTS: Final = ("auto", "aiohttp", "reqwest")


@cache
def reqwest_available() -> bool:
    """Whether pyreqwest imports (checked once)."""
    try:
        from . import _reqwest  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_transport(kind: str) -> str:
    """The concrete transport ``kind`` names: ``auto`` becomes ``reqwest`` or ``aiohttp``.
    ``reqwest`` without pyreqwest installed is a ConfigError saying how to install it."""
    if kind not in TRANSPORTS:
        raise ConfigError(
            f"transport must be one of {', '.join(TRANSPORTS)}, got {kind!r}", field="transport"
        )
    if kind == "auto":
        return "reqwest" if reqwest_available() else "aiohttp"
    if kind == "reqwest" and not reqwest_available():
        raise ConfigError(
            "transport reqwest needs pyreqwest: pip install 'asyncsync[fast]'", field="transport"
        )
    return kind


def open_transport(
    kind: str = "auto",
    *,
    connections: int,
    timeout: float | None,
    ssl: ssl_module.SSLContext | bool | None = None,
) -> Transport:
    """A new transport of ``kind`` (see :func:`resolve_transport`); call it inside a running
    event loop, close it with ``aclose()``. ``ssl``: a context (``--ca-bundle``), False
    (``--insecure``) or None (the system's trust store)."""
    if resolve_transport(kind) == "reqwest":
        from ._reqwest import ReqwestTransport

        return ReqwestTransport(connections=connections, timeout=timeout, ssl=ssl)
    return AiohttpTransport(connections=connections, timeout=timeout, ssl=ssl)


def map_transport_exception(
    exc: BaseException, *, url: str | None = None, timeout: float | None = None
) -> TransportError | None:
    """The asyncsync error for a failure of either HTTP library (for code that calls a
    client of its own, such as a user's auth provider); None if ``exc`` is neither's."""
    mapped = map_aiohttp_exception(exc, url=url, timeout=timeout)
    if mapped is None and reqwest_available():
        from ._reqwest import map_reqwest_exception

        mapped = map_reqwest_exception(exc, url=url, timeout=timeout)
    return mapped
