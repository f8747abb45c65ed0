"""Local stand-ins for the Dockerfile's bases, and podman to build and run the image with.

No image registry is reachable here, only Debian's and PyPI, so tests/test_image.py builds
the unmodified Dockerfile against two images made on this machine in their place:

- ``slim``, for ``python:3.11-slim-bookworm``: a minimal Debian bookworm (debootstrap) with
  its python3, and a virtual environment created at ``/usr/local`` so that ``python``,
  ``pip`` and ``site-packages`` sit where the official images have them
  (``/usr/local/bin/python``, ``/usr/local/lib/python3.11/site-packages``);
- ``build``, for ``python:3.11-bookworm``: the same plus gcc and the Python headers, which
  the official full image has for compiling the C parts;
- and ``systemd``, not a base of the Dockerfile: slim with systemd, in which the test runs
  deploy/systemd/statsd-ao.service as systemd would on a VM.

Both trust what this machine trusts (its CA bundle is copied in: a network that inspects
TLS would otherwise fail pip's downloads in the build).  They are made once and kept in
podman's image store under a tag that names a hash of this recipe; a change to the recipe
(or to the machine's CA bundle) makes new ones.  From scratch this takes about a minute
and a half: the debootstrap is most of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RELEASE = "bookworm"
ROOTFS_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BUILD_PACKAGES = ("gcc", "libc6-dev", "python3-dev")
SYSTEMD_PACKAGES = ("systemd", "systemd-sysv")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
REPOSITORY = "localhost/statsd-ao-standin"
LOCK = Path("/var/tmp/statsd-ao-standin.lock")

# What makes the rootfs into python:3.11-slim-bookworm's layout.  The activate scripts are
# a virtual environment's, not the official image's, so they go.
SLIM_STEPS = """\
FROM {rootfs}
RUN python3 -m venv /usr/local \\
    && rm -f /usr/local/bin/activate /usr/local/bin/activate.* /usr/local/bin/Activate.ps1 \\
    && /usr/local/bin/python -c "import sys; assert sys.prefix == '/usr/local'"
