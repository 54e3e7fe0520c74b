"""Producer ids: who owns one, and epoch fencing (``<log>/producers/``).

Each idempotent producer id has a record file, ``<id:016x>.lock``, and the
live owner of epoch E holds an flock on ``<id:016x>.e<E>.lock``; the kernel
drops that lock when the owner dies.

Record (little-endian, 32 bytes, read through a shared mapping by every
process that appends for the id)::

    0   4   magic "USPE"
    4   4   version 1
    8   8   epoch: the current owner's; appends with an older one are fenced
    16  8   heartbeat: ms since 1970 of the owner's last write (or its claim)
    24  8   pid of the owner (for messages only)

Claiming an id (:class:`ProducerIdLock`), with the record file flocked so
that claims are one at a time:

* no owner, or a dead one (its epoch lock is free): take the id at the
  same epoch. Nothing can be in flight from a dead process.
* a live owner whose heartbeat is older than ``timeout_ms`` (stopped, hung,
  or not writing), or any live owner when ``fence=True``: take over with
  epoch + 1. From then on every append with the old epoch fails with
  ProducerFencedError, checked under the partition's append lock (see
  :class:`ProducerEpochs` and storage/producer_state.py). The new owner then
  takes each partition's append lock once (while loading its sequences), so
  an append the old owner had begun before the fence has finished before
  the new owner writes anything.
* otherwise: ProducerIdInUseError, saying how to take over.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
import time
import weakref

from unstoppable.errors import ProducerIdInUseError
from unstoppable.storage._fs import O_CLOEXEC, fsync_dir, makedirs_durable
from unstoppable.storage._fs import try_flock as _try_flock

__all__ = ["ProducerIdLock", "ProducerEpochs", "PRODUCERS_DIR", "DEFAULT_PRODUCER_TIMEOUT_MS",
           "MAX_EPOCH"]

PRODUCERS_DIR = "producers"
# Kafka's transaction.timeout.ms default: a producer that has not written for
# a minute may be taken over by a new instance of its id.
DEFAULT_PRODUCER_TIMEOUT_MS = 60_000
MAX_EPOCH = 0x7FFF  # the batch header's producer_epoch is an int16

_MAGIC = b"USPE"
_RECORD = struct.Struct("<4sIqqq")
_HEARTBEAT = struct.Struct("<q")
_HEARTBEAT_AT = 16


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def record_path(log_path: str, producer_id: int) -> str:
    return os.path.join(log_path, PRODUCERS_DIR, f"{producer_id:016x}.lock")


def _epoch_lock_path(log_path: str, producer_id: int, epoch: int) -> str:
    return os.path.join(log_path, PRODUCERS_DIR, f"{producer_id:016x}.e{epoch}.lock")


def _read_record(fd: int):
    """(epoch, heartbeat_ms, pid), or None for a new or foreign file."""
    data = os.pread(fd, _RECORD.size, 0)
    if len(data) < _RECORD.size:
        return None
    magic, version, epoch, hb, pid = _RECORD.unpack(data)
    if magic != _MAGIC or version != 1:
        return None
    return epoch, hb, pid


_HOLDERS: "weakref.WeakSet" = weakref.WeakSet()


def _close_inherited_locks() -> None:
    # A flock belongs to the open file description, which fork shares: a
    # child that kept the descriptor would keep a dead parent looking alive.
    for h in list(_HOLDERS):
        h._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class ProducerIdLock:
    """ProducerIdLock(log_path, producer_id, name="", *, fence=False, timeout_ms=60000)

    Ownership of an idempotent producer id (see the module docstring).
    ``epoch`` is the epoch this owner writes with; ``fenced_previous`` says
    whether it took over from a live owner. :meth:`heartbeat` records a
    write (a cheap store into the shared record); :meth:`release` gives the
    id up.
    """

    def __init__(self, log_path: str, producer_id: int, name: str = "", *, fence: bool = False,
                 timeout_ms: int = DEFAULT_PRODUCER_TIMEOUT_MS):
        self._log_path = log_path
        self.producer_id = producer_id
        d = os.path.join(log_path, PRODUCERS_DIR)
        makedirs_durable(d)
        self.path = record_path(log_path, producer_id)
        self._fd = self._efd = -1
        self._map = None
        self.fenced_previous = False
        rfd = os.open(self.path, os.O_RDWR | os.O_CREAT | O_CLOEXEC, 0o644)
        try:
            fcntl.flock(rfd, fcntl.LOCK_EX)  # claims one at a time (held for microseconds)
            rec = _read_record(rfd)
            epoch = 0
            if rec is not None:
                old, hb, pid = rec
                efd = os.open(_epoch_lock_path(log_path, producer_id, old),
                              os.O_RDWR | os.O_CREAT | O_CLOEXEC, 0o644)
                if _try_flock(efd):
                    epoch = old  # no live owner: nothing to fence
                    self._efd = efd
                else:
                    os.close(efd)
                    idle = _now_ms() - hb
                    if not fence and idle < timeout_ms:
                        raise ProducerIdInUseError(
                            f"producer id {name or producer_id!r} is in use by a live producer "
                            f"(process {pid}, epoch {old}, last write {max(idle, 0)} ms ago; "
                            f"lock {self.path}). A new instance takes over once that one has "
                            f"not written for producer_timeout_ms={timeout_ms}, or at once "
                            f"with fence=True; otherwise give each producer its own id")
                    if old >= MAX_EPOCH:
                        raise ProducerIdInUseError(
                            f"producer id {name or producer_id!r} has used every epoch "
                            f"(0 .. {MAX_EPOCH}); use a new producer id")
                    epoch = old + 1
                    self.fenced_previous = True
            if self._efd < 0:
                efd = os.open(_epoch_lock_path(log_path, producer_id, epoch),
                              os.O_RDWR | os.O_CREAT | O_CLOEXEC, 0o644)
                if not _try_flock(efd):  # pragma: no cover - only a fenced owner of this epoch could hold it
                    os.close(efd)
                    raise ProducerIdInUseError(
                        f"producer id {name or producer_id!r}: epoch {epoch} is still held")
                self._efd = efd
            self.epoch = epoch
            os.pwrite(rfd, _RECORD.pack(_MAGIC, 1, epoch, _now_ms(), os.getpid()), 0)
            if rec is None:
                fsync_dir(d)
            self._map = mmap.mmap(rfd, _RECORD.size)
            fcntl.flock(rfd, fcntl.LOCK_UN)
        except BaseException:
            if self._efd >= 0:
                os.close(self._efd)
                self._efd = -1
            os.close(rfd)
            raise
        self._fd = rfd
        self._remove_dead_epoch_locks()
        _HOLDERS.add(self)

    def _remove_dead_epoch_locks(self) -> None:
        """Delete the epoch lock files of older epochs nobody holds."""
        prefix = f"{self.producer_id:016x}.e"
        d = os.path.join(self._log_path, PRODUCERS_DIR)
        for n in os.listdir(d):
            if not (n.startswith(prefix) and n.endswith(".lock")):
                continue
            try:
                e = int(n[len(prefix):-5])
            except ValueError:
                continue
            if e >= self.epoch:
                continue
            p = os.path.join(d, n)
            try:
                fd = os.open(p, os.O_RDWR | O_CLOEXEC)
            except OSError:
                continue
            try:
                if _try_flock(fd):
                    os.unlink(p)
            finally:
                os.close(fd)

    def current_epoch(self) -> int:
        """The epoch in the shared record now (newer than ours once fenced)."""
        return _RECORD.unpack_from(self._map, 0)[2]

    def heartbeat(self) -> None:
        """Record a write: the owner is alive and working. Does nothing once
        a newer owner has taken over (its heartbeat is not ours to move)."""
        m = self._map
        if m is not None and _RECORD.unpack_from(m, 0)[2] == self.epoch:
            _HEARTBEAT.pack_into(m, _HEARTBEAT_AT, _now_ms())

    def release(self) -> None:
        """Give the id up (the next claim takes it at once, at this epoch)."""
        _HOLDERS.discard(self)
        if self._map is not None:
            self._map.close()
            self._map = None
        for attr in ("_efd", "_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                setattr(self, attr, -1)
                os.close(fd)

    def _forget_after_fork(self) -> None:
        for attr in ("_efd", "_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                setattr(self, attr, -1)
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._map = None


class ProducerEpochs:
    """The current epoch of each producer id, as the shared records say: what
    an idempotent append is checked against (under the partition's append
    lock). One per log; records are mapped on first use and stay mapped."""

    def __init__(self, log_path: str):
        self._log_path = log_path
        self._maps: dict[int, mmap.mmap] = {}
        self._lock = threading.Lock()

    def current(self, producer_id: int) -> int | None:
        """The epoch of the id's current owner, or None when it was never claimed."""
        m = self._maps.get(producer_id)
        if m is None:
            m = self._open(producer_id)
            if m is None:
                return None
        magic, version, epoch, _, _ = _RECORD.unpack_from(m, 0)
        return epoch if magic == _MAGIC else None

    def _open(self, producer_id: int):
        path = record_path(self._log_path, producer_id)
        try:
            fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
        except OSError:
            return None
        try:
            if os.fstat(fd).st_size < _RECORD.size:
                return None  # being created: its claim has not written the record yet
            m = mmap.mmap(fd, _RECORD.size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        with self._lock:
            return self._maps.setdefault(producer_id, m)

    def close(self) -> None:
        with self._lock:
            for m in self._maps.values():
                try:
                    m.close()
                except BufferError:  # pragma: no cover - nothing exports these
                    pass
            self._maps.clear()
