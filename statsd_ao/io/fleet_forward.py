"""The local tier's sink: each interval's series go to the global members that own them.

Theory of operation.  `ForwardSink.series` puts each series in the part of the member that
owns its name (`statsd_ao.core.rendezvous`, over the live members) and of its interval;
a part of `PART_SERIES` series, and every part at `end_interval`, is encoded
(`statsd_ao.core.fleet_wire`) and handed to that member's own `HttpSink` in the
`FleetDialect`.  So delivery is the one the other sinks have (reused, not rewritten): a
bounded outbox, retries with backoff, halves on a 413, the member's own spool
subdirectory (``<spool-dir>/forward/<member>``) that keeps a part until the member
acknowledges it, and a replay of it after a restart.  A part is never moved to another
member once queued (the global's duplicate check knows a part by its sender, interval and
sequence, not by the member): a member that fails keeps its parts and is retried by its
`HttpSink`, while new intervals' names re-hash over the members that answer.

Members: HOST:PORT targets, and ``dns:NAME:PORT`` targets whose every A/AAAA record is a
member, resolved again every ``resolve_every`` seconds (a Kubernetes headless Service).  A
resolution that fails keeps the members known.  A member whose record disappears is no
longer hashed to; its sink stays until shutdown to deliver what it holds.

Not forwarded (counted under ``lost``): self-metrics in AppOptics form (the local's
/metrics still shows them) and events.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from statsd_ao.core.accumulators import Accumulator
from statsd_ao.core.aggregator import SeriesKey
from statsd_ao.core.events import Event
from statsd_ao.core.fleet_wire import Part, WireError, encode, halves
from statsd_ao.core.logs import RateLimitedLog
from statsd_ao.core.measurements import Measurement
from statsd_ao.core.rendezvous import Owners
from statsd_ao.core.retry import Answer, Outcome, Verdict, server_wait, status_kind
from statsd_ao.io.fleet_receiver import PATH
from statsd_ao.io.sink import HttpSink
from statsd_ao.pipeline import SeriesItems

log = logging.getLogger(__name__)

# Series per part: ~60 KB gzip'ed for counters, well inside the global's body bound.
PART_SERIES = 5_000
# Seconds between resolutions of the dns: targets (a headless Service's pods come and go).
RESOLVE_EVERY = 30.0
LOG_INTERVAL = 60.0
CONTENT_TYPE = "application/vnd.statsd-ao.part+json+gzip"

# A member: "host:port" ("[v6]:port"); a target: a member or ("NAME", port) to resolve.
Target = str | tuple[str, int]


def parse_targets(text: str) -> tuple[Target, ...]:
    """``HOST:PORT,dns:NAME:PORT,...`` (the parser of ``--forward``)."""
    targets: list[Target] = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        dns = item.startswith("dns:")
        host, colon, port_text = item.removeprefix("dns:").rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"expected HOST:PORT or dns:NAME:PORT, got {item!r}")
        targets.append((host, int(port_text)) if dns else member(host, int(port_text)))
    if not targets:
        raise ValueError("expected at least one HOST:PORT or dns:NAME:PORT")
    return tuple(targets)


def member(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def sender_id(directory: Path | None) -> str:
    """The local's id: kept in ``directory/sender-id`` when there is one (so parts a
    restart replays from the spool are recognised by the global), else new each run."""
    if directory is None:
        return secrets.token_hex(8)
    path = directory / "sender-id"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        text = path.read_text().strip()
        if text:
            return text
    new = secrets.token_hex(8)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(new + "\n")
    os.replace(temporary, path)
    return new


class FleetDialect:
    """``POST http://<member>/v1/fleet/parts`` with a bearer token (`Dialect`)."""

    name = "the fleet global"
    token_hint = "--fleet-token"

    def __init__(self, member: str, token: str) -> None:
        self.url = f"http://{member}{PATH}"
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": CONTENT_TYPE}

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    def body_headers(self, body: bytes) -> Mapping[str, str] | None:
        return None

    def classify(self, answer: Answer, count: int, wall: float) -> Verdict:
        wait = server_wait(answer.headers, wall)
        status = answer.status
        if status is None:
            return Verdict(Outcome.TRANSIENT, wait=wait)
        if status == 200:
            return Verdict(Outcome.DELIVERED, accepted=count, wait=wait)
        if status == 400:
            why = answer.body[:200].decode(errors="replace")
            return Verdict(Outcome.REJECTED, refused=count, wait=wait, errors=(why,))
        return Verdict(status_kind(status), wait=wait)

    def halves(self, body: bytes) -> tuple[tuple[bytes, int], tuple[bytes, int]]:
        try:
            return halves(body)
        except WireError:  # (our own body: cannot happen)
            raise ValueError("not a part") from None


