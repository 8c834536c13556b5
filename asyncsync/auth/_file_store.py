"""A token store in a JSON file shared by the processes of one host: :class:`FileTokenStore`.

``--token-store file:PATH``. The lock is ``fcntl.flock`` on a sidecar ``PATH.lock``. The
kernel releases an ``flock`` when the last descriptor of its open file is closed, which
happens when the holding process exits, however it exits (``SIGKILL`` included): the lease
ends with the holder's life (FIELD-NOTES 14). Caveats: a child *forked* while the lock is
held inherits the descriptor and with it the lock; and the file must be on a local file
system (``flock`` over NFS is emulated, and slow). One lock per file: credentials sharing one
file also share its lock. All file I/O runs in worker threads (FIELD-NOTES 16).

Secrets (FIELD-NOTES 12): the file is created ``0600`` and a group- or world-accessible one
is refused; no token appears in a log line, a message or a ``repr``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Final

import anyio.to_thread
import orjson

from .._atomic import atomic_write
from .._exceptions import ConfigError
from ._store_common import (
    _POLL,
    DEFAULT_FILE_WAIT,
    TokenStoreLockTimeout,
    TokenStoreUnavailable,
    _check_key,
    _check_seconds,
    _entry,
    _wall_expiry,
)

if sys.platform != "win32":
    import fcntl

__all__ = ["FileTokenStore"]

logger = logging.getLogger("asyncsync.store")


#: A token file larger than this is not a token file.
MAX_FILE_BYTES: Final = 1 << 20
FILE_VERSION: Final = 1

# --------------------------------------------------------------------------------------------
# File store


def _refuse_if_shared(path: Path, st: os.stat_result) -> None:
    """ConfigError if the token file is not a regular file private to its owner."""
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(
            f"--token-store file:{path}: not a regular file; give the path of a token file",
            field="token_store",
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"--token-store file:{path}: the file is accessible to group or others "
            f"(mode {mode:04o}) and holds bearer tokens; refusing to use it. "
            f"Fix: chmod 600 {path}",
            field="token_store",
        )


def _try_flock(fd: int) -> bool:
    """One non-blocking attempt at the exclusive lock (in a worker thread)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def _unlock(fd: int) -> None:
    # Runs in ``finally`` on the event loop, on purpose: an await here could be skipped by a
    # cancellation and leak a held lock for the life of the process. Unlocking and closing a
    # lock file that holds no data are two syscalls that do not wait on the disk.
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class _LockAttempt:
    """Hands a locked descriptor from the polling thread to the event loop, exactly once.

    The loop's side may be cancelled at any moment (the thread is abandoned, not waited
    for): whichever side comes second under ``guard`` closes the descriptor, so a lock
    nobody will release can never stay behind in a live process.
    """

    __slots__ = ("abandoned", "fd", "guard", "wake")

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.wake = threading.Event()
        self.abandoned = False
        self.fd: int | None = None

    def hand_over(self, fd: int) -> bool:
        """From the thread: True if the loop's side takes ``fd``; False if it is gone."""
        with self.guard:
            if self.abandoned:
                return False
            self.fd = fd
            return True

    def abandon(self) -> int | None:
        """From the loop: stop the thread; the descriptor it handed over already, if any."""
        with self.guard:
            self.abandoned = True
            fd, self.fd = self.fd, None
        self.wake.set()
        return fd


