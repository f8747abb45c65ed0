"""The C loop (statsd_ao/core/_hotpath.c) against the aggregator's own Python loop.

The C loop is only an accelerator: on any input, an aggregator using it must end in exactly
the state of one running pure Python (the same accumulators holding the same numbers, bit
for bit, the same rejections, examples and line counts).  Hypothesis drives both with
arbitrary datagrams, near-valid lines and every spelling of a number.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import math
import platform
import random
import shutil
import socket
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsd_ao.core import accumulators, hotpath, native
from statsd_ao.core.accumulators import Accumulator, Gauge, Running
from statsd_ao.core.aggregator import Aggregator, Snapshot
from statsd_ao.core.cardinality import CardinalityGuard
from statsd_ao.core.mapping import parse_rules
from statsd_ao.core.sanitize import Naming
from tests.required import require

HOT = hotpath.NATIVE
needs_c = pytest.mark.skipif(
    HOT is None and native.disabled(),
    reason=f"{native.DISABLE} is set: the pure-Python loop is under test",
)


def test_the_c_loop_is_built_and_loaded() -> None:
    # The install builds it wherever a compiler is (as .ci/run's is); its absence would
    # leave every other test here comparing pure Python with itself.
    if native.disabled():
        assert HOT is None
    else:
        assert HOT is not None


PREFETCH = {"x86_64": "prefetch", "aarch64": "prfm"}  # objdump's mnemonics, by machine


@needs_c
@pytest.mark.skipif(platform.machine() not in PREFETCH, reason="x86_64 or aarch64 only")
@pytest.mark.parametrize("module", ["_hotpath", "_convert"])
def test_the_prefetches_survive_compilation(module: str) -> None:
    require(shutil.which("objdump") is not None, "objdump (binutils)")
    # gcc drops a plain static function that only prefetches (as _hotpath's prefetch() was
    # dropped until f4af94d): the C loop then waits on every cache miss in turn, with the
    # same results, so only the machine code shows it.
    path = importlib.import_module(f"statsd_ao.core.{module}").__file__
    assert path is not None
    code = subprocess.run(
        ["objdump", "-d", path], capture_output=True, text=True, check=True
    ).stdout
    assert f"\t{PREFETCH[platform.machine()]}" in code


@needs_c
@settings(deadline=None)
@given(st.binary(max_size=40), st.binary(max_size=40), st.data())
def test_the_c_key_comparison_is_bytes_equality(name: bytes, tail: bytes, data: Any) -> None:
    # The loop compares keys only after their 32-bit hashes matched, so a wrong answer here
    # would hide from every other test: compare it with bytes' == directly.
    module = native.hotpath()
    assert module is not None
    same = module._same_key
    key = name + b":" + tail
    assert same(key, name, tail)
    if key:  # the same key with one byte changed, or cut short, or one longer
        at = data.draw(st.integers(0, len(key) - 1))
        changed = key[:at] + bytes([key[at] ^ data.draw(st.integers(1, 255))]) + key[at + 1 :]
        assert not same(changed, name, tail)
        assert not same(key[:at], name, tail)
    assert not same(key + b"x", name, tail)
    other = data.draw(st.binary(max_size=90))
    assert same(other, name, tail) == (other == key)


@needs_c
def test_the_c_key_comparison_sees_every_byte_of_short_keys() -> None:
    # same_bytes() compares 8 bytes at a time with an overlapping last block, 4 at a time
    # below 8, then one by one: a slip in any branch (a tail of 9-15 bytes whose last block
    # is skipped, say) shows only for some lengths and positions, which random examples may
    # miss.  Every name and tail length up to 20 bytes, every byte changed: certain.
    module = native.hotpath()
    assert module is not None
    same = module._same_key
    for name_len in range(21):
        name = bytes(range(97, 97 + name_len))
        for tail_len in range(21):
            tail = bytes(range(65, 65 + tail_len))
            key = name + b":" + tail
            assert same(key, name, tail)
            for at in range(len(key)):
                changed = key[:at] + bytes([key[at] ^ 0x01]) + key[at + 1 :]
                assert not same(changed, name, tail), (name, tail, at)
            assert not same(key[:-1], name, tail) and not same(key + b"x", name, tail)


def aggregators(**options: Any) -> tuple[Aggregator, Aggregator]:
    def clock() -> float:
        return 1_800_000_000.0

    naming = Naming({"host": "h"})
    return (
        Aggregator(naming, clock=clock, hot=HOT, **options),
        Aggregator(naming, clock=clock, hot=None, **options),
    )


def bits(x: float) -> str:
    return float.hex(x) if isinstance(x, float) and not math.isnan(x) else repr(x)


def state(acc: Accumulator | Running | None) -> Any:
    """Every slot of an accumulator, floats by their exact bits."""
    if acc is None:
        return None
    out: dict[str, Any] = {"type": type(acc).__name__}
    # (the C Gauge has no __slots__: its state is two doubles)
    for slot in ("start", "value") if isinstance(acc, Gauge) else type(acc).__slots__:
        value = getattr(acc, slot)
        if isinstance(value, list):
            value = [bits(v) for v in value]
        elif isinstance(value, Running):
            value = state(value)
        elif isinstance(value, set):
            value = sorted(value)
        else:
            value = bits(value)
        out[slot] = value
    return out


def snapshot_state(snapshot: Snapshot) -> Any:
    return (
        {key: state(acc) for key, acc in snapshot.series.items()},
        {start: {k: state(a) for k, a in table.items()} for start, table in snapshot.past.items()},
        snapshot.events,
        snapshot.rejected,
        snapshot.examples,
        snapshot.lines,
    )


def feed_both(datagrams: list[bytes]) -> tuple[Any, Any]:
    states = []
    for agg in aggregators():
        random.seed(7)  # the timer reservoir past its cap draws the same numbers in both
        for datagram in datagrams:
            agg.ingest(datagram)
        states.append(snapshot_state(agg.swap()))
    return states[0], states[1]


NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f).encode()),
    st.floats(width=32).map(lambda f: f"{f:.7g}".encode()),
    st.integers(0, 30)
    .flatmap(lambda places: st.decimals(allow_nan=False, allow_infinity=False, places=places))
    .map(lambda d: str(d).encode()),
    st.integers(-(10**30), 10**30).map(lambda i: str(i).encode()),
    st.from_regex(rb"\A[+-]?[0-9_]{0,20}(\.[0-9]{0,20})?([eE][+-]?[0-9]{0,5})?\Z"),
    st.sampled_from(
        [
            b"",
            b"-0",
            b"+0",
            b".5",
            b"5.",
            b"1e",
            b" 1",
            b"1 ",
            b"nan",
            b"-inf",
            b"1e400",
            b"1e-400",
            b"0x10",
            b"1_000",
            b"\xd9\xa1",
            b"1:2:3",
            b"+5",
        ]
    ),
)
NAMES = st.sampled_from([b"a", b"b.c", b"x#k=v", b"n;t=1", b"", b"_e", b"_sc"])
TAILS = st.sampled_from(
    [
        b"c",
        b"g",
        b"ms",
        b"h",
        b"d",
        b"s",
        b"c|@0.5",
        b"ms|@0.25|#k:v",
        b"h|@0.1",
        b"g|@0.5",
        b"c|#a:1,b",
        b"s|#x",
        b"c|@2",
        b"q",
        b"",
        b"ms|T1800000000",
        b"c|c:abc",
        b"c|@0",
    ]
)
LINES = st.one_of(
    st.builds(lambda n, v, t: n + b":" + v + b"|" + t, NAMES, NUMBERS, TAILS),
    st.builds(lambda n, v: n + b":" + v, NAMES, NUMBERS),
    st.builds(  # etsy multi-metric lines: name:1|c:2|ms:...
        lambda n, parts: n + b":" + b":".join(v + b"|" + t for v, t in parts),
        NAMES,
        st.lists(st.tuples(NUMBERS, TAILS), min_size=2, max_size=4),
    ),
    st.binary(max_size=40),
)
DATAGRAMS = st.lists(LINES, max_size=30).map(b"\n".join)


@needs_c
@settings(max_examples=400, deadline=None)
@given(st.lists(DATAGRAMS, max_size=8))
def test_c_and_python_loops_leave_the_same_state(datagrams: list[bytes]) -> None:
    fast, pure = feed_both(datagrams)
    assert fast == pure


GUARDED_LINES = st.builds(
    lambda n, v, t, tag: b"%s:%s|%s|#u:%s" % (n, v, t, tag),
    st.sampled_from([b"a", b"b", b"c", b"d", b"e"]),
    st.sampled_from([b"1", b"2.5", b"x"]),
    st.sampled_from([b"c", b"c|@0.5", b"ms", b"g", b"s", b"h|@0.25"]),
    st.sampled_from([b"1", b"2", b"3"]),
)


@needs_c
@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(GUARDED_LINES, max_size=20).map(b"\n".join), max_size=6))
def test_c_and_python_loops_fold_past_the_budgets_alike(datagrams: list[bytes]) -> None:
    """With a guard of 2 tag sets per metric and 3 in all: the same series, the same folds
    into each metric's own overflow and into the shared one, counted the same."""
    states = []
    for hot in (HOT, None):
        guard = CardinalityGuard(2, 3, clock=lambda: 0.0)
        agg = Aggregator(Naming({"host": "h"}), guard=guard, hot=hot, clock=lambda: 1.8e9)
        for datagram in datagrams:
            agg.ingest(datagram)
        states.append(
            (snapshot_state(agg.swap()), agg.folded_samples, guard.folded_tag_sets, guard.tracked)
        )
    assert states[0] == states[1]


