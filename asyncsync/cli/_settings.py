"""Settings for ``asyncsync upload`` (and ``replay``): flags, environment, TOML file, defaults.

One table (:data:`OPTIONS`) declares every option once: its long name, how its value is
checked, its default and its help. From it come the argparse flags, the environment variables
(``--batch-size`` is ``ASYNCSYNC_BATCH_SIZE``) and the accepted TOML keys (``batch-size`` or
``batch_size``). :func:`resolve` merges them, first found wins::

    flags  >  environment  >  TOML file (--config)  >  defaults

and returns one frozen :class:`Settings`, or raises :class:`ConfigError` with one line naming
the option, where the bad value came from, and what is allowed.

Secrets never come from argv or the TOML file, where ``ps`` or a shared repository would show
them: the client secret is read from ``ASYNCSYNC_CLIENT_SECRET`` or ``--client-secret-file``,
the bearer token from ``ASYNCSYNC_TOKEN`` or ``--token-file``, login passwords from the
environment variables the ``--login-body`` template names. ``--client-secret``,
``--password``, ``--token`` and their TOML keys are refused with that hint. Secret values are
held in :class:`Secret`, whose ``repr`` shows nothing.

This module builds no network object: the CLI turns :class:`Settings` into auth providers and
an ``Uploader``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import ssl
import tomllib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NoReturn
from urllib.parse import urlsplit

from .._concurrency import DEFAULT_INITIAL_CONCURRENCY, DEFAULT_MAX_CONCURRENCY
from .._config import DEFAULT_LIMITS, DEFAULT_RETRY, BatchLimits, RetryPolicy
from .._exceptions import ConfigError
from .._paths import STDIN_FAILED, default_state_paths
from ..auth._manager import DEFAULT_MAX_FETCH_TIME

__all__ = [
    "DEFAULT_LOGIN_BODY",
    "ENV_PREFIX",
    "OPTIONS",
    "Secret",
    "Settings",
    "add_upload_arguments",
    "parse_header",
    "parse_shard",
    "parse_size",
    "resolve",
    "settings_from_argv",
    "usage_error_message",
]

ENV_PREFIX = "ASYNCSYNC_"
ENV_CLIENT_SECRET = "ASYNCSYNC_CLIENT_SECRET"
ENV_TOKEN = "ASYNCSYNC_TOKEN"
DEFAULT_LOGIN_BODY = '{"username": "${ASYNCSYNC_USERNAME}", "password": "${ASYNCSYNC_PASSWORD}"}'

AuthKind = Literal["none", "bearer", "oauth2", "login"]
Origin = Literal["flag", "env", "config", "default", "auto"]
_RANK: tuple[Origin, ...] = ("flag", "env", "config", "default", "auto")

_SECRET_HINT = {
    "client-secret": "put it in the environment variable ASYNCSYNC_CLIENT_SECRET or in a file "
    "named by --client-secret-file",
    "password": "put it in an environment variable (ASYNCSYNC_PASSWORD) that the --login-body "
    "template names as ${ASYNCSYNC_PASSWORD}",
    "token": "put it in the environment variable ASYNCSYNC_TOKEN or in a file named by "
    "--token-file",
}
# TOML keys (normalised) that would hold a secret in clear, and the hint each one gets
_REFUSED_KEYS = {
    "client-secret": "client-secret",
    "secret": "client-secret",
    "password": "password",
    "token": "token",
    "access-token": "token",
    "bearer-token": "token",
    "api-key": "token",
}
# JSON keys of a login body whose literal value is a secret (use ${VAR} instead)
_SECRET_FIELD = re.compile(r"(?i)pass|pwd|^pw$|secret|token|api.?key|credential")
_TEMPLATE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?)?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class Secret:
    """A secret string: ``repr`` and ``str`` never show it; :meth:`reveal` does."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


# --- value checks: each takes a raw value (str from argv/env, typed from TOML) -------------
# and returns the typed value or raises ValueError saying what is allowed.


def _got(raw: object) -> str:
    text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(minimum: int) -> Callable[[object], int]:
    def check(raw: object) -> int:
        if isinstance(raw, bool):
            raise ValueError(f"expected an integer >= {minimum}, got {_got(raw)}")
        try:
            value = raw if isinstance(raw, int) else int(str(raw).strip())
        except ValueError:
            raise ValueError(f"expected an integer >= {minimum}, got {_got(raw)}") from None
        if value < minimum:
            raise ValueError(f"expected an integer >= {minimum}, got {value}")
        return value

    return check


def _concurrency(raw: object) -> int | Literal["auto"]:
    if isinstance(raw, str) and raw.strip().lower() == "auto":
        return "auto"
    try:
        return _int(1)(raw)
    except ValueError:
        raise ValueError(f"expected an integer >= 1 or 'auto', got {_got(raw)}") from None


