"""Delivery under fire: the real HttpSink against the strict local AppOptics with faults.

Every test asserts exact totals: each measurement stored exactly once, or each loss counted
under its reason.  Backoffs are shortened (the policy is the same; only its constants
change) so the suite stays fast; the only real waits are the behaviour under test (a
Retry-After, an outage, a drain deadline).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from aiohttp import web

from statsd_ao.core.measurements import Measurement
from statsd_ao.core.retry import Backoff
from statsd_ao.io.sink import HttpSink
from tests.fakeapi import FakeAppOptics, Fault
from tests.proxy import Proxy

TOKEN = "delivery-token"
STAMP = 1_800_000_000
FAST = Backoff(0.01, 0.1)  # the production policy, compressed in time
LIMIT = 30.0  # no test body may take longer than this
T = TypeVar("T")


def run(scenario: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(scenario, LIMIT))


def series(prefix: str, n: int) -> list[Measurement]:
    return [
        {"name": f"{prefix}.{i}", "tags": {"host": "h1"}, "time": STAMP, "period": 10, "value": i}
        for i in range(n)
    ]


def names(batches: list[list[Measurement]]) -> Counter[str]:
    return Counter(m["name"] for batch in batches for m in batch)


def stored(api: FakeAppOptics) -> Counter[str]:
    return Counter(m["name"] for m in api.accepted)


@asynccontextmanager
async def sink_for(api_url: str, token: str = TOKEN, **options: Any) -> AsyncIterator[HttpSink]:
    options = {"concurrency": 4, "timeout": 5.0, "backoff": FAST, **options}
    sink = HttpSink(api_url, token, **options)
    await sink.start()
    try:
        yield sink
    finally:
        await sink.close()


def test_every_measurement_is_stored_once_when_all_goes_well() -> None:
    batches = [series(f"ok{b}", 500) for b in range(3)]

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api, sink_for(api.url) as sink:
            for batch in batches:
                sink.submit(batch)
            assert await sink.drain(5.0) == 0
            assert stored(api) == names(batches)
            assert (sink.posted, sink.lost, sink.outcomes) == (1500, {}, {"202": 3})

    run(scenario())


def test_bursts_of_5xx_with_and_without_body_are_retried_until_stored() -> None:
    faults = [
        Fault.status(500),
        Fault.status(502, body=b""),
        Fault.status(503),
        Fault.status(504, body=b"<html>gateway timeout</html>"),
    ] * 2
    batches = [series(f"burst{b}", 250) for b in range(4)]

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api, sink_for(api.url) as sink:
            api.script(faults)
            for batch in batches:
                sink.submit(batch)
            assert await sink.drain(10.0) == 0
            assert stored(api) == names(batches)
            assert (sink.posted, sink.lost, sink.retries) == (1000, {}, 8)
            assert sink.outcomes == {"500": 2, "502": 2, "503": 2, "504": 2, "202": 4}
            assert sink.unconfirmed == 0  # every failure was an answer: no doubt

    run(scenario())


@pytest.mark.parametrize(
    "headers",
    [{"Retry-After": "1"}, {"X-Librato-RateLimit-Std": "limit=300,remaining=0,reset=1"}],
    ids=["retry-after", "librato-rate-limit"],
)
def test_429_waits_as_long_as_the_api_asks(headers: dict[str, str]) -> None:
    batch = series("throttled", 100)

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api, sink_for(api.url) as sink:
            api.script([Fault.status(429, headers=headers)])
            sink.submit(batch)
            await api.wait_for(lambda a: len(a.requests) == 1)
            throttled_at = time.monotonic()
            await api.wait_for(lambda a: len(a.requests) == 2)
            # FAST would retry within 0.01 s; the API asked for a whole second.
            assert time.monotonic() - throttled_at >= 0.95
            assert await sink.drain(5.0) == 0
            assert stored(api) == names([batch])
            assert sink.outcomes == {"429": 1, "202": 1} and sink.lost == {}

    run(scenario())


def test_dropped_connections_are_retried_and_counted_as_unconfirmed() -> None:
    batches = [series(f"drop{b}", 300) for b in range(2)]

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api, sink_for(api.url) as sink:
            api.script([Fault.drop()] * 3)
            for batch in batches:
                sink.submit(batch)
            assert await sink.drain(10.0) == 0
            assert stored(api) == names(batches)
            dropped = sum(r.measurements for r in api.requests if r.fault == "drop")
            assert dropped == 900  # three posts of 300 got no answer after being sent
            assert (sink.posted, sink.lost, sink.unconfirmed) == (600, {}, dropped)

    run(scenario())


def test_an_api_that_answers_after_30s_is_abandoned_at_the_timeout_and_retried() -> None:
    batch = series("slow", 100)

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api, sink_for(api.url, timeout=0.3) as sink:
            api.script([Fault.delay(30.0)])
            started = time.monotonic()
            sink.submit(batch)
            assert await sink.drain(10.0) == 0
            assert time.monotonic() - started < 5.0
            assert stored(api) == names([batch])  # stored once, by the retry
            assert sink.outcomes == {"TimeoutError": 1, "202": 1}
            assert (sink.lost, sink.unconfirmed) == ({}, 100)
        # The slow server finishes the abandoned post when it shuts down, as a real one may:
        # the only possible duplicates are exactly the measurements counted as unconfirmed.
        assert stored(api) == Counter(dict.fromkeys(names([batch]), 2))

    run(scenario())


@pytest.mark.parametrize(
    ("fault", "resend", "copies", "lost"),
    [
        ("delay", True, 2, {}),
        ("delay", False, 1, {"unconfirmed": 50}),
        ("drop", True, 1, {}),
        ("drop", False, 0, {"unconfirmed": 50}),
    ],
)
def test_the_unconfirmed_post_tradeoff(
    fault: str, resend: bool, copies: int, lost: dict[str, int]
) -> None:
    """No answer after a complete send: the server may (delay) or may not (drop) have stored
    the post.  Re-sending (the default) never loses it but may duplicate it; not re-sending
    never duplicates it but may lose it.  Either way the doubt is counted exactly."""
    batch = series(fault, 50)

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            options: dict[str, Any] = {"timeout": 0.3, "resend_unconfirmed": resend}
            async with sink_for(api.url, **options) as sink:
                api.script([Fault.delay(30.0) if fault == "delay" else Fault.drop()])
                sink.submit(batch)
                assert await sink.drain(10.0) == 0
                assert sink.lost == lost
                assert sink.unconfirmed == (50 if resend else 0)
        assert stored(api) == Counter(dict.fromkeys(names([batch]), copies))

    run(scenario())


OUTAGE = 15.0  # seconds the API is down
FLUSHES = 15  # one flush of 1,000 measurements per second during the outage


def test_an_outage_of_tens_of_seconds_loses_nothing_and_is_probed_gently() -> None:
    flushes = [[series(f"f{f}b{b}", 500) for b in range(2)] for f in range(FLUSHES)]

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            async with sink_for(api.url, backoff=Backoff(0.05, 1.0)) as sink:
                api.down = True
                for flush in flushes:
                    for batch in flush:
                        sink.submit(batch)
                    await asyncio.sleep(OUTAGE / FLUSHES)  # the outage going on, not a sync
                assert sink.pending == 15_000 and sink.lost == {}
                probes = len(api.requests)
                api.down = False
                assert await sink.drain(15.0) == 0
            expected = names([batch for flush in flushes for batch in flush])
            assert stored(api) == expected
            assert (sink.posted, sink.lost) == (15_000, {})
            # One probe at a time, at most a second apart: not 30 batches retrying at once.
            assert OUTAGE / 1.0 <= probes <= 4 * OUTAGE / 1.0
            assert len(api.requests) - probes == 30

    run(scenario())


def test_one_bad_measurement_among_1000_is_found_by_splitting_and_only_it_is_dropped() -> None:
    batch = series("split", 1000)
    batch[617]["value"] = 1e127  # the API aborts the whole post with a 400 for this number

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api, sink_for(api.url) as sink:
            sink.submit(batch)
            assert await sink.drain(10.0) == 0
            assert stored(api) == names([batch]) - Counter({"split.617": 1})
            assert (sink.posted, sink.lost) == (999, {"rejected": 1})
            # Bisection: each level posts the two halves of the part that failed.
            assert len(api.requests) == 1 + 2 * sink.splits and sink.splits == 10
            assert {r.status for r in api.requests} == {202, 400}

    run(scenario())


def test_a_partial_failure_is_counted_and_nothing_is_sent_twice() -> None:
    batch = series("partial", 1000)
    batch[42]["tags"] = {}  # "Must have at least one tag": the API takes the other 999

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api, sink_for(api.url) as sink:
            sink.submit(batch)
            assert await sink.drain(5.0) == 0
            assert stored(api) == names([batch]) - Counter({"partial.42": 1})
            assert (sink.posted, sink.lost, sink.outcomes) == (999, {"rejected": 1}, {"202": 1})

    run(scenario())


HUGE_ANSWER = 1 << 30


def test_a_1_gib_answer_is_read_only_as_far_as_its_summary_needs() -> None:
    """A 202 partial failure whose error list runs on for 1 GiB (streamed, never held by
    the server): the sink reads a bounded start, finds the summary in it, counts the post
    exactly, and closes the connection, so the server gets only a few MiB out."""
    batch = series("huge", 1000)
    written = 0

    async def answer(request: web.Request) -> web.StreamResponse:
        nonlocal written
        await request.read()
        response = web.StreamResponse(status=202, headers={"x-partial-failure": "true"})
        response.content_length = HUGE_ANSWER
        await response.prepare(request)
        start = (
            b'{"measurements":{"summary":{"total":1000,"accepted":998,"failed":2,'
            b'"filtered":0}},"errors":[{"param":"name","reason":"'
        )
        chunk = b"x" * (1 << 16)
        try:
            await response.write(start)
            written = len(start)
            while written + len(chunk) <= HUGE_ANSWER:
                await response.write(chunk)
                written += len(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client stopped reading and closed: as it should
        return response

    async def scenario() -> None:
        app = web.Application()
        app.router.add_post("/v1/measurements", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with sink_for(f"http://127.0.0.1:{port}") as sink:
                sink.submit(batch)
                assert await sink.drain(10.0) == 0
                assert (sink.posted, sink.lost, sink.outcomes) == (998, {"rejected": 2}, {"202": 1})
        finally:
            await runner.cleanup()
        assert written < 64 << 20, f"the server got {written >> 20} MiB out"

    run(scenario())


def test_a_400_that_judged_every_measurement_drops_the_batch_without_splitting() -> None:
    batch = series("invalid", 10)
    for m in batch:
        m["tags"] = {}

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api, sink_for(api.url) as sink:
            sink.submit(batch)
            assert await sink.drain(5.0) == 0
            assert (len(api.requests), sink.splits, sink.lost) == (1, 0, {"rejected": 10})

    run(scenario())


def test_401_logs_an_error_keeps_the_data_and_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    batch = series("denied", 100)

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            answered = asyncio.Event()
            async with sink_for(
                api.url,
                token="wrong-token",
                random=lambda: 0.5,
                on_latency=lambda _: answered.set(),  # called as the answer is read
            ) as sink:
                sink.submit(batch)
                async with asyncio.timeout(10):
                    await answered.wait()
                assert sink.outcomes == {"401": 1}
                assert sink.pending == 100 and sink.lost == {}  # kept for the operator
                started = time.monotonic()
                # Nothing can be delivered with this token: the drain ends long before its
                # 30 s deadline, and the next try (5 s away) never happens.
                assert await sink.drain(30.0) == 100
                assert time.monotonic() - started < 10.0
                assert sink.lost == {"shutdown": 100}
            assert [r.status for r in api.requests] == [401]

    run(scenario())
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "401" in errors[0].getMessage() and "token" in errors[0].getMessage()
    assert "wrong-token" not in caplog.text


def test_data_held_after_401_is_delivered_once_the_token_works() -> None:
    batch = series("fixed", 100)

    async def scenario() -> None:
        async with FakeAppOptics(token="old-token") as api:
            async with sink_for(api.url, denied_backoff=FAST) as sink:
                sink.submit(batch)
                await api.wait_for(lambda a: len(a.requests) >= 2)  # denied, and backing off
                api.token = TOKEN  # the operator fixes the account's token
                await api.wait_for(lambda a: len(a.accepted) == 100)
                assert await sink.drain(5.0) == 0
            assert stored(api) == names([batch])
            assert (sink.posted, sink.lost) == (100, {})

    run(scenario())


def test_a_full_buffer_drops_the_oldest_batches_and_counts_them() -> None:
    batches = [series(f"buf{b}", 500) for b in range(5)]

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            async with sink_for(api.url, max_pending=1000) as sink:
                api.down = True
                for batch in batches:  # submit never yields: nothing is in flight yet
                    sink.submit(batch)
                assert sink.lost == {"buffer_full": 1500} and sink.pending == 1000
                api.down = False
                assert await sink.drain(5.0) == 0
            assert stored(api) == names(batches[3:])  # the newest two
            assert sink.posted == 1000

    run(scenario())


def test_batches_older_than_the_age_limit_are_dropped_and_counted() -> None:
    batch = series("old", 100)

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            async with sink_for(api.url, max_age=0.5) as sink:
                api.down = True
                sink.submit(batch)
                started = time.monotonic()
                assert await sink.drain(10.0) == 0  # nothing left: it aged out
                assert 0.4 <= time.monotonic() - started < 3.0
                assert (sink.posted, sink.lost) == (0, {"too_old": 100})
            assert api.accepted == []

    run(scenario())


class PoisonAPI:
    """A bare measurements endpoint: 500 for a post naming "poison", else 202.  (The fake
    scripts faults in arrival order; this one fails a particular batch every time.)"""

    def __init__(self) -> None:
        self.stored: Counter[str] = Counter()
        self.poison_posts = 0
        self.posts = 0
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> PoisonAPI:
        app = web.Application()
        app.router.add_post("/v1/measurements", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        doc = await request.json()
        self.posts += 1
        poisoned = any(m["name"].startswith("poison") for m in doc["measurements"])
        if poisoned:
            self.poison_posts += 1
        else:
            self.stored.update(m["name"] for m in doc["measurements"])
        async with self._changed:
            self._changed.notify_all()
        return web.Response(status=500 if poisoned else 202)

    async def wait_posts(self, n: int) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.posts >= n), 5.0)


def test_a_batch_the_api_keeps_failing_alone_is_given_up_after_max_attempts() -> None:
    poison = series("poison", 10)

    async def scenario() -> None:
        async with PoisonAPI() as api, sink_for(api.url, max_attempts=3) as sink:
            sink.submit(poison)
            good: list[list[Measurement]] = []
            while "attempts" not in sink.lost:  # other posts keep succeeding meanwhile
                good.append(series(f"good{len(good)}", 10))
                sink.submit(good[-1])
                await api.wait_posts(api.posts + 1)
            assert await sink.drain(5.0) == 0
            assert (api.poison_posts, sink.lost) == (3, {"attempts": 10})
            assert api.stored == names(good) and sink.posted == 10 * len(good)

    run(scenario())


def test_a_batch_submitted_after_shutdown_is_counted_as_lost() -> None:
    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            sink = HttpSink(api.url, TOKEN, concurrency=1, timeout=1.0)
            assert not sink.is_open
            await sink.start()
            assert sink.is_open
            assert await sink.drain(1.0) == 0
            assert not sink.is_open
            sink.submit(series("late", 7))
            await sink.close()
            assert (sink.pending, sink.lost, api.requests) == (0, {"shutdown": 7}, [])

    run(scenario())


class TickingClock:
    """time.monotonic, setting ``ticked`` at each reading.  The dispatcher reads the clock
    as it wakes and then runs without a pause to its next wait, so once ``ticked`` fires
    (after a clear, with nothing else reading the clock) it is parked again."""

    def __init__(self) -> None:
        self.ticked = asyncio.Event()

    def __call__(self) -> float:
        self.ticked.set()
        return time.monotonic()

    async def next_park(self) -> None:
        self.ticked.clear()
        async with asyncio.timeout(10):
            await self.ticked.wait()


@pytest.mark.parametrize("together", [True, False])
def test_close_racing_a_wake_up_still_stops_the_dispatcher(together: bool) -> None:
    # A submit wakes the dispatcher from a timed wait and close cancels it in the same step
    # (``together``: the wake-up and the cancellation land at once, and the cancellation
    # must win; asyncio.wait_for in 3.11 swallowed it and close hung), or once the
    # dispatcher has handled the wake-up and waits again.
    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            api.script([Fault.delay(10.0)])
            clock = TickingClock()
            sink = HttpSink(api.url, TOKEN, concurrency=1, timeout=20.0, clock=clock)
            await sink.start()
            sink.submit(series("flying", 3))
            await api.wait_for(lambda a: len(a.requests) + a.in_flight >= 1, timeout=5)
            sink.submit(series("queued", 4))  # no room: the dispatcher waits with a timeout
            await clock.next_park()
            sink.submit(series("racing", 5))
            if not together:
                await clock.next_park()
            async with asyncio.timeout(5.0):
                await sink.close()
            assert sink.pending == 0 and sink.lost == {"shutdown": 12}

    run(scenario())


def test_drain_ends_at_its_deadline_when_the_api_hangs() -> None:
    batch = series("hang", 100)

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api, sink_for(api.url, timeout=10.0) as sink:
            api.script([Fault.delay(30.0)])
            sink.submit(batch)
            await api.wait_for(lambda a: a.in_flight == 1)
            started = time.monotonic()
            assert await sink.drain(0.5) == 100
            assert time.monotonic() - started < 5.0  # not the post's 10 s, nor the API's 30
            assert sink.lost == {"shutdown": 100}

    run(scenario())


def test_drain_delivers_when_the_api_comes_back_before_the_deadline() -> None:
    batch = series("back", 100)

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            # The production backoff: a drain caps its waits at a second.
            async with sink_for(api.url, backoff=Backoff(), random=lambda: 0.99) as sink:
                api.down = True
                sink.submit(batch)
                await api.wait_for(lambda a: len(a.requests) >= 2)  # next wait: 1.98 s
                drain = asyncio.create_task(sink.drain(10.0))
                api.down = False
                assert await drain == 0
            assert stored(api) == names([batch]) and sink.lost == {}

    run(scenario())


DAY = "86400"


def test_sigterm_during_an_outage_exits_by_the_deadline_and_logs_the_loss() -> None:
    lines = [f"outage.{i}:1|c".encode() for i in range(50)]

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            api.down = True
            flags = ("--api-url", api.url, "--flush-interval", DAY, "--shutdown-timeout", "1")
            async with Proxy(*flags, env={"APPOPTICS_TOKEN": TOKEN}) as proxy:
                await proxy.send(lines)
                started = time.monotonic()
                assert await proxy.stop(signal.SIGTERM) == 0, proxy.log
                assert time.monotonic() - started < 4.0, proxy.log
            assert "shutdown: 50 measurements could not be delivered" in proxy.log, proxy.log
            assert api.accepted == [], api.describe()
            assert {r.fault for r in api.requests} == {"down"}, api.describe()

    run(scenario())


def test_sigterm_during_an_outage_delivers_everything_if_the_api_returns_in_time() -> None:
    lines = [f"recover.{i}:1|c".encode() for i in range(50)]

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            api.down = True
            flags = ("--api-url", api.url, "--flush-interval", DAY, "--shutdown-timeout", "10")
            async with Proxy(*flags, env={"APPOPTICS_TOKEN": TOKEN}) as proxy:
                await proxy.send(lines)
                stopping = asyncio.create_task(proxy.stop(signal.SIGTERM))
                await api.wait_for(lambda a: len(a.requests) >= 1)  # draining, and failing
                api.down = False
                assert await stopping == 0, proxy.log
            expected = Counter(f"recover.{i}" for i in range(50))
            assert stored(api) == expected, f"{api.describe()}\n{proxy.log}"
            assert "0 undelivered" in proxy.log, proxy.log

    run(scenario())


def test_a_second_sigterm_ends_the_delivery_at_once() -> None:
    lines = [f"second.{i}:1|c".encode() for i in range(50)]

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            api.down = True
            flags = ("--api-url", api.url, "--flush-interval", DAY, "--shutdown-timeout", "60")
            async with Proxy(*flags, env={"APPOPTICS_TOKEN": TOKEN}) as proxy:
                assert proxy.process is not None
                await proxy.send(lines)
                proxy.process.send_signal(signal.SIGTERM)
                await proxy.wait_for_log("shutting down")
                await api.wait_for(lambda a: len(a.requests) >= 1)  # delivering, and failing
                started = time.monotonic()
                assert await proxy.stop(signal.SIGTERM) == 0, proxy.log
                assert time.monotonic() - started < 15.0, proxy.log
            assert "second signal: ending the delivery now" in proxy.log
            assert "lost {'shutdown': 50}" in proxy.log, proxy.log

    run(scenario())
