/* Sparse segment indexes. Both files are arrays of fixed-size little-endian
 * entries, appended as the segment grows and memory-mapped for lookups.
 *
 * Offset index (<base>.index), 8 bytes per entry:
 *   0  4  relative_offset  u32  batch base offset - segment base offset
 *   4  4  position         u32  byte position of that batch in the segment
 * Time index (<base>.timeindex), 16 bytes per entry:
 *   0  8  max_timestamp    i64  largest record timestamp in the segment up to and
 *                               including the batch below
 *   8  4  relative_offset  u32  that batch's base offset - segment base offset
 *   12 4  position         u32  that batch's byte position
 * Entries are strictly increasing in relative_offset and position, and
 * non-decreasing in max_timestamp; a loader stops at the first entry that breaks
 * this (a torn or stale tail) and the partition rebuilds from there. */
#ifndef US_INDEX_H
#define US_INDEX_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define US_OFFSET_ENTRY_SIZE 8
#define US_TIME_ENTRY_SIZE 16

static inline uint32_t us_oi_rel(const unsigned char *idx, size_t i) {
    uint32_t v; memcpy(&v, idx + i * US_OFFSET_ENTRY_SIZE, 4); return v;
}
static inline uint32_t us_oi_pos(const unsigned char *idx, size_t i) {
    uint32_t v; memcpy(&v, idx + i * US_OFFSET_ENTRY_SIZE + 4, 4); return v;
}
static inline int64_t us_ti_ts(const unsigned char *idx, size_t i) {
    int64_t v; memcpy(&v, idx + i * US_TIME_ENTRY_SIZE, 8); return v;
}
static inline uint32_t us_ti_rel(const unsigned char *idx, size_t i) {
    uint32_t v; memcpy(&v, idx + i * US_TIME_ENTRY_SIZE + 8, 4); return v;
}
static inline uint32_t us_ti_pos(const unsigned char *idx, size_t i) {
    uint32_t v; memcpy(&v, idx + i * US_TIME_ENTRY_SIZE + 12, 4); return v;
}

/* Index of the last entry with relative_offset <= rel, or -1. */
static inline int64_t us_oi_floor(const unsigned char *idx, size_t n, uint32_t rel) {
    size_t lo = 0, hi = n;  /* answer in [lo-1, hi-1] */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (us_oi_rel(idx, mid) <= rel) lo = mid + 1; else hi = mid;
    }
    return (int64_t)lo - 1;
}

/* Index of the last entry with max_timestamp < ts, or -1. */
static inline int64_t us_ti_below(const unsigned char *idx, size_t n, int64_t ts) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (us_ti_ts(idx, mid) < ts) lo = mid + 1; else hi = mid;
    }
    return (int64_t)lo - 1;
}

/* Number of leading entries that are well ordered and point below `limit_pos`
 * (bytes of valid log data); entries after them are ignored and rewritten. */
static inline size_t us_oi_valid_prefix(const unsigned char *idx, size_t n, uint64_t limit_pos) {
    size_t i;
    for (i = 0; i < n; i++) {
        uint32_t pos = us_oi_pos(idx, i);
        if (pos >= limit_pos) break;
        if (i && (us_oi_rel(idx, i) <= us_oi_rel(idx, i - 1) || pos <= us_oi_pos(idx, i - 1))) break;
    }
    return i;
}
static inline size_t us_ti_valid_prefix(const unsigned char *idx, size_t n, uint64_t limit_pos) {
    size_t i;
    for (i = 0; i < n; i++) {
        uint32_t pos = us_ti_pos(idx, i);
        if (pos >= limit_pos) break;
        if (i && (us_ti_rel(idx, i) <= us_ti_rel(idx, i - 1) || pos <= us_ti_pos(idx, i - 1) ||
                  us_ti_ts(idx, i) < us_ti_ts(idx, i - 1))) break;
    }
    return i;
}

#endif
