"""The composition root: the one place that reads the Config and builds the proxy.

`build` makes every part with its collaborators as constructor arguments (nothing is
assigned into a part after it is made) and hands them to `statsd_ao.app.App`, which only
opens, runs and closes them.  Besides `cli` and `settings`, no module reads the Config:
worker processes get a `WorkerSpec`, the aggregator an `AggregatorSpec`.

    sources  (UDP | --workers, Unix, TCP)  -> aggregator + guard -> flusher -> sinks
    endpoints (HTTP /health /ready /metrics /status, etsy admin) read the parts' counters
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from typing import IO
from urllib.parse import urlsplit

from statsd_ao import __version__
from statsd_ao.app import App, RunState
from statsd_ao.compose_sinks import make_sinks, sink_report
from statsd_ao.compose_sources import (
    RulesFile,
    api_intake,
    datagram_listeners,
    fleet_receiver,
    tcp_listener,
    worker_pool,
)
from statsd_ao.config import Config
from statsd_ao.core import hotpath
from statsd_ao.core.aggregator import Aggregator, Snapshot
from statsd_ao.core.api_intake import ApiIntake
from statsd_ao.core.cardinality import WINDOW, CardinalityGuard
from statsd_ao.core.idle import IdleKeeper
from statsd_ao.core.logs import fields
from statsd_ao.core.mapping import MappingRules
from statsd_ao.core.measurements import Measurement
from statsd_ao.core.merge import Merger
from statsd_ao.core.selfmetrics import SelfMetrics, Timings
from statsd_ao.etsy.admin import MAX_ADMIN_SESSIONS, AdminCommands, AdminEndpoint
from statsd_ao.etsy.admin_state import ProxyAdminState
from statsd_ao.flusher import CONVERT_CHUNK, Flusher, FlushReport
from statsd_ao.gcpolicy import GcPolicy
from statsd_ao.io import descriptors
from statsd_ao.io.api_server import AppOpticsIntake
from statsd_ao.io.appoptics import AppOpticsSink
from statsd_ao.io.fleet_receiver import FleetReceiver
from statsd_ao.io.health import HealthState, HttpEndpoint, assess, cardinality_status
from statsd_ao.io.httpconns import MAX_CONNECTIONS as MAX_HTTP_CONNECTIONS
from statsd_ao.io.sink import HttpSink
from statsd_ao.io.tcp import MAX_CONNECTIONS as MAX_TCP_CONNECTIONS
from statsd_ao.pipeline import Sink, Source
from statsd_ao.proxy_metrics import (
    KernelDropWatch,
    register_fleet,
    register_intake,
    register_process,
    standard_metrics,
)
from statsd_ao.rulesfile import RulesInUse
from statsd_ao.wiring import AggregatorSpec
from statsd_ao.workers import WorkerPool

log = logging.getLogger("statsd_ao")

# Series per flush chunk when an OTLP sink converts them: its conversion is Python, so 250
# series keep each step within ~20 ms (bench/flush_bench.py --only-sinks --chunk 250).
OTLP_CHUNK = 250
# /status looks at this many tracked tag sets at most (~50 ms of work).
STATUS_SCAN = 100_000


async def run(config: Config, rules_file: RulesFile | None = None) -> int:
    """Run the proxy until SIGTERM or SIGINT; the process exit status."""
    return await build(config, rules_file).run()


def build(
    config: Config,
    rules_file: RulesFile | None = None,
    *,
    clock: Callable[[], float] = time.time,
    stdout: IO[bytes] | None = None,
    gc: bool = True,
) -> App:
    """Every part of the proxy, wired.  ``clock`` (wall-clock seconds) drives the flush
    schedule; ``stdout`` takes a dry run's output; ``gc`` False leaves the garbage collector
    alone (tests running the app in-process)."""
    _say_what_runs(config)
    _ensure_descriptors(config)
    guard = CardinalityGuard(
        # Tag sets free their slot an hour plus an interval after they were last seen, so the
        # hour the API counts by measurement time (interval starts) is respected.
        config.cardinality_limit,
        config.cardinality_total_limit,
        window=WINDOW + config.flush_interval,
    )
    spec = aggregator_spec(config)
    naming = spec.naming(rules_file[1] if rules_file else None)
    aggregator = spec.build(guard, naming=naming)
    pool = worker_pool(config, spec, rules_file)
    datagrams = datagram_listeners(config, aggregator, with_udp=pool is None)
    tcp = tcp_listener(config, aggregator)
    keeper = ApiIntake(naming, interval=config.flush_interval, clock=clock)
    intake = api_intake(config, keeper, clock)
    fleet = fleet_receiver(config, clock)
    sources: list[Source] = [
        *([pool] if pool else []),
        *datagrams,
        *([tcp] if tcp else []),
        *([intake] if intake else []),
        *([fleet] if fleet else []),
    ]
    flush_timings, post_timings = Timings(), Timings()
    sinks = make_sinks(config, stdout, clock, post_timings.observe)
    policy = GcPolicy() if gc else None
    idle = IdleKeeper(config.send_idle) if config.send_idle else None
    state = RunState()
    udp = next((d for d in datagrams if d.is_udp), None)

    def udp_port() -> int | None:
        if pool is not None:
            return pool.bound.port if pool.bound is not None else None
        return udp.bound.port if udp is not None and udp.is_open else None

    drops = KernelDropWatch(udp_port)

    def flushed(report: FlushReport) -> None:
        admin_state.observe()  # the time lines were last seen, for the admin `stats`
        if not config.posting:  # the dry run's stdout holds only the post bodies
            log.info(
                "flush at %d: %d series, %d measurements printed",
                report.stamp,
                report.series,
                report.measurements,
                extra=fields(
                    stamp=report.stamp, series=report.series, measurements=report.measurements
                ),
            )
        state.last_flush_at = time.monotonic()
        flush_timings.observe(report.seconds)
        drops.check()

    def self_measurements(stamp: int, period: int) -> list[Measurement]:
        return metrics.measurements(stamp, period)

    flusher = Flusher(
        aggregator,
        sinks,
        interval=config.flush_interval,
        take=_merging_take(aggregator, guard, pool, intake, fleet),
        idle=idle,
        extras=self_measurements if config.posts_self_metrics else None,
        pause=policy.pause if policy is not None else contextlib.nullcontext,
        on_flush=flushed,
        clock=clock,
        chunk=OTLP_CHUNK if config.otlp_on else CONVERT_CHUNK,
    )
    admin_state = ProxyAdminState(
        aggregator,
        flusher,
        config.global_tags,
        "down" if config.health_status == "down" else "up",
        idle=idle,
    )
    rules_in_use = _rules_in_use(rules_file, aggregator, pool)
    posters = [s.poster for s in sinks if isinstance(s, AppOpticsSink)]
    poster = next((p for p in posters if isinstance(p, HttpSink)), None)
    metrics: SelfMetrics = standard_metrics(
        config.global_tags,
        listener=udp,
        udp_port=udp_port,
        tcp=tcp.stats if tcp is not None else None,
        flusher=flusher,
        aggregator=aggregator,
        sinks=[sink_report(sink) for sink in sinks],
        mapping=rules_in_use,
        naming=aggregator.naming,
        gc=policy,
        series_active=lambda: flusher.series_flushed,
        flush_duration=flush_timings.distribution,
        post_latency=post_timings.distribution if poster is not None else None,
    )

    register_process(metrics, __version__, hotpath.NATIVE is not None)
    _register_sources(metrics, keeper, intake, fleet)

    def health() -> HealthState:
        health_state = assess(
            listening=state.listening,
            sink_open=state.delivering and all(sink.is_open for sink in sinks),
            since_flush=time.monotonic() - state.last_flush_at,
            flush_interval=config.flush_interval,
            api_failing_for=poster.failing_for if poster is not None else None,
        )
        if admin_state.health() == "down":  # "health down" drains a load balancer
            reasons = (*health_state.reasons, "health set down via the management interface")
            return replace(health_state, ready=False, reasons=reasons)
        return health_state

    endpoints: list[Source] = []
    if config.http is not None:
        endpoints.append(
            HttpEndpoint(
                config.http.host,
                config.http.port,
                health=health,
                metrics_text=metrics.prometheus,
                status=lambda: _status(guard, fleet),
            )
        )
    if config.admin is not None:
        commands = AdminCommands(admin_state, started_at=time.time())
        endpoints.append(AdminEndpoint(config.admin.host, config.admin.port, commands))
    where = " and ".join(_destination(config, sink) for sink in sinks)
    return App(
        flusher=flusher,
        sources=sources,
        sinks=sinks,
        endpoints=endpoints,
        state=state,
        shutdown_timeout=config.shutdown_timeout,
        reload=_reloader(rules_in_use),
        gc=policy,
        ready_message=f"ready: flushing every {config.flush_interval}s to {where}",
    )


def _register_sources(
    metrics: SelfMetrics,
    keeper: ApiIntake,
    intake: AppOpticsIntake | None,
    fleet: FleetReceiver | None,
) -> None:
    if intake is not None:
        register_intake(metrics, keeper, intake.stats)
    if fleet is not None:
        register_fleet(metrics, fleet)


def aggregator_spec(config: Config) -> AggregatorSpec:
    return AggregatorSpec(
        global_tags=config.global_tags,
        interval=config.flush_interval,
        container_tag=config.container_tag,
        key_name_sanitize=config.key_name_sanitize,
        include=config.include_metrics,
        exclude=config.exclude_metrics,
        source_regex=config.source_regex,
        prefix=config.global_prefix,
    )


def _say_what_runs(config: Config) -> None:
    log.info("statsd-ao starting: %s", config.describe())
    log.info("hot path: %s", hotpath.describe())
    if not config.posting:
        if config.spool_dir:
            log.info("dry run: --spool-dir %s is not used", config.spool_dir)
        why = (
            "--dry-run"
            if config.dry_run
            else "no backend: set --swo-region and STATSD_AO_OTLP_TOKEN, --otlp-url, or "
            "APPOPTICS_TOKEN"
        )
        log.warning("dry run (%s): each flush's measurements are printed to stdout", why)
    else:
        _warn_plain_http(config)


def _destination(config: Config, sink: Sink) -> str:
    if sink.name == "stdout":
        return "stdout"
    if sink.name == "forward":
        return "the fleet's global tier"
    return config.api_url if sink.name == "appoptics" else config.otlp_url or "?"


def _warn_plain_http(config: Config) -> None:
    """A secret sent over plain http can be read on the way (loopback excepted for OTLP:
    a collector beside the proxy)."""
    if config.appoptics_on and config.api_url.startswith("http://"):
        log.warning("the API URL is plain http: the token is sent unencrypted")
    url = config.otlp_url or ""
    secret = config.otlp_token or config.otlp_headers
    if secret and url.startswith("http://") and not _loopback(urlsplit(url).hostname or ""):
        log.warning("the OTLP URL is plain http: its token and headers are sent unencrypted")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _ensure_descriptors(config: Config) -> None:
    """Raise the descriptor limit to what the endpoints' connection caps need, so no crowd
    of clients on one endpoint can take the descriptors another needs."""
    caps = (
        MAX_TCP_CONNECTIONS if config.tcp is not None else 0,
        MAX_HTTP_CONNECTIONS if config.http is not None else 0,
        MAX_ADMIN_SESSIONS if config.admin is not None else 0,
        config.intake_max_connections if config.appoptics_listen is not None else 0,
    )
    warning = descriptors.ensure(descriptors.needed(*caps))
    if warning is not None:
        log.warning("%s", warning)


def _merging_take(
    aggregator: Aggregator,
    guard: CardinalityGuard,
    pool: WorkerPool | None,
    intake: AppOpticsIntake | None,
    fleet: FleetReceiver | None = None,
) -> Callable[[], Awaitable[Snapshot]] | None:
    """With part sources, each interval joins their parts with the aggregator's (the guard
    runs in the merge): the workers' whole intervals are merged (gauges continue across
    them); the API intake's small parts, and the fleet's forwarded parts (each under its
    own interval's stamp, in the order of the senders' clocks), are folded in at O(part).
    None: the aggregator's swap alone."""
    if pool is None and intake is None and fleet is None:
        return None
    merger = Merger(guard, aggregator.overflow_tags, aggregator.folded_samples)

    async def take() -> Snapshot:
        workers = await pool.take() if pool is not None else []
        interval = merger.merge([*workers, aggregator.swap()]) if workers else aggregator.swap()
        for part in await intake.take() if intake is not None else []:
            merger.fold_into(interval, part)
        for part in await fleet.take() if fleet is not None else []:
            merger.fold_into(interval, part)
        return interval

    return take


