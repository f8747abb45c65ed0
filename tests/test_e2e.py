"""End to end: the real program, real UDP on loopback, a strict local AppOptics, real signals.

Most tests use a day-long flush interval and let SIGTERM's final flush deliver everything
in one interval, so exact values can be asserted without racing a tick.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import orjson
import pytest

from tests.bounded import E2E_TIMEOUT, run_bounded
from tests.fakeapi import AcceptedMeasurement, FakeAppOptics, by_name
from tests.proxy import Proxy

TOKEN = "e2e-secret-token"
DAY = "86400"


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    run_bounded(scenario(), E2E_TIMEOUT)


async def deliver(lines: list[bytes], *args: str) -> tuple[list[AcceptedMeasurement], Proxy]:
    """Send ``lines``, stop the proxy with SIGTERM, return what the API accepted."""
    async with FakeAppOptics(token=TOKEN) as api:
        flags = ("--api-url", api.url, "--flush-interval", DAY, *args)
        async with Proxy(*flags, env={"APPOPTICS_TOKEN": TOKEN}) as proxy:
            await proxy.send(lines)
            assert await proxy.stop(signal.SIGTERM) == 0, proxy.log
        assert not api.rejected, api.rejected
        return api.accepted, proxy


def test_exact_values_for_each_type() -> None:
    lines = [
        b"hits:1|c",
        b"hits:2|c|@0.5",
        b"temp:20|g",
        b"temp:+5|g",
        b"temp:-2|g",
        b"users:alice|s",
        b"users:bob|s",
        b"users:alice|s",
        b"lat:10|ms",
        b"lat:20|ms",
        b"lat:30|ms|@0.5",
        b"size:100|h",
        b"dist:7|d",
        b"garbage line",
    ]

    async def scenario() -> None:
        accepted, proxy = await deliver(lines, "--percentiles", "50,90")
        got = by_name(accepted)
        assert got["hits"]["value"] == 5.0
        assert got["hits"]["attributes"] == {"summarize_function": "sum"}
        assert got["temp"]["value"] == 23.0
        assert got["users"]["value"] == 2.0
        lat = got["lat"]
        assert (lat["count"], lat["sum"]) == (4, 10 + 20 + 2 * 30)
        assert (lat["min"], lat["max"], lat["last"]) == (10, 30, 30)
        mean = (10 + 20 + 2 * 30) / 4  # weighted by 1 / rate
        variance = ((10 - mean) ** 2 + (20 - mean) ** 2 + 2 * (30 - mean) ** 2) / 4
        assert lat["stddev"] == pytest.approx(variance**0.5)
        assert "value" not in lat
        assert got["lat.p50"]["value"] == 20
        assert got["lat.p90"]["value"] == 30
        assert got["size"]["count"] == 1
        assert got["dist"]["sum"] == 7
        assert "rejected 1 lines" in proxy.log

    run(scenario)


def test_global_tags_merged_and_time_on_the_grid() -> None:
    lines = [b"a:1|c|#env:prod", b"b:1|c|#region:eu-west-1", b"c:1|c"]

    async def scenario() -> None:
        accepted, _ = await deliver(
            lines, "--tag", "region=us-east-1", "--tag", "host=web-1", "--flush-interval", "60"
        )
        got = by_name(accepted)
        assert got["a"]["tags"] == {"env": "prod", "region": "us-east-1", "host": "web-1"}
        assert got["b"]["tags"] == {"region": "eu-west-1", "host": "web-1"}  # own tag wins
        assert got["c"]["tags"] == {"region": "us-east-1", "host": "web-1"}
        for m in accepted:
            assert m["period"] == 60
            assert m["time"] is not None and m["time"] % 60 == 0

    run(scenario)


def test_five_thousand_series_go_out_in_posts_of_at_most_a_thousand() -> None:
    lines = [f"series.{i}:1|c|#shard:{i % 7}".encode() for i in range(5000)]

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            flags = ("--api-url", api.url, "--flush-interval", DAY, "--batch-size", "1000")
            async with Proxy(*flags, env={"APPOPTICS_TOKEN": TOKEN}) as proxy:
                await proxy.send(lines, per_datagram=25)
                assert await proxy.stop() == 0, proxy.log
            sizes = [r.measurements for r in api.requests]
            assert sum(sizes) == 5000 and max(sizes) <= 1000
            assert all(r.status == 202 for r in api.requests)
            assert {m["name"] for m in api.accepted} == {f"series.{i}" for i in range(5000)}
            assert all(m["value"] == 1.0 for m in api.accepted)

    run(scenario)


def test_periodic_flush_without_stopping() -> None:
    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            flags = ("--api-url", api.url, "--flush-interval", "1")
            async with Proxy(*flags, env={"APPOPTICS_TOKEN": TOKEN}) as proxy:
                await proxy.send([b"tick:1|c"])
                await api.wait_for(lambda a: len(a.accepted) >= 1, timeout=10)
                assert api.accepted[0]["name"] == "tick"
                assert await proxy.stop() == 0

    run(scenario)


def test_wrong_token_is_never_logged() -> None:
    async def scenario() -> None:
        async with FakeAppOptics(token="the-right-one") as api:
            flags = ("--api-url", api.url, "--flush-interval", DAY)
            async with Proxy(*flags, env={"APPOPTICS_TOKEN": TOKEN}) as proxy:
                await proxy.send([b"x:1|c"])
                assert await proxy.stop() == 0
            assert [r.status for r in api.requests] == [401]
            assert TOKEN not in proxy.log
            assert "401" in proxy.log

    run(scenario)


def test_dry_run_prints_measurements_and_sigint_exits_zero() -> None:
    async def scenario() -> None:
        async with Proxy("--flush-interval", DAY) as proxy:
            await proxy.send([b"page.views:1|c|#env:prod"])
            assert await proxy.stop(signal.SIGINT) == 0
        assert sum("dry run" in line for line in proxy.stderr) == 1
        bodies: list[dict[str, Any]] = [orjson.loads(line) for line in proxy.stdout]
        measurements = [m for body in bodies for m in body["measurements"]]
        assert [(m["name"], m["value"], m["tags"]["env"]) for m in measurements] == [
            ("page.views", 1.0, "prod")
        ]

    run(scenario)


def test_a_dry_run_prints_only_the_users_metrics_and_a_summary_per_flush() -> None:
    env = {"STATSD_AO_UDP": "127.0.0.1:0", "STATSD_AO_FLUSH_INTERVAL": DAY}

    async def scenario() -> None:
        command = [sys.executable, "-m", "statsd_ao"]  # the defaults, as a new user runs it
        async with Proxy(command=command, env=env) as proxy:
            await proxy.send([b"page.views:1|c|#env:prod", b"latency:12|ms"])
            assert await proxy.stop(signal.SIGTERM) == 0
        bodies: list[dict[str, Any]] = [orjson.loads(line) for line in proxy.stdout]
        names = sorted(m["name"] for body in bodies for m in body["measurements"])
        assert names == ["latency", "latency.p90", "page.views"]  # no statsd_ao.* lines
        assert any("2 series, 3 measurements printed" in line for line in proxy.stderr)

    run(scenario)


def test_invalid_setting_stops_the_program_with_a_named_error() -> None:
    async def scenario() -> None:
        proxy = Proxy("--batch-size", "5000")
        with pytest.raises(RuntimeError, match="--batch-size"):
            await proxy.start()
        assert proxy.process is not None and proxy.process.returncode == 2

    run(scenario)


def test_port_in_use_fails_at_start() -> None:
    async def scenario() -> None:
        async with Proxy("--flush-interval", DAY) as first:
            second = Proxy("--flush-interval", DAY)
            second.args[1] = f"127.0.0.1:{first.port}"
            with pytest.raises(RuntimeError, match="cannot listen on udp"):
                await second.start()
            assert second.process is not None and second.process.returncode == 1
            await first.stop()

    run(scenario)


def test_self_metrics_are_posted_and_accepted() -> None:
    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            flags = ("--api-url", api.url, "--flush-interval", DAY, "--self-metrics", "on")
            async with Proxy(*flags, env={"APPOPTICS_TOKEN": TOKEN}) as proxy:
                await proxy.send([b"x:1|c", b"bad line", b"y:2|c"])
                assert await proxy.stop() == 0, proxy.log
            assert not api.rejected
            got = {(m["name"], m["tags"].get("reason")): m.get("value") for m in api.accepted}
            assert got[("statsd_ao.lines.received", None)] == 3
            assert got[("statsd_ao.lines.bad", "missing type")] == 1
            assert got[("statsd_ao.udp.packets", None)] == 1
            assert ("x", None) in got

    run(scenario)


def test_http_endpoint_answers_health_ready_and_metrics() -> None:
    async def scenario() -> None:
        async with Proxy("--flush-interval", DAY, "--http", "127.0.0.1:0") as proxy:
            port = next(
                int(line.rsplit(":", 1)[1].split()[0])
                for line in proxy.stderr
                if "http endpoint on" in line
            )
            async with aiohttp.ClientSession() as session:
                base = f"http://127.0.0.1:{port}"
                async with session.get(base + "/health") as health:
                    assert health.status == 200
                async with session.get(base + "/ready") as ready:
                    assert ready.status == 200
                async with session.get(base + "/metrics") as metrics:
                    assert "statsd_ao_udp_packets_total" in await metrics.text()
            assert await proxy.stop() == 0

    run(scenario)


def test_check_config_validates_and_exits() -> None:
    async def scenario() -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "statsd_ao",
            "--check-config",
            "--token",
            "t0ken",
            "--flush-interval",
            "30",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate()
        assert process.returncode == 0
        assert b"configuration OK" in out and b"flush_interval=30s" in out
        assert b"t0ken" not in out

    run(scenario)


def test_kernel_receive_buffer_drops_are_reported() -> None:
    """A receive buffer at the kernel's minimum and a burst: the host drops, and says so."""

    async def scenario() -> None:
        flags = ("--flush-interval", "1", "--rcvbuf", "1", "--self-metrics", "on")
        async with Proxy(*flags) as proxy:
            payload = b"burst:1|c\n" * 140  # ~1400 bytes a datagram
            for _ in range(20):  # bounded: 20 bursts of 500 datagrams at most
                await proxy.send([payload] * 500, per_datagram=1, paced=False)
                if any("kernel dropped" in line for line in proxy.stderr):
                    break
            line = await proxy.wait_for_log("kernel dropped", timeout=15)
            assert "receive buffer was full" in line
            assert await proxy.stop() == 0, proxy.log
        drops = [
            m["value"]
            for body in map(orjson.loads, proxy.stdout)
            for m in body["measurements"]
            if m["name"] == "statsd_ao.udp.kernel_drops"
        ]
        assert sum(drops) > 0

    run(scenario)


