from libc.stdint cimport uint32_t, uint64_t

cdef extern from "xxhash64.h" nogil:
    uint64_t us_xxh64(const void *buf, size_t len, uint64_t seed)

cdef extern from "murmur2.h" nogil:
    uint32_t us_murmur2(const void *buf, size_t len)
    uint32_t us_kafka_partition(const void *key, size_t len, uint32_t n)
