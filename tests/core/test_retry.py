"""The retry policy, without a network: what each answer means, backoff, bounds, pacing."""

from __future__ import annotations

import email.utils
import random
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from statsd_ao.core.retry import (
    ANSWERED,
    MAX_SERVER_WAIT,
    Answer,
    Backoff,
    Gate,
    GiveUp,
    Loss,
    Outcome,
    Policy,
    Retry,
    Verdict,
    classify,
    parse_errors,
    parse_summary,
    retry_after,
    server_wait,
    status_kind,
)

WALL = 1_800_000_000.0


def body(doc: Any) -> bytes:
    return orjson.dumps(doc)


def summary(total: int, accepted: int, failed: int = 0, filtered: int = 0) -> bytes:
    counts = {"total": total, "accepted": accepted, "failed": failed, "filtered": filtered}
    errors = [{"param": "tags", "reason": "Must have at least one tag"}] * failed
    return body({"measurements": {"summary": counts}, "errors": errors})


PARTIAL = {"x-partial-failure": "true"}
REQUEST_ERROR = body({"errors": {"params": {"measurements": ["1e+127 is too large"]}}})

# (status, headers, body, count) -> (kind, accepted, refused)
TABLE: list[tuple[int | None, dict[str, str], bytes, int, Outcome, int, int]] = [
    (200, {}, b"", 10, Outcome.DELIVERED, 10, 0),
    (202, {}, summary(10, 10), 10, Outcome.DELIVERED, 10, 0),
    (204, {}, b"", 10, Outcome.DELIVERED, 10, 0),
    (202, PARTIAL, summary(10, 7, 2, 1), 10, Outcome.PARTIAL, 7, 3),
    (
        202,
        PARTIAL,
        body({"errors": [{"param": "tags", "reason": "x"}] * 2}),
        10,
        Outcome.PARTIAL,
        8,
        2,
    ),
    (202, PARTIAL, b"not json", 10, Outcome.PARTIAL, 10, 0),
    (400, {}, summary(10, 0, 10), 10, Outcome.REJECTED, 0, 10),
    (400, {}, REQUEST_ERROR, 10, Outcome.SPLIT, 0, 0),
    (400, {}, b"", 10, Outcome.SPLIT, 0, 0),
    (400, {}, summary(5, 0, 5), 10, Outcome.SPLIT, 0, 0),  # a summary of some other post
    (400, {}, summary(10, 4, 6), 10, Outcome.PARTIAL, 4, 6),  # never re-send what was stored
    (413, {}, b"", 10, Outcome.SPLIT, 0, 0),
    (429, {}, b"", 10, Outcome.THROTTLED, 0, 0),
    (429, {}, summary(10, 0, 10), 10, Outcome.THROTTLED, 0, 0),
    (429, {}, summary(10, 3, 7), 10, Outcome.PARTIAL, 3, 7),
    (408, {}, b"", 10, Outcome.TRANSIENT, 0, 0),
    (500, {}, b"", 10, Outcome.TRANSIENT, 0, 0),
    (502, {}, b"<html>bad gateway</html>", 10, Outcome.TRANSIENT, 0, 0),
    (503, {}, body({"errors": {"system": ["maintenance"]}}), 10, Outcome.TRANSIENT, 0, 0),
    (504, {}, b"", 10, Outcome.TRANSIENT, 0, 0),
    (401, {}, body({"errors": {"request": ["Authorization failed"]}}), 10, Outcome.DENIED, 0, 0),
    (403, {}, b"", 10, Outcome.DENIED, 0, 0),
    (404, {}, b"", 10, Outcome.DENIED, 0, 0),
    (415, {}, b"", 10, Outcome.DENIED, 0, 0),
    (301, {}, b"", 10, Outcome.DENIED, 0, 0),
    (None, {}, b"", 10, Outcome.TRANSIENT, 0, 0),
]


@pytest.mark.parametrize(
    ("status", "headers", "raw", "count", "kind", "accepted", "refused"), TABLE
)
def test_classification_table(
    *,
    status: int | None,
    headers: dict[str, str],
    raw: bytes,
    count: int,
    kind: Outcome,
    accepted: int,
    refused: int,
) -> None:
    answer = Answer(status, headers, raw) if status else Answer(error="TimeoutError", sent=True)
    verdict = classify(answer, count, WALL)
    assert (verdict.kind, verdict.accepted, verdict.refused) == (kind, accepted, refused)


def test_status_kinds_cover_every_error_status() -> None:
    kinds = {status: status_kind(status) for status in range(300, 600) if status not in {400, 429}}
    assert {s for s, k in kinds.items() if k is Outcome.TRANSIENT} == {408, *range(500, 600)}
    assert {s for s, k in kinds.items() if k is Outcome.SPLIT} == {413}


def test_partial_failure_reasons_are_read_for_the_log() -> None:
    verdict = classify(Answer(202, PARTIAL, summary(3, 2, 1)), 3, WALL)
    assert verdict.errors == ("tags: Must have at least one tag",)
    assert parse_errors(REQUEST_ERROR) == ("measurements: 1e+127 is too large",)
    assert parse_errors(body({"errors": {"request": ["a", "b"]}})) == ("request: a", "request: b")


