/* Record batch format (format version 1). All integers little-endian.
 * This table is the contract; docs/FORMAT.md mirrors it field by field and
 * tests/format_reference.py decodes it independently with `struct`.
 *
 * Batch header, 52 bytes:
 *   offset size  field
 *   0      8     base_offset      i64  offset of the first record; assigned at append,
 *                                      NOT covered by the CRC (so a batch can be encoded
 *                                      and checksummed before its offset is known)
 *   8      4     length           u32  total bytes of this batch, header included (>= 52)
 *   12     4     crc              u32  CRC-32C of bytes [16, length)
 *   16     1     magic            u8   format version, 1
 *   17     1     attributes       u8   bits 0-2 compression (0 = none; others reserved),
 *                                      bits 3-7 reserved, must be 0
 *   18     2     producer_epoch   i16  -1 when no producer id
 *   20     4     record_count     u32  number of records (>= 1); offsets are
 *                                      base_offset .. base_offset + record_count - 1
 *   24     8     first_timestamp  i64  timestamp (ms since epoch) of the first record
 *   32     8     max_timestamp    i64  largest record timestamp in the batch
 *   40     8     producer_id      i64  -1 = not idempotent
 *   48     4     base_sequence    i32  sequence of the first record, -1 = none
 *   52     ...   records          record_count records, back to back
 *
 * Record:
 *   varint  body_length     bytes of the record after this varint
 *   varint  timestamp_delta zigzag(timestamp - first_timestamp)
 *   varint  key_length      0 = null key, else length + 1
 *   bytes   key
 *   varint  value_length    0 = null value, else length + 1
 *   bytes   value
 *   varint  header_count
 *   header_count times:
 *     varint  header_key_length   (length, UTF-8 bytes follow)
 *     bytes   header_key
 *     varint  header_value_length 0 = null, else length + 1
 *     bytes   header_value
 */
#ifndef US_BATCH_H
#define US_BATCH_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "varint.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "unstoppable stores integers little-endian and loads them natively; big-endian hosts are not supported"
#endif

#define US_MAGIC 1
#define US_BATCH_HEADER_SIZE 52
/* Upper bounds of one record's framing around its key, value and header
 * bytes: body_length <= 5 bytes, timestamp_delta <= 10 (any two timestamps
 * may share a batch), key_length <= 5, value_length <= 5, header_count <= 5.
 * Without a key and headers, key_length and header_count take 1 byte each. */
#define US_RECORD_MAX_OVERHEAD 30
#define US_RECORD_MAX_OVERHEAD_PLAIN 22
#define US_BATCH_MAX_LENGTH 0x7fffffffu
#define US_ATTR_COMPRESSION_MASK 0x07
#define US_ATTR_RESERVED_MASK 0xf8

/* Field offsets (see the table above). */
#define US_OFF_BASE_OFFSET 0
#define US_OFF_LENGTH 8
#define US_OFF_CRC 12
#define US_OFF_MAGIC 16
#define US_OFF_ATTRIBUTES 17
#define US_OFF_PRODUCER_EPOCH 18
#define US_OFF_RECORD_COUNT 20
#define US_OFF_FIRST_TIMESTAMP 24
#define US_OFF_MAX_TIMESTAMP 32
#define US_OFF_PRODUCER_ID 40
#define US_OFF_BASE_SEQUENCE 48
#define US_CRC_START 16

/* Result codes of the checking and decoding functions. */
enum {
    US_OK = 0,
    US_INCOMPLETE = 1,       /* fewer bytes available than the batch claims: a torn or growing tail */
    US_BAD_MAGIC = 2,        /* unknown format version */
    US_BAD_LENGTH = 3,       /* length smaller than a header or absurdly large */
    US_BAD_CRC = 4,          /* checksum mismatch */
    US_BAD_ATTRIBUTES = 5,   /* reserved bits set or unknown compression */
    US_BAD_RECORDS = 6,      /* records do not parse to exactly `length` bytes / `record_count` records */
    US_BAD_COUNT = 7         /* record_count is 0 */
};

typedef struct {
    int64_t base_offset;
    uint32_t length;
    uint32_t crc;
    uint8_t magic;
    uint8_t attributes;
    int16_t producer_epoch;
    uint32_t record_count;
    int64_t first_timestamp;
    int64_t max_timestamp;
    int64_t producer_id;
    int32_t base_sequence;
} us_batch_header;

/* Where one record's parts lie, as byte offsets from the start of its batch. */
typedef struct {
    int64_t timestamp;
    uint32_t key_pos;
    int32_t key_len;          /* -1 = null */
    uint32_t value_pos;
    int32_t value_len;        /* -1 = null */
    uint32_t headers_pos;     /* first header's key_length varint */
    uint32_t header_count;
    uint32_t end;             /* one past the record's last byte */
} us_record_view;

