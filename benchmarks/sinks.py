"""The sinks the contenders send to, each a separate process: the aiohttp minisink, or nginx."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["MiniSink", "NginxSink", "Sink", "find_nginx"]

ROOT = Path(__file__).resolve().parent.parent


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, from /proc (Linux only; else None)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class Sink:
    """A sink process: ``url`` is its base URL; ingest at ``url + "/ingest"``."""

    kind = "?"
    url = ""
    proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Sink:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    @property
    def ingest_url(self) -> str:
        return self.url + "/ingest"

    def cpu_seconds(self) -> float | None:
        return None if self.proc is None else _cpu_seconds(self.proc.pid)

    def reset(self) -> None:
        """Zero the counters, when the sink has any."""

    def stats(self) -> dict[str, Any] | None:
        return None

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class MiniSink(Sink):
    """``benchmarks.minisink`` in its own process (see that module)."""

    kind = "aiohttp minisink"

    def __init__(
        self,
        *,
        token: str,
        latency: float = 0.0,
        token_ttl: float = 3600.0,
        token_delay: float = 0.02,
        uvloop: bool = True,
    ) -> None:
        self.args = [
            "--token",
            token,
            "--latency",
            str(latency),
            "--token-ttl",
            str(token_ttl),
            "--token-delay",
            str(token_delay),
        ]
        if not uvloop:
            self.args.append("--no-uvloop")

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.minisink", "--port", "0", *self.args],
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=child_env(),
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 15.0)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"minisink did not start (got {line!r})")
        self.url = line

    def _call(self, path: str, method: str = "GET") -> dict[str, Any]:
        req = urllib.request.Request(
            self.url + path, method=method, data=b"" if method == "POST" else None
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            data: dict[str, Any] = json.loads(resp.read())
        return data

    def reset(self) -> None:
        self._call("/stats/reset", "POST")

    def stats(self) -> dict[str, Any] | None:
        return self._call("/stats")


def find_nginx(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit if Path(explicit).exists() else None
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None


_NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    client_max_body_size 64m;
    client_body_buffer_size 1m;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
            return 200;
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NginxSink(Sink):
    """nginx answering 200 to every authorised POST (it reads and discards the body).

    Cheaper than the Python sink, so the client is the only limit. No counters: the
    harness then skips the sink-side checks. One process (``master_process off``).
    """

    kind = "nginx"

    def __init__(self, binary: str, *, token: str) -> None:
        self.binary = binary
        self.token = token
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-nginx-")
        tmp = self._tmp.name
        port = _free_port()
        conf = Path(tmp, "nginx.conf")
        conf.write_text(_NGINX_CONF.format(tmp=tmp, port=port, token=self.token))
        self.proc = subprocess.Popen(
            [self.binary, "-p", tmp, "-e", f"{tmp}/error.log", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"nginx did not start: {err.strip()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                self.url = f"http://127.0.0.1:{port}"
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not start listening")

    def stop(self) -> None:
        super().stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
