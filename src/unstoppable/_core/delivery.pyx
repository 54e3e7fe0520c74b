# cython: language_level=3
"""Delivery futures of the asyncio producer, compiled.

With 1,000 tasks each awaiting the delivery of its record, the event loop
spends most of a record's time between the task and the future it awaits.
These classes keep that path in C:

* ``DeliveryFuture``: what ``Producer.send`` returns. A light handle (the
  batch and the record's index in it), no asyncio future behind it.
* ``_Waiter``: what ``await fut`` iterates over, and also what the task
  sleeps on (it speaks asyncio's future protocol: ``_asyncio_future_blocking``,
  ``get_loop``, ``add_done_callback``, ``result``, ``cancel``). One per await,
  so cancelling one wait never touches the batch or the other waiters. Its
  ``am_send`` slot returns the record's metadata to the awaiting coroutine
  without raising StopIteration.
* ``finish(batch)``: a settled batch wakes all of its waiters and done
  callbacks from one loop callback (``wake_all``) instead of one
  ``call_soon`` per waiter.

The batch itself (``unstoppable.client.producer.Batch``) stays a Python
class: the producer reads and writes its fields on every record, and
CPython's specialised attribute access is faster for ``__slots__`` than for
a compiled type's properties. Its ``state`` is 0 pending, 1 done, 2 failed.
"""
cimport cython
from cpython.exc cimport PyErr_Restore
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF

import asyncio

cdef extern from "Python.h":
    int PyContext_Enter(object ctx) except -1
    int PyContext_Exit(object ctx) except -1

    ctypedef enum PySendResult:
        PYGEN_RETURN
        PYGEN_ERROR
        PYGEN_NEXT
    ctypedef PySendResult (*sendfunc)(PyObject *iter, PyObject *value, PyObject **result)
    ctypedef struct PyAsyncMethods:
        sendfunc am_send
    ctypedef struct PyTypeObject_async "PyTypeObject":
        PyAsyncMethods *tp_as_async
    ctypedef PyObject *(*iternextfunc)(PyObject *)
    ctypedef struct PyTypeObject_iter "PyTypeObject":
        iternextfunc tp_iternext

cdef extern from *:
    """
    /* An instance of a tuple subclass (RecordMetadata) with four items, as
       tuple.__new__(cls, (a, b, c, d)) makes it, without the argument
       tuples and the copy. */
    static PyObject *us_new_tuple4(PyObject *cls, PyObject *a, PyObject *b,
                                   PyObject *c, PyObject *d) {
        PyTypeObject *t = (PyTypeObject *)cls;
        PyObject *r = t->tp_alloc(t, 4);
        if (r == NULL) return NULL;
        Py_INCREF(a); PyTuple_SET_ITEM(r, 0, a);
        Py_INCREF(b); PyTuple_SET_ITEM(r, 1, b);
        Py_INCREF(c); PyTuple_SET_ITEM(r, 2, c);
        Py_INCREF(d); PyTuple_SET_ITEM(r, 3, d);
        return r;
    }
    """
    object us_new_tuple4(object cls, object a, object b, object c, object d)

cdef enum:
    PENDING = 0
    DONE = 1
    FAILED = 2

cdef object InvalidStateError = asyncio.InvalidStateError
cdef object CancelledError = asyncio.CancelledError
cdef object _RecordMetadata = None  # unstoppable.client._types.RecordMetadata, on first use


cdef object _metadata(object b, Py_ssize_t i):
    """The RecordMetadata of record i of a settled batch, or raise its error."""
    global _RecordMetadata
    cdef object state = b.state
    if state == DONE:
        if _RecordMetadata is None:
            # Imported here: the client package imports this module.
            from unstoppable.client._types import RecordMetadata
            _RecordMetadata = RecordMetadata
        ts = b.timestamp
        if b.own_ts:
            r = b.records[i]
            if type(r) is tuple and len(r) > 3 and r[3] is not None:
                ts = r[3]
        return us_new_tuple4(_RecordMetadata, b.topic, b.partition, b.base_offset + i, ts)
    if state == FAILED:
        b.error_seen = True
        raise b.error
    raise InvalidStateError("the record is not written yet")


