"""The sans-IO core: what a StatsD line means and what AppOptics is sent for it.

Here: the line grammar (`protocol`, `events`), names and tags (`sanitize`, `name_rules`,
`mapping`), the hot path (`accumulators`, `aggregator`, `gauge_memory`, and `hotpath`, which
loads the optional C loop `_hotpath.c` with the C gauges of `_gauges.c`; `native` switches
the C parts off), the tag-set budget (`cardinality`), conversion to
measurements (`measurements`, with its optional C part `_convert.c`), posts (`batching`),
the delivery policy (`retry`, `outbox`, and `dialect`: what is particular to one HTTP API),
etsy's idle series (`idle`), annotations, the merge of several processes' intervals
(`merge`), the self-metrics registry (`selfmetrics`), the rate-limited log (`logs`), and the
AppOptics API intake's rules (`api_rules`), interval parts (`api_intake`) and per-client
request budget (`rate_limit`).

May import: the standard library and orjson, and only ``statsd_ao.core``.  Never asyncio,
socket, selectors, aiohttp or uvloop, nor the adapters (`statsd_ao.io`), the etsy part
(`statsd_ao.etsy`) or the shell: every piece is driven by plain calls, so it is tested
without a socket or an event loop (tests/test_layout.py checks these rules).
"""
