from libc.stdint cimport int64_t, uint32_t, uint64_t

cdef extern from "head.h" nogil:
    enum:
        US_HEAD_MAGIC
        US_HEAD_VERSION
        US_HEAD_FILE_SIZE
        US_HEAD_FLAG_DELETED

    ctypedef struct us_head:
        uint32_t magic
        uint32_t version
        uint64_t seq

    ctypedef struct us_head_snapshot:
        uint64_t seq
        int64_t start_offset
        int64_t end_offset
        int64_t active_base
        uint64_t active_size
        int64_t ckpt_base
        uint64_t ckpt_size
        int64_t ckpt_end_offset
        unsigned char boot_id[16]
        int64_t max_timestamp
        int64_t active_created
        uint64_t flags
        uint64_t oi_count
        uint64_t ti_count
        uint64_t oi_last_pos
        int64_t ti_last_ts

    int us_head_read(us_head *h, us_head_snapshot *s)
    uint64_t us_head_seq(us_head *h)
    void us_head_write(us_head *h, const us_head_snapshot *s)
