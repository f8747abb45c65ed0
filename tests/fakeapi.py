"""A loopback HTTP server that plays the AppOptics API, strictly, for end-to-end tests.

Theory of operation: every request goes through one pipeline in `FakeAppOptics._serve`:

1. the body is read and the request counted as in flight (waiters are woken);
2. ``down`` answers 503 without consuming the script;
3. otherwise the next scripted `Fault`, if any, is consumed: a status answers instead of the
   API, a drop aborts the connection, a delay waits and then falls through;
4. the route checks auth and content type, then judges the body with sans-IO functions
   (`judge_measurements` returns a `Verdict`; a broken rule inside the judges is a `_Reject`,
   caught before it reaches the handler);
5. the outcome is recorded in `requests` (and `accepted` / `rejected` / `annotations`) and
   waiters are woken again.

Strictness follows the API reference (seed 001: "Create a Measurement", "Summary fields",
"Measurement Restrictions", "Response Codes & Errors", "Rate Limiting") and is deliberately
a little stricter where the reference is silent: unknown fields, tag names that collide once
lowercased, a summary that contradicts itself (min above max, a negative stddev, a sum
outside count x [min, max], a last outside [min, max], a count that is not a whole number),
the same series twice in one post (metric names are case-insensitive, so ``Lat`` and
``lat`` are one metric), a ``time`` that is not epoch seconds of this century, top-level
tags that break the tag rules even where every measurement replaces them.  A body whose
measurements cannot be found at all is answered 429, as the reference documents; every
answer carries a rate-limit header.  A proxy that passes here sends nothing the real API
could misread.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict, cast
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from tests.fakeserver import DelayFault, DropFault, LoopbackServer

# "It is recommended that you keep batch requests under 1,000 measurements/post"; the fake
# refuses anything above, so a proxy that relies on the soft limit fails loudly here.
MAX_MEASUREMENTS = 1000
# "Data streams have a default limit of 50 tag names per measurement."
MAX_TAGS = 50
# A number at or above this magnitude aborts the whole request with 400 ("Float Restrictions").
FLOAT_ABORT = 1e126
# A number below this magnitude is stored as 0.0 ("Float Restrictions").
FLOAT_ZERO = 1e-130
# The reference names no body limit; aiohttp's 1 MiB default would refuse a full batch of
# heavily tagged measurements, which the real API takes.
# "time": Unix epoch seconds.  Outside 2000-01-01 .. 2100-01-01 it is a mistake: milliseconds
# (1.7e12), or a small number that is not a date at all.
MIN_TIME = 946_684_800
MAX_TIME = 4_102_444_800
# "Every response will include headers that define the current API limits": the fake's limit
# is far above what any test sends, so the header only ever says how much is left.
RATE_LIMIT_HEADER = "X-Librato-RateLimit-Std"
RATE_LIMIT = 1_000_000
RATE_LIMIT_WINDOW = 3600
# Seconds close() lets in-flight handlers finish. Delays are released by close(), so only a
# bug in the fake itself could make shutdown wait this long.

_NAME = re.compile(r"[A-Za-z0-9.:_-]{1,255}")
_TAG_NAME = re.compile(r"[-.:_A-Za-z0-9]{1,64}")
_TAG_VALUE = re.compile(r"[-.:_?\\/A-Za-z0-9 ]{1,255}")
_FORM_LINK = re.compile(r"links\[(\d+)\]\[(\w+)\]")

_NUMERIC = ("value", "count", "sum", "min", "max", "last", "stddev")
_NEEDS_COUNT = ("sum", "min", "max", "stddev")
_MEASUREMENT_KEYS = frozenset({"name", "tags", "time", "period", "attributes", *_NUMERIC})
_TOP_KEYS = frozenset({"tags", "time", "period", "measurements"})
_ANNOTATION_KEYS = frozenset({"title", "description", "source", "start_time", "end_time", "links"})
_RECORDED_HEADERS = (
    "authorization",
    "content-type",
    "content-encoding",
    "content-length",
    "user-agent",
)


class AcceptedMeasurement(TypedDict):
    """A measurement as the fake stored it: effective tags lowercased, time/period resolved.

    ``time`` and ``period`` are None when the post set neither at the top level nor on the
    measurement (the real API would use its receive time).
    """

    name: str
    tags: dict[str, str]
    time: int | None
    period: int | None
    value: NotRequired[float]
    count: NotRequired[int]
    sum: NotRequired[float]
    min: NotRequired[float]
    max: NotRequired[float]
    last: NotRequired[float]
    stddev: NotRequired[float]
    attributes: NotRequired[dict[str, Any]]


class Annotation(TypedDict):
    """An annotation event as the fake stored it."""

    stream: str
    id: int
    title: str
    description: str | None
    source: str | None
    start_time: int
    end_time: int | None
    links: list[dict[str, str]]


@dataclass(frozen=True, slots=True)
class StatusFault:
    """Answer ``status`` instead of handling the request; nothing is accepted."""

    status: int
    body: bytes | None = None  # None: a JSON error body shaped like the real API's
    headers: tuple[tuple[str, str], ...] = ()


AnyFault = StatusFault | DropFault | DelayFault


class Fault:
    """Constructors for scripted behaviours: ``api.script([Fault.status(503), Fault.drop()])``."""

    @staticmethod
    def status(
        status: int, *, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> StatusFault:
        return StatusFault(status, body, tuple((headers or {}).items()))

    @staticmethod
    def drop() -> DropFault:
        return DropFault()

    @staticmethod
    def delay(seconds: float) -> DelayFault:
        return DelayFault(seconds)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the fake received, whatever became of it."""

    method: str
    path: str
    status: int | None  # None when a drop closed the connection without an answer
    measurements: int  # entries in the body's "measurements" list; 0 if there was none
    # As the handler read it, after aiohttp undid any Content-Encoding.
    body: bytes = field(repr=False)
    headers: Mapping[str, str]  # lowercase names, only those in _RECORDED_HEADERS
    fault: str | None  # "down", "status", "drop", "delay", or None for plain handling

    @property
    def body_size(self) -> int:
        return len(self.body)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the API answers to a body, and what it keeps."""

    status: int
    body: dict[str, Any]
    accepted: list[AcceptedMeasurement]
    rejected: list[tuple[Any, str]]
    partial: bool = False


class _Reject(Exception):
    """A rule was broken; raised only inside the judges, never out of them."""

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(param, reason)
        self.param = param
        self.reason = reason


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _numbers(doc: object) -> Iterator[float]:
    """Every JSON number anywhere in ``doc``."""
    if isinstance(doc, dict):
        for item in doc.values():
            yield from _numbers(item)
    elif isinstance(doc, list):
        for item in doc:
            yield from _numbers(item)
    elif _is_number(doc):
        yield cast(float, doc)


def _positive_int(doc: Mapping[str, Any], key: str) -> int | None:
    if key not in doc:
        return None
    x = doc[key]
    if not isinstance(x, int) or isinstance(x, bool) or x <= 0:
        raise _Reject(key, "must be a positive integer")
    return x


def _epoch_seconds(doc: Mapping[str, Any], key: str) -> int | None:
    x = _positive_int(doc, key)
    if x is not None and not MIN_TIME <= x <= MAX_TIME:
        raise _Reject(key, f"must be Unix epoch seconds ({MIN_TIME}..{MAX_TIME}), got {x}")
    return x


def _judge_tags(tags: object) -> dict[str, str]:
    if tags is None or tags == {}:
        raise _Reject("tags", "Must have at least one tag")
    if not isinstance(tags, dict):
        raise _Reject("tags", "must be an object")
    if len(tags) > MAX_TAGS:
        raise _Reject("tags", f"at most {MAX_TAGS} tags, got {len(tags)}")
    out: dict[str, str] = {}
    for key, value in tags.items():
        if not _TAG_NAME.fullmatch(key):
            raise _Reject("tags", f"tag name {key!r} must match {_TAG_NAME.pattern}")
        if not isinstance(value, str) or not _TAG_VALUE.fullmatch(value):
            raise _Reject("tags", f"tag value {value!r} must match {_TAG_VALUE.pattern}")
        if key.lower() in out:
            raise _Reject("tags", f"tag name {key!r} collides with another once lowercased")
        out[key.lower()] = value.lower()
    return out


def _judge_fields(m: Mapping[str, Any]) -> dict[str, float]:
    fields: dict[str, float] = {}
    for key in _NUMERIC:
        if key in m:
            x = m[key]
            if not _is_number(x):
                raise _Reject(key, "must be a JSON number")
            fields[key] = 0.0 if 0 < abs(x) < FLOAT_ZERO else x
    if "value" in fields and "count" in fields:
        raise _Reject("value", "must not be set together with count")
    if "count" in fields:
        if "sum" not in fields:
            raise _Reject("sum", "must be set when count is set")
        if not isinstance(m["count"], int) or fields["count"] <= 0:
            raise _Reject("count", "must be a whole number greater than 0")
        _judge_summary({key: m[key] for key in fields})  # the numbers as sent, before zeroing
    elif "value" not in fields:
        raise _Reject("value", "either value, or count and sum, must be set")
    else:
        orphan = next((key for key in _NEEDS_COUNT if key in fields), None)
        if orphan is not None:
            raise _Reject(orphan, "is only valid together with count")
    return fields


def _judge_summary(fields: Mapping[str, float]) -> None:
    """A summary that contradicts itself is refused: no set of samples has it."""
    count, total = fields["count"], fields["sum"]
    lo, hi = fields.get("min", -math.inf), fields.get("max", math.inf)
    if lo > hi:
        raise _Reject("min", f"min {lo!r} is above max {hi!r}")
    if fields.get("stddev", 0.0) < 0:
        raise _Reject("stddev", "must not be negative")
    if not count * lo <= total <= count * hi:
        raise _Reject("sum", f"sum {total!r} is outside count x [min, max]")
    if not lo <= fields.get("last", lo) <= hi:
        raise _Reject("last", "must lie within [min, max]")


def _judge_one(
    m: object, top_tags: object, top_time: int | None, top_period: int | None
) -> AcceptedMeasurement:
    if not isinstance(m, dict):
        raise _Reject("measurements", "each measurement must be an object")
    unknown = m.keys() - _MEASUREMENT_KEYS
    if unknown:
        raise _Reject(min(unknown), "is not a measurement parameter")
    name = m.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _Reject("name", f"must match {_NAME.pattern}")
    # Embedded tags REPLACE the top-level ones; the two are never merged.
    tags = _judge_tags(m.get("tags", top_tags))
    m_time, m_period = _epoch_seconds(m, "time"), _positive_int(m, "period")
    record: dict[str, Any] = {
        "name": name,
        "tags": tags,
        "time": top_time if m_time is None else m_time,
        "period": top_period if m_period is None else m_period,
        **_judge_fields(m),
    }
    if "attributes" in m:
        if not isinstance(m["attributes"], dict):
            raise _Reject("attributes", "must be an object")
        record["attributes"] = m["attributes"]
    return cast(AcceptedMeasurement, record)


def _abort(param: str, reason: str, dropped: Iterable[Any], status: int = 400) -> Verdict:
    """A 400 (or 429) for the whole request; every measurement in ``dropped`` is rejected."""
    errors = {"request": [reason]} if param == "request" else {"params": {param: [reason]}}
    return Verdict(status, {"errors": errors}, [], [(m, f"{param}: {reason}") for m in dropped])


class _Unparseable(_Reject):
    """The measurements cannot even be found: "429 ... If creating a measurement, this error
    returns when it can not parse the basic format of the payload to identify measurements"."""


