"""Helpers around the generated ``BookingEvent`` messages (proto/booking.proto).

Records of the booking topics are keyed by seat id (UTF-8) and hold one
serialized ``BookingEvent``. These helpers build the input events, name the
member of the ``kind`` oneof that is set, and turn events into plain dicts
for JSON output.
"""
from __future__ import annotations

import uuid

from unstoppable.booking.booking_pb2 import (
    BookingConfirmed,
    BookingEvent,
    HoldExpired,
    PaymentParked,
    PaymentReceived,
    PaymentRefunded,
    RefundReason,
    RejectReason,
    ReservationExpired,
    ReservationRejected,
    SeatHeld,
    SeatReservationRequested,
)
from unstoppable.codecs import ProtobufCodec

__all__ = [
    "BookingEvent", "SeatReservationRequested", "PaymentReceived", "ReservationExpired",
    "SeatHeld", "ReservationRejected", "BookingConfirmed", "HoldExpired", "PaymentParked",
    "PaymentRefunded", "RejectReason", "RefundReason",
    "CODEC", "INPUT_KINDS", "OUTCOME_KINDS", "TERMINAL_KINDS",
    "reservation_requested", "payment_received", "reservation_expired",
    "kind_of", "body_of", "seat_of", "booking_of", "is_terminal", "to_dict", "new_id",
]

#: The value codec of every booking topic.
CODEC = ProtobufCodec(BookingEvent)

#: Members of ``BookingEvent.kind`` that the service consumes.
INPUT_KINDS = ("seat_reservation_requested", "payment_received", "reservation_expired")
#: Members the service emits on the outcome topic.
OUTCOME_KINDS = ("seat_held", "reservation_rejected", "booking_confirmed", "hold_expired",
                 "payment_parked", "payment_refunded")
#: Outcomes that close a booking; every booking gets exactly one of them.
#: (``payment_refunded`` closes one only with reason NO_RESERVATION.)
TERMINAL_KINDS = ("booking_confirmed", "reservation_rejected", "hold_expired")


def new_id() -> str:
    """A fresh random id (uuid4, hex)."""
    return uuid.uuid4().hex


def reservation_requested(booking_id: str, user_id: str, seat_id: str, *,
                          event_id: str | None = None, occurred_ms: int = 0) -> BookingEvent:
    """A ``SeatReservationRequested`` wrapped in a BookingEvent."""
    return BookingEvent(event_id=event_id or new_id(), occurred_ms=occurred_ms,
                        seat_reservation_requested=SeatReservationRequested(
                            booking_id=booking_id, user_id=user_id, seat_id=seat_id))


def payment_received(booking_id: str, seat_id: str, payment_id: str, amount_cents: int = 0,
                     user_id: str = "", *, event_id: str | None = None,
                     occurred_ms: int = 0) -> BookingEvent:
    """A ``PaymentReceived`` wrapped in a BookingEvent."""
    return BookingEvent(event_id=event_id or new_id(), occurred_ms=occurred_ms,
                        payment_received=PaymentReceived(
                            booking_id=booking_id, seat_id=seat_id, payment_id=payment_id,
                            amount_cents=amount_cents, user_id=user_id))


def reservation_expired(booking_id: str, seat_id: str, deadline_ms: int, *,
                        event_id: str | None = None, occurred_ms: int = 0) -> BookingEvent:
    """A ``ReservationExpired`` (what the durable timer appends) in a BookingEvent.

    Its default event id is derived from the booking and the deadline, so a
    timer that fires twice produces the same event twice.
    """
    return BookingEvent(event_id=event_id or f"expiry:{seat_id}:{booking_id}:{deadline_ms}",
                        occurred_ms=occurred_ms,
                        reservation_expired=ReservationExpired(
                            booking_id=booking_id, seat_id=seat_id, deadline_ms=deadline_ms))


def kind_of(ev: BookingEvent) -> str | None:
    """The name of the ``kind`` member that is set (None for an empty event)."""
    return ev.WhichOneof("kind")


def body_of(ev: BookingEvent):
    """The message inside the ``kind`` oneof (None for an empty event)."""
    k = ev.WhichOneof("kind")
    return None if k is None else getattr(ev, k)


def seat_of(ev: BookingEvent) -> str:
    """The seat id of any event ("" when none is set)."""
    b = body_of(ev)
    return "" if b is None else b.seat_id


def booking_of(ev: BookingEvent) -> str:
    """The booking id of any event ("" when none is set)."""
    b = body_of(ev)
    return "" if b is None else b.booking_id


def is_terminal(ev: BookingEvent) -> bool:
    """Whether an outcome event closes its booking."""
    k = ev.WhichOneof("kind")
    if k in TERMINAL_KINDS:
        return True
    return k == "payment_refunded" and ev.payment_refunded.reason == RefundReason.NO_RESERVATION


def to_dict(ev: BookingEvent) -> dict:
    """A BookingEvent as a JSON-ready dict, with ``kind`` naming the oneof member."""
    d = CODEC.to_dict(ev)
    d["kind"] = kind_of(ev)
    return d
