"""Parquet decoding on the second core: a helper process reads and encodes, the parent cuts.

A Parquet upload's own work per row (measured on the benchmark's 7-column rows, ns per row:
decoding the pages ~160-200, the JSON kernels and the row join ~280-400, cutting the records
out ~100-250) ran in the uploading process, next to the event loop, on the core that holds
the GIL. :class:`ParquetHelper` starts a second process, which decodes the
same row groups and joins every row's JSON exactly as the in-process path does
(:meth:`~._parquet.ParquetSource.joined_batches`, the same encoder), and writes it to a pipe;
the parent only splits each batch at its newlines, as the JSON Lines reader does.

The helper (its program is :mod:`._parquet_decode`) is started when the source is opened,
so that it imports pyarrow while the parent does. When ready it writes one header with
``ROWS == -3``; the parent, which decodes row groups itself until then, writes one line to
its stdin, ``START_GROUP STOP_GROUP FIRST_ROW SKIP_THROUGH BATCH_ROWS``, and the helper then
writes, for each record batch, a header of four little-endian int64::

    FIRST ROWS COUNT NBYTES

then ``NBYTES`` bytes holding ``COUNT`` newline-ended JSON objects, the rows ``FIRST ...
FIRST + COUNT - 1``; ``ROWS`` is how many rows of the file the batch took (for progress;
``COUNT`` is 0 for a batch before the resume point). Two headers end the stream:
``ROWS == -1`` (every row written) and ``ROWS == -2`` (stopped before row ``FIRST``: a batch
with a value only the row-by-row path encodes, or one that the in-process path must reject,
or a read error: the parent reads on from ``FIRST`` itself, so a rejection or error is the
same, with the same message, as without a helper).

The helper is never needed: whenever it cannot answer (it failed to start, died, wrote
something unreadable), the parent reads on from the first row it has not delivered, in
process. The helper runs in its own session (a Ctrl-C at the terminal is the parent's to
handle), is killed when the source closes (or is dropped unused), exits when its stdin
closes before it is given work, and dies of a broken pipe if the parent is killed.
"""

from __future__ import annotations

import contextlib
import logging
import select
import struct
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path
from typing import IO, Final

from ._reading import stop_helper

__all__ = ["ParquetHelper"]

logger = logging.getLogger("asyncsync.sources")

HEADER: Final = struct.Struct("<qqqq")
END: Final = -1
STOPPED: Final = -2
READY: Final = -3
#: how long the parent waits for a helper still starting before it decodes a row group itself
#: (which costs it importing numpy and pyarrow's compute module, ~0.2 s holding the GIL)
READY_WAIT: Final = 1.0
#: the pipe's capacity (Linux, ``F_SETPIPE_SZ``): fewer wake-ups per batch than 64 KiB
PIPE_BYTES: Final = 1 << 20
_F_SETPIPE_SZ: Final = 1031

#: where the ``asyncsync`` package is, for the helper (``-I`` ignores PYTHONPATH)
_ROOT: Final = str(Path(__file__).resolve().parent.parent.parent)
#: the helper's program: the packages ``asyncsync``, ``asyncsync.sources`` and
#: ``asyncsync.checkpoint`` stand in without their ``__init__`` (which imports the uploader,
#: aiohttp...: ~0.14 s of start-up)
_CODE: Final = """
import sys, types
root = sys.argv[1]
for name in ("asyncsync", "asyncsync.sources", "asyncsync.checkpoint"):
    package = types.ModuleType(name)
    package.__path__ = [root + "/" + name.replace(".", "/")]
    sys.modules[name] = package
from asyncsync.sources._parquet_decode import main
sys.exit(main(sys.argv[2:]))
"""


class ParquetHelper:
    """The helper process encoding row groups ``[g, stop_group)`` of ``path``, ``g`` given
    once it is :meth:`ready` (see the module docstring); :meth:`frames` gives its batches."""

    def __init__(self, path: str) -> None:
        #: the helper wrote every row (else the caller reads on from the last row it got)
        self.finished = False
        self._ready = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _CODE, _ROOT, path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            logger.debug("Parquet helper not started (%s); decoding here", exc)
            return
        self._out = self._proc.stdout
        if self._out is not None:
            with contextlib.suppress(OSError, ImportError):  # Linux only
                import fcntl

                fcntl.fcntl(self._out.fileno(), _F_SETPIPE_SZ, PIPE_BYTES)

    @property
    def alive(self) -> bool:
        """Not given up on (it may still be starting)."""
        return self._out is not None

    def ready(self, wait: float = 0.0) -> bool:
        """Has the helper started (waiting up to ``wait`` seconds)? False for good once it
        has failed."""
        out = self._out
        if self._ready or out is None:
            return self._ready
        try:
            if not select.select([out], [], [], wait)[0]:
                return False
            head = out.read(HEADER.size)  # written at once, so never a partial read
        except (OSError, ValueError) as exc:
            head = repr(exc).encode()
        if len(head) == HEADER.size and HEADER.unpack(head)[1] == READY:
            self._ready = True
            return True
        logger.debug("Parquet helper failed to start; decoding here")
        self.close()
        return False

    def frames(
        self,
        *,
        start_group: int,
        stop_group: int,
        first_row: int,
        skip_through: int,
        batch_rows: int,
    ) -> Generator[tuple[int, int, int, bytes | None], None, None]:
        """Once :meth:`ready`: row groups ``[start_group, stop_group)`` (the first row
        numbered ``first_row``, the rows up to ``skip_through`` skipped) in batches of
        ``batch_rows``: ``(first row, rows taken, records, their newline-ended JSON or
        None)`` for each batch, until the helper ends (:attr:`finished` then says whether
        it wrote every row)."""
        out, proc = self._out, self._proc
        if not self._ready or out is None or proc is None or proc.stdin is None:
            return
        args = (start_group, stop_group, first_row, skip_through, batch_rows)
        try:
            proc.stdin.write(" ".join(map(str, args)).encode() + b"\n")
            proc.stdin.close()
        except OSError as exc:
            logger.debug("Parquet helper gone (%s); decoding here", exc)
            return
        while True:
            try:
                head = out.read(HEADER.size)
                if len(head) != HEADER.size:
                    logger.debug("Parquet helper stopped; decoding here")
                    return
                first, rows, count, size = HEADER.unpack(head)
                if rows == END:
                    self.finished = True
                    return
                if rows == STOPPED:
                    logger.debug("Parquet helper stopped before row %d; decoding here", first)
                    return
                data = out.read(size) if count else None
            except (OSError, ValueError) as exc:
                logger.debug("Parquet helper unreadable (%s); decoding here", exc)
                return
            if data is not None and len(data) != size:
                logger.debug("Parquet helper wrote a short batch; decoding here")
                return
            yield first, rows, count, data

    def close(self) -> None:
        """Stop the helper (idempotent)."""
        out, self._out = self._out, None
        proc, self._proc = self._proc, None
        stop_helper(proc, out)