@cython.final
@cython.freelist(64)
cdef class _Waiter:
    """What a task awaiting a DeliveryFuture (or flush) sleeps on.

    asyncio's Task accepts any object with the future protocol; a loop
    future would wake its task through its own ``call_soon``, these wake in
    one callback per batch (``wake_all``). ``result()`` only says whether the
    wait ended well: the value is what ``await`` returns (``index`` >= 0),
    and flush (``index`` -1) needs none.
    """

    cdef public bint _asyncio_future_blocking
    cdef readonly object batch
    cdef readonly Py_ssize_t index
    cdef object callback
    cdef object context
    cdef object cancelled_msg   # a tuple (msg,) once cancelled
    cdef bint yielded

    def __init__(self, batch, Py_ssize_t index):
        self.batch = batch
        self.index = index
        self._asyncio_future_blocking = True

    # -- the await protocol (DeliveryFuture.__await__ returns a fresh waiter).
    # __await__ is here so that the type has the tp_as_async slots whose
    # am_send is set below; a flush waiter (new_waiter) is only yielded.

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        cdef bint suspend = False
        r = _step(self, &suspend)
        if suspend:
            return r
        raise StopIteration(r)

    def send(self, value):
        if value is not None and not self.yielded:
            raise TypeError("can't send non-None value to a just-started delivery wait")
        return self.__next__()

    # -- the future protocol (for the task)

    def get_loop(self):
        return self.batch.loop

    def add_done_callback(self, fn, *, context=None):
        if self.callback is not None:
            raise RuntimeError("a delivery waiter has one callback (its task)")
        if self.done():
            self.batch.loop.call_soon(fn, self, context=context)
        else:
            self.callback = fn
            self.context = context

    def remove_done_callback(self, fn):
        if self.callback is not None and self.callback == fn:
            self.callback = self.context = None
            return 1
        return 0

    def done(self):
        return self.cancelled_msg is not None or self.batch.state != PENDING

    def cancelled(self):
        return self.cancelled_msg is not None

    def cancel(self, msg=None):
        """Stop waiting (the record is still written): wakes the task with
        CancelledError at once."""
        if self.done():
            return False
        self.cancelled_msg = (msg,)
        b = self.batch
        waiters = b.waiters
        if waiters is not None:
            try:
                waiters.remove(self)
            except ValueError:
                pass
        if self.callback is not None:
            b.loop.call_soon(self.callback, self, context=self.context)
            self.callback = self.context = None
        return True

    def result(self):
        if self.cancelled_msg is not None:
            raise CancelledError(*[m for m in self.cancelled_msg if m is not None])
        b = self.batch
        state = b.state
        if state == FAILED and self.index >= 0:
            b.error_seen = True
            raise b.error
        if state == PENDING:
            raise InvalidStateError("the record is not written yet")
        return None

    def exception(self):
        try:
            self.result()
        except CancelledError:
            raise
        except BaseException as e:
            return e
        return None

    def __repr__(self):
        return f"<delivery waiter {self.batch!r} #{self.index}>"


cdef inline _Waiter _new_waiter(object batch, Py_ssize_t index):
    cdef _Waiter w = _Waiter.__new__(_Waiter)
    w.batch = batch
    w.index = index
    w._asyncio_future_blocking = True
    return w


cdef inline void _register(object b, _Waiter w) except *:
    """Add ``w`` to the waiters a pending batch wakes when it settles."""
    waiters = b.waiters
    if waiters is None:
        b.waiters = [w]
    else:
        waiters.append(w)


cdef object _step(_Waiter w, bint *suspend):
    """One step of ``await fut``: the first registers the waiter with a
    pending batch and yields it to the task; the next one (or the first, if
    the batch is already settled) returns the record's metadata."""
    b = w.batch
    if not w.yielded:
        w.yielded = True
        if b.state == PENDING:
            _register(b, w)
            suspend[0] = True
            return w
    return _metadata(b, w.index)


cdef void _leave_raised(object err) noexcept:
    """Set ``err`` as the current exception for a C slot's caller (the
    slot returns NULL / PYGEN_ERROR; PyErr_Restore steals references)."""
    t = type(err)
    tb = err.__traceback__
    Py_INCREF(t)
    Py_INCREF(err)
    if tb is not None:
        Py_INCREF(tb)
        PyErr_Restore(<PyObject*>t, <PyObject*>err, <PyObject*>tb)
    else:
        PyErr_Restore(<PyObject*>t, <PyObject*>err, NULL)


cdef PySendResult _waiter_am_send(PyObject *it, PyObject *value, PyObject **result) noexcept:
    # CPython 3.10 and 3.11's SEND (the await in a coroutine) call am_send
    # when the iterator has one: the return value is handed over without
    # raising StopIteration.
    cdef object r = None
    cdef object err = None
    cdef bint suspend = False
    try:
        if value != <PyObject*>None and not (<_Waiter>it).yielded:
            raise TypeError("can't send non-None value to a just-started delivery wait")
        r = _step(<_Waiter>it, &suspend)
    except BaseException as e:
        err = e
    if err is not None:
        _leave_raised(err)
        result[0] = NULL
        return PYGEN_ERROR
    Py_INCREF(r)
    result[0] = <PyObject*>r
    return PYGEN_NEXT if suspend else PYGEN_RETURN


