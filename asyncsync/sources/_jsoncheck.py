"""Is each line one JSON object? The check itself, and the helper process that runs it.

This module imports only the standard library and msgspec, so it also runs as a script::

    python -I _jsoncheck.py FD START_OFFSET STOP_OFFSET START_LINE BLOCK_SIZE MAX_LINE_BYTES

which is how :mod:`._prevalidate` starts it: a second process, on the second core, reading
the same byte range of a JSON Lines file (``os.pread`` on an inherited descriptor, so the
parent's file position is untouched) and writing, after each block, one line of ASCII::

    THROUGH BAD BAD ...

``THROUGH`` is the number of the first line not checked yet; each ``BAD`` is the number of a
line before it that is not exactly one JSON object (blank and over-long lines included). Line
numbers count newlines from ``START_LINE`` at ``START_OFFSET``, exactly as the parent's line
parser counts them, so the two agree whatever size their reads are. ``STOP_OFFSET`` ``-1``
means the end of the file. Parsing JSON is the largest single cost of a fast upload (about
250 ns of a ~1 us per-record budget, all of it holding the GIL); here it runs in parallel.
"""

from __future__ import annotations

import codecs
import io
import os
import sys
from collections import deque
from collections.abc import Callable
from operator import length_hint
from typing import Final

import msgspec

WS: Final = b" \t\r\n"  # JSON whitespace; bytes.strip() would also eat \x0b and \x0c
BOM: Final = b"\xef\xbb\xbf"


class _AnyObject(msgspec.Struct, gc=False):
    """No fields: decoding skips (and so validates) every member and rejects non-objects.

    ``gc=False``: the instance (discarded at once) is not tracked by the garbage collector,
    a few ns less per line."""


decode_object: Final[Callable[[bytes], object]] = msgspec.json.Decoder(_AnyObject).decode


def find_bad(lines: list[bytes], *, utf8_ok: bool) -> list[int]:
    """Indexes of the lines that are not exactly one JSON object, JSON whitespace around it
    allowed (empty lines included).

    ``utf8_ok`` says the caller checked every line is valid UTF-8 already.
    """
    bad: list[int] = []
    decode = decode_object
    n = len(lines)
    it = iter(lines)
    while True:
        try:  # map in C, ~20 ns/line faster than a Python loop
            deque(map(decode, it), 0)
            break
        except (msgspec.DecodeError, RecursionError):
            # the line that failed is the last one taken: go on with the rest, still in C
            bad.append(n - length_hint(it) - 1)
    if not utf8_ok:
        seen = set(bad)
        for i, line in enumerate(lines):
            if i not in seen and not line.isascii():
                try:
                    line.decode()
                except UnicodeDecodeError:
                    bad.append(i)
        bad.sort()
    return bad


def utf8_ok(data: bytes | memoryview, piece: int = 16 * 1024) -> bool:
    """Is ``data`` valid UTF-8? Decoded ``piece`` bytes at a time (a sequence cut at a piece's
    end is decoded with the next piece): one character past U+00FF turns a whole 1 MiB
    decode into a UCS-2 string, 3-5x slower (measured: 460 ns per 280-byte line, 95-170 in
    pieces; Latin-1-only text 20 -> 33)."""
    decode = codecs.utf_8_decode
    n = len(data)
    try:
        if n <= piece:
            decode(data, "strict", True)
            return True
        mv = memoryview(data)
        pos = 0
        while pos < n:
            pos += decode(mv[pos : pos + piece], "strict", pos + piece >= n)[1]
    except UnicodeDecodeError:
        return False
    return True


def _check_lines(lines: list[bytes], first: int, bom: bool) -> list[int]:
    """Line numbers of the bad ones among ``lines`` (the first is line ``first``)."""
    if bom and lines:
        head = lines[0].lstrip(WS)
        if head.startswith(BOM):
            lines = [head[3:], *lines[1:]]
    ok = all(map(bytes.isascii, lines)) or all(map(utf8_ok, lines))
    return [first + i for i in find_bad(lines, utf8_ok=ok)]


def check_range(
    fd: int,
    start: int,
    stop: int | None,
    line: int,
    block_size: int,
    max_line_bytes: int,
    emit: Callable[[int, list[int]], None],
) -> None:
    """Check every line of bytes ``[start, stop)`` of ``fd``; ``emit(through, bad)`` after
    each block. An over-long line is reported bad without being held in memory."""
    pos = start
    bom = start == 0
    carry: list[bytes] = []
    carry_len = 0
    skipping = False  # inside an over-long line: drop bytes up to its newline
    while stop is None or pos < stop:
        want = block_size if stop is None else min(block_size, stop - pos)
        chunk = os.pread(fd, want, pos)
        if not chunk:
            break
        pos += len(chunk)
        bad: list[int] = []
        if skipping:
            nl = chunk.find(b"\n")
            if nl < 0:
                continue
            bad.append(line)
            line += 1
            skipping = False
            bom = False
            chunk = chunk[nl + 1 :]
        parts = io.BytesIO(chunk).readlines()
        rest = parts.pop() if parts and not chunk.endswith(b"\n") else b""
        if parts and carry:
            carry.append(parts[0])
            parts[0] = b"".join(carry)
            carry, carry_len = [], 0
        if parts:
            flagged = _check_lines(parts, line, bom)
            # a line can only be over-long if the lines together are (as the parser checks):
            # no per-line scan for the usual block of short lines
            if len(chunk) - len(rest) + len(parts[0]) > max_line_bytes + 1:
                long = {line + i for i, p in enumerate(parts) if len(p) - 1 > max_line_bytes}
                flagged = sorted(long.union(flagged))
            bad.extend(flagged)
            bom = False
            line += len(parts)
        if rest:
            carry.append(rest)
            carry_len += len(rest)
            if carry_len > max_line_bytes:
                carry, carry_len, skipping = [], 0, True
        emit(line, bad)
    if skipping:
        emit(line + 1, [line])
    elif carry:  # the last line, without its newline
        last = b"".join(carry)
        emit(line + 1, _check_lines([last], line, bom))


def main(argv: list[str]) -> int:
    fd, start, stop, line, block_size, max_line_bytes = map(int, argv)
    out = sys.stdout.buffer

    def emit(through: int, bad: list[int]) -> None:
        out.write(b" ".join(str(n).encode() for n in (through, *bad)) + b"\n")
        out.flush()

    try:
        check_range(fd, start, None if stop < 0 else stop, line, block_size, max_line_bytes, emit)
    except BrokenPipeError:  # the parent stopped reading: it is done, or gone
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
