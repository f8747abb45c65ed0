"""Everything that speaks etsy statsd: a drop-in replacement's compatibility part.

Here: reading etsy statsd's JavaScript configuration files (`configjs`), translating them into
our settings (`translation`), what ``--statsd-config`` takes from such a file and what it
cannot honour (`migration`), and etsy's TCP management interface (`admin`, with the proxy
state it reads in `admin_state`).

May import: ``statsd_ao.core`` and ``statsd_ao.io``; never the shell (the shell imports this
package, not the other way round).  Neither the core nor the adapters import this package
(tests/test_layout.py).
"""
