"""The seat state machine: what the booking service decides for each event.

Seats::

    available --request--> held --payment--> booked
                           held --expiry---> available      (the hold ran out unpaid)

Bookings (one per ``booking_id`` on a seat)::

    (none) --request, seat free--> HELD --payment--> CONFIRMED*
    (none) --request, seat taken-> REJECTED*
    HELD   --expiry--------------> EXPIRED*
    (none) --payment-------------> PARKED --request, seat free--> CONFIRMED*
                                   PARKED --request, seat taken-> REJECTED* (+ refund)
                                   PARKED --expiry--------------> REFUNDED* (refund: no reservation)

    * terminal: the booking's one terminal outcome is emitted on entering it.

Every other combination has a defined outcome and never raises:

=============================================  ==============================================
event                                          outcome
=============================================  ==============================================
request, booking already known (not PARKED)    duplicate: absorbed, nothing changes
second request for a held/booked seat          REJECTED (reason SEAT_HELD / SEAT_BOOKED)
payment whose payment_id was seen before       duplicate: absorbed
payment before its reservation                 PARKED until the request or the deadline
payment after the hold expired                 refund HOLD_EXPIRED (booking stays EXPIRED)
payment for a rejected booking                 refund RESERVATION_REJECTED
another payment for a settled/parked booking   refund DUPLICATE_PAYMENT
expiry of a booking no longer HELD/PARKED      ignored (the payment won; or a duplicate)
=============================================  ==============================================

Order is the log's: events of one seat share a key, hence a partition, hence
one order, and the machine's decisions depend only on that order and on the
record timestamps. Replaying a partition therefore reproduces every decision
(the rebuild check), and applying an event twice changes nothing the second
time (idempotence), because each event either finds the state it moved on
from or is recognised as a duplicate.

:func:`apply` works on any :class:`Store`; :class:`MemoryStore` is the plain
fold the tests compare the SQLite read model (``readmodel.py``) against.
"""
from __future__ import annotations

from copy import copy as replace

from unstoppable.booking import events as ev
# Seat(seat_id, state, booking_id, user_id, updated_ms) and Booking(seat_id,
# booking_id, user_id, state, reason, payment_id, amount_cents, created_ms,
# updated_ms, deadline_ms, nevents): compiled classes with these fields (the
# decisions' fast path reads and writes them as C struct members); see there.
from unstoppable.booking._decide import Booking, Seat
from unstoppable.booking.booking_pb2 import BookingEvent, RefundReason, RejectReason

__all__ = [
    "AVAILABLE", "HELD_SEAT", "BOOKED",
    "HELD", "PARKED", "CONFIRMED", "REJECTED", "EXPIRED", "REFUNDED", "TERMINAL",
    "Seat", "Booking", "Store", "MemoryStore", "InvalidEventError", "apply", "validate", "COUNTERS",
]

# Seat states.
AVAILABLE, HELD_SEAT, BOOKED = "available", "held", "booked"
# Booking states.
HELD, PARKED = "held", "parked"
CONFIRMED, REJECTED, EXPIRED, REFUNDED = "confirmed", "rejected", "expired", "refunded"
TERMINAL = frozenset((CONFIRMED, REJECTED, EXPIRED, REFUNDED))

#: The counters :func:`apply` keeps (Store.count names).
COUNTERS = ("events", "requests", "payments", "expiries", "held", "confirmed", "rejected",
            "expired", "parked", "refunds", "duplicates", "late_expiries", "dead_letters")


class InvalidEventError(ValueError):
    """An event that decodes but cannot be applied (no kind, no seat or booking
    id, or an outcome kind on the input topic). The service dead-letters it."""


class Store:
    """What :func:`apply` needs from a state store. Reads return copies (or
    objects the store lets the machine change in place: it writes back
    everything it changed). A store whose ``wants_outcomes`` is false (a
    rebuild, which publishes nothing) gets no ``emit`` calls, and ``apply``
    then returns no outcomes; the decisions are the same."""

    wants_outcomes = True

    def get_seat(self, seat_id: str) -> Seat | None: ...
    def put_seat(self, seat: Seat) -> None: ...
    def get_booking(self, seat_id: str, booking_id: str) -> Booking | None: ...
    def put_booking(self, b: Booking) -> None: ...
    def has_payment(self, seat_id: str, booking_id: str, payment_id: str) -> bool: ...
    def add_payment(self, seat_id: str, booking_id: str, payment_id: str, outcome: str,
                    amount_cents: int) -> None: ...
    def set_timer(self, seat_id: str, booking_id: str, deadline_ms: int) -> None: ...
    def clear_timer(self, seat_id: str, booking_id: str) -> None: ...
    def add_history(self, b: Booking, ts_ms: int, kind: str, detail: str) -> None: ...
    def emit(self, event: BookingEvent) -> None: ...
    def count(self, name: str, n: int = 1) -> None: ...


