"""The OTLP requests of `statsd_ao.otlp.requests`, built from ``opentelemetry-proto``'s
messages and serialized by the library (pure): the reference the wire writer there is held
to byte for byte (tests/otlp/test_wire.py), and the "before" of bench/flush_bench.py.

The same `Requests` interface and bounds; slower (a message object per metric and per
point).  A series' attributes are encoded once, as a data point holding nothing else, and
merged into each new point as bytes (``MergeFromString``), from a bounded cache.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Mapping, Sequence
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
from statsd_ao.otlp.requests import (
    ATTRIBUTE_SETS,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_POINTS,
    GZIP_LEVEL,
    HOST_ATTRIBUTE,
    HOST_TAG,
    SCOPE_NAME,
    Emit,
    Shape,
)

# Upper bounds of the encoded size of the parts of a request, beyond their strings and the
# attributes' encoded bytes: field tags, length prefixes (at most 4 bytes each below 256 MiB)
# and fixed-size numbers (9 bytes each with their tag).
_NUMBER_POINT = 5 + 3 * 9
_HISTOGRAM_POINT = 5 + 6 * 9 + 2 * 5
_METRIC = 5 + 2 * 5 + 5 + 2 * 2
_RESOURCE = 4 * 5


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
        count: int,
        total: float,
        *,
        low: float = math.nan,
        high: float = math.nan,
        unit: str = "",
        bounds: Sequence[float] = (),
        counts: Sequence[int] = (),
    ) -> None:
        """Add one Histogram point (`statsd_ao.otlp.requests.Requests.histogram`)."""
        fields: dict[str, Any] = {"count": count, "sum": total}
        if not math.isnan(low):
            fields["min"] = low
        if not math.isnan(high):
            fields["max"] = high
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
