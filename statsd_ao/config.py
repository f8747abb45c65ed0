"""The one frozen `Config`, built once at the edge: flags > environment > file > defaults.

Every setting has a flag, an environment variable and a key in the optional TOML file
(the flag name without ``--``, dashes as underscores).  A bad value raises `ConfigError`
naming the setting; the token never appears in an error or in `Config.describe`.
"""

from __future__ import annotations

import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statsd_ao.annotations import DEFAULT_STREAM, stream_name
from statsd_ao.batching import DEFAULT_BATCH, MAX_BATCH
from statsd_ao.cardinality import DEFAULT_LIMIT, DEFAULT_TOTAL_LIMIT
from statsd_ao.outbox import MAX_PENDING
from statsd_ao.retry import MAX_AGE, MAX_ATTEMPTS
from statsd_ao.sanitize import MAX_TAGS

DEFAULT_API_URL = "https://api.appoptics.com"
# The port every StatsD client sends to by default.
DEFAULT_UDP = "0.0.0.0:8125"
# AppOptics' own examples and statsd's default interval: fine resolution, few posts.
DEFAULT_FLUSH_INTERVAL = 10
# etsy statsd's default percentThreshold, so timers look the same after a migration.
DEFAULT_PERCENTILES = (90.0,)
# Posts in flight at once: large flushes go out in parallel without flooding the API.
DEFAULT_CONCURRENCY = 4
# Per post; a post that takes longer is abandoned (and retried where that is safe).
DEFAULT_REQUEST_TIMEOUT = 10.0
# Kubernetes sends SIGKILL 30 s after SIGTERM by default: finish well before that.
DEFAULT_SHUTDOWN_TIMEOUT = 20.0
# A StatsD line longer than the largest UDP datagram is garbage, not a metric.
DEFAULT_TCP_MAX_LINE = 65536
# Clients keep TCP connections open between sends; one silent for 10 minutes is gone.
DEFAULT_TCP_IDLE_TIMEOUT = 600.0
# Requested receive buffer: ~8 MiB absorbs ~0.1 s of a 1 M lines/s burst.  The kernel caps
# it at net.core.rmem_max; the size granted is logged.
DEFAULT_RCVBUF = 8 * 1024 * 1024


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Config:
    api_url: str = DEFAULT_API_URL
    token: str | None = field(default=None, repr=False)
    udp: Address | None = field(default_factory=lambda: parse_address(DEFAULT_UDP))
    tcp: Address | None = None
    unix: str | None = None
    tcp_max_line: int = DEFAULT_TCP_MAX_LINE
    tcp_idle_timeout: float = DEFAULT_TCP_IDLE_TIMEOUT
    container_tag: str | None = None
    annotation_stream: str = DEFAULT_STREAM
    http: Address | None = None
    max_pending: int = MAX_PENDING
    max_age: float = MAX_AGE
    max_attempts: int = MAX_ATTEMPTS
    resend_unconfirmed: bool = True
    self_metrics: bool = True
    log_format: str = "text"
    # etsy statsd / statsd-appoptics-backend compatibility (see migration.py)
    percentile_style: str = "p"
    always_suffix_percentile: bool = False
    send_idle: tuple[str, ...] = ()
    admin: Address | None = None
    health_status: str = "up"
    host_tag: bool = True
    global_prefix: str = ""
    key_name_sanitize: bool = False
    include_metrics: tuple[str, ...] = ()
    exclude_metrics: tuple[str, ...] = ()
    source_regex: str | None = None
    flush_interval: int = DEFAULT_FLUSH_INTERVAL
    tags: Mapping[str, str] = field(default_factory=dict)
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    batch_size: int = DEFAULT_BATCH
    dry_run: bool = False
    concurrency: int = DEFAULT_CONCURRENCY
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    rcvbuf: int = DEFAULT_RCVBUF
    cardinality_limit: int = DEFAULT_LIMIT
    cardinality_total_limit: int = DEFAULT_TOTAL_LIMIT

    @property
    def posting(self) -> bool:
        """True when measurements go to the API (a token, and no --dry-run)."""
        return self.token is not None and not self.dry_run

    @property
    def global_tags(self) -> dict[str, str]:
        """The configured tags, with ``host`` = this machine's name unless set or turned off."""
        host = {"host": socket.gethostname()} if self.host_tag else {}
        return {**host, **self.tags}

    def describe(self) -> str:
        """One line for the start-up log; the token is redacted."""
        token = "<set>" if self.token else "<none>"
        tags = ",".join(f"{k}={v}" for k, v in self.global_tags.items())
        percentiles = ",".join(f"{p:g}" for p in self.percentiles)
        return (
            f"api_url={self.api_url} token={token} udp={self.udp or 'off'} "
            f"tcp={self.tcp or 'off'} unix={self.unix or 'off'} "
            f"container_tag={self.container_tag or 'off'} http={self.http or 'off'} "
            f"annotation_stream={self.annotation_stream} "
            f"percentile_style={self.percentile_style} "
            f"send_idle={','.join(self.send_idle) or 'none'} "
            f"admin={self.admin or 'off'} "
            f"self_metrics={'on' if self.self_metrics else 'off'} log_format={self.log_format} "
            f"flush_interval={self.flush_interval}s tags={tags} percentiles={percentiles} "
            f"batch_size={self.batch_size} concurrency={self.concurrency} "
            f"request_timeout={self.request_timeout:g}s "
            f"shutdown_timeout={self.shutdown_timeout:g}s rcvbuf={self.rcvbuf} "
            f"max_pending={self.max_pending} max_age={self.max_age:g}s "
            f"max_attempts={self.max_attempts} resend_unconfirmed={self.resend_unconfirmed} "
            f"cardinality_limit={self.cardinality_limit} "
            f"cardinality_total_limit={self.cardinality_total_limit} "
            f"dry_run={not self.posting}"
        )


