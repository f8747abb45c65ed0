"""Components built from the Config the same way in every process (app and workers)."""

from __future__ import annotations

from statsd_ao.config import Config
from statsd_ao.core.aggregator import Aggregator
from statsd_ao.core.cardinality import CardinalityGuard
from statsd_ao.core.mapping import MappingRules
from statsd_ao.core.name_rules import NameRules
from statsd_ao.core.sanitize import Naming


def make_naming(config: Config, mapping: MappingRules | None = None) -> Naming:
    rules = NameRules.compile(
        key_name_sanitize=config.key_name_sanitize,
        include=config.include_metrics,
        exclude=config.exclude_metrics,
        source_regex=config.source_regex,
        prefix=config.global_prefix,
    )
    return Naming(config.global_tags, rules, mapping)


def make_aggregator(
    config: Config, guard: CardinalityGuard | None, mapping: MappingRules | None = None
) -> Aggregator:
    return Aggregator(
        make_naming(config, mapping),
        guard=guard,
        container_tag=config.container_tag,
        interval=config.flush_interval,
    )
