"""deploy/systemd/: the unit passes `systemd-analyze verify` and rates OK in `systemd-analyze
security`, keeps its spool in its state directory, and its example settings are valid.

tests/test_image.py runs the unit under systemd, in a container.  systemd-analyze comes with
systemd; .ci/run installs it.  Where it is missing these are
skipped, except under CI, where that is a failure.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from statsd_ao.settings import SETTINGS
from tests.required import require

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "statsd-ao.service"
ENV_FILE = ROOT / "deploy" / "systemd" / "statsd-ao.env"
INSTALLED = "/opt/statsd-ao"  # where the unit expects the virtual environment
ENV_PATH = "/etc/statsd-ao/statsd-ao.env"
# systemd-analyze security rates exposure from 0 (locked down) to 10 ("OK" below 3; this
# unit: 1.1).  Its --threshold counts in tenths.
MOST_EXPOSED = 1.5


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    require(found is not None, "systemd-analyze (apt-get install systemd)")
    assert found is not None
    return found


def unit_here(tmp_path: Path) -> Path:
    """The unit as it would be installed, with the virtual environment's path moved to one
    that exists (verify checks that ExecStart is executable): this checkout's statsd-ao."""
    venv = tmp_path / "opt" / "statsd-ao"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "statsd-ao").symlink_to(Path(sys.executable).parent / "statsd-ao")
    text = UNIT.read_text()
    assert INSTALLED in text and ENV_PATH in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(INSTALLED, str(venv)).replace(ENV_PATH, str(ENV_FILE)))
    return unit


def service() -> dict[str, list[str]]:
    """The [Service] section: each key's values in order (a key may repeat)."""
    values: dict[str, list[str]] = {}
    section = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_FILE.read_text().splitlines())
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2 and not pair[0].startswith("#")}


def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [analyze(), "verify", str(unit_here(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""  # not even a warning


def test_the_sandbox_rates_ok_in_systemd_analyze_security(tmp_path: Path) -> None:
    threshold = f"--threshold={MOST_EXPOSED * 10:g}"
    result = subprocess.run(
        [analyze(), "security", "--offline=true", threshold, str(unit_here(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_service_runs_as_its_own_user_with_the_spool_in_its_state_directory() -> None:
    unit = service()
    assert unit["DynamicUser"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]  # all but the directories below read-only
    assert unit["StateDirectory"] == ["statsd-ao"]  # /var/lib/statsd-ao, kept across boots
    assert "STATSD_AO_SPOOL_DIR=%S/statsd-ao" in unit["Environment"]
    assert unit["ExecStart"] == [f"{INSTALLED}/bin/statsd-ao"]  # no shell: SIGTERM reaches it
    assert unit["EnvironmentFile"] == [ENV_PATH]


def test_the_stop_timeout_covers_the_shutdown() -> None:
    """systemd sends SIGKILL after TimeoutStopSec: the delivery time at shutdown, the final
    flush and closing the spool must fit in it."""
    stop = float(service()["TimeoutStopSec"][0])
    assert float(env_example()["STATSD_AO_SHUTDOWN_TIMEOUT"]) + 5 <= stop


def test_the_example_settings_are_known_with_valid_values() -> None:
    parsers = {setting.env: setting.parse for setting in SETTINGS}
    example = env_example()
    assert "APPOPTICS_TOKEN" in example
    for name, value in example.items():
        assert name in parsers, f"{name} is not a setting of statsd-ao"
        parsers[name](value)  # raises as statsd-ao would at start
    for line in ENV_FILE.read_text().splitlines():  # the commented ones too
        if line.startswith("# STATSD_AO_"):
            name, _, value = line.removeprefix("# ").partition("=")
            parsers[name](value)
