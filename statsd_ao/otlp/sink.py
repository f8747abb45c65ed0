"""The OTLP/HTTP sink, and its dry-run form that prints each request's OTLP/JSON.

`OtlpSink` is a `statsd_ao.pipeline.Sink`.  Each chunk of series is converted at once
(`statsd_ao.otlp.convert`) into the open request (`statsd_ao.otlp.requests`); each request
that fills is encoded, gzipped and handed to an `statsd_ao.io.sink.HttpSink` speaking the
OTLP dialect (`statsd_ao.otlp.dialect.Otlp`), which gives it every guarantee of the AppOptics
path: the bounded outbox, retries with backoff and ``Retry-After``, splitting a request
refused whole, the spool (kill -9, SIGTERM: what is not confirmed is delivered by the next
run), and a count of every data point's fate (`posted`, `lost` by reason, `pending`).
`series` and `measurements` never await; the flusher yields between chunks.

DogStatsD events are not delivered over OTLP: they are counted in `events_dropped` and
logged, rate-limited (docs/otlp.md, "Events", says why).
"""

from __future__ import annotations

import importlib.metadata
import logging
import random as _random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO

from google.protobuf import json_format

from statsd_ao.core.accumulators import Accumulator
from statsd_ao.core.aggregator import SeriesKey
from statsd_ao.core.events import Event
from statsd_ao.core.logs import RateLimitedLog
from statsd_ao.core.measurements import Measurement
from statsd_ao.core.outbox import MAX_PENDING
from statsd_ao.core.retry import (
    DEFAULT_BACKOFF,
    DENIED_BACKOFF,
    MAX_AGE,
    MAX_ATTEMPTS,
    Backoff,
)
from statsd_ao.io.settling import LOG_INTERVAL
from statsd_ao.io.sink import RESEND_UNCONFIRMED, HttpSink
from statsd_ao.io.spool import Spool
from statsd_ao.otlp.convert import Converter
from statsd_ao.otlp.dialect import Otlp, decode
from statsd_ao.otlp.requests import DEFAULT_MAX_BYTES, DEFAULT_MAX_POINTS, Emit, Requests
from statsd_ao.pipeline import SeriesItems

log = logging.getLogger(__name__)


# The resource's service.name when none is configured: the semantic conventions' fallback
# is "unknown_service"; naming the proxy says where the points came from.
DEFAULT_SERVICE_NAME = "statsd-ao"
# As the AppOptics sink's defaults (statsd_ao.config): posts in flight, seconds per post.
DEFAULT_CONCURRENCY = 4
DEFAULT_TIMEOUT = 30.0

try:
    VERSION = importlib.metadata.version("statsd-ao")
except importlib.metadata.PackageNotFoundError:  # run from a source tree
    VERSION = ""
USER_AGENT = f"statsd-ao/{VERSION}" if VERSION else "statsd-ao"


def resource_of(service_name: str, attributes: Mapping[str, str] | None) -> dict[str, str]:
    """The resource attributes of every request: ``service.name`` and the configured ones
    (which may replace it)."""
    return {"service.name": service_name, **(attributes or {})}


class _Converting:
    """What both OTLP sinks do with an interval: convert each chunk into the open request,
    seal it at the interval's end.  ``converter`` and ``requests`` are set by the sink."""

    converter: Converter
    requests: Requests

    def _shape(
        self,
        emit: Emit,
        *,
        gzip: bool,
        service_name: str,
        resource_attributes: Mapping[str, str] | None,
        percentiles: Sequence[float],
        buckets: Sequence[float],
        summary_unit: str,
        monotonic_counters: bool,
        max_points: int,
        max_bytes: int,
    ) -> None:
        """The requests (each sealed one handed to ``emit``) and the converter filling them."""
        self.requests = Requests(
            emit,
            resource=resource_of(service_name, resource_attributes),
            version=VERSION,
            max_points=max_points,
            max_bytes=max_bytes,
            gzip=gzip,
        )
        self.converter = Converter(
            self.requests,
            percentiles,
            buckets=buckets,
            summary_unit=summary_unit,
            monotonic_counters=monotonic_counters,
        )

    def prepare(self, table: Mapping[SeriesKey, Accumulator]) -> None:
        return None  # (a series named like a percentile gauge: both are sent; docs/otlp.md)

    def series(self, items: SeriesItems, stamp: int, period: int) -> int:
        return self.converter.series(items, stamp, period)

    def measurements(self, batch: Sequence[Measurement]) -> int:
        return self.converter.measurements(batch)

    def end_interval(self) -> None:
        self.requests.seal()


