from libc.stdint cimport int64_t, uint32_t, uint64_t

cdef extern from "index.h" nogil:
    enum:
        US_OFFSET_ENTRY_SIZE
        US_TIME_ENTRY_SIZE
    uint32_t us_oi_rel(const unsigned char *idx, size_t i)
    uint32_t us_oi_pos(const unsigned char *idx, size_t i)
    int64_t us_ti_ts(const unsigned char *idx, size_t i)
    uint32_t us_ti_rel(const unsigned char *idx, size_t i)
    uint32_t us_ti_pos(const unsigned char *idx, size_t i)
    int64_t us_oi_floor(const unsigned char *idx, size_t n, uint32_t rel)
    int64_t us_ti_below(const unsigned char *idx, size_t n, int64_t ts)
    size_t us_oi_valid_prefix(const unsigned char *idx, size_t n, uint64_t limit_pos)
    size_t us_ti_valid_prefix(const unsigned char *idx, size_t n, uint64_t limit_pos)
