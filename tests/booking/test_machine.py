"""Property tests of the seat state machine (unstoppable.booking.machine) over
random schedules: any order of requests and payments (payments before their
reservation included), duplicates of any event, timers that fire at random
moments and sometimes twice.

Invariants: no seat is ever double-booked; seats and bookings agree; a
duplicate changes nothing; once every timer has fired, every booking has
exactly one terminal outcome, matching its state; the same log always folds
to the same state."""
from hypothesis import given, settings, strategies as st

from unstoppable.booking import events as ev
from unstoppable.booking.machine import (
    AVAILABLE, BOOKED, CONFIRMED, EXPIRED, HELD, HELD_SEAT, PARKED, REFUNDED, REJECTED, TERMINAL,
    MemoryStore, apply,
)

TTL = 1000
SEATS = ["seat-a", "seat-b", "seat-c"]


@st.composite
def schedules(draw):
    """A list of steps: ("event", BookingEvent) or ("fire", duplicate: bool)."""
    n = draw(st.integers(1, 8))
    events = []
    for i in range(n):
        seat = draw(st.sampled_from(SEATS))
        b, u = f"b{i}", f"u{draw(st.integers(0, 3))}"
        events.append(ev.reservation_requested(b, u, seat, event_id=f"r{i}"))
        for k in range(draw(st.integers(0, 2))):
            events.append(ev.payment_received(b, seat, f"p{i}.{k}", 100, u, event_id=f"p{i}.{k}"))
    if draw(st.booleans()):   # a payment for a booking whose request never comes
        events.append(ev.payment_received("orphan", "seat-a", "po", 100, "u9", event_id="po"))
    order = draw(st.permutations(events))
    steps = []
    for e in order:
        steps.append(("event", e))
        if draw(st.integers(0, 9)) == 0:
            steps.append(("event", e))                      # duplicate delivery
        if draw(st.integers(0, 4)) == 0:
            steps.append(("fire", draw(st.booleans())))     # some timers fire (maybe twice)
    return steps


def _pending_expiries(store, upto_ms=None):
    return [ev.reservation_expired(b, s, d) for (s, b), d in sorted(store.timers.items())
            if upto_ms is None or d <= upto_ms]


def run(steps, store=None, check=None):
    """Fold the steps into a store; returns (store, log) where log is the
    sequence of (event, ts) actually applied (the log a replay would read)."""
    store = store or MemoryStore()
    log = []
    ts = 1_000_000
    for kind, arg in steps:
        ts += 137
        batch = [arg] if kind == "event" else _pending_expiries(store) * (2 if arg else 1)
        for e in batch:
            apply(store, e, ts, TTL, f"t/0/{len(log)}")
            log.append((e, ts))
            if check:
                check(store)
    # Finally every timer fires (the service fires each due timer).
    while store.timers:
        ts += 5000
        for e in _pending_expiries(store):
            apply(store, e, ts, TTL, f"t/0/{len(log)}")
            log.append((e, ts))
            if check:
                check(store)
    return store, log


def consistent(store):
    """Seats and bookings agree, and no seat has two confirmed bookings."""
    confirmed = {}
    for (seat, b), bk in store.bookings.items():
        if bk.state == CONFIRMED:
            assert seat not in confirmed, f"{seat} double-booked: {confirmed[seat]} and {b}"
            confirmed[seat] = b
    for seat, s in store.seats.items():
        if s.state == BOOKED:
            assert confirmed.get(seat) == s.booking_id
        elif s.state == HELD_SEAT:
            assert store.bookings[(seat, s.booking_id)].state == HELD
            assert seat not in confirmed
        else:
            assert s.state == AVAILABLE and seat not in confirmed
    for (seat, b), bk in store.bookings.items():
        if bk.state == HELD:
            assert store.seats[seat].booking_id == b and store.seats[seat].state == HELD_SEAT
        if bk.state in (HELD, PARKED):
            assert store.timers.get((seat, b)) == bk.deadline_ms
        else:
            assert (seat, b) not in store.timers


@settings(max_examples=300, deadline=None)
@given(schedules())
def test_no_double_booking_and_one_terminal_outcome_per_booking(steps):
    store, _ = run(steps, check=consistent)
    terminal = {}
    for e in store.outcomes:
        if ev.is_terminal(e):
            terminal.setdefault((ev.seat_of(e), ev.booking_of(e)), []).append(ev.kind_of(e))
    want = {CONFIRMED: "booking_confirmed", REJECTED: "reservation_rejected",
            EXPIRED: "hold_expired", REFUNDED: "payment_refunded"}
    for key, bk in store.bookings.items():
        assert bk.state in TERMINAL
        assert terminal.get(key) == [want[bk.state]], (key, bk, terminal.get(key))
    assert set(terminal) == set(store.bookings)
    # Outcome ids are unique: a reader can drop republished copies by id.
    ids = [e.event_id for e in store.outcomes]
    assert len(ids) == len(set(ids))


