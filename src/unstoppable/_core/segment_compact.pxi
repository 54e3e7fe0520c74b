# The compactor's offset map (storage/compaction.py, docs/FORMAT.md §16):
# key -> the last offset it was written at, over the dirty part of a
# partition. As Kafka's SkimpyOffsetMap keeps an MD5 of each key, this keeps a
# 128-bit digest (XXH64 of the key with two seeds), so memory grows with the
# number of distinct keys (24 bytes a slot, at most half the slots full), not
# with records or key sizes. Two keys share a digest with odds about n^2/2^129.

from libc.stdlib cimport malloc, realloc, free
from unstoppable._core.includes.hashes cimport us_xxh64

# Seeds of the two halves of a digest (any two distinct constants).
cdef uint64_t _SEED1 = 0x9E3779B97F4A7C15ULL
cdef uint64_t _SEED2 = 0xC2B2AE3D27D4EB4FULL


cdef us_record_view *_plain_views(RecordBatch b) except? NULL:
    """A malloc'ed array for the record views of an uncompressed batch not
    decoded yet, which the caller decodes without the GIL (us_batch_decode)
    and frees: the offset map's passes read each batch once, so the views
    need not outlive the call. NULL for a batch decoded already, empty, or
    compressed (decompression needs the GIL: RecordBatch._decode)."""
    cdef us_record_view *v
    if b._views != NULL or b.h.record_count == 0:
        return NULL
    if b.h.magic == US_MAGIC and b.h.attributes & US_ATTR_COMPRESSION_MASK:
        return NULL
    v = <us_record_view *>malloc(<size_t>b.h.record_count * sizeof(us_record_view))
    if v == NULL:
        raise MemoryError("offset map: record views")
    return v


cdef class OffsetMap:
    """OffsetMap(capacity=1024)

    Key -> last offset, keys kept as 128-bit digests in one open-addressing
    table (linear probing) that doubles when half full.
    """
    cdef uint64_t *_h1
    cdef uint64_t *_h2
    cdef int64_t *_off          # -1: empty slot
    cdef size_t _cap            # a power of two
    cdef size_t _n

    def __cinit__(self, size_t capacity=1024):
        cdef size_t cap = 16
        while cap < capacity * 2:
            cap <<= 1
        if self._alloc(cap) < 0:
            raise MemoryError("offset map")

    # malloc, not PyMem_Malloc: the record loops run without the GIL (the
    # table may grow inside them), so appends in other threads go on.
    cdef int _alloc(self, size_t cap) noexcept nogil:
        self._h1 = <uint64_t *>malloc(cap * sizeof(uint64_t))
        self._h2 = <uint64_t *>malloc(cap * sizeof(uint64_t))
        self._off = <int64_t *>malloc(cap * sizeof(int64_t))
        if self._h1 == NULL or self._h2 == NULL or self._off == NULL:
            free(self._h1)
            free(self._h2)
            free(self._off)
            self._h1 = self._h2 = NULL
            self._off = NULL
            self._cap = 0
            return -1
        memset(self._off, 0xFF, cap * sizeof(int64_t))
        self._cap = cap
        self._n = 0
        return 0

    def __dealloc__(self):
        free(self._h1)
        free(self._h2)
        free(self._off)

    cdef int _grow(self) noexcept nogil:
        cdef uint64_t *h1 = self._h1
        cdef uint64_t *h2 = self._h2
        cdef int64_t *off = self._off
        cdef size_t cap = self._cap, n = self._n, i
        if self._alloc(cap * 2) < 0:
            self._h1, self._h2, self._off, self._cap, self._n = h1, h2, off, cap, n
            return -1
        for i in range(cap):
            if off[i] >= 0:
                self._insert(h1[i], h2[i], off[i])
        free(h1)
        free(h2)
        free(off)
        return 0

    cdef inline void _insert(self, uint64_t a, uint64_t b, int64_t offset) noexcept nogil:
        cdef size_t mask = self._cap - 1
        cdef size_t i = <size_t>a & mask
        while self._off[i] >= 0:
            if self._h1[i] == a and self._h2[i] == b:
                if offset > self._off[i]:
                    self._off[i] = offset
                return
            i = (i + 1) & mask
        self._h1[i] = a
        self._h2[i] = b
        self._off[i] = offset
        self._n += 1

    cdef inline int _put(self, const unsigned char *k, size_t n, int64_t offset) noexcept nogil:
        """-1 when the table could not grow (the key is in it all the same)."""
        self._insert(us_xxh64(k, n, _SEED1), us_xxh64(k, n, _SEED2), offset)
        if self._n * 2 > self._cap:
            return self._grow()
        return 0

    cdef inline int64_t _get(self, const unsigned char *k, size_t n) noexcept nogil:
        cdef uint64_t a = us_xxh64(k, n, _SEED1), b = us_xxh64(k, n, _SEED2)
        cdef size_t mask = self._cap - 1
        cdef size_t i = <size_t>a & mask
        while self._off[i] >= 0:
            if self._h1[i] == a and self._h2[i] == b:
                return self._off[i]
            i = (i + 1) & mask
        return -1

    def __len__(self):
        return self._n

    @property
    def nbytes(self):
        """Bytes the table takes."""
        return self._cap * (2 * sizeof(uint64_t) + sizeof(int64_t))

    def put(self, key, int64_t offset):
        """put(key, offset): remember ``offset`` for ``key`` if later than what is there."""
        cdef Py_buffer view
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        cdef int rc
        PyObject_GetBuffer(key, &view, PyBUF_SIMPLE)
        try:
            rc = self._put(<const unsigned char *>view.buf, <size_t>view.len, offset)
        finally:
            PyBuffer_Release(&view)
        if rc < 0:
            raise MemoryError("offset map: no memory to grow")

    def get(self, key):
        """get(key) -> int: the last offset of ``key``, or -1 when it is not in the map."""
        cdef Py_buffer view
        PyObject_GetBuffer(key, &view, PyBUF_SIMPLE)
        try:
            return self._get(<const unsigned char *>view.buf, <size_t>view.len)
        finally:
            PyBuffer_Release(&view)

    def add_batch(self, RecordBatch b):
        """add_batch(batch) -> int

        Put every keyed record of a (checked) batch; returns how many."""
        cdef Py_buffer view
        cdef const unsigned char *base
        cdef us_record_view *v
        cdef uint32_t i, n = b.h.record_count
        cdef int64_t base_offset = b.h.base_offset
        cdef us_record_view *views
        cdef int added = 0, rc = 0
        cdef us_record_view *own = _plain_views(b)
        cdef int drc = US_OK
        if own == NULL:
            b._decode()
        views = b._views if own == NULL else own
        PyObject_GetBuffer(b._mv, &view, PyBUF_SIMPLE)
        try:
            base = <const unsigned char *>view.buf + b._rel
            with nogil:
                if own != NULL:
                    drc = us_batch_decode(b._base, &b.h, own)
                    base = b._base
                    if drc != US_OK:
                        n = 0
                for i in range(n):
                    v = &views[i]
                    if v.key_len >= 0:
                        if self._put(base + v.key_pos, <size_t>v.key_len, base_offset + i) < 0:
                            rc = -1
                        added += 1
        finally:
            PyBuffer_Release(&view)
            free(own)
        if drc != US_OK:
            b._decode()   # raises the decode error, named
        if rc < 0:
            raise MemoryError("offset map: no memory to grow")
        return added

    def keep_mask(self, RecordBatch b, bint drop_tombstones):
        """keep_mask(batch, drop_tombstones) -> (mask, kept, tombstones_dropped)

        Which records of a batch compaction keeps (``mask[i]`` is 1): those
        without a key, and those whose offset is not below the map's for
        their key; with ``drop_tombstones``, not those with a null value."""
        cdef Py_buffer view
        cdef const unsigned char *base
        cdef us_record_view *v
        cdef uint32_t i, n = b.h.record_count
        cdef int64_t latest, base_offset = b.h.base_offset
        cdef Py_ssize_t kept = 0, tombs = 0
        cdef bytearray mask = bytearray(n)
        cdef unsigned char *mp = mask
        cdef us_record_view *views
        cdef us_record_view *own = _plain_views(b)
        cdef int drc = US_OK
        if own == NULL:
            b._decode()
        views = b._views if own == NULL else own
        PyObject_GetBuffer(b._mv, &view, PyBUF_SIMPLE)
        try:
            base = <const unsigned char *>view.buf + b._rel
            with nogil:
                if own != NULL:
                    drc = us_batch_decode(b._base, &b.h, own)
                    base = b._base
                    if drc != US_OK:
                        n = 0
                for i in range(n):
                    v = &views[i]
                    if v.key_len >= 0:
                        latest = self._get(base + v.key_pos, <size_t>v.key_len)
                        if latest > base_offset + i:
                            continue
                        if v.value_len < 0 and drop_tombstones:
                            tombs += 1
                            continue
                    mp[i] = 1
                    kept += 1
        finally:
            PyBuffer_Release(&view)
            free(own)
        if drc != US_OK:
            b._decode()   # raises the decode error, named
        return bytes(mask), kept, tombs