def _float(minimum: float, *, inclusive: bool) -> Callable[[object], float]:
    what = f"a number {'>=' if inclusive else '>'} {minimum:g}"

    def check(raw: object) -> float:
        if isinstance(raw, bool):
            raise ValueError(f"expected {what}, got {_got(raw)}")
        try:
            value = float(raw) if isinstance(raw, int | float) else float(str(raw).strip())
        except ValueError:
            raise ValueError(f"expected {what}, got {_got(raw)}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"expected {what}, got {_got(raw)}")
        if value < minimum or (value == minimum and not inclusive):
            raise ValueError(f"expected {what}, got {value:g}")
        return value

    return check


def _bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected true or false (1/0, yes/no, on/off), got {_got(raw)}")


def _choice(*choices: str) -> Callable[[object], str]:
    def check(raw: object) -> str:
        text = raw.strip().lower() if isinstance(raw, str) else None
        if text is None or text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {_got(raw)}")
        return text

    return check


def _text(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"expected a non-empty string, got {_got(raw)}")
    return raw.strip()


def _listen_address(raw: object) -> str:
    text = _text(raw)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9464, got {_got(raw)}")
    return text


def _url(raw: object) -> str:
    text = _text(raw)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {_got(raw)}")
    return text


def _input_file(raw: object) -> Path:
    path = Path(_text(raw)).expanduser()
    if not path.is_file():
        raise ValueError(f"expected a readable file, got {_got(str(raw))} (no such file)")
    return path


def _output_file(raw: object) -> Path:
    path = Path(_text(raw)).expanduser()
    if path.is_dir():
        raise ValueError(f"expected a file path, got the directory {_got(str(raw))}")
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(f"expected a path in an existing directory, got {_got(str(raw))}")
    return path


def parse_size(raw: object) -> int:
    """Bytes from ``5242880``, ``512KiB``, ``5MiB``, ``5MB`` (k/M/G = 1000^n, Ki/Mi/Gi = 1024^n)."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        m = _SIZE.match(str(raw)) if isinstance(raw, str | float) else None
        if m is None:
            raise ValueError(
                f"expected a size in bytes such as 1048576, 512KiB or 5MB, got {_got(raw)}"
            )
        unit = m.group(2).lower() if m.group(2) else None
        value = int(float(m.group(1)) * _SIZE_UNITS[unit])
    if value < 16:
        raise ValueError(f"expected a size of at least 16 bytes, got {value}")
    return value


def parse_shard(raw: object) -> tuple[int, int]:
    """``K/N`` → ``(K, N)``: shard K of N, 0-based (``0/4`` … ``3/4``), as Kubernetes indexes."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", raw) if isinstance(raw, str) else None
    if m is None:
        raise ValueError(f"expected K/N with 0 <= K < N (0-based, e.g. 0/4), got {_got(raw)}")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or k >= n:
        raise ValueError(f"expected K/N with 0 <= K < N (0-based, e.g. 0/4), got {k}/{n}")
    return k, n


def _results_spec(raw: object) -> str:
    from .._results import results_reader

    text = _text(raw)
    results_reader(text)  # ValueError naming what is allowed
    return text


def _token_store(raw: object) -> str:
    text = _text(raw)
    if text.startswith("file:") and len(text) > len("file:"):
        return text
    parts = urlsplit(text)
    if parts.scheme in ("redis", "rediss") and parts.hostname:
        db = parts.path.strip("/")
        try:
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            port_ok = False
        if port_ok and (not db or db.isdigit()):
            return text
    raise ValueError(f"expected file:PATH or redis://HOST:PORT/DB, got {_got(raw)}")


def _db_url(raw: object) -> str:
    text = _text(raw)
    scheme = urlsplit(text).scheme
    if scheme == "sqlite" and text.startswith("sqlite:///") and len(text) > len("sqlite:///"):
        return text
    if scheme in ("postgresql", "postgres", "mysql", "mariadb") and urlsplit(text).hostname:
        return text
    raise ValueError(
        f"expected sqlite:///PATH, postgresql://HOST/DB or mysql://HOST/DB, got {_got(raw)}"
    )


def parse_header(raw: object) -> tuple[str, str]:
    """``"Name: value"`` → ``("Name", "value")``; the value is never echoed in an error."""
    if not isinstance(raw, str) or ":" not in raw:
        # no echo: a header given without its colon may still be a credential
        raise ValueError('expected "Name: value", with a colon after the name')
    name, value = (part.strip() for part in raw.split(":", 1))
    if not _HEADER_NAME.match(name):
        raise ValueError(
            f'expected "Name: value" with a header name made of letters, digits '
            f"and -, got {_got(name)}"
        )
    if "\r" in value or "\n" in value:
        raise ValueError(f"header {name!r}: a value cannot contain a line break")
    if name.lower() == "authorization":
        raise ValueError(
            "refusing an Authorization header: a credential here shows in ps and in files; "
            "use --auth bearer with ASYNCSYNC_TOKEN or --token-file"
        )
    return name, value


