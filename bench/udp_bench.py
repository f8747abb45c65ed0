"""End-to-end UDP throughput: real sockets, the real program, one pinned core.

Usage: python -m bench.udp_bench [--quick] [--etsy] [--collectd] [--proxy worktree|GIT-REF ...]
                                 [--workload packed|single|both] [--wait-quiet SECONDS]

What it does, in order:
1. builds ``bench/loadgen.c`` with gcc into ``bench/build/`` (a ``sendmmsg`` replayer that
   only sends to 127.0.0.1 or ::1, bounded in count and time);
2. writes the seeded workload of `bench.workload` (10,000 series) twice: lines packed into
   <=1432-byte datagrams, and one line per datagram;
3. for each workload, climbs a ladder of offered rates (lines/s, then "max" for a fixed
   time).  Each rung starts a FRESH receiver pinned to CPU 1 (``taskset -c 1``), warms it up
   (100,000 lines, 50,000 one per datagram, at a gentle rate, so every series' line shape
   is known, as in a proxy that has been up a while; ``--no-warmup`` measures cold), runs
   the load generator pinned to CPU 0, waits until the receiver has emptied its socket and
   gone idle, then reads its CPU time (/proc/PID/stat utime+stime) and its socket's kernel
   drops (/proc/net/udp), and stops it.  Lines processed come from the receiver itself:
   statsd-ao's ``stopped: N lines received`` log line after SIGTERM; etsy statsd's
   ``statsd.metrics_received`` counter read over its management port before stopping it;
4. prints a table per workload and the headline: the highest offered rate with under 1%
   loss at which the receiver also kept up (processed/s within 2% of sent/s: a backlog
   still in the receive buffer when sending stopped would be loss in a longer run), found
   by the ladder and then bisection.  ``--etsy`` also installs etsy statsd from npm into
   ``bench/build/etsy`` and runs the same ladders against it, so the ratio statsd-ao /
   etsy is measured in one run.
   ``--collectd`` runs collectd's statsd plugin (Debian's collectd-core) the same way on
   tag-free copies of both workloads (``packed-plain``, ``single-plain``: no ``|#tags``,
   ``|h`` as ``|ms``), which statsd-ao also runs, so the three are compared in one run;
   after the one-line-per-datagram ladders a drain mode (``--drain-cycles``) fills
   statsd-ao's socket while it is stopped and times it emptying it.
   ``--proxy GIT-REF`` runs statsd-ao from a copy of that commit's ``statsd_ao/`` (in
   ``bench/build/ref-SHA/``) instead of the working tree; repeat it to compare versions.

Columns: offered rate; lines sent and the rate actually sent; lines processed; processed
lines/s (processed over the time from the first datagram sent until the receiver's socket
was empty again); loss = 1 - processed / sent; CPU % of one core over that time; CPU seconds
per million lines processed; the kernel's receive-buffer drops (datagrams) for the socket;
"other %": how much of the receiver's CPU anything else used meanwhile (other processes,
interrupts, the hypervisor's steal): above a few % the receiver was not alone on its core
and its loss figures are pessimistic (CPU s/M is the figure least affected).

The receivers flush rarely (statsd-ao ``--flush-interval 3600``, etsy 3600 s, no backend)
so the figures are the receive + parse + aggregate path; bench/flush_bench.py measures the
flush.  The load average is printed with every rung: other work on the machine skews the
figures, so compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from bench.workload import make_lines, make_series, pack

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BUILD = BENCH / "build"
LOADGEN_SOURCE = BENCH / "loadgen.c"
LOADGEN = BUILD / "loadgen"
ETSY_DIR = BUILD / "etsy"
ETSY_VERSION = "0.9.0"  # the newest on npm when this was written; "latest" would drift
ETSY_MAIN = ETSY_DIR / "node_modules" / "statsd" / "stats.js"

SERIES = 10_000
RECEIVER_CPU = "1"
LOADGEN_CPU = "0"
LOSS_OK = 0.01  # the headline: the highest offered rate with less loss than this
KEEP_UP = 0.02  # ... where the receiver also kept up within this share of the sent rate
FLUSH_INTERVAL = 3600  # seconds: no flush during a rung (the final flush is not timed)
START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0
DRAIN_TIMEOUT = 60.0
SETTLE_TIMEOUT = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1

# Offered rates in M lines/s; None is "as fast as the load generator can", for MAX_SECONDS.
LADDERS: dict[tuple[str, str, bool], tuple[float | None, ...]] = {
    ("statsd-ao", "packed", False): (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, None),
    ("statsd-ao", "single", False): (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, None),
    ("etsy", "packed", False): (0.1, 0.2, 0.3, 0.4, 0.5, None),
    ("etsy", "single", False): (0.05, 0.1, 0.15, 0.2, None),
    ("collectd", "packed", False): (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, None),
    ("collectd", "single", False): (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, None),
    ("statsd-ao", "packed", True): (1.0, 2.0, 3.0, 4.0, None),
    ("statsd-ao", "single", True): (0.2, 0.4, 0.6, None),
    ("etsy", "packed", True): (0.2, 0.4, None),
    ("etsy", "single", True): (0.1, 0.15, None),
    ("collectd", "packed", True): (1.0, 2.0, 3.0, None),
    ("collectd", "single", True): (0.2, 0.4, 0.6, None),
}
# Tag-free copies of the workloads ("packed-plain", "single-plain"): the same lines without
# their DogStatsD "|#tags" and with histograms sent as timers, which is what collectd's
# statsd plugin understands (it has no tags and no "|h").  Ladders as for the tagged ones.
PLAIN = "-plain"
LINES = {"packed": 2_000_000, "single": 600_000}
QUICK_LINES = {"packed": 600_000, "single": 200_000}
MAX_SECONDS = 3.0
# Before each measured run the receiver sees this many lines at a gentle rate: every series
# of the workload at least once (99+%), so the run measures the steady state of a proxy
# that has been up for a while, not the one-off parse of 10,000 new shapes.
WARMUP = {"packed": (100_000, 0.2), "single": (50_000, 0.05)}  # lines, M lines/s
# Drain mode (one line per datagram): the receiver is stopped (SIGSTOP) while the load
# generator fills its socket, then continued; the time from SIGCONT until the socket is
# empty again shows the receiver's own ceiling, which the load generator cannot offer.
DRAIN_CYCLES = 60
DRAIN_DATAGRAMS = 8_000  # per cycle: well inside an 8 MiB receive buffer
COLLECTD = Path("/usr/sbin/collectd")
COLLECTD_PLUGINS = Path("/usr/lib/collectd")
QUICK_MAX_SECONDS = 1.5
WORKLOAD_LINES = 500_000  # distinct lines in each file; the load generator cycles through it


# ---------------------------------------------------------------------------- build, files


def build_loadgen() -> Path:
    """Compile the load generator when its source is newer than the binary."""
    BUILD.mkdir(parents=True, exist_ok=True)
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= LOADGEN_SOURCE.stat().st_mtime:
        return LOADGEN
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        sys.exit("udp_bench: gcc (or cc) is needed to build bench/loadgen.c")
    subprocess.run(
        [gcc, "-O2", "-Wall", "-Wextra", "-std=c11", "-o", str(LOADGEN), str(LOADGEN_SOURCE)],
        check=True,
    )
    return LOADGEN


def write_datagrams(path: Path, datagrams: Sequence[bytes]) -> None:
    """The load generator's input: each datagram as a little-endian u32 length + bytes."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        for datagram in datagrams:
            out.write(struct.pack("<I", len(datagram)))
            out.write(datagram)
    tmp.replace(path)


