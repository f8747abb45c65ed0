"""Events become annotation events."""

from __future__ import annotations

from statsd_ao.annotations import stream_name, to_annotation
from statsd_ao.events import Event, parse_event


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
