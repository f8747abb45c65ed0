"""The HTTP endpoint's connections: a cap, and a deadline for each request to arrive.

aiohttp serves a connection for as long as its client keeps it open and trickles bytes, and
accepts as many as the process has descriptors: 2,100 clients sending a request line a byte
every 2 s took every descriptor of a proxy under ``ulimit -n 2048``, and then TCP senders
could not connect and ``/health`` went unanswered.  So every connection of the endpoint
goes through a `ConnectionGate`:

- at most `MAX_CONNECTIONS` are open.  A new one past that makes room: the connection that
  has waited longest for its request is closed (one in a handler is never closed; every
  route answers in microseconds).  A probe or a scraper thus always gets in, and the
  endpoint never holds more than its share of the descriptors, so the intake keeps its own
  (see `statsd_ao.io.descriptors`);
- a connection must deliver a whole request head within `REQUEST_TIMEOUT` of opening, and
  of each answer after that (keep-alive), or it is closed.  Probes and scrapers send theirs
  in milliseconds.

Both are counted and logged at most once a minute.  Callbacks run on the loop thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import web

from statsd_ao.core.logs import RateLimitedLog

log = logging.getLogger(__name__)

# Open connections at most: far more than probes and scrapers use at once, and few enough
# that the TCP intake's 1,024 connections and this fit under a limit of 2,048 descriptors.
MAX_CONNECTIONS = 64
# Seconds a connection has to send a complete request head, from its opening or from the
# previous answer: a kubelet probe times out after 1-2 s, and a slow client is a hostile one.
REQUEST_TIMEOUT = 5.0
LOG_INTERVAL = 60.0

_log = RateLimitedLog(log, LOG_INTERVAL)


class ConnectionGate:
    """Caps and times the endpoint's connections; counts what it closed."""

    def __init__(
        self, max_connections: int = MAX_CONNECTIONS, request_timeout: float = REQUEST_TIMEOUT
    ) -> None:
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        # Open connections waiting for a request, longest first; those in a handler are
        # in `_busy` instead.
        self._waiting: OrderedDict[GuardedConnection, None] = OrderedDict()
        self._busy: set[GuardedConnection] = set()
        self._by_handler: dict[asyncio.Protocol, GuardedConnection] = {}
        self.evicted = 0  # closed to make room
        self.timed_out = 0  # closed: no whole request in time
        self.refused = 0  # closed at once: every open connection was in a handler

    @property
    def open(self) -> int:
        return len(self._waiting) + len(self._busy)

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` around aiohttp's."""
        return lambda: GuardedConnection(self, factory())

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Marks the request's connection busy while its handler runs."""
        connection = self._by_handler.get(request.protocol)
        if connection is not None:
            self._begin(connection)
        try:
            return await handler(request)
        finally:
            if connection is not None:
                self._end(connection)

    def opened(self, connection: GuardedConnection) -> bool:
        """A new connection; False when it must be closed at once."""
        if self.open >= self.max_connections:
            if not self._waiting:
                self.refused += 1
                self._report("refused a connection")
                return False
            oldest = next(iter(self._waiting))
            self.evicted += 1
            self._report("closed the connection that had waited longest for its request")
            oldest.close()
            self.closed(oldest)
        self._by_handler[connection.inner] = connection
        self._waiting[connection] = None
        connection.start_timer(self.request_timeout)
        return True

    def closed(self, connection: GuardedConnection) -> None:
        self._waiting.pop(connection, None)
        self._busy.discard(connection)
        self._by_handler.pop(connection.inner, None)

    def expired(self, connection: GuardedConnection) -> None:
        self.timed_out += 1
        _log.warning(
            "timeout",
            "http: closed a connection that sent no whole request in %g s (%d so far)",
            self.request_timeout,
            self.timed_out,
        )
        connection.close()
        self.closed(connection)

    def _begin(self, connection: GuardedConnection) -> None:
        if connection in self._waiting:  # (not if it was closed meanwhile)
            del self._waiting[connection]
            self._busy.add(connection)
        connection.stop_timer()

    def _end(self, connection: GuardedConnection) -> None:
        if connection in self._busy:
            self._busy.discard(connection)
            self._waiting[connection] = None  # (at the end: it waits the shortest)
            connection.start_timer(self.request_timeout)

    def _report(self, what: str) -> None:
        _log.warning(
            "cap",
            "http: %d connections open, the most allowed: %s (%d evicted, %d refused so far)",
            self.max_connections,
            what,
            self.evicted,
            self.refused,
        )


class GuardedConnection(asyncio.Protocol):
    """aiohttp's protocol for one connection, watched by the gate."""

    def __init__(self, gate: ConnectionGate, inner: asyncio.Protocol) -> None:
        self._gate = gate
        self.inner = inner
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._started = False  # aiohttp's protocol was handed the connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        if not self._gate.opened(self):
            self._transport.abort()
            return
        self._started = True
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_timer()
        self._gate.closed(self)
        if self._started:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def start_timer(self, seconds: float) -> None:
        self.stop_timer()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(seconds, self._gate.expired, self)

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Close now (nothing is owed: the connection waits for a request)."""
        self.stop_timer()
        if self._transport is not None:
            self._transport.abort()
