"""Where state files go by default: the checkpoint and the dead-letter file of a run.

The whole policy lives here so the library and every CLI command (upload, ``--shard K/N``,
``--processes N``, replay) agree on it::

    source            checkpoint                         dead-letter file
    a file x.jsonl    x.jsonl.asyncsync                  x.jsonl.failed.jsonl
    shard K of N      x.jsonl.shard-K-of-N.asyncsync     x.jsonl.shard-K-of-N.failed.jsonl
    replay of f       f.asyncsync                        f.replay-failed.jsonl
    stdin, SQL, ...   None (only when asked)             ./asyncsync-failed.jsonl
    ... shard K of N  None                               ./asyncsync-failed.shard-K-of-N.jsonl

A default beside a source whose directory cannot be written (an export on a read-only mount)
falls back to the same name in the working directory, with a warning. Paths the user names are
never changed: only call this for the ones they did not.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "CHECKPOINT_SUFFIX",
    "FAILED_SUFFIX",
    "REPLAY_FAILED_SUFFIX",
    "STDIN_FAILED",
    "StatePaths",
    "default_state_paths",
    "shard_path",
    "with_shard",
    "writable_default",
]

CHECKPOINT_SUFFIX: Final = ".asyncsync"
FAILED_SUFFIX: Final = ".failed.jsonl"
REPLAY_FAILED_SUFFIX: Final = ".replay-failed.jsonl"
#: the dead-letter file of a source with no path (stdin, SQL, an iterable), in the working dir
STDIN_FAILED: Final = "asyncsync-failed.jsonl"


@dataclass(frozen=True, slots=True)
class StatePaths:
    """The default state files of one run: ``checkpoint`` is None when a source has no path
    (stdin, SQL, an iterable): those checkpoint only when told where."""

    checkpoint: Path | None
    failed: Path


def default_state_paths(
    source_path: str | os.PathLike[str] | None,
    *,
    shard: tuple[int, int] | None = None,
    replay: bool = False,
    fallback: bool = True,
) -> StatePaths:
    """The default checkpoint and dead-letter paths for a source at ``source_path`` (None, or
    ``"-"``, for one with no path). ``shard=(K, N)``: shard K of N's own files. ``replay``:
    the source is a dead-letter file being replayed (its failures go to a new file, never
    itself). ``fallback``: a directory that cannot be written gives way to the working one."""
    if source_path is not None and os.fspath(source_path) in ("-", ""):
        source_path = None
    if source_path is None:
        failed = Path(STDIN_FAILED)
        paths = StatePaths(None, failed if shard is None else with_shard(failed, *shard))
    else:
        base = Path(source_path)
        if shard is not None:
            base = shard_path(base, *shard)
        suffix = REPLAY_FAILED_SUFFIX if replay else FAILED_SUFFIX
        paths = StatePaths(
            base.with_name(base.name + CHECKPOINT_SUFFIX), base.with_name(base.name + suffix)
        )
    if not fallback:
        return paths
    moved = writable_default(paths.failed)
    assert moved is not None
    return StatePaths(writable_default(paths.checkpoint), moved)


def shard_path(base: str | os.PathLike[str], index: int, count: int, suffix: str = "") -> Path:
    """``<base>.shard-K-of-N<suffix>``: the per-shard checkpoint (``suffix=".asyncsync"``) or
    dead-letter file (``".failed.jsonl"``) beside a source."""
    path = Path(base)
    return path.with_name(f"{path.name}.shard-{index}-of-{count}{suffix}")


def with_shard(path: Path, index: int, count: int) -> Path:
    """``dir/name.shard-K-of-N.ext`` for a path the user named (``--checkpoint``, ``--failed``)."""
    return path.with_name(f"{path.stem}.shard-{index}-of-{count}{path.suffix}")


def writable_default(path: Path | None) -> Path | None:
    """A default state file beside the source, or in the working directory when the source's
    directory cannot be written (exports on a read-only mount)."""
    if path is None or os.access(path.parent, os.W_OK):
        return path
    fallback = Path.cwd() / path.name
    logging.getLogger("asyncsync").warning(
        "%s is not writable: writing %s instead", path.parent, fallback
    )
    return fallback
