"""The C Gauge and GaugeMemory (statsd_ao/core/_gauges.c) against the Python ones.

The C types only save memory: on any input they must give exactly what the Python Gauge
and PythonGaugeMemory give (the same values bit for bit, the same starts, the same errors,
the same series remembered in the same order of activity).
"""

from __future__ import annotations

import gc
import math
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statsd_ao.core import native
from statsd_ao.core.accumulators import Gauge, PythonGauge
from statsd_ao.core.aggregator import SeriesKey
from statsd_ao.core.gauge_memory import Memory, PythonGaugeMemory, gauge_memory
from statsd_ao.core.protocol import Kind

C = native.hotpath()
needs_c = pytest.mark.skipif(C is None, reason="the C extension is not built or switched off")

NUMBERS = st.floats(allow_nan=False, allow_infinity=False).map(repr)
RAW = st.one_of(
    st.tuples(st.sampled_from(["", "+", "-", " ", " +"]), NUMBERS).map("".join),
    st.sampled_from(["inf", "-inf", "nan", "+nan", "1e999", "", "+", "x", "1_0", " 5 ", "0x1"]),
    st.text(alphabet="+-.e0123456789 ", max_size=8),
).map(str.encode)
# (NaN and inf too: a merge of workers' parts that overflowed to inf makes a NaN start)
STARTS = st.one_of(st.none(), st.floats())


def bits(x: float | None) -> str:
    return "None" if x is None else "nan" if math.isnan(x) else float.hex(x)


def outcome(gauge: Any, raw: bytes, call: str) -> tuple[str, str, str, bool]:
    """What one add did: the error (if any), then the gauge's state."""
    try:
        if call == "call":
            gauge(raw)
        elif call == "rated":
            gauge.add_rated(0.5, raw)
        else:
            gauge.add(raw)
        error = ""
    except ValueError as e:
        error = f"{type(e).__name__}: {e}"
    return error, bits(gauge.value), bits(gauge.start), gauge.absolute


@needs_c
@given(STARTS, st.lists(st.tuples(RAW, st.sampled_from(["add", "call", "rated"])), max_size=12))
def test_the_c_gauge_adds_as_the_python_one(
    start: float | None, raws: list[tuple[bytes, str]]
) -> None:
    fast, pure = Gauge(start), PythonGauge(start)
    assert (bits(fast.value), bits(fast.start)) == (bits(pure.value), bits(pure.start))
    for raw, call in raws:
        assert outcome(fast, raw, call) == outcome(pure, raw, call)


@needs_c
@given(STARTS, st.floats(), st.booleans())
def test_the_c_gauge_takes_what_a_merge_writes(
    start: float | None, value: float, absolute: bool
) -> None:
    # statsd_ao.core.merge writes value and start as it folds workers' parts together
    fast, pure = Gauge(start), PythonGauge(start)
    for gauge in (fast, pure):
        gauge.value = value
        if absolute:
            gauge.start = None
    assert (bits(fast.value), bits(fast.start), fast.absolute) == (
        bits(pure.value),
        bits(pure.start),
        pure.absolute,
    )


@needs_c
def test_the_c_gauge_refuses_what_is_not_a_number() -> None:
    # (where the Python Gauge would keep whatever it is given: the C one holds doubles)
    gauge = Gauge(None)
    with pytest.raises(TypeError):
        Gauge("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        gauge.add(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        gauge.start = "x"  # type: ignore[assignment]
    assert (gauge.value, gauge.start) == (0.0, None)


def key(name: str) -> SeriesKey:
    return (Kind.GAUGE, name, (("host", "h"),))


KEYS = st.sampled_from("abcde").map(key)
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("next"), KEYS, RAW),
        st.tuples(st.just("pop"), KEYS, st.just(b"")),
    ),
    max_size=40,
)


Operations = list[tuple[str, SeriesKey, bytes]]


def run(memory: Memory, operations: Operations) -> list[Any]:
    seen: list[Any] = []
    for op, series, raw in operations:
        if op == "next":
            gauge = memory.next(series)
            seen.append(("start", bits(gauge.value), bits(gauge.start)))
            seen.append(outcome(gauge, raw, "add"))
        else:
            memory.pop(series)
        seen.append([(k, bits(v)) for k, v in memory.values().items()])
        seen.append(len(memory))
    return seen


@needs_c
@given(OPERATIONS, st.integers(0, 6))
def test_the_c_memory_remembers_and_forgets_as_the_python_one(
    operations: Operations, limit: int
) -> None:
    assert run(gauge_memory(limit), operations) == run(PythonGaugeMemory(limit), operations)


@pytest.mark.parametrize("make", [gauge_memory, PythonGaugeMemory])
def test_the_least_recently_active_series_is_forgotten_first(make: Any) -> None:
    memory = make(3)
    for name in "abc":
        memory.next(key(name)).add(b"1")
    memory.next(key("a")).add(b"+1")  # a is the most recent now: b is the idlest
    memory.next(key("d"))
    assert list(memory.values()) == [key("c"), key("a"), key("d")]
    assert memory.values()[key("a")] == 2.0
    assert memory.next(key("b")).value == 0.0  # forgotten: a delta starts from 0 again


@pytest.mark.parametrize("make", [gauge_memory, PythonGaugeMemory])
def test_a_negative_limit_is_refused(make: Any) -> None:
    with pytest.raises(ValueError, match="limit"):
        make(-1)


@needs_c
def test_the_c_memory_lets_go_of_what_it_forgets() -> None:
    series = key("x" * 50)  # one object, its references counted
    before = sys.getrefcount(series)
    memory = gauge_memory(2)
    kept = memory.next(series)
    assert sys.getrefcount(series) > before
    memory.pop(series)
    assert sys.getrefcount(series) == before
    memory.next(series)
    for other in "ab":  # evicted past the limit
        memory.next(key(other))
    assert series not in memory.values()
    assert sys.getrefcount(series) == before
    memory.next(series)
    del memory  # its gauges may outlive it
    gc.collect()
    assert sys.getrefcount(series) == before
    kept.add(b"+2")
    assert kept.value == 2.0 and not math.isnan(kept.value)


class Hooked:
    """A series key whose ``__eq__`` runs a hook once, on its ``at``-th call: code that
    changes the memory in the middle of one of its dict operations."""

    def __init__(self, name: str, hook: Any = None, at: int = 0) -> None:
        self.name, self.hook, self.at, self.calls = name, hook, at, 0

    def __hash__(self) -> int:
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        self.calls += 1
        if self.hook is not None and self.calls == self.at:
            self.hook()
        return isinstance(other, Hooked) and other.name == self.name

    def __repr__(self) -> str:
        return self.name


@pytest.mark.parametrize("make", [gauge_memory, PythonGaugeMemory])
def test_a_key_that_changes_the_memory_mid_operation_gives_what_python_gives(make: Any) -> None:
    # Never the case for series keys (tuples of str); the C memory must still stay sound
    # (a freed gauge reached through its list would crash the process)
    memory = make(10)
    first = Hooked("a")
    memory.next(first)
    memory.next(Hooked("b"))
    memory.next(Hooked("a", hook=lambda: memory.pop(first), at=1))  # pops a while storing a
    assert {repr(k): v for k, v in memory.values().items()} == {"b": 0.0, "a": 0.0}
    assert len(memory) == 2
    for name in "cdefghijkl":
        memory.next(Hooked(name))
    assert len(memory) == 10 and "a" not in map(repr, memory.values())
