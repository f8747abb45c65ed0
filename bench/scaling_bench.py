"""--workers scaling, CPU only: the same datagrams replayed in 1 and in N processes.

Usage: python -m bench.scaling_bench [--workers 2] [--lines 500000] [--rounds 8]

On a 2-vCPU machine a real UDP run cannot show scaling (the load generator needs a core),
so each process replays the workload's datagrams straight into its own Aggregator, as a
worker would after recv(), and the aggregate lines/s is compared with one process.  Where
the time goes, printed for every run:
- per process: its own replay time and CPU time (process_time), timed inside the process
  after a warm-up and a barrier, so spawning, importing, unpickling the workload and the
  warm-up's slow path (every line shape parsed once) are not counted: with the C loop those
  fixed costs are as long as the replay itself, which is what made the old wall-clock figure
  read 1.3x;
- the coordinator's share per interval: pickling each worker's interval (10,000 series),
  unpickling and merging the parts, which a real flush pays once per interval;
- how the kernel spreads datagrams over N SO_REUSEPORT sockets by sender (source address
  and port): one sender always lands on one worker, so --workers helps only with many.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pickle
import socket
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path

from bench.workload import make_lines, make_series, pack
from statsd_ao.core.aggregator import Aggregator
from statsd_ao.core.merge import Merger, from_wire, to_wire
from statsd_ao.core.sanitize import Naming
from statsd_ao.gcpolicy import GcPolicy

_barrier: Barrier | None = None


def sched_getcpu() -> int:
    """The CPU this process runs on now (field 39 of /proc/self/stat)."""
    stat = Path("/proc/self/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[36])


def _init(barrier: Barrier) -> None:
    global _barrier  # noqa: PLW0603 (a pool initializer's only way to hand it over)
    _barrier = barrier


def replay(datagrams: list[bytes], rounds: int) -> tuple[float, float, int]:
    """(seconds, CPU seconds, cpu number) for one process to ingest ``datagrams``
    ``rounds`` times, after a warm-up and once every process is ready."""
    GcPolicy().start()
    aggregator = Aggregator(Naming({"host": "bench"}))
    for datagram in datagrams:  # warm-up: every line shape known, as in a running proxy
        aggregator.ingest(datagram)
    assert _barrier is not None
    _barrier.wait()
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        for datagram in datagrams:
            aggregator.ingest(datagram)
    return time.perf_counter() - started, time.process_time() - cpu, sched_getcpu()


def parallel(datagrams: list[bytes], processes: int, rounds: int) -> list[tuple[float, float, int]]:
    """Each process's (seconds, CPU seconds, cpu), all replaying at once."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    with context.Pool(processes, initializer=_init, initargs=(barrier,)) as pool:
        return pool.starmap(replay, [(datagrams, rounds)] * processes)


def merge_cost(datagrams: list[bytes], parts: int) -> tuple[float, float, int]:
    """(seconds to pickle + unpickle, seconds to merge, series) for ``parts`` intervals."""
    snapshots = []
    for _ in range(parts):
        aggregator = Aggregator(Naming({"host": "bench"}))
        for datagram in datagrams:
            aggregator.ingest(datagram)
        snapshots.append(aggregator.swap())
    started = time.perf_counter()
    wires = [pickle.dumps(to_wire(s), pickle.HIGHEST_PROTOCOL) for s in snapshots]
    loaded = [from_wire(pickle.loads(w)) for w in wires]
    pickled = time.perf_counter()
    merged = Merger().merge(loaded)
    return pickled - started, time.perf_counter() - pickled, len(merged.series)


def spread(workers: int, senders: int, per_sender: int = 200) -> list[int]:
    """Datagrams each of ``workers`` SO_REUSEPORT sockets got from ``senders`` senders."""
    receivers: list[socket.socket] = []
    for _ in range(workers):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        sock.bind(("127.0.0.1", receivers[0].getsockname()[1] if receivers else 0))
        sock.setblocking(False)
        receivers.append(sock)
    port = receivers[0].getsockname()[1]
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(senders)]
    for client in clients:
        for _ in range(per_sender):
            client.sendto(b"a:1|c", ("127.0.0.1", port))
    counts = []
    for sock in receivers:
        count = 0
        while True:
            try:
                sock.recv(64)
            except BlockingIOError:
                break
            count += 1
        counts.append(count)
    for sock in receivers + clients:
        sock.close()
    return counts


def report(label: str, results: list[tuple[float, float, int]], lines: int) -> float:
    """Print one run's processes; the aggregate lines/s (all lines over the slowest)."""
    for index, (seconds, cpu, where) in enumerate(results):
        print(
            f"  {label} process {index} on CPU {where}: {lines / seconds / 1e6:.2f} M lines/s, "
            f"CPU {cpu:.2f} s of {seconds:.2f} s ({cpu / seconds:.0%} of a core)"
        )
    return lines * len(results) / max(seconds for seconds, _, _ in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    lines = make_lines(make_series(10_000), args.lines)
    datagrams = pack(lines)
    total = len(lines) * args.rounds
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rate_one = report("1:", parallel(datagrams, 1, args.rounds), total)
    rate_many = report(f"{args.workers}:", parallel(datagrams, args.workers, args.rounds), total)
    print(f"1 process: {rate_one / 1e6:.2f} M lines/s")
    print(
        f"{args.workers} processes: {rate_many / 1e6:.2f} M lines/s in all "
        f"({rate_many / rate_one:.2f}x)"
    )
    pickling, merging, series = merge_cost(datagrams, args.workers)
    print(
        f"coordinator per interval, {args.workers} parts ({series:,} series): "
        f"pickle + unpickle {pickling * 1e3:.0f} ms, merge {merging * 1e3:.0f} ms"
    )
    for senders in (1, 2, 4, 16, 64):
        counts = spread(args.workers, senders)
        print(f"kernel spread over {args.workers} sockets, {senders:>2} senders: {counts}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
