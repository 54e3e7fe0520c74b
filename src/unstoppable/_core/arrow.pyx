# cython: language_level=3
"""Arrow columns straight from record batches, and record batches straight
from Arrow columns. The public API is ``unstoppable.arrow``; this module holds
the loops, which run in C without a Python object per record.

Export (:func:`export_columns`): the record views of CRC-checked batches
(``RecordBatch._views``, positions relative to the batch start) are walked
twice without the GIL, once to size the buffers and once to fill them. Each
value is copied once, from the mapped segment into the Arrow data buffer.

Arrow layouts written (Arrow columnar format, "Physical Memory Layout"):

    column     type                       buffers
    partition  int32                      values, n x 4
    offset     int64                      values, n x 8
    timestamp  timestamp[ms]              values, n x 8
    key        binary (large_binary)      validity bitmap (bit i = row i, LSB first;
                                          dropped when no row is null), offsets
                                          (n+1) x int32 (int64), data
    value      binary (large_binary)      same
    headers    list<struct<key: string,   list offsets (n+1) x int32 into H entries;
                 value: binary>>          the struct has no validity; its key child
                                          is offsets (H+1) x int32 + data, its value
                                          child validity + offsets (H+1) x int32 + data

Ingest (:class:`ArrowSource`, :class:`ArrowEncoder`): an ArrowSource holds the
buffer addresses of the key, value, timestamp and headers arrays of a list of
Arrow record batches (and references to the arrays, which keep the memory
alive). An ArrowEncoder encodes a row range of a source into sealed batches
(csrc/batch.h) with the same C functions BatchEncoder uses, without the GIL. It
has BatchEncoder's clear/encode/nbytes/set_base_offset/view interface, so
``Partition.append_encoded`` and ``Partition.append_stream`` write its output.
"""
cimport cython
from cpython.buffer cimport PyBuffer_FillInfo
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t, INT32_MAX
from libc.stdlib cimport calloc, malloc, realloc, free
from libc.string cimport memcpy, memset
from posix.mman cimport madvise, MADV_DONTNEED

from unstoppable._core.includes.batch cimport *
from unstoppable._core.includes.crc32c cimport us_crc32c_init
from unstoppable._core.includes.hashes cimport us_xxh64, us_kafka_partition
from unstoppable._core.batch cimport RecordBatch, stamp_log_append_time
from unstoppable._core.segment cimport Mapping

from unstoppable.errors import CorruptLogError, InvalidRecordError, RecordTooLargeError

us_crc32c_init()

cdef extern from "unistd.h" nogil:
    long sysconf(int name)
    int _SC_PAGESIZE

cdef size_t PAGE = <size_t>sysconf(_SC_PAGESIZE)
cdef int64_t _TS_LIMIT = 253402300800000  # batch.MAX_TIMESTAMP + 1 (year 9999)

cdef enum:
    _P_XXH64 = 1
    _P_MURMUR2 = 2

PARTITION_XXH64 = _P_XXH64      # split() modes: the key's hash picks the partition
PARTITION_MURMUR2 = _P_MURMUR2


# ---------------------------------------------------------------------------
# Export

cdef struct _Span:                  # the rows [i0, i1) of one batch
    const unsigned char *base       # first byte of the batch
    const us_record_view *views
    int64_t base_offset
    uint8_t magic                   # batch format (how record headers are encoded)
    uint32_t i0
    uint32_t i1

cdef struct _Totals:
    int64_t rows
    int64_t key_bytes
    int64_t value_bytes
    int64_t headers                 # header entries
    int64_t hkey_bytes
    int64_t hvalue_bytes
    uint32_t max_headers            # most headers on one record

cdef struct _Out:
    int32_t *partition
    int64_t *offset
    int64_t *timestamp
    uint8_t *key_valid
    void *key_offsets
    unsigned char *key_data
    uint8_t *value_valid
    void *value_offsets
    unsigned char *value_data
    int32_t *list_offsets
    int32_t *hkey_offsets
    unsigned char *hkey_data
    uint8_t *hvalue_valid
    int32_t *hvalue_offsets
    unsigned char *hvalue_data
    int64_t key_nulls               # filled in by _fill
    int64_t value_nulls
    int64_t hvalue_nulls


