"""The durable outbox: every post handed to the sink is also kept on disk until it settles.

`HttpSink` calls `add` for each post it queues and `settle` once the post has left for good
(the API confirmed it, or it was lost and counted); a split post is one more piece to settle
(`split`).  What is not settled when the process ends, by SIGTERM after the drain deadline or
by kill -9, is found by `open` in the next run and delivered then, under its original
``time``.

The loop never touches the disk.  The posts added during one pass of the event loop form a
*segment*: at the end of the pass (``call_soon``) it is sealed and handed, with the
acknowledgements of that pass, to a single worker thread that writes in order
(`statsd_ao.io.spoolfile`).  A segment is fsync'ed before it counts as spooled; acknowledgements
are appended without fsync (a killed process loses none; a power cut may re-send a
confirmed post, which AppOptics stores once per series and time).  The posts are in memory
all along and are posted without waiting for the disk.

Bounded by ``max_bytes``: sealing a segment past it drops the oldest segments first, and
`on_drop` takes their posts out of the sink's queue (counted as lost ``spool_full``).  A
write that fails (disk full, I/O error) is counted and logged; its posts stay in memory
only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from statsd_ao.core.logs import RateLimitedLog
from statsd_ao.io import spoolfile
from statsd_ao.io.spoolfile import DEFAULT_MAX_BYTES, MIN_MAX_BYTES, Record, Scan, SpoolError

log = logging.getLogger(__name__)

Ticket = tuple[int, int]  # (segment number, index of the post in it)

# A segment is sealed early at this size, so dropping the oldest frees the room of a few.
SEGMENT_BYTES = 4 * 1024 * 1024
_RECORD_OVERHEAD = 20

__all__ = ["DEFAULT_MAX_BYTES", "Spool", "SpoolError", "Ticket"]


@dataclass(slots=True)
class _Segment:
    size: int
    pieces: dict[int, int] = field(default_factory=dict)  # index -> pieces not yet settled
    failed: bool = False  # its write failed: memory only, nothing to acknowledge


class Spool:
    """One spool directory, used by one proxy at a time (a lock file says which)."""

    def __init__(
        self,
        directory: str | Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        adopt_from: str | Path | None = None,
    ) -> None:
        """``adopt_from``: a directory where an earlier version kept this spool's posts
        (the spool root, before each sink had a subdirectory): `open` moves them here."""
        if max_bytes < MIN_MAX_BYTES:
            raise ValueError(f"the spool needs at least {MIN_MAX_BYTES} bytes")
        self.directory = Path(directory)
        self._adopt_from = Path(adopt_from) if adopt_from is not None else None
        self.max_bytes = max_bytes
        self.on_drop: Callable[[int], int] | None = None  # segment -> measurements dropped
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._lock_fd: int | None = None
        self._segments: dict[int, _Segment] = {}  # oldest first
        self._next = 1
        self._open: list[Record] = []
        self._open_bytes = 0
        self._acks: dict[int, list[int]] = {}
        self._scheduled = False
        self._jobs: set[asyncio.Future[object]] = set()
        self._full_log = RateLimitedLog(log, 60.0)  # the loop's
        self._error_log = RateLimitedLog(log, 60.0)  # the writer thread's
        self.bytes = 0  # of the segments kept (sealed, written or being written)
        self.segments_written = 0
        self.bytes_written = 0
        self.write_seconds = 0.0  # the writer thread's time in segment writes (fsync included)
        self.write_errors = 0
        self.segments_dropped = 0
        self.corrupt = 0  # records or files found damaged at start, skipped
        self.torn_writes = 0  # unfinished segment writes found at start, removed
        self.replayed = 0  # measurements a previous run left, found at start

    @property
    def segments(self) -> int:
        return len(self._segments)

    @property
    def damaged(self) -> dict[str, int]:
        return {"corrupt": self.corrupt, "torn_write": self.torn_writes}

    async def open(self) -> list[tuple[Ticket, Record]]:
        """Lock the directory and read what a previous run left, oldest first.  Raises
        `SpoolError` when the directory cannot be used."""
        loop = asyncio.get_running_loop()
        self._lock_fd = await loop.run_in_executor(self._executor, spoolfile.lock, self.directory)
        if self._adopt_from is not None:
            source = self._adopt_from
            moved = await loop.run_in_executor(
                self._executor, spoolfile.adopt, source, self.directory
            )
            if moved:
                log.info(
                    "spool: moved %d segments an earlier version left in %s to %s",
                    moved,
                    source,
                    self.directory,
                )
        found = await loop.run_in_executor(self._executor, self._scan)
        self.corrupt, self.torn_writes = found.corrupt, found.torn_writes
        stored: list[tuple[Ticket, Record]] = []
        for segment in found.segments:
            kept = self._segments[segment.number] = _Segment(segment.size)
            self.bytes += segment.size
            for index, record in segment.records.items():
                kept.pieces[index] = 1
                stored.append(((segment.number, index), record))
        self.replayed = sum(record.count for _, record in stored)
        if found.corrupt or found.torn_writes:
            log.warning(
                "spool %s: skipped %d damaged records or files (renamed .corrupt when a "
                "whole segment), removed %d unfinished writes",
                self.directory,
                found.corrupt,
                found.torn_writes,
            )
        return stored

    def _scan(self) -> Scan:
        found = spoolfile.scan(self.directory)
        self._next = spoolfile.next_number(self.directory)
        return found

    def add(self, body: bytes, count: int, expires: float) -> Ticket:
        """Keep a post (``expires``: a Unix time); it is written at the end of this pass."""
        if self._open_bytes + len(body) > SEGMENT_BYTES and self._open:
            self._seal()
        ticket = (self._next, len(self._open))
        self._segments.setdefault(self._next, _Segment(0)).pieces[ticket[1]] = 1
        self._open.append(Record(body, count, expires))
        self._open_bytes += len(body) + _RECORD_OVERHEAD
        self._schedule()
        return ticket

    def split(self, ticket: Ticket) -> None:
        """The post became two (both carry ``ticket``): one more piece to settle."""
        segment = self._segments.get(ticket[0])
        if segment is not None and ticket[1] in segment.pieces:
            segment.pieces[ticket[1]] += 1

    def holds(self, ticket: Ticket) -> bool:
        """Whether the post's segment is still kept (not dropped past ``max_bytes``)."""
        return ticket[0] in self._segments

    def durable(self, ticket: Ticket) -> bool:
        """Whether the post is on disk, or will be by `close` (its write has not failed)."""
        segment = self._segments.get(ticket[0])
        return segment is not None and not segment.failed and ticket[1] in segment.pieces

    def settle(self, ticket: Ticket) -> None:
        """A piece of the post has left for good; the last one acknowledges it."""
        segment = self._segments.get(ticket[0])
        if segment is None or ticket[1] not in segment.pieces:
            return  # dropped with its segment, or settled already
        segment.pieces[ticket[1]] -= 1
        if segment.pieces[ticket[1]]:
            return
        del segment.pieces[ticket[1]]
        self._acks.setdefault(ticket[0], []).append(ticket[1])
        self._schedule()

    async def written(self) -> None:
        """Wait until the writer thread has done every job handed to it so far."""
        await asyncio.gather(*self._jobs, return_exceptions=True)

    async def close(self) -> None:
        """Write what is sealed and acknowledged, fsync the acknowledgements, unlock."""
        if self._lock_fd is None:
            self._executor.shutdown(wait=False)
            return
        self._pass()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self._executor, self._safely, spoolfile.sync_acks, self.directory
        )
        await asyncio.gather(*self._jobs, return_exceptions=True)
        self._executor.shutdown(wait=True)
        os.close(self._lock_fd)
        self._lock_fd = None

    # -- the end of a pass ----------------------------------------------------------------

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._pass)

    def _pass(self) -> None:
        self._scheduled = False
        if self._open:
            self._seal()
        acks, self._acks = self._acks, {}
        for number, indices in acks.items():
            segment = self._segments.get(number)
            if segment is None:
                continue
            if not segment.pieces:
                self._forget(number)
            elif not segment.failed:
                self._run(spoolfile.append_acks, self.directory, number, indices)

    def _seal(self) -> None:
        number, records = self._next, self._open
        segment = self._segments[number]
        self._next += 1
        self._open, self._open_bytes = [], 0
        segment.size = len(spoolfile.SEGMENT_MAGIC) + sum(
            len(r.body) + _RECORD_OVERHEAD for r in records
        )
        for index in [i for i in range(len(records)) if i not in segment.pieces]:
            records[index] = Record(b"", 0, 0.0)  # settled before it was sealed: a placeholder
        if not segment.pieces:
            del self._segments[number]
            return
        self._make_room(segment.size, number)
        self.bytes += segment.size
        job = self._run(self._write, number, records)
        job.add_done_callback(lambda done: self._written(number, done))

    def _make_room(self, size: int, keep: int) -> None:
        while self.bytes + size > self.max_bytes:
            oldest = next((n for n in self._segments if n != keep), None)
            if oldest is None:
                return
            dropped = self.on_drop(oldest) if self.on_drop is not None else 0
            self.segments_dropped += 1
            self._forget(oldest)
            self._full_log.warning(
                "full",
                "spool %s is full (--spool-max-bytes %d): dropped its oldest segment, "
                "%d measurements",
                self.directory,
                self.max_bytes,
                dropped,
            )

    def _forget(self, number: int) -> None:
        segment = self._segments.pop(number)
        self.bytes -= segment.size
        self._run(spoolfile.remove_segment, self.directory, number)

    def _written(self, number: int, done: asyncio.Future[object]) -> None:
        if done.cancelled() or done.exception() is not None or done.result() is False:
            segment = self._segments.get(number)
            if segment is not None:
                segment.failed = True
                self.bytes -= segment.size
                segment.size = 0

    # -- the writer thread ----------------------------------------------------------------

    def _run(self, job: Callable[..., object], *args: object) -> asyncio.Future[object]:
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, self._safely, job, *args
        )
        self._jobs.add(future)
        future.add_done_callback(self._jobs.discard)
        return future

    def _write(self, number: int, records: list[Record]) -> bool:
        started = time.perf_counter()
        size = spoolfile.write_segment(self.directory, number, records)
        self.write_seconds += time.perf_counter() - started
        self.segments_written += 1
        self.bytes_written += size
        return True

    def _safely(self, job: Callable[..., object], *args: object) -> object:
        """Run one job on the writer thread; an OS error is counted and logged, never raised."""
        try:
            return job(*args)
        except OSError as error:
            self.write_errors += 1
            self._error_log.error(
                f"write:{error.errno}",
                "spool %s: %s failed: %s (%d spool errors so far; the posts stay in memory)",
                self.directory,
                getattr(job, "__name__", "a write").strip("_"),
                error.strerror or error,
                self.write_errors,
            )
            return False
