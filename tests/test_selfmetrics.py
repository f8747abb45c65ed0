"""Self-metrics: readers in, AppOptics measurements (deltas) and Prometheus text out."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statsd_ao.core.aggregator import Aggregator
from statsd_ao.core.cardinality import CardinalityGuard
from statsd_ao.core.measurements import Converter
from statsd_ao.core.sanitize import Naming
from statsd_ao.core.selfmetrics import Distribution, MetricType, SelfMetrics, Timings
from statsd_ao.etsy.admin_state import ProxyAdminState
from statsd_ao.flusher import Flusher
from statsd_ao.io.sink import HttpSink
from statsd_ao.proxy_metrics import (
    SinkReport,
    UdpSocketStats,
    register_process,
    standard_metrics,
    udp_drops,
    udp_socket_stats,
)
from statsd_ao.wiring import AggregatorSpec
from tests.fakeapi import FakeAppOptics, by_name, judge_measurements
from tests.proxy import Proxy
from tests.test_flusher import ListSink, appoptics

E2E_TOKEN = "selfmetrics-token"

TAGS = {"host": "Web-1", "env": "prod"}
FITTED = {"env": "prod", "host": "web-1"}
HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout"
    " inode ref pointer drops\n"
)


@dataclass
class Source:
    """Plain attributes standing in for a component's counters."""

    count: float = 0
    level: float | None = 0
    reasons: dict[str, float] = field(default_factory=dict)


def test_counters_are_posted_as_interval_deltas_and_gauges_as_values() -> None:
    src = Source()
    metrics = SelfMetrics(TAGS)
    metrics.register_counter("lines.received", "lines", lambda: src.count)
    metrics.register_gauge("series.active", "series", lambda: src.level)
    src.count, src.level = 5, 7
    first = metrics.measurements(1000, 10)
    src.count, src.level = 12, 3
    second = metrics.measurements(1010, 10)
    assert first == [
        {
            "name": "statsd_ao.lines.received",
            "tags": FITTED,
            "time": 1000,
            "period": 10,
            "value": 5,
            "attributes": {"summarize_function": "sum"},
        },
        {"name": "statsd_ao.series.active", "tags": FITTED, "time": 1000, "period": 10, "value": 7},
    ]
    assert [m.get("value") for m in second] == [7, 3]
    assert [m["time"] for m in second] == [1010, 1010]


def test_a_counter_that_starts_over_is_reported_from_zero() -> None:
    src = Source(count=100)
    metrics = SelfMetrics(TAGS)
    metrics.register_counter("udp.kernel_drops", "drops", lambda: src.count)
    metrics.measurements(0 + 10, 10)
    src.count = 4  # e.g. the socket was reopened
    assert [m.get("value") for m in metrics.measurements(20, 10)] == [4]


def test_labelled_counters_become_one_tagged_measurement_per_label() -> None:
    src = Source(reasons={"bad value": 2, "Empty Name": 1, "": 1})
    metrics = SelfMetrics(TAGS)
    metrics.register_counter("lines.bad", "bad", lambda: src.reasons, label="reason")
    out = metrics.measurements(10, 10)
    assert [(m["tags"]["reason"], m.get("value")) for m in out] == [
        ("_", 1),  # nothing of the label survives sanitizing: still counted, under "_"
        ("bad value", 2),
        ("empty name", 1),
    ]
    assert [m["tags"]["reason"] for m in out] == sorted(m["tags"]["reason"] for m in out)
    assert all(m["tags"]["host"] == "web-1" for m in out)
    src.reasons["bad value"] = 5
    assert [m.get("value") for m in metrics.measurements(20, 10)] == [0, 3, 0]


def test_labels_that_sanitize_alike_are_posted_as_one() -> None:
    metrics = SelfMetrics(TAGS)
    metrics.register_counter(
        "posts", "h", lambda: {"Timeout Error": 1, "timeout error": 2}, label="o"
    )
    assert [(m["tags"]["o"], m.get("value")) for m in metrics.measurements(10, 10)] == [
        ("timeout error", 3)
    ]
    assert metrics.prometheus().count("statsd_ao_posts_total{") == 2  # raw labels kept apart


