"""The one frozen `Config`, built once at the edge: flags > environment > file > defaults.

Every setting (the table is `statsd_ao.settings.SETTINGS`) has a flag, an environment
variable and a key in the optional TOML file (the flag name without ``--``, dashes as
underscores).  A bad value raises `ConfigError`
naming the setting; the token never appears in an error or in `Config.describe`.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statsd_ao.core.annotations import DEFAULT_STREAM
from statsd_ao.core.batching import DEFAULT_BATCH
from statsd_ao.core.cardinality import DEFAULT_LIMIT, DEFAULT_TOTAL_LIMIT
from statsd_ao.core.outbox import MAX_PENDING
from statsd_ao.core.retry import MAX_AGE, MAX_ATTEMPTS
from statsd_ao.core.sanitize import MAX_TAGS, fit_tag
from statsd_ao.io.address import Address, parse_address
from statsd_ao.io.pacing import DEFAULT_PAUSE
from statsd_ao.io.spoolfile import DEFAULT_MAX_BYTES as DEFAULT_SPOOL_BYTES
from statsd_ao.settings import SETTINGS, Setting

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
    spool_dir: str | None = None
    spool_max_bytes: int = DEFAULT_SPOOL_BYTES
    max_age: float = MAX_AGE
    max_attempts: int = MAX_ATTEMPTS
    resend_unconfirmed: bool = True
    # None: on when posting, off in a dry run (where they would bury the user's own metrics
    # under a dozen lines per flush); True/False when set.
    self_metrics: bool | None = None
    log_format: str = "text"
    workers: int = 1
    # etsy statsd / statsd-appoptics-backend compatibility (see migration.py)
    percentile_style: str = "p"
    always_suffix_percentile: bool = False
    send_idle: tuple[str, ...] = ()
    admin: Address | None = None
    health_status: str = "up"
    host_tag: bool = True
    global_prefix: str = ""
    key_name_sanitize: bool = False
    mapping: str | None = None  # the rules file's path (statsd_ao.core.mapping)
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
    read_pause: float = DEFAULT_PAUSE
    cardinality_limit: int = DEFAULT_LIMIT
    cardinality_total_limit: int = DEFAULT_TOTAL_LIMIT

    @property
    def posting(self) -> bool:
        """True when measurements go to the API (a token, and no --dry-run)."""
        return self.token is not None and not self.dry_run

    @property
    def posts_self_metrics(self) -> bool:
        """The ``statsd_ao.*`` self-metrics go out with each flush."""
        return self.posting if self.self_metrics is None else self.self_metrics

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
            f"admin={self.admin or 'off'} mapping={self.mapping or 'off'} "
            f"self_metrics={'on' if self.posts_self_metrics else 'off'} "
            f"log_format={self.log_format} "
            f"flush_interval={self.flush_interval}s tags={tags} percentiles={percentiles} "
            f"batch_size={self.batch_size} concurrency={self.concurrency} "
            f"request_timeout={self.request_timeout:g}s "
            f"shutdown_timeout={self.shutdown_timeout:g}s rcvbuf={self.rcvbuf} "
            f"read_pause={self.read_pause:g}s "
            f"max_pending={self.max_pending} max_age={self.max_age:g}s "
            f"spool_dir={self.spool_dir or 'off'} spool_max_bytes={self.spool_max_bytes} "
            f"max_attempts={self.max_attempts} resend_unconfirmed={self.resend_unconfirmed} "
            f"cardinality_limit={self.cardinality_limit} "
            f"cardinality_total_limit={self.cardinality_total_limit} "
            f"dry_run={not self.posting}"
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
    if not any(fit_tag(key, value) for key, value in config.global_tags.items()):
        raise ConfigError("--tag, --host-tag: every measurement needs a tag; set one with --tag")
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


# The settings a TOML table may give (``tags = {env = "prod"}``); a table anywhere else
# (``[token]``) is refused rather than flattened into ``k=v`` text.
TABLES = frozenset({"tags"})


def _convert(setting: Setting, raw: Any) -> Any:
    """Flags and the environment give strings (tags: a list); TOML gives native values."""
    if isinstance(raw, bool):
        raw = "true" if raw else "false"
    elif isinstance(raw, list | tuple):
        raw = setting.joiner.join(map(str, raw))
    elif isinstance(raw, dict):
        if setting.name not in TABLES:
            raise ValueError("expected a single value, not a table")
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
