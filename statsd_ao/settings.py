"""Every setting statsd-ao has: its flag, environment variable, file key and parser.

`SETTINGS` is the single table the CLI, the environment and the TOML file are read from
(`statsd_ao.config.build` applies it).  Parsers raise ``ValueError`` with a message that
`config.build` prefixes with the setting's name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from statsd_ao.core.annotations import stream_name
from statsd_ao.core.batching import MAX_BATCH
from statsd_ao.io.address import Address, parse_address
from statsd_ao.io.api_server import parse_tokens
from statsd_ao.io.fleet_forward import parse_targets
from statsd_ao.io.pacing import MAX_PAUSE as MAX_READ_PAUSE
from statsd_ao.io.pacing import TICK as READ_PAUSE_TICK
from statsd_ao.io.spoolfile import MIN_MAX_BYTES
from statsd_ao.otlp.dialect import SWO_REGIONS


def parse_listen(text: str) -> Address | None:
    """A listen address, or None for ``off`` / an empty value (that listener is not opened)."""
    if text.strip().lower() in ("", "off", "none", "false"):
        return None
    return parse_address(text)


def parse_optional(text: str) -> str | None:
    """A string setting that ``off`` or an empty value turns off."""
    stripped = text.strip()
    return None if stripped.lower() in ("", "off", "none") else stripped


def parse_api_url(text: str) -> str:
    """``http(s)://host[:port]``: anything else would fail every post at run time."""
    parsed = urlsplit(text.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"expected https://HOST (or http:// for a test server), got {text!r}")
    return text.strip().rstrip("/")


def parse_otlp_url(text: str) -> str | None:
    """The full OTLP/HTTP metrics URL (``https://host[:port]/v1/metrics``); off / empty: none."""
    stripped = text.strip()
    if stripped.lower() in ("", "off", "none"):
        return None
    parsed = urlsplit(stripped)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"expected https://HOST[:PORT]/v1/metrics, got {text!r}")
    return stripped


def parse_swo_region(text: str) -> str | None:
    stripped = text.strip().lower()
    if stripped in ("", "off", "none"):
        return None
    if stripped not in SWO_REGIONS:
        raise ValueError(f"expected one of {', '.join(SWO_REGIONS)}, got {text!r}")
    return stripped


def parse_headers(text: str) -> dict[str, str]:
    """``NAME=VALUE`` items, one per line (flags repeat; the environment separates by \\n).
    Names are HTTP tokens; values must not break a header line."""
    headers: dict[str, str] = {}
    for item in filter(None, (line.strip() for line in text.split("\n"))):
        name, equals, value = item.partition("=")
        name = name.strip()
        if not equals or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise ValueError("expected NAME=VALUE with an HTTP header name (value not shown)")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"header {name}: the value holds a line break")
        headers[name] = value.strip()
    return headers


def parse_token(text: str) -> str | None:
    """Surrounding whitespace (a Secret made with ``echo``) is not part of a token; an empty
    token (a missing Secret key) means no token: a dry run, said so at start."""
    return text.strip() or None


def parse_mode(text: str) -> int:
    """File permissions in octal: ``0660``, ``666``, ``0o600``."""
    digits = text.strip().lower().removeprefix("0o")
    if not re.fullmatch(r"[0-7]{3,4}", digits):
        raise ValueError(f"expected permissions in octal such as 0660, got {text!r}")
    return int(digits, 8)