def test_a_label_wins_over_a_global_tag_of_the_same_name() -> None:
    metrics = SelfMetrics({"host": "h", "reason": "global"})
    metrics.register_counter("lines.bad", "bad", lambda: {"x": 1}, label="reason")
    assert metrics.measurements(10, 10)[0]["tags"] == {"host": "h", "reason": "x"}


def test_with_fifty_global_tags_a_label_still_fits() -> None:
    tags = {f"t{i:02}": "v" for i in range(50)}
    metrics = SelfMetrics(tags)
    metrics.register_counter("posts", "posts", lambda: {"202": 1}, label="outcome")
    posted = metrics.measurements(10, 10)[0]["tags"]
    assert len(posted) == 50
    assert posted["outcome"] == "202"


def test_a_reader_with_nothing_to_report_is_left_out_everywhere() -> None:
    src = Source(level=None)
    metrics = SelfMetrics(TAGS)
    metrics.register_gauge("udp.receive_queue_bytes", "queue", lambda: src.level)
    assert metrics.measurements(10, 10) == []
    assert metrics.prometheus() == ""
    src.level = 3
    assert "statsd_ao_udp_receive_queue_bytes 3\n" in metrics.prometheus()


def test_values_the_api_cannot_take_are_not_posted() -> None:
    metrics = SelfMetrics(TAGS)
    metrics.register_gauge("a", "a", lambda: float("nan"))
    metrics.register_gauge("b", "b", lambda: 1e200)
    assert metrics.measurements(10, 10) == []
    assert "statsd_ao_a NaN\n" in metrics.prometheus()


def test_summaries_post_interval_count_and_sum_and_recent_quantiles() -> None:
    timings = Timings(quantiles=(0.5, 0.99))
    metrics = SelfMetrics(TAGS)
    metrics.register_summary("post.latency_seconds", "latency", timings.distribution)
    assert metrics.measurements(10, 10) == []  # nothing observed yet
    for seconds in (0.1, 0.2, 0.3, 0.4):
        timings.observe(seconds)
    out = metrics.measurements(20, 10)
    assert out[0]["name"] == "statsd_ao.post.latency_seconds"
    assert out[0].get("count") == 4
    assert out[0].get("sum") == pytest.approx(1.0)
    assert [(m["name"], m.get("value")) for m in out[1:]] == [
        ("statsd_ao.post.latency_seconds.p50", 0.2),
        ("statsd_ao.post.latency_seconds.p99", 0.4),
    ]
    timings.observe(0.5)
    again = metrics.measurements(30, 10)
    assert again[0].get("count") == 1
    assert again[0].get("sum") == pytest.approx(0.5)
    quiet = metrics.measurements(40, 10)
    assert [m["name"] for m in quiet] == [  # no new post: no summary, quantiles still shown
        "statsd_ao.post.latency_seconds.p50",
        "statsd_ao.post.latency_seconds.p99",
    ]


def test_timings_count_every_observation_in_cumulative_buckets() -> None:
    timings = Timings(window=2, buckets=(1.0, 0.1, 10.0))
    for seconds in (0.05, 0.1, 0.5, 3.0, 60.0):
        timings.observe(seconds)
    assert timings.distribution().buckets == ((0.1, 2), (1.0, 3), (10.0, 4))  # le, cumulative


def test_a_histogram_renders_buckets_to_prometheus_and_a_summary_to_appoptics() -> None:
    timings = Timings(buckets=(0.5, 2.0))
    for seconds in (0.25, 1.0, 4.0):
        timings.observe(seconds)
    metrics = SelfMetrics({"host": "h"})
    metrics.register_histogram("flush.duration_seconds", "flush time", timings.distribution)
    assert metrics.prometheus().splitlines()[1:] == [
        "# TYPE statsd_ao_flush_duration_seconds histogram",
        'statsd_ao_flush_duration_seconds_bucket{le="0.5"} 1',
        'statsd_ao_flush_duration_seconds_bucket{le="2"} 2',
        'statsd_ao_flush_duration_seconds_bucket{le="+Inf"} 3',
        "statsd_ao_flush_duration_seconds_sum 5.25",
        "statsd_ao_flush_duration_seconds_count 3",
    ]
    summary = metrics.measurements(10, 10)[0]
    assert (summary.get("count"), summary.get("sum")) == (3, 5.25)


