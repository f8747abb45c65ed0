"""The fleet's global tier on one core, in this process (no HTTP): series parts per second.

Usage: python -m bench.fleet_bench [--locals 100] [--series 10000] [--part 5000]

A part of ``--part`` series (a local's typical mix: 70% counters, 20% timers of 10 values,
10% gauges; three tags each) is encoded once per local, as `ForwardSink` does; the global
then does what it does per part: `fleet_wire.decode`, `FleetParts.take_in`, and, at the
flush, `Merger.fold_into` through the cardinality guard.  Printed: bytes per series on the
wire (gzip'ed), the local's encode cost, and the global's series parts per second for
``--locals`` x ``--series`` series (the issue's goal: 100 x 10,000 per 10 s = 100,000/s).
The machine may be shared: the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import time

from statsd_ao.core.accumulators import Accumulator, Counter, Gauge, Summary
from statsd_ao.core.aggregator import SeriesKey, Snapshot
from statsd_ao.core.cardinality import CardinalityGuard
from statsd_ao.core.fleet_parts import FleetParts
from statsd_ao.core.fleet_wire import Part, decode, encode
from statsd_ao.core.merge import Merger
from statsd_ao.core.protocol import Kind


def series(count: int, local: int) -> dict[SeriesKey, Accumulator]:
    out: dict[SeriesKey, Accumulator] = {}
    for index in range(count):
        name = f"app.metric.{index % 500}"
        tags = (("host", f"h{local}"), ("route", f"r{index // 500}"), ("env", "prod"))
        kind = index % 10
        acc: Accumulator
        if kind < 7:
            acc = Counter()
            acc.total = float(index)
            out[(Kind.COUNTER, name, tags)] = acc
        elif kind < 9:
            acc = Summary()
            acc.values = [float(v * index % 97) for v in range(10)]
            out[(Kind.SUMMARY, name, tags)] = acc
        else:
            acc = Gauge(None)
            acc.value = float(index)
            out[(Kind.GAUGE, name, tags)] = acc
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--locals", type=int, default=100)
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--part", type=int, default=5_000)
    args = parser.parse_args()
    per_local = args.series // args.part
    bodies: list[bytes] = []
    encode_seconds = 0.0
    for local in range(args.locals):
        table = series(args.series, local)
        items = list(table.items())
        for n in range(per_local):
            share = dict(items[n * args.part : (n + 1) * args.part])
            start = time.process_time()
            bodies.append(encode(Part(f"l{local}", n, 1000, 10, 1010.0, share)))
            encode_seconds += time.process_time() - start
    total = args.locals * per_local * args.part
    wire = sum(len(b) for b in bodies)
    print(f"wire: {wire / total:.1f} bytes per series (gzip'ed), {len(bodies)} parts")
    print(f"local encode: {total / encode_seconds:,.0f} series/s on one core")
    guard = CardinalityGuard(1_000_000, 10_000_000, window=3600)
    keeper = FleetParts(0.0, max_series=10 * total, clock=lambda: 2000.0)
    merger = Merger(guard)
    start = time.process_time()
    for body in bodies:
        keeper.take_in(decode(body))
    taken = time.process_time() - start
    interval = Snapshot()
    for part in keeper.ready():
        merger.fold_into(interval, part)
    merged = time.process_time() - start
    print(f"global decode + take in: {total / taken:,.0f} series parts/s")
    print(f"global decode + take in + merge: {total / merged:,.0f} series parts/s "
          f"(goal 100,000/s); {len(interval.past[1000]):,} series merged")  # fmt: skip
    print(f"load average: {os.getloadavg()[0]:.2f} (the machine may be shared)")


if __name__ == "__main__":
    main()