class FileTokenStore:
    """A :class:`~asyncsync.auth._manager.TokenStore` in a JSON file shared by local processes.

    The file maps store keys to ``{"token", "expires_at", "saved_at"}`` (expiry in epoch
    seconds, or null), so several credentials may share one file; a save drops expired
    entries. It is created ``0600`` whatever the umask, written atomically (temp file and
    rename), and refused with a :class:`~asyncsync.ConfigError` when it exists and is
    accessible to group or others: at construction, and again at every read.

    ``lock()`` takes ``fcntl.flock`` on ``PATH.lock`` (see the module docstring: the kernel
    releases it when the holder dies), polling with jitter from a worker thread; after
    ``wait_timeout`` seconds it raises :class:`TokenStoreLockTimeout` with a warning.
    """

    __slots__ = ("_key", "_lock_path", "_wait_timeout", "path")

    def __init__(
        self, path: str | os.PathLike[str], key: str, *, wait_timeout: float = DEFAULT_FILE_WAIT
    ) -> None:
        if sys.platform == "win32":
            raise ConfigError(
                "--token-store file:PATH needs POSIX file locks; use redis://HOST:PORT/DB",
                field="token_store",
            )
        self._key = _check_key(key)
        self._wait_timeout = _check_seconds("wait_timeout", wait_timeout)
        self.path = Path(os.path.abspath(Path(path).expanduser()))
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        # One stat at construction (configuration time): a shared file is a usage error,
        # reported before the run starts rather than as a warning in the middle of it.
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ConfigError(
                f"--token-store file:{self.path}: cannot read it: {exc.strerror}",
                field="token_store",
            ) from None
        else:
            _refuse_if_shared(self.path, st)

    @property
    def key(self) -> str:
        return self._key

    @property
    def wait_timeout(self) -> float:
        return self._wait_timeout

    def __repr__(self) -> str:
        return f"FileTokenStore(path={str(self.path)!r}, key={self._key!r})"

    # -- TokenStore --------------------------------------------------------------------------

    async def load(self) -> tuple[str, float | None] | None:
        """This key's token and expiry, or None (no file, no entry, expired, unreadable)."""
        return await anyio.to_thread.run_sync(self._load_sync)

    async def save(self, token: str, expires_at_wall: float | None) -> None:
        """Store this key's token; other keys' live entries are kept."""
        await anyio.to_thread.run_sync(self._save_sync, token, expires_at_wall)

    def lock(self) -> AbstractAsyncContextManager[object]:
        """The cross-process lock around load-fetch-save."""
        return self._locked()

    async def aclose(self) -> None:
        """Nothing to close: every operation opens and closes its own files."""

    # -- lock ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[object]:
        attempt = _LockAttempt()
        try:
            acquired = await anyio.to_thread.run_sync(
                self._acquire_sync, attempt, abandon_on_cancel=True
            )
        except BaseException:
            # Cancelled (or failed) while the thread polls: it must not keep a lock nobody
            # will release. Either we take its descriptor here, or it sees ``abandoned``.
            fd = attempt.abandon()
            if fd is not None:
                _unlock(fd)
            raise
        if not acquired or attempt.fd is None:
            logger.warning(
                "token store %s: another process held the lock for more than %.0fs; "
                "fetching a token without it",
                self.path,
                self._wait_timeout,
            )
            raise TokenStoreLockTimeout(
                f"token store {self.path}: lock not obtained within {self._wait_timeout:g}s"
            )
        fd = attempt.fd
        try:
            yield self
        finally:
            _unlock(fd)

    def _acquire_sync(self, attempt: _LockAttempt) -> bool:
        """In a worker thread: poll the flock with jittered, growing pauses until it is ours
        (True, ``attempt.fd`` set), the wait times out, or the caller gives up (False)."""
        deadline = time.monotonic() + self._wait_timeout
        try:
            self._lock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd: int | None = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise self._unavailable("cannot open its lock file", exc) from exc
        assert fd is not None
        try:
            polls = 0
            while not attempt.abandoned:
                try:
                    locked = _try_flock(fd)
                except OSError as exc:
                    raise self._unavailable("cannot lock its lock file", exc) from exc
                if locked:
                    if not attempt.hand_over(fd):
                        return False  # the caller is gone; ``finally`` drops the lock
                    fd = None  # the event loop's now
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                polls += 1
                attempt.wake.wait(min(_POLL.delay(polls), left))
            return False
        finally:
            if fd is not None:
                os.close(fd)  # also drops a lock taken but not handed over

    # -- file I/O (worker threads) -------------------------------------------------------------

    def _unavailable(self, what: str, exc: OSError) -> TokenStoreUnavailable:
        reason = exc.strerror or type(exc).__name__
        logger.warning("token store %s: %s: %s", self.path, what, reason)
        return TokenStoreUnavailable(f"token store {self.path}: {what}: {reason}")

    def _read_entries(self) -> dict[str, Any]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise self._unavailable("cannot open it", exc) from exc
        try:
            with os.fdopen(fd, "rb") as fh:
                _refuse_if_shared(self.path, os.fstat(fh.fileno()))
                raw = fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise self._unavailable("cannot read it", exc) from exc
        try:
            if len(raw) > MAX_FILE_BYTES:
                raise ValueError("too large")
            doc = orjson.loads(raw)
            if not isinstance(doc, dict) or not isinstance(doc.get("tokens"), dict):
                raise ValueError("not a token file")
        except ValueError:
            # Never quote the content: it may hold tokens.
            logger.warning(
                "token store %s is not a valid token file; ignoring it (the next save replaces it)",
                self.path,
            )
            return {}
        tokens: dict[str, Any] = doc["tokens"]
        return tokens

    def _load_sync(self) -> tuple[str, float | None] | None:
        return _entry(self._read_entries().get(self._key), time.time())

    def _save_sync(self, token: str, expires_at_wall: float | None) -> None:
        now = time.time()
        expires_at = _wall_expiry(expires_at_wall)
        # Read-modify-write: callers hold the lock (the manager saves only under it), so no
        # other process rewrites the file in between.
        entries = {
            key: doc
            for key, doc in self._read_entries().items()
            if key != self._key and _entry(doc, now) is not None
        }
        if expires_at is None or expires_at > now:
            entries[self._key] = {"token": token, "expires_at": expires_at, "saved_at": now}
        data = orjson.dumps({"version": FILE_VERSION, "tokens": entries})
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(self.path, data, mode=0o600)
        except OSError as exc:
            raise self._unavailable("cannot write it", exc) from exc
