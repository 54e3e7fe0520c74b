/* XXH64, the 64-bit xxHash by Yann Collet.
 * Specification: https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md
 * ("XXH64 algorithm description"). Output equals xxhash.xxh64_intdigest(data, seed).
 * Used by the default partitioner: partition = xxh64(key, 0) % n. */
#ifndef US_XXHASH64_H
#define US_XXHASH64_H
#include <stddef.h>
#include <stdint.h>

uint64_t us_xxh64(const void *buf, size_t len, uint64_t seed);

#endif
