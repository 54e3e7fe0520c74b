/* Record batch parsing, checking and decoding of both formats; the layouts
 * are in batch.h. Writers only write format 2. */
#include "batch.h"
#include "crc32c.h"

static int parse_v1(const unsigned char *buf, size_t avail, us_batch_header *h) {
    if (avail < US_BATCH_HEADER_SIZE_V1) return US_INCOMPLETE;
    h->base_offset = (int64_t)us_ld64(buf);
    h->length = us_ld32(buf + 8);
    h->crc = us_ld32(buf + 12);
    h->magic = buf[16];
    h->attributes = buf[17];
    uint16_t epoch; memcpy(&epoch, buf + 18, 2);
    h->producer_epoch = (int16_t)epoch;
    h->record_count = us_ld32(buf + 20);
    h->first_timestamp = (int64_t)us_ld64(buf + 24);
    h->max_timestamp = (int64_t)us_ld64(buf + 32);
    h->producer_id = (int64_t)us_ld64(buf + 40);
    h->base_sequence = (int32_t)us_ld32(buf + 48);
    h->last_offset_delta = (int32_t)(h->record_count - 1);
    h->partition_leader_epoch = -1;
    if (h->length < US_BATCH_HEADER_SIZE_V1 || h->length > US_BATCH_MAX_LENGTH) return US_BAD_LENGTH;
    if (avail < h->length) return US_INCOMPLETE;
    return US_OK;
}

static int parse_v2(const unsigned char *buf, size_t avail, us_batch_header *h) {
    if (avail < US_BATCH_HEADER_SIZE) return US_INCOMPLETE;
    h->base_offset = (int64_t)us_ld64be(buf + US_OFF_BASE_OFFSET);
    int32_t blen = (int32_t)us_ld32be(buf + US_OFF_LENGTH);
    h->partition_leader_epoch = (int32_t)us_ld32be(buf + US_OFF_LEADER_EPOCH);
    h->magic = buf[US_OFF_MAGIC];
    h->crc = us_ld32be(buf + US_OFF_CRC);
    h->attributes = us_ld16be(buf + US_OFF_ATTRIBUTES);
    h->last_offset_delta = (int32_t)us_ld32be(buf + US_OFF_LAST_OFFSET_DELTA);
    h->first_timestamp = (int64_t)us_ld64be(buf + US_OFF_FIRST_TIMESTAMP);
    h->max_timestamp = (int64_t)us_ld64be(buf + US_OFF_MAX_TIMESTAMP);
    h->producer_id = (int64_t)us_ld64be(buf + US_OFF_PRODUCER_ID);
    h->producer_epoch = (int16_t)us_ld16be(buf + US_OFF_PRODUCER_EPOCH);
    h->base_sequence = (int32_t)us_ld32be(buf + US_OFF_BASE_SEQUENCE);
    h->record_count = us_ld32be(buf + US_OFF_RECORD_COUNT);
    if (blen < US_BATCH_HEADER_SIZE - 12 || (uint32_t)blen > US_BATCH_MAX_LENGTH - 12) {
        h->length = 0;
        return US_BAD_LENGTH;
    }
    h->length = (uint32_t)blen + 12;
    if (avail < h->length) return US_INCOMPLETE;
    return US_OK;
}

int us_batch_parse_header(const unsigned char *buf, size_t avail, us_batch_header *h) {
    if (avail < US_BATCH_MIN_PROBE) return US_INCOMPLETE;
    if (buf[US_OFF_MAGIC] == US_MAGIC) return parse_v2(buf, avail, h);
    if (buf[US_OFF_MAGIC] == US_MAGIC_V1) return parse_v1(buf, avail, h);
    h->magic = buf[US_OFF_MAGIC];
    return US_BAD_MAGIC;
}

