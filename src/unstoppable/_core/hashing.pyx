# cython: language_level=3
"""Checksums and hashes implemented in C (csrc/): CRC-32C, XXH64, Kafka's murmur2.

All functions accept any object that supports the buffer protocol (bytes,
bytearray, memoryview, numpy arrays). They release the GIL for inputs of
64 KiB and more, where the work pays for the switch.
"""
cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_RECORDS_RO
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_CheckExact
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, calloc, free

from unstoppable._core.includes.crc32c cimport (
    us_crc32c_extend, us_crc32c_sw, us_crc32c_hw_available, us_crc32c_init)
from unstoppable._core.includes.hashes cimport us_xxh64, us_murmur2

import operator

us_crc32c_init()

cdef enum:
    NOGIL_THRESHOLD = 65536


def crc32c(data, uint32_t crc=0):
    """crc32c(data, crc=0) -> int

    CRC-32C (Castagnoli) of ``data``, continuing from ``crc`` (the result of a
    previous call over the preceding bytes). Matches RFC 3720 and the ``crc32c``
    package.
    """
    cdef Py_buffer view
    cdef uint32_t out
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if view.len >= NOGIL_THRESHOLD:
            with nogil:
                out = us_crc32c_extend(crc, view.buf, <size_t>view.len)
        else:
            out = us_crc32c_extend(crc, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return out


def crc32c_software(data, uint32_t crc=0):
    """crc32c_software(data, crc=0) -> int

    The table-driven CRC-32C, bypassing the hardware instruction; for tests.
    """
    cdef Py_buffer view
    cdef uint32_t out
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        out = us_crc32c_sw(crc, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return out


@cython.embedsignature(False)
def crc32c_hardware():
    """crc32c_hardware()
--

    crc32c_hardware() -> bool

    True when CRC-32C runs on the CPU's crc32 instruction (SSE4.2).
    """
    return us_crc32c_hw_available() == 1


def xxh64(data, uint64_t seed=0):
    """xxh64(data, seed=0) -> int

    XXH64 of ``data`` as an unsigned 64-bit int; equals ``xxhash.xxh64_intdigest``.
    """
    cdef Py_buffer view
    cdef uint64_t out
    if PyBytes_CheckExact(data):
        return us_xxh64(PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data), seed)
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        out = us_xxh64(view.buf, <size_t>view.len, seed)
    finally:
        PyBuffer_Release(&view)
    return out


def murmur2(data):
    """murmur2(data) -> int

    Kafka's murmur2 of ``data`` as Java's signed 32-bit int, exactly as
    ``org.apache.kafka.common.utils.Utils.murmur2`` returns it.
    """
    cdef Py_buffer view
    cdef uint32_t h
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        h = us_murmur2(view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return <int>h if h < 0x80000000u else <long long>h - 0x100000000


cdef inline int _check_n(long n) except -1:
    if n <= 0:
        raise ValueError(f"partition count must be positive, got {n}")
    return 0


def xxh64_partition(key, long n):
    """xxh64_partition(key, n) -> int

    The default partitioner: ``xxh64(key) % n``.
    """
    cdef Py_buffer view
    cdef uint64_t h
    _check_n(n)
    if PyBytes_CheckExact(key):
        return us_xxh64(PyBytes_AS_STRING(key), <size_t>PyBytes_GET_SIZE(key), 0) % <uint64_t>n
    PyObject_GetBuffer(key, &view, PyBUF_SIMPLE)
    try:
        h = us_xxh64(view.buf, <size_t>view.len, 0)
    finally:
        PyBuffer_Release(&view)
    return h % <uint64_t>n


def murmur2_partition(key, long n):
    """murmur2_partition(key, n) -> int

    Kafka's default partition for a keyed record: ``(murmur2(key) & 0x7fffffff) % n``.
    """
    cdef Py_buffer view
    cdef uint32_t h
    _check_n(n)
    if PyBytes_CheckExact(key):
        h = us_murmur2(PyBytes_AS_STRING(key), <size_t>PyBytes_GET_SIZE(key))
    else:
        PyObject_GetBuffer(key, &view, PyBUF_SIMPLE)
        try:
            h = us_murmur2(view.buf, <size_t>view.len)
        finally:
            PyBuffer_Release(&view)
    return (h & 0x7fffffffu) % <uint32_t>n



# ---------------------------------------------------------------------------
# Vectorized partitioning: many keys per call, hashed without the GIL.

cdef enum:
    _ALG_XXH64 = 0
    _ALG_MURMUR2 = 1
    _MAX_PARTITIONS = 0x7fffffff   # results are int32

cdef extern from "fastmod.h" nogil:
    ctypedef struct us_fastmod_m64_t:
        pass
    uint64_t us_fastmod_m32(uint32_t d)
    uint32_t us_fastmod_u32(uint32_t a, uint64_t M, uint32_t d)
    us_fastmod_m64_t us_fastmod_m64(uint64_t d)
    uint64_t us_fastmod_u64(uint64_t a, us_fastmod_m64_t m, uint64_t d)

cdef char _EMPTY[1]


cdef struct _Divisor:
    # n and its fastmod constants: the loops divide by the same n millions of times.
    uint64_t n
    uint64_t m32
    us_fastmod_m64_t m64


cdef inline void _divisor(_Divisor *d, uint64_t n) noexcept nogil:
    d.n = n
    d.m32 = us_fastmod_m32(<uint32_t>n)
    d.m64 = us_fastmod_m64(n)


cdef inline int32_t _part(int alg, const char *p, size_t l, const _Divisor *d) noexcept nogil:
    # Equal to xxh64_partition / murmur2_partition (tests check key for key).
    if alg == _ALG_XXH64:
        return <int32_t>us_fastmod_u64(us_xxh64(p, l, 0), d.m64, d.n)
    return <int32_t>us_fastmod_u32(us_murmur2(p, l) & 0x7fffffffu, d.m32, <uint32_t>d.n)


cdef inline const char *_address(object buf, Py_ssize_t *size) except? NULL:
    """Address and size of a pyarrow Buffer (or None: no bytes)."""
    cdef Py_buffer v
    if buf is None:
        size[0] = 0
        return _EMPTY
    PyObject_GetBuffer(buf, &v, PyBUF_SIMPLE)
    # pyarrow Buffers own their memory; the array we were given keeps them alive.
    PyBuffer_Release(&v)
    size[0] = v.len
    return <const char *>v.buf if v.buf != NULL else _EMPTY


cdef int _arrow_chunk(int alg, object arr, const _Divisor *n, int32_t *out, Py_ssize_t row0) except -1:
    """Partition numbers of one pyarrow (large_)binary/(large_)string array."""
    cdef Py_ssize_t count = len(arr), i, nbytes = 0, obytes = 0
    cdef Py_ssize_t off = arr.offset
    cdef const char *data
    cdef const char *offs
    cdef const int32_t *o32
    cdef const int64_t *o64
    cdef int64_t a, b
    cdef bint wide
    t = str(arr.type)
    if t in ("binary", "string"):
        wide = False
    elif t in ("large_binary", "large_string"):
        wide = True
    else:
        raise TypeError(f"keys: an Arrow array of type {t} cannot be partitioned; "
                        "expected binary, large_binary, string or large_string")
    if arr.null_count:
        first = arr.is_null().index(True).as_py()
        raise ValueError(f"keys: row {row0 + first} is null ({arr.null_count} null key(s)); "
                         "only rows with a key can be partitioned by key")
    if count == 0:
        return 0
    bufs = arr.buffers()
    offs = _address(bufs[1], &obytes)
    data = _address(bufs[2], &nbytes)
    if obytes < (off + count + 1) * (8 if wide else 4):
        raise ValueError("keys: the Arrow offsets buffer is shorter than the array")
    o32 = <const int32_t *>offs + off
    o64 = <const int64_t *>offs + off
    # Offsets are checked against the data buffer before anything is read.
    if wide:
        a, b = o64[0], o64[count]
    else:
        a, b = o32[0], o32[count]
    if a < 0 or b < a or b > nbytes:
        raise ValueError(f"keys: the Arrow offsets run outside the data buffer ({a} .. {b} of {nbytes})")
    with nogil:
        for i in range(count):
            if wide:
                a, b = o64[i], o64[i + 1]
            else:
                a, b = o32[i], o32[i + 1]
            if b < a:  # non-monotonic offsets: a malformed array
                out[i] = -1
                continue
            out[i] = _part(alg, data + a, <size_t>(b - a), n)
    for i in range(count):
        if out[i] < 0:
            raise ValueError(f"keys: the Arrow offsets of row {row0 + i} decrease (a malformed array)")
    return 0


cdef int _numpy_bytes(int alg, object keys, const _Divisor *n, int32_t *out) except -1:
    """Partition numbers of a 1-d numpy array of dtype 'S<w>'. As numpy reads
    such an element (``bytes(a[i])``), trailing NUL bytes are not part of the key."""
    cdef Py_buffer v
    cdef Py_ssize_t i, count, stride, w, l
    cdef const char *p
    PyObject_GetBuffer(keys, &v, PyBUF_RECORDS_RO)
    try:
        count = v.shape[0]
        stride = v.strides[0]
        w = v.itemsize
        with nogil:
            for i in range(count):
                p = <const char *>v.buf + i * stride
                l = w
                while l > 0 and p[l - 1] == 0:
                    l -= 1
                out[i] = _part(alg, p, <size_t>l, n)
    finally:
        PyBuffer_Release(&v)
    return 0


cdef int _sequence(int alg, object keys, const _Divisor *n, int32_t *out) except -1:
    """Partition numbers of a list or tuple of bytes-like keys."""
    cdef tuple seq = tuple(keys)   # our own references: nothing can free a key while we hash
    cdef Py_ssize_t count = len(seq), i, held = 0
    cdef const char **ptrs = <const char **>malloc(max(count, 1) * sizeof(char *))
    cdef size_t *lens = <size_t *>malloc(max(count, 1) * sizeof(size_t))
    cdef Py_buffer *views = NULL
    cdef Py_buffer v
    try:
        if ptrs == NULL or lens == NULL:
            raise MemoryError()
        for i in range(count):
            k = seq[i]
            if PyBytes_CheckExact(k):
                ptrs[i] = PyBytes_AS_STRING(k)
                lens[i] = <size_t>PyBytes_GET_SIZE(k)
                continue
            if k is None or isinstance(k, str):
                raise TypeError(f"keys[{i}] is {type(k).__name__}, not bytes; every key must be "
                                "bytes-like (str keys: encode them first)")
            if views == NULL:
                views = <Py_buffer *>calloc(max(count, 1), sizeof(Py_buffer))
                if views == NULL:
                    raise MemoryError()
            try:
                PyObject_GetBuffer(k, &views[held], PyBUF_SIMPLE)
            except TypeError:
                raise TypeError(f"keys[{i}] is {type(k).__name__}, not bytes; every key must be "
                                "bytes-like") from None
            ptrs[i] = <const char *>views[held].buf
            lens[i] = <size_t>views[held].len
            held += 1
        with nogil:
            for i in range(count):
                out[i] = _part(alg, ptrs[i], lens[i], n)
    finally:
        for i in range(held):
            PyBuffer_Release(&views[i])
        free(views)
        free(ptrs)
        free(lens)
    return 0


cdef object _partition_many(int alg, object keys, object count):
    cdef int32_t[::1] outv
    cdef Py_ssize_t row
    cdef long n
    cdef _Divisor div
    if isinstance(count, bool):
        raise TypeError("partition count must be an int, got bool")
    try:
        count = operator.index(count)
    except TypeError:
        raise TypeError(f"partition count must be an int, got {type(count).__name__}") from None
    if count <= 0:
        raise ValueError(f"partition count must be positive, got {count}")
    if count > _MAX_PARTITIONS:
        raise ValueError(f"partition count must be at most {_MAX_PARTITIONS}, got {count}")
    n = count
    _divisor(&div, <uint64_t>n)
    if n <= 0:
        raise ValueError(f"partition count must be positive, got {n}")
    if n > _MAX_PARTITIONS:
        raise ValueError(f"partition count must be at most {_MAX_PARTITIONS}, got {n}")
    from unstoppable._numpy import require
    np = require()
    mod = type(keys).__module__ or ""
    if isinstance(keys, np.ndarray):
        if keys.ndim != 1:
            raise ValueError(f"keys: expected a 1-d array, got {keys.ndim} dimensions")
        if keys.dtype.kind == "S":
            out = np.empty(len(keys), dtype=np.int32)
            if len(keys):
                outv = out
                _numpy_bytes(alg, keys, &div, &outv[0])
            return out
        if keys.dtype.kind == "O":
            keys = keys.tolist()
        else:
            raise TypeError(f"keys: a numpy array of dtype {keys.dtype} cannot be partitioned; "
                            "expected fixed-width bytes (dtype 'S') or an object array of bytes")
    elif mod.startswith("pyarrow"):
        if hasattr(keys, "chunks"):
            chunks = keys.chunks
        elif hasattr(keys, "buffers") and hasattr(keys, "null_count"):
            chunks = [keys]
        else:
            raise TypeError(f"keys: a {type(keys).__name__} cannot be partitioned; expected a "
                            "pyarrow binary or string Array or ChunkedArray")
        out = np.empty(sum(len(c) for c in chunks), dtype=np.int32)
        if len(out):
            outv = out
            row = 0
            for c in chunks:
                _arrow_chunk(alg, c, &div, &outv[row], row)
                row += len(c)
        return out
    if not isinstance(keys, (list, tuple)):
        raise TypeError(f"keys must be a list of bytes, a numpy bytes array or a pyarrow binary "
                        f"array, got {type(keys).__name__}")
    out = np.empty(len(keys), dtype=np.int32)
    if len(keys):
        outv = out
        _sequence(alg, keys, &div, &outv[0])
    return out


def xxh64_partition_many(keys, n):
    """xxh64_partition_many(keys, n) -> numpy.ndarray[int32]

    ``xxh64_partition(key, n)`` of every key, hashed in C without the GIL.
    ``keys``: a list or tuple of bytes-like objects, a 1-d numpy array of
    dtype ``S`` (trailing NUL bytes are not part of a key, as numpy reads
    them) or of objects, or a pyarrow (large_)binary/(large_)string Array or
    ChunkedArray (strings hash as their UTF-8 bytes). Null keys are an error.
    Needs numpy (``pip install 'unstoppable[numpy]'``).
    """
    return _partition_many(_ALG_XXH64, keys, n)


def murmur2_partition_many(keys, n):
    """murmur2_partition_many(keys, n) -> numpy.ndarray[int32]

    Kafka's ``murmur2_partition(key, n)`` of every key, hashed in C without
    the GIL. ``keys`` as for :func:`xxh64_partition_many`.
    """
    return _partition_many(_ALG_MURMUR2, keys, n)
