"""The AppOptics API intake: an HTTP server standing in for ``api.appoptics.com``.

Applications that posted to the AppOptics API (its Python, Ruby, Go and Java clients,
micrometer, their own HTTP code) change one host name and keep working: ``POST
/v1/measurements`` and ``POST /v1/annotations/:name`` are answered as the API answered them
(`statsd_ao.core.api_rules`), and what they accept joins the proxy's intervals
(`statsd_ao.core.api_intake`), merged with StatsD's and delivered to every sink.  It is a
`statsd_ao.pipeline.PartSource`: the flusher calls `take` at every tick.

Theory of operation.  One request goes: connection bound -> route -> rate limit -> auth ->
content type -> room for series -> body (bounded in bytes and time) -> JSON -> every
measurement judged -> each accepted one taken in -> the API's answer.  A big request is
judged and taken in a slice of `SLICE` measurements at a time, yielding to the event loop
between slices, and only one such step runs at a time across all requests, so the StatsD
listeners wait at most one step per loop pass however many requests arrive
(bench/intake_bench.py measures both).  Each bound answers clearly:

========================  =========================================  ======================
bound                     default                                    answer at it
========================  =========================================  ======================
request body              `DEFAULT_MAX_BODY` bytes (after gzip)      413
measurements per request  `api_rules.DEFAULT_MAX_MEASUREMENTS`       400 (params error)
open connections          `DEFAULT_MAX_CONNECTIONS`                  503, then closed
requests per client       `DEFAULT_RATE`/s, bursts of `DEFAULT_BURST` 429 + rate headers
headers, then body        `DEFAULT_READ_TIMEOUT` s each              408, then closed
between kept-alive reqs   `KEEPALIVE_IDLE` s                         closed
series held per interval  `api_intake.DEFAULT_MAX_SERIES`            429 until the flush
========================  =========================================  ======================

Every answer carries the rate-limit headers AppOptics (and Librato before it) sent,
``X-Librato-RateLimit-Std`` and ``-Agg``: ``limit=N,remaining=N,reset=UNIX_TIME``.
Callbacks and handlers run on the loop thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from statsd_ao.core import api_rules
from statsd_ao.core.aggregator import Snapshot
from statsd_ao.core.api_intake import ApiIntake, Filtered
from statsd_ao.core.api_rules import ApiError, Refusal, Sample
from statsd_ao.core.logs import RateLimitedLog
from statsd_ao.core.rate_limit import Quota, RateLimiter
from statsd_ao.io.address import Address
from statsd_ao.io.health import MALFORMED_REQUESTS

log = logging.getLogger(__name__)

# A full batch of 1,000 measurements with ten short tags each is ~250 KB; 1 MiB leaves room
# for longer tags and bounds the memory a connection can hold (open connections x this).
DEFAULT_MAX_BODY = 1 << 20
# Connections open at once.  Clients post every few seconds over one or two connections;
# 128 serves many applications and bounds memory (x the body bound: 128 MiB at worst).
DEFAULT_MAX_CONNECTIONS = 128
# Requests per second per client address (an IPv6 client: its /64), with bursts: a client
# posting 10,000 measurements a second in the Python client's chunks of 300 needs ~35.
DEFAULT_RATE = 50.0
DEFAULT_BURST = 100
# Seconds for a request's headers to arrive whole, and then as long for its body: a client
# trickling bytes (slowloris) holds a connection no longer than this.
DEFAULT_READ_TIMEOUT = 10.0
# Seconds a kept-alive connection may wait before its next request starts arriving whole.
KEEPALIVE_IDLE = 60.0
# Measurements judged or taken in between two yields to the event loop: ~0.4 ms of work
# (bench/intake_bench.py).  One step runs per loop pass (`Steps`), so the UDP reader waits
# no longer than one step, however many requests arrive; the longest step is the JSON
# parse of a body at the body bound (~3 ms a MiB).
SLICE = 50
# Seconds spent reading (and dropping) the rest of a body after answering before it was read
# whole (401, 413, 408...), so the client sees the answer rather than a reset; then the
# connection closes.
LINGER = 1.0
# Seconds in-flight requests get to finish at close.
CLOSE_TIMEOUT = 5.0
# Request lines and headers: API clients send a few short ones.
MAX_LINE_BYTES = 8190
MAX_HEADERS = 64
# Refusals and bound hits are logged at most this often per kind.
LOG_INTERVAL = 60.0
READ_CHUNK = 1 << 16

MEASUREMENTS = "/v1/measurements"
ANNOTATIONS = "/v1/annotations/"
_TIMEOUT_BODY = b'{"errors":{"request":["the request did not arrive in time"]}}'
_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


def parse_tokens(text: str) -> frozenset[str]:
    """Intake tokens: comma or newline separated; surrounding whitespace is not part of one.
    (The parser of the ``--intake-token`` setting.)"""
    tokens = frozenset(t.strip() for t in text.replace("\n", ",").split(",") if t.strip())
    if not tokens:
        raise ValueError("at least one intake token is required")
    return tokens


@dataclass(slots=True)
class IntakeStats:
    """What the intake did since start, for self-metrics and the status page."""

    requests: dict[int, int] = field(default_factory=dict)  # by status answered
    bytes: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # measurements refused, by param
    connections: int = 0
    open: int = 0
    over_limit: int = 0  # connections answered 503: too many open
    timed_out: int = 0  # connections closed: headers or body too slow
    too_large: int = 0
    unauthorized: int = 0
    rate_limited: int = 0
    annotations: int = 0


@dataclass(slots=True)
class _Connection:
    timer: asyncio.TimerHandle | None
    over_limit: bool
    busy: bool = False


class Steps:
    """Runs the work of every request one step per event-loop pass, taking turns.

    A request's work is an iterator whose each ``next`` is one step (a parse, a slice of
    `SLICE` measurements).  If each request's task ran its own steps, every request with
    a step ready would run it in the same loop pass (a lock does not help: a step never
    waits inside it), so N requests would hold the UDP reader for N steps; here one task
    runs one step, then yields, so the reader waits for one step at most
    (bench/intake_bench.py)."""

    def __init__(self) -> None:
        self._queue: deque[tuple[Iterator[None], asyncio.Future[None]]] = deque()
        self._worker: asyncio.Task[None] | None = None

    async def run(self, work: Iterator[None]) -> None:
        """Run ``work`` to its end in turns; raises what it raises."""
        done = asyncio.get_running_loop().create_future()
        self._queue.append((work, done))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        await done

    async def _work(self) -> None:
        queue = self._queue
        while queue:
            work, done = queue.popleft()
            if done.cancelled():  # the client went away
                continue
            try:
                next(work)
            except StopIteration:
                done.set_result(None)
            except Exception as error:  # (ApiError, or a bug: the handler reports it)
                done.set_exception(error)
            else:
                queue.append((work, done))
            await asyncio.sleep(0)


class _Server(web.Server):
    """aiohttp's low-level server, telling the intake of each connection."""

    def __init__(self, owner: AppOpticsIntake, **kwargs: Any) -> None:
        super().__init__(owner._handle, **kwargs)
        self._owner = owner

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._owner._connected(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self._owner._disconnected(handler)


class AppOpticsIntake:
    """Serves the AppOptics API's two write routes on ``address``; a `PartSource`."""

    def __init__(
        self,
        address: Address,
        intake: ApiIntake,
        tokens: Iterable[str],
        *,
        max_body: int = DEFAULT_MAX_BODY,
        max_measurements: int = api_rules.DEFAULT_MAX_MEASUREMENTS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``intake``: the sans-IO part keeper (built with the aggregator's `Naming`);
        ``tokens``: the accepted API tokens (at least one); ``clock``: wall time, for
        annotation times and the rate-limit headers."""
        self._address = address
        self._intake = intake
        self._tokens = tuple(t.encode() for t in tokens)
        if not self._tokens:
            raise ValueError("the AppOptics intake needs at least one token")
        self._max_body = max_body
        self._max_measurements = max_measurements
        self._max_connections = max_connections
        self._read_timeout = read_timeout
        self._clock = clock
        self._limiter = RateLimiter(rate, burst, wall=clock)
        self._runner: web.ServerRunner | None = None
        self._connections: dict[RequestHandler, _Connection] = {}
        self._log = RateLimitedLog(log, LOG_INTERVAL)
        self._annotation_ids = 0
        self._busy = 0  # requests being handled
        self._idle = asyncio.Event()  # set while none is
        self._idle.set()
        self._closing = False
        self._steps = Steps()
        self.stats = IntakeStats()

    # The Source protocol ----------------------------------------------------------------

    def describe(self) -> str:
        return f"appoptics api http://{self._address}"

    @property
    def port(self) -> int:
        """The port bound (the real one when 0 was asked for)."""
        if self._runner is None:
            raise RuntimeError("the intake is not open")
        return int(self._runner.addresses[0][1])

    @property
    def in_flight(self) -> int:
        """Requests being handled (their headers have arrived)."""
        return self._busy

    @property
    def closing(self) -> bool:
        """`close` has begun: no new connection is accepted."""
        return self._closing

    async def open(self) -> None:
        server = _Server(
            self,
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_LINE_BYTES,
            max_headers=MAX_HEADERS,
            keepalive_timeout=KEEPALIVE_IDLE,
            lingering_time=LINGER,
        )
        runner = web.ServerRunner(server, shutdown_timeout=CLOSE_TIMEOUT)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._address.host, self._address.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        assert MALFORMED_REQUESTS  # (counts and briefly logs requests aiohttp cannot parse)
        log.info(
            "listening on appoptics api http %s:%d (POST /v1/measurements, /v1/annotations/:name)",
            self._address.host,
            self.port,
        )

    async def close(self) -> None:
        """Stop listening; requests whose headers have arrived get `CLOSE_TIMEOUT` to
        arrive whole and be taken in (aiohttp's own shutdown would stop reading them)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()
        self._closing = True
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._idle.wait()
        except TimeoutError:
            log.warning("appoptics intake: closed with %d requests unfinished", self._busy)
        await runner.cleanup()
        for connection in self._connections.values():
            if connection.timer is not None:
                connection.timer.cancel()
        self._connections.clear()

    async def take(self) -> list[Snapshot]:
        part = self._intake.take()
        return [] if part is None else [part]

    # Connections ------------------------------------------------------------------------

    def _connected(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self.stats.connections += 1
        self.stats.open += 1
        over = len(self._connections) >= self._max_connections
        connection = _Connection(None, over)
        self._connections[handler] = connection
        if over:
            self.stats.over_limit += 1
            self._log.warning(
                "connections",
                "appoptics intake: %d connections open; new ones are answered 503",
                len(self._connections) - 1,
            )
        self._arm(connection, transport, self._read_timeout)

    def _disconnected(self, handler: RequestHandler) -> None:
        connection = self._connections.pop(handler, None)
        if connection is not None:
            self.stats.open -= 1
            if connection.timer is not None:
                connection.timer.cancel()

    def _arm(self, connection: _Connection, transport: asyncio.Transport, delay: float) -> None:
        """Close the connection unless a request has arrived whole within ``delay``."""
        if connection.timer is not None:
            connection.timer.cancel()
        loop = asyncio.get_running_loop()
        connection.timer = loop.call_later(delay, self._too_slow, connection, transport)

    def _too_slow(self, connection: _Connection, transport: asyncio.Transport) -> None:
        connection.timer = None
        if connection.busy or transport.is_closing():
            return
        self.stats.timed_out += 1
        transport.write(_TIMEOUT_ANSWER)
        transport.close()

    # Requests ---------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        connection = self._connections.get(request.protocol)
        if connection is not None:
            connection.busy = True
            if connection.timer is not None:
                connection.timer.cancel()
                connection.timer = None
        quota: Quota | None = None
        self._busy += 1
        self._idle.clear()
        try:
            quota, answer = await self._answer(request, connection)
        except ApiError as error:
            answer = api_rules.Answer(error.status, error.body)
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()
            if connection is not None:
                connection.busy = False
                transport = request.transport
                if transport is not None and not transport.is_closing():
                    self._arm(connection, transport, KEEPALIVE_IDLE)
        return self._response(answer, quota)

    async def _answer(
        self, request: web.BaseRequest, connection: _Connection | None
    ) -> tuple[Quota | None, api_rules.Answer]:
        """The quota the request took (None before the rate limit) and the answer."""
        if connection is not None and connection.over_limit:
            raise ApiError(503, {"errors": {"system": ["too many connections; retry shortly"]}})
        if self._closing:
            raise ApiError(503, {"errors": {"system": ["shutting down; retry shortly"]}})
        path = request.path
        stream = path[len(ANNOTATIONS) :] if path.startswith(ANNOTATIONS) else None
        if path != MEASUREMENTS and not stream:
            raise api_rules.request_error(404, f"no such route: {path[:100]}")
        if request.method != "POST":
            raise api_rules.request_error(405, "only POST is served here")
        quota = self._limiter.ask(_client(request.remote))
        if not quota.allowed:
            self.stats.rate_limited += 1
            return quota, api_rules.Answer(
                429,
                {"errors": {"request": ["rate limited: too many requests from this client"]}},
                (("Retry-After", str(quota.retry_after)),),
            )
        if not self._authorized(request.headers.get("Authorization")):
            self.stats.unauthorized += 1
            return quota, api_rules.Answer(
                401,
                {"errors": {"request": ["Please provide credentials for authentication."]}},
                (("WWW-Authenticate", 'Basic realm="statsd-ao"'),),
            )
        if stream is not None:
            return quota, await self._annotation(request, stream)
        return quota, await self._measurements(request)

    def _authorized(self, header: str | None) -> bool:
        """Basic auth with an accepted token as the user name (the password is ignored).
        Every token is compared, in constant time, whatever matched."""
        given = _basic_user(header)
        if given is None:
            return False
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(given, token)
        return matched

    async def _measurements(self, request: web.BaseRequest) -> api_rules.Answer:
        if request.content_type != api_rules.JSON:
            raise api_rules.request_error(415, "Content-Type must be application/json")
        if self._intake.full:
            self._log.warning("full", "appoptics intake: series limit reached; answering 429")
            wait = self._intake.seconds_left()
            return api_rules.Answer(
                429,
                {"errors": {"request": [f"too many series this interval; retry in {wait} s"]}},
                (("Retry-After", str(wait)),),
            )
        body = await self._body(request)
        answer: list[api_rules.Answer] = []
        await self._steps.run(self._take_in(body, request.remote, answer))
        return answer[0]

    def _take_in(
        self, body: bytes, client: str | None, answer: list[api_rules.Answer]
    ) -> Iterator[None]:
        """A post's work as steps (each ``yield`` ends one): parse, judge every measurement
        a slice at a time, then take the accepted ones in a slice at a time."""
        envelope = api_rules.envelope(body, self._max_measurements)
        del body
        yield
        judged: list[Sample | Refusal] = []
        total = len(envelope.measurements)
        for start in range(0, total, SLICE):
            judged.extend(
                api_rules.judge(envelope, i) for i in range(start, start + SLICE) if i < total
            )
            yield
        refusals: list[Refusal] = []
        accepted = filtered = 0
        add = self._intake.add
        for start in range(0, total, SLICE):
            for item in judged[start : start + SLICE]:
                outcome = item if isinstance(item, Refusal) else add(item)
                if outcome is None:
                    accepted += 1
                elif isinstance(outcome, Filtered):
                    filtered += 1
                else:
                    refusals.append(outcome)
            if start + SLICE < total:
                yield
        for refusal in refusals:
            self.stats.failed[refusal.param] = self.stats.failed.get(refusal.param, 0) + 1
        if refusals:
            first = refusals[0]
            self._log.warning(
                f"refused {first.param}",
                "appoptics intake: refused %d of %d measurements from %s, e.g. %s: %s",
                len(refusals),
                len(judged),
                client,
                first.param,
                first.reason,
            )
        answer.append(api_rules.answer(total, accepted, filtered, refusals))

    async def _annotation(self, request: web.BaseRequest, stream: str) -> api_rules.Answer:
        body = await self._body(request)
        event = api_rules.annotation(stream, body, request.content_type, int(self._clock()))
        if not self._intake.add_event(event):
            raise api_rules.request_error(429, "too many annotations this interval")
        self.stats.annotations += 1
        self._annotation_ids += 1
        reply = {
            "id": self._annotation_ids,
            "title": event.title,
            "description": event.text or None,
            "source": event.host,
            "start_time": event.timestamp,
            "end_time": event.end_time,
            "links": [
                {
                    "rel": link.rel,
                    "href": link.href,
                    **({"label": link.label} if link.label else {}),
                }
                for link in event.links
            ],
        }
        location = f"/v1/annotations/{stream}/{self._annotation_ids}"
        return api_rules.Answer(201, reply, (("Location", location),))

    async def _body(self, request: web.BaseRequest) -> bytes:
        """The body, at most ``max_body`` bytes (decompressed), read within the timeout."""
        length = request.content_length
        if length is not None and length > self._max_body:
            raise self._too_large()
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._read_timeout):
                while chunk := await request.content.read(READ_CHUNK):
                    size += len(chunk)
                    if size > self._max_body:
                        raise self._too_large()
                    chunks.append(chunk)
        except TimeoutError:
            self.stats.timed_out += 1
            raise api_rules.request_error(408, "the body did not arrive in time") from None
        self.stats.bytes += size
        return b"".join(chunks)

    def _too_large(self) -> ApiError:
        self.stats.too_large += 1
        return api_rules.request_error(413, f"the body is larger than {self._max_body} bytes")

    def _response(self, answer: api_rules.Answer, quota: Quota | None) -> web.Response:
        status = answer.status
        self.stats.requests[status] = self.stats.requests.get(status, 0) + 1
        response = web.Response(
            status=status, body=orjson.dumps(answer.body), content_type=api_rules.JSON
        )
        for name, value in answer.headers:
            response.headers[name] = value
        if quota is not None:
            limits = f"limit={quota.limit},remaining={quota.remaining},reset={quota.reset}"
            response.headers["X-Librato-RateLimit-Std"] = limits
            response.headers["X-Librato-RateLimit-Agg"] = limits
        if status in (408, 413, 503) or self._closing:  # (the rest of a body is not read)
            response.force_close()
        return response


def _basic_user(header: str | None) -> bytes | None:
    """The user name of a ``Basic`` Authorization header, or None if it is not one."""
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded.partition(b":")[0]


def _client(remote: str | None) -> str:
    """The rate limit's client key: the address, or an IPv6 address's /64 (one host
    usually holds a whole /64, and could otherwise take a new address per request)."""
    if remote is None:
        return "?"
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
