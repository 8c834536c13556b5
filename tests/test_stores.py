"""Shared token stores: one token across processes (file and Redis), leases, secrecy.

Real files, the real Redis on 127.0.0.1:6379 (db 15; every test uses its own key and deletes
it), the reference sink in-process, and real worker processes (``store_worker.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from asyncsync import ConfigError
from asyncsync.auth._file_store import FileTokenStore
from asyncsync.auth._manager import TokenManager, TokenStore, fingerprint
from asyncsync.auth._oauth2 import OAuth2ClientCredentials
from asyncsync.auth._redis_store import DEFAULT_PREFIX, RedisTokenStore
from asyncsync.auth._store_common import (
    DEFAULT_FILE_WAIT,
    TokenStoreLockTimeout,
    TokenStoreUnavailable,
    store_key,
)
from asyncsync.auth._stores import open_token_store
from asyncsync.sink import Sink, SinkConfig

WORKER = Path(__file__).with_name("store_worker.py")
CLIENT_ID = "asyncsync-demo"
SECRET = "s3cr3t-Store-Value-91f2"
Process = asyncio.subprocess.Process


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def key() -> str:
    """A store key of this test alone."""
    return f"test-{uuid.uuid4().hex[:16]}"


@pytest.fixture
async def redis_client(redis_url: str, key: str) -> AsyncIterator[Redis]:
    """A raw client on the test database; deletes this test's keys (only) afterwards."""
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.delete(DEFAULT_PREFIX + key, DEFAULT_PREFIX + key + ":lock")
        await client.aclose()


