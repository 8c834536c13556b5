"""A :class:`~asyncsync._http.Transport` on ``pyreqwest`` (Rust ``reqwest``/``hyper``).

The HTTP work (connection pool, TLS, request writing, response parsing) runs on pyreqwest's
own Rust runtime thread, off the GIL, so on a machine with two cores the Python side keeps one
core for batching and bookkeeping. Installed by the ``fast`` extra; ``open_transport("auto")``
picks it when it imports.

The contract is the aiohttp transport's: POST bytes, never follow a redirect, read at most
``max_body`` bytes of the answer, and raise only asyncsync errors. pyreqwest's failures become
them in one function, :func:`map_reqwest_exception`, most specific match first::

    pyreqwest                                   asyncsync
    RequestTimeoutError (connect/read/write/    RequestTimeout     retryable
      pool/total)
    ConnectError "invalid peer certificate",    TLSError           no (names --ca-bundle)
      any TLS/certificate cause
    ConnectError "tcp connect error", DNS       ConnectError       retryable
    ConnectError "connection closed before      ConnectionReset    retryable
      message completed" (and other sends)
    ReadError, WriteError, NetworkError         ConnectionReset    retryable
    DecodeError, BodyDecodeError (a truncated   ProtocolError      retryable
      body, not HTTP at all), RedirectError,
      any other TransportError
    BuilderError / ValueError on the URL        InvalidURL         no

TLS settings: the transport takes the same ``ssl`` value as the aiohttp one. ``False``
(``--insecure``) accepts any certificate; an ``SSLContext`` with verification off does too;
an ``SSLContext`` that verifies contributes the CA certificates loaded into it
(``--ca-bundle``: ``create_default_context(cafile=...)``, or ``load_verify_locations``) as
extra roots. reqwest keeps its built-in roots beside them, and certificates in a ``capath``
directory or a client certificate in the context are not carried over.
"""

from __future__ import annotations

import ssl as ssl_module
from collections.abc import Iterator, Mapping
from datetime import timedelta
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final

from pyreqwest import exceptions as rq
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.response import Response as RqResponse
from pyreqwest.response import ResponseBodyReader

from ._exceptions import AsyncSyncError, ConfigError
from ._http import (
    DEFAULT_MAX_BODY,
    ConnectError,
    ConnectionReset,
    InvalidURL,
    ProtocolError,
    RequestTimeout,
    Response,
    TLSError,
    TransportError,
    display_url,
)
from ._redact import redact

__all__ = ["ReqwestTransport", "map_reqwest_exception"]

#: cause fragments that say a TLS handshake or certificate check failed (rustls and
#: native-tls wordings)
_TLS_WORDS: Final = (
    "certificate",
    "tls",
    "ssl",
    "handshake",
    "unknownissuer",
    "notvalidforname",
)
_CACHE_SIZE: Final = 32
_REASONS: Final = {s.value: s.phrase for s in HTTPStatus}


def _causes(exc: BaseException) -> list[str]:
    details = getattr(exc, "details", None)
    causes = details.get("causes") if isinstance(details, dict) else None
    if not causes:
        return []
    return [str(c.get("message", "")) for c in causes if isinstance(c, dict)]


def _last_cause(exc: BaseException) -> str:
    """The innermost cause ("Connection refused (os error 111)"): what a user can act on."""
    causes = _causes(exc)
    return causes[-1] if causes else (getattr(exc, "message", None) or type(exc).__name__)


