/* SIGBUS guard for read-only file mappings.
 *
 * Touching a page of a shared file mapping that lies past the end of the file
 * raises SIGBUS, which kills the process. Readers here never read past the
 * size the partition head records, but another process may truncate a file
 * (a hostile or broken tool, an administrator). The guard keeps the address
 * ranges of our mappings; when a SIGBUS hits one of them it maps an anonymous
 * zero page over the faulting page and returns, so the access completes with
 * zeros, the batch fails its CRC and the caller gets CorruptLogError instead
 * of a dead interpreter. Faults outside our ranges go to the previous handler.
 */
#ifndef US_GUARD_H
#define US_GUARD_H
#include <stddef.h>
#include <stdint.h>

int us_guard_install(void);                      /* once; 0 or errno */
int us_guard_add(const void *start, size_t len); /* 0, or -1 when the table is full */
void us_guard_remove(const void *start);
uint64_t us_guard_hits(void);                    /* SIGBUS faults absorbed so far */

#endif
