"""The sink's response helpers: JSON answers and the realm every challenge names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

__all__ = ["REALM", "json_response", "number"]

REALM = "asyncsync-sink"


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def number(seconds: float) -> int | float:
    """``90`` rather than ``90.0`` when whole: clients may insist on an integer."""
    return int(seconds) if float(seconds).is_integer() else seconds
