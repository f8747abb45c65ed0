"""UDP intake: a non-blocking socket drained by a reader callback until it would block.

One readiness callback reads many datagrams (per-datagram protocol callbacks cost ~2x as
much, see ARCHITECTURE.md), hands each to ``ingest`` synchronously and never awaits or
creates a task.  A callback reads at most `DRAIN_LIMIT` datagrams, so the flush timer and
the HTTP sink still get their turn under a flood; the loop calls it again while the socket
stays readable.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from statsd_ao.config import Address

log = logging.getLogger(__name__)

# Datagrams per readiness callback: ~25k lines, about 25 ms of work at 1 M lines/s.
DRAIN_LIMIT = 1000
# The largest UDP payload, so no datagram is ever truncated.
MAX_DATAGRAM = 65535


class UdpListener:
    """Reads StatsD datagrams from one UDP address into ``ingest``."""

    def __init__(self, address: Address, ingest: Callable[[bytes], None], rcvbuf: int) -> None:
        self._address = address
        self._ingest = ingest
        self._rcvbuf = rcvbuf
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.datagrams = 0
        self.bytes = 0

    @property
    def bound(self) -> Address:
        """The address actually bound (the real port when 0 was asked for)."""
        if self._sock is None:
            raise RuntimeError("listener is not open")
        host, port = self._sock.getsockname()[:2]
        return Address(host, port)

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind and start reading.  Raises OSError (e.g. address in use) to the caller."""
        family = socket.AF_INET6 if ":" in self._address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
            sock.bind((self._address.host, self._address.port))
        except OSError:
            sock.close()
            raise
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self._sock, self._loop = sock, loop
        loop.add_reader(sock.fileno(), self._on_readable)
        log.info(
            "listening on udp %s (receive buffer %d bytes granted, %d asked for)",
            self.bound,
            granted,
            self._rcvbuf,
        )

    def close(self) -> None:
        """Stop reading, after taking in what the kernel already queued for us."""
        if self._sock is None or self._loop is None:
            return
        self._loop.remove_reader(self._sock.fileno())
        while self._drain():
            pass
        self._sock.close()
        self._sock = None

    def _on_readable(self) -> None:
        self._drain()

    def _drain(self) -> bool:
        """Read up to DRAIN_LIMIT datagrams; True when the limit was hit (more may wait)."""
        assert self._sock is not None
        recv, ingest = self._sock.recv, self._ingest
        count = size = 0
        try:
            while count < DRAIN_LIMIT:
                data = recv(MAX_DATAGRAM)
                count += 1
                size += len(data)
                ingest(data)
        except BlockingIOError:
            pass
        except OSError as error:  # e.g. ECONNREFUSED echoes on some kernels: never fatal
            log.warning("udp receive error: %s", error)
        self.datagrams += count
        self.bytes += size
        return count >= DRAIN_LIMIT
