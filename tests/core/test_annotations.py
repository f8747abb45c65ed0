"""Events become annotation events."""

from __future__ import annotations

import asyncio
import time

from statsd_ao.core.annotations import stream_name, to_annotation
from statsd_ao.core.events import Event, parse_event
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