cdef int _count(const _Span *spans, Py_ssize_t ns, _Totals *t, uint32_t *scratch,
                int64_t *bad_offset) noexcept nogil:
    """Sizes of every buffer. With scratch == NULL only the record-level sums
    and max_headers; with scratch (4 x max_headers u32) also the header sums."""
    cdef Py_ssize_t s
    cdef uint32_t i, j, hc
    cdef const us_record_view *v
    cdef uint32_t *kp
    cdef uint32_t *kl
    cdef uint32_t *vp
    cdef int32_t *vl
    for s in range(ns):
        for i in range(spans[s].i0, spans[s].i1):
            v = &spans[s].views[i]
            if scratch == NULL:
                t.rows += 1
                if v.key_len > 0:
                    t.key_bytes += v.key_len
                if v.value_len > 0:
                    t.value_bytes += v.value_len
                t.headers += v.header_count
                if v.header_count > t.max_headers:
                    t.max_headers = v.header_count
            elif v.header_count:
                hc = v.header_count
                kp = scratch
                kl = scratch + hc
                vp = scratch + 2 * hc
                vl = <int32_t *>(scratch + 3 * hc)
                if us_headers_decode(spans[s].base, v.headers_pos, v.end, hc, spans[s].magic,
                                     kp, kl, vp, vl) != US_OK:
                    bad_offset[0] = spans[s].base_offset + i
                    return -1
                for j in range(hc):
                    t.hkey_bytes += kl[j]
                    if vl[j] > 0:
                        t.hvalue_bytes += vl[j]
    return 0


cdef inline void _clear_bit(uint8_t *bm, int64_t i) noexcept nogil:
    bm[i >> 3] &= <uint8_t>~(1 << (i & 7))


cdef int _fill(const _Span *spans, Py_ssize_t ns, int32_t partition, _Out *o, bint large,
               uint32_t *scratch, int64_t *bad_offset) noexcept nogil:
    """Write every buffer; the bitmaps arrive all ones and nulls clear their bit."""
    cdef Py_ssize_t s
    cdef uint32_t i, j, hc
    cdef int64_t r = 0, h = 0, kpos = 0, vpos = 0, hkpos = 0, hvpos = 0
    cdef const us_record_view *v
    cdef const unsigned char *base
    cdef int64_t *k64 = <int64_t *>o.key_offsets
    cdef int32_t *k32 = <int32_t *>o.key_offsets
    cdef int64_t *v64 = <int64_t *>o.value_offsets
    cdef int32_t *v32 = <int32_t *>o.value_offsets
    cdef uint32_t *kp
    cdef uint32_t *kl
    cdef uint32_t *vp
    cdef int32_t *vl
    if large:
        k64[0] = 0
        v64[0] = 0
    else:
        k32[0] = 0
        v32[0] = 0
    o.list_offsets[0] = 0
    o.hkey_offsets[0] = 0
    o.hvalue_offsets[0] = 0
    for s in range(ns):
        base = spans[s].base
        for i in range(spans[s].i0, spans[s].i1):
            v = &spans[s].views[i]
            o.partition[r] = partition
            o.offset[r] = spans[s].base_offset + i
            o.timestamp[r] = v.timestamp
            if v.key_len < 0:
                _clear_bit(o.key_valid, r)
                o.key_nulls += 1
            elif v.key_len > 0:
                memcpy(o.key_data + kpos, base + v.key_pos, <size_t>v.key_len)
                kpos += v.key_len
            if v.value_len < 0:
                _clear_bit(o.value_valid, r)
                o.value_nulls += 1
            elif v.value_len > 0:
                memcpy(o.value_data + vpos, base + v.value_pos, <size_t>v.value_len)
                vpos += v.value_len
            if large:
                k64[r + 1] = kpos
                v64[r + 1] = vpos
            else:
                k32[r + 1] = <int32_t>kpos
                v32[r + 1] = <int32_t>vpos
            hc = v.header_count
            if hc:
                kp = scratch
                kl = scratch + hc
                vp = scratch + 2 * hc
                vl = <int32_t *>(scratch + 3 * hc)
                if us_headers_decode(base, v.headers_pos, v.end, hc, spans[s].magic,
                                     kp, kl, vp, vl) != US_OK:
                    bad_offset[0] = spans[s].base_offset + i
                    return -1
                for j in range(hc):
                    memcpy(o.hkey_data + hkpos, base + kp[j], kl[j])
                    hkpos += kl[j]
                    o.hkey_offsets[h + 1] = <int32_t>hkpos
                    if vl[j] < 0:
                        _clear_bit(o.hvalue_valid, h)
                        o.hvalue_nulls += 1
                    elif vl[j] > 0:
                        memcpy(o.hvalue_data + hvpos, base + vp[j], <size_t>vl[j])
                        hvpos += vl[j]
                    o.hvalue_offsets[h + 1] = <int32_t>hvpos
                    h += 1
            o.list_offsets[r + 1] = <int32_t>h
            r += 1
    return 0


cdef unsigned char *_wptr(object buf, Py_ssize_t need) except NULL:
    """The address of a writable buffer of at least ``need`` bytes."""
    cdef unsigned char[::1] mv = memoryview(buf).cast("B")
    if mv.shape[0] < need or need == 0:
        raise ValueError(f"allocator returned {mv.shape[0]} bytes, {need} needed")
    return &mv[0]