def parse_address(text: str) -> Address:
    """``host:port`` or ``[v6]:port``."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]:")
        if not bracket:
            raise ValueError(f"expected [IPv6]:PORT, got {text!r}")
    else:
        host, colon, port = text.rpartition(":")
        if not colon or ":" in host:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
    number = int(port) if port.isdigit() else -1
    if not host or not 0 <= number <= 65535:
        raise ValueError(f"expected HOST:PORT with a port 0-65535, got {text!r}")
    return Address(host, number)


def parse_listen(text: str) -> Address | None:
    """A listen address, or None for ``off`` / an empty value (that listener is not opened)."""
    if text.strip().lower() in ("", "off", "none", "false"):
        return None
    return parse_address(text)


def parse_optional(text: str) -> str | None:
    """A string setting that ``off`` or an empty value turns off."""
    stripped = text.strip()
    return None if stripped.lower() in ("", "off", "none") else stripped


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


SETTINGS: tuple[Setting, ...] = (
    Setting("api_url", "--api-url", "STATSD_AO_API_URL", str, "AppOptics API base URL"),
    Setting("token", "--token", "APPOPTICS_TOKEN", str, "AppOptics API token (else: dry run)"),
    Setting("udp", "--udp", "STATSD_AO_UDP", parse_listen, "UDP listen HOST:PORT, or off"),
    Setting("tcp", "--tcp", "STATSD_AO_TCP", parse_listen, "TCP listen HOST:PORT (default off)"),
    Setting("unix", "--unix", "STATSD_AO_UNIX", parse_optional, "Unix datagram socket PATH"),
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
        "HTTP HOST:PORT for /health /ready /metrics /status (default off)",
    ),
    Setting(
        "self_metrics",
        "--self-metrics",
        "STATSD_AO_SELF_METRICS",
        _boolean,
        "post statsd_ao.* self-metrics (on/off, default on)",
    ),
    Setting("log_format", "--log-format", "STATSD_AO_LOG_FORMAT", _log_format, "text or json logs"),
    Setting(
        "annotation_stream",
        "--annotation-stream",
        "STATSD_AO_ANNOTATION_STREAM",
        stream_name,
        "AppOptics annotation stream for DogStatsD events",
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
        "include_metrics",
        "--include-metric",
        "STATSD_AO_INCLUDE_METRICS",
        _regexes,
        "only metrics whose name matches one of these regexes",
        repeat=True,
    ),
    Setting(
        "exclude_metrics",
        "--exclude-metric",
        "STATSD_AO_EXCLUDE_METRICS",
        _regexes,
        "drop metrics whose name matches one of these regexes",
        repeat=True,
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
        "tag name for DogStatsD's |c:<container id> field (default: ignored)",
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


def build(
    flags: Mapping[str, str | list[str] | bool | None],
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    base: Mapping[str, Any] | None = None,
) -> Config:
    """The effective Config.  ``flags`` maps field names to raw flag values (None: unset);
    ``base`` is a layer under the TOML file (an etsy statsd configuration, translated)."""
    environ = os.environ if environ is None else environ
    from_file = {**(base or {}), **(_read_file(config_file) if config_file else {})}
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw, source = _pick(setting, flags, environ, from_file)
        if raw is None:
            continue
        try:
            values[setting.name] = _convert(setting, raw)
        except ValueError as error:
            raise ConfigError(f"{source}: {_safe(setting, error)}") from None
    config = Config(**values)
    if len(config.global_tags) > MAX_TAGS:
        raise ConfigError(f"--tag: at most {MAX_TAGS} global tags (host included)")
    if config.max_pending < config.batch_size:
        raise ConfigError("--max-pending: must hold at least one batch (--batch-size)")
    if not (config.udp or config.tcp or config.unix):
        raise ConfigError("--udp, --tcp, --unix: at least one listener must be on")
    return config


def _pick(
    setting: Setting,
    flags: Mapping[str, str | list[str] | bool | None],
    environ: Mapping[str, str],
    from_file: Mapping[str, Any],
) -> tuple[Any, str]:
    flag = flags.get(setting.name)
    if flag not in (None, [], False):
        return flag, setting.flag
    if setting.env in environ:
        return environ[setting.env], f"{setting.env} (environment)"
    key = setting.name
    if key in from_file:
        return from_file[key], f"{key} (configuration file)"
    return None, ""


def _convert(setting: Setting, raw: Any) -> Any:
    """Flags and the environment give strings (tags: a list); TOML gives native values."""
    if isinstance(raw, bool):
        raw = "true" if raw else "false"
    elif isinstance(raw, list | tuple):
        raw = ("\n" if setting.parse in (_regexes, _regex) else ",").join(map(str, raw))
    elif isinstance(raw, dict):
        raw = ",".join(f"{key}={value}" for key, value in raw.items())
    return setting.parse(str(raw))


def _safe(setting: Setting, error: ValueError) -> str:
    return "invalid value (not shown)" if setting.name == "token" else str(error)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"--config: cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"--config: {path} is not valid TOML: {error}") from None
    known = {s.name for s in SETTINGS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"--config: {path}: unknown settings {', '.join(unknown)}")
    return data
