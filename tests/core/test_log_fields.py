"""JSON log lines carry a call's figures as structured fields, beside the message."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import orjson

from statsd_ao.core.logs import JsonFormatter, RateLimitedLog, fields


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def kept(name: str) -> Iterator[tuple[logging.Logger, Keep]]:
    logger, handler = logging.getLogger(name), Keep()
    logger.addHandler(handler)
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)


def as_json(message: str, *args: object, extra: dict[str, object] | None = None) -> object:
    """What the JSON formatter makes of one call on a logger."""
    with kept("statsd_ao.test_log_fields") as (logger, handler):
        logger.warning(message, *args, extra=extra)
    return orjson.loads(JsonFormatter().format(handler.records[0]))


def test_fields_appear_as_json_beside_the_message() -> None:
    lost = {"shutdown": 13, "value out of range": 2}
    entry = as_json("lost %s", lost, extra=fields(sink="appoptics", lost=lost))
    assert isinstance(entry, dict)
    assert entry["message"] == f"lost {lost}"
    assert entry["fields"] == {"sink": "appoptics", "lost": lost}
    assert {"time", "level", "logger"} <= set(entry)


def test_a_record_without_fields_has_none() -> None:
    entry = as_json("plain")
    assert isinstance(entry, dict) and "fields" not in entry


def test_the_rate_limited_log_passes_fields_on() -> None:
    with kept("statsd_ao.test_log_fields.limited") as (logger, handler):
        limited = RateLimitedLog(logger, 60.0, clock=lambda: 0.0)
        assert limited.warning("k", "dropped %d", 3, extra=fields(dropped=3))
        assert not limited.warning("k", "dropped %d", 4, extra=fields(dropped=4))
    assert [getattr(r, "fields", None) for r in handler.records] == [{"dropped": 3}]
