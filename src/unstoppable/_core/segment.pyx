# cython: language_level=3
"""Segment files, their indexes and the partition head, seen through mmap.

Writers append with ``pwrite`` (csrc/ and storage/partition.py explain why:
fresh mmap pages fault at ~0.5 GB/s on this machine class, write() runs at
2.4-3 GB/s). Readers map each file read-only and shared, at a length that may
run past the end of the file, and only ever touch bytes below the size the
partition head says is complete, so a growing file never needs remapping.

Every batch a reader hands out has passed its CRC-32C check.
"""
cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBuffer_FillInfo
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int16_t, int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from libc.errno cimport errno
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.exc cimport PyErr_CheckSignals
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED

from unstoppable._core.includes.batch cimport *
from unstoppable._core.includes.index cimport *
from unstoppable._core.includes.head cimport *
from unstoppable._core.includes.crc32c cimport us_crc32c_init
from unstoppable._core.batch cimport Record, RecordBatch, make_batch
from unstoppable._core.includes.guard cimport us_guard_install, us_guard_add, us_guard_remove, us_guard_hits

import os

from unstoppable.errors import corrupt_from_code, CorruptLogError

us_crc32c_init()
if us_guard_install() != 0:
    raise OSError(errno, "cannot install the SIGBUS guard for mapped segment files")

OFFSET_ENTRY_SIZE = US_OFFSET_ENTRY_SIZE
TIME_ENTRY_SIZE = US_TIME_ENTRY_SIZE
HEAD_FILE_SIZE = US_HEAD_FILE_SIZE
HEAD_FLAG_DELETED = US_HEAD_FLAG_DELETED

cdef extern from "unistd.h" nogil:
    long sysconf(int name)
    int _SC_PAGESIZE

cdef extern from "errno.h" nogil:
    int EINTR

cdef size_t PAGE = <size_t>sysconf(_SC_PAGESIZE)


cdef class Mapping:
    """Mapping(fd, length, writable=False)

    A shared mmap of ``length`` bytes of the file ``fd`` (rounded up to a page;
    it may extend past the end of the file). It exports the bytes through the
    buffer protocol; record views keep it alive, and it is unmapped only when
    the last reference goes away, so a view can never outlive its memory.
    """

    def __cinit__(self, int fd, Py_ssize_t length, bint writable=False):
        cdef size_t maplen
        cdef void *p
        if length < 0:
            raise ValueError("negative mapping length")
        maplen = <size_t>length
        if maplen == 0:
            maplen = PAGE
        maplen = (maplen + PAGE - 1) & ~(PAGE - 1)
        p = mmap(NULL, maplen, PROT_READ | (PROT_WRITE if writable else 0), MAP_SHARED, fd, 0)
        if p == MAP_FAILED:
            err = errno
            raise OSError(err, f"mmap of {maplen} bytes failed: {os.strerror(err)}")
        self.ptr = <unsigned char *>p
        self.length = <Py_ssize_t>maplen
        self.writable = writable
        self._mv = None
        # If another process truncates the file under us, a touch past its end
        # reads zeros (and fails a CRC) instead of killing us with SIGBUS.
        us_guard_add(self.ptr, maplen)

    def __dealloc__(self):
        if self.ptr != NULL:
            us_guard_remove(self.ptr)
            munmap(self.ptr, <size_t>self.length)
            self.ptr = NULL

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        PyBuffer_FillInfo(buffer, self, self.ptr, self.length, 0 if self.writable else 1, flags)

    def __releasebuffer__(self, Py_buffer *buffer):
        pass

    @property
    def view(self):
        """A memoryview of the whole mapping (cached)."""
        if self._mv is None:
            self._mv = memoryview(self)
        return self._mv


@cython.embedsignature(False)
def sigbus_absorbed():
    """sigbus_absorbed()
--

    sigbus_absorbed() -> int

    How many SIGBUS faults in mapped log files (a file truncated by someone
    else) were turned into zero pages instead of killing the process.
    """
    return us_guard_hits()


# ---------------------------------------------------------------------------
# Partition head

