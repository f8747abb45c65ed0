"""The app's lifecycle, in-process: parts opened in order, unwound in reverse, a shutdown trigger.

Fake parts record what is done to them in one shared journal; the real composition root is
run too, over loopback UDP with the dry run's output in a buffer.
"""

from __future__ import annotations

import asyncio
import errno
import io
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp
import orjson
import pytest

from statsd_ao import compose
from statsd_ao.app import App, RunState
from statsd_ao.compose_sources import RulesFile
from statsd_ao.config import build as build_config
from statsd_ao.core.accumulators import Accumulator
from statsd_ao.core.aggregator import Aggregator, SeriesKey
from statsd_ao.core.events import Event
from statsd_ao.core.measurements import Measurement
from statsd_ao.core.sanitize import Naming
from statsd_ao.flusher import Flusher
from statsd_ao.io.health import HttpEndpoint
from statsd_ao.io.listeners import DatagramListener
from statsd_ao.pipeline import SeriesItems
from statsd_ao.rulesfile import read_rules
from tests.fakeapi import FakeAppOptics

Journal = list[str]
LIMIT = 20.0  # seconds any one scenario may take


class FakePart:
    """A source or endpoint: journals its open and close; ``fails`` makes open raise."""

    def __init__(self, name: str, journal: Journal, *, fails: bool = False) -> None:
        self.name, self.journal, self.fails = name, journal, fails

    def describe(self) -> str:
        return self.name

    async def open(self) -> None:
        if self.fails:
            raise OSError(98, "Address already in use")
        self.journal.append(f"open {self.name}")

    async def close(self) -> None:
        self.journal.append(f"close {self.name}")


class FakeSink:
    """A sink journalling its lifecycle and keeping what it was handed."""

    def __init__(self, name: str, journal: Journal, *, lose: int = 0) -> None:
        self.name, self.journal, self.lose = name, journal, lose
        self.series_seen: list[tuple[str, int]] = []
        self.is_open = False
        self.kept = 0
        self.delivered = 0
        self.lost: dict[str, int] = {}

    async def start(self) -> None:
        self.is_open = True
        self.journal.append(f"start {self.name}")

    def prepare(self, table: Mapping[SeriesKey, Accumulator]) -> None:
        return None

    def series(self, items: SeriesItems, stamp: int, period: int) -> int:
        self.series_seen.extend((key[1], stamp) for key, _ in items)
        return len(items)

    def measurements(self, batch: Sequence[Measurement]) -> int:
        return len(batch)

    def end_interval(self) -> None:
        self.journal.append(f"end_interval {self.name}")

    def event(self, event: Event) -> None:
        return None

    async def drain(self, timeout: float) -> int:
        self.journal.append(f"drain {self.name}")
        return self.lose

    async def close(self) -> None:
        self.is_open = False
        self.journal.append(f"close {self.name}")


def make_app(
    journal: Journal, sinks: Sequence[FakeSink], *, failing: str = ""
) -> tuple[App, Aggregator]:
    aggregator = Aggregator(Naming({"host": "h"}))
    flusher = Flusher(aggregator, sinks, interval=3600)
    parts = [FakePart(name, journal, fails=name == failing) for name in ("udp", "tcp")]
    app = App(
        flusher=flusher,
        sources=parts,
        sinks=sinks,
        endpoints=[FakePart("http", journal, fails=failing == "http")],
        state=RunState(),
        shutdown_timeout=1.0,
    )
    return app, aggregator


def test_shutdown_unwinds_in_the_documented_order() -> None:
    journal: Journal = []
    sinks = [FakeSink("appoptics", journal), FakeSink("otlp", journal)]
    app, aggregator = make_app(journal, sinks)
    stop = asyncio.Event()

    async def scenario() -> int:
        task = asyncio.create_task(app.run(stop.wait))
        async with asyncio.timeout(LIMIT):
            await app.state.started.wait()
        aggregator.ingest(b"a:1|c")
        stop.set()
        async with asyncio.timeout(LIMIT):
            return await task

    assert asyncio.run(scenario()) == 0
    assert journal == [
        "open http",
        "start appoptics",
        "start otlp",
        "open udp",
        "open tcp",
        "close tcp",  # intake stops first (after reading what is queued)...
        "close udp",
        "end_interval appoptics",  # ...then the final flush goes to every sink...
        "end_interval otlp",
        "drain appoptics",  # ...which drain side by side...
        "drain otlp",
        "close otlp",  # ...and close, before the endpoint (it says "not ready" meanwhile)
        "close appoptics",
        "close http",
    ]
    assert [sink.series_seen for sink in sinks] == [[("a", sinks[0].series_seen[0][1])]] * 2
    assert not app.state.listening and not app.state.delivering


