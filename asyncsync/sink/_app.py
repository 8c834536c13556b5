"""The sink's aiohttp application: the routes and the lifecycle, wired to one SinkState."""

from __future__ import annotations

import time

from aiohttp import web

from . import _admin, _token_routes
from ._config import SinkConfig
from ._ingest import ingest
from ._state import STATE, SinkState

__all__ = ["create_app"]


def create_app(config: SinkConfig | None = None, state: SinkState | None = None) -> web.Application:
    """The sink as an aiohttp application (serve it with any runner, or the test client).

    Serve it with ``auto_decompress=False`` (the sink decodes ``Content-Encoding`` itself, to
    bound decoded sizes) and preferably ``handler_cancellation=True``; :class:`Sink` does both.
    """
    if state is None:
        state = SinkState(config if config is not None else SinkConfig())
    app = web.Application(client_max_size=state.config.client_max_size)
    app[STATE] = state
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_cleanup)
    app.router.add_get("/", _admin.index)
    app.router.add_post("/oauth/token", _token_routes.oauth_token)
    app.router.add_post("/login", _token_routes.login)
    app.router.add_post("/ingest", ingest)
    app.router.add_post("/revoke", _token_routes.revoke)
    app.router.add_get("/stats", _admin.stats)
    app.router.add_get("/records", _admin.records)
    if state.config.admin:
        app.router.add_get("/admin/faults", _admin.admin_faults)
        app.router.add_post("/admin/faults", _admin.admin_faults)
        app.router.add_post("/admin/revoke-all", _admin.admin_revoke_all)
        app.router.add_post("/admin/reset", _admin.admin_reset)
        app.router.add_post("/admin/throttle", _admin.admin_throttle)
    return app


async def _on_startup(app: web.Application) -> None:
    st = app[STATE]
    st.started = time.monotonic()
    st.release.clear()
    st.rt.restart()
    st.rt.sync(st.faults, st.started)
    st.open_store()


async def _on_shutdown(app: web.Application) -> None:
    st = app[STATE]
    st.release.set()  # hanging handlers give up and drop their connections


async def _on_cleanup(app: web.Application) -> None:
    app[STATE].close_store()
