"""Small file-system helpers shared by the storage modules: one ``pwrite``
loop, one ``flock`` wrapper and a directory fsync."""
from __future__ import annotations

import errno
import fcntl
import os

from unstoppable._core.segment import lock_file, unlock_file

__all__ = ["O_CLOEXEC", "fsync_dir", "makedirs_durable", "try_flock", "flock_path", "pwrite_all", "Flock", "open_readonly"]

O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def fsync_dir(path: str) -> None:
    """fsync a directory, making the names created or renamed in it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def try_flock(fd: int) -> bool:
    """Take an exclusive flock without waiting: False when another holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def flock_path(path: str, wait: bool) -> int:
    """Open (creating it) ``path`` and flock it exclusively: the descriptor
    (closing it unlocks), or -1 when not ``wait`` and another holds it.
    Each open has its own flock, so threads of one process exclude each
    other too."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | O_CLOEXEC, 0o644)
    try:
        if wait:
            fcntl.flock(fd, fcntl.LOCK_EX)
        elif not try_flock(fd):
            os.close(fd)
            return -1
    except BaseException:
        os.close(fd)
        raise
    return fd


def makedirs_durable(path: str) -> None:
    """mkdir -p, fsyncing each parent whose entries changed."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    makedirs_durable(parent)
    try:
        os.mkdir(path)
    except FileExistsError:
        return
    fsync_dir(parent)


def open_readonly(path: str, missing_ok: bool = False, min_size: int = 0) -> int:
    """Open ``path`` read-only for a read-only log. With ``missing_ok``, a
    missing file reads as an empty one: an anonymous in-memory file (memfd)
    stands in, so nothing is ever created on disk. With ``min_size``, a file
    shorter than that is copied into such an in-memory file, zero-padded, so
    that a mapping of ``min_size`` bytes never reaches past its end."""
    try:
        fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
    except FileNotFoundError:
        if not missing_ok:
            raise
        fd = -1
    if fd >= 0 and os.fstat(fd).st_size >= min_size:
        return fd
    mem = os.memfd_create(os.path.basename(path), os.MFD_CLOEXEC)
    try:
        if fd >= 0:
            data = os.pread(fd, min_size, 0)
            pwrite_all(mem, data, 0)
        os.ftruncate(mem, min_size)
    except BaseException:
        os.close(mem)
        raise
    finally:
        if fd >= 0:
            os.close(fd)
    return mem


def pwrite_all(fd: int, data, pos: int) -> None:
    """Write all of ``data`` at ``pos`` (``pwrite`` may write less than asked;
    a full disk then raises on the next call, as OSError ENOSPC)."""
    mv = memoryview(data)
    try:
        while len(mv):
            n = os.pwrite(fd, mv, pos)
            if n <= 0:  # pragma: no cover - pwrite reports errors by raising
                raise OSError(errno.EIO, "pwrite wrote nothing")
            mv = mv[n:]
            pos += n
    finally:
        mv.release()


class Flock:
    """An exclusive ``flock`` on a file, as a context manager.

    ``Flock(path)`` opens (creating) the file and owns the descriptor;
    ``Flock(fd=fd)`` locks a descriptor someone else owns. The kernel drops
    the lock when the holding process dies, so a crashed holder never wedges
    anyone. flock does not exclude threads sharing one file description:
    callers pair it with a ``threading`` lock.
    """

    __slots__ = ("fd", "_owned")

    def __init__(self, path: str | None = None, *, fd: int = -1, readonly: bool = False):
        self._owned = path is not None
        if path is not None and readonly:
            # A read-only log: lock an existing file without writing (flock
            # needs no write permission); with no file, no process can be
            # writing there to exclude, and the lock does nothing.
            try:
                fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
            except FileNotFoundError:
                self.fd = -1
                return
        elif path is not None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | O_CLOEXEC, 0o644)
        if fd < 0:
            raise ValueError("Flock needs a path or a descriptor")
        self.fd = fd

    def __enter__(self):
        if self.fd >= 0:
            lock_file(self.fd)  # keeps the GIL unless another process holds the lock
        return self

    def __exit__(self, *exc):
        if self.fd >= 0:
            unlock_file(self.fd)

    def close(self) -> None:
        """Close the descriptor when this object opened it (dropping the lock)."""
        if self._owned and self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
