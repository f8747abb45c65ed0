"""StatsD / DogStatsD line grammar: bytes in, a parsed shape or a `ParseError` out.

A line is ``name:value|type[|@rate][|#tags][|other fields]``.  The hot path in
`statsd_ao.core.aggregator` splits each line itself into ``name``, ``value`` and the
*tail* (everything after the first ``|``) and caches what `parse_shape` makes of
``(name, tail)``: the value is the only part that changes from line to line of a
series, so names, tags and rates are parsed once per series, not once per line.

Theory of operation: this module never raises anything but `ParseError` (a
`ValueError`) on any input bytes; any other exception is a bug.  Hypothesis
checks that in ``tests/core/test_protocol.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

# A DogStatsD tag without a value (``#canary``) is kept with this value, because
# AppOptics needs a non-empty value for every tag.
PRESENCE_VALUE = "true"


class ParseError(ValueError):
    """A line that cannot become a sample.  ``reason`` is short and stable (it is a counter key)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Kind(Enum):
    """How samples of a series are aggregated.  ``ms``, ``h`` and ``d`` share one kind."""

    COUNTER = "c"
    GAUGE = "g"
    SUMMARY = "ms"
    SET = "s"


_KINDS: dict[bytes, Kind] = {
    b"c": Kind.COUNTER,
    b"g": Kind.GAUGE,
    b"ms": Kind.SUMMARY,
    b"h": Kind.SUMMARY,
    b"d": Kind.SUMMARY,
    b"s": Kind.SET,
}

# TagList, the two ways the code holds them: as parsed (a list, in the line's order) and as part
# of a series' identity (a tuple: hashable).
TagList = list[tuple[str, str]]
TagTuple = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Shape:
    """Everything about a line except its value: what the parse cache stores."""

    kind: Kind
    name: str
    tags: tuple[tuple[str, str], ...]
    rate: float
    timestamp: int | None = None  # DogStatsD 1.3 ``|T<unix seconds>``


Value = tuple[float | bytes, bool]  # a parsed value and whether it is a gauge delta


@dataclass(frozen=True, slots=True)
class Sample:
    """One parsed line (the slow, obvious path; used by tests and the cache-miss path).

    ``value`` and ``delta`` are the line's first value; ``more`` holds the further values of a
    DogStatsD 1.1 multi-value line (``name:1:2:3|h``).
    """

    shape: Shape
    value: float | bytes
    delta: bool = False
    more: tuple[Value, ...] = ()

    @property
    def values(self) -> tuple[Value, ...]:
        return ((self.value, self.delta), *self.more)


def split_line(line: bytes) -> tuple[bytes, bytes, bytes]:
    """Split a line into ``(name, value, tail)`` exactly as the hot path does."""
    name, _, rest = line.partition(b":")
    value, _, tail = rest.partition(b"|")
    return name, value, tail


def parse_shape(name: bytes, tail: bytes, container_tag: str | None = None) -> Shape:
    """Parse a line's name and tail (type, rate, tags, ignored extra fields).

    With ``container_tag``, a DogStatsD 1.2 container id field (``|c:<id>``) becomes a tag of
    that name; otherwise it is ignored like every unknown field.
    """
    fields = tail.rstrip(b"\r\n\t ").split(b"|")
    kind = _KINDS.get(fields[0])
    if kind is None:
        raise ParseError("missing type" if not fields[0] else "unknown type")
    rate = 1.0
    timestamp = None
    tags: TagList = []
    for field in fields[1:]:
        head = field[:1]
        if head == b"@":
            rate = _parse_rate(field[1:])
        elif head == b"#":
            tags.extend(_pairs(field[1:], b":", b","))
        elif head == b"T":
            timestamp = parse_timestamp(field[1:])
        elif container_tag and field[:2] == b"c:" and len(field) > 2:
            tags.append((container_tag, _decode(field[2:])))
        # Any other field (container id, timestamp, cardinality, future ones) never fails a line.
    metric, name_tags = _split_name(name)
    return Shape(kind, metric, tuple(name_tags + tags), rate, timestamp)


def parse_value(kind: Kind, raw: bytes) -> Value:
    """Parse one value for ``kind``: ``(value, is_delta)``.  Sets keep the raw member bytes."""
    if kind is Kind.SET:
        if not raw:
            raise ParseError("empty set member")
        return raw, False
    number = parse_number(raw)
    delta = kind is Kind.GAUGE and raw[:1] in (b"+", b"-")
    return number, delta