def plain(line: bytes) -> bytes:
    """The tag-free line collectd's statsd plugin parses: no ``|#tags``, ``|h`` as ``|ms``."""
    head, *fields = line.split(b"|")
    fields = [b"ms" if f == b"h" else f for f in fields if not f.startswith(b"#")]
    return b"|".join([head, *fields])


def workload_files() -> dict[str, tuple[Path, float]]:
    """``{"packed"|"single"|"packed-plain"|"single-plain": (file, lines per datagram)}``,
    generated once per version of bench/workload.py (and of this file) in bench/build/."""
    digest = hashlib.sha256((BENCH / "workload.py").read_bytes())
    digest.update(Path(__file__).read_bytes())
    stem = f"workload-{SERIES}-{WORKLOAD_LINES}-{digest.hexdigest()[:10]}"
    meta_path = BUILD / f"{stem}.json"
    names = ("packed", "single", f"packed{PLAIN}", f"single{PLAIN}")
    paths = {name: BUILD / f"{stem}-{name}.bin" for name in names}
    if not (meta_path.exists() and all(path.exists() for path in paths.values())):
        lines = make_lines(make_series(SERIES), WORKLOAD_LINES)
        plain_lines = [plain(line) for line in lines]
        meta = {}
        for name, chosen in (("packed", lines), (f"packed{PLAIN}", plain_lines)):
            datagrams = pack(chosen)
            write_datagrams(paths[name], datagrams)
            meta[name] = len(chosen) / len(datagrams)
        write_datagrams(paths["single"], lines)
        write_datagrams(paths[f"single{PLAIN}"], plain_lines)
        meta_path.write_text(json.dumps(meta))
    meta = json.loads(meta_path.read_text())
    return {name: (paths[name], float(meta.get(name, 1.0))) for name in names}


# ---------------------------------------------------------------------------- /proc readers


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_used(cpu: str) -> float:
    """Seconds one CPU has spent on anything but idling (steal included), from /proc/stat."""
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith(f"cpu{cpu} "):
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(
                    int, line.split()[1:9]
                )
                return (user + nice + system + irq + softirq + steal) / CLK_TCK
    return 0.0


