"""A JSON login endpoint: :class:`JsonLogin`, and the ``${VAR}`` template its body expands from."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlencode

import orjson

from .._exceptions import ConfigError
from .._http import Transport, display_url
from ._protocol import TokenResponse, WallClock
from ._request import _FORM, _check_url, _post, _revoke
from ._response import parse_token_response

__all__ = ["DEFAULT_LOGIN_TEMPLATE", "JsonLogin", "expand_template"]

DEFAULT_LOGIN_TEMPLATE: Final = (
    '{"username": "${ASYNCSYNC_USERNAME}", "password": "${ASYNCSYNC_PASSWORD}"}'
)


_VAR_RE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_template(template: str, env: Mapping[str, str]) -> tuple[bytes, tuple[str, ...]]:
    """Expand ``${VAR}`` from ``env``, JSON-escaped; return the body and the expanded values.

    A missing variable, or a result that is not valid JSON, is a ``ConfigError`` that names
    the variable or the position, never a value.
    """
    missing = sorted({m for m in _VAR_RE.findall(template) if m not in env})
    if missing:
        raise ConfigError(
            f"login body template: environment variable {', '.join(missing)} is not set",
            field="login_body",
        )
    values: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        value = env[match.group(1)]
        values.append(value)
        return orjson.dumps(value)[1:-1].decode("utf-8")

    expanded = _VAR_RE.sub(substitute, template)
    try:
        orjson.loads(expanded)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(
            "login body template is not valid JSON after ${VAR} expansion "
            f"(line {exc.lineno}, column {exc.colno})",
            field="login_body",
        ) from None
    return expanded.encode("utf-8"), tuple(values)


class JsonLogin:
    """A JSON login endpoint (the Salesforce Batch Apex style): POST a body, read a token.

    ``body_template`` is JSON where ``${VAR}`` expands from ``env`` (default: the process
    environment), JSON-escaped, once at construction. ``token_field`` and ``expires_field``
    are dotted paths into the response (``"data.session.token"``); the expiry may be seconds,
    an ISO-8601 time or an epoch timestamp (see :func:`expiry_to_lifetime`).
    """

    __slots__ = (
        "_body",
        "_headers",
        "_secrets",
        "_wall_clock",
        "endpoint",
        "expires_field",
        "revoke_url",
        "token_field",
        "url",
    )

    def __init__(
        self,
        url: str,
        *,
        body_template: str = DEFAULT_LOGIN_TEMPLATE,
        token_field: str = "access_token",
        expires_field: str | None = "expires_in",
        env: Mapping[str, str] | None = None,
        revoke_url: str | None = None,
        headers: Mapping[str, str] | None = None,
        wall_clock: WallClock = time.time,
    ) -> None:
        self.url = _check_url(url, "url")
        self.revoke_url = None if revoke_url is None else _check_url(revoke_url, "revoke_url")
        if not token_field:
            raise ConfigError("token_field must not be empty", field="token_field")
        if expires_field == "":
            raise ConfigError("expires_field must not be empty", field="expires_field")
        self.endpoint: str | None = display_url(url)
        self.token_field = token_field
        self.expires_field = expires_field
        self._body, values = expand_template(body_template, os.environ if env is None else env)
        # an echoed body shows the values JSON-escaped, as the body carried them: mask both
        escaped = (orjson.dumps(v)[1:-1].decode("utf-8") for v in values)
        self._secrets = tuple(dict.fromkeys((*values, *escaped)))
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            **(headers or {}),
        }
        self._wall_clock = wall_clock

    def __repr__(self) -> str:
        return (
            f"JsonLogin(url={self.endpoint!r}, body_template='***', "
            f"token_field={self.token_field!r}, expires_field={self.expires_field!r})"
        )

    async def fetch(
        self,
        transport: Transport,
        *,
        timeout: float,  # noqa: ASYNC109 - the transport's per-request budget, by protocol
    ) -> TokenResponse:
        endpoint = self.endpoint or self.url
        status, headers, body = await _post(
            transport,
            self.url,
            endpoint=endpoint,
            headers=self._headers,
            data=self._body,
            total_timeout=timeout,
        )
        return parse_token_response(
            status,
            headers,
            body,
            endpoint=endpoint,
            token_field=self.token_field,
            expires_field=self.expires_field,
            token_type_field=None,
            now_wall=self._wall_clock(),
            secrets=self._secrets,
        )

    async def revoke(self, transport: Transport, token: str) -> None:
        """Log out: POST to ``revoke_url`` with the token as bearer and as an RFC 7009 form."""
        if self.revoke_url is None:
            return
        await _revoke(
            transport,
            self.revoke_url,
            headers={"Content-Type": _FORM, "Authorization": f"Bearer {token}"},
            data=urlencode([("token", token), ("token_type_hint", "access_token")]).encode(),
        )
