"""The OTLP sink against the strict fake receiver: exact numbers, faults, the spool.

Backoffs are shortened (the policy is the same; only its constants change); the only real
waits are the behaviour under test (a Retry-After).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from statsd_ao.core.aggregator import Aggregator
from statsd_ao.core.events import Event
from statsd_ao.core.retry import Backoff
from statsd_ao.core.sanitize import Naming
from statsd_ao.io.spool import Spool
from statsd_ao.io.spoolfile import MIN_MAX_BYTES
from statsd_ao.otlp import OtlpDryRunSink, OtlpSink
from statsd_ao.otlp.convert import NANOS
from statsd_ao.pipeline import Sink
from tests.fakeotlp import FakeOtlp, Fault

TOKEN = "otlp-token"
STAMP = 1_800_000_000
FAST = Backoff(0.01, 0.05)
LIMIT = 30.0
T = TypeVar("T")


def run(scenario: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(scenario, LIMIT))


def items(*lines: bytes) -> list[Any]:
    aggregator = Aggregator(Naming({"host": "h1"}), clock=lambda: STAMP + 1.0)
    for line in lines:
        aggregator.ingest(line)
    return list(aggregator.swap().series.items())


def gauges(prefix: str, n: int) -> list[Any]:
    return items(*(b"%s.%d:%d|g" % (prefix.encode(), i, i) for i in range(n)))


def sink_for(url: str, token: str = TOKEN, **options: Any) -> OtlpSink:
    options = {"concurrency": 2, "timeout": 5.0, "backoff": FAST, **options}
    return OtlpSink(url, token, **options)


def test_every_type_arrives_with_its_numbers_gzipped_and_authorized() -> None:
    async def scenario() -> None:
        async with FakeOtlp(token=TOKEN) as otlp:
            sink = sink_for(otlp.url, service_name="checkout", percentiles=[90])
            await sink.start()
            lines = (b"hits:3|c|#route:a", b"temp:21.5|g", b"rt:10|ms", b"rt:30|ms", b"u:x|s")
            assert sink.series(items(*lines), STAMP, 10) == 5
            sink.end_interval()
            assert await sink.drain(5.0) == 0
            await sink.close()
            assert (sink.posted, sink.lost, sink.pending) == (5, {}, 0)
            assert otlp.rejected == []
            [request] = otlp.requests
            assert request.headers["content-encoding"] == "gzip"
            assert request.headers["authorization"] == f"Bearer {TOKEN}"
            assert request.headers["user-agent"].startswith("statsd-ao")
            [hits] = otlp.find("hits", route="a")
            assert (hits.type, hits.monotonic, hits.value) == ("sum", True, 3.0)
            assert hits.resource == {"service.name": "checkout", "host.name": "h1"}
            assert (hits.start, hits.time) == (STAMP * NANOS, (STAMP + 10) * NANOS)
            [rt] = otlp.find("rt")
            assert (rt.count, rt.sum, rt.min, rt.max) == (2, 40.0, 10.0, 30.0)
            assert otlp.find("rt.p90")[0].value == 30.0
            assert otlp.find("temp")[0].value == 21.5
            assert otlp.find("u")[0].value == 1.0

    run(scenario())


def test_without_gzip_nothing_says_gzip() -> None:
    async def scenario() -> None:
        async with FakeOtlp(token=TOKEN) as otlp:
            sink = sink_for(otlp.url, gzip=False)
            await sink.start()
            sink.series(gauges("g", 10), STAMP, 10)
            await sink.drain(5.0)
            await sink.close()
            assert "content-encoding" not in otlp.requests[0].headers
            assert len(otlp.points) == 10

    run(scenario())


def test_retryable_answers_are_retried_honouring_retry_after() -> None:
    async def scenario() -> None:
        async with FakeOtlp(token=TOKEN) as otlp:
            otlp.script([Fault.status(503, retry_after=0.3), Fault.status(502), Fault.drop()])
            sink = sink_for(otlp.url)
            await sink.start()
            started = time.monotonic()
            sink.series(gauges("g", 50), STAMP, 10)
            sink.end_interval()
            await otlp.wait_for(lambda o: len(o.points) == 50)
            assert time.monotonic() - started >= 0.3  # the wait the receiver asked for
            await sink.drain(5.0)
            await sink.close()
            assert (sink.posted, sink.lost, sink.http.retries) == (50, {}, 3)
            assert [r.status for r in otlp.requests] == [503, 502, None, 200]

    run(scenario())


def test_a_partial_success_counts_the_rejected_points_and_logs_the_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with FakeOtlp(token=TOKEN) as otlp:
            otlp.script([Fault.partial(3, "3 points too far in the past")])
            sink = sink_for(otlp.url)
            await sink.start()
            sink.series(gauges("g", 20), STAMP, 10)
            await sink.drain(5.0)
            await sink.close()
            assert (sink.posted, sink.lost) == (17, {"rejected": 3})
            assert len(otlp.requests) == 1  # nothing is sent again
            assert len(otlp.points) == 17

    with caplog.at_level(logging.WARNING):
        run(scenario())
    assert "3 points too far in the past" in caplog.text


def test_a_request_refused_whole_is_split_until_the_bad_point_is_isolated() -> None:
    async def scenario() -> None:
        async with FakeOtlp(token=TOKEN, whole=True) as otlp:
            otlp.refuse = frozenset({"g.13"})
            sink = sink_for(otlp.url)
            await sink.start()
            sink.series(gauges("g", 32), STAMP, 10)
            await sink.drain(5.0)
            await sink.close()
            assert (sink.posted, sink.lost) == (31, {"rejected": 1})
            assert sorted(p.name for p in otlp.points) == sorted(
                f"g.{i}" for i in range(32) if i != 13
            )
            assert sink.http.splits == 5  # 32 -> 16 -> 8 -> 4 -> 2 -> 1
            assert len(otlp.requests) == 11  # 1 + 2 * 5

    run(scenario())


def test_a_denied_token_holds_the_points_until_it_is_fixed() -> None:
    async def scenario() -> None:
        async with FakeOtlp(token="the-right-one") as otlp:
            sink = sink_for(otlp.url, denied_backoff=Backoff(0.01, 0.05))
            await sink.start()
            sink.series(gauges("g", 5), STAMP, 10)
            sink.end_interval()
            await otlp.wait_for(lambda o: len(o.requests) >= 2)
            assert otlp.points == [] and sink.lost == {} and sink.pending == 5
            otlp.token = TOKEN
            await otlp.wait_for(lambda o: len(o.points) == 5)
            await sink.drain(5.0)
            await sink.close()
            assert (sink.posted, sink.lost) == (5, {})
            assert sink.http.outcomes["401"] >= 2

    run(scenario())


def test_other_statuses_are_not_retried() -> None:
    async def scenario() -> None:
        async with FakeOtlp(token=TOKEN) as otlp:
            otlp.script([Fault.status(404), Fault.status(500)])
            sink = sink_for(otlp.url, max_points=4)
            await sink.start()
            sink.series(gauges("g", 8), STAMP, 10)
            await sink.drain(5.0)
            await sink.close()
            assert (sink.posted, sink.lost, sink.http.retries) == (0, {"rejected": 8}, 0)
            assert len(otlp.requests) == 2

    run(scenario())


def test_what_an_outage_leaves_is_spooled_and_the_next_sink_delivers_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with FakeOtlp(token=TOKEN) as otlp:
            otlp.down = True
            first = sink_for(otlp.url, spool=Spool(tmp_path, MIN_MAX_BYTES), max_points=100)
            await first.start()
            first.series(gauges("g", 250), STAMP, 10)
            assert await first.drain(0.2) == 0
            await first.close()
            assert (first.kept, first.lost, first.posted) == (250, {}, 0)
            otlp.down = False
            second = sink_for(otlp.url, spool=Spool(tmp_path, MIN_MAX_BYTES))
            await second.start()
            assert await second.drain(5.0) == 0
            await second.close()
            assert (second.posted, second.lost, second.kept) == (250, {}, 0)
            assert len(otlp.points) == 250
            assert {p.start for p in otlp.points} == {STAMP * NANOS}  # their own interval
        assert not list(tmp_path.glob("*.seg"))

    run(scenario())


def test_a_spooled_gzipped_request_goes_out_gzipped_after_gzip_is_switched_off(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with FakeOtlp(token=TOKEN) as otlp:
            otlp.down = True
            first = sink_for(otlp.url, spool=Spool(tmp_path, MIN_MAX_BYTES))
            await first.start()
            first.series(gauges("g", 10), STAMP, 10)
            await first.drain(0.1)
            await first.close()
            otlp.down = False
            second = sink_for(otlp.url, spool=Spool(tmp_path, MIN_MAX_BYTES), gzip=False)
            await second.start()
            await second.drain(5.0)
            await second.close()
            assert (second.posted, len(otlp.points)) == (10, 10)
            assert otlp.requests[-1].headers["content-encoding"] == "gzip"

    run(scenario())


def test_both_forms_are_pipeline_sinks() -> None:
    sinks: list[Sink] = [OtlpSink("http://127.0.0.1:9/v1/metrics"), OtlpDryRunSink(io.BytesIO())]
    assert [s.name for s in sinks] == ["otlp", "stdout"]


def test_conversion_drops_are_counted_among_the_losses() -> None:
    sink = OtlpSink("http://127.0.0.1:9/v1/metrics")
    sink.series(items(b"big:1.7e308|c", b"big:1.7e308|c"), STAMP, 10)
    assert sink.lost == {"value not finite": 1} and sink.delivered == 0


def test_events_are_counted_and_dropped() -> None:
    sink = OtlpSink("http://127.0.0.1:9/v1/metrics")
    sink.event(Event("deploy", "v2"))
    assert sink.events_dropped == 1


def test_the_dry_run_prints_each_request_as_otlp_json() -> None:
    out = io.BytesIO()
    sink = OtlpDryRunSink(out, max_points=3)
    assert sink.series(gauges("g", 5), STAMP, 10) == 5
    sink.end_interval()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    request = json.loads(lines[0])
    metric = request["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]
    assert metric["gauge"]["dataPoints"][0]["timeUnixNano"] == str((STAMP + 10) * NANOS)
    assert sink.points == 5
