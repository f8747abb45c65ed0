"""The OTLP conversion: what each statsd type becomes, request bounds, halving, answers.

Every request made here is decoded and judged by the strict fake receiver's own rules
(`tests.fakeotlp.judge`), so a test passes only on requests a receiver keeps whole.
"""

from __future__ import annotations

import ast
import gzip
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsd_ao.core.accumulators import MAX_SUMMARY_VALUES, Summary
from statsd_ao.core.aggregator import Aggregator
from statsd_ao.core.measurements import Converter as AppOpticsConverter
from statsd_ao.core.measurements import Measurement
from statsd_ao.core.protocol import Kind
from statsd_ao.core.retry import Answer
from statsd_ao.core.retry import Outcome as Verdicts
from statsd_ao.core.sanitize import Naming
from statsd_ao.otlp import swo_url
from statsd_ao.otlp.convert import NANOS, Converter
from statsd_ao.otlp.dialect import Otlp, classify, count_points, decode, halves
from statsd_ao.otlp.requests import Requests
from tests.fakeotlp import Point, judge

STAMP = 1_800_000_000
PERIOD = 10


class Made:
    """The requests a `Requests` emitted, decoded and judged."""

    def __init__(self, **options: Any) -> None:
        self.bodies: list[tuple[bytes, int]] = []
        options = {"resource": {"service.name": "svc"}, "gzip": False, **options}
        self.requests = Requests(lambda body, count: self.bodies.append((body, count)), **options)

    def points(self) -> list[Point]:
        self.requests.seal()
        out: list[Point] = []
        for body, count in self.bodies:
            verdict = judge(decode(body))
            assert verdict.refused == [], verdict.refused
            assert len(verdict.kept) == count
            out.extend(verdict.kept)
        return out


def snapshot(*lines: bytes, tags: dict[str, str] | None = None) -> Any:
    aggregator = Aggregator(Naming(tags or {"host": "h1"}), clock=lambda: STAMP + 1.0)
    for line in lines:
        aggregator.ingest(line)
    return aggregator.swap()


def convert(*lines: bytes, percentiles: Sequence[float] = (), **options: Any) -> list[Point]:
    made = Made()
    converter = Converter(made.requests, percentiles, **options)
    converter.series(list(snapshot(*lines).series.items()), STAMP, PERIOD)
    return made.points()


def one(points: list[Point], name: str) -> Point:
    found = [p for p in points if p.name == name]
    assert len(found) == 1, points
    return found[0]


# -- what each type becomes ---------------------------------------------------------------


def test_a_counter_is_a_delta_monotonic_sum_of_the_interval_total() -> None:
    point = one(convert(b"hits:3|c|#route:a", b"hits:2|c|@0.5|#route:a"), "hits")
    assert (point.type, point.monotonic, point.value) == ("sum", True, 7.0)
    assert point.attributes == {"route": "a"}
    assert (point.start, point.time) == (STAMP * NANOS, (STAMP + PERIOD) * NANOS)


def test_a_negative_counter_total_is_sent_as_a_non_monotonic_sum_and_counted() -> None:
    made = Made()
    converter = Converter(made.requests)
    converter.series(list(snapshot(b"queue:-4|c", b"other:1|c").series.items()), STAMP, PERIOD)
    points = made.points()
    assert (one(points, "queue").monotonic, one(points, "queue").value) == (False, -4.0)
    assert one(points, "other").monotonic is True
    assert converter.negative_counters == 1


def test_counters_can_all_be_up_down_sums() -> None:
    point = one(convert(b"hits:3|c", monotonic_counters=False), "hits")
    assert (point.type, point.monotonic) == ("sum", False)


@pytest.mark.parametrize(
    ("lines", "value"),
    [
        ((b"temp:20|g", b"temp:+5|g"), 25.0),  # last value, etsy deltas
        ((b"temp:a|s", b"temp:b|s", b"temp:a|s"), 2.0),  # a set: unique members
        ((b"_sc|temp|2|#team:x",), 2.0),  # a service check: its status
    ],
)
def test_gauges_sets_and_service_checks_are_gauges(lines: tuple[bytes, ...], value: float) -> None:
    point = one(convert(*lines), "temp")
    assert (point.type, point.value, point.monotonic) == ("gauge", value, None)


