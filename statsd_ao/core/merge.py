"""Merge interval snapshots from several receiving processes into one (``--workers``).

The kernel spreads datagrams over the workers by sender, not by series, so one series may
have parts in several workers; each must be posted once, with the numbers one process would
have produced: counters summed, summaries over all values, sets united, gauges continued.
A gauge part knows its start value and whether it saw an absolute value; the merge takes
the absolute value (a series' sender stays on one worker, so its order is kept) and adds the
deltas of the parts that saw only deltas, on top of the previous merged value.  Pure.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from statsd_ao.core.accumulators import (
    MAX_SUMMARY_VALUES,
    Accumulator,
    Counter,
    Gauge,
    Running,
    SetOf,
    Summary,
)
from statsd_ao.core.aggregator import SeriesKey, Snapshot
from statsd_ao.core.cardinality import SHARED_OVERFLOW, CardinalityGuard
from statsd_ao.core.protocol import TagTuple


class Merger:
    """Merges the workers' snapshots of each interval; keeps gauge values across them."""

    def __init__(
        self,
        guard: CardinalityGuard | None = None,
        overflow_tags: TagTuple = (),
        folded: dict[str, int] | None = None,
    ) -> None:
        """``folded``: where folds are counted per metric (the app passes the aggregator's
        ``folded_samples``, which its logs and self-metrics read); here a fold is a series
        part, as the parts carry no sample counts."""
        self._gauges: dict[SeriesKey, float] = {}
        self._guard = guard
        self._overflow_tags = overflow_tags
        self.folded_samples: dict[str, int] = {} if folded is None else folded

    def merge(self, parts: Iterable[Snapshot]) -> Snapshot:
        merged = Snapshot()
        for part in parts:
            self.fold_into(merged, part)
        for key, acc in merged.series.items():
            if isinstance(acc, Gauge):
                self._gauges[key] = acc.value
        return merged

    def fold_into(self, into: Snapshot, part: Snapshot) -> None:
        """Add ``part`` to ``into`` in place, its series through the guard.  Costs O(part):
        the way to add a small part (the AppOptics API intake's) to the aggregator's
        snapshot, where `merge` would walk every series of both.  A part's gauges continue
        the values `merge` remembered (so parts with gauges go through `merge`)."""
        into.lines += part.lines
        into.events.extend(part.events)
        for reason, count in part.rejected.items():
            into.rejected[reason] = into.rejected.get(reason, 0) + count
            into.examples.setdefault(reason, part.examples[reason])
        self._fold_into(into.series, part.series.items(), current=True)
        for stamp, table in part.past.items():
            self._fold_into(into.past.setdefault(stamp, {}), table.items(), current=False)

    def _fold_into(
        self,
        table: dict[SeriesKey, Accumulator],
        items: Iterable[tuple[SeriesKey, Accumulator]],
        *,
        current: bool,
    ) -> None:
        for raw_key, acc in items:
            key = self._admitted(raw_key)
            have = table.get(key)
            if isinstance(acc, Gauge) and have is None and current:
                have = table[key] = Gauge(self._gauges.get(key, 0.0))
            table[key] = acc if have is None else combine(have, acc)

    def _admitted(self, key: SeriesKey) -> SeriesKey:
        """The key itself, or its metric's overflow series past the tag-set budget."""
        guard = self._guard
        if guard is None or guard.admit(key[1], key[2]):
            return key
        into = guard.overflow_metric(key[1], key[0].value)
        counted = key[1] if into == key[1] else SHARED_OVERFLOW  # (no state per new name)
        self.folded_samples[counted] = self.folded_samples.get(counted, 0) + 1
        return (key[0], into, self._overflow_tags)


def combine(into: Accumulator, part: Accumulator) -> Accumulator:
    """``into`` with ``part`` added (same kind of series)."""
    if isinstance(into, Counter) and isinstance(part, Counter):
        into.total += part.total
    elif isinstance(into, SetOf) and isinstance(part, SetOf):
        into.members |= part.members
    elif isinstance(into, Gauge) and isinstance(part, Gauge):
        _gauge(into, part)
    elif isinstance(into, Summary) and isinstance(part, Summary):
        _summary(into, part)
    return into


def _gauge(into: Gauge, part: Gauge) -> None:
    if part.start is None:  # the part's sender set the gauge: its value stands
        into.value, into.start = part.value, None
    else:
        into.value += part.value - part.start


def _summary(into: Summary, part: Summary) -> None:
    small = len(into.values) + len(part.values) <= MAX_SUMMARY_VALUES
    if into.running is None and part.running is None and small:
        if into.weights is not None or part.weights is not None:
            into.weights = _weights(into) + _weights(part)
        into.values.extend(part.values)
        return
    running = into.running or Running.of(into.values, into.weights)
    other = part.running or Running.of(part.values, part.weights)
    running.merge(other)
    into.seen = (into.seen or len(into.values)) + (part.seen or len(part.values))
    pool = into.values + part.values
    into.values = (
        pool if len(pool) <= MAX_SUMMARY_VALUES else random.sample(pool, MAX_SUMMARY_VALUES)
    )
    into.running, into.weights = running, None


def _weights(acc: Summary) -> list[float]:
    return acc.weights if acc.weights is not None else [1.0] * len(acc.values)


# A worker's interval crosses the pipe as plain tuples, lists and floats, which pickle in C;
# pickling the slotted accumulators themselves costs ~10x more (bench/scaling_bench.py).
Rows = list[tuple[Any, ...]]
Wire = tuple[Rows, dict[int, Rows], list[Any], dict[str, int], dict[str, bytes], int]


def to_wire(snapshot: Snapshot) -> Wire:
    past = {stamp: _rows(table) for stamp, table in snapshot.past.items()}
    return (
        _rows(snapshot.series),
        past,
        snapshot.events,
        snapshot.rejected,
        snapshot.examples,
        snapshot.lines,
    )


def from_wire(wire: Wire) -> Snapshot:
    series, past, events, rejected, examples, lines = wire
    return Snapshot(
        series=_table(series),
        past={stamp: _table(rows) for stamp, rows in past.items()},
        events=events,
        rejected=rejected,
        examples=examples,
        lines=lines,
    )


def _rows(table: dict[SeriesKey, Accumulator]) -> Rows:
    return [(key, *_state(acc)) for key, acc in table.items()]


def _state(acc: Accumulator) -> tuple[Any, ...]:
    if isinstance(acc, Counter):
        return ("c", acc.total)
    if isinstance(acc, Gauge):
        return ("g", acc.value, acc.start)
    if isinstance(acc, SetOf):
        return ("s", list(acc.members))
    running = acc.running
    figures = None if running is None else tuple(getattr(running, f) for f in Running.__slots__)
    return ("ms", acc.values, acc.weights, figures, acc.seen)


def _table(rows: Rows) -> dict[SeriesKey, Accumulator]:
    return {row[0]: _accumulator(row[1:]) for row in rows}


def _accumulator(state: tuple[Any, ...]) -> Accumulator:
    kind = state[0]
    if kind == "c":
        counter = Counter()
        counter.total = state[1]
        return counter
    if kind == "g":
        gauge = Gauge(state[2])
        gauge.value = state[1]
        return gauge
    if kind == "s":
        members = SetOf()
        members.members = set(state[1])
        return members
    summary = Summary()
    summary.values, summary.weights, figures, summary.seen = state[1:]
    if figures is not None:
        summary.running = Running()
        for name, value in zip(Running.__slots__, figures, strict=True):
            setattr(summary.running, name, value)
    return summary
