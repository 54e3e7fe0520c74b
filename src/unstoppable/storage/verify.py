"""``Log.verify()``: check every batch of every segment (CRC, framing, dense
offsets, record parsing) and every index entry, without changing anything.

In a compacted partition (one with a cleaner checkpoint) a sealed segment's
offsets may skip between batches (docs/FORMAT.md §16): there they need only
grow, start at or after the segment's base and end before the next segment's
base. Batches themselves stay dense, and everything else is checked as usual."""
from __future__ import annotations

import os
import struct

from unstoppable._core.segment import (
    OFFSET_ENTRY_SIZE,
    OFFSET_MISMATCH,
    TIME_ENTRY_SIZE,
    batch_base_offset,
    find_batch,
    read_batches,
    scan,
)
from unstoppable.errors import CorruptLogError, corrupt_from_code
from unstoppable.storage.segments import segment_stem

__all__ = ["VerifyReport", "verify"]


class VerifyReport:
    """Result of :meth:`Log.verify`: counts, plus every problem found."""

    def __init__(self):
        self.topics = 0
        self.partitions = 0
        self.segments = 0
        self.batches = 0
        self.records = 0
        self.bytes = 0
        self.problems: list[CorruptLogError] = []

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {
            "ok": self.ok, "topics": self.topics, "partitions": self.partitions,
            "segments": self.segments, "batches": self.batches, "records": self.records,
            "bytes": self.bytes,
            "problems": [{"reason": p.reason, "topic": p.topic, "partition": p.partition,
                          "segment": p.segment, "position": p.position, "offset": p.offset}
                         for p in self.problems],
        }

    def __repr__(self):
        return (f"VerifyReport(ok={self.ok}, segments={self.segments}, batches={self.batches}, "
                f"records={self.records}, problems={len(self.problems)})")


def verify(log, progress=None) -> VerifyReport:
    """Check every partition of ``log``; ``progress(done_bytes, total_bytes)`` is called as it goes."""
    rep = VerifyReport()
    work = _segments_to_check(log, rep)
    total = sum(w[3] for w in work)
    done = 0
    # One segment open at a time (a partition keeps only OPEN_SEGMENTS open).
    for t, p, b, limit, st, nxt in work:
        try:
            seg = p.catalog.get(b)
        except FileNotFoundError:
            continue
        rep.segments += 1
        if limit:
            gaps = p.catalog.gaps and b != st.active_base
            _verify_segment(seg, limit, st, t.name, p.index, rep, gaps, nxt)
        rep.bytes += limit
        done += limit
        if progress is not None:
            progress(done, total)
    return rep


def _segments_to_check(log, rep: VerifyReport) -> list:
    """``(topic, partition, base, size, head state)`` of every segment, as
    each partition's head has them now."""
    work = []
    for name in log.topics():
        t = log.topic(name)
        rep.topics += 1
        for p in t:
            rep.partitions += 1
            st = p.head_state()
            catalog = p.catalog
            catalog.refresh(st)
            bases = [b for b in catalog.bases if b <= st.active_base]
            for i, b in enumerate(bases):
                if b == st.active_base:
                    limit = st.active_size
                else:
                    try:
                        limit = os.stat(segment_stem(p.path, b) + ".log").st_size
                    except FileNotFoundError:
                        continue  # removed by retention meanwhile
                work.append((t, p, b, limit, st, bases[i + 1] if i + 1 < len(bases) else None))
    return work


