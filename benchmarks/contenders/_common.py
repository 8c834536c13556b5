"""What every contender shares: arguments, the event loop choice, batching, the result line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "BLOCK_SIZE",
    "SKIP_EXIT",
    "Result",
    "emit",
    "iter_batches",
    "loop_factory",
    "parse_args",
    "run_async",
    "skip",
]

SKIP_EXIT = 3
BLOCK_SIZE = 1 << 20


@dataclass
class Result:
    records: int = 0
    requests: int = 0
    errors: int = 0
    duration_s: float = 0.0  # wall time of the upload itself
    cpu_s: float = 0.0  # CPU time of the process during the upload (all threads)
    auth_requests: int | None = None
    loop: str = "-"
    extra: dict[str, Any] = field(default_factory=dict)


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--url", required=True, help="ingest URL")
    p.add_argument("--data", type=Path, required=True, help="JSON Lines file")
    p.add_argument("--workers", type=int, default=32)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--auth", choices=["static", "oauth2"], default="static")
    p.add_argument("--token", default="bench-static-token", help="static bearer token")
    p.add_argument("--token-url")
    p.add_argument("--client-id", default="bench-client")
    p.add_argument("--client-secret", default="bench-secret")
    p.add_argument(
        "--token-skew", type=float, default=None, help="asyncsync token skew (default: its own)"
    )
    p.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--transport", choices=["auto", "aiohttp", "reqwest"], help="asyncsync's --transport"
    )
    p.add_argument("--workdir", type=Path, help="scratch directory (checkpoint, dead letters)")
    return p.parse_args(argv)


def loop_factory(use_uvloop: bool) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """The uvloop loop factory when asked for and installed, else the default asyncio loop."""
    if use_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            return uvloop.new_event_loop, "uvloop"
    return None, "asyncio"


def run_async(main: Coroutine[Any, Any, Result], use_uvloop: bool) -> Result:
    factory, name = loop_factory(use_uvloop)
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(main)
    result.loop = name
    return result


def iter_batches(path: Path, batch: int) -> Iterator[list[bytes]]:
    """Lists of ``batch`` raw lines (without newline), read in 1 MiB blocks.

    The plain pass-through: no parsing, no validation, no per-record objects besides the line.
    """
    pending: list[bytes] = []
    rem = b""
    with path.open("rb", buffering=0) as f:
        while block := f.read(BLOCK_SIZE):
            lines = (rem + block).split(b"\n") if rem else block.split(b"\n")
            rem = lines.pop()
            start = 0
            if pending:
                start = batch - len(pending)
                pending.extend(lines[:start])
                if len(pending) < batch:
                    continue
                yield pending
            stop = len(lines) - (len(lines) - start) % batch
            for i in range(start, stop, batch):
                yield lines[i : i + batch]
            pending = lines[stop:]
    if rem.strip():
        pending.append(rem)
    if pending:
        yield pending


def emit(result: Result) -> None:
    print(json.dumps(asdict(result)), flush=True)


def skip(reason: str) -> NoReturn:
    print(json.dumps({"skipped": reason}), flush=True)
    sys.exit(SKIP_EXIT)
