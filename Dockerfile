# statsd-ao: StatsD/DogStatsD aggregation proxy for AppOptics.
# Configure with environment variables (APPOPTICS_TOKEN, STATSD_AO_*; see README.md).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY statsd_ao ./statsd_ao
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --no-create-home statsd
USER 10001
EXPOSE 8125/udp
# Exec form: statsd-ao is PID 1 and receives SIGTERM itself, so a container stop flushes.
ENTRYPOINT ["statsd-ao"]
