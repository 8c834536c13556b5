"""Fuzzing (issue 7): whatever a hostile server or a careless caller hands these functions,
they answer or raise only their documented errors, and never echo a secret.

Covered here: the ``Retry-After`` parser, the token-response parser, the response
classifier (the status table and the failure description), the body encoder's settings, the
redaction of log and error text. The JSONL and CSV readers and the body encoder's output are
fuzzed where they are tested (tests/test_sources.py, tests/test_body.py).
"""

from __future__ import annotations

import gzip
import logging
import math
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, cast

import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from asyncsync import Action, AuthError, ConfigError, RetryPolicy
from asyncsync._body import BodyEncoder
from asyncsync._redact import RedactingFilter, redact, register_secret
from asyncsync._retry import parse_retry_after
from asyncsync._sender import Sender
from asyncsync.auth._manager import Token
from asyncsync.auth._protocol import TokenResponse, TransientAuthError
from asyncsync.auth._response import MAX_LIFETIME, parse_token_response, token_value_problem

FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
NOW = 1_780_000_000.0  # a fixed wall clock (2026)
SECRET = "hxfuzz-Cl1ent-S3cret"
# distinctive values registered once: redact() is process-wide, so no ordinary word may be one
REGISTERED = ["hxfuzz-reg-" + s for s in ("alpha-91", "b.e+t/a=", "g(am)ma*?", "d\\elta\"'")]
for _value in REGISTERED:
    register_secret(_value)

# --- strategies ----------------------------------------------------------------------------------

_digits = st.text("0123456789", min_size=1, max_size=12)
_unicode_digits = st.text("0123456789²³¹٠١٢٣۴५๕", min_size=1, max_size=6)
_dates = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
).map(lambda d: format_datetime(d, usegmt=True))
retry_after_values = st.one_of(
    st.none(),
    st.text(max_size=40),
    _digits,
    _unicode_digits,
    _dates,
    _dates.map(lambda d: d.replace("GMT", "-0000")),
    st.floats().map(repr),
    st.sampled_from(["inf", "-inf", "nan", "1e999", "-5", " 7 ", "0x10", "1_000", "Mon, 99"]),
)


def _json_values(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_keys, kids, max_size=4),
        max_leaves=10,
    )


_keys = st.sampled_from(
    ["access_token", "expires_in", "token_type", "error", "error_description", "data",
     "session", "token", "message", "0", SECRET, "a.b", "client_secret"]
) | st.text(max_size=8)  # fmt: skip
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.just(SECRET),
    st.just(f"prefix {SECRET} suffix"),
    st.sampled_from(["Bearer", "bearer", "mac", "invalid_client", "2030-01-01T00:00:00Z"]),
)
_documents = st.dictionaries(_keys, _json_values(_leaves), max_size=6)


def _encode(document: Any) -> bytes:
    try:
        return orjson.dumps(document)
    except TypeError:  # an int past 64 bits: the stdlib writes it
        import json

        return json.dumps(document).encode()


token_bodies = st.one_of(
    _documents.map(_encode),
    _json_values(_leaves).map(_encode),
    st.binary(max_size=200),
    st.sampled_from(
        [
            b"",
            b"<html><body>login</body></html>",
            b'{"access_token": "ok-token", "expires_in": 1e400}',
            b'{"access_token": "ok-token", "expires_in": -1e400}',
            b'{"access_token": "ok-token", "expires_in": NaN}',
            b'{"access_token": "ok-token", "expires_in": Infinity}',
            b"[" * 5000,
            ('{"error": "invalid_client", "error_description": "' + SECRET + '"}').encode(),
            ('{"access_token": "' + SECRET + '"}').encode(),
        ]
    ),
)
_header_names = st.sampled_from(
    ["Retry-After", "retry-after", "Location", "location", "Content-Type", "X-Other"]
)
_header_values = st.one_of(
    retry_after_values.filter(lambda v: v is not None),
    st.just(f"https://user:{SECRET}@elsewhere.example:8443/p?token={SECRET}#{SECRET}"),
    st.just(f"http://[::1]:99999/{SECRET}"),
    st.text(max_size=30),
)
token_headers = st.dictionaries(_header_names, _header_values, max_size=3)
statuses = st.one_of(st.integers(min_value=100, max_value=599), st.sampled_from([0, 600, 999]))
field_paths = st.one_of(
    st.sampled_from(["access_token", "token", "data.token", "0", "a.b", "session.0.token"]),
    st.text(min_size=1, max_size=12),
)


