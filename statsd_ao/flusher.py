"""Flush ticks on the wall-clock grid: take the interval -> hand it to every sink.

Ticks fall on multiples of the interval (a 10 s interval flushes at :00, :10, ...).  Each
flush is stamped with the start of the interval it closes.  The schedule advances by whole
intervals from the previous tick, not from "now", so a late wake-up neither repeats a stamp
nor skips one; only a loop stalled for more than a whole interval jumps ahead to the grid
(its data then goes out once, under the newest stamp).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from statsd_ao.core.aggregator import Aggregator, Snapshot
from statsd_ao.core.hotpath import Feeds
from statsd_ao.core.idle import IdleKeeper
from statsd_ao.core.logs import RateLimitedLog, fields
from statsd_ao.core.measurements import Measurement
from statsd_ao.core.sanitize import DELIBERATE
from statsd_ao.pipeline import SeriesItems, Sink

log = logging.getLogger(__name__)

# Series handed to the sinks (each converts them and queues its full requests) between two
# yields to the event loop: ~15 ms of work, so a flush of 100,000 series never keeps the
# socket unread for long (bench/flush_bench.py).
CONVERT_CHUNK = 1000
# Bytes of a rejected line quoted in the log.
EXAMPLE_BYTES = 120
# A metric over its tag-set budget is named in the log at most this often.
FOLD_LOG_INTERVAL = 300.0


def next_tick(now: float, interval: int) -> float:
    """The first grid point strictly after ``now``."""
    return (math.floor(now / interval) + 1) * interval


@dataclass(frozen=True, slots=True)
class FlushReport:
    stamp: int
    series: int
    measurements: int  # data points made, summed over the sinks
    rejected: int  # bad lines (not those left out on purpose)
    seconds: float


def _free_some(table: Feeds) -> None:
    """Let one chunk of the old interval's line shapes go."""
    for _ in range(min(CONVERT_CHUNK, len(table))):
        table.popitem()


Extras = Callable[[int, int], Sequence[Measurement]]


