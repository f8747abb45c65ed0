"""A whole line through the production parser's steps, for the grammar's tests.

The aggregator parses a line in three steps (`split_line`, `parse_shape` once per line
shape, `parse_values` per line); these helpers run the same steps in one call.
"""

from __future__ import annotations

from statsd_ao.core.protocol import Sample, parse_shape, parse_values, split_line


def parse_line(line: bytes) -> Sample:
    """One complete line (no newline), as the aggregator reads it."""
    name, value, tail = split_line(line)
    shape = parse_shape(name, tail)
    (first, delta), *more = parse_values(shape.kind, value)
    return Sample(shape, first, delta, tuple(more))


def iter_lines(datagram: bytes) -> list[bytes]:
    """The non-blank lines of a datagram, as `Aggregator.ingest` splits it."""
    return [line for line in datagram.split(b"\n") if line.strip()]