class MemoryStore(Store):
    """A Store in dicts: the reference fold over the log."""

    def __init__(self):
        self.seats: dict[str, Seat] = {}
        self.bookings: dict[tuple, Booking] = {}
        self.payments: dict[tuple, tuple] = {}
        self.timers: dict[tuple, int] = {}
        self.history: dict[tuple, tuple] = {}
        self.stats: dict[str, int] = {}
        self.outcomes: list[BookingEvent] = []

    def get_seat(self, seat_id):
        s = self.seats.get(seat_id)
        return None if s is None else replace(s)

    def put_seat(self, seat):
        self.seats[seat.seat_id] = replace(seat)

    def get_booking(self, seat_id, booking_id):
        b = self.bookings.get((seat_id, booking_id))
        return None if b is None else replace(b)

    def put_booking(self, b):
        self.bookings[(b.seat_id, b.booking_id)] = replace(b)

    def has_payment(self, seat_id, booking_id, payment_id):
        return (seat_id, booking_id, payment_id) in self.payments

    def add_payment(self, seat_id, booking_id, payment_id, outcome, amount_cents):
        self.payments[(seat_id, booking_id, payment_id)] = (outcome, amount_cents)

    def set_timer(self, seat_id, booking_id, deadline_ms):
        self.timers[(seat_id, booking_id)] = deadline_ms

    def clear_timer(self, seat_id, booking_id):
        self.timers.pop((seat_id, booking_id), None)

    def add_history(self, b, ts_ms, kind, detail):
        self.history[(b.seat_id, b.booking_id, b.nevents)] = (b.user_id, ts_ms, kind, detail)
        b.nevents += 1

    def emit(self, event):
        self.outcomes.append(event)

    def count(self, name, n=1):
        self.stats[name] = self.stats.get(name, 0) + n

    def snapshot(self) -> dict:
        """The state in the format of ``ReadModel.snapshot()`` (sorted row tuples)."""
        return {
            "seats": sorted((s.seat_id, s.state, s.booking_id, s.user_id, s.updated_ms)
                            for s in self.seats.values()),
            "bookings": sorted((b.seat_id, b.booking_id, b.user_id, b.state, b.reason,
                                b.payment_id, b.amount_cents, b.created_ms, b.updated_ms,
                                b.deadline_ms, b.nevents) for b in self.bookings.values()),
            "payments": sorted(k + v for k, v in self.payments.items()),
            "history": sorted(k + v for k, v in self.history.items()),
            "timers": sorted(k + (v,) for k, v in self.timers.items()),
            "stats": sorted((k, v) for k, v in self.stats.items() if v),
            "dead_letters": [],
        }


# Enum values and names looked up once (the protobuf enum wrapper's attribute
# access is a Python __getattr__, a few microseconds each).
_SEAT_HELD_R, _SEAT_BOOKED_R = RejectReason.Value("SEAT_HELD"), RejectReason.Value("SEAT_BOOKED")
_REJECT_NAME = {v: RejectReason.Name(v) for v in RejectReason.values()}
_REFUND_NAME = {v: RefundReason.Name(v) for v in RefundReason.values()}
_HOLD_EXPIRED, _RES_REJECTED, _DUP_PAYMENT, _NO_RESERVATION = (
    RefundReason.Value(n) for n in ("HOLD_EXPIRED", "RESERVATION_REJECTED", "DUPLICATE_PAYMENT",
                                    "NO_RESERVATION"))
_REFUND_FOR_STATE = {EXPIRED: _HOLD_EXPIRED, REJECTED: _RES_REJECTED}


_INPUT_KINDS = frozenset(ev.INPUT_KINDS)
_NEEDS = {"seat_reservation_requested": "user_id", "payment_received": "payment_id"}


