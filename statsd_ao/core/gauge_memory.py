"""The last gauge of every series, so a delta (``+2``) goes on from the value its series last
had, in whatever interval that was.

A bounded memory: past ``limit`` series the one idle the longest (least recently given a new
gauge) is forgotten, and its next delta starts from 0.  `GaugeMemory` is the C one
(statsd_ao/core/_gauges.c) when it is built, else `PythonGaugeMemory`; both keep the same
promises (tests/core/test_gauges.py).  The C one threads its order of activity through the
gauges, so bringing a series to the front leaves the dict alone; this one pops and inserts
the dict's entry again, and a dict that keeps doing so settles at twice its size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from statsd_ao.core import native
from statsd_ao.core.accumulators import Gauge

if TYPE_CHECKING:
    from statsd_ao.core.aggregator import SeriesKey


class Memory(Protocol):
    """What the aggregator asks of a gauge memory."""

    def next(self, key: SeriesKey, /) -> Gauge:
        """A new Gauge for the series, starting from its last value (or 0.0), remembered in
        place of the last one as the most recently active."""
        ...

    def pop(self, key: SeriesKey, /) -> None:
        """Forget the series (nothing if it is not remembered)."""
        ...

    def values(self) -> dict[SeriesKey, float]:
        """Every remembered series' last value, the least recently active first."""
        ...

    def __len__(self) -> int: ...


class PythonGaugeMemory:
    """The pure Python `Memory`: a dict in order of activity."""

    __slots__ = ("_gauges", "_limit")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self._gauges: dict[SeriesKey, Gauge] = {}
        self._limit = limit

    def next(self, key: SeriesKey, /) -> Gauge:
        gauges = self._gauges
        previous = gauges.pop(key, None)  # inserted again last: the dict is ordered by activity
        gauge = gauges[key] = Gauge(previous.value if previous is not None else 0.0)
        while len(gauges) > self._limit:
            del gauges[next(iter(gauges))]
        return gauge

    def pop(self, key: SeriesKey, /) -> None:
        self._gauges.pop(key, None)

    def values(self) -> dict[SeriesKey, float]:
        return {key: gauge.value for key, gauge in self._gauges.items()}

    def __len__(self) -> int:
        return len(self._gauges)


def gauge_memory(limit: int) -> Memory:
    """The C memory if it is built and switched on, else the Python one."""
    module = native.hotpath()
    if module is None:
        return PythonGaugeMemory(limit)
    memory: Memory = module.GaugeMemory(limit)
    return memory
