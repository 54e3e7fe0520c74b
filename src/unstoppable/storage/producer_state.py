"""Idempotent-producer state of one partition: the dedup table.

For every producer id that wrote to the partition, the table keeps the
producer's epoch and its last five batches (first sequence, record count, base
offset). An idempotent append is checked against it under the append lock:

* same epoch, ``base_sequence`` = last sequence + 1: new data, written;
* same epoch, same ``base_sequence`` and count as a remembered batch: a retry,
  dropped, and answered with the original offsets;
* same epoch, any other sequence at or below the last: DuplicateSequenceError
  (older than the five remembered batches: refused rather than written twice);
* same epoch, a sequence beyond last + 1: OutOfOrderSequenceError (records in
  between were never written; the gap is an error, never silent loss);
* a newer epoch must start at sequence 0; an older epoch is fenced, and so is
  any epoch older than the one the id's current owner claimed (the log's
  ProducerEpochs), even in a partition the new owner has not written to yet.

A producer whose every remembered batch lies below the partition's start
offset (retention deleted what it wrote) is forgotten, as Kafka expires
producer state: without that the table, and each snapshot, would grow with
every producer id that ever wrote. Its next batch is then taken as a new
producer's (sequence 0 is written; any other is a gap, on which the client
resyncs from the log). The rule reads only the shared head's start offset,
so every process forgets the same producers.

The table is derived from the log itself (the producer fields of each batch
header), so it survives restarts of the producer and of the log and sees
appends made by other processes: before each check it walks the headers
appended since it last looked. At every segment roll it is written to
``<new segment base>.producers`` (state as of the start of that segment), so
rebuilding it on open walks only the active segment.

Snapshot file (little-endian):
    0   4   magic "USPS"
    4   4   version 1
    8   4   producer count
    12  4   CRC-32C of the bytes from 16 to the end
    16  ..  per producer: i64 producer_id, i16 epoch, u8 batch count (<= 5),
            then per batch: i32 first_sequence, u32 record_count, i64 base_offset
"""
from __future__ import annotations

import os
import struct
from collections import deque

from unstoppable._core.hashing import crc32c
from unstoppable._core.segment import producer_batches
from unstoppable.errors import (
    CorruptLogError,
    DuplicateSequenceError,
    OutOfOrderSequenceError,
    ProducerFencedError,
    UnknownProducerError,
)

__all__ = ["ProducerStateTable", "REMEMBERED_BATCHES"]

REMEMBERED_BATCHES = 5
SEQ_MOD = 1 << 31
_MAGIC = b"USPS"
_HEAD = struct.Struct("<4sIII")
_PRODUCER = struct.Struct("<qhB")
_BATCH = struct.Struct("<iIq")


class _Producer:
    __slots__ = ("epoch", "batches")

    def __init__(self, epoch: int):
        self.epoch = epoch
        self.batches: deque = deque(maxlen=REMEMBERED_BATCHES)  # (first_seq, count, base_offset)

    def next_sequence(self) -> int:
        if not self.batches:
            return 0
        first, count, _ = self.batches[-1]
        return (first + count) % SEQ_MOD