/* The checks after the CRC, shared by us_batch_check and the one-pass path. */
static int check_fields(const us_batch_header *h) {
    if (h->magic == US_MAGIC_V1) {
        if (h->attributes) return US_BAD_ATTRIBUTES;
        if (h->record_count == 0) return US_BAD_COUNT;
        /* Every record takes at least 5 bytes, which bounds record_count
         * before anyone allocates record_count entries for it. */
        if ((uint64_t)h->record_count * 5 > h->length - US_BATCH_HEADER_SIZE_V1) return US_BAD_RECORDS;
        return US_OK;
    }
    if (h->partition_leader_epoch != US_PARTITION_LEADER_EPOCH) return US_BAD_EPOCH;
    if (h->attributes & US_ATTR_RESERVED_MASK) return US_BAD_ATTRIBUTES;
    if ((h->attributes & US_ATTR_COMPRESSION_MASK) > US_CODEC_ZSTD) return US_BAD_ATTRIBUTES;
    if (h->record_count == 0 || h->record_count > 0x7fffffffu ||
        h->last_offset_delta != (int32_t)(h->record_count - 1)) return US_BAD_COUNT;
    if (h->attributes & US_ATTR_COMPRESSION_MASK) return US_COMPRESSED;
    if ((uint64_t)h->record_count * US_RECORD_MIN_SIZE > h->length - US_BATCH_HEADER_SIZE) return US_BAD_RECORDS;
    return US_OK;
}

int us_batch_check(const unsigned char *buf, size_t avail, us_batch_header *h) {
    int rc = us_batch_parse_header(buf, avail, h);
    if (rc != US_OK) return rc;
    size_t start = h->magic == US_MAGIC_V1 ? US_CRC_START_V1 : US_CRC_START;
    if (us_crc32c_extend(0, buf + start, h->length - start) != h->crc) return US_BAD_CRC;
    return check_fields(h);
}

#define NEED(cond) do { if (!(cond)) return US_BAD_RECORDS; } while (0)

/* Format 1 nullable length: 0 = null, else length + 1. */
static inline int get_len_v1(const unsigned char **pp, const unsigned char *end, int32_t *out) {
    uint64_t v;
    if (us_get_varint(pp, end, &v)) return -1;
    if (v == 0) { *out = -1; return 0; }
    v -= 1;
    if (v > (uint64_t)(end - *pp)) return -1;
    *out = (int32_t)v;
    return 0;
}

/* Format 2 nullable length: zigzag, -1 = null. */
static inline int get_len_v2(const unsigned char **pp, const unsigned char *end, int32_t *out) {
    uint64_t u;
    if (us_get_varint(pp, end, &u)) return -1;
    int64_t v = us_unzigzag(u);
    if (v == -1) { *out = -1; return 0; }
    if (v < 0 || v > (int64_t)(end - *pp)) return -1;
    *out = (int32_t)v;
    return 0;
}

static int decode_v1(const unsigned char *buf, const us_batch_header *h, us_record_view *out) {
    const unsigned char *p = buf + US_BATCH_HEADER_SIZE_V1;
    const unsigned char *end = buf + h->length;
    for (uint32_t i = 0; i < h->record_count; i++) {
        uint64_t body, v;
        NEED(us_get_varint(&p, end, &body) == 0);
        NEED(body <= (uint64_t)(end - p));
        const unsigned char *rend = p + body;
        NEED(us_get_varint(&p, rend, &v) == 0);
        out[i].timestamp = h->first_timestamp + us_unzigzag(v);
        int32_t kl, vl;
        NEED(get_len_v1(&p, rend, &kl) == 0);
        out[i].key_pos = (uint32_t)(p - buf);
        out[i].key_len = kl;
        if (kl > 0) p += kl;
        NEED(get_len_v1(&p, rend, &vl) == 0);
        out[i].value_pos = (uint32_t)(p - buf);
        out[i].value_len = vl;
        if (vl > 0) p += vl;
        NEED(us_get_varint(&p, rend, &v) == 0);
        NEED(v <= (uint64_t)(rend - p));  /* each header takes >= 2 bytes; this bounds the count */
        out[i].header_count = (uint32_t)v;
        out[i].headers_pos = (uint32_t)(p - buf);
        out[i].end = (uint32_t)(rend - buf);
        for (uint64_t j = 0; j < v; j++) {
            uint64_t klen;
            int32_t hvl;
            NEED(us_get_varint(&p, rend, &klen) == 0);
            NEED(klen <= (uint64_t)(rend - p));
            p += klen;
            NEED(get_len_v1(&p, rend, &hvl) == 0);
            if (hvl > 0) p += hvl;
        }
        NEED(p == rend);
    }
    NEED(p == end);
    return US_OK;
}

