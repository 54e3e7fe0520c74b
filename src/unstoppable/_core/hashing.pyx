# cython: language_level=3
"""Checksums and hashes implemented in C (csrc/): CRC-32C, XXH64, Kafka's murmur2.

All functions accept any object that supports the buffer protocol (bytes,
bytearray, memoryview, numpy arrays). They release the GIL for inputs of
64 KiB and more, where the work pays for the switch.
"""
cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_CheckExact
from libc.stdint cimport uint32_t, uint64_t

from unstoppable._core.includes.crc32c cimport (
    us_crc32c_extend, us_crc32c_sw, us_crc32c_hw_available, us_crc32c_init)
from unstoppable._core.includes.hashes cimport us_xxh64, us_murmur2

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
