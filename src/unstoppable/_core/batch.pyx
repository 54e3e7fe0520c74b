# cython: language_level=3
"""Record batch codec: encode records into batches, decode batches into records.

The layout is defined in csrc/batch.h (and docs/FORMAT.md): every batch written
is a Kafka RecordBatch v2, header big-endian:

    offset size  field
    0      8     baseOffset           i64  (outside the CRC)
    8      4     batchLength          i32  bytes after this field
    12     4     partitionLeaderEpoch i32  0 (outside the CRC)
    16     1     magic                i8   2 (1 = the earlier format, still read)
    17     4     crc                  u32  CRC-32C of bytes [21, end)
    21     2     attributes           i16  compression, timestamp type, transactional, control
    23     4     lastOffsetDelta      i32
    27     8     baseTimestamp        i64
    35     8     maxTimestamp         i64
    43     8     producerId           i64
    51     2     producerEpoch        i16
    53     4     baseSequence         i32
    57     4     records count        i32
    61     ...   records (zigzag varints; compressed as one block when attributes say so)

Records read back are zero-copy: ``Record.key`` and ``Record.value`` are
memoryviews over the memory that holds the batch (a mapped segment file).
"""
cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyObject_CheckBuffer, PyBuffer_FillInfo
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_CheckExact, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_Check, PyUnicode_DecodeUTF8
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_SIZE, PyTuple_GET_ITEM
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF, PyObject
from cpython.sequence cimport PySequence_GetSlice
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from libc.stdint cimport int16_t, int32_t, int64_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from unstoppable._core.includes.batch cimport *
from unstoppable._core.includes.crc32c cimport us_crc32c_init

from unstoppable.errors import (
    InvalidRecordError, InvalidTimestampError, RecordTooLargeError, corrupt_from_code,
    CorruptLogError)
from unstoppable import compression as _compression

us_crc32c_init()

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object, Py_ssize_t *) except NULL
    # Borrowed-pointer forms, for the encoder's loop over a list of bytes:
    # no reference-count writes into a million scattered objects.
    PyObject **PySequence_Fast_ITEMS(object)
    Py_ssize_t PySequence_Fast_GET_SIZE(object)
    bint _bytes_exact "PyBytes_CheckExact"(PyObject *)
    char *_bytes_ptr "PyBytes_AS_STRING"(PyObject *)
    Py_ssize_t _bytes_len "PyBytes_GET_SIZE"(PyObject *)

HEADER_SIZE = US_BATCH_HEADER_SIZE
# Upper bounds of one record's encoded size beyond its key, value and header
# bytes (csrc/batch.h): any record, and one without key or headers.
RECORD_MAX_OVERHEAD = US_RECORD_MAX_OVERHEAD
RECORD_MAX_OVERHEAD_PLAIN = US_RECORD_MAX_OVERHEAD_PLAIN
MAGIC = US_MAGIC
MAGIC_V1 = US_MAGIC_V1
HEADER_SIZE_V1 = US_BATCH_HEADER_SIZE_V1
COMPRESSION_MASK = US_ATTR_COMPRESSION_MASK
TRANSACTIONAL = US_ATTR_TRANSACTIONAL
CONTROL = US_ATTR_CONTROL
# The last millisecond of the year 9999: the largest timestamp that Arrow
# exports and Python datetimes convert (datetime.max). Appends refuse larger
# ones, so everything in a log exports and converts.
MAX_TIMESTAMP = 253402300799999

cdef object _UNSET = object()
cdef int64_t _TS_LIMIT = 253402300800000  # MAX_TIMESTAMP + 1


def _timestamp_error(int64_t ts, uint32_t batch, uint32_t record, int64_t lo, int64_t hi,
                     size_t position):
    return InvalidTimestampError(
        f"timestamp {ts} of record {record} of batch {batch} is out of range: the timestamp "
        f"should be within [{lo}, {hi}] ms (at byte {position} of the data)")


cdef inline int64_t _as_timestamp(object ts, int64_t default, Py_ssize_t i) except? -1:
    cdef int64_t v
    if ts is None:
        return default
    try:
        v = ts
    except (TypeError, OverflowError):
        raise InvalidRecordError(
            f"record {i}: timestamp must be an int of milliseconds since the epoch, got {ts!r}")
    if v < 0 or v >= _TS_LIMIT:
        raise InvalidRecordError(f"record {i}: timestamp {v} is outside 0 .. 253402300799999 ms (9999-12-31T23:59:59.999Z, the last time Arrow and Python datetimes convert)")
    return v


# ---------------------------------------------------------------------------
# Reading

