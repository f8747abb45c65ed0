"""What a non-blocking client loses to a Unix datagram socket's queue limit.

Starts the proxy on a Unix socket (dry run, self-metrics off), sends bursts of single-line
datagrams from a non-blocking socket and prints how many ``sendto`` calls failed with EAGAIN,
with the current ``net.unix.max_dgram_qlen`` (read at the proxy's socket creation: change it
with sysctl before running).  Those datagrams never reach the proxy, so only the client can
count them.  The proxy runs on CPU 1 and this client on CPU 0 (on one core the proxy could
not read during a burst, and the client's send buffer, ~277 small datagrams at the default
212,992 bytes, would be the limit instead).  Local Unix socket only; bounded in count.

    python -m bench.unix_burst_bench --bursts 3 --size 500
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QLEN = Path("/proc/sys/net/unix/max_dgram_qlen")
LINE = b"burst.hits:1|c"


def start_proxy(path: str) -> subprocess.Popen[bytes]:
    command = [
        "taskset",
        "-c",
        "1",
        sys.executable,
        "-m",
        "statsd_ao",
        "--udp",
        "off",
        "--unix",
        path,
    ]
    command += ["--self-metrics", "off", "--flush-interval", "60"]
    proxy = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proxy.stderr is not None
    for raw in proxy.stderr:  # the ready line says the socket exists
        if b"ready:" in raw:
            return proxy
    raise SystemExit("the proxy did not start")


def burst(path: str, size: int) -> int:
    """Datagrams refused with EAGAIN out of ``size``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.setblocking(False)
        refused = 0
        for _ in range(size):
            try:
                client.sendto(LINE, path)
            except BlockingIOError:
                refused += 1
        return refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--size", type=int, default=500, help="datagrams per burst")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "statsd.sock")
        proxy = start_proxy(path)
        os.sched_setaffinity(0, {0})
        try:
            print(f"net.unix.max_dgram_qlen = {QLEN.read_text().strip()}")
            for number in range(args.bursts):
                refused = burst(path, args.size)
                print(
                    f"burst {number + 1}: {refused}/{args.size} EAGAIN ({refused / args.size:.1%})"
                )
                time.sleep(0.5)  # let the proxy drain before the next burst
        finally:
            proxy.terminate()
            proxy.wait(30)


if __name__ == "__main__":
    main()
