"""What a release ships: `python -m build` makes an sdist and a wheel from this checkout
(the wheel from the sdist, so the sdist must carry the C sources), `twine check` accepts
both, and the wheel installed into a fresh virtual environment runs: `statsd-ao --version`
says pyproject.toml's version, and a dry run prints a metric received over UDP.

It downloads the package's dependencies from the package index into the fresh environment
(about half a minute in all).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxy import Proxy

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
C_SOURCES = (
    "core/_hotpath.c",
    "core/_gauges.c",
    "core/_convert.c",
    "core/_gauges.h",
    "core/_slots.h",
    "otlp/_wire.c",
)
C_PARTS = ("core/_hotpath", "core/_convert", "otlp/_wire")


def run(*command: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The sdist and the wheel, built as a release is (no build isolation: the test extra
    has the build backend, and this stays off the network)."""
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--no-isolation", f"--outdir={out}", ROOT)
    yield out


def only(directory: Path, pattern: str) -> Path:
    (found,) = directory.glob(pattern)
    return found


def test_the_sdist_carries_the_c_sources_license_and_changelog(dist: Path) -> None:
    sdist = only(dist, "statsd_ao-*.tar.gz")
    assert sdist.name == f"statsd_ao-{PROJECT['version']}.tar.gz"
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for source in C_SOURCES:
        assert f"statsd_ao/{source}" in names
    assert {"LICENSE", "CHANGELOG.md", "setup.py", "pyproject.toml"} <= names
    assert not [name for name in names if name.endswith((".so", ".pyc"))]


def test_the_wheel_has_both_c_parts_and_the_license(dist: Path) -> None:
    wheel = only(dist, "statsd_ao-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"statsd_ao-{PROJECT['version']}.dist-info/METADATA").decode()
    for extension in C_PARTS:
        assert any(name.startswith(f"statsd_ao/{extension}.") for name in names)
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert "License-Expression: Apache-2.0" in metadata.splitlines()


def test_twine_accepts_both(dist: Path) -> None:
    out = run(sys.executable, "-m", "twine", "check", "--strict", *sorted(dist.iterdir()))
    assert out.count("PASSED") == 2, out


def test_the_wheel_installed_in_a_fresh_environment_runs(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    pip: list[str | Path] = [venv / "bin" / "python", "-m", "pip", "install", "--quiet"]
    run(*pip, "--disable-pip-version-check", only(dist, "statsd_ao-*.whl"))
    program = venv / "bin" / "statsd-ao"
    assert run(program, "--version") == f"statsd-ao {PROJECT['version']}\n"

    command = [str(program), "--udp", "127.0.0.1:0", "--flush-interval", "1"]

    async def scenario() -> None:
        async with Proxy(command=command) as proxy:
            assert "hot path: C loop" in proxy.log
            await proxy.send([b"release.test:2|c|#from:wheel"])
            await proxy.wait_for_log("1 series, 1 measurements printed", timeout=15)
            assert await proxy.stop() == 0
        posts = [json.loads(line) for line in proxy.stdout]
        (measurement,) = [m for post in posts for m in post.get("measurements", [])]
        assert (measurement["name"], measurement["value"]) == ("release.test", 2.0)
        assert measurement["tags"]["from"] == "wheel"

    asyncio.run(scenario())