def test_known_label_values_are_shown_at_zero_before_their_first_event() -> None:
    metrics = SelfMetrics({"host": "h"})
    lost: dict[str, int] = {}
    metrics.register_counter(
        "measurements.lost", "lost", lambda: lost, label="reason", known=("shutdown", "too_old")
    )
    assert 'statsd_ao_measurements_lost_total{reason="shutdown"} 0' in metrics.prometheus()
    lost["rejected"] = 2
    text = metrics.prometheus()
    assert 'reason="too_old"} 0' in text and 'reason="rejected"} 2' in text
    posted = {m["tags"]["reason"] for m in metrics.measurements(10, 10)}
    assert posted == {"rejected"}  # reasons that never happened are not posted


def test_the_process_reports_itself_and_what_was_built() -> None:
    metrics = SelfMetrics({"host": "h"})
    register_process(metrics, "9.9.9", native=True)
    text = metrics.prometheus()
    assert 'statsd_ao_build_info{version="9.9.9"} 1' in text
    assert "statsd_ao_hot_path_native 1" in text
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("statsd_ao_process_")
    }
    assert values["statsd_ao_process_resident_memory_bytes"] > 1 << 20
    assert 3 <= values["statsd_ao_process_open_fds"] <= values["statsd_ao_process_max_fds"]
    assert values["statsd_ao_process_cpu_seconds_total"] > 0
    assert time.time() - 86400 * 7 < values["statsd_ao_process_start_time_seconds"] <= time.time()


def test_timings_quantiles_cover_only_the_recent_window() -> None:
    timings = Timings(quantiles=(0.5, 1.0), window=3, buckets=())
    for seconds in (9.0, 1.0, 2.0, 3.0):
        timings.observe(seconds)
    assert timings.distribution() == Distribution(4, 15.0, {0.5: 2.0, 1.0: 3.0})
    assert Timings(buckets=()).distribution() == Distribution(0, 0.0, {})
    with pytest.raises(ValueError):
        Timings(quantiles=(0.0,))
    with pytest.raises(ValueError):
        Timings(window=0)


def test_prometheus_text_exposition() -> None:
    metrics = SelfMetrics(TAGS)
    metrics.register_counter("udp.packets", "UDP datagrams read", lambda: 42)
    metrics.register_counter(
        "lines.bad", "lines rejected,\nby reason", lambda: {'say "hi"\\': 2, "a": 1.5}, label="r"
    )
    metrics.register_gauge("measurements.pending", "queued", lambda: 7)
    metrics.register_summary(
        "flush.duration_seconds",
        "flush time",
        lambda: Distribution(3, 0.75, {0.5: 0.25, 0.99: 0.5}),
    )
    assert metrics.prometheus() == (
        "# HELP statsd_ao_udp_packets_total UDP datagrams read\n"
        "# TYPE statsd_ao_udp_packets_total counter\n"
        "statsd_ao_udp_packets_total 42\n"
        "# HELP statsd_ao_lines_bad_total lines rejected,\\nby reason\n"
        "# TYPE statsd_ao_lines_bad_total counter\n"
        'statsd_ao_lines_bad_total{r="a"} 1.5\n'
        'statsd_ao_lines_bad_total{r="say \\"hi\\"\\\\"} 2\n'
        "# HELP statsd_ao_measurements_pending queued\n"
        "# TYPE statsd_ao_measurements_pending gauge\n"
        "statsd_ao_measurements_pending 7\n"
        "# HELP statsd_ao_flush_duration_seconds flush time\n"
        "# TYPE statsd_ao_flush_duration_seconds summary\n"
        'statsd_ao_flush_duration_seconds{quantile="0.5"} 0.25\n'
        'statsd_ao_flush_duration_seconds{quantile="0.99"} 0.5\n'
        "statsd_ao_flush_duration_seconds_sum 0.75\n"
        "statsd_ao_flush_duration_seconds_count 3\n"
    )


