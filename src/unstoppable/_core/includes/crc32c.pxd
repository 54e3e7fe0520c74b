from libc.stdint cimport uint32_t

cdef extern from "crc32c.h" nogil:
    uint32_t us_crc32c_extend(uint32_t crc, const void *buf, size_t len)
    uint32_t us_crc32c_sw(uint32_t crc, const void *buf, size_t len)
    int us_crc32c_hw_available()
    void us_crc32c_init()
