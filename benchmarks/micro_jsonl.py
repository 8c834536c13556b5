"""Micro-benchmark: asyncsync's synchronous JSONL hot path, stage by stage, in ns per record.

Run: ``.venv/bin/python -m benchmarks.micro_jsonl [--records N] [--repeat R] [--batch B]``

Feeds the standard export (``benchmarks/datagen.py``, ~280-byte records) in 1 MiB chunks through
what a JSONL upload runs per record, without threads, event loop or HTTP:

* ``parse``: :class:`asyncsync.sources._jsonl._LineParser` (split, strip, UTF-8 check, validation,
  positions and offsets), what the source's reader thread does;
* ``cut``: :class:`asyncsync._batcher._Cutter` on those blocks (batches of ``--batch``);
* ``encode``: :class:`asyncsync._body.BodyEncoder` on each batch (the JSON array body).

The last 64 batches are kept alive, as the pipeline's queue keeps them, so that the allocator
works as it does in a run. ``--text latin`` puts accented Latin-1 letters in some names,
``--text wide`` a character past U+00FF (a CJK one) in every name: UTF-8 is then checked by
decoding, not by ``isascii``. Times are CPU time, the best of R rounds (a shared machine's noise
only ever adds). Compare two trees by running this from each (``PYTHONPATH`` or ``cd``).
"""

from __future__ import annotations

import argparse
import gc
import time
from collections import deque

from asyncsync._batcher import _Cutter
from asyncsync._body import BodyEncoder
from asyncsync._config import BatchLimits
from asyncsync._records import Batch
from asyncsync.sources._jsonl import _LineParser

from .datagen import data_file

_TEXT = {
    "ascii": (),
    "latin": (("Jonas", "Jonás"), ("Sofia", "Sofía"), ("Malmo", "Malmö")),
    "wide": (('"name":"', '"name":"東'),),
}


def chunks_of(path: str, size: int = 1 << 20, text: str = "ascii") -> list[bytes]:
    with open(path, "rb") as f:
        data = f.read()
    for old, new in _TEXT[text]:
        data = data.replace(old.encode(), new.encode())
    return [data[i : i + size] for i in range(0, len(data), size)]


def one_round(chunks: list[bytes], batch: int) -> tuple[float, float, float, int]:
    parser = _LineParser()
    cutter = _Cutter(BatchLimits(max_records=batch), start_seq=0, overhead=1)
    encoder = BodyEncoder("json")
    ring: deque[bytes] = deque(maxlen=64)
    t_parse = t_cut = t_enc = 0.0
    records = 0
    clock = time.process_time
    for i in range(len(chunks) + 1):
        t0 = clock()
        block = parser.feed(chunks[i]) if i < len(chunks) else parser.finish()
        t1 = clock()
        items = [] if block is None else cutter.feed(block)
        if i == len(chunks):
            items += cutter.finish()
        t2 = clock()
        for item in items:
            if isinstance(item, Batch):
                ring.append(encoder.encode(item.records))
                records += len(item)
        t3 = clock()
        t_parse += t1 - t0
        t_cut += t2 - t1
        t_enc += t3 - t2
    return t_parse, t_cut, t_enc, records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--text", choices=sorted(_TEXT), default="ascii")
    args = ap.parse_args()
    chunks = chunks_of(str(data_file(args.records)), text=args.text)
    best = [float("inf")] * 3
    records = 0
    for _ in range(args.repeat):
        gc.collect()
        *times, records = one_round(chunks, args.batch)
        best = [min(b, t) for b, t in zip(best, times, strict=True)]
    assert records == args.records, records
    parse, cut, enc = (t / records * 1e9 for t in best)
    print(
        f"{records:,} {args.text} records, batch {args.batch}: parse {parse:.0f}  cut {cut:.0f}  "
        f"encode {enc:.0f}  total {parse + cut + enc:.0f} ns/record (best of {args.repeat})"
    )


if __name__ == "__main__":
    main()