@needs_c
@settings(max_examples=300, deadline=None)
@given(NUMBERS, st.sampled_from([b"c", b"g", b"ms", b"c|@0.5", b"h|@0.25", b"s"]))
def test_every_spelling_of_a_value_gives_the_same_bits(value: bytes, tail: bytes) -> None:
    line = b"m:" + value + b"|" + tail
    fast, pure = feed_both([line, line, b"m:+" + value + b"|" + tail])
    assert fast == pure


@needs_c
def test_the_limits_are_those_in_force_at_each_datagram(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accumulators, "MAX_SUMMARY_VALUES", 3)
    monkeypatch.setattr(accumulators, "MAX_SET_MEMBERS", 2)
    datagram = b"\n".join([b"t:%d|ms" % i for i in range(6)] + [b"s:%d|s" % i for i in range(4)])
    fast, pure = feed_both([datagram, datagram])
    assert fast == pure
    assert fast[3] == {"set too large": 4}  # members past the limit: counted, not kept


@needs_c
def test_a_feed_replaced_mid_datagram_is_honoured() -> None:
    # A flood of new shapes clears the feed cache inside a datagram; later lines of that
    # datagram must still land (the C loop keeps the dict it started with alive).
    fast, pure = aggregators(feed_limit=3)
    datagram = b"\n".join(b"k%d:1|c" % (i % 5) for i in range(40))
    fast.ingest(datagram)
    pure.ingest(datagram)
    assert snapshot_state(fast.swap()) == snapshot_state(pure.swap())


