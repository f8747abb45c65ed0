"""The Kubernetes manifests, checked as data (tests/test_dockerfile.py and
tests/test_image.py check the image they run).

No cluster here, so these check what can go wrong on paper: YAML that does not parse or
that Kubernetes' own schemas refuse, an environment variable statsd-ao does not know or a
value it would refuse, probes on the wrong path or port, a container that could run as
root, a memory limit below what the configured bounds can hold, a rollout or a shutdown
that would lose datagrams.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from statsd_ao.config import Config, build
from statsd_ao.io.address import parse_address
from statsd_ao.io.fleet_forward import parse_targets
from statsd_ao.otlp import SWO_REGIONS
from statsd_ao.settings import SETTINGS, parse_bytes

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
EXPECTED_KINDS = {
    "sidecar.yaml": ["Deployment"],
    "daemonset.yaml": ["PriorityClass", "DaemonSet", "Service"],
    "secret.example.yaml": ["Secret", "Secret", "Secret"],
    "fleet.yaml": [
        "PriorityClass",
        "DaemonSet",
        "Service",
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
    ],
}
OUR_PREFIXES = ("STATSD_AO_", "APPOPTICS_")
IMAGE_USER = 10001  # the Dockerfile's USER, and its group
STATSD_PORT = 8125
HTTP_PORT = 18125  # the image's too: 8080 is where applications listen
FLEET_PORT = 8126
# Kubernetes versions whose schemas the manifests must pass: native sidecars (an init
# container with restartPolicy: Always) need 1.29; and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())

API_VERSIONS = ("v1", "apps/v1", "scheduling.k8s.io/v1", "policy/v1")

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


WORKLOAD_KINDS = ("Deployment", "DaemonSet", "StatefulSet")


def workloads() -> list[tuple[str, Doc]]:
    return [(n, d) for n, d in all_documents() if d["kind"] in WORKLOAD_KINDS]


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
            assert doc["apiVersion"] in API_VERSIONS, name
            assert doc["metadata"]["name"], name


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("name", "doc"), list(all_documents()))
def test_every_document_passes_the_kubernetes_schema(name: str, doc: Doc, version: str) -> None:
    """Strict: a misspelt or misplaced field fails, as `kubectl apply --validate=strict`."""
    kubernetes_validate.validate(doc, version, strict=True)


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
    bound = parse_bytes(env["STATSD_AO_SPOOL_MAX_BYTES"])
    assert bound * 1.1 <= quantity(limit), f"{name}: {limit} for a {bound}-byte spool"


@pytest.mark.parametrize(("name", "doc"), workloads())
def test_env_references_are_defined_before_use(name: str, doc: Doc) -> None:
    """Kubernetes expands $(VAR) only from variables defined earlier in the list."""
    for container in containers(doc):
        defined: set[str] = set()
        for item in container.get("env", []):
            for ref in re.findall(r"\$\((\w+)\)", str(item.get("value", ""))):
                assert ref in defined, f"{name}: {item['name']} uses $({ref}) before it is set"
            defined.add(item["name"])


def env_items(doc: Doc) -> dict[str, Doc]:
    return {item["name"]: item for item in statsd_ao(doc)["env"]}


def from_example_secret(item: Doc) -> None:
    """The variable comes from a Secret, and secret.example.yaml has that Secret and key."""
    secrets = {d["metadata"]["name"]: d for d in documents("secret.example.yaml")}
    token = item["valueFrom"]["secretKeyRef"]
    assert token["key"] in secrets[token["name"]]["stringData"], item["name"]


def receives_statsd(doc: Doc) -> bool:
    """Not a global of a fleet (which takes forwarded parts only)."""
    return "STATSD_AO_FLEET_LISTEN" not in env_items(doc)


def posts(doc: Doc) -> bool:
    """Not a local of a fleet (which forwards to the globals instead)."""
    return "STATSD_AO_FORWARD" not in env_items(doc)


@pytest.mark.parametrize(("name", "doc"), [(n, d) for n, d in workloads() if receives_statsd(d)])
def test_tags_come_from_the_downward_api(name: str, doc: Doc) -> None:
    env = env_items(doc)
    assert "NODE_NAME" in env["STATSD_AO_TAGS"]["value"]
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


@pytest.mark.parametrize(("name", "doc"), [(n, d) for n, d in workloads() if posts(d)])
def test_backend_tokens_come_from_secrets(name: str, doc: Doc) -> None:
    env = env_items(doc)
    for variable in ("STATSD_AO_OTLP_TOKEN", "APPOPTICS_TOKEN"):  # each from its Secret
        from_example_secret(env[variable])
    assert env["STATSD_AO_SWO_REGION"]["value"] in SWO_REGIONS  # SWO by default
    assert env["APPOPTICS_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True


def sample_environment(container: Doc) -> dict[str, str]:
    """The container's environment as the process would see it: literal values (with
    $(VAR) samples), and a sample for each value from a Secret or the Downward API."""
    out = env_values(container)
    for item in container.get("env", []):
        if "valueFrom" in item:
            out[item["name"]] = f"sample-{item['name'].lower()}"
    return out


@pytest.mark.parametrize(("name", "doc"), workloads())
def test_statsd_ao_accepts_the_whole_configuration(name: str, doc: Doc) -> None:
    """Each value parses (above), and together they pass statsd-ao's own checks at start:
    a local of a fleet with a backend token, or a fleet member without the fleet's token,
    would not start."""
    build({}, environ=sample_environment(statsd_ao(doc)))


@pytest.mark.parametrize(("name", "doc"), workloads())
def test_probes_reach_health_and_ready_on_the_http_port(name: str, doc: Doc) -> None:
    container = statsd_ao(doc)
    http = parse_address(env_values(container)["STATSD_AO_HTTP"])
    # The kubelet probes through the pod IP: a loopback-only endpoint would always fail.
    assert http.host in ("0.0.0.0", "::"), name
    # Not 8080: in a pod's shared network namespace an app on that port keeps statsd-ao
    # from starting, and the pod from ever being ready.
    assert http.port == HTTP_PORT, name
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
    assert security.get("runAsGroup", IMAGE_USER) == IMAGE_USER != 0
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


# The files with a proxy per node: a PriorityClass, the DaemonSet, its Service first.
NODE_TIERS = ("daemonset.yaml", "fleet.yaml")


def node_tier(name: str) -> tuple[Doc, Doc, Doc]:
    priority, found, service = documents(name)[:3]
    assert (priority["kind"], found["kind"], service["kind"]) == tuple(EXPECTED_KINDS[name][:3])
    return priority, found, service


@pytest.mark.parametrize("name", NODE_TIERS)
def test_the_daemonset_service_keeps_traffic_on_the_node(name: str) -> None:
    _, daemonset, service = node_tier(name)
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


def settings(container: Doc) -> dict[str, Any]:
    """statsd-ao's configuration in this container: its env parsed, defaults for the rest."""
    config = {field.name: field.default for field in dataclasses.fields(Config)}
    env = env_values(container)
    for setting in SETTINGS:
        if setting.env in env:
            config[setting.name] = setting.parse(env[setting.env])
    return config


