"""The durable outbox on real files: format, damage found at start, the lock, the bound,
failed writes, and (hypothesis) that a reopened spool holds exactly what was not settled."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsd_ao.io import spoolfile
from statsd_ao.io.spool import Spool, SpoolError, Ticket
from statsd_ao.io.spoolfile import MIN_MAX_BYTES, Record
from tests.bounded import run_bounded

T = Any


def run(coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return run_bounded(coroutine())


async def end_of_pass(spool: Spool) -> None:
    """Let the spool seal this pass's segment, and its writer thread write it."""
    await asyncio.sleep(0)
    await spool.written()


async def reopen(directory: Path) -> tuple[Spool, list[tuple[Ticket, Record]]]:
    spool = Spool(directory)
    return spool, await spool.open()


def bodies(stored: list[tuple[Ticket, Record]]) -> list[bytes]:
    return [record.body for _, record in stored]


def files(directory: Path, suffix: str) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(suffix))


async def fill(directory: Path, posts: list[list[bytes]]) -> list[list[Ticket]]:
    """One segment per inner list (one loop pass each); the spool is closed afterwards."""
    spool = Spool(directory)
    await spool.open()
    tickets = []
    for segment in posts:
        tickets.append([spool.add(body, 1, 2e9) for body in segment])
        await end_of_pass(spool)
    await spool.close()
    return tickets


def test_posts_not_settled_come_back_in_order_with_their_counts_and_expiry(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        spool = Spool(tmp_path / "spool")
        assert await spool.open() == []
        first = spool.add(b"one", 3, 1_900_000_000.5)
        spool.add(b"two", 1, 1_900_000_001.0)
        await end_of_pass(spool)
        spool.add(b"three", 2, 1_900_000_002.0)
        spool.settle(first)
        await spool.close()
        again, stored = await reopen(tmp_path / "spool")
        assert [(r.body, r.count, r.expires) for _, r in stored] == [
            (b"two", 1, 1_900_000_001.0),
            (b"three", 2, 1_900_000_002.0),
        ]
        assert again.replayed == 3
        await again.close()

    run(scenario)


def test_files_are_private_to_the_proxys_user(tmp_path: Path) -> None:
    run(lambda: fill(tmp_path / "spool", [[b"a"], [b"b"]]))
    directory = tmp_path / "spool"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    made = list(directory.iterdir())
    assert {p.suffix for p in made} >= {".seg", ""}  # segments and the lock
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in made)


def test_a_segment_whose_posts_all_settled_is_deleted(tmp_path: Path) -> None:
    async def scenario() -> None:
        spool = Spool(tmp_path)
        await spool.open()
        tickets = [spool.add(b"x" * 100, 1, 2e9) for _ in range(3)]
        await end_of_pass(spool)
        await end_of_pass(spool)
        assert len(files(tmp_path, ".seg")) == 1
        for ticket in tickets:
            spool.settle(ticket)
        await spool.close()
        assert files(tmp_path, ".seg") == files(tmp_path, ".ack") == []
        assert spool.bytes == 0 and spool.segments == 0

    run(scenario)


def test_a_post_settled_in_the_pass_it_was_added_is_never_written(tmp_path: Path) -> None:
    async def scenario() -> None:
        spool = Spool(tmp_path)
        await spool.open()
        spool.settle(spool.add(b"gone", 1, 2e9))
        await spool.close()
        assert files(tmp_path, ".seg") == [] and spool.segments_written == 0

    run(scenario)


def test_a_split_post_is_acknowledged_when_both_halves_settle(tmp_path: Path) -> None:
    async def scenario() -> None:
        spool = Spool(tmp_path)
        await spool.open()
        ticket = spool.add(b"whole", 2, 2e9)
        await end_of_pass(spool)
        spool.split(ticket)
        spool.settle(ticket)
        await spool.close()
        again, stored = await reopen(tmp_path)
        assert bodies(stored) == [b"whole"]  # one half still out: the post is re-sent
        spool_ticket = stored[0][0]
        again.split(spool_ticket)
        again.settle(spool_ticket)
        again.settle(spool_ticket)
        await again.close()
        assert bodies((await reopen(tmp_path))[1]) == []

    run(scenario)


def test_an_unfinished_write_is_removed_and_counted(tmp_path: Path) -> None:
    run(lambda: fill(tmp_path, [[b"kept"]]))
    (tmp_path / "000000000007.seg.tmp").write_bytes(spoolfile.SEGMENT_MAGIC + b"\x01\x02")

    async def scenario() -> None:
        spool, stored = await reopen(tmp_path)
        assert bodies(stored) == [b"kept"]
        assert (spool.torn_writes, spool.corrupt) == (1, 0)
        assert spool.damaged == {"corrupt": 0, "torn_write": 1}
        assert not (tmp_path / "000000000007.seg.tmp").exists()
        await spool.close()

    run(scenario)


