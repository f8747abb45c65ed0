"""The fleet's wire format: one forwarded interval part, as gzip'ed JSON (pure).

A local proxy (``--forward``) sends each flushed interval's series to the global members
that own their names; a global (``--fleet-listen``) merges the parts of every sender.  The
body is data only (never pickle: a global takes requests from the network), one JSON
object, gzip'ed::

    {"v": 1, "sender": "9f2c...", "seq": 1733628512000001, "sub": "",
     "stamp": 1733628500, "period": 10, "clock": 1733628510.02,
     "series": [[KIND, NAME, [[TAG, VALUE], ...], STATE...], ...]}

with one explicit STATE per kind of accumulator (`statsd_ao.core.accumulators`):

======  ===================================================================================
kind    state after the name and tags
======  ===================================================================================
``c``   total (the counter's sum of value / sample rate)
``g``   value, start (null once the sender saw an absolute value: the value stands alone)
``s``   members: strings, each a member's bytes read as latin-1 (every byte one character)
``ms``  values, weights (null: all 1), running figures (null, or the 7 figures of
        `Running` in its slot order: non-finite ones as "inf", "-inf", "nan"), seen
======  ===================================================================================

``sender`` (a stable id), ``stamp`` (the interval's start), ``seq`` (unique per sender
and interval, across the sender's restarts) and ``sub`` (which half of a part a 413
split made: "", "a", "b", "ab"...) identify a part for the global's duplicate check.
``clock`` is the sender's wall time when it made the part: parts of one series merge in
its order, so a gauge's latest absolute value wins by the sender's clock.

`decode` never raises anything but `WireError`, whatever the bytes (tests hold it to that
with Hypothesis), and bounds what it makes: the decompressed size, the series, the values
of a summary and the members of a set.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from statsd_ao.core.accumulators import (
    MAX_SET_MEMBERS,
    MAX_SUMMARY_VALUES,
    Accumulator,
    Counter,
    Gauge,
    Running,
    SetOf,
    Summary,
)
from statsd_ao.core.aggregator import SeriesKey
from statsd_ao.core.protocol import Kind

VERSION = 1
# Bytes a part may take once decompressed: 10,000 series of ~1 KB (a full summary of
# 10,000 values is ~200 KB on its own).  A gzip bomb stops here, not in memory.
MAX_DECODED = 64 << 20
# Series in one part: the sender cuts its interval into parts of at most this many.
MAX_SERIES = 20_000
# Bytes of a sender id, a name, a tag key or value (AppOptics' own name bound is 255).
MAX_TEXT = 1024
MAX_TAGS = 64
# gzip level of the parts: 1 costs a fifth of 6's CPU for ~10% more bytes
# (bench/fleet_bench.py).
GZIP_LEVEL = 1
_KINDS = {kind.value: kind for kind in Kind}
_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


class WireError(ValueError):
    """The body is not a part this version can read; the message says why."""


@dataclass(slots=True)
class Part:
    """One sender's series of one interval (or a share of them)."""

    sender: str
    seq: int
    stamp: int
    period: int
    clock: float
    series: dict[SeriesKey, Accumulator] = field(default_factory=dict)
    sub: str = ""

    @property
    def ident(self) -> tuple[str, int, int, str]:
        """What the global's duplicate check knows the part by."""
        return (self.sender, self.stamp, self.seq, self.sub)


def encode(part: Part) -> bytes:
    """The part's body, gzip'ed."""
    doc = {
        "v": VERSION,
        "sender": part.sender,
        "seq": part.seq,
        "sub": part.sub,
        "stamp": part.stamp,
        "period": part.period,
        "clock": part.clock,
        "series": [_row(key, acc) for key, acc in part.series.items()],
    }
    return zlib_gzip(orjson.dumps(doc))


def zlib_gzip(raw: bytes) -> bytes:
    """gzip framing at `GZIP_LEVEL` (zlib's, so the result is the same on every run)."""
    packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return packer.compress(raw) + packer.flush()


def _row(key: SeriesKey, acc: Accumulator) -> list[Any]:
    kind, name, tags = key
    head: list[Any] = [kind.value, name, [list(tag) for tag in tags]]
    if isinstance(acc, Counter):
        return [*head, acc.total]
    if isinstance(acc, Gauge):
        return [*head, acc.value, acc.start]
    if isinstance(acc, SetOf):
        return [*head, [member.decode("latin-1") for member in acc.members]]
    running = acc.running
    figures = None
    if running is not None:
        figures = [_figure(getattr(running, slot)) for slot in Running.__slots__]
    return [*head, acc.values, acc.weights, figures, acc.seen]


def _figure(value: float) -> float | str:
    return value if math.isfinite(value) else repr(value)


def decode(body: bytes) -> Part:
    """The part in ``body``; raises `WireError` (only) when it is not one."""
    try:
        doc = orjson.loads(_gunzip(body))
    except orjson.JSONDecodeError as error:
        raise WireError(f"not JSON: {error}") from None
    if not isinstance(doc, dict):
        raise WireError("not a JSON object")
    if doc.get("v") != VERSION:
        raise WireError(f"version {doc.get('v')!r} is not {VERSION}")
    rows = doc.get("series")
    if not isinstance(rows, list) or len(rows) > MAX_SERIES:
        raise WireError(f"series: expected a list of at most {MAX_SERIES}")
    part = Part(
        sender=_text(doc.get("sender"), "sender"),
        seq=_int(doc.get("seq"), "seq"),
        stamp=_int(doc.get("stamp"), "stamp"),
        period=_int(doc.get("period"), "period"),
        clock=_number(doc.get("clock"), "clock"),
        sub=_sub(doc.get("sub", "")),
    )
    if not part.sender or part.period <= 0:
        raise WireError("sender must not be empty and period must be positive")
    for row in rows:
        key, acc = _series(row)
        if key in part.series:
            raise WireError(f"series {key[1]!r} appears twice")
        part.series[key] = acc
    return part