def compact_batches(Mapping m, size_t end, str topic, int partition):
    """compact_batches(mapping, end, topic, partition) -> list[RecordBatch]

    Every batch of a sealed (compacted or not) segment from position 0 to
    ``end``, control batches included, for the cleaner: each CRC-checked
    without the GIL, and not decoded (the offset map decodes them without
    the GIL, ``OffsetMap.add_batch``/``keep_mask``), so an append in another
    thread is not held up by the cleaner's reads (``read_batches`` checks
    and decodes every record holding the GIL). Offsets must grow from batch
    to batch (gaps allowed). CorruptLogError names the first damage.
    """
    cdef us_batch_header h
    cdef int rc = US_OK
    cdef size_t pos = 0, n = 0, cap = 64, bad_pos = 0
    cdef int64_t expect = -1
    cdef size_t *starts
    cdef size_t *grown
    if end > <size_t>m.length:
        raise ValueError("read past the mapping")
    starts = <size_t *>malloc(cap * sizeof(size_t))
    if starts == NULL:
        raise MemoryError("compact_batches")
    try:
        with nogil:
            while pos < end:
                rc = us_batch_check(m.ptr + pos, end - pos, &h)
                if rc == US_COMPRESSED:
                    rc = US_OK
                if rc != US_OK:
                    bad_pos = pos
                    break
                if expect >= 0 and h.base_offset < expect:
                    rc = -1
                    bad_pos = pos
                    break
                expect = h.base_offset + <int64_t>h.record_count
                if n == cap:
                    grown = <size_t *>realloc(starts, 2 * cap * sizeof(size_t))
                    if grown == NULL:
                        rc = -2
                        break
                    starts, cap = grown, 2 * cap
                starts[n] = pos
                n += 1
                pos += h.length
        if rc == -2:
            raise MemoryError("compact_batches")
        if rc == -1:
            raise _not_consecutive(bad_pos, expect)
        if rc != US_OK:
            raise _corrupt(rc, bad_pos, m.ptr + bad_pos, end - bad_pos)
        mv = m.view
        out = []
        for i in range(n):
            us_batch_parse_header(m.ptr + starts[i], end - starts[i], &h)
            out.append(make_batch(m, mv, m.ptr + starts[i], starts[i], &h, topic, partition))
        return out
    finally:
        free(starts)
