"""TCP and Unix-socket intake on real sockets, and real DogStatsD clients end to end."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import stat
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from datadog.dogstatsd.base import DogStatsd

from statsd_ao.io import tcp
from statsd_ao.io.address import Address
from statsd_ao.io.listeners import DatagramListener
from statsd_ao.io.tcp import TcpListener
from tests.bounded import run_bounded
from tests.fakeapi import AcceptedMeasurement, FakeAppOptics, by_name
from tests.proxy import Proxy

TOKEN = "transport-token"


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    run_bounded(scenario())


class Collector:
    """An ingest function that records chunks and wakes waiters on every call."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.changed = asyncio.Event()

    def __call__(self, chunk: bytes) -> None:
        self.lines.extend(line for line in chunk.split(b"\n") if line)
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.lines) < count:
                self.changed.clear()
                await self.changed.wait()


async def tcp_listener(
    collector: Collector, *, max_line: int = 100, idle: float = 30.0
) -> TcpListener:
    listener = TcpListener(Address("127.0.0.1", 0), collector, max_line=max_line, idle_timeout=idle)
    await listener.open()
    return listener


def test_tcp_lines_split_across_reads_and_many_connections() -> None:
    async def scenario() -> None:
        collector = Collector()
        listener = await tcp_listener(collector)
        streams = [
            await asyncio.open_connection("127.0.0.1", listener.bound.port) for _ in range(20)
        ]
        for index, (_, writer) in enumerate(streams):
            writer.write(b"a%d:1|" % index)
            await writer.drain()
        for index, (_, writer) in enumerate(streams):
            writer.write(b"c\nb%d:2|c\n" % index)
            await writer.drain()
        await collector.wait_for(40)
        assert sorted(collector.lines) == sorted(
            [b"a%d:1|c" % i for i in range(20)] + [b"b%d:2|c" % i for i in range(20)]
        )
        assert listener.stats.connections == 20
        for _, writer in streams:
            writer.close()
        await listener.close()

    run(scenario)


def test_tcp_long_line_is_dropped_and_the_connection_survives() -> None:
    async def scenario() -> None:
        collector = Collector()
        listener = await tcp_listener(collector, max_line=50)
        _, writer = await asyncio.open_connection("127.0.0.1", listener.bound.port)
        writer.write(b"ok1:1|c\n" + b"x" * 120)  # a long line arriving in pieces
        await writer.drain()
        writer.write(b"y" * 120 + b"\nok2:1|c\n" + b"z" * 60 + b"\nok3:1|c\n")
        await writer.drain()
        await collector.wait_for(3)
        assert collector.lines == [b"ok1:1|c", b"ok2:1|c", b"ok3:1|c"]
        assert listener.stats.long_lines == 2
        writer.close()
        await listener.close()

    run(scenario)


def test_tcp_final_line_without_newline_is_taken_at_eof_and_at_close() -> None:
    async def scenario() -> None:
        collector = Collector()
        listener = await tcp_listener(collector)
        _, first = await asyncio.open_connection("127.0.0.1", listener.bound.port)
        first.write(b"a:1|c\nlast:1|c")
        first.write_eof()
        await collector.wait_for(2)
        _, second = await asyncio.open_connection("127.0.0.1", listener.bound.port)
        second.write(b"pending:1|c")
        await second.drain()
        async with asyncio.timeout(10):  # (the listener signals nothing: yield until read)
            while listener.stats.bytes < len(b"a:1|c\nlast:1|c") + len(b"pending:1|c"):
                await asyncio.sleep(0)
        await listener.close()
        assert collector.lines == [b"a:1|c", b"last:1|c", b"pending:1|c"]
        first.close()
        second.close()

    run(scenario)


def test_tcp_idle_connection_is_closed() -> None:
    async def scenario() -> None:
        collector = Collector()
        listener = await tcp_listener(collector, idle=0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.bound.port)
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # the server closed it
        assert listener.stats.idle_closed == 1
        writer.close()
        await listener.close()

    run(scenario)


