"""Consumer-group state of the embedded log: committed offsets and partition
ownership, shared by any number of processes through files and OS locks.
The offsets file is here; membership and ownership (``Membership``) are in
:mod:`unstoppable.storage.membership`, under the rules described below.

Layout of ``<log>/groups/<group>/``::

    offsets          committed offsets, an append-only file of CRC-framed records
    offsets.lock     flock()ed while a commit appends to (or compacts) ``offsets``
    members/<id>.member   one file per live member, flock()ed by that member for
                          its whole life; JSON: member id, topics, pid, host.
                          Its mtime is the member's heartbeat.
    owners/<topic>/<partition>.lock   flock()ed by the member consuming that
                          partition; its bytes are the ownership record:
                          u64 epoch (little-endian), then the owner's member id
                          (UTF-8; empty when released)
    owners/<topic>/<partition>.fence  flock()ed for an instant while the record
                          changes, and by a commit of the partition while it
                          checks the record and writes

and ``<log>/producers/<producer id, 16 hex digits>.lock``, flock()ed by the one
live idempotent producer using that id.

Liveness: locks and heartbeats. The kernel releases a flock the moment the
holding process dies (SIGKILL included), so a death is noticed at once: a
member is alive while its member file is locked *and* its heartbeat (the
file's mtime, touched on every membership poll) is younger than the session
timeout. A process that is stopped (SIGSTOP), deadlocked or stuck in a long
blocking call keeps its locks but stops heartbeating, and after
``session_timeout_ms`` the others count it out. Survivors notice either the
next time they probe (``Membership.refresh``); every member computes the same
assignment from the same sorted list of live members and the partition counts
of every topic any of them subscribes to.

Ownership and fencing: a partition changes hands only under its fence lock,
by writing the ownership record with the epoch increased by one. A member
may take a partition whose record is released, names itself, or names a
member that is not alive (dead, or silent past the session timeout, even
though its process still holds the owner flock). A commit takes the fence
locks of its partitions (in sorted order), checks that each record still
holds the epoch and member id the committer had when it issued the commit,
and writes while holding them; otherwise it raises FencedMemberError and
writes nothing. (A member stopped in the middle of a commit holds those
fence locks, and the partitions cannot change hands, until it resumes or
dies: a window of one offsets write and fdatasync.) So a member that wakes after being counted out can never
commit over the new owner, nor move its offsets back.

Offsets file (little-endian)::

    0    8    magic b"USGOFF1\\n"
    then records, back to back:
    0    4    body length n (u32)
    4    4    CRC-32C of the body (u32)
    8    n    body:
              0   8   commit time, ms since the epoch (i64)
              8   4   entry count (u32)
              12  ..  entries: u16 topic length, topic (UTF-8), u32 partition,
                      i64 offset (the next offset to consume)
              then, only when some entry of the record has metadata:
              ..  4   metadata count m (u32)
              ..  ..  m times: u32 entry index (into the entries above),
                      u16 length, metadata (UTF-8)

Metadata is the string a Kafka client commits with an offset (OffsetCommit's
``committed_metadata``; at most ``MAX_METADATA_BYTES``). An entry without
metadata has none (""), so a record without the metadata part is exactly the
record of earlier versions, and files written before metadata existed load as
they are. (A version before metadata stops reading a file at its first record
that has some: downgrading a group that uses metadata is not supported.)

The latest entry for a (topic, partition) wins, its metadata with it. A commit appends one record
under ``offsets.lock`` and fdatasyncs before it returns. A record cut short by
a crash fails its length or CRC check: readers stop before it and the next
committer truncates it. When the file passes ``compact_bytes`` a committer
rewrites it as one record holding the latest offsets (temp file, fsync,
rename); readers notice the new inode and reload.
"""
from __future__ import annotations

import contextlib
import errno
import os
import struct
import threading
import time
import weakref

from unstoppable._core.hashing import crc32c
from unstoppable.errors import (
    CorruptLogError,
    DiskFullError,
    InvalidGroupNameError,
    is_disk_full,
)
from unstoppable._names import validate_group_name
from unstoppable.groups.assign import (  # re-exported here as well
    ASSIGNORS,
    MemberInfo,
    assign,
    assign_round_robin,
    assign_sticky,
    choose_assignor,
    member_description,
    parse_member_description,
)
from unstoppable.storage._fs import O_CLOEXEC, Flock, fsync_dir, pwrite_all
from unstoppable.storage._fs import makedirs_durable as _makedirs_durable  # noqa: F401  (membership)
from unstoppable.storage._fs import try_flock as _try_flock  # noqa: F401  (membership)

