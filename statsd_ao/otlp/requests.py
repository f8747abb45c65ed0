"""OTLP export requests, bounded in data points and bytes, encoded and gzipped (pure).

Theory of operation.  `Requests` keeps one open ``ExportMetricsServiceRequest`` and adds
data points to it as the converter (`statsd_ao.otlp.convert`) makes them: one
``ResourceMetrics`` per value of the ``host`` tag (it becomes the resource's ``host.name``;
the configured resource attributes, ``service.name`` among them, are on every resource), one
``Metric`` per name and point type in it, the points in their metric.  When a point would
take the request past ``max_points`` or past ``max_bytes`` (uncompressed protobuf, counted
from an upper bound of each part's encoded size, so the bound holds without measuring the
request), or when its series is already in the request (the same name, resource and
attributes: a counter and a gauge of one name, a ``|T`` sample of an earlier interval), the
request is sealed first: serialized, gzipped, and handed to ``emit`` with its point count.

Attributes are the slow part of building points (a ``KeyValue`` and an ``AnyValue`` message
per tag).  A series' attributes are encoded once, as a data point holding nothing else, and
merged into each new point as bytes (``MergeFromString``, the message's own parser), from a
bounded cache keyed by the series' tags: the same series comes back every interval
(bench/flush_bench.py measures both, cold and warm).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    HistogramDataPoint,
    NumberDataPoint,
    ScopeMetrics,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from statsd_ao.core.protocol import TagTuple

# Data points per request.  Big enough that a request's fixed cost (headers, TLS record,
# the receiver's per-request work) is spread thin and gzip finds the repeats, small enough
# that a request refused whole is isolated by splitting in ~2*log2(2000) = 22 posts, and
# that one retried request is a few hundred kilobytes.  The OpenTelemetry Collector's batch
# processor sends 8192 by default; SWO publishes no limit.
DEFAULT_MAX_POINTS = 2000
# Bytes per request, uncompressed protobuf: well under the 4 MiB a gRPC receiver takes by
# default and the OpenTelemetry Collector's HTTP receiver limits, so a relay in between
# takes it too; 2000 typical points are 150-300 KB, so this bound only bites for very long
# names and tags.
DEFAULT_MAX_BYTES = 1024 * 1024
# gzip level 1: on the bench workload's requests it leaves 26.5% of the protobuf bytes,
# level 6 21.3%, but level 6 takes 11 ms per 2000-point request against 3.3 ms: a stall of
# the event loop for 20% fewer bytes (measured 2026-12-08, docs/otlp.md "Speed").
GZIP_LEVEL = 1
# Attribute sets whose encoding is kept between intervals (about 150 bytes each); past this
# the cache is cleared and refilled from traffic, so memory stays bounded under a
# cardinality attack.
ATTRIBUTE_SETS = 200_000
# The tag that becomes the resource's host.name (semantic conventions: "host.name").
HOST_TAG = "host"
HOST_ATTRIBUTE = "host.name"
SCOPE_NAME = "statsd-ao"

# Upper bounds of the encoded size of the parts of a request, beyond their strings and the
# attributes' encoded bytes: field tags, length prefixes (at most 4 bytes each below 256 MiB)
# and fixed-size numbers (9 bytes each with their tag).
_NUMBER_POINT = 5 + 3 * 9
_HISTOGRAM_POINT = 5 + 6 * 9 + 2 * 5
_METRIC = 5 + 2 * 5 + 5 + 2 * 2
_RESOURCE = 4 * 5

Emit = Callable[[bytes, int], None]


class Shape:
    """The OTLP point type (and sum flavour) of a metric.  Plain strings, not an Enum: the
    shape is part of a dict key per point, and an Enum's hash is a Python call."""

    SUM = "sum"  # DELTA, monotonic
    UPDOWN_SUM = "updown_sum"  # DELTA, not monotonic
    GAUGE = "gauge"
    HISTOGRAM = "histogram"  # DELTA


