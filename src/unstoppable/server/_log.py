"""Every storage internal the server uses, in one place.

The server otherwise uses the public storage API (``us.Log``, topics,
partitions). What is imported here lives in modules other engineers may
restructure; a move is fixed in this file alone.
"""
from __future__ import annotations

import os
import struct
import threading

from unstoppable._names import validate_group_name, validate_topic_name  # noqa: F401  (re-exported)
from unstoppable.storage.groups import (  # noqa: F401  (re-exported)
    MAX_METADATA_BYTES,
    PRODUCERS_DIR,
    OffsetsFile,
    list_groups,
)

__all__ = ["MAX_METADATA_BYTES", "OffsetsFile", "list_groups", "validate_group_name", "validate_topic_name",
           "ProducerIdCounter"]

_COUNTER = struct.Struct("<4sQ")
_MAGIC = b"USPI"


class ProducerIdCounter:
    """Producer ids handed out by InitProducerId, from a persisted counter.

    The counter lives in ``<log>/server/producer-ids`` (magic ``USPI``, u64 next
    id, little-endian), replaced atomically and fsynced before an id is given
    out, so no id is handed out twice across restarts and crashes. The Python
    Producer derives its ids by hashing names and holds a lock file
    ``<log>/producers/<id as 16 hex digits>.lock`` for each; ids with such a file
    are skipped, so a Kafka client never shares an id with a Python producer
    that wrote to this log.
    """

    FIRST = 1 << 32

    def __init__(self, log_path: str):
        self.log_path = log_path
        self.dir = os.path.join(log_path, "server")
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, "producer-ids")
        self._lock = threading.Lock()
        self._next = self.FIRST
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return
        if len(raw) != _COUNTER.size or raw[:4] != _MAGIC:
            raise ValueError(f"{self.path} is not a producer id counter (expected {_COUNTER.size} "
                             f"bytes starting with {_MAGIC!r})")
        self._next = _COUNTER.unpack(raw)[1]

    def _taken_by_python_producer(self, pid: int) -> bool:
        return os.path.exists(os.path.join(self.log_path, PRODUCERS_DIR, f"{pid:016x}.lock"))

    def allocate(self) -> int:
        """A fresh producer id, durable before it is returned."""
        with self._lock:
            pid = self._next
            while self._taken_by_python_producer(pid):
                pid += 1
            self._next = pid + 1
            tmp = self.path + ".tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, _COUNTER.pack(_MAGIC, self._next))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
            dfd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            return pid
