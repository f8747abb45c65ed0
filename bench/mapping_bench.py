"""Mapping rules: the cost of `MappingRules.apply` with a file of 1,000 rules.

Run: ``PYTHONPATH=. .venv/bin/python -m bench.mapping_bench [--rules 1000]``.  ``apply``
runs once per line shape (the aggregator caches its answer), never per line; these figures
bound what a new shape costs on its first line.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from statsd_ao.core.mapping import MappingRules, parse_rules


def rules_text(count: int, seed: int = 7) -> str:
    """Mostly globs with distinct literal heads, some wildcard-headed globs and regexes."""
    pick = random.Random(seed)
    out = []
    for i in range(count):
        kind = pick.random()
        if kind < 0.8:
            out.append(f'[[rule]]\nmatch = "svc{i}.*.*.requests.*"\nname = "svc{i}.requests"\n')
            out.append('tags = { env = "$1", host = "$2", status = "$3" }\n')
        elif kind < 0.9:
            out.append(f'[[rule]]\nmatch = "*.job{i}.*"\nname = "job{i}"\n')
            out.append('tags = { app = "$1", step = "$2" }\n')
        else:
            out.append(f"[[rule]]\nregex = 'rx{i}\\.(?P<table>\\w+)\\.time'\n")
            out.append(f'name = "rx{i}.time"\ntags = {{ table = "${{table}}" }}\n')
    out.append('[[rule]]\nmatch = "last.*"\nname = "last"\ntags = { v = "$1" }\n')
    return "".join(out)


def per_call(apply: Callable[[], object], seconds: float = 0.5) -> float:
    """Nanoseconds per call, best of three timed runs."""
    best = float("inf")
    for _ in range(3):
        calls, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds / 3:
            for _ in range(100):
                apply()
            calls += 100
        best = min(best, elapsed / calls * 1e9)
    return best


def measure(rules: MappingRules, label: str) -> None:
    tags = [("user", "1")]
    cases = {
        "matches no rule": "app.web.requests.count",
        "matches an early rule": "svc0.prod.web-3.requests.200",
        "matches the last rule": "last.value",
    }
    for case, name in cases.items():
        ns = per_call(lambda name=name: rules.apply("c", name, tags))  # type: ignore[misc]
        print(f"{label:10} {case:24} {ns:9.0f} ns")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rules", type=int, default=1000)
    args = parser.parse_args()
    text = rules_text(args.rules)
    started = time.perf_counter()
    rules = parse_rules(text)
    print(f"load and check {len(rules)} rules: {(time.perf_counter() - started) * 1e3:.1f} ms")
    measure(rules, "indexed")
    measure(rules.unindexed(), "linear")


if __name__ == "__main__":
    main()
