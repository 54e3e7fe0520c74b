"""Recovery for a read-only log: the same decisions as storage/recovery.py,
with every repair made in memory and nothing written.

  * same boot, a head that agrees with the files: the head is used as it is.
    Bytes past it (a torn tail) are ignored, never cut; segments past the
    active one (a roll that never finished) are left alone.
  * anything else (another boot, no usable head, files shorter than the head
    says): the newest segment is CRC-scanned from its start and the head is
    rebuilt from that scan, in this process's private copy of the head
    (``Head(fd, private=True)``). Sealed segments are taken as they are:
    their batches are CRC-checked on every read, and ``verify()`` checks all.
    Reads of the newest segment then scan it from its start (no index),
    which is slower but returns the same records.
"""
from __future__ import annotations

import os
import time

from unstoppable._core.segment import (
    HEAD_FLAG_DELETED,
    OFFSET_ENTRY_SIZE,
    TIME_ENTRY_SIZE,
    new_head_state,
    scan,
)
from unstoppable.errors import UnknownTopicError
from unstoppable.storage.recovery import BOOT_ID, Recovery, choose_mode, now_ms

__all__ = ["recover_readonly"]


def recover_readonly(head, catalog, topic: str, force_scan: bool = False) -> Recovery:
    """Agree with the files without changing them; the state found is
    written to ``head``, which must be a private mapping."""
    t0 = time.perf_counter()
    rec = Recovery()
    bases = catalog.list_on_disk()
    st = head.read() if head.valid() else None
    if st is not None and st.flags & HEAD_FLAG_DELETED:
        raise UnknownTopicError(f"topic {topic!r} was deleted")
    rec.mode = choose_mode(st, bases, force_scan)
    if rec.mode == "tail" and _head_matches_files(st, catalog, bases):
        seg = catalog.get(st.active_base)
        rec.truncated_bytes = seg.size() - st.active_size  # ignored, not cut
        if bases and st.start_offset < bases[0] <= st.active_base:
            st.start_offset = bases[0]  # the oldest files are gone: start where the data does
            head.write(st)
    else:
        if rec.mode == "tail":
            rec.mode = "rebuild"
            rec.external_truncation = True
        st = _scan_newest(st, catalog, bases, rec)
        head.write(st)
    catalog.refresh(st)
    rec.state = st
    rec.seconds = time.perf_counter() - t0
    return rec


def _head_matches_files(st, catalog, bases) -> bool:
    """Whether the files hold at least what the head says (same boot)."""
    if bases and st.active_base not in bases:
        return False
    if not bases:
        return st.end_offset == st.active_base == st.start_offset
    seg = catalog.get(st.active_base)
    return (seg.size() >= st.active_size
            and os.fstat(seg.oi_fd).st_size >= st.oi_count * OFFSET_ENTRY_SIZE
            and os.fstat(seg.ti_fd).st_size >= st.ti_count * TIME_ENTRY_SIZE)


def _scan_newest(st, catalog, bases, rec: Recovery):
    """A head rebuilt in memory from a CRC scan of the newest segment."""
    if not bases:
        return new_head_state(boot_id=BOOT_ID, active_created=now_ms())
    last = bases[-1]
    seg = catalog.get(last)
    size = seg.size()
    r = scan(seg.data(size), 0, size, last)
    rec.scanned_bytes = r.position
    rec.batches = r.batches
    rec.truncated_bytes = size - r.position  # ignored, not cut
    rec.stop_code = r.code if r.position < size else 0
    end = r.next_offset if r.batches else last
    start = bases[0]
    if st is not None and 0 <= st.start_offset <= last:
        start = max(start, st.start_offset)
    return new_head_state(start_offset=start, end_offset=end, active_base=last,
                          active_size=r.position, ckpt_base=last, ckpt_size=r.position,
                          ckpt_end_offset=end, boot_id=BOOT_ID,
                          max_timestamp=r.max_timestamp, active_created=now_ms(),
                          oi_count=0, ti_count=0, oi_last_pos=0, ti_last_ts=-1)
