"""DogStatsD events and service checks: the two line forms that are not metrics.

Event: ``_e{<title bytes>,<text bytes>}:<title>|<text>|d:<ts>|h:<host>|k:<key>|p:<priority>
|s:<source>|t:<alert type>|#<tags>``.  The lengths are UTF-8 byte counts, so the title and
text may contain ``|``; ``\\n`` in the text stands for a newline.

Service check: ``_sc|<name>|<status>|d:<ts>|h:<host>|#<tags>|m:<message>``; the status is
0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; the message comes last and may contain ``|``.

Both parsers raise only `ParseError`, like the metric parser.
"""

from __future__ import annotations

from dataclasses import dataclass

from statsd_ao.core.protocol import PRESENCE_VALUE, ParseError, TagTuple, parse_timestamp

EVENT_PREFIX = b"_e{"
CHECK_PREFIX = b"_sc|"
CHECK_STATUSES = {b"0": 0, b"1": 1, b"2": 2, b"3": 3}
# Digits of an event's title or text length: no line is a gigabyte, and ``int()`` raises
# its own ValueError past 4,300 digits.
MAX_LENGTH_DIGITS = 9


@dataclass(frozen=True, slots=True)
class Link:
    """A reference an annotation event carries (an AppOptics annotation's ``links``)."""

    rel: str
    href: str
    label: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A DogStatsD event, or an annotation event posted to the AppOptics API intake
    (`statsd_ao.core.api_rules.annotation`), which also names its ``stream`` and may carry
    an ``end_time`` and ``links``."""

    title: str
    text: str
    timestamp: int | None = None
    host: str | None = None
    priority: str | None = None
    alert_type: str | None = None
    source: str | None = None
    tags: TagTuple = ()
    stream: str | None = None  # None: the configured stream (--annotation-stream)
    end_time: int | None = None
    links: tuple[Link, ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceCheck:
    name: str
    status: int
    timestamp: int | None = None
    host: str | None = None
    message: str | None = None
    tags: TagTuple = ()


def parse_event(line: bytes) -> Event:
    """Parse an ``_e{...}`` line."""
    close = line.find(b"}:")
    if not line.startswith(EVENT_PREFIX) or close < 0:
        raise ParseError("bad event header")
    title_len, text_len = _lengths(line[3:close])
    start = close + 2
    title, after = line[start : start + title_len], start + title_len
    if len(title) != title_len or line[after : after + 1] != b"|":
        raise ParseError("bad event lengths")
    text = line[after + 1 : after + 1 + text_len]
    rest = line[after + 1 + text_len :]
    if len(text) != text_len or (rest and rest[:1] != b"|"):
        raise ParseError("bad event lengths")
    fields = _fields(rest[1:].split(b"|") if rest else [])
    return Event(
        title=_text(title),
        text=_text(text).replace("\\n", "\n"),
        timestamp=_timestamp(fields.get("d")),
        host=fields.get("h"),
        priority=fields.get("p"),
        alert_type=fields.get("t"),
        source=fields.get("s"),
        tags=_tags(fields.get("#")),
    )


def parse_service_check(line: bytes) -> ServiceCheck:
    """Parse an ``_sc|...`` line."""
    if not line.startswith(CHECK_PREFIX):
        raise ParseError("bad service check")
    body, has_message, message = line.partition(b"|m:")
    parts = body.rstrip(b"\r").split(b"|")
    if len(parts) < 3 or not parts[1].strip():
        raise ParseError("bad service check")
    status = CHECK_STATUSES.get(parts[2].strip())
    if status is None:
        raise ParseError("unknown service check status")
    fields = _fields(parts[3:])
    return ServiceCheck(
        name=_text(parts[1]),
        status=status,
        timestamp=_timestamp(fields.get("d")),
        host=fields.get("h"),
        message=_text(message.rstrip(b"\r")) if has_message else None,
        tags=_tags(fields.get("#")),
    )


def _lengths(raw: bytes) -> tuple[int, int]:
    title, comma, text = raw.partition(b",")
    if not (comma and title.isdigit() and text.isdigit()):
        raise ParseError("bad event header")
    if len(title) > MAX_LENGTH_DIGITS or len(text) > MAX_LENGTH_DIGITS:
        raise ParseError("bad event lengths")
    return int(title), int(text)


def _fields(parts: list[bytes]) -> dict[str, str]:
    """``d:..``, ``h:..`` etc. by their one-letter key; ``#`` for the tags; others ignored."""
    fields: dict[str, str] = {}
    for part in parts:
        if part[:1] == b"#":
            fields["#"] = _text(part[1:])
        elif part[1:2] == b":":
            fields[part[:1].decode("ascii", "replace")] = _text(part[2:])
    return fields


def _timestamp(raw: str | None) -> int | None:
    return None if raw is None else parse_timestamp(raw.strip())


def _tags(raw: str | None) -> TagTuple:
    if not raw:
        return ()
    pairs = []
    for item in raw.split(","):
        key, has_value, value = item.partition(":")
        if key.strip():
            pairs.append(
                (key.strip(), value.strip() if has_value and value.strip() else PRESENCE_VALUE)
            )
    return tuple(pairs)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").strip()