@needs_c
def test_a_feed_that_raises_leaves_both_loops_in_the_same_state() -> None:
    # Ingest never raises by design; if a bug made a feed raise, the listener logs it and
    # goes on.  The datagram's lines are still counted, and the lines before it still count.
    def broken(raw: bytes) -> None:
        raise RuntimeError("a bug")

    states = []
    for agg in aggregators():
        agg._feeds[b"boom:c"] = broken
        with pytest.raises(RuntimeError):
            agg.ingest(b"a:1|c\nboom:1|c\nb:1|c")
        states.append(snapshot_state(agg.swap()))
    assert states[0] == states[1]
    assert states[0][5] == 3 and len(states[0][0]) == 1


@needs_c
def test_configuring_again_holds_no_extra_references() -> None:
    assert hotpath.load() is not None  # any one-off reference (caches) taken here
    before = sys.getrefcount(accumulators.Counter)
    for _ in range(100):
        hotpath.load()
    after = sys.getrefcount(accumulators.Counter)  # (outside assert: its rewriting holds one)
    assert after == before  # was +100: a leak per call


# ---------------------------------------------------------------- the shape table and receive

OPERATIONS = st.lists(
    st.one_of(
        DATAGRAMS.map(lambda d: ("ingest", d)),
        st.just(("swap", b"")),
        st.just(("forget", b"")),
        st.just(("remap", b"")),
    ),
    max_size=12,
)


def apply_operations(agg: Aggregator, operations: list[tuple[str, bytes]]) -> list[Any]:
    """Run the operations; the state of every interval handed over."""
    random.seed(7)
    states = []
    for operation, datagram in operations:
        if operation == "ingest":
            agg.ingest(datagram)
        elif operation == "swap":
            states.append(snapshot_state(agg.swap()))
        elif operation == "forget":
            agg.forget(list(agg.current)[::2])
        else:  # what Aggregator.remap does on main: every cached shape and feed dropped
            agg._shapes = {}
            agg._feeds = {}
    states.append(snapshot_state(agg.swap()))
    return states


