"""Mapping rules: legacy dotted StatsD names turned into a metric name plus tags.

Theory of operation.  A rules file (TOML here; YAML, by its ``.yaml``/``.yml`` suffix, is
parsed by the shell's `statsd_ao.rulesfile` and checked here; the format is in
``docs/mapping.md``) is read and checked once, at start and on reload: every
problem is collected with its line and raised together as one `MappingError`, so an
operator fixes the file in one pass.  A checked file becomes a `MappingRules`, whose
`MappingRules.apply` is pure apart from two counters and runs once per distinct line shape
(the proxy caches its answer), never per line.

First matching rule wins, in file order.  So that a file of thousands of rules does not
cost a scan of every rule per shape, glob rules whose first segment is literal are indexed
by that segment; each index bucket holds its rules merged with the rules that can match any
first segment (wildcard first segments, regexes), in file order, so the first match is the
same as a linear scan's (``tests/core/test_mapping.py`` checks this; ``bench/mapping_bench.py``
measures it).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from statsd_ao.core.protocol import TagList

# The proxy's Kind values (statsd_ao.core.protocol.Kind): ms, h and d all arrive as "ms".
KINDS: Mapping[str, frozenset[str]] = {
    "counter": frozenset({"c"}),
    "gauge": frozenset({"g"}),
    "timer": frozenset({"ms"}),
    "set": frozenset({"s"}),
}
_ALL_KINDS = frozenset({"c", "g", "ms", "s"})
_RULE_KEYS = frozenset(
    {"match", "regex", "name", "tags", "type", "action", "drop_tags", "keep_tags"}
)
_TOP_KEYS = frozenset({"rule", "drop_tags", "keep_tags"})
_ACTIONS = ("map", "drop")


# --- errors ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a rules file.  ``line`` is 1-based; 0 means the whole file."""

    line: int
    reason: str


