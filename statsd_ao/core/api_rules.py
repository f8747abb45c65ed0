"""The AppOptics API's rules for what clients post to it, for the intake that stands in for it.

Theory of operation.  The intake (`statsd_ao.io.api_server`) takes the bodies AppOptics API
clients post and answers as the API did; this module is that API's judgement, with no IO:
bytes in, values out.  `envelope` parses a ``POST /v1/measurements`` body and checks what
concerns the whole request; `judge` then checks one measurement at a time (so the server can
yield to the event loop between slices of a big request); `answer` builds the reply.
`annotation` does the same for ``POST /v1/annotations/:name``.  Every function raises only
`ApiError` (the API's status and error body), whatever the input.

The rules are the reference's (seed 001, "Create a Measurement", "Measurement Restrictions",
"Float Restrictions", "Response Codes & Errors"):

- a measurement has a ``name`` of 1-255 of ``A-Za-z0-9.:-_``, and either ``value`` or
  ``count`` with ``sum`` (``min``, ``max``, ``last``, ``stddev`` optional; ``stddev_m2``, the
  sum of squared deviations from the mean, as the Librato tags API named it, instead of
  ``stddev``); ``value`` and ``count`` never together; ``sum``/``min``/``max``/``stddev`` only
  with ``count``;
- tags: names ``/\\A[-.:_\\w]{1,64}\\z/``, values ``/\\A[-.:_?\\\\\\/\\w ]{1,255}\\z/``, both
  lowercased; at most 50; at least one ("Must have at least one tag");
- a measurement's own ``tags`` replace the top-level ``tags`` entirely (they are never
  merged); ``time`` and ``period`` may be top-level or per measurement (the measurement's win);
- a number of magnitude 1e126 or more aborts the whole request with 400; one below 1e-130 is
  stored as 0.0;
- 400 when every measurement failed, else 202 (with ``x-partial-failure`` when some failed);
  the body counts ``total``, ``accepted``, ``failed``, ``filtered``.

Where the reference is silent the choice is the lenient one a stand-in needs, except where a
value could not be merged: unknown keys (``attributes``, a legacy ``source``) are accepted
and ignored; ``"value": null`` (the Python client sends it with summaries) is no value; an
empty ``tags`` object adds no tags (so the top-level ones apply); ``time`` and ``period``
may be any positive number (a float ``time`` is floored); tag values may be JSON integers.
A summary needs ``count`` > 0, ``min`` <= ``max``, and a spread (``stddev`` or
``stddev_m2``, not both) >= 0; its mean and ``last`` are not held to [``min``, ``max``] (the
reference's own full sample breaks both).  Two tag names equal once lowercased are refused
(the stream they name would be ambiguous).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson

from statsd_ao.core.events import Event, Link

# "It is recommended that you keep batch requests under 1,000 measurements/post."
DEFAULT_MAX_MEASUREMENTS = 1000
# "Data streams have a default limit of 50 tag names per measurement."
MAX_TAGS = 50
# "Float Restrictions": at or above this magnitude the request is aborted with a 400...
FLOAT_ABORT = 1e126
# ...and below this magnitude a number is stored as 0.0.
FLOAT_ZERO = 1e-130
# Fields of an annotation form body at most (a form of 10,000 fields is an attack).
MAX_FORM_FIELDS = 100
# Links of one annotation at most.
MAX_LINKS = 20

_NAME = re.compile(r"[A-Za-z0-9.:_\-]{1,255}")
_TAG_NAME = re.compile(r"[-.:_A-Za-z0-9]{1,64}")
_TAG_VALUE = re.compile(r"[-.:_?\\/A-Za-z0-9 ]{1,255}")
_FORM_LINK = re.compile(r"links\[(\d{1,2})\]\[(\w{1,16})\]")
_SUMMARY = ("sum", "min", "max", "last", "stddev", "stddev_m2")
_NEEDS_COUNT = ("sum", "min", "max", "stddev", "stddev_m2")
_LINK_KEYS = ("rel", "href", "label")

NO_TAGS = "Must have at least one tag"  # the reference's own reason


class ApiError(Exception):
    """The API's answer to a request it refuses: ``status`` and the JSON ``body``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


def request_error(status: int, message: str) -> ApiError:
    """``{"errors": {"request": [message]}}``: the reference's error about the request."""
    return ApiError(status, {"errors": {"request": [message]}})


def params_error(param: str, message: str) -> ApiError:
    """``{"errors": {"params": {param: [message]}}}``: a 400 about one parameter."""
    return ApiError(400, {"errors": {"params": {param: [message]}}})


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement the rules accept: effective tags (lowercased, in the order sent),
    ``time`` floored to a whole second or None, and either ``value`` or the summary fields
    (``count`` set; the optional ones None when not sent; ``m2`` from ``stddev_m2``)."""

    name: str
    tags: tuple[tuple[str, str], ...]
    time: int | None
    value: float | None = None
    count: float | None = None
    sum: float | None = None
    min: float | None = None
    max: float | None = None
    last: float | None = None
    stddev: float | None = None
    m2: float | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why one measurement was refused: an entry of the answer's ``errors`` list."""

    param: str
    reason: str


