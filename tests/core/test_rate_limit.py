"""Requests per second per client (`statsd_ao.core.rate_limit`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from statsd_ao.core.rate_limit import RateLimiter

WALL = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, rate: float = 2.0, burst: int = 3, **kw: int) -> RateLimiter:
    return RateLimiter(rate, burst, clock=clock, wall=lambda: WALL + clock.now - 100, **kw)


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    limits = limiter(clock)
    quotas = [limits.ask("a") for _ in range(4)]
    assert [q.allowed for q in quotas] == [True, True, True, False]
    assert [q.remaining for q in quotas] == [2, 1, 0, 0]
    refused = quotas[3]
    assert refused.retry_after == 1 and refused.limit == 3
    assert refused.reset == WALL + 2  # 3 tokens at 2 a second
    clock.now += 0.5  # one token grew back
    assert limits.ask("a").allowed and not limits.ask("a").allowed
    assert limits.refused == 2


def test_clients_have_their_own_buckets() -> None:
    clock = Clock()
    limits = limiter(clock, burst=1)
    assert limits.ask("a").allowed and not limits.ask("a").allowed
    assert limits.ask("b").allowed


def test_the_table_of_clients_is_bounded() -> None:
    limits = limiter(Clock(), max_clients=2)
    for client in "abcde":
        limits.ask(client)
    assert len(limits) == 2


@given(st.lists(st.tuples(st.sampled_from("ab"), st.floats(0, 3)), max_size=50))
def test_never_more_than_the_burst_plus_the_rate_over_time(steps: list[tuple[str, float]]) -> None:
    clock = Clock()
    limits = limiter(clock)
    allowed = {"a": 0, "b": 0}
    start = clock.now
    for client, wait in steps:
        clock.now += wait
        allowed[client] += limits.ask(client).allowed
    for count in allowed.values():
        assert count <= 3 + 2 * (clock.now - start) + 1e-9
