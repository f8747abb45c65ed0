"""A loopback OTLP/HTTP metrics receiver that holds senders to the specification, strictly.

Theory of operation: every request goes through `FakeOtlp._serve`:

1. the body is read (aiohttp undoes a ``Content-Encoding: gzip``; a body that says gzip and
   is not, is a 400 from aiohttp itself) and the request counted as in flight;
2. ``down`` answers 503 without consuming the script;
3. otherwise the next scripted fault, if any, is consumed: a status (with headers such as
   ``Retry-After``), a drop of the connection, a delay, or a partial success;
4. the request is checked: ``Authorization: Bearer <token>`` (401), ``Content-Type:
   application/x-protobuf`` (415), a decodable ``ExportMetricsServiceRequest`` (400);
5. each data point is judged by the sans-IO `judge` (rules below); a point that breaks one
   is rejected, and the answer is a 200 whose ``partial_success`` counts it, or (with
   ``whole=True``, a receiver that refuses a request for one bad point) a 400 for the whole
   request, nothing kept;
6. the outcome is recorded in `requests` and `points` / `rejected`, and waiters are woken.

The rules (OTLP specification, metrics data model and protocol): sums and histograms have
DELTA temporality (statsd-ao sends deltas: a CUMULATIVE point from it would be a bug);
``start_time_unix_nano`` < ``time_unix_nano``; every number is finite; a histogram's
bucket counts, when present, are one more than its bounds, the bounds ascend and the counts
sum to its count; every attribute (point and resource) has a string value and a non-empty
key, once; every resource has ``service.name``; no series (resource, metric name,
attributes) appears twice in a request; and ``refuse`` names metrics a test wants
treated as bad points.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

from tests.fakeserver import DelayFault, DropFault, LoopbackServer

PATH = "/v1/metrics"
PROTOBUF = "application/x-protobuf"
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
_RECORDED_HEADERS = ("authorization", "content-type", "content-encoding", "user-agent")

Attributes = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Point:
    """One data point as the receiver kept it, flattened with its metric and resource."""

    resource: dict[str, str]
    name: str
    unit: str
    type: str  # "sum", "gauge", "histogram"
    monotonic: bool | None  # sums only
    attributes: dict[str, str]
    start: int
    time: int
    value: float | None = None  # sums and gauges
    count: int | None = None  # histograms
    sum: float | None = None
    min: float | None = None
    max: float | None = None
    bounds: tuple[float, ...] = ()
    buckets: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class StatusFault:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class PartialFault:
    """Keep all but the last ``rejected`` points and say so in ``partial_success``."""

    rejected: int
    message: str


AnyFault = StatusFault | DropFault | DelayFault | PartialFault


class Fault:
    """``otlp.script([Fault.status(503, retry_after=1), Fault.partial(2, "too old")])``."""

    @staticmethod
    def status(status: int, *, retry_after: float | None = None, body: bytes = b"") -> StatusFault:
        headers = () if retry_after is None else (("Retry-After", f"{retry_after:g}"),)
        return StatusFault(status, headers, body)

    @staticmethod
    def drop() -> DropFault:
        return DropFault()

    @staticmethod
    def delay(seconds: float) -> DelayFault:
        return DelayFault(seconds)

    @staticmethod
    def partial(rejected: int, message: str) -> PartialFault:
        return PartialFault(rejected, message)


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request the fake received, whatever became of it."""

    path: str
    status: int | None  # None when a drop closed the connection
    points: int  # data points in the body, when it decoded
    wire_bytes: int  # the body as sent (compressed when gzipped)
    headers: Mapping[str, str] = field(default_factory=dict)
    fault: str | None = None


@dataclass(slots=True)
class Judgement:
    """`judge`'s reading of a request: the points to keep and the refused ones."""

    kept: list[Point] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (metric name, why)


class _Bad(Exception):
    """A point breaks a rule; raised and caught inside `judge` only."""


