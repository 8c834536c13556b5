"""Micro-benchmark: how to validate JSONL lines as single JSON objects without building them.

Run: ``.venv/bin/python -m benchmarks.micro_validate [--lines N] [--repeat R]``

Every candidate gets the same 1 MiB blocks of complete ``\\n``-terminated lines (~280-byte
records, as the design's facts use) and does the whole per-block job the JSONL reader does:
split into lines, strip, check UTF-8, check each line is exactly one JSON *object*, and produce
the list of record bytes. Timings are the best of R runs, in ns per record, so the per-line
decoder call is measured together with what it forces around it (an object check, a join, a
length comparison). The last section times :class:`asyncsync.sources._jsonl.JsonlSource` end to
end on the same file (read off the loop by its worker thread, in an event loop), in records/s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import os
import time
from collections import deque
from collections.abc import Callable
from itertools import repeat

import msgspec
import orjson

WS = b" \t\r\n"


class _AnyObject(msgspec.Struct):
    """No fields: decoding skips (and so validates) every member, and rejects non-objects."""


_raw = msgspec.json.Decoder(msgspec.Raw)
_obj = msgspec.json.Decoder(_AnyObject)
_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_one_object_lines = msgspec.json.Decoder(tuple[_AnyObject]).decode_lines


def load_lines(n: int) -> tuple[list[bytes], str]:
    """The project's standard records (``benchmarks/datagen.py``, ~280 bytes, ASCII)."""
    from benchmarks.datagen import data_file

    path = data_file(n)
    with open(path, "rb") as f:
        return f.read().splitlines(), str(path)


def to_blocks(lines: list[bytes], size: int = 1 << 20) -> list[bytes]:
    buf = b"\n".join(lines) + b"\n"
    blocks, i = [], 0
    while i < len(buf):
        j = buf.rfind(b"\n", i, i + size) + 1
        blocks.append(buf[i:j])
        i = j
    return blocks


# Each candidate: block (complete lines) -> list of valid record bytes. All must agree.


def _lines(block: bytes) -> list[bytes]:
    parts = block.split(b"\n")
    parts.pop()
    return list(map(bytes.strip, parts, repeat(WS)))


def _utf8_ok(block: bytes) -> bool:
    if block.isascii():
        return True
    try:
        block.decode()
    except UnicodeDecodeError:
        return False
    return True


def c_orjson_loop(block: bytes) -> list[bytes]:
    """orjson.loads per line (builds the objects), isinstance dict."""
    out = []
    for line in _lines(block):
        if isinstance(orjson.loads(line), dict):
            out.append(line)
    return out


def c_raw_loop(block: bytes) -> list[bytes]:
    """msgspec Decoder(Raw) per line in a Python loop, plus a startswith('{') check."""
    lines = _lines(block)
    assert _utf8_ok(block)
    dec = _raw.decode
    for line in lines:
        dec(line)
    assert all(map(bytes.startswith, lines, repeat(b"{")))
    return lines


def c_raw_map(block: bytes) -> list[bytes]:
    """msgspec Decoder(Raw) mapped over the lines (C loop), plus startswith('{')."""
    lines = _lines(block)
    assert _utf8_ok(block)
    deque(map(_raw.decode, lines), 0)
    assert all(map(bytes.startswith, lines, repeat(b"{")))
    return lines


def c_struct_map(block: bytes) -> list[bytes]:
    """msgspec Decoder(empty Struct) mapped over the lines: validates *and* checks 'object'."""
    lines = _lines(block)
    assert _utf8_ok(block)
    deque(map(_obj.decode, lines), 0)
    return lines


def c_struct_loop(block: bytes) -> list[bytes]:
    """msgspec Decoder(empty Struct) in a Python loop with try/except (finds the bad index)."""
    lines = _lines(block)
    assert _utf8_ok(block)
    dec = _obj.decode
    bad = []
    for i, line in enumerate(lines):
        try:
            dec(line)
        except (msgspec.DecodeError, RecursionError):
            bad.append(i)
    assert not bad
    return lines


def c_decode_lines(block: bytes) -> list[bytes]:
    """Batch: Decoder(Raw).decode_lines(block) once; element lengths must equal line lengths."""
    lines = _lines(block)
    assert _utf8_ok(block)
    raws = _raw.decode_lines(block)
    assert list(map(len, raws)) == list(map(len, lines))
    assert all(map(bytes.startswith, lines, repeat(b"{")))
    return lines


def c_join_list(block: bytes) -> list[bytes]:
    """Batch: decode b'[' + b','.join(lines) + b']' as list[Raw]; lengths must match lines."""
    lines = _lines(block)
    assert _utf8_ok(block)
    raws = _raw_list.decode(b"[" + b",".join(lines) + b"]")
    assert list(map(len, raws)) == list(map(len, lines))
    assert all(map(bytes.startswith, lines, repeat(b"{")))
    return lines


