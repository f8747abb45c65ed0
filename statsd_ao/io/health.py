"""The proxy's HTTP endpoint: liveness, readiness, Prometheus metrics and a status page.

Off unless ``--http HOST:PORT`` is set.  Routes (GET and HEAD):

- ``/health``: liveness.  200 while the proxy is alive (its flush loop keeps flushing), else
  503.  A wedged event loop never answers at all; the probe's own timeout catches that.
- ``/ready``: 200 when alive, listening and able to post (the sink is started and not
  shutting down), else 503.  Both answer JSON ``{"status": "ok"|"fail", "reasons": [...]}``
  plus any detail the `HealthState` carries.
- ``/metrics``: the Prometheus text format (``text/plain; version=0.0.4``).
- ``/status``: JSON from the ``status`` callable, e.g. `cardinality_status`.

Readiness deliberately does not depend on the AppOptics API answering: a sidecar that is not
ready makes its whole pod not ready (Kubernetes has no per-container readiness for Services),
and a DaemonSet pod behind ``internalTrafficPolicy: Local`` that is not ready gets no traffic,
so in both cases an API outage would take the application down or lose every datagram
instead of buffering.  `assess` reports API trouble as a warning in the body instead.

Handlers run on the loop thread and call the given callables, which must not block.  No
access log: probes every few seconds would drown the useful lines.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from statsd_ao.core.logs import RateLimitedLog
from statsd_ao.io.httpconns import ConnectionGate

log = logging.getLogger(__name__)

# The flush loop counts as stalled after this many intervals without a flush...
STALL_INTERVALS = 3
# ...plus this grace, so a short interval and one slow flush never restart the proxy.
STALL_GRACE = 60.0
# In-flight requests get this long at close; every handler answers in microseconds.
CLOSE_TIMEOUT = 1.0
# Request limits, set explicitly rather than left to aiohttp's defaults.  Every route is a
# GET that reads no body, and probes and scrapers send a few short headers: a request line
# or header over 8 KiB, more than 64 headers, or a body over 4 KiB is refused (400/413) and
# the endpoint goes on serving everyone else.
MAX_LINE_BYTES = 8190
MAX_HEADERS = 64
MAX_BODY_BYTES = 4096
# Connections waiting to be accepted (aiohttp's default).
BACKLOG = 128
# Malformed requests are reported at most this often, in one short line.
BAD_REQUEST_LOG_INTERVAL = 60.0
EXAMPLE_CHARS = 80


class _MalformedRequests(logging.Filter):
    """aiohttp logs every request it cannot parse at ERROR with a traceback and the whole
    offending input (a 100 KiB line for 100 KiB of junk).  Those are the sender's fault, not
    ours: count them and say so briefly, at a limited rate; let every other record through."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._log = RateLimitedLog(log, BAD_REQUEST_LOG_INTERVAL)

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        self.count += 1
        summary = " ".join(str(error.message).split())[:EXAMPLE_CHARS]
        self._log.warning(
            "bad", "http: refused a malformed request (%d so far): %s", self.count, summary
        )
        return False


MALFORMED_REQUESTS = _MalformedRequests()
logging.getLogger("aiohttp.server").addFilter(MALFORMED_REQUESTS)
# Entries in each list of `cardinality_status`.
DEFAULT_TOP = 10
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class HealthState:
    """What the proxy says about itself; ``reasons`` say why it is not live or not ready."""

    live: bool
    ready: bool
    reasons: tuple[str, ...] = ()
    detail: Mapping[str, object] = field(default_factory=dict)


def assess(
    *,
    listening: bool,
    sink_open: bool,
    since_flush: float,
    flush_interval: float,
    api_failing_for: float | None = None,
) -> HealthState:
    """The health policy, from plain facts.

    ``since_flush``: seconds since the last flush finished (or since start, before the
    first); ``api_failing_for``: seconds since the API last answered well, None when it does.
    """
    reasons: list[str] = []
    stall_after = STALL_INTERVALS * flush_interval + STALL_GRACE
    live = since_flush <= stall_after
    if not live:
        reasons.append(f"no flush for {since_flush:.0f} s (interval {flush_interval:g} s)")
    if not listening:
        reasons.append("not listening for StatsD")
    if not sink_open:
        reasons.append("not able to post: the sink is not started or is shutting down")
    warnings = []
    if api_failing_for is not None:
        warnings.append(f"the AppOptics API has been failing for {api_failing_for:.0f} s")
    return HealthState(
        live=live,
        ready=live and listening and sink_open,
        reasons=tuple(reasons),
        detail={"warnings": warnings} if warnings else {},
    )


