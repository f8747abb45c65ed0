"""Events become annotation events."""

from __future__ import annotations

import asyncio
import time

from statsd_ao.core.annotations import stream_name, stream_of, to_annotation
from statsd_ao.core.events import Event, Link, parse_event
from statsd_ao.io.sink import HttpSink
from tests.fakeapi import FakeAppOptics, Fault


def test_full_event() -> None:
    event = parse_event(
        b"_e{6,11}:deploy|v42 shipped|d:1700000000|h:web1|p:low|t:success|#env:prod,canary"
    )
    assert to_annotation(event, "proxy-host", 1800000000) == {
        "title": "deploy",
        "start_time": 1700000000,
        "source": "web1",
        "description": "v42 shipped [alert: success; priority: low; tags: env:prod, canary:true]",
    }


def test_an_annotation_posted_to_the_intake_keeps_its_stream_end_and_links() -> None:
    event = Event(
        "deploy",
        "v2",
        timestamp=1700000000,
        host="ci",
        stream="app-deploys",
        end_time=1700000300,
        links=(Link("github", "https://example.com/c/1", "commit"), Link("ci", "https://x")),
    )
    assert stream_of(event, "statsd") == "app-deploys"
    assert stream_of(Event("dogstatsd", ""), "statsd") == "statsd"
    assert to_annotation(event, "proxy-host", 1) == {
        "title": "deploy",
        "start_time": 1700000000,
        "source": "ci",
        "description": "v2",
        "end_time": 1700000300,
        "links": [
            {"rel": "github", "href": "https://example.com/c/1", "label": "commit"},
            {"rel": "ci", "href": "https://x"},
        ],
    }


def test_minimal_event_uses_arrival_time_and_proxy_host() -> None:
    annotation = to_annotation(Event("restart", ""), "proxy-host", 1800000000)
    assert annotation == {"title": "restart", "start_time": 1800000000, "source": "proxy-host"}


def test_stream_names_are_sanitized() -> None:
    assert stream_name("app deploys!") == "app_deploys_"
    assert stream_name("  ") == "statsd"


def test_sink_posts_annotations_retrying_transient_failures() -> None:
    async def scenario() -> None:
        async with FakeAppOptics(token="tok") as api:
            sink = HttpSink(api.url, "tok", concurrency=2, timeout=5)
            await sink.start()
            api.script([Fault.status(503)])  # the first attempt fails, the second lands
            sink.annotate("deploys", to_annotation(Event("v1", "ok"), "h", 1700000000))
            await api.wait_for(lambda a: len(a.annotations) == 1)
            sink.annotate("deploys", {"title": "", "start_time": 1, "source": "h"})  # 400
            await api.wait_for(lambda a: len(a.requests) == 3)
            await sink.drain(5)
            await sink.close()
            assert (sink.annotations_posted, sink.annotations_lost) == (1, 1)
            assert api.annotations[0]["stream"] == "deploys"
            assert api.annotations[0]["start_time"] == 1700000000

    asyncio.run(scenario())


def test_annotations_never_hold_shutdown_past_the_drain_deadline() -> None:
    async def scenario() -> None:
        async with FakeAppOptics(token="tok") as api:
            api.script([Fault.delay(30.0)] * 4)  # the API hangs
            sink = HttpSink(api.url, "tok", concurrency=1, timeout=20.0)
            await sink.start()
            sink.annotate("deploys", to_annotation(Event("v1", ""), "h", 1))
            await api.wait_for(lambda a: a.in_flight == 1)
            started = time.monotonic()
            await sink.drain(0.5)
            await sink.close()
            assert time.monotonic() - started < 10.0  # not the post's 20 s, nor the API's 30
            assert sink.annotations_posted == 0

    asyncio.run(scenario())


def test_the_appoptics_sink_posts_an_intake_annotation_to_its_own_stream() -> None:
    import io

    import orjson

    from statsd_ao.core.measurements import Converter
    from statsd_ao.io.appoptics import AppOpticsSink
    from statsd_ao.io.sink import DryRunSink

    out = io.BytesIO()
    sink = AppOpticsSink(
        Converter(), DryRunSink(out), batch_size=10, annotation_stream="statsd", host="h"
    )
    sink.event(Event("deploy", "", timestamp=1, stream="app-deploys", end_time=2))
    sink.event(Event("dogstatsd", "", timestamp=1))
    posted = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [(p["stream"], p["annotation"].get("end_time")) for p in posted] == [
        ("app-deploys", 2),
        ("statsd", None),
    ]
