"""Where measurements go: the AppOptics API (aiohttp), or stdout in a dry run.

`HttpSink` keeps one aiohttp session (basic auth with the token, JSON content type) and a
fixed number of worker tasks, so at most ``concurrency`` posts are in flight.  `submit` only
enqueues; it never awaits, so a flush never waits for the network.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import sys
from collections.abc import Sequence
from typing import IO, Protocol

import aiohttp

from statsd_ao.batching import encode
from statsd_ao.logs import RateLimitedLog
from statsd_ao.measurements import Measurement

log = logging.getLogger(__name__)

Batch = Sequence[Measurement]


class Sink(Protocol):
    """Takes batches of at most batch-size measurements."""

    async def start(self) -> None: ...

    def submit(self, batch: Batch) -> None:
        """Queue a batch for delivery; never blocks."""

    async def drain(self, timeout: float) -> int:
        """Deliver what is queued within ``timeout`` seconds; return measurements left over."""

    async def close(self) -> None: ...


class DryRunSink:
    """Prints each post's JSON body on its own line instead of posting it."""

    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self.measurements = 0

    async def start(self) -> None:
        return None

    def submit(self, batch: Batch) -> None:
        self._stream.write(encode(batch) + b"\n")
        self._stream.flush()
        self.measurements += len(batch)

    async def drain(self, timeout: float) -> int:
        return 0

    async def close(self) -> None:
        return None


def basic_auth(token: str) -> str:
    """The Authorization header: the token is the user name, the password is empty."""
    return "Basic " + base64.b64encode(f"{token}:".encode()).decode("ascii")


class HttpSink:
    """Posts batches to ``<api_url>/v1/measurements`` with bounded concurrency."""

    def __init__(self, api_url: str, token: str, *, concurrency: int, timeout: float) -> None:
        self._url = api_url.rstrip("/") + "/v1/measurements"
        self._token = token
        self._concurrency = concurrency
        self._timeout = timeout
        self._queue: asyncio.Queue[Batch] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._errors = RateLimitedLog(log, interval=10.0)
        self.pending = 0  # measurements queued or in flight
        self.posted = 0
        self.failed = 0
        self.outcomes: dict[str, int] = {}

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": basic_auth(self._token), "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=self._timeout),
        )
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._concurrency)]

    def submit(self, batch: Batch) -> None:
        self.pending += len(batch)
        self._queue.put_nowait(batch)

    async def drain(self, timeout: float) -> int:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        return self.pending

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _work(self) -> None:
        while True:
            batch = await self._queue.get()
            try:
                await self._post(batch)
            finally:
                self.pending -= len(batch)
                self._queue.task_done()

    async def _post(self, batch: Batch) -> None:
        assert self._session is not None
        try:
            async with self._session.post(self._url, data=encode(batch)) as response:
                body = await response.read()
                outcome = str(response.status)
        except (aiohttp.ClientError, TimeoutError) as error:
            outcome, body = type(error).__name__, b""
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if outcome.startswith("2"):
            self.posted += len(batch)
            return
        self.failed += len(batch)
        self._errors.warning(
            outcome, "post of %d measurements failed: %s %s", len(batch), outcome, body[:300]
        )
