# cython: language_level=3
"""Segment files, their indexes and the partition head, seen through mmap.

Writers append with ``pwrite`` (csrc/ and storage/partition.py explain why:
fresh mmap pages fault at ~0.5 GB/s on this machine class, write() runs at
2.4-3 GB/s). Readers map each file read-only and shared, at a length that may
run past the end of the file, and only ever touch bytes below the size the
partition head says is complete, so a growing file never needs remapping.

Every batch a reader hands out has passed its CRC-32C check.
"""
cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBuffer_FillInfo
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int16_t, int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from libc.errno cimport errno
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.exc cimport PyErr_CheckSignals
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_PRIVATE, MAP_FAILED

from unstoppable._core.includes.batch cimport *
from unstoppable._core.includes.index cimport *
from unstoppable._core.includes.head cimport *
from unstoppable._core.includes.crc32c cimport us_crc32c_init
from unstoppable._core.batch cimport Record, RecordBatch, make_batch
from unstoppable._core.includes.guard cimport us_guard_install, us_guard_add, us_guard_remove, us_guard_hits

import os

from unstoppable.errors import corrupt_from_code, CorruptLogError

us_crc32c_init()
if us_guard_install() != 0:
    raise OSError(errno, "cannot install the SIGBUS guard for mapped segment files")

OFFSET_ENTRY_SIZE = US_OFFSET_ENTRY_SIZE
TIME_ENTRY_SIZE = US_TIME_ENTRY_SIZE
HEAD_FILE_SIZE = US_HEAD_FILE_SIZE
HEAD_FLAG_DELETED = US_HEAD_FLAG_DELETED
# Result code of a batch whose records do not parse (csrc/batch.h US_BAD_RECORDS).
BAD_RECORDS = US_BAD_RECORDS

cdef extern from "unistd.h" nogil:
    long sysconf(int name)
    int _SC_PAGESIZE

cdef extern from "errno.h" nogil:
    int EINTR

cdef size_t PAGE = <size_t>sysconf(_SC_PAGESIZE)


# One extension module, several source files (as asyncpg's protocol.pyx
# does): OS primitives and format scanning live apart, the public names stay
# this module's.
include "segment_mmap.pxi"
include "segment_head.pxi"
include "segment_scan.pxi"
include "segment_os.pxi"
include "segment_compact.pxi"
