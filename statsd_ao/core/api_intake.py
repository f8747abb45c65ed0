"""The AppOptics API intake's part of each interval: accepted measurements as series.

Theory of operation.  `ApiIntake` is the sans-IO half of the intake (the HTTP half is
`statsd_ao.io.api_server`).  It takes the `Sample`s the API's rules accepted
(`statsd_ao.core.api_rules`) and keeps them as the aggregator keeps StatsD lines: one
`Snapshot` per flush interval, ``series`` for the interval being aggregated and ``past`` for
earlier ones, by interval start.  `take` hands the snapshot over at each flush; the flusher
merges it with the aggregator's (`statsd_ao.core.merge.Merger.fold_into`), where the
cardinality guard admits or folds its series like any other part's.

Semantics (docs/appoptics-intake.md says the same to users):

- **Which interval.**  A measurement joins the interval its ``time`` falls in, exactly as a
  DogStatsD ``|T`` sample does (`Aggregator._table_for`): the current one when it has no
  time or its time is at or after the current interval's start; an earlier one (posted with
  that interval's time) when it is up to ``max_sample_age`` seconds old; refused when older,
  or more than `FUTURE_TOLERANCE` seconds ahead of our clock.  ``period`` is checked, not
  kept: every series is posted with the proxy's flush interval as its period.
- **Which series.**  Name and tags go through the same `Naming` as StatsD lines (mapping
  rules, name rules and prefixes, global tags), as a timer (``ms``), so an API measurement
  and a StatsD timer or histogram of the same name and tags are one series.  A measurement a
  mapping rule drops or a metric filter leaves out is counted as ``filtered`` in the answer.
- **A plain ``value`` is one sample of a summary** (not a gauge): it is exactly what the API
  itself made of it (the official Python client's `Queue` posts every value as
  ``{"count": 1, "sum": v}``, and AppOptics stores both alike), several values of one series
  in an interval keep their count, mean, min and max instead of only the last, and it merges
  with StatsD timers exactly, percentiles included, whatever the order parts arrive in.
  A ``count`` 1 summary whose other figures agree with its sum is a single value too.
- **A summary** (``count`` > 1) joins as exact running figures: count, sum, min, max, last
  and the sum of squared deviations ``m2`` (``stddev_m2`` as sent, or ``stddev² · count``),
  which merge exactly (Chan et al.) with other parts.  A field it does not send is unknown
  (NaN): the merged series then posts no such field rather than a wrong one.  It carries no
  values, so percentiles of a series come from its single values and StatsD values only.

Bounded: at most ``max_series`` series over all held intervals (new series past it are
refused with ``too many series``; the server answers 429 while full), `MAX_EVENTS` events an
interval, and the naming cache.  Every refusal is counted by reason.  Runs on the loop
thread; each call is short and never awaits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from statsd_ao.core.accumulators import Accumulator, Running, Summary
from statsd_ao.core.aggregator import (
    DEFAULT_MAX_SAMPLE_AGE,
    FUTURE_TOLERANCE,
    MAX_EVENTS,
    SeriesKey,
    Snapshot,
)
from statsd_ao.core.api_rules import Refusal, Sample
from statsd_ao.core.events import Event
from statsd_ao.core.merge import combine
from statsd_ao.core.protocol import Kind, ParseError
from statsd_ao.core.sanitize import Naming

# Series held at most, over the current and past intervals: ~200 bytes a one-value series,
# ~300 with running figures, so ~30 MB; a client sending more distinct series per interval
# than this is answered 429 until the next flush.
DEFAULT_MAX_SERIES = 100_000
# Names and tag sets remembered with the series they name; cleared when full (a cost paid
# again per series, so a flood of distinct names cannot grow memory).
NAMING_CACHE = 100_000

TOO_OLD = Refusal("time", f"older than the {DEFAULT_MAX_SAMPLE_AGE:g} s this proxy keeps")
TOO_NEW = Refusal("time", f"more than {FUTURE_TOLERANCE:g} s ahead of this proxy's clock")
TOO_MANY = Refusal("name", "too many series in this interval; retry after the next flush")
NAN = float("nan")


@dataclass(frozen=True, slots=True)
class Filtered:
    """A measurement left out on purpose (a mapping drop rule, a metric filter)."""

    reason: str


class ApiIntake:
    """Keeps the intake's part of each interval; `take` hands it over."""

    def __init__(
        self,
        naming: Naming,
        *,
        interval: int,
        clock: Callable[[], float] = time.time,
        max_sample_age: float = DEFAULT_MAX_SAMPLE_AGE,
        max_series: int = DEFAULT_MAX_SERIES,
        max_events: int = MAX_EVENTS,
    ) -> None:
        """``naming``: the aggregator's own `Naming` (so a reload of the mapping rules
        applies to both at once)."""
        self._naming = naming
        self._interval = interval
        self._clock = clock
        self._max_age = max_sample_age
        self._max_series = max_series
        self._max_events = max_events
        now = clock()
        self._current_start = now - now % interval
        self._now = Snapshot()
        self._held = 0
        self._names: dict[tuple[str, tuple[tuple[str, str], ...]], SeriesKey | Filtered] = {}
        self._mapping = naming.mapping
        # Since start: what was taken in and what was not, by reason.
        self.accepted = 0
        self.filtered: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self.events = 0

    @property
    def full(self) -> bool:
        """No room for another series until the next `take`."""
        return self._held >= self._max_series

    @property
    def series_held(self) -> int:
        return self._held

    def seconds_left(self) -> int:
        """Whole seconds (at least 1) until the current interval ends on the grid."""
        return max(1, math.ceil(self._interval - self._clock() % self._interval))

    def add(self, sample: Sample) -> Refusal | Filtered | None:
        """Take one accepted measurement in; None when it was, else why not (counted)."""
        key = self._key(sample)
        if isinstance(key, Filtered):
            self.filtered[key.reason] = self.filtered.get(key.reason, 0) + 1
            return key
        table = self._table_for(sample.time)
        if isinstance(table, Refusal):
            return self._refuse(table)
        acc = table.get(key)
        if acc is None:
            if self._held >= self._max_series:
                return self._refuse(TOO_MANY)
            self._held += 1
            table[key] = _accumulator(sample)
        elif isinstance(acc, Summary):
            _fold(acc, sample)
        else:  # (an intake table holds summaries only)
            raise TypeError(f"unexpected accumulator {acc!r} for {key}")
        self.accepted += 1
        return None

    def add_event(self, event: Event) -> bool:
        """Keep an annotation event for this interval; False past `MAX_EVENTS` (counted)."""
        if len(self._now.events) >= self._max_events:
            self._refuse(Refusal("annotations", "too many annotations in one interval"))
            return False
        if event.timestamp is None:
            event = replace(event, timestamp=int(self._clock()))
        self._now.events.append(event)
        self.events += 1
        return True

    def take(self) -> Snapshot | None:
        """This interval's part (None when it holds nothing); a fresh interval starts."""
        done, self._now = self._now, Snapshot()
        self._held = 0
        now = self._clock()
        self._current_start = now - now % self._interval
        return done if done.series or done.past or done.events else None

    def _refuse(self, refusal: Refusal) -> Refusal:
        self.refused[refusal.reason] = self.refused.get(refusal.reason, 0) + 1
        return refusal

    def _key(self, sample: Sample) -> SeriesKey | Filtered:
        """The series a measurement belongs to, named as a StatsD timer line would be."""
        if self._naming.mapping is not self._mapping:  # rules reloaded: name everything anew
            self._mapping = self._naming.mapping
            self._names = {}
        shape = (sample.name, sample.tags)
        known = self._names.get(shape)
        if known is None:
            try:
                name, tags = self._naming.series(sample.name, sample.tags, Kind.SUMMARY.value)
                known = (Kind.SUMMARY, name, tags)
            except ParseError as error:  # a drop rule or a metric filter
                known = Filtered(error.reason)
            if len(self._names) >= NAMING_CACHE:
                self._names = {}
            self._names[shape] = known
        return known

    def _table_for(self, timestamp: int | None) -> dict[SeriesKey, Accumulator] | Refusal:
        """The series table of the interval a measurement belongs to."""
        if timestamp is None:
            return self._now.series
        now = self._clock()
        if timestamp > now + FUTURE_TOLERANCE:
            return TOO_NEW
        if now - timestamp > self._max_age:
            return TOO_OLD
        stamp = timestamp - timestamp % self._interval
        if stamp >= self._current_start:
            return self._now.series
        return self._now.past.setdefault(stamp, {})


