"""Convert an interval the way production does, for tests that state what it must become.

The flusher hands the converter lists, so production runs the C conversion
(statsd_ao/core/_convert.c) wherever it is built; a dict view would quietly take the Python
path.  `convert` passes a list to a converter that uses the C code and to a pure Python one,
asserts the two agree (to the byte, with the same drops) and returns the C one's measurements:
a test's expected values then hold the C code to an independent expectation, not only to the
Python code.  With ``STATSD_AO_PURE_PYTHON=1`` both sides are Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import orjson

from statsd_ao.core.accumulators import Accumulator
from statsd_ao.core.aggregator import SeriesKey
from statsd_ao.core.measurements import Converter, Measurement


def convert(
    items: Iterable[tuple[SeriesKey, Accumulator]],
    time: int,
    period: int,
    percentiles: Sequence[float] = (),
    *,
    style: str = "p",
) -> tuple[list[Measurement], Converter]:
    """The measurements of ``items`` and the converter that made them (for its drops)."""
    chunk = list(items)
    fast = Converter(percentiles, style=style, native=True)
    pure = Converter(percentiles, style=style, native=False)
    out = fast.convert(chunk, time, period)
    expected = pure.convert(list(chunk), time, period)
    assert encoded(out) == encoded(expected), "the C and Python conversions differ"
    assert fast.dropped == pure.dropped
    return out, fast


def encoded(out: Iterable[Measurement]) -> list[bytes]:
    return sorted(orjson.dumps(m) for m in out)
