"""What every fake backend of the tests shares: a real loopback HTTP server, scripted faults,
and waiting on what it has seen (never on a timer).

`FakeAppOptics` (tests/fakeapi.py) and `FakeOtlp` (tests/fakeotlp.py) differ in their routes
and in how strictly they judge a body; their lifecycle, their fault script and their waits are
this class.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, Self, TypeVar

from aiohttp import web

# Seconds a closing server gives its open connections.
SHUTDOWN_TIMEOUT = 2.0
# Request bodies a fake reads at most (the proxy's posts stay far below).
MAX_BODY_BYTES = 64 << 20

Fault = TypeVar("Fault")


@dataclass(frozen=True, slots=True)
class DropFault:
    """Read the request, then abort the connection without answering."""


@dataclass(frozen=True, slots=True)
class DelayFault:
    """Wait ``seconds`` (cut short by close()), then handle the request normally."""

    seconds: float


class LoopbackServer(Generic[Fault]):
    """A fake backend on a real loopback port.  Subclasses add their routes (`routes`) and
    say what they have seen (`describe`); state is touched only on the loop thread."""

    def __init__(self) -> None:
        self.down = False  # while True every request is answered 503 (script untouched)
        self.in_flight = 0
        self._script: deque[Fault] = deque()
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._base: str | None = None

    def routes(self, app: web.Application) -> None:
        """Add the fake's routes to ``app``."""
        raise NotImplementedError

    def describe(self) -> str:
        """A one-line summary of what the fake has seen, for failure messages."""
        raise NotImplementedError

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Bind ``host:port`` (0: any free port) and serve until close()."""
        if self._runner is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound = self._runner.addresses[0][1]
        self._base = f"http://[{host}]:{bound}" if ":" in host else f"http://{host}:{bound}"

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT``."""
        if self._base is None:
            raise RuntimeError(f"{type(self).__name__} not started")
        return self._base

    async def close(self) -> None:
        """Release pending delays, stop listening and close every connection. Idempotent."""
        self._closing.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def script(self, faults: Iterable[Fault]) -> None:
        """Queue behaviours; each request consumes one before normal handling."""
        self._script.extend(faults)

    @property
    def pending_faults(self) -> int:
        return len(self._script)

    async def wait_for(self, predicate: Callable[[Self], bool], timeout: float = 10.0) -> None:
        """Return once ``predicate(self)`` holds; it is re-checked when a request arrives or
        is answered, never on a timer. Raises TimeoutError after ``timeout`` seconds."""
        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(lambda: predicate(self))
            except TimeoutError:
                name = getattr(predicate, "__qualname__", repr(predicate))
                msg = f"predicate {name} still false after {timeout}s; {self.describe()}"
                raise TimeoutError(msg) from None

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _delay(self, seconds: float) -> None:
        """The one real sleep: slowness is the behaviour under test. close() ends it."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    @staticmethod
    def _drop(request: web.Request) -> None:
        if request.transport is not None:
            request.transport.abort()
