"""The proxy's own counters, read on demand and shown two ways: AppOptics and Prometheus.

Theory of operation.  Every component counts its own work in plain attributes (cumulative
since start).  `SelfMetrics` is given *readers*: callables returning the current cumulative
number, a mapping ``{label value: number}`` (e.g. bad lines by reason), or a `Distribution`
(count, sum and recent quantiles of durations).  It never imports the components or the
Config; `standard_metrics` wires the usual set through small structural Protocols.

`SelfMetrics.snapshot` calls each reader once.  `SelfMetrics.prometheus` renders a snapshot in
the Prometheus text format (cumulative: counters end in ``_total``).  `SelfMetrics.measurements`
turns one into AppOptics measurements named ``statsd_ao.*``: gauges as values, counters as
the change since the previous call (an interval total, posted with
``summarize_function=sum`` like every StatsD counter) and durations as count/sum summaries.
Only ``measurements`` moves the baseline, so scraping ``/metrics`` never disturbs what is
posted.  Everything runs on the loop thread and must not block: a reader reads attributes
(or one small ``/proc`` file), never the network.  A reader that has nothing to report
returns None; a reader that raises is a bug and the error propagates.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from statsd_ao.measurements import (
    COUNTER_ATTRIBUTES,
    Measurement,
    nearest_rank,
    percentile_suffix,
    postable,
)
from statsd_ao.sanitize import DROPPED_BY_RULE, MAX_TAGS, fit_tag

PREFIX = "statsd_ao"
# Quantiles reported for durations: the median, and the tail that alerts are written on.
DEFAULT_QUANTILES = (0.5, 0.9, 0.99)
# Durations kept for the quantiles: ~3 hours of 10 s flushes, or minutes of busy posting.
# Sorting 1024 floats per scrape costs ~0.1 ms.
TIMING_WINDOW = 1024
# Linux's per-socket UDP tables (per network namespace, so a container sees its own).
PROC_NET_UDP = (Path("/proc/net/udp"), Path("/proc/net/udp6"))
# Value of a label whose text sanitizes to nothing (AppOptics tags cannot be empty).
EMPTY_LABEL = "_"

# Names are lower-case words joined by "." (AppOptics) and mapped to "_" for Prometheus.
_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")
_LABEL = re.compile(r"[a-z_][a-z0-9_]*")

Reading = float | Mapping[str, float] | None


class Kind(StrEnum):
    COUNTER = "counter"  # cumulative; posted as the change per interval
    GAUGE = "gauge"  # a level; posted as is
    SUMMARY = "summary"  # durations: count, sum and recent quantiles


@dataclass(frozen=True, slots=True)
class Distribution:
    """Observations: ``count`` and ``sum`` since start, recent ``quantiles`` (q -> value)."""

    count: int
    sum: float
    quantiles: Mapping[float, float] = field(default_factory=dict)


class Timings:
    """Records durations in seconds: O(1) per observation, for flush duration or post latency.

    Count and sum cover everything observed; the quantiles cover the last ``window``
    observations (a recent view, like a Prometheus client's sliding summary).
    """

    def __init__(
        self, quantiles: Sequence[float] = DEFAULT_QUANTILES, window: int = TIMING_WINDOW
    ) -> None:
        if not all(0 < q <= 1 for q in quantiles) or window < 1:
            raise ValueError("quantiles must be in (0, 1] and the window at least 1")
        self._quantiles = tuple(sorted(set(quantiles)))
        self._recent: deque[float] = deque(maxlen=window)
        self._count = 0
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        self._count += 1
        self._sum += seconds
        self._recent.append(seconds)

    def distribution(self) -> Distribution:
        ordered = sorted(self._recent)
        quantiles = {q: nearest_rank(ordered, q * 100) for q in self._quantiles} if ordered else {}
        return Distribution(self._count, self._sum, quantiles)


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """What a registered metric is called on each side, and what it means."""

    name: str  # AppOptics, e.g. statsd_ao.lines.bad
    prometheus: str  # e.g. statsd_ao_lines_bad_total
    kind: Kind
    help: str
    label: str | None  # the tag / label key of a reader that returns a mapping


@dataclass(frozen=True, slots=True)
class Family:
    """One metric at one moment: ``points`` of (label value or None, number), or a summary."""

    info: MetricInfo
    points: tuple[tuple[str | None, float], ...] = ()
    distribution: Distribution | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every reader's answer, read once; metrics with nothing to report are absent."""

    families: tuple[Family, ...]


@dataclass(frozen=True, slots=True)
class _Registered:
    info: MetricInfo
    read: Callable[[], object]


class SelfMetrics:
    """A registry of readers for the proxy's own metrics; ``tags`` go on every measurement.

    ``tags`` are the same global tags as every other measurement (sanitized here the same
    way); at least one must be valid, as AppOptics requires a tag on every measurement.
    """

    def __init__(self, tags: Mapping[str, str], *, prefix: str = PREFIX) -> None:
        fitted = (fit_tag(key, value) for key, value in tags.items())
        self._tags = dict(sorted(pair for pair in fitted if pair is not None))
        if not self._tags:
            raise ValueError("at least one valid tag is required (e.g. host=...)")
        self._prefix = prefix
        self._metrics: list[_Registered] = []
        self._baseline: dict[tuple[str, str | None], float] = {}

    def register_counter(
        self, name: str, help: str, read: Callable[[], Reading], *, label: str | None = None
    ) -> None:
        """A cumulative count (never decreasing, except when its source starts over)."""
        self._register(name, Kind.COUNTER, help, read, label)

    def register_gauge(
        self, name: str, help: str, read: Callable[[], Reading], *, label: str | None = None
    ) -> None:
        """A level that goes up and down."""
        self._register(name, Kind.GAUGE, help, read, label)

    def register_summary(
        self, name: str, help: str, read: Callable[[], Distribution | None]
    ) -> None:
        """Durations in seconds (name them ``..._seconds``), e.g. `Timings.distribution`."""
        self._register(name, Kind.SUMMARY, help, read, None)

    def catalogue(self) -> tuple[MetricInfo, ...]:
        """Every registered metric, in registration order (for documentation and tests)."""
        return tuple(metric.info for metric in self._metrics)

    def snapshot(self) -> Snapshot:
        """Call every reader once."""
        families = (_family(metric) for metric in self._metrics)
        return Snapshot(tuple(family for family in families if family is not None))

    def prometheus(self, snapshot: Snapshot | None = None) -> str:
        """The Prometheus text exposition format (version 0.0.4), cumulative values."""
        return render_prometheus(self.snapshot() if snapshot is None else snapshot)

    def measurements(
        self, time: int, period: int, snapshot: Snapshot | None = None
    ) -> list[Measurement]:
        """AppOptics measurements stamped ``time`` / ``period``; counters since the last call.

        The first call reports counts since start.  A count that went down (its source was
        replaced, e.g. a new socket) is reported from zero.  Values the API cannot take are
        skipped, and so is a summary with no new observation.
        """
        out: list[Measurement] = []
        for family in (self.snapshot() if snapshot is None else snapshot).families:
            info = family.info
            if family.distribution is not None:
                self._summary(out, info, family.distribution, time, period)
            values: dict[str | None, float] = {}  # by label value as posted (sanitized)
            for label_value, number in family.points:
                change = number
                if info.kind is Kind.COUNTER:
                    change = self._delta((info.name, label_value), number)
                key = None if label_value is None else _tag_value(info.label, label_value)
                values[key] = values.get(key, 0.0) + change
            for key, value in sorted(values.items(), key=lambda item: item[0] or ""):
                if postable(value):
                    out.append(self._point(info, key, value, time, period))
        return out

    def _summary(
        self, out: list[Measurement], info: MetricInfo, dist: Distribution, time: int, period: int
    ) -> None:
        count = round(self._delta((info.name, "count"), dist.count))
        total = self._delta((info.name, "sum"), dist.sum)
        tags = self._tags_for(None, None)
        if count > 0 and postable(total):
            out.append(
                Measurement(
                    name=info.name, tags=tags, time=time, period=period, count=count, sum=total
                )
            )
        for q, value in sorted(dist.quantiles.items()):
            if postable(value):
                name = info.name + percentile_suffix(q * 100)
                out.append(Measurement(name=name, tags=tags, time=time, period=period, value=value))

    def _delta(self, key: tuple[str, str | None], number: float) -> float:
        previous = self._baseline.get(key, 0.0)
        self._baseline[key] = number
        return number - previous if number >= previous else number

    def _point(
        self, info: MetricInfo, label_value: str | None, value: float, time: int, period: int
    ) -> Measurement:
        m = Measurement(
            name=info.name,
            tags=self._tags_for(info.label, label_value),
            time=time,
            period=period,
            value=value,
        )
        if info.kind is Kind.COUNTER:
            m["attributes"] = COUNTER_ATTRIBUTES
        return m

    def _tags_for(self, label: str | None, value: str | None) -> dict[str, str]:
        """The global tags plus ``label=value`` (already sanitized), at most MAX_TAGS."""
        if label is None or value is None:
            return dict(self._tags)
        others = [(k, v) for k, v in self._tags.items() if k != label][: MAX_TAGS - 1]
        return dict([*others, (label, value)])

    def _register(
        self, name: str, kind: Kind, help: str, read: Callable[[], object], label: str | None
    ) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"metric name {name!r} must match {_NAME.pattern}")
        if label is not None and not _LABEL.fullmatch(label):
            raise ValueError(f"label {label!r} must match {_LABEL.pattern}")
        flat = f"{self._prefix}_{name.replace('.', '_')}"
        info = MetricInfo(
            name=f"{self._prefix}.{name}",
            prometheus=flat + "_total" if kind is Kind.COUNTER else flat,
            kind=kind,
            help=help,
            label=label,
        )
        for other in self._metrics:
            if info.name == other.info.name or info.prometheus == other.info.prometheus:
                raise ValueError(f"metric {name!r} is already registered")
        self._metrics.append(_Registered(info, read))