__all__ = [
    "GROUPS_DIR",
    "MAX_METADATA_BYTES",
    "OffsetsFile",
    "MemberInfo",
    "ProducerIdLock",
    "ASSIGNORS",
    "assign",
    "assign_round_robin",
    "assign_sticky",
    "choose_assignor",
    "member_description",
    "parse_member_description",
    "validate_group_name",
    "group_dir",
    "list_groups",
]

GROUPS_DIR = "groups"
PRODUCERS_DIR = "producers"
MAGIC = b"USGOFF1\n"
_FRAME = struct.Struct("<II")          # body length, crc
_BODY_HEAD = struct.Struct("<qI")      # commit time, entry count
_ENTRY_TAIL = struct.Struct("<Iq")     # partition, offset
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_MAX_BODY = 64 << 20
_META_HEAD = struct.Struct("<IH")      # entry index, metadata length
#: Kafka's offset.metadata.max.bytes default: longer metadata is refused.
MAX_METADATA_BYTES = 4096
_EPOCH = struct.Struct("<Q")           # ownership record: epoch, then the owner's member id



def group_dir(log_path: str, group: str) -> str:
    return os.path.join(log_path, GROUPS_DIR, validate_group_name(group))


def list_groups(log_path: str) -> list[str]:
    """Names of the groups that have state under ``<log>/groups``."""
    root = os.path.join(log_path, GROUPS_DIR)
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        try:
            validate_group_name(n)
        except InvalidGroupNameError:
            continue
        if os.path.isdir(os.path.join(root, n)):
            out.append(n)
    return sorted(out)



# ---------------------------------------------------------------------------
# Lock holders are closed (not unlocked) in forked children: a flock belongs to
# the open file description, which fork shares, so a child that kept the fd
# would keep a dead parent looking alive.

_HOLDERS: "weakref.WeakSet" = weakref.WeakSet()


def _close_inherited_locks() -> None:
    for h in list(_HOLDERS):
        try:
            h._forget_after_fork()
        except Exception:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


# ---------------------------------------------------------------------------
# Committed offsets

def _encode_record(offsets: dict, now_ms: int, metadata: dict | None = None) -> bytes:
    body = bytearray(_BODY_HEAD.pack(now_ms, len(offsets)))
    meta = []
    for i, ((topic, partition), offset) in enumerate(offsets.items()):
        t = topic.encode()
        body += _U16.pack(len(t))
        body += t
        body += _ENTRY_TAIL.pack(partition, offset)
        m = metadata.get((topic, partition)) if metadata else None
        if m:
            meta.append((i, m.encode()))
    if meta:
        body += _U32.pack(len(meta))
        for i, m in meta:
            body += _META_HEAD.pack(i, len(m))
            body += m
    return _FRAME.pack(len(body), crc32c(body)) + bytes(body)


def _pwrite_all(fd: int, data: bytes, pos: int) -> None:
    """Write all of ``data`` at ``pos``; a full disk raises DiskFullError."""
    try:
        pwrite_all(fd, data, pos)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(e.errno, f"no space to write committed offsets: "
                                         f"{os.strerror(e.errno)}") from None
        raise


def _decode_body(body) -> tuple[int, list, dict]:
    """(commit time, [((topic, partition), offset)], {entry index: metadata})."""
    ts, n = _BODY_HEAD.unpack_from(body, 0)
    pos = _BODY_HEAD.size
    out = []
    for _ in range(n):
        (tl,) = _U16.unpack_from(body, pos)
        pos += 2
        topic = bytes(body[pos:pos + tl]).decode()
        pos += tl
        partition, offset = _ENTRY_TAIL.unpack_from(body, pos)
        pos += _ENTRY_TAIL.size
        out.append(((topic, partition), offset))
    meta = {}
    if pos != len(body):
        (m,) = _U32.unpack_from(body, pos)
        pos += _U32.size
        for _ in range(m):
            i, ml = _META_HEAD.unpack_from(body, pos)
            pos += _META_HEAD.size
            if i >= n or pos + ml > len(body):
                raise ValueError("a metadata entry outside its offsets record")
            meta[i] = bytes(body[pos:pos + ml]).decode()
            pos += ml
        if pos != len(body):
            raise ValueError("trailing bytes in an offsets record")
    return ts, out, meta