cdef class Columns:
    """The Arrow buffers of one exported chunk (see the module docstring).

    Each buffer is what ``alloc`` returned. ``key`` and ``value`` are
    ``(validity | None, offsets, data, null_count)``; ``header_key`` is
    ``(offsets, data)``; ``header_value`` is like ``key``.
    """
    cdef readonly int64_t rows
    cdef readonly bint large
    cdef readonly object partition
    cdef readonly object offset
    cdef readonly object timestamp
    cdef readonly tuple key
    cdef readonly tuple value
    cdef readonly int64_t header_count
    cdef readonly object header_offsets
    cdef readonly tuple header_key
    cdef readonly tuple header_value
    cdef readonly int64_t value_bytes


cdef inline Py_ssize_t _bitmap_bytes(int64_t n) noexcept nogil:
    return <Py_ssize_t>((n + 7) >> 3) if n else 1


def export_columns(list batches, int64_t start, int64_t end, int32_t partition, alloc,
                   bint large=False, bint release_pages=False):
    """export_columns(batches, start, end, partition, alloc, large=False, release_pages=False) -> Columns

    Build the Arrow buffers of the records with offsets in ``[start, end)`` of
    ``batches`` (decoded RecordBatch objects of one partition, in order).
    ``alloc(nbytes)`` returns a writable buffer (``pyarrow.allocate_buffer``).
    With ``large`` the key and value offsets are int64. With
    ``release_pages``, the pages of mapped segments that held the batches are
    dropped from this process afterwards (``MADV_DONTNEED``; the data stays in
    the page cache), so a long export's resident memory does not grow with
    the amount read.
    """
    cdef Py_ssize_t ns = 0, k, nb = len(batches)
    cdef _Span *spans
    cdef RecordBatch b
    cdef int64_t lo, hi, bad = -1
    cdef _Totals t
    cdef _Out o
    cdef uint32_t *scratch = NULL
    cdef int rc = 0
    cdef Columns c = Columns.__new__(Columns)
    cdef size_t p0, p1
    cdef int64_t limit = INT32_MAX
    cdef int64_t n, osz
    memset(&t, 0, sizeof(t))
    memset(&o, 0, sizeof(o))
    spans = <_Span *>malloc(max(nb, 1) * sizeof(_Span))
    if spans == NULL:
        raise MemoryError()
    try:
        for k in range(nb):
            b = <RecordBatch?>batches[k]
            b._check_decode()
            lo = max(start - b.h.base_offset, 0)
            hi = min(end - b.h.base_offset, <int64_t>b.h.record_count)
            if lo >= hi:
                continue
            spans[ns].base = b._base
            spans[ns].views = b._views
            spans[ns].base_offset = b.h.base_offset
            spans[ns].magic = b.h.magic
            spans[ns].i0 = <uint32_t>lo
            spans[ns].i1 = <uint32_t>hi
            ns += 1
        with nogil:
            _count(spans, ns, &t, NULL, &bad)
        if t.max_headers:
            scratch = <uint32_t *>malloc(<size_t>t.max_headers * 16)
            if scratch == NULL:
                raise MemoryError()
            with nogil:
                rc = _count(spans, ns, &t, scratch, &bad)
            if rc:
                raise CorruptLogError("record headers do not parse", partition=partition, offset=bad)
        if t.headers > limit or t.hkey_bytes > limit or t.hvalue_bytes > limit or (
                not large and (t.key_bytes > limit or t.value_bytes > limit)):
            raise ValueError(
                f"{t.rows} records with {t.value_bytes} value bytes, {t.key_bytes} key bytes and "
                f"{t.headers} headers do not fit 32-bit Arrow offsets; export smaller chunks "
                "(batch_bytes) or use large=True")
        n = t.rows
        osz = 8 if large else 4
        c.rows = n
        c.large = large
        c.value_bytes = t.value_bytes
        c.header_count = t.headers
        c.partition = alloc(max(n * 4, 1))
        c.offset = alloc(max(n * 8, 1))
        c.timestamp = alloc(max(n * 8, 1))
        kvalid = alloc(_bitmap_bytes(n))
        koffs = alloc((n + 1) * osz)
        kdata = alloc(max(t.key_bytes, 1))
        vvalid = alloc(_bitmap_bytes(n))
        voffs = alloc((n + 1) * osz)
        vdata = alloc(max(t.value_bytes, 1))
        c.header_offsets = alloc((n + 1) * 4)
        hkoffs = alloc((t.headers + 1) * 4)
        hkdata = alloc(max(t.hkey_bytes, 1))
        hvvalid = alloc(_bitmap_bytes(t.headers))
        hvoffs = alloc((t.headers + 1) * 4)
        hvdata = alloc(max(t.hvalue_bytes, 1))
        o.partition = <int32_t *>_wptr(c.partition, max(n * 4, 1))
        o.offset = <int64_t *>_wptr(c.offset, max(n * 8, 1))
        o.timestamp = <int64_t *>_wptr(c.timestamp, max(n * 8, 1))
        o.key_valid = _wptr(kvalid, _bitmap_bytes(n))
        o.key_offsets = _wptr(koffs, (n + 1) * osz)
        o.key_data = _wptr(kdata, max(t.key_bytes, 1))
        o.value_valid = _wptr(vvalid, _bitmap_bytes(n))
        o.value_offsets = _wptr(voffs, (n + 1) * osz)
        o.value_data = _wptr(vdata, max(t.value_bytes, 1))
        o.list_offsets = <int32_t *>_wptr(c.header_offsets, (n + 1) * 4)
        o.hkey_offsets = <int32_t *>_wptr(hkoffs, (t.headers + 1) * 4)
        o.hkey_data = _wptr(hkdata, max(t.hkey_bytes, 1))
        o.hvalue_valid = _wptr(hvvalid, _bitmap_bytes(t.headers))
        o.hvalue_offsets = <int32_t *>_wptr(hvoffs, (t.headers + 1) * 4)
        o.hvalue_data = _wptr(hvdata, max(t.hvalue_bytes, 1))
        with nogil:
            memset(o.key_valid, 0xff, _bitmap_bytes(n))
            memset(o.value_valid, 0xff, _bitmap_bytes(n))
            memset(o.hvalue_valid, 0xff, _bitmap_bytes(t.headers))
            rc = _fill(spans, ns, partition, &o, large, scratch, &bad)
        if rc:
            raise CorruptLogError("record headers do not parse", partition=partition, offset=bad)
        c.key = (kvalid if o.key_nulls else None, koffs, kdata, o.key_nulls)
        c.value = (vvalid if o.value_nulls else None, voffs, vdata, o.value_nulls)
        c.header_key = (hkoffs, hkdata)
        c.header_value = (hvvalid if o.hvalue_nulls else None, hvoffs, hvdata, o.hvalue_nulls)
        if release_pages:
            for k in range(nb):
                b = <RecordBatch>batches[k]
                if isinstance(b._owner, Mapping) and not (<Mapping>b._owner).writable:
                    # Only read-only shared file mappings: dropping their pages
                    # loses nothing (the next touch faults them back in from
                    # the page cache). Never done to private or anonymous memory.
                    p0 = <size_t>b._base & ~(PAGE - 1)
                    p1 = (<size_t>b._base + b.h.length + PAGE - 1) & ~(PAGE - 1)
                    madvise(<void *>p0, p1 - p0, MADV_DONTNEED)
    finally:
        free(spans)
        free(scratch)
    return c


