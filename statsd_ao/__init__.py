"""statsd-ao: a StatsD/DogStatsD aggregation proxy for AppOptics."""

__version__ = "0.1.0"