def quantity(text: str) -> int:
    """A Kubernetes memory quantity in bytes (the binary suffixes these files use)."""
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", text).groups()  # type: ignore[union-attr]
    return int(number) * _MI[unit]


# What statsd-ao can hold at worst, from the figures measured (README, docs/delivery.md,
# bench/README.md); each rounded up.
PROCESS_BYTES = 64 << 20  # the idle process with the C parts: 46 MB RSS measured
PENDING_BYTES = 260  # per measurement waiting for delivery (210-260 measured)
TAG_SET_BYTES = 550  # per tag set the guard admits, as a live series (1,000,000: 522 MiB)
FLUSH_HEADROOM = 1.2  # a flush's measurements and posts on top


@pytest.mark.parametrize(("name", "doc"), workloads())
def test_the_memory_limit_holds_what_the_bounds_let_statsd_ao_keep(name: str, doc: Doc) -> None:
    """Both bounds reached (an API outage with --max-pending full, and the cardinality
    guard's total budget of series in use) must not end in an OOM kill, which loses the
    interval in progress and every pending post not yet in the spool.  The socket's receive
    buffer is charged to the pod too (the kernel doubles what is asked for)."""
    container = statsd_ao(doc)
    config = settings(container)
    worst = (
        PROCESS_BYTES
        + config["max_pending"] * PENDING_BYTES
        + config["cardinality_total_limit"] * TAG_SET_BYTES
        + 2 * config["rcvbuf"]
    ) * FLUSH_HEADROOM
    limit = quantity(container["resources"]["limits"]["memory"])
    assert worst <= limit, f"{name}: {worst / 2**20:.0f} MiB at worst, limit {limit >> 20} MiB"


