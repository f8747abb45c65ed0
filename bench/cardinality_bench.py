"""The cardinality guard: its cost on the hot path, and memory under a cardinality attack.

Usage: python -m bench.cardinality_bench [--attack-lines N] [--metrics N] [--total-limit N]

1. Hot path: the realistic workload through the core with and without the guard (the guard
   is consulted once per line shape per interval, so the difference should be noise).
2. Attack: N lines in which every line has a new ``user`` tag (spread over ``--metrics``
   metric names), flushed every N/6 lines like six 10 s intervals of a one-minute attack.
   Prints the traced Python memory peak (tracemalloc), the process's peak RSS growth, and
   its resident set after each interval: past ``--total-limit`` tag sets (all metrics) new
   ones are folded into ``overflow=true``, so the resident set must level off there.
"""

from __future__ import annotations

import argparse
import gc
import resource
import time
import tracemalloc

from bench.workload import make_lines, make_series, pack
from statsd_ao.core.aggregator import Aggregator
from statsd_ao.core.cardinality import DEFAULT_TOTAL_LIMIT, CardinalityGuard
from statsd_ao.core.measurements import Converter
from statsd_ao.core.sanitize import Naming


def hot_path(guarded: bool, datagrams: list[bytes], lines: int) -> float:
    """Lines/s over three intervals of the realistic workload (best of three)."""
    guard = CardinalityGuard() if guarded else None
    aggregator = Aggregator(Naming({"host": "bench"}), guard=guard)
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        for datagram in datagrams:
            aggregator.ingest(datagram)
        best = max(best, lines / (time.perf_counter() - started))
        aggregator.swap()
        aggregator.maintain()
    return best


def resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def attack(lines: int, metrics: int, total_limit: int, traced: bool) -> None:
    guard = CardinalityGuard(total_limit=total_limit)
    aggregator = Aggregator(Naming({"host": "bench"}), guard=guard)
    converter = Converter([90])
    per_interval = lines // 6
    gc.collect()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    posted = 0
    resident = []
    for index in range(0, lines, 20):
        batch = (f"api.m{(index + i) % metrics}.hits:1|c|#user:u{index + i}" for i in range(20))
        aggregator.ingest("\n".join(batch).encode())
        if (index + 20) % per_interval < 20:
            posted += len(converter.convert(aggregator.swap().series.items(), 0, 10))
            aggregator.maintain()
            resident.append(resident_mib())
    posted += len(converter.convert(aggregator.swap().series.items(), 0, 10))
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory() if traced else (0, 0)
    tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    folded = sum(aggregator.folded_samples.values())
    print(
        f"attack: {lines} lines, each a new tag set, over {metrics} metrics: "
        f"{lines / elapsed / 1e3:.0f} k lines/s ({elapsed / lines * 1e6:.1f} us/line, "
        f"tracemalloc {'on' if traced else 'off'}); {folded} samples folded; "
        f"{guard.tracked} tag sets tracked; "
        f"{posted} measurements posted"
    )
    print(
        f"attack memory: peak RSS growth {rss_growth / 1024:.0f} MiB"
        + (f", traced Python peak {peak / 2**20:.0f} MiB" if traced else "")
    )
    print(
        f"resident set after each interval (total limit {total_limit} tag sets): "
        + ", ".join(f"{mib:.0f}" for mib in resident)
        + " MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--attack-lines", type=int, default=1_000_000)
    parser.add_argument("--metrics", type=int, default=1)
    parser.add_argument("--total-limit", type=int, default=DEFAULT_TOTAL_LIMIT)
    parser.add_argument("--tracemalloc", action="store_true", help="also trace Python memory")
    args = parser.parse_args()
    lines = make_lines(make_series(10_000), 500_000)
    datagrams = pack(lines)
    plain, guarded = hot_path(False, datagrams, len(lines)), hot_path(True, datagrams, len(lines))
    print(
        f"hot path: {plain / 1e6:.2f} M lines/s without the guard, {guarded / 1e6:.2f} M with "
        f"it ({(1 / guarded - 1 / plain) * 1e9:+.0f} ns/line)"
    )
    attack(args.attack_lines, args.metrics, args.total_limit, args.tracemalloc)


if __name__ == "__main__":
    main()