@needs_c
@settings(max_examples=300, deadline=None)
@given(OPERATIONS, st.sampled_from([3, 10, 200_000]))
def test_the_same_state_across_swaps_forgets_and_replaced_feeds(
    operations: list[tuple[str, bytes]], feed_limit: int
) -> None:
    fast, pure = aggregators(feed_limit=feed_limit)
    assert apply_operations(fast, operations) == apply_operations(pure, operations)


@needs_c
def test_a_feeds_dict_cleared_in_place_is_noticed() -> None:
    # The contract is to replace the dict; a clear() (it shrinks) still retires the records.
    fast, pure = aggregators()
    for agg in (fast, pure):
        agg.ingest(b"a:1|c\nb:1|c")
        agg.forget([])  # new dict, same accumulators through new feeds
        agg.ingest(b"a:1|c")
        snapshot = agg.swap()
        agg._feeds = {b"a:c": snapshot.series[next(iter(snapshot.series))].add}
        agg._feeds.clear()
        agg.ingest(b"a:1|c\na:2|c")
    assert snapshot_state(fast.swap()) == snapshot_state(pure.swap())


@needs_c
def test_the_table_keeps_the_shapes_of_two_intervals_at_most() -> None:
    # A record outlives its interval only as a stale key, and only for one interval.
    fast, _ = aggregators()
    table = fast._table
    assert table is not None
    fast.ingest(b"\n".join(b"a%d:1|c" % i for i in range(300)))
    fast.swap()
    assert table.records() == 300  # stale: kept for the next interval's first lines
    fast.ingest(b"\n".join(b"b%d:1|c" % i for i in range(200)))
    assert table.records() == 500
    fast.swap()
    assert table.records() == 200  # the a's were not seen for a whole interval
    fast.swap()
    assert table.records() == 0


@needs_c
def test_a_shape_seen_every_interval_keeps_one_copy_of_its_bytes() -> None:
    fast, _ = aggregators()
    table = fast._table
    assert table is not None
    fast.ingest(b"req:1|c|#env:prod")
    (first,) = table.keys()
    for _ in range(3):
        fast.swap()
        fast.ingest(b"req:1|c|#env:prod\nreq:2|c|#env:prod")
        (again,) = table.keys()
        assert again is first
        assert fast._shapes == {} and table.held(fast._shapes) == 1  # (taken over)
    (counter,) = fast.current.values()
    assert counter.total == 3.0  # type: ignore[union-attr]


@needs_c
def test_the_table_takes_the_feeds_it_caches_over_from_the_dict() -> None:
    # A cached shape costs no dict entry; the dict keeps only what the table could not take
    # (here a feed put there by hand after the table cached that shape's record).
    fast, _ = aggregators(feed_limit=5)
    table = fast._table
    assert table is not None
    fast.ingest(b"a:1|c\nb:1|c|@0.5\nc:1|g\nd:1|ms")
    assert fast._feeds == {}
    assert table.held(fast._feeds) == 4 and table.held({}) == 0
    fast.ingest(b"e:1|c")
    assert table.held(fast._feeds) == 5
    fast.ingest(b"f:1|c")  # a sixth past the limit of 5: the cache starts over with f's
    assert list(fast._feeds) == [b"f:c"]  # (the table mirrored the dict replaced)
    fast.ingest(b"a:2|c\nf:2|c")
    assert (table.held(fast._feeds), fast._feeds) == (2, {})
    assert len(fast.current) == 6


def renamed(to: str) -> Any:
    return parse_rules(f'[[rule]]\nmatch = "a.*"\nname = "{to}"\n')


@needs_c
def test_a_remap_is_honoured_by_the_shapes_the_table_holds() -> None:
    # The table holds the shapes it took over from the cache; a remap replaces the cache,
    # so the next line of each shape is named by the new rules, in the interval and after.
    states = []
    for agg in aggregators():
        agg.remap(renamed("one"))
        agg.ingest(b"a.b:1|c\na.c:1|c|@0.5")
        agg.remap(renamed("two"))
        agg.ingest(b"a.b:1|c\na.c:1|c|@0.5")
        first = snapshot_state(agg.swap())
        agg.ingest(b"a.b:1|c")
        agg.remap(renamed("three"))
        agg.swap()
        agg.ingest(b"a.b:1|c\na.c:1|c|@0.5")
        states.append((first, snapshot_state(agg.swap())))
    assert states[0] == states[1]
    first, last = states[0]
    assert sorted(key[1] for key in first[0]) == ["one", "two"]
    assert [key[1] for key in last[0]] == ["three"]


