"""Which of the proxy's own numbers are reported, and where each one is read.

`standard_metrics` registers the usual set in a `statsd_ao.core.selfmetrics.SelfMetrics`
through small structural Protocols (so the registry never imports a component), and
`udp_socket_stats` reads the kernel's per-socket UDP tables (receive queue, drops) for the
listening port.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from statsd_ao.core.logs import RateLimitedLog, fields
from statsd_ao.core.measurements import DROPPED_VALUE
from statsd_ao.core.retry import Loss
from statsd_ao.core.sanitize import DELIBERATE, DROPPED_BY_RULE
from statsd_ao.core.selfmetrics import Distribution, SelfMetrics

log = logging.getLogger("statsd_ao")

# Linux's per-socket UDP tables (per network namespace, so a container sees its own).
PROC_NET_UDP = (Path("/proc/net/udp"), Path("/proc/net/udp6"))


@dataclass(frozen=True, slots=True)
class UdpSocketStats:
    """The kernel's view of the UDP sockets bound to one local port (summed over them)."""

    sockets: int
    receive_queue: int  # bytes received and not yet read
    drops: int  # datagrams dropped since each socket opened, mostly for a full receive buffer


def udp_socket_stats(port: int, tables: Sequence[Path] = PROC_NET_UDP) -> UdpSocketStats | None:
    """Read ``/proc/net/udp`` and ``udp6`` for the sockets bound to local ``port``.

    None where the tables cannot be read (not Linux) or no socket is bound to the port.
    Sockets of other processes on the same port in this network namespace (e.g.
    SO_REUSEPORT workers) are summed in.
    """
    wanted = f":{port:04X}"
    found = queue = drops = 0
    readable = False
    for table in tables:
        try:
            text = table.read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        readable = True
        # sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout
        # inode ref pointer drops
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 13 or not fields[1].endswith(wanted):
                continue
            try:
                rx, dropped = int(fields[4].partition(":")[2], 16), int(fields[12])
            except ValueError:
                continue
            found, queue, drops = found + 1, queue + rx, drops + dropped
    if not readable or not found:
        return None
    return UdpSocketStats(found, queue, drops)


def udp_drops(port: int, tables: Sequence[Path] = PROC_NET_UDP) -> int | None:
    """Kernel receive-buffer drops for the UDP sockets on local ``port``; None if unknown."""
    stats = udp_socket_stats(port, tables)
    return None if stats is None else stats.drops


# Kernel receive-buffer drops are logged at most this often (they are also a self-metric).
KERNEL_DROP_LOG_INTERVAL = 60.0


class KernelDropWatch:
    """Says so when the kernel drops datagrams for our UDP port (the host, not the proxy).
    `check` runs after every flush."""

    def __init__(
        self, port: Callable[[], int | None], tables: Sequence[Path] = PROC_NET_UDP
    ) -> None:
        self._port = port
        self._tables = tables
        self._seen = 0
        self._log = RateLimitedLog(log, KERNEL_DROP_LOG_INTERVAL)

    def check(self) -> None:
        port = self._port()
        drops = None if port is None else udp_drops(port, self._tables)
        if drops is None or drops <= self._seen:
            return
        new, self._seen = drops - self._seen, drops
        self._log.warning(
            "kernel-drops",
            "the kernel dropped %d datagrams for udp port %d since the last check (%d in all): "
            "the receive buffer was full; see 'Troubleshooting packet drops' in the README",
            new,
            port,
            drops,
            extra=fields(dropped=new, port=port, dropped_in_all=drops),
        )


# The components' counters, as structural Protocols: plain attributes satisfy them.


