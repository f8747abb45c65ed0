"""The AppOptics sink: an interval's series as measurements, in posts of at most the batch size.

It converts each chunk of series with a `Converter` (the only place values the API cannot
take are dropped, and counted), holds back what does not fill a whole post until the
interval ends, and hands each post to its poster: `statsd_ao.io.sink.HttpSink` (the API,
with the delivery guarantees) or `DryRunSink` (stdout).  DogStatsD events become
annotations in the configured stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from statsd_ao.core.accumulators import Accumulator
from statsd_ao.core.aggregator import SeriesKey
from statsd_ao.core.annotations import stream_of, to_annotation
from statsd_ao.core.batching import chunked
from statsd_ao.core.events import Event
from statsd_ao.core.logs import RateLimitedLog, fields
from statsd_ao.core.measurements import Converter, Measurement
from statsd_ao.io.sink import Poster
from statsd_ao.pipeline import SeriesItems

log = logging.getLogger(__name__)

# Conversion drops (values the API cannot take) are logged at most this often; the counters
# (statsd_ao.measurements.lost) carry every one.
DROP_LOG_INTERVAL = 60.0


class AppOpticsSink:
    """A `statsd_ao.pipeline.Sink` posting AppOptics measurements (or printing them)."""

    def __init__(
        self,
        converter: Converter,
        poster: Poster,
        *,
        batch_size: int,
        annotation_stream: str,
        host: str,
        name: str = "appoptics",
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``name``: "appoptics", or "stdout" for a dry run's poster."""
        self.name = name
        self.converter = converter
        self.poster = poster
        self._batch_size = batch_size
        self._stream = annotation_stream
        self._host = host
        self._clock = clock
        self._pending: list[Measurement] = []
        self._dropped_seen = 0
        self._drop_log = RateLimitedLog(log, DROP_LOG_INTERVAL)

    @property
    def is_open(self) -> bool:
        return self.poster.is_open

    async def start(self) -> None:
        await self.poster.start()

    def prepare(self, table: Mapping[SeriesKey, Accumulator]) -> None:
        self.converter.claim(table)  # percentile names another series is sent under

    def series(self, items: SeriesItems, stamp: int, period: int) -> int:
        return self.measurements(self.converter.convert(items, stamp, period))

    def measurements(self, batch: Sequence[Measurement]) -> int:
        self._pending.extend(batch)
        self._submit(whole_posts_only=True)
        return len(batch)

    def end_interval(self) -> None:
        self._submit(whole_posts_only=False)
        self._report_drops()

    def event(self, event: Event) -> None:
        """To the configured stream, or the one an annotation posted to the intake names."""
        annotation = to_annotation(event, self._host, int(self._clock()))
        self.poster.annotate(stream_of(event, self._stream), annotation)

    async def drain(self, timeout: float) -> int:
        self._submit(whole_posts_only=False)  # (held back if the final flush failed midway)
        return await self.poster.drain(timeout)

    @property
    def kept(self) -> int:
        return self.poster.kept

    @property
    def delivered(self) -> int:
        return self.poster.posted

    @property
    def lost(self) -> Mapping[str, int]:
        """The poster's losses and the converter's drops, by reason."""
        merged = dict(self.converter.dropped)
        for reason, count in self.poster.lost.items():
            merged[reason] = merged.get(reason, 0) + count
        return merged

    def _report_drops(self) -> None:
        """Say so when the interval had values the API cannot take (never posted)."""
        total = sum(self.converter.dropped.values())
        if total == self._dropped_seen:
            return
        new, self._dropped_seen = total - self._dropped_seen, total
        self._drop_log.warning(
            "dropped",
            "%s: dropped %d measurements the API cannot take (NaN, infinite, or 1e126 or more "
            "in magnitude); %s so far",
            self.name,
            new,
            dict(self.converter.dropped),
            extra=fields(sink=self.name, dropped=new, by_reason=dict(self.converter.dropped)),
        )

    async def close(self) -> None:
        await self.poster.close()

    def _submit(self, *, whole_posts_only: bool) -> None:
        """Hand the pending measurements' posts to the poster (all, or only full ones)."""
        pending, size = self._pending, self._batch_size
        count = len(pending) - len(pending) % size if whole_posts_only else len(pending)
        for post in chunked(pending[:count], size):
            self.poster.submit(post)
        del pending[:count]