# --- the option table ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: ``--name`` on argv, ``ASYNCSYNC_NAME`` in the environment, ``name`` in TOML."""

    name: str
    check: Callable[[object], Any] | None
    default: Any
    help: str
    group: str
    metavar: str | None = None
    flag: bool = False  # --name/--no-name
    env: bool = True

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.dest.upper()


_TARGET = "target"
_AUTH = "authentication"
_FLOW = "batching and flow"
_BODY = "request body"
_STATE = "state and output"
_TLS = "TLS"
_SCALE = "scale out"

OPTIONS: tuple[Option, ...] = (
    Option(
        "url", _url, None, "the ingest endpoint every batch is POSTed to (required)", _TARGET, "URL"
    ),
    Option(
        "auth",
        _choice("none", "bearer", "oauth2", "login"),
        None,
        "none | bearer | oauth2 | login; default: oauth2 when --token-url is set, else "
        "bearer when a token is available (ASYNCSYNC_TOKEN, --token-file), else none",
        _AUTH,
        "KIND",
    ),
    Option(
        "token-url",
        _url,
        None,
        "the OAuth2 token endpoint (--auth oauth2), or the login endpoint (--auth login)",
        _AUTH,
        "URL",
    ),
    Option("client-id", _text, None, "OAuth2 client id", _AUTH, "ID"),
    Option(
        "client-secret-file",
        _input_file,
        None,
        "file holding the OAuth2 client secret (else env ASYNCSYNC_CLIENT_SECRET; never on "
        "the command line)",
        _AUTH,
        "PATH",
    ),
    Option("scope", _text, None, "OAuth2 scope to request", _AUTH, "SCOPE"),
    Option(
        "client-auth",
        _choice("basic", "post"),
        "basic",
        "how the client authenticates to the token endpoint: basic (HTTP Basic, RFC 6749 "
        "§2.3.1) or post (form fields); default basic",
        _AUTH,
        "basic|post",
    ),
    Option(
        "login-body",
        _text,
        DEFAULT_LOGIN_BODY,
        "JSON body template for --auth login; ${VAR} expands from the environment, "
        "JSON-escaped; default: " + DEFAULT_LOGIN_BODY.replace("%", "%%"),
        _AUTH,
        "JSON",
    ),
    Option(
        "token-field",
        _text,
        "access_token",
        "dotted path of the token in the login response (default access_token)",
        _AUTH,
        "FIELD",
    ),
    Option(
        "expires-field",
        _text,
        "expires_in",
        "dotted path of the expiry in the login response: seconds, ISO-8601 or epoch "
        "(default expires_in)",
        _AUTH,
        "FIELD",
    ),
    Option(
        "token-file",
        _input_file,
        None,
        "file holding a static bearer token (else env ASYNCSYNC_TOKEN)",
        _AUTH,
        "PATH",
    ),
    Option(
        "token-skew",
        _float(0, inclusive=True),
        300.0,
        "refresh a token this many seconds before it expires (capped at 25%% of its "
        "lifetime; default 300)",
        _AUTH,
        "SECONDS",
    ),
    Option(
        "auth-retry-time",
        _float(0, inclusive=False),
        DEFAULT_MAX_FETCH_TIME,
        "seconds to keep retrying a token endpoint that fails transiently (5xx, 429, "
        f"timeouts) before giving up with exit 3 (default {DEFAULT_MAX_FETCH_TIME:g})",
        _AUTH,
        "SECONDS",
    ),
    Option(
        "revoke-url",
        _url,
        None,
        "RFC 7009 revocation endpoint: the token is revoked once at the end",
        _AUTH,
        "URL",
    ),
    Option(
        "batch-size",
        _int(1),
        DEFAULT_LIMITS.max_records,
        f"records per request at most (default {DEFAULT_LIMITS.max_records})",
        _FLOW,
        "N",
    ),
    Option(
        "max-batch-bytes",
        parse_size,
        DEFAULT_LIMITS.max_bytes,
        "encoded bytes per request at most, e.g. 1048576, 512KiB, 5MB (default 5MiB)",
        _FLOW,
        "SIZE",
    ),
    Option(
        "concurrency",
        _concurrency,
        16,
        "requests in flight at most, or 'auto' to find the endpoint's capacity from round "
        "trips and back-pressure (default 16)",
        _FLOW,
        "N|auto",
    ),
    Option(
        "max-concurrency",
        _int(1),
        DEFAULT_MAX_CONCURRENCY,
        f"with --concurrency auto: the highest limit (default {DEFAULT_MAX_CONCURRENCY})",
        _FLOW,
        "N",
    ),
    Option(
        "initial-concurrency",
        _int(1),
        DEFAULT_INITIAL_CONCURRENCY,
        "with --concurrency auto: the limit it starts from "
        f"(default {DEFAULT_INITIAL_CONCURRENCY})",
        _FLOW,
        "N",
    ),
    Option(
        "queue-size",
        _int(1),
        None,
        "batches read ahead at most (default: a few per worker)",
        _FLOW,
        "N",
    ),
    Option(
        "rate",
        _float(0, inclusive=False),
        None,
        "requests per second at most (default: unlimited)",
        _FLOW,
        "PER_S",
    ),
    Option(
        "timeout",
        _float(0, inclusive=False),
        60.0,
        "seconds per request (default 60)",
        _FLOW,
        "SECONDS",
    ),
    Option(
        "transport",
        _choice("auto", "aiohttp", "reqwest"),
        "auto",
        "HTTP client: reqwest (pyreqwest, the fast extra) or aiohttp; auto: reqwest when "
        "installed (default)",
        _FLOW,
        "auto|aiohttp|reqwest",
    ),
    Option(
        "max-attempts",
        _int(1),
        DEFAULT_RETRY.max_attempts,
        f"sends per batch before it is dead-lettered (default {DEFAULT_RETRY.max_attempts})",
        _FLOW,
        "N",
    ),
    Option(
        "max-retry-time",
        _float(0, inclusive=False),
        DEFAULT_RETRY.max_retry_time,
        f"seconds a batch may be retried for (default {DEFAULT_RETRY.max_retry_time:g})",
        _FLOW,
        "SECONDS",
    ),
    Option(
        "on-reject",
        _choice("split", "batch"),
        "split",
        "a batch answered 400/422: split: halve it until each rejected record stands alone and "
        "dead-letter only those (default); batch: dead-letter the whole batch",
        _FLOW,
        "split|batch",
    ),
    Option(
        "max-split-requests",
        _int(0),
        None,
        "requests the whole run may spend on parts (halves of a rejected or 413 batch, probes, "
        "items sent again, their retries); what it cannot pay for is dead-lettered whole "
        "(default: no limit)",
        _FLOW,
        "N",
    ),
    Option(
        "results",
        _results_spec,
        None,
        "read a 2xx/207 answer as one result per record: elasticsearch, salesforce, or a "
        "dotted path to the results array ('.' for a top-level array); failed items are "
        "dead-lettered, retryable ones (408/425/429/5xx) sent again",
        _FLOW,
        "elasticsearch|salesforce|PATH",
    ),
    Option(
        "body",
        _choice("json", "ndjson"),
        "json",
        "json: a JSON array of the records (default); ndjson: one record per line",
        _BODY,
        "json|ndjson",
    ),
    Option(
        "wrap",
        _text,
        None,
        'send {"KEY": [...]} instead of a bare array (--body json)',
        _BODY,
        "KEY",
    ),
    Option("gzip", _bool, False, "gzip request bodies (Content-Encoding: gzip)", _BODY, flag=True),
    Option(
        "header",
        None,
        (),
        'an extra request header "Name: value" (repeatable)',
        _BODY,
        "'NAME: VALUE'",
        env=False,
    ),
    Option("checkpoint", _output_file, None, "checkpoint file, for resuming", _STATE, "PATH"),
    Option(
        "resume",
        _bool,
        True,
        "resume from the checkpoint when it matches (default) or start over",
        _STATE,
        flag=True,
    ),
    Option(
        "failed",
        _output_file,
        None,
        "dead-letter file (JSON Lines, appended); default SOURCE.failed.jsonl beside a file "
        "source, ./" + STDIN_FAILED + " for stdin",
        _STATE,
        "PATH",
    ),
    Option(
        "summary-json", _output_file, None, "write the run summary as JSON to PATH", _STATE, "PATH"
    ),
    Option(
        "progress",
        _bool,
        None,
        "progress display on stderr (default: on when stderr is a terminal)",
        _STATE,
        flag=True,
    ),
    Option("verbose", _int(0), 0, "-v logs each retry and token refresh, -vv debug", _STATE),
    Option(
        "log-format",
        _choice("text", "json"),
        "text",
        "text (default), or json: every line on stderr is one JSON object (logs, errors, "
        "the summary); the progress display is off unless --progress",
        _STATE,
        "text|json",
    ),
    Option(
        "metrics",
        _listen_address,
        None,
        "serve Prometheus metrics at http://HOST:PORT/metrics while the run lasts "
        "(the metrics extra: pip install 'asyncsync[metrics]')",
        _STATE,
        "HOST:PORT",
    ),
    Option("quiet", _bool, False, "print only errors", _STATE),
    Option(
        "config",
        _input_file,
        None,
        "TOML file of settings (keys: these long option names)",
        _STATE,
        "PATH",
    ),
    Option("ca-bundle", _input_file, None, "PEM file of CA certificates to trust", _TLS, "PATH"),
    Option(
        "insecure",
        _bool,
        False,
        "do not verify TLS certificates (warns on every run)",
        _TLS,
        flag=True,
    ),
    Option(
        "token-store",
        _token_store,
        None,
        "share the token between processes: file:PATH or redis://HOST:PORT/DB",
        _SCALE,
        "STORE",
    ),
    Option("processes", _int(1), 1, "upload with N processes (default 1)", _SCALE, "N"),
    Option(
        "shard",
        parse_shard,
        None,
        "upload only shard K of N (0-based, e.g. --shard $JOB_COMPLETION_INDEX/4)",
        _SCALE,
        "K/N",
    ),
    Option(
        "db",
        _db_url,
        None,
        "read rows from a database: sqlite:///PATH, postgresql://... or mysql://...",
        _SCALE,
        "URL",
    ),
    Option("query", _text, None, "SQL query for --db", _SCALE, "SQL"),
    Option(
        "key",
        _text,
        None,
        "unique ordered column for keyset pagination (--db --query)",
        _SCALE,
        "COLUMN",
    ),
    Option("table", _text, None, "table to read whole (--db), instead of --query", _SCALE, "NAME"),
    Option(
        "engine",
        _choice("local", "dask"),
        "local",
        "where the upload runs: local (this machine), dask (a Dask cluster)",
        _SCALE,
        "ENGINE",
    ),
    Option(
        "scheduler",
        _text,
        None,
        "--engine dask: the scheduler of a running cluster (needs --token-store redis://...)",
        _SCALE,
        "tcp://HOST:PORT",
    ),
    Option(
        "workers", _int(1), None, "--engine dask: start a local cluster of N workers", _SCALE, "N"
    ),
)
_BY_NAME: Mapping[str, Option] = MappingProxyType({opt.name: opt for opt in OPTIONS})