class Flusher:
    """Owns the schedule; each flush hands one interval to every sink.

    ``take`` is where an interval comes from (default: the aggregator's swap; with part
    sources, the merge of every part); ``idle`` keeps etsy's idle series, when asked for;
    ``extras`` adds measurements to each flush (self-metrics); ``pause`` wraps each flush
    (the garbage-collector policy); ``on_flush`` gets each flush's report.
    """

    def __init__(
        self,
        aggregator: Aggregator,
        sinks: Sequence[Sink],
        *,
        interval: int,
        take: Callable[[], Awaitable[Snapshot]] | None = None,
        idle: IdleKeeper | None = None,
        extras: Extras | None = None,
        pause: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
        on_flush: Callable[[FlushReport], None] | None = None,
        clock: Callable[[], float] = time.time,
        chunk: int = CONVERT_CHUNK,
    ) -> None:
        """``chunk``: series handed to the sinks between two yields to the loop."""
        self._aggregator = aggregator
        self._sinks = tuple(sinks)
        self._chunk = chunk
        self._interval = interval
        self._take = take
        self._idle = idle
        self._extras = extras
        self._pause = pause
        self._on_flush = on_flush
        self._clock = clock
        self._tick = next_tick(clock(), interval)
        self.flushes = 0
        self.lines = 0
        self.rejected: dict[str, int] = {}  # bad lines, by reason
        self.left_out: dict[str, int] = {}  # lines left out as configured (filters, drop rules)
        self._folds_seen = 0
        self._folds_reported_at = -FOLD_LOG_INTERVAL
        self._fold_log = RateLimitedLog(log, FOLD_LOG_INTERVAL)
        # Series in the flush being made or, between flushes, in the last one; None before
        # the first.
        self.series_flushed: int | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Flush at every tick until ``stop`` is set (the final flush is `flush_final`)."""
        while not stop.is_set():
            delay = max(0.0, self._tick - self._clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # not wait_for: see HttpSink._dispatch
                    await stop.wait()
                return
            stamp = self._advance()
            try:
                await self.flush(stamp)
            except Exception:  # a bug: say so loudly, keep flushing (never die silently)
                log.exception("flush of the interval at %d failed", stamp)

    async def flush_final(self) -> FlushReport:
        """Flush what the current, unfinished interval holds (at shutdown)."""
        return await self.flush(int(self._tick - self._interval))

    def _advance(self) -> int:
        stamp = int(self._tick - self._interval)
        self._tick += self._interval
        now = self._clock()
        if now >= self._tick:  # stalled for more than an interval: rejoin the grid
            log.warning(
                "flush is %.1f s late; rejoining the %d s grid", now - self._tick, self._interval
            )
            self._tick = next_tick(now, self._interval)
        return stamp

    async def flush(self, stamp: int) -> FlushReport:
        with self._pause():
            return await self._flush(stamp)

    async def _flush(self, stamp: int) -> FlushReport:
        """Stream the interval out: a chunk of series at a time is taken out of the snapshot,
        handed to every sink (each converts it and queues its full requests), and freed,
        between yields to the loop, so no step (allocating, encoding, freeing) is ever large."""
        started = time.perf_counter()
        snapshot = await self._take() if self._take is not None else self._aggregator.swap()
        self._account(snapshot)
        series = made = 0
        for group_stamp, table in [(stamp, snapshot.series), *sorted(snapshot.past.items())]:
            for sink in self._sinks:
                sink.prepare(table)  # e.g. percentile names another series has
            while table:
                chunk = [table.popitem() for _ in range(min(self._chunk, len(table)))]
                series += len(chunk)
                if self._idle is not None and group_stamp == stamp:
                    self._idle.remember(chunk)
                made += self._hand_over(chunk, group_stamp)
                del chunk  # the accumulators go now, not all at the end
                _free_some(snapshot.feeds)
                await asyncio.sleep(0)  # let the listener read between chunks
        for sink in self._sinks:
            sink.prepare({})
        snapshot.feeds.clear()  # what the chunks left (lines shapes of no series)
        self.series_flushed = series  # before the extras, whose self-metrics report it
        made += self._closing(stamp)
        for sink in self._sinks:
            sink.end_interval()
            for event in snapshot.events:
                sink.event(event)
        self._aggregator.maintain()
        self._report_folds()
        self.flushes += 1
        bad = sum(n for reason, n in snapshot.rejected.items() if reason not in DELIBERATE)
        report = FlushReport(stamp, series, made, bad, time.perf_counter() - started)
        log.debug("flush %s", report)
        if self._on_flush is not None:
            self._on_flush(report)
        return report

    def _hand_over(self, chunk: SeriesItems, stamp: int) -> int:
        return sum(sink.series(chunk, stamp, self._interval) for sink in self._sinks)

    def _closing(self, stamp: int) -> int:
        """Idle series (etsy's semantics, when asked for) and the extras; points made."""
        made = 0
        if self._idle is not None:
            # An idle series is posted only while the guard still counts its tag set, so
            # idle series never take a metric past its cardinality budget.
            guard = self._aggregator.guard
            keep = (lambda key: guard.tracks(key[1], key[2])) if guard is not None else None
            made += self._hand_over(list(self._idle.stand_ins(keep).items()), stamp)
        if self._extras is not None:
            extras = self._extras(stamp, self._interval)
            made += sum(sink.measurements(extras) for sink in self._sinks)
        return made

    def _account(self, snapshot: Snapshot) -> None:
        """Count lines, bad ones and those left out on purpose apart; one log line per
        interval at most, with examples, for the bad ones."""
        self.lines += snapshot.lines
        bad: dict[str, int] = {}
        for reason, count in snapshot.rejected.items():
            tally = self.left_out if reason in DELIBERATE else bad
            tally[reason] = tally.get(reason, 0) + count
        for reason, count in bad.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + count
        if bad:
            detail = "; ".join(
                f"{reason}: {count} (e.g. {snapshot.examples[reason][:EXAMPLE_BYTES]!r})"
                for reason, count in sorted(bad.items())
            )
            log.warning(
                "rejected %d lines in the last interval: %s",
                sum(bad.values()),
                detail,
                extra=fields(rejected=bad),
            )

    def _report_folds(self) -> None:
        """Name the metrics whose new tag sets were folded since the last flush."""
        guard = self._aggregator.guard
        if guard is None:
            return
        folds = guard.folded_tag_sets.total()
        now = time.monotonic()
        if folds == self._folds_seen or now - self._folds_reported_at < FOLD_LOG_INTERVAL:
            return  # offenders() walks tag sets: only when a line may be logged
        self._folds_reported_at = now
        self._folds_seen = folds
        samples = self._aggregator.folded_samples
        for offender in guard.offenders():
            self._fold_log.warning(
                offender.metric,
                "cardinality limit: metric %r has %d tag sets this hour; %d new tag sets "
                "(%d samples) folded into its overflow=true series so far; tag key with the "
                "most values: %s",
                offender.metric,
                offender.admitted,
                offender.folded_tag_sets,
                samples.get(offender.metric, 0),
                offender.busiest_key,
                extra=fields(
                    metric=offender.metric,
                    tag_sets=offender.admitted,
                    folded_tag_sets=offender.folded_tag_sets,
                    folded_samples=samples.get(offender.metric, 0),
                    busiest_key=offender.busiest_key,
                ),
            )
