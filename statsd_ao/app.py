"""Process lifecycle: startup -> main loop -> ordered shutdown.

The only module that reads the Config; every component gets plain arguments.  Signal
handlers only set an event.  Shutdown order: stop intake (after reading what the kernel
already queued) -> final flush of the unfinished interval -> deliver what is pending within
the shutdown timeout -> close the sink -> close the HTTP endpoint (so /ready says "not
ready" while draining).  A container stop therefore keeps the last interval.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import time
from dataclasses import replace

from statsd_ao.config import Config
from statsd_ao.core import hotpath
from statsd_ao.core.aggregator import Snapshot
from statsd_ao.core.annotations import to_annotation
from statsd_ao.core.cardinality import WINDOW, CardinalityGuard
from statsd_ao.core.events import Event
from statsd_ao.core.idle import IdleKeeper
from statsd_ao.core.logs import RateLimitedLog
from statsd_ao.core.mapping import MappingError, MappingRules
from statsd_ao.core.measurements import Converter, Measurement
from statsd_ao.core.merge import Merger
from statsd_ao.core.selfmetrics import SelfMetrics, Timings
from statsd_ao.etsy.admin import MAX_ADMIN_SESSIONS, AdminCommands, serve_admin
from statsd_ao.etsy.admin_state import ProxyAdminState
from statsd_ao.flusher import Flusher, FlushReport
from statsd_ao.gcpolicy import GcPolicy
from statsd_ao.io import descriptors
from statsd_ao.io.address import Address
from statsd_ao.io.health import HealthState, HttpServer, assess, cardinality_status, start_http
from statsd_ao.io.httpconns import MAX_CONNECTIONS as MAX_HTTP_CONNECTIONS
from statsd_ao.io.listeners import DatagramListener, Receive
from statsd_ao.io.sink import DryRunSink, HttpSink
from statsd_ao.io.spool import Spool, SpoolError
from statsd_ao.io.tcp import MAX_CONNECTIONS as MAX_TCP_CONNECTIONS
from statsd_ao.io.tcp import TcpListener
from statsd_ao.remapping import Remapping
from statsd_ao.selfreport import standard_metrics, udp_drops
from statsd_ao.wiring import make_aggregator
from statsd_ao.workers import WorkerPool

log = logging.getLogger("statsd_ao")

# /status looks at this many tracked tag sets at most (~50 ms of work).
STATUS_SCAN = 100_000
# Kernel receive-buffer drops are logged at most this often (they are also a self-metric).
KERNEL_DROP_LOG_INTERVAL = 60.0


def make_sink(config: Config) -> DryRunSink | HttpSink:
    if not config.posting:
        return DryRunSink()
    assert config.token is not None
    return HttpSink(
        config.api_url,
        config.token,
        concurrency=config.concurrency,
        timeout=config.request_timeout,
        max_pending=config.max_pending,
        max_age=config.max_age,
        max_attempts=config.max_attempts,
        resend_unconfirmed=config.resend_unconfirmed,
        spool=Spool(config.spool_dir, config.spool_max_bytes) if config.spool_dir else None,
    )


async def run(config: Config) -> int:
    """Run the proxy until SIGTERM or SIGINT; the process exit status."""
    try:
        remapping = Remapping.load(config.mapping) if config.mapping else None
    except (MappingError, OSError, UnicodeDecodeError) as error:
        log.error("mapping: cannot use %s: %s", config.mapping, error)
        return 1
    return await App(config, remapping).run()


class App:
    """The proxy's components, wired from one Config, and their lifecycle."""

    def __init__(self, config: Config, remapping: Remapping | None = None) -> None:
        self.config = config
        self.remapping = remapping
        # Tag sets free their slot an hour plus an interval after they were last seen, so the
        # hour the API counts by measurement time (interval starts) is respected.
        window = WINDOW + config.flush_interval
        self.guard = CardinalityGuard(
            config.cardinality_limit, config.cardinality_total_limit, window=window
        )
        rules = remapping.rules if remapping is not None else None
        self.aggregator = make_aggregator(config, self.guard, rules)
        self.converter = Converter(
            config.percentiles,
            style=config.percentile_style,
            always_suffix_percentile=config.always_suffix_percentile,
        )
        self.sink = make_sink(config)
        self.flusher = Flusher(
            self.aggregator,
            self.converter,
            self.sink,
            interval=config.flush_interval,
            batch_size=config.batch_size,
        )
        # With --workers, UDP is read by worker processes; TCP and Unix sockets stay here.
        self.pool = WorkerPool(config, config.workers) if config.workers > 1 else None
        udp = config.udp if self.pool is None else None
        self.datagrams = [
            DatagramListener(
                target,
                self.aggregator.ingest,
                config.rcvbuf,
                receive=self._receive(),
                pause=config.read_pause,
            )
            for target in (udp, config.unix)
            if target is not None
        ]
        self.merger: Merger | None = None
        if self.pool is not None:
            self.merger = Merger(
                self.guard, self.aggregator.overflow_tags, self.aggregator.folded_samples
            )
            self.flusher.take = self._take_all
        self.tcp = (
            TcpListener(
                config.tcp,
                self.aggregator.ingest,
                max_line=config.tcp_max_line,
                idle_timeout=config.tcp_idle_timeout,
            )
            if config.tcp
            else None
        )
        if config.send_idle:
            self.flusher.idle = IdleKeeper(config.send_idle)
        self.gc = GcPolicy()
        self.flusher.pause = self.gc.pause
        self.admin_state = ProxyAdminState(
            self.aggregator,
            self.flusher,
            config.global_tags,
            "down" if config.health_status == "down" else "up",
        )
        self.admin: asyncio.Server | None = None
        self.stop = asyncio.Event()
        self.flush_timings = Timings()
        self.post_timings = Timings()
        if isinstance(self.sink, HttpSink):
            self.sink.on_latency = self.post_timings.observe
        self.last_flush_at = time.monotonic()
        self.listening = False
        self.sink_open = False
        self.metrics: SelfMetrics | None = None
        self.kernel_drops = 0
        self.udp_port: int | None = None  # the bound port, known once listening
        self.drop_log = RateLimitedLog(log, KERNEL_DROP_LOG_INTERVAL)
        self.http: HttpServer | None = None
        self.reloading: set[asyncio.Task[bool]] = set()
        if remapping is not None:
            remapping.on_rules = self._remapped

    def _receive(self) -> Receive | None:
        """The C loop's batch reader for the datagram listeners, when it is loaded."""
        return self.aggregator.receive if self.aggregator.receives else None

    async def run(self) -> int:
        if not await self.start():
            return 1
        await self.flusher.run(self.stop)
        return await self.shutdown()

    async def start(self) -> bool:
        """Open everything; False (logged, closed again) when a listener cannot bind."""
        config = self.config
        log.info("statsd-ao starting: %s", config.describe())
        log.info("hot path: %s", hotpath.describe())
        self._check_descriptors()
        if not config.posting:
            if config.spool_dir:
                log.info("dry run: --spool-dir %s is not used", config.spool_dir)
            why = "--dry-run" if config.dry_run else "no token (set APPOPTICS_TOKEN or --token)"
            log.warning("dry run (%s): each flush's measurements are printed to stdout", why)
        elif config.api_url.startswith("http://"):
            log.warning("the API URL is plain http: the token is sent unencrypted")
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        try:
            await self.sink.start()
        except SpoolError as error:
            log.error("%s", error)
            await self.sink.close()
            return False
        self.sink_open = True
        if not await self._open_intake(loop):
            await self._close_intake()
            await self.sink.close()
            return False
        self.listening = True
        self._observe()
        if not await self._start_endpoints():
            await self._close_intake()
            await self._close_endpoints()
            await self.sink.close()
            return False
        self.gc.start()
        where = "stdout" if not config.posting else config.api_url
        log.info("ready: flushing every %ds to %s", config.flush_interval, where)
        return True

    def _check_descriptors(self) -> None:
        """Raise the descriptor limit to what the endpoints' connection caps need."""
        config = self.config
        caps = (
            MAX_TCP_CONNECTIONS if config.tcp is not None else 0,
            MAX_HTTP_CONNECTIONS if config.http is not None else 0,
            MAX_ADMIN_SESSIONS if config.admin is not None else 0,
        )
        warning = descriptors.ensure(descriptors.needed(*caps))
        if warning is not None:
            log.warning("%s", warning)

    async def shutdown(self) -> int:
        config = self.config
        log.info("shutting down: final flush, then up to %gs to deliver", config.shutdown_timeout)
        await self._close_intake()
        self.listening = False
        if self.pool is not None:
            self.pool.stopping = True  # the final flush collects the workers' last intervals
        try:
            measurements = (await self.flusher.flush_final()).measurements
        except Exception:  # a bug: still deliver what is pending and exit in time
            log.exception("the final flush failed")
            measurements = 0
        self.sink_open = False
        left = await self.sink.drain(config.shutdown_timeout)
        await self.sink.close()
        await self._close_endpoints()
        if self.pool is not None:
            await self.pool.close()
        if left:
            log.error("shutdown: %d measurements could not be delivered", left)
        kept = self.sink.kept if isinstance(self.sink, HttpSink) else 0
        log.info(
            "stopped: %d lines received, final flush of %d measurements, %d undelivered, "
            "%d kept in the spool for the next run",
            self.flusher.lines,
            measurements,
            left,
            kept,
        )
        return 0

    async def _open_intake(self, loop: asyncio.AbstractEventLoop) -> bool:
        listener: DatagramListener | TcpListener | None = None
        if self.pool is not None and self.config.udp is not None:
            try:
                bound = await self.pool.start(self.config.udp)
            except (OSError, TimeoutError) as error:
                log.error("cannot start the udp workers on %s: %s", self.config.udp, error)
                return False
            self.udp_port = bound.port
            log.info("listening on udp %s (%d worker processes)", bound, self.config.workers)
        try:
            for listener in self.datagrams:
                listener.open(loop)
            if self.tcp is not None:
                listener = self.tcp
                await self.tcp.open()
        except OSError as error:
            where = listener.describe() if listener is not None else "?"
            log.error("cannot listen on %s: %s", where, error.strerror or error)
            return False
        return True

    async def _close_intake(self) -> None:
        """Stop every listener, taking in what was already received."""
        for listener in self.datagrams:
            listener.close()
        if self.tcp is not None:
            await self.tcp.close()

    async def _start_endpoints(self) -> bool:
        """The HTTP endpoint and the etsy management interface, where configured."""
        if self.config.http is not None and not await self._start_http(self.config.http):
            return False
        admin = self.config.admin
        if admin is None:
            return True
        commands = AdminCommands(self.admin_state, started_at=time.time())
        try:
            self.admin = await serve_admin(admin.host, admin.port, commands)
        except OSError as error:
            log.error("cannot listen on admin %s: %s", admin, error.strerror or error)
            return False
        port = self.admin.sockets[0].getsockname()[1]
        log.info("listening on admin tcp %s:%d (etsy management interface)", admin.host, port)
        return True

    async def _close_endpoints(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.admin is not None:
            self.admin.close()
            await self.admin.wait_closed()

    async def _start_http(self, address: Address) -> bool:
        try:
            self.http = await start_http(
                address.host,
                address.port,
                health=self._health,
                metrics_text=self._metrics_text,
                status=self._status,
            )
        except OSError as error:
            log.error("cannot listen on http %s: %s", address, error.strerror or error)
            return False
        log.info(
            "http endpoint on %s:%d (/health /ready /metrics /status)", address.host, self.http.port
        )
        return True

    def _observe(self) -> None:
        """Self-metrics and flush hooks, once the listeners are bound."""
        udp = next((d for d in self.datagrams if d.is_udp), None)
        if udp is not None:
            self.udp_port = udp.bound.port
        self.metrics = standard_metrics(
            self.config.global_tags,
            listener=udp,
            udp_port=self.udp_port,
            tcp=self.tcp.stats if self.tcp is not None else None,
            flusher=self.flusher,
            aggregator=self.aggregator,
            converter=self.converter,
            sink=self.sink if isinstance(self.sink, HttpSink) else None,
            spool=self.sink.spool if isinstance(self.sink, HttpSink) else None,
            mapping=self.remapping,
            series_active=lambda: self.flusher.series_flushed,
            flush_duration=self.flush_timings.distribution,
            post_latency=self.post_timings.distribution if self.config.posting else None,
        )
        self.flusher.on_flush = self._flushed
        self.flusher.on_event = self._annotate
        if self.config.posts_self_metrics:
            self.flusher.extra = self._self_measurements

    def _reload(self) -> None:
        """SIGHUP: read the mapping rules again (a bad file keeps the rules in use)."""
        if self.remapping is None:
            log.info("SIGHUP: nothing to reload (no --mapping file)")
            return
        task = asyncio.create_task(self.remapping.reload())
        self.reloading.add(task)
        task.add_done_callback(self.reloading.discard)

    def _remapped(self, rules: MappingRules, text: str) -> None:
        self.aggregator.remap(rules)
        if self.pool is not None and self.remapping is not None:
            self.pool.remap(text, self.remapping.path)

    async def _take_all(self) -> Snapshot:
        """(--workers) every worker's interval and this process's, merged into one."""
        assert self.pool is not None and self.merger is not None
        parts = await self.pool.take()
        parts.append(self.aggregator.swap())
        return self.merger.merge(parts)

    def _flushed(self, report: FlushReport) -> None:
        self.admin_state.observe()  # the time lines were last seen, for the admin `stats`
        if not self.config.posting:  # the dry run's stdout holds only the post bodies
            log.info(
                "flush at %d: %d series, %d measurements printed",
                report.stamp,
                report.series,
                report.measurements,
            )
        self.last_flush_at = time.monotonic()
        self.flush_timings.observe(report.seconds)
        self._check_kernel_drops()

    def _check_kernel_drops(self) -> None:
        """Say so when the kernel drops datagrams for our UDP port (the host, not the proxy)."""
        if self.udp_port is None:
            return
        drops = udp_drops(self.udp_port)
        if drops is None or drops <= self.kernel_drops:
            return
        new, self.kernel_drops = drops - self.kernel_drops, drops
        self.drop_log.warning(
            "kernel-drops",
            "the kernel dropped %d datagrams for udp port %d since the last check (%d in all): "
            "the receive buffer was full; see 'Troubleshooting packet drops' in the README",
            new,
            self.udp_port,
            drops,
        )

    def _annotate(self, event: Event) -> None:
        host = self.config.global_tags.get("host", "statsd-ao")
        annotation = to_annotation(event, host, int(time.time()))
        self.sink.annotate(self.config.annotation_stream, annotation)

    def _self_measurements(self, stamp: int, period: int) -> list[Measurement]:
        assert self.metrics is not None
        return self.metrics.measurements(stamp, period)

    def _health(self) -> HealthState:
        state = assess(
            listening=self.listening,
            sink_open=self.sink_open and self.sink.is_open,
            since_flush=time.monotonic() - self.last_flush_at,
            flush_interval=self.config.flush_interval,
        )
        if self.admin_state.health() == "down":  # "health down" drains a load balancer
            reasons = (*state.reasons, "health set down via the management interface")
            return replace(state, ready=False, reasons=reasons)
        return state

    def _metrics_text(self) -> str:
        return self.metrics.prometheus() if self.metrics is not None else ""

    def _status(self) -> dict[str, object]:
        # Bounded: a scan of a million tag sets would hold the loop for seconds.
        status = cardinality_status(itertools.islice(self.guard.tag_sets(), STATUS_SCAN))
        status["scanned_tag_sets"] = min(self.guard.tracked, STATUS_SCAN)
        status["over_budget"] = [vars(o) for o in self.guard.offenders()]
        return status