# --- argparse ------------------------------------------------------------------------------


class _Refuse(argparse.Action):
    """A flag that would put a secret on the command line: refused, its value never echoed."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        raise argparse.ArgumentError(
            self,
            "refused: a secret on the command line is visible to every user in ps; "
            + _SECRET_HINT[self.const],
        )


def add_upload_arguments(
    parser: argparse.ArgumentParser, *, only: Collection[str] | None = None
) -> None:
    """Add every option of :data:`OPTIONS` (or those named in ``only``) to ``parser``; all
    default to None (= not given)."""
    groups: dict[str, Any] = {}
    for opt in OPTIONS:
        if only is not None and opt.name not in only:
            continue
        group = groups.get(opt.group)
        if group is None:
            group = groups[opt.group] = parser.add_argument_group(opt.group)
        help_text = opt.help + (f" [env {opt.env_var}]" if opt.env else "")
        if opt.name == "verbose":
            continue  # below, with -q, as a mutually exclusive pair
        if opt.name == "quiet":
            quiet = group.add_mutually_exclusive_group()
            verbose = _BY_NAME["verbose"]
            quiet.add_argument(
                "-v",
                "--verbose",
                action="count",
                default=None,
                help=f"{verbose.help} [env {verbose.env_var}=1|2]",
            )
            quiet.add_argument(
                "-q", "--quiet", action="store_const", const=True, default=None, help=help_text
            )
        elif opt.flag:
            group.add_argument(
                f"--{opt.name}", action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif opt.name == "header":
            group.add_argument(
                "-H", "--header", action="append", default=None, metavar=opt.metavar, help=help_text
            )
        else:
            group.add_argument(f"--{opt.name}", default=None, metavar=opt.metavar, help=help_text)
    for flag, kind in (
        ("--client-secret", "client-secret"),
        ("--secret", "client-secret"),
        ("--password", "password"),
        ("--token", "token"),
    ):
        parser.add_argument(
            flag,
            action=_Refuse,
            nargs="?",
            const=kind,
            default=None,
            help=argparse.SUPPRESS,
            dest="refused_secret",
        )


# --- the settings --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything one ``upload`` (or ``replay``) run needs, checked and typed.

    ``origins`` says where each option's value came from: ``flag``, ``env``, ``config``,
    ``default`` or ``auto`` (derived, like the default ``--auth``).
    """

    command: Literal["upload", "replay"] = "upload"
    source: str | None  # a path, "-" for stdin, None with --db
    url: str
    auth: AuthKind
    token_url: str | None = None
    client_id: str | None = None
    client_secret: Secret | None = None
    scope: str | None = None
    client_auth: Literal["basic", "post"] = "basic"
    login_body: str = DEFAULT_LOGIN_BODY
    token_field: str = "access_token"
    expires_field: str = "expires_in"
    token: Secret | None = None
    login_secrets: tuple[Secret, ...] = ()  # env values the login template puts in the body
    token_skew: float = 300.0
    auth_retry_time: float = DEFAULT_MAX_FETCH_TIME  # the TokenManager's max_fetch_time
    revoke_url: str | None = None
    batch_size: int = DEFAULT_LIMITS.max_records
    max_batch_bytes: int = DEFAULT_LIMITS.max_bytes
    concurrency: int | Literal["auto"] = 16
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    initial_concurrency: int = DEFAULT_INITIAL_CONCURRENCY
    queue_size: int | None = None
    rate: float | None = None
    timeout: float = 60.0
    transport: Literal["auto", "aiohttp", "reqwest"] = "auto"
    max_attempts: int = DEFAULT_RETRY.max_attempts
    max_retry_time: float = DEFAULT_RETRY.max_retry_time
    on_reject: Literal["split", "batch"] = "split"
    max_split_requests: int | None = None
    results: str | None = None
    body: Literal["json", "ndjson"] = "json"
    wrap: str | None = None
    gzip: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    checkpoint: Path | None = None
    resume: bool = True
    failed: Path
    summary_json: Path | None = None
    progress: bool | None = None  # None: on when stderr is a terminal
    verbosity: int = 0  # -1 quiet, 0 default, 1 -v, 2 -vv
    log_format: Literal["text", "json"] = "text"
    metrics: str | None = None  # HOST:PORT
    config: Path | None = None
    ca_bundle: Path | None = None
    insecure: bool = False
    token_store: str | None = None
    processes: int = 1
    shard: tuple[int, int] | None = None
    db: str | None = None
    query: str | None = None
    key: str | None = None
    table: str | None = None
    engine: Literal["local", "dask"] = "local"
    scheduler: str | None = None
    workers: int | None = None
    origins: Mapping[str, Origin] = field(default_factory=dict)

    @property
    def limits(self) -> BatchLimits:
        return BatchLimits(max_records=self.batch_size, max_bytes=self.max_batch_bytes)

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.max_attempts, max_retry_time=self.max_retry_time)

    def secret_values(self) -> list[str]:
        """Every secret this run holds, for log redaction."""
        found = [self.client_secret, self.token, *self.login_secrets]
        return [s.reveal() for s in found if s is not None]

    def ssl_context(self) -> ssl.SSLContext | bool | None:
        """``False`` with --insecure, a context trusting --ca-bundle, else None (default)."""
        if self.insecure:
            return False
        if self.ca_bundle is None:
            return None
        try:
            return ssl.create_default_context(cafile=str(self.ca_bundle))
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(
                f"--ca-bundle: cannot load CA certificates from {self.ca_bundle}: {exc}",
                field="ca_bundle",
            ) from None

    def unsupported(self) -> list[str]:
        """The scale-out options given that this version cannot act on yet."""
        return []


