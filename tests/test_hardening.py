"""Hardening (issue 7): secrets, TLS, redirects, hostile input and hostile servers.

Everything runs on loopback: the reference sink, or tiny aiohttp / raw asyncio servers written
here to misbehave (echo credentials, redirect, stream 1 GB, never answer). CLI cases run the
real ``asyncsync`` command in a subprocess while this event loop serves; the cases the CLI
tests (tests/test_cli.py) and the unit tests already cover are not repeated here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
import trustme
from aiohttp import web
from cli_helpers import Run, clean_env, run_cli

from asyncsync import (
    AuthError,
    BatchLimits,
    ConfigError,
    HttpOptions,
    JsonLogin,
    OAuth2ClientCredentials,
    RetryPolicy,
    StateOptions,
    StaticToken,
    TokenManager,
    Uploader,
)
from asyncsync.sink import STATE, Sink, SinkConfig

REPO = Path(__file__).resolve().parent.parent

CLIENT_ID = "hx-client"
# secrets with characters that need escaping somewhere (form encoding, JSON, base64)
CLIENT_SECRET = "hx-s3cr3t+/=&%é-client"
USERNAME = "etl"
PASSWORD = 'hx-pa"ss\\w0rd-login'
ALL_SECRETS = (CLIENT_SECRET, PASSWORD)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    # split on "\n" only: str.splitlines() also splits on U+2028, U+0085... inside strings
    return [json.loads(line) for line in path.read_text().split("\n") if line.strip()]


def sink_config(**kwargs: Any) -> SinkConfig:
    kwargs.setdefault("seed", 1)
    return SinkConfig(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, users={USERNAME: PASSWORD}, **kwargs
    )


def oauth_args(token_url: str, url: str) -> list[str]:
    return ["--url", url, "--token-url", token_url, "--client-id", CLIENT_ID]


def secret_env(**extra: str) -> dict[str, str]:
    return clean_env(ASYNCSYNC_CLIENT_SECRET=CLIENT_SECRET, **extra)


def write_records(path: Path, n: int, *, poison: tuple[int, ...] = ()) -> Path:
    lines = []
    for i in range(1, n + 1):
        extra = ', "poison": true' if i in poison else ""
        lines.append(f'{{"id": {i}, "name": "record {i}"{extra}}}')
    path.write_text("\n".join(lines) + "\n")
    return path


# --- tiny servers ------------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as a test server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeApi:
    """An aiohttp server on 127.0.0.1 that records every request, then runs a route."""

    base: str
    seen: list[Seen] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base + path

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


@contextlib.asynccontextmanager
async def serve(
    routes: dict[str, Handler], *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[FakeApi]:
    """Serve ``routes`` (path -> handler, any method); 404 elsewhere. Bodies are recorded."""
    server: FakeApi | None = None

    async def dispatch(request: web.Request) -> web.StreamResponse:
        assert server is not None
        body = await request.read() if request.can_read_body else b""
        server.seen.append(Seen(request.method, request.path, dict(request.headers), body))
        handler = routes.get(request.path)
        if handler is None:
            return web.Response(status=404)
        return await handler(request)

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = runner.addresses[0][1]
        scheme = "https" if ssl_context is not None else "http"
        server = FakeApi(f"{scheme}://127.0.0.1:{port}")
        yield server
    finally:
        await runner.cleanup()


def token_handler() -> Handler:
    """A token endpoint issuing a new token (valid for an hour) to anyone who asks."""
    counter = iter(range(1, 1_000_000))

    async def handler(request: web.Request) -> web.StreamResponse:
        token = f"hx-issued-token-{next(counter):04d}-ZmFrZQ"
        return web.json_response({"access_token": token, "expires_in": 3600})

    return handler


async def ok_handler(request: web.Request) -> web.StreamResponse:
    return web.json_response({"accepted": True})


@pytest.fixture
async def capture() -> AsyncIterator[FakeApi]:
    """An ingest endpoint that stores every body as received and answers 200."""
    async with serve({"/ingest": ok_handler}) as server:
        yield server


# =============================================================================================
# Secrets
# =============================================================================================


@pytest.mark.slow
@pytest.mark.parametrize("case", ["oauth2-post", "login", "bearer"])
async def test_no_secret_or_token_in_any_output_of_a_verbose_run(tmp_path: Path, case: str) -> None:
    """A full CLI run with retries, token refreshes and a dead-lettered batch, at -v / -vv:
    no client secret, password, static token or issued token in stdout, stderr, the summary
    JSON, the dead-letter file or the checkpoint. (OAuth2 client_secret_basic at -v and -vv
    is in test_cli; this adds client_secret_post, the JSON login, the static bearer token,
    and the checkpoint file.)"""
    source = write_records(tmp_path / "export.jsonl", 600, poison=(7,))
    summary, dead, ckpt = tmp_path / "summary.json", tmp_path / "dead.jsonl", tmp_path / "ck"
    faults: dict[str, Any] = {"error_rate": 0.1, "reject_field": "poison", "latency": 0.01}
    if case != "bearer":
        faults["revoke_all_after"] = 6  # a 401 mid-run: one reactive refresh
    async with Sink(sink_config(**faults)) as sink:
        static = sink.issue_token(None)
        if case == "oauth2-post":
            auth = [*oauth_args(sink.token_url, sink.ingest_url), "--client-auth", "post", "-vv"]
            env = secret_env()
        elif case == "login":
            auth = ["--url", sink.ingest_url, "--auth", "login", "--token-url", sink.login_url,
                    "-v"]  # fmt: skip
            env = clean_env(ASYNCSYNC_USERNAME=USERNAME, ASYNCSYNC_PASSWORD=PASSWORD)
        else:
            auth = ["--url", sink.ingest_url, "--auth", "bearer", "-vv"]
            env = clean_env(ASYNCSYNC_TOKEN=static)
        result = await run_cli(
            "upload", str(source), *auth, "--batch-size", "20", "--concurrency", "4",
            "--summary-json", str(summary), "--failed", str(dead), "--checkpoint", str(ckpt),
            cwd=tmp_path, env=env,
        )  # fmt: skip
        state = sink.app[STATE]
        tokens = {static} | set(state.tokens) | set(state.revoked_tokens)
        stats = sink.stats()
    assert result.code == 1, result.err
    assert stats["injected_errors"] > 0 and "retry" in result.err
    if case != "bearer":
        assert stats["token_requests"] >= 2, "expected a refresh after the revocation"
    assert len(read_jsonl(dead)) == 1  # the poisoned record, split out of its batch
    basic = base64.b64encode(f"{CLIENT_ID}:{quote_plus(CLIENT_SECRET)}".encode()).decode()
    forbidden = {
        *ALL_SECRETS,
        quote_plus(CLIENT_SECRET),  # as it goes in the form
        json.dumps(PASSWORD)[1:-1],  # as it goes in the login body
        basic,
        *tokens,
    }
    outputs = {
        "stdout": result.out,
        "stderr": result.err,
        "summary": summary.read_text(),
        "dead-letter": dead.read_text(),
        "checkpoint": ckpt.read_text(),
    }
    for name, text in outputs.items():
        leaked = [s for s in forbidden if s in text]
        assert not leaked, f"{len(leaked)} secret(s) or token(s) in {name}"


@pytest.mark.slow
async def test_ingest_server_echoing_the_authorization_header_is_redacted(
    tmp_path: Path,
) -> None:
    """A hostile API puts the request's Authorization header (and the bare token) in its error
    bodies, 5xx then 400: the dead-letter excerpts, the -vv retry log lines and the summary
    hold neither; the reason is still there."""
    source = write_records(tmp_path / "export.jsonl", 30)
    dead = tmp_path / "dead.jsonl"
    calls = 0

    async def echo(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        header = request.headers.get("Authorization", "")
        token = header.partition(" ")[2]
        body = (
            f"rejected. you sent Authorization: {header}\n"
            f'{{"your_token": "{token}", "raw": {token!r}, "header": "{header}"}} {token}'
        )
        return web.Response(status=503 if calls % 2 else 400, text=body)

    async with (
        Sink(sink_config()) as sink,
        serve({"/ingest": echo}) as api,
    ):
        result = await run_cli(
            "upload", str(source), *oauth_args(sink.token_url, api.url("/ingest")),
            "--batch-size", "10", "--concurrency", "1", "--max-attempts", "3", "-vv",
            "--failed", str(dead), cwd=tmp_path, env=secret_env(),
        )  # fmt: skip
        issued = set(sink.app[STATE].tokens)
    assert result.code == 1, result.err
    entries = read_jsonl(dead)
    assert len(entries) == 30
    assert all(e["status"] == 400 and "rejected" in e["error"] for e in entries)
    assert "***" in entries[0]["error"]
    assert issued
    for text in (dead.read_text(), result.err, result.out):
        for secret in (*issued, CLIENT_SECRET):
            assert secret not in text


@pytest.mark.slow
@pytest.mark.parametrize("client_auth", ["basic", "post", "login"])
async def test_token_endpoint_echoing_the_credentials_is_redacted(
    tmp_path: Path, client_auth: str
) -> None:
    """A token endpoint refusing the client with the credentials it received, as it received
    them (a Basic credential, a form, a JSON body), quoted and bare: exit 3, and neither the
    error nor the -vv logs show a secret in any of those encodings."""
    source = write_records(tmp_path / "export.jsonl", 5)

    async def refuse(request: web.Request) -> web.StreamResponse:
        body = (await request.read()).decode()
        auth = request.headers.get("Authorization", "")
        if client_auth == "login":  # a body of its own, with the secret in no "secret" key
            password = json.loads(body)["password"]  # JSON-escaped again on the way out
            return web.json_response({"message": f"{password} is wrong: {body}"}, status=401)
        echo = f"{auth} {auth.partition(' ')[2]} {body} {quote_plus(CLIENT_SECRET)}"
        return web.json_response(
            {"error": "invalid_client", "error_description": f"unknown client: {echo}"},
            status=401,
        )

    async with serve({"/token": refuse, "/ingest": ok_handler}) as api:
        if client_auth == "login":
            args = ["--url", api.url("/ingest"), "--auth", "login", "--token-url",
                    api.url("/token")]  # fmt: skip
            env = clean_env(ASYNCSYNC_USERNAME=USERNAME, ASYNCSYNC_PASSWORD=PASSWORD)
        else:
            args = [*oauth_args(api.url("/token"), api.url("/ingest")), "--client-auth",
                    client_auth]  # fmt: skip
            env = secret_env()
        result = await run_cli("upload", str(source), *args, "-vv", cwd=tmp_path, env=env)
    assert result.code == 3, result.err
    assert "AuthError" in result.err and "HTTP 401" in result.err
    assert api.paths() == ["/token"]
    basic = base64.b64encode(f"{CLIENT_ID}:{quote_plus(CLIENT_SECRET)}".encode()).decode()
    forbidden = (*ALL_SECRETS, quote_plus(CLIENT_SECRET), basic, json.dumps(PASSWORD)[1:-1])
    for secret in forbidden:
        assert secret not in result.err + result.out


async def test_reprs_and_error_texts_hold_no_secret(tmp_path: Path) -> None:
    """The library's objects and errors, with a live token and real failures: no secret."""
    texts: list[str] = []
    async with Sink(sink_config()) as sink:
        provider = OAuth2ClientCredentials(sink.token_url, CLIENT_ID, CLIENT_SECRET)
        async with Uploader(sink.ingest_url, auth=provider, concurrency=2) as up:
            summary = await up.upload([{"id": 1}])
            assert summary.records_sent == 1
            assert up.tokens is not None and up.tokens.current is not None
            texts += [repr(up), str(up), repr(up.tokens), repr(up.tokens.current), repr(summary)]
        bad = OAuth2ClientCredentials(sink.token_url, CLIENT_ID, CLIENT_SECRET + "-wrong")
        async with Uploader(sink.ingest_url, auth=bad) as up:
            with pytest.raises(AuthError) as info:
                await up.upload([{"id": 1}])
            texts += [str(info.value), repr(info.value), repr(up.tokens)]
        login = JsonLogin(
            sink.login_url,
            env={"ASYNCSYNC_USERNAME": USERNAME, "ASYNCSYNC_PASSWORD": PASSWORD + "-wrong"},
        )
        async with TokenManager(login) as manager:
            with pytest.raises(AuthError) as info:
                await manager.get()
            texts += [str(info.value), repr(info.value), repr(manager), repr(login)]
        issued = set(sink.app[STATE].tokens)
    with pytest.raises(ConfigError) as bad_token:
        StaticToken(CLIENT_SECRET + " with a space")
    texts += [str(bad_token.value), repr(StaticToken("hx-static-token-value"))]
    everything = "\n".join(texts)
    for secret in (*ALL_SECRETS, "hx-static-token-value", *issued):
        assert secret not in everything


