"""OTLP export requests, bounded in data points and bytes, encoded and gzipped (pure).

Theory of operation.  `Requests` keeps one open ``ExportMetricsServiceRequest`` and adds
data points to it as the converter (`statsd_ao.otlp.convert`) makes them: one
``ResourceMetrics`` per value of the ``host`` tag (it becomes the resource's ``host.name``;
the configured resource attributes, ``service.name`` among them, are on every resource), one
``Metric`` per name and point type in it, the points in their metric.  When a point would
take the request past ``max_points`` or past ``max_bytes`` (uncompressed protobuf: each
point's exact size, and an upper bound of each metric's and resource's envelope), or when
its series is already in the request (the same name, resource and attributes: a counter and
a gauge of one name, a ``|T`` sample of an earlier interval), the request is sealed first:
written out, gzipped, and handed to ``emit`` with its point count.

The request is written as protobuf wire bytes here, not built as messages: each data point
is encoded to bytes as it is added (the interval's timestamps once per window; here a
series' attributes once, then from a bounded cache), and sealing concatenates them inside
their metrics, scopes and resources (a repeated field's entries are concatenated).  The
common cases are converted and written in C (statsd_ao/otlp/_wire.c, through
`statsd_ao.otlp.convert`) into the same containers, and sealed in C (`ENCODE`).  A message
object per metric and per point was most of the cost (bench/README.md, "OTLP encoding").
The schema of record stays ``opentelemetry-proto``: every field number and type used here
is read from its generated descriptors at import (`_field`, which refuses a field whose type
is not the one written), the resource and the instrumentation scope are serialized by its
messages, and tests/otlp/test_wire.py holds the bytes equal to its own ``SerializeToString``
of the same request built from its messages (`tests.otlp.reference`).
"""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from statsd_ao.core import native
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
# cardinality attack.  Resources (one per host) are kept under the same bound.
ATTRIBUTE_SETS = 200_000
# The tag that becomes the resource's host.name (semantic conventions: "host.name").
HOST_TAG = "host"
HOST_ATTRIBUTE = "host.name"
SCOPE_NAME = "statsd-ao"

# Upper bounds of the encoded size of a metric's and a resource's envelope beyond their
# strings: field tags and length prefixes (at most 5 bytes each below 4 GiB), the
# temporality and monotonic flag.
_METRIC = 5 + 2 * 5 + 5 + 2 * 2 + 5
_RESOURCE = 5 * 5

Emit = Callable[[bytes, int], None]


class Shape:
    """The OTLP point type (and sum flavour) of a metric.  Plain strings, not an Enum: the
    shape is part of a dict key per point, and an Enum's hash is a Python call."""

    SUM = "sum"  # DELTA, monotonic
    UPDOWN_SUM = "updown_sum"  # DELTA, not monotonic
    GAUGE = "gauge"
    HISTOGRAM = "histogram"  # DELTA


# -- the wire format, from opentelemetry-proto's descriptors ------------------------------

_WIRE_TYPES = {
    FieldDescriptor.TYPE_FIXED64: 1,  # I64
    FieldDescriptor.TYPE_DOUBLE: 1,
    FieldDescriptor.TYPE_MESSAGE: 2,  # LEN
    FieldDescriptor.TYPE_STRING: 2,
    FieldDescriptor.TYPE_ENUM: 0,  # VARINT
    FieldDescriptor.TYPE_BOOL: 0,
}


def _varint(number: int) -> bytes:
    out = bytearray()
    while number >= 0x80:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


_SMALL = [_varint(n) for n in range(1 << 14)]  # varints of up to two bytes, by value


def _length(number: int) -> bytes:
    """The varint of a length."""
    return _SMALL[number] if number < 16384 else _varint(number)