@needs_c
def test_the_shape_limit_counts_the_shapes_the_table_holds() -> None:
    fast, pure = aggregators(shape_limit=3)
    for agg in (fast, pure):
        for index in range(3):
            agg.ingest(b"\n".join(b"s%d:1|c" % i for i in range(index * 2, index * 2 + 4)))
            agg.swap()
    assert fast._table is not None
    assert 0 < fast._table.held(fast._shapes) + len(fast._shapes) <= 3
    assert 0 < len(pure._shapes) <= 3


@needs_c
def test_a_counter_total_read_earlier_is_not_changed_by_later_lines() -> None:
    # Floats are updated in place only while the accumulator holds the one reference.
    fast, _ = aggregators()
    fast.ingest(b"a:1|c\na:1|c")
    (counter,) = fast.current.values()
    seen = counter.total  # type: ignore[union-attr]
    fast.ingest(b"a:5|c\ng:3|g\ng:+1|g")
    assert seen == 2.0
    assert counter.total == 7.0  # type: ignore[union-attr]


def udp_pair() -> tuple[socket.socket, socket.socket]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(receiver.getsockname())
    return receiver, sender


def received(agg: Aggregator, datagrams: list[bytes], limit: int = 1000) -> tuple[Any, ...]:
    """Send the datagrams to a fresh socket, drain it through ``agg.receive``."""
    receiver, sender = udp_pair()
    errors: list[bytes] = []
    totals = [0, 0]
    with receiver, sender:
        for datagram in datagrams:
            sender.send(datagram)
        while True:
            count, size, error = agg.receive(receiver.fileno(), limit, errors.append)
            assert error == 0
            totals[0] += count
            totals[1] += size
            if count < limit:
                break
    return totals[0], totals[1], errors


