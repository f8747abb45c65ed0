"""The spool's files on disk: format, durable writes, the scan at start, the lock.

Everything here is synchronous file IO; `statsd_ao.io.spool` runs it on one worker thread, so
the event loop never waits for the disk.

A spool directory holds, per *segment* (the posts handed over in one pass of the loop):

- ``NNNNNNNNNNNN.seg``: ``SEGMENT_MAGIC``, then one record per post: a header (body length,
  measurement count, CRC-32, expiry as a Unix time) and the encoded post body.  Written to
  ``.seg.tmp`` with O_EXCL, fsync'ed, renamed into place and the directory fsync'ed, so a
  segment is either whole or absent: a kill -9 mid-write leaves only a ``.tmp``.
- ``NNNNNNNNNNNN.ack``: ``ACK_MAGIC``, then 8 bytes per settled post (its index and the
  index's complement): posts the API confirmed, or that were lost and counted.  Appended
  without fsync (the page cache survives a killed process; `sync_acks` runs at close).

A segment with every post acknowledged is deleted.  Files are created 0600 in a directory
created 0700; ``lock`` holds an exclusive flock for as long as a proxy uses the directory.

The directory must be the proxy's own: owned by its user and writable by no one else.  A
user who can write in it could plant a link named like one of its files and have a proxy
running as root write or truncate whatever the link points at, so a directory owned by
someone else, or writable by its group or by others, is refused at start; and every file in
it is opened with O_NOFOLLOW (and O_EXCL where it is created) all the same.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SEGMENT_MAGIC = b"statsd-ao spool 1\n"
ACK_MAGIC = b"statsd-ao acks 1\n"
_RECORD = struct.Struct("<IIId")  # body length, count, crc32(count, expires, body), expires
_ACK = struct.Struct("<II")  # index, index ^ 0xFFFFFFFF
_NAME = re.compile(r"(\d{12})\.seg")
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
MIN_MAX_BYTES = 16 * 1024 * 1024
FILE_MODE = 0o600
DIR_MODE = 0o700
# A record claiming more than this is corrupt: no post body comes near it.
MAX_BODY = 64 * 1024 * 1024
# Opening a file in the spool never follows a symbolic link (see the module docstring).
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
# Write permission for the group or others on the directory: refused.
_SHARED = stat.S_IWGRP | stat.S_IWOTH


class SpoolError(Exception):
    """The spool directory cannot be used (the message says why, for the operator)."""


@dataclass(frozen=True, slots=True)
class Record:
    """One post, as stored (count 0: the place of a post settled before it was written)."""

    body: bytes
    count: int
    expires: float  # Unix time at which its oldest measurement becomes too old


@dataclass(slots=True)
class Segment:
    """What the scan found of one segment: its unacknowledged records, by index."""

    number: int
    size: int
    records: dict[int, Record] = field(default_factory=dict)


@dataclass(slots=True)
class Scan:
    """The directory as a previous run left it."""

    segments: list[Segment] = field(default_factory=list)  # oldest first
    corrupt: int = 0  # records or files unreadable (torn, truncated, not ours), skipped
    torn_writes: int = 0  # .tmp files of a write that never finished, removed


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:012d}.seg"


def ack_path(directory: Path, number: int) -> Path:
    return directory / f"{number:012d}.ack"


def encode_record(record: Record) -> bytes:
    crc = zlib.crc32(record.body, zlib.crc32(struct.pack("<Id", record.count, record.expires)))
    header = _RECORD.pack(len(record.body), record.count, crc, record.expires)
    return header + record.body


# --- the lock ------------------------------------------------------------------------------


def lock(directory: Path) -> int:
    """Create the directory if needed, check that it is the proxy's own, and take its lock;
    the lock's descriptor (keep it open: closing it releases the lock).  Raises
    `SpoolError` with the reason."""
    try:
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        check_private(directory)
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | _NOFOLLOW, FILE_MODE)
    except OSError as error:
        why = "lock is a symbolic link" if error.errno == errno.ELOOP else error.strerror
        raise SpoolError(f"cannot use spool directory {directory}: {why}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_nlink != 1:
        os.close(fd)
        raise SpoolError(
            f"cannot use spool directory {directory}: its lock is not a plain file of this "
            "user's (remove it)"
        )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise SpoolError(
                f"spool directory {directory} is in use by another statsd-ao (pid {holder}); "
                "give each proxy its own --spool-dir"
            ) from None
        raise SpoolError(f"cannot lock spool directory {directory}: {error.strerror}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _check_writable(directory)
    return fd


def adopt(source: Path, target: Path) -> int:
    """Move the segments (and their acknowledgements) that an earlier version left directly
    in ``source``, the spool root, into ``target``, a sink's own subdirectory that the caller
    holds locked.  Under ``source``'s lock, so never from under a running older proxy
    (`SpoolError` then).  Each segment's acknowledgements move before it, so a crash midway
    never makes a confirmed post look unconfirmed; a name the target already has is left
    (their numbers would collide), and a later start moves what an interrupted one left.
    Returns the segments moved."""
    if not any(source.glob("*.seg")):
        return 0
    fd = lock(source)
    moved = 0
    try:
        for segment in sorted(p for p in source.glob("*.seg") if _NAME.fullmatch(p.name)):
            if (target / segment.name).exists():
                continue
            acks = segment.with_suffix(".ack")
            if acks.exists():
                os.rename(acks, target / acks.name)
            os.rename(segment, target / segment.name)
            moved += 1
        sync_directory(target)
        sync_directory(source)
    finally:
        os.close(fd)
    return moved


def check_private(directory: Path) -> None:
    """Refuse (`SpoolError`) a directory that is not this user's own: owned by another user,
    or writable by its group or others.  A symbolic link to a directory is judged by the
    directory it names."""
    info = os.stat(directory)
    euid = os.geteuid()
    if not stat.S_ISDIR(info.st_mode):
        raise SpoolError(f"spool directory {directory} is not a directory")
    if info.st_uid != euid:
        raise SpoolError(
            f"spool directory {directory} is owned by uid {info.st_uid}, not by this "
            f"process's user (uid {euid}): refused, its owner could plant links in it; "
            "give the proxy a directory of its own (it creates a missing one 0700)"
        )
    if info.st_mode & _SHARED:
        raise SpoolError(
            f"spool directory {directory} is writable by its group or others (mode "
            f"{stat.S_IMODE(info.st_mode):04o}): refused, they could plant links in it; "
            "chmod it 0700, or name a subdirectory the proxy creates"
        )


def _check_writable(directory: Path) -> None:
    probe = directory / f".probe-{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
    try:
        try:
            fd = os.open(probe, flags, FILE_MODE)
        except FileExistsError:  # a run killed between these two lines (the same pid: pid 1)
            probe.unlink()  # (never follows a link)
            fd = os.open(probe, flags, FILE_MODE)
        os.close(fd)
        probe.unlink()
    except OSError as error:
        raise SpoolError(f"spool directory {directory} is not writable: {error.strerror}") from None


# --- writes --------------------------------------------------------------------------------


def write_segment(directory: Path, number: int, records: Sequence[Record]) -> int:
    """Write a segment durably (temp file, fsync, rename, fsync the directory); its size."""
    final = segment_path(directory, number)
    temp = final.with_suffix(".seg.tmp")
    data = SEGMENT_MAGIC + b"".join(map(encode_record, records))
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, FILE_MODE)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    os.close(fd)
    os.replace(temp, final)
    sync_directory(directory)
    return len(data)


def append_acks(directory: Path, number: int, indices: Iterable[int]) -> None:
    path = ack_path(directory, number)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _NOFOLLOW, FILE_MODE)
    try:
        prefix = ACK_MAGIC if os.fstat(fd).st_size == 0 else b""
        _write_all(fd, prefix + b"".join(_ACK.pack(i, i ^ 0xFFFFFFFF) for i in indices))
    finally:
        os.close(fd)


def remove_segment(directory: Path, number: int) -> None:
    for path in (segment_path(directory, number), ack_path(directory, number)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def sync_acks(directory: Path) -> None:
    """fsync every acknowledgement file (at close: then a power cut re-sends nothing)."""
    for path in directory.glob("*.ack"):
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> bytes:
    """A file's contents, never through a symbolic link (OSError: ELOOP)."""
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    try:
        with os.fdopen(fd, "rb", closefd=False) as file:
            return file.read()
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# --- the scan at start ---------------------------------------------------------------------


