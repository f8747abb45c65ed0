"""The two seams of the pipeline: sources feed the aggregator, sinks deliver flushed intervals.

    sources (UDP, Unix, TCP, AppOptics API intake, fleet receiver, --workers)
        -> aggregator (+ the cardinality guard, once per process)
        -> flusher (wall-clock ticks; a chunk of series at a time)
        -> sinks (AppOptics HTTP, OTLP/HTTP, dry run, fleet forwarder), each on its own

A source either feeds the aggregator directly as it reads (the StatsD listeners), or keeps
its own part of each interval (worker processes, the AppOptics API intake, the fleet
receiver) that the flusher takes and merges with the aggregator's (`statsd_ao.core.merge`).

A sink gets every chunk of an interval's series as accumulators and turns them into its own
form (AppOptics measurements, OTLP points, forwarded parts).  Every sink sees the same
series: the guard runs before them.  `series` and `measurements` never block and never await:
a sink queues what it made in its own bounded outbox and delivers on its own schedule, so a
sink that is down never holds another back.  Every data point handed to a sink ends up
delivered, counted as lost under a reason, or kept in its spool subdirectory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from statsd_ao.core.accumulators import Accumulator
from statsd_ao.core.aggregator import SeriesKey, Snapshot
from statsd_ao.core.events import Event
from statsd_ao.core.measurements import Measurement

# One chunk of an interval: series and their accumulators, taken out of a snapshot.  Sinks
# read them and must not change them (the next sink reads the same objects).
SeriesItems = list[tuple[SeriesKey, Accumulator]]


class Source(Protocol):
    """Anything that takes input in: opened at start, closed at shutdown.  (The HTTP
    endpoint and the etsy admin interface have the same lifecycle and shape.)"""

    def describe(self) -> str:
        """Where it listens, for log lines (``udp 127.0.0.1:8125``)."""
        ...

    async def open(self) -> None:
        """Bind and start taking input; raises `OSError` saying why it cannot."""

    async def close(self) -> None:
        """Stop taking input, after taking in what was already received (the kernel's
        queue, requests being read)."""


class PartSource(Source, Protocol):
    """A source that keeps its own part of each interval (worker processes, the AppOptics
    API intake, the fleet receiver): the flusher takes its parts at every tick."""

    async def take(self) -> list[Snapshot]:
        """The interval's parts held since the last take (may be empty)."""
        ...


class Sink(Protocol):
    """One destination of flushed intervals, with its own delivery state."""

    # Its label in self-metrics and logs, and its spool subdirectory: "appoptics", "otlp",
    # "stdout", "forward".
    name: str

    @property
    def is_open(self) -> bool:
        """Started and able to deliver (for the readiness check)."""
        ...

    async def start(self) -> None:
        """Open the spool and the connection; raises `statsd_ao.io.spool.SpoolError` (or
        `OSError`) when it cannot be used."""

    def prepare(self, table: Mapping[SeriesKey, Accumulator]) -> None:
        """See a whole table of an interval (its current series, or a past interval's)
        before its chunks arrive, e.g. to find names two series would both be sent under;
        ``prepare({})`` after the last.  Read it only."""

    def series(self, items: SeriesItems, stamp: int, period: int) -> int:
        """Convert a chunk of series for the interval starting at ``stamp`` and queue what
        fills whole requests; returns the data points made.  Never blocks."""
        ...

    def measurements(self, batch: Sequence[Measurement]) -> int:
        """Queue ready-made measurements (self-metrics, in AppOptics form); returns the
        data points made.  Never blocks."""
        ...

    def end_interval(self) -> None:
        """Queue what is held back waiting for a full request."""

    def event(self, event: Event) -> None:
        """A DogStatsD event (an AppOptics annotation, an OTLP log record...)."""

    async def drain(self, timeout: float) -> int:
        """Deliver what is queued within ``timeout`` seconds, then stop; returns the data
        points lost (neither delivered nor kept in the spool: counted under a reason)."""
        ...

    @property
    def kept(self) -> int:
        """Data points left in the spool at exit, for the next run."""
        ...

    @property
    def delivered(self) -> int:
        """Data points the backend confirmed."""
        ...

    @property
    def lost(self) -> Mapping[str, int]:
        """Data points that will never be delivered, by reason (conversion included)."""
        ...

    async def close(self) -> None:
        """Release the connection and the spool (after `drain`, or at a failed start)."""
