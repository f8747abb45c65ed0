"""When a UDP listener stops watching its socket for a moment, so that its next read finds a
batch instead of one datagram.

A proxy that keeps well ahead of its senders wakes for nearly every datagram, and a wake-up
(epoll, the loop's callback, a `recvmmsg` that returns one datagram and the one that finds
none) costs more than the datagram.  So after a read that found the socket nearly empty,
the listener leaves it to the kernel for `pause` seconds (1 ms by default): the datagrams
wait in the receive buffer, and one read takes them all.  Nothing waits longer than that in
a proxy that flushes every 10 s.  On the bench's one-line datagrams at its load generator's
ceiling this (with the C loop's prefetches fixed the same day) took the proxy from 3.25-4.67
to 2.05-2.37 CPU s per million, and from 93-99% of its core to 47-52% (bench/README.md).

A pause is safe only if the buffer holds what arrives meanwhile: the pacer pauses only
with at least `MIN_BUFFER` granted per millisecond of pause, and not for a while after a
pause that let a quarter of the buffer fill, as the kernel counts it (``SO_MEMINFO``).
Unix datagram sockets are never paused: their queue is counted in datagrams
(`net.unix.max_dgram_qlen`, 10 by default), which a 1 ms pause fills at 10,000 datagrams/s.
"""

from __future__ import annotations

import math
import socket
import struct
import time
from collections.abc import Callable

# The default pause, seconds.  The loop's timers count whole milliseconds (uvloop rounds a
# delay, and runs one under 1 ms at once), so a pause is a whole number of them.
DEFAULT_PAUSE = 0.001
TICK = 0.001
# The longest pause accepted (--read-pause): longer ones would need a larger buffer.
MAX_PAUSE = 0.01
# A read of fewer datagrams than this found the socket nearly empty.
FEW = 16
# The receive buffer granted (twice what net.core.rmem_max lets a socket ask) that a pause
# needs, per millisecond.  The kernel charges a datagram 0.8-2.3 KiB on loopback (Linux
# 6.18: 832 bytes for 1 byte, 2,304 for 1,432) and a network driver's buffer of 2-4 KiB for
# a short one, so a quarter of it holds twice the pause of 0.4 M one-line datagrams/s on
# loopback, 0.23 M full ones, 0.13 M at 4 KiB: more than a proxy that finds its socket
# nearly empty is being sent (and the cool-down measures, rather than assumes, the fill).
MIN_BUFFER = 4 * 1024 * 1024
# After a pause that let a quarter of the buffer fill, no pauses for this long.
COOL_DOWN = 1.0
# getsockopt(SOL_SOCKET, SO_MEMINFO) (Linux 4.11+; not in Python's socket module; another
# number on sparc and parisc, where 55 fails, so pausing is off): u32s, the first of which is
# what the receive queue holds, as charged against the buffer.
SO_MEMINFO = 55
_MEMINFO_SIZE = 9 * 4
_FIRST = struct.Struct("=I")


def queued(sock: socket.socket) -> int:
    """Bytes the socket's receive queue holds, as the kernel charges them against its
    receive buffer: UDP releases what was read in batches, so until the queue is next empty
    this may count datagrams already read too (an overcount, the safe side).  OSError where
    the kernel does not say."""
    data = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO_SIZE)
    if len(data) < _FIRST.size:
        raise OSError(f"SO_MEMINFO gave {len(data)} bytes")
    return int(_FIRST.unpack_from(data)[0])


def measurable(sock: socket.socket) -> bool:
    """`queued` works on ``sock`` (pausing needs it)."""
    try:
        queued(sock)
    except OSError:
        return False
    return True


def needed(pause: float) -> int:
    """The receive buffer granted that a pause of ``pause`` seconds needs (as the loop
    takes it: whole milliseconds, rounded up)."""
    return MIN_BUFFER * math.ceil(round(pause / TICK, 6))


class Pacer:
    """Decides, after each read, whether to pause before the next."""

    def __init__(
        self,
        pause: float,
        granted: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        measurable: bool = True,
    ) -> None:
        """``pause``: seconds (0: never); ``granted``: the receive buffer granted, bytes;
        ``measurable``: `queued` works on the socket (the cool-down needs it)."""
        self.needs = needed(pause)
        self.granted = granted
        self.measurable = measurable
        self.pause = pause if granted >= self.needs and measurable else 0.0
        self._room = granted // 4
        self._clock = clock
        self._quiet_until = 0.0  # no pauses before this (after a pause that filled a lot)
        self.pauses = 0

    def describe(self) -> str:
        """For the start-up log line."""
        if self.pause > 0:
            return f"reads paused {self.pause * 1e3:g} ms when the socket is nearly empty"
        if self.needs > self.granted:
            return f"reads never paused: that needs {self.needs} bytes granted"
        if not self.measurable:
            return "reads never paused: the kernel does not say what the queue holds (SO_MEMINFO)"
        return "reads never paused"

    def after_read(self, datagrams: int, *, backlog: int | None) -> float:
        """Seconds to leave the socket alone after a read of ``datagrams`` (0: read again
        as soon as it is readable); ``backlog``: for a read that ended a pause, the bytes
        queued when it began (`queued`), else None."""
        if self.pause <= 0:
            return 0.0
        now = self._clock()
        if backlog is not None and backlog > self._room:
            self._quiet_until = now + COOL_DOWN
        if now < self._quiet_until or not 0 < datagrams < FEW:
            return 0.0
        self.pauses += 1
        return self.pause
