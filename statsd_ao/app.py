"""Process lifecycle: startup -> main loop -> ordered shutdown.

The only module that reads the Config; every component gets plain arguments.  Signal
handlers only set an event.  Shutdown order: stop intake (after reading what the kernel
already queued) -> final flush of the unfinished interval -> deliver what is pending within
the shutdown timeout -> close.  A container stop therefore keeps the last interval.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from statsd_ao.aggregator import Aggregator
from statsd_ao.cardinality import CardinalityGuard
from statsd_ao.config import Config
from statsd_ao.flusher import Flusher
from statsd_ao.listeners import DatagramListener
from statsd_ao.measurements import Converter
from statsd_ao.sanitize import Naming
from statsd_ao.sink import DryRunSink, HttpSink, Sink
from statsd_ao.tcp import TcpListener

log = logging.getLogger("statsd_ao")


def make_sink(config: Config) -> Sink:
    if not config.posting:
        return DryRunSink()
    assert config.token is not None
    return HttpSink(
        config.api_url,
        config.token,
        concurrency=config.concurrency,
        timeout=config.request_timeout,
    )


async def run(config: Config) -> int:
    """Run the proxy until SIGTERM or SIGINT; the process exit status."""
    loop = asyncio.get_running_loop()
    log.info("statsd-ao starting: %s", config.describe())
    if not config.posting:
        why = "--dry-run" if config.dry_run else "no token (set APPOPTICS_TOKEN or --token)"
        log.warning("dry run (%s): each flush's measurements are printed to stdout", why)
    guard = CardinalityGuard(config.cardinality_limit, config.cardinality_total_limit)
    aggregator = Aggregator(
        Naming(config.global_tags),
        guard=guard,
        container_tag=config.container_tag,
        interval=config.flush_interval,
    )
    sink = make_sink(config)
    flusher = Flusher(
        aggregator,
        Converter(config.percentiles),
        sink,
        interval=config.flush_interval,
        batch_size=config.batch_size,
    )
    datagrams = [
        DatagramListener(target, aggregator.ingest, config.rcvbuf)
        for target in (config.udp, config.unix)
        if target is not None
    ]
    tcp = (
        TcpListener(
            config.tcp,
            aggregator.ingest,
            max_line=config.tcp_max_line,
            idle_timeout=config.tcp_idle_timeout,
        )
        if config.tcp
        else None
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await sink.start()
    if not await _open_intake(loop, datagrams, tcp):
        await _close_intake(datagrams, tcp)
        await sink.close()
        return 1
    where = "stdout" if not config.posting else config.api_url
    log.info("ready: flushing every %ds to %s", config.flush_interval, where)
    await flusher.run(stop)
    log.info("shutting down: final flush, then up to %gs to deliver", config.shutdown_timeout)
    await _close_intake(datagrams, tcp)
    report = await flusher.flush_final()
    left = await sink.drain(config.shutdown_timeout)
    await sink.close()
    if left:
        log.error("shutdown: %d measurements could not be delivered", left)
    log.info(
        "stopped: %d lines received, final flush of %d measurements, %d undelivered",
        flusher.lines,
        report.measurements,
        left,
    )
    return 0


async def _open_intake(
    loop: asyncio.AbstractEventLoop, datagrams: list[DatagramListener], tcp: TcpListener | None
) -> bool:
    """Open every listener; False (logged) when one cannot bind."""
    listener: DatagramListener | TcpListener | None = None
    try:
        for listener in datagrams:
            listener.open(loop)
        if tcp is not None:
            listener = tcp
            await tcp.open()
    except OSError as error:
        where = listener.describe() if listener is not None else "?"
        log.error("cannot listen on %s: %s", where, error.strerror or error)
        return False
    return True


async def _close_intake(datagrams: list[DatagramListener], tcp: TcpListener | None) -> None:
    """Stop every listener, taking in what was already received."""
    for listener in datagrams:
        listener.close()
    if tcp is not None:
        await tcp.close()