def wait_quiet(limit: float, busy: float = 0.1) -> None:
    """Wait up to ``limit`` seconds for a second in which neither benchmark CPU was more than
    ``busy`` used (by others: nothing of ours runs now); say so if it never came."""
    deadline = time.monotonic() + limit
    while True:
        before = [cpu_used(RECEIVER_CPU), cpu_used(LOADGEN_CPU)]
        time.sleep(1.0)
        used = [cpu_used(RECEIVER_CPU) - before[0], cpu_used(LOADGEN_CPU) - before[1]]
        if max(used) <= busy:
            return
        if time.monotonic() >= deadline:
            print(
                f"  (no quiet second within {limit:g} s: CPUs {used[0]:.0%} / {used[1]:.0%} busy)"
            )
            return


@dataclass(frozen=True, slots=True)
class SocketState:
    rx_queue: int  # bytes waiting in the receive buffer
    drops: int  # datagrams the kernel dropped for this socket since it was created


def udp_socket(port: int) -> SocketState | None:
    """The UDP socket bound to ``port`` (IPv4 or IPv6), from /proc/net/udp{,6}."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    rx_queue = int(fields[4].split(":")[1], 16)
                    return SocketState(rx_queue, int(fields[-1]))
    return None


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In a child before exec: SIGKILL it if the benchmark dies, however it dies (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def pinned(cpu: str, command: list[str]) -> list[str]:
    """``taskset -c CPU command`` (taskset execs, so the pid is the command's)."""
    if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        return command
    return ["taskset", "-c", cpu, *command]


# ---------------------------------------------------------------------------- receivers


class Receiver(Protocol):
    kind: str  # "statsd-ao", "etsy" or "collectd": picks the ladder
    name: str
    port: int
    pid: int
    note: str

    def start(self) -> None: ...

    def so_far(self) -> int | None:
        """Lines processed so far, if the receiver can tell without stopping."""
        ...

    def processed(self) -> int:
        """Lines processed; stops the receiver (statsd-ao only knows at shutdown)."""
        ...

    def kill(self) -> None: ...


def _wait_exit(process: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(10)


class StatsdAo:
    """The real ``statsd-ao`` program, dry run, stdout discarded, stderr to a file."""

    kind = "statsd-ao"
    _LISTENING = re.compile(r"listening on udp \S+:(\d+) \(receive buffer (\d+) bytes granted")
    _STOPPED = re.compile(r"stopped: (\d+) lines received")

    def __init__(self, flush_interval: int, source: str = "worktree") -> None:
        self._flush_interval = flush_interval
        self._snapshot = None if source == "worktree" else snapshot(source)
        # Named by commit: a ref like HEAD moves while others commit.
        self.name = (
            "statsd-ao" if self._snapshot is None else f"statsd-ao@{self._snapshot.name[4:11]}"
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.port = 0
        self.pid = 0
        self.note = ""

    def _command(self) -> list[str]:
        script = Path(sys.prefix) / "bin" / "statsd-ao"
        if self._snapshot is None and script.exists():
            program = [str(script)]
        else:
            program = [sys.executable, "-m", "statsd_ao"]
        return [
            *program,
            "--udp",
            "127.0.0.1:0",
            "--flush-interval",
            str(self._flush_interval),
        ]

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STATSD_AO_")}
        env.pop("APPOPTICS_TOKEN", None)  # never post from a benchmark
        if self._snapshot is not None:  # its statsd_ao package comes first on sys.path
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(self._snapshot), env.get("PYTHONPATH")])
            )
        # Closed in kill(): it outlives this method.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self._process = subprocess.Popen(
            pinned(RECEIVER_CPU, self._command()),
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=env,
            cwd=self._snapshot or ROOT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (the bench has one thread)
        )
        self.pid = self._process.pid
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            match = self._LISTENING.search(self._read_log())
            if match:
                self.port = int(match.group(1))
                self.note = f"receive buffer {int(match.group(2)) // 1024} KiB granted"
                return
            if self._process.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"statsd-ao did not start:\n{self._read_log()}")

    def _read_log(self) -> str:
        assert self._log is not None
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def so_far(self) -> int | None:
        return None  # only its shutdown summary says

    def processed(self) -> int:
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        status = _wait_exit(self._process, STOP_TIMEOUT)
        log = self._read_log()
        match = self._STOPPED.search(log)
        if status != 0 or match is None:
            raise RuntimeError(f"statsd-ao exited {status} without its summary:\n{log[-2000:]}")
        return int(match.group(1))

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