def scan(directory: Path) -> Scan:
    """Read what a previous run left: torn writes removed, corrupt records and foreign or
    damaged files skipped (a damaged segment is renamed ``.corrupt`` and left for the
    operator), fully acknowledged segments deleted."""
    found = Scan()
    for temp in directory.glob("*.seg.tmp"):
        with contextlib.suppress(OSError):
            temp.unlink()
            found.torn_writes += 1
    numbers = sorted(int(m.group(1)) for p in directory.iterdir() if (m := _NAME.fullmatch(p.name)))
    for number in numbers:
        segment = _read_segment(directory, number, found)
        if segment is None:
            continue
        if segment.records:
            found.segments.append(segment)
        else:
            remove_segment(directory, number)
    for orphan in directory.glob("*.ack"):  # acks of a segment that is gone
        if not segment_path(directory, int(orphan.stem) if orphan.stem.isdigit() else -1).exists():
            with contextlib.suppress(OSError):
                orphan.unlink()
    return found


def next_number(directory: Path) -> int:
    """The number for the next segment: after every segment or acks file present."""
    names = (p.name.partition(".")[0] for p in directory.iterdir())
    return max((int(name) for name in names if name.isdigit()), default=0) + 1


def _read_segment(directory: Path, number: int, found: Scan) -> Segment | None:
    path = segment_path(directory, number)
    try:
        data = _read(path)
    except OSError:
        found.corrupt += 1
        return None
    if not data.startswith(SEGMENT_MAGIC):
        found.corrupt += 1
        with contextlib.suppress(OSError):
            path.rename(path.with_suffix(".seg.corrupt"))
        return None
    records, damaged = decode_records(data[len(SEGMENT_MAGIC) :])
    found.corrupt += damaged
    acked = read_acks(ack_path(directory, number))
    segment = Segment(number, len(data))
    segment.records = {
        i: r for i, r in enumerate(records) if r is not None and r.count and i not in acked
    }
    return segment