def _family(metric: _Registered) -> Family | None:
    info, reading = metric.info, metric.read()
    if reading is None:
        return None
    if isinstance(reading, Distribution):
        return Family(info, distribution=reading)
    if isinstance(reading, Mapping):
        if info.label is None:
            raise TypeError(f"{info.name}: the reader returned a mapping but has no label")
        points = tuple((str(key), float(value)) for key, value in sorted(reading.items()))
        return Family(info, points)
    if isinstance(reading, int | float):
        return Family(info, ((None, float(reading)),))
    raise TypeError(f"{info.name}: unexpected reading {reading!r}")


def render_prometheus(snapshot: Snapshot) -> str:
    """A snapshot in the Prometheus text format 0.0.4 (HELP and TYPE for each family)."""
    lines: list[str] = []
    for family in snapshot.families:
        info = family.info
        lines.append(f"# HELP {info.prometheus} {_escape_help(info.help)}")
        lines.append(f"# TYPE {info.prometheus} {info.kind}")
        for label_value, number in family.points:
            labels = "" if label_value is None else f'{{{info.label}="{_escape(label_value)}"}}'
            lines.append(f"{info.prometheus}{labels} {_number(number)}")
        dist = family.distribution
        if dist is not None:
            for q, value in sorted(dist.quantiles.items()):
                lines.append(f'{info.prometheus}{{quantile="{_number(q)}"}} {_number(value)}')
            lines.append(f"{info.prometheus}_sum {_number(dist.sum)}")
            lines.append(f"{info.prometheus}_count {_number(dist.count)}")
    return "\n".join(lines) + "\n" if lines else ""