def snapshot(ref: str) -> Path:
    """``statsd_ao/`` as committed at ``ref``, extracted once into bench/build/ref-SHA/."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    target = BUILD / f"ref-{sha[:12]}"
    if not (target / "statsd_ao" / "__init__.py").exists():
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", sha, "statsd_ao"],
            capture_output=True,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
    build_hotpath(target / "statsd_ao")  # (every time: a copy built before 2026-12-07 had asserts)
    return target


def build_hotpath(package: Path) -> None:
    """Compile the ref's C parts, where it has them, as its install does (setup.py): the C
    loop with the C gauges of _gauges.c, and the flush's conversion.  (They moved from
    statsd_ao/ to statsd_ao/core/ with the layout change.)  With Python's own CFLAGS first,
    as setuptools passes them: without their -DNDEBUG the asserts in Python's headers
    (PyTuple_GET_ITEM, PyBytes_AS_STRING, ...) are compiled in, which made a ref's C loop
    13-15% slower than the same code built by setup.py."""
    include = sysconfig.get_paths()["include"]
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    python_flags = str(sysconfig.get_config_var("CFLAGS") or "").split()
    where = package / "core" if (package / "core" / "_hotpath.c").exists() else package
    for module, names, flags in (
        ("_hotpath", ("_hotpath.c", "_gauges.c"), []),
        ("_convert", ("_convert.c",), ["-ffp-contract=off"]),
    ):
        if not (where / names[0]).exists():
            continue
        sources = [str(where / name) for name in names if (where / name).exists()]
        command = ["gcc", *python_flags, "-O2", "-shared", "-fPIC", *flags, f"-I{include}"]
        output = where / f"{module}{suffix}"
        subprocess.run([*command, *sources, "-o", str(output)], check=True)


def install_etsy() -> str | None:
    """Install etsy statsd from npm into bench/build/etsy; None, or why it could not."""
    if ETSY_MAIN.exists():
        return None
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        return "node and npm are needed for --etsy"
    ETSY_DIR.mkdir(parents=True, exist_ok=True)
    print(f"installing statsd@{ETSY_VERSION} from npm into {ETSY_DIR.relative_to(ROOT)}")
    result = subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(ETSY_DIR),
            "--no-audit",
            "--no-fund",
            "--no-save",
            f"statsd@{ETSY_VERSION}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0 or not ETSY_MAIN.exists():
        return f"npm install statsd@{ETSY_VERSION} failed:\n{result.stderr[-2000:]}"
    return None


class Etsy:
    """etsy statsd (node), no backend, counted through its management interface."""

    kind = name = "etsy"
    _RECEIVED = re.compile(r"'statsd\.metrics_received': (\d+)")

    def __init__(self, flush_interval: int) -> None:
        self._flush_interval = flush_interval
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.port = 0
        self.mgmt_port = 0
        self.pid = 0
        self.note = "default receive buffer (net.core.rmem_default)"

    def start(self) -> None:
        node = shutil.which("node")
        assert node is not None
        self.port = free_port(socket.SOCK_DGRAM)
        self.mgmt_port = free_port(socket.SOCK_STREAM)
        self._dir = tempfile.TemporaryDirectory(prefix="etsy-")
        config = Path(self._dir.name) / "config.js"
        settings = {
            "address": "127.0.0.1",
            "port": self.port,
            "mgmt_address": "127.0.0.1",
            "mgmt_port": self.mgmt_port,
            "backends": [],
            "flushInterval": self._flush_interval * 1000,
        }
        config.write_text(json.dumps(settings))
        self._process = subprocess.Popen(
            pinned(RECEIVER_CPU, [node, str(ETSY_MAIN), str(config)]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self._dir.name,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (the bench has one thread)
        )
        self.pid = self._process.pid
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if udp_socket(self.port) is not None:
                with contextlib.suppress(OSError):
                    self._counters()
                    return
            time.sleep(0.05)
        raise RuntimeError("etsy statsd did not start")

    def _counters(self) -> str:
        with socket.create_connection(("127.0.0.1", self.mgmt_port), timeout=10) as sock:
            sock.sendall(b"counters\n")
            chunks: list[bytes] = []
            while not b"".join(chunks[-2:]).endswith(b"END\n\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
            sock.sendall(b"quit\n")
        return b"".join(chunks).decode(errors="replace")

    def so_far(self) -> int:
        match = self._RECEIVED.search(self._counters())
        if match is None:
            raise RuntimeError("etsy statsd: no statsd.metrics_received in `counters`")
        return int(match.group(1))

    def processed(self) -> int:
        count = self.so_far()
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        _wait_exit(self._process, STOP_TIMEOUT)
        return count

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


COLLECTD_CONFIG = """\
Hostname "bench"
FQDNLookup false
Interval {interval}
BaseDir "{dir}"
PIDFile "{dir}/collectd.pid"
PluginDir "{plugins}"
TypesDB "/usr/share/collectd/types.db"
LoadPlugin logfile
<Plugin logfile>
  LogLevel "info"
  File "{dir}/collectd.log"
</Plugin>
LoadPlugin statsd
<Plugin statsd>
  Host "127.0.0.1"
  Port "{port}"
</Plugin>
"""


def collectd_trouble() -> str | None:
    """None when Debian's collectd (package collectd-core) and its statsd plugin are here."""
    if not COLLECTD.exists() or not (COLLECTD_PLUGINS / "statsd.so").exists():
        return "collectd is not installed (apt-get install collectd-core)"
    return None


