"""The one frozen `Config`, built once at the edge: flags > environment > file > defaults.

Every setting (the table is `statsd_ao.settings.SETTINGS`) has a flag, an environment
variable and a key in the optional TOML file (the flag name without ``--``, dashes as
underscores).  A bad value raises `ConfigError`
naming the setting; the token never appears in an error or in `Config.describe`.
"""

from __future__ import annotations

import difflib
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
from statsd_ao.core.fleet_parts import DEFAULT_GRACE as DEFAULT_FLEET_GRACE
from statsd_ao.core.outbox import MAX_PENDING
from statsd_ao.core.retry import MAX_AGE, MAX_ATTEMPTS
from statsd_ao.core.sanitize import MAX_TAGS, fit_tag
from statsd_ao.io.address import Address, parse_address
from statsd_ao.io.api_server import DEFAULT_BURST as DEFAULT_INTAKE_BURST
from statsd_ao.io.api_server import DEFAULT_MAX_BODY as DEFAULT_INTAKE_BODY
from statsd_ao.io.api_server import DEFAULT_MAX_CONNECTIONS as DEFAULT_INTAKE_CONNECTIONS
from statsd_ao.io.api_server import DEFAULT_RATE as DEFAULT_INTAKE_RATE
from statsd_ao.io.fleet_receiver import DEFAULT_MAX_BODY as DEFAULT_FLEET_BODY
from statsd_ao.io.listeners import UNIX_MODE
from statsd_ao.io.pacing import DEFAULT_PAUSE
from statsd_ao.io.spoolfile import DEFAULT_MAX_BYTES as DEFAULT_SPOOL_BYTES
from statsd_ao.otlp import swo_url
from statsd_ao.otlp.sink import DEFAULT_SERVICE_NAME
from statsd_ao.settings import SECONDS, SETTINGS, Setting

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
    otlp_url: str | None = None
    swo_region: str | None = None
    otlp_token: str | None = field(default=None, repr=False)
    otlp_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    otlp_service_name: str = DEFAULT_SERVICE_NAME
    otlp_gzip: bool = True
    udp: Address | None = field(default_factory=lambda: parse_address(DEFAULT_UDP))
    tcp: Address | None = None
    unix: str | None = None
    unix_mode: int = UNIX_MODE
    tcp_max_line: int = DEFAULT_TCP_MAX_LINE
    tcp_idle_timeout: float = DEFAULT_TCP_IDLE_TIMEOUT
    container_tag: str | None = None
    annotation_stream: str = DEFAULT_STREAM
    http: Address | None = None
    appoptics_listen: Address | None = None
    intake_tokens: frozenset[str] = field(default_factory=frozenset, repr=False)
    intake_max_body: int = DEFAULT_INTAKE_BODY
    intake_max_connections: int = DEFAULT_INTAKE_CONNECTIONS
    intake_rate: float = DEFAULT_INTAKE_RATE
    intake_burst: int = DEFAULT_INTAKE_BURST
    # The fleet tier (docs: README "Running a fleet"): a local forwards, a global listens.
    forward: tuple[str, ...] | None = None  # HOST:PORT and dns:NAME:PORT targets
    fleet_listen: Address | None = None
    fleet_token: str | None = field(default=None, repr=False)
    fleet_grace: float = DEFAULT_FLEET_GRACE
    fleet_max_body: int = DEFAULT_FLEET_BODY
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
    log_level: str = "INFO"
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
    def appoptics_on(self) -> bool:
        """The AppOptics sink is configured (a token)."""
        return self.token is not None

    @property
    def otlp_on(self) -> bool:
        """The OTLP sink is configured (--otlp-url or --swo-region)."""
        return self.otlp_url is not None

    @property
    def posting(self) -> bool:
        """True when data goes to a backend (a sink configured, and no --dry-run)."""
        return (self.appoptics_on or self.otlp_on or self.forwarding) and not self.dry_run

    @property
    def forwarding(self) -> bool:
        """A local of a fleet: intervals go to the global tier (--forward)."""
        return self.forward is not None

    @property
    def posts_self_metrics(self) -> bool:
        """The ``statsd_ao.*`` self-metrics go out with each flush."""
        # (a local forwards series only: its self-metrics stay on its /metrics)
        default = self.posting and not self.forwarding
        return default if self.self_metrics is None else self.self_metrics

    @property
    def global_tags(self) -> dict[str, str]:
        """The configured tags, with ``host`` = this machine's name unless set or turned off."""
        host = {"host": socket.gethostname()} if self.host_tag else {}
        return {**host, **self.tags}

    def describe(self) -> str:
        """One line for the start-up log and --check-config: every setting of the table, in
        its order, as it is in effect (secrets redacted)."""
        return " ".join(f"{s.name}={self.shown(s)}" for s in SETTINGS)

    def shown(self, setting: Setting) -> str:
        """One setting's value as the start line shows it."""
        value = getattr(self, setting.name)
        if setting.secret:
            return "<set>" if value else "<none>"
        if setting.name == "tags":  # with the host tag, as every measurement gets them
            return ",".join(f"{k}={v}" for k, v in self.global_tags.items()) or "none"
        if setting.name == "self_metrics":
            return "on" if self.posts_self_metrics else "off"
        if setting.name == "dry_run":
            return str(not self.posting)
        if setting.name == "unix_mode":
            return f"{value:04o}"
        return _text(value) + ("s" if setting.name in SECONDS else "")


