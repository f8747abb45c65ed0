"""The AppOptics API intake's parts (`statsd_ao.core.api_intake`) and their merge with StatsD.

The numbers matter: what a client posted, merged with what StatsD lines made of the same
series, must post the count, sum, min and max of the union exactly, and its stddev from the
moments.  A naive model over the union of the values is the judge.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsd_ao.core import api_rules
from statsd_ao.core.accumulators import Summary
from statsd_ao.core.aggregator import Aggregator, Snapshot
from statsd_ao.core.api_intake import ApiIntake, Filtered
from statsd_ao.core.api_rules import Refusal, Sample
from statsd_ao.core.cardinality import CardinalityGuard
from statsd_ao.core.events import Event
from statsd_ao.core.mapping import parse_rules
from statsd_ao.core.measurements import Converter, Measurement
from statsd_ao.core.merge import Merger
from statsd_ao.core.name_rules import NameRules
from statsd_ao.core.protocol import Kind
from statsd_ao.core.sanitize import Naming

T0 = 1_700_000_000  # on the 10 s grid
HOST = (("host", "h"),)


class Clock:
    def __init__(self, now: float = T0 + 3) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def samples(doc: dict[str, Any]) -> list[Sample]:
    env = api_rules.envelope(orjson.dumps(doc))
    judged = [api_rules.judge(env, i) for i in range(len(env.measurements))]
    assert all(isinstance(s, Sample) for s in judged), judged
    return [s for s in judged if isinstance(s, Sample)]


def intake(clock: Clock | None = None, naming: Naming | None = None, **kw: Any) -> ApiIntake:
    return ApiIntake(naming or Naming({"host": "h"}), interval=10, clock=clock or Clock(), **kw)


def post(target: ApiIntake, *ms: dict[str, Any], **top: Any) -> list[Refusal | Filtered | None]:
    return [target.add(s) for s in samples({"tags": {"app": "x"}, **top, "measurements": list(ms)})]


def converted(snapshot: Snapshot, percentiles: tuple[float, ...] = ()) -> list[Measurement]:
    return Converter(percentiles, native=False).convert(list(snapshot.series.items()), T0, 10)


def test_a_value_is_a_one_sample_summary_named_like_a_statsd_timer() -> None:
    target = intake()
    assert post(target, {"name": "lat", "value": 5}) == [None]
    part = target.take()
    assert part is not None
    [(key, acc)] = part.series.items()
    assert key == (Kind.SUMMARY, "lat", (("app", "x"), ("host", "h")))
    assert isinstance(acc, Summary) and acc.values == [5.0]
    [m] = converted(part)
    assert (m["count"], m["sum"], m["min"], m["max"], m["last"], m["stddev"]) == (1, 5, 5, 5, 5, 0)


def test_several_values_keep_count_mean_min_max_and_last() -> None:
    target = intake()
    post(target, {"name": "lat", "value": 5}, {"name": "lat", "value": 1})
    post(target, {"name": "lat", "value": 3})
    part = target.take()
    assert part is not None
    [m] = converted(part)
    assert (m["count"], m["sum"], m["min"], m["max"], m["last"]) == (3, 9, 1, 5, 3)


def test_the_python_queues_count_one_sum_is_a_single_value() -> None:
    target = intake()
    post(target, {"name": "lat", "count": 1, "sum": 4.0})
    part = target.take()
    assert part is not None
    [acc] = part.series.values()
    assert isinstance(acc, Summary) and acc.values == [4.0] and acc.running is None


def test_a_summary_keeps_its_figures_exactly() -> None:
    target = intake()
    m = {"name": "lat", "count": 4, "sum": 10.0, "min": 1.0, "max": 4.0, "last": 2.0}
    post(target, {**m, "stddev": 1.118033988749895})
    part = target.take()
    assert part is not None
    [out] = converted(part, percentiles=(90,))  # no values: no percentile is made up
    assert (out["count"], out["sum"], out["min"], out["max"], out["last"]) == (4, 10, 1, 4, 2)
    assert out["stddev"] == pytest.approx(1.118033988749895, rel=1e-12)


def test_figures_a_summary_left_out_are_not_posted() -> None:
    target = intake()
    post(target, {"name": "lat", "count": 4, "sum": 10.0, "max": 4.0})  # micrometer's shape
    part = target.take()
    assert part is not None
    [out] = converted(part)
    assert set(out) == {"name", "tags", "time", "period", "count", "sum", "max"}


def test_a_measurement_joins_the_interval_its_time_falls_in() -> None:
    clock = Clock(T0 + 3)
    target = intake(clock)
    outcomes = post(
        target,
        {"name": "now", "value": 1},
        {"name": "this", "value": 1, "time": T0},
        {"name": "soon", "value": 1, "time": T0 + 50},  # within the 60 s tolerance
        {"name": "before", "value": 1, "time": T0 - 1},
        {"name": "old", "value": 1, "time": T0 - 595},
        {"name": "too.old", "value": 1, "time": T0 + 3 - 601},
        {"name": "too.new", "value": 1, "time": T0 + 3 + 61},
    )
    assert outcomes[:5] == [None] * 5
    assert [o.param if isinstance(o, Refusal) else o for o in outcomes[5:]] == ["time", "time"]
    part = target.take()
    assert part is not None
    assert {k[1] for k in part.series} == {"now", "this", "soon"}
    assert {stamp: {k[1] for k in t} for stamp, t in part.past.items()} == {
        T0 - 10: {"before"},
        T0 - 600: {"old"},
    }
    assert target.refused == {"older than the 600 s this proxy keeps": 1} | {
        "more than 60 s ahead of this proxy's clock": 1
    }


def test_take_starts_a_fresh_interval_on_the_clock() -> None:
    clock = Clock(T0 + 3)
    target = intake(clock)
    assert target.take() is None  # nothing held
    clock.now = T0 + 12
    target.take()
    post(target, {"name": "a", "value": 1, "time": T0 + 5})  # now the previous interval
    part = target.take()
    assert part is not None and set(part.past) == {T0}


def test_names_and_tags_go_through_the_statsd_naming() -> None:
    mapping = parse_rules(
        '[[rule]]\nmatch = "legacy.*"\naction = "drop"\n'
        '[[rule]]\nmatch = "jobs.*.sent"\nname = "jobs.sent"\ntags = { queue = "$1" }\n'
    )
    naming = Naming({"host": "h", "app": "global"}, NameRules.compile(prefix="pre"), mapping)
    target = intake(naming=naming)
    outcomes = post(
        target, {"name": "jobs.mail.sent", "value": 1}, {"name": "legacy.x", "value": 1}
    )
    assert outcomes == [None, Filtered("dropped by mapping rule")]
    part = target.take()
    assert part is not None
    [key] = part.series
    # the metric's own tag (app=x) wins over the global one, as for StatsD lines
    assert key == (Kind.SUMMARY, "pre.jobs.sent", (("app", "x"), ("host", "h"), ("queue", "mail")))
    assert target.filtered == {"dropped by mapping rule": 1}


def test_reloaded_mapping_rules_apply_from_the_next_measurement() -> None:
    naming = Naming({"host": "h"})
    target = intake(naming=naming)
    post(target, {"name": "a.b", "value": 1})
    naming.mapping = parse_rules('[[rule]]\nmatch = "a.*"\nname = "renamed"\n')
    post(target, {"name": "a.b", "value": 1})
    part = target.take()
    assert part is not None
    assert sorted(k[1] for k in part.series) == ["a.b", "renamed"]


def test_series_are_bounded_per_interval() -> None:
    target = intake(max_series=2)
    outcomes = post(target, *({"name": f"m{i}", "value": 1} for i in range(3)))
    assert outcomes[:2] == [None, None] and isinstance(outcomes[2], Refusal)
    assert target.full
    assert post(target, {"name": "m0", "value": 2}) == [None]  # a held series takes more
    target.take()
    assert not target.full


def test_events_are_bounded_and_handed_over_with_the_part() -> None:
    clock = Clock()
    target = intake(clock, max_events=1)
    assert target.add_event(Event("deploy", ""))
    assert not target.add_event(Event("again", ""))
    part = target.take()
    assert part is not None and part.events == [Event("deploy", "", timestamp=T0 + 3)]


def test_seconds_left_counts_to_the_next_grid_point() -> None:
    assert intake(Clock(T0 + 3)).seconds_left() == 7
    assert intake(Clock(T0 + 9.5)).seconds_left() == 1


# Merged with StatsD ---------------------------------------------------------------------


def statsd_part(lines: list[bytes]) -> Snapshot:
    aggregator = Aggregator(Naming({"host": "h"}), interval=10, clock=Clock(), hot=None)
    aggregator.ingest(b"\n".join(lines))
    return aggregator.swap()


def naive(values: list[float]) -> tuple[int, float, float, float, float]:
    mean = math.fsum(values) / len(values)
    stddev = math.sqrt(math.fsum((x - mean) ** 2 for x in values) / len(values))
    return len(values), math.fsum(values), min(values), max(values), stddev


def summary_of(values: list[float]) -> dict[str, Any]:
    count, total, low, high, stddev = naive(values)
    return {"count": count, "sum": total, "min": low, "max": high, "stddev": stddev}


def merged(statsd: Snapshot, api: ApiIntake, merger: Merger | None = None) -> Snapshot:
    part = api.take()
    merger = merger or Merger()
    if part is not None:
        merger.fold_into(statsd, part)
    return statsd


def test_an_api_summary_merges_with_a_statsd_timer_exactly() -> None:
    target = intake()
    post(target, {"name": "lat", **summary_of([10.0, 20.0, 60.0]), "tags": {"host": "h"}})
    snapshot = merged(statsd_part([b"lat:1|ms", b"lat:2|ms"]), target)
    [m] = converted(snapshot)
    count, total, low, high, stddev = naive([1.0, 2.0, 10.0, 20.0, 60.0])
    assert (m["count"], m["sum"], m["min"], m["max"]) == (count, total, low, high)
    assert m["stddev"] == pytest.approx(stddev, rel=1e-12)


def test_api_values_merge_with_statsd_values_percentiles_included() -> None:
    target = intake()
    post(target, *({"name": "lat", "value": v, "tags": {"host": "h"}} for v in (7, 8, 9)))
    snapshot = merged(statsd_part([b"lat:1|ms", b"lat:2|ms|@0.5"]), target)
    out = {m["name"]: m for m in converted(snapshot, percentiles=(50,))}
    assert out["lat"]["count"] == 6 and out["lat"]["sum"] == 1 + 2 * 2 + 24
    assert out["lat.p50"]["value"] == 7  # nearest rank over 1, 2, 7, 8, 9


def test_the_merge_runs_through_the_cardinality_guard() -> None:
    guard = CardinalityGuard(limit=2)
    merger = Merger(guard, (("host", "h"), ("overflow", "true")))
    target = intake()
    post(target, *({"name": "m", "value": 1, "tags": {"k": str(i)}} for i in range(3)))
    snapshot = merged(Snapshot(), target, merger)
    tags = sorted(dict(k[2]).get("k", "overflow") for k in snapshot.series)
    assert tags == ["0", "overflow"]
    assert merger.folded_samples == {"m": 2}


# (the API stores a number below 1e-130 as 0: keep the model's values clear of that)
finite = st.floats(-1e6, 1e6).map(lambda x: 0.0 if abs(x) < 1e-100 else x)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(finite, max_size=6),  # StatsD timer values
    st.lists(finite, max_size=4),  # API plain values
    st.lists(st.lists(finite, min_size=2, max_size=5), max_size=3),  # API summaries
)
def test_merged_series_equal_a_naive_model_of_the_union(
    statsd: list[float], values: list[float], summaries: list[list[float]]
) -> None:
    every = statsd + values + [x for group in summaries for x in group]
    target = intake()
    ms = [{"name": "lat", "value": v} for v in values]
    ms += [{"name": "lat", **summary_of(group)} for group in summaries]
    if ms:
        assert set(post(target, *ms, tags={"host": "h"})) == {None}
    snapshot = merged(statsd_part([b"lat:%r|ms" % v for v in statsd]), target)
    out = converted(snapshot)
    if not every:
        assert out == []
        return
    [m] = out
    count, total, low, high, stddev = naive(every)
    assert m["count"] == count
    assert m["sum"] == pytest.approx(total, rel=1e-9, abs=1e-6)
    assert (m["min"], m["max"]) == (low, high)
    assert m["stddev"] == pytest.approx(stddev, rel=1e-6, abs=1e-6)


def test_an_unknown_minimum_stays_unknown_through_merges_in_any_order() -> None:
    for order in (0, 1):
        target = intake()
        micrometer = {"name": "lat", "count": 2, "sum": 3.0, "max": 2.0}
        full = {"name": "lat", "count": 2, "sum": 9.0, "min": 4.0, "max": 5.0, "last": 4.0}
        post(target, *((micrometer, full) if order else (full, micrometer)))
        part = target.take()
        assert part is not None
        [m] = converted(part)
        assert "min" not in m and m["max"] == 5.0 and m["count"] == 4
        assert "stddev" not in m  # the first one's spread is unknown too
        assert m["last"] == 4.0  # the last one known


def test_values_after_a_summary_keep_the_running_figures_exact() -> None:
    target = intake()
    post(target, {"name": "lat", "count": 2, "sum": 3.0, "min": 1.0, "max": 2.0, "stddev": 0.5})
    post(target, {"name": "lat", "value": 10.0}, {"name": "lat", "value": -1.0})
    part = target.take()
    assert part is not None
    [m] = converted(part)
    count, total, low, high, stddev = naive([1.0, 2.0, 10.0, -1.0])
    assert (m["count"], m["sum"], m["min"], m["max"], m["last"]) == (count, total, low, high, -1)
    assert m["stddev"] == pytest.approx(stddev, rel=1e-12)
