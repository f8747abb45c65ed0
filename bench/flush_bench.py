"""One big flush in a real event loop: total time and the longest event-loop stall.

Usage: python -m bench.flush_bench [--series N] [--values N] [--rounds N] [--percentiles P]

Fills an `Aggregator` with ``--series`` series of the standard mix (40% counters, 30% timers,
15% gauges, 10% histograms, 5% sets; timers and histograms get ``--values`` values each, sets
as many members), then runs `statsd_ao.flusher.Flusher.flush` on a uvloop loop and waits
until the sink has encoded every batch.  Two in-memory sinks:

- ``queued``: like `statsd_ao.io.sink.HttpSink`, ``submit`` only enqueues; worker tasks encode
  each batch with `statsd_ao.core.batching.encode` and then yield once (where the real sink awaits
  the network);
- ``inline``: encodes inside ``submit`` (as the dry-run sink does), the worst case.

Then the two sinks of the pipeline side by side on the same interval, each fed the way the
flusher feeds a `statsd_ao.pipeline.Sink` (chunks of ``CONVERT_CHUNK`` series, a yield to
the loop between chunks), inline, to the last encoded byte:

- ``appoptics``: the AppOptics conversion (the C converter when built) and one
  ``orjson.dumps`` per batch of ``BATCH_SIZE`` measurements (what the AppOptics sink posts);
- ``otlp-cold``: `statsd_ao.otlp` conversion into requests of at most 2000 points, each
  serialized and gzipped, on a new sink (no attribute set encoded yet: the first interval);
- ``otlp-warm``: the same sink's next interval (the attribute sets are cached: every later
  interval of the same series);
- with ``--otlp-also python`` / ``library``: the same two with the C conversion and writer
  off (Python writes the same bytes), or with requests built from opentelemetry-proto's
  messages and Python's conversion (`tests.otlp.reference`: how it was done before).

For these the bytes per data point on the wire are printed too (AppOptics JSON, OTLP
protobuf before and after gzip).

The stall is measured by a callback that re-schedules itself with ``loop.call_soon``: the
gap between two of its runs is how long everything else in between held the loop, i.e. how
long a readable socket would have waited.  Printed: the flush's wall time until the last
batch is encoded, the longest gap, the 99th percentile gap, and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import random
import time
from collections.abc import Sequence
from typing import Any

import uvloop

from bench.workload import make_series, pack
from statsd_ao.core.aggregator import Aggregator
from statsd_ao.core.annotations import Annotation
from statsd_ao.core.batching import encode
from statsd_ao.core.measurements import Converter, Measurement
from statsd_ao.core.sanitize import Naming
from statsd_ao.flusher import CONVERT_CHUNK, Flusher, _free_some
from statsd_ao.gcpolicy import GcPolicy
from statsd_ao.io.appoptics import AppOpticsSink
from statsd_ao.otlp.convert import Converter as OtlpConverter
from statsd_ao.otlp.requests import Requests
from tests.otlp.reference import Requests as ReferenceRequests

BATCH_SIZE = 500  # statsd_ao.core.batching.DEFAULT_BATCH
INTERVAL = 10
WORKERS = 4  # statsd_ao.config.DEFAULT_CONCURRENCY


class BenchPoster:
    """What a `statsd_ao.io.sink.Poster` has besides posting, which the bench never uses."""

    is_open = True
    kept = 0
    posted = 0
    lost: dict[str, int] = {}  # noqa: RUF012 (never written)

    def annotate(self, stream: str, annotation: Annotation) -> None:
        return None


class QueuedSink(BenchPoster):
    """Enqueue on submit; workers encode one batch at a time and yield after each."""

    def __init__(self, workers: int = WORKERS) -> None:
        self._queue: asyncio.Queue[Sequence[Measurement]] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._count = workers
        self.bodies = 0
        self.bytes = 0
        self.measurements = 0

    async def start(self) -> None:
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._count)]

    def submit(self, batch: Sequence[Measurement]) -> None:
        self._queue.put_nowait(batch)

    async def drain(self, timeout: float) -> int:
        await asyncio.wait_for(self._queue.join(), timeout)
        return 0

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            batch = await self._queue.get()
            try:
                body = encode(batch)
                self.bodies += 1
                self.bytes += len(body)
                self.measurements += len(batch)
            finally:
                self._queue.task_done()
            await asyncio.sleep(0)  # the real sink awaits its POST here


class InlineSink(BenchPoster):
    """Encode inside submit (the dry-run sink's way): the flush pays for encoding in line."""

    def __init__(self) -> None:
        self.bodies = 0
        self.bytes = 0
        self.measurements = 0

    async def start(self) -> None:
        return None

    def submit(self, batch: Sequence[Measurement]) -> None:
        body = encode(batch)
        self.bodies += 1
        self.bytes += len(body)
        self.measurements += len(batch)

    async def drain(self, timeout: float) -> int:
        return 0

    async def close(self) -> None:
        return None


class StallMeter:
    """Gaps between consecutive runs of a self-rescheduling ``call_soon`` callback, and the
    garbage collector's pauses (``gc.callbacks``), so a stall can be split into GC and code.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._last = 0.0
        self._running = False
        self._gc_started = 0.0
        self.gaps: list[tuple[float, float]] = []  # (start, end) of each gap
        self.collections: list[tuple[float, float, int]] = []  # (start, end, generation)

    def start(self) -> None:
        self._running = True
        self._last = time.perf_counter()
        gc.callbacks.append(self._on_gc)
        self._loop.call_soon(self._tick)

    def stop(self) -> None:
        self._running = False
        gc.callbacks.remove(self._on_gc)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append((self._last, now))
        self._last = now
        if self._running:
            self._loop.call_soon(self._tick)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.collections.append((self._gc_started, time.perf_counter(), info["generation"]))

    def longest(self) -> tuple[float, float, float]:
        """(longest gap, GC time inside it, longest gap less the GC time inside it)."""
        worst = (0.0, 0.0, 0.0)
        worst_code = 0.0
        collections = self.collections
        first = 0
        for start, end in self.gaps:
            while first < len(collections) and collections[first][1] <= start:
                first += 1
            in_gc = 0.0
            index = first
            while index < len(collections) and collections[index][0] < end:
                gc_start, gc_end, _ = collections[index]
                in_gc += max(0.0, min(end, gc_end) - max(start, gc_start))
                index += 1
            gap = end - start
            if gap > worst[0]:
                worst = (gap, in_gc, 0.0)
            worst_code = max(worst_code, gap - in_gc)
        return worst[0], worst[1], worst_code

    def longest_collection(self) -> tuple[float, int]:
        """(seconds, generation) of the longest collection."""
        if not self.collections:
            return 0.0, -1
        start, end, generation = max(self.collections, key=lambda c: c[1] - c[0])
        return end - start, generation


def fill(series_count: int, values: int, seed: int = 3) -> tuple[Aggregator, int]:
    """An aggregator holding one interval of ``series_count`` series; (it, lines ingested)."""
    rng = random.Random(seed)
    lines: list[bytes] = []
    for series in make_series(series_count):
        if series.kind == "c":
            samples = [str(rng.randint(1, 5))]
        elif series.kind == "g":
            samples = [str(rng.randint(0, 1000))]
        elif series.kind == "s":
            samples = [f"user{rng.randint(1, 10_000)}" for _ in range(values)]
        else:
            samples = [f"{rng.random() * 250:.3f}" for _ in range(values)]
        lines.extend(series.template.format(v=v).encode() for v in samples)
    aggregator = Aggregator(Naming({"host": "bench"}))
    for datagram in pack(lines):
        aggregator.ingest(datagram)
    return aggregator, len(lines)


async def one_flush(
    aggregator: Aggregator,
    sink: QueuedSink | InlineSink,
    percentiles: Sequence[float],
    policy: GcPolicy | None = None,
) -> tuple[float, StallMeter, int, int]:
    """(seconds, stalls, series, measurements) of one flush, encoded to the last batch."""
    appoptics = AppOpticsSink(
        Converter(percentiles), sink, batch_size=BATCH_SIZE, annotation_stream="bench", host="h"
    )
    pause = policy.pause if policy is not None else contextlib.nullcontext  # as the app runs
    flusher = Flusher(aggregator, [appoptics], interval=INTERVAL, pause=pause)
    await sink.start()
    meter = StallMeter(asyncio.get_running_loop())
    meter.start()
    await asyncio.sleep(0.01)  # a few idle ticks before the flush starts
    started = time.perf_counter()
    report = await flusher.flush(int(time.time()) // INTERVAL * INTERVAL)
    await sink.drain(60.0)
    elapsed = time.perf_counter() - started
    await asyncio.sleep(0.01)
    meter.stop()
    await sink.close()
    if sink.measurements != report.measurements:
        raise RuntimeError(f"sink got {sink.measurements} of {report.measurements} measurements")
    return elapsed, meter, report.series, report.measurements


class Wire:
    """What a sink path put on the wire: bodies, their bytes, and bytes before gzip."""

    def __init__(self) -> None:
        self.bodies = self.bytes = self.raw_bytes = self.points = 0

    def add(self, body: bytes, points: int, raw: int) -> None:
        self.bodies += 1
        self.bytes += len(body)
        self.raw_bytes += raw
        self.points += points


class AppOpticsPath:
    """The AppOptics sink's work for a chunk: convert, then one orjson body per batch."""

    def __init__(self, percentiles: Sequence[float]) -> None:
        self._converter = Converter(percentiles)
        self._pending: list[Measurement] = []
        self.wire = Wire()

    def series(self, chunk: list[Any], stamp: int) -> None:
        self._pending.extend(self._converter.convert(chunk, stamp, INTERVAL))
        whole = len(self._pending) - len(self._pending) % BATCH_SIZE
        self._post(whole)

    def end_interval(self) -> None:
        self._post(len(self._pending))

    def _post(self, count: int) -> None:
        for start in range(0, count, BATCH_SIZE):
            batch = self._pending[start : min(start + BATCH_SIZE, count)]
            body = encode(batch)
            self.wire.add(body, len(batch), len(body))
        del self._pending[:count]


class OtlpPath:
    """The OTLP sink's work for a chunk: convert into requests, serialize and gzip each.

    ``how``: "c" as the sink runs (the C conversion and writer when built), "python" (the
    same wire bytes written by Python), "library" (Python conversion into requests built
    from opentelemetry-proto's messages: `tests.otlp.reference`, as before the writer)."""

    def __init__(self, percentiles: Sequence[float], how: str = "c") -> None:
        self.wire = Wire()
        self._requests: Requests | ReferenceRequests
        if how == "library":
            self._requests = ReferenceRequests(self._emit, resource={"service.name": "bench"})
        else:
            self._requests = Requests(
                self._emit, resource={"service.name": "bench"}, native=how == "c"
            )
        self._converter = OtlpConverter(self._requests, percentiles, native=how == "c")
        self._raw_seen = 0

    def series(self, chunk: list[Any], stamp: int) -> None:
        self._converter.series(chunk, stamp, INTERVAL)

    def end_interval(self) -> None:
        self._requests.seal()

    def _emit(self, body: bytes, points: int) -> None:
        raw = self._requests.raw_bytes - self._raw_seen
        self._raw_seen = self._requests.raw_bytes
        self.wire.add(body, points, raw)


async def path_flush(
    aggregator: Aggregator, path: AppOpticsPath | OtlpPath, policy: GcPolicy | None, size: int
) -> tuple[float, StallMeter, int]:
    """(seconds, stalls, series) of one interval through ``path``, chunk by chunk."""
    meter = StallMeter(asyncio.get_running_loop())
    meter.start()
    await asyncio.sleep(0.01)
    pause = policy.pause() if policy is not None else contextlib.nullcontext()
    started = time.perf_counter()
    with pause:
        snapshot = aggregator.swap()
        table, stamp, series = snapshot.series, int(time.time()) // INTERVAL * INTERVAL, 0
        while table:
            chunk = [table.popitem() for _ in range(min(size, len(table)))]
            series += len(chunk)
            path.series(chunk, stamp)
            del chunk
            _free_some(snapshot.feeds)  # as the flusher does: line shapes go a chunk at a time
            await asyncio.sleep(0)
        snapshot.feeds.clear()
        path.end_interval()
    elapsed = time.perf_counter() - started
    await asyncio.sleep(0.01)
    meter.stop()
    return elapsed, meter, series


def compare_sinks(
    args: argparse.Namespace, percentiles: list[float], policy: GcPolicy | None
) -> None:
    print()
    print(f"the two sinks on one interval, fed {args.chunk} series at a time as the flusher does")
    print(
        f"{'path':<13} {'round':>5} {'series':>8} {'points':>8} {'flush ms':>9} {'stall':>7} "
        f"{'no GC':>7} {'bodies':>7} {'B/pt raw':>9} {'B/pt wire':>10}  load avg"
    )
    for round_no in range(1, args.rounds + 1):
        otlp = OtlpPath(percentiles)
        runs: list[tuple[str, AppOpticsPath | OtlpPath]] = [
            ("appoptics", AppOpticsPath(percentiles)),
            ("otlp-cold", otlp),
            ("otlp-warm", otlp),
        ]
        for how in args.otlp_also:
            other = OtlpPath(percentiles, how)
            runs += [(f"{how}-cold", other), (f"{how}-warm", other)]
        for name, path in runs:
            aggregator, _ = fill(args.series, args.values)
            if policy is None:
                gc.collect()
            before = Wire()
            before.__dict__.update(path.wire.__dict__)
            flush = path_flush(aggregator, path, policy, args.chunk)
            elapsed, meter, series = uvloop.run(flush)
            wire = path.wire
            points = wire.points - before.points
            raw = (wire.raw_bytes - before.raw_bytes) / points
            sent = (wire.bytes - before.bytes) / points
            stall, _, no_gc = meter.longest()
            one, five, fifteen = os.getloadavg()
            print(
                f"{name:<13} {round_no:>5} {series:>8,} {points:>8,} {elapsed * 1e3:>9.0f} "
                f"{stall * 1e3:>7.1f} {no_gc * 1e3:>7.1f} {wire.bodies - before.bodies:>7} "
                f"{raw:>9.1f} {sent:>10.1f}  {one:.2f} {five:.2f} {fifteen:.2f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument("--values", type=int, default=10, help="per timer/histogram/set")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--percentiles", default="90", help="comma-separated, e.g. 90,99")
    parser.add_argument(
        "--chunk",
        type=int,
        default=CONVERT_CHUNK,
        help="series per chunk in the sink comparison (the flusher's CONVERT_CHUNK)",
    )
    parser.add_argument(
        "--only-sinks",
        action="store_true",
        help="skip the flusher rounds; only compare the AppOptics and OTLP sinks",
    )
    parser.add_argument(
        "--otlp-also",
        action="append",
        default=[],
        choices=["python", "library"],
        help="also run the OTLP path with Python's writer (python) or the library's messages"
        " (library: as before the writer); repeatable",
    )
    parser.add_argument(
        "--gc-policy",
        action="store_true",
        help="run the collector as the app does (statsd_ao.gcpolicy), not Python's default",
    )
    args = parser.parse_args()
    policy = GcPolicy() if args.gc_policy else None
    if policy is not None:
        policy.start()
    percentiles = [float(p) for p in args.percentiles.split(",") if p.strip()]

    one, five, fifteen = os.getloadavg()
    print(f"load average at start: {one:.2f} {five:.2f} {fifteen:.2f}")
    print(
        f"{args.series:,} series (40% c, 30% ms, 15% g, 10% h, 5% s), {args.values} values per "
        f"timer/histogram/set, percentiles {percentiles}, batch {BATCH_SIZE}"
    )
    print(
        "stall = longest gap between two event-loop turns (ms), the GC pause inside it, and\n"
        "the longest gap once GC pauses are taken out; gc = the longest collection (generation)"
    )
    print(
        f"{'sink':<7} {'round':>5} {'series':>8} {'measurements':>12} {'flush ms':>9} "
        f"{'stall':>7} {'in GC':>7} {'no GC':>7} {'gc (gen)':>10} {'turns':>6}  load avg"
    )
    for name in () if args.only_sinks else ("queued", "inline"):
        for round_no in range(1, args.rounds + 1):
            aggregator, _ = fill(args.series, args.values)
            if policy is None:
                gc.collect()
            sink: QueuedSink | InlineSink = QueuedSink() if name == "queued" else InlineSink()
            elapsed, meter, series, measurements = uvloop.run(
                one_flush(aggregator, sink, percentiles, policy)
            )
            stall, in_gc, no_gc = meter.longest()
            collection, generation = meter.longest_collection()
            one, five, fifteen = os.getloadavg()
            print(
                f"{name:<7} {round_no:>5} {series:>8,} {measurements:>12,} "
                f"{elapsed * 1e3:>9.0f} {stall * 1e3:>7.1f} {in_gc * 1e3:>7.1f} "
                f"{no_gc * 1e3:>7.1f} {collection * 1e3:>6.1f} ({generation}) "
                f"{len(meter.gaps):>6}  {one:.2f} {five:.2f} {fifteen:.2f}",
                flush=True,
            )
    compare_sinks(args, percentiles, policy)


if __name__ == "__main__":
    main()