def _field(message: type, name: str, kind: int, *, packed: bool = False) -> bytes:
    """The encoded tag of ``message``'s field ``name``, which must be of type ``kind`` (a
    ``FieldDescriptor.TYPE_*``); ``packed``: a packed repeated field (length-delimited)."""
    field = message.DESCRIPTOR.fields_by_name[name]  # type: ignore[attr-defined]
    if field.type != kind:
        raise ImportError(
            f"opentelemetry-proto: {message.__name__}.{name} is not of the type written"
        )
    return _varint(field.number << 3 | (2 if packed else _WIRE_TYPES[kind]))


_T = FieldDescriptor
_START = _field(NumberDataPoint, "start_time_unix_nano", _T.TYPE_FIXED64)
_TIME = _field(NumberDataPoint, "time_unix_nano", _T.TYPE_FIXED64)
_AS_DOUBLE = _field(NumberDataPoint, "as_double", _T.TYPE_DOUBLE)
_NUMBER_ATTRIBUTE = _field(NumberDataPoint, "attributes", _T.TYPE_MESSAGE)
_H_START = _field(HistogramDataPoint, "start_time_unix_nano", _T.TYPE_FIXED64)
_H_TIME = _field(HistogramDataPoint, "time_unix_nano", _T.TYPE_FIXED64)
_H_COUNT = _field(HistogramDataPoint, "count", _T.TYPE_FIXED64)
_H_SUM = _field(HistogramDataPoint, "sum", _T.TYPE_DOUBLE)
_H_BUCKETS = _field(HistogramDataPoint, "bucket_counts", _T.TYPE_FIXED64, packed=True)
_H_BOUNDS = _field(HistogramDataPoint, "explicit_bounds", _T.TYPE_DOUBLE, packed=True)
_HISTOGRAM_ATTRIBUTE = _field(HistogramDataPoint, "attributes", _T.TYPE_MESSAGE)
_H_MIN = _field(HistogramDataPoint, "min", _T.TYPE_DOUBLE)
_H_MAX = _field(HistogramDataPoint, "max", _T.TYPE_DOUBLE)
_KEY = _field(KeyValue, "key", _T.TYPE_STRING)
_VALUE = _field(KeyValue, "value", _T.TYPE_MESSAGE)
_STRING_VALUE = _field(AnyValue, "string_value", _T.TYPE_STRING)
_NAME = _field(Metric, "name", _T.TYPE_STRING)
_UNIT = _field(Metric, "unit", _T.TYPE_STRING)
_DATA = {
    Shape.GAUGE: _field(Metric, "gauge", _T.TYPE_MESSAGE),
    Shape.SUM: _field(Metric, "sum", _T.TYPE_MESSAGE),
    Shape.UPDOWN_SUM: _field(Metric, "sum", _T.TYPE_MESSAGE),
    Shape.HISTOGRAM: _field(Metric, "histogram", _T.TYPE_MESSAGE),
}
_POINTS = {
    Shape.GAUGE: _field(Gauge, "data_points", _T.TYPE_MESSAGE),
    Shape.SUM: _field(Sum, "data_points", _T.TYPE_MESSAGE),
    Shape.UPDOWN_SUM: _field(Sum, "data_points", _T.TYPE_MESSAGE),
    Shape.HISTOGRAM: _field(Histogram, "data_points", _T.TYPE_MESSAGE),
}
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
_SUM_TEMPORALITY = _field(Sum, "aggregation_temporality", _T.TYPE_ENUM) + _varint(DELTA)
_MONOTONIC = _field(Sum, "is_monotonic", _T.TYPE_BOOL) + b"\x01"
# What follows a metric's points in its data message (fields after data_points, in order).
_TRAILER = {
    Shape.GAUGE: b"",
    Shape.SUM: _SUM_TEMPORALITY + _MONOTONIC,
    Shape.UPDOWN_SUM: _SUM_TEMPORALITY,
    Shape.HISTOGRAM: _field(Histogram, "aggregation_temporality", _T.TYPE_ENUM) + _varint(DELTA),
}
_SCOPE = _field(ScopeMetrics, "scope", _T.TYPE_MESSAGE)
_METRICS = _field(ScopeMetrics, "metrics", _T.TYPE_MESSAGE)
_RESOURCE_FIELD = _field(ResourceMetrics, "resource", _T.TYPE_MESSAGE)
_SCOPE_METRICS = _field(ResourceMetrics, "scope_metrics", _T.TYPE_MESSAGE)
_RESOURCE_METRICS = _field(ExportMetricsServiceRequest, "resource_metrics", _T.TYPE_MESSAGE)
if not _START < _TIME < _AS_DOUBLE < _NUMBER_ATTRIBUTE or not (
    _H_START
    < _H_TIME
    < _H_COUNT
    < _H_SUM
    < _H_BUCKETS
    < _H_BOUNDS
    < _HISTOGRAM_ATTRIBUTE
    < _H_MIN
    < _H_MAX
):
    # (single-byte tags compare as their field numbers) a point is written in this order,
    # which must be field-number order for the bytes to be the library's own
    raise ImportError("opentelemetry-proto: the data point fields are not in the order written")

