"""The fleet with real processes on loopback: locals (--forward) send their intervals to
globals (--fleet-listen) that merge them and post to a strict fake AppOptics API.

Each scenario flushes on shutdown (a day's interval): the locals stop first (their final
flush forwards, their drain waits for every acknowledgement), then the globals (whose
final flush takes every part held), so no test waits on the clock."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any

from tests.fakeapi import FakeAppOptics
from tests.proxy import Proxy

TOKEN = "fleet-secret"
DAY = "86400"


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, 60))


def fleet_port(proxy: Proxy) -> int:
    line = next(line for line in proxy.stderr if "listening for fleet parts" in line)
    found = re.search(r"http \S+:(\d+)", line)
    assert found is not None, line
    return int(found.group(1))


async def start_globals(
    stack: AsyncExitStack, api: FakeAppOptics, n: int, *more: str
) -> list[Proxy]:
    """``n`` globals, each posting under its own tag ``global=gN``."""
    flags = ("--fleet-listen", "127.0.0.1:0", "--fleet-token", TOKEN, "--flush-interval", DAY,
             "--api-url", api.url, "--host-tag", "false", *more)  # fmt: skip
    env = {"APPOPTICS_TOKEN": "out-token"}
    return [
        await stack.enter_async_context(Proxy(*flags, "--tag", f"global=g{i}", env=env))
        for i in range(n)
    ]


async def start_locals(
    stack: AsyncExitStack, globals_: list[Proxy], n: int, *more: str
) -> list[Proxy]:
    targets = ",".join(f"127.0.0.1:{fleet_port(g)}" for g in globals_)
    flags = ("--forward", targets, "--fleet-token", TOKEN, "--flush-interval", DAY,
             "--host-tag", "false", "--tag", "env=test", *more)  # fmt: skip
    return [await stack.enter_async_context(Proxy(*flags)) for _ in range(n)]


async def stop_all(locals_: list[Proxy], globals_: list[Proxy]) -> None:
    for proxy in locals_:
        assert await proxy.stop(signal.SIGTERM) == 0, proxy.log
    for proxy in globals_:
        assert await proxy.stop(signal.SIGTERM) == 0, proxy.log


def test_three_locals_and_two_globals_post_exact_counters_and_timer_counts() -> None:
    async def scenario() -> None:
        async with FakeAppOptics(token="out-token") as api, AsyncExitStack() as stack:
            globals_ = await start_globals(stack, api, 2)
            locals_ = await start_locals(stack, globals_, 3)
            for index, local in enumerate(locals_):
                lines = [f"requests.{m}:{index + 1}|c".encode() for m in range(40)]
                lines += [f"latency.{m}:{v}|ms".encode() for m in range(10) for v in range(5)]
                await local.send(lines)
            await stop_all(locals_, globals_)
            assert not api.rejected, api.describe()
            by_name: dict[str, list[Any]] = {}
            for m in api.accepted:
                by_name.setdefault(m["name"], []).append(m)
            for m in range(40):
                (posted,) = by_name[f"requests.{m}"]
                assert posted["value"] == 6.0, posted  # 1 + 2 + 3
            for m in range(10):
                (posted,) = by_name[f"latency.{m}"]
                assert (posted["count"], posted["sum"]) == (15, 30.0), posted
            for proxy in globals_:  # the names are shared between the globals
                line = await proxy.wait_for_log("fleet: took in")
                assert "took in 0 parts" not in line and "(0 duplicates" in line, line

    run(scenario())
