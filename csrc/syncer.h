/* A sync thread with no Python in it, for event loops.
 *
 * An event loop hands it one round at a time: a set of file descriptors
 * (duplicates it owns). The thread starts writeback of every file, then
 * fdatasyncs each in turn, closes them, records one errno per descriptor and
 * writes one byte to the loop's notify descriptor (the write end of a pipe the
 * loop watches). It never takes the GIL, so the loop, which runs all the
 * Python of a round (planning, moving the checkpoint, waking its waiters),
 * never hands the GIL back and forth with it.
 *
 * One round at a time: submit fails with EBUSY while a round is in flight;
 * us_syncer_take() returns its result once the notification arrived. */
#ifndef US_SYNCER_H
#define US_SYNCER_H
#include <stddef.h>

/* One group-commit round, on the calling thread: start writeback of every
 * file (sync_file_range SYNC_FILE_RANGE_WRITE; skipped off Linux), then
 * fdatasync each in turn, errs[i] = 0 or its errno; with close, close each
 * after (no retry on EINTR: Linux has closed it anyway). */
void us_sync_round(const int *fds, int *errs, int n, int close_them);

typedef struct us_syncer us_syncer;

us_syncer *us_syncer_new(int notify_fd);            /* NULL on failure (errno set) */
int us_syncer_submit(us_syncer *s, const int *fds, int n); /* 0, EBUSY, ENOMEM; owns fds on 0 */
int us_syncer_take(us_syncer *s, int *errs, int n);  /* count of errnos copied; -1 if not done */
void us_syncer_free(us_syncer *s);                  /* waits for the round in flight, joins */

#endif