@cython.freelist(256)
@cython.no_gc  # fields are memoryview/str/bytes/list of tuples of str+bytes: no cycles possible
cdef class Record:
    """One record read from the log.

    ``key`` and ``value`` are read-only memoryviews over the mapped segment (no
    copy) or None; ``headers`` is a list of ``(str, bytes | None)``. Keep
    ``bytes(record.value)`` if you need the bytes beyond the log's lifetime;
    the view itself keeps the mapping alive.
    """

    def __init__(self):
        raise TypeError("Record objects are created by reads from the log")

    @property
    def key(self):
        """The key as a memoryview, or None."""
        if self._key is _UNSET:
            self._key = None if self._key_len < 0 else PySequence_GetSlice(
                self._mv, self._key_pos, self._key_pos + self._key_len)
        return self._key

    @property
    def value(self):
        """The value as a memoryview, or None."""
        if self._value is _UNSET:
            self._value = None if self._value_len < 0 else PySequence_GetSlice(
                self._mv, self._value_pos, self._value_pos + self._value_len)
        return self._value

    @property
    def headers(self):
        """A list of ``(key: str, value: bytes | None)`` pairs, in stored order."""
        cdef uint32_t j, n = self._header_count
        cdef Py_buffer view
        cdef uint32_t *kp
        cdef uint32_t *kl
        cdef uint32_t *vp
        cdef int32_t *vl
        cdef const unsigned char *base
        if self._headers is not _UNSET:
            return self._headers
        if n == 0:
            return []  # not cached: an empty list per access beats one per record read
        out = []
        if n:
            PyObject_GetBuffer(self._mv, &view, PyBUF_SIMPLE)
            kp = <uint32_t *>PyMem_Malloc(n * 16)
            if kp == NULL:
                PyBuffer_Release(&view)
                raise MemoryError()
            kl = kp + n
            vp = kp + 2 * n
            vl = <int32_t *>(kp + 3 * n)
            try:
                base = <const unsigned char *>view.buf
                if us_headers_decode(base, self._headers_pos, self._end, n, self._magic,
                                     kp, kl, vp, vl) != US_OK:
                    raise CorruptLogError("record headers do not parse", offset=self.offset)
                for j in range(n):
                    k = PyUnicode_DecodeUTF8(<const char *>base + kp[j], kl[j], "surrogateescape")
                    v = None if vl[j] < 0 else PyBytes_FromStringAndSize(<const char *>base + vp[j], vl[j])
                    out.append((k, v))
            finally:
                PyMem_Free(kp)
                PyBuffer_Release(&view)
        self._headers = out
        return out

    def __repr__(self):
        v = self.value
        shown = bytes(v[:32]) if v is not None else None
        more = "..." if v is not None and len(v) > 32 else ""
        return (f"Record(topic={self.topic!r}, partition={self.partition}, offset={self.offset}, "
                f"timestamp={self.timestamp}, key={None if self.key is None else bytes(self.key)!r}, "
                f"value={shown!r}{more})")

    def __reduce__(self):
        raise TypeError("Record views cannot be pickled; copy the fields you need")


# Record-view arrays (40 bytes per record) are recycled through a small LIFO
# cache instead of going back to malloc: arrays of a 10k-record batch are over
# glibc's mmap threshold, so a process that had not raised it got fresh,
# zero-filled pages for every batch it read (measured: 7,338 page faults and
# 34 ms per 1M-record scan, against 0 and 18.5 ms with the arrays reused).
cdef enum:
    _VIEW_CACHE_SLOTS = 8
    _VIEW_CACHE_MAX_BYTES = 8 * 1024 * 1024
    _VIEW_HEADER = 16       # bytes before the array: its capacity (keeps 16-byte alignment)
cdef void *_vc_ptr[_VIEW_CACHE_SLOTS]
cdef size_t _vc_cap[_VIEW_CACHE_SLOTS]
cdef int _vc_n = 0


cdef us_record_view *_views_alloc(uint32_t n) except NULL:
    global _vc_n
    cdef size_t need = <size_t>n * sizeof(us_record_view)
    cdef size_t cap = 4096
    cdef int j
    cdef char *blk
    j = _vc_n - 1
    while j >= 0:
        if _vc_cap[j] >= need:
            blk = <char *>_vc_ptr[j]
            _vc_n -= 1
            _vc_ptr[j] = _vc_ptr[_vc_n]
            _vc_cap[j] = _vc_cap[_vc_n]
            return <us_record_view *>(blk + _VIEW_HEADER)
        j -= 1
    while cap < need:
        cap <<= 1
    blk = <char *>PyMem_Malloc(cap + _VIEW_HEADER)
    if blk == NULL:
        raise MemoryError()
    (<size_t *>blk)[0] = cap
    return <us_record_view *>(blk + _VIEW_HEADER)


cdef void _views_free(us_record_view *v) noexcept:
    global _vc_n
    cdef char *blk = (<char *>v) - _VIEW_HEADER
    cdef size_t cap = (<size_t *>blk)[0]
    if cap <= _VIEW_CACHE_MAX_BYTES and _vc_n < _VIEW_CACHE_SLOTS:
        _vc_ptr[_vc_n] = blk
        _vc_cap[_vc_n] = cap
        _vc_n += 1
    else:
        PyMem_Free(blk)


cdef RecordBatch make_batch(object owner, object mv, const unsigned char *base, size_t position,
                            const us_batch_header *h, str topic, int partition):
    cdef RecordBatch b = RecordBatch.__new__(RecordBatch)
    b._owner = owner
    b._mv = mv
    b._base = base
    b.position = position
    b._rel = position
    b.h = h[0]
    b.topic = topic
    b.partition = partition
    return b


