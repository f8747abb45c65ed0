"""The real program delivering over OTLP: exact numbers for every type and dialect, the spool
through kill -9, dual-write with one sink down, the OTLP dry run."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import orjson

from tests.fakeapi import FakeAppOptics
from tests.fakeotlp import FakeOtlp, Point
from tests.proxy import Proxy

TOKEN = "otlp-e2e-token"
DAY = "86400"


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, 120))


def otlp_proxy(
    otlp: FakeOtlp, *args: str, env: dict[str, str] | None = None, **options: Any
) -> Proxy:
    flags = ("--otlp-url", otlp.url, "--flush-interval", DAY, "--tag", "host=node-1")
    env = {"STATSD_AO_OTLP_TOKEN": otlp.token, **(env or {})}
    return Proxy(*flags, *args, env=env, **options)


def one(otlp: FakeOtlp, name: str, **attributes: str) -> Point:
    found = otlp.find(name, **attributes)
    assert len(found) == 1, (name, found)
    return found[0]


def test_every_type_and_dialect_arrives_with_exact_numbers() -> None:
    lines = [
        b"hits:3|c|@0.5|#env:prod",  # sampled counter: 6
        b"hits:4|c|#env:prod",
        b"neg:-2|c",  # a negative total: not monotonic
        b"temp:20|g",
        b"temp:+5|g",  # an etsy delta on the last value: 25
        b"users:alice|s",
        b"users:bob|s",
        b"users:alice|s",
        b"lat:10|ms",
        b"lat:20|ms",
        b"lat:30|ms|@0.5",  # counts twice
        b"size:100|h|#route:/a",
        b"dist:1:2:3|d",  # DogStatsD 1.1 multi-value
        b"etsy:1|c:2|c|@0.5",  # etsy multi-metric: 1 + 2/0.5
        b"_sc|db.up|2|#env:prod",
        b"librato#region=eu:7|g",  # Librato-style tags in the name
    ]

    async def scenario() -> None:
        async with FakeOtlp(token=TOKEN) as otlp:
            async with otlp_proxy(otlp, "--percentiles", "50") as proxy:
                await proxy.send(lines, per_datagram=1)
                assert await proxy.stop(signal.SIGTERM) == 0, proxy.log
            assert not otlp.rejected, otlp.describe()
            hits = one(otlp, "hits", env="prod")
            assert (hits.type, hits.value, hits.monotonic) == ("sum", 10.0, True)
            neg = one(otlp, "neg")
            assert (neg.value, neg.monotonic) == (-2.0, False)
            assert one(otlp, "temp").value == 25.0 and one(otlp, "temp").type == "gauge"
            assert one(otlp, "users").value == 2.0
            lat = one(otlp, "lat")
            assert (lat.type, lat.count, lat.sum, lat.min, lat.max) == (
                "histogram",
                4,
                90.0,
                10.0,
                30.0,
            )
            assert one(otlp, "lat.p50").value == 20.0
            assert one(otlp, "size", route="/a").sum == 100.0
            assert (one(otlp, "dist").count, one(otlp, "dist").sum) == (3, 6.0)
            assert (one(otlp, "etsy").value, one(otlp, "etsy").type) == (5.0, "sum")
            assert one(otlp, "db.up", env="prod").value == 2.0
            assert one(otlp, "librato", region="eu").value == 7.0
            for point in otlp.points:
                assert point.resource["host.name"] == "node-1"
                assert point.resource["service.name"] == "statsd-ao"
                assert "host" not in point.attributes
                assert point.start < point.time and point.time - point.start == 86400 * 10**9
            names = Counter((p.name, tuple(sorted(p.attributes.items()))) for p in otlp.points)
            assert set(names.values()) == {1}  # no series twice

    run(scenario())


def spooled_posts(directory: Path) -> int:
    return len(list(directory.glob("*.seg")))


def test_kill_9_during_an_outage_then_restart_delivers_everything_once(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    lines = [f"kept.s{i}:{i + 1}|c".encode() for i in range(300)]

    async def scenario() -> None:
        async with FakeOtlp(token=TOKEN) as otlp:
            otlp.down = True
            async with otlp_proxy(otlp, "--spool-dir", str(spool), "--flush-interval", "1") as p:
                await p.send(lines)
                await otlp.wait_for(lambda fake: len(fake.requests) >= 1)  # flushed, refused
                async with asyncio.timeout(30):
                    while not spooled_posts(spool / "otlp"):
                        await asyncio.sleep(0.05)  # (written by the spool's own thread)
                await p.kill()
            otlp.down = False
            async with otlp_proxy(otlp, "--spool-dir", str(spool)) as again:
                await otlp.wait_for(lambda fake: len(fake.points) >= 300, timeout=30)
                assert await again.stop() == 0, again.log
            assert "a previous run left to deliver" in again.log
            got = {p.name: p.value for p in otlp.points if p.name.startswith("kept.")}
            assert got == {f"kept.s{i}": float(i + 1) for i in range(300)}
            assert len([p for p in otlp.points if p.name.startswith("kept.")]) == 300

    run(scenario())


def test_dual_write_with_one_sink_down_holds_neither_back(tmp_path: Path) -> None:
    lines = [f"both.s{i}:1|c".encode() for i in range(50)]

    async def scenario() -> None:
        async with FakeOtlp(token=TOKEN) as otlp, FakeAppOptics(token="ao-token") as api:
            api.down = True  # AppOptics answers 503 throughout
            flags = ("--api-url", api.url, "--spool-dir", str(tmp_path / "spool"))
            env = {"APPOPTICS_TOKEN": "ao-token"}
            async with otlp_proxy(otlp, *flags, "--flush-interval", "1", env=env) as proxy:
                await proxy.send(lines)
                await otlp.wait_for(lambda fake: len(fake.find("both.s0")) >= 1, timeout=30)
                await api.wait_for(lambda fake: len(fake.requests) >= 1)
                signalled = time.monotonic()
                assert await proxy.stop(signal.SIGTERM) == 0, proxy.log
                took = time.monotonic() - signalled
            delivered = {p.name for p in otlp.points if p.name.startswith("both.")}
            assert delivered == {f"both.s{i}" for i in range(50)}
            assert api.accepted == []
            assert took < 15.0, proxy.log  # the spooled AppOptics posts do not hold the exit
            assert "appoptics: 0 delivered" in proxy.log
            assert list((tmp_path / "spool" / "appoptics").glob("*.seg"))

    run(scenario())


def test_the_dry_run_prints_otlp_json() -> None:
    async def scenario() -> None:
        flags = ("--otlp-url", "https://example.invalid/v1/metrics", "--dry-run")
        async with Proxy(*flags, "--flush-interval", DAY, "--tag", "host=h") as proxy:
            await proxy.send([b"printed:5|c|#k:v"])
            assert await proxy.stop(signal.SIGTERM) == 0, proxy.log
        requests = [orjson.loads(line) for line in proxy.stdout if line.strip()]
        metrics = [
            metric
            for request in requests
            for resource in request["resourceMetrics"]
            for scope in resource["scopeMetrics"]
            for metric in scope["metrics"]
        ]
        assert [m["name"] for m in metrics] == ["printed"]
        point = metrics[0]["sum"]["dataPoints"][0]
        assert point["asDouble"] == 5.0
        assert metrics[0]["sum"]["aggregationTemporality"] == 1  # DELTA, as an integer

    run(scenario())
