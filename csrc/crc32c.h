/* CRC-32C (Castagnoli, polynomial 0x1EDC6F41, reflected 0x82F63B78).
 *
 * Specification: RFC 3720 section 12.1 / appendix B.4 (iSCSI). The value is the
 * standard "crc32c" of the `crc32c` PyPI package and of Kafka's record batches:
 * initial value 0xFFFFFFFF, reflected input/output, final xor 0xFFFFFFFF.
 *
 * `us_crc32c_extend(crc, buf, len)` continues a previous result, so
 * us_crc32c_extend(us_crc32c_extend(0, a), b) == crc32c(a || b).
 *
 * On x86-64 the SSE4.2 crc32 instruction is used when the CPU has it (checked
 * once at first call); elsewhere a slicing-by-8 table runs at about 1 byte/cycle.
 */
#ifndef US_CRC32C_H
#define US_CRC32C_H

#include <stddef.h>
#include <stdint.h>

uint32_t us_crc32c_extend(uint32_t crc, const void *buf, size_t len);
uint32_t us_crc32c_sw(uint32_t crc, const void *buf, size_t len);  /* table path, for tests */
int us_crc32c_hw_available(void);
void us_crc32c_init(void);  /* build tables, detect the CPU; call once before threads use it */

#endif
