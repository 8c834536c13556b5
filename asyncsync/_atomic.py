"""Replace a file atomically and durably: a reader sees the old content or the new, whole.

The one recipe every state file uses (checkpoint, token file, summary JSON): write a temp
file in the same directory (a rename is atomic only within one file system), ``fsync`` it (the
data is on disk before the name points at it), rename it over the target, ``fsync`` the
directory (the rename itself is on disk). After a crash the target holds the previous or the
new content; at worst a temp file is left behind, which the next write replaces.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir"]


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int | None = None,
    tmp: str | os.PathLike[str] | None = None,
) -> None:
    """Replace ``path`` with ``data``; ``OSError`` if it cannot.

    ``mode``: the file's permission bits exactly, whatever the umask (``0o600`` for a file
    holding tokens: it is never readable by others, not even for a moment). None: ``0o666``
    less the umask, like any new file. ``tmp``: a fixed temp path (a leftover from a crash is
    then overwritten, never accumulated); default, a fresh name per write, so concurrent
    writers never share a temp file. On an ``OSError`` the temp file is removed; a
    ``BaseException`` that is not one (the process is going away) leaves it, as a crash would.
    """
    target = Path(path)
    directory = target.parent
    tmp_path = (
        Path(tmp)
        if tmp is not None
        else directory / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    )
    # O_TRUNC: a temp file left by a crash is overwritten, never appended to
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp_path, flags, 0o666 if mode is None else mode & 0o777)
        try:
            if mode is not None:
                os.fchmod(fd, mode)  # the mode given to open() is filtered by the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]  # os.write may write less than asked
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_path, target)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp_path)
        raise
    fsync_dir(directory)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable; a no-op where directories cannot be synced."""
    if os.name != "posix":  # pragma: no cover - no directory fsync on Windows
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        # some file systems (network ones) cannot fsync a directory: the rename is still
        # atomic there, only its durability is up to the file system
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
