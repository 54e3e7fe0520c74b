# Included by segment.pyx: the format side. Index building, scanning,
# reading batches and records, and index lookups (csrc/batch.h, csrc/index.h).
# No system calls here: everything works on a Mapping it is handed.

# ---------------------------------------------------------------------------
# Index building (shared by appends and recovery, so both produce the same entries)

cdef class IndexBuilder:
    """IndexBuilder(segment_base, interval, last_entry_pos, last_time_ts)

    Decides which batches get sparse index entries: a batch at position p
    gets an offset entry (and, if the running max timestamp grew, a time entry)
    when ``p - last_entry_pos >= interval``. Positions start at 0 for an empty
    segment, so the first entry falls about ``interval`` bytes in; lookups
    before the first entry scan from position 0.
    """
    cdef int64_t seg_base
    cdef size_t interval
    cdef public size_t last_entry_pos
    cdef public int64_t last_time_ts
    cdef public int64_t running_max_ts
    cdef bytearray oi
    cdef bytearray ti

    def __cinit__(self, int64_t segment_base, size_t interval, size_t last_entry_pos=0,
                  int64_t last_time_ts=-1, int64_t running_max_ts=-1):
        self.seg_base = segment_base
        self.interval = interval if interval > 0 else 1
        self.last_entry_pos = last_entry_pos
        self.last_time_ts = last_time_ts
        self.running_max_ts = running_max_ts
        self.oi = bytearray()
        self.ti = bytearray()

    cdef void add(self, size_t pos, int64_t base_offset, int64_t max_ts):
        cdef unsigned char e[16]
        cdef uint32_t rel
        if max_ts > self.running_max_ts:
            self.running_max_ts = max_ts
        if pos == 0 or pos - self.last_entry_pos < self.interval:
            return
        rel = <uint32_t>(base_offset - self.seg_base)
        us_st32(e, rel)
        us_st32(e + 4, <uint32_t>pos)
        self.oi += PyBytes_FromStringAndSize(<char *>e, 8)
        self.last_entry_pos = pos
        if self.running_max_ts > self.last_time_ts:
            us_st64(e, <uint64_t>self.running_max_ts)
            us_st32(e + 8, rel)
            us_st32(e + 12, <uint32_t>pos)
            self.ti += PyBytes_FromStringAndSize(<char *>e, 16)
            self.last_time_ts = self.running_max_ts

    def add_batch(self, size_t pos, int64_t base_offset, int64_t max_ts):
        """Consider the batch at ``pos`` for an index entry."""
        self.add(pos, base_offset, max_ts)

    def add_encoded(self, object encoded, size_t write_pos, int64_t base_offset):
        """add_encoded(buffer, write_pos, base_offset)

        Consider every batch in ``buffer`` (batches back to back, written at
        ``write_pos`` of the segment, starting at ``base_offset``).
        """
        cdef Py_buffer view
        cdef size_t pos = 0
        cdef const unsigned char *p
        cdef int64_t off = base_offset
        PyObject_GetBuffer(encoded, &view, PyBUF_SIMPLE)
        try:
            p = <const unsigned char *>view.buf
            while pos + US_BATCH_MIN_PROBE <= <size_t>view.len and \
                    pos + us_batch_header_size(p[pos + 16]) <= <size_t>view.len:
                self.add(write_pos + pos, off, us_batch_max_timestamp(p + pos))
                off += us_batch_record_count(p + pos)
                pos += us_batch_total_length(p + pos)
        finally:
            PyBuffer_Release(&view)

    def take(self):
        """take() -> (offset_entries: bytes, time_entries: bytes); clears them."""
        out = (bytes(self.oi), bytes(self.ti))
        del self.oi[:]
        del self.ti[:]
        return out


# ---------------------------------------------------------------------------
# Scanning (recovery) and reading

cdef class ScanResult:
    """What scan() found: the valid prefix and why it stopped."""
    cdef readonly size_t position        # end of the last valid batch
    cdef readonly int64_t next_offset    # offset after the last valid batch
    cdef readonly int64_t max_timestamp  # largest max_timestamp among valid batches (-1 none)
    cdef readonly size_t batches
    cdef readonly int code               # 0 reached `end` cleanly; else US_* code of the stop
    cdef readonly int64_t bad_offset     # base_offset the bad batch claimed (-1 unknown)

    def __repr__(self):
        return (f"ScanResult(position={self.position}, next_offset={self.next_offset}, "
                f"batches={self.batches}, code={self.code})")


