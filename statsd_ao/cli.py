"""The ``statsd-ao`` command line: parse flags, build the Config, run the app."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

from statsd_ao import __version__
from statsd_ao.app import run
from statsd_ao.config import ConfigError, build
from statsd_ao.core.logs import configure
from statsd_ao.core.mapping import MappingError
from statsd_ao.etsy import migration
from statsd_ao.remapping import read_rules
from statsd_ao.settings import SETTINGS

EXIT_CONFIG = 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="statsd-ao",
        description="StatsD/DogStatsD aggregation proxy for AppOptics. Every flag can also be "
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
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration, print it (token redacted) and exit",
    )
    for setting in SETTINGS:
        help_text = f"{setting.help} [env {setting.env}]"
        if setting.name == "dry_run":
            p.add_argument(setting.flag, dest=setting.name, action="store_true", help=help_text)
        elif setting.repeat:
            p.add_argument(setting.flag, dest=setting.name, action="append", help=help_text)
        else:
            p.add_argument(setting.flag, dest=setting.name, help=help_text)
    return p


def _check_mapping(path: str | None) -> int | str:
    """The number of rules in the mapping file, or why it cannot be used (every problem)."""
    if path is None:
        return 0
    try:
        return len(read_rules(path)[0])
    except MappingError as error:
        return f"{len(error.problems)} problem(s) in the rules file:\n{error}"
    except (OSError, UnicodeDecodeError) as error:
        return f"cannot read {path}: {error}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    flags = {s.name: getattr(args, s.name) for s in SETTINGS}
    unsupported: tuple[str, ...] = ()
    try:
        base = None
        if args.statsd_config is not None:
            base, unsupported = migration.load(args.statsd_config)
        config = build(flags, config_file=args.config, base=base)
    except ConfigError as error:
        print(f"statsd-ao: error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    rules = _check_mapping(config.mapping)
    if isinstance(rules, str):
        print(f"statsd-ao: error: --mapping: {rules}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(f"configuration OK: {config.describe()}")
        if config.mapping:
            print(f"mapping OK: {rules} rules in {config.mapping}")
        if unsupported:
            print(f"not supported from {args.statsd_config}: {'; '.join(unsupported)}")
        return 0
    configure(args.log_level, config.log_format == "json")
    if unsupported:
        logging.getLogger("statsd_ao").warning(
            "%s: options not supported, ignored: %s", args.statsd_config, "; ".join(unsupported)
        )
    return uvloop.run(run(config))


if __name__ == "__main__":
    sys.exit(main())
