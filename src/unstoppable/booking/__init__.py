"""The ticket-booking reference service: users reserve seats, pay, and
reservations not paid in time expire; no seat is ever sold twice, whatever
the delivery order, duplicates, crashes or replays.

* ``events``: the BookingEvent messages (generated from proto/booking.proto)
  and helpers.
* ``machine``: the seat state machine and its documented outcomes.
* ``readmodel``: the SQLite read model (seats, bookings, per-user history).
* ``service``: the consumer-group worker (exactly-once effects, durable
  timers, retries and dead letters) and ``rebuild``.
* ``deadletters``: listing and re-driving dead letters.
* ``logio``: opening, creating topics on and reading either backend (the
  embedded log or JetStream), so all of the above run on both.
* ``demo``: the concert-hall simulation behind ``unstoppable demo``.

Needs the ``protobuf`` package (a dependency of unstoppable).
"""
