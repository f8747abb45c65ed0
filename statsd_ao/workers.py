"""``--workers N``: N receiving processes on one UDP port, merged before posting.

Each worker is a spawned process with its own event loop, a UDP socket in the port's
``SO_REUSEPORT`` group (the kernel spreads datagrams over the group by sender) and its own
aggregator.  It ignores SIGINT/SIGTERM: the coordinator (the main process, which keeps the
flusher, the sink, TCP, Unix sockets and the HTTP endpoints) asks each worker for its
interval at every tick ("swap"), and at shutdown ("stop": drain the socket, hand over the
last interval, exit).  `statsd_ao.core.merge` makes one snapshot of the parts.  A worker
whose coordinator is gone (its command pipe closes) exits too.

Start.  The coordinator binds all N sockets itself, before it spawns a worker, and hands
each worker its socket.  The group is then complete from the first datagram on and never
changes: what arrives while the workers start (1-3 s) waits in their own sockets' buffers,
and none is handed to a socket that nobody will read (the kernel discards the queue of a
socket that closes, and re-spreads senders whenever the group changes).

Hand-over.  Two one-way pipes per worker: commands in, read by a thread of the worker with
blocking reads; intervals out, written whole by another thread with blocking writes (an
event loop's reader makes its descriptor non-blocking, and a non-blocking pipe fails a
large write halfway, which breaks the framing).  The worker's loop keeps receiving while an
interval is written, and the coordinator reads it on an executor thread.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
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


def worker_main(
    spec: WorkerSpec, commands: Connection, answers: Connection, sock: socket.socket
) -> None:
    """The entry point of a worker process: ``sock`` is its bound UDP socket."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come from the coordinator
    configure(spec.log_level, spec.json_logs)
    uvloop.run(_serve(spec, commands, answers, sock))


async def _serve(
    spec: WorkerSpec, commands: Connection, answers: Connection, sock: socket.socket
) -> None:
    loop = asyncio.get_running_loop()
    mapping = None
    if spec.mapping is not None:
        path, text = spec.mapping
        mapping = parse_rules(text, yaml=is_yaml(path), source=path)
    aggregator = spec.aggregator.build(None, mapping)  # the coordinator guards the merge
    gc_policy = GcPolicy()  # as in the main process: no full collections over the interval
    gc_policy.start()
    receive = aggregator.receive if aggregator.receives else None
    host, port = sock.getsockname()[:2]
    listener = DatagramListener(
        Address(host, port),
        aggregator.ingest,
        spec.rcvbuf,
        reuse_port=True,
        receive=receive,
        pause=spec.read_pause,
        sock=sock,
    )
    listener.start_reading(loop)
    answers.send("ready")
    inbox: asyncio.Queue[object] = asyncio.Queue()
    threading.Thread(target=_read_commands, args=(commands, loop, inbox), daemon=True).start()
    with ThreadPoolExecutor(1, thread_name_prefix="hand-over") as writer:
        while True:
            command = await inbox.get()
            if isinstance(command, tuple):  # ("mapping", text, yaml, path): checked already
                aggregator.remap(parse_rules(command[1], yaml=command[2], source=command[3]))
                continue
            if command in ("stop", "gone"):
                listener.stop_reading()
            if command != "gone":
                with gc_policy.pause():  # survivors of the hand-over are frozen after it
                    wire = to_wire(aggregator.swap())
                await loop.run_in_executor(writer, answers.send, wire)  # whole, blocking
            if command in ("stop", "gone"):
                return


def _read_commands(
    commands: Connection, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[object]
) -> None:
    """The command reader's thread: blocking reads, each command handed to the loop."""
    while True:
        try:
            command = commands.recv()
        except (EOFError, OSError):  # the coordinator is gone
            command = "gone"
        loop.call_soon_threadsafe(inbox.put_nowait, command)
        if command in ("stop", "gone"):
            return