class OffsetsFile:
    """The committed offsets of one group (see the module docstring).

    ``get``/``load`` read what every process has committed so far; ``commit``
    appends durably. Thread-safe; any number of processes may share the file.
    """

    def __init__(self, log_path: str, group: str, *, compact_bytes: int = 1 << 20):
        self.dir = group_dir(log_path, group)
        self.group = group
        self.path = os.path.join(self.dir, "offsets")
        self.compact_bytes = compact_bytes
        self._lock = threading.Lock()
        self._offsets: dict[tuple[str, int], int] = {}
        self._times: dict[tuple[str, int], int] = {}
        self._meta: dict[tuple[str, int], str] = {}   # only entries with metadata
        self._fd = -1
        self._ino = None
        self._pos = 0            # end of the last valid record read
        self._lock_fd = -1
        _makedirs_durable(self.dir)

    # -- reading

    def _open_current(self) -> bool:
        """(Re)open the file if it was replaced; False when it does not exist yet."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        if self._fd >= 0 and st.st_ino == self._ino:
            return True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            fd = os.open(self.path, os.O_RDWR | O_CLOEXEC)
        except FileNotFoundError:
            return False
        except (PermissionError, OSError) as e:
            # A read-only log (a read-only mount, another user's files):
            # reading the offsets needs no write access; a commit would fail.
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            try:
                fd = os.open(self.path, os.O_RDONLY | O_CLOEXEC)
            except FileNotFoundError:
                return False
        self._fd = fd
        self._ino = os.fstat(fd).st_ino
        self._offsets.clear()
        self._times.clear()
        self._meta.clear()
        self._pos = 0
        return True

    def _catch_up(self) -> int:
        """Read records appended since the last look; returns the file size."""
        if not self._open_current():
            return 0
        size = os.fstat(self._fd).st_size
        if self._pos == 0:
            if size < len(MAGIC):
                return size
            if os.pread(self._fd, len(MAGIC), 0) != MAGIC:
                raise CorruptLogError(f"{self.path} is not an offsets file (bad magic)",
                                      segment=self.path, position=0)
            self._pos = len(MAGIC)
        if size <= self._pos:
            return size
        data = os.pread(self._fd, size - self._pos, self._pos)
        pos = 0
        while pos + _FRAME.size <= len(data):
            n, crc = _FRAME.unpack_from(data, pos)
            if n > _MAX_BODY or pos + _FRAME.size + n > len(data):
                break  # incomplete (being written, or torn by a crash)
            body = memoryview(data)[pos + _FRAME.size:pos + _FRAME.size + n]
            if crc32c(body) != crc:
                break
            try:
                ts, entries, meta = _decode_body(body)
            except (struct.error, ValueError, UnicodeDecodeError):
                break
            for i, (key, off) in enumerate(entries):
                self._offsets[key] = off
                self._times[key] = ts
                if i in meta:
                    self._meta[key] = meta[i]
                else:
                    self._meta.pop(key, None)
            pos += _FRAME.size + n
        self._pos += pos
        return size

    def load(self) -> dict[tuple[str, int], int]:
        """Every committed offset: {(topic, partition): offset}."""
        with self._lock:
            self._catch_up()
            return dict(self._offsets)

    def get(self, topic: str, partition: int) -> int | None:
        """The committed offset of one partition, or None."""
        with self._lock:
            self._catch_up()
            return self._offsets.get((topic, partition))

    def metadata(self) -> dict[tuple[str, int], str]:
        """The metadata committed with each partition's latest offset, for
        the partitions that have some: {(topic, partition): metadata}."""
        with self._lock:
            self._catch_up()
            return dict(self._meta)

    def load_with_metadata(self) -> dict[tuple[str, int], tuple[int, str]]:
        """Every committed offset with its metadata ("" for none), read at
        one moment: {(topic, partition): (offset, metadata)}."""
        with self._lock:
            self._catch_up()
            return {k: (off, self._meta.get(k, "")) for k, off in self._offsets.items()}

    def commit_times(self) -> dict[tuple[str, int], int]:
        """When each partition's offset was last committed (ms since the epoch)."""
        with self._lock:
            self._catch_up()
            return dict(self._times)

    # -- writing

    def _locked(self):
        if self._lock_fd < 0:
            self._lock_fd = os.open(os.path.join(self.dir, "offsets.lock"),
                                    os.O_RDWR | os.O_CREAT | O_CLOEXEC, 0o644)
        return Flock(fd=self._lock_fd)

    def commit(self, offsets: dict, *, sync: bool = True, fence=None,
               metadata: dict | None = None) -> None:
        """Append ``{(topic, partition): offset}`` durably (fdatasync unless
        ``sync`` is False). Offsets must be ints >= 0.

        ``metadata``: ``{(topic, partition): str}``, the string kept with
        each of those offsets (a Kafka client's commit metadata; at most
        ``MAX_METADATA_BYTES`` in UTF-8, else ValueError). A partition
        committed without one has none afterwards, as in Kafka.

        ``fence``: ``fence(keys)`` returns a context manager held around the
        write (``Membership.fence()``: it locks the partitions' fence files
        and raises FencedMemberError, writing nothing, when the committer no
        longer owns one of them)."""
        clean = {}
        for key, off in offsets.items():
            topic, partition = key
            if isinstance(off, bool) or not isinstance(off, int) or off < 0:
                raise ValueError(f"offset for {topic}/{partition} must be an int >= 0, got {off!r}")
            clean[(str(topic), int(partition))] = off
        if not clean:
            return
        meta = {}
        for key, m in (metadata or {}).items():
            key = (str(key[0]), int(key[1]))
            if key not in clean:
                raise ValueError(f"metadata for {key[0]}/{key[1]}, which has no offset in this commit")
            if m is None or m == "":
                continue
            if not isinstance(m, str):
                raise ValueError(f"metadata for {key[0]}/{key[1]} must be a str, got {m!r}")
            if len(m.encode()) > MAX_METADATA_BYTES:
                raise ValueError(f"metadata for {key[0]}/{key[1]} is {len(m.encode())} bytes, "
                                 f"over the limit of {MAX_METADATA_BYTES}")
            meta[key] = m
        now = time.time_ns() // 1_000_000
        with contextlib.ExitStack() as stack:
            if fence is not None:
                stack.enter_context(fence(list(clean)))  # first: fence locks, then offsets.lock
            stack.enter_context(self._lock)
            stack.enter_context(self._locked())
            self._append(clean, now, sync, meta)

    def _append(self, clean: dict, now: int, sync: bool, meta: dict) -> None:
        """commit's write (under ``offsets.lock``)."""
        if not self._open_current():
            self._create()
        size = self._catch_up()
        if self._pos == 0:
            # Shorter than its magic (empty, or cut by something else):
            # without the magic first, every later read would refuse the file.
            os.ftruncate(self._fd, 0)
            _pwrite_all(self._fd, MAGIC, 0)
            self._pos = size = len(MAGIC)
        if size > self._pos:
            os.ftruncate(self._fd, self._pos)  # a crashed committer's torn record
        if self._pos > self.compact_bytes:
            merged = dict(self._offsets)
            merged.update(clean)
            merged_meta = {k: m for k, m in self._meta.items() if k not in clean}
            merged_meta.update(meta)
            self._rewrite(merged, now, merged_meta)
        else:
            rec = _encode_record(clean, now, meta)
            try:
                _pwrite_all(self._fd, rec, self._pos)
            except BaseException:
                os.ftruncate(self._fd, self._pos)
                raise
            if sync:
                os.fdatasync(self._fd)
            self._pos += len(rec)
        for key, off in clean.items():
            self._offsets[key] = off
            self._times[key] = now
            if key in meta:
                self._meta[key] = meta[key]
            else:
                self._meta.pop(key, None)

    def _create(self) -> None:
        tmp = f"{self.path}.tmp{os.getpid()}.{threading.get_ident()}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | O_CLOEXEC, 0o644)
        try:
            _pwrite_all(fd, MAGIC, 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        if os.path.exists(self.path):  # another process won the race
            os.unlink(tmp)
        else:
            os.rename(tmp, self.path)
            fsync_dir(self.dir)
        self._open_current()

    def _rewrite(self, offsets: dict, now: int, metadata: dict) -> None:
        """Compact: one record with the latest offsets replaces the file."""
        tmp = f"{self.path}.tmp{os.getpid()}.{threading.get_ident()}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | O_CLOEXEC, 0o644)
        try:
            # Whole or not at all: a short file renamed over the offsets would
            # lose every one of them.
            _pwrite_all(fd, MAGIC + _encode_record(offsets, now, metadata), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, self.path)
        fsync_dir(self.dir)
        self._open_current()
        self._catch_up()

    def close(self) -> None:
        with self._lock:
            for attr in ("_fd", "_lock_fd"):
                fd = getattr(self, attr)
                if fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                    setattr(self, attr, -1)


# ProducerIdLock (the ownership and epoch fencing of producer ids) lives in
# storage/producer_ids.py, Membership and owners() in storage/membership.py;
# this name stays for the modules that import it here.
from unstoppable.storage.producer_ids import ProducerIdLock  # noqa: E402,F401
