"""Mapping rules: the matcher (tables), the checker's errors (line and reason), TOML and
YAML alike, and properties (hypothesis): unmatched names pass unchanged, the index agrees
with a linear scan, a rule after a matching one never changes the result."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statsd_ao.core.mapping import MappingError, MappingRules
from statsd_ao.rulesfile import parse_rules

RULES = """
drop_tags = ["user_id"]

[[rule]]
match = "api.*.*.requests.*.*"
name = "api.requests"
tags = { env = "$1", host = "$2", method = "$3", status = "${4}" }

[[rule]]
regex = 'db\\.(?P<table>\\w+)\\.query_time'
name = "db.query_time"
tags = { table = "${table}" }
type = "timer"

[[rule]]
match = "debug.**"
action = "drop"

[[rule]]
match = "jobs.*.**"
name = "jobs.$2"
tags = { queue = "$1" }
keep_tags = ["queue", "region"]

[[rule]]
match = "*.legacy"
name = "legacy"
tags = { app = "$1" }
"""

YAML_RULES = """
drop_tags: [user_id]
rule:
  - match: "api.*.*.requests.*.*"
    name: api.requests
    tags: {env: "$1", host: "$2", method: "$3", status: "${4}"}
  - regex: 'db\\.(?P<table>\\w+)\\.query_time'
    name: db.query_time
    tags: {table: "${table}"}
    type: timer
  - match: "debug.**"
    action: drop
  - match: "jobs.*.**"
    name: "jobs.$2"
    tags: {queue: "$1"}
    keep_tags: [queue, region]
  - match: "*.legacy"
    name: legacy
    tags: {app: "$1"}
