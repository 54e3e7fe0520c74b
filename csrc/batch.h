/* Record batch formats. Every batch the library writes is a Kafka RecordBatch
 * v2 (magic 2), byte for byte as Kafka writes it; batches of the log's earlier
 * format (magic 1) are still read. Both put the magic byte at offset 16, so a
 * reader tells them apart per batch. This table is the contract;
 * docs/FORMAT.md mirrors it field by field and tests/format_reference.py
 * decodes it independently with `struct`.
 *
 * Format 2 (Kafka RecordBatch v2). Header, 61 bytes, all integers big-endian:
 *   offset size  field
 *   0      8     baseOffset           i64  offset of the first record; assigned at append,
 *                                          outside the CRC
 *   8      4     batchLength          i32  bytes of the batch after this field (total - 12)
 *   12     4     partitionLeaderEpoch i32  outside the CRC; written 0 (a single node's
 *                                          first and only leader epoch), and readers
 *                                          refuse any other value, so damage there is
 *                                          caught too
 *   16     1     magic                i8   2
 *   17     4     crc                  u32  CRC-32C of bytes [21, total)
 *   21     2     attributes           i16  bits 0-2 compression (0 none, 1 gzip, 2 snappy,
 *                                          3 lz4, 4 zstd), bit 3 timestamp type (0
 *                                          CreateTime; 1 LogAppendTime: every record's
 *                                          timestamp is maxTimestamp), bit 4
 *                                          transactional, bit 5 control, bit 6 delete
 *                                          horizon; bits 7-15 must be 0
 *   23     4     lastOffsetDelta      i32  record_count - 1
 *   27     8     baseTimestamp        i64  timestamp of the first record
 *   35     8     maxTimestamp         i64  largest record timestamp (LogAppendTime:
 *                                          the time the log appended the batch)
 *   43     8     producerId           i64  -1 = not idempotent
 *   51     2     producerEpoch        i16  -1 when no producer id
 *   53     4     baseSequence         i32  -1 = none
 *   57     4     records count        i32  >= 1
 *   61     ...   records, compressed as a whole when attributes say so
 *
 * Format 2 record (varint = zigzag varint, as in Kafka):
 *   varint  length          bytes of the record after this varint
 *   i8      attributes      unused, written 0
 *   varlong timestampDelta  timestamp - baseTimestamp
 *   varint  offsetDelta     index of the record in its batch (0, 1, ...)
 *   varint  keyLength       -1 = null
 *   bytes   key
 *   varint  valueLength     -1 = null
 *   bytes   value
 *   varint  headerCount
 *   headerCount times:
 *     varint  headerKeyLength (>= 0)
 *     bytes   headerKey
 *     varint  headerValueLength (-1 = null)
 *     bytes   headerValue
 *
 * Format 1 (read only). Header, 52 bytes, little-endian:
 *   0 base_offset i64, 8 length u32 (whole batch), 12 crc u32 (CRC-32C of
 *   [16, length)), 16 magic u8 = 1, 17 attributes u8 (0), 18 producer_epoch
 *   i16, 20 record_count u32, 24 first_timestamp i64, 32 max_timestamp i64,
 *   40 producer_id i64, 48 base_sequence i32, 52 records.
 * Format 1 record: varint body_length, zigzag timestamp_delta, key_length
 *   (0 = null, else length + 1), key, value_length (same), value, varint
 *   header_count, headers (varint key length, key, value length as above, value).
 */
#ifndef US_BATCH_H
#define US_BATCH_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "varint.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "unstoppable loads little-endian integers natively; big-endian hosts are not supported"
#endif

#define US_MAGIC 2              /* what writers write */
#define US_MAGIC_V1 1           /* still read */
#define US_BATCH_HEADER_SIZE 61
#define US_BATCH_HEADER_SIZE_V1 52
#define US_BATCH_MIN_PROBE 17   /* bytes needed to see the magic byte */
/* Upper bounds of one record's framing around its key, value and header
 * bytes: length <= 5 bytes, attributes 1, timestampDelta <= 10 (any two
 * timestamps may share a batch), offsetDelta <= 5, keyLength <= 5,
 * valueLength <= 5, headerCount <= 5. Without a key and headers, keyLength
 * and headerCount take 1 byte each. */