class OtlpSink(_Converting):
    """Delivers flushed intervals to an OTLP/HTTP metrics URL (protobuf, gzip by default).

    ``url`` is the full metrics URL (`statsd_ao.otlp.swo_url` gives SWO's); ``token`` is
    sent as ``Authorization: Bearer`` (none when empty); ``headers`` are added to every
    request.  ``service_name`` and ``resource_attributes`` go on every resource.
    ``percentiles``, ``buckets``, ``summary_unit`` and ``monotonic_counters`` shape the
    points (`statsd_ao.otlp.convert.Converter`); ``max_points`` and ``max_bytes`` bound each
    request; the rest bound delivery as for `HttpSink`.  ``spool``: the sink's own
    directory (a subdirectory ``otlp`` of the spool root), or None.
    """

    name = "otlp"

    def __init__(
        self,
        url: str,
        token: str = "",
        *,
        headers: Mapping[str, str] | None = None,
        gzip: bool = True,
        service_name: str = DEFAULT_SERVICE_NAME,
        resource_attributes: Mapping[str, str] | None = None,
        percentiles: Sequence[float] = (),
        buckets: Sequence[float] = (),
        summary_unit: str = "",
        monotonic_counters: bool = True,
        max_points: int = DEFAULT_MAX_POINTS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float = DEFAULT_TIMEOUT,
        max_pending: int = MAX_PENDING,
        max_age: float = MAX_AGE,
        max_attempts: int = MAX_ATTEMPTS,
        backoff: Backoff = DEFAULT_BACKOFF,
        denied_backoff: Backoff = DENIED_BACKOFF,
        resend_unconfirmed: bool = RESEND_UNCONFIRMED,
        spool: Spool | None = None,
        random: Callable[[], float] = _random.random,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.dialect = Otlp(url, token, headers=headers, user_agent=USER_AGENT)
        self.http = HttpSink(
            url,
            token,
            concurrency=concurrency,
            timeout=timeout,
            max_pending=max_pending,
            max_age=max_age,
            max_attempts=max_attempts,
            backoff=backoff,
            denied_backoff=denied_backoff,
            resend_unconfirmed=resend_unconfirmed,
            spool=spool,
            random=random,
            clock=clock,
            wall=wall,
            dialect=self.dialect,
        )
        self._shape(
            self.http.submit_body,
            gzip=gzip,
            service_name=service_name,
            resource_attributes=resource_attributes,
            percentiles=percentiles,
            buckets=buckets,
            summary_unit=summary_unit,
            monotonic_counters=monotonic_counters,
            max_points=max_points,
            max_bytes=max_bytes,
        )
        self.events_dropped = 0
        self._log = RateLimitedLog(log, interval=LOG_INTERVAL)

    # The delivery counters (self-metrics, tests), in data points.
    @property
    def posted(self) -> int:
        return self.http.posted

    @property
    def delivered(self) -> int:
        """Data points the receiver confirmed."""
        return self.http.posted

    @property
    def lost(self) -> dict[str, int]:
        """Data points never to be delivered, by reason: delivery's and conversion's."""
        merged = dict(self.converter.dropped)
        for reason, count in self.http.lost.items():
            merged[reason] = merged.get(reason, 0) + count
        return merged

    @property
    def kept(self) -> int:
        """Data points left in the spool at exit, for the next run."""
        return self.http.kept

    @property
    def pending(self) -> int:
        """Data points queued, in flight, or in the open request."""
        return self.http.pending + self.requests.open_points

    @property
    def is_open(self) -> bool:
        return self.http.is_open

    async def start(self) -> None:
        """Open the spool (`SpoolError` if it cannot be used), queue what a previous run
        left in it, and start posting."""
        await self.http.start()

    def event(self, event: Event) -> None:
        self.events_dropped += 1
        self._log.log(
            logging.INFO,
            "event",
            "the OTLP sink does not deliver DogStatsD events (%d so far, e.g. %r)",
            self.events_dropped,
            event.title[:80],
        )

    async def drain(self, timeout: float) -> int:
        """Send the open request, deliver what is queued within ``timeout`` seconds, then
        stop; returns the data points left undelivered."""
        self.requests.seal()
        return await self.http.drain(timeout)

    async def close(self) -> None:
        await self.http.close()


class OtlpDryRunSink(_Converting):
    """Prints each request as one line of OTLP/JSON (the protobuf JSON mapping, enums as
    integers as OTLP/JSON requires) instead of sending it."""

    name = "stdout"

    def __init__(
        self,
        stream: IO[bytes] | None = None,
        *,
        service_name: str = DEFAULT_SERVICE_NAME,
        resource_attributes: Mapping[str, str] | None = None,
        percentiles: Sequence[float] = (),
        buckets: Sequence[float] = (),
        summary_unit: str = "",
        monotonic_counters: bool = True,
        max_points: int = DEFAULT_MAX_POINTS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._shape(
            self._print,
            gzip=False,
            service_name=service_name,
            resource_attributes=resource_attributes,
            percentiles=percentiles,
            buckets=buckets,
            summary_unit=summary_unit,
            monotonic_counters=monotonic_counters,
            max_points=max_points,
            max_bytes=max_bytes,
        )
        self.points = 0

    @property
    def is_open(self) -> bool:
        return True

    @property
    def kept(self) -> int:
        return 0

    @property
    def delivered(self) -> int:
        """Data points printed."""
        return self.points

    @property
    def lost(self) -> dict[str, int]:
        return dict(self.converter.dropped)

    async def start(self) -> None:
        return None

    def event(self, event: Event) -> None:
        return None

    async def drain(self, timeout: float) -> int:
        self.requests.seal()
        return 0

    async def close(self) -> None:
        return None

    def _print(self, body: bytes, count: int) -> None:
        text = json_format.MessageToJson(decode(body), indent=None, use_integers_for_enums=True)
        self._stream.write(text.encode() + b"\n")
        self._stream.flush()
        self.points += count