@cython.no_gc  # holds only the mapping and its memoryview: no cycles possible
cdef class RecordBatch:
    """A checked (CRC-verified) batch read from the log; its records decode on demand."""

    def __init__(self):
        raise TypeError("RecordBatch objects are created by reads from the log")

    def __dealloc__(self):
        if self._views != NULL:
            _views_free(self._views)

    cdef int _decode(self) except -1:
        cdef int rc
        if self._views != NULL:
            return 0
        if self.h.attributes & US_ATTR_COMPRESSION_MASK and self.h.magic == US_MAGIC:
            return self._decompress()
        self._views = _views_alloc(self.h.record_count)
        rc = us_batch_decode(self._base, &self.h, self._views)
        if rc != US_OK:
            _views_free(self._views)
            self._views = NULL
            raise corrupt_from_code(rc, topic=self.topic, partition=self.partition,
                                    position=self.position, offset=self.h.base_offset)
        return 0

    cdef int _decompress(self) except -1:
        """Decompress a checked batch's records and decode the views over
        them: records of a compressed batch are (read-only) views of the
        decompressed block, which the batch holds, instead of the mapping."""
        cdef int rc
        cdef Py_buffer view
        cdef size_t hs = US_BATCH_HEADER_SIZE
        cdef us_record_view *views
        where = dict(topic=self.topic, partition=self.partition, position=self.position,
                     offset=self.h.base_offset)
        data = _compression.decompress(
            self.h.attributes & US_ATTR_COMPRESSION_MASK,
            self._mv[self._rel + hs:self._rel + self.h.length], **where)
        mv = memoryview(data).toreadonly()
        if <uint64_t>self.h.record_count * US_RECORD_MIN_SIZE > <uint64_t>len(mv) or \
                <uint64_t>len(mv) > US_BATCH_MAX_LENGTH:
            raise CorruptLogError(
                f"compressed batch of {self.h.record_count} records decompresses to "
                f"{len(mv)} bytes, too few for its records", **where)
        PyObject_GetBuffer(mv, &view, PyBUF_SIMPLE)
        try:
            views = _views_alloc(self.h.record_count)
            rc = us_records_decode(<const unsigned char *>view.buf, view.len, &self.h, views)
            if rc != US_OK:
                _views_free(views)
                raise CorruptLogError("records of the decompressed batch do not parse "
                                      "(or disagree with its record count)", **where)
            self._views = views
            # The memoryview keeps the block exported (so it cannot move)
            # for as long as the batch and its records hold it.
            self._base = <const unsigned char *>view.buf
        finally:
            PyBuffer_Release(&view)
        self._owner = data
        self._mv = mv
        self._rel = 0
        return 0

    cdef int _check_decode(self) except -1:
        """CRC check and decode in one pass over memory (a freshly read batch)."""
        cdef int rc
        cdef us_batch_header h2
        cdef uint32_t hs = us_batch_header_size(self.h.magic)
        cdef uint32_t minrec = 5 if self.h.magic == US_MAGIC_V1 else US_RECORD_MIN_SIZE
        if self._views != NULL:
            return 0
        if self.h.magic == US_MAGIC and self.h.attributes & US_ATTR_COMPRESSION_MASK:
            rc = us_batch_check(self._base, self.h.length, &h2)
            if rc != US_COMPRESSED:
                raise corrupt_from_code(rc if rc != US_OK else US_BAD_ATTRIBUTES, topic=self.topic,
                                        partition=self.partition, position=self.position,
                                        offset=self.h.base_offset)
            return self._decompress()
        if self.h.record_count == 0 or \
                <uint64_t>self.h.record_count * minrec > self.h.length - hs:
            rc = us_batch_check(self._base, self.h.length, &h2)
            raise corrupt_from_code(rc if rc != US_OK else US_BAD_RECORDS, topic=self.topic,
                                    partition=self.partition, position=self.position,
                                    offset=self.h.base_offset)
        self._views = _views_alloc(self.h.record_count)
        rc = us_batch_check_decode(self._base, self.h.length, &h2, self._views)
        if rc != US_OK:
            _views_free(self._views)
            self._views = NULL
            raise corrupt_from_code(rc, topic=self.topic, partition=self.partition,
                                    position=self.position, offset=self.h.base_offset)
        return 0

    cdef Record _record(self, uint32_t i):
        cdef us_record_view *v = &self._views[i]
        cdef Record r = Record.__new__(Record)
        r._mv = self._mv
        r._key_pos = <uint32_t>(self._rel + v.key_pos)
        r._key_len = v.key_len
        r._value_pos = <uint32_t>(self._rel + v.value_pos)
        r._value_len = v.value_len
        r._headers_pos = <uint32_t>(self._rel + v.headers_pos)
        r._header_count = v.header_count
        r._end = <uint32_t>(self._rel + v.end)
        r._magic = self.h.magic
        r._key = _UNSET
        r._value = _UNSET
        r._headers = _UNSET  # no per-record allocation: a read creates only Records
        r.topic = self.topic
        r.partition = self.partition
        r.offset = self.h.base_offset + i
        r.timestamp = v.timestamp
        return r

    def records(self, int64_t from_offset=-1):
        """records(from_offset=-1) -> list[Record]

        The batch's records, skipping those below ``from_offset``.
        """
        cdef uint32_t i, start = 0, n = self.h.record_count
        self._decode()
        if from_offset > self.h.base_offset:
            start = <uint32_t>min(from_offset - self.h.base_offset, n)
        out = PyList_New(n - start)
        for i in range(start, n):
            r = self._record(i)
            Py_INCREF(r)
            PyList_SET_ITEM(out, i - start, r)
        return out

    def value_views(self):
        """value_views() -> list[memoryview | None]

        Zero-copy views of every value in the batch.
        """
        cdef uint32_t i
        self._decode()
        out = []
        for i in range(self.h.record_count):
            if self._views[i].value_len < 0:
                out.append(None)
            else:
                out.append(PySequence_GetSlice(
                    self._mv, self._rel + self._views[i].value_pos,
                    self._rel + self._views[i].value_pos + self._views[i].value_len))
        return out

    def value_bytes_total(self):
        """value_bytes_total() -> int

        Sum of the value lengths (decodes the batch; used by benchmarks and stats).
        """
        cdef uint32_t i
        cdef int64_t total = 0
        self._decode()
        for i in range(self.h.record_count):
            if self._views[i].value_len > 0:
                total += self._views[i].value_len
        return total

    def __len__(self):
        return self.h.record_count

    def __getitem__(self, Py_ssize_t i):
        if i < 0:
            i += self.h.record_count
        if i < 0 or i >= self.h.record_count:
            raise IndexError("record index out of range")
        self._decode()
        return self._record(<uint32_t>i)

    def __iter__(self):
        return iter(self.records())

    @property
    def base_offset(self):
        return self.h.base_offset

    @property
    def last_offset(self):
        return self.h.base_offset + self.h.record_count - 1

    @property
    def next_offset(self):
        return self.h.base_offset + self.h.record_count

    @property
    def length(self):
        """Bytes of the whole batch, header included."""
        return self.h.length

    @property
    def crc(self):
        return self.h.crc

    @property
    def magic(self):
        return self.h.magic

    @property
    def attributes(self):
        return self.h.attributes

    @property
    def record_count(self):
        return self.h.record_count

    @property
    def compression(self):
        """The codec of the batch's records: None, "gzip", "snappy", "lz4" or "zstd"."""
        cdef int c = self.h.attributes & US_ATTR_COMPRESSION_MASK if self.h.magic == US_MAGIC else 0
        return (None, "gzip", "snappy", "lz4", "zstd")[c] if c <= 4 else c

    @property
    def is_transactional(self):
        """The transactional bit of the attributes (carried, not interpreted)."""
        return self.h.magic == US_MAGIC and bool(self.h.attributes & US_ATTR_TRANSACTIONAL)

    @property
    def is_control(self):
        """A control batch (transaction marker): readers skip it."""
        return self.h.magic == US_MAGIC and bool(self.h.attributes & US_ATTR_CONTROL)

    @property
    def partition_leader_epoch(self):
        return self.h.partition_leader_epoch

    @property
    def first_timestamp(self):
        return self.h.first_timestamp

    @property
    def max_timestamp(self):
        return self.h.max_timestamp

    @property
    def producer_id(self):
        return self.h.producer_id

    @property
    def producer_epoch(self):
        return self.h.producer_epoch

    @property
    def base_sequence(self):
        return self.h.base_sequence

    def __repr__(self):
        return (f"RecordBatch(base_offset={self.h.base_offset}, records={self.h.record_count}, "
                f"length={self.h.length}, position={self.position}, crc=0x{self.h.crc:08x})")