/* A record's headers from p: hc key/value pairs that must end exactly at
 * rend (the record's end). On success *pp = rend and 0; else -1. */
static inline int skip_headers_v2(const unsigned char **pp, const unsigned char *p,
                                  const unsigned char *rend, uint64_t hc) {
    for (uint64_t j = 0; j < hc; j++) {
        int32_t hkl, hvl;
        if (get_len_v2(&p, rend, &hkl) || hkl < 0) return -1;
        p += hkl;
        if (get_len_v2(&p, rend, &hvl)) return -1;
        if (hvl > 0) p += hvl;
    }
    if (p != rend) return -1;
    *pp = rend;
    return 0;
}

/* One format-2 record at *pp (bounded by end); returns 0 or -1. */
static int decode_record_v2_checked(const unsigned char *buf, const unsigned char **pp,
                                    const unsigned char *end, const us_batch_header *h,
                                    uint32_t i, us_record_view *o) {
    const unsigned char *p = *pp;
    uint64_t u;
    if (us_get_varint(&p, end, &u)) return -1;
    int64_t body = us_unzigzag(u);
    if (body < 6 || body > (int64_t)(end - p)) return -1;
    const unsigned char *rend = p + body;
    p++;  /* record attributes: unused */
    if (us_get_varint(&p, rend, &u)) return -1;
    o->timestamp = h->first_timestamp + us_unzigzag(u);
    if (us_get_varint(&p, rend, &u) || u != (uint64_t)i << 1) return -1;  /* offsetDelta: zigzag(i) */
    int32_t kl, vl;
    if (get_len_v2(&p, rend, &kl)) return -1;
    o->key_pos = (uint32_t)(p - buf);
    o->key_len = kl;
    if (kl > 0) p += kl;
    if (get_len_v2(&p, rend, &vl)) return -1;
    o->value_pos = (uint32_t)(p - buf);
    o->value_len = vl;
    if (vl > 0) p += vl;
    if (us_get_varint(&p, rend, &u)) return -1;
    int64_t hc = us_unzigzag(u);
    if (hc < 0 || hc > (int64_t)(rend - p)) return -1;  /* each header takes >= 2 bytes */
    o->header_count = (uint32_t)hc;
    o->headers_pos = (uint32_t)(p - buf);
    o->end = (uint32_t)(rend - buf);
    return skip_headers_v2(pp, p, rend, (uint64_t)hc);
}

/* A varint at p with no bounds check: the caller guarantees that the 10
 * bytes from p are readable. Returns the byte after it, or NULL when it runs
 * past 10 bytes. */
static inline __attribute__((always_inline)) const unsigned char *
get_varint_unbounded(const unsigned char *p, uint64_t *out) {
    uint64_t v = p[0];
    if (v < 0x80) { *out = v; return p + 1; }
    /* Adding the next byte shifted and subtracting the continuation bit
     * just added takes one operation less than masking both. */
    uint64_t b = p[1];
    v += (b << 7) - 0x80;
    if (b < 0x80) { *out = v; return p + 2; }
    b = p[2];
    v += (b << 14) - (0x80 << 7);
    if (b < 0x80) { *out = v; return p + 3; }
    v -= (uint64_t)0x80 << 14;
    for (int k = 3; k < US_VARINT_MAX; k++) {
        b = p[k];
        v |= (b & 0x7f) << (7 * k);
        if (b < 0x80) { *out = v; return p + k + 1; }
    }
    return NULL;
}