# What the C conversion (statsd_ao/otlp/_wire.c) writes with: the tags of the fields it
# writes, and the bounds `_new_parts` uses.
POINTS = _POINTS
HISTOGRAM_FIGURES = (_H_COUNT, _H_SUM, _H_MIN, _H_MAX)
METRIC_BOUND = _METRIC
HOST_BOUND = len(HOST_ATTRIBUTE) + 4 * 5  # `_host_size` less the host's own bytes
STRING_FIELDS = (_KEY, _VALUE, _STRING_VALUE, _NUMBER_ATTRIBUTE, _HISTOGRAM_ATTRIBUTE, _NAME, _UNIT)

_FIXED64 = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack


def _string(tag: bytes, text: str) -> bytes:
    data = text.encode()
    return tag + _length(len(data)) + data


def _message(tag: bytes, data: bytes) -> bytes:
    return tag + _length(len(data)) + data


def encode_attributes(tag: bytes, pairs: Sequence[tuple[str, str]]) -> bytes:
    """``pairs`` as repeated ``KeyValue`` entries (string values) of the field ``tag``."""
    return b"".join(
        _message(tag, _string(_KEY, key) + _message(_VALUE, _string(_STRING_VALUE, value)))
        for key, value in pairs
    )


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
        native: bool = True,
    ) -> None:
        """``native``: seal with the C writer when it is built (False: Python only)."""
        if max_points < 1:
            raise ValueError("a request holds at least one data point")
        self._emit = emit
        self._resource = dict(resource)
        scope = InstrumentationScope(name=SCOPE_NAME, version=version).SerializeToString()
        self._scope = _message(_SCOPE, scope)
        self._max_points = max_points
        self._max_bytes = max_bytes
        self._gzip = gzip
        self._attribute_sets = attribute_sets
        self._native_encode = ENCODE if native else None
        base = Resource(attributes=[_key_value(k, v) for k, v in self._resource.items()])
        self._scope_size = _RESOURCE + base.ByteSize() + len(self._scope)
        # (tags) -> (host, encoded attributes), one cache per point message type
        self._number_attributes: dict[TagTuple, tuple[str | None, bytes]] = {}
        self._histogram_attributes: dict[TagTuple, tuple[str | None, bytes]] = {}
        self._resources: dict[str | None, bytes] = {}  # host -> the encoded resource field
        # name, or (name, unit) when it has one -> `_head`
        self._heads: dict[str | tuple[str, str], bytes] = {}
        self.window(0, 0)
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
        # (proto3: a field at its default, 0, is left out)
        self._number_head = (
            (_START + _FIXED64(start) if start else b"")
            + (_TIME + _FIXED64(end) if end else b"")
            + _AS_DOUBLE
        )
        self._histogram_head = (_H_START + _FIXED64(start) if start else b"") + (
            _H_TIME + _FIXED64(end) if end else b""
        )

    def number(self, shape: str, name: str, tags: TagTuple, value: float, unit: str = "") -> None:
        """Add one Sum or Gauge point (``shape``: a `Shape`).  The hot path: one call per
        point, so it is written out rather than shared with `histogram`."""
        found = self._number_attributes.get(tags)
        if found is None:
            found = self._attributes(self._number_attributes, _NUMBER_ATTRIBUTE, tags)
        host, attributes = found
        data = self._number_head + _DOUBLE(value) + attributes
        point = _POINTS[shape] + _length(len(data)) + data
        key = (host, name, unit, shape)
        points = self._metrics.get(key)
        size = len(point) if points is not None else len(point) + self._new_parts(key)
        series = (name, tags)
        if self._count and (
            self._count >= self._max_points
            or series in self._series
            or self._bytes + size > self._max_bytes
        ):
            self.seal()
            points = None
            size = len(point) + self._new_parts(key)
        self._series.add(series)
        self._bytes += size
        if points is None:
            points = self._new_metric(key)
        points.append(point)
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
        """Add one Histogram point: ``count`` and ``total`` (its sum), ``low`` and ``high``
        (min and max, left out when NaN: not known); ``counts`` has one more entry than
        ``bounds``, or both are empty."""
        found = self._histogram_attributes.get(tags)
        if found is None:
            found = self._attributes(self._histogram_attributes, _HISTOGRAM_ATTRIBUTE, tags)
        host, attributes = found
        data = self._histogram_head
        if count:
            data += _H_COUNT + _FIXED64(count)
        data += _H_SUM + _DOUBLE(total)
        if counts:
            data += _H_BUCKETS + _length(8 * len(counts)) + struct.pack(f"<{len(counts)}Q", *counts)
        if bounds:
            data += _H_BOUNDS + _length(8 * len(bounds)) + struct.pack(f"<{len(bounds)}d", *bounds)
        data += attributes
        if not math.isnan(low):
            data += _H_MIN + _DOUBLE(low)
        if not math.isnan(high):
            data += _H_MAX + _DOUBLE(high)
        point = _POINTS[Shape.HISTOGRAM] + _length(len(data)) + data
        key = (host, name, unit, Shape.HISTOGRAM)
        points = self._metrics.get(key)
        size = len(point) if points is not None else len(point) + self._new_parts(key)
        series = (name, tags)
        if self._count and (
            self._count >= self._max_points
            or series in self._series
            or self._bytes + size > self._max_bytes
        ):
            self.seal()
            points = None
            size = len(point) + self._new_parts(key)
        self._series.add(series)
        self._bytes += size
        if points is None:
            points = self._new_metric(key)
        points.append(point)
        self._count += 1

    def seal(self) -> None:
        """Emit the open request, if it holds any point."""
        if not self._count:
            return
        raw = self._encode()
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
        # host -> its metrics in order: (encoded name and unit, shape, encoded points)
        self._hosts: dict[str | None, list[tuple[bytes, str, list[bytes]]]] = {}
        self._metrics: dict[MetricKey, list[bytes]] = {}  # -> the metric's encoded points
        self._series: set[tuple[str, TagTuple]] = set()
        self._count = 0
        self._bytes = 0

    def _encode(self) -> bytes:
        """The open request's bytes: its resources in the order their first point came, each
        with one scope holding its metrics in the same order."""
        if self._native_encode is not None:
            resources = [self._resource_of(host) for host in self._hosts]
            return self._native_encode(self._hosts, self._scope, resources)
        out: list[bytes] = []
        for host, metrics in self._hosts.items():
            scope = [self._scope]
            for head, shape, points in metrics:
                data = (points[0] if len(points) == 1 else b"".join(points)) + _TRAILER[shape]
                metric = head + _DATA[shape] + _length(len(data)) + data
                scope += (_METRICS, _length(len(metric)), metric)
            scope_metrics = b"".join(scope)
            data = self._resource_of(host) + _message(_SCOPE_METRICS, scope_metrics)
            out += (_RESOURCE_METRICS, _length(len(data)), data)
        return b"".join(out)

    def _head(self, name: str, unit: str) -> bytes:
        """A metric's encoded name and unit (kept: the same names come every interval)."""
        key = (name, unit) if unit else name
        found = self._heads.get(key)
        if found is None:
            found = _string(_NAME, name) + (_string(_UNIT, unit) if unit else b"")
            if len(self._heads) >= self._attribute_sets:
                self._heads.clear()
            self._heads[key] = found
        return found

    def _new_parts(self, metric: MetricKey) -> int:
        """An upper bound of the encoded size of the metric (and resource) a point of a
        metric not yet in the request adds besides the point."""
        host, name, unit = metric[0], metric[1], metric[2]
        size = _METRIC + len(self._head(name, unit))
        if host not in self._hosts:
            size += self._scope_size + (0 if host is None else _host_size(host))
        return size

    def _new_metric(self, key: MetricKey) -> list[bytes]:
        """A new metric in the request, on its host's resource: its list of points."""
        host, name, unit, shape = key
        points: list[bytes] = []
        metrics = self._hosts.get(host)
        if metrics is None:
            metrics = self._hosts[host] = []
        metrics.append((self._head(name, unit), shape, points))
        self._metrics[key] = points
        return points

    def _resource_of(self, host: str | None) -> bytes:
        """The encoded resource field of ``host``'s resource (by the library's message)."""
        found = self._resources.get(host)
        if found is None:
            attributes = dict(self._resource)
            if host is not None:
                attributes[HOST_ATTRIBUTE] = host
            pairs = [_key_value(k, v) for k, v in attributes.items()]
            found = _message(_RESOURCE_FIELD, Resource(attributes=pairs).SerializeToString())
            if len(self._resources) >= self._attribute_sets:
                self._resources.clear()
            self._resources[host] = found
        return found

    def _attributes(
        self, cache: dict[TagTuple, tuple[str | None, bytes]], tag: bytes, tags: TagTuple
    ) -> tuple[str | None, bytes]:
        """(the ``host`` tag's value or None, the other tags encoded as a point's attributes
        in the field ``tag``), kept in ``cache``."""
        host = None
        pairs: list[tuple[str, str]] = []
        for key, value in tags:
            if key == HOST_TAG:
                host = value
            else:
                pairs.append((key, value))
        found = (host, encode_attributes(tag, pairs))
        if len(cache) >= self._attribute_sets:
            cache.clear()
        cache[tags] = found
        return found


MetricKey = tuple[str | None, str, str, str]  # host, name, unit, shape


def _load_encoder() -> Callable[[Any, bytes, list[bytes]], bytes] | None:
    """`Requests._encode` in C (statsd_ao/otlp/_wire.c), configured with the tags here;
    None if it is not built or is switched off."""
    if native.disabled():
        return None
    try:
        from statsd_ao.otlp import _wire  # type: ignore[attr-defined]  # noqa: PLC0415
    except ImportError:
        return None
    shapes = (Shape.SUM, Shape.UPDOWN_SUM, Shape.GAUGE, Shape.HISTOGRAM)
    _wire.configure_encode(
        tuple(_DATA[shape] for shape in shapes),
        tuple(_TRAILER[shape] for shape in shapes),
        _METRICS,
        _SCOPE_METRICS,
        _RESOURCE_METRICS,
    )
    encode: Callable[[Any, bytes, list[bytes]], bytes] = _wire.encode
    return encode


ENCODE = _load_encoder()


def _host_size(host: str) -> int:
    """An upper bound of the encoded host.name attribute."""
    return len(HOST_ATTRIBUTE) + len(host.encode()) + 4 * 5


def _key_value(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))
