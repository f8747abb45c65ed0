"""Every StatsD dialect clients send: DogStatsD 1.1/1.2 fields, events, service checks,
Graphite and InfluxDB tags in names."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statsd_ao.core.aggregator import Aggregator, Snapshot
from statsd_ao.core.events import Event, ServiceCheck, parse_event, parse_service_check
from statsd_ao.core.measurements import Measurement
from statsd_ao.core.protocol import Kind, ParseError, TagTuple, split_multi_metric
from statsd_ao.core.sanitize import Naming
from tests.core import converting
from tests.core.grammar import parse_line


def aggregate(datagram: bytes, **options: str) -> tuple[list[Measurement], Snapshot]:
    aggregator = Aggregator(Naming({"host": "h"}), **options)  # type: ignore[arg-type]
    aggregator.ingest(datagram)
    snapshot = aggregator.swap()
    return converting.convert(snapshot.series.items(), 0, 10, [50])[0], snapshot


def values(measurements: list[Measurement]) -> dict[str, float]:
    return {m["name"]: m.get("value", m.get("sum", 0.0)) for m in measurements}


@pytest.mark.parametrize(
    ("line", "name", "expected"),
    [
        (b"h:1:2:3|h", "h", 6.0),  # summary sum
        (b"c:1:2|c", "c", 3.0),
        (b"c:1:2|c|@0.5", "c", 6.0),
        (b"g:5:7|g", "g", 7.0),
        (b"s:a:b|s", "s", 1.0),  # a set member keeps its colon: one member "a:b"
    ],
)
def test_multi_value_lines(line: bytes, name: str, expected: float) -> None:
    got, snapshot = aggregate(line)
    assert values(got)[name] == expected
    assert not snapshot.rejected


def test_multi_value_gauge_deltas_apply_in_order() -> None:
    got, _ = aggregate(b"g:10|g\ng:+5:-2:+1|g")
    assert values(got)["g"] == 14.0


def test_multi_value_with_one_bad_value_keeps_the_others() -> None:
    got, snapshot = aggregate(b"c:1:x:2|c")
    assert values(got)["c"] == 3.0
    assert snapshot.rejected == {"bad value": 1}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"a:1|c:2|c", {"a": 3.0}),
        (b"a:1|c:250|ms", {"a": 250.0}),  # the timer's sum (the counter is a second series)
        (b"a:1|c|@0.1:5|c", {"a": 15.0}),  # each segment keeps its own rate
        (b"g:10|g:+5|g:-2|g", {"g": 13.0}),  # deltas in order
        (b"u:alice|s:bob|s:alice|s", {"u": 2.0}),
        (b"a:1|c:x|c", {"a": 1.0}),  # one bad value: the rest count
    ],
)
def test_etsy_multi_metric_lines(line: bytes, expected: dict[str, float]) -> None:
    got, _ = aggregate(line)
    assert {name: values(got)[name] for name in expected} == expected


def test_a_multi_metric_line_with_mixed_types_makes_one_series_per_type() -> None:
    _, snapshot = aggregate(b"req:1|c:250|ms:7|g")
    assert sorted(kind.value for kind, _, _ in snapshot.series) == ["c", "g", "ms"]
    assert not snapshot.rejected
    assert snapshot.lines == 1


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"a:1|c:2|zz", "unknown type"),  # one unknown type: not multi-metric, rejected whole
        (b"a:1|c:2", "unknown type"),  # the last value has no type
        (b"a:1|c:2|c|#k:v", "unknown type"),  # DogStatsD tags: never multi-metric
    ],
)
def test_lines_that_are_not_multi_metric_are_rejected_whole(line: bytes, reason: str) -> None:
    got, snapshot = aggregate(line)
    assert got == []
    assert snapshot.rejected == {reason: 1}


@pytest.mark.parametrize(
    ("line", "split"),
    [
        (b"a:1|c:2|ms", [b"a:1|c", b"a:2|ms"]),
        (b"a:1|c|@0.5:2|g", [b"a:1|c|@0.5", b"a:2|g"]),
        (b"lat:12:15:9|ms", None),  # DogStatsD 1.1 multi-value: only the last carries a type
        (b"s:a:b|s", None),  # a set member with a colon
        (b"a:1|c|#env:prod", None),
        (b"a:1|c", None),
    ],
)
def test_the_multi_metric_rule(line: bytes, split: list[bytes] | None) -> None:
    assert split_multi_metric(line) == split


@given(
    st.lists(
        st.tuples(st.integers(0, 1000), st.sampled_from([b"c", b"g", b"ms", b"h", b"d", b"s"])),
        min_size=2,
        max_size=6,
    )
)
def test_multi_metric_is_the_same_as_one_line_per_value(parts: list[tuple[int, bytes]]) -> None:
    segments = [b"%d|%s" % (number, kind) for number, kind in parts]
    _, together = aggregate(b"m:" + b":".join(segments))
    _, apart = aggregate(b"\n".join(b"m:" + segment for segment in segments))
    assert measured(together) == measured(apart)


@given(st.sampled_from([b"c", b"g", b"ms", b"h", b"d"]), st.lists(st.integers(0, 99), min_size=2))
def test_dogstatsd_multi_value_is_never_multi_metric(kind: bytes, numbers: list[int]) -> None:
    line = b"m:" + b":".join(b"%d" % n for n in numbers) + b"|" + kind
    assert split_multi_metric(line) is None


def measured(snapshot: Snapshot) -> list[Measurement]:
    return sorted(
        converting.convert(snapshot.series.items(), 0, 10, [50])[0],
        key=lambda m: (m["name"], sorted(m)),
    )


def test_parse_line_returns_every_value() -> None:
    sample = parse_line(b"t:1:2.5:3|ms")
    assert sample.values == ((1.0, False), (2.5, False), (3.0, False))
    assert parse_line(b"s:a:b|s").values == ((b"a:b", False),)


@pytest.mark.parametrize(
    ("line", "tags"),
    [
        (b"x;env=prod;az=b:1|c", {"env": "prod", "az": "b"}),  # Graphite (etsy statsd 0.9)
        (b"x,env=prod,az=b:1|c", {"env": "prod", "az": "b"}),  # InfluxDB
        (b"x#env=prod:1|c", {"env": "prod"}),  # Librato / AppOptics backend
        (b"x;env=prod:1|c|#az:b", {"env": "prod", "az": "b"}),  # mixed with DogStatsD
        (b"x;canary:1|c", {"canary": "true"}),
    ],
)
def test_tags_written_into_the_name(line: bytes, tags: dict[str, str]) -> None:
    sample = parse_line(line)
    assert sample.shape.name == "x"
    assert dict(sample.shape.tags) == tags


@pytest.mark.parametrize(
    ("line", "name", "tags"),
    [
        (b"foo.[env=prod,az=b]test:1|c", "foo.test", {"env": "prod", "az": "b"}),
        (b"foo.test[env=prod]:1|c", "foo.test", {"env": "prod"}),
        (b"[env=prod]foo.test:1|c", "foo.test", {"env": "prod"}),
        (b"foo.[env=prod,canary,=x,k=]test:1|c", "foo.test", {"env": "prod"}),  # skipped items
        (b"foo.[env=prod]test:1|c|#az:b", "foo.test", {"env": "prod", "az": "b"}),
        (b"foo.[]test:1|c", "foo.test", {}),
    ],
)
def test_signalfx_dimensions_in_brackets(line: bytes, name: str, tags: dict[str, str]) -> None:
    sample = parse_line(line)
    assert sample.shape.name == name
    assert dict(sample.shape.tags) == tags


@pytest.mark.parametrize(
    "line",
    [b"foo.[env=prod:1|c", b"foo.env=prod]x:1|c", b"a]b[c=d:1|c", b"a[x=1][y=2]b:1|c"],
)
def test_unbalanced_brackets_are_refused_not_guessed(line: bytes) -> None:
    with pytest.raises(ParseError, match="unbalanced brackets"):
        parse_line(line)


_WORD = st.text("abcdefghij0123456789_-", min_size=1, max_size=8)


@given(
    st.lists(_WORD, min_size=1, max_size=4),
    st.dictionaries(_WORD, _WORD, max_size=4),
    st.data(),
)
def test_a_bracket_group_anywhere_gives_the_same_name_and_tags(
    parts: list[str], dimensions: dict[str, str], data: st.DataObject
) -> None:
    name = ".".join(parts)
    at = data.draw(st.integers(0, len(name)))
    group = "[" + ",".join(f"{k}={v}" for k, v in dimensions.items()) + "]"
    sample = parse_line(f"{name[:at]}{group}{name[at:]}:1|c".encode())
    assert sample.shape.name == name
    assert dict(sample.shape.tags) == dimensions


@pytest.mark.parametrize(
    "tail",
    [b"|c:abc123", b"|e:entity", b"|card:high", b"|xyz", b"|c:", b"|"],
)
def test_newer_fields_never_fail_a_line(tail: bytes) -> None:
    got, snapshot = aggregate(b"x:1|c|#a:b" + tail)
    assert values(got) == {"x": 1.0}
    assert not snapshot.rejected


def test_container_id_becomes_a_tag_when_asked() -> None:
    got, _ = aggregate(b"x:1|c|c:abc123", container_tag="container_id")
    assert got[0]["tags"] == {"container_id": "abc123", "host": "h"}
    plain, _ = aggregate(b"x:1|c|c:abc123")
    assert plain[0]["tags"] == {"host": "h"}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"_e{5,4}:Hello|text", Event("Hello", "text")),
        (b"_e{5,6}:Hello|a|b|cd", Event("Hello", "a|b|cd")),  # lengths, not separators
        (b"_e{2,6}:hi|l1\\nl2", Event("hi", "l1\nl2")),
        (
            b"_e{6,2}:deploy|ok|d:1700000000|h:web1|p:low|t:success|s:ci|#env:prod,canary",
            Event(
                "deploy",
                "ok",
                1700000000,
                "web1",
                "low",
                "success",
                "ci",
                (("env", "prod"), ("canary", "true")),
            ),
        ),
        ("_e{6,5}:héllo|ünï".encode(), Event("héllo", "ünï")),  # UTF-8 byte lengths
    ],
)
def test_events(line: bytes, expected: Event) -> None:
    assert parse_event(line) == expected


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"_e{5,4}:Hell|text", "bad event lengths"),
        (b"_e{5,9}:Hello|text", "bad event lengths"),
        (b"_e{5,2}:Hello|text", "bad event lengths"),
        (b"_e{x,4}:Hello|text", "bad event header"),
        (b"_e{5}:Hello|text", "bad event header"),
        (b"_e{5,4}Hello|text", "bad event header"),
        (b"_e{5,4}:Hello|text|d:soon", "bad timestamp"),
    ],
)
def test_malformed_events(line: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_event(line)
    assert caught.value.reason == reason
    _, snapshot = aggregate(line + b"\nok:1|c")
    assert snapshot.rejected == {reason: 1}
    assert not snapshot.events


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"_sc|db.up|0", ServiceCheck("db.up", 0)),
        (
            b"_sc|db.up|2|d:1700000000|h:db1|#env:prod|m:down: disk | full",
            ServiceCheck("db.up", 2, 1700000000, "db1", "down: disk | full", (("env", "prod"),)),
        ),
    ],
)
def test_service_checks(line: bytes, expected: ServiceCheck) -> None:
    assert parse_service_check(line) == expected


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"_sc|db.up|4", "unknown service check status"),
        (b"_sc|db.up|ok", "unknown service check status"),
        (b"_sc|db.up", "bad service check"),
        (b"_sc||0", "bad service check"),
        (b"_sc|db.up|1|d:yesterday", "bad timestamp"),
    ],
)
def test_malformed_service_checks(line: bytes, reason: str) -> None:
    _, snapshot = aggregate(line)
    assert snapshot.rejected == {reason: 1}


def test_service_check_becomes_a_gauge_of_its_status() -> None:
    got, _ = aggregate(b"_sc|db.up|0|#env:prod\n_sc|db.up|2|h:db1|#env:prod|m:disk full")
    by_host = {m["tags"]["host"]: m for m in got}
    assert by_host["h"]["value"] == 0.0 and by_host["h"]["tags"]["env"] == "prod"
    assert by_host["db1"]["value"] == 2.0  # the check's host tag wins over the global one


def test_events_are_kept_for_the_interval_and_bounded() -> None:
    datagram = b"\n".join(b"_e{1,1}:t|%d" % (i % 10) for i in range(1005))
    _, snapshot = aggregate(datagram)
    assert len(snapshot.events) == 1000
    assert snapshot.rejected == {"too many events in one interval": 5}


_text = st.text(
    st.characters(blacklist_categories=["Cs", "Cc", "Zl", "Zp"], blacklist_characters="\\"),
    min_size=1,
    max_size=20,
).filter(lambda s: s == s.strip())
_key = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
_tags = st.lists(st.tuples(_key, _key), max_size=4).map(tuple)


@given(_text, _text, st.none() | st.integers(0, 2**31), st.none() | _key, _tags)
def test_event_round_trip(
    title: str, text: str, ts: int | None, host: str | None, tags: tuple[tuple[str, str], ...]
) -> None:
    t, x = title.encode(), text.encode()
    line = b"_e{%d,%d}:%s|%s" % (len(t), len(x), t, x)
    line += b"|d:%d" % ts if ts is not None else b""
    line += b"|h:" + host.encode() if host else b""
    line += b"|#" + ",".join(f"{k}:{v}" for k, v in tags).encode() if tags else b""
    assert parse_event(line) == Event(title, text, ts, host or None, tags=tags)


@given(_key, st.integers(0, 3), _tags, st.none() | _text)
def test_service_check_round_trip(
    name: str, status: int, tags: tuple[tuple[str, str], ...], message: str | None
) -> None:
    line = f"_sc|{name}|{status}".encode()
    line += b"|#" + ",".join(f"{k}:{v}" for k, v in tags).encode() if tags else b""
    line += b"|m:" + message.encode() if message is not None else b""
    assert parse_service_check(line) == ServiceCheck(name, status, tags=tags, message=message)


@given(
    st.sampled_from([b"c", b"g", b"ms", b"h", b"d"]),
    st.lists(st.tuples(st.integers(-1000, 1000), st.booleans()), min_size=1, max_size=6),
)
def test_multi_value_round_trip(kind: bytes, numbers: list[tuple[int, bool]]) -> None:
    # Signs as clients write them: "-5", "5", and "+5" (explicit); on a gauge a sign makes a
    # delta, on every other kind it is only the number's sign.
    texts = [f"+{n}" if plus and n >= 0 else str(n) for n, plus in numbers]
    line = b"m:" + ":".join(texts).encode() + b"|" + kind
    sample = parse_line(line)
    expected = [(float(int(text)), kind == b"g" and text[0] in "+-") for text in texts]
    assert list(sample.values) == expected
    assert sample.shape.kind is not Kind.SET


@pytest.mark.parametrize(
    ("line", "values"),
    [
        (b"m:-5:+3:4|g", [(-5.0, True), (3.0, True), (4.0, False)]),
        (b"m:-5:+3:4|c", [(-5.0, False), (3.0, False), (4.0, False)]),
        (b"m:-2.5:-0|ms", [(-2.5, False), (-0.0, False)]),
    ],
)
def test_multi_value_signs(line: bytes, values: list[tuple[float, bool]]) -> None:
    assert list(parse_line(line).values) == values


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("field", "timestamp"), [(b"|T1700000000", 1700000000), (b"|T0", 0), (b"", None)]
)
def test_timestamp_field_is_parsed(field: bytes, timestamp: int | None) -> None:
    assert parse_line(b"x:1|c" + field).shape.timestamp == timestamp


@pytest.mark.parametrize("field", [b"|T", b"|Tsoon", b"|T-5", b"|T1.5"])
def test_bad_timestamp_rejects_the_line(field: bytes) -> None:
    with pytest.raises(ParseError, match="bad timestamp"):
        parse_line(b"x:1|c" + field)


def test_timestamped_samples_go_to_the_interval_of_their_timestamp() -> None:
    now = 1_700_000_007.0  # the current interval started at ...000
    aggregator = Aggregator(Naming({"host": "h"}), interval=10, clock=Clock(now))
    aggregator.ingest(
        b"\n".join(
            [
                b"x:1|c|T1700000003",  # this interval
                b"x:2|c",  # no timestamp: this interval
                b"x:4|c|T1699999995",  # the previous interval
                b"x:8|c|T1699999700",  # five minutes ago
                b"x:16|c|T1699990000",  # too old
                b"x:32|c|T1700000300",  # in the future
                b"x:64|c|T1700000030",  # slightly ahead of our clock: this interval
            ]
        )
    )
    snapshot = aggregator.swap()
    current = converting.convert(snapshot.series.items(), 1_700_000_000, 10)[0]
    assert [m["value"] for m in current] == [1 + 2 + 64]
    past = {
        stamp: [m["value"] for m in converting.convert(table.items(), stamp, 10)[0]]
        for stamp, table in snapshot.past.items()
    }
    assert past == {1_699_999_990: [4.0], 1_699_999_700: [8.0]}
    assert snapshot.rejected == {"timestamp too old": 1, "timestamp in the future": 1}


def test_a_timestamped_gauge_of_a_past_interval_does_not_disturb_the_current_one() -> None:
    aggregator = Aggregator(Naming({"host": "h"}), interval=10, clock=Clock(1_700_000_007.0))
    aggregator.ingest(b"g:10|g")
    aggregator.swap()
    aggregator.ingest(b"g:+1|g|T1699999995\ng:+5|g")
    snapshot = aggregator.swap()
    current = converting.convert(snapshot.series.items(), 0, 10)[0]
    assert [m["value"] for m in current] == [15.0]  # 10 carried over, plus 5
    [past] = snapshot.past.values()
    assert [m["value"] for m in converting.convert(past.items(), 0, 10)[0]] == [1.0]


def test_a_timestamped_sample_between_tick_and_swap_joins_the_closing_interval() -> None:
    """The tick at ...010 has passed but the swap has not happened yet: a sample of ...009
    belongs to the interval about to be posted as ...000, not to a second ...000 series."""
    clock = Clock(1_700_000_005.0)
    aggregator = Aggregator(Naming({"host": "h"}), interval=10, clock=clock)
    clock.now = 1_700_000_010.002
    aggregator.ingest(b"req:5|c\nreq:1|c|T1700000009")
    snapshot = aggregator.swap()
    assert not snapshot.past
    assert [m["value"] for m in converting.convert(snapshot.series.items(), 0, 10)[0]] == [6.0]


def test_an_event_length_of_thousands_of_digits_is_a_bad_line_not_a_parser_bug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    line = b"_e{" + b"9" * 5000 + b",1}:a|b"
    with pytest.raises(ParseError, match="bad event lengths"):
        parse_event(line)
    _, snapshot = aggregate(b"\n".join([line] * 3000))
    assert snapshot.rejected == {"bad event lengths": 3000}
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


class BuggyNaming(Naming):
    """Naming with a bug: a name starting with ``bug`` raises a plain ValueError."""

    def series(
        self, name: str, tags: Iterable[tuple[str, str]], kind: str = "c"
    ) -> tuple[str, TagTuple]:
        if name.startswith("bug"):
            raise ValueError("a bug in naming")
        return super().series(name, tags, kind)


def test_a_parser_bug_is_counted_per_line_and_logged_once_a_while(
    caplog: pytest.LogCaptureFixture,
) -> None:
    aggregator = Aggregator(BuggyNaming({"host": "h"}))
    lines = [b"bug%d:1|c" % i for i in range(1500)] + [b"bug:1|c"] * 1500 + [b"ok:1|c"]
    aggregator.ingest(b"\n".join(lines))
    snapshot = aggregator.swap()
    assert snapshot.rejected == {"unparsable line": 3000}
    assert list(snapshot.series) == [(Kind.COUNTER, "ok", (("host", "h"),))]
    bugs = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(bugs) == 1
    assert "parser bug" in bugs[0].getMessage() and bugs[0].exc_info is not None


@pytest.mark.parametrize(
    ("date", "reason"),
    [
        (b"1", "timestamp too old"),  # 1970
        (b"1699999000", "timestamp too old"),  # 1,007 s ago: older than any |T sample kept
        (b"99999999999", "timestamp in the future"),  # the year 5138
        (b"1700000068", "timestamp in the future"),  # 61 s ahead
    ],
)
def test_event_dates_are_bounded_as_timestamped_samples_are(date: bytes, reason: str) -> None:
    aggregator = Aggregator(Naming({"host": "h"}), interval=10, clock=Clock(1_700_000_007.0))
    aggregator.ingest(b"_e{2,2}:hi|ok|d:" + date + b"\nx:1|c|T" + date)
    snapshot = aggregator.swap()
    assert snapshot.events == []
    assert snapshot.rejected == {reason: 2}


@pytest.mark.parametrize("date", [1_699_999_407, 1_700_000_007, 1_700_000_067])
def test_event_dates_within_the_bounds_are_kept(date: int) -> None:
    aggregator = Aggregator(Naming({"host": "h"}), interval=10, clock=Clock(1_700_000_007.0))
    aggregator.ingest(b"_e{2,2}:hi|ok|d:%d" % date)
    assert [event.timestamp for event in aggregator.swap().events] == [date]
