"""What an etsy statsd configuration means, in statsd-ao's terms.

`translate` takes the dict `statsd_ao.etsy.configjs.parse_config` returns and yields a
`Translation`: the settings a statsd-ao run needs to behave as that etsy statsd plus its
``statsd-appoptics-backend`` (or ``statsd-librato-backend``) did.  Each field holds what the
option meant, with etsy's or the backend's default when the option is absent (not
statsd-ao's default: without ``deleteIdleStats`` etsy sends idle counters as 0, so
`DeleteIdle` says so).  Every option present that statsd-ao does not honour is named in
`Translation.unsupported`, once, so the caller can print one warning at start.

Values are read with JavaScript's leniency where etsy relied on it (``"8125"`` is a port,
``1`` is true); a value that cannot mean anything raises `EtsyConfigError` naming the option.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from statsd_ao.core.batching import MAX_BATCH
from statsd_ao.etsy.configjs import EtsyConfigError, JsRegExp, js_number_string

APPOPTICS_API_URL = "https://api.appoptics.com"
# statsd-librato-backend posts to Librato's own API unless ``librato.api`` says otherwise.
LIBRATO_API_URL = "https://metrics-api.librato.com"
# etsy's defaults (stats.js, servers/udp.js, lib/mgmt_server.js).
ETSY_PORT = 8125
ETSY_MGMT_PORT = 8126
ETSY_FLUSH_MS = 10_000
ETSY_PERCENT_THRESHOLD = 90.0
ETSY_PREFIX_STATS = "statsd"
# Both backends' ``maxBatchSize``.
BACKEND_BATCH_SIZE = 500
# statsd-ao flushes on whole seconds; a shorter flushInterval cannot be honoured.
MIN_FLUSH_MS = 1000

Backend = Literal["appoptics", "librato"]

# Top-level options statsd-ao honours (read by `translate` below).
_HONOURED = frozenset(
    {
        "port", "address", "address_ipv6", "server", "servers", "flushInterval",
        "percentThreshold", "deleteIdleStats", "deleteCounters", "deleteGauges",
        "deleteTimers", "deleteSets", "prefixStats", "keyNameSanitize", "backends",
        "appoptics", "librato", "mgmt_address", "mgmt_port", "healthStatus",
    }
)  # fmt: skip
# Options that change nothing when they hold these values (statsd-ao's behaviour matches),
# so a file that spells them out does not earn a warning.
_INERT: dict[str, tuple[Any, ...]] = {
    "debug": (None, False, 0),
    "dumpMessages": (None, False, 0),
    "automaticConfigReload": (False, 0),  # statsd-ao never reloads the file
    "histogram": (None, False, []),
    "gaugesMaxTTL": (None, 1),
}
# Backend-section options statsd-ao honours; the rest are reported.
_SECTION_HONOURED = frozenset(
    {
        "token", "api", "tags", "host", "source", "globalPrefix", "batchSize",
        "includeMetrics", "excludeMetrics", "sourceRegex", "alwaysSuffixPercentile",
        "postTimeoutSecs", "skipInternalMetrics", "countersAsGauges", "mergeGlobalTags",
        "snapTime",
    }
)  # fmt: skip
_SECTION_INERT: dict[str, tuple[Any, ...]] = {"writeToLegacy": (None, False, 0)}
_SECTION_WHY = {
    "email": " (statsd-ao authenticates with the token alone, as AppOptics does)",
    "retryDelaySecs": " (statsd-ao retries on its own schedule)",
    "writeToLegacy": " (the legacy source-based API is not used)",
}
# The backends drop every metric named ``statsd.*`` unless skipInternalMetrics is false.
INTERNAL_METRICS = r"^statsd\."


@dataclass(frozen=True, slots=True)
class DeleteIdle:
    """Per type: True = an idle series is not sent; False = etsy's zero-fill (counters 0,
    gauges repeat their last value, sets 0, timers nothing: the backends skip empty timers)."""

    counters: bool = False
    gauges: bool = False
    timers: bool = False
    sets: bool = False


@dataclass(frozen=True, slots=True)
class Translation:
    """The effective settings of an etsy configuration.  Patterns are Python `re` syntax,
    searched (not matched) in the metric name, as JavaScript's ``RegExp.test`` does."""

    udp: str = f"0.0.0.0:{ETSY_PORT}"  # HOST:PORT or [V6]:PORT, as --udp takes it
    flush_interval: int = ETSY_FLUSH_MS // 1000  # seconds
    percentiles: tuple[float, ...] = (ETSY_PERCENT_THRESHOLD,)
    backend: Backend | None = None  # the section honoured, if any
    api_url: str = APPOPTICS_API_URL
    token: str | None = field(default=None, repr=False)
    tags: Mapping[str, str] = field(default_factory=dict)  # global tags, host included if set
    host_tag: bool = True  # add host=<this machine> unless tags has host
    batch_size: int = BACKEND_BATCH_SIZE
    request_timeout: float | None = None  # seconds; None: statsd-ao's default
    delete_idle: DeleteIdle = DeleteIdle()
    prefix_stats: str = ETSY_PREFIX_STATS
    key_name_sanitize: bool = True
    global_prefix: str = ""  # prepended with a "." separator when not empty
    include_metrics: tuple[str, ...] = ()  # empty: all metrics
    exclude_metrics: tuple[str, ...] = ()
    source_regex: str | None = None  # group 1 -> tag "source"; the whole match leaves the name
    always_suffix_percentile: bool = False  # the 100th percentile of timers named "name.100"
    admin: str | None = None  # HOST:PORT of the management interface; None: off
    health_status: Literal["up", "down"] = "up"
    unsupported: tuple[str, ...] = ()  # "option" or "option (why)", one per option


