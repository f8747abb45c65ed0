"""Mapping rules files: read once at start, TOML or YAML, checked by `statsd_ao.core.mapping`,
and the rules in use, read again on SIGHUP.

The shell's side of the rules: the core parses TOML itself (the standard library's
tomllib) but takes no third-party parser, so YAML documents are parsed here with PyYAML,
with the line of every key kept for messages, and handed to `rules_from`.

`RulesInUse.reload` reads and checks the file off the event loop; a file that cannot be used
keeps the rules in use and says why, a good one replaces them at once in every process
(``on_rules``).  The interval in progress goes on: its lines before the reload are named by
the old rules, those after by the new ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml as pyyaml

from statsd_ao.core.mapping import Lines, MappingError, MappingRules, Problem, rules_from
from statsd_ao.core.mapping import parse_rules as parse_toml_rules

log = logging.getLogger(__name__)

__all__ = ["RulesInUse", "is_yaml", "parse_rules", "read_rules"]


def read_rules(path: str) -> tuple[MappingRules, str]:
    """The checked rules of ``path`` and the text they came from.  Raises `MappingError`
    (every problem, with its line) or OSError."""
    text = Path(path).read_text(encoding="utf-8")
    return parse_rules(text, yaml=is_yaml(path), source=path), text


def is_yaml(path: str) -> bool:
    return Path(path).suffix.lower() in (".yaml", ".yml")


def parse_rules(text: str, *, yaml: bool, source: str = "<rules>") -> MappingRules:
    """Rules from the text of a TOML (or, with ``yaml``, YAML) rules file.  Raises
    `MappingError` with every problem; ``source`` names the file in its message."""
    if not yaml:
        return parse_toml_rules(text, source=source)
    data, lines = _parse_yaml(text)
    if isinstance(lines, list):
        raise MappingError(source, lines)
    return rules_from(data, lines, source)


class YamlLines:
    def __init__(self, root: pyyaml.Node | None) -> None:
        self._top = root if isinstance(root, pyyaml.MappingNode) else None
        rules = self._value(self._top, "rule")
        self._rules = rules.value if isinstance(rules, pyyaml.SequenceNode) else []

    def at(self, rule: int | None, key: str | None) -> int:
        node = self._top if rule is None else self._rules[rule]
        if node is None:
            return 1
        key_node = self._key(node, key)
        return (key_node or node).start_mark.line + 1

    @staticmethod
    def _key(node: pyyaml.Node, key: str | None) -> pyyaml.Node | None:
        if isinstance(node, pyyaml.MappingNode):
            for k, _ in node.value:
                if isinstance(k, pyyaml.ScalarNode) and k.value == key:
                    return k
        return None

    def _value(self, node: pyyaml.Node | None, key: str) -> pyyaml.Node | None:
        if isinstance(node, pyyaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, pyyaml.ScalarNode) and k.value == key:
                    found: pyyaml.Node = v
                    return found
        return None


def _yaml_duplicates(node: pyyaml.Node | None) -> Iterator[Problem]:
    """Keys given twice in one YAML mapping: PyYAML keeps the last silently; TOML refuses."""
    seen_nodes: set[int] = set()
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if id(current) in seen_nodes:
            continue
        seen_nodes.add(id(current))
        if isinstance(current, pyyaml.MappingNode):
            keys: set[str] = set()
            for k, v in current.value:
                if isinstance(k, pyyaml.ScalarNode) and k.value in keys:
                    yield Problem(k.start_mark.line + 1, f"duplicate key {k.value!r}")
                keys.add(k.value)
                stack.append(v)
        elif isinstance(current, pyyaml.SequenceNode):
            stack.extend(current.value)


def _parse_yaml(text: str) -> tuple[object, Lines | list[Problem]]:
    """The document and its line finder, or every problem (syntax, duplicate keys)."""
    try:
        data = pyyaml.safe_load(text)
        root = pyyaml.compose(text, Loader=pyyaml.SafeLoader)
    except pyyaml.MarkedYAMLError as error:
        mark = error.problem_mark
        reason = " ".join(filter(None, (error.context, error.problem)))
        return None, [Problem(mark.line + 1 if mark else 0, f"YAML: {reason}")]
    except pyyaml.YAMLError as error:
        return None, [Problem(0, f"YAML: {error}")]
    duplicates = list(_yaml_duplicates(root))
    return (None, duplicates) if duplicates else (data, YamlLines(root))


class RulesInUse:
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
