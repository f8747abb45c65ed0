"""etsy statsd's idle series, when asked for (``--send-idle``; etsy's default).

etsy keeps posting a series after it went quiet: a counter as 0, a gauge at its last value,
a set as 0 unique members.  statsd-ao's own default is to post nothing for an idle series.
The flusher tells `IdleKeeper.remember` each chunk of an interval and asks for its
`stand_ins` once per flush (not the hot path).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from statsd_ao.core.accumulators import Accumulator, Counter, Gauge, SetOf
from statsd_ao.core.aggregator import SeriesKey
from statsd_ao.core.protocol import Kind

# Idle series remembered; past this the ones idle longest are forgotten (etsy itself keeps
# them until restarted).
MAX_IDLE_SERIES = 100_000

_KINDS = {"counters": Kind.COUNTER, "gauges": Kind.GAUGE, "sets": Kind.SET}


class IdleKeeper:
    """Remembers series of the chosen kinds and stands in for them while they are idle.

    Each flush: `remember` every chunk of the interval's converted series (their gauges
    hold final values by then), then `stand_ins` once for the remembered ones not seen.
    """

    def __init__(self, kinds: Iterable[str], limit: int = MAX_IDLE_SERIES) -> None:
        self._kinds = {_KINDS[kind] for kind in kinds}
        self._limit = limit
        self._round = 0  # flushes so far; an entry seen in the current round is active
        self._known: dict[SeriesKey, tuple[float, int]] = {}  # (gauge value or 0, round)

    def remember(self, items: Iterable[tuple[SeriesKey, Accumulator]]) -> None:
        for key, acc in items:
            if key[0] in self._kinds:
                self._known.pop(key, None)  # re-inserted last: ordered by activity
                value = acc.value if isinstance(acc, Gauge) else 0.0
                self._known[key] = (value, self._round)

    def stand_ins(
        self, keep: Callable[[SeriesKey], bool] | None = None
    ) -> dict[SeriesKey, Accumulator]:
        """Stand-ins for the remembered series not seen this flush (and, with ``keep``, only
        those it keeps: the cardinality guard's still-counted tag sets); starts the next."""
        idle = {
            key: _stand_in(key[0], value)
            for key, (value, seen) in self._known.items()
            if seen != self._round and (keep is None or keep(key))
        }
        while len(self._known) > self._limit:
            del self._known[next(iter(self._known))]
        self._round += 1
        return idle

    def keys(self) -> list[SeriesKey]:
        """Every series remembered (active or idle)."""
        return list(self._known)

    def forget(self, keys: Iterable[SeriesKey]) -> None:
        """Stop standing in for these series (etsy's del* commands)."""
        for key in keys:
            self._known.pop(key, None)


def _stand_in(kind: Kind, value: float) -> Accumulator:
    if kind is Kind.GAUGE:
        return Gauge(value)
    return Counter() if kind is Kind.COUNTER else SetOf()
