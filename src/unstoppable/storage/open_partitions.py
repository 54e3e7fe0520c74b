"""The log-wide bound on open partitions: :class:`OpenPartitions`, a least
recently used list of the partitions that hold descriptors, and
:class:`AppendLock`, a partition's append lock whose descriptor can be let go.

A partition in use holds 4 descriptors (its append lock and the active
segment's three files) and up to 3 more per sealed segment it reads
(``segments.OPEN_SEGMENTS``). Past ``max_open`` open partitions, the least
recently used idle one is *parked*: it lets go of every descriptor and
segment mapping, keeping its 4 KiB head mapped (a mapping, no descriptor),
its segment facts and its producer state, so it reopens on next use without
a recovery scan. Parking is transparent: the same ``Partition`` object works
on, and whatever needs a descriptor again opens it and puts the partition
back in the list.

Recency is a CLOCK (second chance) rather than a strict LRU, so the hot
paths pay one attribute test and nothing else: a sweep marks a partition
``_cold``; its next use clears the mark (``Partition._warm``); a partition
still cold when the sweep comes round again is parked.

What keeps a partition from being parked (it is skipped, never waited for):
its in-process lock is held (an append, a roll, retention, a durability
plan, or this very thread is inside one of its calls); a durability round
for it is in flight (between its plan and its result). Readers take no
lock: a read that was under way keeps the segment it holds (its files close
when it lets go), and record views keep their mappings alive as ever. A
consumer waiting on a partition needs none of its descriptors (its
listeners, its inotify watch on the directory and the change counter in
the mapped head all carry on), so waiting does not keep one open.
"""
from __future__ import annotations

import collections
import os
import resource
import threading
import weakref

from unstoppable._core.segment import lock_file, unlock_file
from unstoppable.storage._fs import O_CLOEXEC, Flock, try_flock
from unstoppable.storage.appender import RESERVE_MIN, RESERVE_OFF, give_back_reserved

__all__ = ["OpenPartitions", "AppendLock", "default_max_open_partitions", "park"]

# Descriptors budgeted per open partition for the default bound: 4 held by
# one in use, the rest for the sealed segments a reader has open and for the
# application's own files.
FDS_PER_PARTITION = 8


def default_max_open_partitions(soft_limit: int | None = None) -> int:
    """The default ``max_open_partitions``: RLIMIT_NOFILE's soft limit / 8
    (128 under ``ulimit -n 1024``), at least 8."""
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY or soft_limit > (1 << 20):
        soft_limit = 1 << 20
    return max(8, soft_limit // FDS_PER_PARTITION)


class AppendLock(Flock):
    """A partition's append lock (an exclusive ``flock`` on its ``lock``
    file) whose descriptor can be let go while nobody holds the lock
    (:meth:`release`) and opens again on the next ``with``, calling
    ``on_reopen()``. Every ``with`` runs under the partition's in-process
    lock, and so does :meth:`release`."""

    __slots__ = ("path", "readonly", "on_reopen")

    def __init__(self, path: str, *, readonly: bool = False, on_reopen=None):
        super().__init__(path, readonly=readonly)
        self.path = path
        self.readonly = readonly
        self.on_reopen = on_reopen

    def __enter__(self):
        if self.fd < 0:
            self._reopen()
        if self.fd >= 0:
            lock_file(self.fd)  # keeps the GIL unless another process holds the lock
        return self

    def _reopen(self) -> None:
        try:
            if self.readonly:
                self.fd = os.open(self.path, os.O_RDONLY | O_CLOEXEC)
            else:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | O_CLOEXEC, 0o644)
        except FileNotFoundError:
            if not self.readonly:
                raise
            return  # (read-only log without a lock file: nothing to exclude)
        if self.on_reopen is not None:
            self.on_reopen()

    def release(self) -> None:
        """Close the descriptor (the lock is not held: callers hold the
        partition's in-process lock, under which alone it is taken)."""
        self.close()


