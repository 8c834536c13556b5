"""OAuth 2.0 client credentials (RFC 6749 §4.4): :class:`OAuth2ClientCredentials`.

Client authentication is client_secret_basic (:func:`basic_credentials`, §2.3.1) or
client_secret_post; revocation follows RFC 7009.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping, Sequence
from typing import Final, Literal
from urllib.parse import quote_plus, urlencode

from .._exceptions import ConfigError
from .._http import Transport, display_url
from ._protocol import TokenResponse, WallClock
from ._request import _FORM, _check_url, _post, _revoke
from ._response import parse_token_response

__all__ = ["OAuth2ClientCredentials", "basic_credentials"]


def _form_encode(value: str) -> str:
    """application/x-www-form-urlencoded, as RFC 6749 §2.3.1 asks for client credentials."""
    return quote_plus(value, safe="")


def basic_credentials(client_id: str, client_secret: str) -> str:
    """The ``Authorization`` value for client_secret_basic (RFC 6749 §2.3.1).

    Each of id and secret is form-urlencoded first, then ``id:secret`` is base64-encoded, so an
    id with ``:`` and a secret with ``+``, spaces or non-ASCII survive the round trip.
    """
    pair = f"{_form_encode(client_id)}:{_form_encode(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode("ascii")).decode("ascii")


class OAuth2ClientCredentials:
    """OAuth 2.0 client credentials grant (RFC 6749 §4.4), revocation per RFC 7009.

    ``auth_method="basic"`` sends the client credentials in an ``Authorization: Basic`` header
    (encoded per §2.3.1); ``"post"`` sends them as ``client_id``/``client_secret`` form fields.
    ``extra`` adds form fields (``audience``, ``resource``...).
    """

    __slots__ = (
        "_auth_header",
        "_body",
        "_client_id",
        "_client_secret",
        "_wall_clock",
        "auth_method",
        "endpoint",
        "revoke_url",
        "scope",
        "token_url",
    )

    _RESERVED: Final = frozenset({"grant_type", "client_id", "client_secret"})

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str | Sequence[str] | None = None,
        auth_method: Literal["basic", "post"] = "basic",
        extra: Mapping[str, str] | None = None,
        revoke_url: str | None = None,
        wall_clock: WallClock = time.time,
    ) -> None:
        self.token_url = _check_url(token_url, "token_url")
        self.revoke_url = None if revoke_url is None else _check_url(revoke_url, "revoke_url")
        if not isinstance(client_id, str) or not client_id:
            raise ConfigError("client_id must be a non-empty string", field="client_id")
        if not isinstance(client_secret, str) or not client_secret:
            raise ConfigError("client_secret must be a non-empty string", field="client_secret")
        if auth_method not in ("basic", "post"):
            raise ConfigError(
                f"auth_method must be 'basic' or 'post', got {auth_method!r}", field="client_auth"
            )
        if scope is not None and not isinstance(scope, str):
            scope = " ".join(scope)
        extra = dict(extra or {})
        clash = self._RESERVED.intersection(extra)
        if clash:
            raise ConfigError(
                f"extra form fields may not set {', '.join(sorted(clash))}", field="extra"
            )
        self.endpoint: str | None = display_url(token_url)
        self.scope = scope or None
        self.auth_method = auth_method
        self._client_id = client_id
        self._client_secret = client_secret
        self._wall_clock = wall_clock
        self._auth_header = basic_credentials(client_id, client_secret)
        fields: list[tuple[str, str]] = [("grant_type", "client_credentials")]
        if self.scope:
            fields.append(("scope", self.scope))
        fields.extend(extra.items())
        fields.extend(self._client_fields())
        self._body = urlencode(fields).encode("ascii")

    def _client_fields(self) -> list[tuple[str, str]]:
        if self.auth_method == "post":
            return [("client_id", self._client_id), ("client_secret", self._client_secret)]
        return []

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": _FORM, "Accept": "application/json"}
        if self.auth_method == "basic":
            headers["Authorization"] = self._auth_header
        return headers

    def __repr__(self) -> str:
        return (
            f"OAuth2ClientCredentials(token_url={self.endpoint!r}, "
            f"client_id={self._client_id!r}, client_secret='***', scope={self.scope!r}, "
            f"auth_method={self.auth_method!r})"
        )

    async def fetch(
        self,
        transport: Transport,
        *,
        timeout: float,  # noqa: ASYNC109 - the transport's per-request budget, by protocol
    ) -> TokenResponse:
        endpoint = self.endpoint or self.token_url
        status, headers, body = await _post(
            transport,
            self.token_url,
            endpoint=endpoint,
            headers=self._headers(),
            data=self._body,
            total_timeout=timeout,
        )
        return parse_token_response(
            status,
            headers,
            body,
            endpoint=endpoint,
            now_wall=self._wall_clock(),
            # and as the request carried it: form-encoded, and inside the Basic credential
            secrets=(
                self._client_secret,
                _form_encode(self._client_secret),
                self._auth_header.removeprefix("Basic "),
            ),
        )

    async def revoke(self, transport: Transport, token: str) -> None:
        if self.revoke_url is None:
            return
        fields = [("token", token), ("token_type_hint", "access_token"), *self._client_fields()]
        await _revoke(
            transport,
            self.revoke_url,
            headers=self._headers(),
            data=urlencode(fields).encode("ascii"),
        )
