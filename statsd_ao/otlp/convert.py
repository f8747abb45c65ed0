"""An interval's accumulators (and ready-made measurements) as OTLP data points (pure).

The semantics (docs/otlp.md says why each):

- counter ``c``: Sum, DELTA, monotonic (a negative interval total: not monotonic), the total;
- gauge ``g`` and service check ``_sc``: Gauge, the last value;
- set ``s``: Gauge, the number of unique members;
- timer ``ms``, histogram ``h``, distribution ``d``: Histogram, DELTA, with count, sum, min
  and max (and explicit buckets when asked for);
- each configured percentile of those: Gauge ``<name>.p<N>``, the nearest-rank value.

Every point has ``start_time_unix_nano`` = the interval's start and ``time_unix_nano`` =
its end; tags become attributes, the ``host`` tag the resource's ``host.name``
(`statsd_ao.otlp.requests`).  The numbers are those of the AppOptics conversion
(`statsd_ao.core.measurements`: `summarize` and `nearest_rank`), so one interval shows the
same numbers in both sinks.  What differs is the range: OTLP carries any finite double, so a
value the AppOptics path drops (at or above 1e126 in magnitude) is sent here and counted in
`Converter.wide`; a value that is not finite (a counter whose total overflowed) is dropped
and counted in `Converter.dropped`, as there.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from types import ModuleType
from typing import Protocol

from statsd_ao.core import native
from statsd_ao.core.accumulators import Accumulator, Counter, Gauge, SetOf, Summary
from statsd_ao.core.aggregator import SeriesKey
from statsd_ao.core.measurements import (
    MAX_COUNT,
    MAX_MAGNITUDE,
    Measurement,
    Stats,
    consistent_sum,
    nearest_rank,
    percentile_suffix,
    postable_stats,
    summarize,
)
from statsd_ao.core.protocol import TagTuple
from statsd_ao.core.sanitize import MAX_NAME, fit_name
from statsd_ao.otlp import requests
from statsd_ao.otlp.requests import Requests, Shape

NANOS = 1_000_000_000
# fixed64 counts: a summary whose (sample-rate scaled) count is past this is dropped.
MAX_OTLP_COUNT = 2**64 - 1
DROPPED_VALUE = "value not finite"
# Values below this in magnitude keep a summary's stddev (at most half its range) inside
# the AppOptics range, so `_plain_figures` need not compute it to know the summary is sent
# whole and not counted as wide.
PLAIN = MAX_MAGNITUDE / 10
# The summary fields of a measurement an OTLP histogram has room for.
SUMMARY_FIELDS = ("count", "sum", "min", "max")


class Points(Protocol):
    """Where points go: `statsd_ao.otlp.requests.Requests` (or its reference, built from
    the library's messages: `tests.otlp.reference.Requests`)."""

    def window(self, start: int, end: int) -> None: ...

    def number(
        self, shape: str, name: str, tags: TagTuple, value: float, unit: str = ""
    ) -> None: ...

    def histogram(
        self,
        name: str,
        tags: TagTuple,
        count: int,
        total: float,
        *,
        low: float = ...,
        high: float = ...,
        unit: str = "",
        bounds: Sequence[float] = (),
        counts: Sequence[int] = (),
    ) -> None: ...


class Converter:
    """Adds the points of each chunk of series to `Requests`; counts what it dropped."""

    def __init__(
        self,
        out: Points,
        percentiles: Sequence[float] = (),
        *,
        buckets: Sequence[float] = (),
        summary_unit: str = "",
        monotonic_counters: bool = True,
        native: bool = True,
    ) -> None:
        """``buckets``: explicit histogram bounds (ascending); none by default, and then a
        histogram carries count, sum, min and max only.  ``summary_unit``: the unit of
        timers, histograms and distributions (the three share one aggregation, so nothing
        tells a timer's milliseconds from a histogram's bytes; "" by default).
        ``monotonic_counters``: counters are monotonic sums (False: all are up-down sums).
        ``native``: use the C conversion when it is built (False: Python only)."""
        if list(buckets) != sorted(set(buckets)) or not all(map(math.isfinite, buckets)):
            raise ValueError("histogram buckets must be finite, ascending and distinct")
        self._out = out
        self._suffixes = [(float(p), percentile_suffix(p)) for p in percentiles]
        self._bounds = [float(b) for b in buckets]
        self._unit = summary_unit
        self._counter = Shape.SUM if monotonic_counters else Shape.UPDOWN_SUM
        # The C conversion writes into a `Requests` only, and leaves buckets to Python.
        wire = isinstance(out, Requests) and not self._bounds
        self._native = NATIVE if native and wire else None
        self._native_suffixes = tuple(self._suffixes)
        self.dropped: dict[str, int] = {}
        self.wide = 0  # points sent that the AppOptics path drops as out of its range
        self.negative_counters = 0  # counter totals below 0, sent as up-down sums

    def series(
        self, items: Iterable[tuple[SeriesKey, Accumulator]], stamp: int, period: int
    ) -> int:
        """Add the points of ``items`` for the interval starting at ``stamp`` (seconds);
        returns the points made."""
        out = self._out
        out.window(stamp * NANOS, (stamp + period) * NANOS)
        made = 0
        if self._native is not None and type(items) is list:
            # (the common cases: the rest is left to the definition below)
            made, negatives, items = self._native.series(
                out,
                items,
                self._native_suffixes,
                self._unit,
                self._counter == Shape.SUM,
            )
            self.negative_counters += negatives
        for (_kind, name, tags), acc in items:
            if isinstance(acc, Summary):
                made += self._summary(name, tags, acc)
                continue
            if isinstance(acc, Counter):
                value, shape = acc.total, self._counter
                if value < 0 and shape == Shape.SUM:
                    shape = Shape.UPDOWN_SUM
                    self.negative_counters += 1
            elif isinstance(acc, Gauge):
                value, shape = acc.value, Shape.GAUGE
            else:
                value, shape = float(len(acc.members)), Shape.GAUGE
            if self._keep(value):
                out.number(shape, name, tags, value)
                made += 1
        return made

    def measurements(self, batch: Iterable[Measurement]) -> int:
        """Add ready-made AppOptics measurements (self-metrics): a summary (``count``) as a
        Histogram, a counter (``summarize_function`` sum) as a Sum, the rest as Gauges."""
        out = self._out
        made = 0
        for m in batch:
            out.window(m["time"] * NANOS, (m["time"] + m["period"]) * NANOS)
            tags = tuple(sorted(m["tags"].items()))
            if "count" in m:
                figures: Mapping[str, float] = m  # type: ignore[assignment]
                fields = {k: figures[k] for k in SUMMARY_FIELDS if k in figures}
                if all(map(self._keep, fields.values())):
                    out.histogram(
                        m["name"],
                        tags,
                        m["count"],
                        fields["sum"],
                        low=fields.get("min", math.nan),
                        high=fields.get("max", math.nan),
                    )
                    made += 1
                continue
            value = m.get("value", math.nan)
            shape = Shape.GAUGE
            if m.get("attributes", {}).get("summarize_function") == "sum":
                shape = Shape.SUM if value >= 0 else Shape.UPDOWN_SUM
            if self._keep(value):
                out.number(shape, m["name"], tags, value)
                made += 1
        return made

    def _summary(self, name: str, tags: tuple[tuple[str, str], ...], acc: Summary) -> int:
        values = acc.values
        if not values and (acc.running is None or not acc.running.weight):
            return 0  # (values, or running figures alone: a summary posted to the API intake)
        made = 0
        count, total, low, high = _plain_figures(acc)
        if count:  # (the common case: `summarize`'s figures, without its spread)
            self._out.histogram(
                name,
                tags,
                count,
                total,
                low=low,
                high=high,
                unit=self._unit,
                bounds=self._bounds,
                counts=_bucket_counts(acc, self._bounds, count) if self._bounds else (),
            )
            made += 1
        else:
            made += self._summarized(name, tags, acc)
        if self._suffixes and values:
            ordered = sorted(values)
            for percentile, suffix in self._suffixes:
                value = nearest_rank(ordered, percentile)
                if self._keep(value):
                    self._out.number(Shape.GAUGE, fit_name(name + suffix), tags, value, self._unit)
                    made += 1
        return made

    def _summarized(self, name: str, tags: tuple[tuple[str, str], ...], acc: Summary) -> int:
        """The histogram point of a summary by `summarize` (the definition): 1 if made."""
        stats = summarize(acc)
        if stats is None or not _histogram_fits(stats):
            self._drop()
            return 0
        if not _appoptics_fits(stats):
            self.wide += 1
        # Buckets come from values: running figures alone have none to spread.
        bounds = self._bounds if acc.values else ()
        counts = _bucket_counts(acc, bounds, stats.count) if bounds else ()
        self._out.histogram(
            name,
            tags,
            stats.count,
            stats.sum,
            low=stats.min,  # NaN: not known (the API intake's summaries), left out
            high=stats.max,
            unit=self._unit,
            bounds=bounds,
            counts=counts,
        )
        return 1

    def _keep(self, value: float) -> bool:
        """True for a value to send (counted in `wide` past the AppOptics range)."""
        if -MAX_MAGNITUDE < value < MAX_MAGNITUDE:  # the common case, in one comparison
            return True
        if value - value:  # NaN or an infinity
            self._drop()
            return False
        self.wide += 1
        return True

    def _drop(self) -> None:
        self.dropped[DROPPED_VALUE] = self.dropped.get(DROPPED_VALUE, 0) + 1


def load_native() -> ModuleType | None:
    """statsd_ao.otlp._wire, configured; None if it is not built or is switched off."""
    if native.disabled():
        return None
    try:
        from statsd_ao.otlp import _wire  # type: ignore[attr-defined]  # noqa: PLC0415
    except ImportError:
        return None
    slots = [(Counter, "total"), (Gauge, "value"), (Summary, "values"), (Summary, "weights")]
    slots += [(Summary, "running"), (SetOf, "members")]
    shapes = (Shape.SUM, Shape.UPDOWN_SUM, Shape.GAUGE, Shape.HISTOGRAM)
    _wire.configure(
        tuple(vars(owner)[name] for owner, name in slots),
        shapes,
        tuple(requests.POINTS[shape] for shape in shapes),
        requests.HISTOGRAM_FIGURES,
        requests.METRIC_BOUND,
        requests.HOST_BOUND,
        MAX_NAME,
        PLAIN,
        MAX_MAGNITUDE,
        requests.STRING_FIELDS,
        requests.HOST_TAG,
    )
    module: ModuleType = _wire
    return module


def _plain_figures(acc: Summary) -> tuple[int, float, float, float]:
    """(count, sum, min, max) of a summary of unweighted values all below `PLAIN` in
    magnitude, exactly as `summarize` makes them, and sent as they are (no figure of it out
    of either sink's range, its stddev included); (0, 0, 0, 0) for any other summary."""
    values = acc.values
    if acc.running is not None or acc.weights is not None or not values:
        return 0, 0.0, 0.0, 0.0
    low, high = min(values), max(values)
    if not -PLAIN < low <= high < PLAIN:  # (False for a NaN at either end)
        return 0, 0.0, 0.0, 0.0
    count = len(values)
    total = consistent_sum(math.fsum(values), count, low, high)  # (a NaN inside: NaN)
    if not -MAX_MAGNITUDE < total < MAX_MAGNITUDE:
        return 0, 0.0, 0.0, 0.0
    return count, total, low, high


def _histogram_fits(stats: Stats) -> bool:
    extremes = (stats.min, stats.max)  # finite, or NaN: not known
    return (
        stats.count <= MAX_OTLP_COUNT
        and math.isfinite(stats.sum)
        and all(math.isfinite(x) or math.isnan(x) for x in extremes)
    )


def _appoptics_fits(stats: Stats) -> bool:
    return stats.count <= MAX_COUNT and postable_stats(stats)


def _bucket_counts(acc: Summary, bounds: Sequence[float], count: int) -> list[int]:
    """Whole bucket counts summing to ``count``: each value's weight (its sample rate's
    inverse; the reservoir's values stand for ``count`` evenly) put in the bucket whose
    upper bound is the first at or above it, then rounded cumulatively, so the rounding
    never makes a count negative and the total is exact."""
    weights = [0.0] * (len(bounds) + 1)
    values, rates = acc.values, acc.weights
    for index, value in enumerate(values):
        weights[bisect_left(bounds, value)] += 1.0 if rates is None else rates[index]
    scale = count / math.fsum(weights)
    counts: list[int] = []
    running, before = 0.0, 0
    for weight in weights:
        running += weight
        upto = min(round(running * scale), count)
        counts.append(upto - before)
        before = upto
    counts[-1] += count - before
    return counts


NATIVE = load_native()
