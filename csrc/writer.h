/* A background writer thread: pwrite() jobs run in FIFO order on one pthread
 * with no Python in it, so a caller can encode the next chunk (holding the
 * GIL) while the previous one is copied into the page cache.
 *
 * A job is owned by the caller, who must call us_writer_wait() on it before
 * freeing it or the buffer it points at. */
#ifndef US_WRITER_H
#define US_WRITER_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct us_write_job {
    int fd;
    const void *buf;
    size_t len;
    off_t pos;
    int err;                      /* 0, or the errno of the failed pwrite */
    int done;
    struct us_write_job *next;
} us_write_job;

typedef struct us_writer us_writer;

us_writer *us_writer_new(void);                         /* NULL on failure (errno set) */
void us_writer_free(us_writer *w);                      /* finishes queued jobs, joins */
void us_writer_submit(us_writer *w, us_write_job *job); /* job fields fd/buf/len/pos set */
int us_writer_wait(us_writer *w, us_write_job *job);    /* blocks; returns job->err */

#endif