def test_scraping_does_not_move_the_posting_baseline() -> None:
    src = Source(count=3)
    metrics = SelfMetrics(TAGS)
    metrics.register_counter("udp.packets", "packets", lambda: src.count)
    metrics.prometheus()
    metrics.prometheus()
    assert [m.get("value") for m in metrics.measurements(10, 10)] == [3]
    assert "statsd_ao_udp_packets_total 3\n" in metrics.prometheus()


def test_one_snapshot_can_feed_both_renderings() -> None:
    calls: list[int] = []

    def read() -> float:
        calls.append(1)
        return len(calls)

    metrics = SelfMetrics(TAGS)
    metrics.register_gauge("g", "g", read)
    snap = metrics.snapshot()
    metrics.measurements(10, 10, snap)
    metrics.prometheus(snap)
    assert calls == [1]


def test_catalogue_names_each_metric_on_both_sides() -> None:
    metrics = SelfMetrics(TAGS)
    metrics.register_counter("posts", "posts", dict, label="outcome")
    metrics.register_summary("post.latency_seconds", "latency", lambda: None)
    assert [(i.name, i.prometheus, i.kind, i.label) for i in metrics.catalogue()] == [
        ("statsd_ao.posts", "statsd_ao_posts_total", MetricType.COUNTER, "outcome"),
        (
            "statsd_ao.post.latency_seconds",
            "statsd_ao_post_latency_seconds",
            MetricType.SUMMARY,
            None,
        ),
    ]


@pytest.mark.parametrize(
    ("name", "label"),
    [("Bad", None), ("a..b", None), ("a.b-c", None), ("9a", None), ("ok", "Bad-Label")],
)
def test_invalid_names_and_labels_are_refused(name: str, label: str | None) -> None:
    with pytest.raises(ValueError):
        SelfMetrics(TAGS).register_counter(name, "h", lambda: 1, label=label)


def test_names_that_collide_on_either_side_are_refused() -> None:
    metrics = SelfMetrics(TAGS)
    metrics.register_counter("udp.packets", "h", lambda: 1)
    with pytest.raises(ValueError):
        metrics.register_gauge("udp.packets", "h", lambda: 1)
    with pytest.raises(ValueError):
        metrics.register_counter("udp_packets", "h", lambda: 1)  # same Prometheus name


def test_needs_a_valid_tag_and_a_label_for_mappings() -> None:
    with pytest.raises(ValueError):
        SelfMetrics({"k": "   "})
    metrics = SelfMetrics(TAGS)
    metrics.register_counter("lines.bad", "h", lambda: {"x": 1})
    with pytest.raises(TypeError):
        metrics.snapshot()


@given(st.lists(st.integers(0, 10**6), max_size=30))
def test_posted_deltas_add_up_to_the_count(increments: list[int]) -> None:
    src = Source()
    metrics = SelfMetrics(TAGS)
    metrics.register_counter("c", "c", lambda: src.count)
    posted = 0.0
    for step, increment in enumerate(increments):
        src.count += increment
        posted += metrics.measurements(10 * (step + 1), 10)[0].get("value", 0.0)
    assert posted == src.count


# /proc/net/udp


def write_tables(tmp: Path, v4: str, v6: str = "") -> tuple[Path, Path]:
    udp, udp6 = tmp / "udp", tmp / "udp6"
    udp.write_text(HEADER + v4)
    udp6.write_text(HEADER + v6)
    return udp, udp6


def row(local: str, rx: str, drops: int) -> str:
    return (
        f"  1: {local} 00000000:0000 07 00000000:{rx} 00:00000000 00000000  1000        0"
        f" 4242 2 0000000000000000 {drops}\n"
    )