@given(
    status=st.integers(100, 599) | st.none(),
    headers=st.dictionaries(
        st.sampled_from(["retry-after", "x-partial-failure", "x-librato-ratelimit-agg", "x"]),
        st.text(max_size=30),
    ),
    raw=st.binary(max_size=200)
    | st.builds(
        summary,
        st.integers(-5, 2000),
        st.integers(-5, 2000),
        st.integers(-5, 2000),
        st.integers(-5, 2000),
    ),
    count=st.integers(1, 1000),
)
def test_any_answer_is_classified_without_raising(
    status: int | None, headers: dict[str, str], raw: bytes, count: int
) -> None:
    verdict = classify(Answer(status, headers, raw, error="X"), count, WALL)
    assert 0 <= verdict.accepted <= count
    assert 0 <= verdict.refused <= count - verdict.accepted
    assert verdict.wait is None or 0 <= verdict.wait <= MAX_SERVER_WAIT
    if verdict.kind in {Outcome.PARTIAL, Outcome.REJECTED}:  # settled: nothing left to re-send
        assert verdict.accepted + verdict.refused == count


@given(
    st.recursive(
        st.none() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    )
)
def test_odd_bodies_never_break_the_parsers(doc: Any) -> None:
    for wrapped in (doc, {"measurements": {"summary": doc}, "errors": doc}):
        raw = body(wrapped)
        found = parse_summary(raw)
        assert found is None or min(found.total, found.accepted) >= 0
        assert all(isinstance(reason, str) for reason in parse_errors(raw))


def test_numbers_json_cannot_hold_are_not_a_summary() -> None:
    assert parse_summary(b'{"measurements":{"summary":{"total":1e400,"accepted":1}}}') is None
    assert parse_summary(b'{"measurements":{"summary":{"total":99999999999999999999999}}}') is None
    assert parse_summary(b'{"measurements":{"summary":{"total":true,"accepted":1}}}') is None
    assert parse_summary(summary(3, 2, 1)) is not None


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after("2", WALL) == 2.0
    assert retry_after(" 0 ", WALL) == 0.0
    assert retry_after("-5", WALL) == 0.0
    assert retry_after("1.5", WALL) == 1.5
    assert retry_after("soon", WALL) is None
    assert retry_after(None, WALL) is None
    assert retry_after(email.utils.formatdate(WALL + 30, usegmt=True), WALL) == 30.0
    assert retry_after(email.utils.formatdate(WALL - 30, usegmt=True), WALL) == 0.0
    assert retry_after("nan", WALL) is None


def test_server_wait_reads_retry_after_and_exhausted_rate_limits() -> None:
    assert server_wait({}, WALL) is None
    assert server_wait({"retry-after": "7"}, WALL) == 7.0
    agg = "x-librato-ratelimit-agg"
    assert server_wait({agg: "limit=300,remaining=0,reset=25"}, WALL) == 25.0
    assert server_wait({agg: "limit=300,remaining=12,reset=25"}, WALL) is None
    assert server_wait({agg: f"limit=300; remaining=0; reset={WALL + 40:.0f}"}, WALL) == 40.0
    pair = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "9"}
    assert server_wait(pair, WALL) == 9.0
    assert server_wait({**pair, "retry-after": "3"}, WALL) == 9.0  # the longer wait wins
    assert server_wait({"retry-after": "86400"}, WALL) == MAX_SERVER_WAIT
    assert server_wait({agg: "garbage", "x-ratelimit-reset": "x"}, WALL) is None


def test_a_wait_comes_with_any_status() -> None:
    verdict = classify(Answer(503, {"retry-after": "4"}), 1, WALL)
    assert (verdict.kind, verdict.wait) == (Outcome.TRANSIENT, 4.0)
    ok = classify(Answer(202, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "5"}), 1, WALL)
    assert (ok.kind, ok.wait) == (Outcome.DELIVERED, 5.0)


backoffs = st.builds(
    Backoff,
    st.floats(0.001, 10.0),
    st.floats(0.001, 600.0),
)


@given(backoff=backoffs, failures=st.integers(-3, 5000), r=st.floats(0.0, 1.0, exclude_max=True))
def test_backoff_stays_within_its_ceiling_and_cap(
    backoff: Backoff, failures: int, r: float
) -> None:
    ceiling = backoff.ceiling(failures)
    assert 0.0 <= ceiling <= backoff.cap
    if failures >= 1:
        assert ceiling == min(backoff.cap, backoff.base * 2.0 ** min(failures - 1, 64))
    assert backoff.ceiling(failures + 1) >= ceiling
    delay = backoff.delay(failures, lambda: r)
    assert delay == ceiling * r  # full jitter: the random draw alone places the wait
    assert 0.0 <= delay <= ceiling


@given(backoff=backoffs, failures=st.integers(1, 50), seed=st.integers(0, 2**32))
def test_jitter_spreads_waits_over_the_whole_range(
    backoff: Backoff, failures: int, seed: int
) -> None:
    draw = random.Random(seed).random
    ceiling = backoff.ceiling(failures)
    waits = [backoff.delay(failures, draw) for _ in range(500)]
    assert min(waits) < 0.1 * ceiling
    assert max(waits) > 0.9 * ceiling


