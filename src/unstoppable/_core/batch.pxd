from libc.stdint cimport int64_t, int32_t, uint8_t, uint32_t
from unstoppable._core.includes.batch cimport us_batch_header, us_record_view


cdef class Record:
    cdef object _mv                 # memoryview over the memory that holds the batch
    cdef uint32_t _key_pos, _value_pos, _headers_pos, _header_count, _end
    cdef int32_t _key_len, _value_len
    cdef uint8_t _magic             # batch format: how the headers block is encoded
    cdef object _key, _value, _headers  # cached; _UNSET until first access
    cdef readonly str topic
    cdef readonly int partition
    cdef readonly int64_t offset
    cdef readonly int64_t timestamp


cdef class RecordBatch:
    cdef object _owner              # keeps the memory alive
    cdef object _mv                 # memoryview over the owner's whole buffer
    cdef const unsigned char *_base # first byte of the batch
    cdef readonly size_t position   # of the batch inside the owner
    cdef size_t _rel                # of the decoded batch inside _mv (position, or 0 once decompressed)
    cdef us_batch_header h
    cdef us_record_view *_views     # decoded positions, relative to the batch; NULL until decoded
    cdef readonly str topic
    cdef readonly int partition

    cdef int _decode(self) except -1
    cdef int _check_decode(self) except -1
    cdef int _decompress(self) except -1
    cdef Record _record(self, uint32_t i)


cdef RecordBatch make_batch(object owner, object mv, const unsigned char *base, size_t position,
                            const us_batch_header *h, str topic, int partition)


cdef int stamp_log_append_time(unsigned char *buf, size_t size, int exports,
                               int64_t timestamp) except -1
