"""Contender 6: the ``asyncsync upload`` CLI with ``--metrics`` on (Prometheus exporter as
hooks, per-request events): compared with contender 5, the cost of metrics."""

from __future__ import annotations

import socket

from .asyncsync_cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


if __name__ == "__main__":
    main(("--metrics", f"127.0.0.1:{free_port()}"), doc=__doc__)
