"""The Parquet helper process's program (see :mod:`._parquet_helper`, its parent's side,
for the protocol): decodes and encodes row groups of one file, writes the frames to stdout."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from ._parquet import ParquetSource
from ._parquet_helper import END, HEADER, READY, STOPPED

__all__ = ["main"]


def _write(fd: int, *parts: Any) -> None:
    """All of ``parts`` (bytes-like) to ``fd``."""
    views = [memoryview(p).cast("B") for p in parts]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _memory_pool() -> None:
    """jemalloc (else the system's malloc) rather than mimalloc, pyarrow's default: it
    gives freed pages back, mimalloc keeps them (peak RSS 148 -> 115 MB decoding the 2 M
    rows). This process is ours; ``ARROW_DEFAULT_MEMORY_POOL``, when set, still rules."""
    import pyarrow as pa

    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    for pool in (pa.jemalloc_memory_pool, pa.system_memory_pool):
        try:
            pa.set_memory_pool(pool())
        except NotImplementedError:  # pyarrow built without jemalloc
            continue
        return


def main(argv: list[str]) -> int:
    """``PATH``, then ``START_GROUP STOP_GROUP FIRST_ROW SKIP_THROUGH BATCH_ROWS`` on stdin:
    the frames on stdout (see the module docstring)."""
    path = argv[0]
    fd = sys.stdout.fileno()
    next_row = 1
    try:
        _memory_pool()
        # imported before READY (the encoder needs them), and while the parent starts
        import numpy  # noqa: F401
        import pyarrow.compute
        import pyarrow.parquet  # noqa: F401

        _write(fd, HEADER.pack(0, READY, 0, 0))
        line = sys.stdin.readline()
        if not line:
            return 0  # not needed after all
        start_group, stop_group, first_row, skip_through, batch_rows = map(int, line.split())
        next_row = max(first_row, skip_through + 1)
        src = ParquetSource(path, stop_group=stop_group, batch_rows=batch_rows, helper=False)
        groups = list(range(start_group, src.stop_group))
        for batch, rows, first, joined in src.joined_batches(groups, first_row, skip_through):
            if batch is None:
                _write(fd, HEADER.pack(first, rows, 0, 0))
                continue
            if joined is None:
                break  # the row-by-row path: the parent's
            count = batch.num_rows
            if isinstance(joined, bytes):  # no column varies
                data: Any = (joined + b"\n") * count
            else:
                _, offsets, buffer = joined.buffers()
                ends = memoryview(offsets).cast("i")
                start = ends[joined.offset]
                data = memoryview(buffer)[start : ends[joined.offset + count]]
            _write(fd, HEADER.pack(first, rows, count, len(data)), data)
            next_row = first + count
        else:
            _write(fd, HEADER.pack(next_row, END, 0, 0))
            return 0
    except BrokenPipeError:
        return 1  # the parent is gone
    except Exception:  # noqa: S110 - the parent reads on from next_row and reports it
        pass
    with contextlib.suppress(OSError):
        _write(fd, HEADER.pack(next_row, STOPPED, 0, 0))
    return 0
