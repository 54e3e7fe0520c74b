# Included by segment.pyx: read-only shared mappings of log files, under the
# SIGBUS guard (OS primitive).

cdef class Mapping:
    """Mapping(fd, length, writable=False, private=False)

    A shared mmap of ``length`` bytes of the file ``fd`` (rounded up to a page;
    it may extend past the end of the file). With ``private`` the mapping is
    copy-on-write (MAP_PRIVATE): stores stay in this process and never reach
    the file, which may then be open read-only; pages not stored to still show
    the file as other processes change it. It exports the bytes through the
    buffer protocol; record views keep it alive, and it is unmapped only when
    the last reference goes away, so a view can never outlive its memory.
    """

    def __cinit__(self, int fd, Py_ssize_t length, bint writable=False, bint private=False):
        cdef size_t maplen
        cdef void *p
        if length < 0:
            raise ValueError("negative mapping length")
        maplen = <size_t>length
        if maplen == 0:
            maplen = PAGE
        maplen = (maplen + PAGE - 1) & ~(PAGE - 1)
        p = mmap(NULL, maplen, PROT_READ | (PROT_WRITE if writable else 0),
                 MAP_PRIVATE if private else MAP_SHARED, fd, 0)
        if p == MAP_FAILED:
            err = errno
            raise OSError(err, f"mmap of {maplen} bytes failed: {os.strerror(err)}")
        self.ptr = <unsigned char *>p
        self.length = <Py_ssize_t>maplen
        self.writable = writable
        self._mv = None
        # If another process truncates the file under us, a touch past its end
        # reads zeros (and fails a CRC) instead of killing us with SIGBUS.
        us_guard_add(self.ptr, maplen)

    def __dealloc__(self):
        cdef void *ptr = self.ptr
        cdef size_t length = <size_t>self.length
        if ptr != NULL:
            us_guard_remove(ptr)
            self.ptr = NULL
            if length >= (1 << 20):
                # Tearing down a large mapping's page tables takes
                # milliseconds (py-spy: the compactor's largest hold of the
                # GIL); other threads run meanwhile.
                with nogil:
                    munmap(ptr, length)
            else:
                munmap(ptr, length)

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        PyBuffer_FillInfo(buffer, self, self.ptr, self.length, 0 if self.writable else 1, flags)

    def __releasebuffer__(self, Py_buffer *buffer):
        pass

    @property
    def view(self):
        """A memoryview of the whole mapping (cached)."""
        if self._mv is None:
            self._mv = memoryview(self)
        return self._mv


@cython.embedsignature(False)
def sigbus_absorbed():
    """sigbus_absorbed()
--

    sigbus_absorbed() -> int

    How many SIGBUS faults in mapped log files (a file truncated by someone
    else) were turned into zero pages instead of killing the process.
    """
    return us_guard_hits()
