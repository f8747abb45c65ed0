"""Everything that speaks etsy statsd: a drop-in replacement's compatibility part.

Here: reading etsy statsd's JavaScript configuration files (`config`), translating them into
our settings (`translation`), the ``--check-migration`` report (`migration`), and etsy's TCP
management interface (`admin`, with the proxy state it reads in `admin_state`).

May import: ``statsd_ao.core``, ``statsd_ao.io``, and from the shell only `statsd_ao.config`
(its ConfigError, which etsy's configuration errors are) and `statsd_ao.flusher` (the type
the management interface reads).  Neither the core nor the adapters import this package
(tests/test_layout.py).
"""