def _judge_envelope(doc: object) -> tuple[list[Any], int | None, int | None]:
    """The measurements list and top-level time/period; a `_Reject` here aborts the post."""
    if not isinstance(doc, dict):
        raise _Unparseable("request", "the body must be a JSON object")
    ms = doc.get("measurements")
    if not isinstance(ms, list):
        raise _Unparseable("request", "no measurements list in the body")
    unknown = doc.keys() - _TOP_KEYS
    if unknown:
        raise _Reject(min(unknown), "is not a top-level parameter")
    if not ms:
        raise _Reject("measurements", "must be a non-empty list")
    if len(ms) > MAX_MEASUREMENTS:
        raise _Reject("measurements", f"at most {MAX_MEASUREMENTS} per post, got {len(ms)}")
    huge = next((x for x in _numbers(doc) if abs(x) >= FLOAT_ABORT), None)
    if huge is not None:
        raise _Reject("measurements", f"{huge!r} is too large (limit {FLOAT_ABORT:g})")
    if "tags" in doc:  # judged whether or not a measurement uses them
        _judge_tags(doc["tags"])
    return ms, _epoch_seconds(doc, "time"), _positive_int(doc, "period")


def judge_measurements(doc: object) -> Verdict:
    """Judge a ``POST /v1/measurements`` body (already parsed JSON) as the real API would."""
    try:
        ms, top_time, top_period = _judge_envelope(doc)
    except _Reject as exc:
        sent = doc.get("measurements") if isinstance(doc, dict) else None
        status = 429 if isinstance(exc, _Unparseable) else 400
        return _abort(exc.param, exc.reason, sent if isinstance(sent, list) else (), status)
    top_tags = cast(dict[str, Any], doc).get("tags")
    accepted: list[AcceptedMeasurement] = []
    rejected: list[tuple[Any, str]] = []
    errors: list[dict[str, str]] = []
    seen: set[tuple[str, frozenset[tuple[str, str]], int | None]] = set()
    for m in ms:
        try:
            one = _judge_one(m, top_tags, top_time, top_period)
            series = (one["name"].lower(), frozenset(one["tags"].items()), one["time"])
            if series in seen:  # names are case-insensitive: Lat and lat are one metric
                raise _Reject("name", "the same series (name, tags, time) twice in one post")
            seen.add(series)
            accepted.append(one)
        except _Reject as exc:
            rejected.append((m, f"{exc.param}: {exc.reason}"))
            errors.append({"param": exc.param, "reason": exc.reason})
    summary = {"total": len(ms), "accepted": len(accepted), "failed": len(errors), "filtered": 0}
    body: dict[str, Any] = {"measurements": {"summary": summary}}
    if errors:
        body["errors"] = errors
    status = 202 if accepted else 400
    return Verdict(status, body, accepted, rejected, partial=bool(accepted and errors))


