"""The sources a Config asks for, built for the composition root (`statsd_ao.compose`):
UDP (or the --workers pool), Unix and TCP StatsD listeners, the AppOptics API intake, the
fleet receiver of a global member.
"""

from __future__ import annotations

from collections.abc import Callable

from statsd_ao.config import Config
from statsd_ao.core.aggregator import Aggregator
from statsd_ao.core.api_intake import ApiIntake
from statsd_ao.core.fleet_parts import FleetParts
from statsd_ao.core.mapping import MappingRules
from statsd_ao.io.api_server import AppOpticsIntake
from statsd_ao.io.fleet_receiver import FleetReceiver
from statsd_ao.io.listeners import DatagramListener
from statsd_ao.io.tcp import TcpListener
from statsd_ao.wiring import AggregatorSpec
from statsd_ao.workers import WorkerPool, WorkerSpec

# The mapping rules file as read once at start: its path, its checked rules and its text.
RulesFile = tuple[str, MappingRules, str]


def worker_pool(
    config: Config, spec: AggregatorSpec, rules_file: RulesFile | None
) -> WorkerPool | None:
    """With --workers, UDP is read by worker processes; TCP and Unix sockets stay here."""
    if config.workers <= 1 or config.udp is None:
        return None
    worker = WorkerSpec(
        aggregator=spec,
        rcvbuf=config.rcvbuf,
        read_pause=config.read_pause,
        log_level=config.log_level,
        json_logs=config.log_format == "json",
        mapping=(rules_file[0], rules_file[2]) if rules_file else None,
    )
    return WorkerPool(worker, config.workers, config.udp)


def datagram_listeners(
    config: Config, aggregator: Aggregator, *, with_udp: bool
) -> list[DatagramListener]:
    # The C loop's batch reader, when it is loaded.
    receive = aggregator.receive if aggregator.receives else None
    targets = [config.udp if with_udp else None, config.unix]
    return [
        DatagramListener(
            target,
            aggregator.ingest,
            config.rcvbuf,
            receive=receive,
            pause=config.read_pause,
            unix_mode=config.unix_mode,
        )
        for target in targets
        if target is not None
    ]


def tcp_listener(config: Config, aggregator: Aggregator) -> TcpListener | None:
    if config.tcp is None:
        return None
    return TcpListener(
        config.tcp,
        aggregator.ingest,
        max_line=config.tcp_max_line,
        idle_timeout=config.tcp_idle_timeout,
    )


def api_intake(
    config: Config, keeper: ApiIntake, clock: Callable[[], float]
) -> AppOpticsIntake | None:
    """The AppOptics API stand-in (--appoptics-listen), naming series as StatsD lines are."""
    if config.appoptics_listen is None:
        return None
    return AppOpticsIntake(
        config.appoptics_listen,
        keeper,
        config.intake_tokens,
        max_body=config.intake_max_body,
        max_connections=config.intake_max_connections,
        rate=config.intake_rate,
        burst=config.intake_burst,
        clock=clock,
    )


def fleet_receiver(config: Config, clock: Callable[[], float]) -> FleetReceiver | None:
    """A global of a fleet (--fleet-listen): parts held --fleet-grace seconds."""
    if config.fleet_listen is None:
        return None
    assert config.fleet_token is not None
    keeper = FleetParts(config.fleet_grace, clock=clock)
    return FleetReceiver(
        config.fleet_listen, keeper, config.fleet_token, max_body=config.fleet_max_body
    )