#define US_RECORD_MAX_OVERHEAD 36
#define US_RECORD_MAX_OVERHEAD_PLAIN 28
#define US_RECORD_MIN_SIZE 7
#define US_BATCH_MAX_LENGTH 0x7fffffffu
#define US_PARTITION_LEADER_EPOCH 0

/* Attributes (format 2). */
#define US_ATTR_COMPRESSION_MASK 0x0007
#define US_ATTR_TIMESTAMP_TYPE 0x0008
#define US_ATTR_TRANSACTIONAL 0x0010
#define US_ATTR_CONTROL 0x0020
#define US_ATTR_DELETE_HORIZON 0x0040
#define US_ATTR_RESERVED_MASK 0xff80
#define US_CODEC_NONE 0
#define US_CODEC_GZIP 1
#define US_CODEC_SNAPPY 2
#define US_CODEC_LZ4 3
#define US_CODEC_ZSTD 4

/* Field offsets of format 2 (see the table above). */
#define US_OFF_BASE_OFFSET 0
#define US_OFF_LENGTH 8
#define US_OFF_LEADER_EPOCH 12
#define US_OFF_MAGIC 16
#define US_OFF_CRC 17
#define US_OFF_ATTRIBUTES 21
#define US_OFF_LAST_OFFSET_DELTA 23
#define US_OFF_FIRST_TIMESTAMP 27
#define US_OFF_MAX_TIMESTAMP 35
#define US_OFF_PRODUCER_ID 43
#define US_OFF_PRODUCER_EPOCH 51
#define US_OFF_BASE_SEQUENCE 53
#define US_OFF_RECORD_COUNT 57
#define US_CRC_START 21
#define US_CRC_START_V1 16

/* Result codes of the checking and decoding functions. */
enum {
    US_OK = 0,
    US_INCOMPLETE = 1,       /* fewer bytes available than the batch claims: a torn or growing tail */
    US_BAD_MAGIC = 2,        /* unknown format version */
    US_BAD_LENGTH = 3,       /* length smaller than a header or absurdly large */
    US_BAD_CRC = 4,          /* checksum mismatch */
    US_BAD_ATTRIBUTES = 5,   /* reserved bits set or unknown compression */
    US_BAD_RECORDS = 6,      /* records do not parse to exactly `length` bytes / `record_count` records */
    US_BAD_COUNT = 7,        /* record_count is 0, or lastOffsetDelta disagrees with it */
    US_COMPRESSED = 8,       /* a checked, compressed batch: decompress its records first */
    US_BAD_EPOCH = 9         /* partitionLeaderEpoch is not the 0 every stored batch carries */
};

/* Both formats parse into this (length is always the whole batch, header included). */
typedef struct {
    int64_t base_offset;
    uint32_t length;
    uint32_t crc;
    uint8_t magic;
    uint16_t attributes;
    int16_t producer_epoch;
    uint32_t record_count;
    int64_t first_timestamp;
    int64_t max_timestamp;
    int64_t producer_id;
    int32_t base_sequence;
    int32_t last_offset_delta;
    int32_t partition_leader_epoch;
} us_batch_header;

/* Where one record's parts lie, as byte offsets from the start of its batch. */
typedef struct {
    int64_t timestamp;
    uint32_t key_pos;
    int32_t key_len;          /* -1 = null */
    uint32_t value_pos;
    int32_t value_len;        /* -1 = null */
    uint32_t headers_pos;     /* first header's key length varint */
    uint32_t header_count;
    uint32_t end;             /* one past the record's last byte */
} us_record_view;

