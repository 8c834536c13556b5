"""The transport seam: every aiohttp failure maps to one asyncsync error; bounded, no redirects.

Exceptions are raised two ways: aioresponses makes the session raise each aiohttp exception
class a request can raise (so the mapping is checked class by class), and real loopback
servers produce the failures as they happen on the wire (a refused port, a reset mid-body,
a timeout, a redirect, an oversized body, a certificate from an unknown CA).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.client_reqrep import ConnectionKey
from aioresponses import aioresponses
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from asyncsync import AsyncSyncError, ConfigError
from asyncsync._http import (
    AiohttpTransport,
    ConnectError,
    ConnectionReset,
    InvalidURL,
    ProtocolError,
    RequestTimeout,
    Response,
    TLSError,
    TransportError,
    display_url,
    map_aiohttp_exception,
)
from asyncsync._transports import open_transport

URL_ = "http://api.example/ingest"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _key() -> ConnectionKey:
    return ConnectionKey("api.example", 443, True, True, None, None, None, None)


def _request_info() -> aiohttp.RequestInfo:
    return aiohttp.RequestInfo(URL(URL_), "POST", CIMultiDictProxy(CIMultiDict()), URL(URL_))


def _refused() -> OSError:
    return ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed")


# Every aiohttp exception class a POST can raise (and the plain ones that leak past it), with
# the asyncsync error it must become and a fragment of the message.
CASES: list[tuple[str, Callable[[], BaseException], type[TransportError], str]] = [
    ("ClientConnectorError", lambda: aiohttp.ClientConnectorError(_key(), _refused()),
     ConnectError, "cannot connect: Connect call failed"),
    ("ClientConnectorDNSError", lambda: aiohttp.ClientConnectorDNSError(
        _key(), socket.gaierror(-2, "Name or service not known")),
     ConnectError, "cannot connect: Name or service not known"),
    ("ClientProxyConnectionError", lambda: aiohttp.ClientProxyConnectionError(_key(), _refused()),
     ConnectError, "cannot connect"),
    ("ClientConnectorCertificateError", lambda: aiohttp.ClientConnectorCertificateError(
        _key(), ssl.SSLCertVerificationError(1, "certificate verify failed")),
     TLSError, "--ca-bundle"),
    ("ClientConnectorSSLError", lambda: aiohttp.ClientConnectorSSLError(
        _key(), ssl.SSLError(1, "wrong version number")),
     TLSError, "TLS verification failed"),
    ("ClientSSLError", lambda: aiohttp.ClientSSLError(_key(), ssl.SSLError(1, "handshake")),
     TLSError, "--ca-bundle"),
    ("ClientConnectorError(SSLError)", lambda: aiohttp.ClientConnectorError(
        _key(), ssl.SSLError(1, "bad handshake")),
     TLSError, "--ca-bundle"),
    ("ServerFingerprintMismatch", lambda: aiohttp.ServerFingerprintMismatch(
        b"a", b"b", "api.example", 443),
     TLSError, "--ca-bundle"),
    ("ssl.SSLError", lambda: ssl.SSLError(1, "tlsv1 alert"), TLSError, "--ca-bundle"),
    ("ServerDisconnectedError", lambda: aiohttp.ServerDisconnectedError(),
     ConnectionReset, "server disconnected"),
    ("ClientOSError", lambda: aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer"),
     ConnectionReset, "connection error: Connection reset by peer"),
    ("ClientConnectionResetError", lambda: aiohttp.ClientConnectionResetError(
        "Cannot write to closing transport"),
     ConnectionReset, "connection error"),
    ("ServerConnectionError", lambda: aiohttp.ServerConnectionError("closed"),
     ConnectionReset, "connection error: ServerConnectionError"),
    ("ClientConnectionError", lambda: aiohttp.ClientConnectionError("closed"),
     ConnectionReset, "connection error: ClientConnectionError"),
    ("ClientPayloadError", lambda: aiohttp.ClientPayloadError("Response payload is not completed"),
     ProtocolError, "response payload error"),
    ("ServerTimeoutError", lambda: aiohttp.ServerTimeoutError("Timeout on reading data"),
     RequestTimeout, "timeout"),
    ("ConnectionTimeoutError", lambda: aiohttp.ConnectionTimeoutError("Connection timeout"),
     RequestTimeout, "timeout"),
    ("SocketTimeoutError", lambda: aiohttp.SocketTimeoutError("Timeout on reading data"),
     RequestTimeout, "timeout"),
    ("asyncio.TimeoutError", lambda: TimeoutError(), RequestTimeout, "timeout"),
    ("TooManyRedirects", lambda: aiohttp.TooManyRedirects(_request_info(), ()),
     ProtocolError, "invalid response: TooManyRedirects"),
    ("ClientResponseError", lambda: aiohttp.ClientResponseError(
        _request_info(), (), status=400, message="Invalid header"),
     ProtocolError, "invalid response: ClientResponseError"),
    ("ContentTypeError", lambda: aiohttp.ContentTypeError(_request_info(), ()),
     ProtocolError, "invalid response"),
    ("ClientHttpProxyError", lambda: aiohttp.ClientHttpProxyError(_request_info(), (), status=407),
     ProtocolError, "invalid response"),
    ("InvalidURL", lambda: aiohttp.InvalidURL("http://"), InvalidURL, "invalid URL"),
    ("InvalidUrlClientError", lambda: aiohttp.InvalidUrlClientError("http://[x"),
     InvalidURL, "invalid URL"),
    ("InvalidUrlRedirectClientError", lambda: aiohttp.InvalidUrlRedirectClientError("http://"),
     InvalidURL, "invalid URL"),
    ("NonHttpUrlClientError", lambda: aiohttp.NonHttpUrlClientError("ftp://x"),
     InvalidURL, "invalid URL"),
    ("NonHttpUrlRedirectClientError", lambda: aiohttp.NonHttpUrlRedirectClientError("ftp://x"),
     InvalidURL, "invalid URL"),
    ("RedirectClientError", lambda: aiohttp.RedirectClientError("redirect"),
     ProtocolError, "RedirectClientError"),
    ("UploadAbortedError", lambda: aiohttp.UploadAbortedError("aborted"),
     ProtocolError, "UploadAbortedError"),
    ("ClientError", lambda: aiohttp.ClientError("something"), ProtocolError, "ClientError"),
    ("ConnectionResetError", lambda: ConnectionResetError(errno.ECONNRESET, "Connection reset"),
     ConnectionReset, "connection error: Connection reset"),
    ("BrokenPipeError", lambda: BrokenPipeError(errno.EPIPE, "Broken pipe"),
     ConnectionReset, "connection error: Broken pipe"),
    ("OSError", lambda: OSError(errno.ENETUNREACH, "Network is unreachable"),
     ConnectionReset, "Network is unreachable"),
]  # fmt: skip


def test_every_client_error_class_of_aiohttp_is_listed() -> None:
    """The table covers every exception class aiohttp exports (new ones must be added)."""
    exported = {
        name
        for name in dir(aiohttp)
        if isinstance(getattr(aiohttp, name), type)
        and issubclass(getattr(aiohttp, name), aiohttp.ClientError)
    }
    # a websocket handshake is never part of a POST
    listed = {name for name, *_ in CASES} | {"WSServerHandshakeError"}
    assert exported <= listed, sorted(exported - listed)


@pytest.mark.parametrize(
    ("make", "expected", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_mapping_of_each_exception(
    make: Callable[[], BaseException], expected: type[TransportError], fragment: str
) -> None:
    """Most specific match first: each class becomes the intended asyncsync error."""
    error = map_aiohttp_exception(make(), url=URL_ + "?key=hush", timeout=5)
    assert type(error) is expected
    assert isinstance(error, AsyncSyncError)
    assert fragment in str(error)
    assert "hush" not in str(error)  # never the query string
    assert error.retryable is (expected not in (TLSError, InvalidURL))
    if expected in (TLSError, InvalidURL):
        assert isinstance(error, ConfigError) and error.field == "url"


def test_mapping_leaves_other_exceptions_alone() -> None:
    """A bug (KeyError, a plain ValueError) is not a transport error: None."""
    assert map_aiohttp_exception(KeyError("x")) is None
    assert map_aiohttp_exception(ValueError("x")) is None
    assert map_aiohttp_exception(RuntimeError("Session is closed")) is None


@pytest.mark.parametrize(
    ("make", "expected", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_transport_raises_the_mapped_error(
    make: Callable[[], BaseException], expected: type[TransportError], fragment: str
) -> None:
    """Raised by the session (aioresponses): the transport raises the mapped error from it."""
    raised = make()
    async with AiohttpTransport(connections=2, timeout=5) as transport:
        with aioresponses() as mocked:
            mocked.post(URL_, exception=raised)
            with pytest.raises(expected) as info:
                await transport.post(URL_, body=b"[]", headers={})
    assert info.value.__cause__ is raised
    assert fragment in str(info.value)


# -- a real loopback server --------------------------------------------------------------------


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}/ingest"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def raw() -> AsyncIterator[Callable[[Callable[..., Awaitable[None]]], Awaitable[str]]]:
    """A raw TCP server whose handler writes whatever bytes it likes; at the end every
    connection it accepted is closed and every handler has returned."""
    servers: list[asyncio.Server] = []
    handlers: set[asyncio.Task[None]] = set()

    async def start(handler: Callable[..., Awaitable[None]]) -> str:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                await handler(reader, writer)
            except asyncio.CancelledError:
                pass
            finally:
                writer.transport.abort()
                handlers.discard(task)

        server = await asyncio.start_server(run, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/ingest"

    yield start
    for server in servers:
        server.close()
    for task in list(handlers):
        task.cancel()
    while handlers:
        await asyncio.sleep(0)
    for server in servers:
        await server.wait_closed()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def kind_transport(
    kind: str,
    *,
    timeout: float,  # noqa: ASYNC109 - the transport's setting
    ssl: Any = None,
) -> AsyncIterator[Any]:
    """A transport of ``kind`` (the parametrized fixture's), closed afterwards."""
    transport = open_transport(kind, connections=2, timeout=timeout, ssl=ssl)
    try:
        yield transport
    finally:
        await transport.aclose()


async def test_loopback_refused_port_is_a_connect_error(transport_kind: str) -> None:
    """Nothing listening: ConnectError, retryable, naming why."""
    async with kind_transport(transport_kind, timeout=5) as transport:
        with pytest.raises(ConnectError, match="cannot connect") as info:
            await transport.post(f"http://127.0.0.1:{_free_port()}/x", body=b"", headers={})
    assert info.value.retryable
    assert info.value.__cause__ is not None  # the library's own error, chained


async def test_loopback_reset_mid_body_is_a_protocol_error(raw: Any, transport_kind: str) -> None:
    """Headers promise 1000 bytes, 10 arrive, the connection drops: not a response."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
        await writer.drain()
        writer.transport.abort()

    url = await raw(handler)
    async with kind_transport(transport_kind, timeout=5) as transport:
        with pytest.raises((ProtocolError, ConnectionReset)) as info:
            await transport.post(url, body=b"[]", headers={})
    assert info.value.retryable


async def test_loopback_close_before_answer_is_a_connection_reset(
    raw: Any, transport_kind: str
) -> None:
    """The server reads the request and hangs up: ConnectionReset (server disconnected)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    url = await raw(handler)
    async with kind_transport(transport_kind, timeout=5) as transport:
        with pytest.raises(ConnectionReset, match="server disconnected"):
            await transport.post(url, body=b"[]", headers={})


async def test_loopback_garbage_response_is_a_protocol_error(raw: Any, transport_kind: str) -> None:
    """Not HTTP at all: ProtocolError, retryable."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        writer.close()

    url = await raw(handler)
    async with kind_transport(transport_kind, timeout=5) as transport:
        with pytest.raises(TransportError) as info:
            await transport.post(url, body=b"[]", headers={})
    assert isinstance(info.value, ProtocolError | ConnectionReset) and info.value.retryable


async def test_loopback_timeout_per_request_and_default(raw: Any, transport_kind: str) -> None:
    """A server that never answers: RequestTimeout after the per-request or the default bound."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(30)

    url = await raw(handler)
    async with kind_transport(transport_kind, timeout=0.2) as transport:
        with pytest.raises(RequestTimeout) as info:
            await transport.post(url, body=b"[]", headers={})
        assert info.value.timeout == 0.2
        with pytest.raises(RequestTimeout) as info:
            await transport.post(url, body=b"[]", headers={}, timeout=0.1)
        assert info.value.timeout == 0.1 and info.value.retryable


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_loopback_redirect_is_not_followed(
    serve: Any, transport_kind: str, status: int
) -> None:
    """A redirect comes back as a response; the target (which would get the credentials) is
    never requested, whatever the status."""
    hits = 0

    async def other(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return web.Response()

    other_url = await serve(other)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": other_url})

    url = await serve(handler)
    async with kind_transport(transport_kind, timeout=5) as transport:
        response = await transport.post(
            url, body=b"[]", headers={"Authorization": "Bearer do-not-forward"}
        )
    assert response.status == status and response.headers["location"] == other_url
    assert hits == 0


@pytest.mark.parametrize("declare", [True, False], ids=["content-length", "chunked"])
async def test_loopback_body_read_is_bounded(
    serve: Any, declare: bool, transport_kind: str
) -> None:
    """A 4 MiB answer: max_body bytes are read, no more, whether or not a length is declared."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200)
        if declare:
            resp.content_length = 4 << 20
        await resp.prepare(request)
        for _ in range(64):
            await resp.write(b"x" * (64 << 10))
        return resp

    url = await serve(handler)
    async with kind_transport(transport_kind, timeout=5) as transport:
        response = await transport.post(url, body=b"[]", headers={}, max_body=1000)
        assert response.body == b"x" * 1000
        small = await transport.post(url, body=b"[]", headers={}, max_body=8 << 20)
        assert len(small.body) == 4 << 20


async def test_loopback_request_carries_body_and_headers(serve: Any, transport_kind: str) -> None:
    """Bytes in, headers as given; status, reason, case-insensitive headers, whole body out."""
    seen: list[tuple[bytes, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((await request.read(), request.headers["Idempotency-Key"]))
        return web.json_response({"ok": True}, status=429, headers={"Retry-After": "7"})

    url = await serve(handler)
    transport = open_transport(transport_kind, connections=2, timeout=5)
    try:
        response = await transport.post(url, body=b'[{"a":1}]', headers={"Idempotency-Key": "k"})
    finally:
        await transport.aclose()
    assert seen == [(b'[{"a":1}]', "k")]
    assert isinstance(response, Response)
    assert response.status == 429 and response.body == b'{"ok": true}'
    assert response.reason == "Too Many Requests"
    assert response.headers["retry-after"] == "7" and response.headers.get("RETRY-AFTER") == "7"


async def test_loopback_unknown_ca_is_a_tls_error(tmp_path: Any, transport_kind: str) -> None:
    """A certificate from a private CA without --ca-bundle: TLSError, a ConfigError, no retry;
    with the CA trusted the same request succeeds."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/ingest", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}/ingest"
    try:
        async with kind_transport(transport_kind, timeout=5) as transport:
            with pytest.raises(TLSError, match="--ca-bundle") as info:
                await transport.post(url, body=b"", headers={})
        assert isinstance(info.value, ConfigError) and not info.value.retryable
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        async with kind_transport(transport_kind, timeout=5, ssl=client_ctx) as transport:
            assert (await transport.post(url, body=b"", headers={})).body == b"ok"
        # --ca-bundle PATH: the context the CLI builds from a PEM file
        pem = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(pem))
        bundle = ssl.create_default_context(cafile=str(pem))
        async with kind_transport(transport_kind, timeout=5, ssl=bundle) as transport:
            assert (await transport.post(url, body=b"", headers={})).body == b"ok"
        # --insecure: no verification at all
        async with kind_transport(transport_kind, timeout=5, ssl=False) as transport:
            assert (await transport.post(url, body=b"", headers={})).body == b"ok"
    finally:
        await runner.cleanup()