def _strings(pairs: Iterable[KeyValue], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        if not pair.key:
            raise _Bad(f"{where}: an attribute has an empty key")
        if pair.value.WhichOneof("value") != "string_value":
            raise _Bad(f"{where}: attribute {pair.key!r} is not a string")
        if pair.key in out:
            raise _Bad(f"{where}: attribute {pair.key!r} twice")
        out[pair.key] = pair.value.string_value
    return out


def _finite(*numbers: float) -> None:
    if not all(map(math.isfinite, numbers)):
        raise _Bad(f"a value is not finite: {numbers}")


def _points(metric: Metric, resource: dict[str, str]) -> Iterator[tuple[Callable[[], Point], Any]]:
    """(a function making the judged `Point`, or raising `_Bad`; the raw point)."""
    kind = metric.WhichOneof("data")
    if kind not in {"sum", "gauge", "histogram"}:
        raise _Bad(f"{metric.name}: statsd-ao sends no {kind}")
    data = getattr(metric, kind)
    if kind != "gauge" and data.aggregation_temporality != DELTA:
        raise _Bad(f"{metric.name}: temporality {data.aggregation_temporality}, not DELTA")
    for raw in data.data_points:

        def make(raw: Any = raw) -> Point:
            if not raw.start_time_unix_nano < raw.time_unix_nano:
                raise _Bad("start_time_unix_nano must be before time_unix_nano")
            common: dict[str, Any] = {
                "resource": resource,
                "name": metric.name,
                "unit": metric.unit,
                "type": kind,
                "monotonic": data.is_monotonic if kind == "sum" else None,
                "attributes": _strings(raw.attributes, "point"),
                "start": raw.start_time_unix_nano,
                "time": raw.time_unix_nano,
            }
            if kind != "histogram":
                if raw.WhichOneof("value") != "as_double":
                    raise _Bad("statsd-ao sends doubles")
                _finite(raw.as_double)
                return Point(value=raw.as_double, **common)
            return _histogram(raw, common)

        yield make, raw


def _histogram(raw: Any, common: dict[str, Any]) -> Point:
    bounds, buckets = tuple(raw.explicit_bounds), tuple(raw.bucket_counts)
    _finite(raw.sum, *bounds)
    lo = raw.min if raw.HasField("min") else None
    hi = raw.max if raw.HasField("max") else None
    _finite(*(x for x in (lo, hi) if x is not None))
    if buckets or bounds:
        if len(buckets) != len(bounds) + 1:
            raise _Bad("bucket_counts must be one more than explicit_bounds")
        if list(bounds) != sorted(set(bounds)):
            raise _Bad("explicit_bounds must ascend")
        if sum(buckets) != raw.count:
            raise _Bad(f"bucket counts sum to {sum(buckets)}, not count {raw.count}")
    if lo is not None and hi is not None and lo > hi:
        raise _Bad("min above max")
    return Point(
        count=raw.count, sum=raw.sum, min=lo, max=hi, bounds=bounds, buckets=buckets, **common
    )


def judge(request: ExportMetricsServiceRequest, refuse: frozenset[str] = frozenset()) -> Judgement:
    """Judge every data point of a request (sans-IO)."""
    verdict = Judgement()
    seen: set[tuple[Attributes, str, Attributes]] = set()
    for entry in request.resource_metrics:
        try:
            resource = _strings(entry.resource.attributes, "resource")
            if not resource.get("service.name"):
                raise _Bad("the resource has no service.name")
        except _Bad as bad:
            count = sum(_count(m) for s in entry.scope_metrics for m in s.metrics)
            verdict.refused.extend([("(resource)", str(bad))] * count)
            continue
        for scope in entry.scope_metrics:
            for metric in scope.metrics:
                _judge_metric(metric, resource, refuse, seen, verdict)
    return verdict


def _count(metric: Metric) -> int:
    kind = metric.WhichOneof("data")
    return len(getattr(metric, kind).data_points) if kind else 0


def _judge_metric(
    metric: Metric,
    resource: dict[str, str],
    refuse: frozenset[str],
    seen: set[tuple[Attributes, str, Attributes]],
    verdict: Judgement,
) -> None:
    try:
        if not metric.name:
            raise _Bad("a metric has no name")
        made = list(_points(metric, resource))
    except _Bad as bad:
        verdict.refused.extend([(metric.name, str(bad))] * _count(metric))
        return
    for make, _raw in made:
        try:
            point = make()
            series = (tuple(sorted(resource.items())), point.name, tuple(point.attributes.items()))
            if series in seen:
                raise _Bad(f"series {series} twice in one request")
            seen.add(series)
            if point.name in refuse:
                raise _Bad(f"{point.name} is refused by the test")
        except _Bad as bad:
            verdict.refused.append((metric.name, str(bad)))
            continue
        verdict.kept.append(point)


def _status_body(message: str) -> bytes:
    # A google.rpc.Status has no message class in opentelemetry-proto; plain text is what a
    # sender can show of it either way.
    return message.encode()


class FakeOtlp(LoopbackServer[AnyFault]):
    """An OTLP/HTTP metrics receiver on a real loopback port, recording everything."""

    def __init__(self, *, token: str = "token", whole: bool = False) -> None:
        super().__init__()
        self.token = token
        self.whole = whole  # a bad point refuses its whole request with a 400
        self.refuse: frozenset[str] = frozenset()
        self.points: list[Point] = []
        self.rejected: list[tuple[str, str]] = []
        self.requests: list[Recorded] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post(PATH, self._serve)

    @property
    def url(self) -> str:
        """The metrics URL a sender is configured with."""
        return self.base + PATH

    def find(self, name: str, **attributes: str) -> list[Point]:
        """The kept points of metric ``name`` whose attributes include ``attributes``."""
        return [
            p
            for p in self.points
            if p.name == name and all(p.attributes.get(k) == v for k, v in attributes.items())
        ]

    def describe(self) -> str:
        return (
            f"requests={[r.status for r in self.requests]} points={len(self.points)} "
            f"rejected={self.rejected[:3]}... ({len(self.rejected)}) "
            f"pending_faults={len(self._script)} down={self.down}"
        )

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        await self._notify()
        body, points = b"", 0
        answer: web.Response | None = None
        label: str | None = None
        try:
            try:
                body = await request.read()
            except RequestPayloadError as error:  # says gzip, and is not
                answer = web.Response(status=400, body=_status_body(f"bad body: {error}"))
                return answer
            answer, label = await self._apply_faults(request)
            if label in {None, "delay", "partial"}:
                answer, points = self._handle(request, body, label)
            return answer if answer is not None else web.Response()
        finally:
            self.in_flight -= 1
            self.requests.append(
                Recorded(
                    path=request.path,
                    status=None if answer is None else answer.status,
                    points=points,
                    wire_bytes=request.content_length or 0,
                    headers={
                        h: request.headers[h] for h in _RECORDED_HEADERS if h in request.headers
                    },
                    fault=label,
                )
            )
            await self._notify()

    async def _apply_faults(self, request: web.Request) -> tuple[web.Response | None, str | None]:
        if self.down:
            return web.Response(status=503, body=b"the receiver is down"), "down"
        if not self._script:
            return None, None
        fault = self._script[0]
        match fault:
            case StatusFault(status=status, headers=headers, body=body):
                self._script.popleft()
                text = body or f"injected fault: HTTP {status}".encode()
                return web.Response(status=status, body=text, headers=dict(headers)), "status"
            case DropFault():
                self._script.popleft()
                self._drop(request)
                return None, "drop"
            case DelayFault(seconds=seconds):
                self._script.popleft()
                await self._delay(seconds)
                return None, "delay"
            case PartialFault():
                return None, "partial"  # consumed by _handle, which applies it
        raise AssertionError("unreachable")  # pragma: no cover

    def _handle(
        self, request: web.Request, body: bytes, label: str | None
    ) -> tuple[web.Response, int]:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(status=401, body=_status_body("bad or missing bearer token")), 0
        if request.content_type != PROTOBUF:
            return web.Response(
                status=415, body=_status_body(f"Content-Type must be {PROTOBUF}")
            ), 0
        try:
            decoded = ExportMetricsServiceRequest.FromString(body)
        except DecodeError as error:
            return web.Response(status=400, body=_status_body(f"cannot decode: {error}")), 0
        verdict = judge(decoded, self.refuse)
        total = len(verdict.kept) + len(verdict.refused)
        if verdict.refused and self.whole:
            return web.Response(status=400, body=_status_body(verdict.refused[0][1])), total
        kept, refused, message = verdict.kept, len(verdict.refused), ""
        if verdict.refused:
            message = "; ".join(why for _, why in verdict.refused[:3])
        if label == "partial":
            fault = self._script.popleft()
            assert isinstance(fault, PartialFault)
            cut = max(len(kept) - fault.rejected, 0)
            self.rejected.extend((p.name, fault.message) for p in kept[cut:])
            refused += len(kept) - cut
            kept, message = kept[:cut], fault.message
        self.points.extend(kept)
        self.rejected.extend(verdict.refused)
        response = ExportMetricsServiceResponse()
        if refused:
            response.partial_success.rejected_data_points = refused
            response.partial_success.error_message = message
        return web.Response(body=response.SerializeToString(), content_type=PROTOBUF), total
