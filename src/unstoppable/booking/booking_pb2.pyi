from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RejectReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REJECT_REASON_UNSPECIFIED: _ClassVar[RejectReason]
    SEAT_HELD: _ClassVar[RejectReason]
    SEAT_BOOKED: _ClassVar[RejectReason]

class RefundReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REFUND_REASON_UNSPECIFIED: _ClassVar[RefundReason]
    HOLD_EXPIRED: _ClassVar[RefundReason]
    RESERVATION_REJECTED: _ClassVar[RefundReason]
    DUPLICATE_PAYMENT: _ClassVar[RefundReason]
    NO_RESERVATION: _ClassVar[RefundReason]
REJECT_REASON_UNSPECIFIED: RejectReason
SEAT_HELD: RejectReason
SEAT_BOOKED: RejectReason
REFUND_REASON_UNSPECIFIED: RefundReason
HOLD_EXPIRED: RefundReason
RESERVATION_REJECTED: RefundReason
DUPLICATE_PAYMENT: RefundReason
NO_RESERVATION: RefundReason

class BookingEvent(_message.Message):
    __slots__ = ("event_id", "occurred_ms", "seat_reservation_requested", "payment_received", "reservation_expired", "seat_held", "reservation_rejected", "booking_confirmed", "hold_expired", "payment_parked", "payment_refunded")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_MS_FIELD_NUMBER: _ClassVar[int]
    SEAT_RESERVATION_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    SEAT_HELD_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_REJECTED_FIELD_NUMBER: _ClassVar[int]
    BOOKING_CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    HOLD_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_PARKED_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_REFUNDED_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    occurred_ms: int
    seat_reservation_requested: SeatReservationRequested
    payment_received: PaymentReceived
    reservation_expired: ReservationExpired
    seat_held: SeatHeld
    reservation_rejected: ReservationRejected
    booking_confirmed: BookingConfirmed
    hold_expired: HoldExpired
    payment_parked: PaymentParked
    payment_refunded: PaymentRefunded
    def __init__(self, event_id: _Optional[str] = ..., occurred_ms: _Optional[int] = ..., seat_reservation_requested: _Optional[_Union[SeatReservationRequested, _Mapping]] = ..., payment_received: _Optional[_Union[PaymentReceived, _Mapping]] = ..., reservation_expired: _Optional[_Union[ReservationExpired, _Mapping]] = ..., seat_held: _Optional[_Union[SeatHeld, _Mapping]] = ..., reservation_rejected: _Optional[_Union[ReservationRejected, _Mapping]] = ..., booking_confirmed: _Optional[_Union[BookingConfirmed, _Mapping]] = ..., hold_expired: _Optional[_Union[HoldExpired, _Mapping]] = ..., payment_parked: _Optional[_Union[PaymentParked, _Mapping]] = ..., payment_refunded: _Optional[_Union[PaymentRefunded, _Mapping]] = ...) -> None: ...

class SeatReservationRequested(_message.Message):
    __slots__ = ("booking_id", "user_id", "seat_id")
    BOOKING_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SEAT_ID_FIELD_NUMBER: _ClassVar[int]
    booking_id: str
    user_id: str
    seat_id: str
    def __init__(self, booking_id: _Optional[str] = ..., user_id: _Optional[str] = ..., seat_id: _Optional[str] = ...) -> None: ...

class PaymentReceived(_message.Message):
    __slots__ = ("booking_id", "seat_id", "payment_id", "amount_cents", "user_id")
    BOOKING_ID_FIELD_NUMBER: _ClassVar[int]
    SEAT_ID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    booking_id: str
    seat_id: str
    payment_id: str
    amount_cents: int
    user_id: str
    def __init__(self, booking_id: _Optional[str] = ..., seat_id: _Optional[str] = ..., payment_id: _Optional[str] = ..., amount_cents: _Optional[int] = ..., user_id: _Optional[str] = ...) -> None: ...

class ReservationExpired(_message.Message):
    __slots__ = ("booking_id", "seat_id", "deadline_ms")
    BOOKING_ID_FIELD_NUMBER: _ClassVar[int]
    SEAT_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    booking_id: str
    seat_id: str
    deadline_ms: int
    def __init__(self, booking_id: _Optional[str] = ..., seat_id: _Optional[str] = ..., deadline_ms: _Optional[int] = ...) -> None: ...

class SeatHeld(_message.Message):
    __slots__ = ("booking_id", "user_id", "seat_id", "expires_ms")
    BOOKING_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SEAT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_MS_FIELD_NUMBER: _ClassVar[int]
    booking_id: str
    user_id: str
    seat_id: str
    expires_ms: int
    def __init__(self, booking_id: _Optional[str] = ..., user_id: _Optional[str] = ..., seat_id: _Optional[str] = ..., expires_ms: _Optional[int] = ...) -> None: ...

class ReservationRejected(_message.Message):
    __slots__ = ("booking_id", "user_id", "seat_id", "reason", "holder_booking_id")
    BOOKING_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SEAT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HOLDER_BOOKING_ID_FIELD_NUMBER: _ClassVar[int]
    booking_id: str
    user_id: str
    seat_id: str
    reason: RejectReason
    holder_booking_id: str
    def __init__(self, booking_id: _Optional[str] = ..., user_id: _Optional[str] = ..., seat_id: _Optional[str] = ..., reason: _Optional[_Union[RejectReason, str]] = ..., holder_booking_id: _Optional[str] = ...) -> None: ...

class BookingConfirmed(_message.Message):
    __slots__ = ("booking_id", "user_id", "seat_id", "payment_id", "amount_cents")
    BOOKING_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SEAT_ID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    booking_id: str
    user_id: str
    seat_id: str
    payment_id: str
    amount_cents: int
    def __init__(self, booking_id: _Optional[str] = ..., user_id: _Optional[str] = ..., seat_id: _Optional[str] = ..., payment_id: _Optional[str] = ..., amount_cents: _Optional[int] = ...) -> None: ...

class HoldExpired(_message.Message):
    __slots__ = ("booking_id", "user_id", "seat_id")
    BOOKING_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SEAT_ID_FIELD_NUMBER: _ClassVar[int]
    booking_id: str
    user_id: str
    seat_id: str
    def __init__(self, booking_id: _Optional[str] = ..., user_id: _Optional[str] = ..., seat_id: _Optional[str] = ...) -> None: ...

class PaymentParked(_message.Message):
    __slots__ = ("booking_id", "seat_id", "payment_id", "deadline_ms")
    BOOKING_ID_FIELD_NUMBER: _ClassVar[int]
    SEAT_ID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    booking_id: str
    seat_id: str
    payment_id: str
    deadline_ms: int
    def __init__(self, booking_id: _Optional[str] = ..., seat_id: _Optional[str] = ..., payment_id: _Optional[str] = ..., deadline_ms: _Optional[int] = ...) -> None: ...

class PaymentRefunded(_message.Message):
    __slots__ = ("booking_id", "seat_id", "payment_id", "amount_cents", "reason", "user_id")
    BOOKING_ID_FIELD_NUMBER: _ClassVar[int]
    SEAT_ID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    booking_id: str
    seat_id: str
    payment_id: str
    amount_cents: int
    reason: RefundReason
    user_id: str
    def __init__(self, booking_id: _Optional[str] = ..., seat_id: _Optional[str] = ..., payment_id: _Optional[str] = ..., amount_cents: _Optional[int] = ..., reason: _Optional[_Union[RefundReason, str]] = ..., user_id: _Optional[str] = ...) -> None: ...
