"""Flush ticks on the wall-clock grid: swap -> convert -> batch -> sink.

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
from statsd_ao.core.events import Event
from statsd_ao.core.hotpath import Feeds
from statsd_ao.core.idle import IdleKeeper
from statsd_ao.core.logs import RateLimitedLog
from statsd_ao.core.measurements import Converter, Measurement
from statsd_ao.core.sanitize import DELIBERATE
from statsd_ao.io.sink import Sink

log = logging.getLogger(__name__)

# Series converted (and their full batches handed to the sink, which encodes them) between
# two yields to the event loop: ~15 ms of work, so a flush of 100,000 series never keeps the
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
    measurements: int
    rejected: int
    seconds: float


def _free_some(table: Feeds) -> None:
    """Let one chunk of the old interval's line shapes go."""
    for _ in range(min(CONVERT_CHUNK, len(table))):
        table.popitem()


class Flusher:
    """Owns the schedule; each flush hands one interval's measurements to the sink."""

    def __init__(
        self,
        aggregator: Aggregator,
        converter: Converter,
        sink: Sink,
        *,
        interval: int,
        batch_size: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._aggregator = aggregator
        self._converter = converter
        self._sink = sink
        self._interval = interval
        self._batch_size = batch_size
        self._clock = clock
        self._tick = next_tick(clock(), interval)
        self.flushes = 0
        self.lines = 0
        self.rejected: dict[str, int] = {}
        self._folds_seen = 0
        self._folds_reported_at = -FOLD_LOG_INTERVAL
        self._fold_log = RateLimitedLog(log, FOLD_LOG_INTERVAL)
        # Hooks set by the app: measurements added to each flush (self-metrics), and a
        # callback with each flush's report.
        self.extra: Callable[[int, int], Sequence[Measurement]] | None = None
        self.on_event: Callable[[Event], None] | None = None  # DogStatsD events
        self.idle: IdleKeeper | None = None  # etsy's idle series, when asked for
        # Wraps each flush: the app pauses the garbage collector there (gcpolicy.py).
        self.pause: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext
        # Where an interval comes from: the aggregator's swap, or (--workers) the merge of
        # every process's interval.
        self.take: Callable[[], Awaitable[Snapshot]] | None = None
        self.on_flush: Callable[[FlushReport], None] | None = None
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
        with self.pause():
            return await self._flush(stamp)

    async def _flush(self, stamp: int) -> FlushReport:
        """Stream the interval out: a chunk of series at a time is taken out of the snapshot,
        converted, its full batches handed to the sink, and freed, between yields to the
        loop, so no step (allocating, encoding, freeing) is ever large."""
        started = time.perf_counter()
        snapshot = await self.take() if self.take is not None else self._aggregator.swap()
        self._account(snapshot)
        pending: list[Measurement] = []
        series = posted = 0
        for group_stamp, table in [(stamp, snapshot.series), *sorted(snapshot.past.items())]:
            self._converter.claim(table)  # percentile names another series has
            while table:
                chunk = [table.popitem() for _ in range(min(CONVERT_CHUNK, len(table)))]
                series += len(chunk)
                if self.idle is not None and group_stamp == stamp:
                    self.idle.remember(chunk)
                pending.extend(self._converter.convert(chunk, group_stamp, self._interval))
                del chunk  # the accumulators go now, not all at the end
                _free_some(snapshot.feeds)
                posted += self._submit(pending, whole_batches_only=True)
                await asyncio.sleep(0)  # let the listener read between chunks
        self._converter.claim({})
        snapshot.feeds.clear()  # what the chunks left (lines shapes of no series)
        self.series_flushed = series  # before the extras, whose self-metrics report it
        pending.extend(self._closing_measurements(stamp))
        posted += self._submit(pending, whole_batches_only=False)
        if self.on_event is not None:
            for event in snapshot.events:
                self.on_event(event)
        self._aggregator.maintain()
        self._report_folds()
        self.flushes += 1
        report = FlushReport(
            stamp, series, posted, sum(snapshot.rejected.values()), time.perf_counter() - started
        )
        log.debug("flush %s", report)
        if self.on_flush is not None:
            self.on_flush(report)
        return report

    def _closing_measurements(self, stamp: int) -> list[Measurement]:
        """Idle series (etsy's semantics, when asked for) and the app's extras."""
        out: list[Measurement] = []
        if self.idle is not None:
            # An idle series is posted only while the guard still counts its tag set, so
            # idle series never take a metric past its cardinality budget.
            guard = self._aggregator.guard
            keep = (lambda key: guard.tracks(key[1], key[2])) if guard is not None else None
            idle = self.idle.stand_ins(keep)
            out.extend(self._converter.convert(idle.items(), stamp, self._interval))
        if self.extra is not None:
            out.extend(self.extra(stamp, self._interval))
        return out

    def _submit(self, pending: list[Measurement], *, whole_batches_only: bool) -> int:
        """Hand ``pending``'s batches to the sink (all, or only full ones); returns how many
        measurements went."""
        size = self._batch_size
        count = len(pending) - len(pending) % size if whole_batches_only else len(pending)
        for start in range(0, count, size):
            self._sink.submit(pending[start : min(start + size, count)])
        del pending[:count]
        return count

    def _account(self, snapshot: Snapshot) -> None:
        """Count lines and rejections; one log line per interval at most, with examples."""
        self.lines += snapshot.lines
        for reason, count in snapshot.rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + count
        # Lines left out on purpose (filters, drop rules) are counted, not warned about.
        bad = {r: n for r, n in snapshot.rejected.items() if r not in DELIBERATE}
        if bad:
            detail = "; ".join(
                f"{reason}: {count} (e.g. {snapshot.examples[reason][:EXAMPLE_BYTES]!r})"
                for reason, count in sorted(bad.items())
            )
            log.warning("rejected %d lines in the last interval: %s", sum(bad.values()), detail)

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
            )
