"""The etsy management interface (`statsd_ao.etsy.admin`): each command's answer byte for byte,
Node's ``util.inspect`` layout (checked against Node itself when it is installed), and one
loopback session with a real TCP client.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import string
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from statsd_ao.core.aggregator import Aggregator
from statsd_ao.core.sanitize import Naming
from statsd_ao.etsy import admin
from statsd_ao.etsy.admin import (
    END,
    ERROR,
    HELP,
    AdminCommands,
    Health,
    inspect,
    parse_command,
    serve_admin,
)
from statsd_ao.etsy.admin_state import ProxyAdminState
from statsd_ao.flusher import Flusher
from tests.required import require
from tests.test_flusher import FakeClock, ListSink, appoptics

STARTED = 1_700_000_000.0
# Four entries are too long for one line of 80 characters.
COUNTERS_DUMP = (
    "{\n  'api.requests': 3,\n  'api.errors': 0.5,\n  'db.queries': 7,\n  'db.queries.slow': 1\n}\n"
)


class FakeState:
    """An `AdminState` over plain dicts; records what was deleted."""

    def __init__(self) -> None:
        self.counter_values: dict[str, float] = {
            "api.requests": 3,
            "api.errors": 0.5,
            "db.queries": 7,
            "db.queries.slow": 1,
        }
        self.gauge_values: dict[str, float] = {"queue.depth": 12}
        self.timer_values: dict[str, list[float]] = {"web.latency": [12, 15.5, 9]}
        self.status: Health = "up"
        self.stat_values: dict[str, float] = {
            "messages.last_msg_seen": STARTED + 95,
            "messages.bad_lines_seen": 4,
            "appoptics.last_flush": STARTED + 90.4,
            "appoptics.posts_failed": 0,
        }
        self.deleted: list[tuple[str, tuple[str, ...]]] = []

    def counters(self) -> Mapping[str, float]:
        return dict(self.counter_values)

    def gauges(self) -> Mapping[str, float]:
        return dict(self.gauge_values)

    def timers(self) -> Mapping[str, Sequence[float]]:
        return dict(self.timer_values)

    def stats(self) -> Mapping[str, float]:
        return self.stat_values

    def health(self) -> Health:
        return self.status

    def set_health(self, status: Health) -> None:
        self.status = status

    def delete_counters(self, names: Sequence[str]) -> None:
        self._delete("counters", self.counter_values, names)

    def delete_gauges(self, names: Sequence[str]) -> None:
        self._delete("gauges", self.gauge_values, names)

    def delete_timers(self, names: Sequence[str]) -> None:
        self._delete("timers", self.timer_values, names)

    def _delete(self, kind: str, values: dict[str, Any], names: Sequence[str]) -> None:
        self.deleted.append((kind, tuple(names)))
        for name in names:
            del values[name]


def commands(state: FakeState, now: float = STARTED + 100.4) -> AdminCommands:
    return AdminCommands(
        state,
        started_at=STARTED,
        clock=lambda: now,
        config={"port": 8125, "appoptics": {"token": "secret", "tags": {"a": "b"}}},
    )


# --- each command ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "answer"),
    [
        ("counters", COUNTERS_DUMP + END),
        ("gauges\r\n", "{ 'queue.depth': 12 }\n" + END),
        ("timers", "{ 'web.latency': [ 12, 15.5, 9 ] }\n" + END),
        (
            "stats",
            "uptime: 100\n"
            "messages.last_msg_seen: 5\n"  # last_* are shown as seconds since
            "messages.bad_lines_seen: 4\n"
            "appoptics.last_flush: 10\n"
            "appoptics.posts_failed: 0\n" + END,
        ),
        ("health", "health: up\n"),
        ("health down", "health: down\n"),
        ("health sideways", "health: up\n"),
        ("help", HELP),
        (
            "config",
            "\nport: 8125\nappoptics > token: <redacted>\nappoptics > tags: [object Object]\n",
        ),
        ("quit", ""),
        ("stat", ERROR),
        ("", ERROR),
        ("COUNTERS", ERROR),
    ],
)
def test_answers(line: str, answer: str) -> None:
    assert commands(FakeState()).handle(line) == answer


def test_health_sets_and_reports() -> None:
    state = FakeState()
    admin = commands(state)
    assert admin.handle("health DOWN") == "health: down\n"
    assert state.health() == "down"
    assert admin.handle("health") == "health: down\n"
    assert admin.handle("health up extra") == "health: up\n"
    assert state.health() == "up"


@pytest.mark.parametrize(
    ("line", "answer", "deleted"),
    [
        ("delcounters api.errors", "deleted: api.errors\n" + END, [("counters", ("api.errors",))]),
        ("delcounters nope", "metric nope not found\n" + END, []),
        ("delcounters", END, []),
        (
            "delcounters db.*",  # a folder: the names under db.
            "deleted: db.queries\ndeleted: db.queries.slow\n" + END,
            [("counters", ("db.queries", "db.queries.slow"))],
        ),
        (
            "delcounters api.errors api.errors api.requests",  # each name once
            "deleted: api.errors\nmetric api.errors not found\ndeleted: api.requests\n" + END,
            [("counters", ("api.errors",)), ("counters", ("api.requests",))],
        ),
        (
            "delcounters  api.errors",
            "metric  not found\ndeleted: api.errors\n" + END,
            [
                ("counters", ("api.errors",)),
            ],
        ),  # split on single spaces, as etsy does
        ("delgauges queue.depth", "deleted: queue.depth\n" + END, [("gauges", ("queue.depth",))]),
        ("deltimers web.*", "deleted: web.latency\n" + END, [("timers", ("web.latency",))]),
        ("deltimers api.requests", "metric api.requests not found\n" + END, []),
    ],
)
def test_deletes(line: str, answer: str, deleted: list[tuple[str, tuple[str, ...]]]) -> None:
    state = FakeState()
    assert commands(state).handle(line) == answer
    assert state.deleted == deleted


def test_deleted_series_leave_the_dump() -> None:
    state = FakeState()
    admin = commands(state)
    admin.handle("delcounters api.*")
    assert admin.handle("counters") == "{ 'db.queries': 7, 'db.queries.slow': 1 }\n" + END


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        ("stats\n", ("stats", [])),
        ("  delcounters a b \r\n", ("delcounters", ["a", "b"])),
        ("health  up", ("health", ["", "up"])),
    ],
)
def test_parse_command(line: str, parsed: tuple[str, list[str]]) -> None:
    assert parse_command(line) == parsed


# --- util.inspect ---------------------------------------------------------------------------

# Expected outputs printed by Node 20's util.inspect.
INSPECTED = [
    ({}, "{}"),
    (
        {"statsd.bad_lines_seen": 0, "statsd.packets_received": 12, "statsd.metrics_received": 12},
        "{\n  'statsd.bad_lines_seen': 0,\n  'statsd.packets_received': 12,\n"
        "  'statsd.metrics_received': 12\n}",
    ),
    ({"api.requests": 3, "api.errors": 0.5}, "{ 'api.requests': 3, 'api.errors': 0.5 }"),
    (
        {letter: i + 1 for i, letter in enumerate("abcdefghijklmnopqrstuv")},
        "{\n"
        + ",\n".join(f"  {c}: {i + 1}" for i, c in enumerate("abcdefghijklmnopqrstuv"))
        + "\n}",
    ),
    (
        {"web.latency": [12, 15.5, 9], "db.query": []},
        "{ 'web.latency': [ 12, 15.5, 9 ], 'db.query': [] }",
    ),
    (
        {"render": [i * 7.25 for i in range(30)]},
        "{\n  render: [\n      0,   7.25,  14.5,  21.75,\n     29,  36.25,  43.5,  50.75,\n"
        "     58,  65.25,  72.5,  79.75,\n     87,  94.25, 101.5, 108.75,\n"
        "    116, 123.25, 130.5, 137.75,\n    145, 152.25, 159.5, 166.75,\n"
        "    174, 181.25, 188.5, 195.75,\n    203, 210.25\n  ]\n}",
    ),
    (
        {"big": list(range(103))},
        "{\n  big: [\n"
        + "".join(
            "    " + ", ".join(f"{n:2d}" for n in range(row, min(row + 12, 100))) + ",\n"
            for row in range(0, 100, 12)
        )
        + "    ... 3 more items\n  ]\n}",
    ),
    (
        {"it's": -0.0, "tab\there": 1e21, "x": 1e-7, "q\"'": 2, "_ok": 3, "9lives": 4},
        "{\n  \"it's\": -0,\n  'tab\\there': 1e+21,\n  x: 1e-7,\n  `q\"'`: 2,\n  _ok: 3,\n"
        "  '9lives': 4\n}",
    ),
]


@pytest.mark.parametrize(("values", "text"), INSPECTED)
def test_inspect(values: dict[str, float] | dict[str, list[float]], text: str) -> None:
    assert inspect(values) == text


def random_dumps(seed: int, count: int) -> list[dict[str, float] | dict[str, list[float]]]:
    rng = random.Random(seed)

    def number() -> float:
        choice = rng.random()
        if choice < 0.4:
            return rng.randint(0, 10 ** rng.randint(0, 8))
        if choice < 0.8:
            return round(rng.uniform(-1000, 1000), rng.randint(0, 4))
        return rng.uniform(0, 1) * 10.0 ** rng.randint(-10, 25)

    def key() -> str:
        alphabet = rng.choice(
            [string.ascii_lowercase, string.ascii_letters + "._-:#=,", "ab'\"`\\\x01é"]
        )
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))

    dumps: list[dict[str, float] | dict[str, list[float]]] = []
    for _ in range(count):
        size = rng.choice([1, 2, 3, 5, 8])
        if rng.random() < 0.5:
            dumps.append({key(): number() for _ in range(size)})
        else:
            lengths = [0, 1, 6, 7, 10, 30, 100, 101, 150]
            dumps.append(
                {key(): [number() for _ in range(rng.choice(lengths))] for _ in range(size)}
            )
    # Node lists integer-like keys first; the generated keys never look like integers.
    return [d for d in dumps if not any(k.isdigit() for k in d)]


def test_inspect_matches_node() -> None:
    require(shutil.which("node") is not None, "Node.js (node)")
    dumps = random_dumps(seed=2024, count=400)
    script = (
        "const util = require('util');"
        "const dumps = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "console.log(JSON.stringify(dumps.map(d => util.inspect(d))));"
    )
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run(
        [node, "-e", script],
        input=json.dumps(dumps),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    expected = json.loads(done.stdout)
    assert [inspect(d) for d in dumps] == expected


# --- the TCP server -------------------------------------------------------------------------


async def converse(port: int) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        writer.write(b"health\n")
        answers.append(await reader.readline())
        writer.write(b"counters\r\ngauges\n")  # two commands in one segment
        answers.append(await reader.readuntil(END.encode()))
        answers.append(await reader.readuntil(END.encode()))
        writer.write(b"bogus\nquit\nstats\n")  # nothing after quit is answered
        answers.append(await reader.read())  # until the server closes
    finally:
        writer.close()
        await writer.wait_closed()
    return answers


def test_serve_admin_over_loopback() -> None:
    state = FakeState()

    async def main() -> list[bytes]:
        server = await serve_admin("127.0.0.1", 0, commands(state))
        try:
            port = server.sockets[0].getsockname()[1]
            return await asyncio.wait_for(converse(port), timeout=10)
        finally:
            server.close()
            await server.wait_closed()

    answers = asyncio.run(main())
    assert answers == [
        b"health: up\n",
        (COUNTERS_DUMP + END).encode(),
        b"{ 'queue.depth': 12 }\nEND\n\n",
        b"ERROR\n",
    ]


def test_serve_admin_survives_a_client_that_vanishes() -> None:
    async def main() -> bytes:
        server = await serve_admin("127.0.0.1", 0, commands(FakeState()))
        try:
            port = server.sockets[0].getsockname()[1]
            _, rude = await asyncio.open_connection("127.0.0.1", port)
            rude.write(b"x" * 70_000)  # past the line limit, then gone
            rude.close()
            await rude.wait_closed()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"health\n")
            answer = await asyncio.wait_for(reader.readline(), timeout=10)
            writer.close()
            await writer.wait_closed()
            return answer
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(main()) == b"health: up\n"


def test_admin_at_the_session_cap_closes_the_one_idle_longest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admin, "MAX_ADMIN_SESSIONS", 3)

    async def ask(session: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bytes:
        session[1].write(b"health\n")
        return await asyncio.wait_for(session[0].readline(), timeout=10)

    async def main() -> None:
        server = await serve_admin("127.0.0.1", 0, commands(FakeState()))
        port = server.sockets[0].getsockname()[1]
        try:
            first, idle, third = [await asyncio.open_connection("127.0.0.1", port) for _ in "abc"]
            for session in (first, idle, third, first):  # `idle` is now the idle longest
                assert await ask(session) == b"health: up\n"
            newcomer = await asyncio.open_connection("127.0.0.1", port)
            assert await ask(newcomer) == b"health: up\n"
            assert await asyncio.wait_for(idle[0].read(), timeout=10) == b""  # closed
            for session in (first, third, newcomer):
                assert await ask(session) == b"health: up\n"
            for _, writer in (first, idle, third, newcomer):
                writer.close()
                await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_last_msg_seen_is_when_lines_arrived_not_when_stats_is_asked() -> None:
    clock = FakeClock(1000.0)
    aggregator = Aggregator(Naming({"host": "h"}))
    flusher = Flusher(aggregator, [appoptics(ListSink())], interval=10)
    state = ProxyAdminState(aggregator, flusher, {"host": "h"}, clock=clock)
    assert state.stats()["messages.last_msg_seen"] == 1000.0  # the start, as etsy
    clock.now = 1005.0
    aggregator.ingest(b"a:1|c")
    clock.now = 1010.0
    asyncio.run(flusher.flush(1000))
    state.observe()  # what the proxy does after each flush
    clock.now = 1100.0  # long after: nothing arrived since
    assert state.stats()["messages.last_msg_seen"] == 1010.0
    aggregator.ingest(b"a:1|c")
    assert state.stats()["messages.last_msg_seen"] == 1100.0