class Collectd:
    """collectd's statsd plugin (Debian's collectd-core), no write plugin, foreground.

    It keeps no count of lines received, so its lines processed are counted by the kernel:
    every datagram it did not drop was read (the bench waits until its socket is empty) and
    parsed; the lines of the dropped ones (at the workload's mean lines per datagram) are
    the loss.  Lines it could not parse are logged, counted from its log and reported."""

    kind = name = "collectd"
    kernel_counted = True
    _REJECTED = "Unable to parse line"

    def __init__(self, flush_interval: int) -> None:
        self._flush_interval = flush_interval
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.port = 0
        self.pid = 0
        self.note = "default receive buffer (net.core.rmem_default); processed = not dropped"
        self.rejected = 0

    def start(self) -> None:
        self.port = free_port(socket.SOCK_DGRAM)
        self._dir = tempfile.TemporaryDirectory(prefix="collectd-")
        config = Path(self._dir.name) / "collectd.conf"
        config.write_text(
            COLLECTD_CONFIG.format(
                interval=self._flush_interval,
                dir=self._dir.name,
                plugins=COLLECTD_PLUGINS,
                port=self.port,
            )
        )
        self._process = subprocess.Popen(
            pinned(RECEIVER_CPU, [str(COLLECTD), "-f", "-C", str(config)]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self._dir.name,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (the bench has one thread)
        )
        self.pid = self._process.pid
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if udp_socket(self.port) is not None:
                return
            time.sleep(0.05)
        raise RuntimeError(f"collectd did not start: {self._log()[-2000:]}")

    def _log(self) -> str:
        assert self._dir is not None
        path = Path(self._dir.name) / "collectd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def so_far(self) -> int | None:
        return None

    def processed(self) -> int:
        """Stops it; the lines it logged as unparsable are kept in ``rejected``."""
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        _wait_exit(self._process, STOP_TIMEOUT)
        self.rejected = self._log().count(self._REJECTED)
        return 0  # (counted by the kernel: see the class)

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


# ---------------------------------------------------------------------------- one rung


@dataclass(frozen=True, slots=True)
class Rung:
    offered: float | None  # M lines/s; None: as fast as possible
    sent_lines: int
    sent_datagrams: int
    send_seconds: float
    processed: int
    busy_seconds: float  # first datagram sent -> socket empty again
    cpu: float
    drops: int
    load: str
    others: float  # share of the receiver's CPU used by anything else during the run

    @property
    def loss(self) -> float:
        return 1.0 - self.processed / self.sent_lines if self.sent_lines else 0.0

    @property
    def sent_rate(self) -> float:
        return self.sent_lines / self.send_seconds

    @property
    def good(self) -> bool:
        """Under 1% loss and kept up: processed/s within 2% of sent/s (a backlog left in
        the receive buffer when the sending stopped would have become loss in a longer run)."""
        return self.loss < LOSS_OK and self.processed_rate >= self.sent_rate * (1 - KEEP_UP)

    @property
    def processed_rate(self) -> float:
        return self.processed / self.busy_seconds

    @property
    def cpu_per_million(self) -> float:
        return self.cpu / self.processed * 1e6 if self.processed else float("nan")


_LOADGEN_OUT = re.compile(r"datagrams=(\d+) lines=(\d+) bytes=\d+ seconds=([\d.]+)")


def run_loadgen(path: Path, port: int, offered: float | None, lines: int, seconds: float) -> str:
    command = [str(LOADGEN), "--file", str(path), "--host", "127.0.0.1", "--port", str(port)]
    if offered is None:
        command += ["--lines", "1000000000", "--seconds", f"{seconds:g}", "--batch", "256"]
    else:
        limit = min(600.0, lines / (offered * 1e6) * 1.5 + 5)
        command += ["--rate", f"{offered * 1e6:.0f}", "--lines", str(lines)]
        command += ["--seconds", f"{limit:g}"]
    result = subprocess.run(
        pinned(LOADGEN_CPU, command),
        capture_output=True,
        text=True,
        timeout=660,
        check=False,
        preexec_fn=_die_with_parent,
    )
    if result.returncode != 0:
        raise RuntimeError(f"loadgen failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def wait_drained(port: int) -> float:
    """Wait until the socket's receive queue is empty; the monotonic time it was seen so."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        state = udp_socket(port)
        if state is None or state.rx_queue == 0:
            return time.monotonic()
        time.sleep(0.002)
    raise RuntimeError(f"the receiver did not empty its socket within {DRAIN_TIMEOUT:g}s")


def wait_idle(pid: int) -> float:
    """CPU seconds once the process has stopped using CPU (two equal readings 0.1 s apart)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_seconds(pid)
        if now == last:
            return now
        last = now
    return last


def parse_loadgen(output: str) -> tuple[int, int, float]:
    """(datagrams, lines, seconds) from the load generator's report."""
    match = _LOADGEN_OUT.search(output)
    if match is None:
        raise RuntimeError(f"cannot read the load generator's output: {output!r}")
    return int(match.group(1)), int(match.group(2)), float(match.group(3))


def socket_drops(port: int) -> int:
    state = udp_socket(port)
    return state.drops if state is not None else -1


@dataclass(frozen=True, slots=True)
class Plan:
    """One workload's ladder for one receiver."""

    workload: str  # "packed" or "single"
    path: Path
    per_datagram: float
    rates: tuple[float | None, ...]
    lines: int  # per rung
    max_seconds: float  # of the "max" rung
    warmup: tuple[int, float] | None  # lines, M lines/s
    quiet: float  # seconds to wait for a quiet machine before each rung
    refine: int  # bisection rungs for the headline after the ladder


def run_rung(receiver: Receiver, plan: Plan, offered: float | None) -> Rung:
    """Fresh receiver, optional warm-up, one measured run, stop: the figures."""
    path, warmup = plan.path, plan.warmup
    warm_lines = warm_drops = 0
    exact = True  # the warm-up's own count is known, so its losses are not this run's
    if plan.quiet > 0:
        wait_quiet(plan.quiet)
    try:
        receiver.start()
        if warmup is not None:
            warm_count, warm_rate = warmup
            warm_output = run_loadgen(path, receiver.port, warm_rate, warm_count, 0.0)
            warm_sent = parse_loadgen(warm_output)[1]
            wait_drained(receiver.port)
            warm_drops = socket_drops(receiver.port)
            counted = receiver.so_far()
            warm_lines = warm_sent if counted is None else counted
            exact = counted is not None
        time.sleep(0.3)  # let start-up work (imports, JIT) finish before the CPU baseline
        cpu_before = wait_idle(receiver.pid)
        used_before, window_start = cpu_used(RECEIVER_CPU), time.monotonic()
        output = run_loadgen(path, receiver.port, offered, plan.lines, plan.max_seconds)
        exited = time.monotonic()
        drained = wait_drained(receiver.port)
        cpu_after = wait_idle(receiver.pid)
        used_after, window = cpu_used(RECEIVER_CPU), time.monotonic() - window_start
        drops = socket_drops(receiver.port) - warm_drops
        processed = receiver.processed() - warm_lines
    finally:
        receiver.kill()
    if warm_drops and not exact:
        print(f"  (the warm-up lost {warm_drops} datagrams: counted as this run's loss)")
    sent_datagrams, sent_lines, send_seconds = parse_loadgen(output)
    if getattr(receiver, "kernel_counted", False):  # every datagram not dropped was read
        processed = sent_lines - round(drops * sent_lines / max(sent_datagrams, 1))
        rejected = getattr(receiver, "rejected", 0)
        if rejected:
            print(f"  ({receiver.name} logged {rejected:,} lines it could not parse)")
    return Rung(
        offered,
        sent_lines,
        sent_datagrams,
        send_seconds,
        processed,
        send_seconds + (drained - exited),
        cpu_after - cpu_before,
        drops,
        load_average(),
        max(0.0, (used_after - used_before) - (cpu_after - cpu_before)) / window,
    )


def fill(receiver: Receiver, path: Path, datagrams: int) -> int:
    """Stop the receiver (SIGSTOP) and fill its socket with ``datagrams`` datagrams from
    ``path``: the lines sent (the load generator's exit means all were sent).  It stays
    stopped: `drain_once` continues it (or kill() ends it)."""
    os.kill(receiver.pid, signal.SIGSTOP)
    command = [str(LOADGEN), "--file", str(path), "--host", "127.0.0.1"]
    command += ["--port", str(receiver.port), "--datagrams", str(datagrams)]
    command += ["--seconds", "10", "--batch", "256"]
    output = subprocess.run(
        pinned(LOADGEN_CPU, command), capture_output=True, text=True, check=True
    ).stdout
    return parse_loadgen(output)[1]


def drain_once(receiver: Receiver) -> float:
    """Continue a receiver `fill` stopped: seconds until its socket is empty (polled
    without sleeping)."""
    started = time.monotonic()
    os.kill(receiver.pid, signal.SIGCONT)
    while (state := udp_socket(receiver.port)) is not None and state.rx_queue:
        pass
    return time.monotonic() - started


def drain(receiver: Receiver, plan: Plan, cycles: int) -> tuple[str, str, float, float]:
    """Drain mode: ``cycles`` times, stop the receiver, fill its socket with
    DRAIN_DATAGRAMS datagrams, continue it and time it until the socket is empty (polled
    without sleeping, from CPU 0).  (name, workload, lines/s, CPU s per M lines)."""
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(LOADGEN_CPU)})
    busy = 0.0
    sent = drops = 0
    try:
        receiver.start()
        warm = 0
        if plan.warmup is not None:
            count, rate = plan.warmup
            warm = parse_loadgen(run_loadgen(plan.path, receiver.port, rate, count, 0.0))[1]
            wait_drained(receiver.port)
        warm_drops = socket_drops(receiver.port)
        cpu_before = wait_idle(receiver.pid)
        for _ in range(cycles):
            sent += fill(receiver, plan.path, DRAIN_DATAGRAMS)
            busy += drain_once(receiver)
        cpu = wait_idle(receiver.pid) - cpu_before
        drops = socket_drops(receiver.port) - warm_drops
        counted = receiver.processed()
        warm -= round(warm_drops * plan.per_datagram)  # (what the warm-up lost never counted)
        processed = sent - drops if getattr(receiver, "kernel_counted", False) else counted - warm
    finally:
        receiver.kill()
        os.sched_setaffinity(0, affinity)
    print(
        f"drain mode, {receiver.name}, {plan.workload}: {cycles} x {DRAIN_DATAGRAMS:,} "
        f"datagrams, {processed:,} lines processed of {sent:,} ({drops:,} dropped) in "
        f"{busy:.3f} s of draining: {processed / busy / 1e6:.3f} M lines/s, "
        f"{cpu / processed * 1e6:.2f} CPU s/M"
    )
    return receiver.name, plan.workload, processed / busy, cpu / processed * 1e6


