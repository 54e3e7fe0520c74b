"""The compacted seats topic (booking/seatstate.py): the real state machine
decides runs of booking events into a PartitionStore, as the worker does;
after each run the seats its outcomes name are published; once compacted,
load_seat_map reads one record per seat and equals the read model's seats
table."""
import asyncio
import random

import unstoppable as us
from unstoppable.booking import events as ev
from unstoppable.booking.machine import apply
from unstoppable.booking.partitionstore import PartitionStore, unpack_outcomes
from unstoppable.booking.readmodel import connect
from unstoppable.booking.seatstate import (
    create_seats_topic,
    load_seat_map,
    parse_seat,
    publish_seats,
    seat_value,
)


def _events(rng, n_seats, n):
    """Reservations and payments over ``n_seats`` seats (some for seats
    taken, some paying for bookings that exist)."""
    booked = []
    for i in range(n):
        seat = f"seat-{rng.randrange(n_seats)}"
        if booked and rng.random() < 0.4:
            b, s = booked.pop(rng.randrange(len(booked)))
            yield ev.payment_received(b, s, f"pay-{i}", 1000, occurred_ms=i)
        else:
            b = f"b-{i}"
            booked.append((b, seat))
            yield ev.reservation_requested(b, f"user-{i % 17}", seat, occurred_ms=i)


async def _run(tmp_path, n_seats=60, n_events=3000, run=25):
    rng = random.Random(7)
    db = connect(str(tmp_path / "rm.sqlite"))
    st = PartitionStore(db)
    st.load_partition(0)
    published = 0
    with us.Log(tmp_path / "log") as log:
        create_seats_topic(log, 1, segment_bytes=16384, max_batch_bytes=4096)
        log.cleaner.stop()      # compaction happens where the test says, not every 5 s
        async with us.Producer(log, "booking-seats") as prod:
            evs = list(_events(rng, n_seats, n_events))
            for start in range(0, len(evs), run):
                db.execute("BEGIN")
                st.begin(0)
                for off, e in enumerate(evs[start:start + run], start):
                    apply(st, e, 1_000 + off, 60_000, f"in/0/{off}")
                st.flush()
                db.execute("COMMIT")
                (blob,) = db.execute("SELECT value FROM outbox ORDER BY seq DESC LIMIT 1").fetchone()
                keys = [k for k, _v in unpack_outcomes(blob)]
                futs = await publish_seats(prod, st, keys)
                published += len(futs)
            await prod.flush()
        table = {r[0]: r[1:] for r in db.execute(
            "SELECT seat_id, state, booking_id, user_id, updated_ms FROM seats")}
        before, read_before = await load_seat_map(log)
        log.topic("booking-seats").partition(0).flush()
        log.compact("booking-seats")
        after, read_after = await load_seat_map(log)
    db.close()
    return table, before, after, published, read_before, read_after


def test_seat_map_from_the_compacted_topic_equals_the_read_model(tmp_path):
    table, before, after, published, read_before, read_after = asyncio.run(_run(tmp_path))
    as_rows = {s.seat_id: (s.state, s.booking_id, s.user_id, s.updated_ms) for s in after.values()}
    assert as_rows == table and len(table) == 60
    assert before == after
    assert read_before == published > 10 * len(table)
    # Compaction leaves the active segment and at most a segment's worth more.
    assert read_after < read_before / 4, (read_after, read_before)


def test_seat_value_round_trip_and_bad_record():
    import pytest

    from unstoppable.booking.machine import Seat
    s = Seat("seat-1", "held", "b-1", "u-1", 42)
    assert parse_seat(b"seat-1", seat_value(s)) == s
    with pytest.raises(ValueError, match="seat record b'seat-1' is not"):
        parse_seat(b"seat-1", b"{}")


def test_the_worker_keeps_the_seats_topic(tmp_path):
    """A real BookingService with ``seats_topic``: after it caught up, the
    compacted topic's seat map is the read model's seats table, one record
    per seat; without ``seats_topic`` no such topic is made."""
    from booking_util import caught_up, run_service

    from unstoppable.booking.service import ServiceConfig, create_topics

    cfg = ServiceConfig(log_path=str(tmp_path / "log"), db_path=str(tmp_path / "live.db"),
                        ttl_ms=600_000, seats_topic="booking-seats")
    log = us.Log(cfg.log_path)
    asyncio.run(create_topics(log, cfg, partitions=2))
    assert log.topic("booking-seats").config.cleanup_policy == "compact"
    log.cleaner.stop()
    t = log.topic(cfg.topic)
    evs = list(_events(random.Random(3), 40, 1500))
    for e in evs:
        seat = ev.seat_of(e).encode()
        t.partition(us.DefaultPartitioner()(seat, t.partitions)).append([(seat, ev.CODEC.encode(e))])
    run_service(cfg, log, caught_up(log, cfg, timers=False))
    db = connect(cfg.db_path)
    table = {r[0]: r[1:] for r in db.execute(
        "SELECT seat_id, state, booking_id, user_id, updated_ms FROM seats")}
    db.close()
    for p in range(2):
        log.topic("booking-seats").partition(p).flush()
    log.compact("booking-seats")
    seats, _read = asyncio.run(load_seat_map(log))
    assert {s.seat_id: (s.state, s.booking_id, s.user_id, s.updated_ms)
            for s in seats.values()} == table
    assert len(table) == 40
    log.close()

    plain = ServiceConfig(log_path=str(tmp_path / "log2"), db_path=str(tmp_path / "l2.db"))
    with us.Log(plain.log_path) as log2:
        asyncio.run(create_topics(log2, plain, partitions=1))
        assert "booking-seats" not in log2.topics()
