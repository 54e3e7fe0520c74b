from libc.stdint cimport uint64_t

cdef extern from "guard.h" nogil:
    int us_guard_install()
    int us_guard_add(const void *start, size_t len)
    void us_guard_remove(const void *start)
    uint64_t us_guard_hits()
