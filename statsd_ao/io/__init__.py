"""The adapters: where the core meets sockets, files and HTTP.

Here: the UDP and Unix datagram listeners (`listeners`, with their read pacing in `pacing`)
and the TCP listener (`tcp`: TCP only; there is no Unix stream socket), the addresses they
bind (`address`), the AppOptics sink (`appoptics`: series to measurements to posts) and its
posters, to the API or to stdout in a dry run (`sink`, its answer handling in `answers`),
the durable outbox on disk (`spool`, its file format in `spoolfile`), the HTTP health
and metrics endpoint (`health`) and the AppOptics API intake (`api_server`), which takes
what API clients post.

May import: the standard library, asyncio, aiohttp, orjson, ``statsd_ao.core``,
``statsd_ao.io`` and the seams they implement (`statsd_ao.pipeline`).  Never the etsy part
(`statsd_ao.etsy`) or the rest of the shell (tests/test_layout.py).
"""
