"""StatsD clients from outside Python against the real program and the strict fake API.

Each client in ``tests/clients/`` sends one fixed set of metrics (its script says which);
the numbers that reach AppOptics must be exactly those the README documents.  The Node
clients come from ``tests/clients/package.json`` (``npm ci``, which ``./scripts/test`` runs
where npm is installed), the Perl one from Debian's ``libnet-statsd-perl`` (``.ci/run``
installs it).  On a machine without them these tests are skipped, except under CI
(``CI`` set), where a missing client is a failure.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.fakeapi import AcceptedMeasurement, FakeAppOptics
from tests.proxy import Proxy
from tests.required import require

CLIENTS = Path(__file__).parent / "clients"
TOKEN = "client-token"
HOST = "client-test-host"


def node_client(package: str) -> list[str]:
    require(shutil.which("node") is not None, "node")
    require((CLIENTS / "node_modules" / package).is_dir(), f"npm package {package}")
    return ["node"]


def perl_client() -> list[str]:
    perl = shutil.which("perl")
    probe = [perl or "perl", "-MNet::Statsd", "-e1"]
    found = perl is not None and subprocess.run(probe, check=False).returncode == 0
    require(found, "Perl Net::Statsd (Debian libnet-statsd-perl)")
    return ["perl"]


Series = dict[tuple[str, frozenset[tuple[str, str]]], AcceptedMeasurement]


async def run_client(
    command: list[str], script: str, *args: str, tcp: bool = False
) -> tuple[Series, FakeAppOptics]:
    """Run one client script against a fresh proxy; SIGTERM's flush posts it all."""
    async with FakeAppOptics(token=TOKEN) as api:
        flags = ["--api-url", api.url, "--flush-interval", "86400", "--tag", f"host={HOST}"]
        flags += ["--tcp", "127.0.0.1:0"] if tcp else []
        async with Proxy(*flags, env={"APPOPTICS_TOKEN": TOKEN}) as proxy:
            port = proxy.ports["tcp"] if tcp else proxy.port
            client = await asyncio.create_subprocess_exec(
                *command, str(CLIENTS / script), str(port), *args, cwd=CLIENTS
            )
            assert await asyncio.wait_for(client.wait(), 30) == 0
            await (proxy.wait_tcp_done() if tcp else proxy.wait_taken())
            assert await proxy.stop(signal.SIGTERM) == 0, proxy.log
        assert not api.rejected, api.rejected
        series: Series = {}
        for m in api.accepted:
            key = (m["name"], frozenset(m["tags"].items()))
            assert key not in series, f"{key} posted twice"
            series[key] = m
        return series, api


def one(series: Series, name: str, **tags: str) -> AcceptedMeasurement:
    return series[(name, frozenset({"host": HOST, **tags}.items()))]


def summary(m: AcceptedMeasurement) -> tuple[float, ...]:
    return (m["count"], m["sum"], m["min"], m["max"], m["last"])


TIMERS = ["latency", "size", "dist"]


def names(series: Series) -> set[str]:
    return {name for name, _ in series}


def timers(prefix: str, stems: list[str]) -> set[str]:
    """Each timer, histogram or distribution, and its default 90th percentile."""
    return {f"{prefix}.{stem}{p}" for stem in stems for p in ("", ".p90")}


def test_hot_shots() -> None:
    command = node_client("hot-shots")

    async def scenario() -> None:
        got, api = await run_client(command, "hot_shots.js")
        node = {"app": "node"}
        assert one(got, "hs.requests", route="home", **node)["value"] == 10 * 2 - 3
        assert one(got, "hs.queue", **node)["value"] == 40 + 5 - 12
        latency = one(got, "hs.latency", route="home", **node)
        assert summary(latency) == (4 + 4, 100 + 4 * 100, 10, 100, 100)  # 100 at @0.25
        assert summary(one(got, "hs.size", **node)) == (3, 6, 1, 3, 3)
        assert summary(one(got, "hs.dist", **node)) == (2, 12, 5, 7, 7)
        assert one(got, "hs.users", **node)["value"] == 3
        # The service check: a gauge of its status; its hostname becomes the host tag.
        check = got[("hs.db.up", frozenset({"host": "db1", "env": "test", **node}.items()))]
        assert check["value"] == 1
        assert [(a["title"], a["source"]) for a in api.annotations] == [("deploy", HOST)]
        assert "success" in (api.annotations[0]["description"] or "")

    asyncio.run(scenario())


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_statsd_client(transport: str) -> None:
    command = node_client("statsd-client")

    async def scenario() -> None:
        got, _ = await run_client(command, "statsd_client.js", transport, tcp=transport == "tcp")
        sdc = {"app": "sdc"}
        assert one(got, "sdc.requests", **sdc)["value"] == 1
        assert one(got, "sdc.requests", route="home", **sdc)["value"] == 4 - 2
        assert one(got, "sdc.queue", **sdc)["value"] == 40 + 5 - 12
        assert summary(one(got, "sdc.latency", **sdc)) == (3, 60, 10, 30, 30)
        assert summary(one(got, "sdc.size", **sdc)) == (1, 64, 64, 64, 64)
        assert summary(one(got, "sdc.dist", **sdc)) == (1, 9, 9, 9, 9)
        assert one(got, "sdc.users", **sdc)["value"] == 2
        assert one(got, "sdc.size.p90", **sdc)["value"] == 64  # the default percentile
        assert one(got, "sdc.dist.p90", **sdc)["value"] == 9
        assert names(got) == {"sdc.requests", "sdc.queue", "sdc.users"} | timers("sdc", TIMERS)

    asyncio.run(scenario())


def test_perl_net_statsd() -> None:
    command = perl_client()

    async def scenario() -> None:
        got, _ = await run_client(command, "net_statsd.pl")
        assert one(got, "pl.requests")["value"] == 5 + 10 - 1 + 7  # one at @0.1
        assert one(got, "pl.other")["value"] == 7
        assert one(got, "pl.queue")["value"] == 12
        assert one(got, "pl.free")["value"] == 88
        latency = one(got, "pl.latency")
        assert summary(latency) == (3 + 2, 60 + 2 * 100, 10, 100, 100)  # 100 at @0.5
        assert names(got) == {"pl.requests", "pl.other", "pl.queue", "pl.free"} | timers(
            "pl", ["latency"]
        )

    asyncio.run(scenario())
