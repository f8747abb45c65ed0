"""The sinks a Config asks for, built for the composition root (`statsd_ao.compose`).

AppOptics, OTLP, or both (dual-write); in a dry run each prints instead; on a fleet's local
tier, the forwarder to the global members.  Each HTTP sink gets its own outbox, retries and
spool subdirectory (`DIR/appoptics`, `DIR/otlp`, `DIR/forward/<member>`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO, TypedDict

from statsd_ao.config import Config
from statsd_ao.core.measurements import Converter
from statsd_ao.io.appoptics import AppOpticsSink
from statsd_ao.io.fleet_forward import FleetDialect, ForwardSink, parse_targets, sender_id
from statsd_ao.io.sink import DryRunSink, HttpSink
from statsd_ao.io.spool import Spool
from statsd_ao.otlp import OtlpDryRunSink, OtlpSink
from statsd_ao.pipeline import Sink
from statsd_ao.proxy_metrics import SinkReport


def make_sinks(
    config: Config,
    stdout: IO[bytes] | None,
    clock: Callable[[], float],
    on_latency: Callable[[float], None],
) -> list[Sink]:
    """AppOptics, OTLP, or both (dual-write); each prints instead in a dry run, and with no
    backend configured at all the dry run prints AppOptics measurements."""
    if config.forwarding and not config.dry_run:
        return [_forward_sink(config, on_latency)]
    sinks: list[Sink] = []
    if config.appoptics_on or not config.otlp_on:
        sinks.append(_appoptics_sink(config, stdout, clock, on_latency))
    if config.otlp_on:
        sinks.append(_otlp_sink(config, stdout))
    return sinks


def sink_report(sink: Sink) -> SinkReport:
    """What a sink reports in the self-metrics."""
    if isinstance(sink, AppOpticsSink) and isinstance(sink.poster, HttpSink):
        http = sink.poster
        return SinkReport(sink.name, lambda: sink.lost, http, http.spool, annotations=http)
    if isinstance(sink, OtlpSink):
        return SinkReport(sink.name, lambda: sink.lost, sink.http, sink.http.spool)
    return SinkReport(sink.name, lambda: sink.lost)


def _spool(config: Config, sink: str) -> Spool | None:
    """The sink's own subdirectory of --spool-dir.  (An earlier version spooled AppOptics
    posts in the root itself: the AppOptics sink adopts them.)"""
    if not config.spool_dir:
        return None
    root = Path(config.spool_dir)
    adopt = root if sink == "appoptics" else None
    return Spool(root / sink, config.spool_max_bytes, adopt_from=adopt)


def _appoptics_sink(
    config: Config,
    stdout: IO[bytes] | None,
    clock: Callable[[], float],
    on_latency: Callable[[float], None],
) -> AppOpticsSink:
    converter = Converter(
        config.percentiles,
        style=config.percentile_style,
        always_suffix_percentile=config.always_suffix_percentile,
    )
    posting = config.appoptics_on and not config.dry_run
    return AppOpticsSink(
        converter,
        _poster(config, stdout, on_latency) if posting else DryRunSink(stdout),
        name="appoptics" if posting else "stdout",
        batch_size=config.batch_size,
        annotation_stream=config.annotation_stream,
        host=config.global_tags.get("host", "statsd-ao"),
        clock=clock,
    )


class Delivery(TypedDict):
    """The delivery bounds every HTTP sink takes (`HttpSink`, `OtlpSink`)."""

    concurrency: int
    timeout: float
    max_pending: int
    max_age: float
    max_attempts: int
    resend_unconfirmed: bool


def _delivery(config: Config) -> Delivery:
    return Delivery(
        concurrency=config.concurrency,
        timeout=config.request_timeout,
        max_pending=config.max_pending,
        max_age=config.max_age,
        max_attempts=config.max_attempts,
        resend_unconfirmed=config.resend_unconfirmed,
    )


def _poster(
    config: Config, stdout: IO[bytes] | None, on_latency: Callable[[float], None]
) -> HttpSink:
    assert config.token is not None
    return HttpSink(
        config.api_url,
        config.token,
        **_delivery(config),
        spool=_spool(config, "appoptics"),
        on_latency=on_latency,
    )


def _forward_sink(config: Config, on_latency: Callable[[float], None]) -> ForwardSink:
    """A local of a fleet: one `HttpSink` per global member, each with its own spool
    subdirectory ``forward/<member>``; the sender id is kept in ``forward/``."""
    assert config.forward is not None and config.fleet_token is not None
    token = config.fleet_token
    root = Path(config.spool_dir) / "forward" if config.spool_dir else None

    delivery = _delivery(config)
    delivery["resend_unconfirmed"] = True  # (the global drops the duplicates)

    def poster(member: str) -> HttpSink:
        spool = None
        if root is not None:
            spool = Spool(root / member.replace(":", "_"), config.spool_max_bytes)
        return HttpSink(
            "",
            "",
            **delivery,
            spool=spool,
            on_latency=on_latency,
            dialect=FleetDialect(member, token),
        )

    return ForwardSink(parse_targets(",".join(config.forward)), poster, sender=sender_id(root))


def _otlp_sink(config: Config, stdout: IO[bytes] | None) -> OtlpSink | OtlpDryRunSink:
    if config.dry_run:
        return OtlpDryRunSink(
            stdout, service_name=config.otlp_service_name, percentiles=config.percentiles
        )
    assert config.otlp_url is not None
    return OtlpSink(
        config.otlp_url,
        config.otlp_token or "",
        headers=config.otlp_headers,
        gzip=config.otlp_gzip,
        **_delivery(config),
        spool=_spool(config, "otlp"),
        service_name=config.otlp_service_name,
        percentiles=config.percentiles,
    )
