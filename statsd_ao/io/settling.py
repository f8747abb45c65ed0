"""What each post's answer does to its parcel, and the count of every measurement's fate.

`statsd_ao.io.sink.HttpSink` queues, schedules and posts; every answer it gets comes here.
`Settler.settle` classifies it (the API's `statsd_ao.core.dialect.Dialect`): delivered,
partly delivered (the refused part is counted, nothing is re-sent), split in two (a 400
that judged no measurement), rejected, or queued again within the batch's bounds; the
spool is told what has left for good.  Every measurement ends in exactly one of `posted`,
a reason in `lost`, or the outbox (``pending``).  The counters are plain attributes for
self-metrics; failures are logged, rate-limited, with the API's own words.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

from statsd_ao.core.dialect import Dialect
from statsd_ao.core.logs import RateLimitedLog, fields
from statsd_ao.core.outbox import Outbox, Parcel
from statsd_ao.core.retry import (
    ANSWERED,
    Answer,
    Gate,
    GiveUp,
    Loss,
    Outcome,
    Policy,
    Verdict,
)
from statsd_ao.io.spool import Spool

log = logging.getLogger(__name__)

# While draining at shutdown our own backoff waits at most a second (waits the API asks for
# are still honoured): the deadline is short, and an API coming back should get the data.
DRAIN_BACKOFF_CAP = 1.0
# At most one log line per kind of trouble this often; the next one says how many were
# suppressed.  Counters carry the exact numbers.
LOG_INTERVAL = 10.0
# Reasons from the API quoted in one log line.
QUOTED_ERRORS = 3


class Settler:
    """Settles parcels by their answers; owns the delivery counters."""

    def __init__(
        self,
        outbox: Outbox,
        policy: Policy,
        gate: Gate,
        spool: Spool | None,
        dialect: Dialect,
        *,
        resend_unconfirmed: bool,
        denied_cap: float,
        random: Callable[[], float],
        clock: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self._outbox = outbox
        self._policy = policy
        self._gate = gate
        self._spool = spool
        self._dialect = dialect
        self._resend_unconfirmed = resend_unconfirmed
        self._denied_cap = denied_cap
        self._random = random
        self._clock = clock
        self._wall = wall
        self._log = RateLimitedLog(log, interval=LOG_INTERVAL)
        self.draining = False  # set by the sink's drain: retries wait at most a second
        self.posted = 0  # measurements the API confirmed it stored
        self.lost: dict[str, int] = {}  # measurements given up, by `Loss` reason
        self.outcomes: dict[str, int] = {}  # posts by answer: "202", "503", "TimeoutError"
        self.retries = 0  # posts queued again after a failure
        self.splits = 0  # batches split in two after a 400 that judged no measurement
        # Measurements re-sent after a post that got no answer although it was sent: an
        # upper bound on the duplicates AppOptics may hold.
        self.unconfirmed = 0

    @property
    def pending(self) -> int:
        return self._outbox.pending

    def settle(self, parcel: Parcel, answer: Answer, *, charged: bool) -> None:
        now = self._clock()
        verdict = self._dialect.classify(answer, parcel.count, self._wall())
        self.outcomes[answer.label] = self.outcomes.get(answer.label, 0) + 1
        failures = self._gate.failures
        self._gate.record(verdict, now)
        if failures and verdict.kind in ANSWERED:
            self._log.log(
                logging.INFO,
                "recovered",
                "%s answers again after %d failed posts; %d measurements pending",
                self._dialect.name,
                failures,
                self.pending,
            )
        match verdict.kind:
            case Outcome.DELIVERED:
                self.posted += parcel.count
                self.settled(parcel)
                if verdict.errors:  # a warning with a full success (OTLP allows it)
                    self._log.warning(
                        "delivered with a message",
                        "%s took the post with a message: %s",
                        self._dialect.name,
                        "; ".join(verdict.errors[:QUOTED_ERRORS]),
                    )
            case Outcome.PARTIAL:
                self.posted += verdict.accepted
                self.lose(Loss.REJECTED, verdict.refused, verdict.errors, parcel=parcel)
            case Outcome.REJECTED:
                self.lose(Loss.REJECTED, parcel.count, verdict.errors, parcel=parcel)
            case Outcome.SPLIT:
                self._split(parcel, verdict, now)
            case _:
                self._retry(parcel, answer, charged and verdict.kind is Outcome.TRANSIENT, now)
                self._report_failure(parcel, answer, verdict)

    def _split(self, parcel: Parcel, verdict: Verdict, now: float) -> None:
        """Bisect a batch the API refused as a whole: the halves without a bad measurement
        are stored, and the search narrows down to the bad ones (about 2*log2(n) posts)."""
        if parcel.count == 1:
            self.lose(Loss.REJECTED, 1, verdict.errors, parcel=parcel)
            return
        halves = self._dialect.halves(parcel.body)
        self.splits += 1
        if self._spool is not None and parcel.ticket is not None:
            self._spool.split(parcel.ticket)  # two pieces to settle now
        for body, count in halves:
            self.queue(replace(parcel, body=body, count=count, not_before=now))

    def _retry(self, parcel: Parcel, answer: Answer, charged: bool, now: float) -> None:
        if answer.unconfirmed and not self._resend_unconfirmed:
            self.lose(Loss.UNCONFIRMED, parcel.count, parcel=parcel)
            return
        if self._spool is not None and parcel.ticket and not self._spool.holds(parcel.ticket):
            self.lose(Loss.SPOOL_FULL, parcel.count)  # its segment was dropped while in flight
            return
        decision = self._policy.after_failure(
            parcel.attempts,
            parcel.expires,
            now,
            charged=charged,
            random=self._random,
            max_delay=DRAIN_BACKOFF_CAP if self.draining else None,
        )
        if isinstance(decision, GiveUp):
            self.lose(decision.reason, parcel.count, parcel=parcel)
            return
        self.retries += 1
        self.unconfirmed += parcel.count if answer.unconfirmed else 0
        self.queue(parcel.retry(decision.at, decision.attempts))

    def queue(self, parcel: Parcel) -> None:
        for evicted in self._outbox.put(parcel):
            self.lose(Loss.BUFFER_FULL, evicted.count, parcel=evicted)

    def settled(self, parcel: Parcel) -> None:
        """``parcel`` has left for good (posted, or lost and counted): the spool forgets it."""
        if self._spool is not None and parcel.ticket is not None:
            self._spool.settle(parcel.ticket)

    def lose(
        self, reason: Loss, count: int, errors: Sequence[str] = (), *, parcel: Parcel | None = None
    ) -> None:
        if parcel is not None:
            self.settled(parcel)
        if count <= 0:
            return
        self.lost[reason.value] = self.lost.get(reason.value, 0) + count
        quoted = "; ".join(errors[:QUOTED_ERRORS])
        self._log.warning(
            f"lost:{reason}",
            "gave up %d measurements (%s)%s; %d lost for this reason so far",
            count,
            reason,
            f": {quoted}" if quoted else "",
            self.lost[reason.value],
            extra=fields(
                lost=count,
                reason=reason.value,
                errors=list(errors[:QUOTED_ERRORS]),
                lost_so_far=self.lost[reason.value],
            ),
        )

    def _report_failure(self, parcel: Parcel, answer: Answer, verdict: Verdict) -> None:
        detail = "; ".join(verdict.errors[:QUOTED_ERRORS]) or answer.body[:200].decode(
            errors="replace"
        )
        if verdict.kind is Outcome.DENIED:
            self._log.error(
                "denied",
                "%s refused the post (%s %s): check the token (%s) and the account; "
                "holding %d measurements for up to %gs, trying again with a backoff of up "
                "to %gs",
                self._dialect.name,
                answer.label,
                detail,
                self._dialect.token_hint,
                self.pending,
                self._policy.max_age,
                self._denied_cap,
            )
            return
        self._log.warning(
            f"failed:{verdict.kind}",
            "post of %d measurements failed (%s%s); %d measurements pending",
            parcel.count,
            answer.label,
            f" {detail}" if detail else "",
            self.pending,
        )
