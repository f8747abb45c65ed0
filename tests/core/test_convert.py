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
from statsd_ao.core.measurements import COUNTER_ATTRIBUTES, Converter, Measurement
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