"""

Tags = list[tuple[str, str]]

CASES: list[tuple[str, str, Tags, tuple[str, Tags] | None]] = [
    (
        "c",
        "api.prod.web-3.requests.GET.200",
        [("user_id", "7"), ("team", "a")],
        (
            "api.requests",
            [
                ("team", "a"),
                ("env", "prod"),
                ("host", "web-3"),
                ("method", "GET"),
                ("status", "200"),
            ],
        ),
    ),
    ("c", "api.prod.web-3.requests.GET", [], ("api.prod.web-3.requests.GET", [])),  # too short
    ("c", "api.prod.web.3.requests.GET.200", [], ("api.prod.web.3.requests.GET.200", [])),
    ("ms", "db.users.query_time", [("user_id", "1")], ("db.query_time", [("table", "users")])),
    ("c", "db.users.query_time", [], ("db.users.query_time", [])),  # timers only
    ("g", "debug.anything.at.all", [], None),
    (
        "c",
        "jobs.mail.sent.total",
        [("region", "eu"), ("x", "y")],
        ("jobs.sent.total", [("region", "eu"), ("queue", "mail")]),
    ),
    ("s", "billing.legacy", [], ("legacy", [("app", "billing")])),
]


def rules() -> MappingRules:
    return parse_rules(RULES, yaml=False)


@pytest.mark.parametrize(("kind", "name", "tags", "expected"), CASES)
def test_rules_rename_tag_drop_and_filter(
    kind: str, name: str, tags: Tags, expected: tuple[str, Tags] | None
) -> None:
    assert rules().apply(kind, name, tags) == expected


@pytest.mark.parametrize(("kind", "name", "tags", "expected"), CASES)
def test_yaml_and_toml_files_mean_the_same(
    kind: str, name: str, tags: Tags, expected: tuple[str, Tags] | None
) -> None:
    assert parse_rules(YAML_RULES, yaml=True).apply(kind, name, tags) == expected


def test_a_rules_tag_wins_over_the_lines_own_tag_of_that_key() -> None:
    out = rules().apply("c", "api.prod.web-3.requests.GET.200", [("env", "from-line")])
    assert out is not None and ("env", "prod") in out[1] and ("env", "from-line") not in out[1]


def test_the_first_matching_rule_wins_and_is_counted() -> None:
    text = '[[rule]]\nmatch = "a.*"\nname = "first"\n[[rule]]\nmatch = "a.b"\nname = "second"\n'
    ruled = parse_rules(text, yaml=False)
    assert ruled.apply("c", "a.b", []) == ("first", [])
    ruled.apply("c", "zzz", [])
    assert (ruled.matched, ruled.dropped) == (1, 0)
    dropping = rules()
    dropping.apply("c", "debug.x", [])
    assert (dropping.matched, dropping.dropped) == (1, 1)


BAD_FILES: list[tuple[str, list[str]]] = [
    ('[[rule]]\nmatch = "a.*"\nname = "$2"\n', ["3: rule 1: name '$2': ${2} refers past"]),
    ('[[rule]]\nregex = "("\n', ["2: rule 1: bad regex '('"]),
    ('[[rule]]\nmatch = "a"\nregex = "a"\n', ["rule 1: give exactly one of match or regex"]),
    ('[[rule]]\nname = "x"\n', ["1: rule 1: give exactly one of match or regex"]),
    ('[[rule]]\nmatch = "a"\ntype = "timers"\n', ["3: rule 1: type must be one of"]),
    ('[[rule]]\nmatch = "a"\naction = "delete"\n', ["3: rule 1: action must be 'map' or 'drop'"]),
    ('[[rule]]\nmatch = "a"\nbogus = 1\n', ["3: rule 1: unknown key 'bogus'"]),
    ('[[rule]]\nregex = "a"\nname = "${nope}"\n', ["3: rule 1: name '${nope}': ${nope} names no"]),
    ('[[rule]]\nmatch = "a"\naction = "drop"\nname = "b"\n', ["4: rule 1: name has no effect"]),
    ('drop_tags = ["a"]\nkeep_tags = ["b"]\n', ["2: give drop_tags or keep_tags, not both"]),
    ('[[rule]\nmatch = "a"\n', ["1: TOML:"]),
    (
        '[[rule]]\nmatch = "a.*"\nname = "$3"\n\n[[rule]]\nregex = "["\n',
        ["3: rule 1: name '$3'", "6: rule 2: bad regex '['"],
    ),
]


@pytest.mark.parametrize(("text", "problems"), BAD_FILES)
def test_every_problem_is_reported_with_its_line(text: str, problems: list[str]) -> None:
    with pytest.raises(MappingError) as caught:
        parse_rules(text, yaml=False, source="rules.toml")
    lines = str(caught.value).splitlines()
    assert len(lines) == len(problems) == len(caught.value.problems)
    for line, expected in zip(lines, problems, strict=True):
        assert line.startswith("rules.toml:") and expected in line, line


def test_yaml_problems_name_their_lines_too() -> None:
    text = "rule:\n  - match: a.*\n    name: x\n    name: y\n"
    with pytest.raises(MappingError, match=r"m\.yaml:4: duplicate key 'name'"):
        parse_rules(text, yaml=True, source="m.yaml")
    with pytest.raises(MappingError, match=r"m\.yaml:3: rule 1: unknown key 'nmae'"):
        parse_rules("rule:\n  - match: a\n    nmae: b\n", yaml=True, source="m.yaml")


segment = st.sampled_from(["api", "db", "web", "a", "b", "x1", "GET", "200"])
names = st.lists(segment, min_size=1, max_size=5).map(".".join)
globs = st.lists(st.one_of(segment, st.just("*"), st.just("**")), min_size=1, max_size=4).map(
    ".".join
)
tag_lists = st.lists(st.tuples(st.sampled_from(["k", "env", "user_id"]), segment), max_size=3)


def rule_file(patterns: list[str]) -> str:
    return "".join(
        f'[[rule]]\nmatch = "{p}"\nname = "r{i}"\ntags = {{ rule = "{i}" }}\n'
        for i, p in enumerate(patterns)
    )


@given(names, tag_lists)
def test_a_name_no_rule_matches_passes_unchanged(name: str, tags: Tags) -> None:
    ruled = parse_rules('[[rule]]\nmatch = "zz.*"\nname = "z"\n', yaml=False)
    assert ruled.apply("c", name, tags) == (name, tags)
    assert ruled.matched == 0


@given(st.lists(globs.filter(lambda g: "***" not in g), max_size=12), names, tag_lists)
def test_the_index_finds_the_same_first_match_as_a_linear_scan(
    patterns: list[str], name: str, tags: Tags
) -> None:
    ruled = parse_rules(rule_file(patterns), yaml=False)
    assert ruled.apply("g", name, tags) == ruled.unindexed().apply("g", name, tags)


@given(st.lists(globs.filter(lambda g: "***" not in g), min_size=1, max_size=8), names, globs)
def test_a_rule_added_after_the_matching_one_changes_nothing(
    patterns: list[str], name: str, extra: str
) -> None:
    if "***" in extra:
        return
    before = parse_rules(rule_file(patterns), yaml=False).apply("c", name, [])
    if before == (name, []):
        return  # nothing matched: a new rule may well match
    after = parse_rules(rule_file([*patterns, extra]), yaml=False).apply("c", name, [])
    assert after == before
