"""Where to read in a partition: the byte ranges of whole batches that a
Kafka fetch hands to ``sendfile`` (:func:`byte_range`), and the first offset
at or after a time (:func:`offset_for_time`, through the time indexes).
``Partition.byte_range`` and ``Partition.offset_for_time`` are these."""
from __future__ import annotations

from typing import NamedTuple

from unstoppable._core.segment import find_time, read_batches, scan, time_index_below
from unstoppable.errors import CorruptLogError
from unstoppable.storage.segments import Segment, position_of

__all__ = ["ByteRange", "byte_range", "offset_for_time"]


class ByteRange(NamedTuple):
    """Whole batches as they lie in a segment file (``Partition.byte_range``).

    ``segment`` keeps the file open while the range is in use: ``segment.fd``
    for ``os.sendfile``, ``segment.data(position + length).view`` for a
    zero-copy memoryview. ``magic`` is the first batch's format (2 = Kafka
    RecordBatch v2; 1 = a format-1 batch of a log written before format 2,
    docs/FORMAT.md section 4.8, which Kafka clients cannot read).
    ``base_offset`` is the first batch's, at or below the offset asked for.
    """

    segment: Segment
    position: int
    length: int
    magic: int
    base_offset: int


def byte_range(part, offset: int, max_bytes: int) -> ByteRange | None:
    """byte_range(part, offset, max_bytes) -> ByteRange | None

    ``Partition.byte_range``.

    Where the batches from the one holding ``offset`` lie in their segment
    file, for serving them as bytes (a Kafka fetch hands them to
    ``sendfile``): the first whole batch, then following whole batches of
    the same segment while the total stays within ``max_bytes``. Every
    batch passed its CRC and header checks and continues the offsets of
    the one before (records are not decoded). The first batch may start
    before ``offset``; control batches are included. All batches of the
    range have the first one's format: format-1 batches precede format-2
    ones in a segment, so a range that starts with format 2 holds only
    format 2, and one that starts with format 1 stops at the first format-2
    batch. None when ``offset`` is the end.

    Raises OffsetOutOfRangeError below ``start_offset`` or past
    ``end_offset``, CorruptLogError when the first batch is damaged.
    """
    part._check_open()
    offset = part._check_offset(offset)
    st = part._state()
    while True:
        if offset == st.end_offset:
            return None
        seg = part._segment_for(offset, st)
        limit, oi_n, _ = part._catalog.limits(seg, st)
        gaps = part._catalog.gaps
        try:
            pos = position_of(seg, offset, limit, oi_n, gaps)
        except CorruptLogError as e:
            raise part._wrap_corrupt(e, seg) from None
        if pos < limit or not gaps:
            break
        offset = part._after_gap(seg, st)  # compacted away up to the segment's end
    try:
        m = seg.data(limit)
        head = bytes(m.view[pos:pos + 17]) if limit - pos >= 17 else b""
        if len(head) < 17:
            raise CorruptLogError("a batch header runs past the end of the segment",
                                  position=pos)
        magic = head[16]
        if magic == 2:
            first_len = int.from_bytes(head[8:12], "big") + 12
        else:
            first_len = int.from_bytes(head[8:12], "little")
        base = int.from_bytes(head[0:8], "big" if magic == 2 else "little", signed=True)
        end = min(limit, max(pos + max_bytes, pos + first_len))
        r = scan(m, pos, end, base, None, gaps)
        stop = r.position
        if stop == pos:
            # The first batch failed its checks: let the record reader name the damage.
            read_batches(m, pos, limit, offset, 1, part.topic, part.index)
            raise CorruptLogError("the batch does not pass its checks", position=pos)
        if magic != 2:
            # Format 1 stops where format 2 starts (never mixed in one range).
            p2 = pos
            while p2 < stop and m.view[p2 + 16] != 2:
                p2 += int.from_bytes(m.view[p2 + 8:p2 + 12], "little")
            stop = p2
    except CorruptLogError as e:
        raise part._wrap_corrupt(e, seg) from None
    return ByteRange(seg, pos, stop - pos, magic, base)


def offset_for_time(part, ts_ms: int) -> int | None:
    """The first offset whose record timestamp is >= ``ts_ms``, or None when
    every record is older. Uses the time indexes, then scans a few batches."""
    part._check_open()
    if isinstance(ts_ms, bool) or not isinstance(ts_ms, int):
        raise TypeError(f"ts_ms must be an int of milliseconds, got {type(ts_ms).__name__}")
    st = part._state()
    if st.end_offset == st.start_offset:
        return None
    catalog = part._catalog
    catalog.refresh(st)
    for base in list(catalog.bases):
        if base > st.active_base:
            break  # rolled after ``st`` was read: past what it knows
        known = catalog.known(base)
        if base != st.active_base and known is not None and known.max_ts is not None \
                and known.max_ts < ts_ms:
            continue  # older than ts_ms throughout, as far as is known: no need to open it
        try:
            seg = catalog.get(base)
        except FileNotFoundError:
            continue  # removed by retention meanwhile
        found = _find_time_in(part, seg, st, ts_ms)
        if found >= 0:
            return max(found, st.start_offset)
    return None

def _find_time_in(part, seg: Segment, st, ts_ms: int) -> int:
    """The first offset with a timestamp >= ``ts_ms`` in one segment, or -1."""
    limit, oi_n, ti_n = part._catalog.limits(seg, st)
    if limit == 0:
        return -1
    try:
        if seg.base != st.active_base and part._catalog.max_ts(seg, limit, oi_n) < ts_ms:
            return -1
        pos = 0
        if ti_n:
            hit = time_index_below(seg.ti_map(ti_n), ti_n, ts_ms)
            if hit is not None and hit[2] < limit:
                pos = hit[2]
        return find_time(seg.data(limit), pos, limit, ts_ms)
    except CorruptLogError as e:
        raise part._wrap_corrupt(e, seg) from None
