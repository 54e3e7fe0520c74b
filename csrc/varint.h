/* Unsigned LEB128 varints (7 bits per byte, low groups first, high bit = more),
 * as in protobuf and Kafka's record format, plus zigzag for signed values.
 * A 64-bit value takes at most 10 bytes. Readers are bounds-checked. */
#ifndef US_VARINT_H
#define US_VARINT_H
#include <stddef.h>
#include <stdint.h>

#define US_VARINT_MAX 10

static inline size_t us_varint_size(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) { v >>= 7; n++; }
    return n;
}

static inline unsigned char *us_put_varint(unsigned char *p, uint64_t v) {
    while (v >= 0x80) { *p++ = (unsigned char)(v | 0x80); v >>= 7; }
    *p++ = (unsigned char)v;
    return p;
}

/* Reads one varint from [*pp, end). Returns 0 and advances *pp, or -1 when the
 * varint runs past `end` or is longer than 10 bytes. */
static inline int us_get_varint(const unsigned char **pp, const unsigned char *end, uint64_t *out) {
    const unsigned char *p = *pp;
    if (p < end && *p < 0x80) { *out = *p; *pp = p + 1; return 0; }  /* common 1-byte case */
    /* The 2- and 3-byte forms without a loop: a record's length and its value
     * length (zigzag, so 64 .. 8191 bytes take two) and offsetDelta (3 from
     * the 8,192nd record of a batch) take them in every format-2 batch. */
    if (end - p >= 3) {
        uint64_t b1 = p[1], v2 = (uint64_t)(p[0] & 0x7f) | (b1 & 0x7f) << 7;
        if (b1 < 0x80) { *out = v2; *pp = p + 2; return 0; }
        if (p[2] < 0x80) { *out = v2 | (uint64_t)p[2] << 14; *pp = p + 3; return 0; }
    }
    uint64_t v = 0;
    int shift = 0;
    while (p < end && shift < 70) {
        unsigned char b = *p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) { *out = v; *pp = p; return 0; }
        shift += 7;
    }
    return -1;
}

static inline uint64_t us_zigzag(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }
static inline int64_t us_unzigzag(uint64_t v) { return (int64_t)(v >> 1) ^ -(int64_t)(v & 1); }

#endif