class ProducerStateTable:
    """The dedup table of one partition (used under its append lock)."""

    def __init__(self, epochs=None):
        self.producers: dict[int, _Producer] = {}
        # The log's ProducerEpochs (storage/producer_ids.py): the epoch of each
        # id's current owner. An append with an older one is fenced even where
        # the new owner has not written yet.
        self._epochs = epochs
        self.synced = None  # (segment base, position) the table reflects, or None (not loaded)
        self.expired_below = 0  # producers wholly below this offset are forgotten

    # ------------------------------------------------------------ bookkeeping

    def apply(self, base_offset: int, count: int, pid: int, epoch: int, base_seq: int) -> None:
        """Take one written batch into account."""
        p = self.producers.get(pid)
        if p is None or epoch > p.epoch:
            p = self.producers[pid] = _Producer(epoch)
        elif epoch < p.epoch:
            return  # a fenced writer's batch that raced the fence; it changes nothing
        p.batches.append((base_seq, count, base_offset))

    def catch_up(self, catalog, st) -> None:
        """Walk the headers appended (by anyone) since the table last looked;
        ``catalog`` is the partition's SegmentCatalog, ``st`` its head state."""
        if self.synced is None:
            self._load(catalog, st)
            return
        base, pos = self.synced
        if (base, pos) == (st.active_base, st.active_size):
            self.expire(st.start_offset)
            return
        if base not in catalog.bases or catalog.bases[-1] != st.active_base:
            catalog.refresh(st)
            if base not in catalog.bases:
                self._load(catalog, st)  # our segment was deleted by retention
                return
        for b in [b for b in catalog.bases if base <= b <= st.active_base]:
            seg = catalog.get(b)
            limit = st.active_size if b == st.active_base else catalog.sealed(seg).size
            start = pos if b == base else 0
            if start < limit:
                found, _ = producer_batches(seg.data(limit), start, limit)
                for rec in found:
                    self.apply(*rec)
        self.synced = (st.active_base, st.active_size)
        self.expire(st.start_offset)

    def expire(self, start_offset: int) -> int:
        """Forget the producers whose batches all end at or below
        ``start_offset``. Returns how many were forgotten."""
        if start_offset <= self.expired_below:
            return 0
        self.expired_below = start_offset
        gone = [pid for pid, p in self.producers.items()
                if not p.batches or p.batches[-1][2] + p.batches[-1][1] <= start_offset]
        for pid in gone:
            del self.producers[pid]
        return len(gone)

    def _load(self, catalog, st) -> None:
        """Initialise from the newest snapshot at or below the active segment,
        then walk forward from that segment's start."""
        self.producers.clear()
        self.expired_below = 0
        catalog.refresh(st)
        start = st.active_base
        for b in reversed(catalog.bases):
            path = snapshot_path(catalog.path, b)
            if b <= st.active_base and os.path.exists(path):
                try:
                    self._read_snapshot(path)
                    start = b
                    break
                except CorruptLogError:
                    self.producers.clear()
                    continue  # an older snapshot plus a longer walk still gives the right state
        self.synced = (start, 0)
        self.catch_up(catalog, st)

    # ------------------------------------------------------------------ check

    def check(self, pid: int, epoch: int, base_seq: int, count: int):
        """Decide an idempotent append: None to write it, ``(base, end)`` of the
        original when it is a retry; raises for gaps, stale retries and fencing."""
        if self._epochs is not None:
            owner = self._epochs.current(pid)
            if owner is not None and epoch < owner:
                raise ProducerFencedError(
                    f"producer {pid} epoch {epoch} is fenced: a newer instance of this "
                    f"producer id took over with epoch {owner}")
        p = self.producers.get(pid)
        if p is None and base_seq != 0:
            raise UnknownProducerError(
                f"producer {pid} has no batch left here (it never wrote here, or retention "
                f"deleted what it wrote), so its first batch must have sequence 0, not {base_seq}")
        if p is None or epoch > p.epoch:
            if base_seq != 0:
                raise OutOfOrderSequenceError(
                    f"producer {pid} epoch {epoch} has written nothing here yet, so its first "
                    f"batch must have sequence 0, not {base_seq}")
            return None
        if epoch < p.epoch:
            raise ProducerFencedError(
                f"producer {pid} epoch {epoch} is fenced by epoch {p.epoch}")
        for first, n, base in p.batches:
            if first == base_seq:
                if n != count:
                    raise OutOfOrderSequenceError(
                        f"producer {pid} resent sequence {base_seq} with {count} records; "
                        f"the original batch had {n}")
                return base, base + n
        expected = p.next_sequence()
        if base_seq == expected:
            return None
        last = (expected - 1) % SEQ_MOD
        behind = (last - base_seq) % SEQ_MOD
        if behind < SEQ_MOD // 2:
            raise DuplicateSequenceError(
                f"producer {pid} resent sequence {base_seq}, which starts none of the last "
                f"{REMEMBERED_BATCHES} batches remembered (last written sequence {last}); "
                "it was written before and is refused rather than written twice")
        raise OutOfOrderSequenceError(
            f"producer {pid} sent sequence {base_seq} but the next expected is {expected}: "
            f"{(base_seq - expected) % SEQ_MOD} records in between were never written")

    def state(self, pid: int):
        p = self.producers.get(pid)
        return None if p is None else (p.epoch, p.next_sequence())

    # -------------------------------------------------------------- snapshots

    def write_snapshot(self, path: str) -> None:
        body = bytearray()
        for pid, p in self.producers.items():
            body += _PRODUCER.pack(pid, p.epoch, len(p.batches))
            for b in p.batches:
                body += _BATCH.pack(*b)
        data = _HEAD.pack(_MAGIC, 1, len(self.producers), crc32c(body)) + body
        tmp = f"{path}.tmp{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:                   # a short write means no room: the next one says so
                view = view[os.write(fd, view):]
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, path)

    def _read_snapshot(self, path: str) -> None:
        with open(path, "rb") as f:
            data = f.read()
        if len(data) < _HEAD.size:
            raise CorruptLogError("producer snapshot is too short", segment=path)
        magic, version, n, crc = _HEAD.unpack_from(data, 0)
        if magic != _MAGIC or version != 1 or crc32c(data[_HEAD.size:]) != crc:
            raise CorruptLogError("producer snapshot fails its checks", segment=path)
        pos = _HEAD.size
        try:
            for _ in range(n):
                pid, epoch, nb = _PRODUCER.unpack_from(data, pos)
                pos += _PRODUCER.size
                p = self.producers[pid] = _Producer(epoch)
                for _ in range(nb):
                    p.batches.append(_BATCH.unpack_from(data, pos))
                    pos += _BATCH.size
        except struct.error:
            raise CorruptLogError("producer snapshot is truncated", segment=path) from None


def snapshot_path(partition_dir: str, base: int) -> str:
    return os.path.join(partition_dir, f"{base:020d}.producers")
