"""The fake AppOptics is strict and correct: real HTTP on loopback, one server per test."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from tests.fakeapi import FakeAppOptics, Fault, judge_measurements

TOKEN = "tok"
TAGS = {"host": "web-1"}
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one test body on a fresh loop, bounded so a hang fails instead of stalling."""
    return asyncio.run(asyncio.wait_for(coro, 10.0))


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def gauge(name: object = "g", value: object = 1.5, **extra: object) -> dict[str, object]:
    return {"name": name, "value": value, "tags": TAGS, **extra}


def summary(**fields: object) -> dict[str, object]:
    """A consistent summary (3 samples from 4.5 to 6.7), with ``fields`` replaced."""
    base = {"count": 3, "sum": 16.0, "min": 4.5, "max": 6.7, "last": 5.0, "stddev": 0.9}
    return {"name": "t", **base, **fields, "tags": TAGS}


@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[FakeAppOptics, aiohttp.ClientSession]]:
    async with FakeAppOptics(token=TOKEN) as api, aiohttp.ClientSession() as session:
        yield api, session


async def post(
    session: aiohttp.ClientSession,
    api: FakeAppOptics,
    body: object,
    *,
    path: str = "/v1/measurements",
    authorization: str | None = basic(TOKEN),
    content_type: str = "application/json",
    timeout: float | None = None,
) -> Reply:
    """POST ``body`` (bytes as is, anything else as JSON) and read the whole answer."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"Content-Type": content_type}
    if authorization is not None:
        headers["Authorization"] = authorization
    limit = aiohttp.ClientTimeout(total=timeout)
    async with session.post(api.url + path, data=data, headers=headers, timeout=limit) as resp:
        return Reply(resp.status, CIMultiDict(resp.headers), await resp.read())


async def post_one(body: object, **kwargs: Any) -> tuple[Reply, FakeAppOptics]:
    async with serving() as (api, session):
        return await post(session, api, body, **kwargs), api


# -- the gate: auth, content type, envelope ------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, basic("wrong"), basic(TOKEN, "secret"), "Bearer tok", "Basic !!notbase64"],
    ids=["missing", "wrong-token", "non-empty-password", "not-basic", "bad-base64"],
)
def test_bad_credentials_are_401(authorization: str | None) -> None:
    reply, api = run(post_one({"measurements": [gauge()]}, authorization=authorization))
    assert reply.status == 401
    assert reply.json() == {"errors": {"request": ["Authorization failed"]}}
    assert api.accepted == []


def test_wrong_content_type_is_415() -> None:
    reply, api = run(post_one({"measurements": [gauge()]}, content_type="text/plain"))
    assert reply.status == 415
    assert api.accepted == []


def test_content_type_parameters_are_fine() -> None:
    body = {"measurements": [gauge()]}
    reply, _ = run(post_one(body, content_type="application/json; charset=utf-8"))
    assert reply.status == 202


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"measurements": [{"name": "g", "value": NaN, "tags": {"a": "b"}}]}',
        b"[]",
        {},
        {"measurements": {"name": "g"}},
    ],
    ids=["not-json", "nan", "not-object", "no-measurements", "not-list"],
)
def test_a_body_whose_measurements_cannot_be_found_is_429(body: object) -> None:
    # "429 ... If creating a measurement, this error returns when it can not parse the
    # basic format of the payload to identify measurements."
    reply, api = run(post_one(body))
    assert reply.status == 429
    assert "request" in reply.json()["errors"]
    assert api.accepted == []


@pytest.mark.parametrize(
    "body",
    [
        {"measurements": []},
        {"measurements": [gauge()], "source": "old-api"},
        {"measurements": [gauge()], "tags": ["a"]},
        {"measurements": [gauge()], "tags": {"bad tag": "x"}},
        {"measurements": [gauge()], "tags": {f"t{i}": "v" for i in range(51)}},
        {"measurements": [gauge()], "time": "1700000000"},
        {"measurements": [gauge()], "time": 1_700_000_000_000},
        {"measurements": [gauge()], "time": 60},
    ],
    ids=[
        "empty",
        "unknown-top",
        "top-tags-list",
        "top-tag-bad",
        "top-tags-51",
        "top-time-str",
        "top-time-millis",
        "top-time-tiny",
    ],
)
def test_malformed_envelope_is_400(body: object) -> None:
    reply, api = run(post_one(body))
    assert reply.status == 400
    assert "errors" in reply.json()
    assert api.accepted == []


def test_at_most_1000_measurements_per_post() -> None:
    async def go() -> None:
        async with serving() as (api, session):
            full = await post(session, api, {"measurements": [gauge(f"g{i}") for i in range(1000)]})
            over = await post(session, api, {"measurements": [gauge(f"g{i}") for i in range(1001)]})
            assert (full.status, over.status) == (202, 400)
            assert len(api.accepted) == 1000
            assert len(api.rejected) == 1001
            assert [r.measurements for r in api.requests] == [1000, 1001]

    run(go())


@pytest.mark.parametrize("huge", [1e126, -1e126, 1.7e308])
def test_a_huge_number_aborts_the_whole_request(huge: float) -> None:
    body = {"measurements": [gauge("ok"), gauge("big", huge)]}
    reply, api = run(post_one(body))
    assert reply.status == 400
    assert "x-partial-failure" not in reply.headers
    assert api.accepted == []
    assert [m["name"] for m, _ in api.rejected] == ["ok", "big"]


def test_a_huge_number_anywhere_aborts_even_in_summary_fields() -> None:
    body = {"measurements": [gauge("ok"), {"name": "t", "count": 1, "sum": 1, "max": 2e200}]}
    reply, _ = run(post_one(body))
    assert reply.status == 400


def test_just_below_the_limit_is_accepted_and_tiny_becomes_zero() -> None:
    reply, api = run(post_one({"measurements": [gauge("a", 9.99e125), gauge("b", 1e-131)]}))
    assert reply.status == 202
    assert [m["value"] for m in api.accepted] == [9.99e125, 0.0]


# -- one measurement: table of rules --------------------------------------------------------

# id -> (measurement, the param its error names)
REJECTED: dict[str, tuple[object, str]] = {
    "value-and-count": (gauge(count=2, sum=3.0), "value"),
    "no-value-no-count": ({"name": "g", "tags": TAGS}, "value"),
    "count-without-sum": ({"name": "g", "count": 2, "tags": TAGS}, "sum"),
    "sum-without-count": (gauge(sum=2.0), "sum"),
    "min-with-value": (gauge(min=1.0), "min"),
    "stddev-with-value": (gauge(stddev=1.0), "stddev"),
    "count-zero": ({"name": "g", "count": 0, "sum": 0, "tags": TAGS}, "count"),
    "count-negative": ({"name": "g", "count": -1, "sum": 0, "tags": TAGS}, "count"),
    "count-fractional": ({"name": "t", "count": 0.5, "sum": 1.0, "tags": TAGS}, "count"),
    "count-float": ({"name": "t", "count": 2.0, "sum": 1.0, "tags": TAGS}, "count"),
    "min-above-max": (summary(min=7.0, max=6.0), "min"),
    "stddev-negative": (summary(stddev=-0.1), "stddev"),
    "sum-above-count-max": (summary(sum=20.2), "sum"),  # the mean above the max
    "sum-below-count-min": (summary(sum=13.4), "sum"),
    "last-above-max": (summary(last=6.8), "last"),
    "time-millis": (gauge(time=1_700_000_000_000), "time"),
    "time-tiny": (gauge(time=60), "time"),
    "value-null": (gauge(value=None), "value"),
    "value-string": (gauge(value="1"), "value"),
    "value-bool": (gauge(value=True), "value"),
    "sum-string": ({"name": "g", "count": 1, "sum": "1", "tags": TAGS}, "sum"),
    "time-float": (gauge(time=1.5), "time"),
    "time-string": (gauge(time="1700000000"), "time"),
    "time-bool": (gauge(time=True), "time"),
    "period-zero": (gauge(period=0), "period"),
    "unknown-field": (gauge(stdev=1.0), "stdev"),
    "attributes-not-object": (gauge(attributes=["sum"]), "attributes"),
    "not-an-object": ("g:1|c", "measurements"),
    "name-missing": ({"value": 1, "tags": TAGS}, "name"),
    "name-empty": (gauge(""), "name"),
    "name-space": (gauge("my metric"), "name"),
    "name-slash": (gauge("a/b"), "name"),
    "name-unicode": (gauge("temp\u00e9rature"), "name"),
    "name-256": (gauge("a" * 256), "name"),
    "name-number": (gauge(5), "name"),
    "tags-missing": ({"name": "g", "value": 1}, "tags"),
    "tags-empty": (gauge(tags={}), "tags"),
    "tags-list": (gauge(tags=[["a", "b"]]), "tags"),
    "tags-51": (gauge(tags={f"t{i}": "v" for i in range(51)}), "tags"),
    "tag-name-space": (gauge(tags={"a b": "v"}), "tags"),
    "tag-name-slash": (gauge(tags={"a/b": "v"}), "tags"),
    "tag-name-65": (gauge(tags={"a" * 65: "v"}), "tags"),
    "tag-name-empty": (gauge(tags={"": "v"}), "tags"),
    "tag-name-unicode": (gauge(tags={"r\u00e9gion": "v"}), "tags"),
    "tag-value-empty": (gauge(tags={"a": ""}), "tags"),
    "tag-value-equals": (gauge(tags={"a": "b=c"}), "tags"),
    "tag-value-comma": (gauge(tags={"a": "b,c"}), "tags"),
    "tag-value-unicode": (gauge(tags={"a": "caf\u00e9"}), "tags"),
    "tag-value-256": (gauge(tags={"a": "v" * 256}), "tags"),
    "tag-value-number": (gauge(tags={"a": 3}), "tags"),
    "tag-value-null": (gauge(tags={"a": None}), "tags"),
    "tag-names-collide-lowercased": (gauge(tags={"Host": "a", "host": "b"}), "tags"),
}


@pytest.mark.parametrize(("measurement", "param"), REJECTED.values(), ids=REJECTED.keys())
def test_a_broken_measurement_is_rejected(measurement: object, param: str) -> None:
    # Judged without a server; the next test sends the whole table over loopback.
    verdict = judge_measurements({"measurements": [measurement, gauge("good")]})
    assert verdict.status == 202
    assert verdict.partial
    assert [m["name"] for m in verdict.accepted] == ["good"]
    assert [m for m, _ in verdict.rejected] == [measurement]
    (error,) = verdict.body["errors"]
    assert error["param"] == param
    assert isinstance(error["reason"], str) and error["reason"]


def test_the_rejection_table_over_loopback_fails_each_entry_alone() -> None:
    table = [measurement for measurement, _ in REJECTED.values()]
    reply, api = run(post_one({"measurements": [gauge("good"), *table]}))
    assert reply.status == 202
    assert reply.headers["x-partial-failure"] == "true"
    doc = reply.json()
    total = len(table) + 1
    summary = {"total": total, "accepted": 1, "failed": len(table), "filtered": 0}
    assert doc["measurements"]["summary"] == summary
    assert [e["param"] for e in doc["errors"]] == [param for _, param in REJECTED.values()]
    assert [m for m, _ in api.rejected] == table


ACCEPTED = {
    "value-int": gauge(value=3),
    "value-negative": gauge(value=-2.5),
    "value-zero": gauge(value=0),
    "value-with-last": gauge(last=1.0),
    "summary": {"name": "t", "count": 3, "sum": 35.0, "tags": TAGS},
    "summary-full": summary(),
    "summary-at-its-bounds": summary(sum=13.5, min=4.5, max=4.5, last=4.5, stddev=0.0),
    "name-255": gauge("a" * 255),
    "name-all-chars": gauge("Az09.:-_"),
    "tags-50": gauge(tags={f"t{i}": "v" for i in range(50)}),
    "tag-name-64": gauge(tags={"a" * 64: "v"}),
    "tag-name-all-chars": gauge(tags={"Az09-.:_": "v"}),
    "tag-value-255": gauge(tags={"a": "v" * 255}),
    "tag-value-all-chars": gauge(tags={"a": "Az09-.:_?\\/ x"}),
    "attributes": gauge(attributes={"summarize_function": "sum"}),
    "time-and-period": gauge(time=1700000000, period=10),
}


@pytest.mark.parametrize("measurement", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_a_valid_measurement_is_accepted(measurement: dict[str, Any]) -> None:
    verdict = judge_measurements({"measurements": [measurement]})
    assert (verdict.status, verdict.rejected) == (202, [])
    assert len(verdict.accepted) == 1


def test_missing_tags_error_reads_like_the_real_api() -> None:
    body = {"measurements": [gauge("ok"), {"name": "bare", "value": 1}]}
    reply, _ = run(post_one(body))
    assert reply.json()["errors"] == [{"param": "tags", "reason": "Must have at least one tag"}]


# -- answers: 202, partial, 400 --------------------------------------------------------------


def test_all_valid_is_202_with_summary() -> None:
    reply, api = run(post_one({"measurements": [gauge("a"), gauge("b")]}))
    assert reply.status == 202
    assert "x-partial-failure" not in reply.headers
    summary = {"total": 2, "accepted": 2, "failed": 0, "filtered": 0}
    assert reply.json() == {"measurements": {"summary": summary}}
    assert [m["name"] for m in api.accepted] == ["a", "b"]


def test_partial_failure_is_202_with_header_summary_and_errors() -> None:
    body = {
        "measurements": [
            gauge("a"),
            gauge("b", count=1, sum=1),
            gauge("c"),
            gauge("d", tags={"bad tag": "x"}),
            gauge("e"),
        ]
    }
    reply, api = run(post_one(body))
    assert reply.status == 202
    assert reply.headers["x-partial-failure"] == "true"
    doc = reply.json()
    summary = {"total": 5, "accepted": 3, "failed": 2, "filtered": 0}
    assert doc["measurements"]["summary"] == summary
    assert [e["param"] for e in doc["errors"]] == ["value", "tags"]
    assert all(isinstance(e["reason"], str) and e["reason"] for e in doc["errors"])
    assert [m["name"] for m in api.accepted] == ["a", "c", "e"]
    assert [m["name"] for m, _ in api.rejected] == ["b", "d"]
    assert api.rejected[1][1].startswith("tags: ")


def test_all_invalid_is_400_with_the_same_body() -> None:
    reply, api = run(post_one({"measurements": [gauge("a", None), {"name": "b", "value": 1}]}))
    assert reply.status == 400
    assert "x-partial-failure" not in reply.headers
    doc = reply.json()
    summary = {"total": 2, "accepted": 0, "failed": 2, "filtered": 0}
    assert doc["measurements"]["summary"] == summary
    assert len(doc["errors"]) == 2
    assert api.accepted == []


# -- what is recorded ------------------------------------------------------------------------


def test_embedded_tags_replace_top_level_tags_never_merge() -> None:
    # The reference's own example ("Embedded Measurement Tags"), plus one measurement without
    # embedded tags, which keeps the top-level ones.
    body = {
        "tags": {"region": "us-west", "name": "web-prod-3"},
        "measurements": [
            {"name": "cpu", "value": 4.5, "tags": {"name": "web-prod-1"}},
            {"name": "memory", "value": 34.5, "tags": {"az": "e", "db": "db-prod-1"}},
            {"name": "disk", "value": 1.0},
        ],
    }
    reply, api = run(post_one(body))
    assert reply.status == 202
    assert {m["name"]: m["tags"] for m in api.accepted} == {
        "cpu": {"name": "web-prod-1"},
        "memory": {"az": "e", "db": "db-prod-1"},
        "disk": {"region": "us-west", "name": "web-prod-3"},
    }


def test_invalid_top_level_tags_abort_the_post_even_where_every_measurement_replaces_them() -> None:
    body = {"tags": {"bad tag": "x"}, "measurements": [gauge("embedded")]}
    verdict = judge_measurements(body)
    assert verdict.status == 400 and verdict.accepted == []
    assert "tags" in verdict.body["errors"]["params"]


def test_empty_embedded_tags_still_replace_the_top_level_ones() -> None:
    body = {"tags": {"host": "a"}, "measurements": [gauge("ok"), gauge("empty", tags={})]}
    reply, api = run(post_one(body))
    assert reply.headers["x-partial-failure"] == "true"
    assert [m["name"] for m, _ in api.rejected] == ["empty"]


def test_tags_are_stored_lowercased_and_names_kept() -> None:
    reply, api = run(post_one({"measurements": [gauge("My.Metric", tags={"Region": "US-East"})]}))
    assert reply.status == 202
    assert api.accepted[0]["name"] == "My.Metric"
    assert api.accepted[0]["tags"] == {"region": "us-east"}


def test_time_and_period_resolve_top_level_then_per_measurement() -> None:
    body = {
        "time": 1700000000,
        "period": 60,
        "measurements": [
            gauge("inherits"),
            gauge("overrides", time=1700000010, period=10),
        ],
    }
    reply, api = run(post_one(body))
    assert reply.status == 202
    got = {m["name"]: (m["time"], m["period"]) for m in api.accepted}
    assert got == {"inherits": (1700000000, 60), "overrides": (1700000010, 10)}
    _, bare = run(post_one({"measurements": [gauge()]}))
    assert (bare.accepted[0]["time"], bare.accepted[0]["period"]) == (None, None)


def test_the_reference_full_sample_is_recorded_field_for_field_once_consistent() -> None:
    sample = {
        "name": "cpu",
        "time": 1421530163,
        "period": 60,
        "attributes": {"aggregate": False},
        "sum": 35.0,
        "count": 3,
        "min": 4.5,
        "max": 6.7,
        "last": 2.5,
        "stddev": 1.34,
        "tags": {"region": "us-east-1", "az": "b", "role": "kafka", "instance": "3"},
    }
    # The reference's own sample contradicts itself: a mean of 11.7 above its max of 6.7.
    reply, api = run(post_one({"measurements": [sample]}))
    assert reply.status == 400
    assert reply.json()["errors"] == [
        {"param": "sum", "reason": "sum 35.0 is outside count x [min, max]"}
    ]
    consistent = {**sample, "sum": 16.0, "last": 5.0}
    reply, api = run(post_one({"measurements": [consistent]}))
    assert reply.status == 202
    assert api.accepted == [consistent]


def test_the_same_series_twice_in_one_post_is_rejected_names_ignoring_case() -> None:
    body = {
        "measurements": [
            gauge("lat", 1.0),
            gauge("Lat", 2.0),  # the same metric: names are case-insensitive
            gauge("lat", 3.0, tags={"host": "web-2"}),  # other tags: another series
            gauge("lat", 4.0, time=1_700_000_000),  # another time: another point
        ]
    }
    verdict = judge_measurements(body)
    assert [m["value"] for m in verdict.accepted] == [1.0, 3.0, 4.0]
    assert [(m["value"], why) for m, why in verdict.rejected] == [
        (2.0, "name: the same series (name, tags, time) twice in one post")
    ]


def test_a_metric_keeps_the_spelling_it_was_first_posted_with() -> None:
    async def go() -> None:
        async with serving() as (api, session):
            await post(session, api, {"measurements": [gauge("Requests")]})
            await post(session, api, {"measurements": [gauge("requests"), gauge("other")]})
            assert [m["name"] for m in api.accepted] == ["Requests", "Requests", "other"]

    run(go())


def test_every_answer_carries_the_rate_limit_header() -> None:
    async def go() -> None:
        async with serving() as (api, session):
            api.script([Fault.status(503)])
            answers = [
                await post(session, api, {"measurements": [gauge()]}),  # scripted 503
                await post(session, api, {"measurements": [gauge()]}),  # 202
                await post(session, api, {"measurements": [gauge(tags={})]}),  # 400
                await post(session, api, b"not json"),  # 429
                await post(session, api, {"measurements": [gauge()]}, authorization=None),
                await post(session, api, {"title": "x"}, path="/v1/annotations/s"),  # 201
            ]
            assert [a.status for a in answers] == [503, 202, 400, 429, 401, 201]
            limits = [a.headers["X-Librato-RateLimit-Std"] for a in answers]
            assert limits[0] == "limit=1000000,remaining=999999,reset=3600"
            assert [limit.split(",")[1] for limit in limits] == [
                f"remaining={999_999 - i}" for i in range(6)
            ]
            api.script([Fault.status(429, headers={"X-Librato-RateLimit-Std": "remaining=0"})])
            limited = await post(session, api, {"measurements": [gauge()]})
            assert limited.headers["X-Librato-RateLimit-Std"] == "remaining=0"  # scripted

    run(go())


def test_every_request_is_recorded_with_status_size_and_headers() -> None:
    async def go() -> None:
        async with serving() as (api, session):
            body = orjson.dumps({"measurements": [gauge("a"), gauge("b")]})
            await post(session, api, body)
            await post(session, api, body, authorization=basic("nope"))
            first, second = api.requests
            assert (first.status, second.status) == (202, 401)
            assert (first.measurements, first.body_size, first.body) == (2, len(body), body)
            assert first.headers["authorization"] == basic(TOKEN)
            assert first.headers["content-type"] == "application/json"
            assert first.headers["content-length"] == str(len(body))
            assert (first.method, first.path, first.fault) == ("POST", "/v1/measurements", None)

    run(go())


# -- annotations ----------------------------------------------------------------------------


def test_annotation_json_is_201_and_recorded() -> None:
    async def go() -> None:
        async with serving() as (api, session):
            event = {"title": "deploy v56", "source": "ci", "start_time": 1234567890}
            event["links"] = [{"rel": "github", "href": "https://example.invalid/x"}]
            reply = await post(session, api, event, path="/v1/annotations/app-deploys")
            assert reply.status == 201
            assert reply.headers["Location"] == "/v1/annotations/app-deploys/1"
            assert reply.json()["title"] == "deploy v56"
            (stored,) = api.annotations
            assert stored["stream"] == "app-deploys"
            assert (stored["start_time"], stored["end_time"]) == (1234567890, None)
            assert stored["links"] == event["links"]

    run(go())


def test_annotation_form_is_accepted_and_start_time_defaults_to_now() -> None:
    form = b"title=My+Annotation&description=Joe+deployed&links[0][rel]=ci&links[0][href]=h"
    before = int(time.time())
    reply, api = run(
        post_one(
            form,
            path="/v1/annotations/api-deploys",
            content_type="application/x-www-form-urlencoded",
        )
    )
    assert reply.status == 201
    (stored,) = api.annotations
    assert (stored["title"], stored["description"]) == ("My Annotation", "Joe deployed")
    assert stored["links"] == [{"rel": "ci", "href": "h"}]
    assert before <= stored["start_time"] <= int(time.time())


@pytest.mark.parametrize(
    ("body", "authorization", "status"),
    [
        ({"title": "x"}, basic("wrong"), 401),
        ({"description": "no title"}, basic(TOKEN), 400),
        ({"title": ""}, basic(TOKEN), 400),
        ({"title": "x", "start_time": 10, "end_time": 5}, basic(TOKEN), 400),
        ({"title": "x", "links": [{"rel": "r"}]}, basic(TOKEN), 400),
        ({"title": "x", "colour": "red"}, basic(TOKEN), 400),
    ],
    ids=["wrong-token", "no-title", "empty-title", "ends-early", "link-no-href", "unknown"],
)
def test_bad_annotations_are_refused(
    body: Mapping[str, object], authorization: str, status: int
) -> None:
    reply, api = run(post_one(body, path="/v1/annotations/s", authorization=authorization))
    assert reply.status == status
    assert api.annotations == []


# -- faults ----------------------------------------------------------------------------------


def test_status_fault_answers_instead_of_the_api_then_normal_handling_resumes() -> None:
    async def go() -> None:
        async with serving() as (api, session):
            api.script([Fault.status(503), Fault.status(401)])
            assert api.pending_faults == 2
            unavailable = await post(session, api, {"measurements": [gauge()]})
            unauthorized = await post(session, api, {"measurements": [gauge()]})
            normal = await post(session, api, {"measurements": [gauge()]})
            assert (unavailable.status, unauthorized.status, normal.status) == (503, 401, 202)
            assert "system" in unavailable.json()["errors"]
            assert "request" in unauthorized.json()["errors"]
            assert len(api.accepted) == 1
            assert [r.fault for r in api.requests] == ["status", "status", None]
            assert api.pending_faults == 0

    run(go())


def test_status_fault_with_empty_body_and_headers() -> None:
    async def go() -> None:
        async with serving() as (api, session):
            api.script(
                [Fault.status(500, body=b""), Fault.status(429, headers={"Retry-After": "2"})]
            )
            empty = await post(session, api, {"measurements": [gauge()]})
            limited = await post(session, api, {"measurements": [gauge()]})
            assert (empty.status, empty.body) == (500, b"")
            assert limited.status == 429
            assert limited.headers["Retry-After"] == "2"
            assert api.accepted == []

    run(go())


def test_drop_closes_the_connection_without_an_answer() -> None:
    async def go() -> None:
        async with serving() as (api, session):
            api.script([Fault.drop()])
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await post(session, api, {"measurements": [gauge()]})
            after = await post(session, api, {"measurements": [gauge()]})
            assert after.status == 202
            dropped = api.requests[0]
            assert (dropped.status, dropped.fault, dropped.measurements) == (None, "drop", 1)
            assert len(api.accepted) == 1

    run(go())


def test_delay_answers_normally_after_the_delay() -> None:
    async def go() -> None:
        async with serving() as (api, session):
            api.script([Fault.delay(0.1)])
            started = time.monotonic()
            reply = await post(session, api, {"measurements": [gauge()]})
            assert time.monotonic() - started >= 0.1
            assert reply.status == 202
            assert len(api.accepted) == 1
            assert api.requests[0].fault == "delay"

    run(go())


def test_delay_outlasts_a_client_timeout_and_close_cuts_it_short() -> None:
    async def go() -> None:
        async with serving() as (api, session):
            api.script([Fault.delay(60)])
            with pytest.raises(asyncio.TimeoutError):
                await post(session, api, {"measurements": [gauge()]}, timeout=0.1)
            started = time.monotonic()
            await api.close()
            assert time.monotonic() - started < 10.0  # not the delay's 60 s

    run(go())


def test_down_answers_503_until_cleared_and_leaves_the_script_alone() -> None:
    async def go() -> None:
        async with serving() as (api, session):
            api.script([Fault.status(429)])
            api.down = True
            first = await post(session, api, {"measurements": [gauge()]})
            second = await post(session, api, {"measurements": [gauge()]})
            api.down = False
            scripted = await post(session, api, {"measurements": [gauge()]})
            normal = await post(session, api, {"measurements": [gauge()]})
            statuses = [first.status, second.status, scripted.status, normal.status]
            assert statuses == [503, 503, 429, 202]
            assert [r.fault for r in api.requests] == ["down", "down", "status", None]

    run(go())


def test_faults_apply_to_annotations_too() -> None:
    async def go() -> None:
        async with serving() as (api, session):
            api.script([Fault.status(503)])
            reply = await post(session, api, {"title": "x"}, path="/v1/annotations/s")
            assert reply.status == 503
            assert api.annotations == []

    run(go())


# -- wait_for --------------------------------------------------------------------------------


def test_wait_for_parks_until_a_request_wakes_it() -> None:
    async def go() -> None:
        async with serving() as (api, session):
            checks = 0

            def one_accepted(fake: FakeAppOptics) -> bool:
                nonlocal checks
                checks += 1
                return len(fake.accepted) == 1

            waiter = asyncio.create_task(api.wait_for(one_accepted, timeout=5.0))
            for _ in range(50):  # give a poller every chance to re-check; a waiter parks
                await asyncio.sleep(0)
            assert (checks, waiter.done()) == (1, False)
            await post(session, api, {"measurements": [gauge()]})
            await waiter
            assert checks <= 3  # the first check, then one per wake-up (arrival, answer)

    run(go())


def test_wait_for_returns_at_once_when_already_true() -> None:
    async def go() -> None:
        async with serving() as (api, _):
            await api.wait_for(lambda fake: fake.requests == [], timeout=0.01)

    run(go())


def test_wait_for_times_out_with_a_useful_message() -> None:
    async def go() -> None:
        async with serving() as (api, session):
            await post(session, api, {"measurements": [gauge()]})

            def never(fake: FakeAppOptics) -> bool:
                return False

            started = time.monotonic()
            with pytest.raises(TimeoutError, match=r"never still false after 0\.05s") as info:
                await api.wait_for(never, timeout=0.05)
            assert time.monotonic() - started < 5.0  # its own timeout, not the default 10 s
            assert "requests=1 statuses=[202] accepted=1" in str(info.value)

    run(go())


def test_start_binds_a_loopback_port_and_close_is_idempotent() -> None:
    async def go() -> None:
        api = FakeAppOptics()
        with pytest.raises(RuntimeError):
            _ = api.url
        await api.start()
        assert api.url.startswith("http://127.0.0.1:")
        assert not api.url.endswith(":0")
        await api.close()
        await api.close()

    run(go())
