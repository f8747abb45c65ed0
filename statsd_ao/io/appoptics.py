"""The AppOptics sink: an interval's series as measurements, in posts of at most the batch size.

It converts each chunk of series with a `Converter` (the only place values the API cannot
take are dropped, and counted), holds back what does not fill a whole post until the
interval ends, and hands each post to its poster: `statsd_ao.io.sink.HttpSink` (the API,
with the delivery guarantees) or `DryRunSink` (stdout).  DogStatsD events become
annotations in the configured stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from statsd_ao.core.annotations import to_annotation
from statsd_ao.core.batching import chunked
from statsd_ao.core.events import Event
from statsd_ao.core.measurements import Converter, Measurement
from statsd_ao.io.sink import Poster
from statsd_ao.pipeline import SeriesItems


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

    @property
    def is_open(self) -> bool:
        return self.poster.is_open

    async def start(self) -> None:
        await self.poster.start()

    def series(self, items: SeriesItems, stamp: int, period: int) -> int:
        return self.measurements(self.converter.convert(items, stamp, period))

    def measurements(self, batch: Sequence[Measurement]) -> int:
        self._pending.extend(batch)
        self._submit(whole_posts_only=True)
        return len(batch)

    def end_interval(self) -> None:
        self._submit(whole_posts_only=False)

    def event(self, event: Event) -> None:
        self.poster.annotate(self._stream, to_annotation(event, self._host, int(self._clock())))

    async def drain(self, timeout: float) -> int:
        return await self.poster.drain(timeout)

    @property
    def kept(self) -> int:
        return self.poster.kept

    async def close(self) -> None:
        await self.poster.close()

    def _submit(self, *, whole_posts_only: bool) -> None:
        """Hand the pending measurements' posts to the poster (all, or only full ones)."""
        pending, size = self._pending, self._batch_size
        count = len(pending) - len(pending) % size if whole_posts_only else len(pending)
        for post in chunked(pending[:count], size):
            self.poster.submit(post)
        del pending[:count]
