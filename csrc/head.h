/* Partition head: a small shared state file (<partition>/head), memory-mapped
 * MAP_SHARED by every process that opens the partition. Only the process that
 * holds the partition's append lock (flock on <partition>/lock) writes it; any
 * process reads it without a lock through a sequence lock (seqlock): the writer
 * makes `seq` odd, stores the fields, makes it even again; a reader retries when
 * it saw an odd or changed `seq`.
 *
 *   offset size field
 *   0      4    magic            "USHD" (0x44485355 little-endian)
 *   4      4    version          1
 *   8      8    seq              seqlock counter, +2 per head write (appends, rolls,
 *                                checkpoint moves, retention); a reader polls it to
 *                                learn that something changed, then compares offsets
 *   16     8    start_offset     i64 first offset still in the log (after retention)
 *   24     8    end_offset       i64 next offset to be written
 *   32     8    active_base      i64 base offset (file name) of the active segment
 *   40     8    active_size      u64 bytes of complete batches in the active segment
 *   48     8    ckpt_base        i64 segment of the recovery checkpoint
 *   56     8    ckpt_size        u64 bytes of that segment known to be on stable storage
 *   64     8    ckpt_end_offset  i64 end offset at the checkpoint
 *   72     16   boot_id          the kernel boot id when the fields were last written;
 *                                another boot id means the page cache may have been
 *                                lost, so recovery starts at the checkpoint
 *   88     8    max_timestamp    i64 largest timestamp appended to the active segment
 *   96     8    active_created   i64 ms since epoch the active segment was created
 *   104    8    flags            u64 bit 0: the topic was deleted; appends must fail
 *   112    8    oi_count         u64 entries in the active segment's offset index
 *   120    8    ti_count         u64 entries in the active segment's time index
 *   128    8    oi_last_pos      u64 position of the last offset-index entry (0 = none)
 *   136    8    ti_last_ts       i64 max_timestamp of the last time-index entry (-1 = none)
 *   144    ..   reserved, zero (the file is 4096 bytes)
 *
 * Index entries past oi_count / ti_count (left by a writer that died) are
 * ignored and overwritten.
 */
#ifndef US_HEAD_H
#define US_HEAD_H
#include <stdint.h>
#include <string.h>

#define US_HEAD_MAGIC 0x44485355u
#define US_HEAD_VERSION 1
#define US_HEAD_FILE_SIZE 4096
#define US_HEAD_FLAG_DELETED 1u

typedef struct {
    uint32_t magic;
    uint32_t version;
    uint64_t seq;
    int64_t start_offset;
    int64_t end_offset;
    int64_t active_base;
    uint64_t active_size;
    int64_t ckpt_base;
    uint64_t ckpt_size;
    int64_t ckpt_end_offset;
    unsigned char boot_id[16];
    int64_t max_timestamp;
    int64_t active_created;
    uint64_t flags;
    uint64_t oi_count;
    uint64_t ti_count;
    uint64_t oi_last_pos;
    int64_t ti_last_ts;
} us_head;

#include <stddef.h>
_Static_assert(offsetof(us_head, seq) == 8, "head layout");
_Static_assert(offsetof(us_head, start_offset) == 16, "head layout");
_Static_assert(offsetof(us_head, ckpt_base) == 48, "head layout");
_Static_assert(offsetof(us_head, boot_id) == 72, "head layout");
_Static_assert(offsetof(us_head, max_timestamp) == 88, "head layout");
_Static_assert(offsetof(us_head, flags) == 104, "head layout");
_Static_assert(offsetof(us_head, ti_last_ts) == 136, "head layout");

/* Fields copied out of a head in one consistent snapshot. */
typedef struct {
    uint64_t seq;
    int64_t start_offset;
    int64_t end_offset;
    int64_t active_base;
    uint64_t active_size;
    int64_t ckpt_base;
    uint64_t ckpt_size;
    int64_t ckpt_end_offset;
    unsigned char boot_id[16];
    int64_t max_timestamp;
    int64_t active_created;
    uint64_t flags;
    uint64_t oi_count;
    uint64_t ti_count;
    uint64_t oi_last_pos;
    int64_t ti_last_ts;
} us_head_snapshot;

#if defined(__x86_64__) || defined(__i386__)
#define US_CPU_RELAX() __builtin_ia32_pause()
#else
#define US_CPU_RELAX() do { } while (0)
#endif

/* Returns 0 with a consistent snapshot, or -1 when `seq` stayed odd for about a
 * million tries: a writer died between its two stores, and whoever takes the
 * append lock next repairs the head (us_head_write accepts an odd seq). */