def test_a_record_with_a_flipped_bit_is_skipped_and_the_rest_delivered(tmp_path: Path) -> None:
    run(lambda: fill(tmp_path, [[b"first-body", b"second-body", b"third-body"]]))
    [segment] = files(tmp_path, ".seg")
    data = bytearray(segment.read_bytes())
    data[data.index(b"second-body") + 3] ^= 0x10
    segment.write_bytes(bytes(data))

    async def scenario() -> None:
        spool, stored = await reopen(tmp_path)
        assert bodies(stored) == [b"first-body", b"third-body"]
        assert spool.corrupt == 1
        await spool.close()

    run(scenario)


def test_a_truncated_segment_keeps_the_records_before_the_cut(tmp_path: Path) -> None:
    run(lambda: fill(tmp_path, [[b"a" * 50, b"b" * 50, b"c" * 50]]))
    [segment] = files(tmp_path, ".seg")
    data = segment.read_bytes()
    segment.write_bytes(data[: data.index(b"c" * 50) + 10])

    async def scenario() -> None:
        spool, stored = await reopen(tmp_path)
        assert bodies(stored) == [b"a" * 50, b"b" * 50]
        assert spool.corrupt == 1
        await spool.close()

    run(scenario)


def test_someone_elses_files_are_set_aside_or_left_alone(tmp_path: Path) -> None:
    run(lambda: fill(tmp_path, [[b"ours"]]))
    (tmp_path / "000000000009.seg").write_bytes(b"PK\x03\x04 a zip file, say")
    (tmp_path / "notes.txt").write_text("an operator's notes")
    (tmp_path / "000000000009.ack").write_bytes(b"\x00" * 16)

    async def scenario() -> None:
        spool, stored = await reopen(tmp_path)
        assert bodies(stored) == [b"ours"]
        assert spool.corrupt == 1
        await spool.close()

    run(scenario)
    assert (tmp_path / "000000000009.seg.corrupt").exists()  # for the operator to look at
    assert (tmp_path / "notes.txt").read_text() == "an operator's notes"


def test_a_torn_acknowledgement_only_re_sends_that_post(tmp_path: Path) -> None:
    async def scenario() -> None:
        spool = Spool(tmp_path)
        await spool.open()
        tickets = [spool.add(body, 1, 2e9) for body in (b"p0", b"p1", b"p2")]
        await end_of_pass(spool)
        spool.settle(tickets[0])
        spool.settle(tickets[1])
        await spool.close()

    run(scenario)
    [acks] = files(tmp_path, ".ack")
    acks.write_bytes(acks.read_bytes()[:-3])  # the second entry cut short

    async def check() -> None:
        spool, stored = await reopen(tmp_path)
        assert bodies(stored) == [b"p1", b"p2"]
        await spool.close()

    run(check)


def test_a_second_proxy_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        first = Spool(tmp_path)
        await first.open()
        second = Spool(tmp_path)
        with pytest.raises(SpoolError, match=rf"in use by another statsd-ao \(pid {os.getpid()}\)"):
            await second.open()
        await second.close()
        await first.close()
        third = Spool(tmp_path)  # released at close
        await third.open()
        await third.close()

    run(scenario)


def test_a_directory_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")

    async def scenario() -> None:
        spool = Spool(tmp_path / "file" / "spool")
        with pytest.raises(SpoolError, match=r"cannot use spool directory .*: Not a directory"):
            await spool.open()
        await spool.close()

    run(scenario)


def test_past_the_bound_the_oldest_segments_are_dropped_and_reported(tmp_path: Path) -> None:
    body = b"m" * (1024 * 1024)
    dropped: list[int] = []

    async def scenario() -> None:
        spool = Spool(tmp_path, max_bytes=MIN_MAX_BYTES)

        def on_drop(segment: int) -> int:
            dropped.append(segment)
            return 1

        spool.on_drop = on_drop
        await spool.open()
        for _ in range(40):
            spool.add(body, 1, 2e9)
            await end_of_pass(spool)
            assert spool.bytes <= MIN_MAX_BYTES
        await spool.close()
        assert spool.segments_dropped == len(dropped) >= 40 - MIN_MAX_BYTES // len(body)
        assert dropped == sorted(dropped) and dropped[0] == 1  # oldest first
        on_disk = sum(p.stat().st_size for p in files(tmp_path, ".seg"))
        assert on_disk == spool.bytes <= MIN_MAX_BYTES

    run(scenario)


