"""Run the real ``statsd-ao`` program in a subprocess for end-to-end tests.

The proxy binds port 0; `Proxy.start` reads its stderr until the "ready:" line, taking
the ports from the "listening on udp|tcp HOST:PORT" lines before it (events, not sleeps).
Stderr keeps being collected in the background so the pipe never fills; stdout (the dry
run's JSON) is collected too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Self

from statsd_ao.proxy_metrics import udp_socket_stats

_LISTENING = re.compile(r"listening on (udp|tcp) (\S+):(\d+)")
_READY = "ready: "
START_TIMEOUT = 20.0


# Bytes of loopback datagrams in flight at once, counting each one's kernel overhead.
SEND_WINDOW = 64 * 1024
SKB_OVERHEAD = 1024
# Seconds between two reads of /proc while waiting on what the kernel does not signal.
POLL = 0.001


_TCP_LISTEN, _TCP_OPEN = "0A", {"01": "established", "08": "close-wait"}


def _tcp_busy(port: int) -> list[str]:
    """What still keeps the proxy's TCP port busy, from /proc/net/tcp (IPv4 only)."""
    busy = []
    with open("/proc/net/tcp") as table:
        for row in list(table)[1:]:
            local, state, queues = row.split()[1], row.split()[3], row.split()[4]
            if int(local.split(":")[1], 16) != port:
                continue
            if state == _TCP_LISTEN and int(queues.split(":")[1], 16):
                busy.append("connections waiting in the accept queue")
            elif state in _TCP_OPEN:
                busy.append(_TCP_OPEN[state])
    return busy


def _chunks(items: list[bytes], size: int) -> Iterator[list[bytes]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Proxy:
    """One ``python -m statsd_ao`` process with its output."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        """``command``: run that instead of ``python -m statsd_ao --udp 127.0.0.1:0 ...``,
        configured by ``env`` alone (as the container image is).  ``preexec`` runs in the
        child before the program (resource limits, a user)."""
        self.preexec = preexec
        self.command = command or [sys.executable, "-m", "statsd_ao"]
        self.args = [] if command else ["--udp", "127.0.0.1:0", *args]
        if not command and "--self-metrics" not in args:  # exact contents unless asked
            self.args += ["--self-metrics", "off"]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("STATSD_AO_")}
        self.env.pop("APPOPTICS_TOKEN", None)
        self.env.update(env or {})
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0  # UDP
        self.ports: dict[str, int] = {}
        self.stderr: list[str] = []
        self._new_line = asyncio.Event()
        self.stdout: list[bytes] = []
        self._readers: list[asyncio.Task[None]] = []
        self._sock: socket.socket | None = None  # created by the first send()

    async def start(self) -> Self:
        self.process = await asyncio.create_subprocess_exec(
            *self.command,
            *self.args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=self.preexec,
        )
        listening = asyncio.get_running_loop().create_future()
        assert self.process.stderr is not None and self.process.stdout is not None
        self._readers = [
            asyncio.create_task(self._read_stderr(self.process.stderr, listening)),
            asyncio.create_task(self._read_stdout(self.process.stdout)),
        ]
        try:
            await asyncio.wait_for(listening, START_TIMEOUT)
            self.port = self.ports.get("udp", 0)
        except RuntimeError:  # it exited on its own: keep its status
            await asyncio.wait_for(self.process.wait(), START_TIMEOUT)
            await asyncio.gather(*self._readers)
            raise
        except BaseException:
            await self.kill()
            raise
        return self

    async def _read_stderr(
        self, stream: asyncio.StreamReader, listening: asyncio.Future[int]
    ) -> None:
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            self.stderr.append(line)
            self._new_line.set()
            match = _LISTENING.search(line)
            if match:
                self.ports[match.group(1)] = int(match.group(3))
            if _READY in line and not listening.done():
                listening.set_result(0)
        if not listening.done():
            listening.set_exception(RuntimeError("proxy exited:\n" + self.log))

    async def _read_stdout(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            self.stdout.append(raw)

    async def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The first stderr line containing ``text``, waiting (on new lines) if needed."""
        async with asyncio.timeout(timeout):
            while True:
                found = next((line for line in self.stderr if text in line), None)
                if found is not None:
                    return found
                self._new_line.clear()
                await self._new_line.wait()

    @property
    def log(self) -> str:
        return "\n".join(self.stderr)

    async def send(
        self, lines: Iterable[bytes], per_datagram: int = 20, *, paced: bool = True
    ) -> int:
        """Send lines in datagrams of ``per_datagram`` lines; returns datagrams sent.

        Loopback UDP has no flow control: a burst larger than the proxy's receive buffer
        (as small as 208 KiB where net.core.rmem_max is the default) is dropped by the
        kernel whenever the proxy is slow to read.  So the bytes go out in windows well
        under that, each sent once the proxy has taken the previous one from its queue
        (unless ``paced`` is False: a test of drops wants the burst)."""
        if self._sock is None:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        datagrams = [b"\n".join(chunk) for chunk in _chunks(list(lines), per_datagram)]
        window = 0
        for datagram in datagrams:
            if paced and window + len(datagram) + SKB_OVERHEAD > SEND_WINDOW:
                await self.wait_taken()
                window = 0
            self._sock.sendto(datagram, ("127.0.0.1", self.port))
            window += len(datagram) + SKB_OVERHEAD
        if paced:
            await self.wait_taken()
        return len(datagrams)

    async def wait_taken(self, timeout: float = 10.0) -> None:
        """Return once the kernel holds nothing for the proxy's UDP port; fail loudly if it
        dropped anything.  The kernel signals neither, so /proc/net/udp is read until then,
        yielding to the loop between reads (the test's fake API runs on it)."""
        unread = 0
        try:
            async with asyncio.timeout(timeout):
                while (stats := udp_socket_stats(self.port)) is not None and stats.receive_queue:
                    unread = stats.receive_queue
                    await asyncio.sleep(POLL)
        except TimeoutError:
            raise AssertionError(f"proxy left {unread} bytes unread") from None
        drops = 0 if stats is None else stats.drops
        assert drops == 0, f"the kernel dropped {drops} datagrams for the proxy"

    async def wait_tcp_done(self, timeout: float = 10.0) -> None:
        """Return once the proxy has accepted, read to the end and closed every connection
        to its TCP port: none waits in the accept queue, none is established or half-closed
        by the peer (CLOSE_WAIT).  Read from /proc/net/tcp, as the kernel signals neither,
        yielding to the loop between reads."""
        try:
            async with asyncio.timeout(timeout):
                while busy := _tcp_busy(self.ports["tcp"]):
                    await asyncio.sleep(POLL)
        except TimeoutError:
            raise AssertionError(f"proxy left TCP connections open: {busy}") from None

    async def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``signum`` and wait for the exit status."""
        assert self.process is not None
        self.process.send_signal(signum)
        status = await asyncio.wait_for(self.process.wait(), timeout)
        await asyncio.gather(*self._readers)
        return status

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(ProcessLookupError):
            await self.kill()
        if self._sock is not None:
            self._sock.close()
