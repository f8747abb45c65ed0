"""Where measurements go: the AppOptics API (aiohttp), or stdout in a dry run.

`HttpSink` theory of operation.  `submit` encodes a batch once and queues it in the
`Outbox` (bounded by measurements; when full, the oldest data is dropped and counted); it
never awaits, so a flush never waits for the network.  One dispatcher task starts posts
while the `Gate` allows (at most ``concurrency`` in flight, one while the API is failing)
and sleeps until the next parcel is ready, the gate opens, a parcel expires, or something
changes.  Each post's answer goes to `statsd_ao.io.settling.Settler`, which settles the
parcel (delivered, partly delivered, split, rejected, or queued again) and keeps the
counts.  `drain` gives the rest a deadline; whatever is still pending then is counted as
lost at shutdown.

Every measurement handed to `submit` ends up in exactly one of: `posted`, a reason in
`lost`, or `pending`.  The counters are plain attributes for self-metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random as _random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Protocol
from urllib.parse import quote

import aiohttp
import orjson

from statsd_ao.core.annotations import Annotation
from statsd_ao.core.batching import encode
from statsd_ao.core.dialect import AppOptics, Dialect
from statsd_ao.core.logs import RateLimitedLog, fields
from statsd_ao.core.measurements import Measurement
from statsd_ao.core.outbox import MAX_PENDING, Outbox, Parcel
from statsd_ao.core.retry import (
    DEFAULT_BACKOFF,
    DENIED_BACKOFF,
    MAX_AGE,
    MAX_ATTEMPTS,
    Answer,
    Backoff,
    Gate,
    Loss,
    Policy,
)
from statsd_ao.io.settling import DRAIN_BACKOFF_CAP, LOG_INTERVAL, Settler
from statsd_ao.io.spool import Spool, Ticket
from statsd_ao.io.spoolfile import Record

log = logging.getLogger(__name__)

Batch = Sequence[Measurement]

# A post that got no answer after it was sent may have been stored.  Re-sending it risks a
# duplicate point; not re-sending risks losing it.  We re-send (docs/delivery.md, "Never
# two copies") and count those measurements in `HttpSink.unconfirmed`.
RESEND_UNCONFIRMED = True
# Errors before any byte of the request left: a re-send can never be a duplicate.
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
# Bytes of an answer's body read at most.  The body matters only for its summary and error
# list (a post holds at most 1,000 measurements: 1,000 errors of ~200 bytes); the rest of a
# larger body is left unread and its connection closed, so a broken or hostile API cannot
# make the proxy hold a gigabyte.
MAX_ANSWER_BYTES = 1 << 20


async def read_bounded(stream: aiohttp.StreamReader, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of ``stream``, and whether there was more."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await stream.read(limit + 1 - size)
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)[:limit], True


class Poster(Protocol):
    """Takes posts of at most batch-size measurements (`statsd_ao.io.appoptics.AppOpticsSink`
    hands them over): the API (`HttpSink`) or stdout (`DryRunSink`)."""

    @property
    def is_open(self) -> bool: ...

    @property
    def kept(self) -> int: ...

    @property
    def posted(self) -> int:
        """Measurements delivered (a dry run: printed)."""
        ...

    @property
    def lost(self) -> Mapping[str, int]:
        """Measurements given up, by reason."""
        ...

    async def start(self) -> None: ...

    def submit(self, batch: Batch) -> None:
        """Queue a batch for delivery; never blocks."""

    def annotate(self, stream: str, annotation: Annotation) -> None:
        """Deliver one annotation (never blocks)."""

    async def drain(self, timeout: float) -> int:
        """Deliver what is queued within ``timeout`` seconds; return measurements lost."""
        ...

    async def close(self) -> None: ...


class DryRunSink:
    """Prints each post's JSON body on its own line instead of posting it."""

    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self.measurements = 0
        self.kept = 0  # nothing is ever kept for a next run
        self.lost: dict[str, int] = {}  # nothing is ever lost after conversion

    @property
    def posted(self) -> int:
        return self.measurements

    @property
    def is_open(self) -> bool:
        return True  # stdout is always there

    async def start(self) -> None:
        return None

    def annotate(self, stream: str, annotation: Annotation) -> None:
        self._stream.write(orjson.dumps({"annotation": annotation, "stream": stream}) + b"\n")
        self._stream.flush()

    def submit(self, batch: Batch) -> None:
        self._stream.write(encode(batch) + b"\n")
        self._stream.flush()
        self.measurements += len(batch)

    async def drain(self, timeout: float) -> int:
        return 0

    async def close(self) -> None:
        return None


