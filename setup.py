"""The C parts, built when a compiler is at hand: the hot path's loop (statsd_ao/core/_hotpath.c,
with the C Gauge and gauge memory of statsd_ao/core/_gauges.c) and the flush's conversion
(statsd_ao/core/_convert.c), and the OTLP conversion's (statsd_ao/otlp/_wire.c).

Everything else is in pyproject.toml.  ``optional``: without a compiler the install still
succeeds and the pure-Python code runs instead (statsd_ao/core/hotpath.py says which).
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Werror=implicit-function-declaration"]

setup(
    ext_modules=[
        Extension(
            "statsd_ao.core._hotpath",
            sources=["statsd_ao/core/_hotpath.c", "statsd_ao/core/_gauges.c"],
            depends=["statsd_ao/core/_slots.h", "statsd_ao/core/_gauges.h"],
            extra_compile_args=FLAGS,
            optional=True,
        ),
        # No fused multiply-add: the sums and squares must round as Python's do.
        Extension(
            "statsd_ao.core._convert",
            sources=["statsd_ao/core/_convert.c"],
            depends=["statsd_ao/core/_slots.h"],
            extra_compile_args=[*FLAGS, "-ffp-contract=off"],
            optional=True,
        ),
        # The OTLP conversion's common cases, written as protobuf wire bytes.
        Extension(
            "statsd_ao.otlp._wire",
            sources=["statsd_ao/otlp/_wire.c"],
            depends=["statsd_ao/core/_slots.h"],
            extra_compile_args=[*FLAGS, "-ffp-contract=off"],
            optional=True,
        ),
    ]
)