def _gunzip(body: bytes) -> bytes:
    unpacker = zlib.decompressobj(31)
    try:
        raw = unpacker.decompress(body, MAX_DECODED)
    except zlib.error as error:
        raise WireError(f"not gzip: {error}") from None
    if unpacker.unconsumed_tail:
        raise WireError(f"larger than {MAX_DECODED} bytes decompressed")
    if not unpacker.eof:
        raise WireError("the gzip stream is cut short")
    return raw


def _series(row: Any) -> tuple[SeriesKey, Accumulator]:
    if not isinstance(row, list) or len(row) < 4:
        raise WireError("a series is [kind, name, tags, state...]")
    kind = _KINDS.get(row[0]) if isinstance(row[0], str) else None
    if kind is None:
        raise WireError(f"unknown kind {row[0]!r}")
    name = _text(row[1], "name")
    tags = row[2]
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise WireError(f"tags: expected a list of at most {MAX_TAGS}")
    tag_tuple = tuple(_tag(tag) for tag in tags)
    return (kind, name, tag_tuple), _accumulator(kind, row[3:])


def _tag(tag: Any) -> tuple[str, str]:
    if not isinstance(tag, list) or len(tag) != 2:
        raise WireError("a tag is [key, value]")
    return _text(tag[0], "tag key"), _text(tag[1], "tag value")


def _accumulator(kind: Kind, state: list[Any]) -> Accumulator:
    if kind is Kind.COUNTER and len(state) == 1:
        counter = Counter()
        counter.total = _number(state[0], "counter total")
        return counter
    if kind is Kind.GAUGE and len(state) == 2:
        start = None if state[1] is None else _number(state[1], "gauge start")
        gauge = Gauge(start)
        gauge.value = _number(state[0], "gauge value")
        return gauge
    if kind is Kind.SET and len(state) == 1:
        return _set(state[0])
    if kind is Kind.SUMMARY and len(state) == 4:
        return _summary(*state)
    raise WireError(f"a {kind.value} series has a state of {len(state)} items")


def _set(members: Any) -> SetOf:
    if not isinstance(members, list) or len(members) > MAX_SET_MEMBERS:
        raise WireError(f"set members: expected a list of at most {MAX_SET_MEMBERS}")
    out = SetOf()
    try:
        out.members = {_text(m, "set member").encode("latin-1") for m in members}
    except UnicodeEncodeError:
        raise WireError("a set member holds a character past latin-1") from None
    if b"" in out.members:
        raise WireError("an empty set member")
    return out


def _summary(values: Any, weights: Any, figures: Any, seen: Any) -> Summary:
    summary = Summary()
    summary.values = _numbers(values, "summary values")
    if weights is not None:
        summary.weights = _numbers(weights, "summary weights")
        if len(summary.weights) != len(summary.values):
            raise WireError("summary weights and values differ in length")
        if any(w <= 0 for w in summary.weights):
            raise WireError("a summary weight is not positive")
    summary.seen = _int(seen, "summary seen")
    if figures is not None:
        if not isinstance(figures, list) or len(figures) != len(Running.__slots__):
            raise WireError(f"running figures: expected {len(Running.__slots__)}")
        running = Running()
        for slot, value in zip(Running.__slots__, figures, strict=True):
            setattr(running, slot, _figure_of(value))
        summary.running = running
        summary.weights = None
        if summary.seen < len(summary.values):
            raise WireError("summary seen is below its values")
    elif summary.seen:
        raise WireError("summary seen without running figures")
    return summary


def _figure_of(value: Any) -> float:
    if isinstance(value, str) and value in _NON_FINITE:
        return _NON_FINITE[value]
    return _number(value, "running figure")


def _numbers(values: Any, what: str) -> list[float]:
    if not isinstance(values, list) or len(values) > MAX_SUMMARY_VALUES:
        raise WireError(f"{what}: expected a list of at most {MAX_SUMMARY_VALUES}")
    return [_number(v, what) for v in values]


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(f"{what}: expected a number")
    number = float(value)
    if not math.isfinite(number):
        raise WireError(f"{what}: not finite")
    return number


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
        raise WireError(f"{what}: expected a non-negative integer")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise WireError(f"{what}: expected a string of at most {MAX_TEXT} characters")
    return value


def _sub(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 64 or value.strip("ab"):
        raise WireError("sub: expected a string of a and b")
    return value


def halves(body: bytes) -> tuple[tuple[bytes, int], tuple[bytes, int]]:
    """Cut a part of at least two series in two (a global answered 413): each half keeps the
    part's identity with ``a`` or ``b`` added to its ``sub``, so the halves are told apart
    from each other and from the whole; (body, series) of each."""
    part = decode(body)
    items = list(part.series.items())
    middle = len(items) // 2
    out = []
    for letter, share in (("a", items[:middle]), ("b", items[middle:])):
        half = Part(
            part.sender, part.seq, part.stamp, part.period, part.clock, dict(share),
            sub=part.sub + letter,
        )  # fmt: skip
        out.append((encode(half), len(share)))
    return out[0], out[1]