/* The record decoder of the read path: the same checks as
 * decode_record_v2_checked, with the varints read without a bounds check
 * per byte. That is safe when the record ends >= FAST_SLACK bytes before
 * the end of the batch: each field is then read from a position at most
 * 20 bytes past the record's end (a varint is <= 10 bytes), and every
 * position is compared with the record's end before it is trusted, so a
 * field that runs past the record fails exactly as in the checked decoder.
 * A record nearer the batch's end goes to the checked decoder. Returns 0 or
 * -1 (bad record). Measured on 10k-record batches of 100-byte values (in
 * cache): 10.7 ns per record with the checked decoder alone, 6.1 with this
 * (format 1 took 5.1). */
/* A key or value of the fast decoder: ``u`` its zigzag length varint (1 is
 * -1, null). Sets ``*len`` and returns the position after the field, or
 * NULL when the length is negative (other than null) or runs past ``rend``. */
static inline __attribute__((always_inline)) const unsigned char *
take_field(const unsigned char *p, const unsigned char *rend, uint64_t u, int32_t *len) {
    if (u == 1) {
        *len = -1;
        return p;
    }
    if ((u & 1) || (u >> 1) > (uint64_t)(rend - p)) return NULL;
    *len = (int32_t)(u >> 1);
    return p + (u >> 1);
}

#define FAST_SLACK 32
static inline __attribute__((always_inline)) int
decode_record_v2(const unsigned char *buf, const unsigned char **pp, const unsigned char *end,
                 const us_batch_header *h, uint32_t i, us_record_view *o) {
    const unsigned char *p = *pp;
    uint64_t u;
    if (__builtin_expect(end - p < FAST_SLACK, 0)) return decode_record_v2_checked(buf, pp, end, h, i, o);
    p = get_varint_unbounded(p, &u);
    if (p == NULL || (u & 1)) return -1;  /* length: zigzag, never negative */
    uint64_t body = u >> 1;
    if (body < 6 || body > (uint64_t)(end - p)) return -1;
    const unsigned char *rend = p + body;
    if (__builtin_expect(end - rend < FAST_SLACK, 0)) return decode_record_v2_checked(buf, pp, end, h, i, o);
    p++;  /* record attributes: unused */
    if (!(p = get_varint_unbounded(p, &u))) return -1;
    o->timestamp = h->first_timestamp + us_unzigzag(u);
    if (!(p = get_varint_unbounded(p, &u)) || u != (uint64_t)i << 1) return -1;  /* offsetDelta: zigzag(i) */
    if (!(p = get_varint_unbounded(p, &u)) || p > rend) return -1;  /* keyLength */
    o->key_pos = (uint32_t)(p - buf);
    if (!(p = take_field(p, rend, u, &o->key_len))) return -1;
    /* valueLength; a headerCount must follow it, so p < rend */
    if (!(p = get_varint_unbounded(p, &u)) || p >= rend) return -1;
    o->value_pos = (uint32_t)(p - buf);
    o->end = (uint32_t)(rend - buf);
    if (u == (uint64_t)(rend - 1 - p) << 1 && rend[-1] == 0) {
        /* The common record: the value runs to the byte before the record's
         * end, and that byte is a headerCount of 0. Both come from the
         * record's length, so this costs no load that waits on the value
         * length, as reading the headerCount after the value would. */
        o->value_len = (int32_t)(u >> 1);
        o->header_count = 0;
        o->headers_pos = o->end;  /* after the headerCount, as the checked decoder sets it */
        *pp = rend;
        return 0;
    }
    if (!(p = take_field(p, rend, u, &o->value_len))) return -1;
    if (!(p = get_varint_unbounded(p, &u)) || p > rend) return -1;  /* headerCount */
    if ((u & 1) || (u >> 1) > (uint64_t)(rend - p)) return -1;  /* each header takes >= 2 bytes */
    o->header_count = (uint32_t)(u >> 1);
    o->headers_pos = (uint32_t)(p - buf);
    return skip_headers_v2(pp, p, rend, u >> 1);
}

