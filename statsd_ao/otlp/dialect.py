"""OTLP/HTTP as a `statsd_ao.core.dialect.Dialect`: where, how, and what the answers mean.

Per the OTLP specification (protocol, "OTLP/HTTP"): requests are POSTed to ``/v1/metrics``
as binary protobuf (``Content-Type: application/x-protobuf``), gzipped with
``Content-Encoding: gzip`` when on; a success is 200 with an ``ExportMetricsServiceResponse``
whose ``partial_success`` may say how many data points were rejected (counted as lost
``rejected``, its message logged, nothing re-sent).  Failures:

- 429, 502, 503, 504, no answer ("retryable"): retried with backoff, honouring
  ``Retry-After``;
- 400: split in two until the bad points are isolated and lost as ``rejected`` (the same
  request is never sent again);
- 413: split in two;
- 401, 403: held and retried with the long backoff, as the AppOptics path does (a person
  fixes the token);
- any other status ("MUST NOT be retried"): lost as ``rejected``, the receiver's words
  logged.

Pure: no IO.  `halves` decodes a request, cuts its points in two and encodes both halves
in the same envelopes (resources, scopes, metrics).
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Mapping
from typing import Any

import orjson
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from statsd_ao.core.retry import Answer, Outcome, Verdict, server_wait
from statsd_ao.otlp.requests import GZIP_LEVEL

# SolarWinds Observability's data centres ("Data centers and endpoint URIs").
SWO_REGIONS = ("na-01", "na-02", "eu-01", "ap-01")
PROTOBUF = "application/x-protobuf"
GZIP_MAGIC = b"\x1f\x8b"
# The point types a metric holds its data points in.
POINT_FIELDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")
# Characters of a receiver's error body quoted in the log.
QUOTED_CHARS = 300
_PRINTABLE = re.compile(rb"[\x20-\x7e]{4,}")


def swo_url(region: str) -> str:
    """The OTLP/HTTP metrics URL of a SolarWinds Observability data centre (``na-01``...)."""
    if region not in SWO_REGIONS:
        raise ValueError(f"unknown SWO region {region!r}: one of {', '.join(SWO_REGIONS)}")
    return f"https://otel.collector.{region}.cloud.solarwinds.com:443/v1/metrics"


class Otlp:
    """Posts to an OTLP/HTTP metrics URL (the full URL, ``.../v1/metrics``)."""

    name = "the OTLP endpoint"
    token_hint = "the OTLP token, STATSD_AO_OTLP_TOKEN or --otlp-token"

    def __init__(
        self,
        url: str,
        token: str = "",
        *,
        headers: Mapping[str, str] | None = None,
        user_agent: str = "statsd-ao",
    ) -> None:
        """``headers``: more headers for other backends (they may replace the defaults)."""
        self.url = url
        defaults = {"Content-Type": PROTOBUF, "User-Agent": user_agent}
        if token:
            defaults["Authorization"] = f"Bearer {token}"
        self._headers = {**defaults, **(headers or {})}

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    def body_headers(self, body: bytes) -> Mapping[str, str] | None:
        # Decided per body, so a request spooled gzipped is sent right after a restart with
        # gzip switched off (a protobuf request never starts with these two bytes).
        return _GZIP_HEADERS if body.startswith(GZIP_MAGIC) else None

    def classify(self, answer: Answer, count: int, wall: float) -> Verdict:
        return classify(answer, count, wall)

    def halves(self, body: bytes) -> tuple[tuple[bytes, int], tuple[bytes, int]]:
        return halves(body)


_GZIP_HEADERS = {"Content-Encoding": "gzip"}


def classify(answer: Answer, count: int, wall: float) -> Verdict:
    """Read one answer to a request of ``count`` data points; never raises."""
    wait = server_wait(answer.headers, wall)
    status = answer.status
    if status is None:
        return Verdict(Outcome.TRANSIENT, wait=wait)
    if 200 <= status < 300:
        rejected, message = partial_success(answer)
        errors = (message,) if message else ()
        if rejected:
            refused = min(rejected, count)
            return Verdict(Outcome.PARTIAL, count - refused, refused, wait, errors)
        return Verdict(Outcome.DELIVERED, accepted=count, wait=wait, errors=errors)
    errors = (why,) if (why := error_message(answer)) else ()
    kind = _STATUS_KINDS.get(status)
    if kind is None:
        return Verdict(
            Outcome.REJECTED, refused=count, wait=wait, errors=(f"HTTP {status}", *errors)
        )
    return Verdict(kind, wait=wait, errors=errors)


# What an error status means (any other: rejected, never retried).
_STATUS_KINDS = {
    400: Outcome.SPLIT,
    413: Outcome.SPLIT,
    429: Outcome.THROTTLED,
    502: Outcome.TRANSIENT,
    503: Outcome.TRANSIENT,
    504: Outcome.TRANSIENT,
    401: Outcome.DENIED,
    403: Outcome.DENIED,
}


def partial_success(answer: Answer) -> tuple[int, str]:
    """(``rejected_data_points``, ``error_message``) of a success's body: protobuf, or JSON
    when the receiver answered in JSON; (0, "") when absent or unreadable."""
    if not answer.body:
        return 0, ""
    if answer.headers.get("content-type", "").startswith("application/json"):
        doc = _json(answer.body)
        partial = doc.get("partialSuccess") if isinstance(doc, dict) else None
        if not isinstance(partial, dict):
            return 0, ""
        rejected, message = partial.get("rejectedDataPoints", 0), partial.get("errorMessage", "")
        try:
            return max(int(rejected), 0), str(message)
        except (TypeError, ValueError):
            return 0, str(message)
    try:
        response = ExportMetricsServiceResponse.FromString(answer.body)
    except DecodeError:
        return 0, ""
    partial_ = response.partial_success
    return partial_.rejected_data_points, partial_.error_message


def error_message(answer: Answer) -> str:
    """The receiver's words in an error body (a ``google.rpc.Status``, in protobuf or JSON,
    or plain text): its readable text, shortened."""
    body = answer.body[:4096]
    doc = _json(body)
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return str(doc["message"])[:QUOTED_CHARS]
    # A protobuf Status: its message is the readable run of characters in it.
    return " ".join(run.decode() for run in _PRINTABLE.findall(body))[:QUOTED_CHARS]


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def decode(body: bytes) -> ExportMetricsServiceRequest:
    """A request's message from its body, gzipped or not; raises `ValueError` if broken."""
    try:
        raw = gzip.decompress(body) if body.startswith(GZIP_MAGIC) else body
        request: ExportMetricsServiceRequest = ExportMetricsServiceRequest.FromString(raw)
    except (OSError, EOFError, zlib.error, DecodeError) as error:
        raise ValueError(f"not an OTLP metrics request: {error}") from error
    return request