def padded(datagram: bytes) -> bytes:
    """The datagram, then counter lines to past 512 bytes: receive splits such a datagram's
    first lines while it applies the one before it."""
    return datagram + b"\npad:1|c" * max(1, (600 - len(datagram)) // 8)


@needs_c
@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.one_of(DATAGRAMS, DATAGRAMS.map(padded)), max_size=80),
    st.sampled_from([1, 2, 7, 1000]),
    st.sampled_from([3, 200_000]),
)
def test_receive_leaves_the_state_of_ingesting_each_datagram(
    datagrams: list[bytes], limit: int, feed_limit: int
) -> None:
    # (a feed limit of 3 replaces the feeds dict within a batch of datagrams: receive must
    # go on with the new one, as ingest does; padded datagrams in a row carry their first
    # lines over from the one before)
    fast, pure = aggregators(feed_limit=feed_limit, shape_limit=max(feed_limit // 2, 2))
    random.seed(7)
    count, size, errors = received(fast, datagrams, limit)
    random.seed(7)
    for datagram in datagrams:
        pure.ingest(datagram)
    assert (count, size, errors) == (len(datagrams), sum(map(len, datagrams)), [])
    assert snapshot_state(fast.swap()) == snapshot_state(pure.swap())


def datagram_of(size: int, first: int) -> bytes:
    """Counter lines k{first}, k{first+1}, ... joined into a datagram of exactly ``size``
    bytes (the last name padded), so lines fall across every 2 KiB boundary."""
    lines: list[bytes] = []
    index = first
    while sum(map(len, lines)) + len(lines) + 80 < size:
        lines.append(b"k%d.%s:%d|c" % (index, b"x" * (index % 37), index % 5 + 1))
        index += 1
    used = sum(map(len, lines)) + len(lines)
    lines.append(b"last%d.%s:1|c" % (first, b"p" * (size - used - len(b"last%d.:1|c" % first))))
    data = b"\n".join(lines)
    assert len(data) == size
    return data


@needs_c
def test_receive_reads_long_datagrams_whole_among_short_ones() -> None:
    # receive reads each datagram's first 2 KiB into a compact area and the rest into an
    # overflow slot: lines that cross that edge, and datagrams up to UDP's 65,507 bytes,
    # must come out whole, next to short datagrams of the same batch
    sizes = [2047, 2048, 2049, 1432, 4097, 65_507, 2050, 9000]
    long = [datagram_of(size, n * 10_000) for n, size in enumerate(sizes)]
    datagrams = [d for pair in zip(long, [b"s:1|c", b"t:2|g"] * 4, strict=True) for d in pair] * 3
    fast, pure = aggregators()
    assert received(fast, datagrams) == (48, sum(map(len, datagrams)), [])
    for datagram in datagrams:
        pure.ingest(datagram)
    state = snapshot_state(fast.swap())
    assert state == snapshot_state(pure.swap())
    assert len(state[0]) == sum(d.count(b"\n") + 1 for d in long) + 2
    assert sum(state[3].values()) == 0


@needs_c
@pytest.mark.parametrize("order", range(6))
def test_receive_carries_lines_across_datagrams_of_every_length(order: int) -> None:
    # datagrams over 512 bytes with fewer lines than are carried over (12), just as many,
    # one more, and around the 64 split at a time; with newlines leading, trailing, doubled,
    # and empty datagrams between them
    def long_lines(prefix: bytes, count: int) -> bytes:
        size = max(10, 600 // count + 1)
        return b"\n".join(b"%s%d.%s:1|c" % (prefix, i, b"x" * size) for i in range(count))

    datagrams = [b"\n" * 600, b"\n" * 600 + b"z:1|c", b"y:1|c" + b"\n" * 600]
    for count in (3, 12, 13, 64, 76, 77):
        body = long_lines(b"k%d." % count, count)
        datagrams += [body, body + b"\n", b"\n" + body, body + b"\n\n", b"", body]
    random.Random(order).shuffle(datagrams)
    fast, pure = aggregators()
    assert received(fast, datagrams) == (len(datagrams), sum(map(len, datagrams)), [])
    for datagram in datagrams:
        pure.ingest(datagram)
    assert snapshot_state(fast.swap()) == snapshot_state(pure.swap())


@needs_c
def test_receive_follows_a_feeds_dict_replaced_within_one_batch() -> None:
    # feed_for replaces the feeds dict at the limit; the datagrams after it in the same
    # recvmmsg batch must be cached against the new dict, as separate ingest calls are
    fast, _ = aggregators(feed_limit=5)
    table = fast._table
    assert table is not None
    datagrams = [b"a:1|c", b"b:1|c", b"c:1|c", b"d:1|c", b"e:1|c", b"f:1|c", b"a:2|c\nf:2|c"]
    assert received(fast, datagrams) == (7, sum(map(len, datagrams)), [])
    assert (table.held(fast._feeds), fast._feeds) == (2, {})
    assert len(fast.current) == 6


@needs_c
def test_receive_hands_a_datagram_that_raised_to_errored_in_an_except_block() -> None:
    seen: list[tuple[bytes, BaseException | None]] = []

    def broken(raw: bytes) -> None:
        raise RuntimeError("a bug")

    fast, pure = aggregators()
    for agg in (fast, pure):
        agg._feeds[b"boom:c"] = broken
    receiver, sender = udp_pair()
    with receiver, sender:
        for datagram in (b"a:1|c", b"a:1|c\nboom:1|c\nb:1|c", b"c:1|c"):
            sender.send(datagram)
            with contextlib.suppress(RuntimeError):
                pure.ingest(datagram)
        count, _, error = fast.receive(
            receiver.fileno(), 10, lambda data: seen.append((data, sys.exc_info()[1]))
        )
    assert (count, error) == (3, 0)
    assert [data for data, _ in seen] == [b"a:1|c\nboom:1|c\nb:1|c"]
    assert isinstance(seen[0][1], RuntimeError)
    assert snapshot_state(fast.swap()) == snapshot_state(pure.swap())


@needs_c
def test_receive_reports_a_socket_error() -> None:
    fast, _ = aggregators()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as unconnected:
        assert fast.receive(unconnected.fileno(), 10, print)[2] == errno.ENOTCONN


def test_receive_needs_the_c_loop() -> None:
    _, pure = aggregators()
    assert not pure.receives
    with pytest.raises(RuntimeError):
        pure.receive(0, 1, print)