def _accumulator(sample: Sample) -> Summary:
    single = _single_value(sample)
    if single is None:
        return _summary(sample)
    acc = Summary()
    acc.values.append(single)
    return acc


def _fold(acc: Summary, sample: Sample) -> None:
    single = _single_value(sample)
    if single is not None:
        acc.add_number(single)
    else:
        combine(acc, _summary(sample))


def _single_value(sample: Sample) -> float | None:
    """The one value a measurement stands for, if it stands for one: a ``value``, or a
    ``count`` 1 summary whose other figures (if sent) agree with its sum."""
    if sample.value is not None:
        return sample.value
    one = sample.sum
    if sample.count != 1 or one is None:
        return None
    agree = all(x is None or x == one for x in (sample.min, sample.max, sample.last))
    return one if agree and not sample.stddev and not sample.m2 else None


def _summary(sample: Sample) -> Summary:
    """A summary's exact running figures, with NaN for what it leaves unknown."""
    count, total = sample.count, sample.sum
    if count is None or total is None:  # (the rules never accept such a summary)
        raise ValueError("a summary needs count and sum")
    running = Running()
    running.weight, running.total, running.mean = count, total, total / count
    running.lo = NAN if sample.min is None else sample.min
    running.hi = NAN if sample.max is None else sample.max
    running.last = NAN if sample.last is None else sample.last
    if sample.m2 is not None:
        running.m2 = sample.m2
    elif sample.stddev is not None:
        running.m2 = sample.stddev * sample.stddev * count
    else:
        running.m2 = NAN
    acc = Summary()
    acc.running = running
    return acc
