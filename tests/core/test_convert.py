"""The flush's C conversion (statsd_ao/core/_convert.c) against the Python `Converter`.

The C code only accelerates: for any interval, a converter using it must post exactly the
measurements the pure Python one posts (same keys, values to the bit: orjson's bytes are
compared, so ``-0.0`` against ``0.0`` or an int count against a float count would show), and
count the same drops.  Hypothesis drives both with arbitrary accumulators, magnitudes the
API refuses, sampled values, reservoirs, long names and odd percentiles.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsd_ao.core import measurements, native
from statsd_ao.core.accumulators import Accumulator, Counter, Gauge, Running, SetOf, Summary
from statsd_ao.core.aggregator import SeriesKey
from statsd_ao.core.measurements import (
    COUNTER_ATTRIBUTES,
    DROPPED_PERCENTILE,
    Converter,
    Measurement,
    percentile_claims,
)
from statsd_ao.core.protocol import Kind
from statsd_ao.core.sanitize import MAX_NAME

NATIVE = measurements.NATIVE
needs_c = pytest.mark.skipif(NATIVE is None, reason="the C conversion is not loaded")

Item = tuple[SeriesKey, Accumulator]


def test_the_c_conversion_is_built_and_loaded() -> None:
    # .ci/run installs with a compiler; without the module every comparison below would
    # compare Python with itself.
    assert (NATIVE is None) == native.disabled()


def counter(total: float) -> Counter:
    acc = Counter()
    acc.total = total
    return acc


def gauge(value: float) -> Gauge:
    return Gauge(value)


def summary(values: list[float], weights: list[float] | None, running: bool) -> Summary:
    acc = Summary()
    acc.values = values
    if weights is not None:  # one weight per value, as Summary keeps them
        acc.weights = (weights + [1.0] * len(values))[: len(values)]
    if running:
        acc.running = Running.of(values, acc.weights)
        acc.seen = len(values)
        acc.weights = None
    return acc


def set_of(members: set[bytes]) -> SetOf:
    acc = SetOf()
    acc.members = members
    return acc


finite = st.floats(allow_nan=False, allow_infinity=False)
ordinary = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False) | st.integers(-1000, 1000).map(
    float
)
number = ordinary | finite | st.sampled_from([0.0, -0.0, 1e126, -1e126, 9.99e125, 5e-324])
weight = st.sampled_from([1.0, 2.0, 10.0, 1e20, 1 / 0.3]) | st.floats(1.0, 1e9)
summaries = st.builds(
    summary,
    st.lists(number, max_size=40) | st.lists(ordinary, min_size=1, max_size=12),
    st.none() | st.lists(weight, max_size=40),
    st.booleans(),
)
accumulators = st.one_of(
    st.builds(counter, number | st.sampled_from([math.inf, -math.inf])),
    st.builds(gauge, number),
    summaries,
    st.builds(set_of, st.sets(st.binary(min_size=1, max_size=4), max_size=5)),
)
NAME_CHARS = "abcXYZ019.:_-"
names = st.text(NAME_CHARS, min_size=1, max_size=12) | st.text(
    NAME_CHARS, min_size=MAX_NAME - 6, max_size=MAX_NAME
)
odd_names = st.text(min_size=1, max_size=8)  # not sanitized: the C code must decline
tags = st.lists(st.tuples(st.sampled_from(["env", "host", "az"]), st.text("abc", min_size=1)))
kinds = st.sampled_from(list(Kind))
keys = st.tuples(kinds, names | odd_names, tags.map(tuple))
items = st.lists(st.tuples(keys, accumulators), max_size=20)
percentile_lists = st.lists(
    st.sampled_from([90.0, 99.0, 99.9, 50.0, 100.0, 0.0, 12.5, 75]), max_size=3
)


def converters(percentiles: list[float], style: str) -> tuple[Converter, Converter]:
    return (
        Converter(percentiles, style=style, native=True),
        Converter(percentiles, style=style, native=False),
    )


def encoded(out: list[Measurement]) -> list[bytes]:
    return sorted(orjson.dumps(m) for m in out)


@needs_c
@settings(max_examples=400, deadline=None)
@given(items, percentile_lists, st.sampled_from(["p", "backend"]))
def test_c_and_python_post_the_same_measurements(
    chunk: list[Item], percentiles: list[float], style: str
) -> None:
    fast, pure = converters(percentiles, style)
    expected = pure.convert(chunk, 1_800_000_000, 10)
    assert encoded(fast.convert(chunk, 1_800_000_000, 10)) == encoded(expected)
    assert fast.dropped == pure.dropped


@settings(max_examples=300, deadline=None)
@given(st.lists(summaries, min_size=1, max_size=5))
def test_every_summary_posted_is_self_consistent(accs: list[Summary]) -> None:
    chunk: list[Item] = [((Kind.SUMMARY, f"x{i}", ()), acc) for i, acc in enumerate(accs)]
    for converter in converters([], "p"):
        for m in converter.convert(chunk, 60, 10):
            count, total = m["count"], m["sum"]
            assert count * m["min"] <= total <= count * m["max"], m


def ordinary_interval() -> list[Item]:
    tags = (("env", "prod"), ("host", "a"))
    chunk: list[Item] = [
        ((Kind.COUNTER, "hits", tags), counter(3.0)),
        ((Kind.GAUGE, "depth", tags), gauge(-0.0)),
        ((Kind.SUMMARY, "latency", tags), summary([1.5, 0.25, 3.0, 1e-3], None, running=False)),
        ((Kind.SUMMARY, "sampled", ()), summary([1.0, 2.0], [10.0, 10.0], running=False)),
        ((Kind.SUMMARY, "empty", tags), summary([], None, running=False)),
        ((Kind.SET, "users", tags), set_of({b"u1", b"u2"})),
    ]
    return chunk


@needs_c
def test_the_c_code_takes_every_ordinary_series_itself() -> None:
    # Not a speed test: the C path must not quietly hand everything back to Python.
    assert NATIVE is not None
    out, rest = NATIVE.convert(
        ordinary_interval(), 60, 10, ((90.0, ".p90"),), COUNTER_ATTRIBUTES, MAX_NAME
    )
    assert rest == []
    assert {m["name"] for m in out} == {
        "hits", "depth", "latency", "latency.p90", "sampled", "sampled.p90", "users",
    }  # fmt: skip
    sampled = next(m for m in out if m["name"] == "sampled")
    assert (sampled["count"], sampled["sum"], sampled["stddev"]) == (20, 30.0, 0.5)


@needs_c
@pytest.mark.parametrize(
    ("values", "weights", "total"),
    [
        ([10.0], [1 / 0.7], 10.0),  # count 1: the scaled 14.29 is moved to 1 x max
        ([-10.0], [1 / 0.7], -10.0),
        ([10.0], [1 / 0.6], 20.0),  # count 2: the scaled 16.67 is moved to 2 x min
        ([10.0, 20.0], [1 / 0.7, 1 / 0.7], 42.85714285714286),  # fits: kept
    ],
)
def test_the_c_code_keeps_sampled_summaries_self_consistent(
    values: list[float], weights: list[float], total: float
) -> None:
    assert NATIVE is not None
    item: Item = ((Kind.SUMMARY, "x", ()), summary(values, weights, running=False))
    out, rest = NATIVE.convert([item], 60, 10, (), COUNTER_ATTRIBUTES, MAX_NAME)
    assert rest == []
    assert out[0]["sum"] == total


@needs_c
@pytest.mark.parametrize(
    ("acc", "why"),
    [
        (counter(math.inf), "a value the API refuses"),
        (gauge(2e126), "a value the API refuses"),
        (summary([1.0, 1e300, -1e300], None, running=False), "an overflowing sum"),
        (summary([1.0] * 3, None, running=True), "a reservoir with running figures"),
    ],
)
def test_the_c_code_hands_back_what_python_must_decide(acc: Accumulator, why: str) -> None:
    assert NATIVE is not None
    item: Item = ((Kind.SUMMARY, "x", ()), acc)
    out, rest = NATIVE.convert([item], 60, 10, (), COUNTER_ATTRIBUTES, MAX_NAME)
    assert (out, rest) == ([], [item]), why


@needs_c
def test_a_suffixed_name_that_needs_fitting_goes_to_python() -> None:
    assert NATIVE is not None
    long_name = "a" * (MAX_NAME - 2)
    item: Item = ((Kind.SUMMARY, long_name, ()), summary([1.0], None, running=False))
    _, rest = NATIVE.convert([item], 60, 10, ((90.0, ".p90"),), COUNTER_ATTRIBUTES, MAX_NAME)
    assert rest == [item]
    names = {m["name"] for m in Converter([90.0]).convert([item], 60, 10)}
    assert long_name in names and all(len(name) <= MAX_NAME for name in names)


@needs_c
@pytest.mark.parametrize(
    "values",
    [
        [1e16, 1.0, 1e-16],  # the half-even fix-up across partials
        [1e308, 1e308, -1e308],  # an exact sum whose partials overflow
        [0.1] * 10,
        [-0.0, 0.0],
    ],
)
def test_sums_are_those_of_math_fsum(values: list[float]) -> None:
    fast, pure = converters([], "p")
    chunk: list[Item] = [((Kind.SUMMARY, "x", ()), summary(values, None, running=False))]
    assert encoded(fast.convert(chunk, 60, 10)) == encoded(pure.convert(chunk, 60, 10))


def test_without_the_c_code_the_converter_is_python_only() -> None:
    converter = Converter([90.0], native=False)
    chunk = ordinary_interval()
    out = converter.convert(chunk, 60, 10)
    assert len(out) == 7
    assert {tuple(sorted(m)) for m in out if m["name"] == "latency"} == {
        ("count", "last", "max", "min", "name", "period", "stddev", "sum", "tags", "time")
    }


def arguments_rejected(*args: Any) -> None:
    assert NATIVE is not None
    with pytest.raises(TypeError):
        NATIVE.convert(*args)


@needs_c
def test_bad_arguments_raise_not_crash() -> None:
    arguments_rejected((), 60, 10, (), {}, MAX_NAME)  # items not a list
    arguments_rejected([], 60, 10, [(90.0, ".p90")], {}, MAX_NAME)  # suffixes not a tuple
    arguments_rejected([], 60, 10, ((90.0,),), {}, MAX_NAME)  # not a pair
    arguments_rejected([], 60, 10)


# --- percentile names another series has (Converter.claim) ---------------------------------

SUFFIXES = (".p90", ".p99.9", ".9", ".p9")
claim_names = st.sampled_from(["lat", "lat.p90", "lat.p99.9", "lat.9", "lat.p9", "lat.p90.p90"])
claim_names |= st.sampled_from(["x.p90", ".p90", "p90", "l\u00e4t", "l\u00e4t.p90"])
claim_keys = st.tuples(kinds, claim_names, st.sampled_from([(), (("env", "a"),)]))


@needs_c
@settings(max_examples=300, deadline=None)
@given(st.dictionaries(claim_keys, st.none(), max_size=12))
def test_c_and_python_find_the_same_claims(table: dict[SeriesKey, None]) -> None:
    assert NATIVE is not None
    expected = percentile_claims(table, SUFFIXES)
    assert NATIVE.claims(table, SUFFIXES, Kind.SUMMARY) == expected
    for owner, suffix in expected:
        assert owner[0] is Kind.SUMMARY
        assert (owner[1] + suffix, owner[2]) in {(name, tags) for _, name, tags in table}


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("kind", [Kind.COUNTER, Kind.GAUGE, Kind.SET, Kind.SUMMARY])
def test_a_series_named_like_a_percentile_wins_over_the_percentile(
    native: bool, kind: Kind, caplog: pytest.LogCaptureFixture
) -> None:
    tags = (("env", "prod"),)
    owner: Item = ((Kind.SUMMARY, "lat", tags), summary([5.0, 7.0], None, running=False))
    accs: dict[Kind, Accumulator] = {
        Kind.COUNTER: counter(3.0),
        Kind.GAUGE: gauge(3.0),
        Kind.SET: set_of({b"a", b"b", b"c"}),
        Kind.SUMMARY: summary([3.0], None, running=False),
    }
    taker: Item = ((kind, "lat.p90", tags), accs[kind])
    elsewhere: Item = ((Kind.SUMMARY, "lat", ()), summary([1.0], None, running=False))
    converter = Converter([90.0, 99.0], native=native)
    converter.claim(dict([owner, taker, elsewhere]))
    out: list[Measurement] = []
    for _ in range(2):  # two intervals' worth: counted twice, logged once
        out = converter.convert([owner, taker, elsewhere], 60, 10)
    named = sorted((m["name"], tuple(m["tags"])) for m in out if m["name"].count(".") < 2)
    assert named == [
        ("lat", ()), ("lat", ("env",)), ("lat.p90", ()), ("lat.p90", ("env",)),
        ("lat.p99", ()), ("lat.p99", ("env",)),
    ]  # fmt: skip
    mine = next(m for m in out if m["name"] == "lat.p90" and m["tags"])
    assert mine.get("value", mine.get("sum")) == 3.0  # the series sent under the name
    assert converter.dropped == {DROPPED_PERCENTILE: 2}
    [record] = [r for r in caplog.records if "percentile" in r.getMessage()]
    assert "'lat.p90'" in record.getMessage()
    converter.claim({})
    names = [m["name"] for m in converter.convert([owner], 60, 10)]
    assert names == ["lat", "lat.p90", "lat.p99"]  # forgotten: the percentile is back
    assert converter.dropped == {DROPPED_PERCENTILE: 2}
