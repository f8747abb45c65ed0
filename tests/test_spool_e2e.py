"""The durable outbox with the real program: kill -9 and SIGTERM during an outage, a full
disk, damaged files, a second proxy on the same directory, a directory it may not use.

The strict fake API plays the outage (``down``: every post answered 503).  What the proxy
has made durable is read from the spool directory itself (segments minus acknowledgements),
polled like /proc in `tests.proxy`: the kernel signals neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from statsd_ao.io import spoolfile
from statsd_ao.io.spoolfile import Record
from tests.bounded import E2E_TIMEOUT, run_bounded
from tests.fakeapi import AcceptedMeasurement, FakeAppOptics
from tests.proxy import Proxy
from tests.required import require

TOKEN = "spool-token"
DAY = "86400"
SHUTDOWN = 2.0


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    run_bounded(scenario(), E2E_TIMEOUT)


def spooled(directory: Path) -> Counter[str]:
    """Measurement names in the spool's segments, less the acknowledged posts (read only)."""
    names: Counter[str] = Counter()
    for path in directory.glob("*.seg"):
        try:
            records, _ = spoolfile.decode_records(path.read_bytes()[len(spoolfile.SEGMENT_MAGIC) :])
        except FileNotFoundError:  # delivered and removed meanwhile
            continue
        acked = spoolfile.read_acks(path.with_suffix(".ack"))
        for index, record in enumerate(records):
            if record is not None and record.count and index not in acked:
                body = orjson.loads(record.body)
                names.update(m["name"] for m in body["measurements"])
    return names


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll the file system (it has no event to wait for) until ``check`` holds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def counters(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}.s{i}:{i + 1}|c".encode() for i in range(n)]


def sent(prefix: str, n: int) -> set[str]:
    return {f"{prefix}.s{i}" for i in range(n)}


def exactly_once(accepted: list[AcceptedMeasurement]) -> Counter[str]:
    names = Counter(m["name"] for m in accepted)
    assert set(names.values()) <= {1}, [n for n, c in names.items() if c > 1]
    for m in accepted:
        assert m.get("value") == int(m["name"].rpartition(".s")[2]) + 1  # exact, not summed
    return names


def spool_proxy(api: FakeAppOptics, spool: Path, *args: str, **options: Any) -> Proxy:
    flags = ("--api-url", api.url, "--spool-dir", str(spool), "--shutdown-timeout", str(SHUTDOWN))
    return Proxy(*flags, *args, env={"APPOPTICS_TOKEN": TOKEN}, **options)


def test_kill_9_during_an_outage_then_restart_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            async with spool_proxy(api, spool, "--flush-interval", "1") as proxy:
                await proxy.send(counters("before", 50))  # delivered and acknowledged
                await api.wait_for(lambda a: sent("before", 50) <= {m["name"] for m in a.accepted})
                await until(lambda: not spooled(spool / "appoptics"))
                api.down = True
                await proxy.send(counters("during", 300))
                await until(lambda: set(spooled(spool / "appoptics")) >= sent("during", 300))
                await proxy.kill()  # SIGKILL: no final flush, no drain, no close
            restarted_at = time.time()
            api.down = False
            async with spool_proxy(api, spool, "--flush-interval", DAY) as again:
                everything = sent("before", 50) | sent("during", 300)
                await api.wait_for(lambda a: everything <= {m["name"] for m in a.accepted})
                assert await again.stop() == 0, again.log
            assert "300 measurements a previous run left" in again.log
            assert exactly_once(api.accepted).keys() == everything
            replayed = [m for m in api.accepted if m["name"].startswith("during")]
            assert all(m["time"] is not None and m["time"] < restarted_at for m in replayed)
            assert not api.rejected
        assert not list((spool / "appoptics").glob("*.seg"))

    run(scenario)


