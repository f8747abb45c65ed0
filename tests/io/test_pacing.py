"""Pausing a nearly idle UDP socket (statsd_ao/io/pacing.py): when the pacer pauses, and a
listener on real sockets that pauses, takes the backlog in one read, and loses nothing."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from statsd_ao.core.aggregator import Aggregator
from statsd_ao.core.hotpath import Errored
from statsd_ao.core.sanitize import Naming
from statsd_ao.io import pacing
from statsd_ao.io.address import Address
from statsd_ao.io.listeners import DatagramListener, Receive
from statsd_ao.io.pacing import COOL_DOWN, FEW, MIN_BUFFER, Pacer, needed, queued

PAUSE = 0.001


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_read_that_finds_few_datagrams_pauses() -> None:
    pacer = Pacer(PAUSE, MIN_BUFFER)
    assert pacer.after_read(1, backlog=None) == PAUSE
    assert pacer.after_read(FEW - 1, backlog=FEW * 1000) == PAUSE
    assert pacer.after_read(0, backlog=0) == 0  # nothing came: wait for readiness
    assert pacer.after_read(FEW, backlog=None) == 0  # a backlog: read on
    assert pacer.pauses == 2
    assert "paused 1 ms" in pacer.describe()


def test_no_pause_without_the_buffer_it_needs() -> None:
    assert needed(PAUSE) == MIN_BUFFER
    assert needed(5 * PAUSE) == 5 * MIN_BUFFER
    assert needed(0.0015) == 2 * MIN_BUFFER  # the loop's timers count whole milliseconds
    small = Pacer(PAUSE, MIN_BUFFER - 1)
    assert small.after_read(1, backlog=None) == 0
    assert f"needs {MIN_BUFFER} bytes granted" in small.describe()
    assert Pacer(2 * PAUSE, MIN_BUFFER).after_read(1, backlog=None) == 0
    off = Pacer(0.0, 1 << 30)
    assert off.after_read(1, backlog=None) == 0
    assert off.describe() == "reads never paused"


def test_a_pause_that_filled_a_quarter_of_the_buffer_stops_pausing_for_a_while() -> None:
    clock = Clock()
    pacer = Pacer(PAUSE, MIN_BUFFER, clock)
    assert pacer.after_read(FEW - 1, backlog=MIN_BUFFER // 4) == PAUSE  # a quarter: room
    assert pacer.after_read(1000, backlog=MIN_BUFFER // 4 + 1) == 0
    assert pacer.after_read(1, backlog=None) == 0  # cooling down
    clock.now += COOL_DOWN
    assert pacer.after_read(1, backlog=None) == PAUSE


def wait_queued(sock: socket.socket, size: int) -> int:
    """What ``sock`` holds once it holds at least ``size`` bytes (loopback may deliver a
    moment after send() returns, on a loaded machine)."""
    deadline = time.monotonic() + 10
    while (now := queued(sock)) < size and time.monotonic() < deadline:
        pass
    return now


def charge(payload: bytes) -> int:
    """What the kernel charges a receive buffer for one datagram of ``payload``."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(("127.0.0.1", 0))
        sender.connect(receiver.getsockname())
        sender.send(payload)
        return wait_queued(receiver, 1)