static inline uint32_t us_ld32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t us_ld64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void us_st32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void us_st64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static inline uint16_t us_ld16be(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return __builtin_bswap16(v); }
static inline uint32_t us_ld32be(const unsigned char *p) { return __builtin_bswap32(us_ld32(p)); }
static inline uint64_t us_ld64be(const unsigned char *p) { return __builtin_bswap64(us_ld64(p)); }
static inline void us_st16be(unsigned char *p, uint16_t v) { v = __builtin_bswap16(v); memcpy(p, &v, 2); }
static inline void us_st32be(unsigned char *p, uint32_t v) { us_st32(p, __builtin_bswap32(v)); }
static inline void us_st64be(unsigned char *p, uint64_t v) { us_st64(p, __builtin_bswap64(v)); }

/* Header fields of a batch of either format, for walking a run of batches
 * whose headers were already checked (the caller guarantees >= 61 bytes, or
 * 52 for a format-1 batch). */
static inline int64_t us_batch_base_offset(const unsigned char *b) {
    return b[US_OFF_MAGIC] == US_MAGIC_V1 ? (int64_t)us_ld64(b) : (int64_t)us_ld64be(b);
}
static inline uint32_t us_batch_total_length(const unsigned char *b) {
    return b[US_OFF_MAGIC] == US_MAGIC_V1 ? us_ld32(b + 8) : us_ld32be(b + US_OFF_LENGTH) + 12u;
}
static inline uint32_t us_batch_record_count(const unsigned char *b) {
    return b[US_OFF_MAGIC] == US_MAGIC_V1 ? us_ld32(b + 20) : us_ld32be(b + US_OFF_RECORD_COUNT);
}
static inline int64_t us_batch_max_timestamp(const unsigned char *b) {
    return b[US_OFF_MAGIC] == US_MAGIC_V1 ? (int64_t)us_ld64(b + 32) : (int64_t)us_ld64be(b + US_OFF_MAX_TIMESTAMP);
}
static inline void us_batch_set_base_offset(unsigned char *b, int64_t off) {
    if (b[US_OFF_MAGIC] == US_MAGIC_V1) us_st64(b, (uint64_t)off); else us_st64be(b, (uint64_t)off);
}
static inline uint32_t us_batch_header_size(uint8_t magic) {
    return magic == US_MAGIC_V1 ? US_BATCH_HEADER_SIZE_V1 : US_BATCH_HEADER_SIZE;
}

/* Parse the fixed header (either format) without checking the CRC. Returns
 * US_OK, US_INCOMPLETE (fewer bytes than a header, or fewer than `length`), or
 * a US_BAD_* code. */
int us_batch_parse_header(const unsigned char *buf, size_t avail, us_batch_header *h);

/* us_batch_parse_header plus the CRC, the attributes and the record count.
 * A compressed batch that passes gives US_COMPRESSED. */
int us_batch_check(const unsigned char *buf, size_t avail, us_batch_header *h);

/* Fill `out[0..record_count)` with the positions of each record of a checked,
 * uncompressed batch. Every varint and length is bounds-checked against
 * h->length; returns US_OK or US_BAD_RECORDS. A compressed batch's
 * records go through us_records_decode once decompressed. */
int us_batch_decode(const unsigned char *buf, const us_batch_header *h, us_record_view *out);

/* The records of a decompressed format-2 batch: `recs[0..len)` holds exactly
 * h->record_count records; positions in `out` are relative to `recs`. */
int us_records_decode(const unsigned char *recs, size_t len, const us_batch_header *h,
                      us_record_view *out);

/* us_batch_check and us_batch_decode in one pass over memory: `out` must hold
 * record_count entries (check record_count with us_batch_parse_header first).
 * Returns US_OK, US_COMPRESSED (nothing decoded), or the code us_batch_check
 * would give, else US_BAD_RECORDS. */
int us_batch_check_decode(const unsigned char *buf, size_t avail, us_batch_header *h,
                          us_record_view *out);

/* Write a format-2 header (all but batchLength and crc) at buf[0..61). */
void us_batch_write_header(unsigned char *buf, const us_batch_header *h);

/* Set batchLength and the CRC of a fully written format-2 batch of `length` bytes. */
void us_batch_seal(unsigned char *buf, uint32_t length);

