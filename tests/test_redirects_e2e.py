"""Redirects are never followed with credentials: the CLI against loopback servers.

The ingest URL or the token URL answers 301, 302, 303, 307 or 308 to another origin. The
redirect target must receive nothing (above all no ``Authorization``, no client secret, no
password); an ingest redirect dead-letters the batch naming the location (exit 1), a token
redirect ends the run as an authentication failure (exit 3) after one token request.
tests/test_hardening.py has the 307 cases with hostile secrets; these cover every status.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from cli_helpers import clean_env, run_cli
from recording import Handler, Server, serve

pytestmark = pytest.mark.slow

REDIRECTS = [301, 302, 303, 307, 308]
CLIENT_ID = "redirect-client"
CLIENT_SECRET = "redirect-s3cret"
USERNAME = "etl"
PASSWORD = "redirect-passw0rd"


def redirect_to(location: str, status: int) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": location})

    return handler


def token_endpoint() -> Handler:
    counter = itertools.count(1)

    async def handler(request: web.Request) -> web.StreamResponse:
        token = f"redirect-token-{next(counter):04d}"
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
        )

    return handler


def write_records(path: Path, n: int) -> Path:
    path.write_bytes(b"".join(orjson.dumps({"id": i}) + b"\n" for i in range(1, n + 1)))
    return path


def assert_nothing_reached(target: Server) -> None:
    """The redirect target saw no request at all, so none with credentials."""
    with_credentials = [r for r in target.received if r.authorization is not None]
    assert with_credentials == []
    assert target.received == []


@pytest.mark.parametrize("status", REDIRECTS)
async def test_ingest_redirect_is_not_followed(tmp_path: Path, status: int) -> None:
    """A redirect from the ingest URL: one request (with the bearer token) to the API, none
    to the target; the batch is dead-lettered with that status and the location; exit 1."""
    source = write_records(tmp_path / "export.jsonl", 10)
    failed = tmp_path / "failed.jsonl"
    async with serve() as elsewhere:
        steal = elsewhere.url("/steal")
        routes = {"/token": token_endpoint(), "/ingest": redirect_to(steal, status)}
        async with serve(routes) as api:
            result = await run_cli(
                "upload", str(source), "--url", api.url("/ingest"), "--token-url",
                api.url("/token"), "--client-id", CLIENT_ID, "--failed", str(failed),
                "--max-attempts", "3", "-q", cwd=tmp_path,
                env=clean_env(ASYNCSYNC_CLIENT_SECRET=CLIENT_SECRET),
            )  # fmt: skip
    assert_nothing_reached(elsewhere)
    assert result.code == 1, result.err
    ingest = api.at("/ingest")
    assert len(ingest) == 1  # a redirect is not retried either
    assert (ingest[0].authorization or "").startswith("Bearer redirect-token-")
    assert [r.path for r in api.received] == ["/token", "/ingest"]
    entries = [orjson.loads(line) for line in failed.read_bytes().splitlines()]
    assert [e["record"] for e in entries] == [{"id": i} for i in range(1, 11)]
    assert {e["status"] for e in entries} == {status}
    assert all(steal in e["error"] and e["attempts"] == 1 for e in entries)
    assert "redirect-token-" not in failed.read_text() + result.err + result.out


@pytest.mark.parametrize("auth", ["oauth2", "login"])
@pytest.mark.parametrize("status", REDIRECTS)
async def test_token_redirect_is_not_followed(tmp_path: Path, status: int, auth: str) -> None:
    """A redirect from the token URL (the secret in the Authorization header, or the password
    in the body): the target receives nothing, nothing is uploaded, exit 3 naming the status
    and the location, after a single token request."""
    source = write_records(tmp_path / "export.jsonl", 10)
    async with serve() as elsewhere:
        steal = elsewhere.url("/steal")
        async with serve({"/token": redirect_to(steal, status)}) as api:
            args = ["--url", api.url("/ingest"), "--token-url", api.url("/token")]
            if auth == "oauth2":
                args += ["--client-id", CLIENT_ID]
                env = clean_env(ASYNCSYNC_CLIENT_SECRET=CLIENT_SECRET)
            else:
                args += ["--auth", "login"]
                env = clean_env(ASYNCSYNC_USERNAME=USERNAME, ASYNCSYNC_PASSWORD=PASSWORD)
            result = await run_cli(
                "upload", str(source), *args, "--failed", str(tmp_path / "failed.jsonl"),
                "-q", cwd=tmp_path, env=env,
            )  # fmt: skip
    assert_nothing_reached(elsewhere)
    assert result.code == 3, result.err
    assert [r.path for r in api.received] == ["/token"]  # once; no upload without a token
    token_request = api.received[0]
    if auth == "oauth2":  # the credentials were on that request, and stayed there
        assert (token_request.authorization or "").startswith("Basic ")
    else:
        assert PASSWORD.encode() in token_request.body
    error = result.err.strip().splitlines()[-1]
    assert f"redirected (HTTP {status})" in error and steal in error
    for secret in (CLIENT_SECRET, PASSWORD):
        assert secret not in result.err + result.out
