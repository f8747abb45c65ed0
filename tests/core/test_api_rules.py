"""The AppOptics API's rules for posted bodies (`statsd_ao.core.api_rules`).

Tables for the reference's rules (seed 001) and its examples; Hypothesis for the contract:
any bytes or any JSON give a `Sample`, a `Refusal` or an `ApiError`, never another
exception, and valid bodies come back exactly as they were sent.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsd_ao.core import api_rules
from statsd_ao.core.api_rules import ApiError, Refusal, Sample
from statsd_ao.core.events import Event, Link


def judge_all(doc: object, max_measurements: int = 1000) -> list[Sample | Refusal]:
    env = api_rules.envelope(orjson.dumps(doc), max_measurements)
    return [api_rules.judge(env, i) for i in range(len(env.measurements))]


def one(m: dict[str, Any], **top: Any) -> Sample | Refusal:
    return judge_all({**top, "measurements": [m]})[0]


def refused(m: dict[str, Any], **top: Any) -> Refusal:
    outcome = one(m, **top)
    assert isinstance(outcome, Refusal), outcome
    return outcome


TAGS = {"host": "a"}


# The reference's own examples ---------------------------------------------------------


def test_top_level_tags_apply_to_every_measurement() -> None:
    doc = {
        "tags": {"region": "us-west", "name": "web-prod-3"},
        "measurements": [{"name": "cpu", "value": 4.5}, {"name": "memory", "value": 10.5}],
    }
    tags = (("region", "us-west"), ("name", "web-prod-3"))
    assert judge_all(doc) == [
        Sample("cpu", tags, None, value=4.5),
        Sample("memory", tags, None, value=10.5),
    ]


def test_embedded_tags_replace_the_top_level_ones_entirely() -> None:
    doc = {
        "tags": {"region": "us-west", "name": "web-prod-3"},
        "measurements": [
            {"name": "cpu", "value": 4.5, "tags": {"name": "web-prod-1"}},
            {"name": "memory", "value": 34.5, "tags": {"az": "e", "db": "db-prod-1"}},
        ],
    }
    assert judge_all(doc) == [
        Sample("cpu", (("name", "web-prod-1"),), None, value=4.5),
        Sample("memory", (("az", "e"), ("db", "db-prod-1")), None, value=34.5),
    ]


def test_full_measurement_sample() -> None:
    m = {
        "name": "cpu",
        "time": 1421530163,
        "period": 60,
        "attributes": {"aggregate": False},
        "sum": 35.0,
        "count": 3,
        "min": 4.5,
        "max": 16.7,
        "last": 12.5,
        "stddev": 1.34,
        "tags": {"region": "us-east-1", "az": "b", "role": "kafka", "instance": "3"},
    }
    tags = (("region", "us-east-1"), ("az", "b"), ("role", "kafka"), ("instance", "3"))
    assert one(m) == Sample(
        "cpu", tags, 1421530163, count=3, sum=35.0, min=4.5, max=16.7, last=12.5, stddev=1.34
    )


def test_the_references_own_sample_is_taken_as_sent() -> None:
    # Seed 001's "Full Measurement Sample" has sum 35 over 3 values with a max of 6.7 and a
    # last of 2.5 below its min: no three numbers do that, yet it is the API's own example.
    m = {"name": "cpu", "sum": 35.0, "count": 3, "min": 4.5, "max": 6.7, "last": 2.5}
    assert isinstance(one({**m, "tags": TAGS}), Sample)


# Each rule ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("m", "param"),
    [
        ({"value": 1}, "name"),
        ({"name": "", "value": 1}, "name"),
        ({"name": "a b", "value": 1}, "name"),
        ({"name": "x" * 256, "value": 1}, "name"),
        ({"name": 5, "value": 1}, "name"),
        ({"name": "a"}, "value"),
        ({"name": "a", "value": "1"}, "value"),
        ({"name": "a", "value": True}, "value"),
        ({"name": "a", "value": 1, "count": 1, "sum": 1}, "value"),
        ({"name": "a", "count": 2}, "sum"),
        ({"name": "a", "value": 1, "sum": 1}, "sum"),
        ({"name": "a", "value": 1, "min": 1}, "min"),
        ({"name": "a", "value": 1, "stddev": 0}, "stddev"),
        ({"name": "a", "count": 0, "sum": 0}, "count"),
        ({"name": "a", "count": -1, "sum": 1}, "count"),
        ({"name": "a", "count": 2, "sum": 3, "min": 2, "max": 1}, "min"),
        ({"name": "a", "count": 2, "sum": 3, "stddev": -1}, "stddev"),
        ({"name": "a", "count": 2, "sum": 3, "stddev": 1, "stddev_m2": 2}, "stddev_m2"),
        ({"name": "a", "value": 1, "time": 0}, "time"),
        ({"name": "a", "value": 1, "time": "now"}, "time"),
        ({"name": "a", "value": 1, "period": -60}, "period"),
        ({"name": "a", "value": 1, "tags": {}}, "tags"),  # adds none; no top-level ones
        ({"name": "a", "value": 1, "tags": {"a b": "1"}}, "tags"),
        ({"name": "a", "value": 1, "tags": {"k" * 65: "1"}}, "tags"),
        ({"name": "a", "value": 1, "tags": {"k": ""}}, "tags"),
        ({"name": "a", "value": 1, "tags": {"k": "a*b"}}, "tags"),
        ({"name": "a", "value": 1, "tags": {"k": "é"}}, "tags"),
        ({"name": "a", "value": 1, "tags": {"k": "v" * 256}}, "tags"),
        ({"name": "a", "value": 1, "tags": {"k": 1.5}}, "tags"),
        ({"name": "a", "value": 1, "tags": {"k": None}}, "tags"),
        ({"name": "a", "value": 1, "tags": {"Env": "a", "env": "b"}}, "tags"),
        ({"name": "a", "value": 1, "tags": {f"k{i}": "v" for i in range(51)}}, "tags"),
        ({"name": "a", "value": 1, "tags": ["k", "v"]}, "tags"),
    ],
)
def test_a_broken_rule_refuses_the_measurement(m: dict[str, Any], param: str) -> None:
    assert refused({"tags": TAGS, **m}).param == param


def test_no_tags_at_all_is_the_references_own_error() -> None:
    assert refused({"name": "a", "value": 1}) == Refusal("tags", "Must have at least one tag")


def test_tags_are_lowercased_and_integer_values_taken_as_text() -> None:
    sample = one({"name": "A.b", "value": 1, "tags": {"Region": "US-East", "n": 3}})
    assert isinstance(sample, Sample)
    assert sample.name == "A.b"  # names keep their case, as StatsD names do
    assert sample.tags == (("region", "us-east"), ("n", "3"))


def test_fifty_tags_are_allowed() -> None:
    tags = {f"k{i}": "v" for i in range(50)}
    assert isinstance(one({"name": "a", "value": 1, "tags": tags}), Sample)


def test_the_python_clients_null_value_beside_a_summary_is_no_value() -> None:
    m = {"name": "a", "value": None, "count": 2, "sum": 3, "min": 1, "max": 2, "tags": TAGS}
    assert one(m) == Sample("a", (("host", "a"),), None, count=2, sum=3, min=1, max=2)


def test_stddev_m2_is_the_sum_of_squared_deviations() -> None:
    m = {"name": "a", "count": 2, "sum": 3, "stddev_m2": 0.5, "tags": TAGS}
    sample = one(m)
    assert isinstance(sample, Sample) and sample.m2 == 0.5 and sample.stddev is None


def test_a_value_with_last_is_the_value() -> None:
    assert one({"name": "a", "value": 2, "last": 2, "tags": TAGS}) == Sample(
        "a", (("host", "a"),), None, value=2
    )


def test_time_and_period_per_measurement_win_over_top_level() -> None:
    doc = {
        "time": 1700000000,
        "period": 60,
        "tags": TAGS,
        "measurements": [
            {"name": "a", "value": 1},
            {"name": "b", "value": 1, "time": 1700000030.7, "period": 10},
        ],
    }
    a, b = judge_all(doc)
    assert isinstance(a, Sample) and a.time == 1700000000
    assert isinstance(b, Sample) and b.time == 1700000030


def test_unknown_keys_are_ignored() -> None:
    m = {"name": "a", "value": 1, "source": "legacy", "attributes": {"x": 1}, "tags": TAGS}
    assert isinstance(one(m, extra=1), Sample)


def test_tiny_numbers_are_zero() -> None:
    sample = one({"name": "a", "value": 1e-131, "tags": TAGS})
    assert isinstance(sample, Sample) and sample.value == 0.0


@pytest.mark.parametrize("field", ["value", "sum", "min", "max", "last", "stddev", "count"])
def test_a_huge_number_anywhere_aborts_the_whole_request(field: str) -> None:
    big = {"name": "b", "count": 2, "sum": 3, "tags": TAGS}
    big = (
        {"name": "b", "value": 1e126, "tags": TAGS} if field == "value" else {**big, field: -1e127}
    )
    doc = {"measurements": [{"name": "a", "value": 1, "tags": TAGS}, big]}
    with pytest.raises(ApiError) as caught:
        judge_all(doc)
    assert caught.value.status == 400
    assert field in caught.value.body["errors"]["params"]


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        (b"", 400, "request"),
        (b"{", 400, "request"),
        (b"[]", 400, "request"),
        (b"NaN", 400, "request"),
        (b'{"measurements": []}', 400, "params"),
        (b'{"measurements": {}}', 400, "params"),
        (b'{"tags": {"a b": "1"}, "measurements": [{"name": "a", "value": 1}]}', 400, "params"),
        (b'{"time": -1, "measurements": [{"name": "a", "value": 1}]}', 400, "params"),
        (b'{"measurements": [' + b",".join([b"{}"] * 1001) + b"]}", 400, "params"),
    ],
)
def test_request_wide_errors(body: bytes, status: int, kind: str) -> None:
    with pytest.raises(ApiError) as caught:
        api_rules.envelope(body)
    assert caught.value.status == status
    assert kind in caught.value.body["errors"]


def test_the_measurements_bound_is_configurable() -> None:
    doc = {"tags": TAGS, "measurements": [{"name": "a", "value": 1}] * 3}
    assert len(judge_all(doc, max_measurements=3)) == 3
    with pytest.raises(ApiError, match="at most 2"):
        judge_all(doc, max_measurements=2)


# Answers ------------------------------------------------------------------------------


def test_answers_follow_the_reference() -> None:
    ok = api_rules.answer(2, 2, 0, [])
    assert (ok.status, ok.headers) == (202, ())
    assert ok.body == {
        "measurements": {"summary": {"total": 2, "accepted": 2, "failed": 0, "filtered": 0}}
    }
    bad = Refusal("tags", "Must have at least one tag")
    partial = api_rules.answer(2, 1, 0, [bad])
    assert partial.status == 202 and ("x-partial-failure", "true") in partial.headers
    assert partial.body["errors"] == [{"param": "tags", "reason": "Must have at least one tag"}]
    assert api_rules.answer(1, 0, 0, [bad]).status == 400
    assert api_rules.answer(1, 0, 1, []).status == 202  # filtered is not failed


# Annotations --------------------------------------------------------------------------


def test_annotation_as_json() -> None:
    body = orjson.dumps(
        {
            "title": "Deployed v56",
            "source": "foo3.bar.com",
            "description": "v56 - Fixed typo in page titles",
            "links": [{"rel": "github", "href": "https://example.com/x", "label": "Gem"}],
            "end_time": 1234567999,
            "start_time": 1234567890,
        }
    )
    assert api_rules.annotation("app-deploys", body, "application/json", 1) == Event(
        title="Deployed v56",
        text="v56 - Fixed typo in page titles",
        timestamp=1234567890,
        host="foo3.bar.com",
        stream="app-deploys",
        end_time=1234567999,
        links=(Link("github", "https://example.com/x", "Gem"),),
    )


def test_annotation_as_the_references_form_with_links() -> None:
    body = (
        b"title=My+Annotation&description=Joe+deployed+v29+to+metrics&start_time=1234567890"
        b"&links[0][label]=Metrics+Gem&links[0][href]=https://github.com/x&links[0][rel]=github"
    )
    event = api_rules.annotation("api-deploys", body, api_rules.FORM, 99)
    assert event.title == "My Annotation" and event.timestamp == 1234567890
    assert event.links == (Link("github", "https://github.com/x", "Metrics Gem"),)
    assert event.host is None and event.stream == "api-deploys"


def test_annotation_without_start_time_happened_now() -> None:
    event = api_rules.annotation("s", b"title=x", api_rules.FORM, 1700000000)
    assert event.timestamp == 1700000000


@pytest.mark.parametrize(
    ("stream", "body", "content_type", "status", "param"),
    [
        ("s", b"description=x", api_rules.FORM, 400, "title"),
        ("s", b'{"title": ""}', "application/json", 400, "title"),
        ("s", b'{"title": "t", "source": 5}', "application/json", 400, "source"),
        ("s", b"title=t&start_time=10&end_time=5", api_rules.FORM, 400, "end_time"),
        ("s", b"title=t&start_time=soon", api_rules.FORM, 400, "start_time"),
        ("s", b'{"title": "t", "links": [{"rel": "r"}]}', "application/json", 400, "links"),
        ("s", b'{"title": "t", "links": "x"}', "application/json", 400, "links"),
        ("bad stream", b"title=t", api_rules.FORM, 400, "name"),
        ("s", b"title=t", "text/plain", 415, None),
        ("s", b"{", "application/json", 400, None),
        ("s", b"\xff", api_rules.FORM, 400, None),
        ("s", b"&".join(b"a%d=1" % i for i in range(200)), api_rules.FORM, 400, None),
    ],
)
def test_annotation_refusals(
    stream: str, body: bytes, content_type: str, status: int, param: str | None
) -> None:
    with pytest.raises(ApiError) as caught:
        api_rules.annotation(stream, body, content_type, 1)
    assert caught.value.status == status
    if param is not None:
        assert param in caught.value.body["errors"]["params"]


# Properties ---------------------------------------------------------------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
keys = st.sampled_from(
    [
        "name",
        "value",
        "count",
        "sum",
        "min",
        "max",
        "last",
        "stddev",
        "stddev_m2",
        "tags",
        "time",
        "period",
    ]
)
measurement_like = st.dictionaries(keys, json_values, max_size=8)
body_like = st.fixed_dictionaries(
    {"measurements": st.lists(measurement_like | json_values, max_size=5)},
    optional={
        "tags": json_values | st.dictionaries(st.text(max_size=8), json_leaf),
        "time": json_leaf,
    },
)


def judged_or_error(body: bytes) -> list[Sample | Refusal] | ApiError:
    try:
        env = api_rules.envelope(body)
        return [api_rules.judge(env, i) for i in range(len(env.measurements))]
    except ApiError as error:
        return error


@given(st.binary(max_size=200))
def test_garbage_bytes_raise_nothing_but_the_rules_error(body: bytes) -> None:
    outcome = judged_or_error(body)
    assert isinstance(outcome, ApiError | list)


@settings(max_examples=300)
@given(body_like)
def test_arbitrary_json_raises_nothing_but_the_rules_error(doc: dict[str, Any]) -> None:
    outcome = judged_or_error(orjson.dumps(doc))
    if isinstance(outcome, ApiError):
        assert outcome.status == 400 and "errors" in outcome.body
    else:
        assert all(isinstance(x, Sample | Refusal) for x in outcome)
        answer = api_rules.answer(
            len(outcome), 0, 0, [x for x in outcome if isinstance(x, Refusal)]
        )
        orjson.dumps(answer.body)


@given(st.binary(max_size=200), st.sampled_from([api_rules.FORM, api_rules.JSON, "x/y"]))
def test_garbage_annotations_raise_nothing_but_the_rules_error(
    body: bytes, content_type: str
) -> None:
    try:
        event = api_rules.annotation("s", body, content_type, 1)
    except ApiError as error:
        assert error.status in (400, 415)
    else:
        assert event.title.strip()


names = st.from_regex(r"[A-Za-z0-9.:_\-]{1,40}", fullmatch=True)
tag_names = st.from_regex(r"[a-z0-9.:_\-]{1,20}", fullmatch=True)
tag_values = st.from_regex(r"[a-z0-9.:_?\\/\- ]{1,30}", fullmatch=True)
tag_sets = st.dictionaries(tag_names, tag_values, min_size=1, max_size=5)
finite = st.floats(min_value=-1e100, max_value=1e100, allow_nan=False).map(
    lambda x: 0.0 if abs(x) < 1e-130 else x
)


@st.composite
def valid_measurements(draw: st.DrawFn) -> dict[str, Any]:
    m: dict[str, Any] = {"name": draw(names)}
    if draw(st.booleans()):
        m["value"] = draw(finite)
    else:
        sample = st.floats(-1e6, 1e6).map(lambda x: x if abs(x) > 1e-100 else 0.0)
        values = draw(st.lists(sample, min_size=2, max_size=6))
        mean = math.fsum(values) / len(values)
        m.update(count=len(values), sum=math.fsum(values), min=min(values), max=max(values))
        m["last"] = values[-1]
        m["stddev"] = math.sqrt(math.fsum((x - mean) ** 2 for x in values) / len(values))
    if draw(st.booleans()):
        m["tags"] = draw(tag_sets)
    if draw(st.booleans()):
        m["time"] = draw(st.integers(1, 2**40))
    return m


@settings(max_examples=200)
@given(st.lists(valid_measurements(), min_size=1, max_size=10), tag_sets, st.integers(1, 2**40))
def test_valid_bodies_round_trip(ms: list[dict[str, Any]], top: dict[str, str], when: int) -> None:
    doc = {"tags": top, "time": when, "measurements": ms}
    judged = judge_all(doc)
    for m, sample in zip(ms, judged, strict=True):
        assert isinstance(sample, Sample), (m, sample)
        assert sample.name == m["name"]
        assert dict(sample.tags) == m.get("tags", top)  # own tags replace, never merge
        assert sample.time == m.get("time", when)
        if "value" in m:
            assert sample.value == m["value"] and sample.count is None
        else:
            sent = (m["count"], m["sum"], m["min"], m["max"], m["last"], m["stddev"])
            got = (sample.count, sample.sum, sample.min, sample.max, sample.last, sample.stddev)
            assert got == sent and sample.value is None
