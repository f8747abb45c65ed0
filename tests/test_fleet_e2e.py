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
from pathlib import Path
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
            for n in range(40):
                (posted,) = by_name[f"requests.{n}"]
                assert posted["value"] == 6.0, posted  # 1 + 2 + 3
            for n in range(10):
                (posted,) = by_name[f"latency.{n}"]
                assert (posted["count"], posted["sum"]) == (15, 30.0), posted
            for proxy in globals_:  # the names are shared between the globals
                line = await proxy.wait_for_log("fleet: took in")
                assert "took in 0 parts" not in line and "(0 duplicates" in line, line

    run(scenario())


def test_one_budget_for_the_fleet_at_the_owner_of_the_metric() -> None:
    async def scenario() -> None:
        async with FakeAppOptics(token="out-token") as api, AsyncExitStack() as stack:
            globals_ = await start_globals(stack, api, 2, "--cardinality-limit", "100")
            locals_ = await start_locals(stack, globals_, 3)
            for index, local in enumerate(locals_):
                await local.send([f"api.calls:1|c|#user:{index}-{n}".encode() for n in range(60)])
            await stop_all(locals_, globals_)
            assert not api.rejected, api.describe()
            posted = [m for m in api.accepted if m["name"] == "api.calls"]
            overflow = [m for m in posted if m["tags"].get("overflow") == "true"]
            assert len(posted) == 100 and len(overflow) == 1, len(posted)  # 99 + the overflow
            assert overflow[0]["value"] == 180 - 99
            assert sum(m["value"] for m in posted) == 180.0

    run(scenario())


def test_a_local_restarted_with_its_spool_delivers_its_pending_parts_once(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with FakeAppOptics(token="out-token") as api, AsyncExitStack() as stack:
            (first,) = await start_globals(stack, api, 1)
            port = fleet_port(first)
            assert await first.stop(signal.SIGTERM) == 0, first.log  # the member goes down
            local_flags = ("--forward", f"127.0.0.1:{port}", "--fleet-token", TOKEN,
                           "--flush-interval", DAY, "--host-tag", "false", "--tag", "env=t",
                           "--spool-dir", str(tmp_path), "--shutdown-timeout", "1")  # fmt: skip
            local = await stack.enter_async_context(Proxy(*local_flags))
            await local.send([b"jobs:5|c", b"jobs:7|c", b"wait:3|ms", b"wait:4|ms"])
            assert await local.stop(signal.SIGTERM) == 0, local.log
            assert list((tmp_path / "forward").glob("*/*.seg")) or "kept" in local.log, local.log
            assert not api.accepted
            # The member comes back on its address; the local restarts with its spool.
            (again,) = await start_globals(stack, api, 1, "--fleet-listen", f"127.0.0.1:{port}")
            restarted = await stack.enter_async_context(Proxy(*local_flags))
            assert await restarted.stop(signal.SIGTERM) == 0, restarted.log
            assert await again.stop(signal.SIGTERM) == 0, again.log
            assert not api.rejected, api.describe()
            posted = {m["name"]: m for m in api.accepted}
            assert posted["jobs"]["value"] == 12.0, api.accepted
            assert (posted["wait"]["count"], posted["wait"]["sum"]) == (2, 7.0)
            assert len(api.accepted) == 3  # jobs, wait and wait.p90: once each
            assert "(0 duplicates" in await again.wait_for_log("fleet: took in")

    run(scenario())