class Requests:
    """The open request and the bounds that seal it; sealed requests go to ``emit``."""

    def __init__(
        self,
        emit: Emit,
        *,
        resource: Mapping[str, str],
        version: str = "",
        max_points: int = DEFAULT_MAX_POINTS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        gzip: bool = True,
        attribute_sets: int = ATTRIBUTE_SETS,
    ) -> None:
        if max_points < 1:
            raise ValueError("a request holds at least one data point")
        self._emit = emit
        self._resource = dict(resource)
        self._scope = InstrumentationScope(name=SCOPE_NAME, version=version)
        self._max_points = max_points
        self._max_bytes = max_bytes
        self._gzip = gzip
        self._attribute_sets = attribute_sets
        self._start = self._end = 0
        base = Resource(attributes=[_string(k, v) for k, v in self._resource.items()])
        self._scope_size = _RESOURCE + base.ByteSize() + self._scope.ByteSize()
        # (tags) -> (host, encoded attributes), one cache per point message type
        self._number_attributes: dict[TagTuple, tuple[str | None, bytes]] = {}
        self._histogram_attributes: dict[TagTuple, tuple[str | None, bytes]] = {}
        self.requests = 0  # sealed
        self.points = 0  # in sealed requests
        self.bytes = 0  # of sealed requests, as emitted (gzipped when on)
        self.raw_bytes = 0  # of sealed requests, uncompressed
        self._reset()

    @property
    def open_points(self) -> int:
        """Points in the open request, not yet sealed."""
        return self._count

    def window(self, start: int, end: int) -> None:
        """The start and end (Unix nanoseconds) of the points added from now on."""
        self._start, self._end = start, end

    def number(self, shape: str, name: str, tags: TagTuple, value: float, unit: str = "") -> None:
        """Add one Sum or Gauge point (``shape``: a `Shape`).  The hot path: one call per
        point, so it is written out rather than shared with `histogram`."""
        found = self._number_attributes.get(tags)
        if found is None:
            found = self._attributes(self._number_attributes, NumberDataPoint, tags)
        host, attributes = found
        key = (host, name, unit, shape)
        points = self._metrics.get(key)
        size = _NUMBER_POINT + len(attributes)
        series = (name, tags)
        if self._count and (
            self._count >= self._max_points
            or series in self._series
            or self._bytes + size + (0 if points is not None else self._new_parts(key))
            > self._max_bytes
        ):
            self.seal()
            points = None
        self._series.add(series)
        self._bytes += size
        if points is None:
            points = self._new_metric(key)
        point = points.add(
            start_time_unix_nano=self._start, time_unix_nano=self._end, as_double=value
        )
        if attributes:
            point.MergeFromString(attributes)
        self._count += 1

    def histogram(
        self,
        name: str,
        tags: TagTuple,
        fields: Mapping[str, Any],
        *,
        unit: str = "",
        bounds: Sequence[float] = (),
        counts: Sequence[int] = (),
    ) -> None:
        """Add one Histogram point: ``fields`` has ``count`` and ``sum``, maybe ``min`` and
        ``max``; ``counts`` has one more entry than ``bounds``, or both are empty."""
        host, attributes = self._attributes(self._histogram_attributes, HistogramDataPoint, tags)
        size = _HISTOGRAM_POINT + len(attributes) + 8 * (len(bounds) + len(counts))
        key = (host, name, unit, Shape.HISTOGRAM)
        self._make_room(key, tags, size)
        points = self._metrics.get(key)
        if points is None:
            points = self._new_metric(key)
        point = points.add(
            start_time_unix_nano=self._start,
            time_unix_nano=self._end,
            explicit_bounds=bounds,
            bucket_counts=counts,
            **fields,
        )
        if attributes:
            point.MergeFromString(attributes)
        self._count += 1

    def seal(self) -> None:
        """Emit the open request, if it holds any point."""
        if not self._count:
            return
        raw = self._request.SerializeToString()
        body = gzip.compress(raw, compresslevel=GZIP_LEVEL, mtime=0) if self._gzip else raw
        count = self._count
        self._reset()
        self.requests += 1
        self.points += count
        self.bytes += len(body)
        self.raw_bytes += len(raw)
        self._emit(body, count)

    # -- the open request -----------------------------------------------------------------

    def _reset(self) -> None:
        self._request = ExportMetricsServiceRequest()
        self._scopes: dict[str | None, ScopeMetrics] = {}
        self._metrics: dict[MetricKey, Any] = {}
        self._series: set[tuple[str, TagTuple]] = set()
        self._count = 0
        self._bytes = 0

    def _make_room(self, metric: MetricKey, tags: TagTuple, size: int) -> None:
        """Seal first if the point would break a bound or repeat a series (its name and
        tags, host included); then count it."""
        series = (metric[1], tags)
        if self._count and (
            self._count >= self._max_points
            or series in self._series
            or self._bytes + size + self._new_parts(metric) > self._max_bytes
        ):
            self.seal()
        self._series.add(series)
        self._bytes += size

    def _new_parts(self, metric: MetricKey) -> int:
        """The encoded size of the metric (and resource) a point would add to the request."""
        if metric in self._metrics:
            return 0
        host, name, unit = metric[0], metric[1], metric[2]
        size = _METRIC + len(name.encode()) + len(unit.encode())
        if host not in self._scopes:
            size += self._scope_size + (0 if host is None else _host_size(host))
        return size

    def _new_metric(self, key: MetricKey) -> Any:
        """A new metric in the request (on its host's resource): its data points."""
        host, name, unit, shape = key
        self._bytes += self._new_parts(key)
        scope = self._scopes.get(host)
        if scope is None:
            scope = self._new_scope(host)
        metric = scope.metrics.add(name=name, unit=unit)
        points: Any
        if shape == Shape.GAUGE:
            points = metric.gauge.data_points
        elif shape == Shape.HISTOGRAM:
            metric.histogram.aggregation_temporality = DELTA
            points = metric.histogram.data_points
        else:
            metric.sum.aggregation_temporality = DELTA
            metric.sum.is_monotonic = shape == Shape.SUM
            points = metric.sum.data_points
        self._metrics[key] = points
        return points

    def _new_scope(self, host: str | None) -> ScopeMetrics:
        attributes = dict(self._resource)
        if host is not None:
            attributes[HOST_ATTRIBUTE] = host
        resource = Resource(attributes=[_string(k, v) for k, v in attributes.items()])
        entry = self._request.resource_metrics.add(resource=resource)
        scope: ScopeMetrics = entry.scope_metrics.add(scope=self._scope)
        self._scopes[host] = scope
        return scope

    def _attributes(
        self,
        cache: dict[TagTuple, tuple[str | None, bytes]],
        message: type[NumberDataPoint] | type[HistogramDataPoint],
        tags: TagTuple,
    ) -> tuple[str | None, bytes]:
        """(the ``host`` tag's value or None, the other tags encoded as a point's attributes)."""
        found = cache.get(tags)
        if found is None:
            host = None
            pairs: list[KeyValue] = []
            for key, value in tags:
                if key == HOST_TAG:
                    host = value
                else:
                    pairs.append(_string(key, value))
            found = (host, message(attributes=pairs).SerializeToString())
            if len(cache) >= self._attribute_sets:
                cache.clear()
            cache[tags] = found
        return found


DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
MetricKey = tuple[str | None, str, str, str]  # host, name, unit, shape


def _host_size(host: str) -> int:
    """An upper bound of the encoded host.name attribute."""
    return len(HOST_ATTRIBUTE) + len(host.encode()) + 4 * 5


def _string(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))