def cardinality_status(
    series: Iterable[tuple[str, Iterable[tuple[str, str]]]], *, top: int = DEFAULT_TOP
) -> dict[str, object]:
    """The top metrics by tag sets and the top tag keys by distinct values.

    ``series`` holds (metric name, tags) pairs, one per series, e.g. the keys of the last
    flush.  Costs O(series) time and the distinct values in memory, once per request.
    """
    per_metric: Counter[str] = Counter()
    values: dict[str, set[str]] = {}
    for metric, tags in series:
        per_metric[metric] += 1
        for key, value in tags:
            values.setdefault(key, set()).add(value)
    keys = sorted(values.items(), key=lambda item: (-len(item[1]), item[0]))[:top]
    return {
        "series": per_metric.total(),
        "metrics": len(per_metric),
        "top_metrics": [
            {"metric": metric, "tag_sets": count} for metric, count in per_metric.most_common(top)
        ],
        "top_tag_keys": [{"key": key, "values": len(seen)} for key, seen in keys],
    }


class HttpServer:
    """A started endpoint; `close` stops it.  ``gate`` counts the connections it closed."""

    def __init__(
        self, runner: web.AppRunner, server: asyncio.AbstractServer, gate: ConnectionGate
    ) -> None:
        self._runner = runner
        self._server = server
        self.gate = gate

    @property
    def port(self) -> int:
        """The port actually bound (the real one when 0 was asked for)."""
        sockets: list[socket.socket] = list(getattr(self._server, "sockets", ()))
        return int(sockets[0].getsockname()[1])

    async def close(self) -> None:
        self._server.close()
        await self._runner.cleanup()


async def start_http(
    host: str,
    port: int,
    *,
    health: Callable[[], HealthState],
    metrics_text: Callable[[], str],
    status: Callable[[], Mapping[str, object]],
) -> HttpServer:
    """Serve the four routes on ``host:port``.  Raises OSError (e.g. in use) to the caller.
    Its connections are capped and must send their requests in time (`ConnectionGate`)."""
    gate = ConnectionGate()
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[gate.middleware])
    app.router.add_get("/health", _probe(health, ready=False))
    app.router.add_get("/ready", _probe(health, ready=True))
    app.router.add_get("/metrics", _metrics(metrics_text))
    app.router.add_get("/status", _status(status))
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=CLOSE_TIMEOUT,
        max_line_size=MAX_LINE_BYTES,
        max_field_size=MAX_LINE_BYTES,
        max_headers=MAX_HEADERS,
    )
    await runner.setup()
    assert runner.server is not None
    try:
        server = await asyncio.get_running_loop().create_server(
            gate.wrap(runner.server), host, port, backlog=BACKLOG, reuse_address=True
        )
    except BaseException:
        await runner.cleanup()
        raise
    return HttpServer(runner, server, gate)


class HttpEndpoint:
    """The HTTP endpoint as a part of the app's lifecycle (`open` binds, `close` stops)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        health: Callable[[], HealthState],
        metrics_text: Callable[[], str],
        status: Callable[[], Mapping[str, object]],
    ) -> None:
        self._host, self._port = host, port
        self._handlers = (health, metrics_text, status)
        self.server: HttpServer | None = None

    def describe(self) -> str:
        return f"http {self._host}:{self._port}"

    async def open(self) -> None:
        health, metrics_text, status = self._handlers
        self.server = await start_http(
            self._host, self._port, health=health, metrics_text=metrics_text, status=status
        )
        log.info(
            "http endpoint on %s:%d (/health /ready /metrics /status)",
            self._host,
            self.server.port,
        )

    async def close(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.close()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _probe(health: Callable[[], HealthState], *, ready: bool) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        state = health()
        ok = state.ready if ready else state.live
        body = {"status": "ok" if ok else "fail", "reasons": list(state.reasons), **state.detail}
        return _json(body, 200 if ok else 503)

    return handle


def _metrics(metrics_text: Callable[[], str]) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(
            body=metrics_text().encode(), headers={"Content-Type": METRICS_CONTENT_TYPE}
        )

    return handle


def _status(status: Callable[[], Mapping[str, object]]) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        return _json(dict(status()), 200)

    return handle


def _json(body: dict[str, object], code: int) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=code, content_type="application/json", charset="utf-8"
    )
