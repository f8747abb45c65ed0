"""The global tier's keeper of forwarded parts (pure; `statsd_ao.io.fleet_receiver` serves it).

Theory of operation.  Every local proxy sends its interval's series to the globals that
own their names (`statsd_ao.core.fleet_wire`).  A part is taken in once: its identity
(sender, interval, sequence, half) is remembered, and a part seen again (a local re-sent
it because the acknowledgement was lost, or replayed it from its spool) is acknowledged
and dropped.  Parts wait here until ``grace`` seconds after their interval ended, so the
parts of all senders of one interval go out in one flush; `ready` hands them over then,
ordered by interval and by the sender's clock, each as a `Snapshot` holding its series
under the interval's own stamp (``past``), as timestamped samples are.  The flusher's
merge folds them in that order through THE cardinality guard: counters summed, sets
united, summaries over all values, and a gauge's latest absolute value by the sender's
clock (deltas added on top).  A part arriving after its interval was handed over goes out
in a later flush, under its own time.

Bounds: the series held (past it a part is refused, `Taken.FULL`, and the sender retries)
and the identities remembered (past it the oldest are forgotten: a duplicate of a part
older than ``remember`` parts would be taken in twice).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from statsd_ao.core.aggregator import Snapshot
from statsd_ao.core.fleet_wire import Part

# Series held for intervals not handed over yet: 100 locals x 10,000 series for two
# intervals (one in grace, one arriving), ~1 KB each at most.
DEFAULT_MAX_SERIES = 2_000_000
# Part identities remembered for the duplicate check: 100 locals x 10 parts an interval for
# ~15 minutes of 10 s intervals (a local's spool replay after a restart is within that).
DEFAULT_REMEMBER = 100_000
# Seconds after an interval ends that its parts wait for stragglers: a local flushes on the
# same grid and sends at once, so 2 s covers clock skew and a retry or two.
DEFAULT_GRACE = 2.0
# Senders tracked for self-metrics; past it new senders are reported together as "other".
MAX_SENDERS = 10_000


class Taken(Enum):
    TAKEN = "taken"
    DUPLICATE = "duplicate"
    FULL = "full"


@dataclass(slots=True)
class SenderStats:
    """What one local sent, for /metrics and /status."""

    parts: int = 0
    duplicates: int = 0
    series: int = 0
    lag: float = 0.0  # seconds from its last part's interval end to its arrival


class FleetParts:
    """Holds forwarded parts until their interval's grace ends; drops duplicates."""

    def __init__(
        self,
        grace: float = DEFAULT_GRACE,
        *,
        max_series: int = DEFAULT_MAX_SERIES,
        remember: int = DEFAULT_REMEMBER,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._grace = grace
        self._max_series = max_series
        self._remember = remember
        self._clock = clock
        self._seen: OrderedDict[tuple[str, int, int, str], None] = OrderedDict()
        self._held: list[Part] = []
        self.held_series = 0
        self.senders: dict[str, SenderStats] = {}
        self.refused_full = 0  # parts refused: too many series held

    def take_in(self, part: Part) -> Taken:
        """Take ``part`` in, or say why not; the answer to acknowledge it by."""
        stats = self._stats(part.sender)
        if part.ident in self._seen:
            stats.duplicates += 1
            return Taken.DUPLICATE
        if self.held_series + len(part.series) > self._max_series:
            self.refused_full += 1
            return Taken.FULL
        self._seen[part.ident] = None
        if len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        self._held.append(part)
        self.held_series += len(part.series)
        stats.parts += 1
        stats.series += len(part.series)
        stats.lag = self._clock() - (part.stamp + part.period)
        return Taken.TAKEN

    def ready(self) -> list[Snapshot]:
        """The parts whose interval ended ``grace`` seconds ago or more, in merge order."""
        now = self._clock()
        due = [p for p in self._held if p.stamp + p.period + self._grace <= now]
        if not due:
            return []
        self._held = [p for p in self._held if p.stamp + p.period + self._grace > now]
        self.held_series = sum(len(p.series) for p in self._held)
        due.sort(key=lambda p: (p.stamp, p.clock, p.sender, p.seq, p.sub))
        return [Snapshot(past={p.stamp: p.series}) for p in due]

    def take_all(self) -> list[Snapshot]:
        """Every part held, ready or not (the final flush at shutdown)."""
        held, self._held, self.held_series = self._held, [], 0
        held.sort(key=lambda p: (p.stamp, p.clock, p.sender, p.seq, p.sub))
        return [Snapshot(past={p.stamp: p.series}) for p in held]

    def _stats(self, sender: str) -> SenderStats:
        stats = self.senders.get(sender)
        if stats is None:
            if len(self.senders) >= MAX_SENDERS:
                sender = "other"
            stats = self.senders.setdefault(sender, SenderStats())
        return stats