cdef class HeadState:
    """One consistent snapshot of a partition head (see csrc/head.h)."""
    cdef public uint64_t seq
    cdef public int64_t start_offset
    cdef public int64_t end_offset
    cdef public int64_t active_base
    cdef public uint64_t active_size
    cdef public int64_t ckpt_base
    cdef public uint64_t ckpt_size
    cdef public int64_t ckpt_end_offset
    cdef public bytes boot_id
    cdef public int64_t max_timestamp
    cdef public int64_t active_created
    cdef public uint64_t flags
    cdef public uint64_t oi_count
    cdef public uint64_t ti_count
    cdef public uint64_t oi_last_pos
    cdef public int64_t ti_last_ts

    def copy(self):
        cdef HeadState s = HeadState.__new__(HeadState)
        s.seq = self.seq
        s.start_offset = self.start_offset
        s.end_offset = self.end_offset
        s.active_base = self.active_base
        s.active_size = self.active_size
        s.ckpt_base = self.ckpt_base
        s.ckpt_size = self.ckpt_size
        s.ckpt_end_offset = self.ckpt_end_offset
        s.boot_id = self.boot_id
        s.max_timestamp = self.max_timestamp
        s.active_created = self.active_created
        s.flags = self.flags
        s.oi_count = self.oi_count
        s.ti_count = self.ti_count
        s.oi_last_pos = self.oi_last_pos
        s.ti_last_ts = self.ti_last_ts
        return s

    def __repr__(self):
        return (f"HeadState(start={self.start_offset}, end={self.end_offset}, "
                f"active={self.active_base}@{self.active_size}, "
                f"ckpt={self.ckpt_base}@{self.ckpt_size}/{self.ckpt_end_offset}, "
                f"index={self.oi_count}/{self.ti_count}, flags={self.flags})")


def new_head_state(int64_t start_offset=0, int64_t end_offset=0, int64_t active_base=0,
                   uint64_t active_size=0, int64_t ckpt_base=0, uint64_t ckpt_size=0,
                   int64_t ckpt_end_offset=0, bytes boot_id=b"\0" * 16,
                   int64_t max_timestamp=-1, int64_t active_created=0, uint64_t flags=0,
                   uint64_t oi_count=0, uint64_t ti_count=0, uint64_t oi_last_pos=0,
                   int64_t ti_last_ts=-1):
    """A HeadState with the given fields."""
    cdef HeadState s = HeadState.__new__(HeadState)
    s.seq = 0
    s.start_offset = start_offset
    s.end_offset = end_offset
    s.active_base = active_base
    s.active_size = active_size
    s.ckpt_base = ckpt_base
    s.ckpt_size = ckpt_size
    s.ckpt_end_offset = ckpt_end_offset
    s.boot_id = boot_id
    s.max_timestamp = max_timestamp
    s.active_created = active_created
    s.flags = flags
    s.oi_count = oi_count
    s.ti_count = ti_count
    s.oi_last_pos = oi_last_pos
    s.ti_last_ts = ti_last_ts
    return s


