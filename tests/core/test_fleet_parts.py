"""The global's keeper of parts: duplicates dropped, parts held through their grace and
handed over in the senders' clock order, bounds answered; rendezvous ownership."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from statsd_ao.core.accumulators import Counter, Gauge
from statsd_ao.core.aggregator import Snapshot
from statsd_ao.core.fleet_parts import FleetParts, Taken
from statsd_ao.core.fleet_wire import Part
from statsd_ao.core.merge import Merger
from statsd_ao.core.protocol import Kind
from statsd_ao.core.rendezvous import Owners


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def counter_part(sender: str, seq: int, total: float, stamp: int = 100) -> Part:
    acc = Counter()
    acc.total = total
    return Part(sender, seq, stamp, 10, 110.0, {(Kind.COUNTER, "c", ()): acc})


def gauge_part(sender: str, clock: float, value: float) -> Part:
    acc = Gauge(None)
    acc.value = value
    return Part(sender, 1, 100, 10, clock, {(Kind.GAUGE, "g", ()): acc})


def merged(parts: list[Snapshot]) -> Snapshot:
    into = Snapshot()
    merger = Merger()
    for part in parts:
        merger.fold_into(into, part)
    return into


def test_a_part_seen_again_is_a_duplicate_and_not_taken_twice() -> None:
    clock = Clock(111.0)
    keeper = FleetParts(2.0, clock=clock)
    assert keeper.take_in(counter_part("a", 1, 5.0)) is Taken.TAKEN
    assert keeper.take_in(counter_part("a", 1, 5.0)) is Taken.DUPLICATE
    assert keeper.take_in(counter_part("b", 1, 7.0)) is Taken.TAKEN
    clock.now = 112.0
    ready = keeper.ready()
    total = merged(ready).past[100][(Kind.COUNTER, "c", ())]
    assert isinstance(total, Counter) and total.total == 12.0
    assert (keeper.senders["a"].parts, keeper.senders["a"].duplicates) == (1, 1)
    assert keeper.senders["a"].lag == 1.0


def test_parts_wait_until_the_grace_after_their_interval_ends() -> None:
    clock = Clock(110.5)
    keeper = FleetParts(2.0, clock=clock)
    keeper.take_in(counter_part("a", 1, 1.0))
    clock.now = 111.9
    assert keeper.ready() == []
    clock.now = 112.0
    assert len(keeper.ready()) == 1
    assert keeper.held_series == 0


def test_a_straggler_goes_out_later_under_its_own_interval() -> None:
    clock = Clock(200.0)
    keeper = FleetParts(2.0, clock=clock)
    keeper.take_in(counter_part("a", 9, 1.0, stamp=100))
    (late,) = keeper.ready()
    assert list(late.past) == [100] and not late.series


def test_the_latest_gauge_by_the_senders_clock_wins_whatever_the_arrival_order() -> None:
    clock = Clock(111.0)
    keeper = FleetParts(0.0, clock=clock)
    keeper.take_in(gauge_part("late-clock", 109.0, 42.0))
    keeper.take_in(gauge_part("early-clock", 101.0, 7.0))
    value = merged(keeper.ready()).past[100][(Kind.GAUGE, "g", ())]
    assert isinstance(value, Gauge) and value.value == 42.0


def test_past_the_series_bound_a_part_is_refused_for_a_retry() -> None:
    keeper = FleetParts(2.0, max_series=1, clock=Clock(0.0))
    assert keeper.take_in(counter_part("a", 1, 1.0)) is Taken.TAKEN
    assert keeper.take_in(counter_part("a", 2, 1.0)) is Taken.FULL
    assert keeper.refused_full == 1
    assert keeper.take_in(counter_part("a", 2, 1.0)) is Taken.FULL  # not remembered as seen


def test_identities_remembered_are_bounded() -> None:
    keeper = FleetParts(2.0, remember=2, clock=Clock(0.0))
    for seq in range(3):
        keeper.take_in(counter_part("a", seq, 1.0))
    assert keeper.take_in(counter_part("a", 2, 1.0)) is Taken.DUPLICATE
    assert keeper.take_in(counter_part("a", 0, 1.0)) is Taken.TAKEN  # forgotten: documented


@given(st.sets(st.text(min_size=1, max_size=6), min_size=2, max_size=6), st.text(max_size=20))
def test_only_the_names_of_a_member_that_leaves_move(members: set[str], name: str) -> None:
    everyone = Owners(sorted(members))
    owner = everyone.owner(name)
    gone = sorted(members)[0]
    fewer = Owners(sorted(members - {gone}))
    assert fewer.owner(name) == owner or owner == gone
    assert Owners(sorted(members, reverse=True)).owner(name) == owner  # order does not matter
