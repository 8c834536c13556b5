"""The capacity model: a server whose knee is known, for adaptive-concurrency tests.

Up to ``capacity`` (L) ingest requests in flight, each answer takes the base ``latency``;
above L the server queues: an answer takes ``latency * n / L`` where ``n`` is the number in
flight when the request arrived (itself included), so throughput stays at ``L / latency``
however many requests wait. Above ``hard_limit`` (default ``2 * L``) requests are refused at
once with ``overload_status`` (429 or 503), without ``Retry-After``: plain back-pressure.

``capacity_schedule`` changes L mid-run: ``((0, 16), (10, 8), (20, 32))`` means L is 16 from
the first ingest request, 8 from ten seconds later, 32 from twenty. The clock starts at the
first ingest request after the schedule is set (at start-up, or through ``/admin/faults``),
so a benchmark can set it and then begin. With a schedule and no ``hard_limit`` the hard
limit follows L.

Pure functions of their arguments (the clock reading is passed in), so tests need no server.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "Schedule",
    "capacity_at",
    "check_schedule",
    "hard_limit_for",
    "parse_schedule",
    "service_time",
]

Schedule = tuple[tuple[float, int], ...]

_ENTRY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*(\d+)\s*$")


def parse_schedule(text: str) -> Schedule:
    """``"0:16,10:8,20:32"`` -> ``((0.0, 16), (10.0, 8), (20.0, 32))``; ValueError naming
    the bad entry. Times must increase; capacities must be >= 1."""
    entries: list[tuple[float, int]] = []
    for part in text.split(","):
        m = _ENTRY.match(part)
        if m is None:
            raise ValueError(f"capacity schedule entry {part.strip()!r} is not SECONDS:CAPACITY")
        entries.append((float(m.group(1)), int(m.group(2))))
    return check_schedule(entries)


def check_schedule(entries: str | Sequence[Sequence[float]]) -> Schedule:
    """A schedule given as text or as ``[[seconds, capacity], ...]``, checked."""
    if isinstance(entries, str):
        return parse_schedule(entries) if entries.strip() else ()
    if not isinstance(entries, list | tuple):
        raise ValueError(f"capacity schedule must be [[seconds, capacity], ...], got {entries!r}")
    out: list[tuple[float, int]] = []
    for entry in entries:
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise ValueError(f"capacity schedule entry {entry!r} is not [seconds, capacity]")
        t, cap = entry
        if isinstance(t, bool) or not isinstance(t, int | float) or not t >= 0:
            raise ValueError(f"capacity schedule time must be seconds >= 0, got {t!r}")
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ValueError(f"capacity schedule capacity must be an integer >= 1, got {cap!r}")
        if out and t <= out[-1][0]:
            raise ValueError(
                f"capacity schedule times must increase, got {t!r} after {out[-1][0]!r}"
            )
        out.append((float(t), cap))
    return tuple(out)


def capacity_at(capacity: int, schedule: Schedule, elapsed: float | None) -> int:
    """L at ``elapsed`` seconds into the schedule (``capacity`` before its first entry, or
    when there is none); 0 means the model is off."""
    current = capacity
    if elapsed is not None:
        for t, cap in schedule:
            if elapsed < t:
                break
            current = cap
    return current


def hard_limit_for(hard_limit: int, capacity: int) -> int:
    """Requests in flight above this are refused: ``hard_limit``, or ``2 * L`` when 0."""
    return hard_limit if hard_limit > 0 else 2 * capacity


def service_time(latency: float, in_flight: int, capacity: int) -> float:
    """How long an answer takes with ``in_flight`` requests out (this one included)."""
    if capacity <= 0 or in_flight <= capacity:
        return latency
    return latency * in_flight / capacity