def _tag_value(label: str | None, raw: str) -> str:
    """``raw`` as an AppOptics tag value; labels that sanitize to the same value merge."""
    pair = fit_tag(label or "", raw)
    return EMPTY_LABEL if pair is None else pair[1]


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if float(x).is_integer() and abs(x) < 2**53:
        return str(int(x))
    return repr(float(x))


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


# The components' counters, as structural Protocols: plain attributes satisfy them.


class ListenerCounts(Protocol):
    @property
    def datagrams(self) -> int: ...
    @property
    def bytes(self) -> int: ...


class TcpCounts(Protocol):
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


class DropCounts(Protocol):
    @property
    def dropped(self) -> Mapping[str, int]: ...


class SinkCounts(Protocol):
    @property
    def posted(self) -> int: ...
    @property
    def outcomes(self) -> Mapping[str, int]: ...
    @property
    def lost(self) -> Mapping[str, int]: ...
    @property
    def retries(self) -> int: ...
    @property
    def pending(self) -> int: ...


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
    udp_port: int | None = None,
    tcp: TcpCounts | None = None,
    flusher: FlusherCounts | None = None,
    aggregator: AggregatorCounts | None = None,
    converter: DropCounts | None = None,
    sink: SinkCounts | None = None,
    spool: SpoolCounts | None = None,
    mapping: MappingCounts | None = None,
    series_active: Callable[[], float | None] | None = None,
    flush_duration: Callable[[], Distribution | None] | None = None,
    post_latency: Callable[[], Distribution | None] | None = None,
    udp_tables: Sequence[Path] = PROC_NET_UDP,
) -> SelfMetrics:
    """The documented ``statsd_ao.*`` set, for the sources given (None: not registered).

    ``measurements.lost`` adds the sink's losses to the converter's dropped values, so
    every measurement that never reached the API is counted there once, by reason.
    """
    metrics = SelfMetrics(tags)
    if listener is not None:
        metrics.register_counter("udp.packets", "UDP datagrams read", lambda: listener.datagrams)
        metrics.register_counter("udp.bytes", "UDP payload bytes read", lambda: listener.bytes)
    if udp_port is not None:
        port = udp_port
        metrics.register_counter(
            "udp.kernel_drops",
            "datagrams the kernel dropped, mostly because the receive buffer was full",
            lambda: udp_drops(port, udp_tables),
        )
        metrics.register_gauge(
            "udp.receive_queue_bytes",
            "bytes waiting in the kernel receive buffer",
            lambda: _field(udp_socket_stats(port, udp_tables)),
        )
    if flusher is not None:
        metrics.register_counter(
            "lines.received", "StatsD lines received (counted at each flush)", lambda: flusher.lines
        )
        metrics.register_counter(
            "lines.bad", "lines rejected, by reason", lambda: flusher.rejected, label="reason"
        )
        metrics.register_counter("flushes", "flushes done", lambda: flusher.flushes)
    if series_active is not None:
        metrics.register_gauge("series.active", "series in the last flush", series_active)
    if tcp is not None:
        _register_tcp(metrics, tcp)
    if aggregator is not None:
        _register_guard(metrics, aggregator)
    if sink is not None:
        _register_sink(metrics, sink)
    if spool is not None:
        _register_spool(metrics, spool)
    if mapping is not None:
        _register_mapping(metrics, mapping, flusher)
    if sink is not None or converter is not None:
        metrics.register_counter(
            "measurements.lost",
            "measurements that will never reach the API, by reason",
            lambda: _merge(sink.lost if sink else {}, converter.dropped if converter else {}),
            label="reason",
        )
    if flush_duration is not None:
        metrics.register_summary(
            "flush.duration_seconds", "time to swap, convert and queue one flush", flush_duration
        )
    if post_latency is not None:
        metrics.register_summary(
            "post.latency_seconds", "time from sending a post to its answer", post_latency
        )
    return metrics


