"""Measurements split into posts and encoded with orjson (`statsd_ao.core.batching`)."""

from __future__ import annotations

import asyncio
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsd_ao.core.batching import DEFAULT_BATCH, MAX_BATCH, chunked, encode
from statsd_ao.core.measurements import Converter, Measurement
from statsd_ao.io.appoptics import AppOpticsSink
from tests.test_flusher import ListSink


def measurement(i: int) -> Measurement:
    if i % 2:
        return Measurement(name=f"m{i}", tags={"host": "h"}, time=60, period=10, value=i / 3)
    return Measurement(
        name=f"t{i}",
        tags={"host": "h", "env": "prod"},
        time=60,
        period=10,
        count=i + 1,
        sum=i * 1.5,
        min=-1e125,
        max=1e-300,
        last=0.1,
        stddev=2.0,
    )


@settings(max_examples=300)
@given(st.lists(st.integers(), max_size=60), st.integers(1, 25))
def test_chunked_partitions_the_input_in_order(items: list[int], size: int) -> None:
    chunks = [list(chunk) for chunk in chunked(items, size)]
    assert [x for chunk in chunks for x in chunk] == items
    assert len(chunks) == math.ceil(len(items) / size)
    assert all(1 <= len(chunk) <= size for chunk in chunks)
    assert all(len(chunk) == size for chunk in chunks[:-1])


@pytest.mark.parametrize("size", [0, -1, -500])
def test_a_size_below_one_raises(size: int) -> None:
    with pytest.raises(ValueError):
        list(chunked([1, 2, 3], size))


def posts_of(chunks: list[int], size: int) -> tuple[list[Measurement], list[list[Measurement]]]:
    """What the AppOptics sink hands its poster for an interval whose measurements arrive in
    chunks of these sizes (as the flusher's chunks of series do), then end."""
    poster = ListSink()
    sink = AppOpticsSink(Converter(), poster, batch_size=size, annotation_stream="s", host="h")
    made: list[Measurement] = []
    for chunk in chunks:
        batch = [measurement(len(made) + i) for i in range(chunk)]
        made.extend(batch)
        sink.measurements(batch)
    sink.end_interval()
    return made, [list(post) for post in poster.batches]


def test_nothing_to_send_makes_no_post() -> None:
    assert posts_of([0, 0], 10) == ([], [])


def test_encode_is_one_json_body_with_only_embedded_tags() -> None:
    ms = [measurement(1), measurement(2)]
    body = orjson.loads(encode(ms))
    # Top-level tags would be replaced, not merged, by the measurements' own tags: never sent.
    assert set(body) == {"measurements"}
    assert body["measurements"] == ms


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 700), max_size=6), st.integers(1, MAX_BATCH))
def test_the_sinks_posts_partition_an_interval_in_order(chunks: list[int], size: int) -> None:
    """However the interval arrives, every post but the last is full, none is over the size,
    and together they hold every measurement once, in order."""
    made, posts = posts_of(chunks, size)
    assert all(1 <= len(post) <= size for post in posts)
    assert all(len(post) == size for post in posts[:-1])
    assert [m for post in posts for m in post] == made
    assert len(posts) == math.ceil(len(made) / size)


def test_default_batch_respects_the_api_limit() -> None:
    assert 1 <= DEFAULT_BATCH <= MAX_BATCH <= 1000
    _, posts = posts_of([2 * DEFAULT_BATCH + 1], DEFAULT_BATCH)
    assert [len(post) for post in posts] == [DEFAULT_BATCH, DEFAULT_BATCH, 1]


def test_a_drain_sends_what_waited_for_a_full_post() -> None:
    """If the final flush failed before the interval's end, what it held back still goes."""
    poster = ListSink()
    sink = AppOpticsSink(Converter(), poster, batch_size=10, annotation_stream="s", host="h")
    sink.measurements([measurement(i) for i in range(3)])
    assert poster.batches == []
    assert asyncio.run(sink.drain(1.0)) == 0
    assert [len(post) for post in poster.batches] == [3]