def test_a_timer_is_a_delta_histogram_with_count_sum_min_max_and_percentile_gauges() -> None:
    lines = [b"rt:%d|ms" % v for v in (10, 20, 30, 40)] + [b"rt:50|ms|@0.5"]
    points = convert(*lines, percentiles=[50, 99.9])
    histogram = one(points, "rt")
    assert histogram.type == "histogram"
    assert (histogram.count, histogram.sum, histogram.min, histogram.max) == (6, 200.0, 10, 50)
    assert histogram.buckets == histogram.bounds == ()  # no buckets unless asked for
    assert one(points, "rt.p50").value == 30.0  # nearest rank over the values, as AppOptics
    assert one(points, "rt.p99.9").value == 50.0
    assert one(points, "rt.p50").type == "gauge"


def test_a_summary_unit_is_set_only_when_asked_for() -> None:
    assert one(convert(b"rt:1|ms"), "rt").unit == ""
    points = convert(b"rt:1|ms", percentiles=[90], summary_unit="ms")
    assert one(points, "rt").unit == one(points, "rt.p90").unit == "ms"


def test_explicit_buckets_hold_each_weighted_value_and_sum_to_the_count() -> None:
    lines = [b"rt:5|ms", b"rt:10|ms", b"rt:11|ms|@0.25", b"rt:100|ms", b"rt:1000|ms"]
    point = one(convert(*lines, buckets=[10, 100]), "rt")
    assert point.bounds == (10.0, 100.0)
    assert point.buckets == (2, 5, 1)  # (..10], (10..100], (100..): upper bounds inclusive
    assert sum(point.buckets) == point.count == 8


def test_buckets_of_a_reservoir_stand_for_the_whole_count() -> None:
    lines = [b"rt:%d|ms" % (i % 100) for i in range(MAX_SUMMARY_VALUES + 5000)]
    point = one(convert(*lines, buckets=[49.5]), "rt")
    assert point.count == MAX_SUMMARY_VALUES + 5000
    assert sum(point.buckets) == point.count
    assert abs(point.buckets[0] - point.count / 2) < point.count * 0.05


def test_a_summary_posted_to_the_api_intake_is_a_histogram_without_unknown_fields() -> None:
    from statsd_ao.core import api_rules
    from statsd_ao.core.api_intake import ApiIntake

    intake = ApiIntake(Naming({"host": "h1"}), interval=PERIOD, clock=lambda: STAMP + 1.0)
    body = (
        b'{"tags": {"a": "b"}, "measurements": [{"name": "rt", "count": 4, "sum": 10, "max": 4}]}'
    )
    env = api_rules.envelope(body)
    sample = api_rules.judge(env, 0)
    assert isinstance(sample, api_rules.Sample) and intake.add(sample) is None
    part = intake.take()
    assert part is not None
    made = Made()
    converter = Converter(made.requests, [90], buckets=[5])
    converter.series(list(part.series.items()), STAMP, PERIOD)
    [point] = made.points()  # no percentile: a summary's figures hold no values
    assert (point.type, point.count, point.sum, point.max) == ("histogram", 4, 10.0, 4.0)
    assert point.min is None  # not sent: not known
    assert point.buckets == point.bounds == ()  # no values to spread over buckets


def test_buckets_must_ascend() -> None:
    with pytest.raises(ValueError, match="ascending"):
        Converter(Made().requests, buckets=[10, 5])


def test_the_host_tag_becomes_the_resource_host_name() -> None:
    points = convert(b"a:1|c", b"b:1|c|#host:other", b"c:1|c|#env:prod")
    assert one(points, "a").resource == {"service.name": "svc", "host.name": "h1"}
    assert one(points, "b").resource == {"service.name": "svc", "host.name": "other"}
    assert "host" not in one(points, "c").attributes
    assert one(points, "c").attributes == {"env": "prod"}


