"""Recovery: bring a partition's files and head into agreement on open (append
lock held).

  * same boot as the head records (the page cache survived, only a process
    died): everything up to the head is intact; bytes past it are an
    unacknowledged torn tail and are truncated. Work: O(torn tail).
  * another boot (power loss or OS crash may have lost unsynced pages): scan
    from the recovery checkpoint, the last position known to be on stable
    storage, CRC-checking every batch; truncate at the first bad one and rebuild
    the indexes over the scanned part. Work: O(data written since the last
    fsync). A clean close fsyncs and moves the checkpoint to the end, which is
    the clean-shutdown marker: the next open after a reboot scans nothing.
  * no usable head: rebuild it from the segment files.

Split as asyncpg splits its protocol: :func:`choose_mode` and
:func:`head_consistent` decide from the head's fields alone (no I/O);
:func:`recover` is the driver that reads, scans, truncates and writes.
"""
from __future__ import annotations

import os
import time

from unstoppable._core.segment import (
    HEAD_FLAG_DELETED,
    OFFSET_ENTRY_SIZE,
    TIME_ENTRY_SIZE,
    IndexBuilder,
    new_head_state,
    offset_index_entry,
    offset_index_valid,
    scan,
    time_index_entry,
    time_index_valid,
)
from unstoppable.errors import UnknownTopicError
from unstoppable.storage._fs import pwrite_all

__all__ = ["Recovery", "recover", "choose_mode", "head_consistent", "BOOT_ID", "now_ms"]


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


def now_ms() -> int:
    return time.time_ns() // 1_000_000


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


# ----------------------------------------------------------------- the core

def head_consistent(st) -> bool:
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


def choose_mode(st, bases: list[int], force_scan: bool, boot_id: bytes = BOOT_ID) -> str:
    """Which recovery a head calls for: ``"rebuild"`` (no usable head),
    ``"checkpoint"`` (another boot) or ``"tail"`` (same boot). ``st`` is the
    head's state, or None when it is unreadable."""
    if st is None or force_scan or not head_consistent(st) or (
            st.active_base not in bases and bases):
        return "rebuild"
    if st.boot_id != boot_id:
        return "checkpoint"
    return "tail"


# --------------------------------------------------------------- the driver

def recover(head, catalog, config, topic: str, force_scan: bool = False) -> Recovery:
    """Bring files and head into agreement (append lock held) and write the head."""
    t0 = time.perf_counter()
    rec = Recovery()
    bases = catalog.list_on_disk()
    st = head.read() if head.valid() else None
    if st is not None and st.flags & HEAD_FLAG_DELETED:
        raise UnknownTopicError(f"topic {topic!r} was deleted")
    run = _Run(catalog, config.index_interval_bytes, rec)
    rec.mode = choose_mode(st, bases, force_scan)
    if rec.mode == "rebuild":
        st = run.rebuild_from_segments(bases)
    elif rec.mode == "checkpoint":
        st = run.scan_from_checkpoint(st, bases)
    else:
        st = run.cut_torn_tail(st, bases)
    head.write(st)
    # A rebuild may have cut what was a sealed segment: learn sizes anew.
    catalog.forget_facts()
    catalog.refresh(st)
    rec.state = st
    rec.seconds = time.perf_counter() - t0
    return rec