OFFSET_MISMATCH = 100


def scan(Mapping m, size_t pos, size_t end, int64_t expected_offset,
         IndexBuilder index=None, bint gaps=False):
    """scan(mapping, pos, end, expected_offset, index=None, gaps=False) -> ScanResult

    Walk batches from ``pos`` while they are whole, pass their CRC and carry
    the expected consecutive base offsets (``expected_offset`` < 0 takes the
    first batch's). Stops at ``end`` or at the first bad batch; ``code`` says
    why (``OFFSET_MISMATCH`` for a break in offsets). Feeds ``index``. With
    ``gaps`` (a segment the compactor rewrote, docs/FORMAT.md §16) base
    offsets need only grow: a batch may start past where the one before ended.
    """
    cdef us_batch_header h
    cdef int rc = 0
    cdef ScanResult r = ScanResult.__new__(ScanResult)
    cdef int64_t expect = expected_offset
    if end > <size_t>m.length:
        raise ValueError("scan past the mapping")
    r.max_timestamp = -1
    r.bad_offset = -1
    while pos < end:
        rc = us_batch_check(m.ptr + pos, end - pos, &h)
        if rc == US_COMPRESSED:
            rc = US_OK      # CRC and header checked; the payload is checked when read
        if rc == US_OK and expect >= 0 and (h.base_offset < expect if gaps
                                            else h.base_offset != expect):
            rc = OFFSET_MISMATCH
        if rc != US_OK:
            if end - pos >= US_BATCH_MIN_PROBE:
                r.bad_offset = us_batch_base_offset(m.ptr + pos)
            break
        if index is not None:
            index.add(pos, h.base_offset, h.max_timestamp)
        if h.max_timestamp > r.max_timestamp:
            r.max_timestamp = h.max_timestamp
        expect = h.base_offset + h.record_count
        pos += h.length
        r.batches += 1
    r.position = pos
    r.next_offset = expect
    r.code = rc
    return r


cdef inline object _corrupt(int rc, size_t pos, const unsigned char *p, size_t avail):
    off = us_batch_base_offset(p) if avail >= US_BATCH_MIN_PROBE else None
    return corrupt_from_code(rc, position=pos, offset=off)


cdef inline object _not_consecutive(size_t pos, int64_t expected):
    # base_offset is outside the CRC (docs/FORMAT.md §4.1): a damaged one is
    # only caught by comparing it with the offset the batch before ends at.
    return CorruptLogError("batch offsets are not consecutive", position=pos, offset=expected)


cdef inline bint _control(const unsigned char *p, size_t avail, size_t pos,
                          us_batch_header *h) except -1:
    """True for a control batch (a transaction marker), which readers skip.
    Its CRC is checked first: a damaged attributes field must never turn a
    batch of data records into one that is skipped in silence."""
    cdef int rc
    if not (h.magic == US_MAGIC and h.attributes & US_ATTR_CONTROL):
        return False
    rc = us_batch_check(p, avail, h)
    if rc != US_OK and rc != US_COMPRESSED:
        raise _corrupt(rc, pos, p, avail)
    return True


