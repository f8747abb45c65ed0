# statsd-ao: StatsD/DogStatsD aggregation proxy for AppOptics.
# Configured only by environment variables (APPOPTICS_TOKEN, STATSD_AO_*; see README.md).
#
# The bases are pinned by digest (the tag is kept for the reader; the digest is what is
# pulled).  To move to newer ones, look up each tag's current digest, e.g.
#   docker buildx imagetools inspect python:3.11-slim-bookworm   (the "Digest:" line)
#   skopeo inspect --format '{{.Digest}}' docker://python:3.11-slim-bookworm
# and replace it below (deploy/README.md).  Both must stay the same Debian release and
# Python, so the C parts compiled in the first run in the second.  The test suite builds
# this file against local stand-ins by overriding the two arguments (tests/test_image.py).
ARG PYTHON_BUILD_IMAGE=python:3.11-bookworm@sha256:a8f8fbe1a0edc9e4dddafa64ba73f7e04be7be5ebc23f332362e779e0a2e4e52
ARG PYTHON_RUN_IMAGE=python:3.11-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3

# The full image has gcc for the hot path's C loop and the flush's C conversion.
FROM ${PYTHON_BUILD_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md LICENSE ./
COPY statsd_ao ./statsd_ao
RUN pip install --no-cache-dir --prefix=/install .

FROM ${PYTHON_RUN_IMAGE}
COPY --from=build /install /usr/local
# The C parts are optional to pip (a machine without a compiler still installs the pure
# Python code, at half the speed): here their absence fails the build instead.  Then the
# user and group 10001, and the spool directory they own.
RUN python -c "import statsd_ao.core._hotpath, statsd_ao.core._convert, statsd_ao.otlp._wire" \
    && groupadd --gid 10001 statsd \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin statsd \
    && install -d -m 0700 -o 10001 -g 10001 /var/spool/statsd-ao
USER 10001:10001
# Pending posts are kept here across restarts (docs/delivery.md).  Mount a volume on it to
# keep them across containers too; a new named volume takes the directory's owner.
# The HTTP endpoint (/health, /ready, /metrics, /status) on every address, so `-p 18125`
# and the kubelet's probes reach it; 18125 because 8080 is often the application's own in a
# pod's shared network namespace.  Shutdown: Docker's `docker stop` sends SIGTERM and kills
# after 10 s; 8 s of delivery leaves room for the final flush and closing the spool.  Give
# more with STATSD_AO_SHUTDOWN_TIMEOUT and `docker run --stop-timeout` together.
ENV STATSD_AO_SPOOL_DIR=/var/spool/statsd-ao \
    STATSD_AO_HTTP=0.0.0.0:18125 \
    STATSD_AO_SHUTDOWN_TIMEOUT=8
EXPOSE 8125/udp 18125/tcp
# No curl in the slim image: Python asks /health; with the endpoint turned off it passes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os,urllib.request as u; a=os.environ.get('STATSD_AO_HTTP',''); h,_,p=a.rpartition(':'); h={'':'127.0.0.1','0.0.0.0':'127.0.0.1','[::]':'[::1]'}.get(h,h); a in ('','off') or u.urlopen(f'http://{h}:{p}/health',timeout=4)"]
# Exec form: statsd-ao is PID 1 and receives SIGTERM itself, so a container stop flushes.
ENTRYPOINT ["statsd-ao"]
