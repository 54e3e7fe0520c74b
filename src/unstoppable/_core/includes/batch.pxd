from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "batch.h" nogil:
    enum:
        US_MAGIC
        US_MAGIC_V1
        US_BATCH_HEADER_SIZE
        US_BATCH_HEADER_SIZE_V1
        US_BATCH_MIN_PROBE
        US_ATTR_COMPRESSION_MASK
        US_ATTR_TRANSACTIONAL
        US_ATTR_CONTROL
        US_ATTR_TIMESTAMP_TYPE
        US_CODEC_NONE
        US_CODEC_GZIP
        US_CODEC_SNAPPY
        US_CODEC_LZ4
        US_CODEC_ZSTD
        US_RECORD_MIN_SIZE
        US_RECORD_MAX_OVERHEAD
        US_RECORD_MAX_OVERHEAD_PLAIN
        US_BATCH_MAX_LENGTH
        US_OFF_BASE_OFFSET
        US_OFF_LENGTH
        US_OFF_CRC
        US_CRC_START
        US_OK
        US_INCOMPLETE
        US_BAD_MAGIC
        US_BAD_LENGTH
        US_BAD_CRC
        US_BAD_ATTRIBUTES
        US_BAD_RECORDS
        US_BAD_COUNT
        US_COMPRESSED
        US_BAD_EPOCH
        US_OFF_LEADER_EPOCH
        US_OFF_MAX_TIMESTAMP

    ctypedef struct us_batch_header:
        int64_t base_offset
        uint32_t length
        uint32_t crc
        uint8_t magic
        uint16_t attributes
        int16_t producer_epoch
        uint32_t record_count
        int64_t first_timestamp
        int64_t max_timestamp
        int64_t producer_id
        int32_t base_sequence
        int32_t last_offset_delta
        int32_t partition_leader_epoch

    ctypedef struct us_record_view:
        int64_t timestamp
        uint32_t key_pos
        int32_t key_len
        uint32_t value_pos
        int32_t value_len
        uint32_t headers_pos
        uint32_t header_count
        uint32_t end

    uint32_t us_ld32(const unsigned char *p)
    uint64_t us_ld64(const unsigned char *p)
    void us_st32(unsigned char *p, uint32_t v)
    void us_st64(unsigned char *p, uint64_t v)
    uint32_t us_ld32be(const unsigned char *p)
    uint64_t us_ld64be(const unsigned char *p)
    void us_st32be(unsigned char *p, uint32_t v)
    void us_st64be(unsigned char *p, uint64_t v)
    int64_t us_batch_base_offset(const unsigned char *b)
    uint32_t us_batch_total_length(const unsigned char *b)
    uint32_t us_batch_record_count(const unsigned char *b)
    int64_t us_batch_max_timestamp(const unsigned char *b)
    void us_batch_set_base_offset(unsigned char *b, int64_t off)
    uint32_t us_batch_header_size(uint8_t magic)

    int us_batch_parse_header(const unsigned char *buf, size_t avail, us_batch_header *h)
    int us_batch_check(const unsigned char *buf, size_t avail, us_batch_header *h)
    int us_batch_check_decode(const unsigned char *buf, size_t avail, us_batch_header *h,
                              us_record_view *out)
    int us_batch_decode(const unsigned char *buf, const us_batch_header *h, us_record_view *out)
    int us_records_decode(const unsigned char *recs, size_t len, const us_batch_header *h,
                          us_record_view *out)
    void us_batch_write_header(unsigned char *buf, const us_batch_header *h)
    void us_batch_seal(unsigned char *buf, uint32_t length)
    void us_batches_set_log_append_time(unsigned char *buf, size_t size, int64_t ts)

    size_t us_record_size(int64_t ts_delta, uint32_t offset_delta, int64_t key_len, int64_t value_len,
                          size_t headers_len, uint32_t header_count)
    unsigned char *us_write_record(unsigned char *p, int64_t ts_delta, uint32_t offset_delta,
                                   const void *key, int64_t key_len,
                                   const void *value, int64_t value_len,
                                   const void *headers, size_t headers_len,
                                   uint32_t header_count)
    size_t us_header_size(size_t key_len, int64_t value_len)
    unsigned char *us_write_header(unsigned char *p, const void *key, size_t key_len,
                                   const void *value, int64_t value_len)
    int us_headers_decode(const unsigned char *base, uint32_t pos, uint32_t end, uint32_t n,
                          uint8_t magic,
                          uint32_t *key_pos, uint32_t *key_len, uint32_t *value_pos,
                          int32_t *value_len)
