"""--workers N: several receiving processes on one port post exactly what one would."""

from __future__ import annotations

import asyncio
import pickle
import socket
import threading
from collections import Counter as Tally
from typing import Any

import pytest

from statsd_ao.core import accumulators
from statsd_ao.core.accumulators import Counter, Gauge, SetOf, Summary
from statsd_ao.core.aggregator import Aggregator, Snapshot
from statsd_ao.core.cardinality import OVERFLOW_TAG, SHARED_OVERFLOW, CardinalityGuard
from statsd_ao.core.measurements import Converter, Measurement
from statsd_ao.core.merge import Merger, from_wire, to_wire
from statsd_ao.core.protocol import Kind
from statsd_ao.core.sanitize import Naming
from statsd_ao.proxy_metrics import udp_socket_stats
from tests.fakeapi import FakeAppOptics
from tests.proxy import Proxy

TOKEN = "workers-token"
SENDERS = 8


def traffic(sender: int) -> list[bytes]:
    """Counters and sets spread over every sender (order-free); each timer and gauge series
    from one sender only (a sender's datagrams reach one worker, in order)."""
    return [
        b"hits:1|c|#env:prod\nhits:2|c|@0.5|#env:prod\nusers:u%d|s\nusers:shared|s" % sender,
        b"lat.%d:%d|ms\nlat.%d:%d|ms|@0.5" % (sender, sender * 3, sender, sender + 7),
        b"depth.%d:%d|g\ndepth.%d:+5|g\ndepth.%d:-2|g" % (sender, sender * 10, sender, sender),
        b"size:%d|h" % sender,  # a shared histogram: count/sum/min/max are order-free
    ]


async def posted(workers: int) -> list[dict[str, Any]]:
    async with FakeAppOptics(token=TOKEN) as api:
        flags = ("--api-url", api.url, "--flush-interval", "86400", "--workers", str(workers))
        async with Proxy(*flags, env={"APPOPTICS_TOKEN": TOKEN}) as proxy:
            senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(SENDERS)]
            try:
                for index, sender in enumerate(senders):
                    for datagram in traffic(index):
                        sender.sendto(datagram, ("127.0.0.1", proxy.port))
            finally:
                for sender in senders:
                    sender.close()
            assert await proxy.stop() == 0, proxy.log
        assert not api.rejected
        return [comparable(dict(m)) for m in api.accepted]


def comparable(m: dict[str, Any]) -> dict[str, Any]:
    """A measurement without what the order of arrival across senders may change: its
    time (two runs) and the ``last`` of the histogram every sender feeds."""
    order_dependent = {"time", "last"} if m["name"] == "size" else {"time"}
    return {k: v for k, v in m.items() if k not in order_dependent}


def key(m: dict[str, Any]) -> tuple[str, str]:
    return m["name"], repr(sorted(m["tags"].items()))


def test_two_workers_post_what_one_process_posts() -> None:
    one = sorted(asyncio.run(posted(1)), key=key)
    two = sorted(asyncio.run(posted(2)), key=key)
    assert two == one
    names = {m["name"] for m in one}
    assert {"hits", "users", "size", "lat.0", "depth.7", "lat.3.p90"} <= names
    hits = next(m for m in one if m["name"] == "hits")
    assert hits["value"] == SENDERS * (1 + 2 / 0.5)


def parts_of(lines: list[bytes], splits: int) -> list[Snapshot]:
    """The same lines aggregated by ``splits`` aggregators, round robin by line."""
    aggregators = [Aggregator(Naming({"host": "h"})) for _ in range(splits)]
    for index, line in enumerate(lines):
        aggregators[index % splits].ingest(line)
    return [a.swap() for a in aggregators]


@pytest.mark.parametrize("splits", [2, 3])
def test_merge_equals_one_aggregator_for_order_free_series(splits: int) -> None:
    lines = [b"c:%d|c|@0.5" % i for i in range(30)] + [b"s:m%d|s" % (i % 7) for i in range(30)]
    lines += [b"t:%d|ms" % i for i in range(30)]
    merged = Merger().merge(parts_of(lines, splits))
    alone = parts_of(lines, 1)[0]
    convert = Converter([50, 90]).convert

    def strip(measurements: list[Measurement]) -> list[dict[str, Any]]:
        """Without ``last``: which part's last value comes last is the order of the parts."""
        return sorted(({k: v for k, v in m.items() if k != "last"} for m in measurements), key=key)

    assert strip(convert(merged.series.items(), 0, 10)) == strip(
        convert(alone.series.items(), 0, 10)
    )
    assert merged.lines == alone.lines


def test_the_merge_folds_new_names_past_the_total_into_the_shared_overflow() -> None:
    guard = CardinalityGuard(10, 2)
    overflow = Naming({"host": "h"}).tags([OVERFLOW_TAG])
    merger = Merger(guard, overflow)
    lines = [b"n%d:1|c" % i for i in range(100)] + [b"t%d:%d|ms" % (i, i) for i in range(50)]
    merged = merger.merge(parts_of(lines, 2))
    names = sorted(key[1] for key in merged.series)
    assert names == ["n0", "n2", SHARED_OVERFLOW + ".counter", SHARED_OVERFLOW + ".timer"]
    shared = merged.series[(Kind.COUNTER, SHARED_OVERFLOW + ".counter", overflow)]
    assert isinstance(shared, Counter) and shared.total == 98
    assert merger.folded_samples == {SHARED_OVERFLOW: 148}
    assert sum(1 for _ in guard.tag_sets()) == 2


