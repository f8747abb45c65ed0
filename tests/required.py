"""Tests that need a tool from outside Python: skipped on a developer's machine without it,
a failure under CI.

``.ci/run`` installs every tool these tests use (binutils' objdump, e2fsprogs' chattr, Node,
Perl's Net::Statsd; hadolint comes with the test extra), so in CI a missing one means lost
coverage, never a quiet skip.  CI is the ``CI`` environment variable set to anything but
empty, ``0`` or ``false`` (GitHub Actions, GitLab and most others set ``CI=true``).
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def require(available: bool, what: str) -> None:
    """Go on if ``available``; else skip, or under CI fail, saying ``what`` is missing."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{what} is missing: .ci/run provides it, and CI must run this test")
    pytest.skip(f"{what} is missing (.ci/run installs it)")
