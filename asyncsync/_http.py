"""The transport seam: every HTTP exchange (ingest, token, revocation) goes through here.

A :class:`Transport` POSTs bytes and answers a :class:`Response` (status, headers, a body read
up to a bound); it never follows a redirect. Nothing above this module sees an aiohttp type:
a second transport (a Rust client, say) implements the same two methods.

Lower-layer failures become asyncsync errors in one function, :func:`map_aiohttp_exception`
(httpx's ``map_httpcore_exceptions``: the most specific match first, raised ``from`` the
original)::

    TransportError            a request got no usable response            retryable
    ├── ConnectError          no connection (refused, DNS, unreachable)   yes
    ├── RequestTimeout        no response within the timeout              yes
    ├── ConnectionReset       the connection dropped mid-exchange         yes
    ├── ProtocolError         the response could not be read              yes
    ├── TLSError              certificate or handshake refused (ConfigError, names --ca-bundle) no
    └── InvalidURL            the URL cannot be requested (ConfigError)   no

Messages are short and hold no secret: no query string, no userinfo, no body.

aiohttp (~0.12 s to import) is imported when an :class:`AiohttpTransport` is made, not with
this module: a run on the reqwest transport never loads it.
"""

from __future__ import annotations

import ssl as ssl_module
import sys
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol
from urllib.parse import urlsplit, urlunsplit

from ._exceptions import AsyncSyncError, ConfigError
from ._redact import redact

if TYPE_CHECKING:
    import aiohttp
    from yarl import URL

__all__ = [
    "DEFAULT_MAX_BODY",
    "AiohttpTransport",
    "ConnectError",
    "ConnectionReset",
    "InvalidURL",
    "ProtocolError",
    "RequestTimeout",
    "Response",
    "TLSError",
    "Transport",
    "TransportError",
    "display_url",
    "map_aiohttp_exception",
]

#: Bytes of a response body read unless the caller asks for another bound.
DEFAULT_MAX_BODY: Final = 64 * 1024


# --------------------------------------------------------------------------------------------
# Errors


class TransportError(AsyncSyncError):
    """A request got no usable response; ``retryable`` says whether trying again may help."""

    retryable: bool = True

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class ConnectError(TransportError):
    """No connection could be made (refused, name not resolved, network unreachable)."""


class RequestTimeout(TransportError):
    """No (complete) response within the timeout."""

    def __init__(
        self, message: str, *, url: str | None = None, timeout: float | None = None
    ) -> None:
        super().__init__(message, url=url)
        self.timeout = timeout


class ConnectionReset(TransportError):
    """The connection dropped during the exchange (reset, closed by the server)."""


class ProtocolError(TransportError):
    """The response could not be read (malformed, truncated body)."""


class TLSError(TransportError, ConfigError):
    """TLS verification or the handshake failed: a setting to fix, not a fault to retry."""

    retryable = False

    def __init__(self, message: str, *, url: str | None = None) -> None:
        ConfigError.__init__(self, message, field="url")
        self.url = url


class InvalidURL(TransportError, ConfigError):
    """The URL cannot be requested at all."""

    retryable = False

    def __init__(self, message: str, *, url: str | None = None) -> None:
        ConfigError.__init__(self, message, field="url")
        self.url = url


def display_url(url: str) -> str:
    """``url`` without userinfo, query or fragment: safe for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def map_aiohttp_exception(
    exc: BaseException, *, url: str | None = None, timeout: float | None = None
) -> TransportError | None:
    """The asyncsync error for a failure of aiohttp (or of the socket under it); None if
    ``exc`` is not one. The one place lower-layer errors are classified; order matters:
    aiohttp's classes inherit from each other and from ``OSError``/``TimeoutError``."""
    where = display_url(url) if url is not None else "the server"
    if "aiohttp" not in sys.modules:  # never imported (reqwest): ``exc`` is none of its errors
        if isinstance(exc, ssl_module.SSLError):
            return _tls_error(exc, where, url)
        if isinstance(exc, TimeoutError):
            return RequestTimeout("timeout", url=url, timeout=timeout)
        if isinstance(exc, OSError):
            return ConnectionReset(f"connection error: {_strerror(exc)}", url=url)
        return None
    import aiohttp

    # TLS first: ClientConnectorCertificateError is also a ClientConnectorError (and an
    # OSError); a certificate is never fixed by retrying.
    if isinstance(
        exc, aiohttp.ClientSSLError | aiohttp.ServerFingerprintMismatch | ssl_module.SSLError
    ) or (
        isinstance(exc, aiohttp.ClientConnectorError)
        and isinstance(exc.os_error, ssl_module.SSLError)
    ):
        return _tls_error(getattr(exc, "os_error", None) or exc, where, url)
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return InvalidURL(f"invalid URL {where!r}", url=url)
    # before ClientConnectorError and OSError: ConnectionTimeoutError is both a
    # ServerTimeoutError and an OSError; asyncio.TimeoutError is TimeoutError since 3.11
    if isinstance(exc, TimeoutError):
        return RequestTimeout("timeout", url=url, timeout=timeout)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectError(f"cannot connect: {_strerror(exc.os_error)}", url=url)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ConnectionReset("server disconnected", url=url)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ProtocolError("response payload error", url=url)
    if isinstance(exc, aiohttp.ClientResponseError):
        # no raise_for_status and no redirects followed: what is left is a malformed response
        return ProtocolError(f"invalid response: {type(exc).__name__}", url=url)
    if isinstance(exc, OSError):  # ClientOSError, ClientConnectionResetError, a raw socket error
        return ConnectionReset(f"connection error: {_strerror(exc)}", url=url)
    if isinstance(exc, aiohttp.ClientConnectionError):
        return ConnectionReset(f"connection error: {type(exc).__name__}", url=url)
    if isinstance(exc, aiohttp.ClientError):
        return ProtocolError(redact(f"{type(exc).__name__}: {exc}")[:200], url=url)
    return None


