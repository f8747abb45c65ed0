"""The ``statsd-ao`` command line: parse flags, build the Config, run the app."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

from statsd_ao import __version__
from statsd_ao.compose import run
from statsd_ao.compose_sources import RulesFile
from statsd_ao.config import Config, ConfigError, build, unknown_environment
from statsd_ao.core.logs import configure
from statsd_ao.core.mapping import MappingError
from statsd_ao.etsy import migration
from statsd_ao.etsy.configjs import EtsyConfigError
from statsd_ao.rulesfile import read_rules
from statsd_ao.settings import GROUPS, HELP_LAYOUT, SETTINGS, Setting

EXIT_CONFIG = 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="statsd-ao",
        description="StatsD/DogStatsD aggregation proxy for SolarWinds Observability (OTLP), any "
        "OTLP backend and the AppOptics API. Every flag can also be "
        "set by its environment variable or in a TOML file (--config).",
    )
    p.add_argument("--version", action="version", version=f"statsd-ao {__version__}")
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML file of settings")
    p.add_argument(
        "--statsd-config",
        type=Path,
        metavar="FILE",
        help="an etsy statsd config.js (with its appoptics or librato section) to honour",
    )
    p.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration, print it (token redacted) and exit",
    )
    groups = {name: p.add_argument_group(f"{name} settings") for name in GROUPS}
    defaults = Config()
    for setting in SETTINGS:
        group, metavar = HELP_LAYOUT[setting.name]
        help_text = f"{setting.help} [env {setting.env}; default {_default(defaults, setting)}]"
        target = groups[group]
        if setting.name == "dry_run":
            target.add_argument(
                setting.flag, dest=setting.name, action="store_true", help=help_text
            )
        elif setting.repeat:
            target.add_argument(
                setting.flag, dest=setting.name, action="append", metavar=metavar, help=help_text
            )
        else:
            target.add_argument(setting.flag, dest=setting.name, metavar=metavar, help=help_text)
    return p


def _default(defaults: Config, setting: Setting) -> str:
    """A setting's default as --help shows it (computed ones in words)."""
    if setting.name == "tags":
        return "host=<this machine's name>"
    if setting.name == "self_metrics":
        return "on when posting, off in a dry run"
    if setting.name == "token":
        return "none (a dry run)"
    return defaults.shown(setting)


def _read_mapping(path: str | None) -> RulesFile | str | None:
    """The mapping file, read and checked once at start (None: no file), or why it cannot
    be used (every problem)."""
    if path is None:
        return None
    try:
        rules, text = read_rules(path)
    except MappingError as error:
        return f"{len(error.problems)} problem(s) in the rules file:\n{error}"
    except (OSError, UnicodeDecodeError) as error:
        return f"cannot read {path}: {error}"
    return path, rules, text


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    flags = {s.name: getattr(args, s.name) for s in SETTINGS}
    unsupported: tuple[str, ...] = ()
    try:
        base = None
        if args.statsd_config is not None:
            base, unsupported = migration.load(args.statsd_config)
        config = build(flags, config_file=args.config, base=base)
    except (ConfigError, EtsyConfigError) as error:
        print(f"statsd-ao: error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    rules_file = _read_mapping(config.mapping)
    if isinstance(rules_file, str):
        print(f"statsd-ao: error: --mapping: {rules_file}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(f"configuration OK: {config.describe()}")
        if rules_file is not None:
            print(f"mapping OK: {len(rules_file[1])} rules in {rules_file[0]}")
        if unsupported:
            print(f"not supported from {args.statsd_config}: {'; '.join(unsupported)}")
        return 0
    configure(config.log_level, config.log_format == "json")
    for warning in unknown_environment(os.environ):
        logging.getLogger("statsd_ao").warning("%s", warning)
    if unsupported:
        logging.getLogger("statsd_ao").warning(
            "%s: options not supported, ignored: %s", args.statsd_config, "; ".join(unsupported)
        )
    return uvloop.run(run(config, rules_file))


if __name__ == "__main__":
    sys.exit(main())
