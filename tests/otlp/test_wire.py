"""The wire writer (`statsd_ao.otlp.requests`) against the library: the same requests,
byte for byte, as ``opentelemetry-proto``'s messages serialize them
(`tests.otlp.reference`); and the converter's shortcut for plain summaries against
`summarize`, the definition."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from statsd_ao.core import native
from statsd_ao.core.accumulators import Summary
from statsd_ao.core.measurements import MAX_COUNT, postable_stats, summarize
from statsd_ao.core.protocol import Kind
from statsd_ao.otlp import requests
from statsd_ao.otlp.convert import NATIVE, Converter, _histogram_fits, _plain_figures
from statsd_ao.otlp.requests import Shape
from tests.core.test_convert import counter, gauge, percentile_lists
from tests.core.test_convert import items as convert_items
from tests.otlp import reference

texts = st.text(min_size=1, max_size=12)  # any code point a str holds in UTF-8
doubles = st.floats(allow_nan=False, width=64)
tag_sets = st.lists(
    st.tuples(st.sampled_from(["host", "env", "é", "k"]) | texts, texts), max_size=4
).map(lambda pairs: tuple(sorted(dict(pairs).items())))
nanos = st.integers(min_value=0, max_value=2**64 - 1)
numbers = st.tuples(
    st.just("number"),
    st.sampled_from([Shape.SUM, Shape.UPDOWN_SUM, Shape.GAUGE]),
    st.sampled_from(["a", "b"]) | texts,
    tag_sets,
    doubles,
    st.sampled_from(["", "ms", "µs"]),
)
histograms = st.tuples(
    st.just("histogram"),
    st.sampled_from(["a", "h"]) | texts,
    tag_sets,
    st.integers(min_value=0, max_value=2**64 - 1),
    doubles,
    doubles | st.just(math.nan),
    doubles | st.just(math.nan),
    st.sampled_from(["", "ms"]),
    st.lists(doubles, max_size=3),
)
windows = st.tuples(st.just("window"), nanos, nanos)
operations = st.lists(st.one_of(numbers, histograms, windows), max_size=40)


def emitted(made: Any, ops: list[tuple[Any, ...]]) -> None:
    for op in ops:
        if op[0] == "window":
            made.window(op[1], op[2])
        elif op[0] == "number":
            _, shape, name, tags, value, unit = op
            made.number(shape, name, tags, value, unit)
        else:
            _, name, tags, count, total, low, high, unit, bounds = op
            counts = list(range(len(bounds) + 1)) if bounds else []
            made.histogram(
                name,
                tags,
                count,
                total,
                low=low,
                high=high,
                unit=unit,
                bounds=bounds,
                counts=counts,
            )
    made.seal()


@settings(max_examples=300, deadline=None)
@given(
    operations,
    st.integers(min_value=1, max_value=6),
    st.dictionaries(texts, texts, max_size=2),
    st.sampled_from(["", "1.2.3"]),
    st.booleans(),
)
def test_requests_are_the_bytes_the_library_serializes(
    ops: list[tuple[Any, ...]],
    max_points: int,
    resource: dict[str, str],
    version: str,
    gzipped: bool,
) -> None:
    bodies: dict[str, list[tuple[bytes, int]]] = {"wire": [], "python": [], "library": []}
    options: dict[str, Any] = {
        "resource": resource,
        "version": version,
        "max_points": max_points,
        "gzip": gzipped,
        "max_bytes": 1 << 30,  # (sealed by points and repeated series alike in both)
    }
    wire = requests.Requests(lambda body, n: bodies["wire"].append((body, n)), **options)
    python = requests.Requests(
        lambda body, n: bodies["python"].append((body, n)), native=False, **options
    )
    library = reference.Requests(lambda body, n: bodies["library"].append((body, n)), **options)
    emitted(wire, ops)
    emitted(python, ops)
    emitted(library, ops)
    assert bodies["wire"] == bodies["library"]
    assert bodies["python"] == bodies["library"]
    assert (wire.requests, wire.points, wire.bytes, wire.raw_bytes) == (
        library.requests,
        library.points,
        library.bytes,
        library.raw_bytes,
    )


def test_the_c_writer_is_built_unless_switched_off() -> None:
    """(the install builds it where a compiler is: the tests here then compare it, not
    Python with itself)"""
    assert (requests.ENCODE is None) == native.disabled()


def test_a_changed_schema_is_refused_at_import() -> None:
    from google.protobuf.descriptor import FieldDescriptor
    from opentelemetry.proto.metrics.v1.metrics_pb2 import NumberDataPoint

    try:
        requests._field(NumberDataPoint, "as_double", FieldDescriptor.TYPE_FIXED64)
    except ImportError as error:
        assert "as_double" in str(error)
    else:
        raise AssertionError("a field of another type was taken")


values = st.floats(allow_nan=True, allow_infinity=True) | st.floats(-1e3, 1e3)


@settings(max_examples=500, deadline=None)
@given(st.lists(values, min_size=1, max_size=20))
def test_plain_figures_are_those_of_summarize_and_sent_whole(numbers: list[float]) -> None:
    acc = Summary()
    acc.values = list(numbers)
    count, total, low, high = _plain_figures(acc)
    stats = summarize(acc)
    if not count:  # (left to the definition's own path)
        return
    assert stats is not None
    assert (count, total, low, high) == (stats.count, stats.sum, stats.min, stats.max)
    assert _histogram_fits(stats)
    assert stats.count <= MAX_COUNT and postable_stats(stats)  # not counted as wide either


def test_plain_figures_take_only_unweighted_values_in_range() -> None:
    acc = Summary()
    acc.values = [1.0, 2.0, 4.0]
    assert _plain_figures(acc) == (3, 7.0, 1.0, 4.0)
    acc.values = [1.0, 2e125]
    assert _plain_figures(acc)[0] == 0
    acc.values = [1.0, math.nan, 2.0]
    assert _plain_figures(acc)[0] == 0
    acc.values, acc.weights = [1.0, 2.0], [2.0, 2.0]
    assert _plain_figures(acc)[0] == 0


# -- the C conversion against the Python one ----------------------------------------------


def decoded(bodies: list[tuple[bytes, int]]) -> Counter[tuple[Any, ...]]:
    """Every point of the requests with what it is in: (resource, metric envelope, point)."""
    found: Counter[tuple[Any, ...]] = Counter()
    for body, _ in bodies:
        request = ExportMetricsServiceRequest.FromString(body)
        for resource in request.resource_metrics:
            where = resource.resource.SerializeToString()
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    assert kind is not None
                    data = getattr(metric, kind)
                    for point in data.data_points:
                        envelope: tuple[Any, ...] = (metric.name, metric.unit, kind)
                        if kind != "gauge":
                            envelope += (data.aggregation_temporality,)
                        if kind == "sum":
                            envelope += (data.is_monotonic,)
                        found[where, envelope, point.SerializeToString()] += 1
    return found


class Collect:
    """An ``emit`` keeping what it is given."""

    def __init__(self, into: list[tuple[bytes, int]]) -> None:
        self.into = into

    def __call__(self, body: bytes, points: int) -> None:
        self.into.append((body, points))


@settings(max_examples=300, deadline=None)
@given(
    convert_items,
    percentile_lists,
    st.booleans(),
    st.sampled_from(["", "ms"]),
    st.sampled_from([2, 10_000]),
)
def test_c_and_python_make_the_same_points(
    chunk: list[Any], percentiles: list[float], monotonic: bool, unit: str, max_points: int
) -> None:
    made: dict[bool, list[tuple[bytes, int]]] = {True: [], False: []}
    counts: dict[bool, object] = {}
    for in_c in (True, False):
        out = requests.Requests(
            Collect(made[in_c]),
            resource={"service.name": "s"},
            gzip=False,
            max_points=max_points,
            max_bytes=2_000,  # (a few points: sealed for bytes in C as in Python)
        )
        converter = Converter(
            out, percentiles, summary_unit=unit, monotonic_counters=monotonic, native=in_c
        )
        try:
            points = converter.series(list(chunk), 1_800_000_000, 10)
        except (IndexError, ValueError) as error:  # (a percentile past 100: both alike)
            counts[in_c] = repr(error)
            continue
        out.seal()
        counts[in_c] = (points, converter.dropped, converter.wide, converter.negative_counters)
    assert counts[True] == counts[False]
    assert decoded(made[True]) == decoded(made[False])
    for body, points in made[True]:
        assert points <= max_points and len(body) <= 2_000


def test_the_c_conversion_is_built_unless_switched_off() -> None:
    assert (NATIVE is None) == native.disabled()
    if NATIVE is None:
        return
    made: list[tuple[bytes, int]] = []
    out = requests.Requests(lambda body, n: made.append((body, n)), resource={})
    chunk = [
        ((Kind.COUNTER, "c", (("host", "h"),)), counter(2.0)),
        ((Kind.GAUGE, "g", ()), gauge(1.0)),
    ]
    assert NATIVE.series(out, chunk, (), "", True) == (2, 0, [])


@pytest.mark.parametrize("in_c", [True, False])
def test_an_emit_that_raises_leaves_the_request_counted_true(in_c: bool) -> None:
    sent: list[int] = []

    def emit(body: bytes, points: int) -> None:
        sent.append(points)
        if len(sent) == 1:
            raise RuntimeError("emit failed")

    out = requests.Requests(emit, resource={}, gzip=False, max_points=2)
    converter = Converter(out, native=in_c)
    chunk = [((Kind.COUNTER, f"c{i}", ()), counter(1.0)) for i in range(5)]
    with pytest.raises(RuntimeError):
        converter.series(chunk, 1_800_000_000, 10)  # the third point seals the first two
    assert (sent, out.open_points) == ([2], 0)
    assert converter.series(chunk[3:], 1_800_000_000, 10) == 2
    out.seal()
    assert (sent, out.points) == ([2, 2], 4)


@pytest.mark.parametrize("in_c", [True, False])
def test_a_failure_midway_leaves_the_points_made_counted(in_c: bool) -> None:
    out = requests.Requests(lambda body, n: None, resource={}, gzip=False)
    converter = Converter(out, native=in_c)
    bad: Any = (("env", 1),)  # (never from the aggregator: tags are strings)
    chunk = [((Kind.COUNTER, "good", ()), counter(1.0)), ((Kind.COUNTER, "bad", bad), counter(1.0))]
    with pytest.raises((TypeError, AttributeError)):
        converter.series(chunk, 1_800_000_000, 10)
    assert out.open_points == 1
