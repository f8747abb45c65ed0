"""Which global member owns a metric name: rendezvous (highest-random-weight) hashing (pure).

Each (member, name) pair gets a pseudo-random weight; the name belongs to the member of
highest weight.  When a member leaves, only its names move (each to the member of next
highest weight), and every local that sees the same members picks the same owner, with no
coordination: that is what keeps a metric's tag sets on one global, under one budget.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

# Owners remembered per member list: a local's names of a few intervals (10,000 series of
# ~1,000 names is typical); past it the memory is cleared and filled again.
CACHE_NAMES = 100_000


def weight(member: str, name: str) -> int:
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8, key=b"")
    digest.update(b"\0" + member.encode("utf-8", "surrogatepass"))
    return int.from_bytes(digest.digest(), "big")


class Owners:
    """The owner of each name among ``members`` (kept until the members change)."""

    def __init__(self, members: Sequence[str] = ()) -> None:
        self._members = tuple(sorted(set(members)))
        self._cache: dict[str, str] = {}

    @property
    def members(self) -> tuple[str, ...]:
        return self._members

    def use(self, members: Sequence[str]) -> None:
        """Change the members (a resolution, a member failing or coming back)."""
        wanted = tuple(sorted(set(members)))
        if wanted != self._members:
            self._members, self._cache = wanted, {}

    def owner(self, name: str) -> str:
        """The member that owns ``name``; there must be at least one member."""
        found = self._cache.get(name)
        if found is None:
            found = max(self._members, key=lambda member: weight(member, name))
            if len(self._cache) >= CACHE_NAMES:
                self._cache.clear()
            self._cache[name] = found
        return found
