"""Snapshots become AppOptics measurements that obey the API rules (`statsd_ao.core.measurements`).

The rules (APPOPTICS.md, seed 001 "Measurement Restrictions") are written once here as
`api_violations`; the Hypothesis properties check every measurement made from arbitrary bytes
against it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from statsd_ao.core.aggregator import Aggregator
from statsd_ao.core.batching import chunked, encode
from statsd_ao.core.measurements import Converter, Measurement, percentile_suffix
from statsd_ao.core.sanitize import Naming
from tests.core import converting

GLOBAL = {"host": "h"}
T0 = 1_700_000_000
PERIOD = 10
SUMMARY_FIELDS = {"count", "sum", "min", "max", "last", "stddev"}
NUMBER_FIELDS = ("value", *sorted(SUMMARY_FIELDS))

NAME_RE = re.compile(r"[A-Za-z0-9.:_-]{1,255}")
TAG_NAME_RE = re.compile(r"[-.:_A-Za-z0-9]{1,64}")
TAG_VALUE_RE = re.compile(r"[-.:_?\\/A-Za-z0-9 ]{1,255}")


def api_violations(m: Measurement) -> list[str]:
    """Every way ``m`` breaks the AppOptics measurement rules (empty when it is postable)."""
    fields: Mapping[str, object] = m
    problems = tag_violations(m["tags"]) + number_violations(fields)
    if not NAME_RE.fullmatch(m["name"]):
        problems.append(f"bad name {m['name']!r}")
    if ("value" in fields) == ("count" in fields):
        problems.append("needs exactly one of value and count")
    if "count" in fields and ("sum" not in fields or not isinstance(fields["count"], int)):
        problems.append("count must be an integer, with sum")
    if not isinstance(m["time"], int) or not isinstance(m["period"], int):
        problems.append("time and period must be integers")
    if "count" in m and not problems:
        problems += summary_violations(m)
    return problems


def summary_violations(m: Measurement) -> list[str]:
    """How a summary contradicts itself (a strict API refuses it; a chart misreads it)."""
    count, total, lo, hi = m["count"], m["sum"], m.get("min", -math.inf), m.get("max", math.inf)
    problems = []
    if lo > hi:
        problems.append(f"min {lo} > max {hi}")
    if not count * lo <= total <= count * hi:
        problems.append(f"sum {total} outside count {count} x [{lo}, {hi}]")
    if m.get("stddev", 0.0) < 0:
        problems.append("negative stddev")
    if "last" in m and not lo <= m["last"] <= hi:
        problems.append("last outside [min, max]")
    return problems


def tag_violations(tags: Mapping[str, str]) -> list[str]:
    problems = [] if 1 <= len(tags) <= 50 else [f"{len(tags)} tags"]
    for key, value in tags.items():
        if not TAG_NAME_RE.fullmatch(key) or key != key.lower():
            problems.append(f"bad tag name {key!r}")
        if not TAG_VALUE_RE.fullmatch(value) or value != value.lower():
            problems.append(f"bad tag value {value!r}")
    return problems


def number_violations(fields: Mapping[str, object]) -> list[str]:
    problems = []
    for field in NUMBER_FIELDS:
        if field not in fields:
            continue
        number = fields[field]
        if isinstance(number, bool) or not isinstance(number, int | float):
            problems.append(f"{field} is not a number: {number!r}")
        elif not math.isfinite(number) or abs(number) >= 1e126:
            problems.append(f"{field} out of range: {number!r}")
    return problems


def pipeline(
    *datagrams: bytes,
    percentiles: Sequence[float] = (),
    global_tags: Mapping[str, str] = GLOBAL,
) -> tuple[list[Measurement], Converter]:
    agg = Aggregator(Naming(global_tags))
    for datagram in datagrams:
        agg.ingest(datagram)
    return converting.convert(agg.swap().series.items(), T0, PERIOD, percentiles)


def measurements(*datagrams: bytes, percentiles: Sequence[float] = ()) -> dict[str, Measurement]:
    out: dict[str, Measurement] = {}
    for m in pipeline(*datagrams, percentiles=percentiles)[0]:
        assert m["name"] not in out
        out[m["name"]] = m
    return out


# --- the shape of each kind -----------------------------------------------------------------


def test_each_kind_has_its_fields() -> None:
    got = measurements(b"c:2|c\ng:3|g\nu:a|s\nt:1|ms\nt:3|ms", percentiles=(90,))
    assert got["c"] == {
        "name": "c",
        "tags": GLOBAL,
        "time": T0,
        "period": PERIOD,
        "value": 2.0,
        "attributes": {"summarize_function": "sum"},
    }
    assert got["g"] == {"name": "g", "tags": GLOBAL, "time": T0, "period": PERIOD, "value": 3.0}
    assert got["u"] == {"name": "u", "tags": GLOBAL, "time": T0, "period": PERIOD, "value": 1.0}
    assert got["t"] == {
        "name": "t",
        "tags": GLOBAL,
        "time": T0,
        "period": PERIOD,
        "count": 2,
        "sum": 4.0,
        "min": 1.0,
        "max": 3.0,
        "last": 3.0,
        "stddev": 1.0,
    }
    assert got["t.p90"] == {
        "name": "t.p90",
        "tags": GLOBAL,
        "time": T0,
        "period": PERIOD,
        "value": 3.0,
    }


def test_never_value_together_with_count() -> None:
    ms, _ = pipeline(b"c:1|c\ng:1|g\nu:1|s\na:1|ms\nb:1|h\nd:1|d", percentiles=(50, 99))
    assert len(ms) == 12
    for m in ms:
        assert ("value" in m) != ("count" in m), m
        assert api_violations(m) == []


def test_time_and_period_are_those_given() -> None:
    agg = Aggregator(Naming(GLOBAL))
    agg.ingest(b"c:1|c\nt:1|ms")
    for m in converting.convert(agg.swap().series.items(), 1_700_000_060, 60, (50,))[0]:
        assert (m["time"], m["period"]) == (1_700_000_060, 60)


@pytest.mark.parametrize(
    ("percentile", "suffix"),
    [
        (90, ".p90"),
        (99.9, ".p99.9"),
        (50, ".p50"),
        (99.99, ".p99.99"),
        (100, ".p100"),
        (0.5, ".p0.5"),
    ],
)
def test_percentile_names(percentile: float, suffix: str) -> None:
    assert percentile_suffix(percentile) == suffix
    got = measurements(b"x:1|ms", percentiles=(percentile,))
    assert set(got) == {"x", "x" + suffix}
    assert "count" not in got["x" + suffix]


@pytest.mark.parametrize(
    ("datagram", "count", "total"),
    [
        (b"x:10|ms|@0.7", 1, 10.0),  # weight 1.43: count 1, scaled sum 14.29 > 1 x max
        (b"x:-10|ms|@0.7", 1, -10.0),  # ... and below 1 x min when negative
        (b"x:10|ms|@0.6", 2, 20.0),  # weight 1.67: count 2, scaled sum 16.67 < 2 x min
        (b"x:10|ms|@0.7\nx:20|ms|@0.7", 3, 42.85714285714286),  # 300 / 7 fits [30, 60]: kept
        (b"x:10|ms|@0.5\nx:-4|ms", 3, 16.0),  # whole weights: exact
    ],
)
def test_a_sampled_summary_is_self_consistent(datagram: bytes, count: int, total: float) -> None:
    m = measurements(datagram)["x"]
    assert (m["count"], m["sum"]) == (count, total)
    assert summary_violations(m) == []


# --- names and tags -------------------------------------------------------------------------


def test_names_are_sanitized() -> None:
    got = measurements(b"my metric/\xc3\xbc:1|c\n\xff\xfe:1|g\nok.name-1_x:1|s")
    assert set(got) == {"my_metric__", "__", "ok.name-1_x"}


def test_long_timer_names_and_their_percentiles_stay_distinct_and_valid() -> None:
    prefix = b"t" * 255
    datagram = prefix + b"one:1|ms\n" + prefix + b"two:1|ms"
    ms, _ = pipeline(datagram, percentiles=(90, 99, 99.9))
    names = [m["name"] for m in ms]
    assert len(names) == 8
    assert len(set(names)) == 8
    for m in ms:
        assert api_violations(m) == []


def test_tags_are_sanitized_and_lowercased() -> None:
    got = measurements(b"x:1|c|#Env:PROD,a b:c/d?e,\xc3\xbc:v,k:")
    assert got["x"]["tags"] == {"env": "prod", "a_b": "c/d?e", "_": "v", "k": "true", "host": "h"}


def test_global_tags_are_merged_and_the_metric_tag_wins() -> None:
    ms, _ = pipeline(b"x:1|c|#env:dev,role:web\ny:1|c", global_tags={"host": "h1", "env": "prod"})
    got = {m["name"]: m["tags"] for m in ms}
    assert got == {
        "x": {"host": "h1", "env": "dev", "role": "web"},
        "y": {"host": "h1", "env": "prod"},
    }


def test_every_measurement_has_at_least_one_tag() -> None:
    got = measurements(b"x:1|c\ny:1|c|#:bad,k: ,\xc3\xbc", percentiles=(50,))
    for m in got.values():
        assert m["tags"]
        assert m["tags"]["host"] == "h"


def test_at_most_fifty_tags_and_global_tags_are_kept() -> None:
    tags = b",".join(b"t%02d:v" % i for i in range(70))
    ms, _ = pipeline(b"x:1|c|#" + tags, global_tags={"host": "h", "pod": "p"})
    (m,) = ms
    assert len(m["tags"]) == 50
    assert (m["tags"]["host"], m["tags"]["pod"]) == ("h", "p")
    assert api_violations(m) == []


# --- values the API cannot take -------------------------------------------------------------


@pytest.mark.parametrize(
    "datagram",
    [
        b"x:6e125|c\nx:6e125|c",  # each line fits; the interval total does not
        b"x:1e200|c",
        b"x:-1e200|c",
        b"x:1e308|c\nx:1e308|c",  # overflows to inf
        b"x:1e200|c|@1e-200",  # inf after rate scaling
        b"x:1e130|g",
        b"x:-1e130|g",
        b"x:1e126|g",
        b"x:1e308|g\nx:+1e308|g",  # inf through a delta
    ],
)
def test_values_out_of_range_are_dropped_and_counted(datagram: bytes) -> None:
    ms, converter = pipeline(datagram + b"\nok:1|c")
    assert [m["name"] for m in ms] == ["ok"]
    assert converter.dropped == {"value out of range": 1}


@pytest.mark.parametrize(
    "datagram", [b"x:6e125|c", b"x:9.99e125|g", b"x:-9.99e125|g", b"x:1e-300|g"]
)
def test_values_in_range_are_posted(datagram: bytes) -> None:
    ms, converter = pipeline(datagram)
    assert [m["name"] for m in ms] == ["x"]
    assert converter.dropped == {}


@pytest.mark.parametrize(
    "datagram",
    [
        b"t:6e125|ms\nt:6e125|ms",  # sum too large
        b"t:1e130|ms",  # every field too large
        b"t:1e308|ms\nt:1e308|ms",  # sum overflows
        b"t:0|ms\nt:1e200|ms",  # squared deviation overflows
        b"t:1e160|ms\nt:-1e160|ms",  # sum is 0, squared deviation overflows
        b"t:0|ms\nt:1.3e154|ms\nt:1.3e154|ms",  # each square fits, their sum does not
        b"t:-1e308|ms\nt:0|ms\nt:7e307|ms",  # each deviation fits, their sum does not
        b"t:1|ms|@1e-320",  # weight 1/rate is infinite: so is count
    ],
)
def test_summary_out_of_range_is_dropped_and_counted_never_raised(datagram: bytes) -> None:
    ms, converter = pipeline(datagram + b"\nok:1|c", percentiles=(50,))
    names = {m["name"] for m in ms}
    assert "t" not in names
    assert "ok" in names
    assert converter.dropped.get("value out of range", 0) >= 1
    for m in ms:
        assert api_violations(m) == []


def test_backend_percentiles_out_of_range_are_dropped_and_counted_never_raised() -> None:
    # The lowest 90% of [0, 1.9e154] is both values: the sum of their squared deviations
    # overflows, for the summary and for its percentile (this once raised out of the flush,
    # losing the whole interval).
    agg = Aggregator(Naming(GLOBAL))
    agg.ingest(b"t:0|ms\nt:1.9e154|ms\nok:1|c")
    series = agg.swap().series.items()
    ms, converter = converting.convert(series, T0, PERIOD, [90.0], style="backend")
    assert {m["name"] for m in ms} == {"ok"}
    assert converter.dropped == {"value out of range": 2}


def test_every_measurement_can_be_encoded() -> None:
    """A tiny sample rate makes a count beyond 64 bits, which JSON encoding refuses."""
    ms, _ = pipeline(b"t:1|ms|@1e-20\nok:1|c")
    bodies = [encode(post) for post in chunked(ms, 500)]
    assert [m["name"] for m in orjson.loads(bodies[0])["measurements"]] == [m["name"] for m in ms]


# --- properties -----------------------------------------------------------------------------

FRAGMENTS = (
    b":", b"|", b"@", b"#", b",", b"=", b"\n", b" ", b"c", b"g", b"ms", b"h", b"s", b"d",
    b"x", b"0", b"1", b"-", b"+", b".", b"e", b"0.5", b"1e-20", b"nan", b"1e999", b"1e308",
    b"1e130", b"6e125", b"1e160", b"5e-324", b"\xff", b"\xc3\xbc", b"/", b"?", b"A", b"name",
    b"k", b"v", b"0.7", b"0.3", b"@0.6",
)  # fmt: skip
near_valid = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map(b"".join)


def check_api_rules(received: list[bytes]) -> None:
    ms, _ = pipeline(*received, percentiles=(50, 99.9))
    for m in ms:
        assert api_violations(m) == [], m
    for body in (encode(post) for post in chunked(ms, 7)):
        assert len(orjson.loads(body)["measurements"]) <= 7


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=5))
def test_measurements_from_arbitrary_bytes_obey_the_api(received: list[bytes]) -> None:
    check_api_rules(received)


@settings(max_examples=300, deadline=None)
@given(st.lists(near_valid, max_size=6))
@example([b"t:1e308|ms\nt:1e308|ms"])
@example([b"t:1e160|ms\nt:-1e160|ms"])
@example([b"t:0|ms\nt:1.3e154|ms\nt:1.3e154|ms"])
@example([b"t:-1e308|ms\nt:0|ms\nt:7e307|ms"])
@example([b"t:1|ms|@1e-320"])
@example([b"t:1|ms|@1e-20"])
@example([b"t:10|ms|@0.7"])
def test_measurements_from_near_valid_lines_obey_the_api(received: list[bytes]) -> None:
    check_api_rules(received)