def pre_stop_seconds(container: Doc) -> float:
    hook = container.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    command = hook["exec"]["command"]
    assert command[0] == "sleep", command  # the image has coreutils' sleep, and no shell
    return float(command[1])


@pytest.mark.parametrize(("name", "doc"), workloads())
def test_the_grace_period_covers_the_shutdown(name: str, doc: Doc) -> None:
    """The kubelet kills at terminationGracePeriodSeconds, counted from the start of the
    preStop hook: the hook, then the delivery time at shutdown, and a margin for the final
    flush and closing the spool must fit (for the sidecar, after the app's own 15 s)."""
    container = statsd_ao(doc)
    grace = pod_spec(doc)["terminationGracePeriodSeconds"]
    app = 15 if container.get("restartPolicy") == "Always" else 0
    needed = app + pre_stop_seconds(container) + settings(container)["shutdown_timeout"] + 5
    assert needed <= grace, f"{name}: {needed} s needed, {grace} s granted"


@pytest.mark.parametrize(("name", "doc"), workloads())
def test_no_service_account_token_is_mounted(name: str, doc: Doc) -> None:
    assert pod_spec(doc)["automountServiceAccountToken"] is False, name


@pytest.mark.parametrize(("name", "doc"), workloads())
def test_the_spool_volume_belongs_to_the_proxys_group(name: str, doc: Doc) -> None:
    """fsGroup: the kubelet makes the pod's volumes group-owned (setgid) by 10001 and gives
    every container that group: the spool is writable by the proxy, and in the sidecar a
    Unix socket (mode 0660) is writable by an app under any uid."""
    assert pod_spec(doc)["securityContext"]["fsGroup"] == IMAGE_USER, name


@pytest.mark.parametrize("name", NODE_TIERS)
def test_the_daemonset_tags_host_with_the_node_name(name: str) -> None:
    """A pod's name (the default `host`) changes on every rollout: new tag sets, new series."""
    container = statsd_ao(node_tier(name)[1])
    env = {item["name"]: item for item in container["env"]}
    tags = dict(pair.split("=") for pair in env["STATSD_AO_TAGS"]["value"].split(","))
    assert tags["host"] == "$(NODE_NAME)"
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


@pytest.mark.parametrize("name", NODE_TIERS)
def test_a_daemonset_rollout_starts_the_new_pod_before_stopping_the_old(name: str) -> None:
    """maxSurge: the node always has a ready proxy (the Service sends to the ready one, as
    internalTrafficPolicy: Local has no other node to fall back on); the new one is ready a
    while before the old one goes; the old one listens a while after it is taken out."""
    spec = node_tier(name)[1]["spec"]
    rolling = spec["updateStrategy"]["rollingUpdate"]
    assert (rolling["maxSurge"], rolling["maxUnavailable"]) == (1, 0)
    assert spec["minReadySeconds"] >= 5
    container = statsd_ao(node_tier(name)[1])
    assert pre_stop_seconds(container) >= 3
    # Two pods of a node cannot both hold a hostPort: a surge needs the Service.
    assert all("hostPort" not in port for port in container["ports"])


@pytest.mark.parametrize("name", NODE_TIERS)
def test_the_daemonset_runs_on_every_node_with_its_own_priority(name: str) -> None:
    priority, found, _ = node_tier(name)
    spec = found["spec"]["template"]["spec"]
    assert spec["priorityClassName"] == priority["metadata"]["name"]
    assert 0 < priority["value"] < 2_000_000_000  # above apps, below Kubernetes' own
    assert priority["globalDefault"] is False
    assert {"operator": "Exists"} in spec["tolerations"]  # tainted nodes too