def translate(config: Mapping[str, Any]) -> Translation:
    """The `Translation` of a parsed etsy configuration."""
    notes: list[str] = []
    settings: dict[str, Any] = {}
    settings["udp"] = _udp(config, notes)
    settings["flush_interval"] = _flush_interval(config, notes)
    settings["percentiles"] = _percentiles(config.get("percentThreshold"), notes)
    settings["delete_idle"] = _delete_idle(config)
    if config.get("prefixStats") is not None:
        settings["prefix_stats"] = _scalar(config["prefixStats"], "prefixStats")
    if config.get("keyNameSanitize") is not None:
        settings["key_name_sanitize"] = _truthy(config["keyNameSanitize"])
    if "mgmt_port" in config or "mgmt_address" in config:
        settings["admin"] = _admin(config)
    settings["health_status"] = _health(config, notes)
    for key, value in config.items():
        if key in _HONOURED or value in _INERT.get(key, ()):
            continue
        notes.append(key)
    backend = _choose_backend(config, notes)
    if backend is not None:
        settings.update(_section(backend, config[backend], settings["flush_interval"], notes))
    return Translation(**settings, unsupported=tuple(notes))


# --- top level ------------------------------------------------------------------------------


def _udp(config: Mapping[str, Any], notes: list[str]) -> str:
    """etsy binds ``port || 8125`` on ``address``; ``address_ipv6`` picks a udp6 socket."""
    listener: Mapping[str, Any] = config
    servers = config.get("servers")
    if servers is not None:
        if not isinstance(servers, list) or not all(isinstance(s, dict) for s in servers):
            raise EtsyConfigError("servers: expected a list of objects")
        udp = [i for i, s in enumerate(servers) if "udp" in str(s.get("server") or "udp")]
        if udp:
            listener = servers[udp[0]]
        notes.extend(
            f"servers[{i}] (statsd-ao listens on one UDP address)"
            for i in range(len(servers))
            if not udp or i != udp[0]
        )
    elif "udp" not in str(config.get("server") or "udp"):
        notes.append(f"server={config['server']} (statsd-ao listens on UDP)")
    where = "servers[].port" if listener is not config else "port"
    port = _port(listener.get("port"), where, ETSY_PORT)
    ipv6 = _truthy(listener.get("address_ipv6"))
    host = listener.get("address") or ("::" if ipv6 else "0.0.0.0")
    return _host_port(str(host), port)