static inline int us_head_read(volatile us_head *h, us_head_snapshot *s) {
    for (long tries = 0;; tries++) {
        uint64_t s1 = __atomic_load_n(&h->seq, __ATOMIC_ACQUIRE);
        if (s1 & 1) {
            if (tries > 1000000) return -1;
            US_CPU_RELAX();
            continue;
        }
        s->start_offset = __atomic_load_n(&h->start_offset, __ATOMIC_RELAXED);
        s->end_offset = __atomic_load_n(&h->end_offset, __ATOMIC_RELAXED);
        s->active_base = __atomic_load_n(&h->active_base, __ATOMIC_RELAXED);
        s->active_size = __atomic_load_n(&h->active_size, __ATOMIC_RELAXED);
        s->ckpt_base = __atomic_load_n(&h->ckpt_base, __ATOMIC_RELAXED);
        s->ckpt_size = __atomic_load_n(&h->ckpt_size, __ATOMIC_RELAXED);
        s->ckpt_end_offset = __atomic_load_n(&h->ckpt_end_offset, __ATOMIC_RELAXED);
        for (int i = 0; i < 16; i++) s->boot_id[i] = h->boot_id[i];
        s->max_timestamp = __atomic_load_n(&h->max_timestamp, __ATOMIC_RELAXED);
        s->active_created = __atomic_load_n(&h->active_created, __ATOMIC_RELAXED);
        s->flags = __atomic_load_n(&h->flags, __ATOMIC_RELAXED);
        s->oi_count = __atomic_load_n(&h->oi_count, __ATOMIC_RELAXED);
        s->ti_count = __atomic_load_n(&h->ti_count, __ATOMIC_RELAXED);
        s->oi_last_pos = __atomic_load_n(&h->oi_last_pos, __ATOMIC_RELAXED);
        s->ti_last_ts = __atomic_load_n(&h->ti_last_ts, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        uint64_t s2 = __atomic_load_n(&h->seq, __ATOMIC_RELAXED);
        if (s1 == s2) { s->seq = s1; return 0; }
        if (tries > 1000000) return -1;
    }
}

static inline uint64_t us_head_seq(volatile us_head *h) {
    return __atomic_load_n(&h->seq, __ATOMIC_ACQUIRE);
}

/* Writer side (the append lock is held): begin, store, end. */
static inline void us_head_write(volatile us_head *h, const us_head_snapshot *s) {
    uint64_t seq = __atomic_load_n(&h->seq, __ATOMIC_RELAXED);
    if (seq & 1) seq++;  /* a writer died mid-update; the lock holder owns it now */
    __atomic_store_n(&h->seq, seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    h->magic = US_HEAD_MAGIC;
    h->version = US_HEAD_VERSION;
    __atomic_store_n(&h->start_offset, s->start_offset, __ATOMIC_RELAXED);
    __atomic_store_n(&h->end_offset, s->end_offset, __ATOMIC_RELAXED);
    __atomic_store_n(&h->active_base, s->active_base, __ATOMIC_RELAXED);
    __atomic_store_n(&h->active_size, s->active_size, __ATOMIC_RELAXED);
    __atomic_store_n(&h->ckpt_base, s->ckpt_base, __ATOMIC_RELAXED);
    __atomic_store_n(&h->ckpt_size, s->ckpt_size, __ATOMIC_RELAXED);
    __atomic_store_n(&h->ckpt_end_offset, s->ckpt_end_offset, __ATOMIC_RELAXED);
    for (int i = 0; i < 16; i++) h->boot_id[i] = s->boot_id[i];
    __atomic_store_n(&h->max_timestamp, s->max_timestamp, __ATOMIC_RELAXED);
    __atomic_store_n(&h->active_created, s->active_created, __ATOMIC_RELAXED);
    __atomic_store_n(&h->flags, s->flags, __ATOMIC_RELAXED);
    __atomic_store_n(&h->oi_count, s->oi_count, __ATOMIC_RELAXED);
    __atomic_store_n(&h->ti_count, s->ti_count, __ATOMIC_RELAXED);
    __atomic_store_n(&h->oi_last_pos, s->oi_last_pos, __ATOMIC_RELAXED);
    __atomic_store_n(&h->ti_last_ts, s->ti_last_ts, __ATOMIC_RELAXED);
    __atomic_store_n(&h->seq, seq + 2, __ATOMIC_RELEASE);
}

#endif