# ---------------------------------------------------------------------------- reports


HEADER = (
    f"{'offered':>8} {'sent':>10} {'sent/s':>8} {'processed':>10} {'proc/s':>8} "
    f"{'loss %':>7} {'CPU %':>6} {'CPU s/M':>8} {'drops':>7} {'other %':>7}  load avg"
)


def offered_text(offered: float | None) -> str:
    return "max" if offered is None else f"{offered:g} M"


def row(rung: Rung) -> str:
    return (
        f"{offered_text(rung.offered):>8} {rung.sent_lines:>10,} "
        f"{rung.sent_rate / 1e6:>6.3f} M {rung.processed:>10,} "
        f"{rung.processed_rate / 1e6:>6.3f} M {rung.loss * 100:>7.2f} "
        f"{rung.cpu / rung.busy_seconds * 100:>6.0f} {rung.cpu_per_million:>8.2f} "
        f"{rung.drops:>7,} {rung.others * 100:>7.0f}  {rung.load}"
    )


@dataclass(frozen=True, slots=True)
class Summary:
    receiver: str
    workload: str
    headline: float | None  # highest offered M lines/s with loss < 1%
    peak: float  # the highest processed M lines/s of any rung (less hurt by other work)
    cpu_per_million: float  # in that rung: the cost per line of a receiver kept busy


