"""statsd-ao: a StatsD/DogStatsD aggregation proxy for SolarWinds Observability (OTLP), any OTLP
backend and the AppOptics API."""

from importlib import metadata


def _version() -> str:
    """The installed distribution's version: pyproject.toml's ``version`` is the one place it
    is written.  A source tree used without installing it has no metadata to read."""
    try:
        return metadata.version("statsd-ao")
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _version()