# =============================================================================================
# TLS
# =============================================================================================


@dataclass
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext
    ca_pem: Path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A private CA (trustme) and a certificate for 127.0.0.1 it signed."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    pem = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    return Tls(server, client, pem)


@pytest.mark.slow
async def test_tls_default_verification_fails_fast_naming_ca_bundle(
    tmp_path: Path, tls: Tls, transport_kind: str
) -> None:
    """Certificates of a private CA, no --ca-bundle: exit 3 (issue 13), one clear line naming
    --ca-bundle, after one token request (a certificate is not a transient error)."""
    source = write_records(tmp_path / "export.jsonl", 10)
    handshakes: list[str | None] = []  # one per TLS ClientHello the sink received

    def hello(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        handshakes.append(name)

    tls.server.sni_callback = hello  # called for every ClientHello, with or without SNI
    try:
        async with Sink(sink_config(), ssl_context=tls.server) as sink:
            result = await run_cli(
                "upload", str(source), *oauth_args(sink.token_url, sink.ingest_url),
                "--transport", transport_kind, cwd=tmp_path, env=secret_env(),
            )  # fmt: skip
            stats = sink.stats()
    finally:
        tls.server.sni_callback = None
    assert result.code == 3, result.err
    assert len(handshakes) == 1  # not retried: a certificate is not a transient error
    error = result.err.strip().splitlines()[-1]
    assert error.startswith("asyncsync: error: TLSError: TLS verification failed")
    assert "--ca-bundle" in error
    assert stats["records"] == 0
    # Exit at once: start-up plus one handshake, ~1 s. A hang would last the 30 s token
    # fetch timeout; 20 s leaves margin for start-up on a loaded 2-core box.
    assert result.seconds < 20


@pytest.mark.slow
async def test_tls_default_verification_fails_for_the_ingest_url_too(
    tmp_path: Path, tls: Tls, transport_kind: str
) -> None:
    """With a static token no token endpoint is involved: the first POST fails, exit 3."""
    source = write_records(tmp_path / "export.jsonl", 10)
    async with Sink(sink_config(), ssl_context=tls.server) as sink:
        result = await run_cli(
            "upload", str(source), "--url", sink.ingest_url, "--auth", "bearer",
            cwd=tmp_path, env=clean_env(
                ASYNCSYNC_TOKEN=sink.issue_token(None), ASYNCSYNC_TRANSPORT=transport_kind
            ),
        )  # fmt: skip
    assert result.code == 3, result.err
    assert "--ca-bundle" in result.err


@pytest.mark.slow
async def test_tls_ca_bundle_verifies_and_delivers(
    tmp_path: Path, tls: Tls, transport_kind: str
) -> None:
    """--ca-bundle CA.pem: token and ingest over HTTPS, exit 0, every record delivered."""
    source = write_records(tmp_path / "export.jsonl", 50)
    async with Sink(sink_config(), ssl_context=tls.server) as sink:
        result = await run_cli(
            "upload", str(source), *oauth_args(sink.token_url, sink.ingest_url),
            "--ca-bundle", str(tls.ca_pem), "--transport", transport_kind,
            cwd=tmp_path, env=secret_env(),
        )  # fmt: skip
        stats = sink.stats()
    assert result.code == 0, result.err
    assert stats["records"] == 50 and stats["token_requests"] == 1
    assert "insecure" not in result.err


@pytest.mark.slow
async def test_tls_insecure_works_and_warns_on_every_run(
    tmp_path: Path, tls: Tls, transport_kind: str
) -> None:
    """--insecure skips verification, and says so on stderr on every run, even with -q."""
    source = write_records(tmp_path / "export.jsonl", 20)
    async with Sink(sink_config(), ssl_context=tls.server) as sink:
        for extra in ([], ["-q"]):
            result = await run_cli(
                "upload", str(source), *oauth_args(sink.token_url, sink.ingest_url),
                "--insecure", "--no-resume", "--transport", transport_kind, *extra,
                cwd=tmp_path, env=secret_env(),
            )  # fmt: skip
            assert result.code == 0, result.err
            assert "warning: --insecure: TLS certificates are not verified" in result.err
        assert sink.stats()["records"] == 40


async def test_tls_library_uploader_with_an_ssl_context(
    tmp_path: Path, tls: Tls, transport_kind: str
) -> None:
    """Uploader(ssl=ctx): token endpoint and ingest over HTTPS. Without it: ConfigError."""
    async with Sink(sink_config(), ssl_context=tls.server) as sink:
        provider = OAuth2ClientCredentials(sink.token_url, CLIENT_ID, CLIENT_SECRET)
        http = HttpOptions(ssl=tls.client, transport=transport_kind)
        async with Uploader(sink.ingest_url, auth=provider, http=http) as up:
            summary = await up.upload([{"id": i} for i in range(10)])
        assert summary.records_sent == 10
        plain = HttpOptions(transport=transport_kind)
        async with Uploader(sink.ingest_url, auth=provider, http=plain) as up:
            with pytest.raises(ConfigError, match="--ca-bundle"):
                await up.upload([{"id": 1}])
        stats = sink.stats()
    assert stats["records"] == 10
    assert stats["token_requests"] == 1  # the failed verification never reached the handler


# =============================================================================================
# Redirects
# =============================================================================================


def redirect_to(location: str, status: int = 307) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": location})

    return handler


@pytest.mark.slow
async def test_ingest_redirect_to_another_origin_is_not_followed(tmp_path: Path) -> None:
    """A 307 from the ingest URL to another port (another origin): the other server receives
    nothing; the batch is dead-lettered naming the location."""
    source = write_records(tmp_path / "export.jsonl", 10)
    dead = tmp_path / "dead.jsonl"
    async with (
        Sink(sink_config()) as sink,
        serve({}) as elsewhere,
        serve({"/ingest": redirect_to(elsewhere.url("/steal"))}) as api,
    ):
        result = await run_cli(
            "upload", str(source), *oauth_args(sink.token_url, api.url("/ingest")),
            "--failed", str(dead), cwd=tmp_path, env=secret_env(),
        )  # fmt: skip
    assert result.code == 1, result.err
    assert elsewhere.seen == []
    assert len(api.seen) == 1 and api.seen[0].headers["Authorization"].startswith("Bearer ")
    entries = read_jsonl(dead)
    assert len(entries) == 10
    assert {e["status"] for e in entries} == {307}
    assert elsewhere.url("/steal") in entries[0]["error"]
    assert entries[0]["attempts"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("auth", ["oauth2", "login"])
async def test_token_redirect_to_another_origin_is_not_followed(tmp_path: Path, auth: str) -> None:
    """A 307 from the token URL (credentials in the header, the form or the JSON body): the
    other origin receives nothing, the run ends with exit 3 naming the location."""
    source = write_records(tmp_path / "export.jsonl", 10)
    async with (
        serve({}) as elsewhere,
        serve({"/token": redirect_to(elsewhere.url("/steal")), "/ingest": ok_handler}) as api,
    ):
        if auth == "oauth2":
            args = oauth_args(api.url("/token"), api.url("/ingest"))
            env = secret_env()
        else:
            args = ["--url", api.url("/ingest"), "--auth", "login", "--token-url",
                    api.url("/token")]  # fmt: skip
            env = clean_env(ASYNCSYNC_USERNAME=USERNAME, ASYNCSYNC_PASSWORD=PASSWORD)
        result = await run_cli("upload", str(source), *args, cwd=tmp_path, env=env)
    assert result.code == 3, result.err
    assert elsewhere.seen == []
    assert api.paths() == ["/token"]  # once: a redirect is not retried; no upload without it
    error = result.err.strip().splitlines()[-1]
    assert "AuthError" in error and "redirected (HTTP 307)" in error
    assert elsewhere.url("/steal") in error


# =============================================================================================
# Hostile input
# =============================================================================================


def bodies(server: FakeApi) -> list[bytes]:
    return [s.body for s in server.seen if s.path == "/ingest"]


def delivered_records(server: FakeApi) -> list[bytes]:
    """The records of every JSON-array body, as the raw bytes that were sent (the client
    joins record bytes with ',' and the records here hold no top-level ',' themselves)."""
    out: list[bytes] = []
    for body in bodies(server):
        assert body.startswith(b"[") and body.endswith(b"]")
        out.extend(_split_array(body))
    return out


def _split_array(body: bytes) -> list[bytes]:
    """Split a JSON array of objects into the objects' bytes, respecting strings/nesting."""
    items: list[bytes] = []
    depth = 0
    in_string = escaped = False
    start = 1
    for i in range(1, len(body) - 1):
        c = body[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in b"[{":
            depth += 1
        elif c in b"]}":
            depth -= 1
        elif c == 0x2C and depth == 0:
            items.append(body[start:i])
            start = i + 1
    if len(body) > 2:
        items.append(body[start:-1])
    return items


async def upload_file(
    path: Path, server: FakeApi, *extra: str, rss_file: Path | None = None, limit: float = 30
) -> tuple[Run, list[dict[str, Any]], dict[str, Any]]:
    """Upload ``path`` to ``server`` without auth; (run, dead letters, summary)."""
    dead = path.with_name(path.name + ".dead.jsonl")
    summary = path.with_name(path.name + ".summary.json")
    result = await run_cli(
        "upload", str(path), "--url", server.url("/ingest"), "--auth", "none",
        "--failed", str(dead), "--summary-json", str(summary), *extra,
        cwd=path.parent, rss_file=rss_file, limit=limit,
    )  # fmt: skip
    entries = read_jsonl(dead) if dead.exists() else []
    report = json.loads(summary.read_text()) if summary.exists() else {}
    return result, entries, report


@pytest.mark.slow
async def test_a_100mb_line_is_dead_lettered_in_bounded_memory(
    tmp_path: Path, capture: FakeApi
) -> None:
    """A 100 MB line (over the 64 MiB default max line size): dead-lettered with its line
    number and a bounded preview; the next line is delivered; the process stays small."""
    path = tmp_path / "huge.jsonl"
    size = 100 * 1024 * 1024
    chunk = b"x" * (1 << 20)
    with path.open("wb") as f:
        f.write(b'{"a":"')
        for _ in range(size // len(chunk)):
            f.write(chunk)
        f.write(b'"}\n{"after": "the huge line"}\n')
    rss = tmp_path / "rss"
    try:
        result, dead, summary = await upload_file(path, capture, rss_file=rss, limit=60)
    finally:
        path.unlink()
    assert result.code == 1, result.err
    assert len(dead) == 1
    entry = dead[0]
    assert entry["line"] == 1 and entry["status"] is None
    assert "exceeds max_line_bytes (67108864)" in entry["error"]
    assert len(entry["record"]) < 100 * 1024  # a preview, not the line
    assert delivered_records(capture) == [b'{"after": "the huge line"}']
    assert summary["records_read"] == 2 and summary["records_failed"] == 1
    peak_mib = int(rss.read_text()) / 1024
    assert peak_mib < 300, f"peak RSS {peak_mib:.0f} MiB"


def _garbage() -> bytes:
    data = random.Random(7).randbytes(64 * 1024)
    return data.replace(b"{", b"(")  # no line can even start like an object


_BIG = (
    b'{"n":123456789012345678901234567890123456789,"neg":-98765432109876543210987654321,'
    b'"f":1.5e400,"tiny":4.9e-400,"exact":0.100000000000000000000000000001,"e":1E+999999}'
)
_DEEP = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"

# name: (file bytes, {line: delivered bytes}, {line: error fragment}, exit code)
JSONL_CASES: dict[str, tuple[bytes, dict[int, bytes], dict[int, str], int]] = {
    "invalid-utf8": (
        b'{"ok":1}\n{"a":"\xff\xfe caf\xc3"}\n{"ok":"caf\xc3\xa9"}\n',
        {1: b'{"ok":1}', 3: b'{"ok":"caf\xc3\xa9"}'},
        {2: "invalid UTF-8"},
        1,
    ),
    "nul-bytes": (
        b'{"ok":1}\n{"a":"x\x00y"}\n\x00\x00\x00\n{"escaped":"x\\u0000y"}\n',
        {1: b'{"ok":1}', 4: b'{"escaped":"x\\u0000y"}'},
        {2: "NUL", 3: "NUL"},
        1,
    ),
    "deep-nesting": (
        b'{"ok":1}\n' + _DEEP + b"\n" + b"[" * 100_000 + b'\n{"ok":4}\n',
        {1: b'{"ok":1}', 4: b'{"ok":4}'},
        {2: "nested too deeply", 3: "not a JSON object (array)"},
        1,
    ),
    "numbers-beyond-64-bits": (_BIG + b"\n", {1: _BIG}, {}, 0),
    "duplicate-keys": (
        b'{"a":1,"a":2,"a":{"b":3,"b":[4,{"c":5,"c":6}]}}\n',
        {1: b'{"a":1,"a":2,"a":{"b":3,"b":[4,{"c":5,"c":6}]}}'},
        {},
        0,
    ),
    "empty-file": (b"", {}, {}, 0),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(JSONL_CASES))
async def test_hostile_jsonl_input_has_a_clear_outcome(
    tmp_path: Path, capture: FakeApi, case: str
) -> None:
    """Each line is delivered byte-for-byte or dead-lettered with its line number; exit 0/1."""
    data, delivered, rejected, code = JSONL_CASES[case]
    path = tmp_path / "input.jsonl"
    path.write_bytes(data)
    result, dead, summary = await upload_file(path, capture)
    assert result.code == code, result.err
    assert delivered_records(capture) == list(delivered.values())
    assert {e["line"]: e["error"] for e in dead}.keys() == rejected.keys()
    for entry in dead:
        assert entry["error"].startswith(f"line {entry['line']}: ")
        assert rejected[entry["line"]] in entry["error"]
        assert entry["status"] is None and entry["attempts"] == 0
        assert entry["idempotency_key"] is None
    assert summary["records_read"] == len(delivered) + len(rejected)
    assert summary["records_sent"] == len(delivered)
    if case == "empty-file":
        assert capture.seen == [] and summary["batches"] == 0


@pytest.mark.slow
async def test_binary_garbage_is_dead_lettered_line_by_line(
    tmp_path: Path, capture: FakeApi
) -> None:
    """64 KiB of random bytes as a .jsonl: every non-blank line dead-lettered with its number,
    nothing sent, exit 1."""
    data = _garbage()
    path = tmp_path / "garbage.jsonl"
    path.write_bytes(data)
    lines = data.split(b"\n")
    expected = [n for n, line in enumerate(lines, 1) if line.strip(b" \t\r\n")]
    result, dead, summary = await upload_file(path, capture)
    assert result.code == 1, result.err
    assert capture.seen == []
    assert [e["line"] for e in dead] == expected
    assert all(e["error"].startswith(f"line {e['line']}: ") for e in dead)
    assert summary["records_read"] == summary["records_failed"] == len(expected)


@pytest.mark.slow
async def test_csv_quoted_newline_is_one_record(tmp_path: Path, capture: FakeApi) -> None:
    """A quoted field holding a newline: one record, its text unchanged; exit 0."""
    path = tmp_path / "input.csv"
    path.write_bytes(b'id,note\r\n1,"line one\nline two, ""quoted"""\r\n2,plain\r\n')
    result, dead, summary = await upload_file(path, capture)
    assert result.code == 0, result.err
    assert dead == []
    assert [json.loads(r) for r in delivered_records(capture)] == [
        {"id": "1", "note": 'line one\nline two, "quoted"'},
        {"id": "2", "note": "plain"},
    ]


@pytest.mark.slow
async def test_csv_row_with_more_fields_than_the_header(tmp_path: Path, capture: FakeApi) -> None:
    """A ragged row is dead-lettered with the line it starts on; the run goes on; exit 1."""
    path = tmp_path / "input.csv"
    path.write_bytes(b'id,note\n1,a\n"2","b\nc",EXTRA\n3,c\n')
    result, dead, summary = await upload_file(path, capture)
    assert result.code == 1, result.err
    assert [(e["line"], e["status"]) for e in dead] == [(3, None)]
    assert dead[0]["error"] == "line 3: row has 3 fields, header has 2"
    assert dead[0]["record"] == '"2","b\nc",EXTRA'
    assert [json.loads(r)["id"] for r in delivered_records(capture)] == ["1", "3"]


@pytest.mark.slow
async def test_csv_field_past_the_parser_limit_exits_2_with_the_line(
    tmp_path: Path, capture: FakeApi
) -> None:
    """A field the CSV parser cannot hold cannot be skipped safely: exit 2 naming the line."""
    path = tmp_path / "input.csv"
    path.write_bytes(b'id,note\n1,a\n2,"' + b"y" * 300_000 + b'"\n3,c\n')
    result, _, _ = await upload_file(path, capture)
    assert result.code == 2, result.err
    error = result.err.strip().splitlines()[-1]
    assert error.startswith("asyncsync: error: SourceError: ") and "line 3" in error


# =============================================================================================
# Hostile servers
# =============================================================================================


@pytest.mark.slow
async def test_token_endpoint_answering_html_exits_3_after_one_request(tmp_path: Path) -> None:
    """A login page instead of a token (a proxy, a wrong URL): exit 3, said plainly, once."""
    source = write_records(tmp_path / "export.jsonl", 5)
    html = b"<!doctype html><html><body><form>Sign in</form></body></html>"

    async def page(request: web.Request) -> web.StreamResponse:
        return web.Response(body=html, content_type="text/html")

    async with serve({"/token": page, "/ingest": ok_handler}) as api:
        result = await run_cli(
            "upload", str(source), *oauth_args(api.url("/token"), api.url("/ingest")),
            cwd=tmp_path, env=secret_env(),
        )  # fmt: skip
    assert result.code == 3, result.err
    assert "answered HTTP 200 with an HTML page (text/html" in result.err
    assert api.paths() == ["/token"]


def _streaming(status: int, total: int, written: list[int], *, declare: bool) -> Handler:
    """A handler that streams ``total`` bytes (or until the client goes away)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
        if declare:
            resp.content_length = total
        await resp.prepare(request)
        chunk = b'{"error":"' + b"z" * (64 * 1024 - 10)
        written.append(0)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while written[-1] < total:
                await resp.write(chunk)
                written[-1] += len(chunk)
        return resp

    return handler


GIB = 1 << 30


@pytest.mark.parametrize(
    ("status", "declare"), [(200, False), (400, True), (503, False)], ids=["200", "400", "503"]
)
async def test_a_1gb_ingest_response_is_read_only_as_a_bounded_excerpt(
    tmp_path: Path, status: int, declare: bool
) -> None:
    """The API answers with a 1 GiB body: the client reads a bounded prefix, drops the
    connection and moves on (delivered, dead-lettered, or retried then dead-lettered)."""
    written: list[int] = []
    dead = tmp_path / "dead.jsonl"
    started = time.monotonic()
    async with serve({"/ingest": _streaming(status, GIB, written, declare=declare)}) as api:
        async with Uploader(
            api.url("/ingest"),
            state=StateOptions(failed=dead),
            limits=BatchLimits(max_records=5),
            retry=RetryPolicy(max_attempts=2, backoff_initial=0.0),
            concurrency=2,
        ) as up:
            summary = await up.upload([{"id": i} for i in range(10)])
        await asyncio.sleep(0.05)  # let the handlers notice the disconnects
    assert time.monotonic() - started < 15
    assert written and max(written) < 32 * 1024 * 1024, written  # far from 1 GiB
    assert len(written) == summary.requests
    if status == 200:
        assert summary.records_sent == 10
    else:
        assert summary.records_failed == 10
        entries = read_jsonl(dead)
        assert all(e["status"] == status for e in entries)
        assert max(len(e["error"]) for e in entries) < 2048


async def test_a_1gb_token_response_is_refused_after_a_bounded_read(tmp_path: Path) -> None:
    """A token endpoint streaming 1 GiB: an AuthError after at most 1 MiB is read."""
    written: list[int] = []
    async with serve({"/token": _streaming(200, GIB, written, declare=False)}) as api:
        provider = OAuth2ClientCredentials(api.url("/token"), CLIENT_ID, CLIENT_SECRET)
        async with TokenManager(provider) as manager:
            with pytest.raises(AuthError, match="more than 1048576 bytes"):
                await manager.get()
        await asyncio.sleep(0.05)
    assert written and max(written) < 32 * 1024 * 1024, written
    assert len(written) == 1  # refused, not retried


ODD_TOKEN_RESPONSES = {
    "no-token": b'{"token_type": "Bearer", "expires_in": 3600}',
    "negative-expiry": b'{"access_token": "hx-tok-NEG", "expires_in": -86400}',
    "huge-expiry-int": b'{"access_token": "hx-tok-BIG", "expires_in": 1' + b"0" * 40 + b"}",
    "huge-expiry-float": b'{"access_token": "hx-tok-INF", "expires_in": 1e400}',
    "garbage-expiry": b'{"access_token": "hx-tok-GRB", "expires_in": "soon"}',
}


@pytest.mark.parametrize("case", list(ODD_TOKEN_RESPONSES))
async def test_odd_token_responses_end_or_run_with_bounded_token_requests(case: str) -> None:
    """No token: AuthError after one request. A negative, huge or unreadable expiry: the
    upload runs, and token requests stay bounded (no refresh loop) over ~1.2 s of uploading."""
    body = ODD_TOKEN_RESPONSES[case]
    token_requests = 0

    async def token(request: web.Request) -> web.StreamResponse:
        nonlocal token_requests
        token_requests += 1
        return web.Response(body=body, content_type="application/json")

    async def slow_ok(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.08)
        return web.json_response({"accepted": True})

    async with serve({"/token": token, "/ingest": slow_ok}) as api:
        provider = OAuth2ClientCredentials(api.url("/token"), CLIENT_ID, CLIENT_SECRET)
        records = [{"id": i} for i in range(30)]
        async with Uploader(
            api.url("/ingest"), auth=provider, limits=BatchLimits(max_records=1), concurrency=2
        ) as up:
            if case == "no-token":
                with pytest.raises(AuthError, match="without 'access_token'"):
                    await up.upload(records)
                assert api.paths() == ["/token"]
                return
            summary = await up.upload(records)
    assert summary.records_sent == 30
    assert summary.duration_s > 1.0
    if case == "negative-expiry":
        # a lifetime <= 0 is served for min_interval (1 s), then for a doubling floor: token
        # requests at t = 0, 1, 3, 7 ... s, where a loop would make one per request
        assert token_requests <= 1 + int(math.log2(summary.duration_s + 1))
    else:
        assert token_requests == 1
    assert summary.auth_requests == token_requests


@pytest.mark.slow
async def test_an_ingest_server_that_never_answers_times_out_and_dead_letters(
    tmp_path: Path,
) -> None:
    """Connections accepted, never answered: each request times out (--timeout), is retried
    (--max-attempts), then the batch is dead-lettered with a timeout reason. Bounded time."""
    connections = 0

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    source = write_records(tmp_path / "export.jsonl", 10)
    dead = tmp_path / "dead.jsonl"
    try:
        result = await run_cli(
            "upload", str(source), "--url", f"http://127.0.0.1:{port}/ingest", "--auth", "none",
            "--timeout", "0.5", "--max-attempts", "2", "--failed", str(dead),
            cwd=tmp_path, limit=60,
        )  # fmt: skip
    finally:
        server.close()
        await server.wait_closed()
    assert result.code == 1, result.err
    entries = read_jsonl(dead)
    assert len(entries) == 10
    assert {(e["status"], e["attempts"]) for e in entries} == {(None, 2)}
    assert "timeout" in entries[0]["error"]
    assert connections == 2
    # 2 attempts x the 0.5 s --timeout, plus start-up and one backoff: ~2-3 s. Were --timeout
    # not applied, a request would wait out the 30 s default (or forever: then the 60 s limit
    # above fails the test); 15 s leaves margin for a loaded 2-core box.
    assert result.seconds < 15


@pytest.mark.slow
async def test_api_refusing_every_token_exits_3_after_bounded_token_requests(
    tmp_path: Path,
) -> None:
    """The token endpoint answers 200, the API 401 to everything: exit 3 once a freshly
    fetched token is refused too; at most 3 token requests, however many workers."""
    source = write_records(tmp_path / "export.jsonl", 200)

    async def refuse(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "invalid_token"}, status=401)

    async with serve({"/token": token_handler(), "/ingest": refuse}) as api:
        result = await run_cli(
            "upload", str(source), *oauth_args(api.url("/token"), api.url("/ingest")),
            "--batch-size", "10", "--concurrency", "8", cwd=tmp_path, env=secret_env(),
        )  # fmt: skip
    assert result.code == 3, result.err
    assert "AuthError" in result.err and "401" in result.err
    paths = api.paths()
    assert 2 <= paths.count("/token") <= 3
    assert paths.count("/ingest") <= 3 * 8  # at most MAX_REAUTH sends per worker
    # A few seconds (start-up, token requests spaced by the 1 s min_interval). The counts
    # above catch a refresh loop; this catches a run that only ends at a timeout (30 s token
    # fetch, the 30 s limit of run_cli); 20 s leaves margin for a loaded 2-core box.
    assert result.seconds < 20