def count_points(request: ExportMetricsServiceRequest) -> int:
    return len(_spots(request))


def halves(body: bytes) -> tuple[tuple[bytes, int], tuple[bytes, int]]:
    """Cut a request of at least two points in two, each half in the same envelopes; both
    halves are gzipped if the body was."""
    request = decode(body)
    spots = _spots(request)
    middle = len(spots) // 2
    zipped = body.startswith(GZIP_MAGIC)
    out = []
    for part in (spots[:middle], spots[middle:]):
        raw = _subset(request, set(part)).SerializeToString()
        out.append((gzip.compress(raw, GZIP_LEVEL, mtime=0) if zipped else raw, len(part)))
    return out[0], out[1]


Spot = tuple[int, int, int, int]  # resource, scope, metric, point: indices in the request


def _spots(request: ExportMetricsServiceRequest) -> list[Spot]:
    """Where every data point of the request is, in order."""
    found: list[Spot] = []
    for r, resource in enumerate(request.resource_metrics):
        for s, scope in enumerate(resource.scope_metrics):
            for m, metric in enumerate(scope.metrics):
                kind = metric.WhichOneof("data")
                if kind in POINT_FIELDS:
                    points = getattr(metric, kind).data_points
                    found.extend((r, s, m, p) for p in range(len(points)))
    return found


def _subset(request: ExportMetricsServiceRequest, keep: set[Spot]) -> ExportMetricsServiceRequest:
    """A copy of ``request`` with only the points in ``keep``; envelopes left empty are
    left out."""
    out = ExportMetricsServiceRequest()
    for r, resource in enumerate(request.resource_metrics):
        new_resource = None
        for s, scope in enumerate(resource.scope_metrics):
            new_scope = None
            for m, metric in enumerate(scope.metrics):
                kind = metric.WhichOneof("data")
                if kind not in POINT_FIELDS:
                    continue
                points = getattr(metric, kind).data_points
                chosen = [p for i, p in enumerate(points) if (r, s, m, i) in keep]
                if not chosen:
                    continue
                if new_resource is None:
                    new_resource = out.resource_metrics.add(
                        resource=resource.resource, schema_url=resource.schema_url
                    )
                if new_scope is None:
                    new_scope = new_resource.scope_metrics.add(
                        scope=scope.scope, schema_url=scope.schema_url
                    )
                copy = new_scope.metrics.add()
                copy.CopyFrom(metric)
                target = getattr(copy, kind).data_points
                del target[:]
                target.extend(chosen)
    return out
