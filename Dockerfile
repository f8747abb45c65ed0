# statsd-ao: StatsD/DogStatsD aggregation proxy for AppOptics.
# Configured only by environment variables (APPOPTICS_TOKEN, STATSD_AO_*; see README.md).
# The build stage has gcc (the full image) to compile the hot path's C loop; both stages
# are the same Debian release, so the compiled module runs in the slim one.
FROM python:3.11-bookworm AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY statsd_ao ./statsd_ao
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim-bookworm
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --no-create-home statsd \
    && install -d -m 0700 -o 10001 -g 10001 /var/spool/statsd-ao
USER 10001
# Pending posts are kept here across restarts (docs/delivery.md).  Mount a volume on it to
# keep them across containers too (the Kubernetes examples mount an emptyDir).
ENV STATSD_AO_SPOOL_DIR=/var/spool/statsd-ao
# The health endpoint, on loopback inside the container (Kubernetes manifests override it
# with 0.0.0.0:8080 because the kubelet probes through the pod IP).
ENV STATSD_AO_HTTP=127.0.0.1:8080
EXPOSE 8125/udp
# No curl in the slim image: Python asks /health; with the endpoint turned off it passes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os,urllib.request as u; a=os.environ.get('STATSD_AO_HTTP',''); h,_,p=a.rpartition(':'); h={'':'127.0.0.1','0.0.0.0':'127.0.0.1','[::]':'[::1]'}.get(h,h); a in ('','off') or u.urlopen(f'http://{h}:{p}/health',timeout=4)"]
# Exec form: statsd-ao is PID 1 and receives SIGTERM itself, so a container stop flushes.
ENTRYPOINT ["statsd-ao"]