def decode_batches(data, str topic=None, int partition=-1):
    """decode_batches(data) -> list[RecordBatch]

    Check and decode every batch in ``data`` (a bytes-like object holding whole
    batches back to back). Raises CorruptLogError at the first bad batch.
    """
    cdef Py_buffer view
    cdef us_batch_header h
    cdef size_t pos = 0
    cdef int rc
    cdef RecordBatch b
    mv = memoryview(data).cast("B")
    out = []
    PyObject_GetBuffer(mv, &view, PyBUF_SIMPLE)
    try:
        while pos < <size_t>view.len:
            rc = us_batch_check(<const unsigned char *>view.buf + pos, view.len - pos, &h)
            if rc != US_OK and rc != US_COMPRESSED:
                raise corrupt_from_code(rc, topic=topic, partition=partition, position=pos)
            b = make_batch(mv, mv, <const unsigned char *>view.buf + pos, pos, &h, topic, partition)
            b._decode()
            out.append(b)
            pos += h.length
    finally:
        PyBuffer_Release(&view)
    return out


# ---------------------------------------------------------------------------
# Writing

cdef struct _Buf:
    const unsigned char *ptr
    Py_ssize_t len      # -1 = null


cdef inline int _get_bytes(object obj, _Buf *out, Py_buffer *view, bint *held,
                           Py_ssize_t i, str what) except -1:
    held[0] = False
    if obj is None:
        out.ptr = NULL
        out.len = -1
    elif PyBytes_CheckExact(obj):
        out.ptr = <const unsigned char *>PyBytes_AS_STRING(obj)
        out.len = PyBytes_GET_SIZE(obj)
    elif PyObject_CheckBuffer(obj) and not PyUnicode_Check(obj):
        PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
        held[0] = True
        out.ptr = <const unsigned char *>view.buf
        out.len = view.len
    else:
        raise InvalidRecordError(
            f"record {i}: {what} must be bytes-like or None, got {type(obj).__name__}"
            + (" (encode str values, or give the producer a codec)" if PyUnicode_Check(obj) else ""))
    return 0


