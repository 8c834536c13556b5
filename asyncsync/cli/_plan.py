"""The run plan: everything a run needs decided before anything is sent.

Every state file a command writes is decided here, once, from the one default-path policy
(:func:`asyncsync._paths.default_state_paths`): the checkpoint, the dead-letter file, each
shard's pair under ``--shard K/N`` and ``--processes N``, and the read-only-directory fallback
(a default beside a source on a read-only mount goes to the working directory; a path the
user named is never moved). The summary file is ``--summary-json`` only.

A :class:`RunPlan` is plain data: a ``--processes`` parent makes one per child and hands it
over (pickled), with the shard :class:`Layout` planned once for all of them, so no child scans
the file or queries the key ranges again. Opening the source is the runner's job
(:mod:`._run`), since sources hold files and connections.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._exceptions import ConfigError
from .._paths import default_state_paths, with_shard, writable_default
from ..sources._shards import Shard, plan_shards, source_kind
from ._replay import check_replay_target
from ._settings import Settings

__all__ = [
    "Layout",
    "ProcessesPlan",
    "RunPlan",
    "plan_processes",
    "plan_run",
    "state_paths",
]

log = logging.getLogger("asyncsync")


@dataclass(frozen=True, slots=True)
class Layout:
    """How the source is cut into ``count`` shards: byte ranges of a file, or key ranges
    ``(start, end]`` of a ``--db`` query (fewer than ``count`` when the table is small)."""

    count: int
    shards: tuple[Shard, ...] = ()
    key_ranges: tuple[tuple[Any, Any], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RunPlan:
    """One upload, decided: the settings it runs with and the state files it writes.

    ``shard`` is ``(K, N)`` for a shard of ``layout``; ``display_bytes`` the size the progress
    display counts towards (None: unknown).
    """

    settings: Settings
    checkpoint: Path | None
    failed: Path
    shard: tuple[int, int] | None = None
    layout: Layout | None = None

    @property
    def file_shard(self) -> Shard | None:
        """The byte range of a file shard (None otherwise)."""
        if self.shard is None or self.layout is None or not self.layout.shards:
            return None
        return self.layout.shards[self.shard[0]]

    @property
    def key_range(self) -> tuple[Any, Any] | None:
        """The key range of a ``--db`` shard; None for a shard past the last range."""
        if self.shard is None or self.layout is None or self.settings.db is None:
            return None
        k = self.shard[0]
        return self.layout.key_ranges[k] if k < len(self.layout.key_ranges) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessesPlan:
    """``upload --processes N``: one plan per child, and the run's one dead-letter file the
    children's are gathered into at the end."""

    failed: Path
    children: tuple[RunPlan, ...]
    total_bytes: int | None


def state_paths(
    settings: Settings, shard: tuple[int, int] | None = None, *, per_shard: bool = False
) -> tuple[Path | None, Path]:
    """The checkpoint and dead-letter file of a run (of shard ``(K, N)``).

    The user's ``--checkpoint``/``--failed`` win (with ``per_shard``, as under ``--processes``,
    each shard gets its own copy of the name, ``NAME.shard-K-of-N.EXT``); else the defaults,
    moved to the working directory when their directory cannot be written. Files checkpoint
    beside themselves; stdin and ``--db`` only when told.
    """
    base = settings.source if settings.db is None else None
    defaults = default_state_paths(
        base, shard=shard, replay=settings.command == "replay", fallback=False
    )
    checkpoint = settings.checkpoint
    if checkpoint is not None and shard is not None and per_shard:
        checkpoint = with_shard(checkpoint, *shard)
    if checkpoint is None:
        checkpoint = writable_default(defaults.checkpoint)
    if settings.origins.get("failed") == "auto":
        failed = writable_default(defaults.failed)
        assert failed is not None
    elif shard is not None and per_shard:
        failed = with_shard(settings.failed, *shard)
    else:
        failed = settings.failed
    return checkpoint, failed


