"""Per-series accumulators: what one series holds during one flush interval.

Each ``add`` is a feed of the hot path (see `statsd_ao.core.aggregator`): it parses one raw
value and folds it in; calling the accumulator is calling its ``add``.  A value that is not a
finite number raises `ParseError` (or ``float()``'s own ``ValueError``), which the ingest loop
counts.  ``add_rated`` takes the line's sample rate first, so
``functools.partial(acc.add_rated, rate)`` is a ready feed, and so is `Rated` (the C loop's).

Why parse here rather than store raw bytes and parse in bulk later: measured with
bench/core_bench.py, deferring kept millions of bytes objects alive between flushes and
was no faster; ``float()`` costs the same wherever it runs.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

from statsd_ao.core import native
from statsd_ao.core.protocol import ParseError

# Timer values kept per series per interval for exact percentiles.  Past this a uniform
# reservoir of this size is kept instead (percentiles become estimates from 10,000 values);
# count, sum, min, max, last and stddev stay exact.  10,000 floats are ~320 KB.
MAX_SUMMARY_VALUES = 10_000


# Members kept per set series per interval: beyond it a new member is rejected and counted
# (so the count posted is a lower bound); ~100 bytes each, ~10 MB for the largest set.
MAX_SET_MEMBERS = 100_000


def _finite(raw: bytes) -> float:
    number = float(raw)
    if number - number:  # NaN or +-inf: finite numbers minus themselves are 0.0
        raise ParseError("non-finite value")
    return number


class Counter:
    """Sum of value / sample rate."""

    __slots__ = ("total",)

    def __init__(self) -> None:
        self.total = 0.0

    def add(self, raw: bytes) -> None:
        number = float(raw)
        if number - number:
            raise ParseError("non-finite value")
        self.total += number

    __call__ = add  # the accumulator is its own feed: no bound method to keep

    def add_rated(self, rate: float, raw: bytes) -> None:
        self.total += _finite(raw) / rate


class PythonGauge:
    """Last value; a value with a leading ``+``/``-`` is a delta on the current value.

    ``start`` is the value the interval started from, or None once an absolute value was
    set (the value then stands on its own: no float kept for the start); it lets several
    processes' parts of one gauge be merged (`statsd_ao.core.merge`)."""

    __slots__ = ("start", "value")

    def __init__(self, start: float | None) -> None:
        self.value = start if start is not None else 0.0
        self.start = start

    @property
    def absolute(self) -> bool:
        """An absolute value was set this interval."""
        return self.start is None

    def add(self, raw: bytes) -> None:
        number = float(raw)
        if number - number:
            raise ParseError("non-finite value")
        if raw[0] in {43, 45}:  # b"+", b"-"; float() accepted raw, so it is not empty
            self.value += number
        else:
            self.value = number
            self.start = None

    __call__ = add  # the accumulator is its own feed: no bound method to keep

    def add_rated(self, rate: float, raw: bytes) -> None:
        self.add(raw)  # sample rates do not apply to gauges


# The C Gauge (statsd_ao/core/_gauges.c) keeps the same promises in doubles: 56 bytes a
# gauge where this one costs 72 with its value float (bench/memory_bench.py), and the C loop
# writes it directly.  tests/core/test_gauges.py holds the two to the same results.
Gauge = PythonGauge
_NATIVE = native.hotpath()
if not TYPE_CHECKING and _NATIVE is not None:
    Gauge = _NATIVE.Gauge