# --- Retry-After ---------------------------------------------------------------------------------


@FUZZ
@given(value=retry_after_values, now=st.floats(min_value=0, max_value=4e9))
@example(value="²", now=NOW)
@example(value="١٢", now=NOW)
@example(value="Mon, 01 Jan 99999 00:00:00 GMT", now=NOW)
def test_fuzz_retry_after(value: str | None, now: float) -> None:
    """The one parser (sender and token endpoint): None, or a wait >= 0 that is a number
    (inf allowed: capped later); never an exception."""
    got = parse_retry_after(value, now_wall=now)
    assert got is None or (isinstance(got, float) and got >= 0 and not math.isnan(got))


@FUZZ
@given(delta=st.integers(min_value=0, max_value=10**6))
def test_fuzz_retry_after_seconds_and_date_agree(delta: int) -> None:
    """Delta-seconds and an HTTP-date for the same moment give the same wait."""
    date = format_datetime(datetime.fromtimestamp(NOW + delta, UTC), usegmt=True)
    for value in (str(delta), date):
        assert parse_retry_after(value, now_wall=NOW) == float(delta)


# --- the token-response parser -------------------------------------------------------------------


@FUZZ
@given(
    status=statuses,
    headers=token_headers,
    body=token_bodies,
    token_field=field_paths,
    expires_field=st.none() | field_paths,
    token_type_field=st.none() | st.just("token_type"),
)
def test_fuzz_parse_token_response(
    status: int,
    headers: dict[str, str],
    body: bytes,
    token_field: str,
    expires_field: str | None,
    token_type_field: str | None,
) -> None:
    """A token, or AuthError (TransientAuthError for 408/429/5xx): nothing else, ever; and no
    error message quotes the secret, wherever the server put it."""
    got: TokenResponse | None = None
    error: AuthError | None = None
    logging.getLogger("asyncsync.auth").disabled = True  # "ignoring the expiry..." warnings
    try:
        got = parse_token_response(
            status,
            CIMultiDict(headers),
            body,
            endpoint="https://auth.example/token",
            token_field=token_field,
            expires_field=expires_field,
            token_type_field=token_type_field,
            now_wall=NOW,
            secrets=(SECRET,),
        )
    except AuthError as exc:  # TransientAuthError included
        error = exc
    finally:
        logging.getLogger("asyncsync.auth").disabled = False
    transient = status in (408, 429) or 500 <= status < 600
    if error is not None:
        assert isinstance(error, TransientAuthError) is transient
        assert error.permanent is not transient and error.status == status
        if isinstance(error, TransientAuthError):
            assert error.retry_after is None or error.retry_after >= 0
        assert SECRET not in f"{error} {error!r}"
        assert "\n" not in str(error)
        assert len(str(error)) < 600
        return
    assert 200 <= status < 300
    assert isinstance(got, TokenResponse)
    assert token_value_problem(got.access_token) is None
    assert got.expires_in is None or 0 <= got.expires_in <= MAX_LIFETIME
    assert SECRET not in repr(got) and SECRET not in got.token_type
    Token(got.access_token, 0.0, got.expires_in, got.token_type)  # usable as a header


# --- the response classifier ---------------------------------------------------------------------

_actions = st.sampled_from(list(Action))
_tables = st.dictionaries(
    st.integers(min_value=-100, max_value=1100), _actions | st.sampled_from([None, "retry", 1])
)


@FUZZ
@given(table=_tables)
def test_fuzz_retry_policy_action_for(table: dict[int, Any]) -> None:
    """Any user table: a ConfigError naming ``statuses``, or a policy that maps every status
    100-599 to an Action (the table's, else ACK for 2xx and DEAD for the rest)."""
    if not all(100 <= s <= 599 and isinstance(a, Action) for s, a in table.items()):
        with pytest.raises(ConfigError) as info:
            RetryPolicy(statuses=table)
        assert info.value.field == "statuses"
        return
    policy = RetryPolicy(statuses=table)
    for status in range(100, 600):
        action = policy.action_for(status)
        assert isinstance(action, Action)
        expected = table.get(status, Action.ACK if 200 <= status < 300 else Action.DEAD)
        assert action is expected