# --- resolution ----------------------------------------------------------------------------


def _label(opt: Option, origin: Origin, config: Path | None) -> str:
    if origin == "env":
        return f"--{opt.name} (from {opt.env_var})"
    if origin == "config":
        return f"--{opt.name} (from {config})"
    return f"--{opt.name}"


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path} is not valid TOML: {exc}", field="config") from None
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}", field="config") from None
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = raw_key.replace("_", "-").lower()
        if key in _REFUSED_KEYS:
            raise ConfigError(
                f"--config: refusing key {raw_key!r} in {path}: secrets do not belong in a "
                f"settings file; {_SECRET_HINT[_REFUSED_KEYS[key]]}",
                field=key.replace("-", "_"),
            )
        if key == "headers":
            key = "header"
        if key not in _BY_NAME or key == "config":
            raise ConfigError(
                f"--config: unknown key {raw_key!r} in {path} (keys are the long option names "
                "of 'asyncsync upload --help')",
                field="config",
            )
        if key in out:
            raise ConfigError(f"--config: key {raw_key!r} is set twice in {path}", field=key)
        out[key] = value
    return out


def _toml_headers(value: object, path: Path | None) -> list[object]:
    if isinstance(value, dict):
        return [f"{k}: {v}" for k, v in value.items()]
    if isinstance(value, list):
        return list(value)
    raise ConfigError(
        f'--header (from {path}): expected a list of "Name: value" strings or a table',
        field="header",
    )