class ForwardSink:
    """A `statsd_ao.pipeline.Sink` forwarding series to their owners in the global tier."""

    name = "forward"

    def __init__(
        self,
        targets: Sequence[Target],
        poster: Callable[[str], HttpSink],
        *,
        sender: str,
        part_series: int = PART_SERIES,
        resolve_every: float = RESOLVE_EVERY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``poster(member)``: a new `HttpSink` delivering to that member (in the
        `FleetDialect`, with its spool); ``sender``: this local's stable id."""
        self._static = [t for t in targets if isinstance(t, str)]
        self._dns = [t for t in targets if isinstance(t, tuple)]
        self._make_poster = poster
        self._sender = sender
        self._part_series = part_series
        self._resolve_every = resolve_every
        self._clock = clock
        self._seq = itertools.count(time.time_ns() // 1_000)  # unique across restarts
        self._owners = Owners()
        self._known: list[str] = []  # members hashed to when all answer
        self.posters: dict[str, HttpSink] = {}
        self._pending: dict[tuple[str, int], tuple[int, dict[SeriesKey, Accumulator]]] = {}
        self._resolver: asyncio.Task[None] | None = None
        self._started = self._closed = False
        self._not_forwarded: dict[str, int] = {}
        self._log = RateLimitedLog(log, LOG_INTERVAL)

    @property
    def is_open(self) -> bool:
        return self._started and not self._closed and bool(self.posters)

    async def start(self) -> None:
        for target in self._static:
            await self._add(target)
        if self._dns:
            await self._resolve()
            self._resolver = asyncio.create_task(self._resolve_forever())
        self._started = True
        if not self.posters:
            log.warning("forward: no member resolved yet; series wait in memory until one is")

    def prepare(self, table: Mapping[SeriesKey, Accumulator]) -> None:
        pass

    def series(self, items: SeriesItems, stamp: int, period: int) -> int:
        if not self._refresh():
            self._lose("no_member", len(items))
            return 0
        owner = self._owners.owner
        pending = self._pending
        for key, acc in items:
            target = owner(key[1])
            slot = pending.get((target, stamp))
            if slot is None:
                slot = pending[(target, stamp)] = (period, {})
            slot[1][key] = acc
            if len(slot[1]) >= self._part_series:
                self._send(target, stamp)
        return len(items)

    def measurements(self, batch: Sequence[Measurement]) -> int:
        self._lose("self_metrics_not_forwarded", len(batch))
        return 0

    def end_interval(self) -> None:
        for target, stamp in list(self._pending):
            self._send(target, stamp)

    def event(self, event: Event) -> None:
        self._lose("event_not_forwarded", 1)

    async def drain(self, timeout: float) -> int:
        self.end_interval()
        if self._resolver is not None:
            self._resolver.cancel()
        left = await asyncio.gather(*(p.drain(timeout) for p in self.posters.values()))
        self._closed = True
        return sum(left)

    @property
    def kept(self) -> int:
        return sum(p.kept for p in self.posters.values())

    @property
    def delivered(self) -> int:
        return sum(p.posted for p in self.posters.values())

    @property
    def lost(self) -> Mapping[str, int]:
        total = dict(self._not_forwarded)
        for poster in self.posters.values():
            for reason, count in poster.lost.items():
                total[reason] = total.get(reason, 0) + count
        return total

    async def close(self) -> None:
        if self._resolver is not None:
            self._resolver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resolver
        for poster in self.posters.values():
            await poster.close()
        self._closed = True

    # -- members ---------------------------------------------------------------------------

    def _refresh(self) -> bool:
        """Hash over the members that answer (all known ones when none does); False when
        no member is known at all."""
        if not self._known:
            return False
        live = [m for m in self._known if self.posters[m].failing_for is None]
        self._owners.use(live or self._known)
        return True

    async def _add(self, target: str) -> None:
        if target not in self.posters:
            poster = self._make_poster(target)
            await poster.start()
            self.posters[target] = poster
        if target not in self._known:
            self._known.append(target)

    async def _resolve(self) -> None:
        found: list[str] = []
        loop = asyncio.get_running_loop()
        for name, port in self._dns:
            try:
                infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
            except OSError as error:
                self._log.warning("dns", "forward: cannot resolve %s: %s", name, error)
                return  # keep the members known
            found.extend(member(str(info[4][0]), port) for info in infos)
        for target in found:
            await self._add(target)
        self._known = [*self._static, *sorted(set(found) - set(self._static))]

    async def _resolve_forever(self) -> None:
        while True:
            await asyncio.sleep(self._resolve_every)
            try:
                await self._resolve()
            except Exception:  # a spool that cannot open for a new member, or a bug
                log.exception("forward: resolving the members failed")

    # -- parts -----------------------------------------------------------------------------

    def _send(self, target: str, stamp: int) -> None:
        period, series = self._pending.pop((target, stamp))
        part = Part(self._sender, next(self._seq), stamp, period, self._clock(), series)
        try:
            body = encode(part)
        except (TypeError, ValueError) as error:  # a name orjson cannot write (a lone surrogate)
            self._log.warning("encode", "forward: a part could not be encoded: %s", error)
            self._lose("unencodable", len(series))
            return
        self.posters[target].submit_body(body, len(series))

    def _lose(self, reason: str, count: int) -> None:
        if count:
            self._not_forwarded[reason] = self._not_forwarded.get(reason, 0) + count