def map_reqwest_exception(
    exc: BaseException, *, url: str | None = None, timeout: float | None = None
) -> TransportError | None:
    """The asyncsync error for a failure of pyreqwest; None if ``exc`` is not one. The one
    place pyreqwest's errors are classified (see the module docstring's table)."""
    if isinstance(exc, AsyncSyncError):  # our own (a ConfigError is a ValueError): not pyreqwest's
        return None
    where = display_url(url) if url is not None else "the server"
    if isinstance(exc, rq.RequestTimeoutError):  # before ConnectError: ConnectTimeout is both
        return RequestTimeout("timeout", url=url, timeout=timeout)
    if isinstance(exc, rq.NetworkError):
        causes = _causes(exc)
        lowered = " | ".join(causes).lower()
        # a certificate is never fixed by retrying: before the generic connect failure
        if any(word in lowered for word in _TLS_WORDS):
            return TLSError(
                f"TLS verification failed for {where}: {redact(_last_cause(exc))[:300]} "
                "(use --ca-bundle PATH for a private CA)",
                url=url,
            )
        if isinstance(exc, rq.ConnectError) and (
            "client error (connect)" in lowered or "dns error" in lowered
        ):
            return ConnectError(f"cannot connect: {redact(_last_cause(exc))[:200]}", url=url)
        if "connection closed before message completed" in lowered:
            return ConnectionReset("server disconnected", url=url)
        return ConnectionReset(f"connection error: {redact(_last_cause(exc))[:200]}", url=url)
    if isinstance(exc, rq.BuilderError | ValueError) and not isinstance(exc, rq.DecodeError):
        return InvalidURL(f"invalid URL {where!r}", url=url)
    if isinstance(exc, rq.BodyDecodeError):
        return ProtocolError("response payload error", url=url)
    if isinstance(exc, rq.DecodeError | rq.RedirectError | rq.TransportError):
        return ProtocolError(f"invalid response: {redact(_last_cause(exc))[:200]}", url=url)
    return None


#: what a request may raise that is a transport failure; anything else (ClientClosedError,
#: a panic) is a bug and propagates
_LOWER: Final = (rq.TransportError, rq.DecodeError, rq.RedirectError, rq.BuilderError, ValueError)


class _LazyHeaders(Mapping[str, str]):
    """The response's headers, made a Python ``HeaderMap`` only when first looked at: a 2xx
    is settled on its status alone, and most answers are never asked for a header."""

    __slots__ = ("_map", "_resp")

    def __init__(self, resp: RqResponse) -> None:
        self._resp = resp
        self._map: Mapping[str, str] | None = None

    def _headers(self) -> Mapping[str, str]:
        if self._map is None:
            self._map = self._resp.headers
        return self._map

    def __getitem__(self, key: str) -> str:
        return self._headers()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers())

    def __len__(self) -> int:
        return len(self._headers())

    def __contains__(self, key: object) -> bool:
        return key in self._headers()

    def get(self, key: str, default: Any = None) -> Any:
        return self._headers().get(key, default)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self._headers().items())!r})"


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