cdef class Head:
    """Head(fd)

    The shared partition head file (4096 bytes, see csrc/head.h), mapped
    read-write. ``read()`` never blocks; ``write()`` must only be called by
    the holder of the partition's append lock.
    """
    cdef Mapping m
    cdef us_head *h

    def __cinit__(self, int fd):
        self.m = Mapping(fd, US_HEAD_FILE_SIZE, True)
        self.h = <us_head *>self.m.ptr

    def valid(self):
        """True when the file carries the head magic and a version we read."""
        return self.h.magic == US_HEAD_MAGIC and self.h.version == US_HEAD_VERSION

    @property
    def magic(self):
        return self.h.magic

    @property
    def version(self):
        return self.h.version

    @property
    def seq(self):
        """The sequence counter; it changes on every append."""
        return us_head_seq(self.h)

    def read(self):
        """read() -> HeadState | None

        A consistent snapshot, or None when a writer died in the middle of an
        update (the next lock holder repairs it).
        """
        cdef us_head_snapshot s
        cdef HeadState out
        if us_head_read(self.h, &s) != 0:
            return None
        out = HeadState.__new__(HeadState)
        out.seq = s.seq
        out.start_offset = s.start_offset
        out.end_offset = s.end_offset
        out.active_base = s.active_base
        out.active_size = s.active_size
        out.ckpt_base = s.ckpt_base
        out.ckpt_size = s.ckpt_size
        out.ckpt_end_offset = s.ckpt_end_offset
        out.boot_id = PyBytes_FromStringAndSize(<char *>s.boot_id, 16)
        out.max_timestamp = s.max_timestamp
        out.active_created = s.active_created
        out.flags = s.flags
        out.oi_count = s.oi_count
        out.ti_count = s.ti_count
        out.oi_last_pos = s.oi_last_pos
        out.ti_last_ts = s.ti_last_ts
        return out

    def write(self, HeadState st):
        """write(state): store every field of ``state`` (append lock held)."""
        cdef us_head_snapshot s
        if len(st.boot_id) != 16:
            raise ValueError("boot_id must be 16 bytes")
        s.start_offset = st.start_offset
        s.end_offset = st.end_offset
        s.active_base = st.active_base
        s.active_size = st.active_size
        s.ckpt_base = st.ckpt_base
        s.ckpt_size = st.ckpt_size
        s.ckpt_end_offset = st.ckpt_end_offset
        memcpy(s.boot_id, <const char *>st.boot_id, 16)
        s.max_timestamp = st.max_timestamp
        s.active_created = st.active_created
        s.flags = st.flags
        s.oi_count = st.oi_count
        s.ti_count = st.ti_count
        s.oi_last_pos = st.oi_last_pos
        s.ti_last_ts = st.ti_last_ts
        us_head_write(self.h, &s)
        st.seq = us_head_seq(self.h)


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
            while pos + US_BATCH_HEADER_SIZE <= <size_t>view.len:
                self.add(write_pos + pos, off, <int64_t>us_ld64(p + pos + 32))
                off += us_ld32(p + pos + 20)
                pos += us_ld32(p + pos + 8)
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
         IndexBuilder index=None):
    """scan(mapping, pos, end, expected_offset, index=None) -> ScanResult

    Walk batches from ``pos`` while they are whole, pass their CRC and carry
    the expected consecutive base offsets (``expected_offset`` < 0 takes the
    first batch's). Stops at ``end`` or at the first bad batch; ``code`` says
    why (``OFFSET_MISMATCH`` for a break in offsets). Feeds ``index``.
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
        if rc == US_OK and expect >= 0 and h.base_offset != expect:
            rc = OFFSET_MISMATCH
        if rc != US_OK:
            if end - pos >= 8:
                r.bad_offset = <int64_t>us_ld64(m.ptr + pos)
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
    off = <int64_t>us_ld64(p) if avail >= 8 else None
    return corrupt_from_code(rc, position=pos, offset=off)


cdef inline object _not_consecutive(size_t pos, int64_t expected):
    # base_offset is outside the CRC (docs/FORMAT.md §4.1): a damaged one is
    # only caught by comparing it with the offset the batch before ends at.
    return CorruptLogError("batch offsets are not consecutive", position=pos, offset=expected)


def find_batch(Mapping m, size_t pos, size_t end, int64_t offset, int64_t expected_base=-1,
               bint skip_damaged=False):
    """find_batch(mapping, pos, end, offset, expected_base=-1, skip_damaged=False) -> int

    From the batch at ``pos`` (at or before ``offset``), walk headers (no CRC)
    to the batch that holds ``offset``; return its position, or ``end`` when
    the offset lies past the last batch. With ``expected_base`` >= 0 (the base
    offset the batch at ``pos`` must have), offsets are counted from it and a
    batch whose stored base_offset disagrees raises CorruptLogError; with
    ``skip_damaged`` such a batch is walked past unless it would hold
    ``offset`` (for a walk from a segment's start, whose base is certain).
    Also raises CorruptLogError on a header that cannot be walked.
    """
    cdef us_batch_header h
    cdef int rc
    cdef int64_t expect = expected_base
    if end > <size_t>m.length:
        raise ValueError("walk past the mapping")
    while pos < end:
        rc = us_batch_parse_header(m.ptr + pos, end - pos, &h)
        if rc != US_OK:
            raise _corrupt(rc, pos, m.ptr + pos, end - pos)
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
                 size_t max_bytes, str topic, int partition):
    """read_records(mapping, pos, end, offset, max_records, max_bytes, topic, partition)
        -> (records, next_pos)

    Records from ``offset`` on, starting with the batch at ``pos``, up to
    ``max_records`` records and about ``max_bytes`` bytes of batches (at least
    one batch is read if any is there). Every batch is CRC-checked first.
    ``next_pos`` is where the next unread batch begins (or the batch that the
    record limit cut, so a read from the returned next offset starts there).
    Each batch must continue the offsets of the one before, and the first
    batch read must hold ``offset``: records never come with the wrong offsets.
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
        if expect >= 0 and h.base_offset != expect:
            raise _not_consecutive(pos, expect)
        expect = h.base_offset + <int64_t>h.record_count
        if h.base_offset + <int64_t>h.record_count <= offset:
            pos += h.length
            continue
        if h.base_offset > offset:
            raise _not_consecutive(pos, offset)
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
                 str topic, int partition):
    """read_batches(mapping, pos, end, offset, max_bytes, topic, partition)
        -> (batches, next_pos)

    Whole CRC-checked batches from the one holding ``offset``, up to about
    ``max_bytes`` (at least one). Records in the first batch may lie before
    ``offset``; ``RecordBatch.records(offset)`` skips them. Each batch must
    continue the offsets of the one before.
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
        if taken and taken + (<size_t>us_ld32(m.ptr + pos + 8) if end - pos >= 12 else 0) > max_bytes:
            break
        rc = us_batch_parse_header(m.ptr + pos, end - pos, &h)
        if rc != US_OK:
            raise _corrupt(rc, pos, m.ptr + pos, end - pos)
        if expect >= 0 and h.base_offset != expect:
            raise _not_consecutive(pos, expect)
        expect = h.base_offset + <int64_t>h.record_count
        if h.base_offset + <int64_t>h.record_count > offset:
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
    if end > <size_t>m.length:
        raise ValueError("read past the mapping")
    while pos < end:
        rc = us_batch_check(m.ptr + pos, end - pos, &h)
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


# ---------------------------------------------------------------------------
# Background writer

from unstoppable._core.includes.writer cimport (
    us_writer, us_write_job, us_writer_new, us_writer_free, us_writer_submit, us_writer_wait)


cdef class WriteJob:
    """One pending pwrite; holds the buffer until :meth:`wait` returns."""
    cdef us_write_job job
    cdef Py_buffer view
    cdef bint held
    cdef Writer writer

    def wait(self):
        """wait() -> None; raises OSError if the write failed."""
        cdef int err
        if not self.held:
            return
        with nogil:
            err = us_writer_wait(self.writer.w, &self.job)
        PyBuffer_Release(&self.view)
        self.held = False
        if err:
            raise OSError(err, os.strerror(err))

    def __dealloc__(self):
        if self.held:
            with nogil:
                us_writer_wait(self.writer.w, &self.job)
            PyBuffer_Release(&self.view)


cdef class Writer:
    """Writer()

    A pthread that runs pwrite() jobs in order, outside the GIL, so the caller
    can encode the next chunk while the last one is written.
    """
    cdef us_writer *w

    def __cinit__(self):
        self.w = us_writer_new()
        if self.w == NULL:
            raise OSError(errno, "cannot start the writer thread")

    def __dealloc__(self):
        if self.w != NULL:
            with nogil:
                us_writer_free(self.w)
            self.w = NULL

    def submit(self, int fd, data, long long pos):
        """submit(fd, data, pos) -> WriteJob: write all of ``data`` at ``pos``."""
        cdef WriteJob j = WriteJob.__new__(WriteJob)
        if self.w == NULL:
            raise ValueError("writer is closed")
        PyObject_GetBuffer(data, &j.view, PyBUF_SIMPLE)
        j.held = True
        j.writer = self
        j.job.fd = fd
        j.job.buf = j.view.buf
        j.job.len = <size_t>j.view.len
        j.job.pos = pos
        us_writer_submit(self.w, &j.job)
        return j

    def close(self):
        """Finish queued jobs and stop the thread."""
        if self.w != NULL:
            with nogil:
                us_writer_free(self.w)
            self.w = NULL


cdef extern from *:
    """
    #include <fcntl.h>
    #include <errno.h>
    static int us_preallocate(int fd, long long offset, long long length) {
    #if defined(__linux__) && defined(FALLOC_FL_KEEP_SIZE)
        return fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length) == 0 ? 0 : errno;
    #else
        (void)fd; (void)offset; (void)length;
        return EOPNOTSUPP;
    #endif
    }
    """
    int us_preallocate(int fd, long long offset, long long length) nogil


def preallocate(int fd, long long offset, long long length):
    """preallocate(fd, offset, length) -> int

    Reserve disk blocks for ``[offset, offset + length)`` without changing
    the file's size (fallocate with FALLOC_FL_KEEP_SIZE; Linux). Returns 0,
    or the errno (EOPNOTSUPP where the platform or filesystem has no such
    call). Appending into reserved blocks skips the filesystem's delayed
    allocation work per page: 106 MB of 1 MiB pwrites took 16 ms instead of
    22-23 ms on ext4 here. Blocks past the end are released by any ftruncate.
    """
    cdef int rc
    if offset < 0 or length <= 0:
        raise ValueError(f"offset {offset} / length {length} out of range")
    with nogil:
        rc = us_preallocate(fd, offset, length)
    return rc


cdef extern from *:
    """
    #include <errno.h>
    #include <sys/file.h>
    #include <fcntl.h>
    #include <unistd.h>
    static int us_flock(int fd, int op) { return flock(fd, op) == 0 ? 0 : errno; }
    static int us_dup_cloexec(int fd) { return fcntl(fd, F_DUPFD_CLOEXEC, 0); }
    static void us_close(int fd) { (void)close(fd); }
    """
    int us_flock(int fd, int op) nogil
    int us_dup_cloexec(int fd) nogil
    void us_close(int fd) nogil
    int LOCK_EX, LOCK_NB, LOCK_UN, EWOULDBLOCK
    int EBUSY_ "EBUSY"


def lock_file(int fd):
    """lock_file(fd) -> None

    flock(fd, LOCK_EX), as ``fcntl.flock`` does it, but without letting go
    of the GIL unless the lock is taken: a non-blocking try first, and only
    when another process holds it a blocking wait with the GIL released.
    ``fcntl.flock`` releases and re-takes the GIL on every call; each
    re-take while another thread runs Python waits for that thread to drop
    the GIL (a forced switch after ``sys.getswitchinterval()``, or its next
    blocking call), and the append path and the sync thread take this lock
    once per append and per partition synced.
    """
    cdef int err = us_flock(fd, LOCK_EX | LOCK_NB)
    while err != 0:
        if err == EINTR:
            PyErr_CheckSignals()  # runs handlers; raises what they raise
        elif err != EWOULDBLOCK:
            raise OSError(err, os.strerror(err))
        with nogil:
            err = us_flock(fd, LOCK_EX)


def unlock_file(int fd):
    """unlock_file(fd) -> None

    flock(fd, LOCK_UN) holding the GIL (releasing never waits); see
    :func:`lock_file`."""
    cdef int err = us_flock(fd, LOCK_UN)
    if err != 0:
        raise OSError(err, os.strerror(err))


def dup_fd(int fd):
    """dup_fd(fd) -> int

    ``os.dup`` (a close-on-exec duplicate: fcntl F_DUPFD_CLOEXEC) holding
    the GIL, so a sync round that duplicates every segment descriptor it
    covers does not hand the GIL away once per file; see :func:`lock_file`.
    """
    cdef int r = us_dup_cloexec(fd)
    if r < 0:
        r = errno
        raise OSError(r, os.strerror(r))
    return r


from unstoppable._core.includes.syncer cimport (
    us_sync_round, us_syncer, us_syncer_new, us_syncer_submit, us_syncer_take, us_syncer_free)


def sync_files(fds, bint close=False):
    """sync_files(fds, close=False) -> list[int]

    The data half of a group commit in one call that holds no GIL throughout:
    ask the kernel to start writing back every file's dirty pages
    (sync_file_range SYNC_FILE_RANGE_WRITE; skipped off Linux), then
    fdatasync each in turn. Starting all first lets their data go to the
    device together instead of one file after another (measured for 8 files
    of 13 KB: 1.2 ms instead of 2.3 ms). Returns one errno per descriptor, 0 where the file
    is on stable storage. One GIL hand-off per round instead of one per
    syscall matters: a thread waking from a syscall waits for the GIL while
    the event loop runs Python (measured: 1.75 ms per round for 4 files under
    a busy producer, against 0.05 ms alone).

    With ``close`` the descriptors (the sync's own duplicates) are closed
    in the same GIL-free stretch, after their fdatasync, instead of one
    GIL hand-off per ``os.close``. They are all closed when this returns,
    and none is when it raises (it can only raise before touching them).
    """
    cdef Py_ssize_t n = len(fds), i
    cdef int *arr = <int *>PyMem_Malloc((n if n else 1) * 2 * sizeof(int))
    cdef int *errs
    cdef list result
    if arr == NULL:
        raise MemoryError()
    errs = arr + n
    try:
        for i in range(n):
            arr[i] = fds[i]
            errs[i] = 0
        result = [0] * n  # allocated before the closes: nothing after them can fail
        with nogil:
            us_sync_round(arr, errs, <int>n, close)  # csrc/syncer.c, as LoopSyncer's thread
        for i in range(n):
            if errs[i]:
                result[i] = errs[i]
        return result
    finally:
        PyMem_Free(arr)


# ---------------------------------------------------------------------------
# Event-loop sync thread



cdef class LoopSyncer:
    """LoopSyncer()

    A thread with no Python in it that runs one group-commit round at a time
    for an event loop: :meth:`submit` hands it descriptors (duplicates it then
    owns and closes); it starts writeback of all, fdatasyncs each, and makes
    :meth:`fileno` readable. The loop then calls :meth:`take` for one errno per
    descriptor. Nothing of a round needs the GIL on the sync thread, so the
    loop, which runs a round's Python itself, never waits for a thread to hand
    the GIL back (see csrc/syncer.h).
    """
    cdef us_syncer *s
    cdef int rfd, wfd

    def __cinit__(self):
        self.s = NULL
        self.rfd = self.wfd = -1
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.rfd, self.wfd = r, w
        self.s = us_syncer_new(w)
        if self.s == NULL:
            err = errno
            os.close(r)
            os.close(w)
            self.rfd = self.wfd = -1
            raise OSError(err, "cannot start the sync thread")

    def fileno(self):
        """The descriptor that becomes readable when a round is done."""
        if self.rfd < 0:
            raise ValueError("syncer is closed")
        return self.rfd

    def submit(self, fds):
        """submit(fds) -> None: sync and close these descriptors (owned from
        here on, also when this raises)."""
        cdef Py_ssize_t n = len(fds), i
        cdef int *arr = <int *>PyMem_Malloc((n if n else 1) * sizeof(int))
        cdef int rc
        if arr == NULL:
            for fd in fds:
                os.close(fd)
            raise MemoryError()
        try:
            for i in range(n):
                arr[i] = fds[i]
            rc = EBUSY_ if self.s == NULL else us_syncer_submit(self.s, arr, <int>n)
            if rc != 0:
                for i in range(n):
                    us_close(arr[i])
                raise OSError(rc, "sync round not started: " + os.strerror(rc))
        finally:
            PyMem_Free(arr)

    def take(self, Py_ssize_t n):
        """take(n) -> list[int] | None: the errnos (0 = synced) of the round
        that finished, or None while it runs. Drains the notification."""
        cdef int *errs = <int *>PyMem_Malloc((n if n else 1) * sizeof(int))
        cdef int k, i
        if errs == NULL:
            raise MemoryError()
        try:
            try:
                while os.read(self.rfd, 64):
                    pass
            except BlockingIOError:
                pass
            if self.s == NULL:
                return None
            k = us_syncer_take(self.s, errs, <int>n)
            if k < 0:
                return None
            return [errs[i] for i in range(k)]
        finally:
            PyMem_Free(errs)

    def close(self):
        """Wait for the round in flight (its descriptors are then closed) and
        stop the thread."""
        if self.s != NULL:
            with nogil:
                us_syncer_free(self.s)
            self.s = NULL
        for fd in (self.rfd, self.wfd):
            if fd >= 0:
                os.close(fd)
        self.rfd = self.wfd = -1

    def __dealloc__(self):
        if self.s != NULL:
            with nogil:
                us_syncer_free(self.s)
            self.s = NULL
        if self.rfd >= 0:
            us_close(self.rfd)
        if self.wfd >= 0:
            us_close(self.wfd)
