"""What an answer from AppOptics means, when to post again, and when to give up (pure).

No asyncio, no aiohttp: the sink (`statsd_ao.io.sink`) does the IO, turns each post's result into
an `Answer`, and applies what this module decides.  Time comes in as numbers (``now`` is the
monotonic clock the sink schedules with, ``wall`` is epoch seconds for the API's dates), and
randomness from an injected ``random`` so every decision can be replayed in a test.

Theory of operation:

* `classify` reads one answer into a `Verdict` (see the table in docs/delivery.md): delivered,
  partially delivered, rejected, to be split (a 400 that judged no measurement), throttled
  (429), transient (5xx, 408, connection errors, timeouts) or denied (401/403 and any other
  status: a problem only the operator can fix).
* `Gate` paces the whole sink: after a failure no post starts before its backoff has passed,
  and until a post succeeds only one is in flight (a probe), so an outage costs one request
  per backoff step rather than one per pending batch.
* `Policy` bounds each batch: by age (the API refuses measurements too far in the past) and
  by attempts.  Only failures while the API was otherwise answering are charged to a batch
  (a probe failing during an outage is not the batch's fault), so an outage is bounded by
  age and buffer size, and the attempt bound catches a batch the API keeps failing alone.
"""

from __future__ import annotations

import email.utils
import math
import random as _random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

# The first retry comes within a second: most failures (a dropped keep-alive connection, one
# 502 from a load balancer, a rolling restart) are over by then.
BACKOFF_BASE = 1.0
# During an outage the API is probed at least every 30 s (every 15 s on average, with the
# jitter): a recovery is noticed within half a minute, and a handful of requests a minute
# is no load on an API that is struggling.
BACKOFF_CAP = 30.0
# A bad token (401) or a refused account (403) is fixed by a person, not in seconds: waits
# grow to 5 minutes (2.5 on average, with the jitter), about two dozen requests an hour, and
# a fix is noticed within 5 minutes.
DENIED_BASE = 10.0
DENIED_CAP = 300.0
# Charged attempts per batch.  Charged failures happen only while other posts go through,
# so ten in a row (a minute or two with the backoff above) mark a batch the API will not
# take; an outage charges each batch at most once (see `Gate.probing`).
MAX_ATTEMPTS = 10
# Seconds a batch may wait in the sink.  The API refuses measurements about 2 hours behind
# its clock ("is too far in the past", said by its maintainers; the reference is silent).
# A measurement's time is its interval's start, so at the API it is one interval older than
# its wait here; one hour leaves the other hour for that and for clock skew between this host
# and the API, and still lets a one-hour outage heal without loss.
MAX_AGE = 3600.0
# A Retry-After or rate-limit reset further away than this is read as this: a wrong header
# must not park the sink for hours, past the age limit.  Still only one probe per wait.
MAX_SERVER_WAIT = 300.0
# A rate-limit "reset" above this is an epoch time (2001-09-09 onwards), below it a number of
# seconds: APIs use both and the reference does not say which.
EPOCH_RESET = 1e9
# Rate-limit headers read: Librato's (AppOptics shares its API) and the common ones.  Each
# says "limit=..,remaining=..,reset=.." or is a pair of -remaining / -reset headers.
LIBRATO_LIMITS = ("x-librato-ratelimit-agg", "x-librato-ratelimit-std")
LIMIT_PAIRS = (
    ("x-ratelimit-remaining", "x-ratelimit-reset"),
    ("ratelimit-remaining", "ratelimit-reset"),
)
PARTIAL_HEADER = "x-partial-failure"

Random = Callable[[], float]  # uniform in [0, 1), like random.random


class Outcome(StrEnum):
    """What one post's answer means for its batch."""

    DELIVERED = "delivered"  # 2xx: every measurement stored
    PARTIAL = "partial"  # 202 + x-partial-failure: some stored, the rest refused for good
    REJECTED = "rejected"  # 400 judging every measurement: none can ever be stored
    SPLIT = "split"  # 400/413 judging none: split the batch to find the bad measurements
    THROTTLED = "throttled"  # 429: post again after the wait the API asks for
    TRANSIENT = "transient"  # 5xx, 408, no answer: post again after a backoff
    DENIED = "denied"  # 401/403 and any other status: the operator must act; hold and wait