def test_sigterm_during_an_outage_exits_in_time_and_the_next_run_delivers(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            api.down = True
            async with spool_proxy(api, spool, "--flush-interval", DAY) as proxy:
                await proxy.send(counters("kept", 2500))
                signalled = time.monotonic()
                assert await proxy.stop(signal.SIGTERM) == 0, proxy.log
                took = time.monotonic() - signalled
            assert took < SHUTDOWN + 1.0, f"exit took {took:.1f}s"
            assert "2500 measurements kept in" in proxy.log
            assert "could not be delivered" not in proxy.log
            assert set(spooled(spool / "appoptics")) == sent("kept", 2500)
            api.down = False
            async with spool_proxy(api, spool, "--flush-interval", DAY) as again:
                await api.wait_for(lambda a: len(a.accepted) >= 2500)
                assert await again.stop() == 0, again.log
            assert exactly_once(api.accepted).keys() == sent("kept", 2500)

    run(scenario)


def _small_files() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_a_full_disk_is_counted_and_what_is_in_memory_still_goes_out(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes every larger write fail with EFBIG (Python ignores SIGXFSZ), as a
    full disk fails with ENOSPC: the proxy says so, counts it, and keeps posting."""
    spool = tmp_path / "spool"

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            api.down = True
            flags = ("--flush-interval", "1", "--http", "127.0.0.1:0", "--self-metrics", "on")
            async with spool_proxy(api, spool, *flags, preexec=_small_files) as proxy:
                await proxy.send(counters("big", 400))
                await proxy.wait_for_log("File too large", timeout=20.0)
                assert "the posts stay in memory" in proxy.log
                api.down = False
                await api.wait_for(lambda a: sent("big", 400) <= {m["name"] for m in a.accepted})
                await api.wait_for(lambda a: _value(a, "statsd_ao.spool.write_errors") > 0)
                assert await proxy.stop() == 0, proxy.log
            ours = [m for m in api.accepted if m["name"].startswith("big.")]
            assert exactly_once(ours).keys() == sent("big", 400)

    run(scenario)


def _value(api: FakeAppOptics, name: str) -> float:
    return sum(m.get("value", 0.0) for m in api.accepted if m["name"] == name)


def test_damaged_files_are_skipped_and_counted_and_the_good_posts_delivered(
    tmp_path: Path,
) -> None:
    root = tmp_path / "spool"
    spool = root / "appoptics"  # the AppOptics sink's own subdirectory
    spool.mkdir(mode=0o700, parents=True)
    os.chmod(root, 0o700)
    stamp = int(time.time()) // 10 * 10
    good = [
        {"name": f"old.s{i}", "tags": {"host": "h"}, "time": stamp, "period": 10, "value": i + 1}
        for i in range(3)
    ]
    body = orjson.dumps({"measurements": good})
    bad = orjson.dumps({"measurements": [dict(good[0], name="old.corrupted")]})
    spoolfile.write_segment(spool, 1, [Record(body, 3, time.time() + 3600)])
    spoolfile.write_segment(spool, 2, [Record(bad, 1, time.time() + 3600)])
    segment = spoolfile.segment_path(spool, 2)
    data = bytearray(segment.read_bytes())
    data[-5] ^= 0xFF  # inside the body: the checksum fails
    segment.write_bytes(bytes(data))
    (spool / "000000000003.seg").write_bytes(b"\x00" * 512)  # a file that is not ours
    (spool / "000000000004.seg.tmp").write_bytes(spoolfile.SEGMENT_MAGIC)  # a torn write

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            async with spool_proxy(api, root, "--flush-interval", DAY) as proxy:
                await api.wait_for(lambda a: len(a.accepted) >= 3)
                assert await proxy.stop() == 0, proxy.log
            assert "skipped 2 damaged records or files" in proxy.log
            assert "removed 1 unfinished writes" in proxy.log
            assert exactly_once(api.accepted).keys() == {"old.s0", "old.s1", "old.s2"}
        assert (spool / "000000000003.seg.corrupt").exists()

    run(scenario)


def test_a_second_proxy_on_the_same_directory_refuses_to_start(tmp_path: Path) -> None:
    spool = tmp_path / "spool"

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api, spool_proxy(api, spool) as first:
            second = spool_proxy(api, spool)
            with pytest.raises(RuntimeError, match="in use by another statsd-ao"):
                await second.start()
            assert second.process is not None and second.process.returncode == 1
            assert f"(pid {first.process.pid if first.process else 0})" in second.log
            assert await first.stop() == 0

    run(scenario)


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """No one may create files in ``directory``: mode 0500, or for root (who writes through
    modes) the immutable attribute."""
    if os.geteuid() != 0:
        directory.chmod(0o500)
        yield
        directory.chmod(0o700)
        return
    require(shutil.which("chattr") is not None, "chattr (e2fsprogs)")
    made = subprocess.run(["chattr", "+i", str(directory)], check=False, capture_output=True)
    require(made.returncode == 0, f"chattr +i on {directory} ({made.stderr.decode().strip()})")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_a_directory_the_proxy_may_not_write_stops_it_with_the_reason(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            proxy = spool_proxy(api, spool)
            why = "cannot use spool directory .*: (Permission denied|Operation not permitted)"
            with pytest.raises(RuntimeError, match=why):
                await proxy.start()
            assert proxy.process is not None and proxy.process.returncode == 1
            assert not api.requests

    with unwritable(spool):
        run(scenario)


def test_sigterm_during_an_outage_returns_once_everything_is_in_the_spool(
    tmp_path: Path,
) -> None:
    """Nothing is gained by waiting out a long shutdown timeout while the API is down and
    every post is safe on disk: the next run delivers them."""
    spool = tmp_path / "spool"

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            api.down = True
            flags = ("--api-url", api.url, "--spool-dir", str(spool), "--shutdown-timeout", "60")
            async with Proxy(*flags, "--flush-interval", DAY, env={"APPOPTICS_TOKEN": TOKEN}) as p:
                await p.send(counters("safe", 500))
                signalled = time.monotonic()
                assert await p.stop(signal.SIGTERM) == 0, p.log
                took = time.monotonic() - signalled
            assert took < 15.0, f"exit took {took:.1f}s of a 60 s timeout\n{p.log}"
            assert "500 measurements kept in" in p.log
            assert set(spooled(spool / "appoptics")) == sent("safe", 500)

    run(scenario)


def test_posts_an_earlier_version_left_in_the_spool_root_are_delivered(tmp_path: Path) -> None:
    """Before each sink had a subdirectory, AppOptics posts were kept in --spool-dir itself:
    the AppOptics sink adopts them, and delivers them once."""
    root = tmp_path / "spool"
    root.mkdir(mode=0o700)
    stamp = int(time.time()) // 10 * 10
    kept = [
        {"name": f"legacy.s{i}", "tags": {"host": "h"}, "time": stamp, "period": 10, "value": i + 1}
        for i in range(5)
    ]
    body = orjson.dumps({"measurements": kept})
    spoolfile.write_segment(root, 1, [Record(body, 5, time.time() + 3600)])

    async def scenario() -> None:
        async with FakeAppOptics(token=TOKEN) as api:
            async with spool_proxy(api, root, "--flush-interval", DAY) as proxy:
                await api.wait_for(lambda a: len(a.accepted) >= 5)
                assert await proxy.stop() == 0, proxy.log
            assert "moved 1 segments an earlier version left" in proxy.log
            assert exactly_once(api.accepted).keys() == {f"legacy.s{i}" for i in range(5)}
        assert not list(root.glob("*.seg")) and not list((root / "appoptics").glob("*.seg"))

    run(scenario)
