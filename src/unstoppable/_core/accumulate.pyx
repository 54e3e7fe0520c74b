# cython: language_level=3
"""The producer's send_batch loop over ``(key, value)`` pairs, compiled.

``Producer.send_batch`` of pairs of bytes (the booking service publishes
its outcomes this way) did, per record, in Python: a size check, the
partitioner call, the buffer space reservation, the choice of the
partition's open batch, the append, and the seal at ``batch_bytes``.
:func:`fill_pairs` does the same steps in C for a run of pairs, and stops,
returning where, at the first record it must not handle itself:

* ``STOP_END``: every record is placed;
* ``STOP_OTHER``: the record is not a tuple of two exact ``bytes`` (the
  producer sends it through ``send()``);
* ``STOP_TOO_LARGE``: its size bound passes ``max_record`` (the producer
  raises RecordTooLargeError naming the size; the records before it stay
  accepted, as with ``send()``);
* ``STOP_SEALED``: the batches sealed by this call reached ``sealed_max``
  bytes (the producer has them written, then calls again);
* ``STOP_SPACE``: it does not fit in the producer's buffer space
  (``BufferSpace``: ``used`` of ``limit``, and nobody waiting before it);
  the producer awaits the space per its backpressure mode, then calls
  again with that record's bytes already reserved.

The batches themselves stay Python objects (``client.accumulator.Batch``),
opened and sealed by the caller's ``PartitionBuffers``; only their
``records`` and ``nbytes`` are touched here. The partition of a key is the
built-in partitioners' hash, bit for bit (``hashing.xxh64_partition`` /
``murmur2_partition``; tests compare them key by key).
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_CheckExact
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_SIZE, PyTuple_GET_ITEM
from libc.stdint cimport uint32_t, uint64_t

from unstoppable._core.includes.hashes cimport us_xxh64, us_murmur2

cdef extern from "Python.h":
    PyObject **PySequence_Fast_ITEMS(object o)
    Py_ssize_t PySequence_Fast_GET_SIZE(object o)

cdef extern from *:
    """
    /* Ask for the objects of record i + PREFETCH_AHEAD (its tuple) and
       i + PREFETCH_AHEAD / 2 (its key and value) ahead of use: a run's pairs
       were made long before they are published, and are no longer in the
       CPU's caches. */
    #define US_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 3)
    static inline void us_prefetch_pair(PyObject *t) {
        if (PyTuple_CheckExact(t) && PyTuple_GET_SIZE(t) == 2) {
            US_PREFETCH(PyTuple_GET_ITEM(t, 0));
            US_PREFETCH(PyTuple_GET_ITEM(t, 1));
        }
    }
    """
    void US_PREFETCH(const void *p) noexcept nogil
    void us_prefetch_pair(PyObject *t) noexcept

cdef enum:
    PREFETCH_AHEAD = 8

from unstoppable._core.delivery import DeliveryFuture

#: Why :func:`fill_pairs` stopped.
STOP_END = 0
STOP_OTHER = 1
STOP_TOO_LARGE = 2
STOP_SPACE = 3
STOP_SEALED = 4
#: The partitioners :func:`fill_pairs` computes itself.
ALG_XXH64 = 0
ALG_MURMUR2 = 1


cdef inline bint _is_pair(PyObject *o) noexcept:
    cdef object r = <object>o
    if not PyTuple_CheckExact(r) or PyTuple_GET_SIZE(r) != 2:
        return False
    return PyBytes_CheckExact(<object>PyTuple_GET_ITEM(r, 0)) and \
        PyBytes_CheckExact(<object>PyTuple_GET_ITEM(r, 1))


def fill_pairs(records, Py_ssize_t i, buffers, space, list open_, int alg, Py_ssize_t n,
               Py_ssize_t hard, Py_ssize_t limit, Py_ssize_t max_record, Py_ssize_t overhead,
               list out, dict last, list cur, Py_ssize_t reserved=0,
               Py_ssize_t sealed_max=1 << 20):
    """fill_pairs(records, i, buffers, space, open_, alg, n, hard, limit, max_record, overhead, out, last, cur, reserved=0, sealed_max=1 MiB) -> (int, int)

    Place the ``(key, value)`` pairs of ``records`` (a list or tuple) from
    index ``i`` into the open batches ``open_`` (``buffers.open``; new ones
    through ``buffers.new_batch(p)``, full ones sealed with
    ``buffers.seal(p, True)``), as ``Producer.send`` would place each: its
    size bound is ``len(key) + len(value) + overhead``; its partition the
    key's hash (``alg``: ALG_XXH64 or ALG_MURMUR2) modulo ``n``; it waits
    (here: stops) when ``space.used`` plus its size would pass
    ``space.limit`` or others wait for space (``space.waiters``); a batch
    whose ``nbytes`` would pass ``hard`` is replaced by a new one; a batch
    reaching ``limit`` is sealed (after ``sealed_max`` bytes of sealed
    batches the call returns). ``space.used`` grows by the bytes placed.
    ``reserved``: the bytes of record ``i`` are already counted in
    ``space.used`` (after a wait); if it is not placed (an error) they are
    taken off again.

    Delivery futures: with ``out`` a list, one ``DeliveryFuture`` per
    record is appended to it. Otherwise (``out`` None), ``cur`` is
    ``[batch, index]`` of the last record placed (batch None: none yet) and
    ``last`` maps each batch left behind to the index of its last record of
    this call (``cur`` is kept up to date across calls).

    Returns ``(index, why)``: the index of the first record not placed
    (``len(records)`` at STOP_END) and why the loop stopped (STOP_*).
    """
    cdef Py_ssize_t nrec, size, taken = 0, nb = 0, idx, hash_n, avail, start = i, sealed = 0
    cdef PyObject **items
    cdef PyObject *o
    cdef object r, key, value, b, recs = None, cb = None
    cdef uint64_t h
    cdef Py_ssize_t p
    cdef int why = STOP_END
    cdef bint credit
    try:
        if alg != ALG_XXH64 and alg != ALG_MURMUR2:
            raise ValueError(f"alg must be ALG_XXH64 or ALG_MURMUR2, got {alg}")
        if n <= 0 or PyList_GET_SIZE(open_) < n:
            raise ValueError(f"n={n} partitions, and open_ has {PyList_GET_SIZE(open_)}")
        if not isinstance(records, (list, tuple)):
            raise TypeError(f"records must be a list or tuple, got {type(records).__name__}")
        if out is None and len(cur) != 2:
            raise ValueError("cur must be [batch or None, index]")
        nrec = PySequence_Fast_GET_SIZE(records)
        hash_n = n
        # The space free for this call: nothing while others wait (they come first).
        avail = 0 if space.waiters else max(<Py_ssize_t>space.limit - <Py_ssize_t>space.used, 0)
        while i < nrec:
            # Re-read each time: new_batch/seal run Python code.
            if PySequence_Fast_GET_SIZE(records) != nrec:
                raise RuntimeError("the records list changed size during send_batch")
            items = PySequence_Fast_ITEMS(records)
            if i + PREFETCH_AHEAD < nrec:
                US_PREFETCH(items[i + PREFETCH_AHEAD])
                us_prefetch_pair(items[i + PREFETCH_AHEAD // 2])
            o = items[i]
            if not _is_pair(o):
                why = STOP_OTHER
                break
            r = <object>o
            key = <object>PyTuple_GET_ITEM(r, 0)
            value = <object>PyTuple_GET_ITEM(r, 1)
            size = PyBytes_GET_SIZE(key) + PyBytes_GET_SIZE(value) + overhead
            if size > max_record:
                why = STOP_TOO_LARGE
                break
            if alg == ALG_XXH64:
                h = us_xxh64(PyBytes_AS_STRING(key), <size_t>PyBytes_GET_SIZE(key), 0) % <uint64_t>hash_n
            else:
                h = (us_murmur2(PyBytes_AS_STRING(key), <size_t>PyBytes_GET_SIZE(key)) & 0x7fffffffu) \
                    % <uint32_t>hash_n
            p = <Py_ssize_t>h
            credit = i == start and reserved != 0
            if credit:
                if size != reserved:
                    raise ValueError(f"record {i} needs {size} bytes, {reserved} were reserved")
            elif taken + size > avail:
                why = STOP_SPACE
                break
            b = <object>PyList_GET_ITEM(open_, p)
            if b is not cb:
                # Another batch than the one cached: put the cached count back first.
                if cb is not None:
                    cb.nbytes = nb
                    cb = None
                if b is not None:
                    nb = b.nbytes
                    if nb + size <= hard:
                        cb, recs = b, b.records
            elif nb + size > hard:
                cb.nbytes = nb
                cb = None
            if cb is None:
                b = buffers.new_batch(p)    # seals the one open there
                cb, recs, nb = b, b.records, b.nbytes
            idx = PyList_GET_SIZE(recs)
            if out is not None:
                out.append(DeliveryFuture(b, idx))
            else:
                if b is not cur[0]:
                    if cur[0] is not None:
                        last[cur[0]] = cur[1]
                    cur[0] = b
                cur[1] = idx
            recs.append(r)
            nb += size
            if credit:
                reserved = 0                # placed: its bytes stay counted
            else:
                taken += size
            i += 1
            if nb >= limit:
                cb.nbytes = nb
                cb = None
                buffers.seal(p, True)
                sealed += nb
                if sealed >= sealed_max and i < nrec:
                    why = STOP_SEALED
                    break
    finally:
        if cb is not None:
            cb.nbytes = nb
        # (reserved still set: record i was not placed, and its reservation goes)
        space.used += taken - reserved
    return i, why
