# cython: language_level=3
"""The booking service's fast path: a run of one partition's input records
decided in C, with the decisions of the reference state machine
(``booking/machine.py`` ``apply``, which stays the readable table of
outcomes).

Per record: the ``BookingEvent`` protobuf wire bytes are parsed here (fields
by number, unknown fields skipped), the event is validated and checked to be
on its seat's partition, and the state machine decides against the
partition's in-memory state (a ``PartitionStore``), building the outcome
events as serialized bytes byte-identical to
``BookingEvent(...).SerializeToString()``. Counters are C integers, added to
the store once per run.

Every record this parser does not accept plainly - no value, bytes that are
not a well-formed event, a known field with an unexpected wire type, a
group, an outcome kind, a missing field, the wrong partition, invalid UTF-8 -
goes to the reference path for that one record (``slow``: decode with
protobuf, ``validate``, ``apply``), so errors, dead letters and anything
unusual are the reference's by construction. The differential test
(tests/booking/test_decide.py) holds the two paths to the same states,
counters, outcome bytes and failures.

Also here: the state's classes (``Seat``, ``Booking``: machine.py
re-exports them), and what ``PartitionStore.flush`` writes of a run, built
in C: the seat and booking rows with the booking's log as JSON
(``seat_rows``, ``booking_rows``, ``pack_log``) and the run's outcomes
packed in one outbox value (``pack_outcomes``); the Python builders in
readmodel.py are their reference.

Wire format read (proto/booking.proto; proto3: a scalar absent on the wire is
its default; the last occurrence of a scalar wins; repeated occurrences of
one oneof submessage merge, a different member replaces it)::

    BookingEvent   1 event_id string       (parsed for UTF-8 validity only)
                   2 occurred_ms int64     (ignored: decisions use the record timestamp)
                  10 SeatReservationRequested {1 booking_id, 2 user_id, 3 seat_id}
                  11 PaymentReceived {1 booking_id, 2 seat_id, 3 payment_id,
                                      4 amount_cents int64, 5 user_id}
                  12 ReservationExpired {1 booking_id, 2 seat_id, 3 deadline_ms int64}
                  20-25 outcome kinds      (not inputs: reference path)

Wire format written (outcomes; fields in number order, defaults omitted)::

    BookingEvent   1 event_id "<topic>/<partition>/<offset>#<n>", 2 occurred_ms
                  20 SeatHeld {1 booking_id, 2 user_id, 3 seat_id, 4 expires_ms}
                  21 ReservationRejected {1 booking_id, 2 user_id, 3 seat_id,
                                          4 reason enum, 5 holder_booking_id}
                  22 BookingConfirmed {1 booking_id, 2 user_id, 3 seat_id,
                                       4 payment_id, 5 amount_cents}
                  23 HoldExpired {1 booking_id, 2 user_id, 3 seat_id}
                  24 PaymentParked {1 booking_id, 2 seat_id, 3 payment_id, 4 deadline_ms}
                  25 PaymentRefunded {1 booking_id, 2 seat_id, 3 payment_id,
                                      4 amount_cents, 5 reason enum, 6 user_id}
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_CheckBuffer, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, uint64_t
from libc.string cimport memcpy

from gc import disable as gc_disable, enable as gc_enable, isenabled as gc_isenabled

cimport cython

from unstoppable._core.batch cimport Record

from unstoppable.processor import RecordFailed


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)
    bint PyObject_IS_GC(object o)
    void PyObject_GC_UnTrack(void* o)


cdef inline int _itoa(char* out, long long v) noexcept nogil:
    """``v`` in decimal (as "%lld" writes it) at ``out`` (room for 20 chars); returns the length."""
    cdef char tmp[24]
    cdef int n = 0, i
    cdef unsigned long long u = <unsigned long long>v
    if v < 0:
        u = (~u) + 1
    while True:
        tmp[n] = <char>(48 + <int>(u % 10))
        n += 1
        u //= 10
        if u == 0:
            break
    i = 0
    if v < 0:
        out[0] = 45
        i = 1
    while n:
        n -= 1
        out[i] = tmp[n]
        i += 1
    return i


cdef inline object _untracked(object o):
    """``o``, out of the cycle collector's sight. For the objects the
    decisions make that hold only strings and ints (the partition's state:
    Seat, Booking, a booking's log, its history and payment entries, and the
    run's row and outcome tuples): they can be in no reference cycle, and
    they are long-lived, so every collection would walk them again until
    they reach the oldest generation (measured on one worker, 305k log: the
    collections after each run's decisions were 8.8% of its py-spy samples).
    Reference counting still frees them."""
    if PyObject_IS_GC(o):
        PyObject_GC_UnTrack(<void*>o)
    return o


# Input kinds (the oneof field numbers).
cdef enum:
    K_REQUEST = 10
    K_PAYMENT = 11
    K_EXPIRY = 12

# Outcome kinds (field numbers) and enum values (proto/booking.proto).
cdef enum:
    O_SEAT_HELD = 20
    O_REJECTED = 21
    O_CONFIRMED = 22
    O_HOLD_EXPIRED = 23
    O_PARKED = 24
    O_REFUNDED = 25
    R_SEAT_HELD = 1
    R_SEAT_BOOKED = 2
    F_HOLD_EXPIRED = 1
    F_RES_REJECTED = 2
    F_DUP_PAYMENT = 3
    F_NO_RESERVATION = 4

# Counters, in machine.COUNTERS order (dead_letters is counted by the store).
cdef enum:
    C_EVENTS, C_REQUESTS, C_PAYMENTS, C_EXPIRIES, C_HELD, C_CONFIRMED, C_REJECTED
    C_EXPIRED, C_PARKED, C_REFUNDS, C_DUPLICATES, C_LATE_EXPIRIES, C_N

_COUNTER_NAMES = ("events", "requests", "payments", "expiries", "held", "confirmed",
                  "rejected", "expired", "parked", "refunds", "duplicates", "late_expiries")

# State names (machine.py's constants: equal strings).
cdef str AVAILABLE = "available"
cdef str HELD_SEAT = "held"
cdef str BOOKED = "booked"
cdef str HELD = "held"
cdef str PARKED = "parked"
cdef str CONFIRMED = "confirmed"
cdef str REJECTED = "rejected"
cdef str EXPIRED = "expired"
cdef str REFUNDED = "refunded"
cdef str EMPTY = ""
cdef tuple _REJECT_NAME = ("REJECT_REASON_UNSPECIFIED", "SEAT_HELD", "SEAT_BOOKED")
cdef tuple _REFUND_NAME = ("REFUND_REASON_UNSPECIFIED", "HOLD_EXPIRED", "RESERVATION_REJECTED",
                           "DUPLICATE_PAYMENT", "NO_RESERVATION")


# ------------------------------------------------------------------ state
#
# A partition's state: a Seat per seat, a Booking per booking. Compiled
# classes (machine.py re-exports them, and machine.apply works on them as on
# any object with these attributes), so that the decisions below and the row
# builders read and write their fields as C struct members. They hold only
# strings and ints, so they can be in no reference cycle: the cycle
# collector never tracks them (no_gc; see _untracked).

@cython.final
@cython.no_gc
cdef class Seat:
    """Seat(seat_id, state="available", booking_id="", user_id="", updated_ms=0)

    A seat's state: available, held by ``booking_id`` for ``user_id``, or booked."""
    cdef public str seat_id, state, booking_id, user_id
    cdef public object updated_ms

    def __init__(self, str seat_id, str state=AVAILABLE, str booking_id=EMPTY, str user_id=EMPTY,
                 updated_ms=0):
        self.seat_id, self.state, self.booking_id, self.user_id = seat_id, state, booking_id, user_id
        self.updated_ms = updated_ms

    cdef tuple _fields(self):
        return (self.seat_id, self.state, self.booking_id, self.user_id, self.updated_ms)

    def __eq__(self, other):
        if type(other) is not Seat:
            return NotImplemented
        return self._fields() == (<Seat>other)._fields()

    def __ne__(self, other):
        if type(other) is not Seat:
            return NotImplemented
        return self._fields() != (<Seat>other)._fields()

    __hash__ = None

    def __repr__(self):
        return (f"Seat(seat_id={self.seat_id!r}, state={self.state!r}, booking_id={self.booking_id!r}, "
                f"user_id={self.user_id!r}, updated_ms={self.updated_ms!r})")

    def __copy__(self):
        return Seat(*self._fields())

    def __reduce__(self):
        return Seat, self._fields()


@cython.final
@cython.no_gc
cdef class Booking:
    """Booking(seat_id, booking_id, user_id="", state="held", reason="", payment_id="",
    amount_cents=0, created_ms=0, updated_ms=0, deadline_ms=0, nevents=0)

    One booking of a seat: its state, why it was rejected or refunded
    (``reason``), the payment that confirmed it or was parked
    (``payment_id``, ``amount_cents``), the deadline of its hold or parked
    payment (0 when none is pending), and how many history entries it has
    (``nevents``, the next one's seq)."""
    cdef public str seat_id, booking_id, user_id, state, reason, payment_id
    cdef public object amount_cents, created_ms, updated_ms, deadline_ms, nevents

    def __init__(self, str seat_id, str booking_id, str user_id=EMPTY, str state=HELD,
                 str reason=EMPTY, str payment_id=EMPTY, amount_cents=0, created_ms=0, updated_ms=0,
                 deadline_ms=0, nevents=0):
        self.seat_id, self.booking_id, self.user_id, self.state = seat_id, booking_id, user_id, state
        self.reason, self.payment_id, self.amount_cents = reason, payment_id, amount_cents
        self.created_ms, self.updated_ms, self.deadline_ms = created_ms, updated_ms, deadline_ms
        self.nevents = nevents

    cdef tuple _fields(self):
        return (self.seat_id, self.booking_id, self.user_id, self.state, self.reason,
                self.payment_id, self.amount_cents, self.created_ms, self.updated_ms,
                self.deadline_ms, self.nevents)

    def __eq__(self, other):
        if type(other) is not Booking:
            return NotImplemented
        return self._fields() == (<Booking>other)._fields()

    def __ne__(self, other):
        if type(other) is not Booking:
            return NotImplemented
        return self._fields() != (<Booking>other)._fields()

    __hash__ = None

    def __repr__(self):
        return (f"Booking(seat_id={self.seat_id!r}, booking_id={self.booking_id!r}, "
                f"user_id={self.user_id!r}, state={self.state!r}, reason={self.reason!r}, "
                f"payment_id={self.payment_id!r}, amount_cents={self.amount_cents!r}, "
                f"created_ms={self.created_ms!r}, updated_ms={self.updated_ms!r}, "
                f"deadline_ms={self.deadline_ms!r}, nevents={self.nevents!r})")

    def __copy__(self):
        return Booking(*self._fields())

    def __reduce__(self):
        return Booking, self._fields()


# ------------------------------------------------------------------ reading

cdef inline int _varint(const unsigned char** pp, const unsigned char* end,
                        uint64_t* out) noexcept nogil:
    """Read a base-128 varint; -1 if truncated or longer than 64 bits."""
    cdef const unsigned char* p = pp[0]
    cdef uint64_t v = 0
    cdef int shift = 0
    cdef unsigned char b
    while True:
        if p >= end:
            return -1
        b = p[0]
        p += 1
        if shift == 63 and b > 1:
            return -1
        v |= (<uint64_t>(b & 0x7f)) << shift
        if b < 0x80:
            break
        shift += 7
    pp[0] = p
    out[0] = v
    return 0


cdef inline int _tag(const unsigned char** pp, const unsigned char* end,
                     int* field, int* wt) noexcept nogil:
    """Read a field's tag: its number and wire type; -1 if truncated, over
    32 bits, or field number 0 (protobuf refuses all three)."""
    cdef uint64_t tag
    if _varint(pp, end, &tag) < 0 or (tag >> 32) != 0 or (tag >> 3) == 0:
        return -1
    field[0], wt[0] = <int>(tag >> 3), <int>(tag & 7)
    return 0


cdef inline int _skip(const unsigned char** pp, const unsigned char* end, int wt) noexcept nogil:
    """Step over an unknown field's value of wire type ``wt``; -1 if it cannot
    (truncated, a group, an invalid wire type)."""
    cdef uint64_t n
    if wt == 0:
        return _varint(pp, end, &n)
    if wt == 1:
        n = 8
    elif wt == 5:
        n = 4
    elif wt == 2:
        if _varint(pp, end, &n) < 0:
            return -1
    else:
        return -1
    if n > <uint64_t>(end - pp[0]):
        return -1
    pp[0] += n
    return 0


cdef class _Event:
    """One parsed input event (fields of the kind's body; "" / 0 when absent)."""
    cdef int kind
    cdef object booking_id, user_id, seat_id, payment_id
    cdef int64_t amount_cents

    cdef void reset(self):
        self.booking_id = self.user_id = self.seat_id = self.payment_id = EMPTY
        self.amount_cents = 0

    cdef int parse(self, const unsigned char* p, const unsigned char* end):
        """Parse a BookingEvent; 0 if it is a plain input event, -1 for
        anything the reference path must see (never raises)."""
        cdef uint64_t tag, n
        cdef int field, wt
        self.kind = 0
        self.reset()
        while p < end:
            if _tag(&p, end, &field, &wt) < 0:
                return -1
            if field == 1 or (K_REQUEST <= field <= K_EXPIRY):
                if wt != 2 or _varint(&p, end, &n) < 0 or n > <uint64_t>(end - p):
                    return -1
                if field == 1:
                    if not _valid_utf8(p, <Py_ssize_t>n):
                        return -1
                else:
                    if field != self.kind:      # another oneof member replaces the last
                        self.reset()
                        self.kind = field
                    if self.parse_body(p, p + n) < 0:
                        return -1
                p += n
            elif field == 2:
                if wt != 0 or _varint(&p, end, &n) < 0:
                    return -1
            elif 20 <= field <= 25:
                return -1                       # an outcome kind: invalid on the input topic
            elif _skip(&p, end, wt) < 0:
                return -1
        return 0

    cdef int parse_body(self, const unsigned char* p, const unsigned char* end):
        cdef uint64_t tag, n
        cdef int field, wt, slot
        cdef object s
        while p < end:
            if _tag(&p, end, &field, &wt) < 0:
                return -1
            slot = _slot(self.kind, field)
            if slot == 0:
                if _skip(&p, end, wt) < 0:
                    return -1
            elif slot < 0:                      # an int64
                if wt != 0 or _varint(&p, end, &n) < 0:
                    return -1
                if slot == -1:
                    self.amount_cents = <int64_t>n
            else:
                if wt != 2 or _varint(&p, end, &n) < 0 or n > <uint64_t>(end - p):
                    return -1
                s = _utf8(p, <Py_ssize_t>n)
                if s is None:
                    return -1
                p += n
                if slot == 1:
                    self.booking_id = s
                elif slot == 2:
                    self.user_id = s
                elif slot == 3:
                    self.seat_id = s
                else:
                    self.payment_id = s
        return 0


cdef inline int _slot(int kind, int field) noexcept nogil:
    """Where field ``field`` of a ``kind`` body goes: 1 booking_id, 2 user_id,
    3 seat_id, 4 payment_id, -1 amount_cents, -2 an int64 not used, 0 unknown."""
    if field == 1:
        return 1
    if kind == K_REQUEST:
        return 2 if field == 2 else 3 if field == 3 else 0
    if kind == K_PAYMENT:
        return (3 if field == 2 else 4 if field == 3 else -1 if field == 4
                else 2 if field == 5 else 0)
    return 3 if field == 2 else -2 if field == 3 else 0


cdef bint _valid_utf8(const unsigned char* p, Py_ssize_t n):
    """Whether bytes are valid UTF-8 (ASCII checked here, the rest by Python's decoder)."""
    cdef Py_ssize_t i
    for i in range(n):
        if p[i] >= 0x80:
            return _utf8(p, n) is not None
    return True


cdef object _utf8(const unsigned char* p, Py_ssize_t n):
    """The str of UTF-8 bytes, None if they are not valid UTF-8."""
    try:
        return PyUnicode_DecodeUTF8(<const char*>p, n, NULL)
    except UnicodeDecodeError:
        return None


# ------------------------------------------------------------------ writing

cdef struct Field:
    int type            # 0 absent, 1 bytes, 2 int64
    const char* s
    Py_ssize_t n
    int64_t v


cdef inline Py_ssize_t _vlen(uint64_t v) noexcept nogil:
    cdef Py_ssize_t n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline unsigned char* _wvar(unsigned char* q, uint64_t v) noexcept nogil:
    while v >= 0x80:
        q[0] = <unsigned char>((v & 0x7f) | 0x80)
        v >>= 7
        q += 1
    q[0] = <unsigned char>v
    return q + 1


cdef inline void _str(Field* f, object s) except *:
    f.type = 1
    f.s = PyUnicode_AsUTF8AndSize(s, &f.n)


cdef inline void _int(Field* f, int64_t v) noexcept:
    f.type = 2
    f.v = v


cdef bytes _encode(const char* eid, Py_ssize_t eid_n, int64_t ts, int kind, Field* f, int nf):
    """A serialized BookingEvent{event_id, occurred_ms, <kind>{fields 1..nf}}."""
    cdef Py_ssize_t sub = 0, total
    cdef int i
    cdef uint64_t tag
    for i in range(nf):
        if f[i].type == 1 and f[i].n > 0:
            sub += 1 + _vlen(<uint64_t>f[i].n) + f[i].n
        elif f[i].type == 2 and f[i].v != 0:
            sub += 1 + _vlen(<uint64_t>f[i].v)
    tag = (<uint64_t>kind << 3) | 2
    total = 1 + _vlen(<uint64_t>eid_n) + eid_n + _vlen(tag) + _vlen(<uint64_t>sub) + sub
    if ts != 0:
        total += 1 + _vlen(<uint64_t>ts)
    out = PyBytes_FromStringAndSize(NULL, total)
    cdef unsigned char* q = <unsigned char*>PyBytes_AS_STRING(out)
    q[0] = 0x0A
    q = _wvar(q + 1, <uint64_t>eid_n)
    memcpy(q, eid, eid_n)
    q += eid_n
    if ts != 0:
        q[0] = 0x10
        q = _wvar(q + 1, <uint64_t>ts)
    q = _wvar(q, tag)
    q = _wvar(q, <uint64_t>sub)
    for i in range(nf):
        if f[i].type == 1 and f[i].n > 0:
            q[0] = <unsigned char>(((i + 1) << 3) | 2)
            q = _wvar(q + 1, <uint64_t>f[i].n)
            memcpy(q, f[i].s, f[i].n)
            q += f[i].n
        elif f[i].type == 2 and f[i].v != 0:
            q[0] = <unsigned char>((i + 1) << 3)
            q = _wvar(q + 1, <uint64_t>f[i].v)
    return out


# ------------------------------------------------------------------ deciding

cdef object _unpack_log = None


cpdef tuple thaw_log(dict logs, k, str text):
    """thaw_log(logs, k, text) -> (history, payments)

    A booking's log kept as its ``log`` column's JSON text (once written: a
    "cold" log, see :func:`booking_rows`) made the ``(history, payments)``
    a run changes again, and stored back in ``logs`` under ``k``."""
    global _unpack_log
    if _unpack_log is None:
        from unstoppable.booking.readmodel import unpack_log
        _unpack_log = unpack_log
    log = logs[k] = _unpack_log(text)
    return log


cdef class _Run:
    """A run's view of a PartitionStore: its partition's dicts, the staging
    sets, the outcome list, and the counters."""
    cdef object st
    cdef dict seats, bookings, logs, timers
    cdef set dirty_seats, dirty_bookings
    cdef list outbox
    cdef bint build, keep
    cdef int64_t counts[C_N]
    cdef Py_ssize_t pending
    # the record being decided
    cdef object ts                   # its timestamp (a Python int, as stored)
    cdef int64_t ts_c
    cdef object ttl
    cdef bytes prefix                # "<topic>/<partition>/" in UTF-8
    cdef int64_t offset
    cdef int nout                    # outcomes of this record so far
    cdef object key                  # its seat id in UTF-8 (the outcome records' key)
    cdef object cur_log              # its booking's (history, payments), once looked up
    cdef bint marked                 # its booking is in dirty_bookings

    def __cinit__(self, st, ttl_ms, bytes prefix):
        part = st._cur
        self.st = st
        self.seats, self.bookings, self.logs = part.seats, part.bookings, part.logs
        self.timers = st._timers
        self.dirty_seats, self.dirty_bookings = st._dirty_seats, st._dirty_bookings
        self.outbox = st._outbox
        self.build = bool(st.wants_outcomes)
        self.keep = bool(st.outbox)
        self.ttl = ttl_ms
        self.prefix = prefix
        self.pending = 0
        for i in range(C_N):
            self.counts[i] = 0

    cdef bint out_of_range(self):
        """Whether the record's timestamp, or a deadline from it, is no int64
        (protobuf refuses to build the outcome: the reference path fails it)."""
        cdef int64_t ttl
        try:
            self.ts_c = self.ts
            ttl = self.ttl
        except OverflowError:
            return True
        return ((ttl > 0 and self.ts_c > INT64_MAX - ttl)
                or (ttl < 0 and self.ts_c < INT64_MIN - ttl))

    cdef flush_counts(self):
        """Add the counters to the store's (once per run)."""
        c = self.st._counts
        for i in range(C_N):
            if self.counts[i]:
                name = _COUNTER_NAMES[i]
                c[name] = c.get(name, 0) + self.counts[i]
                self.counts[i] = 0
        if self.pending:
            self.st.pending_outcomes += self.pending
            self.pending = 0

    # -- the Store operations of machine.apply, on the dicts
    cdef inline _put_seat(self, seat, str s):
        self.seats[s] = seat
        self.dirty_seats.add(s)

    cdef inline _mark(self, tuple k):
        if not self.marked:
            self.dirty_bookings.add(k)
            self.marked = True

    cdef inline _put_booking(self, bk, tuple k):
        self.bookings[k] = bk
        self._mark(k)

    cdef inline object _log(self, tuple k):
        log = self.cur_log
        if log is None:
            log = self.logs.get(k)
            if log is None:
                log = self.logs[k] = _untracked((_untracked([]), {}))
            elif type(log) is str:
                log = thaw_log(self.logs, k, log)
            self.cur_log = log
        return log

    cdef inline _add_payment(self, tuple k, pid, outcome, amount):
        self._log(k)[1][pid] = _untracked((outcome, amount))
        self._mark(k)

    cdef inline _add_history(self, Booking bk, tuple k, str kind, detail):
        self._log(k)[0].append(_untracked((bk.user_id, self.ts, kind, detail)))
        bk.nevents += 1
        self._mark(k)

    cdef _emit(self, int kind, Field* f, int nf):
        cdef char eid[512]
        cdef Py_ssize_t pn = PyBytes_GET_SIZE(self.prefix)
        cdef int tail
        self.pending += 1
        if not self.keep:
            self.nout += 1
            return
        if pn + 48 <= <Py_ssize_t>sizeof(eid):
            memcpy(eid, PyBytes_AS_STRING(self.prefix), pn)
            tail = _itoa(eid + pn, <long long>self.offset)
            eid[pn + tail] = 35                 # "#"
            tail += 1 + _itoa(eid + pn + tail + 1, self.nout)
            v = _encode(eid, pn + tail, self.ts_c, kind, f, nf)
        else:                                   # a topic name too long for the stack buffer
            e = self.prefix + (b"%d#%d" % (self.offset, self.nout))
            v = _encode(PyBytes_AS_STRING(e), PyBytes_GET_SIZE(e), self.ts_c, kind, f, nf)
        self.nout += 1
        self.outbox.append(_untracked((self.key, v)))

    cdef _book(self, Seat seat, Booking bk, str s, str b, tuple k):
        seat.state = BOOKED
        seat.booking_id = b
        seat.user_id = bk.user_id
        seat.updated_ms = self.ts
        self._put_seat(seat, s)
        bk.state = CONFIRMED
        bk.deadline_ms = 0
        bk.updated_ms = self.ts
        self.timers[k] = None
        self.counts[C_CONFIRMED] += 1

    cdef _refund(self, Booking bk, str s, str b, tuple k, pid, amount, int reason, user_id):
        cdef Field f[6]
        name = _REFUND_NAME[reason]
        self._add_payment(k, pid, "refunded:" + name, amount)
        self._add_history(bk, k, "payment_refunded", f"{pid} {name}")
        self.counts[C_REFUNDS] += 1
        if self.build:
            _str(&f[0], b)
            _str(&f[1], s)
            _str(&f[2], pid)
            _int(&f[3], amount)
            _int(&f[4], reason)
            _str(&f[5], user_id or bk.user_id)
            self._emit(O_REFUNDED, f, 6)

    cdef _confirmed(self, Booking bk, str s, str b, pid, amount):
        cdef Field f[5]
        if self.build:
            _str(&f[0], b)
            _str(&f[1], bk.user_id)
            _str(&f[2], s)
            _str(&f[3], pid)
            _int(&f[4], amount)
            self._emit(O_CONFIRMED, f, 5)

    cdef apply(self, _Event e):
        """machine.apply for a parsed, validated input event."""
        cdef Field f[5]
        cdef Booking bk
        cdef Seat seat
        cdef str s = e.seat_id, b = e.booking_id
        cdef tuple k = _untracked((s, b))
        self.cur_log = None
        self.marked = False
        self.counts[C_EVENTS] += 1
        bk = self.bookings.get(k)
        ts = self.ts
        if e.kind == K_REQUEST:
            self.counts[C_REQUESTS] += 1
            if bk is not None and bk.state != PARKED:
                self.counts[C_DUPLICATES] += 1
                return
            seat = self.seats.get(s)
            if seat is None:
                seat = _untracked(Seat(s))
            if bk is None:
                bk = _untracked(Booking(s, b, e.user_id, HELD, EMPTY, EMPTY, 0, ts))
            bk.user_id = e.user_id
            bk.updated_ms = ts
            if seat.state == AVAILABLE:
                if bk.state == PARKED:
                    self._book(seat, bk, s, b, k)
                    pid, amount = bk.payment_id, bk.amount_cents
                    self._add_payment(k, pid, "captured", amount)
                    self._add_history(bk, k, "booking_confirmed", pid)
                    self._put_booking(bk, k)
                    self._confirmed(bk, s, b, pid, amount)
                    return
                deadline = ts + self.ttl
                bk.state = HELD
                bk.deadline_ms = deadline
                seat.state = HELD_SEAT
                seat.booking_id = b
                seat.user_id = bk.user_id
                seat.updated_ms = ts
                self._put_seat(seat, s)
                self.timers[k] = deadline
                self._add_history(bk, k, "seat_held", str(deadline))
                self._put_booking(bk, k)
                self.counts[C_HELD] += 1
                if self.build:
                    _str(&f[0], b)
                    _str(&f[1], bk.user_id)
                    _str(&f[2], s)
                    _int(&f[3], deadline)
                    self._emit(O_SEAT_HELD, f, 4)
                return
            reason = R_SEAT_HELD if seat.state == HELD_SEAT else R_SEAT_BOOKED
            was_parked = bk.state == PARKED
            bk.state = REJECTED
            bk.reason = _REJECT_NAME[reason]
            bk.deadline_ms = 0
            self.counts[C_REJECTED] += 1
            self._add_history(bk, k, "reservation_rejected", bk.reason)
            if self.build:
                _str(&f[0], b)
                _str(&f[1], bk.user_id)
                _str(&f[2], s)
                _int(&f[3], reason)
                _str(&f[4], seat.booking_id)
                self._emit(O_REJECTED, f, 5)
            if was_parked:
                self.timers[k] = None
                self._refund(bk, s, b, k, bk.payment_id, bk.amount_cents, F_RES_REJECTED, None)
            self._put_booking(bk, k)
            return

        if e.kind == K_PAYMENT:
            self.counts[C_PAYMENTS] += 1
            pid, amount = e.payment_id, e.amount_cents
            log = self.logs.get(k)
            if type(log) is str:
                log = thaw_log(self.logs, k, log)
            self.cur_log = log
            if log is not None and pid in log[1]:
                self.counts[C_DUPLICATES] += 1
                return
            if bk is None:
                deadline = ts + self.ttl
                bk = _untracked(Booking(s, b, e.user_id, PARKED, EMPTY, pid, amount, ts, ts,
                                        deadline))
                self._add_payment(k, pid, "parked", amount)
                self.timers[k] = deadline
                self._add_history(bk, k, "payment_parked", pid)
                self._put_booking(bk, k)
                self.counts[C_PARKED] += 1
                if self.build:
                    _str(&f[0], b)
                    _str(&f[1], s)
                    _str(&f[2], pid)
                    _int(&f[3], deadline)
                    self._emit(O_PARKED, f, 4)
                return
            bk.updated_ms = ts
            state = bk.state
            if state == HELD:
                seat = self.seats.get(s)
                if seat is None:
                    seat = _untracked(Seat(s))
                bk.payment_id = pid
                bk.amount_cents = amount
                self._book(seat, bk, s, b, k)
                self._add_payment(k, pid, "captured", amount)
                self._add_history(bk, k, "booking_confirmed", pid)
                self._put_booking(bk, k)
                self._confirmed(bk, s, b, pid, amount)
                return
            reason = (F_HOLD_EXPIRED if state == EXPIRED else F_RES_REJECTED if state == REJECTED
                      else F_DUP_PAYMENT)
            self._refund(bk, s, b, k, pid, amount, reason, bk.user_id or e.user_id)
            self._put_booking(bk, k)
            return

        # reservation_expired: the durable timer fired.
        self.counts[C_EXPIRIES] += 1
        state = None if bk is None else bk.state
        if state == HELD:
            seat = self.seats.get(s)
            if seat is None:
                seat = _untracked(Seat(s))
            if seat.state == HELD_SEAT and seat.booking_id == b:
                seat.state = AVAILABLE
                seat.booking_id = EMPTY
                seat.user_id = EMPTY
                seat.updated_ms = ts
                self._put_seat(seat, s)
            bk.state = EXPIRED
            bk.deadline_ms = 0
            bk.updated_ms = ts
            self.timers[k] = None
            self._add_history(bk, k, "hold_expired", EMPTY)
            self._put_booking(bk, k)
            self.counts[C_EXPIRED] += 1
            if self.build:
                _str(&f[0], b)
                _str(&f[1], bk.user_id)
                _str(&f[2], s)
                self._emit(O_HOLD_EXPIRED, f, 3)
            return
        if state == PARKED:
            bk.state = REFUNDED
            bk.deadline_ms = 0
            bk.updated_ms = ts
            bk.reason = _REFUND_NAME[F_NO_RESERVATION]
            self.timers[k] = None
            self._refund(bk, s, b, k, bk.payment_id, bk.amount_cents, F_NO_RESERVATION, None)
            self._put_booking(bk, k)
            return
        if bk is None or state == EXPIRED or state == REFUNDED:
            self.counts[C_DUPLICATES] += 1     # a timer that fired twice (or for nothing known)
        else:
            self.counts[C_LATE_EXPIRIES] += 1  # the payment (or a rejection) came first


cdef class _LazyEvent:
    """The record's BookingEvent as ``check`` sees it: decoded (by protobuf)
    when ``check`` first looks at it, so a check that fails records by their
    offset alone (the service's ``fault_rate``) costs no decoding."""
    cdef object _value, _from_string, _event

    def __cinit__(self, value, from_string):
        self._value, self._from_string = value, from_string

    def __getattr__(self, name):
        if self._event is None:
            self._event = self._from_string(self._value)
        return getattr(self._event, name)


def decide_run(st, str topic, int partition, int partitions, list recs, ttl_ms, check, tp,
               dead, dict homes, home, from_string, slow):
    """decide_run(st, topic, partition, partitions, recs, ttl_ms, check, tp, dead, homes, home, from_string, slow) -> None or RecordFailed

    service.decide_run's fast path (same arguments and result; see there).
    ``homes`` caches each seat's partition (``home(seat_bytes, partitions)``
    computes one), ``from_string`` decodes an event for ``check`` (when
    ``check`` first uses it: it gets a stand-in that decodes lazily), and
    ``slow(st, rec, index, prefix, tp)`` is the reference path for one
    record (returns None or its RecordFailed)."""
    if not gc_isenabled():
        return _decide_run(st, topic, partition, partitions, recs, ttl_ms, check, tp, dead, homes,
                           home, from_string, slow)
    # The collector is paused while the run is decided: a run allocates tens
    # of thousands of long-lived objects (the state) and no cyclic garbage,
    # and every collection triggered on the way promotes them towards the
    # full collections that walk the whole state. Measured over a 100k-event
    # log's decisions (collector on, not frozen): 508 young, 46 middle and
    # 4-5 full collections without the pause, 27, 2-3 and 0-1 with it;
    # 13.6 us per event before, 5.9-8.1 after (load 5-6, not the same run).
    gc_disable()
    try:
        return _decide_run(st, topic, partition, partitions, recs, ttl_ms, check, tp, dead, homes,
                           home, from_string, slow)
    finally:
        gc_enable()


cdef object _decide_run(st, str topic, int partition, int partitions, list recs, ttl_ms, check, tp,
                        dead, dict homes, home, from_string, slow):
    cdef _Event e = _Event()
    cdef Py_buffer view
    cdef Record rec
    cdef int ok, i = -1
    cdef str prefix = f"{topic}/{partition}/"
    st.begin(partition)
    cdef _Run run = _Run(st, ttl_ms, prefix.encode())
    # The offsets of this partition's dead-lettered records (``dead`` is keyed
    # by (partition, offset)): a record is looked up only when there are any.
    cdef set dead_offs = {k[1] for k in dead if k[0] == partition} if dead else None
    for r in recs:
        i += 1
        # A log Record's fields are read directly (no attribute lookups), and
        # its value's bytes where the record's own view holds them: no
        # memoryview made per record (``r.value`` slices one).
        rec = <Record>r if type(r) is Record else None
        off = r.offset if rec is None else rec.offset
        if dead_offs and off in dead_offs:
            st.add_dead_letter(topic, partition, off, dead[(partition, off)])
            continue
        ok = -1
        if rec is not None:
            if rec._value_len >= 0:
                PyObject_GetBuffer(rec._mv, &view, PyBUF_SIMPLE)
                try:
                    if <Py_ssize_t>rec._value_pos + rec._value_len <= view.len:
                        ok = e.parse(<const unsigned char*>view.buf + rec._value_pos,
                                     <const unsigned char*>view.buf + rec._value_pos + rec._value_len)
                finally:
                    PyBuffer_Release(&view)
        else:
            value = r.value
            if value is not None and PyObject_CheckBuffer(value):
                PyObject_GetBuffer(value, &view, PyBUF_SIMPLE)
                try:
                    ok = e.parse(<const unsigned char*>view.buf,
                                 <const unsigned char*>view.buf + view.len)
                finally:
                    PyBuffer_Release(&view)
        if ok == 0 and (e.kind == 0 or not e.seat_id or not e.booking_id
                        or (e.kind == K_REQUEST and not e.user_id)
                        or (e.kind == K_PAYMENT and not e.payment_id)):
            ok = -1                             # invalid: the reference raises the error
        if ok == 0:
            h = homes.get(e.seat_id)
            if h is None:
                h = homes[e.seat_id] = home((<str>e.seat_id).encode(), partitions)
            if h != partition:
                ok = -1                         # the wrong partition: same
        if ok == 0:
            run.ts = r.timestamp if rec is None else rec.timestamp
            if run.build and run.out_of_range():
                ok = -1                         # (not from a log) as the reference does
        if ok < 0:
            f = slow(st, r, i, prefix, tp)
            if f is not None:
                if f.applied:
                    run.flush_counts()
                return f
            continue
        if check is not None:
            try:
                check(tp, r, _LazyEvent(r.value, from_string))
            except Exception as exc:
                run.flush_counts()
                f = RecordFailed(i, exc, applied=True)
                f.__cause__ = exc
                return f
        run.offset = off
        run.nout = 0
        try:
            if run.build and run.keep:
                run.key = (<str>e.seat_id).encode()
            run.apply(e)
        except Exception as exc:                # (cannot happen for a validated event)
            st.discard()
            f = RecordFailed(i, exc)
            f.__cause__ = exc
            return f
    run.flush_counts()
    return None


# ------------------------------------------------------------------ rows
#
# The read model's rows of what a run changed (partitionstore.PartitionStore.flush),
# built here rather than in Python: a booking row is 14 values and the
# booking's log as JSON, written for about every second event.

from cpython.long cimport PyLong_CheckExact
from libc.stdlib cimport realloc, free

from json.encoder import encode_basestring_ascii as _json_str

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    object PyUnicode_DecodeASCII(const char* s, Py_ssize_t size, const char* errors)
    bint PyUnicode_CheckExact(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1


cdef struct Buf:
    char* p
    Py_ssize_t n, cap


cdef int _grow(Buf* b, Py_ssize_t more) except -1:
    cdef Py_ssize_t cap = b.cap
    cdef char* q
    if b.n + more <= cap:
        return 0
    while cap < b.n + more:
        cap = cap * 2 if cap else 512
    q = <char*>realloc(b.p, cap)
    if q == NULL:
        raise MemoryError()
    b.p, b.cap = q, cap
    return 0


cdef inline int _put(Buf* b, const char* s, Py_ssize_t n) except -1:
    if b.n + n > b.cap:
        _grow(b, n)
    memcpy(b.p + b.n, s, n)
    b.n += n
    return 0


cdef inline int _putc(Buf* b, char c) except -1:
    if b.n + 1 > b.cap:
        _grow(b, 1)
    b.p[b.n] = c
    b.n += 1
    return 0


cdef int _json_s(Buf* b, object s) except -1:
    """A str as json.dumps(ensure_ascii=True) writes it: printable ASCII
    without quote or backslash copied, anything else by json's own encoder."""
    cdef const unsigned char* d
    cdef Py_ssize_t i, n
    if not PyUnicode_CheckExact(s):
        return -2
    if PyUnicode_IS_ASCII(s):
        d = <const unsigned char*>PyUnicode_DATA(s)
        n = PyUnicode_GET_LENGTH(s)
        for i in range(n):
            if d[i] < 0x20 or d[i] == 0x22 or d[i] == 0x5c or d[i] == 0x7f:
                break
        else:
            _grow(b, n + 2)
            b.p[b.n] = 0x22
            memcpy(b.p + b.n + 1, d, n)
            b.p[b.n + 1 + n] = 0x22
            b.n += n + 2
            return 0
    e = _json_str(s)                  # quoted, escaped, ASCII
    d = <const unsigned char*>PyUnicode_DATA(e)
    _put(b, <const char*>d, PyUnicode_GET_LENGTH(e))
    return 0


cdef int _json_i(Buf* b, object v) except -1:
    """An int as json writes it (int.__repr__); -2 for anything else."""
    cdef char tmp[32]
    cdef int overflow = 0, k
    cdef long long x
    if not PyLong_CheckExact(v):
        return -2
    x = PyLong_AsLongLongAndOverflow(v, &overflow)
    if overflow:
        t = repr(v).encode()
        _put(b, PyBytes_AS_STRING(t), PyBytes_GET_SIZE(t))
        return 0
    k = _itoa(tmp, x)
    _put(b, tmp, k)
    return 0


cdef int _pack_log(Buf* b, list history, dict payments) except -1:
    """readmodel.pack_log's JSON into ``b``; -2 when a value is of a type
    this does not write (the caller then uses pack_log)."""
    cdef Py_ssize_t i
    cdef tuple e
    _put(b, b"[[", 2)
    i = 0
    for x in history:
        if type(x) is not tuple or len(<tuple>x) != 4:
            return -2
        e = <tuple>x
        if i:
            _putc(b, 0x2c)
        _putc(b, 0x5b)
        if (_json_s(b, e[0]) < 0 or _putc(b, 0x2c) < 0 or _json_i(b, e[1]) < 0
                or _putc(b, 0x2c) < 0 or _json_s(b, e[2]) < 0 or _putc(b, 0x2c) < 0
                or _json_s(b, e[3]) < 0):
            return -2
        _putc(b, 0x5d)
        i += 1
    _put(b, b"],[", 3)
    i = 0
    for k, v in payments.items():
        if type(v) is not tuple or len(<tuple>v) != 2:
            return -2
        if i:
            _putc(b, 0x2c)
        _putc(b, 0x5b)
        if (_json_s(b, k) < 0 or _putc(b, 0x2c) < 0 or _json_s(b, (<tuple>v)[0]) < 0
                or _putc(b, 0x2c) < 0 or _json_i(b, (<tuple>v)[1]) < 0):
            return -2
        _putc(b, 0x5d)
        i += 1
    _put(b, b"]]", 2)
    return 0


def pack_log(list history, dict payments, fallback):
    """pack_log(history, payments, fallback) -> str

    ``readmodel.pack_log(history, payments)``, the same text, written here;
    ``fallback(history, payments)`` (readmodel.pack_log) for values of other
    types than it writes (history entries not 4-tuples of str, int, str, str;
    payments not (str, int) tuples)."""
    cdef Buf b
    b.p, b.n, b.cap = NULL, 0, 0
    try:
        if _pack_log(&b, history, payments) < 0:
            return fallback(history, payments)
        return PyUnicode_DecodeASCII(b.p, b.n, NULL)
    finally:
        free(b.p)


cdef tuple _EMPTY_LOG = ([], {})
cdef list _NO_HISTORY = []


def booking_rows(part, keys, p, list new, list old, list users, fallback, bint freeze=True):
    """booking_rows(part, keys, p, new, old, users, fallback, freeze=True) -> None

    The bookings table's rows of bookings ``keys`` of ``part`` (a
    ``partitionstore._Part``) of partition ``p``, as ``PartitionStore._booking_rows``
    makes them: ``(rowid, seat_id, booking_id, user_id, state, reason,
    payment_id, amount_cents, created_ms, updated_ms, deadline_ms, nevents,
    p, log)``. A row whose rowid is new (given here, the partition's next) goes
    to ``new``, the others to ``old``; the ``(user, seat_id, booking_id)`` of
    history steps filed under another user than the booking's go to
    ``users``. ``fallback`` is readmodel.pack_log (see :func:`pack_log`).

    A log written here is kept in ``part.logs`` as its text from then on
    (made tuples again by :func:`thaw_log` when a run touches the booking
    again), unless ``freeze`` is false (a bulk load's last write, whose
    state is dropped after it); a log that is text already is written as it is."""
    cdef dict bks = part.bookings, logs = part.logs, rowids = part.rowids
    cdef Booking b
    cdef Buf buf
    cdef tuple lg
    cdef list h
    buf.p, buf.n, buf.cap = NULL, 0, 0
    nxt = part.next_rowid
    try:
        for k in keys:
            b = bks[k]
            cold = logs.get(k, _EMPTY_LOG)
            if type(cold) is str:              # unchanged since written (or loaded)
                text, h = cold, _NO_HISTORY
            else:
                lg = <tuple>cold
                h = lg[0]
                buf.n = 0
                if _pack_log(&buf, h, lg[1]) < 0:
                    text = fallback(h, lg[1])
                else:
                    text = PyUnicode_DecodeASCII(buf.p, buf.n, NULL)
                if freeze and cold is not _EMPTY_LOG:
                    # Kept as the text from now on: a third of the tuples' memory,
                    # and none of it for the collector (thaw_log when touched again).
                    logs[k] = text
            user = b.user_id
            r = rowids.get(k)
            row = (nxt if r is None else r, b.seat_id, b.booking_id, user, b.state, b.reason,
                   b.payment_id, b.amount_cents, b.created_ms, b.updated_ms, b.deadline_ms,
                   b.nevents, p, text)
            _untracked(row)
            if r is None:
                rowids[k] = nxt
                nxt += 1
                new.append(row)
            else:
                old.append(row)
            for e in h:
                if e[0] != user:
                    others = {x[0] for x in h if x[0] != user}
                    users += [(u, k[0], k[1]) for u in others]
                    break
    finally:
        part.next_rowid = nxt
        free(buf.p)


def seat_rows(part, keys, p, list new, list old):
    """seat_rows(part, keys, p, new, old) -> None

    The seats table's rows ``(rowid, seat_id, state, booking_id, user_id,
    updated_ms, p)`` of seats ``keys`` of ``part``, new rowids to ``new``
    (as :func:`booking_rows`)."""
    cdef dict seats = part.seats, rowids = part.rowids
    cdef Seat s
    nxt = part.next_rowid
    try:
        for k in keys:
            s = seats[k]
            sid = s.seat_id
            r = rowids.get(sid)
            row = (nxt if r is None else r, sid, s.state, s.booking_id, s.user_id, s.updated_ms, p)
            _untracked(row)
            if r is None:
                rowids[sid] = nxt
                nxt += 1
                new.append(row)
            else:
                old.append(row)
    finally:
        part.next_rowid = nxt


def pack_outcomes(list pairs):
    """pack_outcomes(pairs) -> bytes

    ``partitionstore.pack_outcomes``, the same bytes, written here: for each
    ``(key, value)`` pair of bytes, key length and value length (u32 LE
    each), then the key and value."""
    cdef Py_ssize_t total = 0, kn, vn
    cdef unsigned char* q
    cdef tuple t
    cdef uint64_t x
    for item in pairs:
        t = <tuple?>item
        if len(t) != 2 or type(t[0]) is not bytes or type(t[1]) is not bytes:
            raise TypeError(f"an outcome must be a (key, value) pair of bytes, got {item!r:.80}")
        kn, vn = PyBytes_GET_SIZE(t[0]), PyBytes_GET_SIZE(t[1])
        if kn > 0xFFFFFFFF or vn > 0xFFFFFFFF:
            raise ValueError("an outcome's key or value is longer than 4 GiB")
        total += 8 + kn + vn
    out = PyBytes_FromStringAndSize(NULL, total)
    q = <unsigned char*>PyBytes_AS_STRING(out)
    for item in pairs:
        k, v = (<tuple>item)[0], (<tuple>item)[1]
        kn, vn = PyBytes_GET_SIZE(k), PyBytes_GET_SIZE(v)
        for x in range(4):
            q[x] = <unsigned char>((<uint64_t>kn >> (8 * x)) & 0xff)
            q[4 + x] = <unsigned char>((<uint64_t>vn >> (8 * x)) & 0xff)
        memcpy(q + 8, PyBytes_AS_STRING(k), kn)
        memcpy(q + 8 + kn, PyBytes_AS_STRING(v), vn)
        q += 8 + kn + vn
    return out
