"""The pending buffer: oldest first, bounded by measurements, nothing leaves uncounted."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from statsd_ao.core.outbox import Outbox, Parcel


def parcel(seq: int, count: int = 500, expires: float = 100.0, not_before: float = 0.0) -> Parcel:
    return Parcel(b"{}", count, expires, seq, not_before=not_before)


def test_oldest_data_goes_first() -> None:
    box = Outbox(10_000)
    for p in (parcel(2, expires=50.0), parcel(0, expires=60.0), parcel(1, expires=50.0)):
        assert box.put(p) == []
    taken = [box.take(0.0), box.take(0.0), box.take(0.0), box.take(0.0)]
    assert [p.seq if p else None for p in taken] == [1, 2, 0, None]
    assert (box.queued, box.in_flight) == (0, 1500)


def test_when_full_the_oldest_queued_data_is_evicted() -> None:
    box = Outbox(1000)
    evicted = [box.put(parcel(seq, expires=100.0 + seq)) for seq in range(5)]
    assert [[p.seq for p in e] for e in evicted] == [[], [], [0], [1], [2]]
    assert [p.seq for p in box] == [3, 4]
    assert box.pending == 1000


def test_in_flight_data_counts_but_only_queued_data_is_evicted() -> None:
    box = Outbox(1000)
    box.put(parcel(0))
    box.put(parcel(1))
    assert box.take(0.0) is not None and box.take(0.0) is not None
    assert [p.seq for p in box.put(parcel(2))] == [2]  # nothing older is queued: the new goes
    assert (box.queued, box.in_flight) == (0, 1000)


def test_a_parcel_waits_for_its_time_and_expires_from_the_front() -> None:
    box = Outbox(10_000)
    box.put(parcel(0, expires=10.0, not_before=5.0))
    box.put(parcel(1, expires=20.0, not_before=1.0))
    assert (box.next_ready(), box.next_expiry()) == (1.0, 10.0)
    assert box.take(0.5) is None
    taken = box.take(1.0)
    assert taken is not None and taken.seq == 1
    assert [p.seq for p in box.expire(10.0)] == [0]
    assert (box.next_ready(), box.next_expiry(), box.pending) == (None, None, 500)
    box.settle(taken)
    assert box.pending == 0


def test_hurry_makes_everything_ready_by_a_time() -> None:
    box = Outbox(10_000)
    box.put(parcel(0, not_before=30.0))
    box.put(parcel(1, not_before=0.5))
    box.hurry(1.0)
    assert sorted(p.not_before for p in box) == [0.5, 1.0]


def test_abandon_forgets_queued_and_in_flight() -> None:
    box = Outbox(10_000)
    box.put(parcel(0))
    box.put(parcel(1, count=7))
    box.take(0.0)
    assert box.abandon() == 507
    assert (box.pending, len(box)) == (0, 0)


def test_capacity_must_hold_something() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Outbox(0)


class OutboxMachine(RuleBasedStateMachine):
    """Random puts, takes, settles and expiries against a plain model of where data went."""

    def __init__(self) -> None:
        super().__init__()
        self.box = Outbox(2000)
        self.now = 0.0
        self.seq = 0
        self.flying: list[Parcel] = []
        self.put_total = 0
        self.settled = 0
        self.evicted = 0
        self.expired = 0

    @rule(count=st.integers(1, 900), life=st.floats(0.0, 50.0), wait=st.floats(0.0, 5.0))
    def put(self, count: int, life: float, wait: float) -> None:
        new = Parcel(b"{}", count, self.now + life, self.seq, not_before=self.now + wait)
        self.seq += 1
        self.put_total += count
        before = list(self.box)
        out = self.box.put(new)
        self.evicted += sum(p.count for p in out)
        assert self.box.pending <= self.box.capacity or len(self.box) == 0
        kept = list(self.box)
        order = [(p.expires, p.seq) for p in kept]
        for gone in out:  # what was evicted is older than everything kept
            assert gone in [*before, new]
            assert all((gone.expires, gone.seq) <= key for key in order)

    @rule()
    def take(self) -> None:
        ready = [p for p in self.box if p.not_before <= self.now]
        got = self.box.take(self.now)
        assert got == (ready[0] if ready else None)
        if got is not None:
            self.flying.append(got)

    @precondition(lambda self: bool(self.flying))
    @rule(index=st.integers(0, 100), back=st.booleans())
    def settle(self, index: int, back: bool) -> None:
        done = self.flying.pop(index % len(self.flying))
        self.box.settle(done)
        if back:  # a failed post comes back for another try
            self.evicted += sum(p.count for p in self.box.put(done.retry(self.now + 1.0, 1)))
        else:
            self.settled += done.count

    @rule(step=st.floats(0.0, 20.0))
    def tick(self, step: float) -> None:
        self.now += step
        self.expired += sum(p.count for p in self.box.expire(self.now))
        assert all(p.expires > self.now for p in self.box)

    @invariant()
    def every_measurement_is_somewhere(self) -> None:
        where = self.box.queued + self.box.in_flight + self.settled + self.evicted + self.expired
        assert where == self.put_total
        assert self.box.queued == sum(p.count for p in self.box)
        assert self.box.in_flight == sum(p.count for p in self.flying)

    @invariant()
    def queue_is_oldest_first(self) -> None:
        keys = [(p.expires, p.seq) for p in self.box]
        assert keys == sorted(keys)


TestOutboxMachine = OutboxMachine.TestCase
