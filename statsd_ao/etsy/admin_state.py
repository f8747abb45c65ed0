"""The running proxy as the etsy management interface sees it (`admin.AdminState`).

etsy names have no tags, so a series shows as its name, plus ``#k=v,...`` for the tags it
has beyond the global ones (the Librato-backend form, which statsd-ao also parses).
Runs on the loop thread, never blocks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from statsd_ao.core.accumulators import Counter, Summary
from statsd_ao.core.aggregator import Aggregator, SeriesKey
from statsd_ao.core.idle import IdleKeeper
from statsd_ao.core.protocol import Kind
from statsd_ao.etsy.admin import Health


class Flushed(Protocol):
    """What the flusher counted of the intervals flushed so far."""

    @property
    def lines(self) -> int: ...
    @property
    def rejected(self) -> Mapping[str, int]: ...


class ProxyAdminState:
    def __init__(
        self,
        aggregator: Aggregator,
        flushed: Flushed,
        global_tags: Mapping[str, str],
        health: Health = "up",
        *,
        clock: Callable[[], float] = time.time,
        idle: IdleKeeper | None = None,
    ) -> None:
        """``idle``: etsy's idle series (the flusher's), when kept: they are series too to
        the ``del*`` commands."""
        self._aggregator = aggregator
        self._flushed = flushed
        self._idle = idle
        self._globals = dict(global_tags)
        self._health: Health = health
        self._clock = clock
        # etsy starts last_msg_seen at the start time, so before any line it shows the uptime.
        self._last_seen = clock()
        self._lines_seen = 0

    def display(self, key: SeriesKey) -> str:
        own = [f"{k}={v}" for k, v in key[2] if self._globals.get(k) != v]
        return key[1] + ("#" + ",".join(own) if own else "")

    def counters(self) -> Mapping[str, float]:
        return {
            self.display(key): acc.total
            for key, acc in self._aggregator.current.items()
            if isinstance(acc, Counter)
        }

    def gauges(self) -> Mapping[str, float]:
        return {self.display(key): value for key, value in self._aggregator.gauge_values().items()}

    def timers(self) -> Mapping[str, Sequence[float]]:
        return {
            self.display(key): list(acc.values)
            for key, acc in self._aggregator.current.items()
            if isinstance(acc, Summary)
        }

    def observe(self) -> None:
        """Note the time if lines arrived since the last look.  Called at every flush and
        every ``stats``, so ``last_msg_seen`` is at most one flush interval later than the
        last line (looking per line would cost the hot path a clock read per datagram)."""
        lines = self._flushed.lines + self._aggregator.lines_now
        if lines != self._lines_seen:
            self._lines_seen, self._last_seen = lines, self._clock()

    def stats(self) -> Mapping[str, float]:
        self.observe()
        bad = sum(self._flushed.rejected.values()) + self._aggregator.rejected_now
        return {"messages.last_msg_seen": self._last_seen, "messages.bad_lines_seen": bad}

    def health(self) -> Health:
        return self._health

    def set_health(self, status: Health) -> None:
        self._health = status

    def delete_counters(self, names: Sequence[str]) -> None:
        self._forget(Kind.COUNTER, names, self._aggregator.current)

    def delete_gauges(self, names: Sequence[str]) -> None:
        self._forget(Kind.GAUGE, names, self._aggregator.gauge_values())

    def delete_timers(self, names: Sequence[str]) -> None:
        self._forget(Kind.SUMMARY, names, self._aggregator.current)

    def _forget(self, kind: Kind, names: Sequence[str], keys: Iterable[SeriesKey]) -> None:
        idle = self._idle
        if idle is not None:  # idle series are still series to etsy's del* commands
            keys = [*keys, *idle.keys()]
        wanted = set(names)
        doomed = [key for key in keys if key[0] is kind and self.display(key) in wanted]
        self._aggregator.forget(doomed)
        if idle is not None:  # nor may it come back as an idle series
            idle.forget(doomed)
