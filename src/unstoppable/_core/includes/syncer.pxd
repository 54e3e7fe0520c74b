cdef extern from "syncer.h" nogil:
    ctypedef struct us_syncer:
        pass

    void us_sync_round(const int *fds, int *errs, int n, int close_them)
    us_syncer *us_syncer_new(int notify_fd)
    int us_syncer_submit(us_syncer *s, const int *fds, int n)
    int us_syncer_take(us_syncer *s, int *errs, int n)
    void us_syncer_free(us_syncer *s)