def _judge_links(links: object) -> list[dict[str, str]]:
    if not isinstance(links, list):
        raise _Reject("links", "must be a list")
    for link in links:
        if not isinstance(link, dict) or not all(isinstance(v, str) for v in link.values()):
            raise _Reject("links", "each link must be an object of strings")
        if not {"rel", "href"} <= link.keys():
            raise _Reject("links", "each link needs rel and href")
    return cast(list[dict[str, str]], links)


def _annotation_event(stream: str, doc: object, now: int, next_id: int) -> Annotation:
    """The annotation event a body describes; raises `_Reject` (a 400) for a broken rule."""
    if not _NAME.fullmatch(stream):
        raise _Reject("name", f"must match {_NAME.pattern}")
    if not isinstance(doc, dict):
        raise _Reject("request", "the body must be an object")
    unknown = doc.keys() - _ANNOTATION_KEYS
    if unknown:
        raise _Reject(min(unknown), "is not an annotation parameter")
    title = doc.get("title")
    if not isinstance(title, str) or not title:
        raise _Reject("title", "is required")
    for key in ("description", "source"):
        if key in doc and not isinstance(doc[key], str):
            raise _Reject(key, "must be a string")
    start, end = _positive_int(doc, "start_time"), _positive_int(doc, "end_time")
    start = now if start is None else start
    if end is not None and end < start:
        raise _Reject("end_time", "must not be before start_time")
    return Annotation(
        stream=stream,
        id=next_id,
        title=title,
        description=doc.get("description"),
        source=doc.get("source"),
        start_time=start,
        end_time=end,
        links=_judge_links(doc.get("links", [])),
    )