def test_a_failed_write_is_counted_and_its_posts_stay_in_memory_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def disk_full(*args: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    async def scenario() -> None:
        spool = Spool(tmp_path)
        await spool.open()
        monkeypatch.setattr(spoolfile, "write_segment", disk_full)
        lost = spool.add(b"lost", 1, 2e9)
        await end_of_pass(spool)
        await spool.close()  # waits for the writer
        assert spool.write_errors == 1 and not spool.durable(lost)
        assert spool.bytes == 0
        monkeypatch.undo()

    run(scenario)
    assert "No space left on device" in caplog.text
    assert files(tmp_path, ".seg") == files(tmp_path, ".seg.tmp") == []


actions = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.binary(min_size=1, max_size=40)),
        st.tuples(st.just("settle"), st.integers(0, 30)),
        st.tuples(st.just("split"), st.integers(0, 30)),
        st.tuples(st.just("pass"), st.none()),
        st.tuples(st.just("restart"), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(actions)
def test_a_reopened_spool_holds_exactly_the_posts_not_settled(
    tmp_path_factory: pytest.TempPathFactory, script: list[tuple[str, Any]]
) -> None:
    directory = tmp_path_factory.mktemp("spool")

    async def scenario() -> None:
        spool = Spool(directory)
        await spool.open()
        posts: list[tuple[Ticket, bytes, int]] = []  # ticket, body, pieces out
        for action, arg in script:
            if action == "add":
                posts.append((spool.add(arg, 1, 2e9), arg, 1))
            elif action in ("settle", "split") and posts:
                ticket, body, out = posts[arg % len(posts)]
                if out == 0:
                    continue
                index = posts.index((ticket, body, out))
                if action == "split":
                    spool.split(ticket)
                    posts[index] = (ticket, body, out + 1)
                else:
                    spool.settle(ticket)
                    posts[index] = (ticket, body, out - 1)
            elif action == "pass":
                await end_of_pass(spool)
            elif action == "restart":
                await spool.close()
                spool = Spool(directory)
                posts = [(t, r.body, 1) for t, r in await spool.open()]
        await spool.close()
        expected = [body for _, body, out in posts if out]
        final, stored = await reopen(directory)
        assert bodies(stored) == expected
        await final.close()

    run(scenario)


OTHER_UID = 4321  # an unprivileged user that is not this process's


def as_another_user(directory: Path, mode: int) -> None:
    directory.mkdir(mode=mode)
    directory.chmod(mode)
    os.chown(directory, OTHER_UID, OTHER_UID)


def test_links_planted_by_another_user_are_never_followed(tmp_path: Path) -> None:
    """As root, in a directory another user owns, with the lock and the writability probe
    planted as links to files of root's: neither file is touched, the spool is refused."""
    if os.geteuid() != 0:
        pytest.skip("needs root: chown to another user")
    victim = tmp_path / "victim"
    victim.write_text("root's data")
    spool_dir = tmp_path / "spool"
    as_another_user(spool_dir, 0o755)
    (spool_dir / "lock").symlink_to(victim)
    (spool_dir / f".probe-{os.getpid()}").symlink_to(victim)

    async def scenario() -> None:
        spool = Spool(spool_dir)
        with pytest.raises(SpoolError, match=r"owned by uid 4321, not by this process's user"):
            await spool.open()
        await spool.close()

    run(scenario)
    assert victim.read_text() == "root's data"


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_a_directory_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    spool_dir.chmod(mode)

    async def scenario() -> None:
        spool = Spool(spool_dir)
        with pytest.raises(SpoolError, match=rf"writable by its group or others \(mode {mode:04o}"):
            await spool.open()
        await spool.close()

    run(scenario)
    assert list(spool_dir.iterdir()) == []


@pytest.mark.parametrize("name", ["lock", "probe", "segment", "acks"])
def test_no_spool_file_is_opened_through_a_link(tmp_path: Path, name: str) -> None:
    """In the proxy's own directory too (O_NOFOLLOW): a link where the lock, the probe, a
    segment or its acknowledgements go is refused or skipped, and its target is untouched."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    planted = {
        "lock": "lock",
        "probe": f".probe-{os.getpid()}",
        "segment": "000000000001.seg",
        "acks": "000000000001.ack",
    }[name]
    (spool_dir / planted).symlink_to(victim)

    async def scenario() -> None:
        spool = Spool(spool_dir)
        if name == "lock":
            with pytest.raises(SpoolError, match="lock is a symbolic link"):
                await spool.open()
            await spool.close()
            return
        await spool.open()  # a stale probe is replaced; a linked segment is not ours
        ticket = spool.add(b"post", 1, 2e9)
        await end_of_pass(spool)
        spool.settle(ticket)
        await end_of_pass(spool)
        await spool.close()

    run(scenario)
    assert victim.read_bytes() == b"precious"


def test_adopting_an_older_root_spool_resumes_after_an_interruption(tmp_path: Path) -> None:
    """A move cut short leaves some segments in the root: the next start moves the rest, and
    never one whose name the sink's directory already has."""
    root, target = tmp_path / "spool", tmp_path / "spool" / "appoptics"
    target.mkdir(parents=True, mode=0o700)
    os.chmod(root, 0o700)
    for number in (1, 2, 3):
        spoolfile.write_segment(root, number, [Record(b"post %d" % number, 1, 1e12)])
    spoolfile.append_acks(root, 3, [0])
    os.rename(root / "000000000001.seg", target / "000000000001.seg")  # the interrupted move
    assert spoolfile.adopt(root, target) == 2
    assert sorted(p.name for p in target.iterdir() if p.suffix in (".seg", ".ack")) == [
        "000000000001.seg",
        "000000000002.seg",
        "000000000003.ack",
        "000000000003.seg",
    ]
    assert not list(root.glob("*.seg")) and not list(root.glob("*.ack"))
    assert spoolfile.adopt(root, target) == 0