# ---------------------------------------------------------------------------
# Ingest

cdef struct _Bin:                   # one binary/string array
    const uint8_t *valid            # NULL: no nulls
    int64_t bit0                    # the array's offset (bit of its row 0)
    const void *offsets             # advanced to row 0
    const unsigned char *data
    bint large                      # int64 offsets
    bint present                    # False: the column is absent (all null)

cdef struct _Seg:                   # the columns of one Arrow record batch
    int64_t row0                    # global index of its row 0
    int64_t rows
    _Bin key
    _Bin value
    const int64_t *ts               # NULL: no timestamp column
    const uint8_t *ts_valid
    int64_t ts_bit0
    int64_t ts_mul                  # ms = raw * ts_mul / ts_div
    int64_t ts_div
    const int32_t *h_offsets        # NULL: no headers column; advanced to row 0
    const uint8_t *h_valid          # list validity (a null list = no headers)
    int64_t h_bit0
    const uint8_t *h_entry_valid    # struct validity of the entries (indexed by entry)
    int64_t h_entry_bit0
    _Bin hkey
    _Bin hvalue


cdef inline bint _valid(const uint8_t *bm, int64_t i) noexcept nogil:
    return bm == NULL or (bm[i >> 3] >> (i & 7)) & 1


cdef inline int64_t _bin_get(const _Bin *c, int64_t i, const unsigned char **ptr) noexcept nogil:
    """Length of element i (-1 = null) and its address in ptr."""
    cdef int64_t s, e
    if not c.present or not _valid(c.valid, c.bit0 + i):
        ptr[0] = NULL
        return -1
    if c.large:
        s = (<const int64_t *>c.offsets)[i]
        e = (<const int64_t *>c.offsets)[i + 1]
    else:
        s = (<const int32_t *>c.offsets)[i]
        e = (<const int32_t *>c.offsets)[i + 1]
    ptr[0] = c.data + s
    return e - s


cdef size_t _address(object buf):
    return 0 if buf is None else <size_t>buf.address


cdef int _bin_from(_Bin *c, object arr, bint large) except -1:
    """Fill c from a pyarrow binary/string array (or None: absent)."""
    memset(c, 0, sizeof(_Bin))
    if arr is None:
        return 0
    bufs = arr.buffers()
    c.present = True
    c.large = large
    c.bit0 = arr.offset
    c.valid = <const uint8_t *>_address(bufs[0]) if arr.null_count else NULL
    c.offsets = <const void *>(_address(bufs[1]) + <size_t>arr.offset * (8 if large else 4))
    c.data = <const unsigned char *>_address(bufs[2])
    return 0


