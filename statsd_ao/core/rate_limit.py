"""Requests per second per client: a token bucket each, for the AppOptics API intake.

Each client (the intake keys them by address) has a bucket of ``burst`` tokens that refills
at ``rate`` tokens a second; a request takes one, and with none left it is refused until one
has grown back.  `Quota` carries what the API's rate-limit headers tell a client: the limit,
what remains of it, and when the bucket is full again.  Pure; time from the injected clocks.

The table of buckets is bounded: past ``max_clients`` the bucket created first is forgotten
(a full bucket is what a new client gets anyway, so only a client that kept its bucket low
and is then forgotten gains anything, and only once per ``max_clients`` new clients).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# Buckets kept at most (~150 bytes each).
DEFAULT_MAX_CLIENTS = 10_000


@dataclass(frozen=True, slots=True)
class Quota:
    """The answer to one request: allowed or not, and the state of the client's bucket."""

    allowed: bool
    limit: int  # the bucket's size
    remaining: int  # whole tokens left after this request
    reset: int  # Unix time at which the bucket is full again
    retry_after: int  # seconds until a request would be allowed (0 when it is now)


class RateLimiter:
    """A token bucket per client."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("the rate must be positive and the burst at least 1")
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._wall = wall
        self._max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, as of)
        self.refused = 0

    def ask(self, client: str) -> Quota:
        """Take a token for one request of ``client`` if it has one."""
        now = self._clock()
        bucket = self._buckets.pop(client, None)  # re-inserted: the most recent last
        if bucket is None:
            tokens = float(self._burst)
            if len(self._buckets) >= self._max_clients:
                del self._buckets[next(iter(self._buckets))]
        else:
            held, since = bucket
            tokens = min(float(self._burst), held + (now - since) * self._rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        else:
            self.refused += 1
        self._buckets[client] = (tokens, now)
        refill = (self._burst - tokens) / self._rate
        wait = 0 if allowed else math.ceil((1.0 - tokens) / self._rate)
        return Quota(
            allowed=allowed,
            limit=self._burst,
            remaining=int(tokens),
            reset=math.ceil(self._wall() + refill),
            retry_after=max(wait, 0 if allowed else 1),
        )

    def __len__(self) -> int:
        return len(self._buckets)
