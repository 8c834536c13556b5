"""The sink's settings: what it accepts, and which faults it injects.

Deliberately independent of the client's configuration (``asyncsync._config``): the reference
server must not share code with the client it is used to test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Literal, get_args

from ._capacity import check_schedule

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_MAX_SIZE",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_USERS",
    "FaultPhase",
    "Faults",
    "LoginExpiryStyle",
    "ResultsShape",
    "RetryAfterForm",
    "SinkConfig",
]

DEFAULT_CLIENT_ID = "asyncsync-demo"
DEFAULT_CLIENT_SECRET = "demo-secret"
DEFAULT_USERS: Mapping[str, str] = {"demo": "demo-password"}
DEFAULT_CLIENT_MAX_SIZE = 64 * 1024 * 1024

LoginExpiryStyle = Literal["seconds", "iso", "iso-only", "none"]
"""What ``/login`` says about the session's lifetime.

``seconds``: ``expires_in`` only; ``iso``: ``expires_in`` and ``session_token_expiration``
(ISO-8601, UTC); ``iso-only``: only ``session_token_expiration``; ``none``: nothing (the token
still expires after ``token_ttl``; only a 401 tells the client).
"""

RetryAfterForm = Literal["seconds", "date"]
ResultsShape = Literal["none", "elasticsearch", "salesforce"]
"""How ``/ingest`` answers a batch: ``none`` (one status for the batch: 200, or 400 naming the
first record holding ``reject_field``), or 200 with one result per record in the shape of
Elasticsearch's bulk API (``{"errors": ..., "items": [{"index": {"status": ...}}]}``) or of
Salesforce sObject Collections (``[{"success": ..., "errors": [...]}]``)."""
FaultPhase = Literal["before", "after", "either"]
"""When an injected 5xx or reset happens: ``before`` the batch is stored (a plain failure),
``after`` it was stored (the retry must be deduplicated by its Idempotency-Key), or ``either``
(chosen at random per fault)."""

Latency = float | tuple[float, float]


def _check_latency(name: str, value: Any) -> Latency:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be seconds or a [low, high] range, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
        return float(value)
    if isinstance(value, list | tuple) and len(value) == 2:
        low, high = (_check_latency(name, v) for v in value)
        assert isinstance(low, float)
        assert isinstance(high, float)
        if low > high:
            raise ValueError(f"{name} range must be [low, high] with low <= high, got {value!r}")
        return (low, high)
    raise ValueError(f"{name} must be seconds or a [low, high] range, got {value!r}")


def _check_rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")
    return float(value)


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def _check_seconds(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be seconds >= 0, got {value!r}")
    return float(value)


def _check_choice(name: str, value: Any, allowed: Any) -> Any:
    choices = get_args(allowed)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _check_status(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
        raise ValueError(f"{name} must be an HTTP error status (400-599), got {value!r}")
    return value


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


@dataclass(kw_only=True)
class _FaultFields:
    """The fault options, shared by :class:`Faults` and (flat) by :class:`SinkConfig`."""

    latency: Latency = 0.0
    """Added to every ingest request after its body was read: seconds, or a [low, high]
    range drawn uniformly."""
    token_latency: Latency = 0.0
    """Added to every token request (``/oauth/token``, ``/login``)."""
    error_rate: float = 0.0
    """Fraction of ingest requests answered with one of ``error_statuses`` (seeded RNG)."""
    error_statuses: tuple[int, ...] = (500, 502, 503)
    reset_rate: float = 0.0
    """Fraction of ingest requests whose connection is aborted (TCP RST) with no response."""
    fault_phase: FaultPhase = "before"
    throttle_every: int = 0
    """Every N-th ingest request (counted outside throttle windows) opens a window of
    ``retry_after`` seconds; it and every ingest request inside the window get
    ``throttle_status`` with a ``Retry-After`` header. 0 = off."""
    retry_after: float = 1.0
    retry_after_form: RetryAfterForm = "seconds"
    """``seconds`` (delay-seconds; fractional when ``retry_after`` is fractional) or
    ``date`` (an IMF-fixdate, rounded up to the next whole second)."""
    throttle_status: int = 429
    revoke_all_after: int = 0
    """Revoke every token once, after this many further ingest requests. 0 = off."""
    auth_outage: float = 0.0
    """Token endpoints answer 503 for this many seconds after the sink starts (or after the
    value is set at runtime)."""
    auth_outage_requests: int = 0
    """Token endpoints answer 503 to the next N token requests."""
    reject_field: str | None = None
    """A batch with a record holding this field is answered 400 with a JSON error body (with
    ``results``: that record's item is a 400, the others are stored)."""
    results: ResultsShape = "none"
    item_throttle_rate: float = 0.0
    """With ``results``: fraction of items answered 429 (not stored; seeded RNG)."""
    max_body_bytes: int | None = None
    """Bodies larger than this (decoded, i.e. after gunzip) are answered 413."""
    hang: bool = False
    """Ingest requests are accepted and never answered (until the client gives up)."""
    hang_rate: float = 0.0
    """Fraction of ingest requests that hang."""
    token_hang: bool = False
    """Token requests are accepted and never answered."""
    clock_offset: float = 0.0
    """Seconds added to the server's wall clock in absolute times it sends
    (``session_token_expiration``, Retry-After dates): a server whose clock is off."""
    seed: int | None = None
    """Seed for every random fault decision (None: unseeded)."""
    capacity: int = 0
    """Requests in flight served at the base ``latency``; above, answers slow down in
    proportion (see :mod:`asyncsync.sink._capacity`). 0 = off."""
    hard_limit: int = 0
    """Requests in flight above this get ``overload_status`` at once (0: ``2 * capacity``)."""
    overload_status: int = 429
    capacity_schedule: tuple[tuple[float, int], ...] = ()
    """``((seconds, capacity), ...)``: L over time from the first ingest request."""

    def __post_init__(self) -> None:
        self.latency = _check_latency("latency", self.latency)
        self.token_latency = _check_latency("token_latency", self.token_latency)
        self.error_rate = _check_rate("error_rate", self.error_rate)
        statuses: Any = self.error_statuses
        if isinstance(statuses, int):
            statuses = (statuses,)
        if not isinstance(statuses, list | tuple) or not statuses:
            raise ValueError(f"error_statuses must be a non-empty list, got {statuses!r}")
        self.error_statuses = tuple(_check_status("error_statuses", s) for s in statuses)
        self.reset_rate = _check_rate("reset_rate", self.reset_rate)
        if self.error_rate + self.reset_rate > 1:
            raise ValueError("error_rate + reset_rate must not exceed 1")
        _check_choice("fault_phase", self.fault_phase, FaultPhase)
        _check_count("throttle_every", self.throttle_every)
        self.retry_after = _check_seconds("retry_after", self.retry_after)
        _check_choice("retry_after_form", self.retry_after_form, RetryAfterForm)
        _check_status("throttle_status", self.throttle_status)
        _check_count("revoke_all_after", self.revoke_all_after)
        self.auth_outage = _check_seconds("auth_outage", self.auth_outage)
        _check_count("auth_outage_requests", self.auth_outage_requests)
        if self.reject_field is not None and not isinstance(self.reject_field, str):
            raise ValueError(f"reject_field must be a field name, got {self.reject_field!r}")
        _check_choice("results", self.results, ResultsShape)
        self.item_throttle_rate = _check_rate("item_throttle_rate", self.item_throttle_rate)
        if self.max_body_bytes is not None:
            _check_count("max_body_bytes", self.max_body_bytes)
        _check_flag("hang", self.hang)
        self.hang_rate = _check_rate("hang_rate", self.hang_rate)
        _check_flag("token_hang", self.token_hang)
        if (
            isinstance(self.clock_offset, bool)
            or not isinstance(self.clock_offset, int | float)
            or not math.isfinite(self.clock_offset)
        ):
            raise ValueError(f"clock_offset must be seconds, got {self.clock_offset!r}")
        self.clock_offset = float(self.clock_offset)
        _check_count("capacity", self.capacity)
        _check_count("hard_limit", self.hard_limit)
        if self.overload_status not in (429, 503):
            raise ValueError(f"overload_status must be 429 or 503, got {self.overload_status!r}")
        self.capacity_schedule = check_schedule(self.capacity_schedule)
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError(f"seed must be an integer or null, got {self.seed!r}")


def _fault_fields() -> tuple[Field[Any], ...]:
    return fields(_FaultFields)


FAULT_NAMES: frozenset[str] = frozenset(f.name for f in _fault_fields())


@dataclass(kw_only=True)
class Faults(_FaultFields):
    """The faults a running sink injects. Mutable: change it while the sink runs.

    Countdowns (``revoke_all_after``, ``auth_outage_requests``) and the outage clock
    (``auth_outage``) restart when their value changes; :meth:`Sink.set_faults` and
    ``POST /admin/faults`` restart them even when the value is the same.
    """

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples become lists."""
        out: dict[str, Any] = {}
        for f in _fault_fields():
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def update(self, changes: Mapping[str, Any]) -> None:
        """Merge ``changes`` in place, all or nothing. Raises ValueError naming a bad key."""
        unknown = sorted(set(changes) - FAULT_NAMES)
        if unknown:
            raise ValueError(f"unknown fault option(s): {', '.join(unknown)}")
        merged = {**self.to_dict(), **changes}
        checked = Faults(**merged)  # validates and normalises
        for name in changes:
            setattr(self, name, getattr(checked, name))

    def copy(self) -> Faults:
        return Faults(**{f.name: getattr(self, f.name) for f in _fault_fields()})


@dataclass(kw_only=True)
class SinkConfig(_FaultFields):
    """Everything about a reference sink. All keyword; every field has a default.

    The fault options can be given flat (``SinkConfig(error_rate=0.2, seed=1)``) or as
    ``faults=Faults(...)``, not both. Either way the running sink works on its own copy,
    ``Sink.faults``.
    """

    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = field(default=DEFAULT_CLIENT_SECRET, repr=False)
    users: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_USERS), repr=False)
    """username -> password accepted by ``POST /login``."""
    token_ttl: float | None = 3600.0
    """Token lifetime in seconds (None: tokens never expire and no lifetime is announced)."""
    token_expires_in: bool = True
    """Whether ``/oauth/token`` announces ``expires_in`` (False: the token still expires)."""
    login_expiry_style: LoginExpiryStyle = "iso"
    require_auth: bool = True
    dedupe: bool = True
    """A repeat of an accepted Idempotency-Key is answered 200 without storing it again."""
    store_path: str | None = None
    """Append accepted records to this file as JSON Lines."""
    keep_records: bool = True
    """Keep accepted records (and per-key body digests) in memory. Benchmarks turn it off."""
    client_max_size: int = DEFAULT_CLIENT_MAX_SIZE
    """Largest request body accepted, raw and decoded (413 above)."""
    admin: bool = True
    """Serve ``/admin/*`` (fault changes, revoke-all, reset). Unauthenticated: loopback use."""
    faults: Faults | None = None

    def __post_init__(self) -> None:
        if self.faults is not None:
            if not isinstance(self.faults, Faults):
                raise ValueError("faults must be a Faults instance")
            changed = [f.name for f in _fault_fields() if getattr(self, f.name) != _default_of(f)]
            if changed:
                raise ValueError(
                    "give fault options either flat or as faults=Faults(...), not both "
                    f"({', '.join(changed)})"
                )
            for f in _fault_fields():
                setattr(self, f.name, getattr(self.faults, f.name))
        super().__post_init__()
        if not isinstance(self.client_id, str) or not isinstance(self.client_secret, str):
            raise ValueError("client_id and client_secret must be strings")
        if self.token_ttl is not None:
            self.token_ttl = _check_seconds("token_ttl", self.token_ttl)
        _check_choice("login_expiry_style", self.login_expiry_style, LoginExpiryStyle)
        if isinstance(self.client_max_size, bool) or not isinstance(self.client_max_size, int):
            raise ValueError(f"client_max_size must be bytes, got {self.client_max_size!r}")
        if self.client_max_size <= 0:
            raise ValueError(f"client_max_size must be > 0, got {self.client_max_size!r}")
        self.users = dict(self.users)

    def fault_settings(self) -> Faults:
        """A fresh :class:`Faults` holding this configuration's fault options."""
        return Faults(**{f.name: getattr(self, f.name) for f in _fault_fields()})


def _default_of(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING
