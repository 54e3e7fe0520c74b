from posix.types cimport off_t

cdef extern from "writer.h" nogil:
    ctypedef struct us_write_job:
        int fd
        const void *buf
        size_t len
        off_t pos
        int err
        int done

    ctypedef struct us_writer:
        pass

    us_writer *us_writer_new()
    void us_writer_free(us_writer *w)
    void us_writer_submit(us_writer *w, us_write_job *job)
    int us_writer_wait(us_writer *w, us_write_job *job)
