"""Consumer-group state of the embedded log: committed offsets and partition
ownership, shared by any number of processes through files and OS locks.

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

Ownership and fencing: a partition changes hands only under the group's
mutex (``offsets.lock``), by writing the ownership record with the epoch
increased by one. A member may take a partition whose record is released,
names itself, or names a member that is not alive (dead, or silent past the
session timeout, even though its process still holds the owner flock). A
commit checks, under the same mutex, that the record still holds the epoch
and member id of the committer; otherwise it raises FencedMemberError and
writes nothing. So a member that wakes after being counted out can never
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

The latest entry for a (topic, partition) wins. A commit appends one record
under ``offsets.lock`` and fdatasyncs before it returns. A record cut short by
a crash fails its length or CRC check: readers stop before it and the next
committer truncates it. When the file passes ``compact_bytes`` a committer
rewrites it as one record holding the latest offsets (temp file, fsync,
rename); readers notice the new inode and reload.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import threading
import time
import uuid
import weakref
from typing import Iterable

from unstoppable._core.hashing import crc32c
from unstoppable.errors import (
    CorruptLogError,
    DiskFullError,
    FencedMemberError,
    InvalidGroupNameError,
    ProducerIdInUseError,
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

__all__ = [
    "GROUPS_DIR",
    "OffsetsFile",
    "Membership",
    "MemberInfo",
    "ProducerIdLock",
    "SESSION_TIMEOUT_MS",
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
_MAX_BODY = 64 << 20
_EPOCH = struct.Struct("<Q")           # ownership record: epoch, then the owner's member id

#: How long a member may go without a heartbeat before the others take its
#: partitions (see Membership). Process death needs no timeout (the kernel
#: drops its locks at once); this bounds only hung members. 10 s as Kafka
#: before 3.0 and as the JetStream backend's lease TTL: Kafka raised its
#: default to 45 s for network blips between clients and brokers, which the
#: embedded log, on one machine, does not have. The heartbeat runs on the
#: consumer's event loop, so a handler that blocks the loop for longer than
#: this loses its partitions: raise it for such handlers.
SESSION_TIMEOUT_MS = 10_000


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


def _makedirs_durable(path: str) -> None:
    """mkdir -p, fsyncing each parent whose entries changed."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    _makedirs_durable(parent)
    try:
        os.mkdir(path)
    except FileExistsError:
        return
    fsync_dir(parent)


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


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


# ---------------------------------------------------------------------------
# Committed offsets

def _encode_record(offsets: dict, now_ms: int) -> bytes:
    body = bytearray(_BODY_HEAD.pack(now_ms, len(offsets)))
    for (topic, partition), offset in offsets.items():
        t = topic.encode()
        body += _U16.pack(len(t))
        body += t
        body += _ENTRY_TAIL.pack(partition, offset)
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


def _decode_body(body) -> tuple[int, list]:
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
    if pos != len(body):
        raise ValueError("trailing bytes in an offsets record")
    return ts, out


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
        self._fd = fd
        self._ino = os.fstat(fd).st_ino
        self._offsets.clear()
        self._times.clear()
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
                ts, entries = _decode_body(body)
            except (struct.error, ValueError, UnicodeDecodeError):
                break
            for key, off in entries:
                self._offsets[key] = off
                self._times[key] = ts
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

    def commit(self, offsets: dict, *, sync: bool = True, fence=None) -> None:
        """Append ``{(topic, partition): offset}`` durably (fdatasync unless
        ``sync`` is False). Offsets must be ints >= 0.

        ``fence``: a callable run under the group's mutex before anything is
        written (``Membership.fence()``); it raises FencedMemberError when
        the committer no longer owns one of the partitions, and then nothing
        is written."""
        clean = {}
        for key, off in offsets.items():
            topic, partition = key
            if isinstance(off, bool) or not isinstance(off, int) or off < 0:
                raise ValueError(f"offset for {topic}/{partition} must be an int >= 0, got {off!r}")
            clean[(str(topic), int(partition))] = off
        if not clean:
            return
        now = time.time_ns() // 1_000_000
        with self._lock, self._locked():
            if fence is not None:
                fence(list(clean))
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
                self._rewrite(merged, now)
            else:
                rec = _encode_record(clean, now)
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

    def _rewrite(self, offsets: dict, now: int) -> None:
        """Compact: one record with the latest offsets replaces the file."""
        tmp = f"{self.path}.tmp{os.getpid()}.{threading.get_ident()}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | O_CLOEXEC, 0o644)
        try:
            # Whole or not at all: a short file renamed over the offsets would
            # lose every one of them.
            _pwrite_all(fd, MAGIC + _encode_record(offsets, now), 0)
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