@pytest.mark.parametrize(
    ("failing", "opened"),
    [
        ("http", []),
        ("tcp", ["open http", "start appoptics", "open udp"]),
    ],
)
def test_a_failed_start_closes_exactly_what_was_opened(failing: str, opened: list[str]) -> None:
    journal: Journal = []
    app, _ = make_app(journal, [FakeSink("appoptics", journal)], failing=failing)

    async def never() -> None:
        await asyncio.Event().wait()

    async def scenario() -> int:
        async with asyncio.timeout(LIMIT):
            return await app.run(never)

    assert asyncio.run(scenario()) == 1
    assert journal[: len(opened)] == opened
    closed = journal[len(opened) :]
    # No final flush (nothing ran); what was opened is closed in reverse (the part that failed
    # is asked to close too, to release what it half opened).
    assert [entry for entry in closed if entry.startswith("end_interval")] == []
    reverse = [entry.replace("open", "close").replace("start", "close") for entry in opened]
    assert [e for e in closed if e != f"close {failing}" and e.startswith("close")] == [
        *reversed(reverse)
    ]


def test_a_sink_that_loses_data_at_shutdown_is_counted() -> None:
    journal: Journal = []
    app, _ = make_app(journal, [FakeSink("appoptics", journal, lose=7), FakeSink("otlp", journal)])

    async def scenario() -> int:
        async with asyncio.timeout(LIMIT):
            return await app.run(_now)

    assert asyncio.run(scenario()) == 0
    assert app.lost == 7


async def _now() -> None:
    """A shutdown trigger that fires at once."""