class _Run:
    """One recovery's work over the segment files."""

    def __init__(self, catalog, interval: int, rec: Recovery):
        self.catalog = catalog
        self.interval = interval
        self.rec = rec

    def rebuild_from_segments(self, bases: list[int]):
        """No usable head: derive it from the segment files alone."""
        if not bases:
            self.catalog.get(0, create=True)
            return new_head_state(boot_id=BOOT_ID, active_created=now_ms())
        # Sealed segments are taken as they are (their batches are CRC-checked
        # on every read; verify() checks them all); the last one is scanned.
        last = bases[-1]
        st = new_head_state(start_offset=bases[0], end_offset=last, active_base=last,
                            ckpt_base=bases[0], ckpt_size=0, ckpt_end_offset=bases[0],
                            boot_id=BOOT_ID, active_created=now_ms())
        return self.scan_segments(st, bases, last, 0, last)

    def scan_from_checkpoint(self, st, bases):
        """After a possible reboot: re-verify everything past the checkpoint."""
        start_base, start_pos, expect = st.ckpt_base, st.ckpt_size, st.ckpt_end_offset
        if start_base not in bases:
            start_base = bases[0] if bases else 0
            start_pos, expect = 0, start_base
        if not bases:
            self.catalog.get(0, create=True)
            return new_head_state(boot_id=BOOT_ID, active_created=now_ms())
        st = self.scan_segments(st, bases, start_base, start_pos, expect)
        if BOOT_ID != _NO_BOOT_ID:
            # After a reboot, what we just read came from the disk itself: it
            # is durable now. (Without a boot id we cannot know there was one.)
            st.ckpt_base, st.ckpt_size = st.active_base, st.active_size
            st.ckpt_end_offset = st.end_offset
        return st

    def _kept_indexes(self, seg, pos0: int):
        """Index entries pointing below ``pos0`` (kept), the running max
        timestamp up to ``pos0``, and an IndexBuilder to continue from there."""
        oi_entries = os.fstat(seg.oi_fd).st_size // OFFSET_ENTRY_SIZE
        ti_entries = os.fstat(seg.ti_fd).st_size // TIME_ENTRY_SIZE
        oi_n = offset_index_valid(seg.oi_map(oi_entries), oi_entries, pos0) if pos0 else 0
        ti_n = time_index_valid(seg.ti_map(ti_entries), ti_entries, pos0) if pos0 else 0
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
        builder = IndexBuilder(seg.base, self.interval, last_pos, last_ts, run_ts)
        return oi_n, ti_n, run_ts, builder

    def _drop_from(self, todo: list[int]) -> None:
        for later in todo:
            self.rec.deleted_segments += 1
            self.catalog.drop(later, unlink=True)

    def scan_segments(self, st, bases, start_base, start_pos, expect):
        """CRC-scan segments from (start_base, start_pos), keep the longest valid
        prefix, delete what follows it, rebuild the indexes over what was scanned."""
        rec = self.rec
        todo = [b for b in bases if b >= start_base] or [start_base]
        # Compacted segments (all below the checkpoint's segment,
        # storage/compaction.py) may skip offsets; the rest must not.
        gapped = st.ckpt_base if self.catalog.gaps else -1
        active, active_size, end_offset = todo[0], start_pos, expect
        max_ts = -1
        oi_count = ti_count = 0
        oi_last_pos, ti_last_ts = 0, -1
        for i, b in enumerate(todo):
            seg = self.catalog.get(b, create=(i == 0))
            pos0 = start_pos if i == 0 else 0
            gaps = b < gapped
            if i > 0 and (b < end_offset if todo[i - 1] < gapped else b != end_offset):
                # The previous segment ended somewhere other than where this
                # one starts: everything from here on is unusable.
                self._drop_from(todo[i:])
                break
            size = seg.size()
            if pos0 > size:
                pos0, end_offset = 0, b
            oi_n, ti_n, run_ts, builder = self._kept_indexes(seg, pos0)
            r = scan(seg.data(size), pos0, size, end_offset, builder, gaps)
            rec.scanned_bytes += r.position - pos0
            rec.batches += r.batches
            oi, ti = builder.take()
            os.ftruncate(seg.oi_fd, oi_n * OFFSET_ENTRY_SIZE)
            os.ftruncate(seg.ti_fd, ti_n * TIME_ENTRY_SIZE)
            if oi:
                pwrite_all(seg.oi_fd, oi, oi_n * OFFSET_ENTRY_SIZE)
            if ti:
                pwrite_all(seg.ti_fd, ti, ti_n * TIME_ENTRY_SIZE)
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
                self._drop_from(todo[i + 1:])
                break
        self._drop_below_start(st, active)
        st.start_offset = max(min(st.start_offset if st.start_offset >= 0 else 0, end_offset),
                              min(self.catalog.list_on_disk() or [0]))
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

    def _drop_below_start(self, st, active: int) -> None:
        """Segments entirely below the start (retention interrupted) are removed."""
        start = st.start_offset if st.start_offset >= 0 else 0
        first_kept = [b for b in self.catalog.list_on_disk() if b <= active]
        for b in first_kept[:-1]:
            nxt = first_kept[first_kept.index(b) + 1]
            if nxt <= start:
                self.catalog.drop(b, unlink=True)

    def cut_torn_tail(self, st, bases):
        """Same boot: the head is right; cut what lies past it."""
        rec = self.rec
        for b in bases:
            if b > st.active_base:
                rec.deleted_segments += 1
                self.catalog.drop(b, unlink=True)  # created by a roll that never finished
        seg = self.catalog.get(st.active_base, create=True)
        size = seg.size()
        if size < st.active_size:
            # Shorter than acknowledged: something outside truncated it. Keep
            # the longest valid prefix and say so in the recovery report.
            rec.mode = "rebuild"
            rec.external_truncation = True
            return self.scan_segments(st, self.catalog.list_on_disk(), st.active_base, 0,
                                      st.active_base)
        if size > st.active_size:
            rec.truncated_bytes += size - st.active_size
            os.ftruncate(seg.fd, st.active_size)
        if (os.fstat(seg.oi_fd).st_size < st.oi_count * OFFSET_ENTRY_SIZE
                or os.fstat(seg.ti_fd).st_size < st.ti_count * TIME_ENTRY_SIZE):
            # An index file lost entries the head counts (deleted or cut by
            # something else): extending it would count zeroed entries as
            # real. Rebuild both from the data, which is whole up to the head.
            return self.scan_segments(st, self.catalog.list_on_disk(), st.active_base, 0,
                                      st.active_base)
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
