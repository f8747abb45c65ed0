"""What an aggregator is built from, the same way in every process (main and workers).

`AggregatorSpec` is plain, frozen and picklable: the composition root makes it once from the
Config and hands it to the worker processes, so no process but the main one reads settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from statsd_ao.core.aggregator import Aggregator
from statsd_ao.core.cardinality import CardinalityGuard
from statsd_ao.core.mapping import MappingRules
from statsd_ao.core.name_rules import NameRules
from statsd_ao.core.sanitize import Naming


@dataclass(frozen=True, slots=True)
class AggregatorSpec:
    """The naming and interval settings of an aggregator."""

    global_tags: Mapping[str, str] = field(default_factory=dict)
    interval: int = 10
    container_tag: str | None = None
    key_name_sanitize: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    source_regex: str | None = None
    prefix: str = ""

    def naming(self, mapping: MappingRules | None = None) -> Naming:
        rules = NameRules.compile(
            key_name_sanitize=self.key_name_sanitize,
            include=self.include,
            exclude=self.exclude,
            source_regex=self.source_regex,
            prefix=self.prefix,
        )
        return Naming(dict(self.global_tags), rules, mapping)

    def build(
        self,
        guard: CardinalityGuard | None,
        mapping: MappingRules | None = None,
        naming: Naming | None = None,
    ) -> Aggregator:
        """``naming``: one made by `naming` to share with another source (the API intake),
        so a reload of the mapping rules reaches both."""
        return Aggregator(
            naming or self.naming(mapping),
            guard=guard,
            container_tag=self.container_tag,
            interval=self.interval,
        )