# Kinds that prove the API is up and reading our posts: they end an outage.
ANSWERED = frozenset({Outcome.DELIVERED, Outcome.PARTIAL, Outcome.REJECTED, Outcome.SPLIT})


class Loss(StrEnum):
    """Why measurements were given up; each is counted."""

    REJECTED = "rejected"  # the API refused them (invalid, reserved name, ...)
    TOO_OLD = "too_old"  # older than the age limit: the API would refuse them
    BUFFER_FULL = "buffer_full"  # the oldest pending data, dropped to make room
    ATTEMPTS = "attempts"  # failed the attempt limit while the API took other posts
    UNCONFIRMED = "unconfirmed"  # no answer after sending, and re-sending is switched off
    SHUTDOWN = "shutdown"  # still pending when the drain deadline passed (and no spool)
    SPOOL_FULL = "spool_full"  # the oldest spooled data, dropped past --spool-max-bytes
    INTERNAL = "internal_error"  # a bug in statsd-ao, logged with its traceback


@dataclass(frozen=True, slots=True)
class Answer:
    """The result of one post: an HTTP answer, or the error that took its place."""

    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # names lowercased
    body: bytes = b""
    error: str | None = None  # name of the error when there was no answer
    # With no answer: the request may have reached the API whole, so it may be stored.
    sent: bool = False
    truncated: bool = False  # ``body`` is the start of a longer body (see `classify`)

    @property
    def label(self) -> str:
        """The outcome's name for counters: ``"202"``, ``"503"``, ``"TimeoutError"``."""
        return str(self.status) if self.status is not None else self.error or "no answer"

    @property
    def unconfirmed(self) -> bool:
        """No answer, although the API may have received (and stored) the whole post."""
        return self.status is None and self.sent


@dataclass(frozen=True, slots=True)
class AnswerSummary:
    """``measurements.summary`` and ``errors`` of an answer body."""

    total: int
    accepted: int
    failed: int
    filtered: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """`classify`'s reading of an answer for a post of ``count`` measurements."""

    kind: Outcome
    accepted: int = 0  # measurements the API says it stored
    refused: int = 0  # measurements the API turned down for good
    wait: float | None = None  # seconds the API asked for before the next post
    errors: tuple[str, ...] = ()  # the API's reasons, for the log


def classify(answer: Answer, count: int, wall: float) -> Verdict:
    """Read one answer; never raises, whatever the body holds."""
    wait = server_wait(answer.headers, wall)
    status = answer.status
    if status is None:
        return Verdict(Outcome.TRANSIENT, wait=wait)
    summary, errors = parse_summary(answer.body), parse_errors(answer.body)
    if summary is None and answer.truncated:  # the summary may still be whole in the start
        summary = find_summary(answer.body)
    if 200 <= status < 300:
        if PARTIAL_HEADER in answer.headers:
            return _partial(count, summary, errors, wait)
        return Verdict(Outcome.DELIVERED, accepted=count, wait=wait)
    if status == 400:
        return _bad_request(count, summary, errors, wait)
    if status == 429:
        return _throttled(count, summary, errors, wait)
    return Verdict(status_kind(status), wait=wait, errors=errors)


def status_kind(status: int) -> Outcome:
    """The kind of an error status whose body does not matter (not 400 or 429)."""
    if status == 413:  # too large for something between us and the API: halves will pass
        return Outcome.SPLIT
    if status == 408 or status >= 500:
        return Outcome.TRANSIENT
    return Outcome.DENIED  # 401, 403, and anything unexpected (404, 415, 3xx): a person must look


def _partial(
    count: int, summary: AnswerSummary | None, errors: tuple[str, ...], wait: float | None
) -> Verdict:
    if summary is not None:
        accepted = min(max(summary.accepted, 0), count)
    else:  # no summary: one error per refused measurement is all there is to go on
        accepted = max(count - len(errors), 0)
    return Verdict(Outcome.PARTIAL, accepted, count - accepted, wait, errors)


def _bad_request(
    count: int, summary: AnswerSummary | None, errors: tuple[str, ...], wait: float | None
) -> Verdict:
    # A 400 with a summary judged each measurement (the reference: "400 if all measurements
    # have been rejected"); without one the whole request was refused (a number over 1e126,
    # a malformed envelope) and only splitting tells the bad measurements from the good.
    if summary is None or summary.total != count:
        return Verdict(Outcome.SPLIT, wait=wait, errors=errors)
    if summary.accepted > 0:  # contradicts the reference; never re-send what was stored
        return _partial(count, summary, errors, wait)
    return Verdict(Outcome.REJECTED, refused=count, wait=wait, errors=errors)