@settings(max_examples=200, deadline=None)
@given(schedules(), st.data())
def test_a_duplicate_anywhere_changes_nothing(steps, data):
    _, log = run(steps)
    i = data.draw(st.integers(0, len(log) - 1))
    once, twice = MemoryStore(), MemoryStore()
    for j, (e, ts) in enumerate(log):
        apply(once, e, ts, TTL, f"t/0/{j}")
        apply(twice, e, ts, TTL, f"t/0/{j}")
        if j == i:
            out = apply(twice, e, ts + 1, TTL, "dup")
            assert out == []                                   # no outcome the second time
    a, b = once.snapshot(), twice.snapshot()
    sa, sb = dict(a.pop("stats")), dict(b.pop("stats"))
    assert a == b
    assert sb.get("duplicates", 0) >= sa.get("duplicates", 0)


@settings(max_examples=100, deadline=None)
@given(schedules())
def test_replaying_the_log_gives_the_same_state(steps):
    store, log = run(steps)
    replay = MemoryStore()
    for j, (e, ts) in enumerate(log):
        apply(replay, e, ts, TTL, f"t/0/{j}")
    assert replay.snapshot() == store.snapshot()
    assert [x.SerializeToString() for x in replay.outcomes] == \
        [x.SerializeToString() for x in store.outcomes]


def test_documented_outcomes_of_out_of_order_events():
    s = MemoryStore()
    t = 10_000
    # Payment before its reservation: parked, then confirmed when the request comes.
    out = apply(s, ev.payment_received("b1", "A", "p1", 500, "u1"), t, TTL, "o1")
    assert [ev.kind_of(e) for e in out] == ["payment_parked"]
    out = apply(s, ev.reservation_requested("b1", "u1", "A"), t + 1, TTL, "o2")
    assert [ev.kind_of(e) for e in out] == ["booking_confirmed"]
    assert s.seats["A"].state == BOOKED
    # A second request for a held seat is rejected with SEAT_HELD.
    apply(s, ev.reservation_requested("b2", "u2", "B"), t, TTL, "o3")
    out = apply(s, ev.reservation_requested("b3", "u3", "B"), t + 1, TTL, "o4")
    assert ev.kind_of(out[0]) == "reservation_rejected"
    assert out[0].reservation_rejected.reason == ev.RejectReason.SEAT_HELD
    assert out[0].reservation_rejected.holder_booking_id == "b2"
    # Payment after the hold expired: refunded; the seat stays free.
    out = apply(s, ev.reservation_expired("b2", "B", t + TTL), t + TTL, TTL, "o5")
    assert [ev.kind_of(e) for e in out] == ["hold_expired"] and s.seats["B"].state == AVAILABLE
    out = apply(s, ev.payment_received("b2", "B", "p2", 500, "u2"), t + TTL + 5, TTL, "o6")
    assert out[0].payment_refunded.reason == ev.RefundReason.HOLD_EXPIRED
    assert s.seats["B"].state == AVAILABLE
    # An expiry that lost the race with the payment is ignored.
    apply(s, ev.reservation_requested("b4", "u4", "C"), t, TTL, "o7")
    apply(s, ev.payment_received("b4", "C", "p4", 500, "u4"), t + 1, TTL, "o8")
    assert apply(s, ev.reservation_expired("b4", "C", t + TTL), t + TTL, TTL, "o9") == []
    assert s.stats["late_expiries"] == 1 and s.seats["C"].state == BOOKED
    # A parked payment whose request never comes is refunded at its deadline.
    apply(s, ev.payment_received("b5", "D", "p5", 700, "u5"), t, TTL, "o10")
    out = apply(s, ev.reservation_expired("b5", "D", t + TTL), t + TTL, TTL, "o11")
    assert out[0].payment_refunded.reason == ev.RefundReason.NO_RESERVATION
    assert ev.is_terminal(out[0]) and s.bookings[("D", "b5")].state == REFUNDED


def test_invalid_events_raise_the_one_documented_error():
    import pytest
    from unstoppable.booking.machine import InvalidEventError
    s = MemoryStore()
    for bad in (ev.BookingEvent(event_id="x"),
                ev.reservation_requested("b", "u", ""),
                ev.BookingEvent(seat_held=ev.SeatHeld(booking_id="b", seat_id="A"))):
        with pytest.raises(InvalidEventError):
            apply(s, bad, 1, TTL, "o")
    assert s.seats == {} and s.bookings == {}
