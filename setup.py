"""The C loop of the hot path (statsd_ao/_hotpath.c), built when a compiler is at hand.

Everything else is in pyproject.toml.  ``optional``: without a compiler the install still
succeeds and the aggregator runs its pure-Python loop (statsd_ao/hotpath.py says which).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "statsd_ao._hotpath",
            sources=["statsd_ao/_hotpath.c"],
            extra_compile_args=["-O2", "-Wall", "-Werror=implicit-function-declaration"],
            optional=True,
        )
    ]
)
