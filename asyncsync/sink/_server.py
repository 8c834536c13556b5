"""``Sink``: the reference server running in the current event loop."""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import Any, Self

import orjson
from aiohttp import web

from ._app import create_app
from ._config import Faults, SinkConfig
from ._state import SinkState, set_faults

__all__ = ["Sink"]


class Sink:
    """A reference partner API on loopback, for tests, demos and benchmarks.

    ``async with Sink(SinkConfig(token_ttl=1.0)) as sink:`` serves on 127.0.0.1 and an
    ephemeral port; ``sink.url``, ``sink.token_url`` ... name the endpoints, ``sink.stats()``
    and ``sink.records()`` show what arrived, and ``sink.faults`` changes faults while it runs.
    """

    def __init__(
        self,
        config: SinkConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        shutdown_timeout: float = 1.0,
        access_log: bool = False,
    ) -> None:
        self.config = config if config is not None else SinkConfig()
        self._state = SinkState(self.config)
        self._app = create_app(state=self._state)
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._shutdown_timeout = shutdown_timeout
        self._access_log = access_log
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> Self:
        if self._runner is not None:
            raise RuntimeError("this sink is already running")
        kwargs: dict[str, Any] = {}
        if not self._access_log:
            kwargs["access_log"] = None
        runner = web.AppRunner(
            self._app,
            handle_signals=False,
            shutdown_timeout=self._shutdown_timeout,
            handler_cancellation=True,
            auto_decompress=False,
            **kwargs,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, ssl_context=self._ssl)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = runner.addresses[0][1]
        host = self._host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self._ssl is not None else "http"
        self._url = f"{scheme}://{host}:{port}"
        return self

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        if self._url is None:
            raise RuntimeError("the sink is not running; use `async with Sink(...)`")
        return self._url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def token_url(self) -> str:
        return self.url + "/oauth/token"

    @property
    def login_url(self) -> str:
        return self.url + "/login"

    @property
    def ingest_url(self) -> str:
        return self.url + "/ingest"

    @property
    def revoke_url(self) -> str:
        return self.url + "/revoke"

    @property
    def stats_url(self) -> str:
        return self.url + "/stats"

    @property
    def records_url(self) -> str:
        return self.url + "/records"

    @property
    def app(self) -> web.Application:
        return self._app

    # -- faults and state ----------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        """The running faults. Mutate its fields, or assign a new :class:`Faults`."""
        return self._state.faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        if not isinstance(value, Faults):
            raise TypeError("faults must be a Faults instance")
        self._state.faults = value

    def set_faults(self, **changes: Any) -> Faults:
        """Validate and merge fault options; restarts the countdowns and clocks named."""
        set_faults(self._state, changes)
        return self._state.faults

    def stats(self, *, detail: bool = False) -> dict[str, Any]:
        """The same dict ``GET /stats`` answers (``detail=True``: ``?detail=1``)."""
        return self._state.stats(detail)

    def records(self) -> list[dict[str, Any]]:
        """Accepted records, in arrival order (from the store file if not kept in memory)."""
        if self.config.keep_records:
            return list(self._state.records)
        if self.config.store_path is not None:
            with open(self.config.store_path, "rb") as fh:
                return [orjson.loads(line) for line in fh if line.strip()]
        return []

    def issue_token(self, ttl: float | None = None) -> str:
        """A valid bearer token without a token request (not counted as one)."""
        token = self._state.issue_token(ttl if ttl is not None else self.config.token_ttl)
        self._state.tokens_issued -= 1
        return token

    def revoke_all(self) -> int:
        """Revoke every token issued so far; returns how many were valid."""
        return self._state.revoke_all()

    def open_throttle_window(self, seconds: float | None = None) -> None:
        """Answer every ingest request with 429 + Retry-After for ``seconds`` from now."""
        self._state.open_window(self.faults.retry_after if seconds is None else seconds)

    def reset(self) -> None:
        """Clear stats, records and accepted keys (tokens stay valid)."""
        self._state.reset()

    def throttle_windows(self) -> list[tuple[float, float]]:
        """(start, end) monotonic times of every throttle window opened so far."""
        return list(self._state.windows)

    def __repr__(self) -> str:
        where = self._url or "not running"
        return f"<Sink {where}>"