class ListenerCounts(Protocol):
    @property
    def datagrams(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def pauses(self) -> int: ...
    @property
    def errors(self) -> int: ...


class TcpCounts(Protocol):
    @property
    def connections(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def open(self) -> int: ...
    @property
    def evicted(self) -> int: ...
    @property
    def long_lines(self) -> int: ...
    @property
    def idle_closed(self) -> int: ...


class FlusherCounts(Protocol):
    @property
    def lines(self) -> int: ...
    @property
    def rejected(self) -> Mapping[str, int]: ...
    @property
    def left_out(self) -> Mapping[str, int]: ...
    @property
    def flushes(self) -> int: ...


class GuardCounts(Protocol):
    @property
    def tracked(self) -> int: ...
    @property
    def folded_tag_sets(self) -> Mapping[str, int]: ...


class AggregatorCounts(Protocol):
    @property
    def folded_samples(self) -> Mapping[str, int]: ...
    @property
    def guard(self) -> GuardCounts | None: ...


class NamingCounts(Protocol):
    @property
    def tags_dropped(self) -> int: ...


class GcCounts(Protocol):
    @property
    def full_collections(self) -> int: ...


class DeliveryCounts(Protocol):
    """An HTTP sink's delivery counters (data points: measurements, OTLP points)."""

    @property
    def posted(self) -> int: ...
    @property
    def outcomes(self) -> Mapping[str, int]: ...
    @property
    def retries(self) -> int: ...
    @property
    def splits(self) -> int: ...
    @property
    def unconfirmed(self) -> int: ...
    @property
    def pending(self) -> int: ...


class AnnotationCounts(Protocol):
    @property
    def annotations_posted(self) -> int: ...
    @property
    def annotations_lost(self) -> int: ...


class IntakeCounts(Protocol):
    """The AppOptics API intake's part keeper: measurements taken in, left out, refused."""

    @property
    def accepted(self) -> int: ...
    @property
    def filtered(self) -> Mapping[str, int]: ...
    @property
    def refused(self) -> Mapping[str, int]: ...


class IntakeServerCounts(Protocol):
    """The intake's HTTP server."""

    @property
    def requests(self) -> Mapping[int, int]: ...
    @property
    def bytes(self) -> int: ...
    @property
    def failed(self) -> Mapping[str, int]: ...
    @property
    def connections(self) -> int: ...
    @property
    def open(self) -> int: ...
    @property
    def over_limit(self) -> int: ...
    @property
    def timed_out(self) -> int: ...
    @property
    def too_large(self) -> int: ...
    @property
    def unauthorized(self) -> int: ...
    @property
    def rate_limited(self) -> int: ...
    @property
    def annotations(self) -> int: ...


class FleetPartsCounts(Protocol):
    @property
    def held_series(self) -> int: ...
    @property
    def refused_full(self) -> int: ...
    @property
    def senders(self) -> Mapping[str, Any]: ...


class FleetCounts(Protocol):
    """What the fleet receiver reports (statsd_ao.io.fleet_receiver)."""

    @property
    def requests(self) -> Mapping[int, int]: ...
    @property
    def bad_parts(self) -> int: ...
    @property
    def keeper(self) -> FleetPartsCounts: ...


def register_fleet(metrics: SelfMetrics, fleet: FleetCounts) -> None:
    """A global's figures (with --fleet-listen): per sender, parts received and duplicated
    and the lag of its last part (seconds from its interval's end to its arrival)."""
    keeper = fleet.keeper
    metrics.register_counter(
        "fleet.requests",
        "fleet part requests answered, by HTTP status",
        lambda: {str(status): n for status, n in fleet.requests.items()},
        label="status",
    )
    metrics.register_counter(
        "fleet.parts_received",
        "forwarded parts taken in, by sender",
        lambda: {sender: s.parts for sender, s in keeper.senders.items()},
        label="sender",
    )
    metrics.register_counter(
        "fleet.parts_duplicated",
        "forwarded parts received again and dropped, by sender",
        lambda: {sender: s.duplicates for sender, s in keeper.senders.items()},
        label="sender",
    )
    metrics.register_gauge(
        "fleet.sender_lag_seconds",
        "seconds from the end of a sender's last part's interval to its arrival",
        lambda: {sender: s.lag for sender, s in keeper.senders.items()},
        label="sender",
    )
    metrics.register_gauge(
        "fleet.held_series",
        "series of forwarded parts waiting for their grace to end",
        lambda: keeper.held_series,
    )
    metrics.register_counter(
        "fleet.parts_refused",
        "forwarded parts refused, by reason (not a part; too many series held: retried)",
        lambda: {"bad_part": fleet.bad_parts, "full": keeper.refused_full},
        label="reason",
    )


def register_intake(metrics: SelfMetrics, keeper: IntakeCounts, server: IntakeServerCounts) -> None:
    """The AppOptics API intake's figures (with --appoptics-listen)."""
    metrics.register_counter(
        "intake.requests",
        "API intake requests answered, by HTTP status",
        lambda: {str(status): n for status, n in server.requests.items()},
        label="status",
    )
    metrics.register_counter("intake.bytes", "API intake request bytes read", lambda: server.bytes)
    metrics.register_counter(
        "intake.measurements_accepted",
        "measurements the API intake took in",
        lambda: keeper.accepted,
    )
    metrics.register_counter(
        "intake.measurements_refused",
        "measurements the API intake refused, by reason (the API's rules, age, the series cap)",
        lambda: {**server.failed, **keeper.refused},
        label="reason",
    )
    metrics.register_counter(
        "intake.measurements_left_out",
        "measurements left out as configured (filters, drop rules), by reason",
        lambda: keeper.filtered,
        label="reason",
    )
    metrics.register_gauge("intake.connections", "API intake connections open", lambda: server.open)
    metrics.register_counter(
        "intake.requests_refused",
        "API intake requests refused before their body was judged, by reason",
        lambda: {
            "too_many_connections": server.over_limit,
            "too_slow": server.timed_out,
            "too_large": server.too_large,
            "unauthorized": server.unauthorized,
            "rate_limited": server.rate_limited,
        },
        label="reason",
    )
    metrics.register_counter(
        "intake.annotations", "annotations posted to the API intake", lambda: server.annotations
    )


@dataclass(frozen=True, slots=True)
class SinkReport:
    """What one sink reports, each labelled ``sink=<name>``: ``lost`` reads every loss by
    reason (conversion included); ``delivery``, ``spool`` and ``annotations`` where it has
    them (a dry run has none)."""

    name: str
    lost: Callable[[], Mapping[str, int]]
    delivery: DeliveryCounts | None = None
    spool: SpoolCounts | None = None
    annotations: AnnotationCounts | None = None


class SpoolCounts(Protocol):
    @property
    def bytes(self) -> int: ...
    @property
    def segments(self) -> int: ...
    @property
    def write_errors(self) -> int: ...
    @property
    def damaged(self) -> Mapping[str, int]: ...
    @property
    def replayed(self) -> int: ...


class MappingCounts(Protocol):
    @property
    def rule_count(self) -> int: ...
    @property
    def matched(self) -> int: ...
    @property
    def reloads(self) -> Mapping[str, int]: ...


def standard_metrics(
    tags: Mapping[str, str],
    *,
    listener: ListenerCounts | None = None,
    udp_port: Callable[[], int | None] | None = None,
    tcp: TcpCounts | None = None,
    flusher: FlusherCounts | None = None,
    aggregator: AggregatorCounts | None = None,
    sinks: Sequence[SinkReport] = (),
    mapping: MappingCounts | None = None,
    naming: NamingCounts | None = None,
    gc: GcCounts | None = None,
    series_active: Callable[[], float | None] | None = None,
    flush_duration: Callable[[], Distribution | None] | None = None,
    post_latency: Callable[[], Distribution | None] | None = None,
    udp_tables: Sequence[Path] = PROC_NET_UDP,
) -> SelfMetrics:
    """The documented ``statsd_ao.*`` set, for the sources given (None: not registered).

    Each sink's figures carry its name as the ``sink`` label; its ``measurements.lost``
    counts every data point it will never deliver once, by reason (conversion included).
    """
    metrics = SelfMetrics(tags)
    if listener is not None:
        _register_listener(metrics, listener)
    if udp_port is not None:
        _register_kernel(metrics, udp_port, udp_tables)
    if flusher is not None:
        metrics.register_counter(
            "lines.received", "StatsD lines received (counted at each flush)", lambda: flusher.lines
        )
        metrics.register_counter(
            "lines.bad", "lines rejected, by reason", lambda: flusher.rejected, label="reason"
        )
        metrics.register_counter(
            "lines.left_out",
            "lines left out as configured (metric filters, mapping drop rules), by reason",
            lambda: flusher.left_out,
            label="reason",
            known=sorted(DELIBERATE),
        )
        metrics.register_counter("flushes", "flushes done", lambda: flusher.flushes)
    if series_active is not None:
        metrics.register_gauge("series.active", "series in the last flush", series_active)
    _register_process(metrics, naming, gc)
    if tcp is not None:
        _register_tcp(metrics, tcp)
    if aggregator is not None:
        _register_guard(metrics, aggregator)
    for sink in sinks:
        _register_sink(metrics, sink)
    if flush_duration is not None:
        metrics.register_histogram(
            "flush.duration_seconds", "time to swap, convert and queue one flush", flush_duration
        )
    if post_latency is not None:
        metrics.register_histogram(
            "post.latency_seconds", "time from sending a post to its answer", post_latency
        )
    return metrics


def register_process(metrics: SelfMetrics, version: str, native: bool) -> None:
    """The process's own figures (CPU, memory, descriptors, start time) and what was built:
    the version, and whether the C hot path runs."""
    metrics.register_counter("process.cpu_seconds", "CPU time used, user and system", cpu_seconds)
    metrics.register_gauge("process.resident_memory_bytes", "resident memory", resident_bytes)
    metrics.register_gauge("process.open_fds", "open file descriptors", open_fds)
    metrics.register_gauge(
        "process.max_fds", "the limit of open file descriptors (RLIMIT_NOFILE)", max_fds
    )
    started = start_time()
    metrics.register_gauge(
        "process.start_time_seconds", "when the process started, Unix seconds", lambda: started
    )
    metrics.register_gauge(
        "build_info", "always 1; the version is the label", lambda: {version: 1}, label="version"
    )
    metrics.register_gauge(
        "hot_path.native",
        "1 when the C hot path runs, 0 on the pure-Python fallback (about 3x slower)",
        lambda: int(native),
    )


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def resident_bytes() -> int | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def max_fds() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def start_time() -> float:
    """Unix seconds at which this process started (from /proc; now, where it is absent)."""
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        ticks = int(fields[19])  # starttime: the 22nd field, counted after the command name
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, IndexError, ValueError, StopIteration):
        return time.time()
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _register_listener(metrics: SelfMetrics, listener: ListenerCounts) -> None:
    metrics.register_counter("udp.packets", "UDP datagrams read", lambda: listener.datagrams)
    metrics.register_counter("udp.bytes", "UDP payload bytes read", lambda: listener.bytes)
    metrics.register_counter(
        "udp.read_pauses",
        "reads that found the UDP socket nearly empty and left it for --read-pause",
        lambda: listener.pauses,
    )
    metrics.register_counter(
        "udp.ingest_errors",
        "datagrams lost to an internal error while taking them in (a bug: logged)",
        lambda: listener.errors,
    )


def _register_kernel(
    metrics: SelfMetrics, port: Callable[[], int | None], tables: Sequence[Path]
) -> None:
    metrics.register_counter(
        "udp.kernel_drops",
        "datagrams the kernel dropped, mostly because the receive buffer was full",
        lambda: _kernel(port(), lambda p: udp_drops(p, tables)),
    )
    metrics.register_gauge(
        "udp.receive_queue_bytes",
        "bytes waiting in the kernel receive buffer",
        lambda: _kernel(port(), lambda p: _field(udp_socket_stats(p, tables))),
    )


def _register_process(
    metrics: SelfMetrics, naming: NamingCounts | None, gc: GcCounts | None
) -> None:
    if naming is not None:
        metrics.register_counter(
            "tags.dropped",
            "tags left off a series: invalid after sanitizing, or past the 50-tag limit",
            lambda: naming.tags_dropped,
        )
    if gc is not None:
        metrics.register_counter(
            "gc.full_collections",
            "full garbage collections (run after a flush at most once an hour)",
            lambda: gc.full_collections,
        )


def _register_tcp(metrics: SelfMetrics, tcp: TcpCounts) -> None:
    metrics.register_gauge("tcp.connections", "TCP connections open", lambda: tcp.open)
    metrics.register_counter(
        "tcp.connections_accepted", "TCP connections accepted", lambda: tcp.connections
    )
    metrics.register_counter("tcp.bytes", "TCP payload bytes read", lambda: tcp.bytes)
    metrics.register_counter(
        "tcp.connections_evicted",
        "TCP connections closed to make room at the connection limit (the idle-longest one)",
        lambda: tcp.evicted,
    )
    metrics.register_counter(
        "tcp.lines_too_long",
        "TCP lines longer than --tcp-max-line, dropped",
        lambda: tcp.long_lines,
    )
    metrics.register_counter(
        "tcp.idle_closed",
        "TCP connections closed after --tcp-idle-timeout",
        lambda: tcp.idle_closed,
    )


def _register_guard(metrics: SelfMetrics, aggregator: AggregatorCounts) -> None:
    metrics.register_counter(
        "cardinality.samples_folded",
        "samples folded into an overflow=true series by the cardinality guard",
        lambda: sum(aggregator.folded_samples.values()),
    )
    guard = aggregator.guard
    if guard is None:
        return
    metrics.register_counter(
        "cardinality.tag_sets_folded",
        "new tag sets refused by the cardinality guard (their samples went to overflow)",
        lambda: sum(guard.folded_tag_sets.values()),
    )
    metrics.register_gauge(
        "cardinality.tag_sets_tracked",
        "tag sets the cardinality guard counts in its rolling hour",
        lambda: guard.tracked,
    )


def _register_sink(metrics: SelfMetrics, sink: SinkReport) -> None:
    label = {"sink": sink.name}
    metrics.register_counter(
        "measurements.lost",
        "data points that will never reach the backend, by reason",
        sink.lost,
        label="reason",
        known=[*(loss.value for loss in Loss), DROPPED_VALUE],
        constant=label,
    )
    if sink.delivery is not None:
        _register_delivery(metrics, sink.delivery, label)
    if sink.annotations is not None:
        notes = sink.annotations
        metrics.register_counter(
            "annotations.posted",
            "annotations the API accepted",
            lambda: notes.annotations_posted,
            constant=label,
        )
        metrics.register_counter(
            "annotations.lost",
            "annotations given up (refused, or failed 4 times)",
            lambda: notes.annotations_lost,
            constant=label,
        )
    if sink.spool is not None:
        _register_spool(metrics, sink.spool, label)


def _register_delivery(
    metrics: SelfMetrics, sink: DeliveryCounts, label: Mapping[str, str]
) -> None:
    metrics.register_counter(
        "measurements.posted",
        "data points the backend confirmed it stored",
        lambda: sink.posted,
        constant=label,
    )
    metrics.register_counter(
        "posts",
        "posts by outcome: HTTP status, or the error that ended the attempt",
        lambda: sink.outcomes,
        label="outcome",
        constant=label,
    )
    metrics.register_counter(
        "posts.retried",
        "posts queued again after a failure",
        lambda: sink.retries,
        constant=label,
    )
    metrics.register_counter(
        "posts.split",
        "posts split in two after a 400 that named no data point, to isolate a bad one",
        lambda: sink.splits,
        constant=label,
    )
    metrics.register_counter(
        "measurements.unconfirmed",
        "data points re-sent after a post that got no answer (possibly stored twice)",
        lambda: sink.unconfirmed,
        constant=label,
    )
    metrics.register_gauge(
        "measurements.pending",
        "data points queued or in flight",
        lambda: sink.pending,
        constant=label,
    )


def _register_spool(metrics: SelfMetrics, spool: SpoolCounts, label: Mapping[str, str]) -> None:
    metrics.register_gauge(
        "spool.bytes", "bytes of posts kept in --spool-dir", lambda: spool.bytes, constant=label
    )
    metrics.register_gauge(
        "spool.segments",
        "segment files kept in --spool-dir",
        lambda: spool.segments,
        constant=label,
    )
    metrics.register_counter(
        "spool.write_errors",
        "spool writes that failed (disk full, I/O error): those posts were in memory only",
        lambda: spool.write_errors,
        constant=label,
    )
    metrics.register_counter(
        "spool.damaged",
        "damaged spool files or records found at start and skipped, by kind",
        lambda: spool.damaged,
        label="kind",
        known=("corrupt", "torn_write"),
        constant=label,
    )
    metrics.register_counter(
        "spool.replayed",
        "measurements a previous run left in --spool-dir, queued for delivery at start",
        lambda: spool.replayed,
        constant=label,
    )


def _register_mapping(
    metrics: SelfMetrics, mapping: MappingCounts, flusher: FlusherCounts | None
) -> None:
    metrics.register_gauge("mapping.rules", "mapping rules in use", lambda: mapping.rule_count)
    metrics.register_counter(
        "mapping.matched",
        "line shapes a mapping rule matched (each resolved once, then cached)",
        lambda: mapping.matched,
    )
    metrics.register_counter(
        "mapping.reloads",
        "mapping file reloads (SIGHUP), by outcome",
        lambda: mapping.reloads,
        label="outcome",
        known=("ok", "failed"),
    )
    if flusher is not None:
        metrics.register_counter(
            "mapping.lines_dropped",
            "lines a drop rule removed",
            lambda: flusher.left_out.get(DROPPED_BY_RULE, 0),
        )


def _kernel(port: int | None, read: Callable[[int], int | None]) -> int | None:
    """The kernel's figure for the UDP port, once it is bound."""
    return None if port is None else read(port)


def _field(stats: UdpSocketStats | None) -> int | None:
    return None if stats is None else stats.receive_queue