async def test_invalid_url_is_refused_before_any_request(transport_kind: str) -> None:
    """A URL that cannot be requested: InvalidURL, a ConfigError naming the field."""
    async with kind_transport(transport_kind, timeout=5) as transport:
        for url in ("http://", "not a url", "ftp://example.org/x"):
            with pytest.raises(InvalidURL) as info:
                await transport.post(url, body=b"", headers={})
            assert info.value.field == "url"


async def test_loopback_connect_timeout(transport_kind: str) -> None:
    """A listener whose accept queue is full: the SYN goes unanswered, the connect hangs and
    ends as RequestTimeout (retryable) within the request's timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(4):  # fill the (backlog + 1) queue; never accepted
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        async with kind_transport(transport_kind, timeout=0.3) as transport:
            with pytest.raises(RequestTimeout) as info:
                await transport.post(f"http://127.0.0.1:{port}/x", body=b"[]", headers={})
        assert info.value.retryable and info.value.timeout == 0.3
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_open_transport_kinds_and_settings() -> None:
    """open_transport knows auto, aiohttp and reqwest; another kind or a bad setting is a
    ConfigError."""
    from asyncsync._reqwest import ReqwestTransport
    from asyncsync._transports import resolve_transport

    transport = open_transport("aiohttp", connections=3, timeout=10)
    assert isinstance(transport, AiohttpTransport) and not transport.closed
    await transport.aclose()
    await transport.aclose()  # idempotent
    assert transport.closed
    for kind in ("reqwest", "auto"):  # pyreqwest is installed here: auto picks it
        transport = open_transport(kind, connections=3, timeout=10)
        assert isinstance(transport, ReqwestTransport) and not transport.closed
        await transport.aclose()
        await transport.aclose()
        assert transport.closed
        with pytest.raises(RuntimeError, match="closed"):
            await transport.post("http://127.0.0.1:1/x", body=b"", headers={})
    assert resolve_transport("auto") == "reqwest"
    with pytest.raises(ConfigError, match="transport must be one of") as info:
        open_transport("carrier-pigeon", connections=1, timeout=1)
    assert info.value.field == "transport"
    with pytest.raises(ConfigError) as info:
        open_transport(connections=0, timeout=1)
    assert info.value.field == "connections"
    with pytest.raises(ConfigError) as info:
        open_transport(connections=1, timeout=0)
    assert info.value.field == "timeout"


def test_display_url_drops_credentials_query_and_fragment() -> None:
    """What error messages show of a URL."""
    assert display_url("https://u:p@h.example:8443/a/b?token=x#f") == "https://h.example:8443/a/b"
    assert display_url("http://[::1]:80/x") == "http://[::1]:80/x"
    assert display_url("http://h:bad/x") == "http://h/x"


# -- the pyreqwest mapping, class by class ------------------------------------------------------


def _rq(cls_name: str, *causes: str) -> BaseException:
    from pyreqwest import exceptions as rq

    cls = getattr(rq, cls_name)
    return cls("message", {"causes": [{"message": c} for c in causes]})


RQ_CASES: list[tuple[str, Callable[[], BaseException], type[TransportError], str]] = [
    ("refused", lambda: _rq("ConnectError", "error sending request", "client error (Connect)",
     "tcp connect error", "Connection refused (os error 111)"),
     ConnectError, "cannot connect: Connection refused"),
    ("dns", lambda: _rq("ConnectError", "client error (Connect)", "dns error",
     "failed to lookup address information"), ConnectError, "cannot connect"),
    ("unknown issuer", lambda: _rq("ConnectError", "client error (Connect)",
     "invalid peer certificate: UnknownIssuer"), TLSError, "--ca-bundle"),
    ("handshake", lambda: _rq("ConnectError", "client error (Connect)",
     "received fatal alert: HandshakeFailure"), TLSError, "--ca-bundle"),
    ("closed before answer", lambda: _rq("ConnectError", "client error (SendRequest)",
     "connection closed before message completed"), ConnectionReset, "server disconnected"),
    ("read error", lambda: _rq("ReadError", "connection reset by peer"),
     ConnectionReset, "connection error: connection reset by peer"),
    ("write error", lambda: _rq("WriteError", "broken pipe"), ConnectionReset, "broken pipe"),
    ("network error", lambda: _rq("NetworkError"), ConnectionReset, "connection error"),
    ("connect timeout", lambda: _rq("ConnectTimeoutError", "operation timed out"),
     RequestTimeout, "timeout"),
    ("read timeout", lambda: _rq("ReadTimeoutError"), RequestTimeout, "timeout"),
    ("write timeout", lambda: _rq("WriteTimeoutError"), RequestTimeout, "timeout"),
    ("pool timeout", lambda: _rq("PoolTimeoutError"), RequestTimeout, "timeout"),
    ("request timeout", lambda: _rq("RequestTimeoutError"), RequestTimeout, "timeout"),
    ("truncated body", lambda: _rq("BodyDecodeError", "end of file before message length reached"),
     ProtocolError, "response payload error"),
    ("not http", lambda: _rq("DecodeError", "invalid HTTP version parsed"),
     ProtocolError, "invalid response: invalid HTTP version parsed"),
    ("redirect", lambda: _rq("RedirectError"), ProtocolError, "invalid response"),
    ("transport", lambda: _rq("TransportError", "something"), ProtocolError, "something"),
    ("builder", lambda: _rq("BuilderError", "URL scheme is not allowed"),
     InvalidURL, "invalid URL"),
    ("url value", lambda: ValueError("empty host"), InvalidURL, "invalid URL"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "expected", "fragment"), [c[1:] for c in RQ_CASES], ids=[c[0] for c in RQ_CASES]
)
def test_reqwest_mapping_of_each_exception(
    make: Callable[[], BaseException], expected: type[TransportError], fragment: str
) -> None:
    """pyreqwest's errors become the same asyncsync errors as aiohttp's."""
    from asyncsync._reqwest import map_reqwest_exception

    error = map_reqwest_exception(make(), url=URL_ + "?key=hush", timeout=5)
    assert type(error) is expected
    assert fragment in str(error) and "hush" not in str(error)
    assert error.retryable is (expected not in (TLSError, InvalidURL))


def test_reqwest_mapping_leaves_other_exceptions_alone() -> None:
    """A bug, a closed client or a panic is not a transport error: None."""
    from asyncsync._reqwest import map_reqwest_exception

    assert map_reqwest_exception(KeyError("x")) is None
    assert map_reqwest_exception(_rq("ClientClosedError")) is None
    assert map_reqwest_exception(_rq("RequestPanicError")) is None


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001], ids=lambda n: f"{n}B")
async def test_loopback_declared_body_near_the_bound_and_keep_alive(
    serve: Any, size: int, transport_kind: str
) -> None:
    """Answers of declared length up to the bound are read whole (empty ones without a read,
    short ones with the head), one byte more is cut at the bound; either way the next
    requests still get their answers, and answers within the bound leave the connection
    in the pool (eight sequential requests, one connection)."""
    peers: list[Any] = []

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        return web.Response(status=200, body=b"y" * size)

    url = await serve(handler)
    async with kind_transport(transport_kind, timeout=5) as transport:
        for _ in range(8):
            response = await transport.post(url, body=b"[]", headers={}, max_body=1000)
            assert response.status == 200
            assert response.body == b"y" * min(size, 1000)
            assert response.headers["content-length"] == str(size)
    assert len(peers) == 8
    if size <= 1000:
        assert len(set(peers)) == 1
