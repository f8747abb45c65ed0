"""The AppOptics API intake: measurements per second on one core, and UDP beside a busy intake.

Usage: python -m bench.intake_bench [--seconds 5] [--concurrency 8]

Three parts, each printing its figures:

1. ``core``: no HTTP, one core, in this process: a body of 300 measurements (the Python
   client's chunk: 200 plain values and 100 summaries over 100 series, three tags each) goes
   through ``envelope`` (orjson), ``judge`` and ``ApiIntake.add``: measurements per second,
   and the longest single step the server runs between two yields (the JSON parse of the
   largest body allowed, one slice of `SLICE` judged, one slice taken in), which is what
   the UDP reader may wait per step.
2. ``http``: a receiver process (pinned to CPU 1) serves the intake; a flood process (CPU 0)
   posts that body over ``--concurrency`` keep-alive connections for ``--seconds``:
   measurements accepted per second and the receiver's CPU use.
3. ``udp``: the receiver also reads UDP into an aggregator, as the proxy does; the load
   generator of bench/udp_bench.py (CPU 0) sends the packed workload as fast as it can for
   ``--seconds``, once alone and once beside the flood: StatsD lines processed per second
   in each run, the intake's measurements per second, and the receiver's longest event-loop
   stall (a 1 ms probe's worst lateness).

Both clients share CPU 0, so beside the flood the load generator sends less: compare
processed/s with sent/s, and the stall.  The machine is shared: the load average is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bench.udp_bench import (
    LOADGEN_CPU,
    RECEIVER_CPU,
    build_loadgen,
    cpu_seconds,
    free_port,
    load_average,
    parse_loadgen,
    pinned,
    run_loadgen,
    wait_drained,
    workload_files,
)
from statsd_ao.core import api_rules
from statsd_ao.core.aggregator import Aggregator
from statsd_ao.core.api_intake import ApiIntake
from statsd_ao.core.api_rules import Refusal
from statsd_ao.core.sanitize import Naming
from statsd_ao.gcpolicy import GcPolicy
from statsd_ao.io.address import Address
from statsd_ao.io.api_server import DEFAULT_MAX_BODY, SLICE, AppOpticsIntake

TOKEN = "bench-token"
INTERVAL = 10
RELEASE_CHUNK = 50


def body(count: int = 300, seed: int = 7) -> bytes:
    """The Python client's chunk: plain values and summaries over 100 tagged series."""
    rng = random.Random(seed)
    ms: list[dict[str, Any]] = []
    for i in range(count):
        m: dict[str, Any] = {
            "name": f"app.requests.latency.{i % 100}",
            "tags": {"host": f"web{i % 10}", "region": "us-east-1", "route": f"/r/{i % 7}"},
        }
        if i % 3 == 2:
            values = [rng.uniform(1, 500) for _ in range(5)]
            m.update(count=5, sum=sum(values), min=min(values), max=max(values))
        else:
            m["value"] = rng.uniform(1, 500)
        ms.append(m)
    return orjson.dumps({"measurements": ms})


def core(rounds: int) -> None:
    post = body()
    intake = ApiIntake(Naming({"host": "bench"}), interval=INTERVAL)
    started = time.perf_counter()
    taken = 0
    for _ in range(rounds):
        env = api_rules.envelope(post)
        for i in range(len(env.measurements)):
            sample = api_rules.judge(env, i)
            if not isinstance(sample, Refusal) and intake.add(sample) is None:
                taken += 1
    seconds = time.perf_counter() - started
    print(f"core: {taken / seconds:,.0f} measurements/s ({taken:,} in {seconds:.2f} s)")
    # The longest steps between two yields: the parse of a full batch, and one slice.
    full = body(1000)
    assert len(full) <= DEFAULT_MAX_BODY
    parse = min(_timed(lambda: api_rules.envelope(full, 1000)) for _ in range(20))
    env = api_rules.envelope(full, 1000)
    judge = min(_timed(lambda: [api_rules.judge(env, i) for i in range(SLICE)]) for _ in range(50))
    samples = [api_rules.judge(env, i) for i in range(SLICE)]
    add = min(
        _timed(lambda: [intake.add(s) for s in samples if not isinstance(s, Refusal)])
        for _ in range(50)
    )
    print(
        f"core: one step between yields: parse a {len(full):,}-byte body of 1,000 "
        f"{parse * 1e3:.2f} ms; judge {SLICE} {judge * 1e3:.2f} ms; take in {SLICE} "
        f"{add * 1e3:.2f} ms"
    )