cdef class BatchEncoder:
    """BatchEncoder(max_batch_bytes=1 MiB, max_record_bytes=1 MiB)

    Encodes records into one or more complete, sealed batches in a reusable
    buffer. Records are split into several batches when one would pass
    ``max_batch_bytes``. Base offsets are patched in later with
    :meth:`set_base_offset`, which the CRC does not cover.

    Accepted records: a bytes-like value; ``None`` (null value); a tuple
    ``(key, value[, headers[, timestamp]])``; or a :class:`Record` read from a log.
    Headers are a list of ``(str, bytes | None)`` pairs or a dict.
    """
    cdef unsigned char *buf
    cdef size_t cap
    cdef size_t size
    cdef readonly size_t max_batch_bytes
    cdef readonly size_t max_record_bytes
    cdef readonly uint32_t records
    cdef readonly uint32_t batches
    cdef readonly int64_t max_timestamp
    cdef readonly int64_t first_timestamp
    cdef int exports                # live views of buf; it must not move while > 0

    def __cinit__(self, size_t max_batch_bytes=1 << 20, size_t max_record_bytes=1 << 20):
        if max_batch_bytes < US_BATCH_HEADER_SIZE + 16 or max_batch_bytes > US_BATCH_MAX_LENGTH:
            raise ValueError(f"max_batch_bytes must be in {US_BATCH_HEADER_SIZE + 16} .. "
                             f"{US_BATCH_MAX_LENGTH}, got {max_batch_bytes}")
        self.max_batch_bytes = max_batch_bytes
        self.max_record_bytes = max_record_bytes
        self.cap = 0
        self.buf = NULL
        self.size = 0
        self.max_timestamp = -1
        self.first_timestamp = -1

    def __dealloc__(self):
        if self.buf != NULL:
            PyMem_Free(self.buf)

    cdef int _reserve(self, size_t extra) except -1:
        cdef size_t need = self.size + extra
        cdef size_t cap
        cdef unsigned char *nb
        if need <= self.cap:
            return 0
        if self.exports:
            raise BufferError("the encoded bytes are still being viewed; release the view first")
        cap = self.cap * 2 if self.cap else 65536
        while cap < need:
            cap *= 2
        nb = <unsigned char *>PyMem_Realloc(self.buf, cap)
        if nb == NULL:
            raise MemoryError()
        self.buf = nb
        self.cap = cap
        return 0

    def clear(self):
        """Forget the encoded bytes, keep the buffer."""
        if self.exports:
            raise BufferError("the encoded bytes are still being viewed; release the view first")
        self.size = 0
        self.records = 0
        self.batches = 0
        self.max_timestamp = -1
        self.first_timestamp = -1

    def shrink(self, size_t keep=1 << 20):
        """Release the buffer when it grew past ``keep`` bytes (after a huge append)."""
        if self.cap > keep and self.size == 0 and not self.exports:
            PyMem_Free(self.buf)
            self.buf = NULL
            self.cap = 0

    @property
    def nbytes(self):
        return self.size

    def view(self):
        """A memoryview of the encoded batches (valid until the next encode/clear)."""
        if self.size == 0:
            return memoryview(b"")
        return memoryview(_BufferView(self))

    def encode(self, records, int64_t timestamp, int64_t producer_id=-1,
               int producer_epoch=-1, int64_t base_sequence=-1, Py_ssize_t start=0,
               Py_ssize_t stop=-1):
        """encode(records, timestamp, producer_id=-1, producer_epoch=-1, base_sequence=-1, start=0, stop=-1) -> int

        Append the records, as batches, to the buffer; return how many were
        encoded. ``timestamp`` (ms) is used for records that carry none. With
        a producer id, each batch's base_sequence continues from ``base_sequence``.
        ``start``/``stop`` encode only ``records[start:stop]`` of a list or
        tuple (``stop=-1``: to the end) without making that slice.
        """
        cdef Py_ssize_t i = 0, n, tn
        cdef PyObject **items
        cdef PyObject *o
        cdef Py_ssize_t vlen
        cdef size_t start_size
        cdef uint32_t start_records, start_batches
        cdef int64_t start_max_ts, start_first_ts
        cdef us_batch_header h
        cdef size_t batch_start = 0, rec_size, headers_len
        cdef uint32_t count = 0, header_count
        cdef int64_t ts, seq = base_sequence
        cdef _Buf key, value
        cdef Py_buffer kview, vview
        cdef bint kheld = False, vheld = False
        cdef object headers, r
        cdef Record rr
        cdef Py_buffer rview
        cdef const unsigned char *hsrc
        if producer_id >= 0 and not (0 <= base_sequence <= 0x7fffffff):
            raise ValueError(f"base_sequence must be in 0 .. 2**31-1 with a producer id, got {base_sequence}")
        if not (0 <= timestamp < _TS_LIMIT):
            raise InvalidRecordError(f"timestamp {timestamp} is outside 0 .. 253402300799999 ms (9999-12-31T23:59:59.999Z, the last time Arrow and Python datetimes convert)")
        if not isinstance(records, (list, tuple)):
            records = list(records)
        n = len(records)
        if stop < 0 or stop > n:
            stop = n
        if start < 0 or start > stop:
            raise ValueError(f"start={start} is outside 0 .. {stop}")
        if start == stop:
            return 0
        i = start
        start_size = self.size
        start_records = self.records
        start_batches = self.batches
        start_max_ts = self.max_timestamp
        start_first_ts = self.first_timestamp
        h.producer_id = producer_id
        h.producer_epoch = <int16_t>producer_epoch
        h.attributes = 0
        try:
            while i < stop:
                # Re-read each time: the general path below can run Python code
                # (buffer exporters, __index__) that might resize the list.
                if PySequence_Fast_GET_SIZE(records) != n:
                    raise RuntimeError("the records list changed size during the append")
                items = PySequence_Fast_ITEMS(records)
                o = items[i]
                if _bytes_exact(o):
                    # Fast path, the common case of a bare value: no key, no
                    # headers, the call's timestamp. Pure C, borrowed pointers.
                    # It repeats the placement code of the general path below
                    # on purpose: sharing it (an inline helper taking the
                    # batch state by pointer, or one placement block after
                    # both paths) took encoding 1M x 100 B from 14.6 to
                    # 18.5-19 ms here, the hot variables no longer in registers.
                    vlen = _bytes_len(o)
                    if count == 0:
                        h.first_timestamp = timestamp
                        h.max_timestamp = timestamp
                    rec_size = us_record_size(timestamp - h.first_timestamp, count, -1, vlen, 0, 0)
                    if rec_size > self.max_record_bytes:
                        raise RecordTooLargeError(
                            f"record {i} encodes to {rec_size} bytes, more than max_record_bytes="
                            f"{self.max_record_bytes}")
                    if count and (self.size - batch_start) + rec_size > self.max_batch_bytes:
                        self._close_batch(batch_start, count, &h, seq)
                        if seq >= 0:
                            seq = (seq + count) & 0x7fffffff
                        count = 0
                        h.first_timestamp = timestamp
                        h.max_timestamp = timestamp
                        rec_size = us_record_size(0, 0, -1, vlen, 0, 0)
                    if count == 0:
                        if self.size + US_BATCH_HEADER_SIZE > self.cap:
                            self._reserve(US_BATCH_HEADER_SIZE)
                        batch_start = self.size
                        self.size += US_BATCH_HEADER_SIZE
                    if self.size + rec_size > self.cap:
                        self._reserve(rec_size)
                    us_write_record(self.buf + self.size, timestamp - h.first_timestamp, count, NULL, -1,
                                    _bytes_ptr(o), vlen, NULL, 0, 0)
                    self.size += rec_size
                    if timestamp > h.max_timestamp:
                        h.max_timestamp = timestamp
                    count += 1
                    i += 1
                    continue
                r = <object>o
                headers = None
                ts = timestamp
                hsrc = NULL
                headers_len = 0
                header_count = 0
                if PyBytes_CheckExact(r):
                    key.ptr = NULL
                    key.len = -1
                    value.ptr = <const unsigned char *>PyBytes_AS_STRING(r)
                    value.len = PyBytes_GET_SIZE(r)
                elif PyTuple_CheckExact(r):
                    tn = PyTuple_GET_SIZE(r)
                    if tn < 2 or tn > 4:
                        raise InvalidRecordError(
                            f"record {i}: a tuple record is (key, value[, headers[, timestamp]]), got {tn} items")
                    _get_bytes(<object>PyTuple_GET_ITEM(r, 0), &key, &kview, &kheld, i, "key")
                    _get_bytes(<object>PyTuple_GET_ITEM(r, 1), &value, &vview, &vheld, i, "value")
                    if tn > 2:
                        headers = <object>PyTuple_GET_ITEM(r, 2)
                    if tn > 3:
                        ts = _as_timestamp(<object>PyTuple_GET_ITEM(r, 3), timestamp, i)
                elif isinstance(r, Record):
                    rr = <Record>r
                    _get_bytes(rr.key, &key, &kview, &kheld, i, "key")
                    _get_bytes(rr.value, &value, &vview, &vheld, i, "value")
                    headers = rr.headers
                    ts = rr.timestamp
                else:
                    key.ptr = NULL
                    key.len = -1
                    _get_bytes(r, &value, &vview, &vheld, i, "value")
                try:
                    if headers is not None:
                        headers_len, header_count, hbuf = _encode_headers(headers, i)
                        hsrc = <const unsigned char *>PyBytes_AS_STRING(hbuf)
                    if count == 0:
                        h.first_timestamp = ts
                        h.max_timestamp = ts
                    rec_size = us_record_size(ts - h.first_timestamp, count, key.len, value.len,
                                              headers_len, header_count)
                    if rec_size > self.max_record_bytes:
                        raise RecordTooLargeError(
                            f"record {i} encodes to {rec_size} bytes, more than max_record_bytes="
                            f"{self.max_record_bytes}")
                    if count and (self.size - batch_start) + rec_size > self.max_batch_bytes:
                        self._close_batch(batch_start, count, &h, seq)
                        if seq >= 0:
                            seq = (seq + count) & 0x7fffffff
                        count = 0
                        h.first_timestamp = ts
                        h.max_timestamp = ts
                        rec_size = us_record_size(0, 0, key.len, value.len, headers_len, header_count)
                    if count == 0:
                        self._reserve(US_BATCH_HEADER_SIZE)
                        batch_start = self.size
                        self.size += US_BATCH_HEADER_SIZE
                    self._reserve(rec_size)
                    us_write_record(self.buf + self.size, ts - h.first_timestamp, count, key.ptr, key.len,
                                    value.ptr, value.len, hsrc, headers_len, header_count)
                    self.size += rec_size
                    if ts > h.max_timestamp:
                        h.max_timestamp = ts
                    count += 1
                finally:
                    if kheld:
                        PyBuffer_Release(&kview)
                        kheld = False
                    if vheld:
                        PyBuffer_Release(&vview)
                        vheld = False
                i += 1
            self._close_batch(batch_start, count, &h, seq)
        except BaseException:
            self.size = start_size
            self.records = start_records
            self.batches = start_batches
            self.max_timestamp = start_max_ts
            self.first_timestamp = start_first_ts
            raise
        return stop - start

    cdef int _close_batch(self, size_t start, uint32_t count, us_batch_header *h,
                          int64_t seq) except -1:
        h.record_count = count
        h.base_offset = 0
        h.base_sequence = <int32_t>seq if seq >= 0 else -1
        us_batch_write_header(self.buf + start, h)
        us_batch_seal(self.buf + start, <uint32_t>(self.size - start))
        self.records += count
        self.batches += 1
        if self.batches == 1 or h.max_timestamp > self.max_timestamp:
            self.max_timestamp = h.max_timestamp
        if self.batches == 1:
            self.first_timestamp = h.first_timestamp
        return 0

    def add_batches(self, data, int64_t timestamp_min=0, int64_t timestamp_max=MAX_TIMESTAMP):
        """add_batches(data, timestamp_min=0, timestamp_max=MAX_TIMESTAMP) -> int

        Take whole format-2 batches already encoded elsewhere (e.g. by a Kafka
        client: a RecordBatch v2 as it arrives, compressed or not) after
        checking each completely: CRC, header, and every record (a compressed
        payload is decompressed to check it). They are stored byte for byte;
        their base offsets are rewritten at append time (outside the CRC).

        Timestamps, as Kafka's LogValidator treats a CreateTime topic's
        batches: every record's timestamp (a LogAppendTime batch: its
        maxTimestamp) must lie in ``timestamp_min .. timestamp_max`` (ms), else
        InvalidTimestampError (Kafka's INVALID_TIMESTAMP). A header whose
        maxTimestamp is not its records' largest timestamp is corrected, and
        that batch's CRC recomputed, as Kafka's broker does, so the time index
        and ListOffsets-by-time see the records' real times.

        Returns the number of records added. Raises CorruptLogError naming the
        bad batch's position in ``data``; nothing is added then.
        """
        cdef Py_buffer view
        cdef us_batch_header h
        cdef size_t pos = 0
        cdef int rc
        cdef uint32_t recs = 0, nb = 0, i
        cdef int64_t max_ts = self.max_timestamp, first_ts = self.first_timestamp
        cdef int64_t ts, rec_max
        cdef RecordBatch b
        cdef unsigned char *w
        if timestamp_min < 0:
            timestamp_min = 0
        if timestamp_max > MAX_TIMESTAMP:
            timestamp_max = MAX_TIMESTAMP
        # A private copy, whose partitionLeaderEpoch fields are set to the
        # log's 0 as a broker sets them (the field lies outside the CRC).
        copy = bytearray(data)
        mv = memoryview(copy)
        PyObject_GetBuffer(mv, &view, PyBUF_SIMPLE)
        try:
            w = <unsigned char *>view.buf
            while pos + US_BATCH_HEADER_SIZE <= <size_t>view.len and w[pos + 16] == US_MAGIC:
                us_st32be(w + pos + US_OFF_LEADER_EPOCH, 0)
                if us_batch_total_length(w + pos) < US_BATCH_HEADER_SIZE:
                    break
                pos += us_batch_total_length(w + pos)
            pos = 0
            while pos < <size_t>view.len:
                rc = us_batch_check(<const unsigned char *>view.buf + pos, view.len - pos, &h)
                if rc != US_OK and rc != US_COMPRESSED:
                    raise corrupt_from_code(rc, position=pos)
                if h.magic != US_MAGIC:
                    raise CorruptLogError(f"only format-2 batches are taken, got magic {h.magic}",
                                          position=pos)
                if h.attributes & US_ATTR_CONTROL:
                    raise CorruptLogError("control batches (transaction markers) are not taken",
                                          position=pos)
                b = make_batch(mv, mv, <const unsigned char *>view.buf + pos, pos, &h, None, -1)
                b._decode()
                if h.attributes & US_ATTR_TIMESTAMP_TYPE:
                    rec_max = h.max_timestamp          # LogAppendTime: the header's time is every record's
                    if rec_max < timestamp_min or rec_max > timestamp_max:
                        raise _timestamp_error(rec_max, nb, 0, timestamp_min, timestamp_max, pos)
                else:
                    rec_max = -1
                    for i in range(h.record_count):
                        ts = b._views[i].timestamp
                        if ts < timestamp_min or ts > timestamp_max:
                            raise _timestamp_error(ts, nb, i, timestamp_min, timestamp_max, pos)
                        if ts > rec_max:
                            rec_max = ts
                    if rec_max != h.max_timestamp:
                        # Kafka's broker sets maxTimestamp from the records
                        # (LogValidator, setMaxTimestamp) and re-seals the batch.
                        us_st64be(w + pos + US_OFF_MAX_TIMESTAMP, <uint64_t>rec_max)
                        us_batch_seal(w + pos, h.length)
                if self.batches + nb == 0:
                    first_ts = h.first_timestamp
                if self.batches + nb == 0 or rec_max > max_ts:
                    max_ts = rec_max
                recs += h.record_count
                nb += 1
                pos += h.length
            self._reserve(pos)
            memcpy(self.buf + self.size, view.buf, pos)
        finally:
            PyBuffer_Release(&view)
        self.size += pos
        self.records += recs
        self.batches += nb
        self.max_timestamp = max_ts
        self.first_timestamp = first_ts
        return recs

    def set_log_append_time(self, int64_t timestamp):
        """set_log_append_time(timestamp)

        Make every encoded batch a LogAppendTime batch appended at
        ``timestamp`` (ms): its timestamp-type attribute (bit 3) set, its
        maxTimestamp the append time, its CRC re-sealed, as Kafka's broker
        does for a topic with ``message.timestamp.type=LogAppendTime``.
        Readers then take that time as every record's timestamp.
        """
        stamp_log_append_time(self.buf, self.size, self.exports, timestamp)
        self.max_timestamp = timestamp

    def compress(self, int codec, size_t start=0):
        """compress(codec, start=0) -> int

        Compress the records of every batch encoded from byte ``start`` on
        with ``codec`` (the attribute value, 1-4: see unstoppable.compression),
        each batch as one block, and re-seal them; return the new size in bytes.
        """
        cdef size_t pos = start, n, hs = US_BATCH_HEADER_SIZE
        cdef uint16_t attrs
        cdef us_batch_header h
        if codec == 0 or start >= self.size:
            return self.size
        if self.exports:
            raise BufferError("the encoded bytes are still being viewed; release the view first")
        parts = []
        mv = memoryview(_BufferView(self))
        try:
            while pos < self.size:
                n = us_batch_total_length(self.buf + pos)
                if us_batch_parse_header(self.buf + pos, n, &h) != US_OK or h.magic != US_MAGIC:
                    raise ValueError(f"no format-2 batch at {pos} of the encoded bytes")
                payload = _compression.compress(codec, mv[pos + hs:pos + n])
                if hs + len(payload) > US_BATCH_MAX_LENGTH:
                    raise RecordTooLargeError("a compressed batch would pass the largest batch length")
                hdr = PyBytes_FromStringAndSize(<const char *>self.buf + pos, <Py_ssize_t>hs)
                h.attributes = <uint16_t>((h.attributes & ~US_ATTR_COMPRESSION_MASK) | codec)
                parts.append((hdr, payload, h.attributes))
                pos += n
        finally:
            mv.release()
        self.size = start
        for hdr, payload, attrs in parts:
            n = hs + len(payload)
            self._reserve(n)
            memcpy(self.buf + self.size, PyBytes_AS_STRING(hdr), hs)
            memcpy(self.buf + self.size + hs, PyBytes_AS_STRING(payload), len(payload))
            self.buf[self.size + 21] = <unsigned char>(attrs >> 8)
            self.buf[self.size + 22] = <unsigned char>(attrs & 0xff)
            us_batch_seal(self.buf + self.size, <uint32_t>n)
            self.size += n
        return self.size

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

    def batch_spans(self):
        """batch_spans() -> list[tuple[int, int, int]]

        ``(position, length, record_count)`` of each encoded batch, in order.
        """
        cdef size_t pos = 0
        out = []
        while pos < self.size:
            out.append((pos, us_batch_total_length(self.buf + pos), us_batch_record_count(self.buf + pos)))
            pos += us_batch_total_length(self.buf + pos)
        return out


