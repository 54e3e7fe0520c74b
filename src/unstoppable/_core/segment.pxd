from libc.stdint cimport int64_t, uint64_t


cdef class Mapping:
    cdef unsigned char *ptr
    cdef readonly Py_ssize_t length
    cdef readonly bint writable
    cdef object _mv
