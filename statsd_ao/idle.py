"""etsy statsd's idle series, when asked for (``--send-idle``; etsy's default).

etsy keeps posting a series after it went quiet: a counter as 0, a gauge at its last value,
a set as 0 unique members.  statsd-ao's own default is to post nothing for an idle series.
The flusher asks `IdleKeeper.fill` once per flush (not the hot path).
"""

from __future__ import annotations

from collections.abc import Iterable

from statsd_ao.accumulators import Accumulator, Counter, Gauge, SetOf
from statsd_ao.aggregator import SeriesKey
from statsd_ao.protocol import Kind

# Idle series remembered; past this the ones idle longest are forgotten (etsy itself keeps
# them until restarted).
MAX_IDLE_SERIES = 100_000

_KINDS = {"counters": Kind.COUNTER, "gauges": Kind.GAUGE, "sets": Kind.SET}


class IdleKeeper:
    """Remembers series of the chosen kinds and stands in for them while they are idle."""

    def __init__(self, kinds: Iterable[str], limit: int = MAX_IDLE_SERIES) -> None:
        self._kinds = {_KINDS[kind] for kind in kinds}
        self._limit = limit
        self._known: dict[SeriesKey, float] = {}  # gauge: last value; others: 0.0

    def fill(self, active: dict[SeriesKey, Accumulator]) -> dict[SeriesKey, Accumulator]:
        """Stand-ins for the remembered series missing from ``active``; remembers ``active``.

        Call after ``active`` was converted, so its gauges hold their final values."""
        idle: dict[SeriesKey, Accumulator] = {}
        for key, value in self._known.items():
            if key not in active:
                idle[key] = _stand_in(key[0], value)
        for key, acc in active.items():
            if key[0] in self._kinds:
                self._known.pop(key, None)  # re-inserted last: ordered by activity
                self._known[key] = acc.value if isinstance(acc, Gauge) else 0.0
        while len(self._known) > self._limit:
            del self._known[next(iter(self._known))]
        return idle


def _stand_in(kind: Kind, value: float) -> Accumulator:
    if kind is Kind.GAUGE:
        return Gauge(value)
    return Counter() if kind is Kind.COUNTER else SetOf()
