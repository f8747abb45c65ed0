"""The optional C loop for `Aggregator.ingest` (statsd_ao/core/_hotpath.c).

The extension is built when the package is installed with a C compiler at hand; without
one, or with ``STATSD_AO_PURE_PYTHON=1`` in the environment (statsd_ao/core/native.py), the
aggregator runs its own Python loop.  Both give the same results (tests/core/test_hotpath.py
compares them on arbitrary input); the C loop applies the common cases to the same
accumulator objects and hands every other line to the aggregator's Python code, which stays
the one definition of what a line means.

Its `Table` caches line shapes over their raw bytes in front of the aggregator's feeds dict,
tied to that dict's identity: it caches a feed the dict holds and takes it over (deletes the
entry), so the dict keeps only feeds the table could not cache; an aggregator invalidates
every cached feed by *replacing* its dict, never by clearing it.  It takes over the shape's
entry in the aggregator's shape cache too, keeps it while the record lives (the shape's
interval and the next), and puts it back there for the shape's next feed_for; it drops every
shape it holds when it sees that cache replaced.  ``Table.receive`` reads a
socket with ``recvmmsg`` and ingests every datagram in C.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from statsd_ao.core import accumulators, native
from statsd_ao.core.accumulators import Counter, Rated, SetOf, Summary

Feed = Callable[[bytes], None]
# A line shape's key: the bytes ``name:tail`` (the name holds no colon, so it is one to one
# with (name, tail) and costs one bytes object, not a tuple of two).
Feeds = dict[bytes, Feed]
FeedFor = Callable[[bytes, bytes, bytes], Feed]
Failed = Callable[[Feed, bytes, bytes, ValueError], None]
Errored = Callable[[bytes], None]


class Table(Protocol):
    """statsd_ao.core._hotpath.Table: one per aggregator."""

    def ingest(
        self,
        datagram: bytes,
        feeds: Feeds,
        shapes: Mapping[bytes, object],
        feed_for: FeedFor,
        failed: Failed,
        /,
    ) -> int:
        """The lines of the datagram, as the Python loop counts them."""
        ...

    def receive(  # noqa: PLR0917 (the C function's positional signature)
        self,
        fd: int,
        limit: int,
        owner: object,
        attributes: tuple[str, str],
        feed_for: FeedFor,
        failed: Failed,
        errored: Errored,
        /,
    ) -> tuple[int, int, int, int]:
        """(datagrams, bytes, lines, errno): see _hotpath.c."""
        ...

    def follow(self, feeds: Feeds, /) -> None:
        """Retire every record now unless ``feeds`` is the dict mirrored; mirror it."""
        ...

    def records(self) -> int:
        """Line shapes cached now, stale ones included."""
        ...

    def held(self, entries: Mapping[bytes, object], /) -> int:
        """Entries taken over from ``entries``, the feeds dict or the shape cache mirrored
        (0 for any other dict)."""
        ...

    def keys(self) -> list[bytes]:
        """Every record's key object, stale ones included."""
        ...


Native = Callable[[], Table]


def load() -> Native | None:
    """The C `Table` type, configured; None if it is not built or is switched off."""
    _hotpath = native.hotpath()
    if _hotpath is None:
        return None
    # The accumulators' and Rated's __slots__ as member descriptors: where the C loop finds
    # each one's state (the C Gauge's it knows).
    slots: list[tuple[str, type]] = [("total", Counter), ("values", Summary)]
    slots += [("weights", Summary), ("members", SetOf), ("acc", Rated), ("rate", Rated)]
    _hotpath.configure(
        tuple(vars(owner)[name] for name, owner in slots),
        accumulators,  # MAX_SUMMARY_VALUES and MAX_SET_MEMBERS, read at each datagram
    )
    table: Native = _hotpath.Table
    return table


NATIVE = load()


def describe() -> str:
    """Which loop runs, for the start-up log."""
    if NATIVE is not None:
        return "C loop (statsd_ao/core/_hotpath.c: shape table, recvmmsg)"
    if native.disabled():
        return f"pure Python ({native.DISABLE} is set)"
    return "pure Python (the C loop is not built: install with a C compiler for ~3x the speed)"