def _flush_interval(config: Mapping[str, Any], notes: list[str]) -> int:
    """flushInterval is in ms; statsd-ao takes whole seconds, rounded half up."""
    milliseconds = _number_or(config.get("flushInterval"), "flushInterval", ETSY_FLUSH_MS)
    if not math.isfinite(milliseconds) or milliseconds < MIN_FLUSH_MS:
        raise EtsyConfigError(
            f"flushInterval: {config['flushInterval']!r} ms is below statsd-ao's shortest"
            f" interval of {MIN_FLUSH_MS} ms; set it to 1000 or more"
        )
    seconds = math.floor(milliseconds / 1000 + 0.5)
    if seconds * 1000 != milliseconds:
        notes.append(f"flushInterval={js_number_string(milliseconds)} (rounded to {seconds} s)")
    return seconds


def _percentiles(raw: Any, notes: list[str]) -> tuple[float, ...]:
    """``percentThreshold || 90``, one number or a list; etsy's negative "top" percentiles
    are a graphite feature the backends never sent correctly, so they are reported."""
    values = raw if isinstance(raw, list) else [raw if _truthy(raw) else ETSY_PERCENT_THRESHOLD]
    kept: set[float] = set()
    for value in values:
        number = _number(value, "percentThreshold")
        if 0 < number <= 100:
            kept.add(float(number))
        elif number < 0:
            notes.append(f"percentThreshold {js_number_string(number)} (no top percentiles)")
        elif number != 0:  # 0 yields nothing in the backends either
            notes.append(f"percentThreshold {js_number_string(number)} (above 100)")
    return tuple(sorted(kept))


def _delete_idle(config: Mapping[str, Any]) -> DeleteIdle:
    """deleteIdleStats sets the default; each deleteX present overrides it for its type."""
    default = _truthy(config.get("deleteIdleStats"))

    def one(option: str) -> bool:
        return _truthy(config[option]) if option in config else default

    return DeleteIdle(
        counters=one("deleteCounters"),
        gauges=one("deleteGauges"),
        timers=one("deleteTimers"),
        sets=one("deleteSets"),
    )


def _admin(config: Mapping[str, Any]) -> str:
    port = _port(config.get("mgmt_port"), "mgmt_port", ETSY_MGMT_PORT)
    return _host_port(str(config.get("mgmt_address") or "0.0.0.0"), port)


def _health(config: Mapping[str, Any], notes: list[str]) -> Literal["up", "down"]:
    status = str(config.get("healthStatus") or "up").lower()
    if status == "down":
        return "down"
    if status != "up":
        notes.append(f"healthStatus={config['healthStatus']} (expected up or down)")
    return "up"


def _choose_backend(config: Mapping[str, Any], notes: list[str]) -> Backend | None:
    """The section statsd-ao honours: the one whose backend is loaded, else appoptics."""
    backends = config.get("backends") or []
    if not isinstance(backends, list):
        backends = [backends]
    loaded = set()
    for entry in backends:
        name = str(entry)
        found = "appoptics" if "appoptics" in name else "librato" if "librato" in name else None
        if found is None:
            notes.append(f"backends: {name}")
        else:
            loaded.add(found)
    present: list[Backend] = [name for name in ("appoptics", "librato") if name in config]
    if not present:
        return None
    chosen = next((name for name in present if name in loaded), present[0])
    notes.extend(
        f"{name} (statsd-ao posts to one API; the {chosen} section is used)"
        for name in present
        if name != chosen
    )
    return chosen


# --- the backend section --------------------------------------------------------------------


