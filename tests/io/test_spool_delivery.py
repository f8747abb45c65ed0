"""The HTTP sink with its spool, in one process against the strict fake API: what is kept,
replayed, dropped past the bound or too old, and settled after a split."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from statsd_ao.core.measurements import Measurement
from statsd_ao.core.retry import Backoff
from statsd_ao.io.sink import HttpSink
from statsd_ao.io.spool import Spool
from statsd_ao.io.spoolfile import MIN_MAX_BYTES
from tests.bounded import run_bounded
from tests.fakeapi import FakeAppOptics

TOKEN = "spool-sink"
FAST = Backoff(0.01, 0.05)
ROUNDS = 30


def run(scenario: Coroutine[Any, Any, None]) -> None:
    run_bounded(scenario)


def batch(prefix: str, n: int, stamp: int = 1_700_000_000, pad: int = 0) -> list[Measurement]:
    tags = {"host": "h", **{f"pad{k}": "p" * pad for k in range(3 if pad else 0)}}
    return [
        {"name": f"{prefix}.{i}", "tags": tags, "time": stamp, "period": 10, "value": i}
        for i in range(n)
    ]


def sink(api: FakeAppOptics, directory: Path, **options: Any) -> HttpSink:
    spool = Spool(directory, options.pop("max_bytes", MIN_MAX_BYTES))
    options = {"concurrency": 2, "timeout": 5.0, "backoff": FAST, **options}
    return HttpSink(api.url, TOKEN, spool=spool, **options)


def test_what_an_outage_leaves_is_kept_not_lost_and_the_next_sink_delivers_it(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            api.down = True
            first = sink(api, tmp_path)
            await first.start()
            first.submit(batch("a", 700))
            first.submit(batch("b", 300))
            assert await first.drain(0.2) == 0
            await first.close()
            assert (first.kept, first.lost, first.posted) == (1000, {}, 0)
            api.down = False
            second = sink(api, tmp_path)
            await second.start()
            assert second.spool is not None and second.spool.replayed == 1000
            assert await second.drain(5.0) == 0
            await second.close()
            assert (second.posted, second.lost, second.kept) == (1000, {}, 0)
            assert len(api.accepted) == 1000
            assert {m["time"] for m in api.accepted} == {1_700_000_000}  # original time
        assert not list(tmp_path.glob("*.seg"))

    run(scenario())


def test_past_the_spool_bound_the_oldest_posts_are_lost_as_spool_full(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            api.down = True
            held = sink(api, tmp_path, max_pending=10**6)
            await held.start()
            for round_ in range(ROUNDS):  # ~0.8 MB per post, one segment per round
                held.submit(batch(f"r{round_}", 1000, pad=250))
                await asyncio.sleep(0)
                assert held.spool is not None and held.spool.bytes <= MIN_MAX_BYTES
            await held.drain(0.1)
            await held.close()
            dropped = held.lost.get("spool_full", 0)
            assert dropped > 0 and dropped % 1000 == 0
            assert held.kept + dropped == ROUNDS * 1000
            api.down = False
            again = sink(api, tmp_path)
            await again.start()
            assert await again.drain(5.0) == 0
            await again.close()
            names = {m["name"].partition(".")[0] for m in api.accepted}
            newest = range(ROUNDS - held.kept // 1000, ROUNDS)
            assert names == {f"r{r}" for r in newest}

    run(scenario())


def test_a_spooled_post_older_than_max_age_is_lost_as_too_old_at_start(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            api.down = True
            clock = [1000.0]
            first = sink(api, tmp_path, max_age=60.0, wall=lambda: clock[0])
            await first.start()
            first.submit(batch("old", 5))
            await first.drain(0.1)
            await first.close()
            assert first.kept == 5
            api.down = False
            clock[0] += 61.0  # the next run starts after the measurements' max age
            second = sink(api, tmp_path, max_age=60.0, wall=lambda: clock[0])
            await second.start()
            assert await second.drain(1.0) == 0
            await second.close()
            assert (second.posted, second.lost) == (0, {"too_old": 5})
            assert not api.accepted
        assert not list(tmp_path.glob("*.seg"))

    run(scenario())


def test_a_post_split_around_a_bad_measurement_is_settled_once_both_halves_are(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            poisoned = batch("split", 8)
            poisoned[5]["value"] = 1e127  # the API refuses the whole post for this number
            first = sink(api, tmp_path)
            await first.start()
            first.submit(poisoned)
            assert await first.drain(5.0) == 0
            await first.close()
            assert (first.posted, first.lost, first.kept) == (7, {"rejected": 1}, 0)
            again = sink(api, tmp_path)
            await again.start()
            assert again.spool is not None and again.spool.replayed == 0
            await again.drain(0.1)
            await again.close()
        assert not list(tmp_path.glob("*.seg"))

    run(scenario())


def test_a_drain_cut_short_still_leaves_close_a_whole_stop(tmp_path: Path) -> None:
    """A second signal cancels the drain while it stops (here: waiting on an annotation);
    `close` must still finish the stop: the spool closed, the post kept for the next run."""

    async def scenario() -> None:
        async with FakeAppOptics(token="t") as api:
            api.down = True
            spool = Spool(tmp_path / "spool", MIN_MAX_BYTES)
            sink = HttpSink(api.url, "t", concurrency=1, timeout=5.0, spool=spool)
            await sink.start()
            sink.submit([Measurement(name="kept", tags={"h": "1"}, time=60, period=10, value=1)])
            await api.wait_for(lambda fake: len(fake.requests) >= 1)  # failing: all spooled
            never = asyncio.Event()

            async def annotation_in_flight() -> None:
                await never.wait()

            sink._annotating.add(asyncio.create_task(annotation_in_flight()))
            drain = asyncio.create_task(sink.drain(30.0))
            async with asyncio.timeout(10):
                while not sink._closed:  # the drain has reached its stop
                    await asyncio.sleep(0)
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)
            async with asyncio.timeout(10):
                await sink.close()
            assert sink.kept == 1 and sink.lost == {}
            assert spool._lock_fd is None  # closed: the lock released

    run(scenario())
