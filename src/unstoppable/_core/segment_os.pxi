# Included by segment.pyx: OS primitives. The C writer thread, block
# reservation, the append flock, descriptor duplication and the fdatasync
# threads of group commit (csrc/writer.c, csrc/syncer.c).

# ---------------------------------------------------------------------------
# Background writer

from unstoppable._core.includes.writer cimport (
    us_writer, us_write_job, us_writer_new, us_writer_free, us_writer_submit, us_writer_wait)


cdef class WriteJob:
    """One pending pwrite; holds the buffer until :meth:`wait` returns."""
    cdef us_write_job job
    cdef Py_buffer view
    cdef bint held
    cdef Writer writer

    def wait(self):
        """wait() -> None; raises OSError if the write failed."""
        cdef int err
        if not self.held:
            return
        with nogil:
            err = us_writer_wait(self.writer.w, &self.job)
        PyBuffer_Release(&self.view)
        self.held = False
        if err:
            raise OSError(err, os.strerror(err))

    def __dealloc__(self):
        if self.held:
            with nogil:
                us_writer_wait(self.writer.w, &self.job)
            PyBuffer_Release(&self.view)


cdef class Writer:
    """Writer()

    A pthread that runs pwrite() jobs in order, outside the GIL, so the caller
    can encode the next chunk while the last one is written.
    """
    cdef us_writer *w

    def __cinit__(self):
        self.w = us_writer_new()
        if self.w == NULL:
            raise OSError(errno, "cannot start the writer thread")

    def __dealloc__(self):
        if self.w != NULL:
            with nogil:
                us_writer_free(self.w)
            self.w = NULL

    def submit(self, int fd, data, long long pos):
        """submit(fd, data, pos) -> WriteJob: write all of ``data`` at ``pos``."""
        cdef WriteJob j = WriteJob.__new__(WriteJob)
        if self.w == NULL:
            raise ValueError("writer is closed")
        PyObject_GetBuffer(data, &j.view, PyBUF_SIMPLE)
        j.held = True
        j.writer = self
        j.job.fd = fd
        j.job.buf = j.view.buf
        j.job.len = <size_t>j.view.len
        j.job.pos = pos
        us_writer_submit(self.w, &j.job)
        return j

    def close(self):
        """Finish queued jobs and stop the thread."""
        if self.w != NULL:
            with nogil:
                us_writer_free(self.w)
            self.w = NULL


cdef extern from *:
    """
    #include <fcntl.h>
    #include <errno.h>
    static int us_preallocate(int fd, long long offset, long long length) {
    #if defined(__linux__) && defined(FALLOC_FL_KEEP_SIZE)
        return fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length) == 0 ? 0 : errno;
    #else
        (void)fd; (void)offset; (void)length;
        return EOPNOTSUPP;
    #endif
    }
    """
    int us_preallocate(int fd, long long offset, long long length) nogil


def preallocate(int fd, long long offset, long long length):
    """preallocate(fd, offset, length) -> int

    Reserve disk blocks for ``[offset, offset + length)`` without changing
    the file's size (fallocate with FALLOC_FL_KEEP_SIZE; Linux). Returns 0,
    or the errno (EOPNOTSUPP where the platform or filesystem has no such
    call). Appending into reserved blocks skips the filesystem's delayed
    allocation work per page: 106 MB of 1 MiB pwrites took 16 ms instead of
    22-23 ms on ext4 here. Blocks past the end are released by any ftruncate.
    """
    cdef int rc
    if offset < 0 or length <= 0:
        raise ValueError(f"offset {offset} / length {length} out of range")
    with nogil:
        rc = us_preallocate(fd, offset, length)
    return rc


cdef extern from *:
    """
    #include <errno.h>
    #include <sys/file.h>
    #include <fcntl.h>
    #include <unistd.h>
    static int us_flock(int fd, int op) { return flock(fd, op) == 0 ? 0 : errno; }
    static int us_dup_cloexec(int fd) { return fcntl(fd, F_DUPFD_CLOEXEC, 0); }
    static void us_close(int fd) { (void)close(fd); }
    """
    int us_flock(int fd, int op) nogil
    int us_dup_cloexec(int fd) nogil
    void us_close(int fd) nogil
    int LOCK_EX, LOCK_NB, LOCK_UN, EWOULDBLOCK
    int EBUSY_ "EBUSY"


def lock_file(int fd):
    """lock_file(fd) -> None

    flock(fd, LOCK_EX), as ``fcntl.flock`` does it, but without letting go
    of the GIL unless the lock is taken: a non-blocking try first, and only
    when another process holds it a blocking wait with the GIL released.
    ``fcntl.flock`` releases and re-takes the GIL on every call; each
    re-take while another thread runs Python waits for that thread to drop
    the GIL (a forced switch after ``sys.getswitchinterval()``, or its next
    blocking call), and the append path and the sync thread take this lock
    once per append and per partition synced.
    """
    cdef int err = us_flock(fd, LOCK_EX | LOCK_NB)
    while err != 0:
        if err == EINTR:
            PyErr_CheckSignals()  # runs handlers; raises what they raise
        elif err != EWOULDBLOCK:
            raise OSError(err, os.strerror(err))
        with nogil:
            err = us_flock(fd, LOCK_EX)


def unlock_file(int fd):
    """unlock_file(fd) -> None

    flock(fd, LOCK_UN) holding the GIL (releasing never waits); see
    :func:`lock_file`."""
    cdef int err = us_flock(fd, LOCK_UN)
    if err != 0:
        raise OSError(err, os.strerror(err))


