"""The StatsD / DogStatsD / Librato-tag line grammar (`statsd_ao.core.protocol`).

Tables for the grammar; Hypothesis for the fuzz contract: `parse_line` raises nothing but
`ParseError` on any bytes, and whatever it accepts is a well-formed sample.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsd_ao.core.protocol import (
    PRESENCE_VALUE,
    Kind,
    ParseError,
    Sample,
    Shape,
)
from tests.core.grammar import iter_lines, parse_line

NO_TAGS: tuple[tuple[str, str], ...] = ()


def sample(
    kind: Kind,
    name: str,
    value: float | bytes,
    *,
    tags: tuple[tuple[str, str], ...] = NO_TAGS,
    rate: float = 1.0,
    delta: bool = False,
) -> Sample:
    return Sample(Shape(kind, name, tags, rate), value, delta)


# --- every type -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"hits:1|c", sample(Kind.COUNTER, "hits", 1.0)),
        (b"hits:-2.5e3|c", sample(Kind.COUNTER, "hits", -2500.0)),
        (b"temp:21.5|g", sample(Kind.GAUGE, "temp", 21.5)),
        (b"lat:320|ms", sample(Kind.SUMMARY, "lat", 320.0)),
        (b"size:12|h", sample(Kind.SUMMARY, "size", 12.0)),
        (b"dist:0.25|d", sample(Kind.SUMMARY, "dist", 0.25)),
        (b"users:alice|s", sample(Kind.SET, "users", b"alice")),
        (b"app.req-count_total:1|c", sample(Kind.COUNTER, "app.req-count_total", 1.0)),
    ],
)
def test_every_type_parses(line: bytes, expected: Sample) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    ("line", "value", "delta"),
    [
        (b"g:5|g", 5.0, False),
        (b"g:+5|g", 5.0, True),
        (b"g:-5|g", -5.0, True),
        (b"g:+0|g", 0.0, True),
        (b"g:-0|g", 0.0, True),
        (b"g:+1.5e2|g", 150.0, True),
        (b"g:0|g", 0.0, False),
    ],
)
def test_gauge_sign_marks_a_delta(line: bytes, value: float, delta: bool) -> None:
    parsed = parse_line(line)
    assert parsed.value == value
    assert parsed.delta is delta


@pytest.mark.parametrize("line", [b"c:-5|c", b"c:+5|c", b"t:-5|ms", b"h:+5|h", b"d:-1|d"])
def test_sign_is_not_a_delta_outside_gauges(line: bytes) -> None:
    assert parse_line(line).delta is False


@pytest.mark.parametrize(
    ("line", "member"),
    [
        (b"u:alice|s", b"alice"),
        (b"u:42|s", b"42"),
        (b"u:nan|s", b"nan"),
        (b"u:inf|s", b"inf"),
        (b"u:two words|s", b"two words"),
        (b"u:\xc3\xbc|s", b"\xc3\xbc"),
        (b"u:a:b|s", b"a:b"),
    ],
)
def test_set_members_are_any_non_empty_bytes(line: bytes, member: bytes) -> None:
    assert parse_line(line).value == member


# --- sample rates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "rate"),
    [(b"@0.5", 0.5), (b"@1", 1.0), (b"@1.0", 1.0), (b"@.25", 0.25), (b"@1e-3", 0.001)],
)
def test_valid_sample_rates(field: bytes, rate: float) -> None:
    assert parse_line(b"hits:1|c|" + field).shape.rate == rate


@pytest.mark.parametrize(
    "field",
    [
        b"@0",
        b"@0.0",
        b"@-0",
        b"@1.5",
        b"@-1",
        b"@-0.5",
        b"@nan",
        b"@inf",
        b"@junk",
        b"@",
        b"@1.0.0",
    ],
)
def test_invalid_sample_rates_reject_the_line(field: bytes) -> None:
    with pytest.raises(ParseError) as caught:
        parse_line(b"hits:1|c|" + field)
    assert caught.value.reason == "bad sample rate"


def test_rate_defaults_to_one() -> None:
    assert parse_line(b"hits:1|c").shape.rate == 1.0


# --- tags -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "tags"),
    [
        (b"x:1|c|#k:v,k2:v2", (("k", "v"), ("k2", "v2"))),
        (b"x:1|c|#url:http://h:80/p", (("url", "http://h:80/p"),)),
        (b"x:1|c|#canary", (("canary", PRESENCE_VALUE),)),
        (b"x:1|c|#canary,env:prod", (("canary", "true"), ("env", "prod"))),
        (b"x:1|c|#a:b,,c:d", (("a", "b"), ("c", "d"))),
        (b"x:1|c|#a:b,", (("a", "b"),)),
        (b"x:1|c|#,a:b", (("a", "b"),)),
        (b"x:1|c|#", ()),
        (b"x:1|c|#:orphan", ()),
        (b"x:1|c|#a:b|#c:d", (("a", "b"), ("c", "d"))),
        (b"x:1|c|@0.5|#a:b", (("a", "b"),)),
        (b"x:1|c|#a:b|@0.5", (("a", "b"),)),
        (b"x:1|c|#Env:Prod", (("Env", "Prod"),)),
        (b"x:1|c|#a:b\r", (("a", "b"),)),
        # Librato / statsd-appoptics-backend tags in the name
        (b"x#k=v,k2=v2:1|c", (("k", "v"), ("k2", "v2"))),
        (b"x#canary:1|c", (("canary", "true"),)),
        (b"x#a=b,,c=d:1|c", (("a", "b"), ("c", "d"))),
        (b"x#k=v:1|c|#d:e", (("k", "v"), ("d", "e"))),
    ],
)
def test_tags(line: bytes, tags: tuple[tuple[str, str], ...]) -> None:
    parsed = parse_line(line)
    assert parsed.shape.name == "x"
    assert parsed.shape.tags == tags


def test_tag_order_is_kept_as_sent() -> None:
    # Series identity sorts tags later (sanitize.Naming); the parser reports them as sent.
    assert parse_line(b"x:1|c|#b:2,a:1").shape.tags == (("b", "2"), ("a", "1"))


# --- unknown extra fields, line endings -----------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [b"|c:abc123", b"|card:low", b"|xfoo", b"|", b"|e:1|c:abc"],
)
def test_unknown_extra_fields_are_ignored(extra: bytes) -> None:
    line = b"x:2|ms|@0.5|#a:b" + extra
    assert parse_line(line) == sample(Kind.SUMMARY, "x", 2.0, tags=(("a", "b"),), rate=0.5)


def test_unknown_field_before_rate_and_tags() -> None:
    line = b"x:2|c|c:abc123|@0.5|#a:b"
    assert parse_line(line) == sample(Kind.COUNTER, "x", 2.0, tags=(("a", "b"),), rate=0.5)


@pytest.mark.parametrize("ending", [b"\r", b" ", b"\t", b"\r "])
def test_trailing_whitespace_and_cr_are_tolerated(ending: bytes) -> None:
    assert parse_line(b"x:1|c" + ending) == sample(Kind.COUNTER, "x", 1.0)
    assert parse_line(b"x:1|c|@0.5" + ending).shape.rate == 0.5


def test_iter_lines_skips_blank_lines_and_tolerates_crlf() -> None:
    datagram = b"a:1|c\r\nb:2|c\r\n\r\n\n  \nc:3|c\n"
    lines = iter_lines(datagram)
    assert lines == [b"a:1|c\r", b"b:2|c\r", b"c:3|c"]
    assert [parse_line(line).shape.name for line in lines] == ["a", "b", "c"]


# --- rejections -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"hits", "missing type"),
        (b"hits:1", "missing type"),
        (b"hits:1|", "missing type"),
        (b"hits:1||@0.5", "missing type"),
        (b"hits:1|x", "unknown type"),
        (b"hits:1|cc", "unknown type"),
        (b"hits:1|msx", "unknown type"),
        (b":1|c", "empty name"),
        (b"  :1|c", "empty name"),
        (b"#a=b:1|c", "empty name"),
        (b"hits:|c", "bad value"),
        (b"hits:abc|c", "bad value"),
        (b"hits:1,5|c", "bad value"),
        (b"hits:0x10|g", "bad value"),
        (b"hits:nan|c", "non-finite value"),
        (b"hits:NaN|ms", "non-finite value"),
        (b"hits:inf|g", "non-finite value"),
        (b"hits:-inf|g", "non-finite value"),
        (b"hits:+inf|g", "non-finite value"),
        (b"hits:1e400|h", "non-finite value"),
        (b"hits:-1e400|d", "non-finite value"),
        (b"users:|s", "empty set member"),
        (b"hits:1|c|@0", "bad sample rate"),
    ],
)
def test_malformed_lines_are_rejected_with_a_reason(line: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_line(line)
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)


# --- fuzz contract --------------------------------------------------------------------------

FRAGMENTS = [
    b":",
    b"|",
    b"@",
    b"#",
    b",",
    b"=",
    b"c",
    b"g",
    b"ms",
    b"h",
    b"s",
    b"d",
    b"x",
    b"T",
    b"0",
    b"1",
    b"5",
    b".",
    b"e",
    b"-",
    b"+",
    b"_",
    b"nan",
    b"inf",
    b"1e999",
    b"1e308",
    b"5e-324",
    b"0.5",
    b"name",
    b"k",
    b"v",
    b" ",
    b"\t",
    b"\r",
    b"\x00",
    b"\xff",
    b"\xc3\xbc",
    b"\xe2\x80",
]

near_valid = st.lists(st.sampled_from(FRAGMENTS), max_size=24).map(b"".join)


@st.composite
def structured_lines(draw: st.DrawFn) -> bytes:
    """Lines shaped like ``name:value|type|...`` whose parts come from fragments."""
    part = st.lists(st.sampled_from(FRAGMENTS), max_size=5).map(b"".join)
    name, value, kind = draw(part), draw(part), draw(st.sampled_from([b"c", b"g", b"ms", b"s"]))
    extras = draw(st.lists(part, max_size=4))
    return b"|".join([name + b":" + value, kind, *extras])


def check_sample(parsed: Sample) -> None:
    """What an accepted line promises the aggregator."""
    shape = parsed.shape
    assert shape.name
    assert shape.name == shape.name.strip()
    assert 0.0 < shape.rate <= 1.0
    for key, value in shape.tags:
        assert key
        assert value
    if shape.kind is Kind.SET:
        assert isinstance(parsed.value, bytes)
        assert parsed.value
    else:
        assert isinstance(parsed.value, float)
        assert math.isfinite(parsed.value)
    assert not parsed.delta or shape.kind is Kind.GAUGE


def parse_or_reject(line: bytes) -> None:
    """Parse ``line``: anything but an accepted sample or a `ParseError` fails the test."""
    try:
        parsed = parse_line(line)
    except ParseError as error:
        assert error.reason
    else:
        check_sample(parsed)


@settings(max_examples=500)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_raise_only_parse_error(line: bytes) -> None:
    parse_or_reject(line)


@settings(max_examples=500)
@given(near_valid)
def test_near_valid_fragments_raise_only_parse_error(line: bytes) -> None:
    parse_or_reject(line)


@settings(max_examples=500)
@given(structured_lines())
def test_structured_lines_raise_only_parse_error(line: bytes) -> None:
    parse_or_reject(line)


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_every_line_of_a_datagram_parses_or_rejects(datagram: bytes) -> None:
    for line in iter_lines(datagram):
        assert line.strip()
        parse_or_reject(line)
