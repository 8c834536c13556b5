"""The reference sink's capacity model: a knee at L, refusals above the hard limit, and L
changing on a schedule."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from asyncsync.sink import Sink, SinkConfig
from asyncsync.sink._capacity import (
    capacity_at,
    check_schedule,
    hard_limit_for,
    parse_schedule,
    service_time,
)
from asyncsync.sink._cli import build_parser, config_from_args


def test_service_time_grows_above_the_knee() -> None:
    """Up to L the base latency; above, in proportion: throughput stays L / latency."""
    assert service_time(0.02, 1, 16) == 0.02
    assert service_time(0.02, 16, 16) == 0.02
    assert service_time(0.02, 32, 16) == pytest.approx(0.04)
    assert service_time(0.02, 100, 0) == 0.02  # model off
    for n in (16, 24, 48):  # n in flight / time per answer = L / latency
        assert n / service_time(0.02, n, 16) == pytest.approx(16 / 0.02)


def test_schedule_and_hard_limit() -> None:
    schedule = parse_schedule("0:16, 10:8,20.5:32")
    assert schedule == ((0.0, 16), (10.0, 8), (20.5, 32))
    assert [capacity_at(0, schedule, t) for t in (0, 9.9, 10, 20.4, 21, 1e6)] == [
        16,
        16,
        8,
        8,
        32,
        32,
    ]
    assert capacity_at(5, schedule, None) == 5  # not started yet
    assert capacity_at(12, (), 3.0) == 12
    assert hard_limit_for(0, 16) == 32 and hard_limit_for(20, 16) == 20
    assert check_schedule([[0, 4], [1, 8]]) == ((0.0, 4), (1.0, 8))


@pytest.mark.parametrize(
    ("text", "needle"),
    [("0:16,x", "'x'"), ("5:16,2:8", "increase"), ("0:0", ">= 1"), ("0-16", "SECONDS")],
)
def test_bad_schedule(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_schedule(text)


def test_config_checks_and_cli_flags() -> None:
    with pytest.raises(ValueError, match="overload_status"):
        SinkConfig(overload_status=500)
    args = build_parser().parse_args(
        ["--capacity", "16", "--hard-limit", "40", "--overload-status", "503",
         "--capacity-schedule", "0:16,10:8", "--latency", "0.02"]
    )  # fmt: skip
    cfg = config_from_args(args)
    assert (cfg.capacity, cfg.hard_limit, cfg.overload_status) == (16, 40, 503)
    assert cfg.capacity_schedule == ((0.0, 16), (10.0, 8))


async def _post(session: aiohttp.ClientSession, url: str, i: int) -> int:
    async with session.post(url, json=[{"i": i}], headers={"Idempotency-Key": f"k{i}"}) as r:
        await r.read()
        return r.status


async def test_sink_refuses_above_the_hard_limit() -> None:
    """With L=2 and a hard limit of 4, 10 requests at once: 4 are served, 6 refused with the
    configured status."""
    cfg = SinkConfig(require_auth=False, latency=0.2, capacity=2, hard_limit=4, overload_status=503)
    async with Sink(cfg) as sink, aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(*(_post(session, sink.ingest_url, i) for i in range(10)))
        stats = sink.stats()
    assert sorted(statuses) == [200] * 4 + [503] * 6
    assert stats["overloaded"] == 6 and stats["capacity"] == 2


async def test_schedule_set_at_runtime_starts_at_the_next_request() -> None:
    """A schedule set through set_faults starts its clock at the next ingest request."""
    async with Sink(SinkConfig(require_auth=False)) as sink, aiohttp.ClientSession() as s:
        assert sink.stats()["capacity"] == 0
        sink.set_faults(capacity_schedule=[[0, 3], [3600, 7]])
        assert await _post(s, sink.ingest_url, 1) == 200
        assert sink.stats()["capacity"] == 3