def _headers(
    from_flags: Sequence[str] | None, from_config: object, config: Path | None
) -> tuple[tuple[str, str], ...]:
    """Config headers, then flag headers; a flag replaces a config header of the same name."""
    merged: dict[str, tuple[str, str]] = {}
    sources: list[tuple[list[object], str]] = []
    if from_config is not None:
        sources.append((_toml_headers(from_config, config), f"--header (from {config})"))
    if from_flags:
        sources.append((list(from_flags), "--header"))
    for values, label in sources:
        for raw in values:
            try:
                name, value = parse_header(raw)
            except ValueError as exc:
                raise ConfigError(f"{label}: {exc}", field="header") from None
            merged[name.lower()] = (name, value)
    return tuple(merged.values())


def _read_secret(path: Path, label: str, dest: str) -> Secret:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{label}: cannot read {path}: {exc}", field=dest) from None
    if not value:
        raise ConfigError(f"{label}: {path} is empty", field=dest)
    return Secret(value)


def _check_login_body(template: str, label: str, env: Mapping[str, str]) -> tuple[Secret, ...]:
    """Check a ``--login-body`` template; return the environment values it puts in secret
    fields (for redaction).

    The template must be a JSON object with ``${VAR}`` placeholders inside its strings, name
    only variables that are set, and hold no literal value in a secret-looking field.
    """
    missing = sorted({v for v in _TEMPLATE_VAR.findall(template) if v not in env})
    if missing:
        raise ConfigError(
            f"{label}: the template names {', '.join(missing)}, not set in the environment",
            field="login_body",
        )
    try:
        parsed = json.loads(template)  # a placeholder inside a string is valid JSON as is
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ConfigError(
            f"{label}: expected a JSON object, with ${{VAR}} placeholders inside its strings",
            field="login_body",
        )
    secrets: list[Secret] = []

    def walk(node: object, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and _SECRET_FIELD.search(key):
            names = _TEMPLATE_VAR.findall(node)
            if not names and node:
                raise ConfigError(
                    f"{label}: refusing a literal value for {key!r}: a secret here shows in "
                    "ps and in files; put it in an environment variable and write ${VAR}",
                    field="login_body",
                )
            secrets.extend(Secret(env[name]) for name in names if env[name])

    walk(parsed, "")
    return tuple(secrets)


def resolve(
    ns: argparse.Namespace | Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    *,
    command: Literal["upload", "replay"] = "upload",
    require_source: bool = True,
) -> Settings:
    """Merge parsed flags (``ns``), ``env`` and the TOML file into checked :class:`Settings`.

    ``ns`` holds None for every option not given on the command line (as
    :func:`add_upload_arguments` arranges). Raises :class:`ConfigError` naming the option.
    ``require_source=False``: SOURCE may be absent (``bench`` can send synthetic records).
    """
    flags = dict(vars(ns) if isinstance(ns, argparse.Namespace) else ns)
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    origins: dict[str, Origin] = {}

    def pick(opt: Option, config: Mapping[str, Any], config_path: Path | None) -> None:
        origin: Origin
        if flags.get(opt.dest) is not None:
            origin, raw = "flag", flags[opt.dest]
        elif opt.env and env.get(opt.env_var):
            origin, raw = "env", env[opt.env_var]
        elif opt.name in config:
            origin, raw = "config", config[opt.name]
        else:
            values[opt.dest], origins[opt.dest] = opt.default, "default"
            return
        assert opt.check is not None
        try:
            values[opt.dest] = opt.check(raw)
        except ValueError as exc:
            label = _label(opt, origin, config_path)
            raise ConfigError(f"{label}: {exc}", field=opt.dest) from None
        origins[opt.dest] = origin

    # the config file first: its own location comes from flags or env only
    pick(_BY_NAME["config"], {}, None)
    config_path: Path | None = values["config"]
    config = _load_toml(config_path) if config_path is not None else {}

    for opt in OPTIONS:
        if opt.name not in ("config", "header"):
            pick(opt, config, config_path)
    headers = _headers(flags.get("header"), config.get("header"), config_path)

    def label(name: str) -> str:
        return _label(_BY_NAME[name], origins[name.replace("-", "_")], config_path)

    # secrets: a file named on the command line, then the environment, then a file named in
    # the environment or the config (flags > environment > file, as for every setting)
    def secret(file_opt: str, env_var: str) -> Secret | None:
        dest = file_opt.replace("-", "_")
        path: Path | None = values[dest]
        if path is not None and origins[dest] == "flag":
            return _read_secret(path, label(file_opt), dest)
        if env.get(env_var):
            return Secret(env[env_var])
        if path is not None:
            return _read_secret(path, label(file_opt), dest)
        return None

    client_secret = secret("client-secret-file", ENV_CLIENT_SECRET)
    token = secret("token-file", ENV_TOKEN)

    auth: AuthKind | None = values["auth"]
    if auth is None:
        auth = "oauth2" if values["token_url"] else "bearer" if token else "none"
        origins["auth"] = "auto"
    login_secrets: tuple[Secret, ...] = ()
    if auth == "oauth2":
        if values["token_url"] is None:
            raise ConfigError("--auth oauth2 needs --token-url", field="token_url")
        if values["client_id"] is None:
            raise ConfigError(
                "--auth oauth2 needs --client-id (or ASYNCSYNC_CLIENT_ID)", field="client_id"
            )
        if client_secret is None:
            raise ConfigError(
                "--auth oauth2 needs the client secret in ASYNCSYNC_CLIENT_SECRET or a file "
                "named by --client-secret-file",
                field="client_secret",
            )
    elif auth == "login":
        if values["token_url"] is None:
            raise ConfigError(
                "--auth login needs --token-url (the login endpoint)", field="token_url"
            )
        login_secrets = _check_login_body(values["login_body"], label("login-body"), env)
    elif auth == "bearer" and token is None:
        raise ConfigError(
            "--auth bearer needs the token in ASYNCSYNC_TOKEN or a file named by --token-file",
            field="token",
        )
    if values["wrap"] is not None and values["body"] != "json":
        raise ConfigError(f"{label('wrap')}: only applies to --body json", field="wrap")
    if values["insecure"] and values["ca_bundle"] is not None:
        raise ConfigError("--insecure and --ca-bundle exclude each other", field="insecure")
    if values["initial_concurrency"] > values["max_concurrency"]:
        raise ConfigError(
            f"{label('initial-concurrency')} ({values['initial_concurrency']}) must not exceed "
            f"{label('max-concurrency')} ({values['max_concurrency']})",
            field="initial_concurrency",
        )

    source: str | None = flags.get("source")
    if values["db"] is not None:
        if source is not None:
            raise ConfigError("give either SOURCE or --db, not both", field="db")
        if (values["query"] is None) == (values["table"] is None):
            raise ConfigError("--db needs exactly one of --query or --table", field="db")
        if values["key"] is None:
            raise ConfigError(
                "--db needs --key COLUMN (a unique, ordered column for keyset pagination)",
                field="key",
            )
    else:
        for name in ("query", "key", "table"):
            if values[name] is not None:
                raise ConfigError(f"{label(name)}: only applies with --db", field=name)
        if source is None and require_source:
            raise ConfigError(
                "SOURCE is required: a .jsonl/.ndjson/.csv file or - for stdin", field="source"
            )
    if values["url"] is None:
        raise ConfigError("--url is required (or ASYNCSYNC_URL, or url in --config)", field="url")

    failed: Path | None = values["failed"]
    if failed is None:
        # the name only: the run plan (cli/_plan.py) moves it off a read-only directory
        failed = default_state_paths(source, replay=command == "replay", fallback=False).failed
        origins["failed"] = "auto"

    # -v and -q: when both are set, the one from the higher-precedence place wins
    quiet: bool = values.pop("quiet")
    verbose: int = values.pop("verbose")
    if quiet and verbose:
        if origins["quiet"] == origins["verbose"]:
            raise ConfigError("-v and -q exclude each other", field="verbose")
        quiet = _RANK.index(origins["quiet"]) < _RANK.index(origins["verbose"])
    verbosity = -1 if quiet else min(verbose, 2)
    origins["verbosity"] = origins["quiet"] if quiet else origins["verbose"]

    for name in ("auth", "client_secret_file", "token_file", "client_secret", "token"):
        values.pop(name, None)
    return Settings(
        command=command,
        source=source,
        auth=auth,
        client_secret=client_secret,
        token=token,
        login_secrets=login_secrets,
        headers=headers,
        failed=failed,
        verbosity=verbosity,
        origins=MappingProxyType(origins),
        **{k: v for k, v in values.items() if k != "failed"},
    )


def usage_error_message(message: str) -> str:
    """argparse's message, minus the values of unrecognized arguments (one may be a secret)."""
    prefix = "unrecognized arguments: "
    if message.startswith(prefix):
        names = [a.split("=", 1)[0] for a in message[len(prefix) :].split() if a.startswith("-")]
        return prefix + (" ".join(names) if names else "(values not shown)")
    return message


def settings_from_argv(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    command: Literal["upload", "replay"] = "upload",
) -> Settings:
    """Parse ``SOURCE [options]`` as ``asyncsync upload`` does, then :func:`resolve`.

    For tests and embedding; argparse errors raise :class:`ConfigError` instead of exiting.
    """

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise ConfigError(usage_error_message(message))

    parser = _Parser(prog=f"asyncsync {command}", allow_abbrev=False, add_help=False)
    parser.add_argument("source", nargs="?")
    add_upload_arguments(parser)
    return resolve(parser.parse_args(list(argv)), env, command=command)
