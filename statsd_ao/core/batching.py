"""Split measurements into posts and encode each with one ``orjson.dumps``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

import orjson

from statsd_ao.core.measurements import Measurement

# The API asks for fewer than 1,000 measurements per post (APPOPTICS.md); larger volumes go
# as several concurrent posts.
MAX_BATCH = 1000
DEFAULT_BATCH = 500

T = TypeVar("T")


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``size`` items, covering ``items`` in order."""
    if size < 1:
        raise ValueError("size must be at least 1")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def encode(measurements: Sequence[Measurement]) -> bytes:
    """The JSON body of one post."""
    return orjson.dumps({"measurements": measurements})
