"""``asyncio.run`` with a bound, for the tests' ``run()`` helpers.

A scenario that hangs (a wait nothing will end) fails with a TimeoutError at the await it
stood on, and the next test runs; pytest-timeout (pyproject.toml) is the backstop for a
test blocked outside the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# Seconds a unit scenario may take: the slowest finish in a few seconds on the 2-core VM.
SCENARIO_TIMEOUT = 60.0
# Seconds an end-to-end scenario may take: a proxy's start (up to 20 s), its stop (up to 30 s)
# and the scenario itself.
E2E_TIMEOUT = 120.0


def run_bounded(coroutine: Coroutine[Any, Any, T], timeout: float = SCENARIO_TIMEOUT) -> T:
    """Run ``coroutine`` on a fresh loop; TimeoutError if it takes over ``timeout`` seconds."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coroutine

    return asyncio.run(bounded())
