"""Running a plan: the auth provider, the token store, the source, the ``Uploader``; signals.

Everything that turns a :class:`~._plan.RunPlan` into network objects is here, and the
``Uploader`` is built in one place (:func:`open_uploader`). Signal handling is CLI policy: the
first SIGINT/SIGTERM asks the uploader to drain (:meth:`Uploader.stop`: no new batches, the
ones in flight finish, the checkpoint is saved; the run raises ``Interrupted``, exit 4) and
aborts after :data:`GRACE` seconds; a second signal aborts now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import ssl as ssl_module
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

from .._hooks import HookGroup, UploadHooks, overrides
from .._summary import Interrupted, RunSummary
from ._plan import RunPlan
from ._settings import Settings

if TYPE_CHECKING:
    from .._uploader import Uploader
    from ..auth._events import TokenObserver
    from ..auth._manager import TokenManager, TokenStore
    from ..auth._protocol import AuthProvider
    from ..sources._protocol import Source

__all__ = [
    "GRACE",
    "TokenCount",
    "build_auth",
    "client_identity",
    "close_token_store",
    "open_run_token_store",
    "open_tokens",
    "open_uploader",
    "run_async",
    "run_plan",
    "token_fetch_timeout",
]

T = TypeVar("T")
log = logging.getLogger("asyncsync")

#: seconds in-flight batches get to finish after the first SIGINT/SIGTERM
GRACE: Final = 30.0
#: the live count of token requests (the counters only get it at the end of the run)
TokenCount = Callable[[], int]
_TEMPLATE_VAR: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop when it is installed (the ``fast`` extra), else on asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# --- auth ----------------------------------------------------------------------------------


def build_auth(settings: Settings) -> AuthProvider | None:
    """The auth provider ``settings.auth`` names, with the secrets revealed only here."""
    from ..auth._login import JsonLogin
    from ..auth._oauth2 import OAuth2ClientCredentials
    from ..auth._simple import StaticToken

    if settings.auth == "none":
        return None
    if settings.auth == "bearer":
        assert settings.token is not None  # resolve() checked
        return StaticToken(settings.token.reveal())
    assert settings.token_url is not None  # resolve() checked
    if settings.auth == "oauth2":
        assert settings.client_id is not None
        assert settings.client_secret is not None
        return OAuth2ClientCredentials(
            settings.token_url,
            settings.client_id,
            settings.client_secret.reveal(),
            scope=settings.scope,
            auth_method=settings.client_auth,
            revoke_url=settings.revoke_url,
        )
    return JsonLogin(
        settings.token_url,
        body_template=settings.login_body,
        token_field=settings.token_field,
        expires_field=settings.expires_field,
        revoke_url=settings.revoke_url,
    )


def client_identity(settings: Settings, env: Mapping[str, str] | None = None) -> str | None:
    """Who the token belongs to, for the store key: the OAuth2 client id; for a JSON login,
    the login body template with its placeholders expanded except those of secret fields
    (the user name and any other non-secret field: two users never share a key, and the
    key, a hash, never depends on a password)."""
    if settings.auth != "login":
        return settings.client_id
    env = os.environ if env is None else env
    secrets = {s.reveal() for s in settings.login_secrets}

    def expand(m: re.Match[str]) -> str:
        value = env.get(m.group(1), "")
        return m.group(0) if value in secrets else value

    return "login:" + _TEMPLATE_VAR.sub(expand, settings.login_body)


def token_fetch_timeout(settings: Settings) -> float:
    """The bound on one token request: --timeout bounds token requests too (a hung token
    endpoint ends in exit 3), at most the token manager's default of 30 s."""
    from ..auth._manager import DEFAULT_FETCH_TIMEOUT

    return min(settings.timeout, DEFAULT_FETCH_TIMEOUT)


def open_run_token_store(settings: Settings) -> TokenStore | None:
    """The store ``--token-store`` names, for this run's credentials; None without one.

    ConfigError for a bad spec or a group-readable token file: raised before any request.
    With ``--auth none`` or ``bearer`` no token is fetched: the spec is checked, then ignored
    with a warning.
    """
    spec = settings.token_store
    if spec is None:
        return None
    from ..auth._stores import open_token_store

    if settings.auth not in ("oauth2", "login") or settings.token_url is None:
        open_token_store(spec, endpoint="http://unused.invalid/", client_id=None)
        log.warning("--token-store is ignored with --auth %s: no token is fetched", settings.auth)
        return None
    return open_token_store(
        spec,
        endpoint=settings.token_url,
        client_id=client_identity(settings),
        scope=settings.scope,
        # the store's lock is held for a whole fetch, retries included: sized from the
        # same two bounds the run's TokenManager gets (open_tokens)
        fetch_timeout=token_fetch_timeout(settings),
        auth_retry_time=settings.auth_retry_time,
    )


async def close_token_store(store: TokenStore | None) -> None:
    aclose = getattr(store, "aclose", None)
    if aclose is not None:
        await aclose()


# --- the run -------------------------------------------------------------------------------


def open_plan_source(plan: RunPlan) -> Source | str:
    """What the plan reads: a file path or ``-`` (the uploader opens those), a shard of a
    file, a dead-letter file to replay, or a ``--db`` query (a key range of it)."""
    settings = plan.settings
    if settings.command == "replay":
        from ..sources._replay import DeadLetterSource

        return DeadLetterSource(settings.source or "")  # SourceError before any request
    if settings.db is not None:
        from ..sources.sql import open_sql_source

        assert settings.key is not None  # checked by resolve()
        sql = open_sql_source(
            settings.db, query=settings.query, table=settings.table, key=settings.key
        )
        if plan.shard is None:
            return sql
        if plan.key_range is None:  # fewer key ranges than shards: this one has no rows
            from ..sources._open import open_source

            return open_source([])
        return sql.with_range(*plan.key_range)
    assert settings.source is not None  # checked by resolve()
    shard = plan.file_shard
    if shard is None:
        return settings.source
    from ..sources._shards import open_shard

    return open_shard(settings.source, shard)