def _parse_form(body: bytes) -> dict[str, Any]:
    """``title=..&start_time=..&links[0][rel]=..`` as the JSON shape _annotation_event takes."""
    doc: dict[str, Any] = {}
    links: dict[int, dict[str, str]] = {}
    for key, value in parse_qsl(body.decode(), keep_blank_values=True):
        if match := _FORM_LINK.fullmatch(key):
            links.setdefault(int(match[1]), {})[match[2]] = value
        elif key in {"start_time", "end_time"} and value.isdigit():
            doc[key] = int(value)
        else:
            doc[key] = value
    if links:
        doc["links"] = [links[i] for i in sorted(links)]
    return doc


def _json(status: int, body: object, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _error(status: int, kind: str, message: str) -> web.Response:
    return _json(status, {"errors": {kind: [message]}})


def _credentials(header: str) -> tuple[str, str] | None:
    """(user, password) from a ``Basic`` Authorization header, or None if it is not one."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, colon, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if colon else None


def by_name(measurements: Iterable[AcceptedMeasurement]) -> dict[str, AcceptedMeasurement]:
    """The measurements by name, failing if a name came twice: a plain ``{m["name"]: m}``
    would silently keep the last of two posts and hide the duplicate."""
    named: dict[str, AcceptedMeasurement] = {}
    for m in measurements:
        assert m["name"] not in named, f"posted twice: {named[m['name']]} and {m}"
        named[m["name"]] = m
    return named


def _count_measurements(body: bytes) -> int:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0
    ms = doc.get("measurements") if isinstance(doc, dict) else None
    return len(ms) if isinstance(ms, list) else 0


class FakeAppOptics(LoopbackServer[AnyFault]):
    """An AppOptics API on a real loopback port, recording everything it is sent.

    All state is touched only on the loop thread; handlers never block it.
    """

    def __init__(self, *, token: str = "token") -> None:
        super().__init__()
        self.token = token
        self.accepted: list[AcceptedMeasurement] = []
        self.rejected: list[tuple[Any, str]] = []
        self.requests: list[RecordedRequest] = []
        self.annotations: list[Annotation] = []
        # Each metric under the spelling it was first posted with (names are case-insensitive).
        self.metric_names: dict[str, str] = {}
        self._window_start: float | None = None  # the rate limit's current window
        self._window_requests = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/measurements", self._measurements)
        app.router.add_post("/v1/annotations/{stream}", self._annotations)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the API root to configure the client with."""
        return self.base

    def describe(self) -> str:
        """A one-line summary of what the fake has seen, for failure messages."""
        statuses = [r.status for r in self.requests]
        return (
            f"requests={len(self.requests)} statuses={statuses} accepted={len(self.accepted)} "
            f"rejected={len(self.rejected)} annotations={len(self.annotations)} "
            f"in_flight={self.in_flight} pending_faults={len(self._script)} down={self.down}"
        )

    async def _measurements(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, self._judge_measurements)

    async def _annotations(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, self._judge_annotation)

    async def _serve(
        self, request: web.Request, route: Callable[[web.Request, bytes], web.Response]
    ) -> web.StreamResponse:
        self.in_flight += 1
        await self._notify()
        body = b""
        answer: web.Response | None = None
        label: str | None = None
        try:
            body = await request.read()
            answer, label = await self._apply_faults(request)
            if label in {None, "delay"}:
                answer = route(request, body)
            if answer is not None:
                answer.headers.setdefault(RATE_LIMIT_HEADER, self._rate_limit())
            # After a drop the transport is aborted: aiohttp's write of this placeholder fails
            # with a ConnectionError, which it swallows without logging.
            return answer if answer is not None else web.Response()
        finally:
            self.in_flight -= 1
            self.requests.append(
                RecordedRequest(
                    method=request.method,
                    path=request.path,
                    status=None if answer is None else answer.status,
                    measurements=_count_measurements(body),
                    body=body,
                    headers={
                        h: request.headers[h] for h in _RECORDED_HEADERS if h in request.headers
                    },
                    fault=label,
                )
            )
            await self._notify()

    def _rate_limit(self) -> str:
        """The rate-limit header's value for this request: ``limit=..,remaining=..,reset=..``
        (reset: seconds until the window's budget is whole again)."""
        now = time.monotonic()
        if self._window_start is None or now - self._window_start >= RATE_LIMIT_WINDOW:
            self._window_start, self._window_requests = now, 0
        self._window_requests += 1
        remaining = max(RATE_LIMIT - self._window_requests, 0)
        reset = math.ceil(RATE_LIMIT_WINDOW - (now - self._window_start))
        return f"limit={RATE_LIMIT},remaining={remaining},reset={reset}"

    async def _apply_faults(self, request: web.Request) -> tuple[web.Response | None, str | None]:
        """The answer a fault imposes (None for a drop) and the fault's label."""
        if self.down:
            return _error(503, "system", "the API is down for maintenance"), "down"
        if not self._script:
            return None, None
        match self._script.popleft():
            case StatusFault(status=status, body=None, headers=headers):
                kind = "system" if status >= 500 else "request"
                error = _error(status, kind, f"injected fault: HTTP {status}")
                error.headers.update(headers)
                return error, "status"
            case StatusFault(status=status, body=bytes() as raw, headers=headers):
                return web.Response(status=status, body=raw, headers=dict(headers)), "status"
            case DropFault():
                self._drop(request)
                return None, "drop"
            case DelayFault(seconds=seconds):
                await self._delay(seconds)
                return None, "delay"
        raise AssertionError("unreachable")  # pragma: no cover

    def _gate(self, request: web.Request, content_types: frozenset[str]) -> web.Response | None:
        """401 for bad credentials, then 415 for a wrong content type, else None."""
        if _credentials(request.headers.get("Authorization", "")) != (self.token, ""):
            return _error(401, "request", "Authorization failed")
        if request.content_type not in content_types:
            types = " or ".join(sorted(content_types))
            return _error(415, "request", f"Content-Type must be {types}")
        return None

    def _judge_measurements(self, request: web.Request, body: bytes) -> web.Response:
        denied = self._gate(request, frozenset({"application/json"}))
        if denied is not None:
            return denied
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:  # no measurements to be found: 429 (seed 001)
            return _error(429, "request", f"the body is not JSON: {exc}")
        verdict = judge_measurements(doc)
        for m in verdict.accepted:
            m["name"] = self.metric_names.setdefault(m["name"].lower(), m["name"])
        self.accepted.extend(verdict.accepted)
        self.rejected.extend(verdict.rejected)
        headers = {"x-partial-failure": "true"} if verdict.partial else None
        return _json(verdict.status, verdict.body, headers)

    def _judge_annotation(self, request: web.Request, body: bytes) -> web.Response:
        form = "application/x-www-form-urlencoded"
        denied = self._gate(request, frozenset({"application/json", form}))
        if denied is not None:
            return denied
        try:
            doc = _parse_form(body) if request.content_type == form else orjson.loads(body)
        except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, "request", f"the body cannot be parsed: {exc}")
        stream = request.match_info["stream"]
        try:
            event = _annotation_event(stream, doc, int(time.time()), len(self.annotations) + 1)
        except _Reject as exc:
            return _json(400, {"errors": {"params": {exc.param: [exc.reason]}}})
        self.annotations.append(event)
        reply = {k: v for k, v in event.items() if k != "stream"}
        location = {"Location": f"/v1/annotations/{stream}/{event['id']}"}
        return _json(201, reply, location)