def test_past_interval_samples_keep_their_own_interval() -> None:
    shot = snapshot(b"a:1|c", b"a:2|c|T%d" % (STAMP - 25))
    made = Made()
    converter = Converter(made.requests)
    converter.series(list(shot.series.items()), STAMP, PERIOD)
    for stamp, table in shot.past.items():
        converter.series(list(table.items()), stamp, PERIOD)
    points = sorted(made.points(), key=lambda p: p.start)
    assert [(p.value, p.start // NANOS, p.time // NANOS) for p in points] == [
        (2.0, STAMP - 30, STAMP - 20),
        (1.0, STAMP, STAMP + PERIOD),
    ]
    assert len(made.bodies) == 2  # one series twice: never in one request


def test_non_finite_values_are_dropped_and_counted_huge_ones_sent_and_counted() -> None:
    made = Made()
    converter = Converter(made.requests)
    shot = snapshot(b"big:1.7e308|c", b"big:1.7e308|c", b"wide:1e130|g", b"fine:1|g")
    converter.series(list(shot.series.items()), STAMP, PERIOD)
    points = made.points()
    assert {p.name for p in points} == {"wide", "fine"}
    assert converter.dropped == {"value not finite": 1}
    assert converter.wide == 1  # 1e130: past what the AppOptics path sends


def test_measurements_become_histograms_sums_and_gauges() -> None:
    batch: list[Measurement] = [
        {"name": "self.c", "tags": {"host": "h"}, "time": STAMP, "period": 10, "value": 3.0,
         "attributes": {"summarize_function": "sum"}},
        {"name": "self.g", "tags": {"host": "h", "k": "v"}, "time": STAMP, "period": 10,
         "value": 0.5},
        {"name": "self.s", "tags": {"host": "h"}, "time": STAMP, "period": 10, "count": 4,
         "sum": 10.0, "min": 1.0, "max": 4.0, "last": 2.0, "stddev": 1.1},
    ]  # fmt: skip
    made = Made()
    assert Converter(made.requests).measurements(batch) == 3
    points = made.points()
    assert (one(points, "self.c").type, one(points, "self.c").monotonic) == ("sum", True)
    assert (one(points, "self.g").type, one(points, "self.g").attributes) == ("gauge", {"k": "v"})
    summary = one(points, "self.s")
    assert (summary.count, summary.sum, summary.min, summary.max) == (4, 10.0, 1.0, 4.0)
    assert summary.resource["host.name"] == "h"


# -- one interval, two sinks, the same numbers ----------------------------------------------

_names = st.sampled_from(["a", "b", "c.d"])
_kinds = st.sampled_from(["c", "g", "ms", "h", "d", "s"])
_values = st.one_of(
    st.integers(-1000, 1000).map(str),
    st.floats(-1e6, 1e6, allow_nan=False).map(repr),
    st.sampled_from(["1e130", "-1e200", "+3", "-2"]),
)
_tags = st.lists(st.sampled_from(["env:prod", "env:dev", "host:h2", "zone:b"]), max_size=3)
_lines = st.lists(
    st.tuples(_names, _kinds, _values, st.sampled_from(["", "|@0.5", "|@0.1"]), _tags),
    min_size=1,
    max_size=40,
)


def _line(name: str, kind: str, value: str, rate: str, tags: list[str]) -> bytes:
    if kind == "s":
        value, rate = value.lstrip("+"), ""
    tail = "|#" + ",".join(tags) if tags else ""
    return f"{name}:{value}|{kind}{rate}{tail}".encode()


def _key(name: str, tags: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(tags.items()))


@settings(max_examples=150, deadline=None)
@given(_lines, st.lists(st.sampled_from([50.0, 90.0, 99.0]), max_size=2, unique=True))
def test_one_interval_carries_the_same_numbers_to_appoptics_and_to_otlp(
    lines: list[tuple[str, str, str, str, list[str]]], percentiles: list[float]
) -> None:
    items = list(snapshot(*(_line(*spec) for spec in lines)).series.items())
    measurements = AppOpticsConverter(percentiles).convert(items, STAMP, PERIOD)
    made = Made()
    converter = Converter(made.requests, percentiles)
    converter.series(items, STAMP, PERIOD)
    points: dict[tuple[str, tuple[tuple[str, str], ...]], list[Point]] = {}
    for p in made.points():
        tags = dict(p.attributes)
        if "host.name" in p.resource:
            tags["host"] = p.resource["host.name"]
        points.setdefault(_key(p.name, tags), []).append(p)
    for m in measurements:
        assert any(_same(m, p) for p in points[_key(m["name"], m["tags"])]), (m, points)
        points[_key(m["name"], m["tags"])].remove(
            next(p for p in points[_key(m["name"], m["tags"])] if _same(m, p))
        )
    # What only OTLP carries is what the AppOptics path drops as out of its range.
    left = [p for found in points.values() for p in found]
    assert len(left) == converter.wide
    for point in left:
        figures = [point.value, point.sum, point.min, point.max]
        assert any(x is not None and abs(x) >= 1e126 for x in figures)


def _same(m: Measurement, point: Point) -> bool:
    """The point carries the measurement's numbers, at its interval."""
    if (point.start, point.time) != (m["time"] * NANOS, (m["time"] + m["period"]) * NANOS):
        return False
    if "count" in m:
        figures = (point.count, point.sum, point.min, point.max)
        return figures == (m["count"], m["sum"], m["min"], m["max"])
    return point.type != "histogram" and point.value == m["value"]


# -- requests: bounds, duplicates, gzip ----------------------------------------------------


def _gauges(n: int, pad: int = 0) -> list[bytes]:
    return [b"g%d:%d|g|#k:%s" % (i, i, b"v" * pad) for i in range(n)]


def test_requests_hold_at_most_max_points() -> None:
    made = Made(max_points=7)
    Converter(made.requests).series(list(snapshot(*_gauges(30)).series.items()), STAMP, 10)
    points = made.points()
    assert [count for _, count in made.bodies] == [7, 7, 7, 7, 2]
    assert len(points) == 30


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 60), st.integers(0, 300), st.integers(600, 20_000))
def test_requests_hold_at_most_max_bytes(n: int, pad: int, limit: int) -> None:
    made = Made(max_bytes=limit)
    Converter(made.requests, [90]).series(
        list(snapshot(*_gauges(n, pad), b"t:1|ms|#k:%s" % (b"w" * pad)).series.items()),
        STAMP,
        10,
    )
    assert len(made.points()) == n + 2
    for body, count in made.bodies:
        assert len(body) <= limit or count == 1  # a lone point larger than the bound goes alone