def send_udp(port: int, *lines: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for line in lines:
            sock.sendto(line, ("127.0.0.1", port))


class LogWaiter(logging.Handler):
    """Sets an event when a log record holds ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.seen = text, asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


def printed(out: io.BytesIO) -> dict[str, Measurement]:
    """The dry run's measurements by name (each name once)."""
    found: dict[str, Measurement] = {}
    for line in out.getvalue().splitlines():
        for m in orjson.loads(line).get("measurements", []):
            assert m["name"] not in found, m["name"]
            found[m["name"]] = m
    return found


def run_composed(
    scenario_flags: dict[str, str], rules_file: RulesFile | None, body: object
) -> io.BytesIO:
    """Build the real proxy in-process (dry run into a buffer) and run ``body(app)``, then
    stop it through the shutdown trigger."""
    config = build_config(
        {"udp": "127.0.0.1:0", "flush_interval": "3600", "tags": ["host=h"], **scenario_flags},
        environ={},
    )
    out = io.BytesIO()
    app = compose.build(config, rules_file, stdout=out, gc=False)
    stop = asyncio.Event()

    async def scenario() -> int:
        task = asyncio.create_task(app.run(stop.wait))
        async with asyncio.timeout(LIMIT):
            await app.state.started.wait()
            udp = app.sources[0]
            assert isinstance(udp, DatagramListener)
            await body(app, udp.bound.port)  # type: ignore[operator]
            stop.set()
            return await task

    assert asyncio.run(scenario()) == 0
    return out


def test_the_composed_proxy_runs_in_process_and_keeps_the_last_interval() -> None:
    async def body(app: App, port: int) -> None:
        # Queued in the kernel before sendto returns: closing the listener reads it.
        send_udp(port, b"in.process:3|c|@0.5", b"gauge.x:5|g")

    out = run_composed({}, None, body)
    got = printed(out)
    assert got["in.process"]["value"] == 6
    assert got["gauge.x"]["value"] == 5


def test_sighup_reloads_the_mapping_rules_in_process(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nmatch = "old.*"\nname = "first.$1"\n')
    path = str(rules)
    loaded = read_rules(path)
    waiter = LogWaiter("mapping: 1 rules loaded")
    logger = logging.getLogger("statsd_ao")
    level = logger.level
    logger.addHandler(waiter)
    logger.setLevel(logging.INFO)

    async def body(app: App, port: int) -> None:
        rules.write_text('[[rule]]\nmatch = "old.*"\nname = "second.$1"\n')
        os.kill(os.getpid(), signal.SIGHUP)
        async with asyncio.timeout(LIMIT):
            await waiter.seen.wait()
        send_udp(port, b"old.x:1|c")

    try:
        out = run_composed({"mapping": path}, (path, *loaded), body)
    finally:
        logger.removeHandler(waiter)
        logger.setLevel(level)
    assert set(printed(out)) == {"second.x"}


def test_ready_warns_while_the_api_fails_and_stays_ready() -> None:
    """An outage does not make the proxy unready (it buffers), but /ready says so."""

    async def scenario() -> dict[str, object]:
        async with FakeAppOptics(token="t0k") as api:
            api.down = True
            config = build_config(
                {
                    "udp": "127.0.0.1:0",
                    "http": "127.0.0.1:0",
                    "api_url": api.url,
                    "token": "t0k",
                    "tags": ["host=h"],
                    "shutdown_timeout": "1",
                },
                environ={},
            )
            # A clock just before a tick: the first flush (self-metrics) posts at once.
            app = compose.build(config, clock=lambda: 1_000_000.0 - 0.01, gc=False)
            stop = asyncio.Event()
            task = asyncio.create_task(app.run(stop.wait))
            async with asyncio.timeout(LIMIT):
                await app.state.started.wait()
                await api.wait_for(lambda fake: len(fake.requests) >= 1)
                endpoint = app.endpoints[0]
                assert isinstance(endpoint, HttpEndpoint) and endpoint.server is not None
                url = f"http://127.0.0.1:{endpoint.server.port}/ready"
                async with aiohttp.ClientSession() as session:
                    body: dict[str, object] = {}
                    while not body.get("warnings"):  # until the sink has read the 503
                        async with session.get(url) as response:
                            assert response.status == 200
                            body = await response.json()
                stop.set()
                await task
            return body

    body = asyncio.run(scenario())
    assert body["status"] == "ok"
    warnings = body["warnings"]
    assert isinstance(warnings, list) and "has been failing for" in warnings[0]


def test_values_out_of_range_are_logged_and_in_the_exit_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="statsd_ao")

    async def body(app: App, port: int) -> None:
        send_udp(port, b"big:1e200|g", b"bigc:1e130|c", b"ok:1|c")

    out = run_composed({}, None, body)
    assert set(printed(out)) == {"ok"}
    assert "stdout: dropped 2 measurements the API cannot take" in caplog.text
    assert "stdout: 1 delivered, lost {'value out of range': 2}" in caplog.text


def send_as_nobody(path: str) -> int:
    """errno of a datagram sent to ``path`` by a process running as user nobody (0: sent)."""
    code = (
        "import os, socket, sys\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "try:\n    s.sendto(b'other.uid:1|c', sys.argv[1])\n"
        "except OSError as e:\n    sys.exit(e.errno)\n"
    )
    return subprocess.run([sys.executable, "-c", code, path], timeout=30, check=False).returncode


@pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root to setuid")
@pytest.mark.parametrize(("mode", "reaches"), [("0660", False), ("0666", True)])
def test_the_unix_socket_mode_decides_who_may_send(mode: str, reaches: bool) -> None:
    # Not under tmp_path: pytest's folders are 0700, where user nobody reaches no path at all.
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)
        path = os.path.join(folder, "statsd.sock")
        sent_by_nobody(path, mode, reaches)


def sent_by_nobody(path: str, mode: str, reaches: bool) -> None:
    """Run the proxy on ``path`` with ``mode``; a process of another uid sends to it."""

    async def body(app: App, port: int) -> None:
        assert stat.S_IMODE(os.stat(path).st_mode) == int(mode, 8)
        status = await asyncio.to_thread(send_as_nobody, path)
        assert status == (0 if reaches else errno.EACCES)

    out = run_composed({"unix": path, "unix_mode": mode}, None, body)
    assert ("other.uid" in printed(out)) is reaches
