"""Shared fixtures: sample exports, and the real services some tests need."""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import orjson
import pytest

REQUIRE_SERVICES = os.environ.get("ASYNCSYNC_REQUIRE_SERVICES") == "1"


def record(i: int) -> dict[str, object]:
    """A ~280-byte record shaped like an account export."""
    return {
        "id": i,
        "account": f"ACC-{i:08d}",
        "name": f"Customer {i}",
        "email": f"customer{i}@example.com",
        "phone": f"+1-555-{i % 10000:04d}",
        "street": f"{i % 997} Market Street",
        "city": "Springfield",
        "country": "US",
        "balance": round(i * 1.37, 2),
        "updated_at": "2026-11-28T12:00:00Z",
        "tags": ["gold", "newsletter"],
    }


@pytest.fixture
def make_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """Write ``n`` records (ids 1..n) as JSONL and return the path."""

    def make(n: int, name: str = "export.jsonl") -> Path:
        path = tmp_path / name
        path.write_bytes(b"".join(orjson.dumps(record(i)) + b"\n" for i in range(1, n + 1)))
        return path

    return make


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _absent(message: str) -> NoReturn:
    """Skip for ``message``, unless CI requires the services (then fail)."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} and ASYNCSYNC_REQUIRE_SERVICES=1")
    pytest.skip(message)


def require_service(name: str, port: int) -> None:
    """Skip when the service is absent, unless CI requires it (then fail)."""
    if not _reachable(port):
        _absent(f"{name} is not reachable on 127.0.0.1:{port}")


def require_driver(module: str, extra: str) -> ModuleType:
    """The client library a service test needs; skip (or fail, like a service) without it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        _absent(f"{module} is not installed (pip install 'asyncsync[{extra}]')")


@pytest.fixture
def asyncpg_driver() -> ModuleType:
    """The ``asyncpg`` module: PostgreSQL tests need it even to fail to connect."""
    return require_driver("asyncpg", "postgres")


@pytest.fixture
def postgres_url(asyncpg_driver: ModuleType) -> str:
    require_service("PostgreSQL", 5432)
    return os.environ.get("ASYNCSYNC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def mysql_url() -> str:
    require_service("MariaDB", 3306)
    return os.environ.get("ASYNCSYNC_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test")


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", 6379)
    return os.environ.get("ASYNCSYNC_TEST_REDIS", "redis://127.0.0.1:6379/15")


#: the transports every contract test runs on (issue 13)
TRANSPORT_KINDS = ("aiohttp", "reqwest")


@pytest.fixture(params=TRANSPORT_KINDS)
def transport_kind(request: pytest.FixtureRequest) -> str:
    """Each HTTP transport by name; reqwest needs pyreqwest (``make install`` puts it in)."""
    kind: str = request.param
    if kind == "reqwest":
        from asyncsync._transports import reqwest_available

        if not reqwest_available():
            message = "pyreqwest is not installed (pip install 'asyncsync[fast]')"
            if REQUIRE_SERVICES:
                pytest.fail(f"{message} and ASYNCSYNC_REQUIRE_SERVICES=1")
            pytest.skip(message)
    return kind