async def plan_run(settings: Settings) -> RunPlan:
    """The plan of one process's upload or replay (``--shard K/N`` included).

    ConfigError, SourceError now, before any request: options that exclude each other, a
    replay onto its own file, a file that cannot be split, a bad ``--db`` URL, table or key.
    """
    unsupported = settings.unsupported()
    if unsupported:
        raise ConfigError(
            f"{', '.join(unsupported)}: not supported yet (see the scale-out issue)",
            field=unsupported[0].lstrip("-").replace("-", "_"),
        )
    layout = None
    if settings.shard is not None:
        _check_scale_out(settings, "--shard K/N")
        layout = await _layout(settings, settings.shard[1])
        _log_shard(settings, settings.shard, layout)
    elif settings.db is not None:
        await _check_sql(settings)
    checkpoint, failed = state_paths(settings, settings.shard)
    if settings.command == "replay":
        check_replay_target(settings.source, failed)
    return RunPlan(
        settings=settings,
        checkpoint=checkpoint,
        failed=failed,
        shard=settings.shard,
        layout=layout,
    )


async def plan_processes(settings: Settings) -> ProcessesPlan:
    """``--processes N``: the shards, planned once, and each child's plan (its settings say
    one process, no display or summary file of its own)."""
    n = settings.processes
    what = f"--processes {n}"
    _check_scale_out(settings, what)
    if settings.db is None:
        _file_source(settings, what)
    layout = await _layout(settings, n)
    if settings.db is not None:
        indexes = list(range(len(layout.key_ranges)))  # one child per key range
    else:
        # more shards than records: nothing to do for an empty one, no process
        indexes = [s.index for s in layout.shards if s.size > 0]
    children = []
    for k in indexes:
        checkpoint, failed = state_paths(settings, (k, n), per_shard=True)
        origins = dict(settings.origins)
        origins["failed"] = "flag"  # decided here: the child takes it as given
        child = dataclasses.replace(
            settings,
            shard=(k, n),
            processes=1,
            progress=False,
            summary_json=None,
            checkpoint=checkpoint,
            failed=failed,
            origins=origins,
        )
        children.append(
            RunPlan(
                settings=child, checkpoint=checkpoint, failed=failed, shard=(k, n), layout=layout
            )
        )
    _, failed = state_paths(settings)
    total = sum(s.size for s in layout.shards) if layout.shards else None
    return ProcessesPlan(failed=failed, children=tuple(children), total_bytes=total or None)


# --- shards --------------------------------------------------------------------------------


def _check_scale_out(settings: Settings, what: str) -> None:
    field = "processes" if what.startswith("--processes") else "shard"
    if settings.command != "upload":
        raise ConfigError(f"{what} applies to upload only, not {settings.command}", field=field)
    if settings.shard is not None and settings.processes > 1:
        raise ConfigError(
            "--shard K/N and --processes exclude each other (--processes N runs every "
            "--shard K/N itself)",
            field=field,
        )


def _file_source(settings: Settings, what: str) -> str:
    field = "processes" if what.startswith("--processes") else "shard"
    source = settings.source
    if source is None or source == "-":
        raise ConfigError(
            f"{what} needs a file source (.jsonl, .ndjson or .csv) or --db: stdin cannot be split",
            field=field,
        )
    return source


async def _layout(settings: Settings, n: int) -> Layout:
    """Cut the source into ``n``: a file by bytes (a scan for line starts), ``--db`` by keys."""
    if settings.db is not None:
        sql = await _check_sql(settings)
        return Layout(n, key_ranges=tuple(await sql.plan_key_ranges(n)))
    source = _file_source(settings, "--shard K/N" if settings.processes == 1 else "--processes")
    return Layout(n, shards=tuple(plan_shards(source, n, source_kind(source))))


async def _check_sql(settings: Settings) -> Any:
    """The ``--db`` source, checked: a bad URL, table, query or key is a SourceError (exit 2)
    before anything is sent."""
    from ..sources.sql import open_sql_source

    assert settings.db is not None and settings.key is not None  # checked by resolve()
    sql = open_sql_source(settings.db, query=settings.query, table=settings.table, key=settings.key)
    await sql.check()
    return sql


def _log_shard(settings: Settings, shard: tuple[int, int], layout: Layout) -> None:
    k, n = shard
    if settings.db is not None:
        from ..sources.sql import display_url  # the URL without its password

        name, ranges = display_url(settings.db), layout.key_ranges
        if k < len(ranges):
            start, end = ranges[k]
            log.info("shard %d/%d of %s: keys after %r up to %r", k, n, name, start, end)
        else:
            log.info("shard %d/%d of %s: no rows (%d key ranges)", k, n, name, len(ranges))
        return
    s = layout.shards[k]
    log.info(
        "shard %d/%d of %s: bytes %d-%d, from line %d",
        k,
        n,
        settings.source,
        s.start,
        s.stop,
        s.first_line,
    )
