"""Auth providers: request encoding, response classification, expiry parsing, redaction."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

import aiohttp
import orjson
import pytest

from asyncsync import AuthError, ConfigError
from asyncsync._http import AiohttpTransport, display_url
from asyncsync._retry import parse_retry_after
from asyncsync.auth._login import JsonLogin, expand_template
from asyncsync.auth._oauth2 import OAuth2ClientCredentials, basic_credentials
from asyncsync.auth._protocol import TokenResponse, TransientAuthError
from asyncsync.auth._response import (
    MAX_LIFETIME,
    expiry_to_lifetime,
    parse_token_response,
    redacted_excerpt,
)
from asyncsync.auth._simple import CallableProvider, StaticToken

try:
    from tests.token_server import MISSING, TokenServer, json_response
except ImportError:  # tests/ is not a package: pytest put it on sys.path itself
    from token_server import MISSING, TokenServer, json_response  # type: ignore[no-redef]

WALL = 1_700_000_000.0
SECRET = "s3cr3t-Value-9f2c"


@pytest.fixture
async def server() -> AsyncIterator[TokenServer]:
    async with TokenServer(client_secret=SECRET) as srv:
        yield srv


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    async with AiohttpTransport(connections=4, timeout=30) as tr:
        yield tr


def parse(status: int, body: object, headers: dict[str, str] | None = None, **kw: object):
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return parse_token_response(
        status, headers or {}, raw, endpoint="https://auth.example/token", now_wall=WALL, **kw
    )


# -- OAuth2 client credentials -----------------------------------------------------------------


def test_basic_credentials_are_form_encoded_then_base64_per_rfc6749_2_3_1() -> None:
    """':' '+' ' ' and non-ASCII in id and secret are form-urlencoded before base64."""
    header = basic_credentials("my:client id", "p+ss wörd:é")
    # form-urlencoded by hand: ':' -> %3A, ' ' -> '+', '+' -> %2B, UTF-8 percent-escapes.
    expected_pair = "my%3Aclient+id:p%2Bss+w%C3%B6rd%3A%C3%A9"
    assert header == "Basic " + base64.b64encode(expected_pair.encode()).decode()


async def test_basic_auth_round_trips_through_a_real_server(server: TokenServer, transport) -> None:
    """The server decodes the same id and secret that were configured."""
    server.client_id, server.client_secret = "my:client id", "p+ss wörd:é"
    provider = OAuth2ClientCredentials(server.url(), "my:client id", "p+ss wörd:é", scope="a b")
    response = await provider.fetch(transport, timeout=5)
    assert response.access_token == server.issued[0]
    assert response.expires_in == 3600
    assert response.token_type == "Bearer"
    seen = server.requests[0]
    assert seen.headers["Authorization"] == basic_credentials("my:client id", "p+ss wörd:é")
    assert seen.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert seen.form == {"grant_type": "client_credentials", "scope": "a b"}


async def test_post_method_sends_credentials_in_the_form(server: TokenServer, transport) -> None:
    """client_secret_post: id and secret in the body, no Authorization header; extra fields."""
    provider = OAuth2ClientCredentials(
        server.url(),
        server.client_id,
        SECRET,
        auth_method="post",
        scope=["read", "write"],
        extra={"audience": "https://api.example"},
    )
    response = await provider.fetch(transport, timeout=5)
    assert response.access_token == server.issued[0]
    seen = server.requests[0]
    assert "Authorization" not in seen.headers
    assert seen.form == {
        "grant_type": "client_credentials",
        "scope": "read write",
        "audience": "https://api.example",
        "client_id": server.client_id,
        "client_secret": SECRET,
    }


async def test_bad_secret_is_a_permanent_error_naming_endpoint_and_status(
    server: TokenServer, transport
) -> None:
    """401 invalid_client: permanent AuthError with endpoint and status, no secret."""
    provider = OAuth2ClientCredentials(server.url(), server.client_id, "wrong-" + SECRET)
    with pytest.raises(AuthError) as info:
        await provider.fetch(transport, timeout=5)
    err = info.value
    assert not isinstance(err, TransientAuthError)
    assert err.permanent
    assert err.status == 401
    assert err.endpoint == server.url()
    assert "invalid_client" in str(err)
    assert server.url() in str(err)
    assert SECRET not in str(err)


async def test_redirect_is_not_followed_and_names_the_location(
    server: TokenServer, transport
) -> None:
    """3xx: permanent, names the Location (without its query); the target is never reached."""
    provider = OAuth2ClientCredentials(server.url("/redirect"), server.client_id, SECRET)
    with pytest.raises(AuthError) as info:
        await provider.fetch(transport, timeout=5)
    assert info.value.status == 302
    assert info.value.permanent
    assert "/elsewhere" in str(info.value)
    assert "code=abc" not in str(info.value)
    assert server.elsewhere_hits == 0


async def test_connection_refused_is_transient(transport) -> None:
    """Nothing listening: a TransientAuthError, so the manager retries."""
    async with TokenServer() as srv:
        url = srv.url()
    provider = OAuth2ClientCredentials(url, "id", SECRET)
    with pytest.raises(TransientAuthError) as info:
        await provider.fetch(transport, timeout=5)
    assert not info.value.permanent


async def test_revoke_posts_rfc7009_form_with_client_auth(server: TokenServer, transport) -> None:
    """Revocation: token and token_type_hint, authenticated like the token request."""
    provider = OAuth2ClientCredentials(
        server.url(), server.client_id, SECRET, revoke_url=server.url("/revoke")
    )
    await provider.revoke(transport, "tok-xyz")
    (seen,) = server.revoked
    assert seen.form == {"token": "tok-xyz", "token_type_hint": "access_token"}
    assert seen.headers["Authorization"] == basic_credentials(server.client_id, SECRET)


async def test_revoke_without_url_is_a_no_op(server: TokenServer, transport) -> None:
    """No revoke_url: nothing is sent."""
    await OAuth2ClientCredentials(server.url(), "id", SECRET).revoke(transport, "t")
    assert server.revoked == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"token_url": "ftp://x/token"}, "token_url"),
        ({"token_url": "https://user:pw@x/token"}, "token_url"),
        ({"client_id": ""}, "client_id"),
        ({"client_secret": ""}, "client_secret"),
        ({"auth_method": "digest"}, "client_auth"),
        ({"extra": {"client_secret": "x"}}, "extra"),
        ({"revoke_url": "not a url"}, "revoke_url"),
    ],
)
def test_oauth2_config_errors_name_the_field(kwargs: dict[str, object], field: str) -> None:
    """Bad settings fail at construction with a ConfigError naming the field."""
    args: dict[str, object] = {
        "token_url": "https://x/token",
        "client_id": "id",
        "client_secret": SECRET,
    }
    args.update(kwargs)
    with pytest.raises(ConfigError) as info:
        OAuth2ClientCredentials(**args)  # type: ignore[arg-type]
    assert info.value.field == field
    assert SECRET not in str(info.value)
    assert "pw" not in str(info.value)


# -- JSON login --------------------------------------------------------------------------------


async def test_json_login_expands_env_json_escaped_and_reads_dotted_fields(
    server: TokenServer, transport
) -> None:
    """${VAR} expands JSON-escaped (quotes, backslash, unicode); dotted token/expiry fields."""
    password = 'p"a\\ss wörd\n'
    server.login_password = password
    expiry = datetime.fromtimestamp(WALL + 900, UTC).isoformat().replace("+00:00", "Z")
    server.ttl = expiry
    server.login_shape = lambda token, ttl: {
        "data": {"session": {"token": token, "expires": ttl}},
        "token_type": "ignored-for-logins",
    }
    provider = JsonLogin(
        server.url("/login"),
        body_template='{"Username": "${SF_USER}", "Password": "${SF_PASS}", "n": 1}',
        token_field="data.session.token",
        expires_field="data.session.expires",
        env={"SF_USER": "bob", "SF_PASS": password},
        wall_clock=lambda: WALL,
    )
    response = await provider.fetch(transport, timeout=5)
    assert response.access_token == server.issued[0]
    assert response.expires_in == pytest.approx(900)
    assert response.token_type == "Bearer"
    sent = orjson.loads(server.requests[0].body)
    assert sent == {"Username": "bob", "Password": password, "n": 1}
    assert server.requests[0].headers["Content-Type"] == "application/json"


async def test_json_login_salesforce_style_fields(server: TokenServer, transport) -> None:
    """session_token / session_token_expiration as epoch seconds."""
    server.ttl = WALL + 7200
    server.login_shape = lambda token, ttl: {
        "session_token": token,
        "session_token_expiration": ttl,
    }
    provider = JsonLogin(
        server.url("/login"),
        token_field="session_token",
        expires_field="session_token_expiration",
        env={"ASYNCSYNC_USERNAME": "bob", "ASYNCSYNC_PASSWORD": "hunter2"},
        wall_clock=lambda: WALL,
    )
    response = await provider.fetch(transport, timeout=5)
    assert response.access_token == server.issued[0]
    assert response.expires_in == pytest.approx(7200)


async def test_json_login_wrong_password_is_permanent_and_secret_free(
    server: TokenServer, transport
) -> None:
    """401 from the login endpoint: permanent AuthError; the password is not in the text."""
    provider = JsonLogin(
        server.url("/login"), env={"ASYNCSYNC_USERNAME": "bob", "ASYNCSYNC_PASSWORD": SECRET}
    )
    with pytest.raises(AuthError) as info:
        await provider.fetch(transport, timeout=5)
    assert info.value.status == 401
    assert info.value.permanent
    assert SECRET not in str(info.value)
    assert SECRET not in repr(provider)


def test_json_login_missing_variable_is_a_config_error_naming_it() -> None:
    """A ${VAR} not in the environment: ConfigError naming the variable."""
    with pytest.raises(ConfigError) as info:
        JsonLogin("https://x/login", env={"ASYNCSYNC_USERNAME": "bob"})
    assert "ASYNCSYNC_PASSWORD" in str(info.value)
    assert info.value.field == "login_body"


def test_template_invalid_after_expansion_does_not_echo_values() -> None:
    """Invalid JSON after expansion: ConfigError with a position, without the values."""
    with pytest.raises(ConfigError) as info:
        expand_template('{"u": "${U}", "p": ${P} oops}', {"U": "bob", "P": SECRET})
    assert SECRET not in str(info.value)
    assert "bob" not in str(info.value)
    assert info.value.__suppress_context__  # the decoder error holds the document
    assert "column" in str(info.value)


def test_template_values_are_json_escaped() -> None:
    """A value with quotes cannot break out of its JSON string."""
    body, values = expand_template('{"p": "${P}"}', {"P": '", "admin": true, "x": "'})
    assert orjson.loads(body) == {"p": '", "admin": true, "x": "'}
    assert values == ('", "admin": true, "x": "',)


# -- static and callable -----------------------------------------------------------------------


async def test_static_token_never_expires(transport) -> None:
    """StaticToken: the token, no lifetime; a bad token is a ConfigError."""
    response = await StaticToken(SECRET).fetch(transport, timeout=1)
    assert response.access_token == SECRET
    assert response.expires_in is None
    assert SECRET not in repr(StaticToken(SECRET))
    with pytest.raises(ConfigError):
        StaticToken("has space")


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        ("tok-a", ("tok-a", None)),
        (("tok-b", 60), ("tok-b", 60.0)),
        (("tok-c", None), ("tok-c", None)),
        (TokenResponse("tok-d", 5.0, "MAC"), ("tok-d", 5.0)),
    ],
)
async def test_callable_provider_normalises_results(transport, returned, expected) -> None:
    """str, (str, seconds) and TokenResponse are all accepted."""

    async def fn():
        return returned

    response = await CallableProvider(fn).fetch(transport, timeout=1)
    assert (response.access_token, response.expires_in) == expected


async def test_callable_provider_errors(transport) -> None:
    """Transport errors are transient; other exceptions permanent, named by type only."""

    async def flaky():
        raise aiohttp.ClientConnectionError("down")

    async def broken():
        raise ValueError(f"secret is {SECRET}")

    async def wrong():
        return 42

    with pytest.raises(TransientAuthError):
        await CallableProvider(flaky).fetch(transport, timeout=1)
    with pytest.raises(AuthError) as info:
        await CallableProvider(broken).fetch(transport, timeout=1)
    assert info.value.permanent
    assert "ValueError" in str(info.value)
    assert SECRET not in str(info.value)
    with pytest.raises(AuthError, match="int"):
        await CallableProvider(wrong).fetch(transport, timeout=1)


# -- response classification -------------------------------------------------------------------


def test_parse_success() -> None:
    """2xx with a token: a TokenResponse; 'bearer' is normalised."""
    response = parse(200, {"access_token": "abc", "expires_in": 60, "token_type": "bearer"})
    assert response == TokenResponse("abc", 60.0, "Bearer")


@pytest.mark.parametrize(
    ("status", "body", "fragment"),
    [
        (200, {"token": "abc"}, "without 'access_token'"),
        (200, b"<html><body>login</body></html>", "HTML"),
        (200, b"not json", "no JSON object"),
        (200, {"access_token": ""}, "empty"),
        (200, {"access_token": "a b\r\nX-Evil: 1"}, "not allowed in an HTTP header"),
        (200, {"access_token": 12}, "int"),
        (400, {"error": "invalid_grant"}, "invalid_grant"),
        (400, {"error": "invalid_client", "error_description": "bad"}, "invalid_client: bad"),
        (400, {"error": "unauthorized_client"}, "unauthorized_client"),
        (401, {"error": "invalid_client"}, "HTTP 401"),
        (403, b"Forbidden", "HTTP 403"),
        (404, b"<html>Not Found</html>", "HTML page"),
        (302, b"", "redirected"),
    ],
)
def test_parse_permanent_failures(status: int, body: object, fragment: str) -> None:
    """4xx, 3xx and 2xx without a usable token are permanent AuthErrors."""
    with pytest.raises(AuthError) as info:
        parse(status, body, {"Location": "https://other.example/x?code=1"})
    err = info.value
    assert not isinstance(err, TransientAuthError)
    assert err.permanent
    assert err.status == status
    assert err.endpoint == "https://auth.example/token"
    assert fragment in str(err)
    assert "code=1" not in str(err)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_parse_transient_failures(status: int) -> None:
    """408, 429 and 5xx are transient."""
    with pytest.raises(TransientAuthError) as info:
        parse(status, {"error": "slow down"})
    assert not info.value.permanent
    assert info.value.retry_after is None


def test_retry_after_seconds_and_http_date() -> None:
    """Retry-After as delta-seconds and as an HTTP-date."""
    with pytest.raises(TransientAuthError) as info:
        parse(429, b"", {"Retry-After": "7"})
    assert info.value.retry_after == 7.0
    date = format_datetime(datetime.fromtimestamp(WALL + 30, UTC), usegmt=True)
    with pytest.raises(TransientAuthError) as info:
        parse(503, b"", {"retry-after": date})
    assert info.value.retry_after == pytest.approx(30.0)
    assert parse_retry_after("garbage", now_wall=WALL) is None
    assert parse_retry_after(None, now_wall=WALL) is None
    past = format_datetime(datetime.fromtimestamp(WALL - 30, UTC), usegmt=True)
    assert parse_retry_after(past, now_wall=WALL) == 0.0


def test_error_excerpt_is_short_and_redacted() -> None:
    """Server bodies echoing secrets or tokens are redacted and truncated."""
    body = {
        "error": "invalid_request",
        "error_description": f"client_secret={SECRET} rejected; password: {SECRET}x " + "z" * 500,
    }
    with pytest.raises(AuthError) as info:
        parse(400, body, secrets=(SECRET,))
    assert SECRET not in str(info.value)
    assert len(str(info.value)) < 300
    echoed = b'{"msg": "nope", "access_token": "tok-leak-1", "session": "sess-leak-2"}'
    with pytest.raises(AuthError) as info:
        parse(418, echoed)
    assert "tok-leak-1" not in str(info.value)
    assert "sess-leak-2" not in str(info.value)
    assert redacted_excerpt(b"  \n ") == ""
    assert redacted_excerpt("a\x00b\nc") == "a b c"


def test_display_url_drops_credentials_query_and_fragment() -> None:
    """Only scheme, host, port and path are ever shown."""
    assert display_url("https://u:p@h.example:8443/t?x=1#f") == "https://h.example:8443/t"


# -- expiry parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "lifetime"),
    [
        (3600, 3600.0),
        (0, 0.0),
        (-5, 0.0),
        ("120", 120.0),
        (" 90.5 ", 90.5),
        (WALL + 600, 600.0),  # epoch seconds
        (int((WALL + 600) * 1000), 600.0),  # epoch milliseconds
        (WALL - 600, 0.0),  # already past
        (datetime.fromtimestamp(WALL + 300, UTC).isoformat(), 300.0),
        (datetime.fromtimestamp(WALL + 300, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), 300.0),
        (
            datetime.fromtimestamp(WALL + 300, timezone(timedelta(hours=-5))).isoformat(),
            300.0,
        ),
        (datetime.fromtimestamp(WALL + 300, UTC).replace(tzinfo=None).isoformat(), 300.0),
        (10**400, MAX_LIFETIME),
        (5e8, MAX_LIFETIME),
    ],
)
def test_expiry_forms(raw: object, lifetime: float) -> None:
    """Seconds, numeric strings, epoch (s and ms) and ISO-8601 (Z, offset, naive=UTC)."""
    assert expiry_to_lifetime(raw, now_wall=WALL) == pytest.approx(lifetime)


@pytest.mark.parametrize("raw", ["soon", True, None, [1], "nan", float("nan")])
def test_unparseable_expiry_raises_value_error(raw: object) -> None:
    """Anything else is a ValueError; the response parser then keeps the token without expiry."""
    with pytest.raises(ValueError, match="expires"):
        expiry_to_lifetime(raw, now_wall=WALL)


def test_unparseable_expiry_field_is_ignored_with_a_warning(caplog) -> None:
    """A garbage expiry: the token is kept (expires_in None), one warning without the token."""
    caplog.set_level(logging.DEBUG)
    response = parse(200, {"access_token": "tok-keep-me", "expires_in": "tomorrow-ish"})
    assert response.expires_in is None
    assert "expir" in caplog.text
    assert "tok-keep-me" not in caplog.text


def test_missing_expiry_is_none() -> None:
    """No expiry field: None (kept until invalidated)."""
    assert parse(200, {"access_token": "abc"}).expires_in is None
    assert parse(200, {"access_token": "abc", "expires_in": None}).expires_in is None


def test_repr_of_token_response_hides_the_token() -> None:
    """TokenResponse repr/str show '***'."""
    response = TokenResponse(SECRET, 5.0)
    assert SECRET not in repr(response)
    assert SECRET not in str(response)
    assert "'***'" in repr(response)


def test_every_provider_repr_hides_secrets() -> None:
    """No provider shows its secret, password or token in repr or str."""
    server_url = "https://x/token"
    providers = [
        OAuth2ClientCredentials(server_url, "id", SECRET),
        OAuth2ClientCredentials(server_url, "id", SECRET, auth_method="post"),
        JsonLogin(server_url, env={"ASYNCSYNC_USERNAME": "u", "ASYNCSYNC_PASSWORD": SECRET}),
        StaticToken(SECRET),
        CallableProvider(lambda: None),  # type: ignore[arg-type, return-value]
    ]
    for provider in providers:
        assert SECRET not in repr(provider)
        assert SECRET not in str(provider)


async def test_scripted_json_response_helper(server: TokenServer, transport) -> None:
    """The test server's scripted answers take precedence (sanity check of the fixture)."""
    server.script = [json_response(200, {"access_token": "scripted", "expires_in": 5})]
    server.ttl = MISSING
    provider = OAuth2ClientCredentials(server.url(), server.client_id, SECRET)
    assert (await provider.fetch(transport, timeout=5)).access_token == "scripted"
    assert (await provider.fetch(transport, timeout=5)).expires_in is None
