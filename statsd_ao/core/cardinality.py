"""The tag-set budget: at most N tag sets per metric per rolling hour, the rest folded.

AppOptics "may automatically reject metrics with a cardinality exceeding" 40,000 unique tag
sets per hour (seed 001, Measurement Restrictions), and bills per tag set.  The guard counts
the tag sets each metric posted in the last hour, as the API sees them (after sanitizing and
merging the global tags).  A metric at its limit keeps its admitted tag sets; a NEW tag set
is refused, and the aggregator folds its samples into one overflow series of the metric
(same name, tags = the global tags plus ``overflow=true``), so totals stay exact.

The limit counts the overflow series too: a metric posts at most ``limit - 1`` ordinary tag
sets plus its overflow series.  The aggregator asks once per line shape per flush interval,
never per line, so the window's resolution is the flush interval; `sweep` (once per flush)
expires metrics that stopped sending.

Memory: one entry per admitted tag set (its tag tuple is shared with the series key); the
optional total limit across all metrics bounds it whatever the traffic.  Past the total, a
metric the guard does not track yet gets no state of its own: its samples fold into one
shared overflow series per kind (`shared_overflow`), counted under `SHARED_OVERFLOW`, so a
flood of new metric names costs a fixed amount however many names it brings.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from statsd_ao.core.protocol import TagTuple

# AppOptics' documented ceiling per metric per hour.
DEFAULT_LIMIT = 40_000
# Across all metrics.  Also the guard's memory bound: ~150 bytes an entry, so ~150 MB.
DEFAULT_TOTAL_LIMIT = 1_000_000
WINDOW = 3600.0  # the API counts tag sets per hour

OVERFLOW_TAG = ("overflow", "true")
# Where metrics new past the total limit fold: one series per kind (a counter and a timer
# under one name and tag set would be one metric with two meanings to the API), named
# ``statsd_ao.cardinality.overflow.<kind>``; their folds are counted under this name.
SHARED_OVERFLOW = "statsd_ao.cardinality.overflow"
_KIND_NAMES = {"c": "counter", "g": "gauge", "ms": "timer", "s": "set"}


def shared_overflow(kind: str) -> str:
    """The shared overflow metric of a kind (``c``, ``g``, ``ms``, ``s``)."""
    return f"{SHARED_OVERFLOW}.{_KIND_NAMES[kind]}"


@dataclass(frozen=True, slots=True)
class Offender:
    """A metric that had tag sets folded, for logs and self-reporting."""

    metric: str
    folded_tag_sets: int
    admitted: int
    busiest_key: str | None


class CardinalityGuard:
    """Decides, per metric and tag set, admit or fold.  Pure; time from ``clock``."""

    def __init__(
        self,
        limit: int = DEFAULT_LIMIT,
        total_limit: int | None = DEFAULT_TOTAL_LIMIT,
        *,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 2:
            raise ValueError("the limit must leave room for one tag set and the overflow")
        self._limit = limit
        self._total_limit = total_limit
        self._window = window
        self._clock = clock
        # metric -> {tag set: last seen}; each dict is ordered oldest-seen first.
        self._seen: dict[str, dict[TagTuple, float]] = {}
        self._total = 0
        self.folded_tag_sets: Tally[str] = Tally()

    @property
    def tracked(self) -> int:
        """Tag sets currently counted, across all metrics."""
        return self._total

    def admit(self, metric: str, tags: TagTuple) -> bool:
        """True when ``tags`` may post under ``metric``; False: fold it into the overflow."""
        now = self._clock()
        seen = self._seen.get(metric)
        if seen is None:
            if self._at_total_limit():  # no state for a new name: the shared overflow
                self.folded_tag_sets[SHARED_OVERFLOW] += 1
                return False
            seen = self._seen[metric] = {}
        else:
            self._expire(seen, now)
        if tags in seen:
            del seen[tags]  # re-inserted below: keeps the dict ordered by last seen
            seen[tags] = now
            return True
        if len(seen) >= self._limit - 1 or self._at_total_limit():
            self.folded_tag_sets[metric] += 1
            return False
        seen[tags] = now
        self._total += 1
        return True

    def overflow_metric(self, metric: str, kind: str) -> str:
        """Where a refused tag set of ``metric`` (a series of ``kind``) folds: the metric's
        own overflow series while the guard tracks the metric, else the shared one."""
        return metric if metric in self._seen else shared_overflow(kind)

    def tag_sets(self) -> Iterator[tuple[str, TagTuple]]:
        """Every ``(metric, tags)`` counted in the window (for the status page)."""
        for metric, seen in self._seen.items():
            for tags in seen:
                yield metric, tags

    def tracks(self, metric: str, tags: TagTuple) -> bool:
        """True while ``tags`` counts in ``metric``'s window (its slot is taken)."""
        seen = self._seen.get(metric)
        last = seen.get(tags) if seen is not None else None
        return last is not None and last > self._clock() - self._window

    def count(self, metric: str) -> int:
        """Ordinary tag sets of ``metric`` in the window (the overflow series not included)."""
        seen = self._seen.get(metric)
        if not seen:
            return 0
        self._expire(seen, self._clock())
        return len(seen)

    def sweep(self) -> None:
        """Expire every metric's old tag sets (metrics not seen lately included)."""
        now = self._clock()
        for metric in list(self._seen):
            seen = self._seen[metric]
            self._expire(seen, now)
            if not seen:
                del self._seen[metric]

    def offenders(self, top: int = 5) -> list[Offender]:
        """The metrics with the most folded tag sets, busiest first."""
        return [
            Offender(metric, folded, self.count(metric), self.busiest_key(metric))
            for metric, folded in self.folded_tag_sets.most_common(top)
        ]

    def busiest_key(self, metric: str) -> str | None:
        """The tag key with the most distinct values among the metric's tag sets."""
        values: dict[str, set[str]] = {}
        for tags in self._seen.get(metric, {}):
            for key, value in tags:
                values.setdefault(key, set()).add(value)
        if not values:
            return None
        return max(values, key=lambda key: (len(values[key]), key))

    def _at_total_limit(self) -> bool:
        return self._total_limit is not None and self._total >= self._total_limit

    def _expire(self, seen: dict[TagTuple, float], now: float) -> None:
        horizon = now - self._window
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] > horizon:
                return
            del seen[oldest]
            self._total -= 1
