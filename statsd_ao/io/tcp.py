"""TCP intake: newline-framed StatsD lines from many concurrent connections.

Each connection hands complete lines to ``ingest`` as one chunk per read (the aggregator
splits them as it splits a datagram), keeps a partial last line for the next read, and
takes a final line without a newline at EOF.  A line longer than ``max_line`` is dropped
and counted; the connection survives.  A connection idle for ``idle_timeout`` is closed.

At ``MAX_CONNECTIONS`` open connections a new one makes room instead of being refused: the
connection idle the longest is closed (its complete lines were already taken in; its partial
line is taken in as at shutdown).  A client that leaks connections then only recycles its own
idle ones, and every other sender keeps connecting.  The open connections are kept in
activity order (an OrderedDict moved to the end on each read, O(1)), so the victim is the
first one.  Callbacks run on the loop thread and never await.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable

from statsd_ao.core.logs import RateLimitedLog
from statsd_ao.io.address import Address
from statsd_ao.io.listeners import ingest_failed

log = logging.getLogger(__name__)

# Open connections at most: each may hold up to --tcp-max-line bytes of a partial line, so
# this bounds that memory (64 MiB at the default line limit) and the process's descriptors.
MAX_CONNECTIONS = 1024
# Evictions are logged at most this often (they are also counted in self-metrics).
EVICTION_LOG_INTERVAL = 60.0
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
        self.evicted = 0  # closed to make room: MAX_CONNECTIONS were open


class Connections:
    """The open connections of one listener, idle longest first, and how many per peer."""

    def __init__(self) -> None:
        self.order: OrderedDict[TcpConnection, None] = OrderedDict()
        self.per_peer: dict[str, int] = {}

    def add(self, connection: TcpConnection) -> None:
        self.order[connection] = None
        self.per_peer[connection.peer] = self.per_peer.get(connection.peer, 0) + 1

    def remove(self, connection: TcpConnection) -> bool:
        """Forget ``connection``; False if it was not open."""
        if connection not in self.order:
            return False
        del self.order[connection]
        left = self.per_peer.pop(connection.peer) - 1
        if left:
            self.per_peer[connection.peer] = left
        return True

    def busiest_peer(self) -> tuple[str, int]:
        return max(self.per_peer.items(), key=lambda item: item[1])


_eviction_log = RateLimitedLog(log, EVICTION_LOG_INTERVAL)


class TcpConnection(asyncio.Protocol):
    def __init__(
        self,
        ingest: Callable[[bytes], None],
        stats: TcpStats,
        max_line: int,
        idle_timeout: float,
        live: Connections,
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
        self.peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # uvloop's transports do not subclass asyncio.Transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if len(self._live.order) >= MAX_CONNECTIONS:  # each may hold a partial line in memory
            self._evict_one()
        self._live.add(self)
        self._stats.connections += 1
        self._stats.open += 1
        self._touch_and_arm()

    def data_received(self, data: bytes) -> None:
        self._stats.bytes += len(data)
        self._last = asyncio.get_running_loop().time()  # read by the idle check
        self._live.order.move_to_end(self)
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
        self._leave()

    def _leave(self) -> None:
        """No longer open (closed by either side, or evicted); safe to call twice."""
        if not self._live.remove(self):
            return
        self._stats.open -= 1
        if self._timer is not None:
            self._timer.cancel()

    def _evict_one(self) -> None:
        victim = next(iter(self._live.order))
        peer, count = self._live.busiest_peer()
        victim._leave()
        victim.close()
        self._stats.evicted += 1
        _eviction_log.warning(
            "tcp",
            "tcp: %d connections open, the limit: closed the one idle longest (from %s) to "
            "accept one from %s; the peer with the most connections is %s with %d "
            "(a client leaking connections?)",
            MAX_CONNECTIONS,
            victim.peer,
            self.peer,
            peer,
            count,
        )

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
        self._live = Connections()
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
        for connection in list(self._live.order):
            connection.close()
        await self._server.wait_closed()
        self._server = None