def decode_records(data: bytes) -> tuple[list[Record | None], int]:
    """The records in ``data`` (None for one whose checksum fails), and how many were
    damaged.  A header that runs past the end (a truncated file) ends the list."""
    records: list[Record | None] = []
    damaged, offset = 0, 0
    while offset < len(data):
        if len(data) - offset < _RECORD.size:
            return records, damaged + 1
        length, count, crc, expires = _RECORD.unpack_from(data, offset)
        body = data[offset + _RECORD.size : offset + _RECORD.size + length]
        if length > MAX_BODY or len(body) < length:
            return records, damaged + 1
        offset += _RECORD.size + length
        if zlib.crc32(body, zlib.crc32(struct.pack("<Id", count, expires))) != crc:
            records.append(None)
            damaged += 1
            continue
        records.append(Record(body, count, expires))
    return records, damaged


def read_acks(path: Path) -> set[int]:
    """The acknowledged indices; a torn last entry or a damaged one is ignored."""
    try:
        data = _read(path)
    except OSError:  # none yet, or not ours (a link: ELOOP)
        return set()
    if not data.startswith(ACK_MAGIC):
        return set()
    acked = set()
    body = data[len(ACK_MAGIC) :]
    for start in range(0, len(body) - _ACK.size + 1, _ACK.size):
        index, check = _ACK.unpack_from(body, start)
        if index ^ 0xFFFFFFFF == check:
            acked.add(index)
    return acked
