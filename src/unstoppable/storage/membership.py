"""Membership and ownership of the embedded log's consumer groups: who is
alive (member files, OS locks and heartbeats), who owns which partition
(owner locks and ownership records with epochs), and the commit fence. The
layout, the liveness rules and the fencing are described in
:mod:`unstoppable.storage.groups`, which holds the committed offsets.
"""
from __future__ import annotations

import fcntl
import math
import os
import socket
import time
import uuid
from typing import Iterable

from unstoppable.errors import FencedMemberError
from unstoppable.groups.assign import ASSIGNORS, MemberInfo, assign, member_description, parse_member_description
from unstoppable.storage._fs import O_CLOEXEC, flock_path, pwrite_all
from unstoppable.storage.groups import (
    _EPOCH,
    _HOLDERS,
    _makedirs_durable,
    _try_flock,
    group_dir,
)

__all__ = ["Membership", "owners", "SESSION_TIMEOUT_MS"]

#: How long a member may go without a heartbeat before the others take its
#: partitions (see Membership). Process death needs no timeout (the kernel
#: drops its locks at once); this bounds only hung members. 10 s as Kafka
#: before 3.0 and as the JetStream backend's lease TTL: Kafka raised its
#: default to 45 s for network blips between clients and brokers, which the
#: embedded log, on one machine, does not have. The heartbeat runs on the
#: consumer's event loop, so a handler that blocks the loop for longer than
#: this loses its partitions: raise it for such handlers.
SESSION_TIMEOUT_MS = 10_000


# Membership and ownership

class Membership:
    """One member of a group: registered while its member file is locked and
    its heartbeat is younger than ``session_timeout_ms``.

    ``refresh()`` heartbeats, probes the other members' locks (one
    non-blocking flock each) and heartbeats, removes the files of dead ones,
    and returns the live members. ``target()`` is this member's share of the
    partitions. ``try_acquire``/``release`` take and drop a partition (owner
    lock and ownership record, see ``storage.groups``); ``take_lost()``
    returns the partitions others took over while this member was silent.
    ``fence()`` makes the commit fence. Nothing here waits, except
    ``release``/``leave`` for a partition's fence lock, which is held only
    for a few small reads and writes (and for one commit's write and
    fdatasync).
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
        self._last_beat = self._last_check = time.monotonic()
        self._closed = False
        self.info = MemberInfo(self.member_id, self.topics, os.getpid(), socket.gethostname(),
                               time.time_ns() // 1_000_000, tuple(ASSIGNORS),
                               max(1, math.ceil(session_timeout_ms)))
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

    def _fresh(self, fd: int, info: MemberInfo | None = None) -> bool:
        """Whether the member of ``fd`` heartbeat within its session timeout
        (its own, as its description gives it; else this member's): as in
        Kafka, each member's timeout is its own, so a member with a short
        one never counts out one that chose a longer one."""
        timeout_ns = (info.session_timeout_ms * 1_000_000 if info is not None and info.session_timeout_ms
                      else self.session_timeout_ns)
        return time.time_ns() - os.fstat(fd).st_mtime_ns <= timeout_ns

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
            if info is None:
                info = parse_member_description(os.pread(fd, 1 << 16, 0), name[:-len(".member")])
                self._peers[name] = (fd, info)
            if not self._fresh(fd, info):
                continue  # alive but silent past its session timeout: counted out
            live.append(info)
        live.sort(key=lambda m: m.member_id)
        return live

    def owned_by_live(self, members: list[MemberInfo], partitions: dict[str, int]) -> bool:
        """Whether a member of ``members`` (the live ones, as ``refresh()``
        returned them) holds some partition of ``partitions`` ({topic:
        count}) by its ownership record: the group has formed. False for a
        group that is empty or still forming (see the consumer's
        ``initial_rebalance_delay_ms``). Reads each partition's record until
        one names a live member; nothing is locked."""
        live = {m.member_id for m in members}
        for topic in sorted(partitions):
            d = os.path.join(self._owners_dir, topic)
            for p in range(partitions[topic]):
                key = (topic, p)
                if key in self._owned:
                    return True
                try:
                    fd = os.open(os.path.join(d, f"{p}.lock"), os.O_RDONLY | O_CLOEXEC)
                except FileNotFoundError:
                    continue  # never taken
                try:
                    _, owner = self._read_record(fd)
                finally:
                    os.close(fd)
                if owner and owner in live:
                    return True
        return False

    def target(self, members: list[MemberInfo], partitions: dict[str, int]) -> set:
        """This member's share of ``partitions`` ({topic: count}) among ``members``."""
        return set(assign(members, partitions).get(self.member_id, ()))

    # -- ownership records (under the partition's fence lock)

    def _fence_lock(self, topic: str, partition: int, blocking: bool) -> int:
        """flock ``owners/<topic>/<partition>.fence``, which serializes the
        partition's ownership changes with commits of it; returns the fd
        (closing it unlocks), or -1 when ``blocking`` is False and it is held."""
        return fence_lock(self._owners_dir, topic, partition, blocking)

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
            return self._fresh(fd, parse_member_description(os.pread(fd, 1 << 16, 0), member_id))
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
            lk = self._fence_lock(topic, partition, blocking=False)
            if lk < 0:
                raise _Busy  # a commit of it or a hand-over in progress: try at the next poll
            try:
                epoch, owner = self._read_record(fd)
                if owner and owner != self.member_id and self._alive(owner):
                    raise _Busy
                if not flocked and not owner:
                    raise _Busy  # a member between its flock and its record: not ours to take
                epoch += 1
                self._write_record(fd, epoch, self.member_id)
            finally:
                os.close(lk)
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
            lk = self._fence_lock(topic, partition, blocking=True)
            try:
                if self._read_record(fd) == (epoch, self.member_id):
                    self._write_record(fd, epoch, "")
            finally:
                os.close(lk)
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
        """The commit fence for ``OffsetsFile.commit(fence=...)``: a context
        manager factory ``fence(keys)`` that locks the partitions' fence
        files (in sorted order, so two committers never deadlock), and raises
        FencedMemberError unless every (topic, partition) is owned by this
        member with the epoch it held when ``fence()`` was called (the
        positions being committed belong to that epoch, even if this member
        takes the partition again meanwhile). The commit is written while
        the locks are held, so no takeover can come between check and write."""
        return _Fence(self, dict(self._epochs))

    def _check_epochs(self, keys, epochs: dict) -> None:
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
                self._fd]:
            try:
                os.close(fd)
            except OSError:
                pass
        self._owned.clear()
        self._peers.clear()


def fence_lock(owners_dir: str, topic: str, partition: int, blocking: bool) -> int:
    """flock ``<owners_dir>/<topic>/<partition>.fence``; the fd (closing it
    unlocks), or -1 when not ``blocking`` and another holds it."""
    d = os.path.join(owners_dir, topic)
    if not os.path.isdir(d):
        _makedirs_durable(d)
    return flock_path(os.path.join(d, f"{partition}.fence"), blocking)


class _Fence:
    """``Membership.fence()``: ``with fence(keys):`` holds the keys' fence
    locks and has checked the ownership records."""

    def __init__(self, member: Membership, epochs: dict):
        self._member = member
        self._epochs = epochs
        self._fds: list = []
        self._keys: list = []

    def __call__(self, keys):
        self._keys = sorted(keys)
        return self

    def __enter__(self):
        m = self._member
        try:
            for topic, partition in self._keys:
                self._fds.append(fence_lock(m._owners_dir, topic, partition, blocking=True))
            m._check_epochs(self._keys, self._epochs)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)


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