def _throttled(
    count: int, summary: AnswerSummary | None, errors: tuple[str, ...], wait: float | None
) -> Verdict:
    # The reference: on a 429 "it's possible some data was permitted, need to verify response
    # body".  Measurements it says were stored are never posted again (we cannot tell which
    # ones they were, so the whole post is settled as a partial delivery).
    if summary is not None and summary.accepted > 0:
        return _partial(count, summary, errors, wait)
    return Verdict(Outcome.THROTTLED, wait=wait, errors=errors)


def _load(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_summary(body: bytes) -> AnswerSummary | None:
    """``measurements.summary`` {total, accepted, failed, filtered}, or None if absent or odd."""
    doc = _load(body)
    measurements = doc.get("measurements") if isinstance(doc, dict) else None
    raw = measurements.get("summary") if isinstance(measurements, dict) else None
    if not isinstance(raw, dict):
        return None
    fields = [_count(raw.get(key, 0)) for key in ("total", "accepted", "failed", "filtered")]
    if any(value is None or value < 0 for value in fields):
        return None
    total, accepted, failed, filtered = (value or 0 for value in fields)
    return AnswerSummary(total, accepted, failed, filtered)


_SUMMARY = re.compile(rb'"summary"\s*:\s*(\{[^{}]*\})')


def find_summary(start: bytes) -> AnswerSummary | None:
    """The summary object in the start of a body too long to read whole (not JSON then)."""
    match = _SUMMARY.search(start)
    if match is None:
        return None
    return parse_summary(b'{"measurements":{"summary":' + match.group(1) + b"}}")


def parse_errors(body: bytes) -> tuple[str, ...]:
    """The reasons in ``errors``: a list of {param, reason} (measurement posts) or the
    {params: {name: [..]}, request: [..], system: [..]} shape of other errors."""
    doc = _load(body)
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if isinstance(errors, list):
        return tuple(
            f"{e.get('param')}: {e.get('reason')}" if isinstance(e, dict) else str(e)
            for e in errors
        )
    if not isinstance(errors, dict):
        return ()
    out: list[str] = []
    for kind, items in errors.items():
        if isinstance(items, dict):
            out.extend(
                f"{name}: {reason}" for name, reasons in items.items() for reason in _list(reasons)
            )
        else:
            out.extend(f"{kind}: {reason}" for reason in _list(items))
    return tuple(out)


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else [value]


def server_wait(headers: Mapping[str, str], wall: float) -> float | None:
    """Seconds the API asked us to wait: ``Retry-After``, or a rate limit with nothing
    remaining until its reset.  None when it asked nothing; at most `MAX_SERVER_WAIT`."""
    waits = [retry_after(headers.get("retry-after"), wall)]
    for name in LIBRATO_LIMITS:
        fields = _limit_fields(headers.get(name, ""))
        waits.append(_exhausted(fields.get("remaining"), fields.get("reset"), wall))
    for remaining, reset in LIMIT_PAIRS:
        waits.append(_exhausted(headers.get(remaining), headers.get(reset), wall))
    found = [w for w in waits if w is not None]
    return min(max(found), MAX_SERVER_WAIT) if found else None


def retry_after(value: str | None, wall: float) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    value = value.strip()
    seconds = _number(value)
    if seconds is None:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - wall
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return max(seconds, 0.0)


def _limit_fields(value: str) -> dict[str, str]:
    """``limit=100,remaining=0,reset=25`` (commas or semicolons) as a dict."""
    pairs = (part.partition("=") for part in value.replace(";", ",").split(","))
    return {key.strip().lower(): val.strip() for key, eq, val in pairs if eq}


def _exhausted(remaining: str | None, reset: str | None, wall: float) -> float | None:
    left, when = _number(remaining), _number(reset)
    if left is None or when is None or left > 0:
        return None
    return max(when - wall if when >= EPOCH_RESET else when, 0.0)


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter (a wait drawn uniformly below the ceiling)."""

    base: float = BACKOFF_BASE
    cap: float = BACKOFF_CAP

    def ceiling(self, failures: int) -> float:
        """The longest wait after ``failures`` failures in a row: base * 2^(failures-1),
        at most ``cap``; 0 before any failure."""
        if failures < 1:
            return 0.0
        # 2.0 ** 1024 overflows a float; the cap is reached long before 2^64 anyway.
        return min(self.cap, self.base * 2.0 ** min(failures - 1, 64))

    def delay(self, failures: int, random: Random) -> float:
        """A wait in [0, ceiling): full jitter spreads many clients' retries evenly, so they
        do not come back in step after an outage."""
        return self.ceiling(failures) * random()


DEFAULT_BACKOFF = Backoff()
DENIED_BACKOFF = Backoff(DENIED_BASE, DENIED_CAP)


@dataclass(frozen=True, slots=True)
class Retry:
    """Post the batch again, no earlier than ``at``, with ``attempts`` charged to it."""

    at: float
    attempts: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: Loss


@dataclass(frozen=True, slots=True)
class Policy:
    """Per-batch bounds: attempts, and age (seconds since the sink received the batch)."""

    backoff: Backoff = DEFAULT_BACKOFF
    max_attempts: int = MAX_ATTEMPTS
    max_age: float = MAX_AGE

    def after_failure(
        self,
        attempts: int,
        expires: float,
        now: float,
        *,
        charged: bool,
        random: Random,
        max_delay: float | None = None,
    ) -> Retry | GiveUp:
        """What to do with a batch whose post failed.  ``charged``: the failure counts
        against the batch (the API was answering other posts); an uncharged batch may go
        again at once, as far as it is concerned (the `Gate` paces the sink)."""
        attempts += charged
        if now >= expires:
            return GiveUp(Loss.TOO_OLD)
        if attempts >= self.max_attempts:
            return GiveUp(Loss.ATTEMPTS)
        delay = self.backoff.delay(attempts, random) if charged else 0.0
        if max_delay is not None:
            delay = min(delay, max_delay)
        return Retry(now + delay, attempts)


class Gate:
    """Sink-wide pacing: when the next post may start and how many may be in flight.

    After a failure no post starts before ``open_at``; while the last post failed
    (``failures`` > 0) only one post is in flight at a time: a probe.  A post that the API
    answered (`ANSWERED`) ends the outage.  Waits the API asked for are honoured, even while
    draining; the sink's own backoff may be capped (``max_delay``) during a drain.
    """

    def __init__(
        self,
        backoff: Backoff = DEFAULT_BACKOFF,
        denied: Backoff = DENIED_BACKOFF,
        random: Random = _random.random,
    ) -> None:
        self._backoff = backoff
        self._denied = denied
        self._random = random
        self.failures = 0  # posts in a row that the API did not answer usefully
        self.failing_since: float | None = None  # when the first of those failures came
        self.open_at = 0.0
        self.requested = False  # open_at is a wait the API asked for
        self.denied = False  # the last post was denied: only a person can fix that
        self.max_delay: float | None = None

    @property
    def probing(self) -> bool:
        """True during an outage: one post at a time, and failures are not the batch's."""
        return self.failures > 0

    def is_open(self, now: float) -> bool:
        return now >= self.open_at

    def limit(self, concurrency: int) -> int:
        """Posts allowed in flight."""
        return 1 if self.probing else concurrency

    def record(self, verdict: Verdict, now: float) -> None:
        """Account one post's verdict."""
        self.failures = 0 if verdict.kind in ANSWERED else self.failures + 1
        if not self.failures:
            self.failing_since = None
        elif self.failing_since is None:
            self.failing_since = now
        self.denied = verdict.kind is Outcome.DENIED
        delay = None
        if verdict.wait is not None:
            delay = verdict.wait
        elif verdict.kind is Outcome.DENIED:
            delay = self._own(self._denied.delay(self.failures, self._random))
        elif self.failures:
            delay = self._own(self._backoff.delay(self.failures, self._random))
        if delay is not None and now + delay > self.open_at:
            self.open_at, self.requested = now + delay, verdict.wait is not None

    def hurry(self, now: float, max_delay: float) -> None:
        """From now on wait at most ``max_delay`` of our own backoff (a drain has begun)."""
        self.max_delay = max_delay
        if not self.requested:
            self.open_at = min(self.open_at, now + max_delay)

    def _own(self, delay: float) -> float:
        return delay if self.max_delay is None else min(delay, self.max_delay)
