"""Lines per second through the sans-IO core (parse + aggregate), no sockets.

Usage: python bench/core_bench.py [--series N] [--lines N] [--rounds N]

Each round is one flush interval: ingest every datagram, then swap.  The first round pays
for parsing every shape; later rounds show the steady state (shapes cached across
intervals, feeds rebuilt once per series per interval).  Also prints the cost of converting
and encoding one interval.
"""

from __future__ import annotations

import argparse
import time

from bench.workload import make_lines, make_series, pack
from statsd_ao.core.aggregator import Aggregator
from statsd_ao.core.batching import chunked, encode
from statsd_ao.core.measurements import Converter
from statsd_ao.core.sanitize import Naming
from statsd_ao.gcpolicy import GcPolicy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--gc-policy", action="store_true", help="run the collector as the app does"
    )
    args = parser.parse_args()
    if args.gc_policy:
        GcPolicy().start()

    lines = make_lines(make_series(args.series), args.lines)
    datagrams = pack(lines)
    print(
        f"workload: {args.series} series, {len(lines)} lines, {len(datagrams)} datagrams "
        f"({len(lines) / len(datagrams):.1f} lines each)"
    )
    agg = Aggregator(Naming({"host": "bench"}))
    for round_no in range(1, args.rounds + 1):
        started = time.perf_counter()
        for datagram in datagrams:
            agg.ingest(datagram)
        elapsed = time.perf_counter() - started
        snapshot = agg.swap()
        rate = len(lines) / elapsed
        print(
            f"round {round_no}: {rate / 1e6:.2f} M lines/s ({1e6 / rate:.3f} us/line), "
            f"{len(snapshot.series)} series, rejected {sum(snapshot.rejected.values())}"
        )
    started = time.perf_counter()
    measurements = Converter([90, 99]).convert(snapshot.series.items(), 0, 10)
    converted = time.perf_counter()
    bodies = [encode(post) for post in chunked(measurements, 500)]
    encoded = time.perf_counter()
    print(
        f"flush: {len(measurements)} measurements converted in "
        f"{(converted - started) * 1e3:.0f} ms, encoded into {len(bodies)} posts in "
        f"{(encoded - converted) * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    main()
