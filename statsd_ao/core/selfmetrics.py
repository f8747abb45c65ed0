"""The proxy's own counters, read on demand and shown two ways: AppOptics and Prometheus.

Theory of operation.  Every component counts its own work in plain attributes (cumulative
since start).  `SelfMetrics` is given *readers*: callables returning the current cumulative
number, a mapping ``{label value: number}`` (e.g. bad lines by reason), or a `Distribution`
(count, sum and recent quantiles of durations).  It never imports the components or the
Config; `statsd_ao.proxy_metrics.standard_metrics` wires the usual set through small
structural Protocols.

`SelfMetrics.snapshot` calls each reader once.  `SelfMetrics.prometheus` renders a snapshot in
the Prometheus text format (cumulative: counters end in ``_total``).  `SelfMetrics.measurements`
turns one into AppOptics measurements named ``statsd_ao.*``: gauges as values, counters as
the change since the previous call (an interval total, posted with
``summarize_function=sum`` like every StatsD counter) and durations as count/sum summaries.
Only ``measurements`` moves the baseline, so scraping ``/metrics`` never disturbs what is
posted.  Everything runs on the loop thread and must not block: a reader reads attributes
(or one small ``/proc`` file), never the network.  A reader that has nothing to report
returns None; a reader that raises is a bug and the error propagates.

This is the registry and its two renderings; which of the proxy's numbers are registered,
and the reading of the kernel's UDP tables, are the shell's (`statsd_ao.proxy_metrics`).
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from statsd_ao.core.measurements import (
    COUNTER_ATTRIBUTES,
    Measurement,
    nearest_rank,
    percentile_suffix,
    postable,
)
from statsd_ao.core.sanitize import MAX_TAGS, fit_tag

PREFIX = "statsd_ao"
# Quantiles reported for durations: the median, and the tail that alerts are written on.
DEFAULT_QUANTILES = (0.5, 0.9, 0.99)
# Durations kept for the quantiles: ~3 hours of 10 s flushes, or minutes of busy posting.
# Sorting 1024 floats per scrape costs ~0.1 ms.
TIMING_WINDOW = 1024
# Upper bounds (seconds) of the histogram buckets of durations: flushes take ~0.2 s for 100k
# series, posts tens of milliseconds, a slow API up to the request timeout.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Value of a label whose text sanitizes to nothing (AppOptics tags cannot be empty).
EMPTY_LABEL = "_"

# Names are lower-case words joined by "." (AppOptics) and mapped to "_" for Prometheus.
_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")
_LABEL = re.compile(r"[a-z_][a-z0-9_]*")

Reading = float | Mapping[str, float] | None
# A counter's baseline: its name, constant labels and label value (or "count" / "sum").
_Key = tuple[str, tuple[tuple[str, str], ...], str | None]


class MetricType(StrEnum):
    COUNTER = "counter"  # cumulative; posted as the change per interval
    GAUGE = "gauge"  # a level; posted as is
    SUMMARY = "summary"  # durations: count, sum and recent quantiles
    HISTOGRAM = "histogram"  # durations: also counts per bucket (Prometheus aggregates them)


@dataclass(frozen=True, slots=True)
class Distribution:
    """Observations: ``count`` and ``sum`` since start, recent ``quantiles`` (q -> value)."""

    count: int
    sum: float
    quantiles: Mapping[float, float] = field(default_factory=dict)
    # (upper bound, observations at or below it), cumulative, since start; empty: none kept
    buckets: tuple[tuple[float, int], ...] = ()


class Timings:
    """Records durations in seconds: O(1) per observation, for flush duration or post latency.

    Count and sum cover everything observed; the quantiles cover the last ``window``
    observations (a recent view, like a Prometheus client's sliding summary).
    """

    def __init__(
        self,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        window: int = TIMING_WINDOW,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        if not all(0 < q <= 1 for q in quantiles) or window < 1:
            raise ValueError("quantiles must be in (0, 1] and the window at least 1")
        self._quantiles = tuple(sorted(set(quantiles)))
        self._recent: deque[float] = deque(maxlen=window)
        self._count = 0
        self._sum = 0.0
        self._bounds = tuple(sorted(set(buckets)))
        self._in_bucket = [0] * len(self._bounds)  # observations in each (not cumulative)

    def observe(self, seconds: float) -> None:
        self._count += 1
        self._sum += seconds
        self._recent.append(seconds)
        index = bisect.bisect_left(self._bounds, seconds)
        if index < len(self._bounds):
            self._in_bucket[index] += 1

    def distribution(self) -> Distribution:
        ordered = sorted(self._recent)
        quantiles = {q: nearest_rank(ordered, q * 100) for q in self._quantiles} if ordered else {}
        buckets = tuple(zip(self._bounds, itertools.accumulate(self._in_bucket), strict=True))
        return Distribution(self._count, self._sum, quantiles, buckets)


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """What a registered metric is called on each side, and what it means."""

    name: str  # AppOptics, e.g. statsd_ao.lines.bad
    prometheus: str  # e.g. statsd_ao_lines_bad_total
    kind: MetricType
    help: str
    label: str | None  # the tag / label key of a reader that returns a mapping
    # Labels (tags) of every point, e.g. (("sink", "otlp"),): one name can then be registered
    # once per part (each sink's posts), as one Prometheus family.
    constant: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Family:
    """One metric at one moment: ``points`` of (label value or None, number), or a summary."""

    info: MetricInfo
    points: tuple[tuple[str | None, float], ...] = ()
    distribution: Distribution | None = None


@dataclass(frozen=True, slots=True)
class Readings:
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
        self._baseline: dict[_Key, float] = {}

    def register_counter(
        self,
        name: str,
        help: str,
        read: Callable[[], Reading],
        *,
        label: str | None = None,
        known: Sequence[str] = (),
        constant: Mapping[str, str] | None = None,
    ) -> None:
        """A cumulative count (never decreasing, except when its source starts over).
        ``known``: label values shown (at 0) from the start, before their first event;
        ``constant``: labels of every point (`MetricInfo.constant`)."""
        self._register(
            name, MetricType.COUNTER, help, _with_known(read, known), label=label, constant=constant
        )

    def register_gauge(
        self,
        name: str,
        help: str,
        read: Callable[[], Reading],
        *,
        label: str | None = None,
        constant: Mapping[str, str] | None = None,
    ) -> None:
        """A level that goes up and down."""
        self._register(name, MetricType.GAUGE, help, read, label=label, constant=constant)

    def register_summary(
        self, name: str, help: str, read: Callable[[], Distribution | None]
    ) -> None:
        """Durations in seconds (name them ``..._seconds``), e.g. `Timings.distribution`."""
        self._register(name, MetricType.SUMMARY, help, read)

    def register_histogram(
        self,
        name: str,
        help: str,
        read: Callable[[], Distribution | None],
        *,
        constant: Mapping[str, str] | None = None,
    ) -> None:
        """Durations in seconds with bucket counts: a Prometheus histogram; to AppOptics,
        count and sum per interval and recent quantiles, as a summary."""
        self._register(name, MetricType.HISTOGRAM, help, read, constant=constant)

    def catalogue(self) -> tuple[MetricInfo, ...]:
        """Every registered metric, in registration order (for documentation and tests)."""
        return tuple(metric.info for metric in self._metrics)

    def snapshot(self) -> Readings:
        """Call every reader once."""
        families = (_family(metric) for metric in self._metrics)
        return Readings(tuple(family for family in families if family is not None))

    def prometheus(self, snapshot: Readings | None = None) -> str:
        """The Prometheus text exposition format (version 0.0.4), cumulative values."""
        return render_prometheus(self.snapshot() if snapshot is None else snapshot)

    def measurements(
        self, time: int, period: int, snapshot: Readings | None = None
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
                if label_value is not None and number == 0 and info.kind is MetricType.COUNTER:
                    continue  # a reason that never happened: shown on /metrics, not posted
                change = number
                if info.kind is MetricType.COUNTER:
                    change = self._delta((info.name, info.constant, label_value), number)
                key = None if label_value is None else _tag_value(info.label, label_value)
                values[key] = values.get(key, 0.0) + change
            for key, value in sorted(values.items(), key=lambda item: item[0] or ""):
                if postable(value):
                    out.append(self._point(info, key, value, time, period))
        return out

    def _summary(
        self, out: list[Measurement], info: MetricInfo, dist: Distribution, time: int, period: int
    ) -> None:
        count = round(self._delta((info.name, info.constant, "count"), dist.count))
        total = self._delta((info.name, info.constant, "sum"), dist.sum)
        tags = self._tags_for(info, None, None)
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

    def _delta(
        self, key: tuple[str, tuple[tuple[str, str], ...], str | None], number: float
    ) -> float:
        previous = self._baseline.get(key, 0.0)
        self._baseline[key] = number
        return number - previous if number >= previous else number

    def _point(
        self, info: MetricInfo, label_value: str | None, value: float, time: int, period: int
    ) -> Measurement:
        m = Measurement(
            name=info.name,
            tags=self._tags_for(info, info.label, label_value),
            time=time,
            period=period,
            value=value,
        )
        if info.kind is MetricType.COUNTER:
            m["attributes"] = COUNTER_ATTRIBUTES
        return m

    def _tags_for(self, info: MetricInfo, label: str | None, value: str | None) -> dict[str, str]:
        """The global tags plus the constant labels and ``label=value`` (already sanitized),
        at most MAX_TAGS."""
        own = [
            *info.constant,
            *([(label, value)] if label is not None and value is not None else []),
        ]
        if not own:
            return dict(self._tags)
        keys = {k for k, _ in own}
        others = [(k, v) for k, v in self._tags.items() if k not in keys]
        return dict([*others[: MAX_TAGS - len(own)], *own])

    def _register(
        self,
        name: str,
        kind: MetricType,
        help: str,
        read: Callable[[], object],
        *,
        label: str | None = None,
        constant: Mapping[str, str] | None = None,
    ) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"metric name {name!r} must match {_NAME.pattern}")
        fixed = tuple(sorted((constant or {}).items()))
        for key in [*([label] if label is not None else []), *(k for k, _ in fixed)]:
            if not _LABEL.fullmatch(key) or (key == label and key in dict(fixed)):
                raise ValueError(f"label {key!r} must match {_LABEL.pattern}, once")
        flat = f"{self._prefix}_{name.replace('.', '_')}"
        info = MetricInfo(
            name=f"{self._prefix}.{name}",
            prometheus=flat + "_total" if kind is MetricType.COUNTER else flat,
            kind=kind,
            help=help,
            label=label,
            constant=fixed,
        )
        for other in self._metrics:
            same = info.name == other.info.name or info.prometheus == other.info.prometheus
            if same and (info.constant == other.info.constant or not fixed):
                raise ValueError(f"metric {name!r} is already registered")
            if same and (other.info.kind, other.info.label) != (kind, label):
                raise ValueError(f"metric {name!r} is registered with another type or label")
        self._metrics.append(_Registered(info, read))


def _with_known(read: Callable[[], Reading], known: Sequence[str]) -> Callable[[], Reading]:
    if not known:
        return read

    def reading() -> Reading:
        counts = read()
        if counts is None or not isinstance(counts, Mapping):
            return counts
        return {**dict.fromkeys(known, 0.0), **counts}

    return reading


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


def render_prometheus(snapshot: Readings) -> str:
    """A snapshot in the Prometheus text format 0.0.4 (HELP and TYPE once per family; the
    metrics registered once per part under one name are one family)."""
    families: dict[str, list[Family]] = {}
    for family in snapshot.families:
        families.setdefault(family.info.prometheus, []).append(family)
    lines: list[str] = []
    for name, group in families.items():
        lines.append(f"# HELP {name} {_escape_help(group[0].info.help)}")
        lines.append(f"# TYPE {name} {group[0].info.kind}")
        for family in group:
            lines.extend(_samples(family))
    return "\n".join(lines) + "\n" if lines else ""


def _samples(family: Family) -> list[str]:
    info = family.info
    name = info.prometheus
    lines = [
        f"{name}{_labels(info, info.label, value)} {_number(number)}"
        for value, number in family.points
    ]
    dist = family.distribution
    if dist is None:
        return lines
    if info.kind is MetricType.HISTOGRAM:
        for bound, count in dist.buckets:
            lines.append(f"{name}_bucket{_labels(info, 'le', _number(bound))} {count}")
        lines.append(f"{name}_bucket{_labels(info, 'le', '+Inf')} {dist.count}")
    else:
        for q, value in sorted(dist.quantiles.items()):
            lines.append(f"{name}{_labels(info, 'quantile', _number(q))} {_number(value)}")
    lines.append(f"{name}_sum{_labels(info, None, None)} {_number(dist.sum)}")
    lines.append(f"{name}_count{_labels(info, None, None)} {_number(dist.count)}")
    return lines


def _labels(info: MetricInfo, key: str | None, value: str | None) -> str:
    pairs = [*info.constant, *([(key, value)] if key is not None and value is not None else [])]
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


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