class Summary:
    """Timer / histogram / distribution values, for exact summary fields and percentiles.

    ``weights`` stays None until a sampled value (``@rate`` < 1) arrives; then it holds
    1 / rate for every value.  Past `MAX_SUMMARY_VALUES` values, ``running`` takes over the
    exact figures and ``values`` becomes a reservoir sample.
    """

    __slots__ = ("running", "seen", "values", "weights")

    def __init__(self) -> None:
        self.values: list[float] = []
        self.weights: list[float] | None = None
        self.running: Running | None = None
        self.seen = 0

    def add(self, raw: bytes) -> None:
        number = float(raw)
        if number - number:
            raise ParseError("non-finite value")
        values = self.values
        if len(values) < MAX_SUMMARY_VALUES:
            values.append(number)
            if self.weights is not None:
                self.weights.append(1.0)
        else:
            self._overflow(number, 1.0)

    __call__ = add  # the accumulator is its own feed: no bound method to keep

    def add_rated(self, rate: float, raw: bytes) -> None:
        number = _finite(raw)
        if len(self.values) >= MAX_SUMMARY_VALUES:
            self._overflow(number, 1.0 / rate)
            return
        if self.weights is None:
            self.weights = [1.0] * len(self.values)
        self.values.append(number)
        self.weights.append(1.0 / rate)

    def add_number(self, number: float) -> None:
        """One finite value given as a float (the API intake's).  Unlike ``add`` it also
        serves a summary that a merge gave ``running`` figures before its values list was
        full: those figures take the value too."""
        running = self.running
        if running is None:
            if len(self.values) < MAX_SUMMARY_VALUES:
                self.values.append(number)
                if self.weights is not None:
                    self.weights.append(1.0)
            else:
                self._overflow(number, 1.0)
            return
        running.add(number, 1.0)
        self.seen += 1
        if len(self.values) < MAX_SUMMARY_VALUES:
            self.values.append(number)
            return
        slot = random.randrange(self.seen)
        if slot < MAX_SUMMARY_VALUES:
            self.values[slot] = number

    def _overflow(self, number: float, weight: float) -> None:
        if self.running is None:
            self.running = Running.of(self.values, self.weights)
            self.seen = len(self.values)
            self.weights = None  # the reservoir is unweighted; the running figures are not
        self.running.add(number, weight)
        self.seen += 1
        slot = random.randrange(self.seen)  # reservoir sampling: uniform over all values
        if slot < MAX_SUMMARY_VALUES:
            self.values[slot] = number


class Running:
    """Exact weighted figures, updated one value at a time (West's weighted Welford).

    A summary posted to the AppOptics API intake may leave ``min``, ``max``, ``last`` or the
    spread unknown: those are NaN, and stay NaN through `add` and `merge` (a minimum over
    values of which some are unknown is unknown), except ``last``, which a later part's
    known value replaces."""

    __slots__ = ("hi", "last", "lo", "m2", "mean", "total", "weight")

    def __init__(self) -> None:
        self.weight = self.total = self.mean = self.m2 = 0.0
        self.lo, self.hi, self.last = math.inf, -math.inf, math.nan

    @classmethod
    def of(cls, values: list[float], weights: list[float] | None) -> Running:
        running = cls()
        for index, value in enumerate(values):
            running.add(value, 1.0 if weights is None else weights[index])
        return running

    def merge(self, other: Running) -> None:
        """Fold another set of figures in (Chan et al.'s parallel update)."""
        if not other.weight:
            return
        weight = self.weight + other.weight
        delta = other.mean - self.mean
        self.mean += delta * other.weight / weight
        self.m2 += other.m2 + delta * delta * self.weight * other.weight / weight
        self.weight, self.total = weight, self.total + other.total
        self.lo, self.hi = _low(self.lo, other.lo), _high(self.hi, other.hi)
        if other.last == other.last:  # (NaN: the part's last value is unknown)
            self.last = other.last

    def add(self, value: float, weight: float) -> None:
        self.weight += weight
        self.total += weight * value
        delta = value - self.mean
        self.mean += delta * weight / self.weight
        self.m2 += weight * delta * (value - self.mean)
        self.lo, self.hi, self.last = min(self.lo, value), max(self.hi, value), value


def _low(a: float, b: float) -> float:
    """min(a, b), NaN when either is (``min`` alone keeps or drops a NaN by argument order)."""
    return a if a <= b else b if b < a else math.nan


def _high(a: float, b: float) -> float:
    return a if a >= b else b if b > a else math.nan


class SetOf:
    """Unique members (raw bytes) seen in the interval."""

    __slots__ = ("members",)

    def __init__(self) -> None:
        self.members: set[bytes] = set()

    def add(self, raw: bytes) -> None:
        members = self.members
        if len(members) >= MAX_SET_MEMBERS and raw not in members:
            raise ParseError("set too large")
        if not raw:
            raise ParseError("empty set member")
        members.add(raw)

    __call__ = add  # the accumulator is its own feed: no bound method to keep

    def add_rated(self, rate: float, raw: bytes) -> None:
        self.add(raw)


Accumulator = Counter | Gauge | Summary | SetOf


class Rated:
    """A sampled line shape's feed in the C loop: ``acc.add_rated(rate, raw)``.

    48 bytes a series, where ``partial(acc.add_rated, rate)`` keeps ~256 (the partial, its
    argument tuple and keyword dict, the bound method).  The C loop reads both slots and
    applies a plain value itself; the Python loop keeps the partial, which it calls faster."""

    __slots__ = ("acc", "rate")

    def __init__(self, acc: Accumulator, rate: float) -> None:
        self.acc = acc
        self.rate = rate

    def __call__(self, raw: bytes) -> None:
        self.acc.add_rated(self.rate, raw)