def bind_group(address: Address, count: int, rcvbuf: int) -> list[socket.socket]:
    """``count`` UDP sockets in one ``SO_REUSEPORT`` group on ``address`` (port 0: the
    first one's free port for all), each with its receive buffer asked for."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    group: list[socket.socket] = []
    port = address.port
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            group.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((address.host, port))
            port = sock.getsockname()[1]
    except OSError:
        for sock in group:
            sock.close()
        raise
    return group


class WorkerPool:
    """The coordinator's handle on its workers: a `statsd_ao.pipeline.PartSource`."""

    def __init__(self, spec: WorkerSpec, count: int, address: Address) -> None:
        self._spec = spec
        self._count = count
        self._address = address
        self._processes: list[multiprocessing.process.BaseProcess] = []
        self._commands: list[Connection] = []  # to each worker
        self._answers: list[Connection] = []  # from each worker
        self._last: list[Snapshot] | None = None  # the workers' last intervals, once closed
        self.bound: Address | None = None

    def describe(self) -> str:
        return f"udp {self.bound or self._address} ({self._count} worker processes)"

    async def open(self) -> None:
        """Start the workers (port 0: one free port for all of them)."""
        self.bound = await self._start(self._address)
        log.info("listening on %s", self.describe())

    async def _start(self, address: Address) -> Address:
        group = bind_group(address, self._count, self._spec.rcvbuf)
        bound = Address(address.host, group[0].getsockname()[1])
        try:
            context = multiprocessing.get_context("spawn")
            for sock in group:
                command_in, command_out = context.Pipe(duplex=False)
                answer_in, answer_out = context.Pipe(duplex=False)
                process = context.Process(
                    target=worker_main,
                    args=(self._spec, command_in, answer_out, sock),
                    daemon=True,
                )
                process.start()
                command_in.close()
                answer_out.close()
                self._processes.append(process)
                self._commands.append(command_out)
                self._answers.append(answer_in)
            try:
                await asyncio.gather(*(self._receive(answers) for answers in self._answers))
            except EOFError as error:  # a worker died starting (its pipe closed)
                raise OSError(f"a worker process did not start: {error!r}") from error
        finally:
            for sock in group:  # each worker holds its own copy
                sock.close()
        return bound

    def remap(self, text: str, path: str) -> None:
        """Hand reloaded mapping rules (checked by the coordinator) to every worker."""
        for commands in self._commands:
            commands.send(("mapping", text, is_yaml(path), path))

    async def take(self) -> list[Snapshot]:
        """Every worker's interval (once closed, their last ones)."""
        if self._last is not None:
            last, self._last = self._last, []
            return last
        return await self._ask("swap")

    async def close(self) -> None:
        """Stop the workers: each drains its socket and hands over its last interval, which
        the next `take` (the final flush) returns; then they exit."""
        if not self._commands:
            return
        try:
            self._last = await self._ask("stop")
        finally:
            for conn in (*self._commands, *self._answers):
                conn.close()
            self._commands, self._answers = [], []
        for process in self._processes:
            await asyncio.get_running_loop().run_in_executor(None, process.join, WORKER_TIMEOUT)
            if process.is_alive():
                process.kill()

    async def _ask(self, command: str) -> list[Snapshot]:
        """Each worker's answer to ``command``; a worker that is gone loses its interval,
        said loudly, and never keeps the others' answers from being read."""
        reached: list[tuple[int, Connection]] = []
        for index, (commands, answers) in enumerate(
            zip(self._commands, self._answers, strict=True)
        ):
            try:
                commands.send(command)
            except OSError as error:
                log.error("worker %d is gone (%r): its interval is lost", index, error)
                continue
            reached.append((index, answers))
        results = await asyncio.gather(
            *(self._receive(answers) for _, answers in reached), return_exceptions=True
        )
        parts = []
        for (index, _), answer in zip(reached, results, strict=True):
            if isinstance(answer, tuple):
                parts.append(from_wire(answer))
            else:  # a worker that died loses its interval: say so loudly
                log.error("worker %d did not answer: %r", index, answer)
        return parts

    async def _receive(self, conn: Connection) -> object:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(WORKER_TIMEOUT):  # not wait_for: see HttpSink._dispatch
            return await loop.run_in_executor(None, conn.recv)