cdef class _Segments:
    """The column descriptors of all batches of a source (shared by its selections)."""
    cdef _Seg *segs
    cdef Py_ssize_t n
    cdef int64_t rows
    cdef list keep                  # the arrays whose memory the descriptors point into

    def __dealloc__(self):
        free(self.segs)


cdef class ArrowSource:
    """ArrowSource()

    Rows to ingest: the columns of a sequence of Arrow record batches, added
    with :meth:`add`, optionally narrowed to a selection of row numbers (see
    :meth:`split`). ``len()`` is the row count; slicing gives the row ranges an
    :class:`ArrowEncoder` encodes.
    """
    cdef _Segments s
    cdef object sel_obj             # bytes-like of int64 row numbers, or None (all rows)
    cdef const int64_t *sel
    cdef int64_t n

    def __cinit__(self):
        self.s = _Segments()
        self.s.keep = []

    def add(self, int64_t rows, value, key=None, bint value_large=False, bint key_large=False,
            timestamp=None, int64_t ts_mul=1, int64_t ts_div=1,
            headers=None, header_key=None, header_value=None,
            bint hkey_large=False, bint hvalue_large=False):
        """add(rows, value, key=None, value_large=False, key_large=False, timestamp=None, ts_mul=1, ts_div=1, headers=None, header_key=None, header_value=None, hkey_large=False, hvalue_large=False)

        Add one record batch's arrays (pyarrow arrays of ``rows`` rows; the
        caller checked their types). ``value``/``key``: binary or string
        arrays. ``timestamp``: an int64-backed array, converted to ms as
        ``raw * ts_mul // ts_div``. ``headers``: a list (or map) array with int32
        offsets whose entries are a struct with ``header_key`` (string) and
        ``header_value`` (binary) children (the flattened child arrays).
        """
        cdef _Seg *g
        cdef _Seg *ns
        if self.sel_obj is not None:
            raise ValueError("cannot add to a selection of a source")
        ns = <_Seg *>realloc(self.s.segs, (self.s.n + 1) * sizeof(_Seg))
        if ns == NULL:
            raise MemoryError()
        self.s.segs = ns
        g = &ns[self.s.n]
        memset(g, 0, sizeof(_Seg))
        g.row0 = self.s.rows
        g.rows = rows
        _bin_from(&g.value, value, value_large)
        _bin_from(&g.key, key, key_large)
        if timestamp is not None:
            bufs = timestamp.buffers()
            g.ts = <const int64_t *>(_address(bufs[1]) + <size_t>timestamp.offset * 8)
            g.ts_valid = <const uint8_t *>_address(bufs[0]) if timestamp.null_count else NULL
            g.ts_bit0 = timestamp.offset
            g.ts_mul = ts_mul
            g.ts_div = ts_div
        if headers is not None:
            bufs = headers.buffers()
            g.h_offsets = <const int32_t *>(_address(bufs[1]) + <size_t>headers.offset * 4)
            g.h_valid = <const uint8_t *>_address(bufs[0]) if headers.null_count else NULL
            g.h_bit0 = headers.offset
            entries = headers.values
            ebufs = entries.buffers()
            g.h_entry_valid = <const uint8_t *>_address(ebufs[0]) if entries.null_count else NULL
            g.h_entry_bit0 = entries.offset
            _bin_from(&g.hkey, header_key, hkey_large)
            _bin_from(&g.hvalue, header_value, hvalue_large)
            self.s.keep.append((headers, header_key, header_value))
        self.s.keep.append((value, key, timestamp))
        self.s.n += 1
        self.s.rows += rows
        self.n = self.s.rows

    def __len__(self):
        return self.n

    def __getitem__(self, object item):
        cdef Py_ssize_t lo, hi, step
        if not isinstance(item, slice):
            raise TypeError("an ArrowSource is sliced into row ranges, not indexed")
        lo, hi, step = item.indices(self.n)
        if step != 1:
            raise ValueError("row ranges have step 1")
        return Rows(self, lo, max(lo, hi))

    @cython.cdivision(True)  # n > 0 is checked first
    def split(self, int n, int mode=0, partitions=None):
        """split(n, mode=0, partitions=None) -> list[ArrowSource | None]

        The rows of each of ``n`` partitions, in their original order; None
        where a partition gets no row. ``partitions`` is an int64 array (one
        partition number per row, checked against ``n``), or ``mode`` picks a
        hash of the key: PARTITION_XXH64 (the Producer's default) or
        PARTITION_MURMUR2 (Kafka's). Rows without a key go round-robin.
        """
        cdef int32_t *pid
        cdef int64_t *counts
        cdef int64_t *starts
        cdef const int64_t *given = NULL
        cdef int64_t r, i, g, nul = 0, bad_row = -1, bad_val = 0, pv
        cdef Py_ssize_t sg = 0
        cdef const unsigned char *kp
        cdef int64_t kl
        cdef const _Seg *seg
        cdef int64_t[::1] out
        cdef int64_t *outp
        cdef ArrowSource part
        if n <= 0:
            raise ValueError(f"partition count must be positive, got {n}")
        if self.sel_obj is not None:
            raise ValueError("split a whole source, not a selection")
        if partitions is not None:
            if len(partitions) != self.n:
                raise ValueError(f"{len(partitions)} partition numbers for {self.n} rows")
            if partitions.null_count:
                raise ValueError("the partition column has nulls")
            bufs = partitions.buffers()
            given = <const int64_t *>(_address(bufs[1]) + <size_t>partitions.offset * 8)
        elif mode != _P_XXH64 and mode != _P_MURMUR2:
            raise ValueError(f"unknown partitioning mode {mode}")
        pid = <int32_t *>malloc(max(self.n, 1) * sizeof(int32_t))
        counts = <int64_t *>calloc(n + 1, sizeof(int64_t))
        if pid == NULL or counts == NULL:
            free(pid)
            free(counts)
            raise MemoryError()
        starts = NULL
        try:
            with nogil:
                for r in range(self.n):
                    if given != NULL:
                        pv = given[r]
                        if pv < 0 or pv >= n:
                            bad_row = r
                            bad_val = pv
                            break
                    else:
                        while r >= self.s.segs[sg].row0 + self.s.segs[sg].rows:
                            sg += 1
                        seg = &self.s.segs[sg]
                        kl = _bin_get(&seg.key, r - seg.row0, &kp)
                        if kl < 0:
                            pv = nul % n
                            nul += 1
                        elif mode == _P_XXH64:
                            pv = <int64_t>(us_xxh64(kp, <size_t>kl, 0) % <uint64_t>n)
                        else:
                            pv = us_kafka_partition(kp, <size_t>kl, <uint32_t>n)
                    pid[r] = <int32_t>pv
                    counts[pv + 1] += 1
            if bad_row >= 0:
                raise ValueError(
                    f"row {bad_row}: partition {bad_val} is outside 0 .. {n - 1}")
            for g in range(n):
                counts[g + 1] += counts[g]
            sel = bytearray((self.n or 1) * 8)
            out = memoryview(sel).cast("q")
            outp = &out[0]
            starts = <int64_t *>malloc((n + 1) * sizeof(int64_t))
            if starts == NULL:
                raise MemoryError()
            memcpy(starts, counts, (n + 1) * sizeof(int64_t))
            with nogil:
                for r in range(self.n):
                    i = starts[pid[r]]
                    outp[i] = r
                    starts[pid[r]] = i + 1
            result = []
            for g in range(n):
                if counts[g + 1] == counts[g]:
                    result.append(None)
                    continue
                part = ArrowSource.__new__(ArrowSource)
                part.s = self.s
                part.sel_obj = sel
                part.sel = outp + counts[g]
                part.n = counts[g + 1] - counts[g]
                result.append(part)
            return result
        finally:
            free(pid)
            free(counts)
            free(starts)