def fleet() -> dict[str, Doc]:
    """fleet.yaml's documents by kind, the global tier's Service as "Headless"."""
    _, local, local_service, globals_, headless, budget = documents("fleet.yaml")
    return {
        "DaemonSet": local,
        "Service": local_service,
        "StatefulSet": globals_,
        "Headless": headless,
        "PodDisruptionBudget": budget,
    }


def test_the_fleet_locals_forward_to_every_global_through_the_headless_service() -> None:
    """A dns: target is a member per A record: the Service must be headless (a cluster IP
    would be one member, behind which kube-proxy spreads connections, not metric names),
    name the StatefulSet's pods, and lead to the port the globals listen on."""
    docs = fleet()
    headless, globals_ = docs["Headless"], docs["StatefulSet"]
    assert headless["spec"]["clusterIP"] == "None"
    assert not headless["spec"].get("publishNotReadyAddresses", False)  # ready globals only
    assert globals_["spec"]["serviceName"] == headless["metadata"]["name"]
    labels = globals_["spec"]["template"]["metadata"]["labels"]
    assert globals_["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert headless["spec"]["selector"].items() <= labels.items()
    assert globals_["spec"]["replicas"] == 2
    (port,) = headless["spec"]["ports"]
    assert (port["port"], port["protocol"]) == (FLEET_PORT, "TCP")
    container = statsd_ao(globals_)
    target = next(p for p in container["ports"] if p["name"] == port["targetPort"])
    listen = parse_address(env_values(container)["STATSD_AO_FLEET_LISTEN"])
    assert (
        (listen.host, listen.port)
        == ("0.0.0.0", FLEET_PORT)
        == ("0.0.0.0", target["containerPort"])
    )
    local = statsd_ao(docs["DaemonSet"])
    (forward,) = parse_targets(env_values(local)["STATSD_AO_FORWARD"])
    # The Service in the pod's own namespace (from the Downward API), completed by the
    # pod's DNS search list.
    assert forward == (f"{headless['metadata']['name']}.sample-NAMESPACE.svc", FLEET_PORT)
    namespace = env_items(docs["DaemonSet"])["NAMESPACE"]
    assert namespace["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_the_fleet_shares_one_token_and_one_flush_interval() -> None:
    """Every member has the fleet's token from the same Secret; the locals have no backend
    token (they never post); both tiers flush on the same interval."""
    docs = fleet()
    local, globals_ = statsd_ao(docs["DaemonSet"]), statsd_ao(docs["StatefulSet"])
    tokens = [
        env_items(d)["STATSD_AO_FLEET_TOKEN"] for d in (docs["DaemonSet"], docs["StatefulSet"])
    ]
    for token in tokens:
        from_example_secret(token)
    assert tokens[0]["valueFrom"] == tokens[1]["valueFrom"]
    backend = {
        "STATSD_AO_OTLP_TOKEN",
        "APPOPTICS_TOKEN",
        "STATSD_AO_SWO_REGION",
        "STATSD_AO_OTLP_URL",
    }
    assert not backend & set(env_items(docs["DaemonSet"]))
    assert settings(local)["flush_interval"] == settings(globals_)["flush_interval"]
    assert settings(globals_)["udp"] is None  # only the locals take StatsD


def test_the_fleet_globals_leave_one_at_a_time() -> None:
    """A drain or upgrade takes at most one global; the budget selects the globals only
    (not the locals, whose DaemonSet a drain leaves in place anyway)."""
    docs = fleet()
    budget = docs["PodDisruptionBudget"]["spec"]
    assert budget["maxUnavailable"] == 1
    selector = budget["selector"]["matchLabels"].items()
    assert selector <= docs["StatefulSet"]["spec"]["template"]["metadata"]["labels"].items()
    assert not selector <= docs["DaemonSet"]["spec"]["template"]["metadata"]["labels"].items()