def dup_fd(int fd):
    """dup_fd(fd) -> int

    ``os.dup`` (a close-on-exec duplicate: fcntl F_DUPFD_CLOEXEC) holding
    the GIL, so a sync round that duplicates every segment descriptor it
    covers does not hand the GIL away once per file; see :func:`lock_file`.
    """
    cdef int r = us_dup_cloexec(fd)
    if r < 0:
        r = errno
        raise OSError(r, os.strerror(r))
    return r


from unstoppable._core.includes.syncer cimport (
    us_sync_round, us_syncer, us_syncer_new, us_syncer_submit, us_syncer_take, us_syncer_free)


def sync_files(fds, bint close=False):
    """sync_files(fds, close=False) -> list[int]

    The data half of a group commit in one call that holds no GIL throughout:
    ask the kernel to start writing back every file's dirty pages
    (sync_file_range SYNC_FILE_RANGE_WRITE; skipped off Linux), then
    fdatasync each in turn. Starting all first lets their data go to the
    device together instead of one file after another (measured for 8 files
    of 13 KB: 1.2 ms instead of 2.3 ms). Returns one errno per descriptor, 0 where the file
    is on stable storage. One GIL hand-off per round instead of one per
    syscall matters: a thread waking from a syscall waits for the GIL while
    the event loop runs Python (measured: 1.75 ms per round for 4 files under
    a busy producer, against 0.05 ms alone).

    With ``close`` the descriptors (the sync's own duplicates) are closed
    in the same GIL-free stretch, after their fdatasync, instead of one
    GIL hand-off per ``os.close``. They are all closed when this returns,
    and none is when it raises (it can only raise before touching them).
    """
    cdef Py_ssize_t n = len(fds), i
    cdef int *arr = <int *>PyMem_Malloc((n if n else 1) * 2 * sizeof(int))
    cdef int *errs
    cdef list result
    if arr == NULL:
        raise MemoryError()
    errs = arr + n
    try:
        for i in range(n):
            arr[i] = fds[i]
            errs[i] = 0
        result = [0] * n  # allocated before the closes: nothing after them can fail
        with nogil:
            us_sync_round(arr, errs, <int>n, close)  # csrc/syncer.c, as LoopSyncer's thread
        for i in range(n):
            if errs[i]:
                result[i] = errs[i]
        return result
    finally:
        PyMem_Free(arr)


# ---------------------------------------------------------------------------
# Event-loop sync thread



cdef class LoopSyncer:
    """LoopSyncer()

    A thread with no Python in it that runs one group-commit round at a time
    for an event loop: :meth:`submit` hands it descriptors (duplicates it then
    owns and closes); it starts writeback of all, fdatasyncs each, and makes
    :meth:`fileno` readable. The loop then calls :meth:`take` for one errno per
    descriptor. Nothing of a round needs the GIL on the sync thread, so the
    loop, which runs a round's Python itself, never waits for a thread to hand
    the GIL back (see csrc/syncer.h).
    """
    cdef us_syncer *s
    cdef int rfd, wfd

    def __cinit__(self):
        self.s = NULL
        self.rfd = self.wfd = -1
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.rfd, self.wfd = r, w
        self.s = us_syncer_new(w)
        if self.s == NULL:
            err = errno
            os.close(r)
            os.close(w)
            self.rfd = self.wfd = -1
            raise OSError(err, "cannot start the sync thread")

    def fileno(self):
        """The descriptor that becomes readable when a round is done."""
        if self.rfd < 0:
            raise ValueError("syncer is closed")
        return self.rfd

    def submit(self, fds):
        """submit(fds) -> None: sync and close these descriptors (owned from
        here on, also when this raises)."""
        cdef Py_ssize_t n = len(fds), i
        cdef int *arr = <int *>PyMem_Malloc((n if n else 1) * sizeof(int))
        cdef int rc
        if arr == NULL:
            for fd in fds:
                os.close(fd)
            raise MemoryError()
        try:
            for i in range(n):
                arr[i] = fds[i]
            rc = EBUSY_ if self.s == NULL else us_syncer_submit(self.s, arr, <int>n)
            if rc != 0:
                for i in range(n):
                    us_close(arr[i])
                raise OSError(rc, "sync round not started: " + os.strerror(rc))
        finally:
            PyMem_Free(arr)

    def take(self, Py_ssize_t n):
        """take(n) -> list[int] | None: the errnos (0 = synced) of the round
        that finished, or None while it runs. Drains the notification."""
        cdef int *errs = <int *>PyMem_Malloc((n if n else 1) * sizeof(int))
        cdef int k, i
        if errs == NULL:
            raise MemoryError()
        try:
            try:
                while os.read(self.rfd, 64):
                    pass
            except BlockingIOError:
                pass
            if self.s == NULL:
                return None
            k = us_syncer_take(self.s, errs, <int>n)
            if k < 0:
                return None
            return [errs[i] for i in range(k)]
        finally:
            PyMem_Free(errs)

    def close(self):
        """Wait for the round in flight (its descriptors are then closed) and
        stop the thread."""
        if self.s != NULL:
            with nogil:
                us_syncer_free(self.s)
            self.s = NULL
        for fd in (self.rfd, self.wfd):
            if fd >= 0:
                os.close(fd)
        self.rfd = self.wfd = -1

    def __dealloc__(self):
        if self.s != NULL:
            with nogil:
                us_syncer_free(self.s)
            self.s = NULL
        if self.rfd >= 0:
            us_close(self.rfd)
        if self.wfd >= 0:
            us_close(self.wfd)
