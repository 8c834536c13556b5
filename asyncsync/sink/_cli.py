"""``python -m asyncsync.sink``: run the reference partner server as a process.

On start it prints, one per line and then flushes stdout::

    url: http://127.0.0.1:8080
    token: http://127.0.0.1:8080/oauth/token
    login: http://127.0.0.1:8080/login
    ingest: http://127.0.0.1:8080/ingest
    revoke: http://127.0.0.1:8080/revoke
    stats: http://127.0.0.1:8080/stats
    client_id: asyncsync-demo
    client_secret: demo-secret
    username: demo
    password: demo-password

and serves until SIGINT or SIGTERM (exit status 0).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
from collections.abc import Sequence
from typing import Any

from ._capacity import Schedule, parse_schedule
from ._config import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_MAX_SIZE, DEFAULT_USERS, SinkConfig
from ._server import Sink

__all__ = ["build_parser", "config_from_args", "main"]


def _latency(text: str) -> float | tuple[float, float]:
    """``0.05`` or a range ``0.01-0.2`` / ``0.01,0.2``."""
    try:
        return float(text)
    except ValueError:
        pass
    for sep in (",", "-"):
        low, found, high = text.partition(sep)
        if found:
            try:
                return (float(low), float(high))
            except ValueError:
                break
    raise argparse.ArgumentTypeError(f"expected seconds or LOW-HIGH, got {text!r}")


def _ttl(text: str) -> float | None:
    if text.strip().lower() in ("none", "inf", "never"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or 'none', got {text!r}") from None


def _user(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME:PASSWORD, got {text!r}")
    return name, password


def _statuses(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 500,502,503, got {text!r}") from None


def _schedule(text: str) -> Schedule:
    try:
        return parse_schedule(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser(prog: str = "python -m asyncsync.sink") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Reference partner API: OAuth2 token and login endpoints, a bearer-"
        "protected ingest endpoint with Idempotency-Key dedupe, stats, and fault injection.",
    )
    srv = p.add_argument_group("server")
    srv.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any free)")
    srv.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate chain")
    srv.add_argument("--tls-key", metavar="PEM", help="private key for --tls-cert")
    srv.add_argument(
        "--client-max-size",
        type=int,
        default=DEFAULT_CLIENT_MAX_SIZE,
        metavar="BYTES",
        help="largest body accepted, raw and decoded (default 64 MiB)",
    )
    srv.add_argument("--access-log", action="store_true", help="log every request to stderr")
    srv.add_argument("--no-admin", action="store_true", help="do not serve /admin/*")

    auth = p.add_argument_group("authentication")
    auth.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    auth.add_argument(
        "--client-secret",
        default=None,
        help="default: env SINK_CLIENT_SECRET, else the demo secret",
    )
    auth.add_argument(
        "--user",
        action="append",
        type=_user,
        metavar="NAME:PASSWORD",
        help="a /login user (repeatable; default demo:demo-password)",
    )
    auth.add_argument("--token-ttl", type=_ttl, default=3600.0, metavar="SECONDS", help="or 'none'")
    auth.add_argument("--no-expires-in", action="store_true", help="/oauth/token omits expires_in")
    auth.add_argument(
        "--login-expiry-style", choices=["seconds", "iso", "iso-only", "none"], default="iso"
    )
    auth.add_argument("--no-auth", action="store_true", help="ingest without a bearer token")

    data = p.add_argument_group("records")
    data.add_argument("--store", metavar="PATH", help="append accepted records as JSON Lines")
    data.add_argument("--no-dedupe", action="store_true", help="store repeated keys again")
    data.add_argument("--no-keep-records", action="store_true", help="keep nothing in memory")

    fl = p.add_argument_group("faults")
    fl.add_argument("--latency", type=_latency, default=0.0, metavar="S|LOW-HIGH")
    fl.add_argument("--token-latency", type=_latency, default=0.0, metavar="S|LOW-HIGH")
    fl.add_argument("--error-rate", type=float, default=0.0, metavar="FRACTION")
    fl.add_argument("--error-statuses", type=_statuses, default=(500, 502, 503), metavar="LIST")
    fl.add_argument("--reset-rate", type=float, default=0.0, metavar="FRACTION")
    fl.add_argument("--fault-phase", choices=["before", "after", "either"], default="before")
    fl.add_argument("--throttle-every", type=int, default=0, metavar="N")
    fl.add_argument("--retry-after", type=float, default=1.0, metavar="SECONDS")
    fl.add_argument(
        "--retry-after-date", action="store_true", help="send Retry-After as an HTTP date"
    )
    fl.add_argument("--throttle-status", type=int, default=429)
    fl.add_argument("--revoke-all-after", type=int, default=0, metavar="N")
    fl.add_argument("--auth-outage", type=float, default=0.0, metavar="SECONDS")
    fl.add_argument("--auth-outage-requests", type=int, default=0, metavar="N")
    fl.add_argument("--reject-field", metavar="NAME")
    fl.add_argument(
        "--results",
        choices=["none", "elasticsearch", "salesforce"],
        default="none",
        help="answer 200 with one result per record in this shape (default none)",
    )
    fl.add_argument(
        "--item-throttle-rate",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="with --results: fraction of items answered 429 (not stored)",
    )
    fl.add_argument("--max-body-bytes", type=int, metavar="BYTES")
    fl.add_argument("--hang", action="store_true", help="never answer ingest requests")
    fl.add_argument("--hang-rate", type=float, default=0.0, metavar="FRACTION")
    fl.add_argument("--token-hang", action="store_true", help="never answer token requests")
    fl.add_argument("--clock-offset", type=float, default=0.0, metavar="SECONDS")
    fl.add_argument("--seed", type=int)
    cap = p.add_argument_group(
        "capacity model",
        "a server with a known knee: up to L requests in flight answer in --latency, above L "
        "they queue (latency * in-flight / L), above --hard-limit they are refused",
    )
    cap.add_argument("--capacity", type=int, default=0, metavar="L", help="0 = off (default)")
    cap.add_argument(
        "--hard-limit", type=int, default=0, metavar="N", help="refuse above N in flight (0: 2*L)"
    )
    cap.add_argument(
        "--overload-status", type=int, choices=[429, 503], default=429, help="(default 429)"
    )
    cap.add_argument(
        "--capacity-schedule",
        type=_schedule,
        default=(),
        metavar="T:L,...",
        help="L over time from the first ingest request, e.g. 0:16,10:8,20:32 (seconds:L)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> SinkConfig:
    """Raises ValueError for a bad combination."""
    secret = args.client_secret
    if secret is None:
        secret = os.environ.get("SINK_CLIENT_SECRET") or SinkConfig().client_secret
    users: dict[str, str] = dict(args.user) if args.user else dict(DEFAULT_USERS)
    return SinkConfig(
        client_id=args.client_id,
        client_secret=secret,
        users=users,
        token_ttl=args.token_ttl,
        token_expires_in=not args.no_expires_in,
        login_expiry_style=args.login_expiry_style,
        require_auth=not args.no_auth,
        dedupe=not args.no_dedupe,
        store_path=args.store,
        keep_records=not args.no_keep_records,
        client_max_size=args.client_max_size,
        admin=not args.no_admin,
        latency=args.latency,
        token_latency=args.token_latency,
        error_rate=args.error_rate,
        error_statuses=args.error_statuses,
        reset_rate=args.reset_rate,
        fault_phase=args.fault_phase,
        throttle_every=args.throttle_every,
        retry_after=args.retry_after,
        retry_after_form="date" if args.retry_after_date else "seconds",
        throttle_status=args.throttle_status,
        revoke_all_after=args.revoke_all_after,
        auth_outage=args.auth_outage,
        auth_outage_requests=args.auth_outage_requests,
        reject_field=args.reject_field,
        results=args.results,
        item_throttle_rate=args.item_throttle_rate,
        max_body_bytes=args.max_body_bytes,
        hang=args.hang,
        hang_rate=args.hang_rate,
        token_hang=args.token_hang,
        clock_offset=args.clock_offset,
        seed=args.seed,
        capacity=args.capacity,
        hard_limit=args.hard_limit,
        overload_status=args.overload_status,
        capacity_schedule=args.capacity_schedule,
    )


async def _serve(sink: Sink) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with sink:
            cfg = sink.config
            lines: list[tuple[str, Any]] = [
                ("url", sink.url),
                ("token", sink.token_url),
                ("login", sink.login_url),
                ("ingest", sink.ingest_url),
                ("revoke", sink.revoke_url),
                ("stats", sink.stats_url),
                ("client_id", cfg.client_id),
                ("client_secret", cfg.client_secret),
            ]
            if cfg.users:
                username, password = next(iter(cfg.users.items()))
                lines += [("username", username), ("password", password)]
            sys.stdout.write("".join(f"{k}: {v}\n" for k, v in lines))
            sys.stdout.flush()
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    parser = build_parser(prog or "python -m asyncsync.sink")
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    context: ssl.SSLContext | None = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            parser.error("--tls-cert and --tls-key go together")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            parser.error(f"cannot load the TLS certificate: {exc}")
    if args.access_log:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    sink = Sink(
        config,
        host=args.host,
        port=args.port,
        ssl_context=context,
        access_log=args.access_log,
    )
    try:
        asyncio.run(_serve(sink))
    except OSError as exc:
        print(f"sink: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
