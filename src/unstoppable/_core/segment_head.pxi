# Included by segment.pyx: the shared partition head (csrc/head.h), a
# seqlock-protected mapping every process reads and the lock holder writes.

# ---------------------------------------------------------------------------
# Partition head

cdef class HeadState:
    """One consistent snapshot of a partition head (see csrc/head.h)."""
    cdef public uint64_t seq
    cdef public int64_t start_offset
    cdef public int64_t end_offset
    cdef public int64_t active_base
    cdef public uint64_t active_size
    cdef public int64_t ckpt_base
    cdef public uint64_t ckpt_size
    cdef public int64_t ckpt_end_offset
    cdef public bytes boot_id
    cdef public int64_t max_timestamp
    cdef public int64_t active_created
    cdef public uint64_t flags
    cdef public uint64_t oi_count
    cdef public uint64_t ti_count
    cdef public uint64_t oi_last_pos
    cdef public int64_t ti_last_ts

    def copy(self):
        cdef HeadState s = HeadState.__new__(HeadState)
        s.seq = self.seq
        s.start_offset = self.start_offset
        s.end_offset = self.end_offset
        s.active_base = self.active_base
        s.active_size = self.active_size
        s.ckpt_base = self.ckpt_base
        s.ckpt_size = self.ckpt_size
        s.ckpt_end_offset = self.ckpt_end_offset
        s.boot_id = self.boot_id
        s.max_timestamp = self.max_timestamp
        s.active_created = self.active_created
        s.flags = self.flags
        s.oi_count = self.oi_count
        s.ti_count = self.ti_count
        s.oi_last_pos = self.oi_last_pos
        s.ti_last_ts = self.ti_last_ts
        return s

    def __repr__(self):
        return (f"HeadState(start={self.start_offset}, end={self.end_offset}, "
                f"active={self.active_base}@{self.active_size}, "
                f"ckpt={self.ckpt_base}@{self.ckpt_size}/{self.ckpt_end_offset}, "
                f"index={self.oi_count}/{self.ti_count}, flags={self.flags})")


def new_head_state(int64_t start_offset=0, int64_t end_offset=0, int64_t active_base=0,
                   uint64_t active_size=0, int64_t ckpt_base=0, uint64_t ckpt_size=0,
                   int64_t ckpt_end_offset=0, bytes boot_id=b"\0" * 16,
                   int64_t max_timestamp=-1, int64_t active_created=0, uint64_t flags=0,
                   uint64_t oi_count=0, uint64_t ti_count=0, uint64_t oi_last_pos=0,
                   int64_t ti_last_ts=-1):
    """A HeadState with the given fields."""
    cdef HeadState s = HeadState.__new__(HeadState)
    s.seq = 0
    s.start_offset = start_offset
    s.end_offset = end_offset
    s.active_base = active_base
    s.active_size = active_size
    s.ckpt_base = ckpt_base
    s.ckpt_size = ckpt_size
    s.ckpt_end_offset = ckpt_end_offset
    s.boot_id = boot_id
    s.max_timestamp = max_timestamp
    s.active_created = active_created
    s.flags = flags
    s.oi_count = oi_count
    s.ti_count = ti_count
    s.oi_last_pos = oi_last_pos
    s.ti_last_ts = ti_last_ts
    return s


cdef class Head:
    """Head(fd, private=False)

    The shared partition head file (4096 bytes, see csrc/head.h), mapped
    read-write. With ``private`` (a read-only log) the mapping is
    copy-on-write: ``fd`` may be open read-only, and a head recovery rebuilds
    stays in this process's memory, never written to the file. ``read()`` never blocks; ``write()`` must only be called by
    the holder of the partition's append lock.
    """
    cdef Mapping m
    cdef us_head *h

    def __cinit__(self, int fd, bint private=False):
        self.m = Mapping(fd, US_HEAD_FILE_SIZE, True, private)
        self.h = <us_head *>self.m.ptr

    def valid(self):
        """True when the file carries the head magic and a version we read."""
        return self.h.magic == US_HEAD_MAGIC and self.h.version == US_HEAD_VERSION

    @property
    def magic(self):
        return self.h.magic

    @property
    def version(self):
        return self.h.version

    @property
    def seq(self):
        """The sequence counter; it changes on every append."""
        return us_head_seq(self.h)

    def read(self):
        """read() -> HeadState | None

        A consistent snapshot, or None when a writer died in the middle of an
        update (the next lock holder repairs it).
        """
        cdef us_head_snapshot s
        cdef HeadState out
        if us_head_read(self.h, &s) != 0:
            return None
        out = HeadState.__new__(HeadState)
        out.seq = s.seq
        out.start_offset = s.start_offset
        out.end_offset = s.end_offset
        out.active_base = s.active_base
        out.active_size = s.active_size
        out.ckpt_base = s.ckpt_base
        out.ckpt_size = s.ckpt_size
        out.ckpt_end_offset = s.ckpt_end_offset
        out.boot_id = PyBytes_FromStringAndSize(<char *>s.boot_id, 16)
        out.max_timestamp = s.max_timestamp
        out.active_created = s.active_created
        out.flags = s.flags
        out.oi_count = s.oi_count
        out.ti_count = s.ti_count
        out.oi_last_pos = s.oi_last_pos
        out.ti_last_ts = s.ti_last_ts
        return out

    def write(self, HeadState st):
        """write(state): store every field of ``state`` (append lock held)."""
        cdef us_head_snapshot s
        if len(st.boot_id) != 16:
            raise ValueError("boot_id must be 16 bytes")
        s.start_offset = st.start_offset
        s.end_offset = st.end_offset
        s.active_base = st.active_base
        s.active_size = st.active_size
        s.ckpt_base = st.ckpt_base
        s.ckpt_size = st.ckpt_size
        s.ckpt_end_offset = st.ckpt_end_offset
        memcpy(s.boot_id, <const char *>st.boot_id, 16)
        s.max_timestamp = st.max_timestamp
        s.active_created = st.active_created
        s.flags = st.flags
        s.oi_count = st.oi_count
        s.ti_count = st.ti_count
        s.oi_last_pos = st.oi_last_pos
        s.ti_last_ts = st.ti_last_ts
        us_head_write(self.h, &s)
        st.seq = us_head_seq(self.h)