@contextlib.asynccontextmanager
async def open_tokens(
    settings: Settings,
    *,
    store: TokenStore | None,
    ssl: ssl_module.SSLContext | bool | None,
    observer: TokenObserver | None = None,
) -> AsyncIterator[TokenManager | None]:
    """The run's token manager (None without authentication), on a transport of its own with
    the run's TLS settings; closed after the uploader, so that ``--revoke-url`` revokes the
    token once, after the last batch."""
    from .._transports import open_transport
    from ..auth._manager import TokenManager

    provider = build_auth(settings)
    if provider is None:
        yield None
        return
    # one fetch at a time (single-flight) and the revocation: two connections are plenty
    transport = open_transport(settings.transport, connections=2, timeout=settings.timeout, ssl=ssl)
    try:
        tokens = TokenManager(
            provider,
            skew=settings.token_skew,
            store=store,
            # revoke once at the end (RFC 7009), unless other processes share the token
            revoke_on_close=settings.revoke_url is not None and store is None,
            transport=transport,
            fetch_timeout=token_fetch_timeout(settings),
            # a token endpoint down (5xx, 429, timeouts) is retried for this long, then exit 3
            max_fetch_time=settings.auth_retry_time,
            observer=observer,
        )
        try:
            yield tokens
        finally:
            await tokens.aclose()
    finally:
        await transport.aclose()


def open_uploader(
    plan: RunPlan,
    *,
    tokens: TokenManager | None,
    hooks: UploadHooks | None,
    ssl: ssl_module.SSLContext | bool | None,
) -> Uploader:
    """The one place the CLI builds an ``Uploader``."""
    from .._config import BodyOptions, HttpOptions, RejectOptions, StateOptions
    from .._uploader import Uploader

    settings = plan.settings
    return Uploader(
        settings.url,
        auth=tokens,
        concurrency=settings.concurrency,
        max_concurrency=settings.max_concurrency,
        initial_concurrency=settings.initial_concurrency,
        queue_size=settings.queue_size,
        limits=settings.limits,
        retry=settings.retry,
        body=BodyOptions(
            format=settings.body,
            wrap=settings.wrap,
            gzip=settings.gzip,
            headers=dict(settings.headers),
        ),
        http=HttpOptions(
            timeout=settings.timeout, ssl=ssl, rate=settings.rate, transport=settings.transport
        ),
        state=StateOptions(checkpoint=plan.checkpoint, failed=plan.failed, resume=settings.resume),
        rejects=RejectOptions(
            on_reject=settings.on_reject,
            max_split_requests=settings.max_split_requests,
            results=settings.results,
        ),
        hooks=hooks,
    )


class _Outcome(UploadHooks):
    """Keeps the summary the run ends with: an ``Interrupted`` carries its own, but an
    AuthError (or a crash) mid-run does not, and the counts so far are worth reporting all
    the same. Grouped with the caller's hooks (:class:`HookGroup`): the per-request and
    per-batch events reach only the hooks that implement them."""

    def __init__(self) -> None:
        self.summary: RunSummary | None = None

    def on_finish(self, summary: RunSummary) -> None:
        self.summary = summary


async def run_plan(
    plan: RunPlan, *, observe: Callable[[TokenCount], UploadHooks | None] | None = None
) -> tuple[RunSummary | None, Exception | None]:
    """Run ``plan``; returns its summary (None when it never started) and the error that
    ended it (None when it finished), so that a caller reports the one and maps the other to
    an exit code. ``observe`` builds the run's display or reporter, given the live count of
    token requests."""
    tokens: TokenManager | None = None

    def token_requests() -> int:
        return tokens.stats.requests if tokens is not None else 0

    outcome = _Outcome()
    hooks = HookGroup([outcome, observe(token_requests) if observe is not None else None])
    # the token manager stands alone: its observer is wired here, to the same hooks
    observer = hooks.on_token if overrides(hooks, "on_token") else None
    try:
        source = open_plan_source(plan)  # SourceError before any request
        ssl = plan.settings.ssl_context()
        # a bad --token-store is a ConfigError here, before any request
        store = open_run_token_store(plan.settings)
        try:
            async with open_tokens(
                plan.settings, store=store, ssl=ssl, observer=observer
            ) as tokens:
                up = open_uploader(plan, tokens=tokens, hooks=hooks, ssl=ssl)
                async with up:
                    with stop_on_signals(up):
                        return await up.upload(source), None
        finally:
            await close_token_store(store)
    except Interrupted as exc:
        return exc.summary or outcome.summary, exc
    except Exception as exc:
        return outcome.summary, exc


@contextlib.contextmanager
def stop_on_signals(up: Uploader, grace: float = GRACE) -> Iterator[None]:
    """First SIGINT/SIGTERM: drain, and abort after ``grace`` seconds; a second: abort now."""
    loop = asyncio.get_running_loop()
    hits = 0

    def on_signal() -> None:
        nonlocal hits
        hits += 1
        if hits == 1:
            up.stop()
            loop.call_later(grace, up.abort)
        else:
            up.abort()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
