"""The adapters: where the core meets sockets, files and HTTP.

Here: the UDP and Unix datagram listeners (`listeners`) and the TCP and Unix stream ones
(`tcp`), the addresses they bind (`address`), the sink that posts to AppOptics or prints a
dry run (`sink`, its answer handling in `answers`), the durable outbox on disk (`spool`, its
file format in `spoolfile`), the HTTP health and metrics endpoint (`health`) and the
AppOptics API intake (`api_server`), which takes what API clients post.

May import: the standard library, asyncio, aiohttp, orjson, ``statsd_ao.core`` and
``statsd_ao.io``.  Never the etsy part (`statsd_ao.etsy`) or the shell (tests/test_layout.py).
"""
