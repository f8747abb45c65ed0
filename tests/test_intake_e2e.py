"""The real program standing in for the AppOptics API: the real `appoptics-metrics` client
posts to its intake, and what it posts reaches the sinks merged with StatsD's series."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import appoptics_metrics  # type: ignore[import-untyped]
import pytest

from tests.fakeapi import FakeAppOptics
from tests.fakeotlp import FakeOtlp
from tests.proxy import Proxy

INTAKE_TOKEN = "app-token"
DAY = "86400"
T = TypeVar("T")


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, 120))


async def in_thread(call: Callable[[], T]) -> T:
    """The client blocks: it runs in a thread while the test's loop serves the fakes."""
    async with asyncio.timeout(30):
        return await asyncio.to_thread(call)


def intake_port(proxy: Proxy) -> int:
    line = next(line for line in proxy.stderr if "listening on appoptics api" in line)
    found = re.search(r"http \S+:(\d+) ", line)
    assert found is not None, line
    return int(found.group(1))


def client(proxy: Proxy) -> Any:
    port = intake_port(proxy)
    return appoptics_metrics.connect(INTAKE_TOKEN, hostname=f"127.0.0.1:{port}", protocol="http")


def intake_flags(*more: str) -> tuple[str, ...]:
    return (
        "--appoptics-listen",
        "127.0.0.1:0",
        "--intake-token",
        INTAKE_TOKEN,
        "--flush-interval",
        DAY,
        "--tag",
        "host=h",
        *more,
    )


def test_the_client_and_statsd_merge_into_one_series_at_the_appoptics_api() -> None:
    async def scenario() -> None:
        async with FakeAppOptics(token="out-token") as api:
            flags = intake_flags("--api-url", api.url)
            async with Proxy(*flags, env={"APPOPTICS_TOKEN": "out-token"}) as proxy:
                api_client = client(proxy)
                await in_thread(lambda: api_client.submit("latency", 80, tags={"route": "a"}))
                await proxy.send([b"latency:100|ms|#route:a", b"latency:120|ms|#route:a"])
                await in_thread(
                    lambda: api_client.post_annotation("deploys", title="v42", description="ok")
                )
                assert await proxy.stop(signal.SIGTERM) == 0, proxy.log
            assert not api.rejected, api.describe()
            merged = [m for m in api.accepted if m["name"] == "latency"]
            assert len(merged) == 1, merged
            summary = merged[0]
            assert (summary.get("count"), summary.get("sum")) == (3, 300.0)
            assert (summary.get("min"), summary.get("max")) == (80.0, 120.0)
            assert summary["tags"] == {"route": "a", "host": "h"}
            assert [a["title"] for a in api.annotations] == ["v42"]

    run(scenario())


def test_a_queue_of_several_posts_reaches_the_otlp_sink_exactly() -> None:
    async def scenario() -> None:
        async with FakeOtlp(token="swo") as otlp:
            flags = intake_flags("--otlp-url", otlp.url)
            async with Proxy(*flags, env={"STATSD_AO_OTLP_TOKEN": "swo"}) as proxy:
                api_client = client(proxy)

                def post_queue() -> None:
                    queue = api_client.new_queue(tags={"region": "eu"}, auto_submit_count=300)
                    for i in range(700):
                        queue.add(f"jobs.q{i % 70}", 1 + i // 70)
                    queue.submit()

                await in_thread(post_queue)
                assert await proxy.stop(signal.SIGTERM) == 0, proxy.log
            assert not otlp.rejected, otlp.describe()
            for q in range(70):
                point = otlp.find(f"jobs.q{q}", region="eu")
                assert len(point) == 1, (q, point)
                assert (point[0].count, point[0].sum) == (10, float(sum(range(1, 11))))

    run(scenario())


# The client does not close its connection after an error answer (it does after a success):
# its socket is collected unclosed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_wrong_token_is_refused_and_nothing_arrives() -> None:
    async def scenario() -> None:
        async with FakeAppOptics(token="out-token") as api:
            flags = intake_flags("--api-url", api.url)
            async with Proxy(*flags, env={"APPOPTICS_TOKEN": "out-token"}) as proxy:
                port = intake_port(proxy)
                wrong = appoptics_metrics.connect(
                    "not-it", hostname=f"127.0.0.1:{port}", protocol="http"
                )
                try:
                    await in_thread(lambda: wrong.submit("x", 1, tags={"k": "v"}))
                except appoptics_metrics.exceptions.Unauthorized:
                    pass
                else:
                    raise AssertionError("a wrong token was accepted")
                assert await proxy.stop(signal.SIGTERM) == 0, proxy.log
            assert [m for m in api.accepted if m["name"] == "x"] == []

    run(scenario())