cdef PyObject *_waiter_iternext(PyObject *it) noexcept:
    # CPython 3.12 and later's SEND calls tp_iternext (not am_send) on an
    # iterator that is not a generator: the value goes back in a
    # StopIteration. Done here rather than by the __next__ Cython generates,
    # which also builds a traceback entry for every StopIteration (a settled
    # await cost about 500 ns on 3.12 that way).
    cdef object r = None
    cdef object err = None
    cdef bint suspend = False
    try:
        r = _step(<_Waiter>it, &suspend)
        if not suspend:
            err = StopIteration(r)
    except BaseException as e:
        err = e
    if err is not None:
        _leave_raised(err)
        return NULL
    Py_INCREF(r)
    return <PyObject*>r


(<PyTypeObject_async*>_Waiter).tp_as_async.am_send = _waiter_am_send
(<PyTypeObject_iter*>_Waiter).tp_iternext = _waiter_iternext


@cython.final
@cython.freelist(64)
cdef class DeliveryFuture:
    """The outcome of one ``send``: awaiting it returns the record's
    :class:`RecordMetadata` once it is written at the producer's ``acks``
    level, or raises why it could not be.

    It also offers ``done()``, ``result()``, ``exception()``,
    ``add_done_callback()`` and ``get_loop()``, and works with
    ``asyncio.gather``/``wait_for``/``wait``. Cancelling a wait never
    cancels the write.
    """

    cdef readonly object _b
    cdef readonly Py_ssize_t _i

    def __init__(self, batch, Py_ssize_t index):
        self._b = batch
        self._i = index

    def __await__(self):
        return _new_waiter(self._b, self._i)

    def __iter__(self):
        return _new_waiter(self._b, self._i)

    def done(self):
        return self._b.state != PENDING

    def cancelled(self):
        return False

    def cancel(self, msg=None):
        """Delivery cannot be cancelled once a record is accepted; returns False."""
        return False

    def result(self):
        """The record's RecordMetadata; raises the delivery error, or
        InvalidStateError while it is pending."""
        return _metadata(self._b, self._i)

    def exception(self):
        b = self._b
        state = b.state
        if state == PENDING:
            raise InvalidStateError("the record is not written yet")
        if state == FAILED:
            b.error_seen = True
        return b.error

    def add_done_callback(self, fn, *, context=None):
        b = self._b
        if b.state != PENDING:
            b.loop.call_soon(fn, self, context=context)
        elif b.callbacks is None:
            b.callbacks = [(fn, self, context)]
        else:
            b.callbacks.append((fn, self, context))

    def remove_done_callback(self, fn):
        b = self._b
        if not b.callbacks:
            return 0
        keep = [c for c in b.callbacks if not (c[0] == fn and c[1] is self)]
        n = len(b.callbacks) - len(keep)
        b.callbacks = keep
        return n

    def get_loop(self):
        return self._b.loop

    def __repr__(self):
        b = self._b
        st = ("pending", "done", "failed")[b.state]
        return f"<DeliveryFuture {b.topic}/{b.partition} #{self._i} {st}>"


def new_waiter(batch, Py_ssize_t index=-1):
    """A waiter registered with a pending batch (flush waits on index -1)."""
    cdef _Waiter w = _new_waiter(batch, index)
    w.yielded = True
    _register(batch, w)
    return w


def finish(b):
    """The batch is settled (its state set): wake everything that waits on
    it, all from one loop callback."""
    cdef list wake = []
    cdef _Waiter w
    waiters = b.waiters
    if waiters:
        if b.state == FAILED:
            for w in waiters:
                if w.index >= 0:
                    b.error_seen = True  # a sender awaits: the error reaches it
                    break
        for w in waiters:
            if w.callback is not None:
                wake.append((w.callback, w, w.context))
                w.callback = None
                w.context = None
        b.waiters = None
    callbacks = b.callbacks
    if callbacks:
        wake.extend(callbacks)
        b.callbacks = None
    if wake:
        loop = b.loop
        loop.call_soon(wake_all, loop, wake)


def wake_all(loop, list wake):
    """Run the wake-ups of a settled batch: the tasks awaiting its records
    (each step runs here, as a Handle would run it, in its context) and done
    callbacks."""
    cdef Py_ssize_t k, n = len(wake)
    for k in range(n):
        fn, fut, ctx = <tuple>wake[k]
        try:
            if ctx is None:
                fn(fut)
            else:
                PyContext_Enter(ctx)
                try:
                    fn(fut)
                finally:
                    PyContext_Exit(ctx)
        except (SystemExit, KeyboardInterrupt):
            if k + 1 < n:  # the others still wake, if the loop runs on
                loop.call_soon(wake_all, loop, wake[k + 1:])
            raise
        except BaseException as e:
            loop.call_exception_handler({
                "message": f"Exception in callback {fn!r}", "exception": e, "future": fut})
