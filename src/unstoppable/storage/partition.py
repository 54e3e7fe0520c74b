"""One partition of a topic: a directory of segment files plus a shared head.

Layout of ``<log>/topics/<topic>/<partition>/``::

    head                      shared state, mmap'ed by every process (csrc/head.h)
    lock                      flock()ed by the process appending; the kernel
                              releases it when that process dies
    00000000000000000000.log  segment: record batches back to back (csrc/batch.h)
    00000000000000000000.index      sparse offset index (csrc/index.h)
    00000000000000000000.timeindex  sparse time index

How appends reach the file: ``pwrite`` of whole encoded batches at the
position the head names. On this machine class write() of large chunks runs at
2.4-3 GB/s while first-touch stores into a shared mmap fault at about 0.5 GB/s
(docs/machine-facts), so writes go through the page cache and reads go through
read-only mappings of the same pages.

Who sees what: the head's ``active_size`` and ``end_offset`` move only after the
bytes are written, under the append lock, through a seqlock. Readers in any
process read up to that size and never further, so they never see a
half-written batch, and bytes a dead writer left past it are cut off by the
next lock holder.

Recovery (on open, under the append lock):
  * same boot as the head records (the page cache survived, only a process
    died): everything up to the head is intact; bytes past it are an
    unacknowledged torn tail and are truncated. Work: O(torn tail).
  * another boot (power loss or OS crash may have lost unsynced pages): scan
    from the recovery checkpoint, the last position known to be on stable
    storage, CRC-checking every batch; truncate at the first bad one and rebuild
    the indexes over the scanned part. Work: O(data written since the last
    fsync). A clean close fsyncs and moves the checkpoint to the end, which is
    the clean-shutdown marker: the next open after a reboot scans nothing.
"""
from __future__ import annotations

import bisect
import collections
import errno
import os
import re
import threading
import time
from typing import Callable, Iterable

from unstoppable._core.batch import BatchEncoder, RecordBatch
from unstoppable._core.segment import (
    HEAD_FILE_SIZE,
    HEAD_FLAG_DELETED,
    OFFSET_ENTRY_SIZE,
    OFFSET_MISMATCH,
    TIME_ENTRY_SIZE,
    Head,
    IndexBuilder,
    Mapping,
    batch_at_or_after,
    dup_fd,
    find_batch,
    find_time,
    lock_file,
    new_head_state,
    offset_index_entry,
    offset_index_floor,
    offset_index_valid,
    preallocate,
    read_batches,
    read_records,
    scan,
    time_index_below,
    time_index_entry,
    time_index_valid,
    unlock_file,
)
from unstoppable.storage.producer_state import ProducerStateTable, snapshot_path
from unstoppable.errors import (
    CorruptLogError,
    DiskFullError,
    LogClosedError,
    OffsetOutOfRangeError,
    UnknownTopicError,
    UnstoppableError,
    corrupt_from_code,
    is_disk_full,
)

__all__ = ["Partition", "ACKS"]