@pytest.fixture(params=["file", "redis"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store location: a token file, or the test Redis (skipped when Redis is absent)."""
    if request.param == "file":
        return f"file:{tmp_path / 'tokens.json'}"
    request.getfixturevalue("redis_client")
    url: str = request.getfixturevalue("redis_url")
    return url


def make_store(spec: str, key: str, **options: Any) -> FileTokenStore | RedisTokenStore:
    if spec.startswith("file:"):
        options.pop("lease", None)
        return FileTokenStore(spec[len("file:") :], key, **options)
    return RedisTokenStore(spec, key, **options)


def manager(sink: Sink, store: TokenStore, **options: Any) -> TokenManager:
    provider = OAuth2ClientCredentials(sink.token_url, CLIENT_ID, SECRET)
    return TokenManager(provider, store=store, **options)


def sink_config(**options: Any) -> SinkConfig:
    return SinkConfig(client_id=CLIENT_ID, client_secret=SECRET, **options)


async def eventually(condition: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(0.02)


class Workers:
    """Worker processes of one test (each in its own session, with its forked children);
    every process group still running is killed at teardown."""

    def __init__(self) -> None:
        self.procs: list[Process] = []

    async def spawn(self, spec: str, key: str, token_url: str, **options: float) -> Process:
        argv = [sys.executable, str(WORKER), "--store", spec, "--key", key]
        argv += ["--token-url", token_url, "--client-id", CLIENT_ID]
        for name, value in options.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        env = {**os.environ, "ASYNCSYNC_CLIENT_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    @staticmethod
    def kill(proc: Process) -> None:
        """SIGKILL the worker and the processes it forked."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    @staticmethod
    async def line(proc: Process, limit: float) -> str:
        assert proc.stdout is not None
        raw = await asyncio.wait_for(proc.stdout.readline(), limit)
        if not raw:
            _, err = await asyncio.wait_for(proc.communicate(), limit)
            raise AssertionError(f"worker exited early ({proc.returncode}): {err.decode()}")
        return raw.decode().strip()

    async def ready(self, procs: list[Process], limit: float = 30.0) -> None:
        lines = await asyncio.gather(*(self.line(p, limit) for p in procs))
        assert lines == ["ready"] * len(procs)

    @staticmethod
    async def go(procs: list[Process]) -> None:
        """Release the start barrier of every worker in ``procs`` at once."""
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
        for proc in procs:
            assert proc.stdin is not None
            await proc.stdin.drain()
            proc.stdin.close()

    @staticmethod
    def parse(line: str) -> dict[str, Any]:
        assert line.startswith("result "), line
        result: dict[str, Any] = orjson.loads(line[len("result ") :])
        return result

    async def results(self, proc: Process, limit: float = 30.0) -> list[dict[str, Any]]:
        """Each process's result once the worker exits (which it must, with status 0)."""
        out, err = await asyncio.wait_for(proc.communicate(), limit)
        assert proc.returncode == 0, err.decode()
        return [self.parse(line) for line in out.decode().splitlines() if line.strip()]

    async def close(self) -> None:
        for proc in self.procs:
            self.kill(proc)
        for proc in self.procs:
            await asyncio.wait_for(proc.communicate(), 10)


@pytest.fixture
async def workers() -> AsyncIterator[Workers]:
    pool = Workers()
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# -- keys and --token-store ----------------------------------------------------------------------


def test_store_key_is_a_hash_of_endpoint_and_client_id_never_the_secret() -> None:
    """Same credentials, same key; another endpoint or client, another key; no clear text."""
    url = "https://auth.example.com/oauth/token"
    key = store_key(url, "client-a")
    assert key == store_key(url, "client-a")
    assert len(key) == 32
    assert int(key, 16) >= 0
    assert key != store_key(url, "client-b")
    assert key != store_key("https://other.example.com/oauth/token", "client-a")
    assert store_key(url, None) == store_key(url, "")
    assert store_key(url, "client-a", scope=None) == key
    assert store_key(url, "client-a", scope="read write") != key
    assert "client-a" not in key
    assert "example" not in key
    store = open_token_store("file:/tmp/x.json", endpoint=url, client_id="client-a")
    assert isinstance(store, FileTokenStore)
    assert store.key == key


def test_open_token_store_builds_file_and_redis_stores(tmp_path: Path) -> None:
    """file:PATH, redis://HOST:PORT/DB and rediss:// are the accepted forms."""
    url = "https://auth.example.com/token"
    file_store = open_token_store(f"file:{tmp_path}/t.json", endpoint=url, client_id="c")
    assert isinstance(file_store, FileTokenStore)
    assert file_store.path == tmp_path / "t.json"
    redis_store = open_token_store(
        "redis://127.0.0.1:6379/15", endpoint=url, client_id="c", fetch_timeout=45
    )
    assert isinstance(redis_store, RedisTokenStore)
    # longer than the worst fetch (120 s of retries, then a 45 s request), and its I/O
    assert redis_store.lease == 120 + 45 + 45 > 120 + 45
    assert redis_store.wait_timeout > redis_store.lease
    assert file_store.wait_timeout == DEFAULT_FILE_WAIT == 120 + 30 + 30
    short = open_token_store(
        "redis://127.0.0.1:6379/15", endpoint=url, client_id="c", fetch_timeout=45,
        auth_retry_time=10,
    )  # fmt: skip
    assert isinstance(short, RedisTokenStore) and short.lease == 100 > 10 + 45
    assert redis_store.redis_key == DEFAULT_PREFIX + store_key(url, "c")
    scoped = open_token_store("redis://h:6379/0", endpoint=url, client_id="c", scope="read")
    assert isinstance(scoped, RedisTokenStore)
    assert scoped.key == store_key(url, "c", scope="read") != redis_store.key
    tls_url = "rediss://:hunter2@cache.example.com:6380/0"
    tls = open_token_store(tls_url, endpoint=url, client_id="c")
    assert isinstance(tls, RedisTokenStore)
    assert "hunter2" not in repr(tls)


@pytest.mark.parametrize(
    "spec",
    [
        "memcached://127.0.0.1:11211",
        "file:",
        "/tmp/tokens.json",
        "redis://",
        "redis://127.0.0.1:6379/cache",
        "redis://127.0.0.1:notaport/0",
        "redis://:hunter2@127.0.0.1:6379/x",
        "",
    ],
)
def test_open_token_store_refuses_other_forms(spec: str) -> None:
    """A ConfigError naming --token-store and the allowed forms; never a Redis password."""
    with pytest.raises(ConfigError) as info:
        open_token_store(spec, endpoint="https://auth.example.com/token", client_id="c")
    message = str(info.value)
    assert "--token-store" in message
    assert "file:PATH" in message
    assert "redis://HOST:PORT/DB" in message
    assert "hunter2" not in message
    assert info.value.field == "token_store"


# -- file store: permissions and format -------------------------------------------------------


@pytest.mark.usefixtures("umask_zero")
async def test_file_store_is_created_0600_whatever_the_umask(tmp_path: Path, key: str) -> None:
    """Token file and lock file are 0600 even under umask 0; the parent directory 0700."""
    path = tmp_path / "state" / "tokens.json"
    store = FileTokenStore(path, key)
    async with store.lock():
        await store.save("tok-1", time.time() + 600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.with_name("tokens.json.lock").stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    loaded = await store.load()
    assert loaded is not None
    assert loaded[0] == "tok-1"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
async def test_shared_token_file_is_refused_naming_path_and_fix(
    tmp_path: Path, key: str, mode: int
) -> None:
    """A token file accessible to group or others: ConfigError with the path and chmod 600."""
    path = tmp_path / "tokens.json"
    path.write_bytes(b'{"version": 1, "tokens": {}}')
    path.chmod(mode)
    with pytest.raises(ConfigError) as info:
        FileTokenStore(path, key)
    assert str(path) in str(info.value)
    assert f"chmod 600 {path}" in str(info.value)
    with pytest.raises(ConfigError):
        open_token_store(f"file:{path}", endpoint="https://a.example/token", client_id="c")


async def test_file_turned_readable_during_a_run_is_refused_and_the_manager_fetches(
    tmp_path: Path, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused at each read too; the manager logs it and fetches (the run goes on)."""
    path = tmp_path / "tokens.json"
    store = FileTokenStore(path, key)
    await store.save("tok-old", time.time() + 600)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        await store.load()
    async with Sink(sink_config()) as sink, manager(sink, store) as mgr:
        token = await mgr.get()
        assert token.value != "tok-old"
        assert sink.stats()["token_requests"] == 1
    assert "token store load failed (ConfigError)" in caplog.text


async def test_file_store_keeps_other_keys_and_survives_a_corrupt_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Several credentials share one file; a corrupt file is a miss, replaced on save."""
    path = tmp_path / "tokens.json"
    one, two = FileTokenStore(path, "key-one"), FileTokenStore(path, "key-two")
    expiry = time.time() + 600
    await one.save("tok-one", expiry)
    await two.save("tok-two", None)
    assert await one.load() == ("tok-one", expiry)
    assert await two.load() == ("tok-two", None)
    await one.save("tok-one-b", expiry)
    assert await two.load() == ("tok-two", None)
    path.write_bytes(b"{not json tok-secret")
    path.chmod(0o600)
    assert await one.load() is None
    assert "not a valid token file" in caplog.text
    assert "tok-secret" not in caplog.text
    await one.save("tok-one-c", expiry)
    assert await one.load() == ("tok-one-c", expiry)


# -- both stores ---------------------------------------------------------------------------------


async def test_expired_entries_are_not_adopted(spec: str, key: str) -> None:
    """A past expiry is a miss; one within the manager's minimum interval is not adopted."""
    store = make_store(spec, key)
    async with store.lock():
        await store.save("tok-expired", time.time() - 5)
    assert await store.load() is None
    await store.save("tok-nearly-expired", time.time() + 0.5)
    assert (await store.load() or ("",))[0] == "tok-nearly-expired"
    async with Sink(sink_config()) as sink, manager(sink, store, min_interval=1.0) as mgr:
        token = await mgr.get()
        assert token.value != "tok-nearly-expired"
        assert sink.stats()["token_requests"] == 1
    assert (await store.load() or ("",))[0] == token.value


async def test_two_managers_on_one_store_fetch_once(spec: str, key: str) -> None:
    """In one process too: the second manager adopts what the first saved."""
    async with Sink(sink_config(token_latency=0.2)) as sink:
        async with (
            manager(sink, make_store(spec, key)) as one,
            manager(sink, make_store(spec, key)) as two,
        ):
            tokens = await asyncio.gather(*(m.get() for m in (one, two) for _ in range(20)))
        assert len({t.value for t in tokens}) == 1
        assert sink.stats()["token_requests"] == 1


async def test_lock_is_released_when_the_body_fails(spec: str, key: str) -> None:
    """An error inside the lock (a failed fetch) releases it for the next process."""
    store = make_store(spec, key, wait_timeout=1.0)
    with pytest.raises(RuntimeError, match="fetch failed"):
        async with store.lock():
            raise RuntimeError("fetch failed")
    started = time.monotonic()
    async with make_store(spec, key, wait_timeout=30.0).lock():
        pass
    # A lock left behind would hold this for the 30 s wait_timeout (then raise); 10 s leaves
    # margin on a loaded 2-core box.
    assert time.monotonic() - started < 10


async def test_cancelled_lock_waits_and_holders_leave_no_lock_behind(spec: str, key: str) -> None:
    """Cancel waiters (at random moments, racing the acquisition) and a holder: no leak."""
    store = make_store(spec, key, wait_timeout=5.0)

    async def hold(event: asyncio.Event | None = None) -> None:
        async with store.lock():
            if event is not None:
                event.set()
            await asyncio.sleep(30)

    for delay in [0.0, 0.001, 0.002, 0.003, 0.005, 0.008, 0.012, 0.02] * 3:
        task = asyncio.create_task(hold())
        await asyncio.sleep(delay)
        task.cancel()
        await asyncio.wait([task])
    held = asyncio.Event()
    holder = asyncio.create_task(hold(held))
    await asyncio.wait_for(held.wait(), 5)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0.1)
    for task in (waiter, holder):
        task.cancel()
        await asyncio.wait([task])
    started = time.monotonic()
    async with make_store(spec, key, wait_timeout=30.0).lock():
        # A leaked lock would hold this for the 30 s wait_timeout (then raise); 10 s leaves
        # margin on a loaded 2-core box.
        assert time.monotonic() - started < 10


async def test_lock_wait_is_bounded_then_the_manager_fetches_without_it(
    spec: str, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Held by someone else past wait_timeout: a warning, and the token is fetched anyway."""
    holder = make_store(spec, key, lease=30.0)
    waiter = make_store(spec, key, wait_timeout=0.4)
    async with holder.lock():
        started = time.monotonic()
        with pytest.raises(TokenStoreLockTimeout):
            async with waiter.lock():
                pass
        # An unbounded wait would last the holder's 30 s lease (a file lock: forever); 10 s
        # leaves margin over the 0.4 s wait_timeout on a loaded 2-core box.
        assert 0.35 < time.monotonic() - started < 10
        async with Sink(sink_config()) as sink, manager(sink, waiter) as mgr:
            await mgr.get()
            assert sink.stats()["token_requests"] == 1
    assert "held the lock for more than" in caplog.text
    assert "token store lock failed (TokenStoreLockTimeout); fetching without it" in caplog.text


async def test_tokens_and_secrets_stay_out_of_logs_keys_and_reprs(
    spec: str, key: str, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    """FIELD-NOTES 12: no token or secret in logs (DEBUG) or reprs; no secret in the store."""
    caplog.set_level(logging.DEBUG)
    async with Sink(sink_config()) as sink:
        store = open_token_store(spec, endpoint=sink.token_url, client_id=CLIENT_ID)
        async with manager(sink, store) as mgr:
            token = await mgr.get()
        entry = await store.load()
        assert entry is not None
        assert entry[0] == token.value
    if isinstance(store, RedisTokenStore):
        client: Redis = request.getfixturevalue("redis_client")
        try:
            found = await client.keys(store.redis_key + "*")
            keys = [k.decode() if isinstance(k, bytes) else k for k in found]
            assert keys == [store.redis_key]
            assert SECRET not in keys[0]
            stored = await client.get(store.redis_key)
            assert stored is not None
            assert SECRET.encode() not in stored
        finally:
            await client.delete(store.redis_key, store.lock_key)
    else:
        assert isinstance(store, FileTokenStore)
        assert SECRET.encode() not in store.path.read_bytes()
    assert token.value not in caplog.text
    assert SECRET not in caplog.text
    assert token.value not in repr(store)


# -- Redis specifics -----------------------------------------------------------------------------


async def test_redis_entry_ttl_is_the_remaining_lifetime(
    redis_url: str, redis_client: Redis, key: str
) -> None:
    """PX = what is left of the token's life, so Redis drops it when it expires."""
    store = RedisTokenStore(redis_url, key)
    await store.save("tok-ttl", time.time() + 120)
    ttl = await redis_client.pttl(store.redis_key)
    assert 118_000 < ttl <= 120_000
    raw = await redis_client.get(store.redis_key)
    assert isinstance(raw, bytes)
    doc = orjson.loads(raw)
    assert doc["token"] == "tok-ttl"
    await store.save("tok-forever", None)
    assert await redis_client.pttl(store.redis_key) == -1
    assert await store.load() == ("tok-forever", None)


async def test_unreachable_redis_falls_back_to_fetching_with_a_warning(
    key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis down: the store fails fast, the manager warns and fetches; the run goes on."""
    store = RedisTokenStore("redis://127.0.0.1:1/15", key)
    with pytest.raises(TokenStoreUnavailable):
        await store.load()
    async with Sink(sink_config()) as sink, manager(sink, store) as mgr:
        started = time.monotonic()
        tokens = await asyncio.gather(*(mgr.get() for _ in range(20)))
        assert time.monotonic() - started < 3.0
        assert len({t.value for t in tokens}) == 1
        assert sink.stats()["token_requests"] == 1
    assert "token store lock failed (TokenStoreUnavailable); fetching without it" in caplog.text
    assert "redis://127.0.0.1:1/15: lock failed (ConnectionError)" in caplog.text


async def test_redis_release_never_deletes_another_owners_lock(
    redis_url: str, redis_client: Redis, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Our lease expired and another process took the lock: our release leaves it alone."""
    store = RedisTokenStore(redis_url, key, lease=30.0)
    async with store.lock():
        owner = await redis_client.get(store.lock_key)
        assert owner is not None
        assert str(os.getpid()).encode() in owner
        # Simulate the lease running out and another process taking the lock.
        await redis_client.delete(store.lock_key)
        await redis_client.set(store.lock_key, b"other-host:1:abcd", px=30_000)
    assert await redis_client.get(store.lock_key) == b"other-host:1:abcd"
    assert "lease had expired before its release" in caplog.text
    # And our own lock is released by our release.
    await redis_client.delete(store.lock_key)
    async with store.lock():
        pass
    assert await redis_client.exists(store.lock_key) == 0


async def test_redis_lease_is_renewed_while_held_and_ends_after_release(
    redis_url: str, redis_client: Redis, key: str
) -> None:
    """A holder outliving its lease keeps the lock (renewal); others wait for it."""
    store = RedisTokenStore(redis_url, key, lease=0.5)
    other = RedisTokenStore(redis_url, key, lease=0.5, wait_timeout=1.2)
    async with store.lock():
        with pytest.raises(TokenStoreLockTimeout):
            async with other.lock():
                pass
        assert 0 < await redis_client.pttl(store.lock_key) <= 500
    assert await redis_client.exists(store.lock_key) == 0
    async with other.lock():
        pass


# -- many processes --------------------------------------------------------------------------------


@pytest.mark.slow
async def test_eight_processes_share_one_token_request(
    spec: str, key: str, workers: Workers
) -> None:
    """8 processes x 50 concurrent get() against one sink: exactly 1 token request."""
    async with Sink(sink_config(token_latency=0.3)) as sink:
        proc = await workers.spawn(spec, key, sink.token_url, processes=8, tasks=50)
        await workers.ready([proc])
        await workers.go([proc])
        results = await workers.results(proc)
        assert sink.stats()["token_requests"] == 1
    assert len({r["pid"] for r in results}) == 8
    assert len({r["fingerprint"] for r in results}) == 1
    assert sorted(r["requests"] for r in results) == [0] * 7 + [1]
    # They did overlap: most processes were already waiting while the one fetch was under way
    # (wall-clock windows, not per-process durations: on a loaded machine the later forks start
    # late, so their own wait is short even though they did wait for the other process).
    (fetcher,) = [r for r in results if r["requests"] == 1]
    waiters = [r for r in results if r["requests"] == 0]
    overlapping = [r for r in waiters if r["started_at"] < fetcher["finished_at"] - 0.05]
    assert len(overlapping) >= 4, results
    assert all(r["finished_at"] >= fetcher["started_at"] for r in waiters), results
    stored = await make_store(spec, key).load()
    assert stored is not None
    assert fingerprint(stored[0]) == results[0]["fingerprint"]


@pytest.mark.slow
async def test_holder_killed_mid_fetch_another_process_takes_over(
    spec: str, key: str, workers: Workers
) -> None:
    """SIGKILL the lock holder while its token request hangs: the waiter takes over.

    Redis: the holder's lease (1.5 s, renewed while it lived) must run out first. File: the
    kernel drops the dead holder's flock at once, so the waiter proceeds promptly.
    """
    lease = 1.5
    async with Sink(sink_config(token_hang=True)) as sink:
        a = await workers.spawn(spec, key, sink.token_url, tasks=5, lease=lease)
        b = await workers.spawn(spec, key, sink.token_url, tasks=5, lease=lease)
        await workers.ready([a, b])
        await workers.go([a])
        # A sends its token request only while holding the store's lock.
        await eventually(lambda: sink.stats()["token_requests"] == 1, 20, "A's token request")
        await workers.go([b])
        # B waits. Redis: longer than a lease, which A keeps renewing while it lives.
        await asyncio.sleep(lease + 0.5 if spec.startswith("redis") else 0.8)
        assert sink.stats()["token_requests"] == 1, "B fetched while A held the lock"
        sink.set_faults(token_hang=False)
        workers.kill(a)
        killed_at = time.monotonic()
        await asyncio.wait_for(a.wait(), 10)
        result = workers.parse(await workers.line(b, 20))
        took = time.monotonic() - killed_at
        assert result["requests"] == 1
        assert sink.stats()["token_requests"] == 2
        await workers.results(b)
    if spec.startswith("file:"):
        assert took < 3.0
    else:
        # The lease left at the kill was between 2/3 of it and all of it.
        assert 0.5 * lease < took < lease + 5.0
