"""Fault injection: the schedules behind injected 5xx and resets, throttle countdowns, auth
outages, latency and hangs, and the ways a faulty partner answers (or does not).

Knows nothing of the counters: the handlers count what these decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import random
import socket
import struct
import time
from typing import Any, NoReturn

from aiohttp import web

from ._config import Faults, Latency
from ._responses import json_response

__all__ = ["NOT_SET", "FaultRuntime", "Reset", "abort", "hang", "injected", "throttled"]

NOT_SET: Any = object()


class Reset(Exception):
    """Abort the connection without a response."""


class FaultRuntime:
    """Schedules derived from a :class:`Faults` object: RNGs, countdowns, the outage clock.

    Re-synchronised at every request, so a fault changed at runtime (by assignment, by
    ``Sink.set_faults`` or by ``POST /admin/faults``) takes effect with fresh schedules.
    Each purpose draws from its own RNG, so turning one fault on does not shift the
    sequence another one sees under the same seed.
    """

    PURPOSES = ("fault", "status", "phase", "latency", "hang", "item")

    def __init__(self) -> None:
        self.obj: Faults | None = None
        self.rng: dict[str, random.Random] = {}
        self.seed: Any = NOT_SET
        self.outage_setting: Any = NOT_SET
        self.outage_until = 0.0
        self.outage_req_setting: Any = NOT_SET
        self.outage_req_left = 0
        self.revoke_setting: Any = NOT_SET
        self.revoke_left: int | None = None
        self.throttle_setting: Any = NOT_SET
        self.throttle_count = 0
        self.schedule_setting: Any = NOT_SET
        self.schedule_start = 0.0

    def restart(self, names: set[str] | frozenset[str] | None = None) -> None:
        """Forget the schedules for ``names`` (all when None); the next sync rebuilds them."""
        if names is None or "seed" in names:
            self.seed = NOT_SET
        if names is None or "auth_outage" in names:
            self.outage_setting = NOT_SET
        if names is None or "auth_outage_requests" in names:
            self.outage_req_setting = NOT_SET
        if names is None or "revoke_all_after" in names:
            self.revoke_setting = NOT_SET
        if names is None or "throttle_every" in names:
            self.throttle_setting = NOT_SET
        if names is None or "capacity_schedule" in names:
            self.schedule_setting = NOT_SET

    def sync(self, faults: Faults, now: float) -> None:
        if faults is not self.obj:
            self.obj = faults
            self.restart()
        if faults.seed != self.seed or self.seed is NOT_SET:
            self.seed = faults.seed
            self.rng = {
                p: random.Random(None if faults.seed is None else f"{faults.seed}/{p}")
                for p in self.PURPOSES
            }
        if faults.auth_outage != self.outage_setting:
            self.outage_setting = faults.auth_outage
            self.outage_until = now + faults.auth_outage
        if faults.auth_outage_requests != self.outage_req_setting:
            self.outage_req_setting = faults.auth_outage_requests
            self.outage_req_left = faults.auth_outage_requests
        if faults.revoke_all_after != self.revoke_setting:
            self.revoke_setting = faults.revoke_all_after
            self.revoke_left = faults.revoke_all_after or None
        if faults.throttle_every != self.throttle_setting:
            self.throttle_setting = faults.throttle_every
            self.throttle_count = 0
        if faults.capacity_schedule != self.schedule_setting:
            # the schedule's clock starts at the first ingest request that sees it
            self.schedule_setting = faults.capacity_schedule
            self.schedule_start = now

    # -- decisions, one per request ----------------------------------------------------------

    def delay(self, latency: Latency) -> float:
        if isinstance(latency, tuple):
            return self.rng["latency"].uniform(*latency)
        return latency

    def revoke_all_due(self) -> bool:
        """Count down ``revoke_all_after``: True once, when it reaches zero."""
        if self.revoke_left is None:
            return False
        if self.revoke_left == 0:
            self.revoke_left = None
            return True
        self.revoke_left -= 1
        return False

    def hangs(self, faults: Faults) -> bool:
        return bool(
            faults.hang or (faults.hang_rate and self.rng["hang"].random() < faults.hang_rate)
        )

    def throttle_due(self, faults: Faults) -> bool:
        """Count toward ``throttle_every``: True on every Nth request (then start over)."""
        if not faults.throttle_every:
            return False
        self.throttle_count += 1
        if self.throttle_count < faults.throttle_every:
            return False
        self.throttle_count = 0
        return True

    def auth_down(self, now: float) -> bool:
        """Whether the token endpoints are in an outage (by requests left, or until a time)."""
        if self.outage_req_left > 0:
            self.outage_req_left -= 1
            return True
        return now < self.outage_until

    def draw(self, faults: Faults) -> int | str | None:
        """The fault for this request: a status to answer, ``"reset"``, or None."""
        if not (faults.error_rate or faults.reset_rate):
            return None
        roll = self.rng["fault"].random()
        if roll < faults.reset_rate:
            return "reset"
        if roll < faults.reset_rate + faults.error_rate:
            return self.rng["status"].choice(faults.error_statuses)
        return None

    def phase(self, faults: Faults) -> str:
        """``"before"`` (nothing stored) or ``"after"`` (stored, then the fault answered)."""
        if faults.fault_phase == "either":
            return "before" if self.rng["phase"].random() < 0.5 else "after"
        return faults.fault_phase


# -- answers ----------------------------------------------------------------------------------


def retry_after_header(faults: Faults, remaining: float) -> str:
    """``remaining`` seconds as the Retry-After form the faults ask for (seconds or a date)."""
    if faults.retry_after_form == "date":
        when = time.time() + faults.clock_offset + remaining
        return email.utils.formatdate(math.ceil(when), usegmt=True)
    if float(faults.retry_after).is_integer():
        return str(math.ceil(remaining - 1e-9)) if remaining > 0 else "0"
    value = math.ceil(remaining * 1000) / 1000
    return f"{value:.3f}".rstrip("0").rstrip(".") or "0"


def throttled(faults: Faults, remaining: float) -> web.Response:
    return json_response(
        faults.throttle_status,
        {"error": "rate_limited", "retry_after": round(remaining, 3)},
        {"Retry-After": retry_after_header(faults, remaining)},
    )


def injected(status: int) -> web.Response:
    return json_response(status, {"error": "injected_fault", "status": status})


def abort(request: web.BaseRequest) -> None:
    """Close the connection with a TCP RST, sending nothing."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def hang(release: asyncio.Event) -> NoReturn:
    """Never answer; at shutdown (``release`` set) drop the connection. Cancelled when the
    client leaves."""
    await release.wait()
    raise Reset