def _register_tcp(metrics: SelfMetrics, tcp: TcpCounts) -> None:
    metrics.register_gauge("tcp.connections", "TCP connections open", lambda: tcp.open)
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


def _register_sink(metrics: SelfMetrics, sink: SinkCounts) -> None:
    metrics.register_counter(
        "measurements.posted", "measurements the API confirmed it stored", lambda: sink.posted
    )
    metrics.register_counter(
        "posts",
        "posts by outcome: HTTP status, or the error that ended the attempt",
        lambda: sink.outcomes,
        label="outcome",
    )
    metrics.register_counter(
        "posts.retried", "posts queued again after a failure", lambda: sink.retries
    )
    metrics.register_gauge(
        "measurements.pending", "measurements queued or in flight", lambda: sink.pending
    )


def _register_spool(metrics: SelfMetrics, spool: SpoolCounts) -> None:
    metrics.register_gauge("spool.bytes", "bytes of posts kept in --spool-dir", lambda: spool.bytes)
    metrics.register_gauge(
        "spool.segments", "segment files kept in --spool-dir", lambda: spool.segments
    )
    metrics.register_counter(
        "spool.write_errors",
        "spool writes that failed (disk full, I/O error): those posts were in memory only",
        lambda: spool.write_errors,
    )
    metrics.register_counter(
        "spool.damaged",
        "damaged spool files or records found at start and skipped, by kind",
        lambda: spool.damaged,
        label="kind",
    )
    metrics.register_counter(
        "spool.replayed",
        "measurements a previous run left in --spool-dir, queued for delivery at start",
        lambda: spool.replayed,
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
    )
    if flusher is not None:
        metrics.register_counter(
            "mapping.lines_dropped",
            "lines a drop rule removed",
            lambda: flusher.rejected.get(DROPPED_BY_RULE, 0),
        )


def _field(stats: UdpSocketStats | None) -> int | None:
    return None if stats is None else stats.receive_queue


def _merge(*counts: Mapping[str, int]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for mapping in counts:
        for key, value in mapping.items():
            merged[str(key)] = merged.get(str(key), 0.0) + value
    return merged
