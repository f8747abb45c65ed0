"""Hostile and broken input on every intake at once, through the real program.

Random bytes go to the UDP, TCP, Unix datagram, HTTP and management ports (seeded, bounded in
count); then a well-behaved sender's numbers must come out exact and the proxy must still
answer and exit cleanly."""

from __future__ import annotations

import asyncio
import random
import re
import signal
import socket
from pathlib import Path

import aiohttp

from tests.fakeapi import FakeAppOptics, by_name
from tests.proxy import Proxy

TOKEN = "abuse-token"
SEED = 20261205
JUNK_DATAGRAMS = 200  # up to 64 KiB each
JUNK_STREAM_BYTES = 1 << 20
GOOD_LINES = 500


def _port(log: str, pattern: str) -> int:
    match = re.search(pattern, log)
    assert match, log
    return int(match.group(1))


async def _junk_stream(port: int, junk: bytes) -> None:
    """Write ``junk`` on a TCP connection, read whatever comes back, close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(junk)
        await writer.drain()
        writer.write_eof()
        async with asyncio.timeout(10):
            await reader.read()  # an answer or a close: either is fine, a hang is not
    except ConnectionError:
        pass  # a reset is a fair answer to garbage
    finally:
        writer.close()


def _junk_datagrams(rng: random.Random) -> list[bytes]:
    return [rng.randbytes(rng.randrange(1, 65_000)) for _ in range(JUNK_DATAGRAMS)]


def test_random_bytes_on_every_port_leave_other_senders_exact(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    unix_path = str(tmp_path / "statsd.sock")

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            flags = ["--api-url", api.url, "--flush-interval", "86400", "--tcp", "127.0.0.1:0"]
            flags += ["--unix", unix_path, "--http", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
            async with Proxy(*flags, env={"APPOPTICS_TOKEN": TOKEN}) as proxy:
                http = _port(proxy.log, r"http endpoint on [^ ]+:(\d+)")
                admin = _port(proxy.log, r"listening on admin tcp [^ ]+:(\d+)")
                await proxy.send(_junk_datagrams(rng), per_datagram=1)
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unix:
                    for datagram in _junk_datagrams(rng)[:50]:
                        unix.sendto(datagram[:8192], unix_path)
                for port in (proxy.ports["tcp"], http, admin):
                    await _junk_stream(port, rng.randbytes(JUNK_STREAM_BYTES))
                await proxy.send([b"good.hits:1|c|#env:prod"] * GOOD_LINES)
                _, writer = await asyncio.open_connection("127.0.0.1", proxy.ports["tcp"])
                writer.write(b"good.tcp:2|c\ngood.tcp:3|c\n")
                await writer.drain()
                writer.close()
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{http}/health") as response,
                ):
                    assert response.status == 200  # still up and flushing
                assert await proxy.stop(signal.SIGTERM) == 0, proxy.log
            got = by_name(api.accepted)
            assert got["good.hits"]["value"] == GOOD_LINES
            assert got["good.hits"]["tags"]["env"] == "prod"
            assert got["good.tcp"]["value"] == 5.0
            assert "Traceback" not in proxy.log, proxy.log[-3000:]

    asyncio.run(scenario())


SLOW_LINE = b"slow.hits:1|c\n"
BYTE_GAP = 0.05  # seconds between the slow sender's bytes: each gap is shorter than the idle
IDLE_TIMEOUT = 0.3  # timeout, the whole line longer, so only activity keeps it open


async def _trickle(port: int, data: bytes) -> None:
    """Send ``data`` one byte at a time, a gap between bytes (slowness is what is tested)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    for byte in data:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(BYTE_GAP)
    writer.close()
    await writer.wait_closed()


def test_slow_endless_and_idle_tcp_senders_cost_only_their_own_connection() -> None:
    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            flags = ["--api-url", api.url, "--flush-interval", "86400", "--tcp", "127.0.0.1:0"]
            flags += ["--tcp-idle-timeout", str(IDLE_TIMEOUT), "--tcp-max-line", "20"]
            flags += ["--self-metrics", "on"]
            async with Proxy(*flags, env={"APPOPTICS_TOKEN": TOKEN}) as proxy:
                port = proxy.ports["tcp"]
                idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
                slow = asyncio.create_task(_trickle(port, SLOW_LINE))
                endless = asyncio.create_task(_trickle(port, b"e" * 30 + b"\nafter:1|c\n"))
                for _ in range(GOOD_LINES):  # a good sender, connecting anew each time
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(b"good.tcp:1|c\n")
                    writer.close()
                    await writer.wait_closed()
                assert await idle_reader.read() == b""  # the idle one was closed
                idle_writer.close()
                await asyncio.gather(slow, endless)
                await proxy.wait_tcp_done()
                assert await proxy.stop(signal.SIGTERM) == 0, proxy.log
            got = by_name(m for m in api.accepted if not m["tags"].get("reason"))
            assert got["good.tcp"]["value"] == GOOD_LINES
            assert got["slow.hits"]["value"] == 1  # survived: every byte is activity
            assert got["after"]["value"] == 1  # the endless line was dropped, not the rest
            assert got["statsd_ao.tcp.lines_too_long"]["value"] == 1
            assert got["statsd_ao.tcp.idle_closed"]["value"] == 1

    asyncio.run(scenario())