def test_the_kernel_says_what_a_socket_holds() -> None:
    with (
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(("::1", 0))
        sender.connect(receiver.getsockname())
        assert queued(receiver) == 0
        sender.send(b"x:1|c")
        one = wait_queued(receiver, 1)
        assert one > len(b"x:1|c")  # the datagram and the kernel's bookkeeping for it
        sender.send(b"x:1|c")
        assert wait_queued(receiver, one + 1) == 2 * one
        receiver.recv(100)
        receiver.recv(100)
        assert queued(receiver) == 0  # (released once the queue is empty, not per datagram)


# A pause and the buffer it needs, written out: 4 MiB per started millisecond.
PAUSES_AND_NEEDS = [
    (0.0, 0),
    (0.001, 4 << 20),
    (0.0015, 8 << 20),
    (0.002, 8 << 20),
    (0.0071, 32 << 20),
    (0.01, 40 << 20),
]


@settings(deadline=None)
@given(
    st.sampled_from(PAUSES_AND_NEEDS),
    st.integers(0, 1 << 26) | st.sampled_from([-1, 0, 1]),
    st.lists(st.tuples(st.integers(0, 2000), st.none() | st.integers(0, 1 << 26))),
)
def test_pauses_only_after_few_datagrams_with_room(
    pause_and_need: tuple[float, int], granted: int, reads: list[tuple[int, int | None]]
) -> None:
    pause, need = pause_and_need
    if granted <= 1:  # just below, at, or just above what the pause needs
        granted = max(0, need + granted)
    pacer = Pacer(pause, granted, Clock())
    for datagrams, backlog in reads:
        got = pacer.after_read(datagrams, backlog=backlog)
        assert got in {0, pause}
        if got:
            assert 0 < datagrams < FEW and granted >= need and pause > 0
            assert backlog is None or backlog <= granted // 4


# ---------------------------------------------------------------- a listener, real sockets


class Chunks:
    """An ingest function that records datagrams and wakes a waiter at a count."""

    def __init__(self) -> None:
        self.datagrams: list[bytes] = []
        self.reached = asyncio.Event()
        self.want = 0

    def __call__(self, chunk: bytes) -> None:
        self.datagrams.append(chunk)
        if len(self.datagrams) >= self.want:
            self.reached.set()

    async def wait_for(self, count: int) -> None:
        self.want = count
        if len(self.datagrams) < count:
            self.reached.clear()
            await asyncio.wait_for(self.reached.wait(), 10)


LOOPBACK = Address("127.0.0.1", 0)


def run_listener(
    scenario: Callable[[DatagramListener, Chunks], object],
    target: Address | str = LOOPBACK,
    pause: float = 1.0,
    receive: Callable[[Chunks], Receive] | None = None,
) -> None:
    """Run ``scenario`` on a listener (reading with ``receive(chunks)`` if given: the C
    loop's way); the loop must report no error."""
    errors: list[dict[str, object]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        chunks = Chunks()
        listener = DatagramListener(
            target,
            chunks,
            1 << 20,
            pause=pause,
            receive=None if receive is None else receive(chunks),
        )
        listener.start_reading(asyncio.get_running_loop())
        try:
            await scenario(listener, chunks)  # type: ignore[misc]
        finally:
            listener.stop_reading()

    uvloop.run(main())
    assert errors == []


@pytest.fixture
def any_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pauses allowed with the buffer this machine grants (its rmem_max may be small)."""
    monkeypatch.setattr(pacing, "MIN_BUFFER", 1)


def udp_sender(listener: DatagramListener) -> socket.socket:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect((listener.bound.host, listener.bound.port))
    return sender


def backlog(count: int, size: int = 7) -> list[bytes]:
    """``count`` distinct counter lines of ``size`` bytes (at least 7), a datagram each."""
    return [(b"m%d" % i).ljust(size - 4, b"x") + b":1|c" for i in range(count)]


async def pause_then_send(
    listener: DatagramListener, chunks: Chunks, sender: socket.socket, more: list[bytes]
) -> None:
    """One datagram, read alone (so the listener pauses), then ``more`` during the pause,
    in the kernel's queue when this returns."""
    sender.send(b"first:1|c")
    await chunks.wait_for(1)
    assert listener.paused  # one datagram read: the socket is left alone
    for datagram in more:
        sender.send(datagram)
    sock = listener._sock  # (the listener's socket)
    assert sock is not None
    wait_queued(sock, charge(more[0]) * len(more))
    await loop_polled()
    assert len(chunks.datagrams) == 1


async def loop_polled() -> None:
    """Return once the loop has polled its sockets since the call: a datagram on a socket
    pair of our own, readable from the start, has been read.  Every socket still watched
    and readable was reported by that same poll, so its reader has run too."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, theirs:
        theirs.setblocking(False)
        read = asyncio.Event()

        def on_readable() -> None:
            theirs.recv(16)
            read.set()

        ours.send(b"poll")
        loop.add_reader(theirs.fileno(), on_readable)
        try:
            async with asyncio.timeout(10):
                await read.wait()
        finally:
            loop.remove_reader(theirs.fileno())


@pytest.mark.usefixtures("any_buffer")
def test_a_paused_listener_takes_the_backlog_in_one_read_and_loses_nothing() -> None:
    async def scenario(listener: DatagramListener, chunks: Chunks) -> None:
        with udp_sender(listener) as sender:
            await pause_then_send(listener, chunks, sender, backlog(40))
            await chunks.wait_for(41)
            assert listener.pauses == 1  # 40 at once are a backlog: no pause after them
            assert not listener.paused
            sender.send(b"after:1|c")  # the socket is watched again
            await chunks.wait_for(42)
        assert listener.datagrams == 42
        assert chunks.datagrams[1:] == [*backlog(40), b"after:1|c"]

    run_listener(scenario)


@pytest.mark.usefixtures("any_buffer")
def test_the_c_loop_s_reads_pause_alike() -> None:
    aggregator = Aggregator(Naming({"host": "h"}))
    if not aggregator.receives:
        pytest.skip("the C loop is not loaded")

    def counted(chunks: Chunks) -> Receive:
        def receive(fd: int, limit: int, errored: Errored) -> tuple[int, int, int]:
            count, size, error = aggregator.receive(fd, limit, errored)
            for _ in range(count):  # (the aggregator took them in: only count them here)
                chunks(b"")
            return count, size, error

        return receive

    async def scenario(listener: DatagramListener, chunks: Chunks) -> None:
        with udp_sender(listener) as sender:
            await pause_then_send(listener, chunks, sender, backlog(40))
            await chunks.wait_for(41)
            assert listener.pacer.pauses == 1
            sender.send(b"after:1|c")
            await chunks.wait_for(42)

    run_listener(scenario, receive=counted)
    names = sorted(key[1] for key in aggregator.swap().series)
    assert names == sorted(["first", "after", *(b.split(b":")[0].decode() for b in backlog(40))])


@pytest.mark.usefixtures("any_buffer")
def test_closing_a_paused_listener_reads_what_waits() -> None:
    async def scenario(listener: DatagramListener, chunks: Chunks) -> None:
        with udp_sender(listener) as sender:
            await pause_then_send(listener, chunks, sender, backlog(5))
            resume = listener._resume_handle  # (the pause's end)
            listener.stop_reading()
        assert resume is not None and resume.cancelled()
        assert not listener.paused
        assert listener.datagrams == len(chunks.datagrams) == 6

    run_listener(scenario)


@pytest.mark.usefixtures("any_buffer")
def test_a_pause_that_filled_a_quarter_of_the_buffer_stops_the_pauses() -> None:
    async def scenario(listener: DatagramListener, chunks: Chunks) -> None:
        # half the buffer granted, in datagrams of 1,000 bytes: more than a quarter
        count = listener.pacer.granted // 2 // charge(bytes(1000))
        with udp_sender(listener) as sender:
            await pause_then_send(listener, chunks, sender, backlog(count, 1000))
            await chunks.wait_for(1 + count)
            sender.send(b"after:1|c")  # read alone, but no pause: cooling down
            await chunks.wait_for(2 + count)
        assert not listener.paused
        assert listener.pacer.pauses == 1
        assert listener.datagrams == 2 + count

    run_listener(scenario)


def test_no_pauses_where_the_kernel_does_not_say_what_the_queue_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unknown(sock: socket.socket) -> int:
        raise OSError("no SO_MEMINFO")

    monkeypatch.setattr(pacing, "queued", unknown)
    monkeypatch.setattr(pacing, "MIN_BUFFER", 1)

    async def scenario(listener: DatagramListener, chunks: Chunks) -> None:
        with udp_sender(listener) as sender:
            sender.send(b"first:1|c")
            await chunks.wait_for(1)
        assert not listener.paused
        assert "SO_MEMINFO" in listener.pacer.describe()

    run_listener(scenario)


@pytest.mark.usefixtures("any_buffer")
def test_unix_datagram_sockets_are_never_paused(tmp_path: Path) -> None:
    path = str(tmp_path / "statsd.sock")

    async def scenario(listener: DatagramListener, chunks: Chunks) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.connect(path)
            sender.send(b"first:1|c")
            await chunks.wait_for(1)
        assert not listener.paused
        assert listener.pacer.pause == 0

    run_listener(scenario, path)
