"""Whether the C parts run: the switch, and the extension that holds the C loop and gauges.

Without a compiler at install time they are not built; with ``STATSD_AO_PURE_PYTHON=1`` in
the environment they are not used.  Either way the pure Python code runs instead, with the
same results (tests/core/test_hotpath.py, tests/core/test_gauges.py).
"""

from __future__ import annotations

import os
from types import ModuleType

DISABLE = "STATSD_AO_PURE_PYTHON"


def disabled() -> bool:
    """``STATSD_AO_PURE_PYTHON`` is set (to anything but 0)."""
    return os.environ.get(DISABLE, "") not in {"", "0"}


def hotpath() -> ModuleType | None:
    """statsd_ao.core._hotpath (the C loop, Gauge and GaugeMemory), unless it is not built or
    is switched off."""
    if disabled():
        return None
    try:
        from statsd_ao.core import _hotpath  # type: ignore[attr-defined]  # noqa: PLC0415
    except ImportError:
        return None
    module: ModuleType = _hotpath
    return module