# Annotation posts: attempts on 5xx / 429 / network errors, and the first backoff (doubling).
ANNOTATION_ATTEMPTS = 4
ANNOTATION_BACKOFF = 1.0


class HttpSink:
    """Posts batches to ``<api_url>/v1/measurements``; retries, splits, buffers, counts.

    What is particular to the API is its `Dialect` (``dialect``; by default `AppOptics` on
    ``api_url`` with ``token``): the OTLP sink (`statsd_ao.otlp.sink`) delivers through an
    `HttpSink` in the OTLP dialect, handing it encoded requests with `submit_body`.

    ``max_pending`` bounds the measurements held (queued and in flight); ``max_age`` (seconds
    since `submit`) and ``max_attempts`` bound each batch (see `statsd_ao.core.retry`).
    ``random``, ``clock`` (monotonic, for scheduling and ages) and ``wall`` (epoch seconds,
    for HTTP dates and rate-limit resets) are injectable for tests.
    """

    def __init__(
        self,
        api_url: str,
        token: str,
        *,
        concurrency: int,
        timeout: float,
        max_pending: int = MAX_PENDING,
        max_age: float = MAX_AGE,
        max_attempts: int = MAX_ATTEMPTS,
        backoff: Backoff = DEFAULT_BACKOFF,
        denied_backoff: Backoff = DENIED_BACKOFF,
        resend_unconfirmed: bool = RESEND_UNCONFIRMED,
        spool: Spool | None = None,
        random: Callable[[], float] = _random.random,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_latency: Callable[[float], None] | None = None,
        dialect: Dialect | None = None,
    ) -> None:
        """``on_latency`` gets the seconds from sending each measurement post to its answer
        (the app's self-metrics); ``dialect``: the API's particulars (`AppOptics` on
        ``api_url`` with ``token`` when None)."""
        self._dialect = dialect if dialect is not None else AppOptics(api_url, token)
        self._url = self._dialect.url
        self._concurrency = concurrency
        self._timeout = timeout
        self._policy = Policy(backoff, max_attempts, max_age)
        self._gate = Gate(backoff, denied_backoff, random)
        self._outbox = Outbox(max_pending)
        self._spool = self.spool = spool
        if spool is not None:
            spool.on_drop = self._spool_dropped
        self._clock = clock
        self._wall = wall
        self._seq = itertools.count()
        self._session: aiohttp.ClientSession | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._posts: set[asyncio.Task[None]] = set()
        self._flying_parcels: dict[int, Parcel] = {}  # by id(): taken, no answer handled yet
        self._annotating: set[asyncio.Task[None]] = set()
        self._flying = 0  # posts started and not finished
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = False
        self._deadline = 0.0
        self._closed = False
        self._stopping: asyncio.Future[int] | None = None
        self._log = RateLimitedLog(log, interval=LOG_INTERVAL)
        self._settler = Settler(
            self._outbox,
            self._policy,
            self._gate,
            spool,
            self._dialect,
            resend_unconfirmed=resend_unconfirmed,
            denied_cap=denied_backoff.cap,
            random=random,
            clock=clock,
            wall=wall,
        )
        self.kept = 0  # measurements left in the spool at exit, for the next run
        self.annotations_posted = 0
        self.annotations_lost = 0
        self._on_latency = on_latency

    # The delivery counters (self-metrics, tests) are the settler's (statsd_ao.io.settling).
    @property
    def posted(self) -> int:
        return self._settler.posted

    @property
    def lost(self) -> dict[str, int]:
        return self._settler.lost

    @property
    def outcomes(self) -> dict[str, int]:
        return self._settler.outcomes

    @property
    def retries(self) -> int:
        return self._settler.retries

    @property
    def splits(self) -> int:
        return self._settler.splits

    @property
    def unconfirmed(self) -> int:
        return self._settler.unconfirmed

    @property
    def failing_for(self) -> float | None:
        """Seconds since the API last answered a post usefully, while it fails; else None."""
        since = self._gate.failing_since
        return None if since is None else self._clock() - since

    @property
    def pending(self) -> int:
        """Measurements queued or in flight."""
        return self._outbox.pending

    @property
    def is_open(self) -> bool:
        """Started and not shutting down: able to post (for the readiness check)."""
        return self._session is not None and not (self._draining or self._closed)

    async def start(self) -> None:
        """Open the spool (`SpoolError` if it cannot be used) and queue what a previous run
        left in it; then start posting."""
        if self._spool is not None:
            self._replay(await self._spool.open())
        self._session = aiohttp.ClientSession(
            headers=dict(self._dialect.headers),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
        )
        self._dispatcher = asyncio.create_task(self._dispatch())
        self._dispatcher.add_done_callback(_report_crash)

    def submit(self, batch: Batch) -> None:
        if not batch:
            return
        if self._closed:
            self._settler.lose(Loss.SHUTDOWN, len(batch))
            return
        self.submit_body(encode(batch), len(batch))

    def submit_body(self, body: bytes, count: int) -> None:
        """Queue one post already encoded in the dialect, of ``count`` data points; never
        blocks."""
        if self._closed:
            self._settler.lose(Loss.SHUTDOWN, count)
            return
        now = self._clock()
        expires = now + self._policy.max_age
        ticket = None
        if self._spool is not None:
            ticket = self._spool.add(body, count, self._wall() + self._policy.max_age)
        self._settler.queue(
            Parcel(body, count, expires, next(self._seq), not_before=now, ticket=ticket)
        )
        self._changed()

    async def drain(self, timeout: float) -> int:
        """Deliver what is pending within ``timeout`` seconds, then stop.  Returns the
        measurements left undelivered, which are counted as lost at shutdown.

        Ends early once nothing more can be delivered in time: the API denied the token,
        or it asked for a wait past the deadline."""
        if not self._closed and self._dispatcher is not None:
            self._draining = self._settler.draining = True
            now = self._clock()
            self._deadline = now + timeout
            self._gate.hurry(now, DRAIN_BACKOFF_CAP)
            self._outbox.hurry(now + DRAIN_BACKOFF_CAP)
            self._changed()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._idle.wait()
        return await self._stop()

    def annotate(self, stream: str, annotation: Annotation) -> None:
        """Post one annotation event (never blocks); see `_annotate`."""
        if self._closed or self._session is None:
            self._annotation_failed(stream, "shutting down")
            return
        task = asyncio.create_task(self._annotate(stream, annotation))
        self._annotating.add(task)
        task.add_done_callback(self._annotating.discard)

    async def _annotate(self, stream: str, annotation: Annotation) -> None:
        """A few attempts with backoff on transient failures; annotations are rare and
        small, so they do not go through the measurement outbox."""
        url = self._url.replace("/v1/measurements", f"/v1/annotations/{quote(stream, safe='')}")
        body = orjson.dumps(annotation)
        answer = Answer(error="not tried")
        for attempt in range(ANNOTATION_ATTEMPTS):
            answer = await self._post(body, url)
            if answer.status is not None and 200 <= answer.status < 300:
                self.annotations_posted += 1
                return
            if answer.status is not None and answer.status < 500 and answer.status != 429:
                break  # the API refused it: trying again changes nothing
            if attempt + 1 < ANNOTATION_ATTEMPTS:
                await asyncio.sleep(ANNOTATION_BACKOFF * 2**attempt)
        self._annotation_failed(stream, answer.label)

    def _annotation_failed(self, stream: str, why: str) -> None:
        self.annotations_lost += 1
        self._log.warning(
            "annotation", "could not post an annotation to stream %r: %s", stream, why
        )

    async def close(self) -> None:
        for task in self._annotating:  # done after a drain; after one cut short: no more wait
            task.cancel()
        await self._stop()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # -- scheduling ---------------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Start every post the gate allows, then sleep until something may change that."""
        while not self._closed:
            self._wake.clear()
            now = self._clock()
            for expired in self._outbox.expire(now):
                self._settler.lose(Loss.TOO_OLD, expired.count, parcel=expired)
            while self._room() and self._gate.is_open(now):
                parcel = self._outbox.take(now)
                if parcel is None:
                    break
                self._launch(parcel)
            self._update_idle()
            # Not asyncio.wait_for: in 3.11 it swallows a cancel that lands with the wake-up.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._sleep(now)):
                    await self._wake.wait()

    def _room(self) -> bool:
        return self._flying < self._gate.limit(self._concurrency)

    def _sleep(self, now: float) -> float | None:
        """Seconds until the next expiry or, with room for a post, the next possible one.
        None: nothing is queued, and only a submit or a finished post can change that."""
        expiry, ready = self._outbox.next_expiry(), self._outbox.next_ready()
        if expiry is None or ready is None:
            return None
        when = min(expiry, max(self._gate.open_at, ready)) if self._room() else expiry
        return max(when - now, 0.0)

    def _launch(self, parcel: Parcel) -> None:
        self._flying += 1
        self._flying_parcels[id(parcel)] = parcel
        task = asyncio.create_task(self._deliver(parcel, charged=not self._gate.probing))
        self._posts.add(task)
        task.add_done_callback(self._posts.discard)

    def _changed(self) -> None:
        self._wake.set()
        self._update_idle()

    def _update_idle(self) -> None:
        """``_idle`` is what `drain` waits for: nothing pending, or nothing deliverable."""
        if self._outbox.pending and not self._hopeless():
            self._idle.clear()
        else:
            self._idle.set()

    def _hopeless(self) -> bool:
        """Draining, nothing in flight, and nothing more to gain by waiting: the gate stays
        shut until the deadline, or the API is failing and every queued post is safe in the
        spool already (the next run delivers it: shutdown need not wait out the timeout)."""
        if not self._draining or self._flying:
            return False
        if self._gate.denied or self._gate.open_at >= self._deadline:
            return True
        return self._gate.probing and self._all_spooled()

    def _all_spooled(self) -> bool:
        spool = self._spool
        if spool is None:
            return False
        return all(p.ticket is not None and spool.durable(p.ticket) for p in self._outbox.queue)

    # -- one post -----------------------------------------------------------------------

    async def _deliver(self, parcel: Parcel, *, charged: bool) -> None:
        """One post and what follows from it.  Cancelled (at the drain deadline), the parcel
        stays in flight, and `_stop` counts it."""
        settled = False
        try:
            posted_at = time.monotonic()
            answer = await self._post(parcel.body)
            if self._on_latency is not None:
                self._on_latency(time.monotonic() - posted_at)
            self._outbox.settle(parcel)
            self._flying_parcels.pop(id(parcel), None)
            settled = True
            self._settler.settle(parcel, answer, charged=charged)
        except Exception:  # a bug in this module: say so loudly, count the data, go on
            log.exception("internal error delivering %d measurements", parcel.count)
            if not settled:
                self._outbox.settle(parcel)
                self._flying_parcels.pop(id(parcel), None)
            self._settler.lose(Loss.INTERNAL, parcel.count, parcel=parcel)
        finally:
            self._flying -= 1
            self._changed()

    async def _post(self, body: bytes, url: str | None = None) -> Answer:
        """Post one body; every network failure becomes an `Answer`, never an exception."""
        assert self._session is not None
        try:
            extra = None if url is not None else self._dialect.body_headers(body)
            post = self._session.post(url or self._url, data=body, headers=extra)
            async with post as response:
                headers = {name.lower(): value for name, value in response.headers.items()}
                try:
                    raw, cut = await read_bounded(response.content, MAX_ANSWER_BYTES)
                except (aiohttp.ClientError, TimeoutError):
                    raw, cut = b"", False  # the status line and headers already say what happened
                if cut:
                    self._log.warning(
                        "answer-cut",
                        "the API answered %d with a body over %d bytes: read only that much",
                        response.status,
                        MAX_ANSWER_BYTES,
                    )
                return Answer(response.status, headers, raw, truncated=cut)
        except _NOT_SENT as error:
            return Answer(error=type(error).__name__)
        except (aiohttp.ClientError, TimeoutError) as error:
            # Conservative: any failure once connected may have followed a complete send.
            return Answer(error=type(error).__name__, sent=True)

    # -- accounting ---------------------------------------------------------------------

    def _replay(self, stored: Sequence[tuple[Ticket, Record]]) -> None:
        """Queue the posts a previous run left in the spool, under their original expiry."""
        now, wall = self._clock(), self._wall()
        for ticket, record in stored:
            expires = now + (record.expires - wall)
            parcel = Parcel(
                record.body, record.count, expires, next(self._seq), not_before=now, ticket=ticket
            )
            if expires <= now:
                self._settler.lose(Loss.TOO_OLD, record.count, parcel=parcel)
            else:
                self._settler.queue(parcel)
        if stored:
            log.info(
                "spool: %d measurements a previous run left to deliver (%d posts)",
                sum(record.count for _, record in stored),
                len(stored),
            )

    def _spool_dropped(self, segment: int) -> int:
        """The spool dropped ``segment`` to stay in its bound: its queued posts go too."""
        dropped = sum(parcel.count for parcel in self._outbox.discard(segment))
        self._settler.lose(Loss.SPOOL_FULL, dropped)
        self._changed()
        return dropped

    async def _keep(self, unsettled: Sequence[Parcel], left: int) -> int:
        """Close the spool at exit: what is on disk is kept for the next run; the rest (its
        write failed) is lost.  Returns the measurements lost."""
        assert self._spool is not None
        await self._spool.close()
        durable = self._spool.durable
        self.kept = sum(p.count for p in unsettled if p.ticket is not None and durable(p.ticket))
        if self.kept:
            log.info(
                "spool: %d measurements kept in %s for the next run",
                self.kept,
                self._spool.directory,
            )
        return max(left - self.kept, 0)

    async def _stop(self) -> int:
        """Cancel the dispatcher and posts in flight; count what is left as lost (or keep it
        in the spool).  Runs once, to its end: shielded, so a drain cancelled midway (a second
        signal) still leaves `close` a complete stop, never a half one."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop_once())
        return await asyncio.shield(self._stopping)

    async def _stop_once(self) -> int:
        self._closed = True
        remaining = self._deadline - self._clock() if self._draining else 0.0
        if self._annotating and remaining > 0:  # annotations get what is left of the drain
            await asyncio.wait(set(self._annotating), timeout=remaining)
        unsettled = [*self._flying_parcels.values(), *self._outbox.queue]
        tasks = [*self._posts, *self._annotating, *([self._dispatcher] if self._dispatcher else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        left = self._outbox.abandon()
        if self._spool is not None:
            left = await self._keep(unsettled, left)
        if left:
            self._settler.lose(Loss.SHUTDOWN, left)
        log.info(
            "delivery: %d measurements posted, %d retries, %d splits, %d unconfirmed",
            self.posted,
            self.retries,
            self.splits,
            self.unconfirmed,
            extra=fields(
                posted=self.posted,
                retries=self.retries,
                splits=self.splits,
                unconfirmed=self.unconfirmed,
            ),
        )
        self._changed()
        return left


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the delivery dispatcher stopped", exc_info=task.exception())
