"""Metric-name rules carried over from etsy statsd and its AppOptics/Librato backends.

Applied once per line shape (never per line), before sanitizing, in this order: etsy's
``keyNameSanitize`` (whitespace -> ``_``, ``/`` -> ``-``, anything but letters, digits,
``_ - .`` removed), the include / exclude filters (``re.search``, as JavaScript's
``RegExp.test``), ``sourceRegex`` (its group 1 becomes tag ``source``, the whole match leaves
the name) and the global prefix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_WHITESPACE = re.compile(r"\s+")
_ETSY_REMOVED = re.compile(r"[^a-zA-Z_\-0-9.]")


def etsy_sanitize(name: str) -> str:
    """etsy statsd's key name sanitizing."""
    return _ETSY_REMOVED.sub("", _WHITESPACE.sub("_", name).replace("/", "-"))


@dataclass(frozen=True, slots=True)
class NameRules:
    key_name_sanitize: bool = False
    include: Sequence[re.Pattern[str]] = ()
    exclude: Sequence[re.Pattern[str]] = ()
    source: re.Pattern[str] | None = None
    prefix: str = ""

    @classmethod
    def compile(
        cls,
        *,
        key_name_sanitize: bool = False,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        source_regex: str | None = None,
        prefix: str = "",
    ) -> NameRules:
        return cls(
            key_name_sanitize,
            tuple(map(re.compile, include)),
            tuple(map(re.compile, exclude)),
            re.compile(source_regex) if source_regex else None,
            prefix,
        )

    @property
    def active(self) -> bool:
        return bool(
            self.key_name_sanitize or self.include or self.exclude or self.source or self.prefix
        )

    def apply(self, name: str) -> tuple[str, list[tuple[str, str]]] | None:
        """The name after the rules and the tags they add; None when the name is filtered out."""
        if self.key_name_sanitize:
            name = etsy_sanitize(name)
        if self.include and not any(p.search(name) for p in self.include):
            return None
        if any(p.search(name) for p in self.exclude):
            return None
        tags: list[tuple[str, str]] = []
        if self.source is not None:
            match = self.source.search(name)
            if match and match.groups() and match.group(1):
                tags.append(("source", match.group(1)))
                name = name[: match.start()] + name[match.end() :]
        if self.prefix:
            name = f"{self.prefix}.{name}"
        return name, tags
