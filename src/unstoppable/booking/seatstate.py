"""A compacted topic of each seat's latest state (issue 19, point 5).

``booking-seats`` is keyed by seat id; each value is the seat's row of the
read model (state, holder booking, user, last change) as compact JSON. The
worker publishes it alongside its outcomes, the state it holds in memory
(:class:`~unstoppable.booking.partitionstore.PartitionStore`) for every seat its
outcomes name, so the last record of each key is the seat's state. With
``cleanup_policy="compact"`` the log keeps that last record per seat and
drops the rest, so a reader that only needs seat availability (a seat map, a
cache, a new service) loads one record per seat with :func:`load_seat_map`
instead of replaying every booking event from offset 0.

What it does not replace: the worker's own read model also holds bookings,
their histories, payments and timers, which the seats topic does not carry,
so :func:`unstoppable.booking.rebuild.rebuild` still replays the input topic
(the event-sourcing check needs exactly that). A seat map built from this
topic equals the ``seats`` table of a read model that has caught up with the
same outcomes (tests/booking/test_seatstate.py checks it).

The worker keeps it when its ``ServiceConfig.seats_topic`` names the topic
(``create_topics`` then creates it compacted): after publishing a run's
outcomes it sends, with :func:`publish_seats`, the seats those outcomes name.
"""
from __future__ import annotations

import json

from unstoppable.booking.logio import LogReader
from unstoppable.booking.machine import Seat

__all__ = ["SEATS_TOPIC", "create_seats_topic", "seat_value", "parse_seat", "publish_seats",
           "load_seat_map"]

SEATS_TOPIC = "booking-seats"


def create_seats_topic(log, partitions: int = 1, topic: str = SEATS_TOPIC, **config):
    """Create the compacted seats topic on an embedded ``us.Log`` (or return
    it when it exists with these settings). ``config``: more topic settings,
    e.g. ``segment_bytes``."""
    return log.create_topic(topic, partitions, cleanup_policy="compact", **config)


def seat_value(seat: Seat) -> bytes:
    """A seat's row as the record value: ``[state, booking_id, user_id, updated_ms]``."""
    return json.dumps([seat.state, seat.booking_id, seat.user_id, seat.updated_ms],
                      separators=(",", ":")).encode()


def parse_seat(key, value) -> Seat:
    """The Seat of one record of the seats topic (ValueError for a malformed one)."""
    try:
        state, booking_id, user_id, updated_ms = json.loads(bytes(value))
    except (TypeError, ValueError) as e:
        raise ValueError(f"seat record {bytes(key)!r} is not [state, booking_id, user_id, "
                         f"updated_ms]: {e}") from None
    return Seat(bytes(key).decode(), state, booking_id, user_id, updated_ms)


def _find_seat(store, seat_id: str):
    for part in store.parts.values():
        s = part.seats.get(seat_id)
        if s is not None:
            return s
    return None


async def publish_seats(producer, store, seat_ids) -> list:
    """Send the current state of each of ``seat_ids`` (str or bytes) that
    ``store`` (a PartitionStore) holds, keyed by seat id; returns the
    delivery futures. Sent after the run that changed them, so a seat's last
    record is its latest state."""
    futs = []
    for sid in dict.fromkeys(seat_ids):
        sid = sid.decode() if isinstance(sid, (bytes, bytearray)) else sid
        seat = _find_seat(store, sid)
        if seat is not None:
            futs.append(await producer.send(seat_value(seat), key=sid.encode()))
    return futs


async def load_seat_map(log, topic: str = SEATS_TOPIC, *, chunk: int = 20000) -> tuple[dict, int]:
    """await load_seat_map(log, topic=SEATS_TOPIC) -> (seats, records_read)

    ``{seat_id: Seat}`` from the seats topic read from its start to its end
    now (any backend: ``us.Log`` or JetStream), the last record of each key
    winning; a tombstone (null value) removes the seat. ``records_read``
    says how many records that took (one per seat once the topic is
    compacted)."""
    seats: dict = {}
    n = 0
    async with LogReader(log) as reader:
        for p in range(await reader.partitions(topic)):
            async for recs in reader.chunks(topic, p, chunk=chunk):
                n += len(recs)
                for r in recs:
                    if r.value is None:
                        seats.pop(bytes(r.key).decode(), None)
                    else:
                        s = parse_seat(r.key, r.value)
                        seats[s.seat_id] = s
    return seats, n