@given(
    attempts=st.integers(0, 20),
    max_attempts=st.integers(1, 20),
    now=st.floats(0, 1e6),
    left=st.floats(-100, 100),
    charged=st.booleans(),
    r=st.floats(0.0, 1.0, exclude_max=True),
)
def test_policy_bounds_each_batch_by_age_and_attempts(
    *, attempts: int, max_attempts: int, now: float, left: float, charged: bool, r: float
) -> None:
    policy = Policy(Backoff(1.0, 30.0), max_attempts=max_attempts, max_age=60.0)
    expires = now + left
    decision = policy.after_failure(attempts, expires, now, charged=charged, random=lambda: r)
    after = attempts + charged
    if expires <= now:
        assert decision == GiveUp(Loss.TOO_OLD)
    elif after >= max_attempts:
        assert decision == GiveUp(Loss.ATTEMPTS)
    else:
        assert isinstance(decision, Retry)
        assert decision.attempts == after
        # Backoff(1.0, 30.0) with full jitter, written out: r x min(30, 2^(failures - 1)).
        wait = r * min(30.0, 2.0 ** (after - 1)) if charged else 0.0
        assert decision.at == now + wait
        capped = policy.after_failure(
            attempts, expires, now, charged=charged, random=lambda: r, max_delay=0.5
        )
        assert isinstance(capped, Retry) and capped.at <= now + 0.5


@pytest.mark.parametrize(
    ("attempts", "at"),
    [(0, 1000.5), (1, 1001.0), (2, 1002.0), (3, 1004.0), (4, 1008.0), (5, 1015.0), (9, 1015.0)],
)
def test_a_charged_failure_waits_half_its_ceiling_at_a_draw_of_one_half(
    attempts: int, at: float
) -> None:
    policy = Policy(Backoff(1.0, 30.0), max_attempts=20, max_age=60.0)
    decision = policy.after_failure(attempts, 1050.0, 1000.0, charged=True, random=lambda: 0.5)
    assert decision == Retry(at, attempts + 1)


def verdict(kind: Outcome, wait: float | None = None) -> Verdict:
    return Verdict(kind, wait=wait)


def test_gate_probes_with_one_post_during_an_outage_and_reopens_on_an_answer() -> None:
    gate = Gate(Backoff(1.0, 30.0), Backoff(10.0, 300.0), random=lambda: 0.5)
    assert gate.limit(4) == 4 and gate.is_open(0.0)
    gate.record(verdict(Outcome.TRANSIENT), 100.0)
    assert gate.limit(4) == 1 and gate.probing
    assert gate.open_at == 100.5 and not gate.is_open(100.4) and gate.is_open(100.5)
    gate.record(verdict(Outcome.TRANSIENT), 101.0)
    assert gate.open_at == 102.0  # ceiling 2 s, half of it
    for kind in ANSWERED:
        gate.record(verdict(Outcome.TRANSIENT), 200.0)
        gate.record(verdict(kind), 201.0)
        assert gate.failures == 0 and gate.limit(4) == 4


def test_gate_knows_since_when_the_api_fails() -> None:
    gate = Gate(Backoff(1.0, 30.0), random=lambda: 0.5)
    assert gate.failing_since is None
    gate.record(verdict(Outcome.TRANSIENT), 100.0)
    gate.record(verdict(Outcome.DENIED), 140.0)
    assert gate.failing_since == 100.0  # the first failure of the run, not the last
    gate.record(verdict(Outcome.DELIVERED), 150.0)
    assert gate.failing_since is None
    gate.record(verdict(Outcome.TRANSIENT), 160.0)
    assert gate.failing_since == 160.0


def test_gate_honours_the_wait_the_api_asks_for() -> None:
    gate = Gate(Backoff(1.0, 30.0), random=lambda: 0.5)
    gate.record(verdict(Outcome.THROTTLED, wait=2.0), 10.0)
    assert gate.open_at == 12.0 and gate.requested
    gate.hurry(10.0, max_delay=1.0)  # a drain does not cut a wait the API asked for
    assert gate.open_at == 12.0
    gate.record(verdict(Outcome.DELIVERED, wait=5.0), 11.0)  # rate limit exhausted on success
    assert gate.open_at == 16.0 and gate.failures == 0


def test_gate_backs_off_long_after_a_denial_and_a_drain_caps_only_its_own_waits() -> None:
    gate = Gate(Backoff(1.0, 30.0), Backoff(10.0, 300.0), random=lambda: 0.9)
    gate.record(verdict(Outcome.DENIED), 0.0)
    assert gate.denied and gate.open_at == 9.0
    for _ in range(10):
        gate.record(verdict(Outcome.DENIED), 0.0)
    assert gate.open_at == 270.0  # capped at 300 s, times the draw
    gate.hurry(0.0, max_delay=1.0)
    assert gate.open_at == 1.0
    gate.record(verdict(Outcome.TRANSIENT), 5.0)
    assert gate.open_at == 6.0 and not gate.denied