def test_udp_stats_sum_the_sockets_on_the_port(tmp_path: Path) -> None:
    tables = write_tables(
        tmp_path,
        row("0100007F:1FBD", "00000100", 3)  # 127.0.0.1:8125, 256 bytes queued
        + row("00000000:1FBE", "00000000", 99)  # port 8126: not ours
        + "  garbage line\n"
        + row("00000000:1FBD", "zz", 5),  # unreadable queue: skipped
        row("00000000000000000000000000000000:1FBD", "00000010", 4),  # [::]:8125
    )
    assert udp_socket_stats(8125, tables) == UdpSocketStats(sockets=2, receive_queue=272, drops=7)
    assert udp_drops(8125, tables) == 7
    assert udp_drops(9999, tables) is None
    assert udp_drops(8125, (tmp_path / "missing",)) is None


def test_kernel_drops_of_a_real_flooded_socket() -> None:
    if not Path("/proc/net/udp").exists():
        pytest.skip("no /proc/net/udp on this system")
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with receiver, sender:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum
        receiver.bind(("127.0.0.1", 0))
        port = receiver.getsockname()[1]
        assert udp_drops(port) == 0
        for _ in range(200):
            sender.sendto(b"x" * 1000, ("127.0.0.1", port))
        deadline = time.monotonic() + 5
        while not udp_drops(port) and time.monotonic() < deadline:
            time.sleep(0.01)
        drops = udp_drops(port)
        stats = udp_socket_stats(port)
    assert drops is not None
    assert drops > 0
    assert stats is not None
    assert stats.receive_queue > 0


# The standard set, wired to fakes and to the real components


@dataclass
class FakeGuard:
    tracked: int = 0
    folded_tag_sets: dict[str, int] = field(default_factory=dict)


@dataclass
class FakeAggregator:
    folded_samples: dict[str, int] = field(default_factory=dict)
    guard: FakeGuard | None = None


@dataclass
class FakeSink:
    posted: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    pending: int = 0
    splits: int = 0
    unconfirmed: int = 0
    annotations_posted: int = 0
    annotations_lost: int = 0


@dataclass
class FakeListener:
    datagrams: int = 0
    bytes: int = 0
    pauses: int = 0
    errors: int = 0


@dataclass
class FakeFlusher:
    lines: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)
    flushes: int = 0


def test_standard_metrics_are_accepted_by_a_strict_api(tmp_path: Path) -> None:
    tables = write_tables(tmp_path, row("00000000:1FBD", "00000040", 11))
    sink = FakeSink(posted=900, outcomes={"202": 3, "503": 1}, retries=1, pending=50)
    metrics = standard_metrics(
        {"host": "node-1", "pod": "app-7f9c"},
        listener=FakeListener(datagrams=10, bytes=2000, pauses=7),
        udp_port=lambda: 8125,
        flusher=FakeFlusher(lines=30, rejected={"bad value": 2}, flushes=3),
        aggregator=FakeAggregator({"api.latency": 40, "x": 2}, FakeGuard(500, {"api.latency": 4})),
        sinks=[
            SinkReport(
                "appoptics",
                lambda: {"queue full": 6, "value out of range": 1},
                delivery=sink,
                annotations=sink,
            )
        ],
        series_active=lambda: 123,
        flush_duration=lambda: Distribution(3, 0.3, {0.5: 0.1}),
        post_latency=lambda: Distribution(4, 2.0, {0.99: 1.5}),
        udp_tables=tables,
    )
    out = metrics.measurements(1_700_000_000, 10)
    verdict = judge_measurements({"measurements": out})
    assert verdict.status == 202, verdict.body
    assert not verdict.rejected
    values = {(m["name"], m["tags"].get("reason") or m["tags"].get("outcome")): m for m in out}
    assert values["statsd_ao.udp.kernel_drops", None].get("value") == 11
    assert values["statsd_ao.udp.read_pauses", None].get("value") == 7
    assert values["statsd_ao.udp.receive_queue_bytes", None].get("value") == 64
    assert values["statsd_ao.cardinality.samples_folded", None].get("value") == 42
    assert values["statsd_ao.measurements.lost", "queue full"].get("value") == 6
    assert values["statsd_ao.measurements.lost", "value out of range"].get("value") == 1
    assert values["statsd_ao.posts", "503"].get("value") == 1
    assert values["statsd_ao.flush.duration_seconds", None].get("count") == 3
    assert values["statsd_ao.posts", "503"]["tags"]["sink"] == "appoptics"
    text = metrics.prometheus()
    for info in metrics.catalogue():
        assert f"# TYPE {info.prometheus} {info.kind}\n" in text


