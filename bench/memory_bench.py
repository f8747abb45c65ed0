"""Memory per series: what the aggregator holds for counters, gauges, timers and sets.

Usage: python -m bench.memory_bench [--series N] [--timer-values 1,10,...] [--budget N]

Two measures for every row, each of a fresh `Aggregator` fed pre-built datagrams (the input
is built first and kept alive, so it is not counted):
- ``tracemalloc``: bytes Python allocated for the aggregator and still holds (exact, in this
  process);
- RSS: growth of the resident set of a fresh child process doing the same without
  tracemalloc (/proc/self/statm; includes allocator slack and page granularity).

1. ``--series`` counters (then gauges) with 0-5 DogStatsD tags each, one line each: bytes per
   series while the first interval is open (accumulator, series key, feed, and the
   line-shape cache entry), what is still held once `Aggregator.swap` has handed the
   snapshot over and it was dropped (the shape cache and, for gauges, the last value kept
   for deltas), and in the next interval fed the same lines: what a running proxy holds.
2. Timer series with N values each (unsampled, then every line ``@0.5``): bytes per series.
   Past `statsd_ao.core.accumulators.MAX_SUMMARY_VALUES` values a series keeps a fixed-size
   reservoir, so the figure stops growing: that is the bound per series per interval.
3. Set series with N distinct members: a set keeps every member for the interval.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.workload import make_series, pack
from statsd_ao.core.accumulators import MAX_SUMMARY_VALUES
from statsd_ao.core.aggregator import Aggregator
from statsd_ao.core.sanitize import Naming

PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class Row:
    """One measurement: ``series`` series of ``kind``, ``values`` lines each."""

    kind: str  # the StatsD type: c, g, ms, s
    series: int
    values: int
    rate: str | None  # None: the workload's own sample rates; "": none; "0.5": @0.5 on all


@dataclass(frozen=True, slots=True)
class Held:
    """tracemalloc bytes the aggregator holds at three moments, and where (``sites``: the
    source lines holding the most while the first interval was open)."""

    first: int  # the first interval open: every shape, key and accumulator new
    after: int  # after swap + drop of the snapshot: the shape cache (and gauges' last values)
    steady: int  # the next interval open with the same series: what a running proxy holds
    sites: list[str]


def rss() -> int:
    """Resident set size of this process, in bytes."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


def templates(row: Row) -> list[str]:
    """Distinct line templates of one kind (names and tags from the workload mix)."""
    out = []
    for series in make_series(row.series):
        head, *fields = series.template.split("|")
        kept = [f for f in fields[1:] if not f.startswith("@") or row.rate is None]
        if row.rate:
            kept.insert(0, f"@{row.rate}")
        out.append("|".join([head, row.kind, *kept]))
    return out


def build(row: Row) -> tuple[list[bytes], list[object]]:
    """(datagrams, everything made on the way): the caller keeps both alive, so the memory
    the input took is not freed and reused by the aggregator under measurement."""
    rng = random.Random(7)
    shapes = templates(row)
    texts: list[str] = []
    for index in range(row.values):
        for template in shapes:
            if row.kind == "s":
                value = f"m{index}"
            elif row.kind in ("c", "g"):
                value = str(rng.randint(1, 100))
            else:
                value = f"{rng.random() * 250:.3f}"
            texts.append(template.format(v=value))
    lines = [text.encode() for text in texts]
    return pack(lines), [shapes, texts, lines]


def traced(row: Row, where: int = 0) -> Held:
    """tracemalloc bytes held by the aggregator in its first interval, after the swap and in
    the next interval fed the same lines."""
    datagrams, keep = build(row)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    aggregator = Aggregator(Naming({"host": "bench"}))
    for datagram in datagrams:
        aggregator.ingest(datagram)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    sites = []
    if where:
        for stat in tracemalloc.take_snapshot().statistics("lineno")[:where]:
            frame = stat.traceback[0]
            name = Path(frame.filename).name
            sites.append(f"    {stat.size / row.series:>6.0f} B/series  {name}:{frame.lineno}")
    aggregator.swap()  # the snapshot is dropped at once, as after a flush
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] - base
    for datagram in datagrams:  # the next interval: the same series again
        aggregator.ingest(datagram)
    gc.collect()
    steady = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del keep
    return Held(held, after, steady, sites)


def rss_child(row: Row) -> int:
    """RSS growth of a fresh process ingesting the row, without tracemalloc (same working
    directory and environment, so the same ``statsd_ao`` is imported)."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.memory_bench", "--child", json.dumps(asdict(row))],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    growth: int = json.loads(result.stdout)["rss"]
    return growth


def child(spec: str) -> None:
    row = Row(**json.loads(spec))
    datagrams, keep = build(row)
    gc.collect()
    before = rss()
    aggregator = Aggregator(Naming({"host": "bench"}))
    for datagram in datagrams:
        aggregator.ingest(datagram)
    gc.collect()
    print(json.dumps({"rss": rss() - before, "series": len(aggregator.current)}))
    del keep


def per_series(count: int, where: int) -> None:
    print(f"\n{count:,} series of one kind, one line each, 0-5 tags: bytes per series")
    print(
        f"{'kind':<8} {'first interval':>14} {'after swap':>11} {'next interval':>14} "
        f"{'RSS (child)':>12}"
    )
    for label, row in (
        ("counter", Row("c", count, 1, None)),
        ("gauge", Row("g", count, 1, "")),
    ):
        held = traced(row, where)
        print(
            f"{label:<8} {held.first / count:>14.0f} {held.after / count:>11.0f} "
            f"{held.steady / count:>14.0f} {rss_child(row) / count:>12.0f}"
        )
        for site in held.sites:
            print(site)


def per_value(kind: str, label: str, counts: list[int], budget: int, rate: str = "") -> None:
    print(f"\n{label} series with N values each, one interval open: bytes")
    print(f"{'N':>8} {'series':>7} {'per series':>11} {'per value':>10} {'RSS/series':>11}")
    for values in counts:
        row = Row(kind, max(10, min(1000, budget // values)), values, rate)
        each = traced(row).first / row.series
        print(
            f"{values:>8,} {row.series:>7,} {each:>11,.0f} {each / values:>10.1f} "
            f"{rss_child(row) / row.series:>11,.0f}"
        )


def numbers(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument(
        "--timer-values",
        default=f"1,10,100,1000,{MAX_SUMMARY_VALUES},{MAX_SUMMARY_VALUES * 5}",
        help="values per timer series, comma-separated",
    )
    parser.add_argument("--set-members", default="1,10,100,1000", help="per set series")
    parser.add_argument("--budget", type=int, default=1_000_000, help="lines per table row")
    parser.add_argument(
        "--where", type=int, default=0, metavar="N", help="top N allocating lines per series kind"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    one, five, fifteen = os.getloadavg()
    print(f"load average at start: {one:.2f} {five:.2f} {fifteen:.2f}")
    per_series(args.series, args.where)
    timers = numbers(args.timer_values)
    per_value("ms", "timer", timers, args.budget)
    per_value("ms", "sampled timer (@0.5)", timers, args.budget, "0.5")
    print(
        f"(past {MAX_SUMMARY_VALUES:,} values a timer keeps a {MAX_SUMMARY_VALUES:,}-value "
        "reservoir and drops the per-value weights: per-series bytes stop growing)"
    )
    per_value("s", "set", numbers(args.set_members), args.budget)
    one, five, fifteen = os.getloadavg()
    print(f"\nload average at end: {one:.2f} {five:.2f} {fifteen:.2f}")


if __name__ == "__main__":
    main()