def parse_tags(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` items (each may itself be a comma-separated list)."""
    tags: dict[str, str] = {}
    for item in items:
        for pair in item.split(","):
            key, equals, value = pair.strip().partition("=")
            if not equals or not key.strip() or not value.strip():
                raise ValueError(f"expected KEY=VALUE, got {pair.strip()!r}")
            tags[key.strip()] = value.strip()
    return tags


def parse_percentiles(text: str) -> tuple[float, ...]:
    """``90,95,99.9``: each above 0 and at most 100; an empty string means none."""
    out: list[float] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        value = float(part)
        if not 0 < value <= 100:
            raise ValueError(f"percentile must be above 0 and at most 100, got {part!r}")
        out.append(value)
    return tuple(sorted(set(out)))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a positive number, got {text!r}")
    return value


def _read_pause(text: str) -> float:
    value = float(text)
    ticks = value / READ_PAUSE_TICK
    ranged = value == 0 or READ_PAUSE_TICK <= value <= MAX_READ_PAUSE  # (False for nan)
    if not ranged or abs(ticks - round(ticks)) > 1e-9:
        raise ValueError(
            f"must be 0 or {READ_PAUSE_TICK:g} to {MAX_READ_PAUSE:g} seconds in whole "
            f"milliseconds, got {text!r}"
        )
    return value


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_bytes(text: str) -> int:
    """A size: ``536870912``, ``512M``, ``512MiB``, ``2G`` (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", text.lower())
    if match is None:
        raise ValueError(f"expected a size such as 512M or 2G, got {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _seconds_or_zero(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"must be a number of seconds, 0 or more, got {text!r}")
    return value


def _forward(text: str) -> tuple[str, ...] | None:
    """``--forward``: the targets as written (checked), or None for ``off`` / empty."""
    if parse_optional(text) is None:
        return None
    parse_targets(text)
    return tuple(filter(None, (t.strip() for t in text.split(","))))


def _spool_bytes(text: str) -> int:
    value = parse_bytes(text)
    if value < MIN_MAX_BYTES:
        raise ValueError(f"must be at least {MIN_MAX_BYTES >> 20}M, got {text!r}")
    return value


def _spool_dir(text: str) -> str | None:
    """A directory path (created at start when missing); a path that names a file, or lies
    under one, can never become the spool: a configuration error, not a failure at start."""
    path = parse_optional(text)
    if path is None:
        return None
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the nearest part of the path that exists
    if existing.exists() and not existing.is_dir():
        where = "is" if str(existing) == path else f"is under {existing}, which is"
        raise ValueError(f"{path!r} {where} not a directory")
    return path


def _cardinality(text: str) -> int:
    value = int(text)
    if value < 2:
        raise ValueError(f"must be at least 2 (one tag set and the overflow series), got {value}")
    return value


def _batch_size(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_BATCH:
        raise ValueError(f"must be at most {MAX_BATCH} (the API's limit per post), got {value}")
    return value


IDLE_KINDS = ("counters", "gauges", "sets")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return value

    return parse


def _idle_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip().lower() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in IDLE_KINDS]
    if unknown:
        raise ValueError(f"expected some of {', '.join(IDLE_KINDS)}, got {', '.join(unknown)}")
    return kinds


def _regexes(text: str) -> tuple[str, ...]:
    """Regular expressions, one per line (flags repeat; the environment separates by \\n)."""
    patterns = tuple(line for line in text.split("\n") if line.strip())
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"bad regular expression {pattern!r}: {error}") from None
    return patterns


def _regex(text: str) -> str | None:
    patterns = _regexes(text)
    return patterns[0] if patterns else None


def _log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in ("text", "json"):
        raise ValueError(f"expected text or json, got {text!r}")
    return value


def _nonempty(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(text: str) -> str:
    value = text.strip().upper()
    if value not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return value


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its Config field, flag, environment variable and parser."""

    name: str
    flag: str
    env: str
    parse: Callable[[str], Any]
    help: str
    repeat: bool = False  # the flag may be given several times (a list)
    joiner: str = ","  # how a list (repeated flags, a TOML array) becomes the parsed text
    secret: bool = False  # never printed: shown as <set> or <none>, errors without the value


# Settings in seconds: shown with an ``s`` in the start line and --check-config.
SECONDS = frozenset(
    {
        "flush_interval",
        "request_timeout",
        "shutdown_timeout",
        "read_pause",
        "max_age",
        "tcp_idle_timeout",
        "fleet_grace",
    }
)

SETTINGS: tuple[Setting, ...] = (
    Setting("api_url", "--api-url", "STATSD_AO_API_URL", parse_api_url, "AppOptics API base URL"),
    Setting(
        "otlp_url",
        "--otlp-url",
        "STATSD_AO_OTLP_URL",
        parse_otlp_url,
        "OTLP/HTTP metrics URL: deliver to SolarWinds Observability or any OTLP backend",
    ),
    Setting(
        "swo_region",
        "--swo-region",
        "STATSD_AO_SWO_REGION",
        parse_swo_region,
        "SolarWinds Observability data centre: sets --otlp-url to its OTLP endpoint",
    ),
    Setting(
        "otlp_token",
        "--otlp-token",
        "STATSD_AO_OTLP_TOKEN",
        parse_token,
        "sent as Authorization: Bearer (SWO: an ingestion API token)",
        secret=True,
    ),
    Setting(
        "otlp_headers",
        "--otlp-header",
        "STATSD_AO_OTLP_HEADERS",
        parse_headers,
        "an HTTP header for every OTLP request (repeatable; values are not shown)",
        repeat=True,
        joiner="\n",
        secret=True,
    ),
    Setting(
        "otlp_service_name",
        "--otlp-service-name",
        "STATSD_AO_OTLP_SERVICE_NAME",
        _nonempty,
        "the service.name resource attribute of every OTLP point",
    ),
    Setting(
        "otlp_gzip",
        "--otlp-gzip",
        "STATSD_AO_OTLP_GZIP",
        _boolean,
        "gzip each OTLP request",
    ),
    Setting(
        "token",
        "--token",
        "APPOPTICS_TOKEN",
        parse_token,
        "AppOptics API token (else: dry run)",
        secret=True,
    ),
    Setting("udp", "--udp", "STATSD_AO_UDP", parse_listen, "UDP listen HOST:PORT, or off"),
    Setting("tcp", "--tcp", "STATSD_AO_TCP", parse_listen, "TCP listen HOST:PORT, or off"),
    Setting("unix", "--unix", "STATSD_AO_UNIX", parse_optional, "Unix datagram socket PATH"),
    Setting(
        "unix_mode",
        "--unix-mode",
        "STATSD_AO_UNIX_MODE",
        parse_mode,
        "permissions of the --unix socket, octal (0660: owner and group may send)",
    ),
    Setting(
        "tcp_max_line",
        "--tcp-max-line",
        "STATSD_AO_TCP_MAX_LINE",
        _positive_int,
        "longest TCP line in bytes; longer ones are dropped",
    ),
    Setting(
        "tcp_idle_timeout",
        "--tcp-idle-timeout",
        "STATSD_AO_TCP_IDLE_TIMEOUT",
        _positive_float,
        "seconds before an idle TCP connection is closed",
    ),
    Setting(
        "max_pending",
        "--max-pending",
        "STATSD_AO_MAX_PENDING",
        _positive_int,
        "measurements kept for delivery while the API is down (oldest dropped past it)",
    ),
    Setting(
        "spool_dir",
        "--spool-dir",
        "STATSD_AO_SPOOL_DIR",
        _spool_dir,
        "directory that keeps pending posts across restarts (off: memory only)",
    ),
    Setting(
        "spool_max_bytes",
        "--spool-max-bytes",
        "STATSD_AO_SPOOL_MAX_BYTES",
        _spool_bytes,
        "bytes the spool may hold; past it the oldest posts are dropped",
    ),
    Setting(
        "max_age",
        "--max-age",
        "STATSD_AO_MAX_AGE",
        _positive_float,
        "seconds a batch may wait for delivery before it is dropped as too old",
    ),
    Setting(
        "max_attempts",
        "--max-attempts",
        "STATSD_AO_MAX_ATTEMPTS",
        _positive_int,
        "posts of one batch before it is given up",
    ),
    Setting(
        "resend_unconfirmed",
        "--resend-unconfirmed",
        "STATSD_AO_RESEND_UNCONFIRMED",
        _boolean,
        "re-send a post that got no answer (true: no loss, rare duplicates; false: the reverse)",
    ),
    Setting(
        "http",
        "--http",
        "STATSD_AO_HTTP",
        parse_listen,
        "HTTP HOST:PORT for /health /ready /metrics /status",
    ),
    Setting(
        "appoptics_listen",
        "--appoptics-listen",
        "STATSD_AO_APPOPTICS_LISTEN",
        parse_listen,
        "serve the AppOptics API's POST /v1/measurements on HOST:PORT (default off)",
    ),
    Setting(
        "intake_tokens",
        "--intake-token",
        "STATSD_AO_INTAKE_TOKENS",
        parse_tokens,
        "an API token the intake accepts (repeatable; comma-separated in the environment)",
        repeat=True,
        secret=True,
    ),
    Setting(
        "intake_max_body",
        "--intake-max-body",
        "STATSD_AO_INTAKE_MAX_BODY",
        parse_bytes,
        "largest request body the intake reads (413 beyond it)",
    ),
    Setting(
        "intake_max_connections",
        "--intake-max-connections",
        "STATSD_AO_INTAKE_MAX_CONNECTIONS",
        _positive_int,
        "intake connections open at once (503 beyond)",
    ),
    Setting(
        "intake_rate",
        "--intake-rate",
        "STATSD_AO_INTAKE_RATE",
        _positive_float,
        "requests per second per client address (429 beyond, with rate-limit headers)",
    ),
    Setting(
        "intake_burst",
        "--intake-burst",
        "STATSD_AO_INTAKE_BURST",
        _positive_int,
        "requests a client may send at once above --intake-rate",
    ),
    Setting(
        "forward",
        "--forward",
        "STATSD_AO_FORWARD",
        _forward,
        "send each interval to the fleet's global tier (HOST:PORT,dns:NAME:PORT,...) "
        "instead of to a backend",
    ),
    Setting(
        "fleet_listen",
        "--fleet-listen",
        "STATSD_AO_FLEET_LISTEN",
        parse_listen,
        "take forwarded parts from the fleet's locals on HOST:PORT (a global; default off)",
    ),
    Setting(
        "fleet_token",
        "--fleet-token",
        "STATSD_AO_FLEET_TOKEN",
        parse_token,
        "the secret shared by the fleet's locals and globals",
        secret=True,
    ),
    Setting(
        "fleet_grace",
        "--fleet-grace",
        "STATSD_AO_FLEET_GRACE",
        _seconds_or_zero,
        "seconds a global waits after an interval ends for its forwarded parts",
    ),
    Setting(
        "fleet_max_body",
        "--fleet-max-body",
        "STATSD_AO_FLEET_MAX_BODY",
        parse_bytes,
        "largest forwarded part a global reads, compressed (413 beyond it)",
    ),
    Setting(
        "self_metrics",
        "--self-metrics",
        "STATSD_AO_SELF_METRICS",
        _boolean,
        "post statsd_ao.* self-metrics",
    ),
    Setting("log_format", "--log-format", "STATSD_AO_LOG_FORMAT", _log_format, "text or json logs"),
    Setting(
        "log_level",
        "--log-level",
        "STATSD_AO_LOG_LEVEL",
        _log_level,
        "DEBUG, INFO, WARNING or ERROR",
    ),
    Setting(
        "annotation_stream",
        "--annotation-stream",
        "STATSD_AO_ANNOTATION_STREAM",
        stream_name,
        "AppOptics annotation stream for DogStatsD events",
    ),
    Setting(
        "workers",
        "--workers",
        "STATSD_AO_WORKERS",
        _positive_int,
        "UDP receiving processes on one port (SO_REUSEPORT), merged before posting",
    ),
    Setting(
        "percentile_style",
        "--percentile-style",
        "STATSD_AO_PERCENTILE_STYLE",
        _choice("p", "backend"),
        "p: name.p90 values; backend: name.90 summaries as statsd-appoptics-backend posted",
    ),
    Setting(
        "always_suffix_percentile",
        "--always-suffix-percentile",
        "STATSD_AO_ALWAYS_SUFFIX_PERCENTILE",
        _boolean,
        "backend style: post a 100th percentile as name.100 too",
    ),
    Setting(
        "send_idle",
        "--send-idle",
        "STATSD_AO_SEND_IDLE",
        _idle_kinds,
        "keep sending idle series (etsy): counters (as 0), gauges (last value), sets (as 0)",
    ),
    Setting("admin", "--admin", "STATSD_AO_ADMIN", parse_listen, "etsy management interface TCP"),
    Setting(
        "health_status",
        "--health-status",
        "STATSD_AO_HEALTH_STATUS",
        _choice("up", "down"),
        "health answered by the management interface at start",
    ),
    Setting("host_tag", "--host-tag", "STATSD_AO_HOST_TAG", _boolean, "add host=<hostname>"),
    Setting(
        "global_prefix",
        "--global-prefix",
        "STATSD_AO_GLOBAL_PREFIX",
        lambda s: s.strip().strip("."),
        "prefix for every metric name (joined with '.')",
    ),
    Setting(
        "key_name_sanitize",
        "--key-name-sanitize",
        "STATSD_AO_KEY_NAME_SANITIZE",
        _boolean,
        "etsy's name rules: spaces to _, / to -, other characters removed",
    ),
    Setting(
        "mapping",
        "--mapping",
        "STATSD_AO_MAPPING",
        parse_optional,
        "rules FILE (TOML, or YAML by its suffix) turning dotted names into names and tags",
    ),
    Setting(
        "include_metrics",
        "--include-metric",
        "STATSD_AO_INCLUDE_METRICS",
        _regexes,
        "only metrics whose name matches one of these regexes",
        repeat=True,
        joiner="\n",
    ),
    Setting(
        "exclude_metrics",
        "--exclude-metric",
        "STATSD_AO_EXCLUDE_METRICS",
        _regexes,
        "drop metrics whose name matches one of these regexes",
        repeat=True,
        joiner="\n",
    ),
    Setting(
        "source_regex",
        "--source-regex",
        "STATSD_AO_SOURCE_REGEX",
        _regex,
        "group 1 of this regex in a name becomes tag source; the match leaves the name",
    ),
    Setting(
        "container_tag",
        "--container-tag",
        "STATSD_AO_CONTAINER_TAG",
        parse_optional,
        "tag name for DogStatsD's |c:<container id> field (off: ignored)",
    ),
    Setting(
        "flush_interval",
        "--flush-interval",
        "STATSD_AO_FLUSH_INTERVAL",
        _positive_int,
        "seconds between flushes",
    ),
    Setting(
        "tags", "--tag", "STATSD_AO_TAGS", lambda s: parse_tags([s]), "global tag K=V", repeat=True
    ),
    Setting(
        "percentiles",
        "--percentiles",
        "STATSD_AO_PERCENTILES",
        parse_percentiles,
        "timer percentiles, e.g. 90,95,99.9",
    ),
    Setting("batch_size", "--batch-size", "STATSD_AO_BATCH_SIZE", _batch_size, "per post"),
    Setting("dry_run", "--dry-run", "STATSD_AO_DRY_RUN", _boolean, "print, do not post"),
    Setting(
        "concurrency", "--concurrency", "STATSD_AO_CONCURRENCY", _positive_int, "posts in flight"
    ),
    Setting(
        "request_timeout",
        "--request-timeout",
        "STATSD_AO_REQUEST_TIMEOUT",
        _positive_float,
        "seconds per post",
    ),
    Setting(
        "shutdown_timeout",
        "--shutdown-timeout",
        "STATSD_AO_SHUTDOWN_TIMEOUT",
        _positive_float,
        "seconds to deliver what is pending at shutdown",
    ),
    Setting("rcvbuf", "--rcvbuf", "STATSD_AO_RCVBUF", _positive_int, "socket receive buffer"),
    Setting(
        "read_pause",
        "--read-pause",
        "STATSD_AO_READ_PAUSE",
        _read_pause,
        "seconds a UDP listener leaves a nearly empty socket alone (0: never)",
    ),
    Setting(
        "cardinality_limit",
        "--cardinality-limit",
        "STATSD_AO_CARDINALITY_LIMIT",
        _cardinality,
        "tag sets per metric per hour (overflow series included)",
    ),
    Setting(
        "cardinality_total_limit",
        "--cardinality-total-limit",
        "STATSD_AO_CARDINALITY_TOTAL_LIMIT",
        _positive_int,
        "tag sets per hour across all metrics",
    ),
)


# --help: each setting's group and the placeholder that says what goes there.  Booleans are
# written one way: ``true|false`` (on/off, yes/no and 1/0 are taken too).
BOOLEAN = "true|false"
GROUPS = ("intake", "aggregation", "delivery", "spool", "naming", "fleet", "operations")
HELP_LAYOUT: dict[str, tuple[str, str]] = {
    "udp": ("intake", "HOST:PORT|off"),
    "tcp": ("intake", "HOST:PORT|off"),
    "unix": ("intake", "PATH"),
    "unix_mode": ("intake", "OCTAL"),
    "tcp_max_line": ("intake", "BYTES"),
    "tcp_idle_timeout": ("intake", "SECONDS"),
    "rcvbuf": ("intake", "BYTES"),
    "read_pause": ("intake", "SECONDS"),
    "workers": ("intake", "N"),
    "container_tag": ("intake", "TAG_NAME"),
    "flush_interval": ("aggregation", "SECONDS"),
    "percentiles": ("aggregation", "P,P,..."),
    "percentile_style": ("aggregation", "p|backend"),
    "always_suffix_percentile": ("aggregation", BOOLEAN),
    "send_idle": ("aggregation", "counters,gauges,sets"),
    "cardinality_limit": ("aggregation", "TAG_SETS"),
    "cardinality_total_limit": ("aggregation", "TAG_SETS"),
    "api_url": ("delivery", "URL"),
    "otlp_url": ("delivery", "URL"),
    "swo_region": ("delivery", "|".join(SWO_REGIONS)),
    "otlp_token": ("delivery", "TOKEN"),
    "otlp_headers": ("delivery", "NAME=VALUE"),
    "otlp_service_name": ("delivery", "NAME"),
    "otlp_gzip": ("delivery", BOOLEAN),
    "token": ("delivery", "TOKEN"),
    "dry_run": ("delivery", ""),
    "batch_size": ("delivery", "MEASUREMENTS"),
    "concurrency": ("delivery", "POSTS"),
    "request_timeout": ("delivery", "SECONDS"),
    "max_pending": ("delivery", "MEASUREMENTS"),
    "max_age": ("delivery", "SECONDS"),
    "max_attempts": ("delivery", "N"),
    "resend_unconfirmed": ("delivery", BOOLEAN),
    "annotation_stream": ("delivery", "STREAM"),
    "shutdown_timeout": ("delivery", "SECONDS"),
    "spool_dir": ("spool", "DIR"),
    "spool_max_bytes": ("spool", "SIZE"),
    "tags": ("naming", "KEY=VALUE"),
    "host_tag": ("naming", BOOLEAN),
    "global_prefix": ("naming", "PREFIX"),
    "key_name_sanitize": ("naming", BOOLEAN),
    "mapping": ("naming", "FILE"),
    "include_metrics": ("naming", "REGEX"),
    "exclude_metrics": ("naming", "REGEX"),
    "source_regex": ("naming", "REGEX"),
    "http": ("operations", "HOST:PORT"),
    "appoptics_listen": ("intake", "HOST:PORT"),
    "intake_tokens": ("intake", "TOKEN"),
    "intake_max_body": ("intake", "SIZE"),
    "intake_max_connections": ("intake", "N"),
    "intake_rate": ("intake", "PER_SECOND"),
    "intake_burst": ("intake", "REQUESTS"),
    "forward": ("fleet", "TARGETS"),
    "fleet_listen": ("fleet", "HOST:PORT"),
    "fleet_token": ("fleet", "TOKEN"),
    "fleet_grace": ("fleet", "SECONDS"),
    "fleet_max_body": ("fleet", "SIZE"),
    "admin": ("operations", "HOST:PORT"),
    "health_status": ("operations", "up|down"),
    "self_metrics": ("operations", BOOLEAN),
    "log_format": ("operations", "text|json"),
    "log_level": ("operations", "LEVEL"),
}
