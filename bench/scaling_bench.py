"""--workers scaling, CPU only: the same datagrams replayed in 1 and in N processes.

Usage: python -m bench.scaling_bench [--workers 2] [--lines 1000000]

On a 2-vCPU machine a real UDP run cannot show scaling (the load generator needs a core),
so each process replays the workload's datagrams straight into its own Aggregator, as a
worker would after recv(), and the aggregate lines/s is compared with one process.  The
coordinator's share is measured too: pickling each worker's interval (10,000 series),
unpickling it and merging the parts, which a real flush pays once per interval.
"""

from __future__ import annotations

import argparse
import multiprocessing
import pickle
import time

from bench.workload import make_lines, make_series, pack
from statsd_ao.aggregator import Aggregator
from statsd_ao.gcpolicy import GcPolicy
from statsd_ao.merge import Merger, from_wire, to_wire
from statsd_ao.sanitize import Naming


def replay(datagrams: list[bytes], rounds: int) -> float:
    """Seconds for one process to ingest ``datagrams`` ``rounds`` times (after a warm-up)."""
    GcPolicy().start()
    aggregator = Aggregator(Naming({"host": "bench"}))
    for datagram in datagrams:  # warm-up: every line shape known, as in a running proxy
        aggregator.ingest(datagram)
    started = time.perf_counter()
    for _ in range(rounds):
        for datagram in datagrams:
            aggregator.ingest(datagram)
    return time.perf_counter() - started


def parallel(datagrams: list[bytes], processes: int, rounds: int) -> float:
    """Wall-clock seconds for ``processes`` replays running at once."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        started = time.perf_counter()
        pool.starmap(replay, [(datagrams, rounds)] * processes)
        return time.perf_counter() - started


def merge_cost(datagrams: list[bytes], parts: int) -> tuple[float, int]:
    """Seconds to pickle, unpickle and merge ``parts`` intervals of the workload."""
    snapshots = []
    for _ in range(parts):
        aggregator = Aggregator(Naming({"host": "bench"}))
        for datagram in datagrams:
            aggregator.ingest(datagram)
        snapshots.append(aggregator.swap())
    started = time.perf_counter()
    wire = [pickle.dumps(to_wire(s), pickle.HIGHEST_PROTOCOL) for s in snapshots]
    merged = Merger().merge(from_wire(pickle.loads(w)) for w in wire)
    return time.perf_counter() - started, len(merged.series)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    lines = make_lines(make_series(10_000), args.lines)
    datagrams = pack(lines)
    total = len(lines) * args.rounds
    one = parallel(datagrams, 1, args.rounds)
    many = parallel(datagrams, args.workers, args.rounds)
    rate_one, rate_many = total / one, total * args.workers / many
    print(f"1 process: {rate_one / 1e6:.2f} M lines/s")
    print(
        f"{args.workers} processes: {rate_many / 1e6:.2f} M lines/s in all "
        f"({rate_many / rate_one:.2f}x)"
    )
    seconds, series = merge_cost(datagrams, args.workers)
    print(
        f"coordinator per interval: pickle + unpickle + merge of {args.workers} parts "
        f"({series:,} series) {seconds * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    main()
