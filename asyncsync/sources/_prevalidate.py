"""JSON validation of a large JSON Lines file on the second core (the parent's side).

A fast upload is bound by the one core that holds the GIL, and a quarter of that core went
to parsing each line to check that it is one JSON object (msgspec skips ~280 bytes in about
250 ns; nothing in Python parses JSON without holding the GIL). :class:`Prevalidator` starts
:mod:`._jsoncheck` as a helper process on the same byte range of the file; the line parser
then asks it which lines of a block are bad instead of parsing them (measured: 0.91 M ->
1.39 M records/s at batch 200 with validation taken off that core; see benchmarks/README).

The helper is a filter, never the judge: a line it flags is checked again here (rejects are
rare), and the reason written to the dead-letter file is computed here. Whenever it cannot
answer (it failed to start, died, said something unreadable), the parser
validates locally from then on, so a broken helper costs speed, never a record. It runs in
its own session (a Ctrl-C at the terminal is the parent's to handle), is stopped when the
source closes, and dies of a broken pipe if the parent is killed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections import deque
from typing import IO, Final

from . import _jsoncheck
from ._reading import stop_helper

__all__ = ["Prevalidator", "worth_it"]

logger = logging.getLogger("asyncsync.sources")

#: below this many bytes the helper's start (~40 ms) costs more than it saves
MIN_BYTES: Final = 8 << 20


def worth_it(size: int | None) -> bool:
    """Is a helper process worth starting for ``size`` bytes of JSON Lines?"""
    if size is None or size < MIN_BYTES:
        return False
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return cores >= 2


class Prevalidator:
    """The helper process checking lines ``start_line...`` of bytes ``[start, stop)`` of
    ``fd``; :meth:`bad` answers for one block of lines at a time, in order."""

    def __init__(
        self,
        fd: int,
        *,
        start: int,
        stop: int | None,
        start_line: int,
        block_size: int,
        max_line_bytes: int,
    ) -> None:
        self._through = start_line  # lines before this one have a verdict
        self._bad: deque[int] = deque()
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        argv = [fd, start, -1 if stop is None else stop, start_line, block_size, max_line_bytes]
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", _jsoncheck.__file__, *map(str, argv)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                pass_fds=(fd,),
                start_new_session=True,
            )
        except OSError as exc:
            logger.debug("validation helper not started (%s); validating here", exc)
            return
        self._out = self._proc.stdout

    @property
    def alive(self) -> bool:
        return self._out is not None

    def bad(self, first: int, count: int) -> list[int] | None:
        """Indexes (from 0) of the lines among ``first ... first + count - 1`` that the helper
        flags, or ``None``: no verdict (validate them here; the helper is given up)."""
        end = first + count
        while self._through < end:
            if not self._read_verdict():
                self.close()
                return None
        found: list[int] = []
        bad = self._bad
        while bad and bad[0] < end:
            n = bad.popleft()
            if n >= first:
                found.append(n - first)
        return found

    def _read_verdict(self) -> bool:
        out = self._out
        if out is None:
            return False
        try:
            # blocking: the helper only reads a file, as the parser does; if the file hangs
            # (a dead NFS server), so would the parser's own read
            raw = out.readline()
            numbers = list(map(int, raw.split()))
        except (OSError, ValueError) as exc:
            logger.debug("validation helper unreadable (%s); validating here", exc)
            return False
        if not numbers or numbers[0] < self._through:
            why = "stopped" if not raw else "answered out of order"
            logger.debug("validation helper %s; validating here", why)
            return False
        self._through = numbers[0]
        self._bad.extend(numbers[1:])
        return True

    def close(self) -> None:
        """Stop the helper (idempotent); the parser validates any later line itself."""
        out, self._out = self._out, None
        proc, self._proc = self._proc, None
        stop_helper(proc, out)