# ---------------------------------------------------------------------------
# Membership and ownership

class Membership:
    """One member of a group: registered while its member file is locked and
    its heartbeat is younger than ``session_timeout_ms``.

    ``refresh()`` heartbeats, probes the other members' locks (one
    non-blocking flock each) and heartbeats, removes the files of dead ones,
    and returns the live members. ``target()`` is this member's share of the
    partitions. ``try_acquire``/``release`` take and drop a partition (owner
    lock and ownership record, see the module docstring); ``take_lost()``
    returns the partitions others took over while this member was silent.
    ``fence()`` makes the commit fence. Nothing here waits, except for the
    group mutex, which is held only for a few small reads and writes (and
    for one commit's write and fdatasync).
    """

    def __init__(self, log_path: str, group: str, topics: Iterable[str], member_id: str | None = None,
                 *, session_timeout_ms: float = SESSION_TIMEOUT_MS):
        if isinstance(session_timeout_ms, bool) or not isinstance(session_timeout_ms, (int, float)) \
                or not session_timeout_ms > 0:
            raise ValueError(f"session_timeout_ms must be a number > 0, got {session_timeout_ms!r}")
        self.session_timeout_ns = int(session_timeout_ms * 1_000_000)
        self.dir = group_dir(log_path, group)
        self.group = group
        self.topics = tuple(sorted(set(topics)))
        self.member_id = member_id or f"{int(time.time() * 1000):013d}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._members_dir = os.path.join(self.dir, "members")
        self._owners_dir = os.path.join(self.dir, "owners")
        _makedirs_durable(self._members_dir)
        _makedirs_durable(self._owners_dir)
        self._peers: dict[str, tuple[int, MemberInfo | None]] = {}  # file name -> (fd, info)
        self._owned: dict[tuple[str, int], int] = {}                # (topic, p) -> owner file fd
        self._epochs: dict[tuple[str, int], int] = {}               # (topic, p) -> our epoch
        self._flocked: set = set()        # owned partitions whose owner flock we hold
        self._lost: set = set()           # taken over by others while we were silent
        self._mutex_fd = -1
        self._last_beat = self._last_check = time.monotonic()
        self._closed = False
        self.info = MemberInfo(self.member_id, self.topics, os.getpid(), socket.gethostname(),
                               time.time_ns() // 1_000_000, tuple(ASSIGNORS))
        # Write the description under a temporary name, lock it, then rename
        # it into members/: nobody can see it unlocked and take it for dead.
        tmp = os.path.join(self.dir, f".member-{self.member_id}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, member_description(self.info))
            self._name = f"{self.member_id}.member"
            os.rename(tmp, os.path.join(self._members_dir, self._name))
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self._fd = fd
        _HOLDERS.add(self)

    def heartbeat(self) -> None:
        """Tell the others this member is alive (touches its member file)."""
        self._check()
        now = time.monotonic()
        timeout = self.session_timeout_ns / 1e9
        if now - self._last_beat > timeout / 2 or now - self._last_check > timeout / 4:
            # Silent for long enough that others may have counted us out
            # (or a while since we looked; the heartbeat is the file's mtime,
            # wall-clock time): find the partitions they took.
            self._find_lost()
            self._last_check = now
        os.utime(self._fd)
        self._last_beat = now

    def silent_for(self) -> float:
        """Seconds since this member's last heartbeat."""
        return time.monotonic() - self._last_beat

    def _fresh(self, fd: int) -> bool:
        return time.time_ns() - os.fstat(fd).st_mtime_ns <= self.session_timeout_ns

    def refresh(self) -> list[MemberInfo]:
        """Heartbeat, then the live members (this one included), sorted by id."""
        self.heartbeat()
        names = set(os.listdir(self._members_dir))
        names.discard(self._name)
        for name in list(self._peers):
            if name not in names:
                fd, _ = self._peers.pop(name)
                os.close(fd)
        live = [self.info]
        for name in sorted(names):
            if not name.endswith(".member"):
                continue
            entry = self._peers.get(name)
            if entry is None:
                try:
                    fd = os.open(os.path.join(self._members_dir, name), os.O_RDWR | O_CLOEXEC)
                except FileNotFoundError:
                    continue
                entry = self._peers[name] = (fd, None)
            fd, info = entry
            if _try_flock(fd):
                # Nobody holds it: that member is gone. Remove its file while
                # holding the lock, so a racing prober sees it gone too.
                try:
                    os.unlink(os.path.join(self._members_dir, name))
                except FileNotFoundError:
                    pass
                os.close(fd)
                del self._peers[name]
                continue
            if not self._fresh(fd):
                continue  # alive but silent past the session timeout: counted out
            if info is None:
                info = parse_member_description(os.pread(fd, 1 << 16, 0), name[:-len(".member")])
                self._peers[name] = (fd, info)
            live.append(info)
        live.sort(key=lambda m: m.member_id)
        return live

    def target(self, members: list[MemberInfo], partitions: dict[str, int]) -> set:
        """This member's share of ``partitions`` ({topic: count}) among ``members``."""
        return set(assign(members, partitions).get(self.member_id, ()))

    # -- ownership records (under the group mutex)

    def _mutex(self, blocking: bool) -> bool:
        if self._mutex_fd < 0:
            self._mutex_fd = os.open(os.path.join(self.dir, "offsets.lock"),
                                     os.O_RDWR | os.O_CREAT | O_CLOEXEC, 0o644)
        if blocking:
            fcntl.flock(self._mutex_fd, fcntl.LOCK_EX)
            return True
        return _try_flock(self._mutex_fd)

    def _unmutex(self) -> None:
        fcntl.flock(self._mutex_fd, fcntl.LOCK_UN)

    @staticmethod
    def _read_record(fd: int) -> tuple[int, str]:
        raw = os.pread(fd, 4096, 0)
        if len(raw) < _EPOCH.size:
            return 0, ""  # never owned (or made before ownership records)
        return _EPOCH.unpack_from(raw)[0], raw[_EPOCH.size:].decode("utf-8", "replace")

    @staticmethod
    def _write_record(fd: int, epoch: int, owner: str) -> None:
        data = _EPOCH.pack(epoch) + owner.encode()
        pwrite_all(fd, data, 0)
        os.ftruncate(fd, len(data))

    def _alive(self, member_id: str) -> bool:
        """Whether ``member_id`` is alive right now (member file locked, heartbeat fresh)."""
        if member_id == self.member_id:
            return True
        try:
            fd = os.open(os.path.join(self._members_dir, f"{member_id}.member"), os.O_RDWR | O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            if _try_flock(fd):
                return False  # nobody holds it (closing our fd drops our lock)
            return self._fresh(fd)
        finally:
            os.close(fd)

    def try_acquire(self, topic: str, partition: int) -> bool:
        """Take a partition if nobody alive owns it: its owner flock when
        free, and in any case its ownership record with the epoch increased
        (a member silent past the session timeout may still hold the flock;
        its record is taken over regardless)."""
        self._check()
        key = (topic, partition)
        if key in self._owned:
            return True
        if key in self._lost:
            return False  # taken over while we were silent: let take_lost() report it first
        d = os.path.join(self._owners_dir, topic)
        if not os.path.isdir(d):
            _makedirs_durable(d)
        fd = os.open(os.path.join(d, f"{partition}.lock"), os.O_RDWR | os.O_CREAT | O_CLOEXEC, 0o644)
        flocked = _try_flock(fd)
        try:
            if not self._mutex(blocking=False):
                raise _Busy  # a commit or a hand-over in progress: try at the next poll
            try:
                epoch, owner = self._read_record(fd)
                if owner and owner != self.member_id and self._alive(owner):
                    raise _Busy
                if not flocked and not owner:
                    raise _Busy  # a member between its flock and its record: not ours to take
                epoch += 1
                self._write_record(fd, epoch, self.member_id)
            finally:
                self._unmutex()
        except _Busy:
            os.close(fd)  # (drops our flock, if we took it)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._owned[key] = fd
        self._epochs[key] = epoch
        if flocked:
            self._flocked.add(key)
        return True

    def release(self, topic: str, partition: int) -> None:
        """Give a partition up: clear its ownership record if it is still
        ours, then drop the owner flock."""
        key = (topic, partition)
        self._lost.discard(key)
        fd = self._owned.pop(key, None)
        epoch = self._epochs.pop(key, None)
        if fd is None:
            return
        try:
            self._mutex(blocking=True)
            try:
                if self._read_record(fd) == (epoch, self.member_id):
                    self._write_record(fd, epoch, "")
            finally:
                self._unmutex()
        finally:
            self._flocked.discard(key)
            os.close(fd)  # drops the owner flock

    def _find_lost(self) -> None:
        """Move partitions whose record no longer names us (with our epoch) to the lost set."""
        for key, fd in list(self._owned.items()):
            if self._read_record(fd) != (self._epochs[key], self.member_id):
                del self._owned[key]
                del self._epochs[key]
                self._flocked.discard(key)
                os.close(fd)
                self._lost.add(key)

    def take_lost(self) -> set:
        """The partitions other members took over while this one was silent
        past the session timeout (once each). They are no longer owned:
        anything handled from them since the last accepted commit will be
        delivered again to their new owner."""
        lost, self._lost = self._lost, set()
        return lost

    def fence(self):
        """The commit fence for ``OffsetsFile.commit(fence=...)``, which calls
        it under the group mutex with the keys to commit: it raises
        FencedMemberError unless every (topic, partition) is owned by this
        member with the epoch it held when ``fence()`` was called (the
        positions being committed belong to that epoch, even if this member
        takes the partition again meanwhile)."""
        epochs = dict(self._epochs)

        def check(keys) -> None:
            for key in keys:
                if key not in epochs:
                    raise FencedMemberError(
                        f"member {self.member_id} of group {self.group!r} does not own "
                        f"{key[0]}/{key[1]}; nothing was committed")
                path = os.path.join(self._owners_dir, key[0], f"{key[1]}.lock")
                fd = os.open(path, os.O_RDONLY | O_CLOEXEC)  # (ours may be closed meanwhile)
                try:
                    epoch, owner = self._read_record(fd)
                finally:
                    os.close(fd)
                if (epoch, owner) != (epochs[key], self.member_id):
                    raise FencedMemberError(
                        f"member {self.member_id} of group {self.group!r} lost {key[0]}/{key[1]} "
                        f"(its epoch {epochs[key]}; now epoch {epoch}, owner {owner or 'none'}) "
                        f"after going silent for longer than the session timeout "
                        f"({self.session_timeout_ns / 1e6:g} ms); nothing was committed")
        return check

    def epoch(self, topic: str, partition: int) -> int | None:
        """The ownership epoch this member holds a partition at (None: not owned)."""
        return self._epochs.get((topic, partition))

    def owned(self) -> set:
        return set(self._owned)

    def _check(self):
        if self._closed:
            raise RuntimeError(f"member {self.member_id} of group {self.group!r} has left")

    def leave(self) -> None:
        """Release every partition and deregister."""
        if self._closed:
            return
        for key in list(self._owned):
            self.release(*key)
        self._closed = True
        if self._mutex_fd >= 0:
            os.close(self._mutex_fd)
            self._mutex_fd = -1
        try:
            os.unlink(os.path.join(self._members_dir, self._name))
        except FileNotFoundError:
            pass
        for fd, _ in self._peers.values():
            os.close(fd)
        self._peers.clear()
        os.close(self._fd)  # drops the member lock
        self._fd = -1
        _HOLDERS.discard(self)

    def _forget_after_fork(self) -> None:
        self._closed = True
        for fd in list(self._owned.values()) + [fd for fd, _ in self._peers.values()] + [
                self._fd, self._mutex_fd]:
            try:
                os.close(fd)
            except OSError:
                pass
        self._owned.clear()
        self._peers.clear()


class _Busy(Exception):
    """try_acquire: the partition is not ours to take now."""


def owners(log_path: str, group: str) -> dict[tuple[str, int], bool]:
    """Which partitions of a group are held right now: {(topic, p): held}.
    (Probing takes each free lock for an instant; for tools and tests.)"""
    root = os.path.join(group_dir(log_path, group), "owners")
    out = {}
    try:
        topics = os.listdir(root)
    except FileNotFoundError:
        return out
    for t in topics:
        for name in os.listdir(os.path.join(root, t)):
            if not name.endswith(".lock"):
                continue
            fd = os.open(os.path.join(root, t, name), os.O_RDWR | O_CLOEXEC)
            try:
                free = _try_flock(fd)
                if free:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
            out[(t, int(name[:-5]))] = not free
    return out


class ProducerIdLock:
    """Held by the one live idempotent producer of an id (``<log>/producers/``).

    Two live producers with one id would race each other's sequence numbers;
    the lock turns that into a clear error, and the kernel drops it when the
    holder dies, so a restarted producer can take over at once.
    """

    def __init__(self, log_path: str, producer_id: int, name: str = ""):
        d = os.path.join(log_path, PRODUCERS_DIR)
        _makedirs_durable(d)
        self.path = os.path.join(d, f"{producer_id:016x}.lock")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | O_CLOEXEC, 0o644)
        if not _try_flock(fd):
            os.close(fd)
            raise ProducerIdInUseError(
                f"producer id {name or producer_id!r} is in use by another live producer "
                f"(lock {self.path}); each idempotent producer needs its own id")
        self._fd = fd
        _HOLDERS.add(self)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            _HOLDERS.discard(self)

    def _forget_after_fork(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1