def test_post_latency_is_reported_after_the_first_post() -> None:
    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            flags = ("--api-url", api.url, "--flush-interval", "1", "--self-metrics", "on")
            async with Proxy(*flags, env={"APPOPTICS_TOKEN": TOKEN}) as proxy:
                await api.wait_for(
                    lambda a: any(
                        m["name"] == "statsd_ao.post.latency_seconds.p50" for m in a.accepted
                    ),
                    timeout=15,
                )
                assert await proxy.stop() == 0
            assert not api.rejected

    run(scenario)


def test_sampled_timers_and_a_series_named_like_a_percentile_pass_the_strict_api() -> None:
    # The strict fake refuses a summary whose sum lies outside count x [min, max] and the
    # same series twice in one post: both would reach it here without the proxy's care.
    lines = [b"lat:10|ms|@0.7", b"lat.p90:3|c", b"other:10|ms|@0.6"]

    async def scenario() -> None:
        accepted, proxy = await deliver(lines, "--percentiles", "90")
        got = by_name(accepted)
        assert set(got) == {"lat", "lat.p90", "other", "other.p90"}
        assert (got["lat"]["count"], got["lat"]["sum"]) == (1, 10.0)
        assert (got["other"]["count"], got["other"]["sum"]) == (2, 20.0)
        assert got["lat.p90"]["value"] == 3.0  # the counter, not the timer's percentile
        warning = await proxy.wait_for_log("is both a series of its own and a percentile")
        assert "'lat.p90'" in warning

    run(scenario)
