"""The mapping rules in use, and their reload on SIGHUP (the shell's side of
`statsd_ao.core.mapping`).

`Remapping.reload` reads and checks the file off the event loop; a file that cannot be used
keeps the rules in use and says why, a good one replaces them at once in every process
(`on_rules`).  The interval in progress goes on: its lines before the reload are named by the
old rules, those after by the new ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from statsd_ao.core.mapping import MappingError, MappingRules
from statsd_ao.rulesfile import read_rules

log = logging.getLogger(__name__)

__all__ = ["Remapping"]


class Remapping:
    """The rules file named by ``--mapping`` (``path``), loaded once at start."""

    def __init__(
        self,
        path: str,
        rules: MappingRules,
        text: str,
        on_rules: Callable[[MappingRules, str], None] | None = None,
    ) -> None:
        """``on_rules`` gets new rules, and the text they came from, once they are checked."""
        self.path = path
        self.rules = rules
        self.text = text
        self.reloads: dict[str, int] = {}  # outcome -> count
        self._matched_before = 0  # by rules replaced since start
        self._on_rules = on_rules

    @property
    def rule_count(self) -> int:
        return len(self.rules)

    @property
    def matched(self) -> int:
        """Line shapes a rule matched in this process since start (reloads included)."""
        return self._matched_before + self.rules.matched

    async def reload(self) -> bool:
        """Read the file again; True when its rules are now in use."""
        try:
            rules, text = await asyncio.to_thread(read_rules, self.path)
        except (MappingError, OSError, UnicodeDecodeError) as error:
            self._count("failed")
            log.error(
                "mapping: %s not reloaded, keeping the %d rules in use: %s",
                self.path,
                len(self.rules),
                error,
            )
            return False
        self._matched_before += self.rules.matched
        self.rules, self.text = rules, text
        if self._on_rules is not None:
            self._on_rules(rules, text)
        self._count("ok")
        log.info("mapping: %d rules loaded from %s", len(rules), self.path)
        return True

    def _count(self, outcome: str) -> None:
        self.reloads[outcome] = self.reloads.get(outcome, 0) + 1
