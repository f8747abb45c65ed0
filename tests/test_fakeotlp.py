"""The fake OTLP receiver's own strictness: what it refuses, it refuses for the rule's sake.

A valid request is built by hand from the official messages, then broken one rule at a
time; each broken rule must cost exactly the points it concerns.
"""

from __future__ import annotations

import asyncio
import gzip
import math
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import aiohttp
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from tests.fakeotlp import FakeOtlp, Fault

TOKEN = "fake-token"
START, END = 1_000 * 10**9, 1_010 * 10**9
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-protobuf"}
T = TypeVar("T")


def run(scenario: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(scenario, 20.0))


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def valid() -> ExportMetricsServiceRequest:
    """Three points: a sum, a gauge and a histogram with buckets."""
    request = ExportMetricsServiceRequest()
    entry = request.resource_metrics.add()
    entry.resource.attributes.append(_kv("service.name", "svc"))
    scope = entry.scope_metrics.add()
    total = scope.metrics.add(name="hits")
    total.sum.aggregation_temporality = DELTA
    total.sum.is_monotonic = True
    total.sum.data_points.add(start_time_unix_nano=START, time_unix_nano=END, as_double=3)
    gauge = scope.metrics.add(name="temp")
    gauge.gauge.data_points.add(
        start_time_unix_nano=START, time_unix_nano=END, as_double=20, attributes=[_kv("a", "b")]
    )
    histogram = scope.metrics.add(name="rt")
    histogram.histogram.aggregation_temporality = DELTA
    histogram.histogram.data_points.add(
        start_time_unix_nano=START,
        time_unix_nano=END,
        count=3,
        sum=6.0,
        min=1.0,
        max=3.0,
        explicit_bounds=[1.5],
        bucket_counts=[1, 2],
    )
    return request


def _cumulative(r: ExportMetricsServiceRequest) -> None:
    r.resource_metrics[0].scope_metrics[0].metrics[0].sum.aggregation_temporality = CUMULATIVE


def _backwards(r: ExportMetricsServiceRequest) -> None:
    r.resource_metrics[0].scope_metrics[0].metrics[1].gauge.data_points[0].time_unix_nano = START


def _nan(r: ExportMetricsServiceRequest) -> None:
    r.resource_metrics[0].scope_metrics[0].metrics[1].gauge.data_points[0].as_double = math.nan


def _buckets(r: ExportMetricsServiceRequest) -> None:
    r.resource_metrics[0].scope_metrics[0].metrics[2].histogram.data_points[0].count = 4


def _int_attribute(r: ExportMetricsServiceRequest) -> None:
    point = r.resource_metrics[0].scope_metrics[0].metrics[1].gauge.data_points[0]
    point.attributes.append(KeyValue(key="n", value=AnyValue(int_value=1)))


def _duplicate(r: ExportMetricsServiceRequest) -> None:
    metric = r.resource_metrics[0].scope_metrics[0].metrics[1]
    metric.gauge.data_points.add().CopyFrom(metric.gauge.data_points[0])


def _no_service(r: ExportMetricsServiceRequest) -> None:
    del r.resource_metrics[0].resource.attributes[:]


@pytest.mark.parametrize(
    ("breaks", "rejected", "why"),
    [
        (lambda r: None, 0, ""),
        (_cumulative, 1, "not DELTA"),
        (_backwards, 1, "start_time_unix_nano must be before"),
        (_nan, 1, "not finite"),
        (_buckets, 1, "bucket counts sum to 3, not count 4"),
        (_int_attribute, 1, "is not a string"),
        (_duplicate, 1, "twice in one request"),
        (_no_service, 3, "no service.name"),
    ],
)
def test_each_rule_rejects_exactly_the_points_that_break_it(
    breaks: Callable[[ExportMetricsServiceRequest], None], rejected: int, why: str
) -> None:
    async def scenario() -> None:
        async with FakeOtlp(token=TOKEN) as otlp, aiohttp.ClientSession() as http:
            request = valid()
            breaks(request)
            body = request.SerializeToString()
            async with http.post(otlp.url, data=body, headers=HEADERS) as answer:
                assert answer.status == 200
                response = ExportMetricsServiceResponse.FromString(await answer.read())
            total = 4 if breaks is _duplicate else 3
            assert response.partial_success.rejected_data_points == rejected
            assert why in response.partial_success.error_message
            assert len(otlp.points) == total - rejected
            assert otlp.requests[0].points == total

    run(scenario())


def test_a_whole_receiver_refuses_the_request_for_one_bad_point() -> None:
    async def scenario() -> None:
        async with FakeOtlp(token=TOKEN, whole=True) as otlp, aiohttp.ClientSession() as http:
            request = valid()
            _nan(request)
            async with http.post(otlp.url, data=request.SerializeToString(), headers=HEADERS) as a:
                assert a.status == 400 and b"not finite" in await a.read()
            assert otlp.points == []

    run(scenario())


@pytest.mark.parametrize(
    ("path", "headers", "encode", "status"),
    [
        ("/v1/metrics", HEADERS, lambda b: b, 200),
        ("/v1/metrics", {**HEADERS, "Content-Encoding": "gzip"}, gzip.compress, 200),
        ("/v1/metrics", HEADERS, gzip.compress, 400),  # gzip not declared: not protobuf
        ("/v1/metrics", {**HEADERS, "Content-Encoding": "gzip"}, lambda b: b, 400),
        ("/v1/metrics", {**HEADERS, "Authorization": "Bearer wrong"}, lambda b: b, 401),
        ("/v1/metrics", {**HEADERS, "Authorization": f"Basic {TOKEN}"}, lambda b: b, 401),
        ("/v1/metrics", {**HEADERS, "Content-Type": "application/json"}, lambda b: b, 415),
        ("/v1/traces", HEADERS, lambda b: b, 404),
        ("/", HEADERS, lambda b: b, 404),
    ],
)
def test_path_auth_content_type_and_gzip_are_enforced(
    path: str, headers: dict[str, str], encode: Callable[[bytes], bytes], status: int
) -> None:
    async def scenario() -> None:
        async with FakeOtlp(token=TOKEN) as otlp, aiohttp.ClientSession() as http:
            body = encode(valid().SerializeToString())
            async with http.post(otlp.base + path, data=body, headers=headers) as answer:
                assert answer.status == status
            assert len(otlp.points) == (3 if status == 200 else 0)

    run(scenario())


def test_scripted_faults_answer_in_order_then_the_receiver_judges_again() -> None:
    async def scenario() -> None:
        async with FakeOtlp(token=TOKEN) as otlp, aiohttp.ClientSession() as http:
            otlp.script([Fault.status(429, retry_after=3), Fault.partial(2, "later")])
            body = valid().SerializeToString()
            async with http.post(otlp.url, data=body, headers=HEADERS) as answer:
                assert (answer.status, answer.headers["Retry-After"]) == (429, "3")
            async with http.post(otlp.url, data=body, headers=HEADERS) as answer:
                response = ExportMetricsServiceResponse.FromString(await answer.read())
                assert response.partial_success.rejected_data_points == 2
                assert response.partial_success.error_message == "later"
            async with http.post(otlp.url, data=body, headers=HEADERS) as answer:
                assert answer.status == 200
            assert len(otlp.points) == 1 + 3
            assert [r.fault for r in otlp.requests] == ["status", "partial", None]

    run(scenario())