def _text(value: object) -> str:
    if value is None:
        return "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(map(_text, value)) or "none"
    if isinstance(value, str):
        return value or '""'
    return str(value)


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
    values.update(_otlp_url(values))
    config = Config(**values)
    if len(config.global_tags) > MAX_TAGS:
        raise ConfigError(f"--tag: at most {MAX_TAGS} global tags (host included)")
    if not any(fit_tag(key, value) for key, value in config.global_tags.items()):
        raise ConfigError("--tag, --host-tag: every measurement needs a tag; set one with --tag")
    if config.max_pending < config.batch_size:
        raise ConfigError("--max-pending: must hold at least one batch (--batch-size)")
    if not (config.udp or config.tcp or config.unix or config.appoptics_listen) and not (
        config.fleet_listen
    ):
        raise ConfigError("--udp, --tcp, --unix: at least one listener must be on")
    if (config.forward or config.fleet_listen) and not config.fleet_token:
        raise ConfigError("--fleet-token: --forward and --fleet-listen need the fleet's secret")
    if config.forward and (config.appoptics_on or config.otlp_url):
        raise ConfigError("--forward: a local sends to the global tier, not to a backend too")
    if config.appoptics_listen and not config.intake_tokens:
        raise ConfigError("--intake-token: the AppOptics API intake needs at least one token")
    return config


# Environment variables of the STATSD_AO_ family that are not settings.
OTHER_VARIABLES = frozenset({"STATSD_AO_PURE_PYTHON"})


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``STATSD_AO_*`` variable that is no setting (a typo is otherwise
    silently ignored), naming the nearest valid one."""
    known = {s.env for s in SETTINGS} | OTHER_VARIABLES
    warnings = []
    for name in sorted(environ):
        if name.startswith("STATSD_AO_") and name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            warnings.append(f"environment variable {name} is not a statsd-ao setting{hint}")
    return warnings


def _otlp_url(values: Mapping[str, Any]) -> dict[str, str]:
    """--swo-region names the URL, so it cannot be given beside --otlp-url."""
    region = values.get("swo_region")
    if region is None:
        return {}
    if values.get("otlp_url") is not None:
        raise ConfigError("--swo-region, --otlp-url: give one (the region sets the URL)")
    return {"otlp_url": swo_url(region)}


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
    return "invalid value (not shown)" if setting.secret else str(error)


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
