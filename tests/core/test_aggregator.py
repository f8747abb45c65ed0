"""One flush interval of StatsD lines, seen through its measurements (`statsd_ao.core.aggregator`).

Everything goes through the public path: ``Aggregator.ingest(bytes)`` -> ``swap()`` ->
``Converter.convert`` -> measurement dicts, plus the snapshot's rejection counts.  The
Hypothesis property at the end compares the whole path with a naive keep-every-value model
built on `statsd_ao.core.protocol.parse_line`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsd_ao.core import accumulators
from statsd_ao.core.aggregator import DEFAULT_SHAPE_LIMIT, Aggregator, Snapshot
from statsd_ao.core.measurements import Measurement
from statsd_ao.core.protocol import Kind, ParseError, Sample
from statsd_ao.core.sanitize import Naming
from tests.core import converting
from tests.core.grammar import parse_line

GLOBAL = {"host": "h"}
T0 = 1_700_000_000
PERIOD = 10

TagTuple = tuple[tuple[str, str], ...]
SeriesId = tuple[str, TagTuple]


def convert(snapshot: Snapshot, percentiles: Sequence[float] = ()) -> list[Measurement]:
    """The C conversion's measurements (held to the Python one's; see tests/core/converting.py)."""
    return converting.convert(snapshot.series.items(), T0, PERIOD, percentiles)[0]


def by_name(measurements: Iterable[Measurement]) -> dict[str, Measurement]:
    out: dict[str, Measurement] = {}
    for m in measurements:
        assert m["name"] not in out, f"two measurements named {m['name']}"
        out[m["name"]] = m
    return out


def by_series(measurements: Iterable[Measurement]) -> dict[SeriesId, Measurement]:
    out: dict[SeriesId, Measurement] = {}
    for m in measurements:
        key = (m["name"], tuple(sorted(m["tags"].items())))
        assert key not in out, f"two measurements for {key}"
        out[key] = m
    return out


def run(*datagrams: bytes, percentiles: Sequence[float] = ()) -> tuple[list[Measurement], Snapshot]:
    """Ingest, swap and convert one interval.

    The snapshot's rejection counts are read after conversion: values may be checked lazily,
    and the converter is what completes them.
    """
    agg = Aggregator(Naming(GLOBAL))
    for datagram in datagrams:
        agg.ingest(datagram)
    snapshot = agg.swap()
    return convert(snapshot, percentiles), snapshot


def flush(*datagrams: bytes, percentiles: Sequence[float] = ()) -> dict[str, Measurement]:
    return by_name(run(*datagrams, percentiles=percentiles)[0])


def value_of(measurements: Mapping[str, Measurement], name: str) -> float:
    m = measurements[name]
    assert "count" not in m
    return m["value"]


# --- counters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datagram", "total"),
    [
        (b"x:1|c", 1.0),
        (b"x:1|c\nx:2|c\nx:3|c", 6.0),
        (b"x:1|c|@0.5", 2.0),
        (b"x:1|c|@0.1", 10.0),
        (b"x:1|c\nx:3|c|@0.5\nx:1|c|@0.25", 11.0),
        (b"x:-2|c\nx:0.5|c", -1.5),
        (b"x:0|c", 0.0),
    ],
)
def test_counter_is_the_sum_of_value_over_rate(datagram: bytes, total: float) -> None:
    assert value_of(flush(datagram), "x") == pytest.approx(total)


def test_counter_sums_across_datagrams() -> None:
    assert value_of(flush(b"x:1|c", b"x:2|c\n", b"x:4|c|@0.5"), "x") == 11.0


def test_counter_is_summed_on_rollup() -> None:
    m = flush(b"x:1|c")["x"]
    assert m.get("attributes") == {"summarize_function": "sum"}


# --- gauges ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datagram", "value"),
    [
        (b"g:5|g", 5.0),
        (b"g:5|g\ng:7|g\ng:6|g", 6.0),
        (b"g:10|g\ng:+5|g\ng:-3|g", 12.0),
        (b"g:+5|g", 5.0),
        (b"g:-5|g", -5.0),
        (b"g:5|g\ng:-1|g\ng:7|g", 7.0),
        (b"g:5|g|@0.5", 5.0),
        (b"g:5|g\ng:+1|g|@0.1", 6.0),
    ],
)
def test_gauge_is_the_last_value_with_deltas_applied(datagram: bytes, value: float) -> None:
    assert value_of(flush(datagram), "g") == pytest.approx(value)


def test_gauge_deltas_carry_over_to_later_intervals() -> None:
    agg = Aggregator(Naming(GLOBAL))
    agg.ingest(b"g:10|g")
    assert value_of(by_name(convert(agg.swap())), "g") == 10.0
    agg.ingest(b"g:+1|g")
    assert value_of(by_name(convert(agg.swap())), "g") == 11.0
    assert convert(agg.swap()) == []  # a silent interval posts nothing ...
    agg.ingest(b"g:-2|g")
    assert value_of(by_name(convert(agg.swap())), "g") == 9.0  # ... and forgets nothing
    agg.ingest(b"g:3|g")
    assert value_of(by_name(convert(agg.swap())), "g") == 3.0


def test_gauge_deltas_are_per_series() -> None:
    agg = Aggregator(Naming(GLOBAL))
    agg.ingest(b"g:10|g|#a:1\ng:20|g|#a:2")
    agg.swap()
    agg.ingest(b"g:+1|g|#a:1\ng:+1|g|#a:2\nother:+1|g")
    got = {m["tags"].get("a", "-") + m["name"]: m.get("value") for m in convert(agg.swap())}
    assert got == {"1g": 11.0, "2g": 21.0, "-other": 1.0}


# --- sets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datagram", "count"),
    [
        (b"u:a|s", 1.0),
        (b"u:a|s\nu:b|s\nu:a|s", 2.0),
        (b"u:a|s\nu:A|s", 2.0),
        (b"u:a|s|@0.5\nu:a|s", 1.0),
        (b"u:1|s\nu:1.0|s", 2.0),
    ],
)
def test_set_counts_unique_members(datagram: bytes, count: float) -> None:
    assert value_of(flush(datagram), "u") == count


# --- timers, histograms, distributions ------------------------------------------------------


@pytest.mark.parametrize("kind", [b"ms", b"h", b"d"])
def test_summary_fields(kind: bytes) -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    datagram = b"\n".join(b"t:%s|%s" % (repr(v).encode(), kind) for v in values)
    m = flush(datagram)["t"]
    assert "value" not in m
    assert "attributes" not in m
    assert m.get("count") == len(values)
    assert m.get("sum") == pytest.approx(sum(values))
    assert m.get("min") == 1.0
    assert m.get("max") == 9.0
    assert m.get("last") == 6.0
    assert m.get("stddev") == pytest.approx(statistics.pstdev(values))


def test_a_sample_at_half_rate_counts_twice() -> None:
    m = flush(b"t:10|ms|@0.5")["t"]
    assert (m.get("count"), m.get("sum"), m.get("min"), m.get("max")) == (2, 20.0, 10.0, 10.0)
    assert m.get("stddev") == 0.0


def test_rate_scaled_summary_is_the_summary_of_the_repeated_samples() -> None:
    # 10 at rate 1, 20 at rate 0.5 (stands for two 20s), 30 at rate 0.25 (four 30s)
    m = flush(b"t:10|ms\nt:20|ms|@0.5\nt:30|h|@0.25")["t"]
    expanded = [10.0, 20.0, 20.0, 30.0, 30.0, 30.0, 30.0]
    assert m.get("count") == 7
    assert m.get("sum") == pytest.approx(sum(expanded))
    assert m.get("stddev") == pytest.approx(statistics.pstdev(expanded))
    assert (m.get("min"), m.get("max"), m.get("last")) == (10.0, 30.0, 30.0)


@pytest.mark.parametrize(
    ("datagram", "last"),
    [
        (b"t:1|ms|@0.5\nt:2|ms\nt:3|ms|@0.5", 3.0),
        (b"t:1|ms\nt:2|ms|@0.5\nt:3|ms", 3.0),
        (b"t:1|ms|@0.1\nt:2|ms|@0.5\nt:3|ms|@0.1\nt:4|ms", 4.0),
    ],
)
def test_last_is_the_last_value_received_whatever_its_rate(datagram: bytes, last: float) -> None:
    assert flush(datagram)["t"].get("last") == last


def test_timer_histogram_and_distribution_of_one_name_share_a_series() -> None:
    m = flush(b"t:1|ms\nt:2|h\nt:3|d")["t"]
    assert m.get("count") == 3


def test_percentiles_are_exact_nearest_rank() -> None:
    values = [(i * 37) % 100 + 1 for i in range(100)]  # 1..100, shuffled
    assert sorted(values) == list(range(1, 101))
    datagram = b"\n".join(b"t:%d|ms" % v for v in values)
    got = flush(datagram, percentiles=(50, 90, 99, 99.9, 100))
    assert {name: m.get("value") for name, m in got.items() if name != "t"} == {
        "t.p50": 50.0,
        "t.p90": 90.0,
        "t.p99": 99.0,
        "t.p99.9": 100.0,
        "t.p100": 100.0,
    }


@pytest.mark.parametrize(
    ("values", "percentile", "expected"),
    [
        ([5.0], 50, 5.0),
        ([5.0, 1.0, 3.0], 50, 3.0),
        ([5.0, 1.0, 3.0], 34, 3.0),
        ([5.0, 1.0, 3.0], 33, 1.0),
        ([5.0, 1.0, 3.0], 90, 5.0),
        ([4.0, 1.0, 3.0, 2.0], 50, 2.0),
        ([4.0, 1.0, 3.0, 2.0], 75, 3.0),
        ([4.0, 1.0, 3.0, 2.0], 76, 4.0),
    ],
)
def test_nearest_rank_table(values: list[float], percentile: float, expected: float) -> None:
    datagram = b"\n".join(b"t:%s|d" % repr(v).encode() for v in values)
    got = flush(datagram, percentiles=(percentile,))
    (name,) = set(got) - {"t"}
    assert value_of(got, name) == expected


def test_percentile_measurements_share_tags_time_and_period() -> None:
    got = flush(b"t:1|ms|#env:prod\nt:2|ms|#env:prod", percentiles=(90,))
    base, p90 = got["t"], got["t.p90"]
    assert p90["tags"] == base["tags"] == {"env": "prod", "host": "h"}
    assert (p90["time"], p90["period"]) == (base["time"], base["period"]) == (T0, PERIOD)


# --- series identity ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "datagram",
    [
        b"x:1|c|#a:1,b:2\nx:2|c|#b:2,a:1",
        b"x#a=1,b=2:1|c\nx:2|c|#b:2,a:1",
        b"x#b=2:1|c|#a:1\nx:2|c|#a:1,b:2",
        b"x:1|c|#A:1,b:2\nx:2|c|#b:2,a:1",
        b"x:1|c|#a:1,b:2|e:x\nx:2|c|c:abc|#b:2,a:1",
    ],
)
def test_tag_order_and_form_do_not_change_series_identity(datagram: bytes) -> None:
    got = by_series(run(datagram)[0])
    assert list(got) == [("x", (("a", "1"), ("b", "2"), ("host", "h")))]
    assert value_of(by_name(got.values()), "x") == 3.0


def test_different_tags_are_different_series() -> None:
    got = by_series(run(b"x:1|c|#a:1\nx:2|c|#a:2\nx:4|c")[0])
    assert {key: m.get("value") for key, m in got.items()} == {
        ("x", (("a", "1"), ("host", "h"))): 1.0,
        ("x", (("a", "2"), ("host", "h"))): 2.0,
        ("x", (("host", "h"),)): 4.0,
    }


# --- bad lines ------------------------------------------------------------------------------


def test_a_malformed_line_does_not_stop_the_others() -> None:
    datagram = b"a:1|c\nbad\nb:2|g\na:x|c\nc:1|q\na:4|c|@0\na:2|c\n"
    ms, snapshot = run(datagram)
    got = by_name(ms)
    assert value_of(got, "a") == 3.0
    assert value_of(got, "b") == 2.0
    assert set(got) == {"a", "b"}
    assert snapshot.rejected == {
        "missing type": 1,
        "bad value": 1,
        "unknown type": 1,
        "bad sample rate": 1,
    }
    assert snapshot.examples.keys() == snapshot.rejected.keys()
    # Lines whose shape is bad are kept whole; a bad value may be found later, on its own.
    assert snapshot.examples["missing type"] == b"bad"
    assert snapshot.examples["unknown type"] == b"c:1|q"
    assert snapshot.examples["bad sample rate"] == b"a:4|c|@0"
    assert snapshot.examples["bad value"] in datagram


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"x:abc|c", "bad value"),
        (b"x:nan|c", "non-finite value"),
        (b"x:inf|g", "non-finite value"),
        (b"x:1e999|ms", "non-finite value"),
        (b"x:|h", "bad value"),
        (b"x:|s", "empty set member"),
    ],
)
def test_bad_values_count_the_same_before_and_after_a_good_line(bad: bytes, reason: str) -> None:
    kind = bad.rpartition(b"|")[2]
    good = b"x:1|" + kind
    first_ms, first = run(bad + b"\n" + good)  # the bad value is the series' first line
    later_ms, later = run(good + b"\n" + bad + b"\n" + bad)  # ... and after the series exists
    assert first.rejected == {reason: 1}
    assert later.rejected == {reason: 2}
    assert first_ms == later_ms
    assert [m["name"] for m in first_ms] == ["x"]


def test_repeated_bad_line_is_counted_every_time() -> None:
    _, snapshot = run(b"x:1|zz\n" * 3, b"x:1|zz")
    assert snapshot.rejected == {"unknown type": 4}
    assert snapshot.examples == {"unknown type": b"x:1|zz"}


@pytest.mark.parametrize(
    "datagram",
    [b"x:1|c\n", b"x:1|c\r\n", b"\nx:1|c\n\n", b"x:1|c\r\n\r\n", b" \n\t\nx:1|c\n \r\n"],
)
def test_blank_lines_and_line_endings_are_not_rejections(datagram: bytes) -> None:
    ms, snapshot = run(datagram)
    assert snapshot.rejected == {}
    assert value_of(by_name(ms), "x") == 1.0


def test_crlf_lines_keep_their_tags_and_rates() -> None:
    got = by_series(run(b"x:1|c|@0.5|#a:b\r\nx:1|c|#a:b|@0.5\r\n")[0])
    assert {k: m.get("value") for k, m in got.items()} == {("x", (("a", "b"), ("host", "h"))): 4.0}


def test_a_colon_only_line_is_counted_as_rejected() -> None:
    """``:`` is not a blank line: like every malformed line it must be counted."""
    _, snapshot = run(b"x:1|c\n:\n")
    assert sum(snapshot.rejected.values()) == 1


@pytest.mark.parametrize(
    "datagram",
    [
        b"x:abc|c\nx:nan|c",
        b"x:nan|g\nx:inf|g",
        b"x:|s",
        b"x:junk|ms\nx:1e999|h",
        b"x:1|c|@0\nx:1|c|@2",
    ],
)
def test_a_series_with_only_bad_lines_is_not_posted(datagram: bytes) -> None:
    ms, snapshot = run(datagram, percentiles=(50,))
    assert ms == []
    assert sum(snapshot.rejected.values()) == datagram.count(b"\n") + 1


def test_lines_are_counted() -> None:
    assert run(b"a:1|c\nb:2|c")[1].lines == 2
    assert run(b"a:1|c\nb:2|c\n")[1].lines == 2
    assert run(b"a:1|c\r\nbad\r\n")[1].lines == 2
    assert run(b"a:1|c\n", b"b:1|c", b"c:1|c\nd:1|c")[1].lines == 4


# --- intervals ------------------------------------------------------------------------------


def test_swap_starts_a_fresh_interval() -> None:
    agg = Aggregator(Naming(GLOBAL))
    agg.ingest(b"c:5|c\nt:1|ms\nu:a|s\nbad")
    assert len(agg.current) == 3
    first = agg.swap()
    assert len(agg.current) == 0
    agg.ingest(b"c:1|c\nt:7|ms\nu:b|s")
    second = agg.swap()
    got = by_name(convert(second))
    assert second.rejected == {}
    assert second.lines == 3
    assert value_of(got, "c") == 1.0
    assert value_of(got, "u") == 1.0
    assert (got["t"].get("count"), got["t"].get("min")) == (1, 7.0)
    convert(first)
    assert first.rejected == {"missing type": 1}
    empty = agg.swap()
    assert (empty.series, empty.rejected, empty.examples, empty.lines) == ({}, {}, {}, 0)


@pytest.mark.parametrize("convert_first", [True, False])
def test_a_handed_over_snapshot_is_not_changed_by_later_lines(convert_first: bool) -> None:
    """Lines keep arriving while a flush converts the snapshot it was handed."""
    agg = Aggregator(Naming(GLOBAL))
    agg.ingest(b"c:5|c\nt:1|ms\nu:a|s\ng:1|g")
    first = agg.swap()
    before = convert(first, percentiles=(50,)) if convert_first else None
    agg.ingest(b"c:5|c\nt:100|ms\nu:b|s\ng:+1|g\nbad\nc:x|c")
    got = by_name(convert(first, percentiles=(50,)))
    assert {name: m.get("value", m.get("count")) for name, m in got.items()} == {
        "c": 5.0,
        "t": 1,
        "t.p50": 1.0,
        "u": 1.0,
        "g": 1.0,
    }
    assert first.rejected == {}
    if before is not None:
        assert list(got.values()) == before
    second = agg.swap()
    assert value_of(by_name(convert(second)), "g") == 2.0
    assert second.rejected == {"missing type": 1, "bad value": 1}


def test_measurements_carry_the_interval_time_and_period_and_global_tags() -> None:
    for m in run(b"c:1|c\ng:1|g\nt:1|ms\nu:a|s", percentiles=(90,))[0]:
        assert (m["time"], m["period"]) == (T0, PERIOD)
        assert m["tags"] == GLOBAL


# --- the naive model ------------------------------------------------------------------------

PERCENTILES = (50.0, 90.0, 99.9)
COUNTERS = ("c.hits", "c.errors")
GAUGES = ("g.temp", "g.queue")
SUMMARIES = ("t.lat", "t.size")
SETS = ("s.users",)
TAG_SETS: tuple[TagTuple, ...] = (
    (),
    (("env", "prod"),),
    (("env", "prod"), ("role", "web")),
    (("role", "web"), ("env", "prod")),
    (("env", "dev"),),
    (("Env", "Prod"),),
)
RATES = (None, 1.0, 0.5, 0.25, 0.1, 0.3)
BAD_LINES = (
    b"bad",
    b"c.hits:x|c",
    b"c.hits:1|c|@0",
    b"c.hits:1|c|@1.5",
    b"g.temp:nan|g",
    b"s.users:|s",
    b"c.hits:1|zz",
    b"t.lat:1e999|ms",
    b"t.lat:|ms",
    b":1|c",
)


def render_tags(tags: TagTuple, separator: str) -> bytes:
    return ",".join(f"{k}{separator}{v}" for k, v in tags).encode()


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(("c", "g", "ms", "h", "d", "s", "bad", "blank")))
    if kind == "bad":
        return draw(st.sampled_from(BAD_LINES))
    if kind == "blank":
        return draw(st.sampled_from((b"", b" ", b"\t")))
    names = {"c": COUNTERS, "g": GAUGES, "s": SETS}.get(kind, SUMMARIES)
    name = draw(st.sampled_from(names)).encode()
    tags = draw(st.sampled_from(TAG_SETS))
    if kind == "s":
        value = draw(st.sampled_from((b"alice", b"bob", b"carol", b"42")))
    else:
        number = draw(
            st.one_of(
                st.integers(-1000, 1000),
                st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
            )
        )
        value = repr(number).encode()
        if kind == "g" and number >= 0 and draw(st.booleans()):
            value = b"+" + value
    librato = bool(tags) and draw(st.booleans())
    line = name + (b"#" + render_tags(tags, "=") if librato else b"")
    line += b":" + value + b"|" + kind.encode()
    rate = draw(st.sampled_from(RATES))
    if rate is not None:
        line += b"|@" + repr(rate).encode()
    if tags and not librato:
        line += b"|#" + render_tags(tags, ":")
    return line + draw(st.sampled_from((b"", b"|c:abc123", b"|e:entity", b"|card:low")))


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    separator = draw(st.sampled_from((b"\n", b"\r\n")))
    body = separator.join(draw(st.lists(lines(), max_size=10)))
    return body + (separator if draw(st.booleans()) else b"")


class NaiveModel:
    """Keeps every value of every series and computes each field the obvious way."""

    def __init__(self) -> None:
        self.gauges: dict[SeriesId, float] = {}

    def interval(self, datagrams: Iterable[bytes]) -> tuple[dict[SeriesId, dict[str, object]], int]:
        """Expected measurements (as plain dicts) and the number of rejected lines."""
        samples: dict[tuple[Kind, SeriesId], list[Sample]] = {}
        rejected = 0
        for datagram in datagrams:
            for line in datagram.split(b"\n"):
                if not line.strip():
                    continue
                try:
                    sample = parse_line(line)
                except ParseError:
                    rejected += 1
                    continue
                tags = dict(GLOBAL)
                tags.update((k.lower(), v.lower()) for k, v in sample.shape.tags)
                series = (sample.shape.name, tuple(sorted(tags.items())))
                samples.setdefault((sample.shape.kind, series), []).append(sample)
        expected: dict[SeriesId, dict[str, object]] = {}
        for (kind, series), kept in samples.items():
            base: dict[str, object] = {
                "name": series[0],
                "tags": dict(series[1]),
                "time": T0,
                "period": PERIOD,
            }
            if kind is Kind.SUMMARY:
                expected.update(self.summary(series, base, kept))
            else:
                expected[series] = {**base, **self.single(kind, series, kept)}
        return expected, rejected

    def single(self, kind: Kind, series: SeriesId, kept: list[Sample]) -> dict[str, object]:
        if kind is Kind.COUNTER:
            total = sum(number(s) / s.shape.rate for s in kept)
            return {"value": total, "attributes": {"summarize_function": "sum"}}
        if kind is Kind.SET:
            return {"value": float(len({s.value for s in kept}))}
        value = self.gauges.get(series, 0.0)
        for s in kept:
            value = value + number(s) if s.delta else number(s)
        self.gauges[series] = value
        return {"value": value}

    def summary(
        self, series: SeriesId, base: dict[str, object], kept: list[Sample]
    ) -> dict[SeriesId, dict[str, object]]:
        values = [number(s) for s in kept]
        weights = [1.0 / s.shape.rate for s in kept]
        count = sum(weights)
        total = sum(v / s.shape.rate for v, s in zip(values, kept, strict=True))
        mean = total / count
        squares = sum(w * (v - mean) ** 2 for v, w in zip(values, weights, strict=True))
        # A whole count, and a sum within count x [min, max]: a self-consistent summary.
        whole = max(1, round(count))
        consistent = min(max(total, whole * min(values)), whole * max(values))
        out = {
            series: {
                **base,
                "count": whole,
                "sum": consistent,
                "min": min(values),
                "max": max(values),
                "last": values[-1],
                "stddev": math.sqrt(squares / count),
            }
        }
        ordered = sorted(values)
        for p in PERCENTILES:
            name = f"{series[0]}.p{p:g}"
            rank = max(1, math.ceil(p / 100 * len(ordered)))
            out[(name, series[1])] = {**base, "name": name, "value": ordered[rank - 1]}
        return out


def number(s: Sample) -> float:
    assert isinstance(s.value, float)
    return s.value


def assert_same(actual: Mapping[str, object], expected: Mapping[str, object]) -> None:
    assert set(actual) == set(expected), (actual, expected)
    for field, want in expected.items():
        got = actual[field]
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=1e-9, abs=1e-6), (field, actual, expected)
        else:
            assert got == want, (field, actual, expected)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(datagrams(), max_size=4), min_size=1, max_size=3),
    st.sampled_from((1, 3, DEFAULT_SHAPE_LIMIT)),
)
def test_aggregator_equals_a_naive_model(intervals: list[list[bytes]], shape_limit: int) -> None:
    agg = Aggregator(Naming(GLOBAL), shape_limit=shape_limit)
    model = NaiveModel()
    for received in intervals:
        for datagram in received:
            agg.ingest(datagram)
        snapshot = agg.swap()
        actual = by_series(convert(snapshot, PERCENTILES))
        expected, rejected = model.interval(received)
        assert sorted(actual) == sorted(expected)
        for key, measurement in actual.items():
            assert_same(measurement, expected[key])
        assert sum(snapshot.rejected.values()) == rejected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=5))
def test_ingest_never_raises_on_arbitrary_bytes(received: list[bytes]) -> None:
    agg = Aggregator(Naming(GLOBAL), shape_limit=4)
    for datagram in received:
        agg.ingest(datagram)
    snapshot = agg.swap()
    assert sum(snapshot.rejected.values()) <= snapshot.lines
    assert set(snapshot.examples) == set(snapshot.rejected)


FRAGMENTS = (
    b":", b"|", b"@", b"#", b",", b"=", b"\n", b"\r", b" ", b"c", b"g", b"ms", b"h", b"s",
    b"d", b"x", b"0", b"1", b"-", b"+", b".", b"e", b"0.5", b"nan", b"1e999", b"1e308",
    b"5e-324", b"\xff", b"\x00", b"name", b"k", b"v",
)  # fmt: skip
near_valid_datagrams = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(near_valid_datagrams, max_size=5))
def test_ingest_never_raises_on_near_valid_datagrams(received: list[bytes]) -> None:
    agg = Aggregator(Naming(GLOBAL))
    for datagram in received:
        agg.ingest(datagram)
    snapshot = agg.swap()
    assert sum(snapshot.rejected.values()) <= snapshot.lines


def test_a_set_keeps_at_most_its_member_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accumulators, "MAX_SET_MEMBERS", 3)
    measurements, snapshot = run(b"\n".join(b"s:m%d|s" % i for i in range(5)) + b"\ns:m0|s")
    assert [m["value"] for m in measurements] == [3.0]
    assert snapshot.rejected == {"set too large": 2}