def test_merged_gauges_continue_across_intervals() -> None:
    merger = Merger()
    first = parts_of([b"g:10|g"], 1)
    merger.merge(first)
    deltas = parts_of([b"g:+1|g", b"g:+2|g", b"g:-4|g"], 3)  # three parts, deltas only
    merged = merger.merge(deltas)
    [gauge] = merged.series.values()
    assert isinstance(gauge, Gauge) and gauge.value == 9.0


def test_accumulator_kinds_combine() -> None:
    merged = Merger().merge(parts_of([b"c:2|c", b"c:3|c", b"s:a|s", b"s:b|s", b"t:1|ms"], 2))
    kinds = {key[1]: type(acc) for key, acc in merged.series.items()}
    assert kinds == {"c": Counter, "s": SetOf, "t": Summary}


def test_wire_form_round_trips_every_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accumulators, "MAX_SUMMARY_VALUES", 5)  # one timer past its cap
    lines = [b"c:2|c|@0.5", b"g:5|g", b"g:+1|g", b"s:a|s", b"s:b|s", b"x:1|h|@0.25"]
    lines += [b"t:%d|ms" % i for i in range(12)]
    [snapshot] = parts_of(lines, 1)
    back = from_wire(pickle.loads(pickle.dumps(to_wire(snapshot))))
    convert = Converter([50]).convert
    assert convert(back.series.items(), 0, 10) == convert(snapshot.series.items(), 0, 10)
    assert (back.lines, back.rejected) == (snapshot.lines, snapshot.rejected)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class StartSender:
    """Sends ``start:1|c`` from 16 source ports in turn, one datagram every 5 ms, from the
    moment the port is bound (read from /proc/net/udp) until stopped; counts what it sent."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self.stop = threading.Event()
        self.bound = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StartSender:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
        try:
            while udp_socket_stats(self.port) is None:  # nothing bound yet: it would be lost
                if self.stop.wait(0.0005):
                    return
            self.bound.set()
            while not self.stop.wait(0.005):
                sockets[self.sent % len(sockets)].sendto(b"start:1|c", ("127.0.0.1", self.port))
                self.sent += 1
        finally:
            for sock in sockets:
                sock.close()


def test_datagrams_sent_while_the_workers_start_are_all_counted() -> None:
    """The sender starts the moment the port is bound and goes on past "ready": every
    datagram it sent is counted, none is lost in a socket nobody reads."""

    async def scenario() -> None:
        port = free_udp_port()
        async with FakeAppOptics(token=TOKEN) as api:
            flags = ("--api-url", api.url, "--flush-interval", "86400", "--workers", "2")
            with StartSender(port) as sender:
                proxy = Proxy(*flags, "--udp", f"127.0.0.1:{port}", env={"APPOPTICS_TOKEN": TOKEN})
                async with proxy:
                    assert sender.bound.is_set()
                    sent_at_ready = sender.sent
                    while sender.sent < sent_at_ready + 100:  # and on past the start
                        await asyncio.sleep(0.01)
                    sender.stop.set()
                    await proxy.wait_taken()
                    assert await proxy.stop() == 0, proxy.log
            assert sent_at_ready > 0
            [start] = [m for m in api.accepted if m["name"] == "start"]
            assert start["value"] == sender.sent, proxy.log

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_large_intervals_are_handed_over_at_10000_new_series_per_second() -> None:
    """8 senders bring 10,000 new series a second for 5 s, flushed every 4 s (the hand-over
    of an interval: ~1.3 MB, six times the pipe's buffer); a good sender beside them: every
    series and every count arrives."""
    per_second, seconds, senders = 10_000, 5, 8

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            flags = ("--api-url", api.url, "--flush-interval", "4", "--workers", "2")
            async with Proxy(*flags, env={"APPOPTICS_TOKEN": TOKEN}) as proxy:
                socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(senders)]
                good = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                loop = asyncio.get_running_loop()
                try:
                    for second in range(seconds):
                        began = loop.time()
                        for start in range(0, per_second, 25):
                            index = second * per_second + start
                            datagram = b"\n".join(
                                b"x.s%d:1|c|#env:prod" % i for i in range(index, index + 25)
                            )
                            socks[start // 25 % senders].sendto(datagram, ("127.0.0.1", proxy.port))
                            if start % 1000 == 0:
                                good.sendto(b"good:1|c", ("127.0.0.1", proxy.port))
                                await proxy.wait_taken()
                        await asyncio.sleep(max(0.0, began + 1.0 - loop.time()))  # the rate
                finally:
                    for sock in [*socks, good]:
                        sock.close()
                assert await proxy.stop() == 0, proxy.log
            assert "did not answer" not in proxy.log
            counts = Tally(m["name"] for m in api.accepted if m["name"].startswith("x.s"))
            assert len(counts) == per_second * seconds and set(counts.values()) == {1}
            assert sum(m["value"] for m in api.accepted if m["name"] == "good") == seconds * 10

    asyncio.run(asyncio.wait_for(scenario(), 90))