def test_standard_metrics_read_the_real_components() -> None:
    """The Protocols match the real classes (mypy checks the types, this the attributes)."""
    guard = CardinalityGuard(limit=2)
    aggregator = Aggregator(Naming({"host": "h"}), guard=guard)
    converter = Converter()
    flusher = Flusher(aggregator, [appoptics(ListSink(), converter)], interval=10)
    sink = HttpSink("http://127.0.0.1:1", "token", concurrency=1, timeout=1.0)
    metrics = standard_metrics(
        {"host": "h"},
        flusher=flusher,
        aggregator=aggregator,
        sinks=[SinkReport("appoptics", lambda: sink.lost, sink, annotations=sink)],
    )
    aggregator.ingest(b"a:1|c|#k:1\na:1|c|#k:2\na:1|c|#k:3\nbad")
    asyncio.run(flusher.flush(1000))
    out = {
        (m["name"], m["tags"].get("reason")): m.get("value") for m in metrics.measurements(0, 10)
    }
    assert out["statsd_ao.lines.received", None] == 4
    assert out["statsd_ao.lines.bad", "missing type"] == 1
    assert out["statsd_ao.cardinality.samples_folded", None] == 2
    assert out["statsd_ao.cardinality.tag_sets_folded", None] == 2
    assert out["statsd_ao.cardinality.tag_sets_tracked", None] == 1
    assert out["statsd_ao.measurements.posted", None] == 0


def test_series_active_reports_the_flush_it_is_posted_with() -> None:
    async def scenario() -> None:
        async with FakeAppOptics(token=E2E_TOKEN) as api:
            flags = ["--api-url", api.url, "--flush-interval", "86400", "--self-metrics", "on"]
            async with Proxy(*flags, env={"APPOPTICS_TOKEN": E2E_TOKEN}) as proxy:
                await proxy.send([b"a:1|c", b"b:1|c", b"c:2|g", b"d:3|ms"])
                assert await proxy.stop(signal.SIGTERM) == 0, proxy.log
        got = by_name(m for m in api.accepted if not m["tags"].get("reason"))
        assert got["statsd_ao.series.active"]["value"] == 4  # the one flush posted 4 series

    asyncio.run(scenario())


def test_lines_left_out_on_purpose_are_not_counted_as_bad() -> None:
    """Filters and drop rules are configuration: alerts on bad lines must not fire on them."""
    aggregator = AggregatorSpec(global_tags={"host": "h"}, exclude=("^debug\\.",)).build(None)
    flusher = Flusher(aggregator, [appoptics(ListSink())], interval=10)
    state = ProxyAdminState(aggregator, flusher, {"host": "h"})
    aggregator.ingest(b"debug.noise:1|c\ndebug.more:2|c\nok:1|c\nno type here")
    assert state.stats()["messages.bad_lines_seen"] == 1  # before the flush...
    report = asyncio.run(flusher.flush(0))
    assert state.stats()["messages.bad_lines_seen"] == 1  # ...and after it
    assert report.rejected == 1
    metrics = standard_metrics({"host": "h"}, flusher=flusher)
    assert flusher.rejected == {"missing type": 1}
    assert flusher.left_out == {"left out by metric filter": 2}
    text = metrics.prometheus()
    assert 'statsd_ao_lines_left_out_total{reason="left out by metric filter"} 2' in text
    assert "left out" not in "".join(
        line for line in text.splitlines() if line.startswith("statsd_ao_lines_bad_total")
    )
