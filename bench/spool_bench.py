"""The durable outbox (`statsd_ao.io.spool`): write rate, and what it costs a flush.

Usage: python -m bench.spool_bench [--dir D] [--passes 1,4,16,64] [--seconds S]
       [--series N] [--rounds N] [--skip-write] [--skip-flush]

Two parts, both on a uvloop loop with the app's GC policy (`statsd_ao.gcpolicy`):

1. Write rate.  Realistic post bodies (``--batch`` measurements each, converted from the
   standard mix by the real `Converter` and encoded by `statsd_ao.core.batching.encode`) are
   added to a `Spool` in passes of N posts each; at the end of each pass the spool seals the
   pass into a segment (a segment is sealed early at 4 MiB) and its worker thread writes it:
   temp file, fsync, rename, fsync of the directory.  Posts whose segment is on disk are
   settled at once, as they would be with the API up, so the directory stays small (the
   worker deletes each settled segment).  The loop adds no more than ``--backlog`` MB
   ahead of the worker, so the rate is the disk's and not the loop's.  Figures from the
   spool's own counters (``bytes_written``, ``write_seconds``, ``segments_written``) and
   wall time; per-segment write time (fsync included) from the change of ``write_seconds``
   across each segment's write.
2. One flush with the spool off and on.  ``--series`` series of the standard mix (as in
   `bench.flush_bench`) are ingested into the real `Aggregator`, then one flush runs through
   the real `Flusher` into an `HttpSink` whose API is down (``api_url`` is a closed port on
   127.0.0.1, so every connection is refused and every post stays queued, and spooled).
   Printed: the flush's wall time, and with the spool the time from the flush's start until
   the whole flush is durable on disk (``await spool.written()``).
3. Loop stall, meanwhile: a ticker coroutine sleeps 1 ms at a time from before the flush
   until its data is on disk; the longest gap between two of its wake-ups is how long the
   loop was held (the flush's own chunks of work, and any wait for the disk or for the
   writer thread's hold on the GIL).

Run it pinned to one core, as the proxy's loop and its writer thread would share one:
``PYTHONPATH=. taskset -c 1 .venv/bin/python -m bench.spool_bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import socket
import statistics
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import uvloop

from bench.flush_bench import fill
from statsd_ao.core.batching import DEFAULT_BATCH, MAX_BATCH, chunked, encode
from statsd_ao.core.measurements import Converter, Measurement
from statsd_ao.flusher import Flusher
from statsd_ao.gcpolicy import GcPolicy
from statsd_ao.io.appoptics import AppOpticsSink
from statsd_ao.io.sink import HttpSink
from statsd_ao.io.spool import Spool, Ticket
from statsd_ao.io.spoolfile import Record

INTERVAL = 10
CONCURRENCY = 4  # statsd_ao.config.DEFAULT_CONCURRENCY
MB = 1e6
# Enough room that part 1 never drops a segment to stay in bound (it settles as it goes).
SPOOL_BYTES = 4 * 1024**3


class TimedSpool(Spool):
    """A `Spool` that also keeps each segment write's seconds (its own ``write_seconds``
    counter before and after the write, on the writer thread)."""

    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        super().__init__(directory, max_bytes)
        self.durations: list[float] = []

    def _write(self, number: int, records: list[Record]) -> bool:
        before = self.write_seconds
        done = super()._write(number, records)
        self.durations.append(self.write_seconds - before)
        return done


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- part 1: write rate ----------------------------------------------------------------


def post_bodies(series: int, values: int, batch: int, percentiles: list[float]) -> list[bytes]:
    """Encoded posts of ``batch`` measurements, as the flusher makes them (whole ones)."""
    aggregator, _ = fill(series, values, seed=7)
    measurements: list[Measurement] = Converter(percentiles).convert(
        aggregator.swap().series.items(), int(time.time()) // INTERVAL * INTERVAL, INTERVAL
    )
    whole = len(measurements) - len(measurements) % batch
    return [encode(chunk) for chunk in chunked(measurements[:whole], batch)]


@dataclass(frozen=True, slots=True)
class WriteRate:
    per_pass: int
    passes: int
    posts: int
    wall: float
    spool: TimedSpool


async def write_rate(
    directory: Path, bodies: list[bytes], *, batch: int, per_pass: int, seconds: float, backlog: int
) -> WriteRate:
    spool = TimedSpool(directory, SPOOL_BYTES)
    await spool.open()
    tickets: deque[Ticket] = deque()
    first: int | None = None
    added = passes = posts = 0
    expires = time.time() + 3600.0

    def settle_written() -> None:
        # One writer thread writes segments in order: segment first + k - 1 is on disk once
        # k segments are written.
        assert first is not None
        while tickets and tickets[0][0] < first + spool.segments_written:
            spool.settle(tickets.popleft())

    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(per_pass):
            body = bodies[posts % len(bodies)]
            ticket = spool.add(body, batch, expires)
            first = ticket[0] if first is None else first
            tickets.append(ticket)
            added += len(body)
            posts += 1
        passes += 1
        await asyncio.sleep(0)  # the end of the pass: the spool seals it
        settle_written()
        while added - spool.bytes_written > backlog:
            await asyncio.sleep(0.0005)
            settle_written()
    await asyncio.sleep(0)
    await spool.written()
    wall = time.perf_counter() - started
    settle_written()
    await spool.close()
    if spool.write_errors:
        raise RuntimeError(f"{spool.write_errors} spool write errors")
    return WriteRate(per_pass, passes, posts, wall, spool)


# --- parts 2 and 3: a flush into a sink whose API is down --------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed): connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Ticker:
    """Sleeps 1 ms at a time; keeps every gap between two wake-ups (seconds)."""

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self._running = True

    async def run(self) -> None:
        last = time.perf_counter()
        while self._running:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.gaps.append(now - last)
            last = now

    def stop(self) -> None:
        self._running = False


@dataclass(frozen=True, slots=True)
class FlushResult:
    spooled: bool
    series: int
    measurements: int
    flush: float  # seconds from the flush's start until it returned
    durable: float  # until the spool had every segment on disk (0 without a spool)
    gaps: list[float]  # between the ticker's wake-ups, from the flush's start until durable
    flush_ticks: int  # how many of them ended before the flush returned
    pending: int
    spool: TimedSpool | None


async def one_flush(
    series: int, values: int, batch: int, percentiles: list[float], spool_dir: Path | None
) -> FlushResult:
    aggregator, _ = fill(series, values)
    spool = TimedSpool(spool_dir, SPOOL_BYTES) if spool_dir is not None else None
    sink = HttpSink(
        f"http://127.0.0.1:{closed_port()}",
        "bench-token",
        concurrency=CONCURRENCY,
        timeout=10.0,
        spool=spool,
    )
    await sink.start()
    appoptics = AppOpticsSink(
        Converter(percentiles), sink, batch_size=batch, annotation_stream="bench", host="h"
    )
    flusher = Flusher(aggregator, [appoptics], interval=INTERVAL, pause=POLICY.pause)
    ticker = Ticker()
    ticking = asyncio.create_task(ticker.run())
    await asyncio.sleep(0.05)  # idle ticks before the flush
    ticker.gaps.clear()
    started = time.perf_counter()
    report = await flusher.flush(int(time.time()) // INTERVAL * INTERVAL)
    flushed = time.perf_counter() - started
    flush_ticks = len(ticker.gaps)
    durable = 0.0
    if spool is not None:
        # The flush's last posts are sealed at the end of this pass: let it end, then wait.
        await asyncio.sleep(0)
        await spool.written()
        durable = time.perf_counter() - started
        if spool.segments_written != spool.segments or spool.write_errors:
            raise RuntimeError(
                f"{spool.segments_written} of {spool.segments} segments written, "
                f"{spool.write_errors} errors"
            )
    gaps = list(ticker.gaps)
    ticker.stop()
    await ticking
    pending = sink.pending
    await sink.close()
    if pending != report.measurements:
        raise RuntimeError(f"{pending} of {report.measurements} measurements still queued")
    return FlushResult(
        spool is not None,
        report.series,
        report.measurements,
        flushed,
        durable,
        gaps,
        flush_ticks,
        pending,
        spool,
    )


POLICY = GcPolicy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dir",
        default=tempfile.gettempdir(),
        help="where the bench makes its spool directories (removed after); default: the "
        "temporary directory",
    )
    parser.add_argument("--passes", default="1,4,16,64", help="posts per loop pass, part 1")
    parser.add_argument("--seconds", type=float, default=3.0, help="per pass size, part 1")
    parser.add_argument("--batch", type=int, default=MAX_BATCH, help="measurements per post, 1")
    parser.add_argument(
        "--backlog", type=int, default=32, help="MB the loop may add ahead of the worker, 1"
    )
    parser.add_argument("--series", type=int, default=100_000, help="part 2")
    parser.add_argument("--values", type=int, default=10, help="per timer/histogram/set")
    parser.add_argument(
        "--flush-batch", type=int, default=DEFAULT_BATCH, help="the flusher's batch, part 2"
    )
    parser.add_argument("--rounds", type=int, default=2, help="flushes with the spool off and on")
    parser.add_argument("--percentiles", default="90", help="comma-separated, e.g. 90,99")
    parser.add_argument("--skip-write", action="store_true", help="skip part 1")
    parser.add_argument("--skip-flush", action="store_true", help="skip parts 2 and 3")
    args = parser.parse_args()
    percentiles = [float(p) for p in args.percentiles.split(",") if p.strip()]
    logging.getLogger("statsd_ao").setLevel(logging.ERROR)  # every post fails, by design
    base = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=args.dir))
    try:
        one, five, fifteen = os.getloadavg()
        print(f"spool directories under {base}; load average {one:.2f} {five:.2f} {fifteen:.2f}")
        POLICY.start()
        if not args.skip_write:
            part_one(args, percentiles, base)
        if not args.skip_flush:
            part_two(args, percentiles, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def part_one(args: argparse.Namespace, percentiles: list[float], base: Path) -> None:
    bodies = post_bodies(20_000, args.values, args.batch, percentiles)
    sizes = [len(b) for b in bodies]
    print(
        f"\n1. write rate: posts of {args.batch} measurements, {min(sizes) / 1e3:.0f}-"
        f"{max(sizes) / 1e3:.0f} KB (mean {statistics.mean(sizes) / 1e3:.0f} KB), "
        f"{args.seconds:g} s per row; write = one segment: encode, write, fsync, rename, "
        "fsync dir"
    )
    print(
        f"{'posts/pass':>10} {'segments':>8} {'MB':>7} {'wall s':>6} {'MB/s':>6} "
        f"{'posts/s':>7} {'seg/s':>6} {'MB/seg':>6} {'write p50':>9} {'p99':>6} {'max':>6} "
        f"{'busy':>5}"
    )
    for per_pass in [int(n) for n in args.passes.split(",") if n.strip()]:
        directory = base / f"write-{per_pass}"
        result = uvloop.run(
            write_rate(
                directory,
                bodies,
                batch=args.batch,
                per_pass=per_pass,
                seconds=args.seconds,
                backlog=int(args.backlog * MB),
            )
        )
        spool = result.spool
        written = spool.bytes_written / MB
        segments = spool.segments_written
        print(
            f"{per_pass:>10} {segments:>8} {written:>7.0f} {result.wall:>6.2f} "
            f"{written / result.wall:>6.1f} {result.posts / result.wall:>7.0f} "
            f"{segments / result.wall:>6.0f} {written / segments:>6.2f} "
            f"{percentile(spool.durations, 0.5) * 1e3:>7.1f}ms "
            f"{percentile(spool.durations, 0.99) * 1e3:>6.1f} "
            f"{max(spool.durations) * 1e3:>6.1f} "
            f"{spool.write_seconds / result.wall:>5.0%}",
            flush=True,
        )
        shutil.rmtree(directory, ignore_errors=True)


def part_two(args: argparse.Namespace, percentiles: list[float], base: Path) -> None:
    print(
        f"\n2./3. one flush of {args.series:,} series (batch {args.flush_batch}) into an "
        "HttpSink whose API refuses connections (all queued); tick = gaps between wake-ups "
        "of a 1 ms sleeper, from the flush's start until durable (after = once the flush "
        "returned, while the spool writes)"
    )
    print(
        f"{'spool':>5} {'round':>5} {'measurements':>12} {'posts MB':>8} {'segments':>8} "
        f"{'flush ms':>8} {'durable ms':>10} {'write ms':>8} {'tick max':>8} {'p50':>5} "
        f"{'after':>5} {'ticks':>5}"
    )
    for round_no in range(1, args.rounds + 1):
        for spooled in (False, True):
            spool_dir = base / f"flush-{round_no}" if spooled else None
            result = uvloop.run(
                one_flush(args.series, args.values, args.flush_batch, percentiles, spool_dir)
            )
            spool = result.spool
            megabytes = f"{spool.bytes_written / MB:.1f}" if spool is not None else "-"
            segments = f"{spool.segments_written}" if spool is not None else "-"
            durable = f"{result.durable * 1e3:.0f}" if spool is not None else "-"
            writing = f"{spool.write_seconds * 1e3:.0f}" if spool is not None else "-"
            after = result.gaps[result.flush_ticks :]
            after_max = f"{max(after) * 1e3:.1f}" if after else "-"
            print(
                f"{'on' if spooled else 'off':>5} {round_no:>5} {result.measurements:>12,} "
                f"{megabytes:>8} {segments:>8} {result.flush * 1e3:>8.0f} {durable:>10} "
                f"{writing:>8} {max(result.gaps) * 1e3:>6.1f}ms "
                f"{percentile(result.gaps, 0.5) * 1e3:>5.1f} {after_max:>5} "
                f"{len(result.gaps):>5}",
                flush=True,
            )
            if spool_dir is not None:
                shutil.rmtree(spool_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