def _rules_in_use(
    rules_file: RulesFile | None, aggregator: Aggregator, pool: WorkerPool | None
) -> RulesInUse | None:
    if rules_file is None:
        return None
    path, rules, text = rules_file

    def use(new_rules: MappingRules, new_text: str) -> None:
        aggregator.remap(new_rules)
        if pool is not None:
            pool.remap(new_text, path)

    return RulesInUse(path, rules, text, on_rules=use)


def _reloader(rules_in_use: RulesInUse | None) -> Callable[[], None]:
    """SIGHUP: read the mapping rules again (a bad file keeps the rules in use)."""
    reloading: set[asyncio.Task[bool]] = set()

    def reload() -> None:
        if rules_in_use is None:
            log.info("SIGHUP: nothing to reload (no --mapping file)")
            return
        task = asyncio.create_task(rules_in_use.reload())
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    return reload


def _status(guard: CardinalityGuard, fleet: FleetReceiver | None = None) -> dict[str, object]:
    # Bounded: a scan of a million tag sets would hold the loop for seconds.
    status = cardinality_status(itertools.islice(guard.tag_sets(), STATUS_SCAN))
    status["scanned_tag_sets"] = min(guard.tracked, STATUS_SCAN)
    status["over_budget"] = [vars(o) for o in guard.offenders()]
    if fleet is not None:
        keeper = fleet.keeper
        status["fleet"] = {
            "held_series": keeper.held_series,
            "refused_full": keeper.refused_full,
            "senders": {sender: asdict(stats) for sender, stats in keeper.senders.items()},
        }
    return status
