"""The HTTP endpoint, over real loopback HTTP; the health policy and status page, as values."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import aiohttp
import orjson
import pytest

from statsd_ao.core.selfmetrics import SelfMetrics
from statsd_ao.io.health import (
    METRICS_CONTENT_TYPE,
    STALL_GRACE,
    HealthState,
    HttpServer,
    assess,
    cardinality_status,
    start_http,
)
from tests.bounded import run_bounded

HOST = "127.0.0.1"


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    run_bounded(scenario())


class State:
    """What the fake proxy reports; tests change it between requests."""

    def __init__(self) -> None:
        self.health = HealthState(live=True, ready=True)
        self.status: dict[str, object] = {"series": 0}
        self.packets = 0

    def metrics(self) -> SelfMetrics:
        metrics = SelfMetrics({"host": "h"})
        metrics.register_counter("udp.packets", "UDP datagrams read", lambda: self.packets)
        return metrics


async def serve(state: State) -> HttpServer:
    metrics = state.metrics()
    return await start_http(
        HOST,
        0,
        health=lambda: state.health,
        metrics_text=metrics.prometheus,
        status=lambda: state.status,
    )


async def get(server: HttpServer, path: str) -> tuple[int, str, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{HOST}:{server.port}{path}") as response,
    ):
        return response.status, response.headers["Content-Type"], await response.read()


def test_health_and_ready_answer_json_with_reasons() -> None:
    async def scenario() -> None:
        state = State()
        server = await serve(state)
        try:
            assert await get(server, "/health") == (
                200,
                "application/json; charset=utf-8",
                b'{"status":"ok","reasons":[]}',
            )
            assert (await get(server, "/ready"))[0] == 200
            state.health = HealthState(
                live=True,
                ready=False,
                reasons=("not listening for StatsD",),
                detail={"warnings": ["api failing"]},
            )
            assert (await get(server, "/health"))[0] == 200  # alive: do not restart it
            code, _, body = await get(server, "/ready")
            assert code == 503
            assert orjson.loads(body) == {
                "status": "fail",
                "reasons": ["not listening for StatsD"],
                "warnings": ["api failing"],
            }
            state.health = HealthState(live=False, ready=False, reasons=("stalled",))
            assert (await get(server, "/health"))[0] == 503
        finally:
            await server.close()

    run(scenario)


def test_metrics_are_prometheus_text_read_at_each_scrape() -> None:
    async def scenario() -> None:
        state = State()
        server = await serve(state)
        try:
            state.packets = 5
            code, content_type, body = await get(server, "/metrics")
            assert (code, content_type) == (200, METRICS_CONTENT_TYPE)
            assert b"# TYPE statsd_ao_udp_packets_total counter\n" in body
            assert b"\nstatsd_ao_udp_packets_total 5\n" in body
            state.packets = 8
            assert b"\nstatsd_ao_udp_packets_total 8\n" in (await get(server, "/metrics"))[2]
        finally:
            await server.close()

    run(scenario)


def test_status_serves_the_callables_json() -> None:
    async def scenario() -> None:
        state = State()
        state.status = cardinality_status([("api.latency", [("user", "1")])])
        server = await serve(state)
        try:
            code, content_type, body = await get(server, "/status")
            assert (code, content_type) == (200, "application/json; charset=utf-8")
            assert orjson.loads(body)["top_metrics"] == [{"metric": "api.latency", "tag_sets": 1}]
            assert (await get(server, "/nope"))[0] == 404
        finally:
            await server.close()

    run(scenario)


def test_head_requests_work_for_probes() -> None:
    async def scenario() -> None:
        server = await serve(State())
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.head(f"http://{HOST}:{server.port}/ready") as response,
            ):
                assert response.status == 200
        finally:
            await server.close()

    run(scenario)


def test_a_port_in_use_raises_and_leaves_nothing_open() -> None:
    async def scenario() -> None:
        with socket.socket() as taken:
            taken.bind((HOST, 0))
            taken.listen()
            with pytest.raises(OSError):
                await serve_on(taken.getsockname()[1])

    async def serve_on(port: int) -> HttpServer:
        return await start_http(
            HOST, port, health=lambda: HealthState(True, True), metrics_text=str, status=dict
        )

    run(scenario)


def test_close_releases_the_port() -> None:
    async def scenario() -> None:
        server = await serve(State())
        port = server.port
        await server.close()
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((HOST, port))

    run(scenario)


# The policy


def test_ready_when_listening_and_able_to_post() -> None:
    state = assess(listening=True, sink_open=True, since_flush=5, flush_interval=10)
    assert state == HealthState(live=True, ready=True)


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        ({"listening": False}, "not listening for StatsD"),
        ({"sink_open": False}, "not able to post: the sink is not started or is shutting down"),
    ],
)
def test_not_ready_says_why(facts: Mapping[str, bool], reason: str) -> None:
    given = {"listening": True, "sink_open": True, **facts}
    state = assess(since_flush=0, flush_interval=10, **given)
    assert (state.live, state.ready, state.reasons) == (True, False, (reason,))


def test_a_stalled_flush_loop_is_not_alive() -> None:
    limit = 3 * 10 + STALL_GRACE
    alive = assess(listening=True, sink_open=True, since_flush=limit, flush_interval=10)
    stalled = assess(listening=True, sink_open=True, since_flush=limit + 1, flush_interval=10)
    assert alive.live
    assert (stalled.live, stalled.ready) == (False, False)
    assert stalled.reasons == ("no flush for 91 s (interval 10 s)",)


def test_an_api_outage_is_a_warning_not_unreadiness() -> None:
    state = assess(
        listening=True, sink_open=True, since_flush=0, flush_interval=10, api_failing_for=120
    )
    assert state.ready
    assert state.detail == {"warnings": ["the AppOptics API has been failing for 120 s"]}


def test_cardinality_status_ranks_metrics_and_tag_keys() -> None:
    series = [
        ("api.latency", [("host", "h"), ("user", str(i)), ("route", f"/r{i % 2}")])
        for i in range(5)
    ]
    series += [("jobs", [("host", "h")]), ("jobs", [("host", "h"), ("queue", "q")])]
    assert cardinality_status(series, top=2) == {
        "series": 7,
        "metrics": 2,
        "top_metrics": [
            {"metric": "api.latency", "tag_sets": 5},
            {"metric": "jobs", "tag_sets": 2},
        ],
        "top_tag_keys": [{"key": "user", "values": 5}, {"key": "route", "values": 2}],
    }
    assert cardinality_status([]) == {
        "series": 0,
        "metrics": 0,
        "top_metrics": [],
        "top_tag_keys": [],
    }


async def raw_request(port: int, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection; the status line of the answer."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        await writer.drain()
    except ConnectionError:
        pass  # the server may answer and close before it has read all of a huge request
    async with asyncio.timeout(5):
        status = await reader.readline()
    writer.close()
    return status


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /metrics?" + b"q" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b" 400 "),
        (b"GET /status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 100_000 + b"\r\n\r\n", b" 400 "),
        (
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: v\r\n" % i for i in range(100))  # over 64, under aiohttp's 128
            + b"\r\n",
            b" 400 ",
        ),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) * 4, b" 400 "),
    ],
    ids=["huge-request-line", "huge-header", "too-many-headers", "random-bytes"],
)
def test_oversized_and_garbage_requests_are_refused_and_serving_goes_on(
    request_bytes: bytes, status: bytes
) -> None:
    async def scenario() -> None:
        server = await serve(State())
        try:
            assert status in await raw_request(server.port, request_bytes)
            code, _, body = await get(server, "/health")  # everyone else is still served
            assert code == 200, body
        finally:
            await server.close()

    run(scenario)


def test_a_huge_body_is_not_read_into_memory() -> None:
    async def scenario() -> None:
        server = await serve(State())
        try:
            head = b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n"
            answer = await raw_request(server.port, head + b"x" * 65536)
            assert b" 405 " in answer  # GET-only routes: refused before any body is read
            assert (await get(server, "/metrics"))[0] == 200
        finally:
            await server.close()

    run(scenario)