class MappingError(ValueError):
    """A rules file that cannot be used, with every problem found in it."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = sorted(problems, key=lambda p: p.line)
        super().__init__("\n".join(_describe(source, p) for p in self.problems))


def _describe(source: str, problem: Problem) -> str:
    where = f"{source}:{problem.line}" if problem.line else source
    return f"{where}: {problem.reason}"


# --- templates and globs --------------------------------------------------------------------

# $1..$9, ${digits}, ${name}, $$ (a literal $), or a bare $ (an error).
_REF = re.compile(r"\$(?:\{([^}]*)\}|(\d)|(\$)|)")
_GLOB_WILDCARD = re.compile(r"\*\*|\*")


@dataclass(frozen=True, slots=True)
class _Template:
    """A name or tag value: literal text and capture-group numbers (0 is the whole name)."""

    parts: tuple[str | int, ...]

    def expand(self, match: re.Match[str]) -> str:
        # An optional regex group that did not take part expands to "".
        return "".join(p if isinstance(p, str) else (match.group(p) or "") for p in self.parts)


def _template(text: str, groups: int, names: Mapping[str, int]) -> _Template | str:
    """The compiled template, or the reason it is wrong."""
    parts: list[str | int] = []
    pos = 0
    for ref in _REF.finditer(text):
        parts.append(text[pos : ref.start()])
        pos = ref.end()
        braced, digit, dollar = ref.groups()
        if dollar:
            parts.append("$")
            continue
        label = braced if braced is not None else digit
        if label is None:
            return f"{text!r}: '$' must be followed by a digit, {{name}} or '$' (for a '$')"
        number = _group_number(label, groups, names)
        if isinstance(number, str):
            return f"{text!r}: {number}"
        parts.append(number)
    parts.append(text[pos:])
    return _Template(tuple(p for p in parts if p != ""))


def _group_number(label: str, groups: int, names: Mapping[str, int]) -> int | str:
    if label.isdigit():
        if int(label) > groups:
            return f"${{{label}}} refers past the pattern's {groups} capture(s)"
        return int(label)
    if label in names:
        return names[label]
    return f"${{{label}}} names no group of the pattern"


def _glob_regex(glob: str) -> str:
    """``*`` is one or more characters without a dot, ``**`` one or more of any; each is a
    capture group, numbered from the left.  Everything else is literal."""
    out: list[str] = []
    pos = 0
    for star in _GLOB_WILDCARD.finditer(glob):
        out.append(re.escape(glob[pos : star.start()]))
        out.append("(.+)" if star.group() == "**" else "([^.]+)")
        pos = star.end()
    out.append(re.escape(glob[pos:]))
    return "".join(out)


def _literal_head(glob: str) -> str | None:
    """The glob's first segment when it has no wildcard: every name it matches starts with
    that segment followed by a dot (or is that segment)."""
    head = glob.partition(".")[0]
    return None if "*" in head else head


# --- rules ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TagFilter:
    """``drop_tags`` or ``keep_tags``: at most one of the two sets is given."""

    drop: frozenset[str] | None = None
    keep: frozenset[str] | None = None

    def apply(self, tags: Sequence[tuple[str, str]]) -> TagList:
        if self.drop is not None:
            return [(k, v) for k, v in tags if k not in self.drop]
        if self.keep is not None:
            return [(k, v) for k, v in tags if k in self.keep]
        return list(tags)


_NO_FILTER = _TagFilter()


@dataclass(frozen=True, slots=True)
class _Rule:
    pattern: re.Pattern[str]
    head: str | None  # the literal first segment, the index key; None: any name
    kinds: frozenset[str]
    drop: bool
    name: _Template | None  # None: the name is kept
    tags: tuple[tuple[str, _Template], ...]
    tag_filter: _TagFilter

    def rewrite(self, match: re.Match[str], tags: Sequence[tuple[str, str]]) -> tuple[str, TagList]:
        """The rule's name and tags.  Its added tags replace the line's tags of the same key;
        an added tag whose value expands to "" is not added (constant values are never "")."""
        added = [(key, value) for key, t in self.tags if (value := t.expand(match))]
        replaced = {key for key, _ in added}
        kept = [(k, v) for k, v in tags if k not in replaced]
        # A name that expands to "" (an optional regex group) keeps the line's name.
        name = (self.name.expand(match) if self.name else "") or match.string
        return name, self.tag_filter.apply(kept + added)


class MappingRules:
    """Checked rules, ready to apply.  Built by `parse_rules` / `rules_from`.

    ``matched`` counts the names a rule matched (drop rules included), ``dropped`` those a
    drop rule removed.  Runs on the loop thread; not safe to share between threads.
    """

    def __init__(
        self,
        rules: Sequence[_Rule] = (),
        tag_filter: _TagFilter = _NO_FILTER,
        *,
        indexed: bool = True,
    ) -> None:
        self._rules = tuple(rules)
        self._filter = tag_filter
        self._indexed = indexed
        self._general = tuple(r for r in self._rules if r.head is None or not indexed)
        self._by_head = _index(self._rules) if indexed else {}
        self.matched = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._rules)

    def unindexed(self) -> MappingRules:
        """The same rules scanned one by one in file order: the reference the index is
        tested and benchmarked against."""
        return MappingRules(self._rules, self._filter, indexed=False)

    def apply(
        self, kind: str, name: str, tags: Sequence[tuple[str, str]]
    ) -> tuple[str, TagList] | None:
        """The metric's new name and tags, or None when a drop rule matched.  ``kind`` is a
        `statsd_ao.core.protocol.Kind` value; any other raises ValueError (a caller's bug)."""
        if kind not in _ALL_KINDS:
            raise ValueError(f"unknown metric kind {kind!r}")
        found = self._first_match(kind, name)
        if found is None:
            return name, self._filter.apply(tags)
        rule, match = found
        self.matched += 1
        if rule.drop:
            self.dropped += 1
            return None
        new_name, new_tags = rule.rewrite(match, tags)
        return new_name, self._filter.apply(new_tags)

    def _first_match(self, kind: str, name: str) -> tuple[_Rule, re.Match[str]] | None:
        candidates = self._by_head.get(name.partition(".")[0], self._general)
        for rule in candidates:
            if kind in rule.kinds and (match := rule.pattern.fullmatch(name)) is not None:
                return rule, match
        return None


def _index(rules: Sequence[_Rule]) -> dict[str, tuple[_Rule, ...]]:
    """Each literal first segment -> its rules and the unindexed ones, in file order.
    Memory: one reference per (bucket, rule in it or unindexed), a few hundred KB at most
    for a file of thousands of rules."""
    heads = {r.head for r in rules if r.head is not None}
    return {h: tuple(r for r in rules if r.head in (h, None)) for h in heads}


# --- checking a parsed file -----------------------------------------------------------------


class Lines(Protocol):
    def at(self, rule: int | None, key: str | None) -> int:
        """The line of ``key`` in rule number ``rule`` (None: the top level)."""
        ...


class _Checker:
    """Collects the problems of one file while its rules are compiled."""

    def __init__(self, lines: Lines) -> None:
        self.lines = lines
        self.problems: list[Problem] = []
        self.rule: int | None = None

    def fail(self, key: str | None, reason: str) -> None:
        where = "" if self.rule is None else f"rule {self.rule + 1}: "
        self.problems.append(Problem(self.lines.at(self.rule, key), where + reason))

    def strings(self, table: Mapping[str, object], key: str) -> frozenset[str] | None:
        value = table.get(key)
        if value is None:
            return None
        if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
            return frozenset(value)
        self.fail(key, f"{key} must be a list of non-empty strings")
        return None

    def unknown_keys(self, table: Mapping[object, object], known: frozenset[str]) -> None:
        for key in table:
            if key not in known:
                self.fail(str(key), f"unknown key {key!r} (known: {', '.join(sorted(known))})")

    def tag_filter(self, table: Mapping[str, object]) -> _TagFilter:
        drop, keep = self.strings(table, "drop_tags"), self.strings(table, "keep_tags")
        if drop is not None and keep is not None:
            self.fail("keep_tags", "give drop_tags or keep_tags, not both")
        return _TagFilter(drop, keep)


def _compile(data: Mapping[object, object], lines: Lines) -> tuple[MappingRules, list[Problem]]:
    check = _Checker(lines)
    check.unknown_keys(data, _TOP_KEYS)
    top = {k: v for k, v in data.items() if isinstance(k, str)}
    tag_filter = check.tag_filter(top)
    tables = top.get("rule", [])
    if not isinstance(tables, list):
        check.fail("rule", "rule must be a list of tables ([[rule]] in TOML)")
        tables = []
    rules = []
    for number, table in enumerate(tables):
        check.rule = number
        rule = _rule(table, check) if isinstance(table, dict) else None
        if not isinstance(table, dict):
            check.fail(None, "a rule must be a table")
        if rule is not None:
            rules.append(rule)
    return MappingRules(rules, tag_filter), check.problems


def _rule(table: dict[object, object], check: _Checker) -> _Rule | None:
    """The compiled rule, or None after reporting its problems."""
    before = len(check.problems)
    check.unknown_keys(table, _RULE_KEYS)
    spec = {k: v for k, v in table.items() if isinstance(k, str)}
    compiled = _pattern(spec, check)
    kinds = _kinds(spec, check)
    drop = _action(spec, check)
    filt = check.tag_filter(spec)
    if drop:
        for key in sorted(spec.keys() & {"name", "tags", "drop_tags", "keep_tags"}):
            check.fail(key, f"{key} has no effect in a rule with action = 'drop'")
    if compiled is None:
        return None
    pattern, head = compiled
    names = pattern.groupindex  # a glob has none
    name = _name(spec, pattern.groups, names, check)
    tags = _tags(spec, pattern.groups, names, check)
    if len(check.problems) > before:
        return None
    return _Rule(pattern, head or None, kinds, drop, name, tags, filt)


def _pattern(spec: Mapping[str, object], check: _Checker) -> tuple[re.Pattern[str], str] | None:
    """The compiled pattern and the index key: the literal first segment of a glob, "" for
    any other pattern."""
    given = [k for k in ("match", "regex") if k in spec]
    if len(given) != 1:
        check.fail(given[-1] if given else None, "give exactly one of match or regex")
        return None
    key = given[0]
    text = spec[key]
    if not isinstance(text, str) or not text:
        check.fail(key, f"{key} must be a non-empty string")
        return None
    if key == "match" and "***" in text:
        check.fail(key, f"match {text!r}: use * (one segment) or ** (any characters), not ***")
        return None
    try:
        pattern = re.compile(_glob_regex(text) if key == "match" else text)
    except re.error as error:
        check.fail(key, f"bad regex {text!r}: {error}")
        return None
    head = _literal_head(text) if key == "match" else None
    return pattern, head or ""


def _kinds(spec: Mapping[str, object], check: _Checker) -> frozenset[str]:
    value = spec.get("type")
    if value is None:
        return _ALL_KINDS
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(n in KINDS for n in names):
        check.fail("type", f"type must be one of {', '.join(KINDS)} or a non-empty list of them")
        return _ALL_KINDS
    return frozenset().union(*(KINDS[n] for n in names))


def _action(spec: Mapping[str, object], check: _Checker) -> bool:
    """True for a drop rule."""
    value = spec.get("action", "map")
    if value not in _ACTIONS:
        check.fail("action", f"action must be 'map' or 'drop', not {value!r}")
    return value == "drop"


def _name(
    spec: Mapping[str, object], groups: int, names: Mapping[str, int], check: _Checker
) -> _Template | None:
    value = spec.get("name")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        check.fail("name", "name must be a non-empty string")
        return None
    compiled = _template(value, groups, names)
    if isinstance(compiled, str):
        check.fail("name", f"name {compiled}")
        return None
    return compiled


def _tags(
    spec: Mapping[str, object], groups: int, names: Mapping[str, int], check: _Checker
) -> tuple[tuple[str, _Template], ...]:
    value = spec.get("tags", {})
    if not isinstance(value, dict):
        check.fail("tags", "tags must be a table of tag key = value")
        return ()
    out: list[tuple[str, _Template]] = []
    for key, text in value.items():
        if not isinstance(key, str) or not key or not isinstance(text, str) or not text:
            check.fail("tags", f"tag {key!r}: key and value must be non-empty strings")
            continue
        compiled = _template(text, groups, names)
        if isinstance(compiled, str):
            check.fail("tags", f"tag {key!r}: {compiled}")
        elif not compiled.parts:
            check.fail("tags", f"tag {key!r}: the value is always empty")
        else:
            out.append((key, compiled))
    return tuple(out)


# --- reading files --------------------------------------------------------------------------

# Line finding in TOML text (tomllib gives no positions): a key is found by name inside its
# rule's block, the lines from its [[rule]] header to the next one.
_RULE_HEADER = re.compile(r"\s*\[\[\s*rule\s*\]\]\s*(#.*)?$")
_TOML_AT = re.compile(r"at line (\d+)")


class _TomlLines:
    def __init__(self, text: str, rules: int) -> None:
        self._lines = text.splitlines()
        self._starts = [i for i, line in enumerate(self._lines) if _RULE_HEADER.match(line)]
        if len(self._starts) != rules:  # rules written as an inline array: no headers to count
            self._starts = []

    def at(self, rule: int | None, key: str | None) -> int:
        if rule is None or rule >= len(self._starts):
            start, end = 0, self._starts[0] if self._starts else len(self._lines)
        else:
            start = self._starts[rule]
            end = self._starts[rule + 1] if rule + 1 < len(self._starts) else len(self._lines)
        if key is not None:
            found = re.compile(rf"\s*\[?\s*[\"']?{re.escape(key)}[\"']?\s*[=.\]]")
            for number in range(start, end):
                if found.match(self._lines[number]):
                    return number + 1
        return start + 1


def _parse_toml(text: str) -> tuple[object, Lines | list[Problem]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        at = _TOML_AT.search(str(error))
        return None, [Problem(int(at.group(1)) if at else 0, f"TOML: {error}")]
    rules = data.get("rule")
    return data, _TomlLines(text, len(rules) if isinstance(rules, list) else 0)


def parse_rules(text: str, *, source: str = "<rules>") -> MappingRules:
    """Rules from the text of a TOML rules file.  Raises `MappingError` with every problem;
    ``source`` names the file in its message.  (YAML files are read by the shell,
    `statsd_ao.rulesfile`, which hands the document to `rules_from`.)"""
    data, lines = _parse_toml(text)
    if isinstance(lines, list):
        raise MappingError(source, lines)
    return rules_from(data, lines, source)


def rules_from(data: object, lines: Lines, source: str) -> MappingRules:
    """Rules from a parsed document (None: an empty file); ``lines`` finds the line of a
    rule's key for messages.  Raises `MappingError` with every problem."""
    if data is None:
        return MappingRules()
    if not isinstance(data, dict):
        raise MappingError(source, [Problem(1, "the file must hold a mapping of keys")])
    rules, problems = _compile(data, lines)
    if problems:
        raise MappingError(source, problems)
    return rules