def find_batch(Mapping m, size_t pos, size_t end, int64_t offset, int64_t expected_base=-1,
               bint skip_damaged=False, bint gaps=False):
    """find_batch(mapping, pos, end, offset, expected_base=-1, skip_damaged=False, gaps=False) -> int

    From the batch at ``pos`` (at or before ``offset``), walk headers (no CRC)
    to the batch that holds ``offset``; return its position, or ``end`` when
    the offset lies past the last batch. With ``expected_base`` >= 0 (the base
    offset the batch at ``pos`` must have), offsets are counted from it and a
    batch whose stored base_offset disagrees raises CorruptLogError; with
    ``skip_damaged`` such a batch is walked past unless it would hold
    ``offset`` (for a walk from a segment's start, whose base is certain).
    Also raises CorruptLogError on a header that cannot be walked. With
    ``gaps`` (a compacted segment) a batch may start past the offset the one
    before ended at (never before it), and an ``offset`` in such a gap finds
    the batch after the gap.
    """
    cdef us_batch_header h
    cdef int rc
    cdef int64_t expect = expected_base
    cdef bint first = True
    if end > <size_t>m.length:
        raise ValueError("walk past the mapping")
    while pos < end:
        rc = us_batch_parse_header(m.ptr + pos, end - pos, &h)
        if rc != US_OK:
            raise _corrupt(rc, pos, m.ptr + pos, end - pos)
        if gaps:
            # The first batch of a walk from an index entry must carry the
            # entry's offset exactly (a stale entry must not skip records);
            # after it, and from a segment's start, offsets need only grow.
            if expect >= 0 and (h.base_offset < expect or
                                (first and not skip_damaged and h.base_offset != expect)):
                raise _not_consecutive(pos, expect)
            first = False
            expect = h.base_offset + <int64_t>h.record_count
            if offset < expect:
                return pos
            pos += h.length
            continue
        if expect >= 0:
            if h.base_offset != expect:
                if not skip_damaged or offset < expect + <int64_t>h.record_count:
                    raise _not_consecutive(pos, expect)
                expect += h.record_count
                pos += h.length
                continue
            expect = h.base_offset + <int64_t>h.record_count
        if offset < h.base_offset + <int64_t>h.record_count:
            if h.base_offset > offset:
                raise _not_consecutive(pos, offset)
            return pos
        pos += h.length
    return end


def read_records(Mapping m, size_t pos, size_t end, int64_t offset, size_t max_records,
                 size_t max_bytes, str topic, int partition, bint gaps=False):
    """read_records(mapping, pos, end, offset, max_records, max_bytes, topic, partition,
                    gaps=False) -> (records, next_pos)

    Records from ``offset`` on, starting with the batch at ``pos``, up to
    ``max_records`` records and about ``max_bytes`` bytes of batches (at least
    one batch is read if any is there). Every batch is CRC-checked first.
    ``next_pos`` is where the next unread batch begins (or the batch that the
    record limit cut, so a read from the returned next offset starts there).
    Each batch must continue the offsets of the one before, and the first
    batch read must hold ``offset``: records never come with the wrong offsets.
    With ``gaps`` (a compacted segment) batches need only have growing
    offsets, and an ``offset`` in a gap reads from the batch after it.
    """
    cdef us_batch_header h
    cdef int rc
    cdef size_t taken_bytes = 0
    cdef uint32_t i, start, stop
    cdef RecordBatch b
    cdef Py_ssize_t got = 0
    cdef int64_t expect = -1
    if end > <size_t>m.length:
        raise ValueError("read past the mapping")
    mv = m.view
    out = []
    while pos < end and <size_t>got < max_records:
        if taken_bytes and taken_bytes >= max_bytes:
            break
        rc = us_batch_parse_header(m.ptr + pos, end - pos, &h)
        if rc != US_OK:
            raise _corrupt(rc, pos, m.ptr + pos, end - pos)
        if expect >= 0 and (h.base_offset < expect if gaps else h.base_offset != expect):
            raise _not_consecutive(pos, expect)
        expect = h.base_offset + <int64_t>h.record_count
        if h.base_offset + <int64_t>h.record_count <= offset:
            pos += h.length
            continue
        if h.base_offset > offset:
            if not gaps:
                raise _not_consecutive(pos, offset)
            offset = h.base_offset
        if _control(m.ptr + pos, end - pos, pos, &h):
            # A control batch (a transaction marker) holds no data records.
            offset = h.base_offset + <int64_t>h.record_count
            pos += h.length
            continue
        b = make_batch(m, mv, m.ptr + pos, pos, &h, topic, partition)
        b._check_decode()
        start = <uint32_t>(offset - h.base_offset) if offset > h.base_offset else 0
        stop = h.record_count
        if <size_t>(stop - start) > max_records - <size_t>got:
            stop = start + <uint32_t>(max_records - <size_t>got)
        for i in range(start, stop):
            out.append(b._record(i))
        got += stop - start
        taken_bytes += h.length
        offset = h.base_offset + stop
        if stop < h.record_count:
            break
        pos += h.length
    return out, pos


