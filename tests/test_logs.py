"""Logs: ``--log-format json`` writes one JSON object per line, for log collectors; repeated
trouble is rate-limited (`statsd_ao.core.logs`)."""

from __future__ import annotations

import logging
import re
import signal

import orjson

from statsd_ao.core.logs import JsonFormatter, RateLimitedLog
from tests.bounded import E2E_TIMEOUT, run_bounded
from tests.fakeapi import FakeAppOptics
from tests.proxy import Proxy

TOKEN = "log-token"
FIELDS = {"time", "level", "logger", "message"}
UTC_MILLIS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_the_program_s_json_logs_are_one_object_per_line() -> None:
    async def scenario() -> list[str]:
        async with FakeAppOptics(token=TOKEN) as api:
            flags = ("--api-url", api.url, "--flush-interval", "86400", "--log-format", "json")
            async with Proxy(*flags, env={"APPOPTICS_TOKEN": TOKEN}) as proxy:
                await proxy.send([b"ok:1|c", b"bad line"])
                assert await proxy.stop(signal.SIGTERM) == 0, proxy.log
            assert [m["name"] for m in api.accepted] == ["ok"]
            return proxy.stderr

    lines = run_bounded(scenario(), E2E_TIMEOUT)
    entries = [orjson.loads(line) for line in lines]  # every line: one JSON object
    # Every entry has the four fields; those that report figures carry them as "fields" too.
    assert entries and all(set(entry) - {"fields"} == FIELDS for entry in entries), lines
    assert all(UTC_MILLIS.fullmatch(entry["time"]) for entry in entries), lines
    assert {entry["level"] for entry in entries} <= {"INFO", "WARNING"}
    assert any(entry["message"].startswith("ready: ") for entry in entries), lines
    [rejected] = [e for e in entries if e["message"].startswith("rejected 1 lines")]
    assert (rejected["level"], rejected["logger"]) == ("WARNING", "statsd_ao.flusher")
    assert "missing type" in rejected["message"] and "b'bad line'" in rejected["message"]
    assert rejected["fields"] == {"rejected": {"missing type": 1}}
    [stopped] = [e for e in entries if e["message"].startswith("stopped: ")]
    assert stopped["fields"]["lines"] == 2 and stopped["fields"]["undelivered"] == 0


def test_a_json_log_entry_carries_its_traceback() -> None:
    try:
        raise ValueError('boom "quoted"\nsecond line')
    except ValueError as error:
        info = (ValueError, error, error.__traceback__)
        record = logging.LogRecord("statsd_ao.x", logging.ERROR, __file__, 1, "f: %s", (7,), info)
    entry = orjson.loads(JsonFormatter().format(record))
    assert set(entry) == FIELDS | {"exception"}
    assert (entry["level"], entry["logger"], entry["message"]) == ("ERROR", "statsd_ao.x", "f: 7")
    assert entry["exception"].startswith("Traceback")
    assert 'ValueError: boom "quoted"\nsecond line' in entry["exception"]


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_rate_limited_message_says_how_many_were_suppressed() -> None:
    logger = logging.getLogger("tests.ratelimit")
    clock = Clock()
    limited = RateLimitedLog(logger, 60.0, clock)
    handler = ListHandler()
    logger.addHandler(handler)
    try:
        assert limited.warning("k", "trouble %d", 1)
        assert not limited.warning("k", "trouble %d", 2)
        assert not limited.warning("k", "trouble %d", 3)
        assert limited.warning("other", "elsewhere")  # keys are limited apart
        clock.now = 60.0
        assert limited.warning("k", "trouble %d", 4)
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in handler.records] == [
        "trouble 1",
        "elsewhere",
        "trouble 4 (2 similar messages suppressed)",
    ]