ENV LANG=C.UTF-8
CMD ["python3"]
"""
BUILD_STEPS = """\
FROM {slim}
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {packages} \\
    && rm -rf /var/lib/apt/lists/*
"""

# A third, not a python base: slim with systemd, to run deploy/systemd/statsd-ao.service.
SYSTEMD_STEPS = BUILD_STEPS

# Timeouts for the slow steps (the machine has 2 shared cores).
DEBOOTSTRAP_TIMEOUT = 600
BUILD_TIMEOUT = 600


def missing_tools() -> list[str]:
    """What this machine lacks to build and run the image (empty: it can)."""
    missing = [tool for tool in ("podman", "debootstrap") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (debootstrap and podman's rootful store)")
    return missing


def ulimits() -> list[str]:
    """Explicit resource limits for podman's containers.

    As root, podman asks the runtime for 1,048,576 open files by default.  Raising a hard
    limit needs CAP_SYS_RESOURCE, which some sandboxes (this one) do not give root, and then
    runc fails with "error setting rlimit type 7: operation not permitted".  These stay
    within this process's own limits, so they can always be set, and are plenty for the
    proxy (it keeps at most 1,024 TCP connections).
    """
    files = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    processes = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
    return [f"--ulimit=nofile={files}:{files}", f"--ulimit=nproc={processes}:{processes}"]


def podman(*args: str, timeout: float = 120, check: bool = True) -> str:
    """Run podman; its stdout.  Raises with podman's stderr when it fails and ``check``."""
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)}: exit {result.returncode}\n{result.stderr}")
    return result.stdout


def image_exists(tag: str) -> bool:
    result = subprocess.run(["podman", "image", "exists", tag], check=False, timeout=60)
    return result.returncode == 0


def build(tag: str, containerfile: str, context: Path, *args: str) -> None:
    """``podman build`` (Docker format, so HEALTHCHECK and the like are kept; host network).
    No layer cache: it would keep a build stage of some 600 MB per change of the sources,
    and a build from the stand-ins takes a quarter of a minute."""
    podman(
        "build",
        "--format=docker",
        "--network=host",
        "--layers=false",
        *ulimits(),
        f"--tag={tag}",
        f"--file={containerfile}",
        *args,
        str(context),
        timeout=BUILD_TIMEOUT,
    )


def apt_mirror() -> str | None:
    """The Debian mirror this machine's apt uses (debootstrap's default otherwise)."""
    sources = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
    for path in sources:
        if not path.is_file() or not path.name.endswith((".list", ".sources")):
            continue
        text = path.read_text(errors="replace")
        uris: list[str] = re.findall(r"^URIs:\s*(\S+)", text, re.MULTILINE)
        uris += re.findall(rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{RELEASE}\s", text, re.MULTILINE)
        for uri in uris:
            if uri.rstrip("/").endswith("/debian"):
                return uri
    return None


@dataclass(frozen=True)
class Bases:
    """The image tags to pass for the Dockerfile's two base-image arguments."""

    build: str
    slim: str
    systemd: str

    def build_args(self) -> list[str]:
        return [
            f"--build-arg=PYTHON_BUILD_IMAGE={self.build}",
            f"--build-arg=PYTHON_RUN_IMAGE={self.slim}",
        ]


def recipe_hash() -> str:
    """Names this recipe and what it copies from the machine."""
    digest = hashlib.sha256()
    recipe = (
        RELEASE,
        *ROOTFS_PACKAGES,
        *BUILD_PACKAGES,
        *SYSTEMD_PACKAGES,
        SLIM_STEPS,
        BUILD_STEPS,
    )
    for part in recipe:
        digest.update(part.encode() + b"\0")
    digest.update(str(apt_mirror()).encode() + b"\0")
    if HOST_CA_BUNDLE.exists():
        digest.update(HOST_CA_BUNDLE.read_bytes())
    return digest.hexdigest()[:12]


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One maker at a time on this machine (two test runs would make them twice)."""
    with LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def bases() -> Bases:
    """The stand-ins, made first if this machine does not have them yet."""
    key = recipe_hash()
    made = Bases(
        build=f"{REPOSITORY}:build-{key}",
        slim=f"{REPOSITORY}:slim-{key}",
        systemd=f"{REPOSITORY}:systemd-{key}",
    )
    with _locked():
        if all(image_exists(tag) for tag in (made.build, made.slim, made.systemd)):
            return made
        with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="statsd-ao-standin-") as work:
            rootfs = f"{REPOSITORY}:rootfs-{key}"
            _import_rootfs(Path(work), rootfs)
            steps = Path(work) / "steps"
            steps.write_text(SLIM_STEPS.format(rootfs=rootfs))
            build(made.slim, str(steps), Path(work))
            steps.write_text(BUILD_STEPS.format(slim=made.slim, packages=" ".join(BUILD_PACKAGES)))
            build(made.build, str(steps), Path(work))
            packages = " ".join(SYSTEMD_PACKAGES)
            steps.write_text(SYSTEMD_STEPS.format(slim=made.slim, packages=packages))
            build(made.systemd, str(steps), Path(work))
            podman("rmi", rootfs)
    return made


def _import_rootfs(work: Path, tag: str) -> None:
    """debootstrap a minimal bookworm with python3 into ``work`` and import it as ``tag``."""
    root = work / "rootfs"
    command = ["debootstrap", "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}"]
    command += [RELEASE, str(root)]
    mirror = apt_mirror()
    if mirror is not None:
        command.append(mirror)
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=DEBOOTSTRAP_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"debootstrap failed:\n{result.stdout[-3000:]}{result.stderr}")
    for cached in (root / "var/cache/apt/archives").glob("*.deb"):
        cached.unlink()
    if HOST_CA_BUNDLE.exists():
        shutil.copy(HOST_CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    try:
        imported = subprocess.run(
            ["podman", "import", "-", tag],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    finally:
        if tar.stdout is not None:
            tar.stdout.close()
        tar.wait(timeout=60)
    if imported.returncode != 0 or tar.returncode != 0:
        raise RuntimeError(f"podman import failed:\n{imported.stderr}")