def read_batches(Mapping m, size_t pos, size_t end, int64_t offset, size_t max_bytes,
                 str topic, int partition, bint gaps=False):
    """read_batches(mapping, pos, end, offset, max_bytes, topic, partition, gaps=False)
        -> (batches, next_pos)

    Whole CRC-checked batches from the one holding ``offset``, up to about
    ``max_bytes`` (at least one). Records in the first batch may lie before
    ``offset``; ``RecordBatch.records(offset)`` skips them. Each batch must
    continue the offsets of the one before (with ``gaps``, a compacted
    segment: start at or after where it ended).
    """
    cdef us_batch_header h
    cdef int rc
    cdef size_t taken = 0
    cdef int64_t expect = -1
    if end > <size_t>m.length:
        raise ValueError("read past the mapping")
    mv = m.view
    out = []
    cdef RecordBatch b
    while pos < end:
        if taken and taken + (<size_t>us_batch_total_length(m.ptr + pos)
                              if end - pos >= US_BATCH_MIN_PROBE else 0) > max_bytes:
            break
        rc = us_batch_parse_header(m.ptr + pos, end - pos, &h)
        if rc != US_OK:
            raise _corrupt(rc, pos, m.ptr + pos, end - pos)
        if expect >= 0 and (h.base_offset < expect if gaps else h.base_offset != expect):
            raise _not_consecutive(pos, expect)
        expect = h.base_offset + <int64_t>h.record_count
        if h.base_offset + <int64_t>h.record_count > offset and \
                not _control(m.ptr + pos, end - pos, pos, &h):
            b = make_batch(m, mv, m.ptr + pos, pos, &h, topic, partition)
            b._check_decode()
            out.append(b)
            taken += h.length
        pos += h.length
    return out, pos


def find_time(Mapping m, size_t pos, size_t end, int64_t ts):
    """find_time(mapping, pos, end, ts) -> int

    The first offset at or after the batch at ``pos`` whose record timestamp
    is >= ``ts``, or -1 when no record up to ``end`` has one.
    """
    cdef us_batch_header h
    cdef us_record_view *views
    cdef int rc
    cdef uint32_t i
    cdef RecordBatch b
    if end > <size_t>m.length:
        raise ValueError("read past the mapping")
    while pos < end:
        rc = us_batch_check(m.ptr + pos, end - pos, &h)
        if rc == US_COMPRESSED:
            if h.max_timestamp >= ts:
                b = make_batch(m, m.view, m.ptr + pos, pos, &h, None, -1)
                b._decode()
                for r in b.records():
                    if r.timestamp >= ts:
                        return r.offset
            pos += h.length
            continue
        if rc != US_OK:
            raise _corrupt(rc, pos, m.ptr + pos, end - pos)
        if h.max_timestamp >= ts:
            views = <us_record_view *>PyMem_Malloc(h.record_count * sizeof(us_record_view))
            if views == NULL:
                raise MemoryError()
            try:
                rc = us_batch_decode(m.ptr + pos, &h, views)
                if rc != US_OK:
                    raise _corrupt(rc, pos, m.ptr + pos, end - pos)
                for i in range(h.record_count):
                    if views[i].timestamp >= ts:
                        return h.base_offset + i
            finally:
                PyMem_Free(views)
        pos += h.length
    return -1


# ---------------------------------------------------------------------------
# Index lookups over mapped index files

def offset_index_floor(Mapping idx, size_t n, uint32_t rel):
    """offset_index_floor(index, n_entries, rel) -> (rel, pos) | None

    The last of the first ``n`` offset-index entries with relative offset <= rel.
    """
    cdef int64_t i
    if n * US_OFFSET_ENTRY_SIZE > <size_t>idx.length:
        raise ValueError("index entries past the mapping")
    i = us_oi_floor(idx.ptr, n, rel)
    if i < 0:
        return None
    return (us_oi_rel(idx.ptr, <size_t>i), us_oi_pos(idx.ptr, <size_t>i))


