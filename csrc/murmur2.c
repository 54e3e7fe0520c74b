/* Kafka's murmur2 (see murmur2.h); a line-by-line port of Utils.murmur2. */
#include "murmur2.h"

uint32_t us_murmur2(const void *buf, size_t len) {
    const unsigned char *data = (const unsigned char *)buf;
    const uint32_t seed = 0x9747b28cu;
    const uint32_t m = 0x5bd1e995u;
    const int r = 24;
    uint32_t h = seed ^ (uint32_t)len;
    size_t len4 = len / 4;
    for (size_t i = 0; i < len4; i++) {
        size_t i4 = i * 4;
        uint32_t k = (uint32_t)data[i4] | ((uint32_t)data[i4 + 1] << 8) |
                     ((uint32_t)data[i4 + 2] << 16) | ((uint32_t)data[i4 + 3] << 24);
        k *= m;
        k ^= k >> r;  /* Java's >>> on int */
        k *= m;
        h *= m;
        h ^= k;
    }
    switch (len % 4) {  /* Java falls through the same way */
    case 3: h ^= (uint32_t)data[(len & ~(size_t)3) + 2] << 16; /* fall through */
    case 2: h ^= (uint32_t)data[(len & ~(size_t)3) + 1] << 8;  /* fall through */
    case 1: h ^= (uint32_t)data[len & ~(size_t)3];
            h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return h;
}
