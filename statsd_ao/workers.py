"""``--workers N``: N receiving processes on one UDP port, merged before posting.

Each worker is a spawned process with its own event loop, a UDP socket bound with
``SO_REUSEPORT`` to the same port (the kernel spreads datagrams over them by sender) and its
own aggregator.  It ignores SIGINT/SIGTERM: the coordinator (the main process, which keeps
the flusher, the sink, TCP, Unix sockets and the HTTP endpoints) asks each worker for its
interval over a pipe at every tick ("swap"), and at shutdown ("stop": drain the socket,
hand over the last interval, exit).  `statsd_ao.core.merge` makes one snapshot of the parts.
A worker whose coordinator is gone (the pipe closes) exits too.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import socket
from dataclasses import dataclass
from multiprocessing.connection import Connection

import uvloop

from statsd_ao.core.aggregator import Snapshot
from statsd_ao.core.logs import configure
from statsd_ao.core.merge import from_wire, to_wire
from statsd_ao.gcpolicy import GcPolicy
from statsd_ao.io.address import Address
from statsd_ao.io.listeners import DatagramListener
from statsd_ao.rulesfile import is_yaml, parse_rules
from statsd_ao.wiring import AggregatorSpec

log = logging.getLogger(__name__)

# Seconds a worker may take to start (import, bind) or to answer a swap.
WORKER_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a worker process needs (picklable; workers never read settings)."""

    aggregator: AggregatorSpec
    rcvbuf: int
    read_pause: float
    log_level: str = "INFO"
    json_logs: bool = False
    # The mapping rules in use at start, as (path, text): checked by the coordinator already,
    # so the file is read once.
    mapping: tuple[str, str] | None = None


def worker_main(spec: WorkerSpec, conn: Connection, address: Address) -> None:
    """The entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come from the coordinator
    configure(spec.log_level, spec.json_logs)
    uvloop.run(_serve(spec, conn, address))


async def _serve(spec: WorkerSpec, conn: Connection, address: Address) -> None:
    loop = asyncio.get_running_loop()
    mapping = None
    if spec.mapping is not None:
        path, text = spec.mapping
        mapping = parse_rules(text, yaml=is_yaml(path), source=path)
    aggregator = spec.aggregator.build(None, mapping)  # the coordinator guards the merge
    gc_policy = GcPolicy()  # as in the main process: no full collections over the interval
    gc_policy.start()
    receive = aggregator.receive if aggregator.receives else None
    listener = DatagramListener(
        address,
        aggregator.ingest,
        spec.rcvbuf,
        reuse_port=True,
        receive=receive,
        pause=spec.read_pause,
    )
    listener.start_reading(loop)
    conn.send("ready")
    done = asyncio.Event()

    def on_command() -> None:
        try:
            command = conn.recv()
        except (EOFError, OSError):  # the coordinator is gone
            command = "gone"
        if isinstance(command, tuple):  # ("mapping", text): rules reloaded, checked already
            aggregator.remap(parse_rules(command[1], yaml=command[2], source=command[3]))
            return
        if command in ("stop", "gone"):
            listener.stop_reading()
        if command != "gone":
            with gc_policy.pause():  # survivors of the hand-over are frozen after it
                conn.send(to_wire(aggregator.swap()))
        if command in ("stop", "gone"):
            loop.remove_reader(conn.fileno())
            done.set()

    loop.add_reader(conn.fileno(), on_command)
    await done.wait()


class WorkerPool:
    """The coordinator's handle on its workers: a `statsd_ao.pipeline.PartSource`."""

    def __init__(self, spec: WorkerSpec, count: int, address: Address) -> None:
        self._spec = spec
        self._count = count
        self._address = address
        self._processes: list[multiprocessing.process.BaseProcess] = []
        self._conns: list[Connection] = []
        self._last: list[Snapshot] | None = None  # the workers' last intervals, once closed
        self.bound: Address | None = None

    def describe(self) -> str:
        return f"udp {self.bound or self._address} ({self._count} worker processes)"

    async def open(self) -> None:
        """Start the workers (port 0: one free port for all of them)."""
        self.bound = await self._start(self._address)
        log.info("listening on %s", self.describe())

    async def _start(self, address: Address) -> Address:
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as reserve:  # holds the port meanwhile
            reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            reserve.bind((address.host, address.port))
            bound = Address(address.host, reserve.getsockname()[1])
            context = multiprocessing.get_context("spawn")
            for _ in range(self._count):
                parent, child = context.Pipe()
                process = context.Process(
                    target=worker_main, args=(self._spec, child, bound), daemon=True
                )
                process.start()
                child.close()
                self._processes.append(process)
                self._conns.append(parent)
            await asyncio.gather(*(self._receive(conn) for conn in self._conns))
        return bound

    def remap(self, text: str, path: str) -> None:
        """Hand reloaded mapping rules (checked by the coordinator) to every worker."""
        for conn in self._conns:
            conn.send(("mapping", text, is_yaml(path), path))

    async def take(self) -> list[Snapshot]:
        """Every worker's interval (once closed, their last ones)."""
        if self._last is not None:
            last, self._last = self._last, []
            return last
        return await self._ask("swap")

    async def close(self) -> None:
        """Stop the workers: each drains its socket and hands over its last interval, which
        the next `take` (the final flush) returns; then they exit."""
        if not self._conns:
            return
        self._last = await self._ask("stop")
        for conn in self._conns:
            conn.close()
        self._conns = []
        for process in self._processes:
            await asyncio.get_running_loop().run_in_executor(None, process.join, WORKER_TIMEOUT)
            if process.is_alive():
                process.kill()

    async def _ask(self, command: str) -> list[Snapshot]:
        for conn in self._conns:
            conn.send(command)
        answers = await asyncio.gather(
            *(self._receive(conn) for conn in self._conns), return_exceptions=True
        )
        parts = []
        for index, answer in enumerate(answers):
            if isinstance(answer, tuple):
                parts.append(from_wire(answer))
            else:  # a worker that died loses its interval: say so loudly
                log.error("worker %d did not answer: %r", index, answer)
        return parts

    async def _receive(self, conn: Connection) -> object:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(WORKER_TIMEOUT):  # not wait_for: see HttpSink._dispatch
            return await loop.run_in_executor(None, conn.recv)