def time_index_below(Mapping idx, size_t n, int64_t ts):
    """time_index_below(index, n_entries, ts) -> (max_ts, rel, pos) | None

    The last time-index entry whose max timestamp is < ts.
    """
    cdef int64_t i
    if n * US_TIME_ENTRY_SIZE > <size_t>idx.length:
        raise ValueError("index entries past the mapping")
    i = us_ti_below(idx.ptr, n, ts)
    if i < 0:
        return None
    return (us_ti_ts(idx.ptr, <size_t>i), us_ti_rel(idx.ptr, <size_t>i), us_ti_pos(idx.ptr, <size_t>i))


def offset_index_entry(Mapping idx, size_t i):
    """(rel, pos) of offset-index entry i."""
    if (i + 1) * US_OFFSET_ENTRY_SIZE > <size_t>idx.length:
        raise IndexError("index entry past the mapping")
    return (us_oi_rel(idx.ptr, i), us_oi_pos(idx.ptr, i))


def time_index_entry(Mapping idx, size_t i):
    """(max_ts, rel, pos) of time-index entry i."""
    if (i + 1) * US_TIME_ENTRY_SIZE > <size_t>idx.length:
        raise IndexError("index entry past the mapping")
    return (us_ti_ts(idx.ptr, i), us_ti_rel(idx.ptr, i), us_ti_pos(idx.ptr, i))


def offset_index_valid(Mapping idx, size_t n, uint64_t limit_pos):
    """Number of leading well-formed offset-index entries pointing below limit_pos."""
    if n * US_OFFSET_ENTRY_SIZE > <size_t>idx.length:
        raise ValueError("index entries past the mapping")
    return us_oi_valid_prefix(idx.ptr, n, limit_pos)


def time_index_valid(Mapping idx, size_t n, uint64_t limit_pos):
    """Number of leading well-formed time-index entries pointing below limit_pos."""
    if n * US_TIME_ENTRY_SIZE > <size_t>idx.length:
        raise ValueError("index entries past the mapping")
    return us_ti_valid_prefix(idx.ptr, n, limit_pos)


def producer_batches(Mapping m, size_t pos, size_t end):
    """producer_batches(mapping, pos, end) -> (list, stop_pos)

    Walk batch headers (no CRC: the data below the head was checked when it
    was written or recovered) from ``pos`` and return
    ``(base_offset, record_count, producer_id, producer_epoch, base_sequence)``
    for each batch written by an idempotent producer (producer_id >= 0).
    """
    cdef us_batch_header h
    cdef int rc
    if end > <size_t>m.length:
        raise ValueError("walk past the mapping")
    out = []
    while pos < end:
        rc = us_batch_parse_header(m.ptr + pos, end - pos, &h)
        if rc != US_OK:
            raise _corrupt(rc, pos, m.ptr + pos, end - pos)
        if h.producer_id >= 0:
            out.append((h.base_offset, h.record_count, h.producer_id, h.producer_epoch,
                        h.base_sequence))
        pos += h.length
    return out, pos


def batch_at_or_after(Mapping m, size_t pos, size_t end, size_t min_pos):
    """batch_at_or_after(mapping, pos, end, min_pos) -> int

    Walk headers (no CRC) from the batch at ``pos`` and return the position of
    the first batch that starts at or after ``min_pos``, or ``end``.
    """
    cdef us_batch_header h
    cdef int rc
    if end > <size_t>m.length:
        raise ValueError("walk past the mapping")
    while pos < end and pos < min_pos:
        rc = us_batch_parse_header(m.ptr + pos, end - pos, &h)
        if rc != US_OK:
            raise _corrupt(rc, pos, m.ptr + pos, end - pos)
        pos += h.length
    return pos if pos < end else end


def batch_base_offset(Mapping m, size_t pos):
    """batch_base_offset(mapping, pos) -> int

    The base offset stored in the header of the batch at ``pos`` (either
    format: the magic byte at pos + 16 says which); no CRC check. Raises
    ValueError when fewer bytes than a header lie there."""
    if pos > <size_t>m.length or <size_t>m.length - pos < US_BATCH_MIN_PROBE or \
            <size_t>m.length - pos < us_batch_header_size(m.ptr[pos + 16]):
        raise ValueError(f"no batch header at {pos}")
    return us_batch_base_offset(m.ptr + pos)