def test_a_name_used_by_two_types_never_repeats_a_series_in_a_request() -> None:
    points = convert(b"x:1|c", b"x:5|g", b"y:1|ms", b"y.p90:3|g", percentiles=[90])
    assert sorted((p.name, p.type) for p in points) == [
        ("x", "gauge"), ("x", "sum"), ("y", "histogram"), ("y.p90", "gauge"), ("y.p90", "gauge")
    ]  # fmt: skip


def test_requests_are_gzipped_when_asked() -> None:
    made = Made(gzip=True)
    Converter(made.requests).series(list(snapshot(*_gauges(200)).series.items()), STAMP, 10)
    assert len(made.points()) == 200
    body = made.bodies[0][0]
    assert body[:2] == b"\x1f\x8b" and len(body) < len(gzip.decompress(body)) / 3
    assert Otlp("http://x/v1/metrics").body_headers(body) == {"Content-Encoding": "gzip"}


def test_halves_partition_the_points_in_their_envelopes() -> None:
    for zipped in (False, True):
        made = Made(gzip=zipped)
        lines = [*_gauges(5), b"c:1|c|#host:h9", b"t:1|ms", b"t:2|ms"]
        Converter(made.requests, [90]).series(list(snapshot(*lines).series.items()), STAMP, 10)
        made.requests.seal()
        (body, count), *_ = made.bodies
        (a, na), (b, nb) = halves(body)
        assert (na, nb) == (count // 2, count - count // 2)
        assert a.startswith(b"\x1f\x8b") is zipped
        assert count_points(decode(a)) == na and count_points(decode(b)) == nb
        whole = sorted(repr(p) for p in judge(decode(body)).kept)
        parts = sorted(repr(p) for p in judge(decode(a)).kept + judge(decode(b)).kept)
        assert parts == whole


# -- answers --------------------------------------------------------------------------------


def _partial(rejected: int, message: str) -> bytes:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceResponse,
    )

    response = ExportMetricsServiceResponse()
    response.partial_success.rejected_data_points = rejected
    response.partial_success.error_message = message
    return response.SerializeToString()


