"""The bounded buffer of posts waiting for the API (pure: no IO, no event loop).

Each entry is a `Parcel`: one post's encoded JSON body with what the retry policy needs.
Parcels are kept oldest data first (by the time they become too old, then by arrival), so
the one sent next, the one evicted when the buffer is full and the one that expires next are
all found at the front.  The bound counts measurements, queued and in flight together, since
both hold memory; only queued parcels can be evicted.  Every parcel that leaves is handed
back to the caller, who counts it: nothing leaves silently.

Parcels hold encoded bodies, not dicts: about 210-260 bytes per buffered measurement of
typical shape, against about 700 as dicts (docs/delivery.md, "Memory", says how measured).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, replace

# Sized so that a 5-minute outage at 10,000 series per 10 s interval loses nothing even when
# every series is a timer with two percentiles (3 measurements per series): 30 intervals x
# 30,000 = 900,000, plus headroom for the interval in flight when the outage began.  With
# the default single percentile that is 8 minutes.  About 210-260 MB when full.
MAX_PENDING = 1_000_000


@dataclass(frozen=True, slots=True)
class Parcel:
    """One post waiting to be delivered."""

    body: bytes  # the encoded post, {"measurements": [...]}
    count: int  # measurements in it
    expires: float  # when its oldest measurement becomes too old to post
    seq: int  # arrival order, for ties and for logs
    attempts: int = 0  # failures charged to it (see `statsd_ao.core.retry.Policy`)
    not_before: float = 0.0  # earliest time to post it again
    ticket: tuple[int, int] | None = None  # where the spool keeps it (`statsd_ao.io.spool`)

    def retry(self, at: float, attempts: int) -> Parcel:
        return replace(self, not_before=at, attempts=attempts)


def _age_order(parcel: Parcel) -> tuple[float, int]:
    return parcel.expires, parcel.seq


class Outbox:
    """Parcels queued or in flight, at most ``capacity`` measurements in all."""

    def __init__(self, capacity: int = MAX_PENDING) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1 measurement")
        self.capacity = capacity
        self._queue: list[Parcel] = []  # sorted by _age_order
        self.queued = 0  # measurements in the queue
        self.in_flight = 0  # measurements taken and not yet settled

    @property
    def pending(self) -> int:
        """Measurements not yet delivered or given up."""
        return self.queued + self.in_flight

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Parcel]:
        return iter(self._queue)

    def put(self, parcel: Parcel) -> list[Parcel]:
        """Queue ``parcel``; returns the oldest queued parcels evicted to stay within the
        capacity (possibly ``parcel`` itself, if nothing older is left to evict)."""
        bisect.insort(self._queue, parcel, key=_age_order)
        self.queued += parcel.count
        evicted: list[Parcel] = []
        while self.pending > self.capacity and self._queue:
            evicted.append(self._pop(0))
        return evicted

    def take(self, now: float) -> Parcel | None:
        """The oldest parcel ready to post at ``now``, now counted as in flight."""
        for index, parcel in enumerate(self._queue):
            if parcel.not_before <= now:
                self._pop(index)
                self.in_flight += parcel.count
                return parcel
        return None

    def settle(self, parcel: Parcel) -> None:
        """A parcel taken earlier is no longer in flight (delivered, requeued or lost)."""
        self.in_flight -= parcel.count

    def expire(self, now: float) -> list[Parcel]:
        """Remove and return the queued parcels too old to post at ``now``."""
        expired: list[Parcel] = []
        while self._queue and self._queue[0].expires <= now:
            expired.append(self._pop(0))
        return expired

    def next_ready(self) -> float | None:
        """The earliest time a queued parcel may be posted; None if none is queued."""
        return min((parcel.not_before for parcel in self._queue), default=None)

    def next_expiry(self) -> float | None:
        """The earliest time a queued parcel becomes too old; None if none is queued."""
        return self._queue[0].expires if self._queue else None

    def hurry(self, latest: float) -> None:
        """Make every queued parcel ready by ``latest`` at the latest (a drain has begun)."""
        self._queue = [
            replace(p, not_before=latest) if p.not_before > latest else p for p in self._queue
        ]

    @property
    def queue(self) -> list[Parcel]:
        """The parcels queued (not in flight), oldest first."""
        return list(self._queue)

    def discard(self, segment: int) -> list[Parcel]:
        """Remove and return the queued parcels the spool kept in ``segment``."""
        gone = [p for p in self._queue if p.ticket is not None and p.ticket[0] == segment]
        if gone:
            self._queue = [p for p in self._queue if p.ticket is None or p.ticket[0] != segment]
            self.queued -= sum(p.count for p in gone)
        return gone

    def abandon(self) -> int:
        """Forget every parcel, queued or in flight; returns the measurements forgotten."""
        forgotten = self.pending
        self._queue, self.queued, self.in_flight = [], 0, 0
        return forgotten

    def _pop(self, index: int) -> Parcel:
        parcel = self._queue.pop(index)
        self.queued -= parcel.count
        return parcel
