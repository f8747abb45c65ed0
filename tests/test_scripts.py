"""scripts/run and scripts/test install the checkout only when its setup inputs changed.

They run here on a copy of the checkout's setup inputs with a fake virtualenv: its `python`
records each `pip install` instead of installing, and its `statsd-ao` echoes its arguments.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FAKE_PYTHON = """#!/bin/sh
case "$1" in
    -V) cat "$(dirname "$0")/version" ;;
    -m) echo "$*" >>"$(dirname "$0")/installs" ;;
    *) exit 2 ;;
esac
"""


def checkout(tmp_path: Path) -> Path:
    """A copy of what scripts/run reads: the scripts and the setup inputs."""
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "scripts", root / "scripts")
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in"):
        shutil.copy(ROOT / name, root / name)
    for folder in ("core", "otlp"):  # the C parts' sources
        (root / "statsd_ao" / folder).mkdir(parents=True)
        for source in (ROOT / "statsd_ao" / folder).glob("*.[ch]"):
            shutil.copy(source, root / "statsd_ao" / folder / source.name)
    bin_ = root / ".venv" / "bin"
    bin_.mkdir(parents=True)
    (bin_ / "python").write_text(FAKE_PYTHON)
    (bin_ / "version").write_text("Python 3.11.2\n")
    (bin_ / "statsd-ao").write_text('#!/bin/sh\necho "statsd-ao $*"\n')
    for script in ("python", "statsd-ao"):
        (bin_ / script).chmod(0o755)
    return root


def run(root: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "VENV"}
    result = subprocess.run(
        [root / "scripts" / "run", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return result.stdout


def installs(root: Path) -> list[str]:
    log = root / ".venv" / "bin" / "installs"
    return log.read_text().splitlines() if log.exists() else []


def test_run_installs_once_then_only_when_a_setup_input_changes(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    assert run(root, "--version") == "statsd-ao --version\n"
    assert installs(root) == ["-m pip install --quiet --disable-pip-version-check -e ."]
    run(root, "--version")
    run(root, "--flush-interval", "10")
    assert len(installs(root)) == 1  # nothing changed: no reinstall

    with (root / "setup.py").open("a") as setup:
        setup.write("# changed\n")
    run(root)
    assert len(installs(root)) == 2
    (root / "statsd_ao" / "core" / "_hotpath.c").write_text("/* changed */\n")
    run(root)
    assert len(installs(root)) == 3
    (root / ".venv" / "bin" / "version").write_text("Python 3.11.9\n")
    run(root)
    assert len(installs(root)) == 4
    run(root)
    assert len(installs(root)) == 4


def test_a_built_extension_that_went_missing_is_rebuilt(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    built = root / "statsd_ao" / "core" / "_hotpath.cpython-311-x86_64-linux-gnu.so"
    built.write_bytes(b"")
    run(root)
    built.unlink()  # git clean -fdx, say
    run(root)
    assert len(installs(root)) == 2


def test_a_failed_install_is_tried_again(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    python = root / ".venv" / "bin" / "python"
    python.write_text(FAKE_PYTHON.replace('>>"$(dirname "$0")/installs" ;;', "; exit 1 ;;"))
    result = subprocess.run([root / "scripts" / "run"], capture_output=True, check=False)
    assert result.returncode != 0
    python.write_text(FAKE_PYTHON)
    run(root)
    assert len(installs(root)) == 1