def _timed(call: Any) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


# ---------------------------------------------------------------------------- receiver


async def release(table: dict[Any, Any]) -> None:
    """Free a flushed table a chunk at a time, as the flusher frees what it converted (a
    summary the intake fed may hold 10,000 values: freeing 100 of those takes ~2 ms)."""
    while table:
        for _ in range(min(RELEASE_CHUNK, len(table))):
            table.popitem()
        await asyncio.sleep(0)


class Stalls:
    """The receiver's longest event-loop stalls: a 1 ms timer's worst lateness in wall time
    (which includes the machine taking the CPU away: it is shared) and in this process's
    CPU time (our own work only), and the longest garbage collection."""

    def __init__(self) -> None:
        self.wall = self.cpu = self.gc = 0.0
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._gc_started = now
        else:
            self.gc = max(self.gc, now - self._gc_started)

    async def probe(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            due, cpu = loop.time() + 0.001, time.process_time()
            await asyncio.sleep(0.001)
            self.wall = max(self.wall, loop.time() - due)
            self.cpu = max(self.cpu, time.process_time() - cpu)

    def report(self) -> dict[str, float]:
        """The figures since the last report."""
        figures = {"lag": self.wall, "cpu_lag": self.cpu, "gc": self.gc}
        self.wall = self.cpu = self.gc = 0.0
        return figures


async def serve(http_port: int, udp_port: int | None) -> None:
    """The receiver: the intake (and a UDP listener) on one loop, run as the proxy runs
    them; answers ``stats`` lines on stdin with a JSON line, exits on ``stop``."""
    from statsd_ao.io.listeners import DatagramListener

    loop = asyncio.get_running_loop()
    gc_policy = GcPolicy()
    gc_policy.start()
    stalls = Stalls()
    naming = Naming({"host": "bench"})
    intake = ApiIntake(naming, interval=INTERVAL)
    server = AppOpticsIntake(
        Address("127.0.0.1", http_port), intake, [TOKEN], rate=1e9, burst=10**9
    )
    await server.open()
    aggregator = Aggregator(naming, interval=INTERVAL)
    listener = None
    if udp_port is not None:
        receive = aggregator.receive if aggregator.receives else None
        listener = DatagramListener(
            Address("127.0.0.1", udp_port), aggregator.ingest, 8 << 20, receive=receive
        )
        await listener.open()
    swapped = [0]  # lines of the intervals handed over
    stop = asyncio.Event()

    async def flush() -> None:  # as the flusher does: hand the parts over every interval
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(INTERVAL):
                    await stop.wait()
            with gc_policy.pause():
                snapshot = aggregator.swap()
                swapped[0] += snapshot.lines
                for part in [snapshot, *await server.take()]:
                    await release(part.series)
                    await release(part.feeds)

    def command() -> None:
        if sys.stdin.readline().strip() in ("stop", ""):
            stop.set()
            return
        lines = swapped[0] + aggregator.lines_now
        stats = {"lines": lines, "accepted": intake.accepted, **stalls.report()}
        stats["requests"] = sum(server.stats.requests.values())
        print(json.dumps(stats), flush=True)

    loop.add_reader(sys.stdin.fileno(), command)
    tasks = [asyncio.create_task(stalls.probe(stop)), asyncio.create_task(flush())]
    print(json.dumps({"ready": True}), flush=True)
    await stop.wait()
    for task in tasks:
        await task
    if listener is not None:
        await listener.close()
    await server.close()


async def flood(port: int, seconds: float, concurrency: int) -> None:
    """Post the body over ``concurrency`` keep-alive connections for ``seconds``."""
    import aiohttp

    post = body()
    headers = {
        "Content-Type": "application/json",
        "Authorization": aiohttp.encode_basic_auth(TOKEN, ""),
    }
    deadline = time.monotonic() + seconds
    answered: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while time.monotonic() < deadline:
                async with session.post(
                    f"http://127.0.0.1:{port}/v1/measurements", data=post, headers=headers
                ) as response:
                    await response.read()
                    answered[response.status] = answered.get(response.status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    print(json.dumps(answered), flush=True)


# ---------------------------------------------------------------------------- orchestration


class Receiver:
    def __init__(self, udp: bool) -> None:
        self.http_port = free_port(socket.SOCK_STREAM)
        self.udp_port = free_port(socket.SOCK_DGRAM) if udp else None
        command = [sys.executable, "-m", "bench.intake_bench", "serve", str(self.http_port)]
        if self.udp_port is not None:
            command.append(str(self.udp_port))
        self.process = subprocess.Popen(
            pinned(RECEIVER_CPU, command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert json.loads(self._line())["ready"]

    def _line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline()

    def stats(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        result: dict[str, Any] = json.loads(self._line())
        return result

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("stop\n")
        self.process.stdin.flush()
        self.process.wait(timeout=30)


def stalls(stats: dict[str, Any]) -> str:
    return (
        f"longest loop stall {stats['cpu_lag'] * 1e3:.1f} ms of our own work "
        f"({stats['lag'] * 1e3:.1f} ms wall; longest garbage collection "
        f"{stats['gc'] * 1e3:.1f} ms)"
    )


def start_flood(port: int, seconds: float, concurrency: int) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "bench.intake_bench", "flood", str(port)]
    command += [f"{seconds:g}", str(concurrency)]
    return subprocess.Popen(
        pinned(LOADGEN_CPU, command),
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )


def http(seconds: float, concurrency: int) -> None:
    receiver = Receiver(udp=False)
    try:
        before, cpu = receiver.stats(), receiver.cpu()
        started = time.monotonic()
        flooding = start_flood(receiver.http_port, seconds, concurrency)
        out, _ = flooding.communicate(timeout=seconds + 60)
        elapsed = time.monotonic() - started
        after, used = receiver.stats(), receiver.cpu() - cpu
        accepted = after["accepted"] - before["accepted"]
        print(
            f"http: {accepted / elapsed:,.0f} measurements/s accepted "
            f"({after['requests'] - before['requests']:,} requests of 300, answers "
            f"{out.strip()}) at {used / elapsed:.0%} of the receiver's core: "
            f"{accepted / used:,.0f} measurements per CPU second; {stalls(after)}; "
            f"load {load_average()}"
        )
    finally:
        receiver.stop()


def udp(seconds: float, concurrency: int) -> None:
    build_loadgen()
    path, _ = workload_files()["packed"]
    for busy in (False, True):
        receiver = Receiver(udp=True)
        try:
            assert receiver.udp_port is not None
            before = receiver.stats()
            started = time.monotonic()
            flooding = start_flood(receiver.http_port, seconds, concurrency) if busy else None
            output = run_loadgen(path, receiver.udp_port, None, 0, seconds)
            wait_drained(receiver.udp_port)
            elapsed = time.monotonic() - started
            if flooding is not None:
                flooding.communicate(timeout=60)
            after = receiver.stats()
            _, sent, send_seconds = parse_loadgen(output)
            lines = after["lines"] - before["lines"]
            accepted = after["accepted"] - before["accepted"]
            label = "beside a busy intake" if busy else "alone"
            print(
                f"udp {label}: sent {sent / send_seconds:,.0f} lines/s, processed "
                f"{lines / elapsed:,.0f} lines/s ({lines / max(sent, 1):.1%} of sent); intake "
                f"{accepted / elapsed:,.0f} measurements/s; {stalls(after)}; "
                f"load {load_average()}"
            )
        finally:
            receiver.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=300, help="core: bodies of 300")
    parser.add_argument("--only", choices=("core", "http", "udp"))
    args, rest = parser.parse_known_args()
    if rest and rest[0] == "serve":
        import uvloop

        ports = [int(p) for p in rest[1:]]
        uvloop.run(serve(ports[0], ports[1] if len(ports) > 1 else None))
        return
    if rest and rest[0] == "flood":
        import uvloop

        uvloop.run(flood(int(rest[1]), float(rest[2]), int(rest[3])))
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    print(f"intake_bench: {os.cpu_count()} CPUs; load {load_average()}")
    if args.only in (None, "core"):
        core(args.rounds)
    if args.only in (None, "http"):
        http(args.seconds, args.concurrency)
    if args.only in (None, "udp"):
        udp(args.seconds, args.concurrency)


if __name__ == "__main__":
    main()
