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

from statsd_ao.core.accumulators import Accumulator, Counter, Gauge, Summary
from statsd_ao.core.aggregator import SeriesKey
from statsd_ao.core.measurements import (
    MAX_COUNT,
    MAX_MAGNITUDE,
    Measurement,
    Stats,
    nearest_rank,
    percentile_suffix,
    postable_stats,
    summarize,
)
from statsd_ao.core.sanitize import fit_name
from statsd_ao.otlp.requests import Requests, Shape

NANOS = 1_000_000_000
# fixed64 counts: a summary whose (sample-rate scaled) count is past this is dropped.
MAX_OTLP_COUNT = 2**64 - 1
DROPPED_VALUE = "value not finite"
# The summary fields of a measurement an OTLP histogram has room for.
SUMMARY_FIELDS = ("count", "sum", "min", "max")


class Converter:
    """Adds the points of each chunk of series to `Requests`; counts what it dropped."""

    def __init__(
        self,
        out: Requests,
        percentiles: Sequence[float] = (),
        *,
        buckets: Sequence[float] = (),
        summary_unit: str = "",
        monotonic_counters: bool = True,
    ) -> None:
        """``buckets``: explicit histogram bounds (ascending); none by default, and then a
        histogram carries count, sum, min and max only.  ``summary_unit``: the unit of
        timers, histograms and distributions (the three share one aggregation, so nothing
        tells a timer's milliseconds from a histogram's bytes; "" by default).
        ``monotonic_counters``: counters are monotonic sums (False: all are up-down sums)."""
        if list(buckets) != sorted(set(buckets)) or not all(map(math.isfinite, buckets)):
            raise ValueError("histogram buckets must be finite, ascending and distinct")
        self._out = out
        self._suffixes = [(float(p), percentile_suffix(p)) for p in percentiles]
        self._bounds = [float(b) for b in buckets]
        self._unit = summary_unit
        self._counter = Shape.SUM if monotonic_counters else Shape.UPDOWN_SUM
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
                    out.histogram(m["name"], tags, fields)
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
        if not acc.values and (acc.running is None or not acc.running.weight):
            return 0  # (values, or running figures alone: a summary posted to the API intake)
        made = 0
        stats = summarize(acc)
        if stats is None or not _histogram_fits(stats):
            self._drop()
        else:
            if not _appoptics_fits(stats):
                self.wide += 1
            fields: dict[str, float] = {"count": stats.count, "sum": stats.sum}
            if not math.isnan(stats.min):  # NaN: not known (the API intake's summaries)
                fields["min"] = stats.min
            if not math.isnan(stats.max):
                fields["max"] = stats.max
            # Buckets come from values: running figures alone have none to spread.
            bounds = self._bounds if acc.values else ()
            counts = _bucket_counts(acc, bounds, stats.count) if bounds else ()
            self._out.histogram(name, tags, fields, unit=self._unit, bounds=bounds, counts=counts)
            made += 1
        if self._suffixes and acc.values:
            ordered = sorted(acc.values)
            for percentile, suffix in self._suffixes:
                value = nearest_rank(ordered, percentile)
                if self._keep(value):
                    self._out.number(Shape.GAUGE, fit_name(name + suffix), tags, value, self._unit)
                    made += 1
        return made

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