def test_unix_socket_permissions_stale_file_and_removal(tmp_path: Path) -> None:
    path = str(tmp_path / "statsd.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(path)  # as left behind by a crashed run
    stale.close()

    async def scenario() -> None:
        collector = Collector()
        listener = DatagramListener(path, collector, 1 << 20)
        listener.start_reading(asyncio.get_running_loop())
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        client.sendto(b"u:1|c\nv:2|c", path)
        client.close()
        await collector.wait_for(2)
        listener.stop_reading()
        assert not os.path.exists(path)
        assert collector.lines == [b"u:1|c", b"v:2|c"]

    run(scenario)


def test_unix_socket_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "not-a-socket"
    path.write_text("precious")
    listener = DatagramListener(str(path), lambda chunk: None, 1 << 20)
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(FileExistsError):
            listener.start_reading(loop)
    finally:
        loop.close()
    assert path.read_text() == "precious"


def test_unix_socket_refuses_to_take_over_a_live_socket(tmp_path: Path) -> None:
    """Another process's socket, bound and open, is left alone: it keeps receiving."""
    path = str(tmp_path / "statsd.sock")
    owner = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    owner.bind(path)
    listener = DatagramListener(path, lambda chunk: None, 1 << 20)
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(FileExistsError, match="another process is listening on"):
            listener.start_reading(loop)
    finally:
        loop.close()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.sendto(b"still:1|c", path)
    assert owner.recv(100) == b"still:1|c"
    owner.close()


def send_with_client(client: DogStatsd) -> None:
    client.increment("page.views", tags=["env:prod"])
    client.increment("page.views", 2, tags=["env:prod"])
    client.gauge("queue.depth", 7)
    client.histogram("payload.bytes", 100)
    client.distribution("payload.bytes.dist", 5)
    client.timing("db.query", 12)
    client.set("users", "alice")
    client.service_check("db.up", 2, tags=["env:prod"])
    client.event("deploy", "v42 shipped", alert_type="success", tags=["env:prod"])
    client.close_socket()


def check_client_measurements(accepted: list[AcceptedMeasurement]) -> None:
    got = by_name(accepted)
    assert got["page.views"]["value"] == 3.0
    assert got["page.views"]["tags"]["env"] == "prod"
    assert got["queue.depth"]["value"] == 7.0
    assert got["payload.bytes"]["sum"] == 100
    assert got["payload.bytes.dist"]["sum"] == 5
    assert got["db.query"]["count"] == 1
    assert got["users"]["value"] == 1.0
    assert got["db.up"]["value"] == 2.0


@pytest.mark.parametrize("transport", ["udp", "unix"])
def test_datadog_client_end_to_end(transport: str, tmp_path: Path) -> None:
    path = str(tmp_path / "dsd.sock")

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            flags = ["--api-url", api.url, "--flush-interval", "86400", "--unix", path]
            async with Proxy(*flags, env={"APPOPTICS_TOKEN": TOKEN}) as proxy:
                if transport == "udp":
                    client = DogStatsd("127.0.0.1", proxy.port, disable_telemetry=True)
                else:
                    client = DogStatsd(socket_path=path, disable_telemetry=True)
                send_with_client(client)
                assert await proxy.stop(signal.SIGTERM) == 0, proxy.log
            assert not os.path.exists(path)
            assert "rejected" not in proxy.log, proxy.log
            check_client_measurements(api.accepted)
            [annotation] = api.annotations
            assert (annotation["stream"], annotation["title"]) == ("statsd", "deploy")
            assert annotation["description"] == "v42 shipped [alert: success; tags: env:prod]"

    run(scenario)


def test_tcp_end_to_end() -> None:
    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            flags = ["--api-url", api.url, "--flush-interval", "86400", "--tcp", "127.0.0.1:0"]
            async with Proxy(*flags, env={"APPOPTICS_TOKEN": TOKEN}) as proxy:
                _, writer = await asyncio.open_connection("127.0.0.1", proxy.ports["tcp"])
                writer.write(b"tcp.hits:1|c|#env:prod\ntcp.hits:4|c|#env:prod\ntcp.last:9|g")
                await writer.drain()
                writer.close()
                await writer.wait_closed()
                await proxy.wait_tcp_done()
                assert await proxy.stop(signal.SIGTERM) == 0, proxy.log
            got = by_name(api.accepted)
            assert got["tcp.hits"]["value"] == 5.0
            assert got["tcp.last"]["value"] == 9.0

    run(scenario)


def test_tcp_at_the_cap_the_connection_idle_longest_makes_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tcp, "MAX_CONNECTIONS", 2)

    async def scenario() -> None:
        collector = Collector()
        listener = await tcp_listener(collector)
        port = listener.bound.port
        first_reader, first = await asyncio.open_connection("127.0.0.1", port)
        _, second = await asyncio.open_connection("127.0.0.1", port)
        first.write(b"first:1|c\nfirst.partial:2|c")
        await first.drain()
        await collector.wait_for(1)
        second.write(b"second:1|c\n")  # now the first is the one idle longest
        await second.drain()
        await collector.wait_for(2)
        _, third = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(5):
            assert await first_reader.read() == b""  # evicted to make room
        third.write(b"third:1|c\n")
        second.write(b"second.again:1|c\n")  # the others go on
        await third.drain()
        await second.drain()
        await collector.wait_for(5)
        assert sorted(collector.lines) == sorted(
            [b"first:1|c", b"first.partial:2|c", b"second:1|c", b"third:1|c", b"second.again:1|c"]
        )  # the evicted one's partial line was taken in, as at shutdown
        assert (listener.stats.open, listener.stats.evicted) == (2, 1)
        for writer in (first, second, third):
            writer.close()
        await listener.close()

    run(scenario)


