"""How the proxy runs Python's cyclic garbage collector.

The proxy's data (series keys, accumulators, measurements) holds no reference cycles, so
reference counting frees it; the cyclic collector only costs time, and a full collection
over the ~5 tracked objects of each of 100,000 series stalls the loop for ~0.45 s
(bench/flush_bench.py), enough to overflow a receive buffer.  So:

- the collector is off while a flush runs (the flush allocates most of what it frees);
- after each flush, survivors are frozen (`gc.freeze`): later collections skip them;
- young collections run less often (`GEN0_THRESHOLD` allocations instead of 700);
- once per `FULL_COLLECTION_EVERY`, right after a flush, everything is unfrozen and
  collected, so a cycle created by a library (a traceback, say) is not kept forever.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator

GEN0_THRESHOLD = 50_000
FULL_COLLECTION_EVERY = 3600.0


class GcPolicy:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last_full = clock()
        self.full_collections = 0

    def start(self) -> None:
        """At start-up: collect, freeze what start-up built, collect young objects rarely."""
        gc.collect()
        gc.freeze()
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """No automatic collection inside (a flush); survivors frozen after."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            if enabled:
                gc.enable()
            self._after_flush()

    def _after_flush(self) -> None:
        now = self._clock()
        if now - self._last_full >= FULL_COLLECTION_EVERY:
            gc.unfreeze()
            gc.collect()
            self._last_full = now
            self.full_collections += 1
        gc.freeze()