class _FakeResponse:
    """What ``Sender._describe_status`` reads of an aiohttp response."""

    def __init__(self, status: int, reason: str | None, headers: dict[str, str]) -> None:
        self.status = status
        self.reason = reason
        self.headers = CIMultiDict(headers)


_TOKEN = "hxfuzz-Issued.Token_~+/9="


@FUZZ
@given(
    status=st.integers(min_value=100, max_value=599),
    reason=st.none() | st.text(max_size=20),
    location=st.none() | st.text(max_size=30) | st.just(f"https://evil.example/?t={_TOKEN}"),
    excerpt=st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda a, b: a + _TOKEN.encode() + b, st.binary(max_size=40), st.binary(max_size=40)
        ),
        st.just(f"Authorization: Bearer {_TOKEN}".encode()),
    ),
    with_token=st.booleans(),
)
def test_fuzz_failure_description(
    status: int, reason: str | None, location: str | None, excerpt: bytes, with_token: bool
) -> None:
    """The reason a failed batch is dead-lettered with: always built, names the status, and
    never holds the token that was sent, wherever the server echoed it."""
    headers = {} if location is None else {"Location": location}
    token = Token(_TOKEN, 0.0, None) if with_token else None
    resp = _FakeResponse(status, reason, headers)
    text = Sender._describe_status(cast(Any, None), cast(Any, resp), excerpt, token)
    assert text.startswith(f"status {status}")
    if with_token:
        assert _TOKEN not in text


# --- the body encoder's settings -----------------------------------------------------------------


@FUZZ
@given(
    form=st.sampled_from(["json", "ndjson"]) | st.text(max_size=6),
    wrap=st.none() | st.text(max_size=8),
    use_gzip=st.booleans(),
    level=st.integers(min_value=-3, max_value=12),
)
def test_fuzz_body_encoder_settings(
    form: str, wrap: str | None, use_gzip: bool, level: int
) -> None:
    """Any settings (lone surrogates in the wrap key included): a ConfigError naming the
    field, or an encoder whose bodies decode back to the records."""
    error: ConfigError | None = None
    try:
        enc = BodyEncoder(cast(Any, form), wrap=wrap, gzip=use_gzip, gzip_level=level)
    except ConfigError as exc:
        error = exc
    if error is not None:
        assert error.field in {"body", "wrap", "gzip_level"}
        return
    records = [b'{"a":1}', b'{"b":[2,"\\u0000"]}']
    body = enc.encode(records)
    if use_gzip:
        body = gzip.decompress(body)
    if form == "ndjson":
        assert body == b'{"a":1}\n{"b":[2,"\\u0000"]}\n'
    else:
        decoded = orjson.loads(body)
        items = decoded if wrap is None else decoded[wrap]
        assert items == [{"a": 1}, {"b": [2, "\x00"]}]


# --- redaction -----------------------------------------------------------------------------------

_b64token = st.from_regex(r"[A-Za-z0-9\-._~+/]{8,40}=*", fullmatch=True)
_around = st.text(max_size=30)


@FUZZ
@given(
    before=_around,
    after=_around,
    token=_b64token,
    form=st.sampled_from(
        [
            "Authorization: Bearer {t}",
            "bearer   {t}",
            "Basic {t}",
            '"access_token": "{t}"',
            "refresh_token={t}",
            "{{'id_token': '{t}'}}",
            '"password":"{t}"',
            "client_secret={t}",
        ]
    ),
)
def test_fuzz_redact_masks_credentials_by_pattern(
    before: str, after: str, token: str, form: str
) -> None:
    """A credential after a scheme or a credential-named field is masked, whatever surrounds
    it (a separator first: "xBearer" is not the scheme)."""
    assume(token not in before and token not in after)
    out = redact(before + " " + form.format(t=token) + after)
    assert token not in out


@FUZZ
@given(before=_around, after=_around, secret=st.sampled_from(REGISTERED))
def test_fuzz_redact_masks_registered_secrets_anywhere(
    before: str, after: str, secret: str
) -> None:
    """A registered secret is masked wherever it appears, in log records too."""
    text = before + secret + after
    assert secret not in redact(text)
    record = logging.LogRecord(
        "asyncsync.test", logging.INFO, __file__, 1, "got %s and %r", (text, secret), None
    )
    assert RedactingFilter().filter(record)
    assert secret not in record.getMessage()