ACKS = ("written", "fsync")
_SEGMENT_RE = re.compile(r"^(\d{20})\.log$")
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _boot_id() -> bytes:
    """The kernel's boot id (16 bytes): it changes at every boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return bytes.fromhex(f.read().strip().decode().replace("-", ""))
    except OSError:
        # Without a boot id every open is treated as a possible reboot: the
        # scan from the checkpoint is always correct, only slower.
        return _NO_BOOT_ID


_NO_BOOT_ID = b"\0" * 16
BOOT_ID = _boot_id()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def segment_name(base: int) -> str:
    return f"{base:020d}"


def segment_stem(dirpath: str, base: int) -> str:
    """The path of a segment's files without their extension (``.log``,
    ``.index``, ``.timeindex``, ``.producers``)."""
    return os.path.join(dirpath, segment_name(base))


def _pwrite_all(fd: int, data, pos: int) -> None:
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


# Appends reserve the active segment's disk blocks ahead of the data, in
# steps of this many bytes, without changing the file's size (fallocate
# KEEP_SIZE): writing into reserved blocks skips ext4's per-page delayed
# allocation work (106 MB of 1 MiB pwrites: 16 ms instead of 22-23 ms; 10k-record
# appends of 1M x 100 B: 34-36 ms instead of 41-44). The file still ends at its
# data, so the format and recovery see nothing of it; a roll, a torn-tail cut
# or a clean close gives the unused blocks back (ftruncate to the data size).
_RESERVE_STEP = 4 << 20
_RESERVE_OFF = 1 << 62   # reserving failed or is unsupported here: stop trying


def _reserve_blocks(seg: "Segment", pos: int, need: int) -> None:
    """Make sure writing ``[pos, need)`` lands in reserved blocks (append lock held)."""
    if need <= seg.reserved_end:
        return
    start = max(seg.reserved_end, pos)  # (another process may have written past ours)
    end = max(need, start + _RESERVE_STEP)
    if preallocate(seg.fd, start, end - start) == 0:
        seg.reserved_end = end
        return
    # EOPNOTSUPP, ENOSPC, EFBIG...: stop reserving here; the pwrite itself
    # will say what is wrong. A reservation that failed for space may have
    # taken some blocks before it gave up: give them back (the append lock is
    # held and the data ends at pos), or they would take the write's room.
    seg.reserved_end = _RESERVE_OFF
    if os.fstat(seg.fd).st_size >= pos:  # (never extend a file someone cut short)
        os.ftruncate(seg.fd, pos)


# Sealed segments whose files one Partition keeps open (3 descriptors and up
# to 3 mappings each) beyond the newest; the least recently used one past this
# is let go and opened again when next needed. Its size and index counts stay
# known (``Partition._sealed``), so opening it again costs a few syscalls.
OPEN_SEGMENTS = 16

_MAX_APPEND_BYTES = (1 << 31) - 1  # index positions are u32; segments stay below 2**32
_STREAM_MIN = 32768         # records: appends at least this large are pipelined
_STREAM_TARGET = 1 << 20     # bytes per pipelined chunk


def _head_consistent(st) -> bool:
    """Whether a head's fields agree with each other, as every writer leaves
    them. A head can pass its magic and seqlock checks and still be wrong: a
    file cut short keeps its first fields and reads zeros after them (the
    partition fuzz target found a checkpoint at segment 80 claiming end
    offset 0, from which recovery cut the log back to nothing and the next
    append reused offset 0). Recovery rebuilds from the segments instead."""
    if not 0 <= st.start_offset <= st.active_base <= st.end_offset:
        return False
    if (st.active_size == 0) != (st.end_offset == st.active_base):
        return False
    if not st.ckpt_base <= st.active_base or not st.ckpt_base <= st.ckpt_end_offset <= st.end_offset:
        return False
    if (st.ckpt_size == 0) != (st.ckpt_end_offset == st.ckpt_base):
        return False
    if st.ckpt_base == st.active_base and st.ckpt_size > st.active_size:
        return False
    return True


class Segment:
    """One segment file and its two indexes, as seen by this process."""

    __slots__ = ("base", "path", "fd", "oi_fd", "ti_fd", "_map", "_oi_map", "_ti_map",
                 "sealed_size", "oi_n", "ti_n", "_max_ts", "_map_hint", "_oi_hint", "reserved_end")

    def __init__(self, dirpath: str, base: int, map_hint: int, oi_hint: int, create: bool = False):
        self.base = base
        stem = segment_stem(dirpath, base)
        self.path = stem + ".log"
        flags = os.O_RDWR | _O_CLOEXEC | (os.O_CREAT if create else 0)
        self.fd = self.oi_fd = self.ti_fd = -1
        self._map = None
        self._oi_map = None
        self._ti_map = None
        try:
            self.fd = os.open(self.path, flags, 0o644)
            self.oi_fd = os.open(stem + ".index", os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644)
            self.ti_fd = os.open(stem + ".timeindex", os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644)
        except BaseException:
            self.close()
            raise
        self.reserved_end = 0      # blocks reserved (preallocated) up to here, as far as we know
        self.sealed_size = -1      # known final size once sealed, else -1
        self.oi_n = -1             # entry counts of a sealed segment's indexes (-1 = not loaded)
        self.ti_n = -1
        self._max_ts = None
        self._map_hint = map_hint
        self._oi_hint = oi_hint

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def data(self, need: int) -> Mapping:
        """A mapping that covers at least ``need`` bytes of the segment."""
        m = self._map
        if m is None or m.length < need:
            m = self._map = Mapping(self.fd, max(need, self._map_hint))
        return m

    def oi_map(self, entries: int) -> Mapping:
        need = entries * OFFSET_ENTRY_SIZE
        m = self._oi_map
        if m is None or m.length < need:
            m = self._oi_map = Mapping(self.oi_fd, max(need, self._oi_hint * OFFSET_ENTRY_SIZE))
        return m

    def ti_map(self, entries: int) -> Mapping:
        need = entries * TIME_ENTRY_SIZE
        m = self._ti_map
        if m is None or m.length < need:
            m = self._ti_map = Mapping(self.ti_fd, max(need, self._oi_hint * TIME_ENTRY_SIZE))
        return m

    def close(self) -> None:
        for fd in (self.fd, self.oi_fd, self.ti_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fd = self.oi_fd = self.ti_fd = -1
        # Mappings stay alive as long as record views reference them.
        self._map = self._oi_map = self._ti_map = None

    def __del__(self):
        # A segment let go of (OPEN_SEGMENTS, retention) closes its files when
        # the last user is done with it: a reader in another thread that still
        # holds it never sees its descriptors closed, or reused, under it.
        if self.fd >= 0 or self.oi_fd >= 0 or self.ti_fd >= 0:
            try:
                self.close()
            except Exception:  # at interpreter exit, os may be gone already
                pass


class _Flock:
    """The cross-process append lock: flock(LOCK_EX) on ``<partition>/lock``.

    The kernel drops it when the holding process dies, so a crashed writer can
    never wedge a partition. Used together with an in-process lock, because
    flock does not exclude threads sharing one file description.
    """

    __slots__ = ("fd",)

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644)

    def __enter__(self):
        lock_file(self.fd)  # keeps the GIL unless another process holds the lock
        return self

    def __exit__(self, *exc):
        unlock_file(self.fd)

    def close(self):
        os.close(self.fd)


class Partition:
    """One partition: dense 64-bit offsets from 0, appended and read.

    Obtained with ``topic.partition(i)``. Safe to use from several threads; any
    number of processes may open the same partition, and appends from all of
    them are serialized by an OS lock the kernel releases on death.
    """

    def __init__(self, topic, index: int, path: str, config):
        self.topic = topic.name
        self.index = index
        self.path = path
        self._config = config
        self._log = topic._log
        self._lock = threading.RLock()
        self._closed = False
        self._failed: BaseException | None = None
        self._listeners: list[Callable[[], None]] = []
        # Open segments, least recently used first (at most OPEN_SEGMENTS
        # sealed ones besides the newest), and what is known of sealed ones
        # whether open or not: base -> [size, oi_n, ti_n, max_ts or None].
        # Readers take no partition lock; _seg_lock guards these (and _bases)
        # for the moments they change, never across I/O.
        self._segments: collections.OrderedDict[int, Segment] = collections.OrderedDict()
        self._sealed: dict[int, list] = {}
        self._seg_lock = threading.RLock()
        # Sorted bases of the segments. Replaced, never changed in place:
        # readers bisect and index a list they hold without a lock.
        self._bases: list[int] = []
        self._map_hint = config.segment_bytes + config.max_batch_bytes
        self._oi_hint = config.segment_bytes // max(config.index_interval_bytes, 1) + 64
        self._encoder = BatchEncoder(config.max_batch_bytes, config.max_record_bytes)
        self._encoder2 = BatchEncoder(config.max_batch_bytes, config.max_record_bytes)
        self._dir_synced = False
        self._stream_chunk = 256  # records per pipelined chunk; adapts to ~1 MiB
        self._producers = ProducerStateTable()
        self._durable_end = 0
        os.makedirs(path, exist_ok=True)
        self._dirfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
        self._flock = _Flock(os.path.join(path, "lock"))
        hp = os.path.join(path, "head")
        self._headfd = os.open(hp, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644)
        try:
            with self._flock:
                # Allocate the head's blocks, not just its size: a store through
                # the mapping into a hole of a full file system raises SIGBUS,
                # and the guard would turn the head into private zero pages
                # other processes never see.
                os.posix_fallocate(self._headfd, 0, HEAD_FILE_SIZE)
                self._head = Head(self._headfd)
                self.recovery = self._recover()
        except BaseException as e:
            self._close_files()
            if isinstance(e, OSError) and is_disk_full(e):
                raise DiskFullError(e.errno, f"no space to open {self.topic}/{self.index}: "
                                             f"{os.strerror(e.errno)}") from None
            raise
        self._durable_end = self._head.read().ckpt_end_offset

    # ------------------------------------------------------------------ state

    def _state(self):
        st = self._head.read()
        if st is None:
            # A writer died between the two halves of a head update; whoever
            # takes the lock next rewrites it whole.
            with self._lock, self._flock:
                st = self._head.read() or self._repair_head()
        return st

    def _check_open(self):
        if self._closed:
            raise LogClosedError(f"partition {self.topic}/{self.index} is closed")
        if self._failed is not None:
            raise UnstoppableError(
                f"partition {self.topic}/{self.index} failed earlier and refuses writes "
                f"until the log is reopened: {self._failed}") from self._failed

    @property
    def start_offset(self) -> int:
        """The first offset still held (it moves up when retention deletes segments)."""
        self._check_open()
        return self._state().start_offset

    @property
    def end_offset(self) -> int:
        """The next offset to be written (the high watermark)."""
        self._check_open()
        return self._state().end_offset

    @property
    def durable_offset(self) -> int:
        """Offsets below this one are known to be on stable storage (fsynced)."""
        self._check_open()
        return self._state().ckpt_end_offset

    @property
    def change_counter(self) -> int:
        """A number that changes whenever anything is appended, in any process."""
        return self._head.seq

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after each append made by this process (from the
        appending thread). Appends by other processes are seen by polling
        :attr:`change_counter`."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        try:
            self._listeners.remove(callback)
        except ValueError:
            pass

    # --------------------------------------------------------------- segments

    def _list_bases(self) -> list[int]:
        bases = []
        for name in os.listdir(self.path):
            m = _SEGMENT_RE.match(name)
            if m:
                bases.append(int(m.group(1)))
        bases.sort()
        return bases

    def _segment(self, base: int, create: bool = False) -> Segment:
        """The Segment for ``base``, its files opened on first use (sealed
        segments cost no file descriptors until they are read). At most
        OPEN_SEGMENTS sealed segments stay open besides the newest: the least
        recently used one is let go (its files close once no reader holds it)."""
        segs = self._segments
        with self._seg_lock:
            seg = segs.get(base)
            if seg is not None:
                segs.move_to_end(base)
                return seg
        seg = Segment(self.path, base, self._map_hint, self._oi_hint, create=create)
        with self._seg_lock:
            other = segs.get(base)
            if other is not None:  # another thread opened it meanwhile: ours closes
                segs.move_to_end(base)
                return other
            known = self._sealed.get(base)
            if known is not None:
                seg.sealed_size, seg.oi_n, seg.ti_n, seg._max_ts = known
            segs[base] = seg
            if base not in self._bases:
                bases = list(self._bases)
                bisect.insort(bases, base)
                self._bases = bases
            if len(segs) > OPEN_SEGMENTS + 1:
                newest = self._bases[-1]
                for b in segs:
                    if b != newest and b != base:
                        del segs[b]
                        break
        return seg

    def _refresh_segments(self, st) -> None:
        """Learn of segments other processes created; forget those retention
        removed. Segments past the active one are not yet published (a roll
        or a streamed append in progress) and stay out of the list every
        thread shares. The active one is the newer of ``st``'s and the head's
        now: a caller's ``st`` may be older than what another thread has put
        in the list, and cutting the list back to it would hide a segment
        from readers who already know it."""
        with self._lock:
            active = st.active_base
            cur = self._head.read()
            if cur is not None and cur.active_base > active:
                active = cur.active_base
            on_disk = [b for b in self._list_bases() if b <= active]
            keep = set(on_disk)
            with self._seg_lock:
                for base in list(self._segments):
                    if base not in keep:
                        self._drop_segment(base, unlink=False)
                for base in [b for b in self._sealed if b not in keep]:
                    del self._sealed[base]
                self._bases = on_disk

    def _drop_segment(self, base: int, unlink: bool) -> None:
        # The Segment's files close when the last reader lets go of it.
        with self._seg_lock:
            self._segments.pop(base, None)
            self._sealed.pop(base, None)
            if base in self._bases:
                self._bases = [b for b in self._bases if b != base]
        stem = segment_stem(self.path, base)
        if unlink:
            for ext in (".log", ".index", ".timeindex", ".producers"):
                try:
                    os.unlink(stem + ext)
                except FileNotFoundError:
                    pass

    def _segment_for(self, offset: int, st) -> Segment:
        bases = self._bases  # one list throughout: another thread may replace it
        if not bases or bases[-1] < st.active_base or bases[0] > offset:
            self._refresh_segments(st)
            bases = self._bases
        for attempt in range(3):
            i = bisect.bisect_right(bases, offset) - 1
            if i < 0:
                break
            try:
                return self._segment(bases[i])
            except FileNotFoundError:
                # Not open here, and deleted by retention (in any process)
                # since ``st`` was read: the head says where the log starts now.
                st = self._state()
                if offset < st.start_offset:
                    break
                self._refresh_segments(st)
                bases = self._bases
        raise OffsetOutOfRangeError(
            f"offset {offset} is below the start of {self.topic}/{self.index}")

    def _sealed_info(self, seg: Segment):
        """Size and valid index entry counts of a sealed segment (loaded once)."""
        if seg.sealed_size < 0:
            size = seg.size()
            oi_n = os.fstat(seg.oi_fd).st_size // OFFSET_ENTRY_SIZE
            ti_n = os.fstat(seg.ti_fd).st_size // TIME_ENTRY_SIZE
            file_oi, file_ti = oi_n, ti_n
            if oi_n:
                oi_n = offset_index_valid(seg.oi_map(oi_n), oi_n, size)
            if ti_n:
                ti_n = time_index_valid(seg.ti_map(ti_n), ti_n, size)
            last_pos = offset_index_entry(seg.oi_map(oi_n), oi_n - 1)[1] if oi_n else 0
            interval = self._config.index_interval_bytes
            # Torn (entries failed the checks) or missing (a batch starts an
            # interval or more past the last entry, so it would have one): rebuild.
            missing = False
            if size - last_pos > interval:
                try:
                    missing = batch_at_or_after(seg.data(size), last_pos, size,
                                                last_pos + interval) < size
                except CorruptLogError:
                    missing = False  # damaged data: reads and verify() report it
            if oi_n != file_oi or ti_n != file_ti or missing:
                oi_n, ti_n = self._repair_sealed_index(seg, size, oi_n, ti_n)
            seg.oi_n, seg.ti_n = oi_n, ti_n
            seg.sealed_size = size
            self._sealed[seg.base] = [size, oi_n, ti_n, seg._max_ts]
        return seg.sealed_size, seg.oi_n, seg.ti_n

    def _repair_sealed_index(self, seg: Segment, size: int, oi_n: int, ti_n: int):
        """Rebuild a sealed segment's torn or missing indexes from a full scan."""
        with self._lock, self._flock:
            builder = IndexBuilder(seg.base, self._config.index_interval_bytes, 0, -1, -1)
            r = scan(seg.data(size), 0, size, -1, builder)
            if r.position != size:
                # Damage inside sealed data: keep the entries that passed the
                # checks; reads and verify() report the corruption at its place.
                return oi_n, ti_n
            oi, ti = builder.take()
            # Write new files and rename them over the old ones: another process
            # may have the old index mapped, and truncating a mapped file would
            # fault its reads (SIGBUS). The old inode lives on for it.
            stem = segment_stem(self.path, seg.base)
            try:
                for ext, data in ((".index", oi), (".timeindex", ti)):
                    tmp = f"{stem}{ext}.tmp{os.getpid()}"
                    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC, 0o644)
                    try:
                        if data:
                            _pwrite_all(fd, data, 0)
                    finally:
                        os.close(fd)
                    os.rename(tmp, stem + ext)
                new_oi = os.open(stem + ".index", os.O_RDWR | _O_CLOEXEC)
                new_ti = os.open(stem + ".timeindex", os.O_RDWR | _O_CLOEXEC)
            except OSError:
                return 0, 0  # read-only or full file system: work without an index
            os.close(seg.oi_fd)
            os.close(seg.ti_fd)
            seg.oi_fd, seg.ti_fd = new_oi, new_ti
            seg._oi_map = seg._ti_map = None
            seg._max_ts = r.max_timestamp
            return len(oi) // OFFSET_ENTRY_SIZE, len(ti) // TIME_ENTRY_SIZE

    def _limits(self, seg: Segment, st):
        """(readable size, offset index entries, time index entries) of a segment."""
        if seg.base == st.active_base:
            return st.active_size, st.oi_count, st.ti_count
        return self._sealed_info(seg)

    def _position_of(self, seg: Segment, offset: int, limit: int, oi_n: int) -> int:
        """Byte position of the batch holding ``offset`` (index floor, then a header walk)."""
        pos, base = 0, seg.base
        if oi_n:
            hit = offset_index_floor(seg.oi_map(oi_n), oi_n, offset - seg.base)
            if hit is not None and hit[1] < limit:
                pos, base = hit[1], seg.base + hit[0]
        m = seg.data(limit)
        # The walk checks that batch offsets continue from the entry's (or the
        # segment's) base: a damaged base_offset, which no CRC covers, must
        # not move records to other offsets.
        try:
            return find_batch(m, pos, limit, offset, base, pos == 0)
        except CorruptLogError as e:
            first = e
        # A stale or torn index entry (or damage on the way from it). Before
        # walking from the segment's start (whose base the file name fixes),
        # try the floor among the leading well-formed entries: damage early in
        # the segment must not make every later batch unreadable.
        if oi_n:
            k = offset_index_valid(seg.oi_map(oi_n), oi_n, limit)
            hit = offset_index_floor(seg.oi_map(oi_n), k, offset - seg.base) if k else None
            if hit is not None and 0 < hit[1] < limit and hit[1] != pos:
                try:
                    return find_batch(m, hit[1], limit, offset, seg.base + hit[0], False)
                except CorruptLogError:
                    pass
        if pos == 0:
            raise first
        return find_batch(m, 0, limit, offset, seg.base, True)

    def _wrap_corrupt(self, e: CorruptLogError, seg: Segment) -> CorruptLogError:
        return CorruptLogError(e.reason, topic=self.topic, partition=self.index,
                               segment=seg.path, position=e.position, offset=e.offset)

    # ------------------------------------------------------------------ reads

    def read(self, offset: int, max_records: int = 500, max_bytes: int = 1 << 20) -> list:
        """read(offset, max_records=500, max_bytes=1 MiB) -> list[Record]

        Records from ``offset`` on, at most ``max_records`` of them and about
        ``max_bytes`` bytes of batches (at least one record when any is there).
        An empty list means ``offset`` is the end. Keys and values are
        zero-copy memoryviews over the mapped segment, and every batch they come
        from has passed its CRC check.

        Raises OffsetOutOfRangeError below ``start_offset`` or past ``end_offset``.
        """
        self._check_open()
        offset = self._check_offset(offset)
        if max_records <= 0:
            raise ValueError(f"max_records must be positive, got {max_records}")
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        st = self._state()
        if offset == st.end_offset:
            return []
        seg = self._segment_for(offset, st)
        limit, oi_n, _ = self._limits(seg, st)
        try:
            pos = self._position_of(seg, offset, limit, oi_n)
            records, _ = read_records(seg.data(limit), pos, limit, offset, max_records,
                                      max_bytes, self.topic, self.index)
        except CorruptLogError as e:
            raise self._wrap_corrupt(e, seg) from None
        if not records and offset < st.end_offset:
            raise CorruptLogError("segment ends before the offsets its successor starts at",
                                  topic=self.topic, partition=self.index, segment=seg.path,
                                  offset=offset)
        return records

    def read_batches(self, offset: int, max_bytes: int = 1 << 20) -> list[RecordBatch]:
        """read_batches(offset, max_bytes=1 MiB) -> list[RecordBatch]

        Whole CRC-checked batches from the one holding ``offset`` (at least
        one, then up to ``max_bytes``), without creating a Python object per
        record. The first batch may start before ``offset``.
        """
        self._check_open()
        offset = self._check_offset(offset)
        st = self._state()
        if offset == st.end_offset:
            return []
        seg = self._segment_for(offset, st)
        limit, oi_n, _ = self._limits(seg, st)
        try:
            pos = self._position_of(seg, offset, limit, oi_n)
            batches, _ = read_batches(seg.data(limit), pos, limit, offset, max_bytes,
                                      self.topic, self.index)
        except CorruptLogError as e:
            raise self._wrap_corrupt(e, seg) from None
        return batches

    def _check_offset(self, offset) -> int:
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int, got {type(offset).__name__}")
        st = self._state()
        if offset < st.start_offset or offset > st.end_offset:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside {self.topic}/{self.index}'s range "
                f"[{st.start_offset}, {st.end_offset}]")
        return offset

    def offset_for_time(self, ts_ms: int) -> int | None:
        """The first offset whose record timestamp is >= ``ts_ms``, or None when
        every record is older. Uses the time indexes, then scans a few batches."""
        self._check_open()
        if isinstance(ts_ms, bool) or not isinstance(ts_ms, int):
            raise TypeError(f"ts_ms must be an int of milliseconds, got {type(ts_ms).__name__}")
        st = self._state()
        if st.end_offset == st.start_offset:
            return None
        self._refresh_segments(st)
        for base in list(self._bases):
            if base > st.active_base:
                break  # rolled after ``st`` was read: past what it knows
            known = self._sealed.get(base)
            if base != st.active_base and known is not None and known[3] is not None \
                    and known[3] < ts_ms:
                continue  # older than ts_ms throughout, as far as is known: no need to open it
            try:
                seg = self._segment(base)
            except FileNotFoundError:
                continue  # removed by retention meanwhile
            limit, oi_n, ti_n = self._limits(seg, st)
            if limit == 0:
                continue
            try:
                if seg.base != st.active_base and self._segment_max_ts(seg, limit, oi_n) < ts_ms:
                    continue
                pos = 0
                if ti_n:
                    hit = time_index_below(seg.ti_map(ti_n), ti_n, ts_ms)
                    if hit is not None and hit[2] < limit:
                        pos = hit[2]
                found = find_time(seg.data(limit), pos, limit, ts_ms)
            except CorruptLogError as e:
                raise self._wrap_corrupt(e, seg) from None
            if found >= 0:
                return max(found, st.start_offset)
        return None

    def _sealed_size(self, base: int) -> int:
        """Size of a sealed segment, opening it only when not yet known."""
        known = self._sealed.get(base)
        if known is not None:
            return known[0]
        return self._sealed_info(self._segment(base))[0]

    def _sealed_max_ts(self, base: int) -> int:
        """Largest timestamp in a sealed segment, opening it only when not yet known."""
        known = self._sealed.get(base)
        if known is not None and known[3] is not None:
            return known[3]
        seg = self._segment(base)
        size, oi_n, _ = self._sealed_info(seg)
        return self._segment_max_ts(seg, size, oi_n)

    def _segment_max_ts(self, seg: Segment, limit: int, oi_n: int) -> int:
        """Largest timestamp in a sealed segment: the last index entry's batch and after."""
        if seg._max_ts is None:
            pos = 0
            if oi_n:
                pos = offset_index_entry(seg.oi_map(oi_n), oi_n - 1)[1]
                if pos >= limit:
                    pos = 0
            r = scan(seg.data(limit), pos, limit, -1)
            if r.position != limit:
                raise corrupt_from_code(r.code if r.code != OFFSET_MISMATCH else 6,
                                        position=r.position)
            best = r.max_timestamp
            _, _, ti_n = self._sealed_info(seg)
            if ti_n:
                best = max(best, time_index_entry(seg.ti_map(ti_n), ti_n - 1)[0])
            seg._max_ts = best
            known = self._sealed.get(seg.base)
            if known is not None:
                known[3] = best
        return seg._max_ts

    # ---------------------------------------------------------------- appends

    def append(self, records: Iterable, *, timestamp: int | None = None, acks: str | None = None,
               producer_id: int = -1, producer_epoch: int = -1, base_sequence: int = -1) -> int:
        """append(records, *, timestamp=None, acks=None, ...) -> int

        Append records and return the offset of the first. Each record is a
        bytes-like value, ``None``, a tuple ``(key, value[, headers[, timestamp]])``
        or a Record read from a log. ``timestamp`` (ms) applies to records
        without their own; it defaults to now.

        ``acks="written"`` (the default) returns once the bytes are in the OS
        page cache, which survives a crash of this process; ``acks="fsync"``
        returns after fdatasync, shared with every append waiting at that moment
        (group commit), which survives power loss.

        All records of one call become visible to readers at once, or not at all.
        """
        acks = self._check_acks(acks)
        self._check_open()
        idem = None
        if producer_id >= 0:
            if not 0 <= producer_epoch <= 0x7FFF:
                raise ValueError(f"producer_epoch must be in 0 .. 32767, got {producer_epoch}")
            if not 0 <= base_sequence < (1 << 31):
                raise ValueError(f"base_sequence must be in 0 .. 2**31-1, got {base_sequence}")
        ts = _now_ms() if timestamp is None else timestamp
        if producer_id < 0 and isinstance(records, (list, tuple)) and len(records) >= _STREAM_MIN:
            with self._lock:
                base, end = self._append_stream(records, ts)
            if acks == "fsync":
                self.wait_durable(end)
            return base
        with self._lock:
            enc = self._encoder
            enc.clear()
            if enc.encode(records, ts, producer_id, producer_epoch, base_sequence) == 0:
                return self._state().end_offset
            if producer_id >= 0:
                if enc.batches != 1:
                    enc.clear()
                    raise ValueError(
                        "an idempotent append must fit in one batch "
                        f"(max_batch_bytes={self._config.max_batch_bytes})")
                idem = (producer_id, producer_epoch, base_sequence, enc.records)
            base, end = self._write_encoded(enc, idem=idem)
            if enc.nbytes > (8 << 20):
                enc.clear()
                enc.shrink()
        if acks == "fsync":
            self.wait_durable(end)
        return base

    def append_encoded(self, encoder: BatchEncoder, *, acks: str | None = None,
                       check: Callable | None = None):
        """Write batches already encoded by ``encoder`` (offsets are assigned
        here). ``check(state)`` runs under the append lock before the write and
        may raise to refuse it, or return a value to return instead of writing
        (used for idempotent-producer dedup). Returns ``(base, end)`` or what
        ``check`` returned."""
        acks = self._check_acks(acks)
        self._check_open()
        with self._lock:
            if encoder.records == 0:
                end = self._state().end_offset
                return end, end
            result = self._write_encoded(encoder, check)
        if acks == "fsync":
            self.wait_durable(result[1])
        return result

    def append_stream(self, source, encoders, *, timestamp: int | None = None,
                      acks: str | None = None) -> int:
        """Pipelined append of a large ``source`` (``len()`` and slicing into
        row ranges) encoded by a pair of ``encoders`` (BatchEncoder's clear,
        encode(rows, ts), nbytes, set_base_offset, view, max_timestamp), as
        the Arrow ingest does. All rows become visible at once, as with
        :meth:`append`. Returns the first offset."""
        acks = self._check_acks(acks)
        self._check_open()
        if len(source) == 0:
            return self._state().end_offset
        ts = _now_ms() if timestamp is None else timestamp
        with self._lock:
            base, end = self._append_stream(source, ts, tuple(encoders))
        if acks == "fsync":
            self.wait_durable(end)
        return base

    def append_arrow(self, table, *args, **kwargs) -> int:
        """Append the rows of a ``pyarrow.Table``, encoded in C from its
        buffers: :func:`unstoppable.arrow.append_arrow`. Returns the first offset."""
        from unstoppable.arrow import append_arrow
        return append_arrow(self, table, *args, **kwargs)

    @staticmethod
    def _check_acks(acks):
        if acks is None:
            return "written"
        if acks not in ACKS:
            raise ValueError(f"acks must be one of {ACKS}, got {acks!r}")
        return acks

    def _write_encoded(self, enc: BatchEncoder, check=None, idem=None):
        nbytes = enc.nbytes
        if nbytes > _MAX_APPEND_BYTES:
            raise ValueError(
                f"one append of {nbytes} bytes is over the {_MAX_APPEND_BYTES}-byte limit "
                "(index positions are 32-bit); pass the records as a list to stream them, "
                "or split the call")
        with self._flock:
            st = self._head.read() or self._repair_head()
            if st.flags & HEAD_FLAG_DELETED:
                raise UnknownTopicError(f"topic {self.topic!r} was deleted")
            if check is not None:
                early = check(st)
                if early is not None:
                    return early
            if idem is not None:
                self._producers.catch_up(self, st)
                dup = self._producers.check(*idem)
                if dup is not None:
                    return dup
            seg = self._active(st)
            if (st.active_size > 0 and (
                    st.active_size + nbytes > self._config.segment_bytes
                    or (self._config.segment_ms is not None
                        and _now_ms() - st.active_created >= self._config.segment_ms))):
                seg, st = self._roll(st)
            pos = st.active_size
            base = st.end_offset
            end = enc.set_base_offset(base)
            builder = IndexBuilder(seg.base, self._config.index_interval_bytes,
                                   st.oi_last_pos, st.ti_last_ts, st.max_timestamp)
            mv = enc.view()
            try:
                builder.add_encoded(mv, pos, base)
                oi, ti = builder.take()
                try:
                    _reserve_blocks(seg, pos, pos + nbytes)
                    _pwrite_all(seg.fd, mv, pos)
                    if oi:
                        _pwrite_all(seg.oi_fd, oi, st.oi_count * OFFSET_ENTRY_SIZE)
                    if ti:
                        _pwrite_all(seg.ti_fd, ti, st.ti_count * TIME_ENTRY_SIZE)
                except OSError as e:
                    self._undo_write(seg, pos, st)
                    if is_disk_full(e):
                        raise DiskFullError(
                            e.errno, f"no space to append {nbytes} bytes to "
                            f"{self.topic}/{self.index}: {os.strerror(e.errno)}") from None
                    raise
            finally:
                mv.release()
            st.end_offset = end
            st.active_size = pos + nbytes
            if enc.max_timestamp > st.max_timestamp:
                st.max_timestamp = enc.max_timestamp
            st.oi_count += len(oi) // OFFSET_ENTRY_SIZE
            st.ti_count += len(ti) // TIME_ENTRY_SIZE
            st.oi_last_pos = builder.last_entry_pos
            st.ti_last_ts = builder.last_time_ts
            self._head.write(st)
            if idem is not None:
                pid, epoch, seq, count = idem
                self._producers.apply(base, count, pid, epoch, seq)
                self._producers.synced = (st.active_base, st.active_size)
        for cb in self._listeners:
            cb()
        return base, end

    def _append_stream(self, records, ts: int, encs=None):
        """A large append, pipelined: encode chunk k+1 (holding the GIL) while
        a C writer thread (no GIL) copies chunk k into the page cache, so the
        append costs about max(encode, write) instead of their sum.

        The head is written once at the end, so all records still become
        visible together; segments this append starts stay unpublished until
        then, and recovery deletes them if the process dies first.
        """
        # Our own encoders take a list by index range: slicing a large list
        # would write the reference count of every record (a cache miss
        # each: 25 ms per million records measured here).
        ranged = encs is None and isinstance(records, (list, tuple))
        encs = encs or (self._encoder, self._encoder2)
        n = len(records)
        # At least four chunks, so encoding and writing overlap even in a
        # medium-sized append; at most about _STREAM_TARGET bytes each.
        chunk = max(16, min(self._stream_chunk, n // 4))
        cfg = self._config
        # Chunks of at most half a segment, so a segment overshoots
        # segment_bytes by less than one chunk.
        target = min(_STREAM_TARGET, cfg.segment_bytes // 2)
        writer = self._log._writer()
        pending: list = [None, None]  # per encoder: (job, view) of its write in flight

        def finish(slot):
            job, mv = pending[slot]
            pending[slot] = None
            try:
                job.wait()
            finally:
                mv.release()

        with self._flock:
            st = self._head.read() or self._repair_head()
            if st.flags & HEAD_FLAG_DELETED:
                raise UnknownTopicError(f"topic {self.topic!r} was deleted")
            seg = self._active(st, check_tail=True)
            if (st.active_size > 0 and cfg.segment_ms is not None
                    and _now_ms() - st.active_created >= cfg.segment_ms):
                seg, st = self._roll(st)
            orig = st.copy()
            first_base = st.end_offset
            pos, off = st.active_size, st.end_offset
            oi_n, ti_n, max_ts = st.oi_count, st.ti_count, st.max_timestamp
            builder = IndexBuilder(seg.base, cfg.index_interval_bytes, st.oi_last_pos,
                                   st.ti_last_ts, st.max_timestamp)
            new_segs: list[Segment] = []
            first = seg  # held: with many new segments it may leave the open set
            i = j = 0
            try:
                while i < n:
                    slot = j & 1
                    enc = encs[slot]
                    if pending[slot] is not None:
                        finish(slot)  # that buffer's earlier write is done
                    enc.clear()
                    if ranged:  # a list: encode records[i:i + chunk] without slicing it
                        took = enc.encode(records, ts, start=i, stop=i + chunk)
                    else:
                        took = enc.encode(records[i:i + chunk], ts)
                    i += took
                    nb = enc.nbytes
                    self._stream_chunk = max(16, min(1 << 16, target * took // max(nb, 1)))
                    chunk = max(16, min(self._stream_chunk, n // 4))
                    if pos > 0 and pos + nb > cfg.segment_bytes:
                        for k in (0, 1):
                            if pending[k] is not None:
                                finish(k)
                        if not new_segs:
                            self._producers.catch_up(self, st)
                        if seg.reserved_end > pos:
                            os.ftruncate(seg.fd, pos)  # give back its unused reserved blocks
                        seg = self._new_segment(off)
                        new_segs.append(seg)
                        pos, oi_n, ti_n, max_ts = 0, 0, 0, -1
                        builder = IndexBuilder(seg.base, cfg.index_interval_bytes, 0, -1, -1)
                    base = off
                    off = enc.set_base_offset(base)
                    mv = enc.view()
                    _reserve_blocks(seg, pos, pos + nb)
                    pending[slot] = (writer.submit(seg.fd, mv, pos), mv)
                    builder.add_encoded(mv, pos, base)
                    oi, ti = builder.take()
                    if oi:
                        _pwrite_all(seg.oi_fd, oi, oi_n * OFFSET_ENTRY_SIZE)
                    if ti:
                        _pwrite_all(seg.ti_fd, ti, ti_n * TIME_ENTRY_SIZE)
                    pos += nb
                    oi_n += len(oi) // OFFSET_ENTRY_SIZE
                    ti_n += len(ti) // TIME_ENTRY_SIZE
                    if enc.max_timestamp > max_ts:
                        max_ts = enc.max_timestamp
                    j += 1
                for k in (0, 1):
                    if pending[k] is not None:
                        finish(k)
            except BaseException as e:
                for k in (0, 1):
                    if pending[k] is not None:
                        try:
                            finish(k)
                        except OSError:
                            pass
                self._undo_write(first, orig.active_size, orig)
                for sg in new_segs:
                    self._drop_segment(sg.base, unlink=True)
                if isinstance(e, OSError) and is_disk_full(e):
                    raise DiskFullError(
                        e.errno, f"no space to append {n} records to "
                        f"{self.topic}/{self.index}: {os.strerror(e.errno)}") from None
                raise
            st.end_offset = off
            st.active_size = pos
            st.max_timestamp = max_ts
            st.oi_count, st.ti_count = oi_n, ti_n
            st.oi_last_pos, st.ti_last_ts = builder.last_entry_pos, builder.last_time_ts
            if new_segs:
                st.active_base = seg.base
                st.active_created = _now_ms()
            self._head.write(st)
            if new_segs:
                self._apply_retention(st)
                self._log._flusher.submit(self)
        for cb in self._listeners:
            cb()
        return first_base, off

    def _new_segment(self, base: int) -> Segment:
        """Create the files of a new segment starting at ``base`` (lock held),
        with the producer-state snapshot for its start. Not yet published."""
        if self._producers.producers:
            self._producers.write_snapshot(snapshot_path(self.path, base))
        seg = self._segment(base, create=True)
        for fd in (seg.fd, seg.oi_fd, seg.ti_fd):
            os.ftruncate(fd, 0)  # leftovers of a writer that died mid-roll
        return seg

    def _undo_write(self, seg: Segment, pos: int, st) -> None:
        """Cut a failed write back off, so nothing of it is ever visible."""
        try:
            os.ftruncate(seg.fd, pos)
            os.ftruncate(seg.oi_fd, st.oi_count * OFFSET_ENTRY_SIZE)
            os.ftruncate(seg.ti_fd, st.ti_count * TIME_ENTRY_SIZE)
        except OSError:
            # The head was not advanced, so readers ignore the bytes anyway and
            # the next lock holder truncates them.
            pass

    def _active(self, st, check_tail: bool = False) -> Segment:
        """The active segment (lock held). With ``check_tail``, cut off any
        torn tail a dead writer left past the head. Ordinary appends skip that
        fstat: they write at ``active_size`` whatever lies beyond, readers never
        look past the head, and the tail is cut at the next roll or open."""
        seg = self._segments.get(st.active_base)
        if seg is None:
            self._refresh_segments(st)
            seg = self._segment(st.active_base, create=True)
            check_tail = True
        if not check_tail:
            return seg
        size = seg.size()
        if size != st.active_size:
            if size < st.active_size:
                raise CorruptLogError(
                    f"active segment is {size} bytes, shorter than the {st.active_size} "
                    "recorded as written (truncated by something else?)",
                    topic=self.topic, partition=self.index, segment=seg.path, position=size)
            os.ftruncate(seg.fd, st.active_size)
        return seg

    def _roll(self, st):
        """Seal the active segment and start a new one at the end offset (lock
        held). No room for the new files raises DiskFullError."""
        try:
            return self._roll_unchecked(st)
        except OSError as e:
            if is_disk_full(e):  # the producer snapshot or the new files found no room
                raise DiskFullError(e.errno, f"no space to roll {self.topic}/{self.index}: "
                                             f"{os.strerror(e.errno)}") from None
            raise

    def _roll_unchecked(self, st):
        old = self._segment(st.active_base)
        os.ftruncate(old.fd, st.active_size)  # a dead writer's leftovers past the head
        # Producer state as of the new segment's start, so rebuilding it on
        # open only walks the active segment.
        self._producers.catch_up(self, st)
        # Cut the index files of the sealed segment to their counted entries.
        os.ftruncate(old.oi_fd, st.oi_count * OFFSET_ENTRY_SIZE)
        os.ftruncate(old.ti_fd, st.ti_count * TIME_ENTRY_SIZE)
        new = self._new_segment(st.end_offset)
        st.active_base = st.end_offset
        st.active_size = 0
        st.active_created = _now_ms()
        st.max_timestamp = -1
        st.oi_count = st.ti_count = 0
        st.oi_last_pos = 0
        st.ti_last_ts = -1
        self._head.write(st)
        self._apply_retention(st)
        self._log._flusher.submit(self)
        return new, st

    def producer_state(self, producer_id: int):
        """producer_state(producer_id) -> (epoch, next_sequence) | None

        Where an idempotent producer with this id continues: its epoch and the
        sequence its next batch must carry. None when it never wrote here.
        """
        self._check_open()
        with self._lock, self._flock:
            st = self._head.read() or self._repair_head()
            self._producers.catch_up(self, st)
            return self._producers.state(producer_id)

    # -------------------------------------------------------------- retention

    def enforce_retention(self) -> int:
        """Delete whole sealed segments past the topic's retention_bytes /
        retention_ms. Returns the number deleted. Never touches the active one."""
        self._check_open()
        with self._lock, self._flock:
            st = self._head.read() or self._repair_head()
            return self._apply_retention(st)

    def _apply_retention(self, st) -> int:
        cfg = self._config
        if cfg.retention_bytes is None and cfg.retention_ms is None:
            return 0
        self._refresh_segments(st)
        sealed = [b for b in self._bases if b < st.active_base]
        if not sealed:
            return 0
        sizes = {b: self._sealed_size(b) for b in sealed}
        total = sum(sizes.values()) + st.active_size
        now = _now_ms()
        doomed = []
        for b in sealed:
            too_big = cfg.retention_bytes is not None and total > cfg.retention_bytes
            too_old = False
            if cfg.retention_ms is not None and not too_big:
                try:
                    too_old = self._sealed_max_ts(b) < now - cfg.retention_ms
                except CorruptLogError:
                    too_old = False
            if not (too_big or too_old):
                break
            doomed.append(b)
            total -= sizes[b]
        if not doomed:
            return 0
        remaining = [b for b in self._bases if b not in doomed]
        st.start_offset = max(st.start_offset, remaining[0])
        if st.ckpt_base < remaining[0]:
            st.ckpt_base, st.ckpt_size = remaining[0], 0
            st.ckpt_end_offset = max(st.ckpt_end_offset, remaining[0])
        self._head.write(st)  # readers learn the new start before files vanish
        for b in doomed:
            self._drop_segment(b, unlink=True)
        return len(doomed)

    # ------------------------------------------------------------- durability

    def wait_durable(self, end_offset: int) -> None:
        """Block until every offset below ``end_offset`` is on stable storage.

        Group commit across the whole log: one waiting thread (the leader)
        syncs every partition that someone is waiting on, all at once, and the
        others sleep and share its result (see ``_GroupCommit``).
        """
        self._log._group_commit.wait(self, end_offset)

    def when_durable(self, end_offset: int, callback) -> None:
        """Call ``callback(error)`` once every offset below ``end_offset`` is
        on stable storage (``error`` is None), or with the error that keeps
        it from getting there. The non-blocking form of :meth:`wait_durable`
        for event loops: it shares the log's group commit, and the callback
        runs on the log's sync thread, so it must only hand the result over
        (``loop.call_soon_threadsafe``)."""
        self._check_written(end_offset)
        self._log._group_commit.request(self, end_offset, callback)

    def _check_written(self, end_offset: int) -> None:
        """A durability request may only name offsets already written."""
        if end_offset > self._state().end_offset:
            raise ValueError(f"end_offset {end_offset} is past the end of {self.topic}/{self.index}")

    def flush(self) -> None:
        """fsync everything appended so far (in any process) and move the checkpoint."""
        self._check_open()
        self.wait_durable(self._state().end_offset)

    def _sync_plan(self):
        """What a sync must cover: ``(state, fds)`` with duplicated descriptors
        of every segment past the checkpoint (the caller closes them), or None
        when everything is already durable."""
        with self._lock:
            for attempt in range(3):
                st = self._state()
                if st.ckpt_base == st.active_base and st.ckpt_size == st.active_size:
                    return None
                bases = self._bases
                if (attempt or not bases or bases[-1] != st.active_base
                        or st.ckpt_base not in bases):
                    self._refresh_segments(st)
                    bases = self._bases
                # Duplicated: they outlive the segment (retention, OPEN_SEGMENTS).
                fds = []
                try:
                    for b in [b for b in bases if b >= st.ckpt_base]:
                        fds.append(dup_fd(self._segment(b).fd))
                except FileNotFoundError:
                    # A segment that is not open here was deleted by retention
                    # in another process, which moved the checkpoint past it
                    # first: read the head again.
                    for fd in fds:
                        os.close(fd)
                    if attempt == 2:
                        raise
                    continue
                except BaseException:
                    for fd in fds:
                        os.close(fd)
                    raise
                return st, fds

    def _sync_result(self, st, errnos) -> None:
        """After the fdatasyncs of a plan (one errno per descriptor, 0 when
        synced): move the checkpoint and the durable offset, or fail the
        partition for good. A failed fdatasync is never retried: the kernel
        may have dropped the dirty pages, so a retry could report success
        for lost data (PostgreSQL's "fsyncgate")."""
        failed = [e for e in errnos if e]
        try:
            if failed:
                raise OSError(failed[0], f"fdatasync of {self.topic}/{self.index}: "
                              f"{os.strerror(failed[0])}")
            done = self._sync_done(st)
        except OSError as e:
            self._failed = e
            return
        if done > self._durable_end:
            self._durable_end = done

    def _sync_done(self, st) -> int:
        """After the fdatasyncs of a plan: the directory if needed, then move
        the checkpoint to what was synced. Returns the durable end offset."""
        if st.active_base != st.ckpt_base or not self._dir_synced:
            os.fsync(self._dirfd)  # directory entries of new segment files (and of the head)
            self._dir_synced = True
        with self._lock, self._flock:
            cur = self._head.read() or self._repair_head()
            if (st.active_base, st.active_size) > (cur.ckpt_base, cur.ckpt_size):
                cur.ckpt_base, cur.ckpt_size = st.active_base, st.active_size
                cur.ckpt_end_offset = st.end_offset
                self._head.write(cur)
        return st.end_offset

    # --------------------------------------------------------------- recovery

    def _repair_head(self):
        """Rewrite a head a writer left half-updated (lock held): the fields
        are individually valid, only the seqlock count is odd."""
        st = self._recover(force_scan=True).state
        return st

    def _recover(self, force_scan: bool = False) -> "Recovery":
        """Bring files and head into agreement (append lock held). See the module docstring."""
        t0 = time.perf_counter()
        rec = Recovery()
        bases = self._list_bases()
        valid_head = self._head.valid()
        st = self._head.read() if valid_head else None
        if st is not None and st.flags & HEAD_FLAG_DELETED:
            raise UnknownTopicError(f"topic {self.topic!r} was deleted")
        if st is None or force_scan or not _head_consistent(st) or (
                st.active_base not in bases and bases):
            rec.mode = "rebuild"
            st = self._rebuild_from_segments(bases, rec)
        elif st.boot_id != BOOT_ID:
            rec.mode = "checkpoint"
            st = self._scan_from_checkpoint(st, bases, rec)
        else:
            rec.mode = "tail"
            st = self._cut_torn_tail(st, bases, rec)
        self._head.write(st)
        # A rebuild may have cut what was a sealed segment: learn sizes anew.
        with self._seg_lock:
            self._sealed.clear()
            for seg in self._segments.values():
                seg.sealed_size = seg.oi_n = seg.ti_n = -1
                seg._max_ts = None
        self._refresh_segments(st)
        rec.state = st
        rec.seconds = time.perf_counter() - t0
        return rec

    def _rebuild_from_segments(self, bases: list[int], rec) -> object:
        """No usable head: derive it from the segment files alone."""
        if not bases:
            self._segment(0, create=True)
            return new_head_state(boot_id=BOOT_ID, active_created=_now_ms())
        # Sealed segments are taken as they are (their batches are CRC-checked
        # on every read; verify() checks them all); the last one is scanned.
        last = bases[-1]
        st = new_head_state(start_offset=bases[0], end_offset=last, active_base=last,
                            ckpt_base=bases[0], ckpt_size=0, ckpt_end_offset=bases[0],
                            boot_id=BOOT_ID, active_created=_now_ms())
        return self._scan_segments(st, bases, last, 0, last, rec)

    def _scan_from_checkpoint(self, st, bases, rec):
        """After a possible reboot: re-verify everything past the checkpoint."""
        start_base, start_pos, expect = st.ckpt_base, st.ckpt_size, st.ckpt_end_offset
        if start_base not in bases:
            start_base = bases[0] if bases else 0
            start_pos, expect = 0, start_base
        if not bases:
            self._segment(0, create=True)
            return new_head_state(boot_id=BOOT_ID, active_created=_now_ms())
        st = self._scan_segments(st, bases, start_base, start_pos, expect, rec)
        if BOOT_ID != _NO_BOOT_ID:
            # After a reboot, what we just read came from the disk itself: it
            # is durable now. (Without a boot id we cannot know there was one.)
            st.ckpt_base, st.ckpt_size = st.active_base, st.active_size
            st.ckpt_end_offset = st.end_offset
        return st

    def _scan_segments(self, st, bases, start_base, start_pos, expect, rec):
        """CRC-scan segments from (start_base, start_pos), keep the longest valid
        prefix, delete what follows it, rebuild the indexes over what was scanned."""
        todo = [b for b in bases if b >= start_base]
        if not todo:
            todo = [start_base]
        active = todo[0]
        active_size = start_pos
        end_offset = expect
        max_ts = -1
        oi_count = ti_count = 0
        oi_last_pos, ti_last_ts = 0, -1
        for i, b in enumerate(todo):
            seg = self._segment(b, create=(i == 0))
            pos0 = start_pos if i == 0 else 0
            if i > 0 and b != end_offset:
                # The previous segment ended somewhere other than where this
                # one starts: everything from here on is unusable.
                rec.deleted_segments += len(todo) - i
                for later in todo[i:]:
                    self._drop_segment(later, unlink=True)
                break
            size = seg.size()
            if pos0 > size:
                pos0, end_offset = 0, b
            # Keep the index entries that point below pos0, rebuild the rest.
            oi_n = offset_index_valid(seg.oi_map(os.fstat(seg.oi_fd).st_size // 8),
                                      os.fstat(seg.oi_fd).st_size // 8, pos0) if pos0 else 0
            ti_n = time_index_valid(seg.ti_map(os.fstat(seg.ti_fd).st_size // 16),
                                    os.fstat(seg.ti_fd).st_size // 16, pos0) if pos0 else 0
            last_pos = offset_index_entry(seg.oi_map(oi_n), oi_n - 1)[1] if oi_n else 0
            last_ts, last_ts_pos = (time_index_entry(seg.ti_map(ti_n), ti_n - 1)[0::2]
                                    if ti_n else (-1, 0))
            # The running max timestamp up to pos0: the last kept time entry
            # covers everything through its batch; scan the rest. (Neither index
            # is fsynced, so after a reboot the time index may have lost more
            # than the offset index: start from the time entry, not the offset one.)
            run_ts = last_ts
            if pos0:
                run_ts = max(run_ts, scan(seg.data(pos0), last_ts_pos, pos0, -1).max_timestamp)
            builder = IndexBuilder(b, self._config.index_interval_bytes, last_pos, last_ts, run_ts)
            r = scan(seg.data(size), pos0, size, end_offset, builder)
            rec.scanned_bytes += r.position - pos0
            rec.batches += r.batches
            oi, ti = builder.take()
            os.ftruncate(seg.oi_fd, oi_n * OFFSET_ENTRY_SIZE)
            os.ftruncate(seg.ti_fd, ti_n * TIME_ENTRY_SIZE)
            if oi:
                _pwrite_all(seg.oi_fd, oi, oi_n * OFFSET_ENTRY_SIZE)
            if ti:
                _pwrite_all(seg.ti_fd, ti, ti_n * TIME_ENTRY_SIZE)
            active, active_size = b, r.position
            oi_count, ti_count = oi_n + len(oi) // 8, ti_n + len(ti) // 16
            oi_last_pos, ti_last_ts = builder.last_entry_pos, builder.last_time_ts
            max_ts = max(r.max_timestamp, run_ts)
            if r.batches:
                end_offset = r.next_offset
            if r.position < size:
                rec.truncated_bytes += size - r.position
                rec.stop_code = r.code
                os.ftruncate(seg.fd, r.position)
                for later in todo[i + 1:]:
                    rec.deleted_segments += 1
                    self._drop_segment(later, unlink=True)
                break
        # Segments entirely below the start (retention interrupted) are removed.
        start = st.start_offset if st.start_offset >= 0 else 0
        first_kept = [b for b in self._list_bases() if b <= active]
        for b in first_kept[:-1]:
            nxt = first_kept[first_kept.index(b) + 1]
            if nxt <= start:
                self._drop_segment(b, unlink=True)
        st.start_offset = max(min(start, end_offset), min(self._list_bases() or [0]))
        st.end_offset = end_offset
        st.active_base = active
        st.active_size = active_size
        st.max_timestamp = max_ts
        st.oi_count, st.ti_count = oi_count, ti_count
        st.oi_last_pos, st.ti_last_ts = oi_last_pos, ti_last_ts
        st.boot_id = BOOT_ID
        if st.ckpt_base > active or (st.ckpt_base == active and st.ckpt_size > active_size):
            st.ckpt_base, st.ckpt_size, st.ckpt_end_offset = active, active_size, end_offset
        return st

    def _cut_torn_tail(self, st, bases, rec):
        """Same boot: the head is right; cut what lies past it."""
        for b in bases:
            if b > st.active_base:
                rec.deleted_segments += 1
                self._drop_segment(b, unlink=True)  # created by a roll that never finished
        seg = self._segment(st.active_base, create=True)
        size = seg.size()
        if size < st.active_size:
            # Shorter than acknowledged: something outside truncated it. Keep
            # the longest valid prefix and say so in the recovery report.
            rec.mode = "rebuild"
            rec.external_truncation = True
            return self._scan_segments(st, self._list_bases(), st.active_base, 0,
                                       st.active_base, rec)
        if size > st.active_size:
            rec.truncated_bytes += size - st.active_size
            os.ftruncate(seg.fd, st.active_size)
        if (os.fstat(seg.oi_fd).st_size < st.oi_count * OFFSET_ENTRY_SIZE
                or os.fstat(seg.ti_fd).st_size < st.ti_count * TIME_ENTRY_SIZE):
            # An index file lost entries the head counts (deleted or cut by
            # something else): extending it would count zeroed entries as
            # real. Rebuild both from the data, which is whole up to the head.
            return self._scan_segments(st, self._list_bases(), st.active_base, 0,
                                       st.active_base, rec)
        for fd, n, esz in ((seg.oi_fd, st.oi_count, OFFSET_ENTRY_SIZE),
                           (seg.ti_fd, st.ti_count, TIME_ENTRY_SIZE)):
            if os.fstat(fd).st_size != n * esz:
                os.ftruncate(fd, n * esz)
        if st.start_offset > st.end_offset:
            st.start_offset = st.end_offset
        if bases and st.start_offset < bases[0] <= st.active_base:
            # The oldest segments' files are gone (removed by hand to free
            # space, say): the log starts where the data does, as in modes 1-2.
            st.start_offset = bases[0]
        return st

    # ------------------------------------------------------------------ close

    def close(self) -> None:
        """fsync what this partition holds (the clean-shutdown marker: the
        checkpoint reaches the end) and release files."""
        if self._closed:
            return
        try:
            st = self._head.read()
            if self._failed is None and st is not None and not st.flags & HEAD_FLAG_DELETED:
                self.wait_durable(st.end_offset)
                self._give_back_reserved()
        finally:
            self._closed = True
            self._close_files()

    def _give_back_reserved(self) -> None:
        """Release the blocks this process reserved past the active segment's
        data (ftruncate to the data size, under the append lock so no append
        is half done). Only an optimization: errors are ignored."""
        try:
            with self._lock, self._flock:
                st = self._head.read()
                if st is None:
                    return
                seg = self._segments.get(st.active_base)
                if (seg is not None and st.active_size < seg.reserved_end < _RESERVE_OFF
                        and seg.size() == st.active_size):
                    os.ftruncate(seg.fd, st.active_size)
                    seg.reserved_end = st.active_size
        except OSError:
            pass

    def _close_files(self):
        with self._seg_lock:
            segs = list(self._segments.values())
            self._segments.clear()
            self._bases = []
        for seg in segs:
            seg.close()
        for attr in ("_headfd", "_dirfd"):
            fd = getattr(self, attr, -1)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, attr, -1)
        fl = getattr(self, "_flock", None)
        if fl is not None:
            try:
                fl.close()
            except OSError:
                pass

    def __repr__(self):
        return f"<Partition {self.topic}/{self.index} at {self.path}>"

    # ------------------------------------------- numpy views (storage/index_views.py)

    def offset_index(self, segment: int | None = None):
        """offset_index(segment=None) -> IndexArray | PartitionIndex

        The offset index as a read-only numpy structured array (fields
        ``relative_offset``, ``position``; attribute ``base_offset``) over the
        mapped index file, never a copy: of the segment whose base offset is
        ``segment``, or with None a tuple of every segment's view. Needs numpy.
        """
        from unstoppable.storage import index_views
        return index_views.index_view(self, "offset", segment)

    def time_index(self, segment: int | None = None):
        """time_index(segment=None) -> IndexArray | PartitionIndex

        The time index as a read-only numpy structured array (fields
        ``timestamp``, ``relative_offset``, ``position``), like
        :meth:`offset_index`. Needs numpy.
        """
        from unstoppable.storage import index_views
        return index_views.index_view(self, "time", segment)

    def offsets_for_times(self, timestamps):
        """offsets_for_times(timestamps) -> numpy.ndarray[int64]

        :meth:`offset_for_time` of every timestamp (int milliseconds, or
        datetime64) in one call, in the input's shape; -1 where it is None.
        Needs numpy.
        """
        from unstoppable.storage import index_views
        return index_views.offsets_for_times(self, timestamps)


class Recovery:
    """What opening a partition had to do (exposed as ``partition.recovery``)."""

    __slots__ = ("mode", "scanned_bytes", "truncated_bytes", "batches", "deleted_segments",
                 "stop_code", "seconds", "state", "external_truncation")

    def __init__(self):
        self.mode = ""
        self.scanned_bytes = 0
        self.truncated_bytes = 0
        self.batches = 0
        self.deleted_segments = 0
        self.stop_code = 0
        self.seconds = 0.0
        self.state = None
        self.external_truncation = False

    def __repr__(self):
        return (f"Recovery(mode={self.mode!r}, scanned_bytes={self.scanned_bytes}, "
                f"truncated_bytes={self.truncated_bytes}, deleted_segments={self.deleted_segments}, "
                f"seconds={self.seconds:.4f})")
