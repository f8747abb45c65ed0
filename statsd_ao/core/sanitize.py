"""Fit metric names and tags to the AppOptics rules; merge the global tags.

This is the only place names and tags are sanitized.  The aggregator calls `Naming.series`
once per new line shape (never per line), so a series' identity is exactly what the API will
see: two raw tag sets that the API would treat as one (``Env:Prod`` and ``env:prod``) are one
series here too, and the cardinality guard counts what AppOptics counts.

Rules (seed 001, "Measurement Restrictions"):
- metric name: 1-255 chars of ``A-Za-z0-9.:-_``;
- tag name ``/\\A[-.:_\\w]{1,64}\\z/``, tag value ``/\\A[-.:_?\\\\/\\w ]{1,255}\\z/`` (ASCII),
  both lowercased by the API;
- at most 50 tags per measurement, and at least one.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterable, Mapping

from statsd_ao.core.mapping import MappingRules
from statsd_ao.core.name_rules import NameRules
from statsd_ao.core.protocol import ParseError, TagTuple

MAX_NAME = 255
MAX_TAG_NAME = 64
MAX_TAG_VALUE = 255
MAX_TAGS = 50
# Distinct tag pairs shared between series (see `Naming._shared`): ~100 B each at most.
SHARED_PAIRS = 100_000
# Truncated names end in "." + this many hex digits of a hash of the full name, so two long
# names that share a prefix (or a name plus a suffix such as ".p99") never collide silently.
HASH_DIGITS = 10

_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9.:_\-]")
_BAD_TAG_NAME_CHARS = re.compile(r"[^A-Za-z0-9.:_\-]")
_BAD_TAG_VALUE_CHARS = re.compile(r"[^A-Za-z0-9.:_\-?\\/ ]")

# Why a line left out by the include / exclude metric filters is counted.
FILTERED = "left out by metric filter"
DROPPED_BY_RULE = "dropped by mapping rule"
DELIBERATE = frozenset({FILTERED, DROPPED_BY_RULE})  # left out as configured, not bad input


def fit_name(name: str) -> str:
    """A valid metric name for ``name``: bad characters become ``_``, long names are shortened."""
    clean = _BAD_NAME_CHARS.sub("_", name)
    if len(clean) <= MAX_NAME:
        return clean
    digest = hashlib.blake2b(name.encode("utf-8", "replace"), digest_size=8).hexdigest()
    return clean[: MAX_NAME - HASH_DIGITS - 1] + "." + digest[:HASH_DIGITS]


def fit_tag(key: str, value: str) -> tuple[str, str] | None:
    """A valid ``(name, value)`` pair, or None when nothing of the name survives."""
    clean_key = _BAD_TAG_NAME_CHARS.sub("_", key.strip()).lower()[:MAX_TAG_NAME]
    clean_value = _BAD_TAG_VALUE_CHARS.sub("_", value).lower()[:MAX_TAG_VALUE].strip()
    if not clean_key or not clean_value:
        return None
    # Interned: thousands of series share "env", "prod", ... instead of holding a copy each
    # (~270 B a series, bench/memory_bench.py).  Interned strings are freed like others.
    return sys.intern(clean_key), sys.intern(clean_value)


class Naming:
    """Turns a parsed name and tags into a series identity: sanitized, globals merged, sorted.

    ``global_tags`` must hold at least one valid tag: that is what guarantees every
    measurement at least one tag.  Past 50 global tags, the first 50 in sorted order are kept
    (the configuration refuses more; this keeps the class safe on its own).  A metric's own
    tag wins over a global tag of the same name.  Past 50 tags, the global tags are kept
    first and then the metric's own tags in sorted order, so the choice is deterministic;
    the dropped tags are counted.
    """

    def __init__(
        self,
        global_tags: Mapping[str, str],
        rules: NameRules | None = None,
        mapping: MappingRules | None = None,
    ) -> None:
        self._rules = rules if rules is not None and rules.active else None
        # Replaced whole on reload (SIGHUP); the aggregator forgets its resolved shapes then.
        self.mapping = mapping if mapping is not None and len(mapping) else None
        fitted = [fit_tag(k, v) for k, v in global_tags.items()]
        valid = dict(pair for pair in fitted if pair is not None)
        self.global_tags: dict[str, str] = dict(sorted(valid.items())[:MAX_TAGS])
        if not self.global_tags:
            raise ValueError("at least one valid global tag is required (e.g. host=...)")
        self.tags_dropped = 0
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}

    def series(
        self, name: str, tags: Iterable[tuple[str, str]], kind: str = "c"
    ) -> tuple[str, TagTuple]:
        """``(metric name, sorted tag pairs)`` for a parsed name and its tags (``kind``: a
        `statsd_ao.core.protocol.Kind` value, for rules that apply to one type).  The mapping
        rules come first, on the name as the client sent it, then the etsy name rules.
        Raises `ParseError` when a drop rule or a metric filter leaves the metric out."""
        if self.mapping is not None:
            mapped = self.mapping.apply(kind, name, tuple(tags))
            if mapped is None:
                raise ParseError(DROPPED_BY_RULE)
            name, tags = mapped
        if self._rules is not None:
            ruled = self._rules.apply(name)
            if ruled is None:
                raise ParseError(FILTERED)
            name, added = ruled
            tags = [*added, *tags]
        return fit_name(name), self.tags(tags)

    def tags(self, tags: Iterable[tuple[str, str]]) -> TagTuple:
        """The sorted, sanitized tag pairs of a series: its own tags merged with the globals."""
        own: dict[str, str] = {}
        for key, value in tags:
            pair = fit_tag(key, value)
            if pair is None:
                self.tags_dropped += 1
            else:
                own[pair[0]] = pair[1]
        return self._merge(own)

    def _merge(self, own: dict[str, str]) -> TagTuple:
        merged = dict(self.global_tags)
        merged.update(own)
        if len(merged) > MAX_TAGS:
            kept = {k: merged[k] for k in self.global_tags}
            for key in sorted(own):
                if len(kept) == MAX_TAGS:
                    break
                kept.setdefault(key, own[key])
            self.tags_dropped += len(merged) - len(kept)
            merged = kept
        return tuple(self._shared(pair) for pair in sorted(merged.items()))

    def _shared(self, pair: tuple[str, str]) -> tuple[str, str]:
        """One tuple per distinct tag pair, shared by every series that has it (a bounded
        cache: under a cardinality attack it is emptied and refilled)."""
        shared = self._pairs.get(pair)
        if shared is None:
            if len(self._pairs) >= SHARED_PAIRS:
                self._pairs.clear()
            shared = self._pairs[pair] = pair
        return shared