cdef class Rows:
    """Rows(source, start, stop)

    The rows ``[start, stop)`` of an :class:`ArrowSource` (positions in its
    selection when it has one)."""
    cdef readonly ArrowSource source
    cdef readonly int64_t start
    cdef readonly int64_t stop

    def __cinit__(self, ArrowSource source, int64_t start, int64_t stop):
        if not 0 <= start <= stop <= source.n:
            raise IndexError(f"rows {start}..{stop} outside 0..{source.n}")
        self.source = source
        self.start = start
        self.stop = stop

    def __len__(self):
        return self.stop - self.start


cdef enum:
    _E_TIMESTAMP = 1
    _E_TOO_LARGE = 2
    _E_HEADER_KEY = 3
    _E_HEADER_ENTRY = 4
    _E_NOMEM = 5

cdef struct _Err:
    int code
    int64_t row
    int64_t value


cdef class ArrowEncoder:
    """ArrowEncoder(max_batch_bytes=1 MiB, max_record_bytes=1 MiB)

    Encodes rows of an :class:`ArrowSource` into sealed batches in a reusable
    buffer, as :class:`~unstoppable._core.batch.BatchEncoder` does for Python
    records (same splitting at ``max_batch_bytes``, same ``max_record_bytes``
    limit). The loop runs in C without the GIL.
    """
    cdef unsigned char *buf
    cdef size_t cap
    cdef size_t size
    cdef unsigned char *hbuf         # scratch for one record's encoded headers
    cdef size_t hcap
    cdef readonly size_t max_batch_bytes
    cdef readonly size_t max_record_bytes
    cdef readonly uint32_t records
    cdef readonly uint32_t batches
    cdef readonly int64_t max_timestamp
    cdef readonly int64_t first_timestamp
    cdef int exports

    def __cinit__(self, size_t max_batch_bytes=1 << 20, size_t max_record_bytes=1 << 20):
        if max_batch_bytes < US_BATCH_HEADER_SIZE + 16 or max_batch_bytes > US_BATCH_MAX_LENGTH:
            raise ValueError(f"max_batch_bytes must be in {US_BATCH_HEADER_SIZE + 16} .. "
                             f"{US_BATCH_MAX_LENGTH}, got {max_batch_bytes}")
        self.max_batch_bytes = max_batch_bytes
        self.max_record_bytes = max_record_bytes
        self.max_timestamp = -1
        self.first_timestamp = -1

    def __dealloc__(self):
        free(self.buf)
        free(self.hbuf)

    @property
    def nbytes(self):
        return self.size

    def clear(self):
        """Forget the encoded bytes, keep the buffer."""
        if self.exports:
            raise BufferError("the encoded bytes are still being viewed; release the view first")
        self.size = 0
        self.records = 0
        self.batches = 0
        self.max_timestamp = -1
        self.first_timestamp = -1

    def view(self):
        """A memoryview of the encoded batches (valid until the next encode/clear)."""
        if self.size == 0:
            return memoryview(b"")
        return memoryview(_EncView(self))

    def set_base_offset(self, int64_t base_offset):
        """set_base_offset(base_offset) -> int

        Give the encoded batches consecutive offsets starting at ``base_offset``;
        return the offset after the last record.
        """
        cdef size_t pos = 0
        cdef int64_t off = base_offset
        while pos < self.size:
            us_batch_set_base_offset(self.buf + pos, off)
            off += us_batch_record_count(self.buf + pos)
            pos += us_batch_total_length(self.buf + pos)
        return off

    def set_log_append_time(self, int64_t timestamp):
        """set_log_append_time(timestamp)

        Make every encoded batch a LogAppendTime batch appended at
        ``timestamp`` (ms), as ``BatchEncoder.set_log_append_time`` does.
        """
        stamp_log_append_time(self.buf, self.size, self.exports, timestamp)
        self.max_timestamp = timestamp

    cdef int _reserve(self, size_t extra) noexcept nogil:
        cdef size_t need = self.size + extra
        cdef size_t cap
        cdef unsigned char *nb
        if need <= self.cap:
            return 0
        cap = self.cap * 2 if self.cap else 1 << 20
        while cap < need:
            cap *= 2
        nb = <unsigned char *>realloc(self.buf, cap)
        if nb == NULL:
            return -1
        self.buf = nb
        self.cap = cap
        return 0

    cdef int _hreserve(self, size_t need) noexcept nogil:
        cdef unsigned char *nb
        if need <= self.hcap:
            return 0
        nb = <unsigned char *>realloc(self.hbuf, need * 2)
        if nb == NULL:
            return -1
        self.hbuf = nb
        self.hcap = need * 2
        return 0

    cdef void _close_batch(self, size_t start, uint32_t count, us_batch_header *h) noexcept nogil:
        h.record_count = count
        h.base_offset = 0
        h.base_sequence = -1
        us_batch_write_header(self.buf + start, h)
        us_batch_seal(self.buf + start, <uint32_t>(self.size - start))
        self.records += count
        self.batches += 1
        if self.batches == 1 or h.max_timestamp > self.max_timestamp:
            self.max_timestamp = h.max_timestamp
        if self.batches == 1:
            self.first_timestamp = h.first_timestamp

    @cython.cdivision(True)  # every operand is checked non-negative first
    cdef int _encode(self, ArrowSource src, int64_t lo, int64_t hi, int64_t default_ts,
                     _Err *err) noexcept nogil:
        cdef _Seg *segs = src.s.segs
        cdef Py_ssize_t sg = 0
        cdef const _Seg *g
        cdef int64_t k, r, i, ts, raw, kl, vl, hl, vhl, e0, e1, e
        cdef const unsigned char *kp
        cdef const unsigned char *vp
        cdef const unsigned char *hkp
        cdef const unsigned char *hvp
        cdef size_t headers_len, rec_size, batch_start = 0
        cdef uint32_t count = 0, header_count
        cdef us_batch_header h
        cdef unsigned char *w
        memset(&h, 0, sizeof(h))
        h.producer_id = -1
        h.producer_epoch = -1
        for k in range(lo, hi):
            r = src.sel[k] if src.sel != NULL else k
            while r >= segs[sg].row0 + segs[sg].rows:
                sg += 1
            g = &segs[sg]
            i = r - g.row0
            kl = _bin_get(&g.key, i, &kp)
            vl = _bin_get(&g.value, i, &vp)
            ts = default_ts
            if g.ts != NULL and _valid(g.ts_valid, g.ts_bit0 + i):
                raw = g.ts[i]
                # Checked before the multiplication, which must not overflow.
                if raw < 0 or (g.ts_mul > 1 and raw >= _TS_LIMIT / g.ts_mul) or \
                        raw / g.ts_div * g.ts_mul >= _TS_LIMIT:
                    err.code = _E_TIMESTAMP
                    err.row = r
                    err.value = raw
                    return -1
                ts = raw * g.ts_mul / g.ts_div
            headers_len = 0
            header_count = 0
            if g.h_offsets != NULL and _valid(g.h_valid, g.h_bit0 + i):
                e0 = g.h_offsets[i]
                e1 = g.h_offsets[i + 1]
                for e in range(e0, e1):
                    if not _valid(g.h_entry_valid, g.h_entry_bit0 + e):
                        err.code = _E_HEADER_ENTRY
                        err.row = r
                        return -1
                    hl = _bin_get(&g.hkey, e, &hkp)
                    if hl < 0:
                        err.code = _E_HEADER_KEY
                        err.row = r
                        return -1
                    headers_len += us_header_size(<size_t>hl, _bin_get(&g.hvalue, e, &hvp))
                if self._hreserve(headers_len) < 0:
                    err.code = _E_NOMEM
                    return -1
                w = self.hbuf
                for e in range(e0, e1):
                    hl = _bin_get(&g.hkey, e, &hkp)
                    vhl = _bin_get(&g.hvalue, e, &hvp)
                    w = us_write_header(w, hkp, <size_t>hl, hvp, vhl)
                header_count = <uint32_t>(e1 - e0)
            if count == 0:
                h.first_timestamp = ts
                h.max_timestamp = ts
            rec_size = us_record_size(ts - h.first_timestamp, count, kl, vl, headers_len, header_count)
            if rec_size > self.max_record_bytes:
                err.code = _E_TOO_LARGE
                err.row = r
                err.value = <int64_t>rec_size
                return -1
            if count and (self.size - batch_start) + rec_size > self.max_batch_bytes:
                self._close_batch(batch_start, count, &h)
                count = 0
                h.first_timestamp = ts
                h.max_timestamp = ts
                rec_size = us_record_size(0, 0, kl, vl, headers_len, header_count)
            if count == 0:
                if self._reserve(US_BATCH_HEADER_SIZE) < 0:
                    err.code = _E_NOMEM
                    return -1
                batch_start = self.size
                self.size += US_BATCH_HEADER_SIZE
            if self._reserve(rec_size) < 0:
                err.code = _E_NOMEM
                return -1
            us_write_record(self.buf + self.size, ts - h.first_timestamp, count, kp, kl, vp, vl,
                            self.hbuf, headers_len, header_count)
            self.size += rec_size
            if ts > h.max_timestamp:
                h.max_timestamp = ts
            count += 1
        if count:
            self._close_batch(batch_start, count, &h)
        return 0

    def encode(self, Rows rows, int64_t timestamp):
        """encode(rows, timestamp) -> int

        Append ``rows`` (a slice of an ArrowSource), as batches, to the
        buffer; return how many were encoded. ``timestamp`` (ms) is used for
        rows without their own. On an error nothing of this call stays.
        """
        cdef size_t start_size = self.size
        cdef uint32_t start_records = self.records, start_batches = self.batches
        cdef int64_t start_max = self.max_timestamp, start_first = self.first_timestamp
        cdef _Err err
        cdef int rc
        cdef ArrowSource src = rows.source
        if self.exports:
            raise BufferError("the encoded bytes are still being viewed; release the view first")
        if not (0 <= timestamp < _TS_LIMIT):
            raise InvalidRecordError(f"timestamp {timestamp} is outside 0 .. 253402300799999 ms (9999-12-31T23:59:59.999Z, the last time Arrow and Python datetimes convert)")
        err.code = 0
        err.row = -1
        err.value = 0
        with nogil:
            rc = self._encode(src, rows.start, rows.stop, timestamp, &err)
        if rc == 0:
            return rows.stop - rows.start
        self.size = start_size
        self.records = start_records
        self.batches = start_batches
        self.max_timestamp = start_max
        self.first_timestamp = start_first
        if err.code == _E_TIMESTAMP:
            raise InvalidRecordError(
                f"row {err.row}: timestamp {err.value} (in the column's unit) is outside "
                "0 .. 253402300799999 ms (9999-12-31T23:59:59.999Z, the last time Arrow and Python datetimes convert)")
        if err.code == _E_TOO_LARGE:
            raise RecordTooLargeError(
                f"row {err.row} encodes to {err.value} bytes, more than max_record_bytes="
                f"{self.max_record_bytes}")
        if err.code == _E_HEADER_KEY:
            raise InvalidRecordError(f"row {err.row}: a header key is null")
        if err.code == _E_HEADER_ENTRY:
            raise InvalidRecordError(f"row {err.row}: a header entry is null")
        raise MemoryError()


cdef class _EncView:
    """Exports an ArrowEncoder's bytes through the buffer protocol."""
    cdef ArrowEncoder enc

    def __cinit__(self, ArrowEncoder enc):
        self.enc = enc

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        PyBuffer_FillInfo(buffer, self, self.enc.buf, self.enc.size, 1, flags)
        self.enc.exports += 1

    def __releasebuffer__(self, Py_buffer *buffer):
        self.enc.exports -= 1
