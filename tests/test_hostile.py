"""Hostile senders against the real program: the proxy keeps its own time and descriptors.

A flood of costly datagrams must not starve the flush timer or the HTTP endpoint (the work
per loop turn is bounded), and slow HTTP clients must not take the descriptors the intake
needs (the endpoint's connections are capped and header reads time out).
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time

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
