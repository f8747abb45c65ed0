"""The fleet's wire format: parts come back as they went, and garbage is a WireError."""

from __future__ import annotations

import contextlib
import gzip
import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from statsd_ao.core import fleet_wire
from statsd_ao.core.accumulators import Accumulator, Counter, Gauge, Running, SetOf, Summary
from statsd_ao.core.aggregator import SeriesKey, Snapshot
from statsd_ao.core.fleet_wire import Part, WireError, decode, encode
from statsd_ao.core.merge import Merger
from statsd_ao.core.protocol import Kind

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
small = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
text = st.text(max_size=12)
tags = st.lists(st.tuples(text, text), max_size=3).map(tuple)


def counter(total: float) -> Counter:
    acc = Counter()
    acc.total = total
    return acc


def gauge(value: float, start: float | None) -> Gauge:
    acc = Gauge(start)
    acc.value = value
    return acc


def set_of(members: set[bytes]) -> SetOf:
    acc = SetOf()
    acc.members = members
    return acc


def summary(values: list[float], weighted: bool, overflowed: bool) -> Summary:
    acc = Summary()
    acc.values = list(values)
    if weighted and not overflowed:
        acc.weights = [0.5 + i for i in range(len(values))]
    if overflowed:
        acc.running = Running.of(values, None)
        acc.seen = len(values) + 3
    return acc


accumulators: dict[Kind, st.SearchStrategy[Any]] = {
    Kind.COUNTER: st.builds(counter, finite),
    Kind.GAUGE: st.builds(gauge, finite, st.none() | finite),
    Kind.SET: st.builds(set_of, st.sets(st.binary(min_size=1, max_size=6), max_size=5)),
    Kind.SUMMARY: st.builds(summary, st.lists(small, max_size=20), st.booleans(), st.booleans()),
}


@st.composite
def parts(draw: st.DrawFn) -> Part:
    series: dict[SeriesKey, Accumulator] = {}
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(list(Kind)))
        key = (kind, draw(text), draw(tags))
        series[key] = draw(accumulators[kind])
    return Part(
        sender=draw(st.text(min_size=1, max_size=8)),
        seq=draw(st.integers(0, 2**62)),
        stamp=draw(st.integers(0, 2**40)),
        period=draw(st.integers(1, 3600)),
        clock=draw(st.floats(0, 2e9)),
        series=series,
        sub=draw(st.sampled_from(["", "a", "ab"])),
    )


def state(acc: Accumulator) -> Any:
    """What an accumulator holds, NaN made comparable."""
    if isinstance(acc, Counter):
        return ("c", acc.total)
    if isinstance(acc, Gauge):
        return ("g", acc.value, acc.start)
    if isinstance(acc, SetOf):
        return ("s", acc.members)
    running = acc.running
    figures = None
    if running is not None:
        figures = tuple(repr(getattr(running, slot)) for slot in Running.__slots__)
    return ("ms", acc.values, acc.weights, figures, acc.seen)


def states(table: dict[SeriesKey, Accumulator]) -> dict[SeriesKey, Any]:
    return {key: state(acc) for key, acc in table.items()}


@given(parts())
def test_a_part_comes_back_as_it_went(part: Part) -> None:
    back = decode(encode(part))
    assert back.ident == part.ident
    assert (back.period, back.clock) == (part.period, part.clock)
    assert states(back.series) == states(part.series)


@given(st.lists(parts(), min_size=1, max_size=4))
def test_parts_merge_to_the_same_numbers_after_the_wire(sent: list[Part]) -> None:
    def merged(parts: list[Part]) -> dict[SeriesKey, Any]:
        into = Snapshot()
        for part in parts:
            Merger().fold_into(into, Snapshot(past={0: part.series}))
        return states(into.past.get(0, {}))

    copies = [decode(encode(p)) for p in sent]  # (merging changes the parts it folds in)
    assert merged(copies) == merged(sent)


@given(parts())
def test_halves_partition_a_part_under_their_own_identities(part: Part) -> None:
    if len(part.series) < 2:
        return
    (first, n1), (second, n2) = fleet_wire.halves(encode(part))
    a, b = decode(first), decode(second)
    assert n1 + n2 == len(part.series)
    assert (a.sub, b.sub) == (part.sub + "a", part.sub + "b")
    assert states({**a.series, **b.series}) == states(part.series)


@given(st.binary(max_size=300))
def test_garbage_bytes_are_a_wire_error(body: bytes) -> None:
    with pytest.raises(WireError):
        decode(body)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)


@given(parts(), st.data())
def test_a_part_with_any_field_replaced_never_raises_anything_else(part: Part, data: Any) -> None:
    doc = orjson.loads(gzip.decompress(encode(part)))
    path = [data.draw(st.sampled_from(sorted(doc)))]
    target = doc
    while isinstance(target[path[-1]], list) and target[path[-1]] and data.draw(st.booleans()):
        target = target[path[-1]]
        path.append(data.draw(st.integers(0, len(target) - 1)))
    target_parent = doc
    for step in path[:-1]:
        target_parent = target_parent[step]
    target_parent[path[-1]] = data.draw(json_values)
    with contextlib.suppress(WireError):
        decode(gzip.compress(orjson.dumps(doc)))


def test_a_gzip_bomb_stops_at_the_bound() -> None:
    bomb = fleet_wire.zlib_gzip(b" " * (fleet_wire.MAX_DECODED + 1))
    with pytest.raises(WireError, match="larger than"):
        decode(bomb)


@pytest.mark.parametrize(
    "row",
    [
        ["c", "n", [], math.inf],
        ["c", "n", [], "1"],
        ["g", "n", [], 1.0],
        ["s", "n", [], ["\u0100"]],
        ["s", "n", [], [""]],
        ["ms", "n", [], [1.0], [0.0], None, 0],
        ["ms", "n", [], [1.0], None, None, 5],
        ["x", "n", [], 1],
        ["c", "n", [["k"]], 1],
        ["c", "n", [], True],
    ],
)
def test_rows_that_break_the_schema_are_refused(row: list[Any]) -> None:
    doc = {"v": 1, "sender": "s", "seq": 1, "sub": "", "stamp": 0, "period": 10, "clock": 0.0}
    with pytest.raises(WireError):
        decode(gzip.compress(orjson.dumps({**doc, "series": [row]})))


def test_the_same_series_twice_is_refused() -> None:
    doc = {"v": 1, "sender": "s", "seq": 1, "stamp": 0, "period": 10, "clock": 0.0}
    rows = [["c", "n", [], 1.0], ["c", "n", [], 2.0]]
    with pytest.raises(WireError, match="twice"):
        decode(gzip.compress(orjson.dumps({**doc, "series": rows})))