def validate(event: BookingEvent) -> str:
    """validate(event) -> kind

    The checks :func:`apply` makes, without applying anything: raises
    InvalidEventError exactly when ``apply`` would. A batch caller validates
    a run first, so that ``apply`` never fails halfway through changing a
    store (the checks of ``apply`` itself stay: it is the reference)."""
    kind = event.WhichOneof("kind")
    if kind not in _INPUT_KINDS:
        raise InvalidEventError(f"event kind {kind!r} is not an input of the booking service")
    body = getattr(event, kind)
    if not body.seat_id:
        raise InvalidEventError(f"{kind} without seat_id")
    if not body.booking_id:
        raise InvalidEventError(f"{kind} without booking_id")
    need = _NEEDS.get(kind)
    if need is not None and not getattr(body, need):
        raise InvalidEventError(f"{kind} without {need}")
    return kind


def apply(store: Store, event: BookingEvent, ts_ms: int, ttl_ms: int, origin: str) -> list:  # noqa: C901  (one branch per event kind: the state table, read top to bottom)
    """apply(store, event, ts_ms, ttl_ms, origin) -> [outcome BookingEvent]

    Decide one input event. ``ts_ms`` is the record's log timestamp (the
    clock of every decision), ``ttl_ms`` how long a hold or a parked payment
    waits, ``origin`` a string unique to the record (``topic/partition/offset``),
    from which the outcome event ids are derived so a replay emits the same
    ids. Returns the outcomes, also passed to ``store.emit``.

    Raises InvalidEventError (only) for events that cannot be applied at all.
    """
    kind = event.WhichOneof("kind")
    if kind not in _INPUT_KINDS:
        raise InvalidEventError(f"event kind {kind!r} is not an input of the booking service")
    body = getattr(event, kind)
    # (checks spelled out: a helper's message argument would be formatted every time)
    if not body.seat_id:
        raise InvalidEventError(f"{kind} without seat_id")
    if not body.booking_id:
        raise InvalidEventError(f"{kind} without booking_id")
    out: list = []

    quiet = not store.wants_outcomes

    def emit(kind, cls, **kw):
        if quiet:
            return
        e = BookingEvent(event_id=f"{origin}#{len(out)}", occurred_ms=ts_ms, **{kind: cls(**kw)})
        out.append(e)
        store.emit(e)

    store.count("events")
    s_id, b_id = body.seat_id, body.booking_id
    bk = store.get_booking(s_id, b_id)

    if kind == "seat_reservation_requested":
        store.count("requests")
        if not body.user_id:
            raise InvalidEventError("seat_reservation_requested without user_id")
        if bk is not None and bk.state != PARKED:
            store.count("duplicates")
            return out
        seat = store.get_seat(s_id) or Seat(s_id)
        if bk is None:
            bk = Booking(s_id, b_id, user_id=body.user_id, created_ms=ts_ms)
        bk.user_id = body.user_id
        bk.updated_ms = ts_ms
        if seat.state == AVAILABLE:
            if bk.state == PARKED:
                _book(store, seat, bk, ts_ms)
                store.add_payment(s_id, b_id, bk.payment_id, "captured", bk.amount_cents)
                store.add_history(bk, ts_ms, "booking_confirmed", bk.payment_id)
                store.put_booking(bk)
                emit("booking_confirmed", ev.BookingConfirmed,
                    booking_id=b_id, user_id=bk.user_id, seat_id=s_id,
                    payment_id=bk.payment_id, amount_cents=bk.amount_cents)
                return out
            bk.state = HELD
            bk.deadline_ms = ts_ms + ttl_ms
            seat.state, seat.booking_id, seat.user_id, seat.updated_ms = HELD_SEAT, b_id, bk.user_id, ts_ms
            store.put_seat(seat)
            store.set_timer(s_id, b_id, bk.deadline_ms)
            store.add_history(bk, ts_ms, "seat_held", str(bk.deadline_ms))
            store.put_booking(bk)
            store.count("held")
            emit("seat_held", ev.SeatHeld, booking_id=b_id, user_id=bk.user_id, seat_id=s_id,
                                       expires_ms=bk.deadline_ms)
            return out
        reason = _SEAT_HELD_R if seat.state == HELD_SEAT else _SEAT_BOOKED_R
        was_parked = bk.state == PARKED
        bk.state = REJECTED
        bk.reason = _REJECT_NAME[reason]
        bk.deadline_ms = 0
        store.count("rejected")
        store.add_history(bk, ts_ms, "reservation_rejected", bk.reason)
        emit("reservation_rejected", ev.ReservationRejected,
            booking_id=b_id, user_id=bk.user_id, seat_id=s_id, reason=reason,
            holder_booking_id=seat.booking_id)
        if was_parked:
            store.clear_timer(s_id, b_id)
            _refund(store, bk, bk.payment_id, bk.amount_cents, _RES_REJECTED,
                    ts_ms, emit)
        store.put_booking(bk)
        return out

    if kind == "payment_received":
        store.count("payments")
        if not body.payment_id:
            raise InvalidEventError("payment_received without payment_id")
        if store.has_payment(s_id, b_id, body.payment_id):
            store.count("duplicates")
            return out
        if bk is None:
            bk = Booking(s_id, b_id, user_id=body.user_id, state=PARKED, payment_id=body.payment_id,
                         amount_cents=body.amount_cents, created_ms=ts_ms, updated_ms=ts_ms,
                         deadline_ms=ts_ms + ttl_ms)
            store.add_payment(s_id, b_id, body.payment_id, "parked", body.amount_cents)
            store.set_timer(s_id, b_id, bk.deadline_ms)
            store.add_history(bk, ts_ms, "payment_parked", body.payment_id)
            store.put_booking(bk)
            store.count("parked")
            emit("payment_parked", ev.PaymentParked, booking_id=b_id, seat_id=s_id,
                                                 payment_id=body.payment_id,
                                                 deadline_ms=bk.deadline_ms)
            return out
        bk.updated_ms = ts_ms
        if bk.state == HELD:
            seat = store.get_seat(s_id) or Seat(s_id)
            bk.payment_id, bk.amount_cents = body.payment_id, body.amount_cents
            _book(store, seat, bk, ts_ms)
            store.add_payment(s_id, b_id, body.payment_id, "captured", body.amount_cents)
            store.add_history(bk, ts_ms, "booking_confirmed", body.payment_id)
            store.put_booking(bk)
            emit("booking_confirmed", ev.BookingConfirmed,
                booking_id=b_id, user_id=bk.user_id, seat_id=s_id,
                payment_id=body.payment_id, amount_cents=body.amount_cents)
            return out
        reason = _REFUND_FOR_STATE.get(bk.state, _DUP_PAYMENT)
        _refund(store, bk, body.payment_id, body.amount_cents, reason, ts_ms, emit,
                user_id=bk.user_id or body.user_id)
        store.put_booking(bk)
        return out

    # reservation_expired: the durable timer fired.
    store.count("expiries")
    if bk is not None and bk.state == HELD:
        seat = store.get_seat(s_id) or Seat(s_id)
        if seat.state == HELD_SEAT and seat.booking_id == b_id:
            seat.state, seat.booking_id, seat.user_id, seat.updated_ms = AVAILABLE, "", "", ts_ms
            store.put_seat(seat)
        bk.state, bk.deadline_ms, bk.updated_ms = EXPIRED, 0, ts_ms
        store.clear_timer(s_id, b_id)
        store.add_history(bk, ts_ms, "hold_expired", "")
        store.put_booking(bk)
        store.count("expired")
        emit("hold_expired", ev.HoldExpired, booking_id=b_id, user_id=bk.user_id, seat_id=s_id)
        return out
    if bk is not None and bk.state == PARKED:
        bk.state, bk.deadline_ms, bk.updated_ms = REFUNDED, 0, ts_ms
        bk.reason = _REFUND_NAME[_NO_RESERVATION]
        store.clear_timer(s_id, b_id)
        _refund(store, bk, bk.payment_id, bk.amount_cents, _NO_RESERVATION, ts_ms, emit)
        store.put_booking(bk)
        return out
    if bk is None or bk.state in (EXPIRED, REFUNDED):
        store.count("duplicates")      # a timer that fired twice (or for nothing known)
    else:
        store.count("late_expiries")   # the payment (or a rejection) came first
    return out


def _book(store: Store, seat: Seat, bk: Booking, ts_ms: int) -> None:
    seat.state, seat.booking_id, seat.user_id, seat.updated_ms = BOOKED, bk.booking_id, bk.user_id, ts_ms
    store.put_seat(seat)
    bk.state, bk.deadline_ms, bk.updated_ms = CONFIRMED, 0, ts_ms
    store.clear_timer(bk.seat_id, bk.booking_id)
    store.count("confirmed")


def _refund(store, bk, payment_id, amount, reason, ts_ms, emit, user_id=None):
    name = _REFUND_NAME[reason]
    store.add_payment(bk.seat_id, bk.booking_id, payment_id, "refunded:" + name, amount)
    store.add_history(bk, ts_ms, "payment_refunded", f"{payment_id} {name}")
    store.count("refunds")
    emit("payment_refunded", ev.PaymentRefunded,
        booking_id=bk.booking_id, seat_id=bk.seat_id, payment_id=payment_id,
        amount_cents=amount, reason=reason, user_id=user_id or bk.user_id)
