"""Turn an interval's accumulators into AppOptics measurements.

Names and tags arrive already sanitized (see `statsd_ao.core.sanitize`); only derived names
(percentile suffixes) are fitted here.  Values the API cannot take (NaN, infinities, anything
of magnitude 1e126 or more, which would abort the whole post with a 400) are dropped and
counted in `Converter.dropped`, never posted.

The common cases run in C when the extension is built (statsd_ao/core/_convert.c): it builds the
same measurements for every item it fully understands and hands the rest (anything to drop
or fit) back to the Python code here, which stays the definition.  tests/core/test_convert.py
compares the two.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import NotRequired, TypedDict

from statsd_ao.core import native
from statsd_ao.core.accumulators import Accumulator, Counter, Gauge, SetOf, Summary
from statsd_ao.core.aggregator import SeriesKey
from statsd_ao.core.logs import RateLimitedLog
from statsd_ao.core.protocol import Kind
from statsd_ao.core.sanitize import MAX_NAME, fit_name

# The API aborts a whole request over a value whose exponent exceeds 10^126 (seed 001,
# "Float Restrictions"); anything at or above this magnitude is never posted.
MAX_MAGNITUDE = 1e126

# The largest count posted: JSON encoders (and the API) take 64-bit integers.  Only absurd
# sample rates (@1e-20) get near it; such a summary is dropped and counted.
MAX_COUNT = 2**63 - 1

# Counters are interval totals: AppOptics must sum them when it rolls points up to coarser
# resolutions (its default is to average).  Used only when a post creates the metric.
COUNTER_ATTRIBUTES = {"summarize_function": "sum"}

DROPPED_VALUE = "value out of range"
# A percentile whose name another series of the interval has (see `Converter.claim`).
DROPPED_PERCENTILE = "percentile name taken"
# Seconds between two log lines about percentile names taken (the drops are all counted).
COLLISION_LOG_INTERVAL = 300.0

log = logging.getLogger(__name__)


class Measurement(TypedDict):
    """One entry of ``measurements`` in ``POST /v1/measurements``."""

    name: str
    tags: dict[str, str]
    time: int
    period: int
    value: NotRequired[float]
    count: NotRequired[int]
    sum: NotRequired[float]
    min: NotRequired[float]
    max: NotRequired[float]
    last: NotRequired[float]
    stddev: NotRequired[float]
    attributes: NotRequired[dict[str, str]]


@dataclass(frozen=True, slots=True)
class Stats:
    """Summary fields of a timer, histogram or distribution."""

    count: int
    sum: float
    min: float
    max: float
    last: float
    stddev: float

    def fields(self) -> tuple[float, ...]:
        return (self.count, self.sum, self.min, self.max, self.last, self.stddev)


def percentile_suffix(percentile: float) -> str:
    """``.p90`` for 90, ``.p99.9`` for 99.9."""
    return f".p{percentile:.15g}"


def summarize(acc: Summary) -> Stats | None:
    """Sample-rate scaled count and sum, min/max/last, and population stddev (weighted).

    Count is rounded to a whole number (at least 1); sum keeps its fraction, but never leaves
    ``count * min <= sum <= count * max`` (see `consistent_sum`).  None when the figures
    overflow a double (e.g. values near 1e308, or a sample rate like 1e-320).
    """
    try:
        return _summarize(acc)
    except (OverflowError, ValueError):
        return None


def _summarize(acc: Summary) -> Stats:
    if acc.running is not None:
        r = acc.running
        stddev = math.sqrt(max(r.m2, 0.0) / r.weight)
        count = _count(r.weight)
        return Stats(count, consistent_sum(r.total, count, r.lo, r.hi), r.lo, r.hi, r.last, stddev)
    values, weights = acc.values, acc.weights
    if weights is None:
        total_weight = float(len(values))
        total = math.fsum(values)
        mean = total / total_weight
        variance = math.fsum((x - mean) ** 2 for x in values) / total_weight
    else:
        total_weight = math.fsum(weights)
        total = math.fsum(w * x for w, x in zip(weights, values, strict=True))
        mean = total / total_weight
        squares = (w * (x - mean) ** 2 for w, x in zip(weights, values, strict=True))
        variance = math.fsum(squares) / total_weight
    count, lo, hi = _count(total_weight), min(values), max(values)
    total = consistent_sum(total, count, lo, hi)
    return Stats(count, total, lo, hi, values[-1], math.sqrt(variance))


def _count(weight: float) -> int:
    """A whole count of at least 1 (rounded: the API's counts are whole numbers)."""
    return max(1, round(weight))


def consistent_sum(total: float, count: int, lo: float, hi: float) -> float:
    """The scaled sum, moved to the nearer of ``count * lo`` and ``count * hi`` if outside.

    Scaled by 1/rate, a sum fits its count * [min, max] only when the count is the exact
    total weight; rounding the count breaks that (``x:10|ms|@0.7``: weight 1.43 -> count 1,
    sum 14.29 > 1 x 10), and a mean above the max is what no consistent summary allows (the
    API's checks, a chart's average).  The sum is kept whenever it fits, so a total is exact
    as long as it can be.  The C conversion does the same comparisons in the same order.
    """
    if total < count * lo:
        return count * lo
    if total > count * hi:
        return count * hi
    return total


def nearest_rank(ordered: Sequence[float], percentile: float) -> float:
    """The smallest value with at least ``percentile``% of the values at or below it."""
    rank = math.ceil(percentile / 100.0 * len(ordered))
    return ordered[max(rank, 1) - 1]


def backend_percentile(ordered: Sequence[float], percentile: float) -> Stats | None:
    """statsd-appoptics-backend's percentile: a summary of the lowest ``percentile``% of the
    values (its ``max`` is the percentile); None when that leaves no value."""
    drop = math.floor((100.0 - percentile) / 100.0 * len(ordered) + 0.5)  # JS Math.round
    kept = ordered[: len(ordered) - drop]
    if not kept:
        return None
    mean = math.fsum(kept) / len(kept)
    stddev = math.sqrt(math.fsum((x - mean) ** 2 for x in kept) / len(kept))
    return Stats(len(kept), math.fsum(kept), kept[0], kept[-1], kept[-1], stddev)


def percentile_claims(
    table: Mapping[SeriesKey, object], suffixes: tuple[str, ...]
) -> list[tuple[SeriesKey, str]]:
    """(summary key, suffix) for every series of ``table`` named like that summary's
    percentile (``lat.p90`` beside summary ``lat``, same tags), in ``table``'s order.

    The C conversion's ``claims`` does the same where it is built: over bench/flush_bench.py's
    100,000 series this loop holds the flush ~15 ms in one piece, the C one ~3 ms (2-core VM).
    tests/core/test_convert.py holds the two together."""
    found: list[tuple[SeriesKey, str]] = []
    for _kind, name, tags in table:
        if not name.endswith(suffixes):
            continue
        for suffix in suffixes:
            if len(name) > len(suffix) and name.endswith(suffix):
                owner = (Kind.SUMMARY, name[: -len(suffix)], tags)
                if owner in table:
                    found.append((owner, suffix))
    return found


def postable(number: float) -> bool:
    """True when the API accepts the number (finite and below 1e126 in magnitude)."""
    return math.isfinite(number) and abs(number) < MAX_MAGNITUDE


def load_native() -> ModuleType | None:
    """statsd_ao.core._convert, configured; None if it is not built or is switched off."""
    if native.disabled():
        return None
    try:
        from statsd_ao.core import _convert  # type: ignore[attr-defined]  # noqa: PLC0415
    except ImportError:
        return None
    slots = [(Counter, "total"), (Gauge, "value"), (Summary, "values"), (Summary, "weights")]
    slots += [(Summary, "running"), (SetOf, "members")]
    _convert.configure(tuple(vars(owner)[name] for owner, name in slots))
    module: ModuleType = _convert
    return module


NATIVE = load_native()

Items = Iterable[tuple[SeriesKey, Accumulator]]


class Converter:
    """Builds measurements for one interval; counts what it had to drop, by reason."""

    def __init__(
        self,
        percentiles: Sequence[float] = (),
        *,
        style: str = "p",
        always_suffix_percentile: bool = False,
        native: bool = True,
    ) -> None:
        """``style`` "p": ``x.p90`` values; "backend": ``x.90`` summaries, as the incumbent
        backend posted them (its 100th percentile only with ``always_suffix_percentile``).
        ``native``: use the C conversion when it is built (False: Python only)."""
        self._backend = style == "backend"
        if self._backend:
            kept = [p for p in percentiles if p < 100 or always_suffix_percentile]
            self._suffixes = [(p, "." + _js_number(p)) for p in kept]
        else:
            self._suffixes = [(p, percentile_suffix(p)) for p in percentiles]
        # The C code does "p" style percentiles only; None hands it no summary.
        self._native_suffixes = (
            None if self._backend else tuple((float(p), s) for p, s in self._suffixes)
        )
        self._native = NATIVE if native else None
        self.dropped: dict[str, int] = {}
        # Summary key -> the percentile suffixes another series of the interval has taken.
        self._taken: dict[SeriesKey, set[str]] = {}
        self._collision_log = RateLimitedLog(log, COLLISION_LOG_INTERVAL)

    def claim(self, table: Mapping[SeriesKey, Accumulator]) -> None:
        """Before an interval's ``table`` is converted (chunk by chunk): note the percentile
        names that another series of the interval has, such as a counter ``lat.p90`` beside
        the 90th percentile of timer ``lat`` with the same tags.  Two measurements of one name,
        tags and time would leave the API to pick one, so the series sent under the name wins
        (it is what the sender named) and the percentile is dropped, counted as
        `DROPPED_PERCENTILE` and logged.  ``claim({})`` forgets."""
        self._taken = {}
        suffixes = tuple(suffix for _, suffix in self._suffixes)
        if not suffixes or not table:
            return
        if self._native is not None and type(table) is dict:
            found = self._native.claims(table, suffixes, Kind.SUMMARY)
        else:
            found = percentile_claims(table, suffixes)
        for owner, suffix in found:
            self._taken.setdefault(owner, set()).add(suffix)

    def convert(self, items: Items, time: int, period: int) -> list[Measurement]:
        """Measurements for ``items`` (e.g. a slice of `Snapshot.series`)."""
        if self._native is None or not isinstance(items, list):
            return self._convert(items, time, period)
        held: list[tuple[SeriesKey, Accumulator]] = []
        if self._taken:  # (rare) summaries with a percentile taken: Python drops it
            held = [item for item in items if item[0] in self._taken]
            if held:
                items = [item for item in items if item[0] not in self._taken]
        out: list[Measurement]
        out, rest = self._native.convert(
            items, time, period, self._native_suffixes, COUNTER_ATTRIBUTES, MAX_NAME
        )
        if rest or held:
            out.extend(self._convert(rest + held, time, period))
        return out

    def _convert(self, items: Items, time: int, period: int) -> list[Measurement]:
        out: list[Measurement] = []
        for key, acc in items:
            _kind, name, tag_pairs = key
            base = Measurement(name=name, tags=dict(tag_pairs), time=time, period=period)
            if isinstance(acc, Summary):
                self._summary(out, base, acc, self._taken.get(key, _NONE_TAKEN))
                continue
            value = _single_value(acc)
            if not postable(value):
                self._drop(DROPPED_VALUE)
                continue
            base["value"] = value
            if isinstance(acc, Counter):
                base["attributes"] = COUNTER_ATTRIBUTES
            out.append(base)
        return out

    def _summary(
        self, out: list[Measurement], base: Measurement, acc: Summary, taken: set[str]
    ) -> None:
        if not acc.values and (acc.running is None or not acc.running.weight):
            return  # (values, or running figures alone: a summary posted to the API intake)
        stats = summarize(acc)
        if stats is not None and stats.count <= MAX_COUNT and postable_stats(stats):
            m = base.copy()
            m["count"], m["sum"] = stats.count, stats.sum
            # NaN: not known (a summary posted to the API intake without it): left out.
            # (in the C conversion's key order)
            if not math.isnan(stats.stddev):
                m["stddev"] = stats.stddev
            if not math.isnan(stats.min):
                m["min"] = stats.min
            if not math.isnan(stats.max):
                m["max"] = stats.max
            if not math.isnan(stats.last):
                m["last"] = stats.last
            out.append(m)
        else:
            self._drop(DROPPED_VALUE)
        if not self._suffixes or not acc.values:  # (percentiles come from values only)
            return
        ordered = sorted(acc.values)
        for percentile, suffix in self._suffixes:
            if suffix in taken:
                self._percentile_taken(base, suffix)
                continue
            m = base.copy()
            m["name"] = fit_name(base["name"] + suffix)
            if self._backend:
                self._add_backend(out, m, ordered, percentile)
                continue
            value = nearest_rank(ordered, percentile)
            if not postable(value):
                self._drop(DROPPED_VALUE)
                continue
            m["value"] = value
            out.append(m)

    def _add_backend(
        self, out: list[Measurement], m: Measurement, ordered: list[float], percentile: float
    ) -> None:
        try:
            stats = backend_percentile(ordered, percentile)
        except (OverflowError, ValueError):  # figures past a double's range
            self._drop(DROPPED_VALUE)
            return
        if stats is None:
            return
        if not all(map(postable, stats.fields())):
            self._drop(DROPPED_VALUE)
            return
        m["count"], m["sum"], m["min"], m["max"] = stats.count, stats.sum, stats.min, stats.max
        out.append(m)

    def _percentile_taken(self, base: Measurement, suffix: str) -> None:
        self._drop(DROPPED_PERCENTILE)
        self._collision_log.warning(
            DROPPED_PERCENTILE,
            "%r (tags %s) is both a series of its own and a percentile of summary %r: the "
            "series is posted, the percentile is not (%d such percentiles dropped so far)",
            base["name"] + suffix,
            base["tags"],
            base["name"],
            self.dropped[DROPPED_PERCENTILE],
        )

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


def postable_stats(stats: Stats) -> bool:
    """Count and sum postable; min, max, last and stddev postable or unknown (NaN: a
    summary posted to the API intake without them)."""
    return (
        postable(stats.count)
        and postable(stats.sum)
        and all(
            postable(x) or math.isnan(x) for x in (stats.min, stats.max, stats.last, stats.stddev)
        )
    )


_NONE_TAKEN: set[str] = set()  # (never written to)


def _js_number(number: float) -> str:
    """JavaScript's String(number) for a percentile: 90 -> "90", 99.9 -> "99.9"."""
    return str(int(number)) if number == int(number) else repr(number)


def _single_value(acc: Counter | Gauge | SetOf) -> float:
    if isinstance(acc, Counter):
        return acc.total
    if isinstance(acc, Gauge):
        return acc.value
    return float(len(acc.members))