/* A LogAppendTime batch (attribute bit 3): every record's timestamp is the
 * batch's maxTimestamp, the time the log appended it, whatever the record's
 * own delta says (Kafka's DefaultRecordBatch, KIP-32). Set after decoding, so
 * the per-record loop of CreateTime batches carries no extra branch. */
static inline void log_append_time(const us_batch_header *h, us_record_view *out) {
    if (!(h->attributes & US_ATTR_TIMESTAMP_TYPE)) return;
    for (uint32_t i = 0; i < h->record_count; i++) out[i].timestamp = h->max_timestamp;
}

/* Records in base[start, end); positions are relative to base. */
static int decode_v2(const unsigned char *base, size_t start, size_t endpos,
                     const us_batch_header *h, us_record_view *out) {
    const unsigned char *p = base + start;
    const unsigned char *end = base + endpos;
    for (uint32_t i = 0; i < h->record_count; i++)
        NEED(decode_record_v2(base, &p, end, h, i, &out[i]) == 0);
    NEED(p == end);
    log_append_time(h, out);
    return US_OK;
}

int us_records_decode(const unsigned char *recs, size_t len, const us_batch_header *h,
                      us_record_view *out) {
    if ((uint64_t)h->record_count * US_RECORD_MIN_SIZE > len) return US_BAD_RECORDS;
    return decode_v2(recs, 0, len, h, out);
}

int us_batch_decode(const unsigned char *buf, const us_batch_header *h, us_record_view *out) {
    if (h->magic == US_MAGIC_V1) return decode_v1(buf, h, out);
    return decode_v2(buf, US_BATCH_HEADER_SIZE, h->length, h, out);
}

/* One pass over memory: records are decoded window by window, and each window
 * is checksummed right after, while it is still in cache. The views are only
 * trusted when the whole CRC matches; decoding first is safe because every
 * read in the decoding loop is bounds-checked against the batch. */
#define CRC_WINDOW (32 * 1024)

int us_batch_check_decode(const unsigned char *buf, size_t avail, us_batch_header *h,
                          us_record_view *out) {
    int rc = us_batch_parse_header(buf, avail, h);
    if (rc != US_OK) return rc;
    if (h->magic == US_MAGIC_V1) {
        rc = us_batch_check(buf, avail, h);
        if (rc != US_OK) return rc;
        return decode_v1(buf, h, out);
    }
    if (check_fields(h) != US_OK) {
        /* Report a damaged header as the CRC failure it most likely is. */
        return us_batch_check(buf, avail, h);
    }
    uint32_t crc = 0;
    size_t crc_pos = US_CRC_START;
    const unsigned char *p = buf + US_BATCH_HEADER_SIZE;
    const unsigned char *end = buf + h->length;
    int bad = 0;
    for (uint32_t i = 0; i < h->record_count; i++) {
        /* The batch comes from the page cache, not the CPU cache: asking for
         * the bytes 2 KiB ahead took a 1M-record scan from 6.9 to 7.8 GB/s
         * here (the records' varints are read one after another, so each
         * miss would otherwise stall the loop). */
        __builtin_prefetch(p + 2048);
        if (decode_record_v2(buf, &p, end, h, i, &out[i])) { bad = 1; break; }
        size_t done = (size_t)(p - buf);
        if (done - crc_pos >= CRC_WINDOW) {
            crc = us_crc32c_extend(crc, buf + crc_pos, done - crc_pos);
            crc_pos = done;
        }
    }
    crc = us_crc32c_extend(crc, buf + crc_pos, h->length - crc_pos);
    if (crc != h->crc) return US_BAD_CRC;
    if (bad || p != end) return US_BAD_RECORDS;
    log_append_time(h, out);
    return US_OK;
}

