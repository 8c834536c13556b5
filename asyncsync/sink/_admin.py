"""What is not the partner API itself: ``GET /`` (the route list), ``GET /stats``,
``GET /records``, and the ``/admin/...`` routes that change faults, revoke every token,
reset the counters or open a throttle window while the sink runs.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ._bodies import read_json_object
from ._responses import json_response
from ._state import STATE, set_faults

__all__ = [
    "admin_faults",
    "admin_reset",
    "admin_revoke_all",
    "admin_throttle",
    "index",
    "records",
    "stats",
]


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on")


async def index(request: web.Request) -> web.StreamResponse:
    return json_response(
        200,
        {
            "service": "asyncsync reference sink",
            "endpoints": [
                "POST /oauth/token",
                "POST /login",
                "POST /ingest",
                "POST /revoke",
                "GET /stats[?detail=1]",
                "GET /records",
                "GET|POST /admin/faults",
                "POST /admin/revoke-all",
                "POST /admin/reset",
                "POST /admin/throttle",
            ],
        },
    )


async def stats(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    return json_response(200, st.stats(detail=_truthy(request.query.get("detail"))))


async def records(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    if st.config.keep_records:
        body = st.records_jsonl()
    elif st.config.store_path is not None:
        body = await asyncio.to_thread(_read_file, st.config.store_path)
    else:
        body = b""
    return web.Response(body=body, content_type="application/x-ndjson")


def _read_file(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


async def admin_faults(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    if request.method == "POST":
        changes = await read_json_object(request)
        try:
            set_faults(st, changes)
        except (ValueError, TypeError) as exc:
            return json_response(400, {"error": "invalid_faults", "message": str(exc)})
    return json_response(200, st.faults.to_dict())


async def admin_revoke_all(request: web.Request) -> web.StreamResponse:
    return json_response(200, {"revoked": request.app[STATE].revoke_all()})


async def admin_reset(request: web.Request) -> web.StreamResponse:
    request.app[STATE].reset()
    return json_response(200, {"reset": True})


async def admin_throttle(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    payload = await read_json_object(request)
    seconds = payload.get("seconds", st.faults.retry_after)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        return json_response(400, {"error": "invalid_seconds", "message": "seconds must be >= 0"})
    st.open_window(float(seconds))
    return json_response(200, {"until": st.throttle_until})
