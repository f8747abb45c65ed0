"""The flush schedule: ticks on the wall-clock grid, no duplicate or skipped stamps."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from statsd_ao.core.aggregator import Aggregator
from statsd_ao.core.annotations import Annotation
from statsd_ao.core.measurements import Converter, Measurement
from statsd_ao.core.sanitize import Naming
from statsd_ao.flusher import Flusher, next_tick
from statsd_ao.io.appoptics import AppOpticsSink


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ListSink:
    """A poster that keeps each post's measurements."""

    def __init__(self) -> None:
        self.batches: list[Sequence[Measurement]] = []
        self.annotations: list[tuple[str, Annotation]] = []
        self.is_open = True
        self.kept = 0
        self.lost: dict[str, int] = {}

    @property
    def posted(self) -> int:
        return sum(map(len, self.batches))

    async def start(self) -> None:
        return None

    def submit(self, batch: Sequence[Measurement]) -> None:
        self.batches.append(batch)

    def annotate(self, stream: str, annotation: Annotation) -> None:
        self.annotations.append((stream, annotation))

    async def drain(self, timeout: float) -> int:
        return 0

    async def close(self) -> None:
        return None


def appoptics(
    poster: ListSink, converter: Converter | None = None, batch_size: int = 500
) -> AppOpticsSink:
    """The AppOptics sink, as production makes it, over ``poster``."""
    return AppOpticsSink(
        converter or Converter(),
        poster,
        batch_size=batch_size,
        annotation_stream="statsd-ao",
        host="h",
    )


@given(st.floats(0, 2e9), st.integers(1, 3600))
def test_next_tick_is_the_next_grid_point(now: float, interval: int) -> None:
    tick = next_tick(now, interval)
    assert tick % interval == 0
    assert now < tick <= now + interval


def make(
    clock: FakeClock, interval: int = 10, batch: int = 500
) -> tuple[Aggregator, Flusher, ListSink]:
    aggregator = Aggregator(Naming({"host": "h"}))
    sink = ListSink()
    flusher = Flusher(
        aggregator, [appoptics(sink, batch_size=batch)], interval=interval, clock=clock
    )
    return aggregator, flusher, sink


def test_late_wakeups_keep_consecutive_stamps() -> None:
    clock = FakeClock(1000.0 + 3.2)
    aggregator, flusher, _ = make(clock)
    stamps = []
    for late in (0.0, 4.5, 9.9, 0.1):  # each wake-up this late past its tick
        aggregator.ingest(b"c:1|c")
        clock.now = flusher._tick + late
        stamps.append(flusher._advance())
    assert stamps == [1000, 1010, 1020, 1030]


def test_stall_longer_than_an_interval_rejoins_the_grid_without_repeats() -> None:
    clock = FakeClock(1000.0)
    _, flusher, _ = make(clock)
    clock.now = 1010.0 + 35.0  # the loop was stuck for 3.5 intervals
    first = flusher._advance()
    second_tick = flusher._tick
    assert first == 1000
    assert second_tick == 1050  # back on the grid, after now
    clock.now = second_tick
    assert flusher._advance() == 1040


def test_flush_stamps_batches_and_counts() -> None:
    clock = FakeClock(2000.0)
    aggregator, flusher, sink = make(clock, batch=3)
    aggregator.ingest(b"\n".join(f"m{i}:1|c".encode() for i in range(7)) + b"\nbad")
    report = asyncio.run(flusher.flush(1990))
    assert [len(b) for b in sink.batches] == [3, 3, 1]
    assert {m["time"] for b in sink.batches for m in b} == {1990}
    assert report.measurements == 7
    assert report.rejected == 1
    assert flusher.rejected == {"missing type": 1}
    assert flusher.lines == 8


def test_final_flush_stamps_the_unfinished_interval() -> None:
    clock = FakeClock(2004.0)
    aggregator, flusher, sink = make(clock)
    aggregator.ingest(b"g:5|g")
    asyncio.run(flusher.flush_final())
    assert sink.batches[0][0]["time"] == 2000


def test_run_flushes_at_ticks_until_stopped() -> None:
    """Real loop, real (short) waits: 1 s interval, stop after two flushes."""

    async def scenario() -> list[int]:
        aggregator = Aggregator(Naming({"host": "h"}))
        sink = ListSink()
        flusher = Flusher(aggregator, [appoptics(sink, batch_size=10)], interval=1)
        stop = asyncio.Event()
        stamps: list[int] = []
        original = flusher.flush

        async def flush(stamp: int) -> object:
            stamps.append(stamp)
            if len(stamps) == 2:
                stop.set()
            return await original(stamp)

        flusher.flush = flush  # type: ignore[method-assign,assignment]
        await asyncio.wait_for(flusher.run(stop), 5)
        return stamps

    stamps = asyncio.run(scenario())
    assert stamps[1] == stamps[0] + 1


def test_flush_posts_timestamped_samples_under_their_own_interval() -> None:
    clock = FakeClock(2004.0)
    aggregator = Aggregator(Naming({"host": "h"}), interval=10, clock=clock)
    sink = ListSink()
    flusher = Flusher(aggregator, [appoptics(sink, batch_size=10)], interval=10, clock=clock)
    aggregator.ingest(b"late:1|c|T1985\nnow:1|c")
    asyncio.run(flusher.flush(2000))
    stamps = {m["name"]: m["time"] for batch in sink.batches for m in batch}
    assert stamps == {"now": 2000, "late": 1980}


def test_a_series_named_like_a_percentile_is_posted_once_and_the_collision_counted() -> None:
    # A counter lat.p90 and the 90th percentile of timer lat, same tags: one measurement of
    # that name, the counter's; a later interval (and other tags) untouched.
    aggregator = Aggregator(Naming({"host": "h"}))
    sink = ListSink()
    converter = Converter([90])
    flusher = Flusher(aggregator, [appoptics(sink, converter, batch_size=2)], interval=10)
    aggregator.ingest(b"lat:5|ms\nlat:7|ms\nlat.p90:3|c\nlat.p90:1|c|#env:dev\nx:1|c")
    asyncio.run(flusher.flush(1000))
    posted = [(m["name"], m["tags"].get("env"), m.get("value")) for b in sink.batches for m in b]
    assert sorted(posted, key=str) == sorted(
        [("lat", None, None), ("lat.p90", None, 3.0), ("lat.p90", "dev", 1.0), ("x", None, 1.0)],
        key=str,
    )
    assert converter.dropped == {"percentile name taken": 1}
    sink.batches.clear()
    aggregator.ingest(b"lat:5|ms")
    asyncio.run(flusher.flush(1010))
    assert [m["name"] for b in sink.batches for m in b] == ["lat", "lat.p90"]