cdef class _BufferView:
    """Exports a BatchEncoder's bytes through the buffer protocol."""
    cdef BatchEncoder enc

    def __cinit__(self, BatchEncoder enc):
        self.enc = enc

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        PyBuffer_FillInfo(buffer, self, self.enc.buf, self.enc.size, 1, flags)
        self.enc.exports += 1

    def __releasebuffer__(self, Py_buffer *buffer):
        self.enc.exports -= 1


cdef tuple _encode_headers(object headers, Py_ssize_t i):
    """Encode a header list/dict into one block; returns (length, count, bytes)."""
    cdef size_t total = 0
    cdef uint32_t count = 0
    cdef Py_ssize_t klen
    cdef const char *kptr
    cdef _Buf v
    cdef Py_buffer vview
    cdef bint vheld = False
    cdef unsigned char *p
    if isinstance(headers, dict):
        items = list((<dict>headers).items())
    elif isinstance(headers, (list, tuple)):
        items = headers
    else:
        raise InvalidRecordError(
            f"record {i}: headers must be a list of (str, bytes) pairs or a dict, got {type(headers).__name__}")
    for item in items:
        if not isinstance(item, tuple) or len(<tuple>item) != 2:
            raise InvalidRecordError(f"record {i}: each header must be a (str, bytes) pair, got {item!r}")
        k, val = item
        if not PyUnicode_Check(k):
            raise InvalidRecordError(f"record {i}: header key must be str, got {type(k).__name__}")
        PyUnicode_AsUTF8AndSize(k, &klen)
        _get_bytes(val, &v, &vview, &vheld, i, "header value")
        if vheld:
            PyBuffer_Release(&vview)
            vheld = False
        total += us_header_size(<size_t>klen, v.len)
        count += 1
    out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>total)
    p = <unsigned char *>PyBytes_AS_STRING(out)
    for item in items:
        k, val = item
        kptr = PyUnicode_AsUTF8AndSize(k, &klen)
        _get_bytes(val, &v, &vview, &vheld, i, "header value")
        try:
            p = us_write_header(p, kptr, <size_t>klen, v.ptr, v.len)
        finally:
            if vheld:
                PyBuffer_Release(&vview)
                vheld = False
    return (total, count, out)


cdef int stamp_log_append_time(unsigned char *buf, size_t size, int exports,
                               int64_t timestamp) except -1:
    """Stamp the encoded batches ``buf[:size]`` as LogAppendTime batches
    appended at ``timestamp`` (ms), for BatchEncoder and ArrowEncoder."""
    if not (0 <= timestamp <= MAX_TIMESTAMP):
        raise InvalidRecordError(f"append time {timestamp} is outside 0 .. {MAX_TIMESTAMP} ms")
    if exports:
        raise BufferError("the encoded bytes are still being viewed; release the view first")
    if size:
        us_batches_set_log_append_time(buf, size, timestamp)
    return 0
