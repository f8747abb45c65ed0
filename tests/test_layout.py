"""The package's import rules: the rings of the architecture, checked over the source.

``statsd_ao/core`` is sans-IO: it imports only itself and the standard library's non-IO
parts (never asyncio, socket, aiohttp, ...).  ``statsd_ao/io`` (the adapters) imports the
core and itself; ``statsd_ao/otlp`` (the OTLP sink) the core, the adapters and itself.
None imports ``statsd_ao/etsy`` or the shell (the modules at the top).
Every import counts, including those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "statsd_ao"
# The only third-party package the core may use (everything else it takes from the standard
# library): parsers and clients of other formats belong to the shell or the adapters.
CORE_THIRD_PARTY = frozenset({"orjson"})
# Modules whose use means doing IO or running an event loop.
IO_MODULES = frozenset(
    {"asyncio", "socket", "selectors", "ssl", "aiohttp", "uvloop", "multiprocessing", "subprocess"}
)
# Where each ring may reach inside the package.
# `statsd_ao.pipeline` is the declaration of the Source and Sink seams (Protocols over core
# types, importing nothing but the core), which the adapters implement.
ALLOWED = {
    "statsd_ao.core": ("statsd_ao.core",),
    "statsd_ao.io": ("statsd_ao.core", "statsd_ao.io", "statsd_ao.pipeline"),
    "statsd_ao.otlp": ("statsd_ao.core", "statsd_ao.io", "statsd_ao.otlp", "statsd_ao.pipeline"),
    "statsd_ao.etsy": ("statsd_ao.core", "statsd_ao.io", "statsd_ao.etsy"),
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``."""
    package = module if is_package else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            yield node.lineno, base
            # ``from statsd_ao.core import hotpath`` imports the module statsd_ao.core.hotpath
            yield from ((node.lineno, f"{base}.{alias.name}") for alias in node.names)


def ring(module: str) -> str | None:
    return next((r for r in ALLOWED if module == r or module.startswith(r + ".")), None)


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """What ``module`` (whose text is ``source``) imports against its ring's rules."""
    rules = ALLOWED.get(ring(module) or "")
    if rules is None:
        return []  # the shell may import anything
    problems = []
    for line, name in imported(source, module, is_package):
        top = name.split(".")[0]
        if ring(module) == "statsd_ao.core" and top in IO_MODULES:
            problems.append(f"{module}:{line} imports {name} (the core does no IO)")
        elif ring(module) == "statsd_ao.core" and not _core_may_use(top):
            problems.append(f"{module}:{line} imports {name} (third-party, not for the core)")
        elif top == "statsd_ao" and name != "statsd_ao" and not within(name, rules):
            # (``from statsd_ao.config import ConfigError`` yields statsd_ao.config.ConfigError
            # too: a prefix match, so a name inside an allowed module is allowed.)
            problems.append(f"{module}:{line} imports {name}, outside {', '.join(rules)}")
    return problems


def _core_may_use(top: str) -> bool:
    return top in sys.stdlib_module_names or top in CORE_THIRD_PARTY or top in ("statsd_ao", "")


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=module_name)
def test_every_module_keeps_to_its_ring(path: Path) -> None:
    assert violations(path.read_text(), module_name(path), path.name == "__init__.py") == []


def test_the_seams_import_only_the_core() -> None:
    """The adapters may import `statsd_ao.pipeline` only because it brings in nothing else."""
    path = PACKAGE / "pipeline.py"
    names = [name for _, name in imported(path.read_text(), "statsd_ao.pipeline", False)]
    package = [name for name in names if name.split(".")[0] == "statsd_ao"]
    assert package and all(within(name, ("statsd_ao.core",)) for name in package)


def test_the_rings_are_where_the_docs_say() -> None:
    rings = {".".join(p.relative_to(PACKAGE.parent).parts[:2]) for p in modules()}
    rings -= {f"statsd_ao.{p.name}" for p in PACKAGE.glob("*.py")}  # the shell
    assert rings == set(ALLOWED)
    for name in ALLOWED:
        init = PACKAGE / name.split(".")[1] / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc is not None and "May import" in doc, name


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("import asyncio", "statsd_ao.core.x", "imports asyncio"),
        ("def f():\n    from socket import socket", "statsd_ao.core.x", "imports socket"),
        ("from statsd_ao.io.sink import HttpSink", "statsd_ao.core.x", "statsd_ao.io.sink"),
        ("from statsd_ao import app", "statsd_ao.core.x", "statsd_ao.app"),
        ("from ..io import sink", "statsd_ao.core.x", "statsd_ao.io"),
        ("import yaml", "statsd_ao.core.x", "third-party"),
        ("import google.protobuf", "statsd_ao.core.x", "third-party"),
        ("from statsd_ao.etsy import admin", "statsd_ao.io.x", "statsd_ao.etsy"),
        ("import statsd_ao.cli", "statsd_ao.io.x", "statsd_ao.cli"),
        ("from statsd_ao.app import run", "statsd_ao.etsy.x", "statsd_ao.app"),
        ("from statsd_ao.config import ConfigError", "statsd_ao.etsy.x", "statsd_ao.config"),
        ("from statsd_ao.flusher import Flusher", "statsd_ao.etsy.x", "statsd_ao.flusher"),
    ],
)
def test_the_check_catches_what_it_forbids(source: str, module: str, expected: str) -> None:
    found = violations(source, module)
    assert found and expected in found[0]


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("import math\nfrom statsd_ao.core import hotpath", "statsd_ao.core.x"),
        ("import orjson\nimport tomllib", "statsd_ao.core.x"),
        ("import yaml", "statsd_ao.rulesfile"),
        ("import asyncio\nfrom statsd_ao.core.retry import Gate", "statsd_ao.io.x"),
        ("from statsd_ao.io.sink import HttpSink", "statsd_ao.etsy.x"),
        ("from statsd_ao.pipeline import Sink", "statsd_ao.io.x"),
        ("import asyncio\nfrom statsd_ao.etsy import admin", "statsd_ao.app"),
    ],
)
def test_the_check_allows_what_the_rings_allow(source: str, module: str) -> None:
    assert violations(source, module) == []
