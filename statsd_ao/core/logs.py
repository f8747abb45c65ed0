"""Logging helpers: a rate limit per message key, so repeated trouble logs once a while, and
JSON lines whose records carry structured ``fields`` beside the message.

A call passes its figures twice: in the text (for people) and as ``fields`` (for log
collectors): ``log.info("lost %s", lost, extra=fields(lost=lost))``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import orjson


def fields(**values: object) -> dict[str, object]:
    """The ``extra`` of a log call whose figures a JSON log shows as fields."""
    return {"fields": values}


class RateLimitedLog:
    """Logs a message for a key at most once per ``interval`` seconds; counts the rest.

    The next message for the key says how many were suppressed since the last one.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(
        self, key: str, message: str, *args: object, extra: Mapping[str, object] | None = None
    ) -> bool:
        """Log at WARNING unless ``key`` logged within the interval; True when logged."""
        return self.log(logging.WARNING, key, message, *args, extra=extra)

    def error(
        self, key: str, message: str, *args: object, extra: Mapping[str, object] | None = None
    ) -> bool:
        return self.log(logging.ERROR, key, message, *args, extra=extra)

    def log(
        self,
        level: int,
        key: str,
        message: str,
        *args: object,
        exc_info: bool = False,
        extra: Mapping[str, object] | None = None,
    ) -> bool:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        self._logger.log(level, message, *args, exc_info=exc_info, extra=extra)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors: time, level, logger, message, and the
    record's structured ``fields`` when the call gave them (`fields`)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        structured = getattr(record, "fields", None)
        if isinstance(structured, Mapping):
            entry["fields"] = structured
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def configure(level: str, json_format: bool) -> None:
    """Logs go to stderr, as text or JSON lines, with UTC timestamps."""
    handler = logging.StreamHandler()
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.Formatter.converter = time.gmtime
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
