"""Datagram intake (UDP, Unix datagram sockets): drained by a reader callback until EAGAIN.

One readiness callback reads many datagrams (per-datagram protocol callbacks cost ~2x as
much), hands each to ``ingest`` synchronously and never awaits or
creates a task.  A callback reads at most `DRAIN_LIMIT` datagrams and stops once it has
worked `TURN_BUDGET` seconds, so the flush timer, the HTTP endpoint and the sink still get
their turn under a flood; the loop calls it again while the socket stays readable.  The
budget is checked between reads of about `CHUNK_BYTES` each (one datagram when they are
large), so a turn lasts at most the budget plus one such read: a datagram of 32,500 bad
lines costs ~45 ms, and 100 of them queued no longer hold the loop for 4.5 s.

A UDP listener whose read found the socket nearly empty stops watching it for a moment
(statsd_ao/io/pacing.py), so that the next read takes a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import time
from collections.abc import Callable

from statsd_ao.core.hotpath import Errored
from statsd_ao.core.logs import RateLimitedLog
from statsd_ao.io.address import Address
from statsd_ao.io.pacing import DEFAULT_PAUSE, Pacer, measurable, queued

log = logging.getLogger(__name__)

# Datagrams per readiness callback: ~25k lines, about 25 ms of work at 1 M lines/s.
DRAIN_LIMIT = 1000
# Seconds of work after which a callback returns to the loop (checked between reads): the
# packed bench workload reads its 1,000 datagrams in ~8 ms, so only costly input hits it.
TURN_BUDGET = 0.01
# Bytes read between two looks at the clock: 45 packed datagrams, 1 of 64 KiB; a look costs
# ~50 ns, so one-line datagrams (~1,300 to a look) are read as before.
CHUNK_BYTES = 65536
# The largest UDP payload, so no datagram is ever truncated.
MAX_DATAGRAM = 65535
# Reads and ingests up to a number of datagrams natively (`Aggregator.receive`):
# (datagrams, bytes, errno of a receive error or 0).
Receive = Callable[[int, int, Errored], tuple[int, int, int]]
# Unix socket permissions: the owner and its group may send (clients in a pod share a group
# via fsGroup); others may not.
UNIX_MODE = 0o660


class DatagramListener:
    """Reads StatsD datagrams from one UDP address or Unix datagram socket into ``ingest``."""

    def __init__(
        self,
        target: Address | str,
        ingest: Callable[[bytes], None],
        rcvbuf: int,
        *,
        reuse_port: bool = False,
        receive: Receive | None = None,
        pause: float = DEFAULT_PAUSE,
        unix_mode: int = UNIX_MODE,
        sock: socket.socket | None = None,
    ) -> None:
        """``receive``, when given, reads and ingests in C (``recvmmsg``) in place of a
        Python ``recv`` and ``ingest`` per datagram.  ``pause``: seconds a UDP listener
        leaves a nearly empty socket alone (see `Pacer`; 0: never).  ``unix_mode``: the
        permissions of a Unix socket's file (who may send to it).  ``sock``: a UDP socket
        already bound to ``target`` to read instead of binding one (--workers)."""
        self._unix_mode = unix_mode
        self._given = sock
        self._receive = receive
        self._pause = pause
        self.pacer = Pacer(0.0, 0)  # until open() knows the buffer granted
        self._resume_handle: asyncio.TimerHandle | None = None
        self._reuse_port = reuse_port  # several processes on one port (--workers)
        self._target = target  # an Address for UDP, a filesystem path for a Unix socket
        self._ingest = ingest
        self._rcvbuf = rcvbuf
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.datagrams = 0
        self.bytes = 0
        self.errors = 0  # datagrams lost to a bug in ingest
        # Datagrams read between two looks at the clock: CHUNK_BYTES of the last ones seen.
        self._chunk = 1

    @property
    def is_udp(self) -> bool:
        return isinstance(self._target, Address)

    def describe(self) -> str:
        """``udp HOST:PORT`` or ``unix PATH``, as configured."""
        target = self._target
        return f"udp {target}" if isinstance(target, Address) else f"unix {target}"

    @property
    def is_open(self) -> bool:
        return self._sock is not None

    @property
    def bound(self) -> Address:
        """The UDP address actually bound (the real port when 0 was asked for)."""
        if self._sock is None or not isinstance(self._target, Address):
            raise RuntimeError("not an open UDP listener")
        host, port = self._sock.getsockname()[:2]
        return Address(host, port)

    async def open(self) -> None:
        """`statsd_ao.pipeline.Source`: bind and read on the running loop."""
        self.start_reading(asyncio.get_running_loop())

    async def close(self) -> None:
        """`statsd_ao.pipeline.Source`: `stop_reading`."""
        self.stop_reading()

    def start_reading(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind and start reading.  Raises OSError (e.g. address in use) to the caller."""
        sock = self._bind()
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self._sock, self._loop = sock, loop
        udp = isinstance(self._target, Address)
        self.pacer = Pacer(self._pause if udp else 0.0, granted, measurable=measurable(sock))
        loop.add_reader(sock.fileno(), self._on_readable)
        where = f"udp {self.bound}" if udp else self.describe()
        log.info(
            "listening on %s (receive buffer %d bytes granted, %d asked for; %s)",
            where,
            granted,
            self._rcvbuf,
            self.pacer.describe(),
        )

    def _bind(self) -> socket.socket:
        target = self._target
        if self._given is not None:
            sock, self._given = self._given, None
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
            return sock
        if isinstance(target, Address):
            family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
        else:
            _remove_stale_socket(target)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
            if isinstance(target, Address):
                if self._reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((target.host, target.port))
            else:
                sock.bind(target)
                os.chmod(target, self._unix_mode)
        except OSError:
            sock.close()
            raise
        return sock

    def stop_reading(self) -> None:
        """Stop reading, after taking in what the kernel already queued for us."""
        if self._sock is None or self._loop is None:
            return
        self._loop.remove_reader(self._sock.fileno())
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None
        while self._drain()[1]:
            pass
        self._sock.close()
        self._sock = None
        if isinstance(self._target, str):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._target)

    @property
    def pauses(self) -> int:
        """Pauses so far (see `Pacer`)."""
        return self.pacer.pauses

    @property
    def paused(self) -> bool:
        """The socket is left alone for now (see `Pacer`)."""
        return self._resume_handle is not None

    def _on_readable(self) -> None:
        self._pace(*self._drain(), None)

    def _resume(self) -> None:
        self._resume_handle = None
        if self._sock is None or self._loop is None:  # closed (close() cancels this anyway)
            return
        self._loop.add_reader(self._sock.fileno(), self._on_readable)
        backlog = queued(self._sock)
        self._pace(*self._drain(), backlog)

    def _pace(self, count: int, more: bool, backlog: int | None) -> None:
        # A read cut short by the budget found a busy socket, however few it took.
        pause = self.pacer.after_read(count if not more else DRAIN_LIMIT, backlog=backlog)
        if pause > 0:
            assert self._sock is not None and self._loop is not None
            self._loop.remove_reader(self._sock.fileno())
            self._resume_handle = self._loop.call_later(pause, self._resume)

    def _drain(self) -> tuple[int, bool]:
        """Read up to DRAIN_LIMIT datagrams, for about TURN_BUDGET seconds at most: how many,
        and whether more may wait (a limit was reached before the socket was empty)."""
        assert self._sock is not None
        deadline = time.monotonic() + TURN_BUDGET
        total = 0
        while True:
            asked = min(self._chunk, DRAIN_LIMIT - total)
            if self._receive is not None:
                count, size, error = self._receive(self._sock.fileno(), asked, self._errored)
                if error:
                    log.warning("udp receive error: %s", os.strerror(error))
            else:
                count, size = self._read(asked)
            self.datagrams += count
            self.bytes += size
            total += count
            if count:
                self._chunk = max(1, CHUNK_BYTES * count // max(size, 1))
            if count < asked:  # the socket is empty (or failed)
                return total, False
            if total >= DRAIN_LIMIT or time.monotonic() >= deadline:
                return total, True

    def _errored(self, data: bytes) -> None:
        """``ingest`` raised on ``data`` (called from its except block)."""
        self.errors += 1
        ingest_failed(data)

    def _read(self, limit: int) -> tuple[int, int]:
        """The Python way: recv and ingest one datagram at a time, ``limit`` at most."""
        assert self._sock is not None
        recv, ingest = self._sock.recv, self._ingest
        count = size = 0
        try:
            while count < limit:
                data = recv(MAX_DATAGRAM)
                count += 1
                size += len(data)
                try:
                    ingest(data)
                except Exception:  # a bug in ingest: lose that datagram, keep reading
                    self._errored(data)
        except BlockingIOError:
            pass
        except OSError as error:  # e.g. ECONNREFUSED echoes on some kernels: never fatal
            log.warning("udp receive error: %s", error)
        return count, size


_bug_log = RateLimitedLog(log, 60.0)


def ingest_failed(data: bytes) -> None:
    """Ingest raised (a bug: it must not): logged loudly but rate-limited, never fatal."""
    _bug_log.log(
        logging.ERROR,
        "ingest",
        "error ingesting %r (dropped; the proxy goes on)",
        data[:120],
        exc_info=True,
    )


def _remove_stale_socket(path: str) -> None:
    """A socket file nobody listens on (left by a crashed run) is removed; a socket another
    process holds, or any other file, is an error (FileExistsError, naming the path).

    Whether anyone holds it is asked of the kernel: a datagram socket connected to a socket
    file that no process has bound is refused (ECONNREFUSED); a live one accepts the
    connection (or, bound as a stream socket, answers EPROTOTYPE)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # nobody listens on it: a leftover
            return
        except FileNotFoundError:
            return  # removed meanwhile
        except OSError as error:
            if error.errno != errno.EPROTOTYPE:
                raise FileExistsError(
                    f"{path} is a socket that cannot be probed ({error.strerror}): "
                    "refusing to replace it"
                ) from None
    raise FileExistsError(
        f"{path} is a socket another process is listening on: refusing to take it over "
        "(stop that process or give --unix another path)"
    )
