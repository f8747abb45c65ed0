"""TCP intake: newline-framed StatsD lines from many concurrent connections.

Each connection hands complete lines to ``ingest`` as one chunk per read (the aggregator
splits them as it splits a datagram), keeps a partial last line for the next read, and
takes a final line without a newline at EOF.  A line longer than ``max_line`` is dropped
and counted; the connection survives.  A connection idle for ``idle_timeout`` is closed.
Callbacks run on the loop thread and never await.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from statsd_ao.listeners import ingest_failed
from statsd_ao.settings import Address

log = logging.getLogger(__name__)

# Open connections at most: each may hold up to --tcp-max-line bytes of a partial line.
MAX_CONNECTIONS = 1024
# Loop passes allowed at shutdown for connections to deliver what the kernel already holds.
CLOSE_READ_PASSES = 100


class TcpStats:
    """Counters shared by every connection of one listener."""

    def __init__(self) -> None:
        self.connections = 0
        self.open = 0
        self.bytes = 0
        self.long_lines = 0
        self.idle_closed = 0
        self.refused = 0  # connections closed at once: MAX_CONNECTIONS were open


class TcpConnection(asyncio.Protocol):
    def __init__(
        self,
        ingest: Callable[[bytes], None],
        stats: TcpStats,
        max_line: int,
        idle_timeout: float,
        live: set[TcpConnection],
    ) -> None:
        self._ingest = ingest
        self._stats = stats
        self._max_line = max_line
        self._idle_timeout = idle_timeout
        self._live = live
        self._pending = bytearray()
        self._discarding = False  # inside a too-long line: drop until its newline
        self._last = 0.0
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # uvloop's transports do not subclass asyncio.Transport
        if len(self._live) >= MAX_CONNECTIONS:  # each may hold a partial line in memory
            self._stats.refused += 1
            transport.close()
            return
        self._live.add(self)
        self._stats.connections += 1
        self._stats.open += 1
        self._touch_and_arm()

    def data_received(self, data: bytes) -> None:
        self._stats.bytes += len(data)
        self._last = asyncio.get_running_loop().time()  # read by the idle check
        cut = data.rfind(b"\n")
        if cut < 0:
            self._keep(data)
            return
        complete = bytes(self._pending) + data[:cut] if self._pending else data[:cut]
        if self._discarding:  # the first line is the tail of a dropped long line
            complete = complete.partition(b"\n")[2]
            self._discarding = False
        self._pending = bytearray()
        self._keep(data[cut + 1 :])
        if complete:
            self._safe_ingest(self._without_long_lines(complete))

    def eof_received(self) -> bool | None:
        self.flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self not in self._live:
            return  # refused at connection_made: never counted as open
        self._live.discard(self)
        self._stats.open -= 1
        if self._timer is not None:
            self._timer.cancel()

    def flush(self) -> None:
        """Take in a final line that had no newline."""
        if self._pending and not self._discarding:
            self._safe_ingest(bytes(self._pending))
        self._pending = bytearray()

    def _safe_ingest(self, chunk: bytes) -> None:
        try:
            self._ingest(chunk)
        except Exception:  # a bug in ingest: lose that chunk, keep the connection
            ingest_failed(chunk)

    def close(self) -> None:
        self.flush()
        if self._transport is not None:
            self._transport.close()

    def _keep(self, partial: bytes) -> None:
        """Append to the partial last line (a bytearray: no quadratic copying when a long
        line arrives in small pieces); past ``max_line`` it is dropped and counted."""
        if self._discarding or not partial:
            return  # still inside a dropped line
        self._pending += partial
        if len(self._pending) > self._max_line:
            self._stats.long_lines += 1
            self._discarding, self._pending = True, bytearray()

    def _without_long_lines(self, complete: bytes) -> bytes:
        if len(complete) <= self._max_line:
            return complete
        lines = complete.split(b"\n")
        if max(map(len, lines)) <= self._max_line:
            return complete
        kept = [line for line in lines if len(line) <= self._max_line]
        self._stats.long_lines += len(lines) - len(kept)
        return b"\n".join(kept)

    def _touch_and_arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._timer = loop.call_later(self._idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._last
        if idle >= self._idle_timeout:
            self._stats.idle_closed += 1
            self.close()
            return
        self._timer = loop.call_later(self._idle_timeout - idle, self._check_idle)


class TcpListener:
    """A TCP server feeding ``ingest``."""

    def __init__(
        self,
        address: Address,
        ingest: Callable[[bytes], None],
        *,
        max_line: int,
        idle_timeout: float,
    ) -> None:
        self._address = address
        self._ingest = ingest
        self._max_line = max_line
        self._idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._live: set[TcpConnection] = set()
        self.stats = TcpStats()

    def describe(self) -> str:
        return f"tcp {self._address}"

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._connection, self._address.host, self._address.port
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        self.bound = Address(host, port)
        log.info("listening on tcp %s", self.bound)

    def _connection(self) -> TcpConnection:
        return TcpConnection(
            self._ingest, self.stats, self._max_line, self._idle_timeout, self._live
        )

    async def close(self) -> None:
        """Stop accepting; take in every connection's last partial line; close them."""
        if self._server is None:
            return
        self._server.close()
        for _ in range(CLOSE_READ_PASSES):  # each pass lets readable connections be read
            before = self.stats.bytes
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            if self.stats.bytes == before:
                break
        for connection in list(self._live):
            connection.close()
        await self._server.wait_closed()
        self._server = None
