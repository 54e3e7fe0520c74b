/* Kafka's murmur2, as in org.apache.kafka.common.utils.Utils.murmur2:
 * MurmurHash2 (Austin Appleby), 32-bit, seed 0x9747b28c, little-endian 4-byte
 * blocks, with Java's signed arithmetic reproduced on uint32_t.
 * Kafka's default partitioner for keyed records is
 *   toPositive(murmur2(key)) % numPartitions,   toPositive(x) = x & 0x7fffffff. */
#ifndef US_MURMUR2_H
#define US_MURMUR2_H
#include <stddef.h>
#include <stdint.h>

uint32_t us_murmur2(const void *buf, size_t len);
static inline uint32_t us_kafka_partition(const void *key, size_t len, uint32_t n) {
    return (us_murmur2(key, len) & 0x7fffffffu) % n;
}

#endif
