"""What a running sink knows: issued and revoked tokens, accepted records and keys, the
counters ``GET /stats`` reports, the throttle windows, and the running faults with their
schedules. Handlers reach it as ``request.app[STATE]``.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import secrets
import time
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any, BinaryIO

import orjson
from aiohttp import web

from ._capacity import capacity_at
from ._config import Faults, SinkConfig
from ._faults import NOT_SET, FaultRuntime

__all__ = ["ARRIVALS_KEPT", "STATE", "SinkState", "StatusCounts", "set_faults"]

ARRIVALS_KEPT = 100_000


class StatusCounts(dict[str, int]):
    """``{"200": n, ...}`` as JSON has it, that also answers ``counts[200]`` (0 when absent)."""

    def __missing__(self, key: object) -> int:
        if isinstance(key, int) and not isinstance(key, bool):
            return dict.get(self, str(key), 0)
        return 0

    def get(self, key: Any, default: Any = None) -> Any:
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        return dict.get(self, key, default)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        return super().__contains__(key)


class SinkState:
    """Everything a sink knows: tokens, accepted records and keys, counters."""

    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        self.faults: Faults = config.fault_settings()
        self.rt = FaultRuntime()
        self.started = time.monotonic()
        self.tokens: dict[str, float] = {}  # token -> monotonic expiry (inf: never)
        self.revoked_tokens: set[str] = set()
        self.release = asyncio.Event()  # set at shutdown: hanging handlers give up
        self.store: BinaryIO | None = None
        self._client_id = config.client_id.encode()
        self._client_secret = config.client_secret.encode()
        self.in_flight = 0  # live gauges: not cleared by reset()
        self.token_in_flight = 0
        self.reset()

    # -- lifecycle ---------------------------------------------------------------------------

    def open_store(self) -> None:
        if self.config.store_path is not None and self.store is None:
            self.store = open(self.config.store_path, "ab", buffering=0)  # noqa: SIM115

    def close_store(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def reset(self) -> None:
        """Clear counters, records and accepted keys. Tokens stay valid; faults stay."""
        self.token_requests = 0
        self.token_by_endpoint: Counter[str] = Counter()
        self.token_statuses: Counter[int] = Counter()
        self.tokens_issued = 0
        self.max_token_in_flight = self.token_in_flight
        self.revocation_requests = 0
        self.revoked = 0
        self.ingest_requests = 0
        self.statuses: Counter[int] = Counter()
        self.max_in_flight = self.in_flight
        self.records: list[dict[str, Any]] = []
        self.record_count = 0
        self.accepted_keys: set[str] = set()
        self.batches = 0
        self.duplicates = 0
        self.duplicate_records = 0
        self.requests_without_key = 0
        self.unauthorized: Counter[str] = Counter()
        self.throttled = 0
        self.overloaded = 0  # refused above the capacity model's hard limit
        self.inside_window = 0
        self.windows_opened = 0
        self.throttle_until = -math.inf
        self.injected_errors = 0
        self.resets = 0
        self.hangs = 0
        self.rejected = 0
        self.rejected_items = 0
        self.throttled_items = 0
        self.results_by_key: dict[str, bytes] = {}
        self.too_large = 0
        self.malformed = 0
        self.formats: Counter[str] = Counter()
        self.encodings: Counter[str] = Counter()
        self.bytes_received = 0
        self.bytes_decoded = 0
        self.sends_by_key: dict[str, int] = {}
        self.key_digest: dict[str, tuple[int, int]] = {}
        self.digest_key: dict[tuple[int, int], str] = {}
        self.key_body_mismatches = 0
        self.bodies_under_several_keys = 0
        self.arrivals: deque[list[Any]] = deque(maxlen=ARRIVALS_KEPT)
        self.token_arrivals: deque[list[Any]] = deque(maxlen=ARRIVALS_KEPT)
        self.windows: deque[tuple[float, float]] = deque(maxlen=ARRIVALS_KEPT)
        self.rt.restart({"revoke_all_after", "throttle_every"})
        if self.store is not None:
            self.store.truncate(0)

    # -- tokens --------------------------------------------------------------------------------

    def issue_token(self, ttl: float | None = NOT_SET) -> str:
        if ttl is NOT_SET:
            ttl = self.config.token_ttl
        token = secrets.token_urlsafe(32)
        self.tokens[token] = math.inf if ttl is None else time.monotonic() + ttl
        self.tokens_issued += 1
        return token

    def revoke(self, token: str) -> bool:
        if self.tokens.pop(token, None) is None:
            return False
        self.revoked_tokens.add(token)
        self.revoked += 1
        return True

    def revoke_all(self) -> int:
        n = len(self.tokens)
        self.revoked_tokens.update(self.tokens)
        self.tokens.clear()
        self.revoked += n
        return n

    def bearer_problem(self, header: str | None, now: float) -> str | None:
        """Why this Authorization header is not acceptable, or None."""
        if not header:
            return "missing"
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "malformed"
        expiry = self.tokens.get(token)
        if expiry is None:
            return "revoked" if token in self.revoked_tokens else "unknown"
        if now >= expiry:
            return "expired"
        return None

    def client_matches(self, client_id: str, secret: str) -> bool:
        id_ok = hmac.compare_digest(client_id.encode(), self._client_id)
        secret_ok = hmac.compare_digest(secret.encode(), self._client_secret)
        return id_ok and secret_ok

    # -- throttling ------------------------------------------------------------------------------

    def open_window(self, seconds: float, now: float | None = None) -> None:
        start = time.monotonic() if now is None else now
        self.throttle_until = start + seconds
        self.windows.append((start, self.throttle_until))
        self.windows_opened += 1

    # -- stats -----------------------------------------------------------------------------------

    def capacity_now(self, now: float) -> int:
        """The capacity model's L at ``now`` (0: the model is off)."""
        f = self.faults
        if not (f.capacity or f.capacity_schedule):
            return 0
        elapsed = None if self.rt.schedule_setting is NOT_SET else now - self.rt.schedule_start
        return capacity_at(f.capacity, f.capacity_schedule, elapsed)

    def stats(self, detail: bool = False) -> dict[str, Any]:
        now = time.monotonic()
        sends = self.sends_by_key.values()
        out: dict[str, Any] = {
            "now": now,
            "uptime": now - self.started,
            "token_requests": self.token_requests,
            "token_requests_by_endpoint": dict(self.token_by_endpoint),
            "token_statuses": StatusCounts(
                (str(k), v) for k, v in sorted(self.token_statuses.items())
            ),
            "tokens_issued": self.tokens_issued,
            "max_concurrent_token_requests": self.max_token_in_flight,
            "revocation_requests": self.revocation_requests,
            "revoked": self.revoked,
            "ingest_requests": self.ingest_requests,
            "records": self.record_count,
            "batches": self.batches,
            "duplicates": self.duplicates,
            "duplicate_records": self.duplicate_records,
            "requests_without_key": self.requests_without_key,
            "statuses": StatusCounts((str(k), v) for k, v in sorted(self.statuses.items())),
            "max_concurrent_ingest": self.max_in_flight,
            "in_flight": self.in_flight,
            "unauthorized": dict(self.unauthorized),
            "throttled": self.throttled,
            "overloaded": self.overloaded,
            "capacity": self.capacity_now(now),
            "windows_opened": self.windows_opened,
            "inside_window_arrivals": self.inside_window,
            "injected_errors": self.injected_errors,
            "resets": self.resets,
            "hangs": self.hangs,
            "rejected": self.rejected,
            "rejected_items": self.rejected_items,
            "throttled_items": self.throttled_items,
            "too_large": self.too_large,
            "malformed": self.malformed,
            "formats": dict(self.formats),
            "encodings": dict(self.encodings),
            "bytes_received": self.bytes_received,
            "bytes_decoded": self.bytes_decoded,
            "keys_seen": len(self.sends_by_key),
            "resent_keys": sum(1 for n in sends if n > 1),
            "max_sends_per_key": max(sends, default=0),
            "key_body_mismatches": self.key_body_mismatches,
            "bodies_under_several_keys": self.bodies_under_several_keys,
        }
        if detail:
            out["arrivals"] = [list(a) for a in self.arrivals]
            out["token_arrivals"] = [list(a) for a in self.token_arrivals]
            out["windows"] = [list(w) for w in self.windows]
            out["sends_by_key"] = dict(self.sends_by_key)
        return out

    def records_jsonl(self) -> bytes:
        return b"".join(orjson.dumps(r) + b"\n" for r in self.records)


STATE = web.AppKey("asyncsync_sink_state", SinkState)


def set_faults(st: SinkState, changes: Mapping[str, Any]) -> None:
    """Merge ``changes`` into the running faults and restart the schedules they touch."""
    st.faults.update(changes)
    st.rt.restart(frozenset(changes))
    st.rt.sync(st.faults, time.monotonic())
