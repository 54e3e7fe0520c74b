"""Linux inotify through ctypes: how a waiting consumer hears at once that
another process wrote to a partition directory.

An append pwrite()s the segment file (an IN_MODIFY event on the partition
directory) and then publishes the new end offset in the shared head, which is
an mmap'ed page and raises no event. So an event means "look now, and again
shortly": see EmbeddedBackend.wait_for_data. Where inotify is missing (not
Linux, or the watch limit is reached) ``Watcher.create()`` returns None and the
backend relies on polling alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys

__all__ = ["Watcher"]

IN_MODIFY = 0x00000002
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = getattr(os, "O_CLOEXEC", 0o2000000)

_libc = None


def _lib():
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c") or "libc.so.6"
        lib = ctypes.CDLL(name, use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_init1.restype = ctypes.c_int
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_add_watch.restype = ctypes.c_int
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.inotify_rm_watch.restype = ctypes.c_int
        _libc = lib
    return _libc


class Watcher:
    """One inotify descriptor watching partition directories for writes."""

    def __init__(self, fd: int):
        self.fd = fd
        self._wds: dict[str, int] = {}

    @classmethod
    def create(cls) -> "Watcher | None":
        if not sys.platform.startswith("linux"):
            return None
        try:
            fd = _lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        return cls(fd)

    def watch(self, path: str) -> bool:
        """Watch a directory (once); False when the kernel refuses (limits)."""
        if path in self._wds:
            return True
        wd = _lib().inotify_add_watch(self.fd, os.fsencode(path), IN_MODIFY | IN_CREATE)
        if wd < 0:
            return False
        self._wds[path] = wd
        return True

    def drain(self) -> bool:
        """Read every pending event; True when there was at least one."""
        got = False
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return got
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                return got
            if not data:
                return got
            got = True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self._wds.clear()