int us_headers_decode(const unsigned char *base, uint32_t pos, uint32_t endpos, uint32_t n, uint8_t magic,
                      uint32_t *key_pos, uint32_t *key_len, uint32_t *value_pos, int32_t *value_len) {
    const unsigned char *p = base + pos, *end = base + endpos;
    for (uint32_t j = 0; j < n; j++) {
        int32_t hkl, hvl;
        if (magic == US_MAGIC_V1) {
            uint64_t klen;
            NEED(us_get_varint(&p, end, &klen) == 0);
            NEED(klen <= (uint64_t)(end - p));
            hkl = (int32_t)klen;
        } else {
            NEED(get_len_v2(&p, end, &hkl) == 0 && hkl >= 0);
        }
        key_pos[j] = (uint32_t)(p - base);
        key_len[j] = (uint32_t)hkl;
        p += hkl;
        if (magic == US_MAGIC_V1) NEED(get_len_v1(&p, end, &hvl) == 0);
        else NEED(get_len_v2(&p, end, &hvl) == 0);
        value_pos[j] = (uint32_t)(p - base);
        value_len[j] = hvl;
        if (hvl > 0) p += hvl;
    }
    return US_OK;
}

void us_batch_write_header(unsigned char *buf, const us_batch_header *h) {
    us_st64be(buf + US_OFF_BASE_OFFSET, (uint64_t)h->base_offset);
    us_st32be(buf + US_OFF_LEADER_EPOCH, (uint32_t)US_PARTITION_LEADER_EPOCH);
    buf[US_OFF_MAGIC] = US_MAGIC;
    us_st16be(buf + US_OFF_ATTRIBUTES, h->attributes);
    us_st32be(buf + US_OFF_LAST_OFFSET_DELTA, h->record_count - 1);
    us_st64be(buf + US_OFF_FIRST_TIMESTAMP, (uint64_t)h->first_timestamp);
    us_st64be(buf + US_OFF_MAX_TIMESTAMP, (uint64_t)h->max_timestamp);
    us_st64be(buf + US_OFF_PRODUCER_ID, (uint64_t)h->producer_id);
    us_st16be(buf + US_OFF_PRODUCER_EPOCH, (uint16_t)h->producer_epoch);
    us_st32be(buf + US_OFF_BASE_SEQUENCE, (uint32_t)h->base_sequence);
    us_st32be(buf + US_OFF_RECORD_COUNT, h->record_count);
}

void us_batch_seal(unsigned char *buf, uint32_t length) {
    us_st32be(buf + US_OFF_LENGTH, length - 12);
    us_st32be(buf + US_OFF_CRC, us_crc32c_extend(0, buf + US_CRC_START, length - US_CRC_START));
}

void us_batches_set_log_append_time(unsigned char *buf, size_t size, int64_t ts) {
    size_t pos = 0;
    while (pos + US_BATCH_HEADER_SIZE <= size && buf[pos + US_OFF_MAGIC] == US_MAGIC) {
        uint32_t n = us_batch_total_length(buf + pos);
        if (n < US_BATCH_HEADER_SIZE || n > size - pos) return;
        us_st16be(buf + pos + US_OFF_ATTRIBUTES,
                  (uint16_t)(us_ld16be(buf + pos + US_OFF_ATTRIBUTES) | US_ATTR_TIMESTAMP_TYPE));
        us_st64be(buf + pos + US_OFF_MAX_TIMESTAMP, (uint64_t)ts);
        us_batch_seal(buf + pos, n);
        pos += n;
    }
}
