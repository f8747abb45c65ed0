"""Drop-in replacement for etsy statsd + statsd-appoptics-backend: their configuration file,
metric shapes, idle series and management interface."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import aiohttp
import pytest

from statsd_ao import cli
from statsd_ao.config import Config, build
from statsd_ao.core.accumulators import Accumulator, Counter, Gauge
from statsd_ao.core.aggregator import Aggregator, SeriesKey
from statsd_ao.core.cardinality import CardinalityGuard
from statsd_ao.core.idle import IdleKeeper
from statsd_ao.core.measurements import Converter, Measurement
from statsd_ao.core.name_rules import NameRules, etsy_sanitize
from statsd_ao.core.protocol import Kind
from statsd_ao.core.sanitize import Naming
from statsd_ao.etsy import migration
from statsd_ao.etsy.admin_state import ProxyAdminState
from statsd_ao.flusher import Flusher
from statsd_ao.io.address import Address
from tests.fakeapi import FakeAppOptics, by_name
from tests.proxy import Proxy
from tests.test_flusher import ListSink, appoptics

DATA = Path(__file__).parent.parent / "data" / "etsy"
TOKEN = "e2e-token"


def effective(name: str, **flags: str) -> tuple[Config, tuple[str, ...]]:
    base, unsupported = migration.load(DATA / name)
    return build(flags, environ={}, base=base), unsupported


def test_side_by_side_config_becomes_these_settings() -> None:
    config, unsupported = effective("side_by_side.js")
    assert config.udp == Address("0.0.0.0", 8125)
    assert config.flush_interval == 10
    assert config.percentiles == (90.0,)
    assert config.token == "from-the-file"
    assert config.tags == {"env": "prod"}
    assert config.global_prefix == "legacy"
    assert config.percentile_style == "backend"
    assert config.send_idle == ("counters", "gauges", "sets")
    assert config.key_name_sanitize is True
    assert any("graphitePort" in note for note in unsupported)


def test_appoptics_backend_sample() -> None:
    config, _ = effective("appoptics.js")
    assert config.flush_interval == 60
    assert config.batch_size == 300
    assert config.request_timeout == 8
    assert config.send_idle == ("gauges",)  # deleteIdleStats, but deleteGauges: false
    assert config.always_suffix_percentile is True
    assert config.tags["host"] == "web-1.example.com"


def test_explicit_flags_override_the_file() -> None:
    config, _ = effective("side_by_side.js", flush_interval="30", token="flag-token")
    assert config.flush_interval == 30
    assert config.token == "flag-token"


def test_check_config_names_unsupported_options(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["--statsd-config", str(DATA / "side_by_side.js"), "--check-config"])
    out = capsys.readouterr().out
    assert status == 0
    assert "percentile_style=backend" in out
    assert out.count("not supported from") == 1 and "graphitePort" in out


def test_a_broken_etsy_file_is_a_config_error(tmp_path: Path) -> None:
    broken = tmp_path / "config.js"
    broken.write_text("{ port: 8125,, }")
    assert cli.main(["--statsd-config", str(broken), "--check-config"]) == cli.EXIT_CONFIG


@pytest.mark.parametrize(
    ("name", "expected"),
    [("my key/with stuff!", "my_key-with_stuff"), ("a.b-c_d", "a.b-c_d"), ("é:x", "x")],
)
def test_etsy_key_name_sanitizing(name: str, expected: str) -> None:
    assert etsy_sanitize(name) == expected


def test_name_rules_filter_tag_the_source_and_prefix() -> None:
    rules = NameRules.compile(
        include=[r"^web-", r"^api\."],
        exclude=[r"debug$"],
        source_regex=r"^(web-\d+)\.",
        prefix="prod",
    )
    assert rules.apply("web-7.requests") == ("prod.requests", [("source", "web-7")])
    assert rules.apply("api.hits") == ("prod.api.hits", [])
    assert rules.apply("web-7.debug") is None
    assert rules.apply("other.hits") is None


def test_filtered_lines_are_counted_not_posted() -> None:
    naming = Naming({"host": "h"}, NameRules.compile(exclude=[r"^debug\."]))
    aggregator = Aggregator(naming)
    aggregator.ingest(b"debug.x:1|c\nkept:1|c")
    snapshot = aggregator.swap()
    assert [key[1] for key in snapshot.series] == ["kept"]
    assert snapshot.rejected == {"left out by metric filter": 1}


def test_idle_series_are_sent_as_etsy_does() -> None:
    keeper = IdleKeeper(["counters", "gauges", "sets"])
    counter = Counter()
    counter.add(b"5")
    gauge = Gauge(0.0)
    gauge.add(b"42")
    tags = (("host", "h"),)
    first: dict[SeriesKey, Accumulator] = {
        (Kind.COUNTER, "c", tags): counter,
        (Kind.GAUGE, "g", tags): gauge,
    }
    assert fill(keeper, first) == {}
    idle = fill(keeper, {})
    values = {
        key[1]: m["value"]
        for key, m in zip(idle, Converter().convert(idle.items(), 0, 10), strict=True)
    }
    assert values == {"c": 0.0, "g": 42.0}
    assert fill(IdleKeeper(["gauges"]), first) == {}  # counters are not remembered then


def send(port: int, lines: list[bytes]) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\n".join(lines), ("127.0.0.1", port))


def test_side_by_side_with_the_backends_mapping() -> None:
    """A fixed stream through an etsy configuration: the names and values the backend's
    documented mapping gives, except the global tags, which the backend dropped."""
    lines = [
        b"hits:1|c",
        b"hits:2|c",
        b"web-3.requests:5|c",
        b"debug.noise:1|c",
        b"load:0.5|g",
        b"users:ann|s",
        b"users:bob|s",
        *[b"lat:%d|ms" % v for v in range(1, 11)],
    ]

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            flags = (
                "--statsd-config",
                str(DATA / "side_by_side.js"),
                "--api-url",
                api.url,
                "--token",
                TOKEN,
                "--flush-interval",
                "86400",
                "--host-tag",
                "false",
            )
            async with Proxy(*flags) as proxy:
                send(proxy.port, lines)
                assert await proxy.stop(signal.SIGTERM) == 0, proxy.log
        got = by_name(api.accepted)
        assert set(got) == {
            "legacy.hits",
            "legacy.requests",
            "legacy.load",
            "legacy.users",
            "legacy.lat",
            "legacy.lat.90",
        }
        assert got["legacy.hits"]["value"] == 3
        assert got["legacy.requests"]["tags"] == {"env": "prod", "source": "web-3"}
        assert got["legacy.load"]["value"] == 0.5
        assert got["legacy.users"]["value"] == 2
        lat, p90 = got["legacy.lat"], got["legacy.lat.90"]
        assert (lat["count"], lat["sum"], lat["min"], lat["max"]) == (10, 55, 1, 10)
        assert (p90["count"], p90["sum"], p90["min"], p90["max"]) == (9, 45, 1, 9)
        assert all(m["tags"]["env"] == "prod" for m in api.accepted)
        assert "options not supported" in proxy.log and "graphitePort" in proxy.log

    asyncio.run(scenario())


def logged_port(proxy: Proxy, marker: str) -> int:
    """The port in the start-up line that contains ``marker`` ("... HOST:PORT (...)")."""
    line = next(line for line in proxy.stderr if marker in line)
    found = re.search(r":(\d+)", line.split(marker, 1)[1])
    assert found is not None, line
    return int(found.group(1))


async def admin_command(port: int, line: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(line.encode() + b"\n")
    await writer.drain()
    answer = (
        await reader.readuntil(b"END\n\n") if line != "health down" else await reader.readline()
    )
    writer.close()
    await writer.wait_closed()
    return answer.decode()


def test_management_interface_on_the_running_proxy() -> None:
    async def scenario() -> None:
        flags = ("--flush-interval", "86400", "--admin", "127.0.0.1:0", "--http", "127.0.0.1:0")
        async with Proxy(*flags) as proxy:
            port = logged_port(proxy, "admin tcp")
            http = logged_port(proxy, "http endpoint")
            send(proxy.port, [b"jobs:4|c", b"queue:7|g", b"bad line"])
            async with asyncio.timeout(10):
                while "jobs" not in await admin_command(port, "counters"):
                    await asyncio.sleep(0.05)  # the datagram is read by another process
            assert "queue: 7" in await admin_command(port, "gauges")
            assert "messages.bad_lines_seen: 1" in await admin_command(port, "stats")
            assert "deleted: jobs" in await admin_command(port, "delcounters jobs")
            assert "jobs" not in await admin_command(port, "counters")
            assert "health: down" in await admin_command(port, "health down")
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{http}/ready") as ready,
            ):
                assert ready.status == 503
            assert await proxy.stop() == 0
        assert '"jobs"' not in "".join(line.decode() for line in proxy.stdout)

    asyncio.run(scenario())


def test_idle_series_respect_the_cardinality_budget_and_deletion() -> None:
    """An idle stand-in is posted only while the guard counts its tag set; del* ends it."""

    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    guard = CardinalityGuard(10, None, window=3600, clock=clock)
    aggregator = Aggregator(Naming({"host": "h"}), guard=guard)
    idle = IdleKeeper(["counters"])
    poster = ListSink()
    flusher = Flusher(aggregator, [appoptics(poster)], interval=10, idle=idle)
    aggregator.ingest(b"a:1|c\nb:1|c")
    asyncio.run(flusher.flush(0))
    clock.now = 1800.0
    names = [m["name"] for m in asyncio.run(collect(flusher, poster, 10))]
    assert sorted(names) == ["a", "b"]  # idle: posted as 0
    ProxyAdminState(aggregator, flusher, {"host": "h"}, idle=idle).delete_counters(["a"])
    clock.now = 3700.0  # b's tag set has left the guard's window
    assert [m["name"] for m in asyncio.run(collect(flusher, poster, 20))] == []


async def collect(flusher: Flusher, poster: ListSink, stamp: int) -> list[Measurement]:
    poster.batches.clear()
    await flusher.flush(stamp)
    return [m for batch in poster.batches for m in batch]


def fill(keeper: IdleKeeper, active: dict[SeriesKey, Accumulator]) -> dict[SeriesKey, Accumulator]:
    """What the flusher does with an interval: remember its series, then ask for stand-ins."""
    keeper.remember(active.items())
    return keeper.stand_ins()