def ladder(receiver: Receiver, plan: Plan) -> Summary:
    warmup = plan.warmup
    warm = f"after a warm-up of {warmup[0]:,} lines at {warmup[1]:g} M/s" if warmup else "cold"
    print(
        f"\n{receiver.name}, {plan.workload} ({plan.per_datagram:.1f} lines/datagram): "
        f"{plan.lines:,} lines per rung, max for {plan.max_seconds:g} s, {warm}; "
        f"receiver on CPU {RECEIVER_CPU}, loadgen on CPU {LOADGEN_CPU}"
    )
    print(HEADER)
    rungs: list[Rung] = []
    best: Rung | None = None  # the last good rung of the unbroken run from the bottom
    failed: Rung | None = None  # the first rung after it (loss of 1% or more)

    def run(offered: float | None) -> Rung:
        rung = run_rung(receiver, plan, offered)
        rungs.append(rung)
        print(row(rung), flush=True)
        return rung

    for offered in plan.rates:
        rung = run(offered)
        if offered is not None and failed is None:
            if rung.good:
                best = rung
            else:
                failed = rung
    # Bisect between the last good and the first failing rung, so the headline is not
    # just a ladder step.
    low = best.offered if best is not None and best.offered is not None else 0.0
    high = failed.offered if failed is not None else None
    for _ in range(plan.refine):
        if high is None or high - low < 0.02:
            break
        middle = round((low + high) / 2, 3)
        rung = run(middle)
        if rung.good:
            low, best = middle, rung
        else:
            high = middle
    print(f"({receiver.note}; the rungs after max bisect for the headline)")
    busiest = max(r.others for r in rungs)
    if busiest > 0.05:
        print(
            f"warning: up to {busiest:.0%} of CPU {RECEIVER_CPU} went to other work during "
            "these runs: figures are skewed (re-run on a quiet machine)"
        )
    peak = max(rungs, key=lambda r: r.processed_rate)
    return Summary(
        receiver.name,
        plan.workload,
        best.offered if best else None,
        peak.processed_rate / 1e6,
        peak.cpu_per_million,
    )


def print_summaries(summaries: Sequence[Summary]) -> None:
    width = max([len(s.receiver) for s in summaries] + [8])
    print(
        f"\nheadline: highest offered rate with under {LOSS_OK:.0%} loss where the receiver kept "
        f"up (processed/s within {KEEP_UP:.0%} of sent/s), every lower rung too"
    )
    print(
        f"{'receiver':<{width}} {'workload':<13} {'<1% loss':>10} {'peak proc/s':>11} "
        f"{'CPU s/M there':>13}"
    )
    for s in summaries:
        headline = f"{s.headline:g} M" if s.headline is not None else "none"
        print(
            f"{s.receiver:<{width}} {s.workload:<13} {headline:>10} {s.peak:>9.3f} M "
            f"{s.cpu_per_million:>13.2f}"
        )
    for reference in ("etsy", "collectd"):
        theirs_by = {s.workload: s for s in summaries if s.receiver == reference}
        for ours in summaries:
            if not ours.receiver.startswith("statsd-ao"):
                continue
            for workload in {ours.workload, ours.workload.removesuffix(PLAIN) + PLAIN}:
                theirs = theirs_by.get(workload)
                if theirs is not None:
                    compare(ours, theirs)