class OpenPartitions:
    """The partitions of one log that may hold descriptors, least recently
    (re)opened first, and the bound on their number.

    ``max_open`` None derives the bound from the current RLIMIT_NOFILE each
    time a partition opens (:func:`default_max_open_partitions`), so a limit
    lowered or raised later counts.
    """

    def __init__(self, max_open: int | None = None):
        if max_open is not None and (isinstance(max_open, bool) or not isinstance(max_open, int)
                                     or max_open < 1):
            raise ValueError(f"max_open_partitions must be a positive int or None, "
                             f"got {max_open!r}")
        self.max_open = max_open
        self._parts: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self.parked = 0     # partitions parked so far (for tests and benches)
        _ALL.add(self)

    @property
    def bound(self) -> int:
        """The number of open partitions kept (at most; busy ones may exceed it)."""
        return self.max_open if self.max_open is not None else default_max_open_partitions()

    def __len__(self) -> int:
        return len(self._parts)

    def opened(self, p) -> None:
        """``p`` holds descriptors (again): count it, and park the least
        recently used idle partitions past the bound."""
        with self._lock:
            self._parts[p] = None
            self._parts.move_to_end(p)
            over = len(self._parts) - self.bound
            victims = self._pick(over, keep=p) if over > 0 else []
        for v in victims:
            self._park(v)

    def closed(self, p) -> None:
        """``p`` closed for good."""
        with self._lock:
            self._parts.pop(p, None)

    def park_idle(self, keep=None) -> int:
        """Park every idle partition (but ``keep``), as when the process ran
        out of descriptors. Returns how many were parked."""
        with self._lock:
            for q in self._parts:
                q._cold = True  # no second chance: descriptors are needed now
            victims = self._pick(len(self._parts), keep=keep)
        return sum(self._park(v) for v in victims)

    def _pick(self, n: int, keep) -> list:
        """(Lock held.) Up to ``n`` partitions to park, taken out of the list:
        CLOCK order, cold ones first. A partition parked by mistake (busy)
        goes back in when :meth:`_park` finds it so."""
        victims = []
        parts = self._parts
        # Two passes at most: the first marks, the second takes the marked.
        for _ in range(2 * len(parts)):
            if len(victims) >= n or not parts:
                break
            q, _ = parts.popitem(last=False)
            if q is keep or not q._cold:
                if q is not keep:
                    q._cold = True
                parts[q] = None  # second chance: to the back
                continue
            victims.append(q)
        return victims

    def _park(self, q) -> bool:
        parked = park(q)
        if parked:
            self.parked += 1
        else:
            with self._lock:
                if not q.closed:
                    self._parts[q] = None
        return parked


# A forked child has none of the parent's threads: a list lock one of them
# held at the fork would never be released there.
_ALL: "weakref.WeakSet[OpenPartitions]" = weakref.WeakSet()


def _new_locks_in_child() -> None:
    for lru in list(_ALL):
        lru._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks_in_child)


def park(part) -> bool:
    """Let go of every descriptor and segment mapping, if idle: nobody
    in this process in one of its locked sections (this thread
    included), no durability round in flight. (A consumer waiting on it
    needs none of them: listeners, inotify and the change counter in the
    mapped head carry on.)
    Returns whether it did. The head stays mapped (no descriptor), and
    so do the segment facts and the producer state: reopening is a few
    ``open()`` calls, never a recovery."""
    lock = part._lock
    if lock._is_owned() or not lock.acquire(blocking=False):
        return False
    try:
        ds = part._durability
        if ds.closed or ds.in_flight:
            return False
        # Parked first: whatever opens a descriptor from here on (a
        # reader under way) puts it back in the log's list.
        part._parked = True
        _give_back_reserved_nowait(part)
        ds.release_dir()
        part._catalog.release()
        part._flock.release()
        if part._appender is not None:
            for enc in (part._appender.encoder, part._appender._encoder2):
                try:
                    enc.clear()
                    enc.shrink(0)
                except BufferError:  # (a view of it is still held)
                    pass
        return True
    finally:
        lock.release()

def _give_back_reserved_nowait(part) -> None:
    """(In-process lock held.) Give back the blocks reserved past the
    active segment's data, if the append lock is free right now (parking
    never waits for another process) and they are more than the first
    reservation: that ftruncate cost 2-3 ms here, a log of many lightly
    written partitions would pay it at every park, and the 64 KiB left
    are given back at the next roll or close."""
    st = part._head.read()
    fd = part._flock.fd
    if part._readonly or st is None or fd < 0:
        return
    seg = part._catalog.get_open(st.active_base)
    if seg is None or seg.reserved_end <= st.active_size + RESERVE_MIN \
            or seg.reserved_end >= RESERVE_OFF or not try_flock(fd):
        return
    try:
        st = part._head.read()
        if st is not None:
            give_back_reserved(seg, st)
    except OSError:
        pass
    finally:
        unlock_file(fd)
