"""Per-interval aggregation of StatsD lines: the hot path.

Theory of operation.  `Aggregator.ingest` splits each line into ``name``, ``value`` and
``tail`` with two ``bytes.partition`` calls and looks the line's shape, the bytes
``name:tail``, up in a per-interval dict of *feeds*.  A feed is a ready callable, usually the
series' accumulator (`statsd_ao.core.accumulators`) or its bound ``add``, so a line seen
before in this interval costs one dict lookup and one call.  A miss goes through `_feed_for`,
which parses the shape (cached across intervals in a bounded dict), names the series through
`Naming` and creates the accumulator.  A shape that cannot parse is cached too, as a feed that
raises its `ParseError`, so a flood of the same bad line is as cheap as good lines.
(bench/core_bench.py measures this path.)

Every feed raises only `ValueError` (a `ParseError` or ``float()``'s own) on bad input; the
loop counts it by reason and goes on with the next line.  Runs on the loop thread; never
awaits, never allocates per datagram beyond the split.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial

from statsd_ao.core.accumulators import Accumulator, Counter, Gauge, Rated, SetOf, Summary
from statsd_ao.core.cardinality import OVERFLOW_TAG, SHARED_OVERFLOW, CardinalityGuard
from statsd_ao.core.events import (
    CHECK_PREFIX,
    EVENT_PREFIX,
    Event,
    parse_event,
    parse_service_check,
)
from statsd_ao.core.gauge_memory import gauge_memory
from statsd_ao.core.hotpath import NATIVE, Errored, Feed, Feeds, Native
from statsd_ao.core.logs import RateLimitedLog
from statsd_ao.core.mapping import MappingRules
from statsd_ao.core.protocol import (
    Kind,
    ParseError,
    TagTuple,
    parse_shape,
    parse_value,
    parse_values,
    split_multi_metric,
)
from statsd_ao.core.sanitize import DELIBERATE, Naming

# Distinct line shapes remembered across intervals.  Past this the memory is cleared and
# rebuilt from traffic (a cost paid once per shape), so a flood of unique garbage cannot grow
# memory without bound.  100k shapes hold ~10x the 10,000 series of a busy service.
DEFAULT_SHAPE_LIMIT = 100_000
# Feeds cached per interval.  Normally one per line shape; under a cardinality attack every
# line may be a new shape, so past this the cache is cleared (memory stays bounded; those
# lines then pay the slow path).
DEFAULT_FEED_LIMIT = 200_000
# DogStatsD events kept per interval (they become annotations); past this they are dropped
# and counted: events are for deploys and incidents, not a stream.
MAX_EVENTS = 1000
# DogStatsD 1.3 timestamped samples: older than this they are dropped (a past interval's
# data waits in memory until the next flush; replaying older history is not a proxy's job),
# and a timestamp this far ahead of our clock is refused as a client clock problem.
DEFAULT_MAX_SAMPLE_AGE = 600.0
FUTURE_TOLERANCE = 60.0
# Gauge series whose last value is remembered for deltas in later intervals; past this the
# series idle the longest are forgotten (a delta then starts from 0, as for a new gauge).
GAUGE_MEMORY = 200_000

SeriesKey = tuple[Kind, str, TagTuple]
log = logging.getLogger(__name__)
EXAMPLE_BYTES = 120
# A parser bug (an exception other than ParseError) is logged with its traceback at most
# this often: every such line is counted as rejected, but a flood of one bad line must not
# flood the log.
PARSER_BUG_LOG_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class Resolved:
    """A parsed and named line shape: which series, at what sample rate, and when if given."""

    key: SeriesKey
    rate: float
    timestamp: int | None = None


@dataclass(slots=True)
class Snapshot:
    """One interval's data, handed over by `Aggregator.swap`."""

    series: dict[SeriesKey, Accumulator] = field(default_factory=dict)
    # Timestamped samples of earlier intervals, by interval start: posted with that time.
    past: dict[int, dict[SeriesKey, Accumulator]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)
    examples: dict[str, bytes] = field(default_factory=dict)
    lines: int = 0
    # The interval's line shapes (the feeds that fed it), handed over rather than freed in
    # `Aggregator.swap`: freeing 100,000 of them holds the loop ~12 ms, so the flusher lets
    # them go a chunk at a time (with the C loop the dict holds only the few feeds its table
    # did not take over).  Not part of the interval's data (never sent or merged).
    feeds: Feeds = field(default_factory=dict, compare=False, repr=False)


