"""A seeded, realistic DogStatsD workload: the mix the performance targets are stated for.

40% counters, 30% timers, 15% gauges, 10% histograms, 5% sets; 0-5 tags per series; some
sample rates; 10,000 series by default; lines packed into datagrams of at most 1432 bytes
(~23 lines each) or sent one per datagram.  The same seed gives the same bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MTU_PAYLOAD = 1432  # a 1500-byte Ethernet frame less IPv4/UDP headers and some margin

_KINDS = (("c", 40), ("ms", 30), ("g", 15), ("h", 10), ("s", 5))
_TAG_KEYS = ("env", "service", "region", "endpoint", "status", "version", "az", "method")
_TAG_VALUES = ("prod", "api", "us-east-1", "users_show", "200", "1.4.2", "b", "get", "web")
_WORDS = ("http", "db", "cache", "queue", "worker", "request", "latency", "errors", "jobs")


@dataclass(frozen=True, slots=True)
class Series:
    """One series: a line template with ``{v}`` where the value goes."""

    kind: str
    template: str


def make_series(count: int = 10_000, seed: int = 1) -> list[Series]:
    """``count`` distinct series with the standard type mix."""
    rng = random.Random(seed)
    kinds = [k for k, weight in _KINDS for _ in range(weight)]
    out: list[Series] = []
    for index in range(count):
        kind = kinds[index % len(kinds)]
        name = f"{rng.choice(_WORDS)}.{rng.choice(_WORDS)}.m{index}"
        fields = [kind]
        if kind in ("c", "ms", "h") and rng.random() < 0.2:
            fields.append(f"@{rng.choice((0.1, 0.25, 0.5))}")
        tags = rng.sample(_TAG_KEYS, rng.randint(0, 5))
        if tags:
            fields.append("#" + ",".join(f"{k}:{rng.choice(_TAG_VALUES)}" for k in tags))
        out.append(Series(kind, f"{name}:{{v}}|" + "|".join(fields)))
    return out


def _value(rng: random.Random, kind: str) -> str:
    if kind == "c":
        return str(rng.randint(1, 5))
    if kind == "g":
        return str(rng.randint(0, 1000))
    if kind == "s":
        return f"user{rng.randint(1, 500)}"
    return f"{rng.random() * 250:.3f}"


def make_lines(series: list[Series], count: int, seed: int = 2) -> list[bytes]:
    """``count`` lines drawn uniformly from ``series``."""
    rng = random.Random(seed)
    picks = rng.choices(series, k=count)
    return [s.template.format(v=_value(rng, s.kind)).encode() for s in picks]


def pack(lines: list[bytes], limit: int = MTU_PAYLOAD) -> list[bytes]:
    """Datagrams of newline-joined lines, each at most ``limit`` bytes."""
    datagrams: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        if current and size + len(line) + 1 > limit:
            datagrams.append(b"\n".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line) + 1
    if current:
        datagrams.append(b"\n".join(current))
    return datagrams
