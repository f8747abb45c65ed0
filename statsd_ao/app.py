"""Process lifecycle: startup -> main loop -> ordered shutdown, of parts built elsewhere.

`statsd_ao.compose` builds every part from the Config; `App` only opens, runs and closes
them.  Each part is opened onto one `contextlib.AsyncExitStack`, so a failed start closes
exactly what was opened, in reverse, and shutdown is the same unwinding:

    open:  endpoints (HTTP, admin) -> sinks -> [deliver] -> sources
    close: sources (after reading what the kernel already queued) -> final flush of the
           unfinished interval -> every sink drains within the shutdown timeout, side by
           side -> sinks close -> endpoints close (so /ready says "not ready" while draining)

A container stop therefore keeps the last interval.  The run ends when the shutdown trigger
returns: by default SIGTERM or SIGINT (signal handlers only set an event); tests pass their
own trigger and run the whole app in-process (as hypercorn's ``serve(shutdown_trigger=)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from statsd_ao.core.logs import fields
from statsd_ao.core.retry import Loss
from statsd_ao.flusher import Flusher
from statsd_ao.gcpolicy import GcPolicy
from statsd_ao.io.spool import SpoolError
from statsd_ao.pipeline import Sink, Source

log = logging.getLogger("statsd_ao")

ShutdownTrigger = Callable[[], Awaitable[object]]


@dataclass(slots=True)
class RunState:
    """What the health endpoint reads of the lifecycle (the app writes it)."""

    listening: bool = False  # every source is open
    delivering: bool = False  # the sinks are started and not draining
    last_flush_at: float = field(default_factory=time.monotonic)
    started: asyncio.Event = field(default_factory=asyncio.Event)  # set once all is open


class StartFailed(Exception):
    """A part could not be opened (already logged)."""


class App:
    """The proxy's parts and their lifecycle.

    ``endpoints`` (the HTTP endpoint, the etsy admin interface) have the `Source` shape but
    feed nothing; ``reload`` runs on SIGHUP; ``gc`` is started once everything is open.
    """

    def __init__(
        self,
        *,
        flusher: Flusher,
        sources: Sequence[Source],
        sinks: Sequence[Sink],
        endpoints: Sequence[Source] = (),
        state: RunState | None = None,
        shutdown_timeout: float,
        reload: Callable[[], None] | None = None,
        gc: GcPolicy | None = None,
        ready_message: str = "ready",
    ) -> None:
        self.flusher = flusher
        self.sources = tuple(sources)
        self.sinks = tuple(sinks)
        self.endpoints = tuple(endpoints)
        self.state = state if state is not None else RunState()
        self._shutdown_timeout = shutdown_timeout
        self._reload = reload
        self._gc = gc
        self._ready_message = ready_message
        self._final_points = 0
        self._hurry = asyncio.Event()  # a second signal: stop delivering at once
        self.lost = 0  # data points no sink could deliver or keep at shutdown

    async def run(self, shutdown_trigger: ShutdownTrigger | None = None) -> int:
        """Run until the trigger returns (default: SIGTERM or SIGINT; a second one cuts the
        delivery at shutdown short); the exit status."""
        stop = asyncio.Event()
        started = False
        try:
            async with AsyncExitStack() as stack:
                trigger = shutdown_trigger or self._signals(stack, stop)
                try:
                    await self._open(stack)
                except StartFailed:
                    return 1
                started = True
                watcher = asyncio.ensure_future(trigger())
                watcher.add_done_callback(lambda _: stop.set())
                stack.callback(watcher.cancel)
                log.info("%s", self._ready_message)
                self.state.started.set()
                await self.flusher.run(stop)
                log.info(
                    "shutting down: final flush, then up to %gs to deliver (a second signal "
                    "stops at once)",
                    self._shutdown_timeout,
                )
        finally:
            if started:  # (also when a part's close failed: what it did is still said)
                self._summary()
        return 0

    # -- opening -------------------------------------------------------------------------

    async def _open(self, stack: AsyncExitStack) -> None:
        for endpoint in self.endpoints:
            await _open_part(stack, endpoint, "cannot listen on")
        for sink in self.sinks:
            await self._start_sink(stack, sink)
        stack.push_async_callback(self._deliver)
        for source in self.sources:
            await _open_part(stack, source, "cannot listen on")
        self.state.listening = self.state.delivering = True
        stack.callback(self._stopped_listening)
        if self._gc is not None:
            self._gc.start()
        if self._reload is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._reload)
            stack.callback(asyncio.get_running_loop().remove_signal_handler, signal.SIGHUP)

    async def _start_sink(self, stack: AsyncExitStack, sink: Sink) -> None:
        try:
            await sink.start()
        except (SpoolError, OSError) as error:
            log.error("%s", error)
            await sink.close()
            raise StartFailed from error
        stack.push_async_callback(sink.close)

    def _signals(self, stack: AsyncExitStack, stop: asyncio.Event) -> ShutdownTrigger:
        """SIGTERM / SIGINT stop the proxy; a second one while it delivers at shutdown stops
        the delivery (what is left is kept in the spool or counted as lost).  The handlers
        stay until everything is closed: installed first, removed last."""
        loop = asyncio.get_running_loop()

        def signalled() -> None:
            if stop.is_set():
                log.warning("second signal: ending the delivery now")
                self._hurry.set()
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, signalled)
            stack.callback(loop.remove_signal_handler, signum)
        return stop.wait

    def _stopped_listening(self) -> None:
        self.state.listening = False

    # -- closing -------------------------------------------------------------------------

    async def _deliver(self) -> None:
        """After the sources closed: the final flush, then every sink drains side by side
        (one that is down never holds another back) within the shutdown timeout."""
        if self.state.delivering:  # (not when a source failed to open)
            try:
                self._final_points = (await self.flusher.flush_final()).measurements
            except Exception:  # a bug: still deliver what is pending and exit in time
                log.exception("the final flush failed")
        self.state.delivering = False
        left = await self._drain_all()
        for sink, lost in zip(self.sinks, left, strict=True):
            if lost:
                log.error("shutdown: %d measurements could not be delivered (%s)", lost, sink.name)
        self.lost = sum(left)

    async def _drain_all(self) -> list[int]:
        """Every sink's drain, side by side, until all are done or a second signal comes.
        A drain cut short reports nothing here: its sink's `close` keeps or counts the rest."""
        drains = [asyncio.ensure_future(s.drain(self._shutdown_timeout)) for s in self.sinks]
        hurry = asyncio.ensure_future(self._hurried())
        running = set(drains)
        while running and not hurry.done():
            await asyncio.wait({*running, hurry}, return_when=asyncio.FIRST_COMPLETED)
            running = {drain for drain in running if not drain.done()}
        hurry.cancel()
        for drain in drains:
            drain.cancel()
        results = await asyncio.gather(*drains, return_exceptions=True)
        return [left if isinstance(left, int) else 0 for left in results]

    async def _hurried(self) -> int:
        await self._hurry.wait()
        return 0

    def _summary(self) -> None:
        # A drain cut short by a second signal reports nothing: its sink's close counted it.
        at_close = sum(sink.lost.get(Loss.SHUTDOWN.value, 0) for sink in self.sinks)
        self.lost = max(self.lost, at_close)
        for sink in self.sinks:
            lost = dict(sink.lost)
            log.info(
                "%s: %d delivered, lost %s, %d kept in the spool for the next run",
                sink.name,
                sink.delivered,
                lost or "none",
                sink.kept,
                extra=fields(sink=sink.name, delivered=sink.delivered, lost=lost, kept=sink.kept),
            )
        kept = sum(sink.kept for sink in self.sinks)
        log.info(
            "stopped: %d lines received, final flush of %d measurements, %d undelivered, "
            "%d kept in the spool for the next run",
            self.flusher.lines,
            self._final_points,
            self.lost,
            kept,
            extra=fields(
                lines=self.flusher.lines,
                final_flush=self._final_points,
                undelivered=self.lost,
                kept=kept,
            ),
        )


async def _open_part(stack: AsyncExitStack, part: Source, failed: str) -> None:
    """Open ``part`` and push its close; a failure is logged and ends the start."""
    try:
        await part.open()
    except OSError as error:
        log.error("%s %s: %s", failed, part.describe(), error.strerror or error)
        with contextlib.suppress(Exception):
            await part.close()
        raise StartFailed from error
    stack.push_async_callback(part.close)
