"""The cardinality guard: a tag-set budget per metric per rolling hour, totals kept exact."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from statsd_ao.core.aggregator import Aggregator
from statsd_ao.core.cardinality import SHARED_OVERFLOW, CardinalityGuard
from statsd_ao.core.hotpath import NATIVE
from statsd_ao.core.measurements import Measurement
from statsd_ao.core.sanitize import Naming
from tests.core import converting


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def tags(value: str) -> tuple[tuple[str, str], ...]:
    return (("host", "h"), ("user", value))


def test_admits_up_to_limit_minus_one_then_folds() -> None:
    guard = CardinalityGuard(4, None, clock=Clock())
    assert [guard.admit("m", tags(str(i))) for i in range(5)] == [True, True, True, False, False]
    assert guard.admit("m", tags("1"))  # admitted this hour: keeps flowing
    assert guard.admit("other", tags("9"))  # other metrics are unaffected
    assert guard.folded_tag_sets == Counter({"m": 2})


def test_window_rolls_and_frees_slots() -> None:
    clock = Clock()
    guard = CardinalityGuard(2, None, window=3600, clock=clock)
    assert guard.admit("m", tags("a"))
    clock.now = 1800
    assert not guard.admit("m", tags("b"))
    clock.now = 3599
    assert guard.admit("m", tags("a"))  # seen again: its hour starts over
    clock.now = 3599 + 3600
    assert guard.admit("m", tags("b"))  # a unseen for an hour: its slot is free
    assert guard.count("m") == 1


def test_total_limit_across_metrics() -> None:
    guard = CardinalityGuard(100, 3, clock=Clock())
    assert [guard.admit(f"m{i}", tags("x")) for i in range(4)] == [True, True, True, False]
    assert guard.tracked == 3


def test_past_the_total_new_metric_names_keep_no_state_of_their_own() -> None:
    guard = CardinalityGuard(100, 3, clock=Clock())
    assert [guard.admit(f"m{i}", tags("x")) for i in range(1000)] == [True] * 3 + [False] * 997
    assert not guard.admit("m0", tags("new"))  # a tracked metric still folds into its own
    assert guard.folded_tag_sets == Counter({SHARED_OVERFLOW: 997, "m0": 1})
    assert [metric for metric, _ in guard.tag_sets()] == ["m0", "m1", "m2"]
    assert guard.overflow_metric("m0", "c") == "m0"
    assert guard.overflow_metric("m999", "ms") == "statsd_ao.cardinality.overflow.timer"


def test_sweep_expires_metrics_that_went_quiet() -> None:
    clock = Clock()
    guard = CardinalityGuard(10, 2, window=60, clock=clock)
    guard.admit("a", tags("1"))
    guard.admit("b", tags("1"))
    clock.now = 61
    guard.sweep()
    assert guard.tracked == 0
    assert guard.admit("c", tags("1")) and guard.admit("d", tags("1"))


def test_busiest_key_and_offenders() -> None:
    guard = CardinalityGuard(5, None, clock=Clock())
    for i in range(6):
        guard.admit("api.latency", (("env", "prod"), ("user", str(i))))
    [offender] = guard.offenders()
    assert offender.metric == "api.latency"
    assert offender.busiest_key == "user"
    assert (offender.admitted, offender.folded_tag_sets) == (4, 2)


def test_limit_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="overflow"):
        CardinalityGuard(1)


def convert(aggregator: Aggregator, stamp: int = 0) -> list[Measurement]:
    return converting.convert(aggregator.swap().series.items(), stamp, 10, [50])[0]


def test_folded_samples_keep_counter_and_timer_totals_exact() -> None:
    naming = Naming({"host": "h"})
    aggregator = Aggregator(naming, guard=CardinalityGuard(3, None, clock=Clock()))
    lines = [f"hits:{i}|c|#user:{i}\nlat:{i}|ms|#user:{i}".encode() for i in range(1, 11)]
    for line in lines:
        aggregator.ingest(line)
    out = convert(aggregator)
    hits = [m for m in out if m["name"] == "hits"]
    lat = [m for m in out if m["name"] == "lat"]
    assert len(hits) == 3  # two ordinary tag sets and the overflow series
    assert sum(m["value"] for m in hits) == sum(range(1, 11))
    overflow = next(m for m in hits if m["tags"].get("overflow") == "true")
    assert overflow["tags"] == {"host": "h", "overflow": "true"}
    assert overflow["value"] == sum(range(3, 11))
    assert sum(m["count"] for m in lat) == 10
    assert sum(m["sum"] for m in lat) == sum(range(1, 11))
    assert aggregator.folded_samples == {"hits": 8, "lat": 8}


def test_a_fold_keeps_each_kind_exact_with_its_sample_rate() -> None:
    # Users 1 and 2 are admitted (the budget of 3 keeps one place for the overflow series);
    # users 3-6 are folded, each line with its own sample rate, which the fold must honour.
    aggregator = Aggregator(Naming({"host": "h"}), guard=CardinalityGuard(3, None, clock=Clock()))
    for user in range(1, 7):
        aggregator.ingest(
            b"hits:%d|c|@0.5|#user:%d\n" % (user, user)
            + b"lat:%d|ms|@0.25|#user:%d\n" % (user, user)
            + b"temp:+%d|g|@0.5|#user:%d\n" % (user, user)
            + b"seen:u%d|s|@0.5|#user:%d" % (user % 4, user)
        )
    overflow = {
        m["name"]: m
        for m in convert(aggregator)
        if m["tags"] == {"host": "h", "overflow": "true"} and "." not in m["name"]
    }
    assert overflow["hits"]["value"] == 36.0  # (3 + 4 + 5 + 6) / 0.5
    lat = overflow["lat"]
    assert (lat["count"], lat["sum"], lat["min"], lat["max"]) == (16, 72.0, 3.0, 6.0)
    assert overflow["temp"]["value"] == 18.0  # deltas 3 + 4 + 5 + 6 (rates never scale gauges)
    assert overflow["seen"]["value"] == 4.0  # u3, u0, u1, u2
    assert aggregator.folded_samples == {"hits": 4, "lat": 4, "temp": 4, "seen": 4}


TOTAL = 50


def flood(aggregator: Aggregator, start: int, names: int) -> None:
    """New metric names, each a counter (rate 0.5), a timer, a gauge and a set."""
    for i in range(start, start + names, 10):
        aggregator.ingest(
            b"\n".join(
                b"n%d:2|c|@0.5|#k:v\nn%d.t:%d|ms\nn%d.g:7|g\nn%d.s:%d|s" % (j, j, j, j, j, j)
                for j in range(i, i + 10)
            )
        )


def state_sizes(aggregator: Aggregator, guard: CardinalityGuard) -> tuple[int, ...]:
    return (
        guard.tracked,
        sum(1 for _ in guard.tag_sets()),
        len(guard.folded_tag_sets),
        len(aggregator.folded_samples),
        len(aggregator.current),
    )


@pytest.mark.parametrize("loop", ["c", "python"])
def test_a_flood_of_new_names_past_the_total_folds_into_one_shared_overflow(loop: str) -> None:
    """400 names past a total of 50: one overflow series per kind, exact totals, and no
    state that grows with the names (the sizes after 4,000 names equal those after 400)."""
    guard = CardinalityGuard(40_000, TOTAL, clock=Clock())
    hot = NATIVE if loop == "c" else None
    if loop == "c" and hot is None:
        pytest.skip("the C loop is not built")
    aggregator = Aggregator(Naming({"host": "h"}), guard=guard, hot=hot)
    flood(aggregator, 0, 400)
    sizes = state_sizes(aggregator, guard)
    measurements = [m for m in convert(aggregator) if not m["name"].endswith(".p50")]
    out = {(m["name"], tuple(sorted(m["tags"].items()))): m for m in measurements}
    shared = tuple(sorted({"host": "h", "overflow": "true"}.items()))
    counters = out[("statsd_ao.cardinality.overflow.counter", shared)]
    timers = out[("statsd_ao.cardinality.overflow.timer", shared)]
    sets = out[("statsd_ao.cardinality.overflow.set", shared)]
    assert out[("statsd_ao.cardinality.overflow.gauge", shared)]["value"] == 7
    admitted = [m for k, m in out.items() if k[1] != shared]
    assert len(admitted) == TOTAL and len(out) == TOTAL + 4
    assert counters["value"] + sum(m["value"] for m in admitted if m["name"][1:].isdigit()) == 1600
    assert timers["count"] + sum(m["count"] for m in admitted if m["name"].endswith(".t")) == 400
    assert sets["value"] + sum(1 for m in admitted if m["name"].endswith(".s")) == 400
    assert aggregator.folded_samples == {SHARED_OVERFLOW: 1600 - TOTAL}
    assert guard.folded_tag_sets == Counter({SHARED_OVERFLOW: 1600 - TOTAL})
    flood(aggregator, 0, 400)  # again, the next interval
    flood(aggregator, 400, 3600)
    assert state_sizes(aggregator, guard)[:4] == sizes[:4] == (TOTAL, TOTAL, 1, 1)
    assert len(aggregator.current) == TOTAL + 4


def test_guard_sees_tags_as_the_api_does() -> None:
    """Case and tag order do not make new tag sets: they are one series to the API too."""
    aggregator = Aggregator(Naming({"host": "h"}), guard=CardinalityGuard(2, None, clock=Clock()))
    aggregator.ingest(b"m:1|c|#Env:Prod,Az:B\nm:1|c|#az:b,env:prod\nm:1|c|#az:b,env:prod|@0.5")
    assert [m["value"] for m in convert(aggregator)] == [4.0]


INTERVAL = 10
LIMIT = 4


class GuardMachine(RuleBasedStateMachine):
    """Random traffic, flushes and clock jumps against a guard of 4 tag sets per metric."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.guard = CardinalityGuard(LIMIT, None, window=3600 + INTERVAL, clock=self.clock)
        self.aggregator = Aggregator(Naming({"host": "h"}), guard=self.guard)
        self.sent: Counter[str] = Counter()
        self.posted: list[tuple[int, str, frozenset[tuple[str, str]], float]] = []

    @rule(metric=st.sampled_from(["a", "b"]), user=st.integers(0, 4), value=st.integers(1, 9))
    def send(self, metric: str, user: int, value: int) -> None:
        self.aggregator.ingest(f"{metric}:{value}|c|#user:{user}".encode())
        self.sent[metric] += value

    @rule(value=st.integers(1, 9))
    def send_quiet(self, value: int) -> None:
        """A metric with two tag sets only: never limited."""
        self.aggregator.ingest(f"quiet:{value}|c|#zone:{value % 2}".encode())
        self.sent["quiet"] += value

    @rule(intervals=st.sampled_from([1, 6, 60, 359, 360, 361, 720]))
    def flush_and_wait(self, intervals: int) -> None:
        self.flush()
        self.clock.now += intervals * INTERVAL

    def flush(self) -> None:
        stamp = math.floor(self.clock.now / INTERVAL) * INTERVAL
        for m in convert(self.aggregator, stamp):
            self.posted.append((stamp, m["name"], frozenset(m["tags"].items()), m["value"]))
        self.aggregator.maintain()

    @invariant()
    def at_most_limit_tag_sets_per_metric_per_hour(self) -> None:
        for stamp, metric, _, _ in self.posted:
            window = {
                t for s, name, t, _ in self.posted if name == metric and stamp - 3600 < s <= stamp
            }
            assert len(window) <= LIMIT, (metric, stamp, window)

    @invariant()
    def folds_only_when_the_budget_is_really_used(self) -> None:
        """Liveness: the window rolls; a fold means LIMIT - 1 ordinary tag sets were active."""
        window = 3600 + INTERVAL
        for stamp, metric, tag_set, _ in self.posted:
            if ("overflow", "true") not in tag_set:
                continue
            active = {
                t
                for s, name, t, _ in self.posted
                if name == metric and stamp - window < s <= stamp and ("overflow", "true") not in t
            }
            assert len(active) >= LIMIT - 1, (metric, stamp, active)

    @invariant()
    def unrelated_metric_never_folded(self) -> None:
        assert all(
            ("overflow", "true") not in t for _, name, t, _ in self.posted if name == "quiet"
        )

    def teardown(self) -> None:
        self.flush()
        totals: Counter[str] = Counter()
        for _, name, _, value in self.posted:
            totals[name] += int(value)
        assert totals == self.sent


TestGuardMachine = GuardMachine.TestCase
TestGuardMachine.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