def _section(
    backend: Backend, section: Any, flush_interval: int, notes: list[str]
) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise EtsyConfigError(f"{backend}: expected an object")
    where = backend + "."
    out: dict[str, Any] = {"backend": backend}
    token = section.get("token")
    if token is not None and not isinstance(token, str):
        raise EtsyConfigError(f"{where}token: expected a string")
    out["token"] = token or None
    out["api_url"] = _api_url(section.get("api"), backend)
    out["tags"] = _tags(backend, section)
    out["host_tag"] = _host_tag(backend, section)
    batch = _number_or(section.get("batchSize"), where + "batchSize", BACKEND_BATCH_SIZE)
    if not (math.isfinite(batch) and batch == int(batch) and batch >= 1):
        raise EtsyConfigError(f"{where}batchSize: expected a whole number, got {batch!r}")
    if batch > MAX_BATCH:
        notes.append(f"{where}batchSize={int(batch)} (capped at the API's {MAX_BATCH})")
    out["batch_size"] = min(int(batch), MAX_BATCH)
    timeout = _number_or(section.get("postTimeoutSecs"), where + "postTimeoutSecs", 0)
    if timeout:
        if not (math.isfinite(timeout) and timeout > 0):
            raise EtsyConfigError(f"{where}postTimeoutSecs: expected a positive number")
        out["request_timeout"] = float(timeout)
    if _truthy(section.get("globalPrefix")):
        out["global_prefix"] = _scalar(section["globalPrefix"], where + "globalPrefix")
    out["always_suffix_percentile"] = _truthy(section.get("alwaysSuffixPercentile"))
    out["include_metrics"] = _patterns(section.get("includeMetrics"), where + "includeMetrics")
    excluded = _patterns(section.get("excludeMetrics"), where + "excludeMetrics")
    if section.get("skipInternalMetrics") is None or _truthy(section["skipInternalMetrics"]):
        excluded += (INTERNAL_METRICS,)
    else:
        notes.append(f"{where}skipInternalMetrics (etsy's statsd.* metrics do not exist here)")
    out["exclude_metrics"] = excluded
    if section.get("sourceRegex") is not None:
        out["source_regex"] = _pattern(section["sourceRegex"], where + "sourceRegex")
    notes.extend(_section_notes(where, section, flush_interval))
    return out


def _section_notes(where: str, section: Mapping[str, Any], flush_interval: int) -> list[str]:
    notes = [
        f"{where}{key}{_SECTION_WHY.get(key, '')}"
        for key, value in section.items()
        if key not in _SECTION_HONOURED and value not in _SECTION_INERT.get(key, ())
    ]
    if section.get("countersAsGauges") is not None and not _truthy(section["countersAsGauges"]):
        notes.append(f"{where}countersAsGauges (counters are sent per interval)")
    if section.get("mergeGlobalTags") is not None and not _truthy(section["mergeGlobalTags"]):
        notes.append(f"{where}mergeGlobalTags (global tags are always merged)")
    snap = section.get("snapTime")
    if snap and _number(snap, where + "snapTime") != flush_interval:
        notes.append(f"{where}snapTime (times snap to the flush interval)")
    return notes


def _api_url(raw: Any, backend: Backend) -> str:
    """The backends post to ``{scheme}://{host[:port]}/v1/measurements``: any path is dropped."""
    if not raw:
        return LIBRATO_API_URL if backend == "librato" else APPOPTICS_API_URL
    parts = urlsplit(str(raw))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        # A URL may carry the token ("https://TOKEN:@api.appoptics.com"): never quoted whole.
        shown = repr(str(raw)) if "@" not in str(raw) else "(not shown: it may hold the token)"
        raise EtsyConfigError(f"{backend}.api: expected an http(s) URL, got {shown}")
    return f"{parts.scheme}://{parts.netloc}"