def _ignore(raw: bytes) -> None:
    """The feed of whitespace-only lines (``\\r`` of ``\\r\\n``) and of ``:`` after spaces."""
    if raw.strip():
        raise ParseError("empty name")


def _first_value_error(kind: Kind, value: bytes) -> ParseError | None:
    """None when the line has at least one valid value (of possibly several)."""
    try:
        parse_values(kind, value)
    except ParseError as error:
        parts = value.split(b":") if kind is not Kind.SET else []
        return None if any(_valid(kind, part) for part in parts) else error
    return None


def _valid(kind: Kind, part: bytes) -> bool:
    try:
        parse_value(kind, part)
    except ParseError:
        return False
    return True


def _done(raw: bytes) -> None:
    """The feed of a line already handled whole (an event or a service check)."""


def _rejecter(reason: str) -> Feed:
    def reject(raw: bytes) -> None:
        raise ParseError(reason)

    return reject


class Aggregator:
    """Accumulates StatsD lines for one flush interval at a time."""

    def __init__(
        self,
        naming: Naming,
        *,
        guard: CardinalityGuard | None = None,
        container_tag: str | None = None,
        interval: int = 10,
        clock: Callable[[], float] = time.time,
        max_sample_age: float = DEFAULT_MAX_SAMPLE_AGE,
        shape_limit: int = DEFAULT_SHAPE_LIMIT,
        feed_limit: int = DEFAULT_FEED_LIMIT,
        hot: Native | None = NATIVE,
    ) -> None:
        self._naming = naming
        self.naming = naming  # (its counters, for the self-metrics)
        # The C loop's line-shape table (statsd_ao/core/hotpath.py), in front of self._feeds.
        self._table = hot() if hot is not None else None
        self.guard = guard
        self._container_tag = container_tag
        self._interval = interval
        self._clock = clock
        self._max_sample_age = max_sample_age
        # Where the interval now being aggregated starts: set at each swap, so a timestamped
        # sample arriving between a tick and its swap still joins the interval being closed.
        now = clock()
        self._current_start = now - now % interval
        self._overflow_tags = naming.tags([OVERFLOW_TAG])
        self.folded_samples: dict[str, int] = {}  # per metric, since start
        self._shape_limit = shape_limit
        self._feed_limit = feed_limit
        # Line shape -> what it names; a plain shape (rate 1, no timestamp) as its bare key.
        # Replaced, never cleared: the C table takes over the entries of the shapes it
        # caches, and drops them when it sees another dict (remap, the shape limit).
        self._shapes: dict[bytes, SeriesKey | Resolved | ParseError] = {}
        self._gauges = gauge_memory(GAUGE_MEMORY)
        # Replaced, never cleared, whenever its feeds become invalid: the C table caches it
        # by identity (swap, forget, the feed limit), and takes over each feed it caches.
        self._feeds: Feeds = {}
        self._now = Snapshot()
        self._bug_log = RateLimitedLog(log, PARSER_BUG_LOG_INTERVAL, time.monotonic)

    def ingest(self, datagram: bytes) -> None:
        """Aggregate every line of a datagram.  Never raises on any input."""
        if not datagram:
            return
        if self._table is not None:  # the same loop in C (statsd_ao/core/hotpath.py)
            try:
                count = self._table.ingest(
                    datagram, self._feeds, self._shapes, self._feed_for, self._failed
                )
            except BaseException:  # (a bug) its lines still count, as in Python
                self._now.lines += datagram.count(b"\n") + 1 - datagram.endswith(b"\n")
                raise
            self._now.lines += count
            return
        lines = datagram.split(b"\n")
        self._now.lines += len(lines) - datagram.endswith(b"\n")
        self._lines(lines)

    @property
    def receives(self) -> bool:
        """`receive` is available: the C loop is loaded."""
        return self._table is not None

    def receive(self, fd: int, limit: int, errored: Errored) -> tuple[int, int, int]:
        """Read up to ``limit`` datagrams from the non-blocking socket ``fd`` (recvmmsg, in
        C) and ingest each, until it has none.  A datagram whose ingest raised (a bug) goes
        to ``errored``, called as from an except block.  (datagrams, bytes, errno of a
        receive error other than EAGAIN, else 0)."""
        if self._table is None:
            raise RuntimeError("receive() needs the C loop (see .receives)")
        datagrams, size, lines, error = self._table.receive(
            fd, limit, self, ("_feeds", "_shapes"), self._feed_for, self._failed, errored
        )
        self._now.lines += lines
        return datagrams, size, error

    def _lines(self, lines: list[bytes]) -> None:
        """The pure Python loop (the C loop's definition), without the line count."""
        feeds = self._feeds
        for line in lines:
            if not line:  # a blank line shares its key with ":" below; only ":" is an error
                continue
            name, _, rest = line.partition(b":")
            value, _, tail = rest.partition(b"|")
            key = name + b":" + tail
            feed = feeds.get(key)
            if feed is None:
                feed = self._feed_for(key, value, line)
            try:
                feed(value)
            except ValueError as error:
                self._failed(feed, value, line, error)

    def swap(self) -> Snapshot:
        """Hand over this interval's data and start a fresh interval, in O(1)."""
        done, self._now = self._now, Snapshot()
        done.feeds, self._feeds = self._feeds, {}
        if self._table is not None:  # (it would keep the old interval until the next line)
            self._table.follow(self._feeds)
        now = self._clock()
        self._current_start = now - now % self._interval
        return done

    @property
    def overflow_tags(self) -> TagTuple:
        """The tags of every metric's overflow series (the cardinality guard's)."""
        return self._overflow_tags

    @property
    def current(self) -> dict[SeriesKey, Accumulator]:
        """The current interval's series (read it, do not change it: see `forget`)."""
        return self._now.series

    def gauge_values(self) -> dict[SeriesKey, float]:
        """Every remembered gauge's value (gauges persist across intervals)."""
        return self._gauges.values()

    def forget(self, keys: Iterable[SeriesKey]) -> None:
        """Drop series from the current interval and from gauge memory (etsy's del*)."""
        for key in keys:
            self._now.series.pop(key, None)
            self._gauges.pop(key)
        self._feeds = {}  # no cached feed may keep feeding a forgotten accumulator

    def remap(self, mapping: MappingRules | None) -> None:
        """New mapping rules (a reload): every line shape is resolved again from the next
        line on.  The interval goes on; series already fed keep what they have."""
        self._naming.mapping = mapping if mapping is not None and len(mapping) else None
        self._shapes = {}
        self._feeds = {}

    @property
    def lines_now(self) -> int:
        """Lines received in the current interval."""
        return self._now.lines

    @property
    def rejected_now(self) -> int:
        """Bad lines in the current interval (not those left out on purpose)."""
        return sum(n for reason, n in self._now.rejected.items() if reason not in DELIBERATE)

    def _failed(self, feed: Feed, value: bytes, line: bytes, error: ValueError) -> None:
        """A feed refused ``value``: a multi-value line, or a rejection to count."""
        if type(error) is ValueError and b":" in value:  # float() refused "1:2:3"
            self._feed_each(feed, value, line)
        else:
            self._reject(error, line)

    def _feed_each(self, feed: Feed, value: bytes, line: bytes) -> None:
        """A DogStatsD 1.1 multi-value line: each value on its own."""
        for part in value.split(b":"):
            try:
                feed(part)
            except ValueError as error:
                self._reject(error, line)

    def _reject(self, error: ValueError, line: bytes) -> None:
        reason = error.reason if isinstance(error, ParseError) else "bad value"
        now = self._now
        now.rejected[reason] = now.rejected.get(reason, 0) + 1
        now.examples.setdefault(reason, line)

    def _feed_for(self, key: bytes, value: bytes, line: bytes) -> Feed:
        """The feed for a line shape seen for the first time this interval (the slow path).

        The parsers raise only `ParseError`; a plain ``ValueError`` escaping them anyway (a
        parser bug) still only rejects the line, counted, instead of the whole datagram."""
        try:
            return self._new_feed(key, value, line)
        except ParseError as error:  # (the inner paths catch their own; this is the backstop)
            return _rejecter(error.reason)
        except ValueError:
            self._bug_log.log(
                logging.ERROR,
                "parser bug",
                "parser bug on line %r (counted as rejected)",
                line[:EXAMPLE_BYTES],
                exc_info=True,
            )
            return _rejecter("unparsable line")

    def _new_feed(self, key: bytes, value: bytes, line: bytes) -> Feed:
        feed: Feed
        name, _, tail = key.partition(b":")
        if name.startswith((EVENT_PREFIX, CHECK_PREFIX)):
            return self._special(line)
        if b":" in tail and (lines := split_multi_metric(line)) is not None:
            self._lines(lines)  # etsy's name:1|c:2|ms: never cached (its tail holds values)
            return _done
        if name and not name.strip() and not tail:
            feed = _ignore
        else:
            resolved = self._resolve(key, name, tail)
            if isinstance(resolved, ParseError):
                feed = _rejecter(resolved.reason)
            else:
                bad = _first_value_error(resolved.key[0], value)
                if bad is not None:
                    # Not cached: a series is only created by a valid value, so a series whose
                    # every line was bad is never posted (as, say, a counter of 0).
                    return _rejecter(bad.reason)
                try:
                    feed = self._guarded_feed(resolved)
                except ParseError as error:  # a timestamp out of range: same for the key
                    feed = _rejecter(error.reason)
        if self._held(self._feeds) >= self._feed_limit:
            self._feeds = {}  # replaced, not cleared (see __init__)
        self._feeds[key] = feed
        return feed

    def _held(self, entries: Mapping[bytes, object]) -> int:
        """Entries of the feeds dict or the shape cache, with those the C table took over."""
        table = self._table
        return len(entries) + (table.held(entries) if table is not None else 0)

    def _special(self, line: bytes) -> Feed:
        """An event or a service check: handled whole, never cached (each line differs)."""
        try:
            if line.startswith(EVENT_PREFIX):
                self._event(parse_event(line))
            else:
                check = parse_service_check(line)
                tags = check.tags + ((("host", check.host),) if check.host else ())
                name, tags = self._naming.series(check.name, tags, Kind.GAUGE.value)
                self._guarded_feed(Resolved((Kind.GAUGE, name, tags), 1.0))(b"%d" % check.status)
        except ParseError as error:
            return _rejecter(error.reason)
        return _done

    def _event(self, event: Event) -> None:
        if len(self._now.events) >= MAX_EVENTS:
            raise ParseError("too many events in one interval")
        if event.timestamp is None:  # an event without d: happened when it arrived
            event = replace(event, timestamp=int(self._clock()))
        else:  # its date within the bounds of a |T sample's (no 1970, no year 5138)
            self._check_timestamp(event.timestamp)
        self._now.events.append(event)

    def _guarded_feed(self, resolved: Resolved) -> Feed:
        """The series' feed, or, past the metric's tag-set budget, its overflow's feed."""
        kind, metric, tags = resolved.key
        table = self._table_for(resolved.timestamp)
        guard = self.guard
        if guard is None or guard.admit(metric, tags):
            return self._feed_of(table, resolved.key, resolved.rate)
        into = guard.overflow_metric(metric, kind.value)
        overflow = self._feed_of(table, (kind, into, self._overflow_tags), resolved.rate)
        folded = self.folded_samples
        counted = metric if into == metric else SHARED_OVERFLOW  # (no state per new name)

        def fold(raw: bytes) -> None:
            overflow(raw)
            folded[counted] = folded.get(counted, 0) + 1

        return fold

    def _table_for(self, timestamp: int | None) -> dict[SeriesKey, Accumulator]:
        """The series table of the interval a sample belongs to."""
        if timestamp is None:
            return self._now.series
        self._check_timestamp(timestamp)
        stamp = timestamp - timestamp % self._interval
        if stamp >= self._current_start:
            return self._now.series
        return self._now.past.setdefault(stamp, {})

    def _check_timestamp(self, timestamp: int) -> None:
        """A `ParseError` unless ``timestamp`` is at most `FUTURE_TOLERANCE` ahead of the
        clock and at most ``max_sample_age`` behind it."""
        now = self._clock()
        if timestamp > now + FUTURE_TOLERANCE:
            raise ParseError("timestamp in the future")
        if now - timestamp > self._max_sample_age:
            raise ParseError("timestamp too old")

    def maintain(self) -> None:
        """Housekeeping between flushes (expire the guard's old tag sets); not the hot path."""
        if self.guard is not None:
            self.guard.sweep()

    def _resolve(self, key: bytes, name: bytes, tail: bytes) -> Resolved | ParseError:
        """What the shape names, from the cache or parsed.  (The C table hands in the key
        object it kept from the shape's last interval, so the cache and the table share one
        copy of a shape's bytes.)"""
        shapes = self._shapes
        known = shapes.get(key)
        if known is None:
            known = self._parse(name, tail)
            if self._held(shapes) >= self._shape_limit:
                self._shapes = shapes = {}  # replaced: the C table drops those it holds
            shapes[key] = known
        return Resolved(known, 1.0) if isinstance(known, tuple) else known

    def _parse(self, name: bytes, tail: bytes) -> SeriesKey | Resolved | ParseError:
        try:
            shape = parse_shape(name, tail, self._container_tag)
            # may filter it out
            named, tags = self._naming.series(shape.name, shape.tags, shape.kind.value)
        except ParseError as error:
            return error
        key = (shape.kind, named, tags)
        if shape.rate == 1.0 and shape.timestamp is None:
            return key  # (most shapes: no Resolved kept, 56 bytes less a shape)
        return Resolved(key, shape.rate, shape.timestamp)

    def _feed_of(self, table: dict[SeriesKey, Accumulator], key: SeriesKey, rate: float) -> Feed:
        acc = table.get(key)
        if acc is None:
            acc = table[key] = self._new_accumulator(key, table is self._now.series)
        # The C loop keeps the accumulator itself (64 bytes a series less than a bound
        # method) or a `Rated` (~200 less than a partial); the Python loop calls a bound
        # method or a partial faster than ``__call__``.
        if self._table is not None:
            return acc if rate == 1.0 else Rated(acc, rate)
        return acc.add if rate == 1.0 else partial(acc.add_rated, rate)

    def _new_accumulator(self, key: SeriesKey, current: bool) -> Accumulator:
        kind = key[0]
        if kind is Kind.COUNTER:
            return Counter()
        if kind is Kind.SUMMARY:
            return Summary()
        if kind is Kind.SET:
            return SetOf()
        if not current:
            return Gauge(0.0)  # a past interval's gauge (a timestamped sample): no continuity
        # A gauge starts from the last value of its series, so deltas carry across intervals.
        # The previous interval's Gauge is no longer written to: its value is final.
        return self._gauges.next(key)