@pytest.mark.parametrize(
    ("answer", "kind", "accepted", "refused", "wait"),
    [
        (Answer(200), Verdicts.DELIVERED, 10, 0, None),
        (Answer(200, body=_partial(3, "too old")), Verdicts.PARTIAL, 7, 3, None),
        (Answer(200, body=_partial(30, "all")), Verdicts.PARTIAL, 0, 10, None),
        (Answer(200, body=b"\xff\xffnot protobuf"), Verdicts.DELIVERED, 10, 0, None),
        (
            Answer(200, {"content-type": "application/json"},
                   b'{"partialSuccess": {"rejectedDataPoints": "2", "errorMessage": "m"}}'),
            Verdicts.PARTIAL, 8, 2, None,
        ),
        (Answer(400, body=b"bad point"), Verdicts.SPLIT, 0, 0, None),
        (Answer(413), Verdicts.SPLIT, 0, 0, None),
        (Answer(429, {"retry-after": "7"}), Verdicts.THROTTLED, 0, 0, 7.0),
        (Answer(502), Verdicts.TRANSIENT, 0, 0, None),
        (Answer(503, {"retry-after": "2"}), Verdicts.TRANSIENT, 0, 0, 2.0),
        (Answer(504), Verdicts.TRANSIENT, 0, 0, None),
        (Answer(error="ClientConnectorError"), Verdicts.TRANSIENT, 0, 0, None),
        (Answer(401), Verdicts.DENIED, 0, 0, None),
        (Answer(403), Verdicts.DENIED, 0, 0, None),
        (Answer(404), Verdicts.REJECTED, 0, 10, None),
        (Answer(500), Verdicts.REJECTED, 0, 10, None),
        (Answer(408), Verdicts.REJECTED, 0, 10, None),
    ],
)  # fmt: skip
def test_answers_read_as_the_otlp_specification_says(
    answer: Answer, kind: Verdicts, accepted: int, refused: int, wait: float | None
) -> None:
    verdict = classify(answer, 10, 0.0)
    assert (verdict.kind, verdict.accepted, verdict.refused, verdict.wait) == (
        kind, accepted, refused, wait
    )  # fmt: skip


def test_the_partial_success_message_and_error_bodies_are_quoted() -> None:
    assert classify(Answer(200, body=_partial(1, "too old")), 5, 0).errors == ("too old",)
    assert classify(Answer(200, body=_partial(0, "a warning")), 5, 0).errors == ("a warning",)
    assert "bad value" in classify(Answer(400, body=b"\x08\x03\x12\tbad value"), 5, 0).errors[0]


def test_swo_urls() -> None:
    assert swo_url("eu-01") == "https://otel.collector.eu-01.cloud.solarwinds.com:443/v1/metrics"
    assert {swo_url(r).split(".")[2] for r in ("na-01", "na-02", "eu-01", "ap-01")} == {
        "na-01", "na-02", "eu-01", "ap-01"
    }  # fmt: skip
    with pytest.raises(ValueError, match="na-01"):
        swo_url("us-1")


def test_headers_carry_the_bearer_token_and_extra_headers() -> None:
    headers = Otlp("http://x/v1/metrics", "tok", headers={"X-Tenant": "t"}).headers
    assert headers["Authorization"] == "Bearer tok"
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["X-Tenant"] == "t"
    assert "Authorization" not in Otlp("http://x/v1/metrics").headers


def test_the_pure_modules_do_no_io() -> None:
    io_modules = {"asyncio", "socket", "aiohttp", "uvloop", "selectors", "ssl"}
    package = Path(__file__).resolve().parents[2] / "statsd_ao" / "otlp"
    for name in ("convert.py", "requests.py", "dialect.py"):
        tree = ast.parse((package / name).read_text())
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
        }
        assert not imported & io_modules, name
        assert "statsd_ao.io" not in (package / name).read_text(), name


def test_an_empty_summary_makes_no_point() -> None:
    made = Made()
    key = (Kind.SUMMARY, "t", (("host", "h"),))
    assert Converter(made.requests).series([(key, Summary())], STAMP, PERIOD) == 0
    assert made.points() == []


def test_the_reservoir_counts_match_the_appoptics_path() -> None:
    lines = [b"rt:%r|ms|@0.5" % (math.sin(i) * 100) for i in range(MAX_SUMMARY_VALUES + 10)]
    items = list(snapshot(*lines).series.items())
    [m] = AppOpticsConverter().convert(items, STAMP, PERIOD)
    made = Made()
    Converter(made.requests).series(items, STAMP, PERIOD)
    point = one(made.points(), "rt")
    assert (point.count, point.sum, point.min, point.max) == (
        m["count"],
        m["sum"],
        m["min"],
        m["max"],
    )
