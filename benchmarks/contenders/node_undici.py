"""Contender: Node 20 + undici (``node_undici.mjs``), run when ``node`` and undici are there.

undici is not a dependency of this repository: install it into a cache folder outside it,
``npm install --prefix ~/.cache/asyncsync-bench/node undici`` (or point
``ASYNCSYNC_BENCH_NODE_DIR`` at another prefix). Without node or undici the contender is
skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ._common import parse_args, skip

NODE_DIR = Path(
    os.environ.get("ASYNCSYNC_BENCH_NODE_DIR", Path.home() / ".cache/asyncsync-bench/node")
)
SCRIPT = Path(__file__).with_name("node_undici.mjs")
INSTALL = f"npm install --prefix {NODE_DIR} undici"


def main() -> None:
    args = parse_args(__doc__ or "")
    node = shutil.which("node") or ("/usr/bin/node" if Path("/usr/bin/node").exists() else None)
    if node is None:
        skip("node is not installed")
    modules = NODE_DIR / "node_modules"
    if not (modules / "undici").is_dir():
        skip(f"undici is not installed ({INSTALL})")
    env = dict(os.environ, NODE_PATH=str(modules))
    proc = subprocess.run(
        [node, str(SCRIPT), args.url, str(args.data), str(args.workers), str(args.batch),
         args.token],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"node exited {proc.returncode}")
    sys.stdout.write(proc.stdout)


if __name__ == "__main__":
    main()
