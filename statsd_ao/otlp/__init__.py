"""The OTLP/HTTP sink: flushed intervals to SolarWinds Observability or any OTLP backend.

Here: the conversion of an interval's series (and of ready-made self-metric measurements)
into OTLP data points (`convert`), the requests they fill, bounded in data points and
bytes, encoded and gzipped (`requests`), what is particular to OTLP/HTTP for the delivery
machinery of `statsd_ao.io.sink.HttpSink`: URL, headers, answers, halving a request
(`dialect`, with `swo_url`), and the sink itself and its dry-run form (`sink`).  The
messages are those of the official ``opentelemetry-proto`` package: the schema of record.
docs/otlp.md says what each statsd type becomes and why.

May import: the standard library, orjson, protobuf and ``opentelemetry.proto``,
``statsd_ao.core``, ``statsd_ao.io`` and ``statsd_ao.otlp``.  `convert`, `requests` and
`dialect` are sans-IO like the core (no asyncio, aiohttp or sockets; tests/otlp checks it);
only `sink` does IO.  Never the etsy part or the shell (tests/test_layout.py).
"""

from statsd_ao.otlp.dialect import SWO_REGIONS, swo_url
from statsd_ao.otlp.sink import OtlpDryRunSink, OtlpSink

__all__ = ["SWO_REGIONS", "OtlpDryRunSink", "OtlpSink", "swo_url"]
