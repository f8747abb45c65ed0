"""The global tier's HTTP intake of forwarded parts (``--fleet-listen``); a `PartSource`.

``POST /v1/fleet/parts`` with ``Authorization: Bearer <--fleet-token>`` (compared in
constant time) and a gzip'ed part (`statsd_ao.core.fleet_wire`) as its body.  A part is
acknowledged (200) only once `statsd_ao.core.fleet_parts.FleetParts` has taken it in, or
knew it already (a duplicate: 200 too, so the sender stops sending it).  Answers a local
reads (`statsd_ao.io.fleet_forward.FleetDialect`):

=======  ==========================================  ====================================
status   why                                         the sender
=======  ==========================================  ====================================
200      taken in, or a duplicate                    done
400      not a part (`WireError`)                    drops it, counted
401      no or wrong token                           keeps it and waits (a person looks)
413      body over ``max_body`` (compressed bytes)   cuts it in halves
503      too many series held, or closing            retries later (or another member)
=======  ==========================================  ====================================

Handlers run on the loop thread; decoding a part at the body bound takes a few ms.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

import orjson
from aiohttp import web

from statsd_ao.core.aggregator import Snapshot
from statsd_ao.core.fleet_parts import FleetParts, Taken
from statsd_ao.core.fleet_wire import WireError, decode
from statsd_ao.core.logs import RateLimitedLog
from statsd_ao.io.address import Address

log = logging.getLogger(__name__)

PATH = "/v1/fleet/parts"
# Compressed bytes of one part: a local cuts its parts at 5,000 series (~60 KB gzip'ed of
# counters, more with timers' values); 8 MiB takes a part of large summaries.
DEFAULT_MAX_BODY = 8 << 20
# Seconds for a body to arrive whole.
READ_TIMEOUT = 10.0
# Seconds in-flight requests get to finish at close.
CLOSE_TIMEOUT = 5.0
LOG_INTERVAL = 60.0


class FleetReceiver:
    """Serves ``POST /v1/fleet/parts`` on ``address``; its parts go to ``keeper``."""

    def __init__(
        self,
        address: Address,
        keeper: FleetParts,
        token: str,
        *,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        if not token:
            raise ValueError("the fleet receiver needs a token")
        self._address = address
        self.keeper = keeper
        self._token = token.encode()
        self._max_body = max_body
        self._runner: web.AppRunner | None = None
        self._closing = False
        self._log = RateLimitedLog(log, LOG_INTERVAL)
        self.requests: dict[int, int] = {}  # by status answered
        self.bad_parts = 0

    def describe(self) -> str:
        return f"fleet http://{self._address}"

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("the fleet receiver is not open")
        return int(self._runner.addresses[0][1])

    async def open(self) -> None:
        app = web.Application(client_max_size=self._max_body)
        app.router.add_post(PATH, self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=CLOSE_TIMEOUT)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._address.host, self._address.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("listening for fleet parts on http %s:%d", self._address.host, self.port)

    async def close(self) -> None:
        """Stop listening; requests already being read finish (aiohttp's shutdown)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            self._closing = True
            await runner.cleanup()
            senders = self.keeper.senders.values()
            log.info(
                "fleet: took in %d parts (%d duplicates dropped) from %d senders",
                sum(s.parts for s in senders),
                sum(s.duplicates for s in senders),
                len(senders),
            )

    async def take(self) -> list[Snapshot]:
        """The parts whose grace has ended; after `close`, every part held (the final
        flush)."""
        return self.keeper.take_all() if self._closing else self.keeper.ready()

    async def _handle(self, request: web.Request) -> web.Response:
        status, why = await self._answer(request)
        self.requests[status] = self.requests.get(status, 0) + 1
        body = orjson.dumps({"status": why})
        return web.Response(status=status, body=body, content_type="application/json")

    async def _answer(self, request: web.Request) -> tuple[int, str]:
        body = await self._body(request)
        if isinstance(body, tuple):
            return body
        if self._closing:
            return 503, "closing"
        return self._take_in(body)

    async def _body(self, request: web.Request) -> bytes | tuple[int, str]:
        """The body, or the answer that refuses the request before it is read whole."""
        if not self._authorized(request.headers.get("Authorization")):
            self._log.warning("auth", "fleet: a request with no or a wrong token (401)")
            return 401, "unauthorized"
        length = request.content_length
        if length is not None and length > self._max_body:
            return 413, "too large"
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                return await request.read()  # (past client_max_size: HTTP 413 raised)
        except web.HTTPRequestEntityTooLarge:
            return 413, "too large"
        except TimeoutError:
            return 408, "too slow"

    def _take_in(self, body: bytes) -> tuple[int, str]:
        try:
            part = decode(body)
        except WireError as error:
            self.bad_parts += 1
            self._log.warning("bad", "fleet: a request that is not a part (400): %s", error)
            return 400, str(error)
        taken = self.keeper.take_in(part)
        if taken is Taken.FULL:
            self._log.warning("full", "fleet: too many series held; parts answered 503")
            return 503, "full"
        return 200, taken.value

    def _authorized(self, header: str | None) -> bool:
        if header is None or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), self._token)
