"""The container image, built from the unmodified Dockerfile and run, with podman.

The bases are local stand-ins for the official python images (tests/standin.py); podman
builds in Docker's format (so HEALTHCHECK is kept) and the containers run on the host's
network, where the tests reach the proxy and the proxy reaches tests/fakeapi.py on
127.0.0.1 (one runs on podman's bridge, to try published ports).  Needs root, podman
(with runc) and debootstrap: .ci/run installs them.  Without them these tests are skipped,
except under CI, where that is a failure.  First run about two minutes (the stand-ins are
then kept in podman's store), later ones about 45 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import standin
from tests.fakeapi import FakeAppOptics
from tests.proxy import Proxy
from tests.required import require

pytestmark = pytest.mark.image

ROOT = Path(__file__).resolve().parent.parent
IMAGE_ID = "10001"  # the image's user and group
SPOOL = "/var/spool/statsd-ao"
DOCKER_STOP_TIMEOUT = 10.0  # what `docker stop` (and podman's) waits before SIGKILL


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The image's tag, built from this checkout, and removed at the end (a build from the
    stand-ins takes some 20 s; kept, each clone's image would stay behind)."""
    missing = standin.missing_tools()
    require(not missing, f"{', '.join(missing)} (to build the image)")
    bases = STANDINS.setdefault("bases", standin.bases())
    # One tag per checkout, so two worktrees testing at once do not replace each other's.
    tag = f"localhost/statsd-ao-test:{hashlib.sha256(bytes(ROOT)).hexdigest()[:12]}"
    before = image_id(tag)
    standin.build(tag, str(ROOT / "Dockerfile"), ROOT, *bases.build_args())
    after = image_id(tag)
    if before not in (None, after):  # left by a run that did not finish, now untagged
        standin.podman("rmi", before, check=False)
    yield tag
    standin.podman("rmi", tag, check=False)


STANDINS: dict[str, standin.Bases] = {}  # made (or found) once per test run


def image_id(tag: str) -> str | None:
    if not standin.image_exists(tag):
        return None
    return standin.podman("image", "inspect", "--format={{.Id}}", tag).strip()