def _verify_segment(seg, limit: int, st, topic: str, partition: int, rep: VerifyReport,
                    gaps: bool = False, nxt: int | None = None) -> None:
    where = dict(topic=topic, partition=partition, segment=seg.path)
    m = seg.data(limit)
    # Framing, CRC and dense (compacted: growing) offsets of every batch...
    r = scan(m, 0, limit, seg.base, None, gaps)
    rep.batches += r.batches
    if gaps and r.batches and nxt is not None and r.next_offset > nxt:
        rep.problems.append(CorruptLogError(
            f"compacted segment holds offsets up to {r.next_offset - 1}, past the next "
            f"segment's base {nxt}", position=r.position, offset=r.next_offset - 1, **where))
    if r.position != limit:
        reason = ("batch offsets are not consecutive" if r.code == OFFSET_MISMATCH
                  else corrupt_from_code(r.code).reason)
        rep.problems.append(CorruptLogError(
            reason, position=r.position,
            offset=r.bad_offset if r.bad_offset >= 0 else r.next_offset, **where))
    # ...then every record of the valid part must parse.
    pos = 0
    while pos < r.position:
        try:
            batches, npos = read_batches(m, pos, r.position, -1, 16 << 20, topic, partition,
                                         gaps)
        except CorruptLogError as e:
            rep.problems.append(CorruptLogError(e.reason, position=e.position,
                                                offset=e.offset, **where))
            break
        rep.records += sum(len(b) for b in batches)
        if npos == pos:
            break
        pos = npos
    _verify_index(seg, m, limit, rep, where, st, b_active=(seg.base == st.active_base),
                  gaps=gaps)


def _read_entries(fd: int, n: int, size: int, rep, where: dict) -> bytes:
    """The first ``n`` entries of an index file; a file that turns out
    shorter (cut by someone, or shrinking while we read) is reported, and the
    whole entries it does hold are returned."""
    data = os.pread(fd, n * size, 0)
    if len(data) < n * size:
        rep.problems.append(CorruptLogError(
            f"index file holds {len(data) // size} whole entries of the {n} expected",
            position=len(data), **where))
        data = data[:len(data) - len(data) % size]
    return data


def _verify_index(seg, m, valid_end, rep, where, st, b_active, gaps=False):
    """Index entries must name real batch starts (checked by walking headers,
    so damage inside a batch is reported once, by the batch scan)."""
    if b_active:
        oi_n, ti_n = st.oi_count, st.ti_count
    else:
        oi_n = os.fstat(seg.oi_fd).st_size // OFFSET_ENTRY_SIZE
        ti_n = os.fstat(seg.ti_fd).st_size // TIME_ENTRY_SIZE
    oi_where = {**where, "segment": where["segment"][:-4] + ".index"}
    ti_where = {**where, "segment": where["segment"][:-4] + ".timeindex"}
    if oi_n:
        data = _read_entries(seg.oi_fd, oi_n, OFFSET_ENTRY_SIZE, rep, oi_where)
        for i, (rel, pos) in enumerate(struct.iter_unpack("<II", data)):
            ok = pos < valid_end
            if ok:
                try:
                    ok = find_batch(m, pos, valid_end, seg.base + rel, -1, False, gaps) == pos and \
                        batch_base_offset(m, pos) == seg.base + rel
                except CorruptLogError:
                    ok = False
            if not ok:
                rep.problems.append(CorruptLogError(
                    f"offset index entry {i} (relative offset {rel}, position {pos}) does not "
                    "point at the batch it names", offset=seg.base + rel, position=pos,
                    **oi_where))
                break
    if ti_n:
        data = _read_entries(seg.ti_fd, ti_n, TIME_ENTRY_SIZE, rep, ti_where)
        prev = None
        for i, (ts, rel, pos) in enumerate(struct.iter_unpack("<qII", data)):
            ok = pos < valid_end and (prev is None or (ts >= prev[0] and rel > prev[1]))
            if ok:
                try:
                    ok = batch_base_offset(m, pos) == seg.base + rel
                except (TypeError, ValueError):
                    ok = False
            if not ok:
                rep.problems.append(CorruptLogError(
                    f"time index entry {i} (timestamp {ts}, position {pos}) is inconsistent",
                    offset=seg.base + rel, position=pos, **ti_where))
                break
            prev = (ts, rel)