@dataclass(frozen=True, slots=True)
class Envelope:
    """A ``POST /v1/measurements`` body past its request-wide checks."""

    measurements: list[Any]
    tags: tuple[tuple[str, str], ...]  # the top-level tags
    time: int | None  # the top-level time


def _number(x: object) -> bool:
    return type(x) is float or type(x) is int  # (orjson's own types: bool is not a number)


class _Refused(Exception):
    """A rule broken by one measurement; raised and caught only inside this module."""

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(param, reason)
        self.refusal = Refusal(param, reason)


def envelope(body: bytes, max_measurements: int = DEFAULT_MAX_MEASUREMENTS) -> Envelope:
    """Parse a body and check what concerns the whole request (the measurements list, the
    top-level tags, time and period); raises `ApiError` (400)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise request_error(400, f"the body is not JSON: {error}") from None
    if not isinstance(doc, dict):
        raise request_error(400, "the body must be a JSON object")
    ms = doc.get("measurements")
    if not isinstance(ms, list) or not ms:
        raise params_error("measurements", "must be a non-empty list")
    if len(ms) > max_measurements:
        raise params_error(
            "measurements", f"at most {max_measurements} measurements per request, got {len(ms)}"
        )
    try:
        tags = () if doc.get("tags") is None else _tags(doc["tags"])
        when = _moment(doc, "time")
        _moment(doc, "period")
    except _Refused as refused:
        raise params_error(refused.refusal.param, refused.refusal.reason) from None
    return Envelope(ms, tags, when)


def judge(env: Envelope, index: int) -> Sample | Refusal:
    """The measurement at ``index``, accepted or refused.  Raises `ApiError` (400) for a
    number that aborts the whole request (1e126 or more in magnitude): judge every
    measurement of a request before taking any in."""
    try:
        return _judge(env, env.measurements[index])
    except _Refused as refused:
        return refused.refusal


def _judge(env: Envelope, m: object) -> Sample:
    if not isinstance(m, dict):
        raise _Refused("measurements", "each measurement must be an object")
    fields = _fields(m)  # first: a huge number aborts the request whatever else is wrong
    name = m.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _Refused("name", "must be 1-255 characters of A-Za-z0-9.:-_")
    own = m.get("tags")
    # A measurement's own tags replace the top-level ones; an empty object adds none.
    tags = _tags(own) if own is not None and own != {} else env.tags
    if not tags:
        raise _Refused("tags", NO_TAGS)
    when = _moment(m, "time")
    _moment(m, "period")
    return _sample(name, tags, env.time if when is None else when, fields)


def _moment(doc: dict[str, Any], key: str) -> int | None:
    """A positive ``time`` or ``period`` (floored to a whole second), None when absent."""
    x = doc.get(key)
    if x is None:
        return None
    if not _number(x) or not 0 < x < FLOAT_ABORT:
        raise _Refused(key, "must be a positive number of seconds")
    return math.floor(float(x))


def _fields(m: dict[str, Any]) -> dict[str, float]:
    fields: dict[str, float] = {}
    for key in ("value", "count", *_SUMMARY):
        x = m.get(key)
        if x is None:
            continue
        if not _number(x):
            raise _Refused(key, "must be a number")
        if not -FLOAT_ABORT < x < FLOAT_ABORT:
            raise params_error(key, f"{x!r} is too large: the limit is 1e126")
        fields[key] = 0.0 if -FLOAT_ZERO < x < FLOAT_ZERO else float(x)
    return fields


def _sample(
    name: str, tags: tuple[tuple[str, str], ...], when: int | None, f: dict[str, float]
) -> Sample:
    count = f.get("count")
    if count is None:
        if "value" not in f:
            raise _Refused("value", "either value, or count and sum, must be set")
        orphan = next((key for key in _NEEDS_COUNT if key in f), None)
        if orphan is not None:
            raise _Refused(orphan, "is only valid together with count")
        return Sample(name, tags, when, value=f["value"])  # (a "last" beside it is the value)
    if "value" in f:
        raise _Refused("value", "must not be set together with count")
    if "sum" not in f:
        raise _Refused("sum", "must be set when count is set")
    _consistent(count, f)
    return Sample(
        name,
        tags,
        when,
        count=count,
        sum=f["sum"],
        min=f.get("min"),
        max=f.get("max"),
        last=f.get("last"),
        stddev=f.get("stddev"),
        m2=f.get("stddev_m2"),
    )


def _consistent(count: float, f: dict[str, float]) -> None:
    """Refuse a summary whose figures cannot be merged: no samples, a negative spread, both
    spreads, a minimum above the maximum.  (A mean or ``last`` outside [min, max] is taken
    as sent: the reference's own full sample has both.)"""
    if not count > 0:
        raise _Refused("count", "must be greater than 0")
    if "stddev" in f and "stddev_m2" in f:
        raise _Refused("stddev_m2", "only one of stddev and stddev_m2 may be set")
    for key in ("stddev", "stddev_m2"):
        if f.get(key, 0.0) < 0:
            raise _Refused(key, "must not be negative")
    if f.get("min", -math.inf) > f.get("max", math.inf):
        raise _Refused("min", "must not be greater than max")


def _tags(raw: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict):
        raise _Refused("tags", "must be an object of tag names and values")
    if len(raw) > MAX_TAGS:
        raise _Refused("tags", f"at most {MAX_TAGS} tags, got {len(raw)}")
    seen: set[str] = set()
    pairs = []
    for key, value in raw.items():
        if not _TAG_NAME.fullmatch(key):
            raise _Refused("tags", f"tag name {key[:70]!r} must be 1-64 of A-Za-z0-9-.:_")
        text = str(value) if type(value) is int else value
        if not isinstance(text, str) or not _TAG_VALUE.fullmatch(text):
            raise _Refused(
                "tags", f"tag value of {key!r} must be 1-255 of A-Za-z0-9-.:_?\\/ and space"
            )
        lowered = key.lower()
        if lowered in seen:
            raise _Refused("tags", f"tag name {key!r} repeats another once lowercased")
        seen.add(lowered)
        pairs.append((lowered, text.lower()))
    return tuple(pairs)


@dataclass(frozen=True, slots=True)
class Answer:
    """A reply: status, JSON body and extra headers."""

    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


def answer(total: int, accepted: int, filtered: int, refusals: list[Refusal]) -> Answer:
    """The reply to a measurements post: 202 unless every measurement failed (400)."""
    summary = {"total": total, "accepted": accepted, "failed": len(refusals), "filtered": filtered}
    body: dict[str, Any] = {"measurements": {"summary": summary}}
    if refusals:
        body["errors"] = [{"param": r.param, "reason": r.reason} for r in refusals]
    if refusals and len(refusals) == total:
        return Answer(400, body)
    partial = (("x-partial-failure", "true"),) if refusals else ()
    return Answer(202, body, partial)


# Annotations ----------------------------------------------------------------------------

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


def annotation(stream: str, body: bytes, content_type: str, now: int) -> Event:
    """The event a ``POST /v1/annotations/:name`` body describes (JSON or form encoded);
    ``start_time`` defaults to ``now``.  Raises `ApiError` (400, or 415 for another type)."""
    if not _NAME.fullmatch(stream):
        raise params_error("name", "must be 1-255 characters of A-Za-z0-9.:-_")
    if content_type == FORM:
        doc: object = _form(body)
    elif content_type == JSON:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise request_error(400, f"the body is not JSON: {error}") from None
    else:
        raise request_error(415, f"Content-Type must be {JSON} or {FORM}")
    if not isinstance(doc, dict):
        raise request_error(400, "the body must be a JSON object")
    try:
        return _annotation(stream, doc, now)
    except _Refused as refused:
        raise params_error(refused.refusal.param, refused.refusal.reason) from None


def _annotation(stream: str, doc: dict[str, Any], now: int) -> Event:
    title = doc.get("title")
    if not isinstance(title, str) or not title.strip():
        raise _Refused("title", "is required")
    texts = {}
    for key in ("description", "source"):
        value = doc.get(key)
        if value is not None and not isinstance(value, str):
            raise _Refused(key, "must be a string")
        texts[key] = value
    start = _moment(doc, "start_time")
    start = now if start is None else start
    end = _moment(doc, "end_time")
    if end is not None and end < start:
        raise _Refused("end_time", "must not be before start_time")
    return Event(
        title=title,
        text=texts["description"] or "",
        timestamp=start,
        host=texts["source"] or None,
        stream=stream,
        end_time=end,
        links=_links(doc.get("links")),
    )


def _links(raw: object) -> tuple[Link, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_LINKS:
        raise _Refused("links", f"must be a list of at most {MAX_LINKS} links")
    links = []
    for item in raw:
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k, ""), str) for k in _LINK_KEYS
        ):
            raise _Refused("links", "each link must be an object of strings")
        if not item.get("rel") or not item.get("href"):
            raise _Refused("links", "each link needs rel and href")
        links.append(Link(rel=item["rel"], href=item["href"], label=item.get("label") or None))
    return tuple(links)


def _form(body: bytes) -> dict[str, Any]:
    """``title=..&start_time=..&links[0][rel]=..`` in the shape of the JSON body."""
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as error:
        raise request_error(400, f"the form cannot be parsed: {error}") from None
    doc: dict[str, Any] = {}
    links: dict[int, dict[str, str]] = {}
    for key, value in pairs:
        if match := _FORM_LINK.fullmatch(key):
            links.setdefault(int(match[1]), {})[match[2]] = value
        elif key in ("start_time", "end_time"):
            doc[key] = int(value) if value.isdecimal() and len(value) < 20 else value
        else:
            doc[key] = value
    if links:
        doc["links"] = [links[i] for i in sorted(links)]
    return doc