def c_readlines_map(block: bytes) -> list[bytes]:
    """What the source does: BytesIO.readlines (memchr, not split's byte loop), validate the
    lines with their newline (JSON whitespace), then strip() them (C, no argument)."""
    parts = io.BytesIO(block).readlines()
    assert _utf8_ok(block)
    deque(map(_obj.decode, parts), 0)
    return list(map(bytes.strip, parts))


def c_wrapped_lines(block: bytes) -> list[bytes]:
    """Batch: each line wrapped as ``[line]``, joined by newlines, decoded in one call as
    lines of ``tuple[_AnyObject]``; the count of values must equal the count of lines.

    Correct, unlike a plain join: after a ``]`` that closes an array, only ``,`` ``]`` ``}``
    may follow inside a value, so no value can run on past ``]\\n[`` (and a string cannot
    hold the raw newline); so each wrapped line holds at least one value and none spans
    two, and equal counts mean one per line: ``[line]`` itself, an array of exactly one
    object. Slower all the same: the join, and the tuples and structs it builds."""
    lines = _lines(block)
    assert _utf8_ok(block)
    values = _one_object_lines(b"[" + b"]\n[".join(lines) + b"]")
    assert len(values) == len(lines)
    return lines


def c_split_only(block: bytes) -> list[bytes]:
    """Baseline: split + strip + UTF-8 check, no JSON validation (not a valid option)."""
    lines = _lines(block)
    assert _utf8_ok(block)
    return lines


CANDIDATES: list[Callable[[bytes], list[bytes]]] = [
    c_split_only,
    c_orjson_loop,
    c_raw_loop,
    c_raw_map,
    c_struct_loop,
    c_struct_map,
    c_decode_lines,
    c_join_list,
    c_readlines_map,
    c_wrapped_lines,
]


def time_all(
    fns: list[Callable[[bytes], list[bytes]]], blocks: list[bytes], rounds: int
) -> dict[str, float]:
    """Best time of each candidate; rounds interleave the candidates, so that load from
    neighbours on a shared machine hits them alike."""
    best = dict.fromkeys((fn.__name__ for fn in fns), float("inf"))
    for r in range(rounds):
        for fn in fns:
            if fn is c_orjson_loop and r >= 2:
                continue  # slow and far behind: two rounds are enough
            gc.collect()
            t0 = time.perf_counter()
            for b in blocks:
                fn(b)
            best[fn.__name__] = min(best[fn.__name__], time.perf_counter() - t0)
    return best


async def _drain_jsonl(path: str, batched: bool) -> tuple[int, float]:
    from asyncsync._batcher import batch
    from asyncsync._config import BatchLimits
    from asyncsync.sources._jsonl import JsonlSource

    src = JsonlSource(path)
    n = 0
    t0 = time.perf_counter()
    if batched:
        async for item in batch(src.blocks(), BatchLimits(), linger=False):
            n += len(item)
    else:
        async for block in src.blocks():
            n += len(block.records)
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()

    lines, path = load_lines(args.lines)
    blocks = to_blocks(lines)
    avg = sum(map(len, lines)) / len(lines)
    print(f"{len(lines)} lines, {avg:.0f} bytes avg, {len(blocks)} blocks of ~1 MiB")
    for fn in CANDIDATES:
        got = [r for b in blocks for r in fn(b)]
        assert got == lines, fn.__name__
    best = time_all(CANDIDATES, blocks, args.repeat)
    base = best[c_split_only.__name__]
    print(f"{'candidate':16} {'ns/rec':>7} {'minus split':>11}")
    for fn in CANDIDATES:
        ns = best[fn.__name__] / len(lines) * 1e9
        extra = (best[fn.__name__] - base) / len(lines) * 1e9
        doc = " ".join((fn.__doc__ or "").split("\n\n")[0].split())
        print(f"{fn.__name__:16} {ns:7.0f} {extra:11.0f}   {doc}")

    for batched in (False, True):
        best = float("inf")
        for _ in range(max(3, args.repeat // 2)):
            n, secs = asyncio.run(_drain_jsonl(path, batched))
            assert n == len(lines)
            best = min(best, secs)
        label = "JsonlSource + batch(200)" if batched else "JsonlSource end to end"
        print(
            f"{label}: {n} records in {best * 1e3:.0f} ms = {n / best / 1e6:.2f} M records/s "
            f"({best / n * 1e9:.0f} ns/record, {os.path.getsize(path) / best / 1e6:.0f} MB/s)"
        )


if __name__ == "__main__":
    main()
