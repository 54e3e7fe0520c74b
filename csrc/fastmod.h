/* Remainders by a divisor fixed for a whole loop, without a divide
 * instruction: Lemire, Kaser, Kurz, "Faster Remainder by Direct Computation:
 * Applications to Compilers and Software Libraries" (Software: Practice and
 * Experience, 2019), as in github.com/lemire/fastmod. Used by the hashing
 * module's partition_many loops, where `h % n` with a 64-bit h otherwise costs
 * more than hashing a short key. Exact for every a and every d >= 1. */
#ifndef US_FASTMOD_H
#define US_FASTMOD_H
#include <stdint.h>

/* 32-bit numerators: M = floor((2^64 - 1) / d) + 1. */
static inline uint64_t us_fastmod_m32(uint32_t d) { return UINT64_C(0xFFFFFFFFFFFFFFFF) / d + 1; }
static inline uint32_t us_fastmod_u32(uint32_t a, uint64_t M, uint32_t d) {
    uint64_t lowbits = M * a;
    return (uint32_t)(((__uint128_t)lowbits * d) >> 64);
}

/* 64-bit numerators: M = floor((2^128 - 1) / d) + 1 (0 for d == 1, which
 * yields 0, the right remainder). */
typedef struct { uint64_t lo, hi; } us_fastmod_m64_t;
static inline us_fastmod_m64_t us_fastmod_m64(uint64_t d) {
    __uint128_t M = ((__uint128_t)0 - 1) / d + 1;
    us_fastmod_m64_t r = { (uint64_t)M, (uint64_t)(M >> 64) };
    return r;
}
static inline uint64_t us_fastmod_u64(uint64_t a, us_fastmod_m64_t m, uint64_t d) {
    __uint128_t M = ((__uint128_t)m.hi << 64) | m.lo;
    __uint128_t lowbits = M * a;
    __uint128_t bottom = ((lowbits & UINT64_C(0xFFFFFFFFFFFFFFFF)) * d) >> 64;
    __uint128_t top = (lowbits >> 64) * d;
    return (uint64_t)((bottom + top) >> 64);
}

#endif