def _tls_error(detail: BaseException, where: str, url: str | None) -> TLSError:
    return TLSError(
        f"TLS verification failed for {where}: {redact(str(detail))[:300]} "
        "(use --ca-bundle PATH for a private CA)",
        url=url,
    )


# --------------------------------------------------------------------------------------------
# The seam


class Response(NamedTuple):
    """One answer: status, headers (case-insensitive lookup), at most ``max_body`` bytes.

    A named tuple, not a frozen dataclass: immutable all the same, and made in a third of
    the time (one per request)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    reason: str = ""


class Transport(Protocol):
    """POST bytes, get a :class:`Response`; never follows redirects. Errors: TransportError."""

    async def post(
        self,
        url: str,
        *,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float | None = None,  # noqa: ASYNC109 - a per-request budget, by protocol
        max_body: int = DEFAULT_MAX_BODY,
    ) -> Response:
        """Send ``body``; the status, headers and the first ``max_body`` bytes of the answer.

        ``timeout``: seconds for the whole exchange (None: the transport's own). A longer
        body is not read (the connection is then closed rather than reused).
        """
        ...

    async def aclose(self) -> None:
        """Close every connection. Idempotent."""
        ...


#: URLs parsed once: a run posts to one or three URLs, thousands of times
_URL_CACHE_SIZE: Final = 32


class AiohttpTransport:
    """A :class:`Transport` on one ``aiohttp.ClientSession`` (``connections`` keep-alive
    connections at most, ``timeout`` seconds per exchange by default)."""

    __slots__ = ("_lower", "_session", "_timeout", "_timeouts", "_urls")

    def __init__(
        self,
        *,
        connections: int = 100,
        timeout: float | None = 60.0,
        ssl: ssl_module.SSLContext | bool | None = None,
    ) -> None:
        if isinstance(connections, bool) or not isinstance(connections, int) or connections < 1:
            raise ConfigError(
                f"connections must be an int >= 1, got {connections!r}", field="connections"
            )
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout!r}", field="timeout")
        import aiohttp  # here, not at module level: see the module's docstring

        #: lower-layer exceptions a request may raise; anything else is a bug and propagates
        self._lower: tuple[type[BaseException], ...] = (
            aiohttp.ClientError,
            OSError,
            TimeoutError,
            ValueError,
        )
        connector = aiohttp.TCPConnector(
            limit=connections,
            ssl=ssl if ssl is not None else True,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=timeout),
            raise_for_status=False,
        )
        self._timeout = timeout
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._urls: dict[str, URL] = {}

    def __repr__(self) -> str:
        return f"AiohttpTransport(timeout={self._timeout!r}, closed={self.closed})"

    @property
    def closed(self) -> bool:
        return self._session.closed

    async def post(
        self,
        url: str,
        *,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float | None = None,  # noqa: ASYNC109 - a per-request budget, by protocol
        max_body: int = DEFAULT_MAX_BODY,
    ) -> Response:
        target = self._urls.get(url)
        if target is None:
            target = self._parse(url)
        try:
            if timeout is None:  # the session's timeout: cheaper than a per-request one
                request = self._session.post(
                    target, data=body, headers=headers, allow_redirects=False
                )
            else:
                request = self._session.post(
                    target,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=self._client_timeout(timeout),
                )
            async with request as resp:
                length = resp.content_length
                if length == 0:  # an empty answer (a bare 200/202/204): nothing to read
                    data = b""
                elif length is not None and length <= max_body:
                    data = await resp.read()  # the common case: one read, connection reused
                else:
                    data = await _read_bounded(resp, max_body)
                return Response(resp.status, resp.headers, data, resp.reason or "")
        except self._lower as exc:
            mapped = map_aiohttp_exception(
                exc, url=url, timeout=self._timeout if timeout is None else timeout
            )
            if mapped is None:  # pragma: no cover - every member of _lower maps
                raise
            raise mapped from exc

    def _parse(self, url: str) -> URL:
        from yarl import URL  # once per URL: the result is cached

        try:
            target = URL(url)
        except (ValueError, TypeError) as exc:
            raise InvalidURL(f"invalid URL {display_url(url)!r}", url=url) from exc
        if len(self._urls) < _URL_CACHE_SIZE:
            self._urls[url] = target
        return target

    def _client_timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            import aiohttp

            timeout = aiohttp.ClientTimeout(total=seconds)
            if len(self._timeouts) < _URL_CACHE_SIZE:
                self._timeouts[seconds] = timeout
        return timeout

    async def aclose(self) -> None:
        if not self._session.closed:
            await self._session.close()

    async def __aenter__(self) -> AiohttpTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of the body; the rest is left unread (the connection closes)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await resp.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