def parse_values(kind: Kind, raw: bytes) -> list[Value]:
    """All values of a line: several ``:``-separated ones (DogStatsD 1.1) for every type but
    sets, whose member is the whole value, ``:`` included."""
    if kind is Kind.SET or b":" not in raw:
        return [parse_value(kind, raw)]
    return [parse_value(kind, part) for part in raw.split(b":")]


def parse_number(raw: bytes) -> float:
    """A finite float, or `ParseError`."""
    try:
        number = float(raw)
    except ValueError:
        raise ParseError("bad value") from None
    if not math.isfinite(number):
        raise ParseError("non-finite value")
    return number


def split_multi_metric(line: bytes) -> list[bytes] | None:
    """An etsy multi-metric line (``name:1|c:2|ms:5|g``) as one line per value, else None.

    The rule that tells it from a DogStatsD 1.1 multi-value line (``lat:12:15:9|ms``, where
    only the last value carries the type): the line has no DogStatsD tags (``#``) and every
    ``:``-separated segment after the name is ``value|type[|...]`` with a known type.  Each
    segment keeps its own sample rate (``a:1|c|@0.1:5|ms``); mixed types are fine.
    """
    if b"#" in line:
        return None
    name, _, rest = line.partition(b":")
    segments = rest.split(b":")
    if len(segments) < 2:
        return None
    for segment in segments:
        _, bar, fields = segment.partition(b"|")
        if not bar or fields.split(b"|", 1)[0].rstrip(b"\r\n\t ") not in _KINDS:
            return None
    return [name + b":" + segment for segment in segments]


def _parse_rate(raw: bytes) -> float:
    try:
        rate = float(raw)
    except ValueError:
        raise ParseError("bad sample rate") from None
    if not 0.0 < rate <= 1.0:  # also rejects NaN
        raise ParseError("bad sample rate")
    return rate


# Unix seconds have 10 digits until the year 2286; more is not a timestamp (and int() of
# thousands of digits is refused, or slow).
MAX_TIMESTAMP_DIGITS = 12


def parse_timestamp(raw: bytes | str) -> int:
    """Unix seconds: ASCII digits only (``str.isdigit`` also takes "²"), at most 12."""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_TIMESTAMP_DIGITS):
        raise ParseError("bad timestamp")
    return int(raw)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").strip()


def _split_name(raw: bytes) -> tuple[str, TagList]:
    """The metric name and the tags written into it, in any of three dialects.

    Librato / AppOptics backend ``name#k=v,k2=v2``, Graphite (etsy statsd 0.9 clients)
    ``name;k=v;k2=v2``, InfluxDB ``name,k=v,k2=v2`` and SignalFx dimensions in one pair of
    brackets anywhere in the name (``foo.[k=v,k2=v2]bar`` is ``foo.bar``).
    """
    base, hash_mark, librato = raw.partition(b"#")
    tags = _pairs(librato, b"=", b",") if hash_mark else []
    if b"[" in base or b"]" in base:
        base, dimensions = _signalfx(base)
        tags = dimensions + tags
    if b";" in base:
        base, _, graphite = base.partition(b";")
        tags = _pairs(graphite, b"=", b";") + tags
    elif b"," in base:
        base, _, influx = base.partition(b",")
        tags = _pairs(influx, b"=", b",") + tags
    metric = _decode(base)
    if not metric:
        raise ParseError("empty name")
    return metric, tags


def _signalfx(raw: bytes) -> tuple[bytes, TagList]:
    """The name without its ``[k=v,...]`` group, and those dimensions.  An item without
    ``=`` or with an empty key or value is skipped (SignalFx does the same).  Anything but
    exactly one ``[`` before exactly one ``]`` is refused: guessing would make garbage tags."""
    start, end = raw.find(b"["), raw.find(b"]")
    if raw.count(b"[") != 1 or raw.count(b"]") != 1 or end < start:
        raise ParseError("unbalanced brackets")
    dimensions: TagList = []
    for item in raw[start + 1 : end].split(b","):
        key, equals, value = item.partition(b"=")
        tag_key, tag_value = _decode(key), _decode(value)
        if equals and tag_key and tag_value:
            dimensions.append((tag_key, tag_value))
    return raw[:start] + raw[end + 1 :], dimensions


def _pairs(raw: bytes, separator: bytes, between: bytes) -> TagList:
    """``k<sep>v<between>k2<sep>v2``; a value may contain ``sep``; empty items are skipped."""
    pairs: TagList = []
    for item in raw.split(between):
        key, has_value, value = item.partition(separator)
        tag_key = _decode(key)
        if not tag_key:
            continue
        tag_value = _decode(value) if has_value else ""
        pairs.append((tag_key, tag_value or PRESENCE_VALUE))
    return pairs