def _enough_descriptors(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))  # the proxy inherits it


def test_a_client_leaking_connections_does_not_lock_out_other_senders() -> None:
    leaked = tcp.MAX_CONNECTIONS + 76
    _enough_descriptors(2 * leaked + 512)

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            flags = ["--api-url", api.url, "--flush-interval", "86400", "--tcp", "127.0.0.1:0"]
            flags += ["--self-metrics", "on"]
            async with Proxy(*flags, env={"APPOPTICS_TOKEN": TOKEN}) as proxy:
                port = proxy.ports["tcp"]
                leak = [await asyncio.open_connection("127.0.0.1", port) for _ in range(leaked)]
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"fresh.hits:2|c|#env:prod\nfresh.hits:3|c|#env:prod\n")
                await writer.drain()
                writer.close()
                await writer.wait_closed()
                async with asyncio.timeout(10):  # the fresh one evicted the 77th leaked one
                    assert await leak[leaked - tcp.MAX_CONNECTIONS][0].read() == b""
                await proxy.wait_for_log("closed the one idle longest")
                assert await proxy.stop(signal.SIGTERM) == 0, proxy.log
                for _, leaking in leak:
                    leaking.close()
            got = by_name(api.accepted)
            assert got["fresh.hits"]["value"] == 5.0  # the fresh sender was accepted, exactly
            evicted = got["statsd_ao.tcp.connections_evicted"]["value"]
            assert evicted == leaked + 1 - tcp.MAX_CONNECTIONS

    run(scenario)


def test_tcp_long_line_in_many_small_pieces() -> None:
    async def scenario() -> None:
        collector = Collector()
        listener = await tcp_listener(collector, max_line=1000)
        _, writer = await asyncio.open_connection("127.0.0.1", listener.bound.port)
        for _ in range(300):
            writer.write(b"x" * 10)  # 3,000 bytes without a newline
            await writer.drain()
        writer.write(b"\nok:1|c\n")
        await writer.drain()
        await collector.wait_for(1)
        assert collector.lines == [b"ok:1|c"]
        assert listener.stats.long_lines == 1
        writer.close()
        await listener.close()

    run(scenario)
