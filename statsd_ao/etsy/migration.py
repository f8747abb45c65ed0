"""An etsy statsd configuration file as a layer of statsd-ao settings.

`etsy_config` reads the JavaScript object literal, `etsy.translate` says what each option
means; this module maps that onto statsd-ao's setting names, for `config.build` to place
under the TOML file and the environment (explicit flags override everything).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from statsd_ao.etsy.configjs import load_config
from statsd_ao.etsy.translation import Translation, translate


def settings_from(translation: Translation) -> dict[str, Any]:
    """Setting name -> value, for what the etsy file says."""
    t = translation
    idle = t.delete_idle
    settings: dict[str, Any] = {
        "udp": t.udp,
        "flush_interval": t.flush_interval,
        "percentiles": list(t.percentiles),
        "api_url": t.api_url,
        "tags": dict(t.tags),
        "host_tag": t.host_tag,
        "batch_size": t.batch_size,
        # Idle series: etsy sends idle counters as 0, repeats gauges and sends sets as 0
        # unless told to delete them; timers have nothing to send.
        "send_idle": [
            kind
            for kind, delete in (
                ("counters", idle.counters),
                ("gauges", idle.gauges),
                ("sets", idle.sets),
            )
            if not delete
        ],
        "key_name_sanitize": t.key_name_sanitize,
        "global_prefix": t.global_prefix,
        "include_metrics": list(t.include_metrics),
        "exclude_metrics": list(t.exclude_metrics),
        "always_suffix_percentile": t.always_suffix_percentile,
        "health_status": t.health_status,
    }
    if t.backend is not None:  # dashboards built on the backend's percentile names
        settings["percentile_style"] = "backend"
    optional = {
        "token": t.token,
        "request_timeout": t.request_timeout,
        "source_regex": t.source_regex,
        "admin": t.admin,
    }
    settings.update({key: value for key, value in optional.items() if value})
    return settings


def load(path: Path) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The settings of an etsy configuration file, and the options it has that statsd-ao
    does not honour (to be named in one warning)."""
    translation = translate(load_config(path))
    return settings_from(translation), translation.unsupported