/* Make every format-2 batch in buf[0..size) (whole batches back to back, as
 * an encoder holds them) a LogAppendTime batch appended at `ts` ms: set
 * attribute bit 3 and maxTimestamp, and re-seal the CRC, as Kafka's broker
 * does for a topic with message.timestamp.type=LogAppendTime. The records are
 * left as they are; readers take maxTimestamp as every record's timestamp. */
void us_batches_set_log_append_time(unsigned char *buf, size_t size, int64_t ts);

static inline size_t us_zvarint_size(int64_t v) { return us_varint_size(us_zigzag(v)); }
static inline unsigned char *us_put_zvarint(unsigned char *p, int64_t v) { return us_put_varint(p, us_zigzag(v)); }

/* Encoded size of one format-2 record, and the encoder. `headers` is the
 * already encoded header block (header_count entries) of `headers_len` bytes.
 * Lengths of -1 mean null. */
static inline size_t us_record_body_size(int64_t ts_delta, uint32_t offset_delta, int64_t key_len,
                                         int64_t value_len, size_t headers_len, uint32_t header_count) {
    size_t n = 1 + us_zvarint_size(ts_delta) + us_zvarint_size(offset_delta);
    n += us_zvarint_size(key_len) + (key_len > 0 ? (size_t)key_len : 0);
    n += us_zvarint_size(value_len) + (value_len > 0 ? (size_t)value_len : 0);
    n += us_zvarint_size(header_count) + headers_len;
    return n;
}

static inline size_t us_record_size(int64_t ts_delta, uint32_t offset_delta, int64_t key_len,
                                    int64_t value_len, size_t headers_len, uint32_t header_count) {
    size_t body = us_record_body_size(ts_delta, offset_delta, key_len, value_len, headers_len, header_count);
    return us_zvarint_size((int64_t)body) + body;
}

static inline unsigned char *us_write_record(unsigned char *p, int64_t ts_delta, uint32_t offset_delta,
                                             const void *key, int64_t key_len,
                                             const void *value, int64_t value_len,
                                             const void *headers, size_t headers_len,
                                             uint32_t header_count) {
    size_t body = us_record_body_size(ts_delta, offset_delta, key_len, value_len, headers_len, header_count);
    p = us_put_zvarint(p, (int64_t)body);
    *p++ = 0;  /* record attributes */
    p = us_put_zvarint(p, ts_delta);
    p = us_put_zvarint(p, offset_delta);
    p = us_put_zvarint(p, key_len);
    if (key_len > 0) { memcpy(p, key, (size_t)key_len); p += key_len; }
    p = us_put_zvarint(p, value_len);
    if (value_len > 0) { memcpy(p, value, (size_t)value_len); p += value_len; }
    p = us_put_zvarint(p, header_count);
    if (headers_len) { memcpy(p, headers, headers_len); p += headers_len; }
    return p;
}

/* Encoded size of one format-2 header and its encoder (value_len -1 = null). */
static inline size_t us_header_size(size_t key_len, int64_t value_len) {
    return us_zvarint_size((int64_t)key_len) + key_len + us_zvarint_size(value_len) +
           (value_len > 0 ? (size_t)value_len : 0);
}

static inline unsigned char *us_write_header(unsigned char *p, const void *key, size_t key_len,
                                             const void *value, int64_t value_len) {
    p = us_put_zvarint(p, (int64_t)key_len);
    if (key_len) { memcpy(p, key, key_len); p += key_len; }
    p = us_put_zvarint(p, value_len);
    if (value_len > 0) { memcpy(p, value, (size_t)value_len); p += value_len; }
    return p;
}

/* Decode the headers block of a record of format `magic`: fills up to `n`
 * (key_pos, key_len, value_pos, value_len) quadruples, positions relative to
 * `base`. Returns US_OK or US_BAD_RECORDS. */
int us_headers_decode(const unsigned char *base, uint32_t pos, uint32_t end, uint32_t n, uint8_t magic,
                      uint32_t *key_pos, uint32_t *key_len, uint32_t *value_pos, int32_t *value_len);

#endif