def _tags(backend: Backend, section: Mapping[str, Any]) -> dict[str, str]:
    """``tags``, then ``source`` as a tag, then ``host``.  Like the backends, a ``host`` option
    that is absent means this machine's name, even over ``tags.host``; a falsy one means none."""
    raw = section.get("tags") or {}
    if not isinstance(raw, dict):
        raise EtsyConfigError(f"{backend}.tags: expected an object")
    tags = {str(k): _scalar(v, f"{backend}.tags.{k}") for k, v in raw.items() if v is not None}
    if section.get("source") is not None:
        tags["source"] = _scalar(section["source"], f"{backend}.source")
    if _host_tag(backend, section):
        tags.pop("host", None)  # replaced by this machine's name or by the host option
        if _truthy(section.get("host")):
            tags["host"] = _scalar(section["host"], f"{backend}.host")
    return tags


def _host_tag(backend: Backend, section: Mapping[str, Any]) -> bool:
    """Whether the backend set a host tag: appoptics unless ``host`` is present and falsy,
    librato unless it is falsy but not null."""
    if "host" not in section or (section["host"] is None and backend == "librato"):
        return True
    return _truthy(section["host"])


def _patterns(raw: Any, where: str) -> tuple[str, ...]:
    """A list of regexes or strings; anything else means none, as in the backends."""
    if not isinstance(raw, list):
        return ()
    return tuple(_pattern(item, f"{where}[{i}]") for i, item in enumerate(raw))


def _pattern(raw: Any, where: str) -> str:
    """A Python pattern for a JavaScript regex, or for a string the backends made into one
    (a string written ``/like this/`` loses its slashes)."""
    if isinstance(raw, JsRegExp):
        source, flags = raw.source, raw.flags
    elif isinstance(raw, str):
        slashed = len(raw) > 2 and raw[0] == raw[-1] == "/"
        source, flags = (raw[1:-1] if slashed else raw), ""
    else:
        raise EtsyConfigError(f"{where}: expected a regular expression or a string")
    pattern = _python_regex(source)
    inline = "".join(f for f in "ims" if f in flags)
    if inline:
        pattern = f"(?{inline}){pattern}"
    try:
        re.compile(pattern)
    except re.error as error:
        raise EtsyConfigError(
            f"{where}: {raw} is not a usable regular expression: {error}"
        ) from None
    return pattern


def _python_regex(source: str) -> str:
    """The few JavaScript spellings Python's `re` writes differently: named groups."""
    source = re.sub(r"\(\?<(?![=!])", "(?P<", source)
    return re.sub(r"\\k<(\w+)>", r"(?P=\1)", source)


# --- JavaScript's view of values ------------------------------------------------------------


def _truthy(value: Any) -> bool:
    """JavaScript truthiness: false, 0, NaN, "", null and undefined are false."""
    if isinstance(value, float) and math.isnan(value):
        return False
    return bool(value) or isinstance(value, list | dict | JsRegExp)


def _number(value: Any, where: str) -> float:
    """``Number(value)`` for the values etsy accepts: numbers, numeric strings, booleans, null."""
    if value is None or isinstance(value, bool):
        return float(bool(value))
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return float(value.strip() or 0)
        except ValueError:
            pass
    raise EtsyConfigError(f"{where}: expected a number, got {value!r}")


def _number_or(value: Any, where: str, default: float) -> float:
    """``Number(value || default)``."""
    number = _number(value, where)
    return number if _truthy(number) else default


def _port(value: Any, where: str, default: int) -> int:
    port = _number_or(value, where, default)
    if not (math.isfinite(port) and port == int(port) and 0 < port <= 65535):
        raise EtsyConfigError(f"{where}: expected a port 1-65535, got {value!r}")
    return int(port)


def _scalar(value: Any, where: str) -> str:
    """A tag value as JavaScript would stringify it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return js_number_string(value)
    if isinstance(value, str):
        return value
    raise EtsyConfigError(f"{where}: expected a string or a number")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