static inline uint32_t us_ld32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t us_ld64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void us_st32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void us_st64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }

/* Parse the fixed header without checking the CRC. Returns US_OK, US_INCOMPLETE
 * (fewer than 52 bytes, or fewer than `length`), or a US_BAD_* code. */
int us_batch_parse_header(const unsigned char *buf, size_t avail, us_batch_header *h);

/* us_batch_parse_header plus the CRC over [16, length). */
int us_batch_check(const unsigned char *buf, size_t avail, us_batch_header *h);

/* Fill `out[0..record_count)` with the positions of each record of a checked
 * batch. Every varint and length is bounds-checked against the batch; returns
 * US_OK or US_BAD_RECORDS. */
int us_batch_decode(const unsigned char *buf, const us_batch_header *h, us_record_view *out);

/* us_batch_check and us_batch_decode in one pass over memory: `out` must hold
 * record_count entries (check record_count with us_batch_parse_header first).
 * Returns US_OK, or the code us_batch_check would give, else US_BAD_RECORDS. */
int us_batch_check_decode(const unsigned char *buf, size_t avail, us_batch_header *h,
                          us_record_view *out);

/* Write the header fields (all but length and crc) at buf[0..52). */
void us_batch_write_header(unsigned char *buf, const us_batch_header *h);

/* Set length and the CRC over [16, length) of a fully written batch. */
void us_batch_seal(unsigned char *buf, uint32_t length);

/* Encoded size of one record, and the encoder. `headers` is the already encoded
 * header block (header_count entries) of `headers_len` bytes. Lengths of -1 mean null. */
static inline size_t us_record_body_size(int64_t ts_delta, int64_t key_len, int64_t value_len,
                                         size_t headers_len, uint32_t header_count) {
    size_t n = us_varint_size(us_zigzag(ts_delta));
    n += us_varint_size((uint64_t)(key_len + 1)) + (key_len > 0 ? (size_t)key_len : 0);
    n += us_varint_size((uint64_t)(value_len + 1)) + (value_len > 0 ? (size_t)value_len : 0);
    n += us_varint_size(header_count) + headers_len;
    return n;
}

static inline size_t us_record_size(int64_t ts_delta, int64_t key_len, int64_t value_len,
                                    size_t headers_len, uint32_t header_count) {
    size_t body = us_record_body_size(ts_delta, key_len, value_len, headers_len, header_count);
    return us_varint_size(body) + body;
}

static inline unsigned char *us_write_record(unsigned char *p, int64_t ts_delta,
                                             const void *key, int64_t key_len,
                                             const void *value, int64_t value_len,
                                             const void *headers, size_t headers_len,
                                             uint32_t header_count) {
    size_t body = us_record_body_size(ts_delta, key_len, value_len, headers_len, header_count);
    p = us_put_varint(p, body);
    p = us_put_varint(p, us_zigzag(ts_delta));
    p = us_put_varint(p, (uint64_t)(key_len + 1));
    if (key_len > 0) { memcpy(p, key, (size_t)key_len); p += key_len; }
    p = us_put_varint(p, (uint64_t)(value_len + 1));
    if (value_len > 0) { memcpy(p, value, (size_t)value_len); p += value_len; }
    p = us_put_varint(p, header_count);
    if (headers_len) { memcpy(p, headers, headers_len); p += headers_len; }
    return p;
}

/* Encoded size of one header and its encoder (value_len -1 = null). */
static inline size_t us_header_size(size_t key_len, int64_t value_len) {
    return us_varint_size(key_len) + key_len + us_varint_size((uint64_t)(value_len + 1)) +
           (value_len > 0 ? (size_t)value_len : 0);
}

static inline unsigned char *us_write_header(unsigned char *p, const void *key, size_t key_len,
                                             const void *value, int64_t value_len) {
    p = us_put_varint(p, key_len);
    if (key_len) { memcpy(p, key, key_len); p += key_len; }
    p = us_put_varint(p, (uint64_t)(value_len + 1));
    if (value_len > 0) { memcpy(p, value, (size_t)value_len); p += value_len; }
    return p;
}

/* Decode the headers block of a record: fills up to `n` (key_pos, key_len,
 * value_pos, value_len) quadruples, positions relative to `base`. Returns US_OK
 * or US_BAD_RECORDS. */
int us_headers_decode(const unsigned char *base, uint32_t pos, uint32_t end, uint32_t n,
                      uint32_t *key_pos, uint32_t *key_len, uint32_t *value_pos, int32_t *value_len);

#endif
