"""Drain mode, several statsd-ao versions interleaved: which is faster, on a noisy VM.

Usage: python -m bench.drain_compare [--workload packed|single] [--cycles N]
                                     [--datagrams N] SOURCE [SOURCE ...]

SOURCE is 'worktree' or a git ref (run from a copy of its statsd_ao/, as bench.udp_bench's
--proxy does).  Every version is started at once, each pinned to CPU 1 and warmed up; then,
cycle after cycle, each in turn is stopped (SIGSTOP) while the load generator (CPU 0) fills
its socket with --datagrams datagrams, continued, and timed until its socket is empty.  The
order rotates every cycle and reverses every other one, so a slow spell of the VM falls on
every version alike.  Prints each version's median and overall lines/s.

Why interleave: this VM's speed drifts by 10-30% within minutes, more than most changes to
the C loop are worth, so two versions measured one after the other (as udp_bench's ladders
are) cannot tell such a change from the drift.  The default 2,500 packed datagrams (61,000
lines) fit an 8 MiB receive buffer; one line per datagram the default is 8,000.
"""

from __future__ import annotations

import argparse
import os
import statistics

from bench.udp_bench import (
    FLUSH_INTERVAL,
    LOADGEN_CPU,
    WARMUP,
    StatsdAo,
    build_loadgen,
    drain_once,
    fill,
    run_loadgen,
    wait_drained,
    wait_idle,
    workload_files,
)

DATAGRAMS = {"packed": 2_500, "single": 8_000}


def order(count: int, cycle: int) -> list[int]:
    """Each cycle starts one further on; every other cycle runs backwards."""
    rotated = [(cycle + i) % count for i in range(count)]
    return rotated[::-1] if cycle % 2 else rotated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=("packed", "single"), default="packed")
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--datagrams", type=int, help="per cycle (default: packed 2,500)")
    parser.add_argument("sources", nargs="+", metavar="SOURCE")
    args = parser.parse_args()
    datagrams = args.datagrams or DATAGRAMS[args.workload]
    build_loadgen()
    path, per_datagram = workload_files()[args.workload]
    os.sched_setaffinity(0, {int(LOADGEN_CPU)})
    receivers = [StatsdAo(FLUSH_INTERVAL, source) for source in args.sources]
    times: list[list[float]] = [[] for _ in receivers]
    try:
        for receiver in receivers:
            receiver.start()
            count, rate = WARMUP[args.workload]
            run_loadgen(path, receiver.port, rate, count, 0.0)
            wait_drained(receiver.port)
            wait_idle(receiver.pid)
        for cycle in range(args.cycles):
            for index in order(len(receivers), cycle):
                fill(receivers[index], path, datagrams)
                times[index].append(drain_once(receivers[index]))
    finally:
        for receiver in receivers:
            receiver.kill()
    lines = datagrams * per_datagram
    print(f"drain, {args.workload}: {args.cycles} cycles of {datagrams:,} datagrams each")
    for receiver, spent in zip(receivers, times, strict=True):
        median = lines / statistics.median(spent) / 1e6
        overall = lines * len(spent) / sum(spent) / 1e6
        print(f"{receiver.name:>20}: {median:.3f} M lines/s median, {overall:.3f} overall")


if __name__ == "__main__":
    main()
