"""Hostile senders against the real program: the proxy keeps its own time and descriptors.

A flood of costly datagrams must not starve the flush timer or the HTTP endpoint (the work
per loop turn is bounded), and slow HTTP clients must not take the descriptors the intake
needs (the endpoint's connections are capped and header reads time out).
"""

from __future__ import annotations

import asyncio
import re
import resource
import socket
import threading
import time
from collections.abc import Callable

import orjson

from statsd_ao.io.httpconns import REQUEST_TIMEOUT
from tests.proxy import Proxy

FLOOD = b"a\n" * 32_500  # 65,000 bytes: 32,500 bad lines, ~35-45 ms of work a datagram
# Datagrams a second: twice what the proxy gets through (~1 M bad lines a second on the
# development VM), so its socket stays full and every read finds more waiting.
FLOOD_RATE = 60
# The shipped liveness probe allows 2 s; under the flood below /health answered in
# 0.27-0.51 s on the development VM (over 2 s, and time-outs, before the turn was bounded).
HEALTH_TIMEOUT = 1.5


def http_port(proxy: Proxy) -> int:
    line = next(line for line in proxy.stderr if "http endpoint on" in line)
    match = re.search(r":(\d+) \(", line)
    assert match is not None, line
    return int(match.group(1))


async def get_health(port: int) -> float:
    """Seconds /health took to answer 200 (TimeoutError past HEALTH_TIMEOUT)."""
    began = time.monotonic()
    async with asyncio.timeout(HEALTH_TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
            answer = await reader.read()
        finally:
            writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    return time.monotonic() - began


def flushes(proxy: Proxy) -> int:
    return sum(1 for line in proxy.stderr if "flush at " in line)


def flood(port: int, seconds: float, stop: threading.Event) -> int:
    """FLOOD_RATE datagrams a second for ``seconds`` (a thread: the test's loop may be slow);
    how many were sent."""
    sent = 0
    began = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flooder:
        while sent < seconds * FLOOD_RATE and not stop.is_set():
            flooder.sendto(FLOOD, ("127.0.0.1", port))
            sent += 1
            stop.wait(max(0.0, began + sent / FLOOD_RATE - time.monotonic()))
    return sent


def test_a_flood_of_costly_datagrams_leaves_flushes_and_health_their_time() -> None:
    seconds = 6

    async def scenario() -> None:
        flags = ("--flush-interval", "1", "--http", "127.0.0.1:0")
        async with Proxy(*flags) as proxy:
            port = http_port(proxy)
            loop = asyncio.get_running_loop()
            before = flushes(proxy)
            latencies: list[float] = []
            stop = threading.Event()
            flooding = loop.run_in_executor(None, flood, proxy.port, seconds, stop)
            try:
                while not flooding.done():
                    latencies.append(await get_health(port))
                    await asyncio.sleep(0.2)  # five probes a second, as a kubelet might
            finally:
                stop.set()
                sent = await flooding
            during = flushes(proxy) - before
            assert sent == seconds * FLOOD_RATE
            assert during >= seconds - 1, f"{during} flushes in {seconds} s of flood"
            assert max(latencies) < HEALTH_TIMEOUT
            assert await proxy.stop() == 0

    asyncio.run(asyncio.wait_for(scenario(), 60))


def nofile(limit: int) -> Callable[[], None]:
    def lower() -> None:  # in the child, before the program
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return lower


def posted_value(proxy: Proxy, name: str) -> float:
    found = [
        m["value"]
        for line in proxy.stdout
        for m in orjson.loads(line)["measurements"]
        if m["name"] == name
    ]
    assert len(found) == 1, found
    return float(found[0])


async def open_slowly(port: int) -> asyncio.StreamWriter | None:
    """A connection that sends the first byte of a request line and nothing more."""
    try:
        async with asyncio.timeout(5):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
    except (TimeoutError, OSError):
        return None
    writer.write(b"G")
    return writer


def test_slow_http_clients_leave_descriptors_to_the_intake_and_to_health() -> None:
    """Under the documented minimum of 2,048 descriptors, 2,100 HTTP connections that never
    finish their request: TCP senders still connect and count, /health still answers, the
    cap is logged, and a client trickling a byte at a time is closed at the deadline."""
    limit, slow = 2048, 2100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = slow + 512  # this process holds the client ends
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # fails loudly if it cannot

    async def scenario() -> None:
        flags = ("--flush-interval", "86400", "--tcp", "127.0.0.1:0", "--http", "127.0.0.1:0")
        async with Proxy(*flags, preexec=nofile(limit)) as proxy:
            port = http_port(proxy)
            held: list[asyncio.StreamWriter | None] = []
            for start in range(0, slow, 100):
                batch = min(100, slow - start)
                held += await asyncio.gather(*(open_slowly(port) for _ in range(batch)))
            assert None not in held, f"{held.count(None)} HTTP connections never connected"
            async with asyncio.timeout(5):
                _, sender = await asyncio.open_connection("127.0.0.1", proxy.ports["tcp"])
            sender.write(b"tcp.ok:1|c\n")
            await sender.drain()
            sender.close()
            await get_health(port)
            await proxy.wait_for_log("http: 64 connections open, the most allowed")
            reader, trickler = await asyncio.open_connection("127.0.0.1", port)
            began = time.monotonic()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT + 3):
                    for byte in b"GET /health HTTP/1.1\r\n":
                        trickler.write(bytes([byte]))
                        if await _closed_within(reader, 0.5):
                            break
            finally:
                trickler.close()
            assert REQUEST_TIMEOUT - 0.5 <= time.monotonic() - began <= REQUEST_TIMEOUT + 3
            await proxy.wait_for_log("http: closed a connection that sent no whole request")
            await proxy.wait_tcp_done()
            assert await proxy.stop() == 0, proxy.log
            for writer in held:
                if writer is not None:
                    writer.close()
        assert posted_value(proxy, "tcp.ok") == 1

    asyncio.run(asyncio.wait_for(scenario(), 90))


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True when the peer closed (EOF or reset) within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            return await reader.read(100) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True
