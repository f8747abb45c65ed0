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
from multiprocessing.connection import Connection

import uvloop

from statsd_ao.config import Config
from statsd_ao.core.aggregator import Snapshot
from statsd_ao.core.logs import configure
from statsd_ao.core.mapping import parse_rules
from statsd_ao.core.merge import from_wire, to_wire
from statsd_ao.gcpolicy import GcPolicy
from statsd_ao.io.address import Address
from statsd_ao.io.listeners import DatagramListener
from statsd_ao.remapping import is_yaml, read_rules
from statsd_ao.wiring import make_aggregator

log = logging.getLogger(__name__)

# Seconds a worker may take to start (import, bind) or to answer a swap.
WORKER_TIMEOUT = 30.0


def worker_main(config: Config, conn: Connection, address: Address) -> None:
    """The entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come from the coordinator
    configure("INFO", config.log_format == "json")
    uvloop.run(_serve(config, conn, address))


async def _serve(config: Config, conn: Connection, address: Address) -> None:
    loop = asyncio.get_running_loop()
    mapping = read_rules(config.mapping)[0] if config.mapping else None
    aggregator = make_aggregator(config, None, mapping)  # the coordinator guards the merge
    gc_policy = GcPolicy()  # as in the main process: no full collections over the interval
    gc_policy.start()
    receive = aggregator.receive if aggregator.receives else None
    listener = DatagramListener(
        address,
        aggregator.ingest,
        config.rcvbuf,
        reuse_port=True,
        receive=receive,
        pause=config.read_pause,
    )
    listener.open(loop)
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
            listener.close()
        if command != "gone":
            with gc_policy.pause():  # survivors of the hand-over are frozen after it
                conn.send(to_wire(aggregator.swap()))
        if command in ("stop", "gone"):
            loop.remove_reader(conn.fileno())
            done.set()

    loop.add_reader(conn.fileno(), on_command)
    await done.wait()


class WorkerPool:
    """The coordinator's handle on its workers."""

    def __init__(self, config: Config, count: int) -> None:
        self._config = config
        self._count = count
        self._processes: list[multiprocessing.process.BaseProcess] = []
        self._conns: list[Connection] = []
        self.stopping = False  # set at shutdown: the next take stops the workers

    async def start(self, address: Address) -> Address:
        """Start the workers on ``address`` (port 0: one free port for all of them)."""
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as reserve:  # holds the port meanwhile
            reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            reserve.bind((address.host, address.port))
            bound = Address(address.host, reserve.getsockname()[1])
            context = multiprocessing.get_context("spawn")
            for _ in range(self._count):
                parent, child = context.Pipe()
                process = context.Process(
                    target=worker_main, args=(self._config, child, bound), daemon=True
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
        """Every worker's interval (at shutdown, its last)."""
        command = "stop" if self.stopping else "swap"
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

    async def close(self) -> None:
        for conn in self._conns:
            conn.close()
        for process in self._processes:
            await asyncio.get_running_loop().run_in_executor(None, process.join, WORKER_TIMEOUT)
            if process.is_alive():
                process.kill()

    async def _receive(self, conn: Connection) -> object:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(WORKER_TIMEOUT):  # not wait_for: see HttpSink._dispatch
            return await loop.run_in_executor(None, conn.recv)