class ReqwestTransport:
    """A :class:`~asyncsync._http.Transport` on one pyreqwest ``Client`` (``connections``
    requests in flight at most, keep-alive, ``timeout`` seconds per exchange by default,
    ``connect_timeout`` seconds to connect)."""

    __slots__ = ("_client", "_closed", "_timeout", "_timeouts")

    def __init__(
        self,
        *,
        connections: int = 100,
        timeout: float | None = 60.0,
        connect_timeout: float | None = None,
        ssl: ssl_module.SSLContext | bool | None = None,
    ) -> None:
        if isinstance(connections, bool) or not isinstance(connections, int) or connections < 1:
            raise ConfigError(
                f"connections must be an int >= 1, got {connections!r}", field="connections"
            )
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout!r}", field="timeout")
        if connect_timeout is not None and not connect_timeout > 0:
            raise ConfigError(
                f"connect_timeout must be > 0 seconds, got {connect_timeout!r}",
                field="connect_timeout",
            )
        builder = (
            ClientBuilder()
            .max_connections(connections)
            .pool_max_idle_per_host(connections)
            .follow_redirects(False)  # never carry credentials to another origin
            .referer(False)
            .gzip(False)  # the body is returned as sent: no transparent decoding, as aiohttp
            .brotli(False)
            .zstd(False)
            .deflate(False)
        )
        if timeout is not None:
            builder = builder.timeout(_seconds(timeout))
        if connect_timeout is not None:
            builder = builder.connect_timeout(_seconds(connect_timeout))
        builder = _with_tls(builder, ssl)
        self._client: Client = builder.build()
        self._closed = False
        self._timeout = timeout
        self._timeouts: dict[float, timedelta] = {}

    def __repr__(self) -> str:
        return f"ReqwestTransport(timeout={self._timeout!r}, closed={self._closed})"

    @property
    def closed(self) -> bool:
        return self._closed

    async def post(
        self,
        url: str,
        *,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float | None = None,  # noqa: ASYNC109 - a per-request budget, by protocol
        max_body: int = DEFAULT_MAX_BODY,
    ) -> Response:
        if self._closed:
            raise RuntimeError("Cannot send a request, as the transport has been closed.")
        try:
            builder = self._client.post(url).headers(headers).body_bytes(body)
            # one byte over the bound: a body of exactly max_body bytes is still read whole
            # with the head, so that reading it needs no further round trip
            limit = max_body + 1 if max_body >= 0 else 1
            if timeout is not None and timeout != self._timeout:  # else the client's own
                builder = builder.timeout(self._request_timeout(timeout))
            # streamed: the first max_body bytes are buffered with the head (in one go, on
            # pyreqwest's thread), the rest is never read
            request = builder.streamed_read_buffer_limit(limit).build_streamed()
            resp = await request.__aenter__()
            try:
                declared = resp.get_header("content-length")
                if declared is not None and declared.isdigit() and int(declared) < limit:
                    # the common case, a short answer of declared length: hyper stopped at
                    # that length, so the whole body is already buffered with the head, and
                    # nothing is left to close (the connection is back in the pool)
                    # (the bytes come from that buffer)
                    data = b"" if declared == "0" else bytes(await resp.bytes())
                else:
                    data = await _read_bounded(resp.body_reader, max_body)
                    # drops the connection if a longer body is left unread
                    await request.__aexit__(None, None, None)
            except BaseException:
                await request.__aexit__(None, None, None)
                raise
            status = resp.status
            return Response(status, _LazyHeaders(resp), data, _REASONS.get(status, ""))
        except _LOWER as exc:
            mapped = map_reqwest_exception(
                exc, url=url, timeout=self._timeout if timeout is None else timeout
            )
            if mapped is None:  # pragma: no cover - every member of _LOWER maps
                raise
            raise mapped from exc

    def _request_timeout(self, seconds: float) -> timedelta:
        value = self._timeouts.get(seconds)
        if value is None:
            value = _seconds(seconds)
            if len(self._timeouts) < _CACHE_SIZE:
                self._timeouts[seconds] = value
        return value

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.close()

    async def __aenter__(self) -> ReqwestTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _read_bounded(reader: ResponseBodyReader, limit: int) -> bytes:
    """At most ``limit`` bytes of the body."""
    read = reader.read
    first = await read(limit)
    if first is None:
        return b""
    data = bytes(first)
    if len(data) >= limit:
        return data[:limit]
    chunks = [data]
    size = len(data)
    while size < limit:
        chunk = await read(limit - size)
        if chunk is None:
            break
        chunks.append(bytes(chunk))
        size += len(chunk)
    return b"".join(chunks)


def _with_tls(builder: ClientBuilder, ssl: ssl_module.SSLContext | bool | None) -> ClientBuilder:
    """The aiohttp transport's ``ssl`` value, said to reqwest (see the module docstring)."""
    if ssl is None or ssl is True:
        return builder
    if ssl is False:
        return builder.danger_accept_invalid_certs(True)
    if not isinstance(ssl, ssl_module.SSLContext):
        raise ConfigError(f"ssl must be an SSLContext, a bool or None, got {ssl!r}", field="ssl")
    if ssl.verify_mode == ssl_module.CERT_NONE:
        return builder.danger_accept_invalid_certs(True)
    for der in ssl.get_ca_certs(binary_form=True):
        builder = builder.add_root_certificate_der(bytes(der))
    return builder