def compare(ours: Summary, theirs: Summary) -> None:
    parts = [f"peak processed/s {ours.peak / theirs.peak:.2f}x"]
    if ours.headline is not None and theirs.headline:
        parts.insert(0, f"under 1% loss {ours.headline / theirs.headline:.2f}x")
    ratio = theirs.cpu_per_million / ours.cpu_per_million
    parts.append(f"CPU per line at peak {ratio:.2f}x less")
    print(
        f"{ours.receiver} {ours.workload} / {theirs.receiver} {theirs.workload}: "
        + ", ".join(parts)
    )


def print_drains(drains: Sequence[tuple[str, str, float, float]]) -> None:
    if not drains:
        return
    print("\ndrain mode: socket filled while the receiver was stopped, then emptied by it")
    for name, workload, rate, cpu in drains:
        print(f"{name:<20} {workload:<13} {rate / 1e6:>7.3f} M lines/s  {cpu:.2f} CPU s/M")


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    print(f"{what}: {time.perf_counter() - started:.1f} s")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop receivers


def make_receivers(args: argparse.Namespace) -> list[Receiver]:
    receivers: list[Receiver] = [StatsdAo(FLUSH_INTERVAL, s) for s in args.proxy or ["worktree"]]
    if args.collectd:
        trouble = collectd_trouble()
        if trouble is None:
            receivers.append(Collectd(FLUSH_INTERVAL))
        else:
            print(f"collectd skipped: {trouble}")
    if args.etsy:
        trouble = install_etsy()
        if trouble is None:
            receivers.append(Etsy(FLUSH_INTERVAL))
        else:
            print(f"etsy statsd skipped: {trouble}")
    return receivers


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rungs, fewer lines")
    parser.add_argument("--etsy", action="store_true", help="also run etsy statsd from npm")
    parser.add_argument(
        "--collectd", action="store_true", help="also run collectd's statsd plugin (Debian)"
    )
    parser.add_argument(
        "--drain-cycles",
        type=int,
        default=DRAIN_CYCLES,
        metavar="N",
        help=f"drain-mode cycles of {DRAIN_DATAGRAMS:,} datagrams, one line each (0: none)",
    )
    parser.add_argument("--lines-packed", type=int, help="lines per rung, packed workload")
    parser.add_argument("--lines-single", type=int, help="lines per rung, one per datagram")
    parser.add_argument(
        "--proxy",
        action="append",
        metavar="SOURCE",
        help="statsd-ao to measure: 'worktree' (the default) or a git ref, run from a copy of "
        "its statsd_ao/ in bench/build/; repeat to compare versions in one run",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each rung, wait up to this long for both CPUs to be idle (shared machines)",
    )
    parser.add_argument(
        "--refine",
        type=int,
        metavar="N",
        help="bisection rungs between the last good and first lossy rate (default 2; quick 1)",
    )
    parser.add_argument(
        "--no-warmup", action="store_true", help="measure fresh receivers (no warm-up lines)"
    )
    parser.add_argument(
        "--workload", choices=("packed", "single", "both"), default="both", help="which to run"
    )
    args = parser.parse_args()

    lines = dict(QUICK_LINES if args.quick else LINES)
    if args.lines_packed:
        lines["packed"] = args.lines_packed
    if args.lines_single:
        lines["single"] = args.lines_single
    max_seconds = QUICK_MAX_SECONDS if args.quick else MAX_SECONDS
    refine = args.refine if args.refine is not None else (1 if args.quick else 2)

    with timed("build + workload"):
        build_loadgen()
        files = workload_files()
    receivers = make_receivers(args)
    print(f"load average at start: {load_average()}")
    workloads = ("packed", "single") if args.workload == "both" else (args.workload,)
    summaries: list[Summary] = []
    drains: list[tuple[str, str, float, float]] = []
    with timed("all rungs"):
        for workload in workloads:
            for variant in (workload, workload + PLAIN):
                for receiver in receivers:
                    if receiver.kind != "statsd-ao" and (receiver.kind == "collectd") != (
                        variant != workload
                    ):  # etsy on tagged lines, collectd on tag-free ones, statsd-ao on both
                        continue
                    path, per_datagram = files[variant]
                    plan = Plan(
                        variant,
                        path,
                        per_datagram,
                        LADDERS[(receiver.kind, workload, args.quick)],
                        lines[workload],
                        max_seconds,
                        None if args.no_warmup else WARMUP[workload],
                        args.wait_quiet,
                        refine,
                    )
                    try:
                        summaries.append(ladder(receiver, plan))
                        if (
                            workload == "single"
                            and args.drain_cycles > 0
                            and receiver.kind == "statsd-ao"
                        ):  # (etsy's and collectd's 208 KiB buffers hold ~256 datagrams)
                            drains.append(drain(receiver, plan, args.drain_cycles))
                    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                        print(f"{receiver.name}, {variant}: FAILED: {error}")
    print_summaries(summaries)
    print_drains(drains)
    print(f"load average at end: {load_average()}")


if __name__ == "__main__":
    main()
