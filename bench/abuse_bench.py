"""What abuse costs the real program, and what it costs everyone else.

Usage: taskset -c 0 python -m bench.abuse_bench [--seconds S] [--slow N]

The proxy runs as a dry run pinned to CPU 1 (``--tcp`` on, one flush at the end); the load
comes from CPU 0, and only to 127.0.0.1.

1. Junk flood: ``bench/loadgen.c`` sends seeded random 65,000-byte datagrams as fast as the
   loopback takes them for S seconds, while a well-behaved sender in this process sends
   ``good.udp:1|c`` in one-line datagrams at 1,000/s.  Printed: junk datagrams and MB/s
   sent, what the kernel dropped for the proxy's socket, the proxy's CPU and resident set,
   and how many of the good sender's lines were counted.  On UDP every sender shares the
   socket's receive buffer, so a flood that outruns the proxy costs the others too (the
   kernel drops count it, and the proxy logs them); the figure says how fast junk is
   thrown away.
2. Slow TCP senders: N connections each trickle ``slow.tcp:1|c\\n`` at one byte a second
   (``--tcp-idle-timeout`` is never reached: every byte is activity), while a good sender
   opens a connection for each of 1,000 lines.  Printed: the proxy's resident set per
   slow connection, its CPU, and both senders' counts (all must be exact).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from bench.udp_bench import (
    BUILD,
    LOADGEN_CPU,
    RECEIVER_CPU,
    _die_with_parent,
    build_loadgen,
    cpu_seconds,
    pinned,
    run_loadgen,
    socket_drops,
    wait_drained,
    write_datagrams,
)

SEED = 20261206
JUNK_SIZE = 65_000
JUNK_FILE_DATAGRAMS = 64
GOOD_RATE = 1_000  # good one-line datagrams per second during the flood
SLOW_LINE = b"slow.tcp:1|c\n"
GOOD_TCP_LINES = 1_000
START_TIMEOUT = 30.0


class Proxy:
    """The real program, dry run: its stdout (the post bodies) and stderr go to files."""

    def __init__(self) -> None:
        self.out: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        self.err: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if not k.startswith("STATSD_AO_")}
        env.pop("APPOPTICS_TOKEN", None)  # never post from a benchmark
        command = [sys.executable, "-m", "statsd_ao", "--udp", "127.0.0.1:0"]
        command += ["--tcp", "127.0.0.1:0", "--flush-interval", "3600"]
        self.process = subprocess.Popen(
            pinned(RECEIVER_CPU, command),
            stdout=self.out,
            stderr=self.err,
            env=env,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (no threads yet)
        )
        self.ports = self._ports()

    def _ports(self) -> dict[str, int]:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            log = self.log()
            if "ready: " in log:
                return {
                    kind: int(line.rsplit(":", 1)[1].split()[0])
                    for line in log.splitlines()
                    for kind in ("udp", "tcp")
                    if f"listening on {kind} " in line
                }
            time.sleep(0.02)
        raise RuntimeError(f"statsd-ao did not start:\n{self.log()}")

    def log(self) -> str:
        self.err.seek(0)
        return self.err.read().decode(errors="replace")

    def resident_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(row for row in status.splitlines() if row.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> dict[str, float]:
        """SIGTERM (its final flush prints everything); counter values by name."""
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(60)
        if status != 0:
            raise RuntimeError(f"statsd-ao exited {status}:\n{self.log()[-2000:]}")
        self.out.seek(0)
        values: dict[str, float] = {}
        for body in self.out.read().splitlines():
            for measurement in json.loads(body)["measurements"]:
                values[measurement["name"]] = measurement.get("value", 0.0)
        self.out.close()
        self.err.close()
        return values


def good_udp_sender(port: int, stop: threading.Event) -> int:
    """``good.udp:1|c`` at GOOD_RATE datagrams/s until ``stop``; how many were sent."""
    sent = 0
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while not stop.is_set():
            due = started + sent / GOOD_RATE
            if due > time.monotonic():
                stop.wait(due - time.monotonic())
                continue
            sock.sendto(b"good.udp:1|c", ("127.0.0.1", port))
            sent += 1
    return sent


def junk_flood(seconds: float) -> None:
    build_loadgen()  # run_loadgen runs it
    rng = random.Random(SEED)
    junk = BUILD / "junk.bin"
    write_datagrams(junk, [rng.randbytes(JUNK_SIZE) for _ in range(JUNK_FILE_DATAGRAMS)])
    proxy = Proxy()
    port = proxy.ports["udp"]
    resident, cpu, started = proxy.resident_mib(), proxy.cpu(), time.monotonic()
    stop, result = threading.Event(), []
    good = threading.Thread(target=lambda: result.append(good_udp_sender(port, stop)))
    good.start()
    report = run_loadgen(junk, port, None, 0, seconds)
    stop.set()
    good.join()
    wait_drained(port)
    elapsed, used = time.monotonic() - started, proxy.cpu() - cpu
    drops, peak = socket_drops(port), proxy.resident_mib()
    values = proxy.stop()
    fields = dict(item.split("=") for item in report.split()[1:])
    sent = int(fields["datagrams"])
    print(
        f"junk flood: {sent} datagrams of {JUNK_SIZE} B in {float(fields['seconds']):.1f} s "
        f"({sent / float(fields['seconds']):.0f}/s, "
        f"{int(fields['bytes']) / float(fields['seconds']) / 1e6:.0f} MB/s); "
        f"kernel drops {drops} ({drops / (sent + result[0]):.1%} of all datagrams), so the "
        f"proxy read and threw away {(sent + result[0] - drops) / elapsed:.0f} datagrams/s "
        f"({(sent - drops) * JUNK_SIZE / elapsed / 1e6:.0f} MB/s of junk); "
        f"proxy CPU {used / elapsed:.0%} of a core, resident {resident:.0f} -> {peak:.0f} MiB"
    )
    print(
        f"junk flood: the good sender's lines counted {values.get('good.udp', 0):.0f} of "
        f"{result[0]} sent ({1 - values.get('good.udp', 0) / result[0]:.1%} lost with the "
        "junk in the shared receive buffer)"
    )


async def slow_senders(count: int) -> None:
    proxy = Proxy()
    port = proxy.ports["tcp"]
    resident, cpu, started = proxy.resident_mib(), proxy.cpu(), time.monotonic()
    writers = [(await asyncio.open_connection("127.0.0.1", port))[1] for _ in range(count)]
    for index in range(len(SLOW_LINE)):
        for writer in writers:
            writer.write(SLOW_LINE[index : index + 1])
        for _ in range(GOOD_TCP_LINES // len(SLOW_LINE) + 1):  # a good sender meanwhile
            _, good = await asyncio.open_connection("127.0.0.1", port)
            good.write(b"good.tcp:1|c\n")
            good.close()
            await good.wait_closed()
        await asyncio.sleep(1.0)  # one byte a second: the slowness is what is measured
    peak, used = proxy.resident_mib(), proxy.cpu() - cpu
    for writer in writers:
        writer.close()
        await writer.wait_closed()
    values = proxy.stop()
    good_sent = (GOOD_TCP_LINES // len(SLOW_LINE) + 1) * len(SLOW_LINE)
    print(
        f"slow senders: {count} connections at 1 B/s for {time.monotonic() - started:.0f} s: "
        f"resident {resident:.0f} -> {peak:.0f} MiB "
        f"({(peak - resident) * 2**20 / count:.0f} B per connection), proxy CPU {used:.2f} s"
    )
    print(
        f"slow senders: slow lines counted {values.get('slow.tcp', 0):.0f} of {count}; "
        f"good TCP lines {values.get('good.tcp', 0):.0f} of {good_sent}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="junk flood duration")
    parser.add_argument("--slow", type=int, default=1_000, help="slow TCP connections")
    args = parser.parse_args()
    print(
        f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; loadgen CPU "
        f"{LOADGEN_CPU}, proxy CPU {RECEIVER_CPU}"
    )
    junk_flood(args.seconds)
    asyncio.run(slow_senders(args.slow))


if __name__ == "__main__":
    main()