def inspect(tag: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = json.loads(standin.podman("image", "inspect", tag))
    return found[0]


async def podman(*args: str) -> tuple[int, str]:
    """podman without blocking the loop (the proxy's output readers run on it)."""
    process = await asyncio.create_subprocess_exec(
        "podman",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


@contextlib.asynccontextmanager
async def container(
    tag: str, name: str, env: dict[str, str], *options: str
) -> AsyncIterator[Proxy]:
    """`podman run` of the image, attached: tests/proxy.py reads its log and output as it
    does the program's, and its exit status is the container's.  The container is removed
    at the end whatever happened (killing the attached client would leave it running)."""
    command = ["podman", "run", "--rm", f"--name={name}", "--network=host", *standin.ulimits()]
    for key, value in env.items():
        command.append(f"--env={key}={value}")
    try:
        async with Proxy(command=[*command, *options, tag]) as proxy:
            yield proxy
    finally:
        await podman("rm", "--force", "--time=0", "--ignore", name)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http_port(proxy: Proxy) -> int:
    line = next(line for line in proxy.stderr if "http endpoint on" in line)
    return int(line.split("http endpoint on ")[1].split()[0].rpartition(":")[2])


def get(port: int, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return answer.status, answer.read()


async def docker_stop(name: str, proxy: Proxy) -> tuple[int, float]:
    """`podman stop` as `docker stop` does it (SIGTERM, SIGKILL after 10 s): the exit status
    and the seconds it took."""
    started = time.monotonic()
    code, out = await podman("stop", f"--time={DOCKER_STOP_TIMEOUT:g}", name)
    assert code == 0, out
    assert proxy.process is not None
    status = await asyncio.wait_for(proxy.process.wait(), 30)
    return status, time.monotonic() - started


def test_the_image_is_configured_as_the_dockerfile_says(image: str) -> None:
    found = inspect(image)
    config = found["Config"]
    assert config["User"] == f"{IMAGE_ID}:{IMAGE_ID}"
    assert config["Entrypoint"] == ["statsd-ao"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["STATSD_AO_HTTP"].startswith("0.0.0.0:")  # reachable through -p
    assert float(env["STATSD_AO_SHUTDOWN_TIMEOUT"]) < DOCKER_STOP_TIMEOUT
    assert "/health" in " ".join(found["Healthcheck"]["Test"])  # kept: --format=docker


def test_the_proxy_runs_as_10001_answers_health_and_prints_a_metric_sent_over_udp(
    image: str,
) -> None:
    name = f"statsd-ao-test-{uuid.uuid4().hex[:8]}"
    env = {
        "STATSD_AO_UDP": "127.0.0.1:0",  # the host's network: free ports, loopback only
        # A port, not 0: the HEALTHCHECK reads it from this variable.
        "STATSD_AO_HTTP": f"127.0.0.1:{free_port()}",
        "STATSD_AO_FLUSH_INTERVAL": "1",
    }

    async def scenario() -> None:
        async with container(image, name, env) as proxy:
            assert "hot path: C loop" in proxy.log  # the C parts are in the image
            assert get(http_port(proxy), "/health") == (200, b'{"status":"ok","reasons":[]}')
            code, out = await podman("healthcheck", "run", name)  # the image's HEALTHCHECK
            assert code == 0, out
            code, status = await podman("exec", name, "cat", "/proc/1/status")
            ids = {line.split(":")[0]: line.split()[1:] for line in status.splitlines()}
            assert ids["Uid"] == [IMAGE_ID] * 4 and ids["Gid"] == [IMAGE_ID] * 4, status
            assert set(ids["Groups"]) <= {IMAGE_ID}  # no other group (not root's 0)

            await proxy.send([b"image.test:3|c|#via:podman"])
            await proxy.wait_for_log("1 series, 1 measurements printed", timeout=15)
            printed = [json.loads(line) for line in proxy.stdout]
            (measurement,) = [m for post in printed for m in post.get("measurements", [])]
            assert (measurement["name"], measurement["value"]) == ("image.test", 3.0)
            assert measurement["tags"]["via"] == "podman"

            status_code, elapsed = await docker_stop(name, proxy)
            assert status_code == 0, proxy.log
            assert elapsed < DOCKER_STOP_TIMEOUT

    asyncio.run(scenario())


def test_published_ports_reach_the_endpoint_and_the_udp_listener(image: str) -> None:
    """`docker run -p` as a user would: the container on its own network (podman's bridge),
    the image's own addresses (no STATSD_AO_* set), and both ports published on this
    machine's loopback.  An endpoint bound to the container's loopback is unreachable so."""
    name = f"statsd-ao-test-{uuid.uuid4().hex[:8]}"
    http, udp = free_port(), free_port()
    command = ["podman", "run", "--rm", f"--name={name}", *standin.ulimits()]
    command += [f"--publish=127.0.0.1:{http}:18125", f"--publish=127.0.0.1:{udp}:8125/udp"]
    command += ["--env=STATSD_AO_FLUSH_INTERVAL=1", image]

    async def scenario() -> None:
        try:
            async with Proxy(command=command) as proxy:
                assert (await asyncio.to_thread(get, http, "/health"))[0] == 200
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                    sender.sendto(b"published.test:1|c", ("127.0.0.1", udp))
                await proxy.wait_for_log("1 series, 1 measurements printed", timeout=15)
                assert b"published.test" in b"".join(proxy.stdout)
                status, _ = await docker_stop(name, proxy)
                assert status == 0, proxy.log
        finally:
            await podman("rm", "--force", "--time=0", "--ignore", name)

    asyncio.run(scenario())


def spool_files(volume: str) -> list[os.stat_result]:
    mountpoint = standin.podman("volume", "inspect", "--format={{.Mountpoint}}", volume)
    return [path.stat() for path in Path(mountpoint.strip()).rglob("*")]


def test_a_read_only_root_keeps_the_spool_and_a_stop_in_an_outage_exits_0_in_time(
    image: str,
) -> None:
    """API down: `docker stop` ends in exit 0 before its SIGKILL, with the post in the spool
    volume (the root file system is read-only, no tmpfs anywhere), and the next container on
    that volume delivers it."""
    volume = f"statsd-ao-test-{uuid.uuid4().hex[:8]}"
    standin.podman("volume", "create", volume)
    try:
        asyncio.run(_outage_then_delivery(image, volume))
    finally:
        standin.podman("volume", "rm", "--force", volume, check=False)


async def _outage_then_delivery(image: str, volume: str) -> None:
    options = ("--read-only", "--read-only-tmpfs=false", f"--volume={volume}:{SPOOL}")
    async with FakeAppOptics() as api:
        env = {
            "APPOPTICS_TOKEN": api.token,
            "STATSD_AO_API_URL": api.url,
            "STATSD_AO_UDP": "127.0.0.1:0",
            "STATSD_AO_HTTP": "off",
            "STATSD_AO_FLUSH_INTERVAL": "1",
            "STATSD_AO_SELF_METRICS": "off",
        }
        api.down = True
        name = f"statsd-ao-test-{uuid.uuid4().hex[:8]}"
        async with container(image, name, env, *options) as proxy:
            await proxy.send([b"image.spooled:5|c"])
            await api.wait_for(lambda api: len(api.requests) >= 1, timeout=15)
            status, elapsed = await docker_stop(name, proxy)
            assert status == 0, proxy.log  # not 137: it was not killed
            assert elapsed < DOCKER_STOP_TIMEOUT
        assert api.accepted == []
        files = spool_files(volume)
        assert len(files) >= 2, "nothing spooled"  # the lock and at least one segment
        assert {(f.st_uid, f.st_gid) for f in files} == {(int(IMAGE_ID), int(IMAGE_ID))}

        api.down = False
        name = f"statsd-ao-test-{uuid.uuid4().hex[:8]}"
        async with container(image, name, env, *options) as proxy:
            await api.wait_for(
                lambda api: any(m["name"] == "image.spooled" for m in api.accepted), timeout=20
            )
            status, _ = await docker_stop(name, proxy)
            assert status == 0, proxy.log
        (delivered,) = [m for m in api.accepted if m["name"] == "image.spooled"]
        assert delivered["value"] == 5.0


# The unit, run by systemd in a container: statsd-ao from the image, its settings from
# deploy/systemd/statsd-ao.env with the ports and the API moved to this test's.
# (COPY --from the image itself: a stage `FROM {image}` with nothing in it would be taken
# for an intermediate image and removed, the test's image with it.)
SYSTEMD_STEPS = """\
FROM {systemd}
COPY --from={image} /usr/local /usr/local
RUN ln -s /usr/local /opt/statsd-ao && mkdir /etc/statsd-ao
COPY deploy/systemd/statsd-ao.service /etc/systemd/system/
"""


def test_the_systemd_unit_runs_the_proxy_sandboxed_and_keeps_its_spool_across_restarts(
    image: str, tmp_path: Path
) -> None:
    """deploy/systemd/statsd-ao.service as systemd runs it: a made-up user, no capabilities,
    seccomp, no new privileges; in an API outage `systemctl stop` ends in success with the
    post in the state directory, and the next start delivers it."""
    tag = f"{image}-systemd"
    steps = tmp_path / "Containerfile"
    steps.write_text(SYSTEMD_STEPS.format(image=image, systemd=STANDINS["bases"].systemd))
    standin.build(tag, str(steps), ROOT)
    name = f"statsd-ao-test-{uuid.uuid4().hex[:8]}"
    standin.podman(
        "run",
        "--detach",
        f"--name={name}",
        "--systemd=always",
        "--network=host",
        *standin.ulimits(),
        tag,
        "/lib/systemd/systemd",
    )
    try:
        asyncio.run(_systemd_scenario(name, tmp_path))
    finally:
        standin.podman("rm", "--force", "--time=0", name, check=False)
        standin.podman("rmi", tag, check=False)


async def systemctl(name: str, *args: str) -> str:
    code, out = await podman("exec", name, "systemctl", *args)
    assert code == 0, f"systemctl {' '.join(args)}: {out}"
    return out


async def _systemd_scenario(name: str, tmp_path: Path) -> None:
    udp, http = free_port(), free_port()
    async with FakeAppOptics() as api:
        settings = (ROOT / "deploy" / "systemd" / "statsd-ao.env").read_text()
        settings = settings.replace("127.0.0.1:8125", f"127.0.0.1:{udp}")
        settings = settings.replace("127.0.0.1:18125", f"127.0.0.1:{http}")
        settings = settings.replace("REPLACE-WITH-YOUR-APPOPTICS-TOKEN", api.token)
        settings += f"STATSD_AO_API_URL={api.url}\nSTATSD_AO_FLUSH_INTERVAL=1\n"
        settings += "STATSD_AO_SELF_METRICS=off\nSTATSD_AO_SHUTDOWN_TIMEOUT=2\n"
        (tmp_path / "statsd-ao.env").write_text(settings)
        code, out = await podman("cp", str(tmp_path / "statsd-ao.env"), f"{name}:/etc/statsd-ao/")
        assert code == 0, out
        # Booted ("degraded": some unit of the container's own failed; not ours).
        _, state = await podman("exec", name, "systemctl", "is-system-running", "--wait")
        assert state.strip() in ("running", "degraded"), state
        api.down = True
        await systemctl(name, "start", "statsd-ao")
        await ready(http)
        pid = (await systemctl(name, "show", "--property=MainPID", "--value", "statsd-ao")).strip()
        code, status = await podman("exec", name, "cat", f"/proc/{pid}/status")
        fields = {line.split(":")[0]: line.split()[1:] for line in status.splitlines()}
        assert fields["Uid"][0] != "0" and fields["Gid"][0] != "0"  # DynamicUser
        assert fields["CapEff"] == ["0000000000000000"]
        assert fields["NoNewPrivs"] == ["1"] and fields["Seccomp"] == ["2"]

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"systemd.spooled:7|c", ("127.0.0.1", udp))
        await api.wait_for(lambda api: len(api.requests) >= 1, timeout=15)
        await systemctl(name, "stop", "statsd-ao")
        shown = await systemctl(name, "show", "--property=Result,ExecMainStatus", "statsd-ao")
        assert shown.split() == ["Result=success", "ExecMainStatus=0"]
        code, listing = await podman("exec", name, "ls", "/var/lib/private/statsd-ao/appoptics")
        assert code == 0 and ".seg" in listing, listing

        api.down = False
        await systemctl(name, "start", "statsd-ao")
        await api.wait_for(
            lambda api: any(m["name"] == "systemd.spooled" for m in api.accepted), timeout=20
        )
        await systemctl(name, "stop", "statsd-ao")


async def ready(port: int, timeout: float = 20.0) -> None:
    """Until /ready answers 200: the service's start gives no other sign from outside."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                if (await asyncio.to_thread(get, port, "/ready"))[0] == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.05)
