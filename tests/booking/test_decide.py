"""The compiled fast path (``booking._decide``, what ``decide_run`` uses)
decides exactly as the reference (``decode_checked`` + ``machine.apply``).

The differential property test generates runs of records over a few seats,
bookings and payments - requests, duplicates, payments before and after
their requests and expiries, expiries early, late and twice - mixed with
records that are not plain input events: missing fields, outcome kinds on the
input topic, no kind, no value, garbage and truncated bytes, invalid UTF-8,
unknown fields of every wire type, known fields with the wrong wire type,
events concatenated (protobuf merges them), events for another partition's
seat, records already dead-lettered, and a ``check`` that fails some. Each
run is decided by both paths into two PartitionStores; the failures (index,
applied, error type and text), the staged rows, counters and outcome bytes
of every run, and the final states must be equal. The same records folded
into a MemoryStore by ``machine.apply``, outcomes serialized with
``SerializeToString``, give the same state and bytes."""
from __future__ import annotations

import copy
import struct

import pytest
from hypothesis import given, settings, strategies as st

import unstoppable as us
from unstoppable.booking import events as ev
from unstoppable.booking.machine import MemoryStore, apply
from unstoppable.booking import _decide
from unstoppable.booking.partitionstore import PartitionStore, pack_outcomes, unpack_outcomes
from unstoppable.booking.readmodel import pack_log, unpack_log
from unstoppable.booking.service import decide_run, decode_checked

TOPIC, PARTITION, PARTITIONS = "bookings", 0, 2
_home = us.DefaultPartitioner()
_seats = [f"seat-{i}" for i in range(40)]
SEATS = [s for s in _seats if _home(s.encode(), PARTITIONS) == PARTITION][:3]
ELSEWHERE = next(s for s in _seats if _home(s.encode(), PARTITIONS) != PARTITION)
BOOKINGS = ["b1", "b2", "b3", "b4"]
PAYMENTS = ["p1", "p2", "p3"]
USERS = ["u1", "u2", "ü3"]


class Rec:
    """A record as the consumer hands it out (value a memoryview)."""
    __slots__ = ("offset", "timestamp", "key", "value")

    def __init__(self, offset, timestamp, value):
        self.offset, self.timestamp, self.key = offset, timestamp, None
        self.value = None if value is None else memoryview(value)


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(num: int, wt: int, payload: bytes) -> bytes:
    return _varint(num << 3 | wt) + payload


def _ld(num: int, data: bytes) -> bytes:
    return _field(num, 2, _varint(len(data)) + data)


seat = st.sampled_from(SEATS)
booking = st.sampled_from(BOOKINGS)
amount = st.sampled_from([0, 4900, -7, 1 << 40])

requests = st.builds(lambda b, u, s: ev.reservation_requested(b, u, s, event_id=f"r{b}"),
                     booking, st.sampled_from(USERS), seat)
payments = st.builds(lambda b, s, p, a, u: ev.payment_received(b, s, p, a, u, event_id=f"p{p}"),
                     booking, seat, st.sampled_from(PAYMENTS), amount,
                     st.sampled_from(USERS + [""]))
expiries = st.builds(lambda b, s, d: ev.reservation_expired(b, s, d), booking, seat,
                     st.integers(0, 10_000))
good = st.one_of(requests, requests, payments, payments, expiries).map(ev.CODEC.encode)

# Events the machine refuses (and events it accepts, built oddly).
odd_events = st.one_of(
    st.builds(lambda b, s: ev.reservation_requested(b, "", s), booking, seat),       # no user
    st.builds(lambda s: ev.reservation_requested("", "u1", s), seat),                # no booking
    st.builds(lambda b: ev.reservation_requested(b, "u1", ""), booking),             # no seat
    st.builds(lambda b, s: ev.payment_received(b, s, "", 5, "u1"), booking, seat),   # no payment id
    st.builds(lambda b: ev.reservation_requested(b, "u1", ELSEWHERE), booking),      # wrong partition
    st.builds(lambda b, s: ev.BookingEvent(event_id="x", seat_held=ev.SeatHeld(
        booking_id=b, seat_id=s, user_id="u1", expires_ms=5)), booking, seat),        # an outcome kind
    st.builds(lambda b, s: ev.BookingEvent(event_id="x", payment_refunded=ev.PaymentRefunded(
        booking_id=b, seat_id=s, payment_id="p1")), booking, seat),
    st.just(ev.BookingEvent(event_id="only an id", occurred_ms=5)),                  # no kind
).map(ev.CODEC.encode)


def _with_unknown(data: bytes, where: int, kind: int) -> bytes:
    """An unknown field (of wire type ``kind``) inserted at ``where``, at the
    top level: protobuf skips it."""
    extra = {0: _field(99, 0, _varint(300)), 1: _field(98, 1, b"\x01" * 8),
             2: _ld(97, b"unknown bytes"), 5: _field(96, 5, b"\x02" * 4),
             3: _field(95, 3, b"") + _field(95, 4, b"")}[kind]
    where = min(where, len(data))
    # Fields are whole at the start and the end only; elsewhere it may break the
    # bytes (a different, also valid, test: both paths must agree).
    return data[:where] + extra + data[where:]


def _body_unknown(b: str, s: str, u: str) -> bytes:
    """A request whose body carries unknown fields and a repeated seat id (last wins)."""
    body = (_ld(1, b.encode()) + _field(50, 0, _varint(7)) + _ld(3, b"seat-zzz") + _ld(2, u.encode())
            + _field(51, 5, b"abcd") + _ld(3, s.encode()) + _field(52, 1, b"12345678"))
    return _ld(1, b"eid") + _field(2, 0, _varint(123)) + _ld(10, body)


def _wrong_wire(b: str, s: str) -> bytes:
    """A request whose user id is sent as a varint (protobuf keeps it as unknown)."""
    body = _ld(1, b.encode()) + _field(2, 0, _varint(5)) + _ld(3, s.encode())
    return _ld(10, body)


raw = st.one_of(
    st.binary(max_size=24),                                                # garbage
    st.just(b""),                                                          # an empty event
    st.just(b"\xff\x00 poison"),
    st.builds(lambda g, n: g[:n], good, st.integers(0, 40)),               # truncated
    st.builds(_with_unknown, good, st.sampled_from([0, 10_000]), st.sampled_from([0, 1, 2, 5, 3])),
    st.builds(_with_unknown, good, st.integers(0, 60), st.sampled_from([0, 1, 2, 5])),
    st.builds(lambda a, b: a + b, good, good),                             # merged events
    st.builds(_body_unknown, booking, seat, st.sampled_from(USERS)),
    st.builds(_wrong_wire, booking, seat),
    st.builds(lambda b, s: _ld(1, b"\xff\xfe") + _ld(10, _ld(1, b.encode()) + _ld(2, b"u")
                                                      + _ld(3, s.encode())), booking, seat),  # bad UTF-8 id
    st.builds(lambda b, s: _ld(11, _ld(1, b.encode()) + _ld(2, s.encode()) + _ld(3, b"\xed\xa0\x80")),
              booking, seat),                                                          # a surrogate
    st.builds(lambda b, s: _ld(11, _ld(1, b.encode()) + _ld(2, s.encode()) + _ld(3, b"p9")
                               + _field(4, 0, b"\xff" * 9 + b"\x7f")), booking, seat),  # 70-bit varint
    st.builds(lambda b, s: _ld(12, _ld(1, b.encode()) + _ld(2, s.encode()) + _field(3, 0, b"\x80")),
              booking, seat),                                                          # truncated varint
    st.builds(lambda b, s: _field(0, 0, b"\x01") + _ld(10, _ld(1, b.encode()) + _ld(3, s.encode())),
              booking, seat),                                                          # field 0
)

values = st.one_of(good, good, good, good, good, good, odd_events, raw, st.none())
timestamps = st.one_of(st.integers(0, 20_000), st.just(0), st.just(-1),
                       st.integers(-(1 << 62), 1 << 62))
records = st.lists(st.tuples(values, timestamps, st.integers(0, 40)), min_size=1, max_size=40)


def _snapshot(s: PartitionStore) -> dict:
    """A bulk PartitionStore's state in MemoryStore.snapshot()'s format."""
    part = s.parts[PARTITION]
    empty = ([], {})
    # A log written once is kept as its column's text (thaw_log): compare its content.
    logs = {k: unpack_log(v) if isinstance(v, str) else v for k, v in part.logs.items()}
    return {
        "seats": sorted((x.seat_id, x.state, x.booking_id, x.user_id, x.updated_ms)
                        for x in part.seats.values()),
        "bookings": sorted((b.seat_id, b.booking_id, b.user_id, b.state, b.reason, b.payment_id,
                            b.amount_cents, b.created_ms, b.updated_ms, b.deadline_ms, b.nevents)
                           for b in part.bookings.values()),
        "payments": sorted(k + (pid,) + v for k, (_h, p) in logs.items() for pid, v in p.items()),
        "history": sorted(k + (i,) + e for k, (h, _p) in logs.items() for i, e in enumerate(h)),
        "timers": sorted(k + (v,) for k, v in part.timers.items()),
        "stats": sorted((n, v) for (_p, n), v in s._bulk_counts.items() if v),
        "dead_letters": [],
        "logs of bookings": sorted(k for k in logs if logs.get(k, empty) != empty),
    }


def _failure(f):
    return None if f is None else (f.index, f.applied, type(f.cause).__name__, str(f.cause))


def _staged(s: PartitionStore) -> tuple:
    return (list(s._outbox), dict(s._counts), s.pending_outcomes, set(s._dirty_seats),
            set(s._dirty_bookings), dict(s._timers), list(s._run_dead))


def _run_both(recs, cuts, outcomes, ttl, check=None, dead=None):
    """Decide ``recs`` in runs (split at ``cuts``) by both paths; a record that
    fails is skipped (as the processor dead-letters it). Returns the stores
    and every outcome value, after checking each run's results are equal."""
    stores = [PartitionStore(None, outbox=outcomes, bulk=True) for _ in range(2)]
    todo, values = list(recs), []
    bounds = sorted({c % (len(recs) + 1) for c in cuts})
    runs, prev = [], 0
    for b in bounds + [len(recs)]:
        if b > prev:
            runs.append(recs[prev:b])
            prev = b
    for run in runs:
        todo = run
        while todo:
            results = []
            for reference, s in zip((True, False), stores):
                f = decide_run(s, TOPIC, PARTITION, PARTITIONS, todo, ttl, check=check, dead=dead,
                               reference=reference)
                results.append((_failure(f), _staged(s)))
            assert results[0] == results[1]
            values += [v for _k, v in stores[0]._outbox]
            f = results[0][0]
            for i, s in enumerate(stores):
                if f is None or f[1]:
                    s.flush()
                    # As a worker's flush does (booking_rows): each log written is
                    # kept as its text, so the next runs thaw it. The compiled path
                    # always, the reference's Store methods in every other example.
                    if i == 1 or len(cuts) % 2:
                        part = s.parts.get(PARTITION)
                        if part is not None:
                            _decide.booking_rows(part, list(part.bookings), PARTITION, [], [], [],
                                                 pack_log)
            if f is None:
                break
            assert f[1], f"the state machine raised: {f}"
            todo = todo[f[0] + 1:]
    assert _snapshot(stores[0]) == _snapshot(stores[1])
    _same_rows(stores[1])
    return stores, values


def _same_rows(store: PartitionStore) -> None:
    """The compiled row builders (``_decide.seat_rows``/``booking_rows``,
    what flush writes) give the reference's rows, rowids and booking_users,
    with every other row's rowid known beforehand (an update) and the rest
    new."""
    for p, part in store.parts.items():
        for name, keys in (("seats", list(part.seats)), ("bookings", list(part.bookings))):
            copies = []
            for _ in range(2):
                c = copy.copy(part)
                c.rowids = {k: 1000 + i for i, k in enumerate(keys) if i % 2}
                c.next_rowid = 5000
                copies.append(c)
            new, old, users = [], [], []
            if name == "seats":
                ref = store._seat_rows_reference(copies[0], keys, p)
                _decide.seat_rows(copies[1], keys, p, new, old)
            else:
                ref, ref_users = store._booking_rows_reference(copies[0], keys, p)
                _decide.booking_rows(copies[1], keys, p, new, old, users, pack_log)
                assert users == ref_users
            assert sorted(new + old) == sorted(ref), name
            assert [r[0] for r in old] == [1000 + i for i in range(len(keys)) if i % 2]
            assert [r[0] for r in new] == list(range(5000, 5000 + len(new)))
            assert copies[0].rowids == copies[1].rowids
            assert copies[0].next_rowid == copies[1].next_rowid


_json_text = st.text(max_size=12) | st.sampled_from(["", "u1", 'a"b', "a\\b", "\x7f", "ü3", "\U0001F600"])
_json_int = st.integers() | st.integers(-2**63, 2**63 - 1)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_json_text, _json_int, _json_text, _json_text), max_size=4),
       st.dictionaries(_json_text, st.tuples(_json_text, _json_int), max_size=3))
def test_compiled_pack_log_writes_the_references_text(history, payments):
    assert _decide.pack_log(history, payments, pack_log) == pack_log(history, payments)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=300)), max_size=20))
def test_compiled_pack_outcomes_writes_the_references_bytes(pairs):
    blob = _decide.pack_outcomes(pairs)
    assert blob == pack_outcomes(pairs)
    assert unpack_outcomes(blob) == pairs


def test_compiled_pack_outcomes_refuses_what_is_no_pair_of_bytes():
    for bad in ([(b"k",)], [(b"k", "v")], [[b"k", b"v"]], [(b"k", b"v", b"x")]):
        with pytest.raises(TypeError):
            _decide.pack_outcomes(bad)


def test_compiled_pack_log_hands_other_types_to_the_reference():
    calls = []

    def fallback(h, p):
        calls.append((h, p))
        return pack_log(h, p)

    for h, p in (([("u", 1.5, "k", "d")], {}), ([["u", 1, "k", "d"]], {}), ([], {"p": ("o", True)}),
                 ([("u", 1, "k", None)], {})):
        assert _decide.pack_log(h, p, fallback) == pack_log(h, p)
    assert len(calls) == 4


def _memory_fold(recs, ttl, check_seat=None, dead=None):
    """The same records folded by machine.apply into a MemoryStore, skipping
    the records the reference refuses; outcomes serialized."""
    m = MemoryStore()
    for r in recs:
        if dead and (PARTITION, r.offset) in dead:
            m.count("dead_letters")
            continue
        try:
            e = decode_checked(r.value, PARTITION, PARTITIONS)
        except Exception:
            continue
        if check_seat is not None and ev.seat_of(e) == check_seat:
            continue
        apply(m, e, r.timestamp, ttl, f"{TOPIC}/{PARTITION}/{r.offset}")
    return m, [e.SerializeToString(deterministic=True) for e in m.outcomes]


def _records(spec):
    out, off = [], 0
    for value, ts, gap in spec:
        out.append(Rec(off, ts, value))
        off += 1 + gap % 3
    return out


def _same_as_memory_fold(store, values, m, want_values, outcomes):
    snap = _snapshot(store)
    want = m.snapshot()
    for t in ("seats", "bookings", "payments", "history", "timers", "stats"):
        assert snap[t] == want[t], t
    if outcomes:
        assert values == want_values


@settings(max_examples=300, deadline=None)
@given(records, st.lists(st.integers(0, 40), max_size=4), st.booleans(), st.sampled_from([1, 1000]))
def test_fast_path_decides_as_the_reference(spec, cuts, outcomes, ttl):
    recs = _records(spec)
    stores, values = _run_both(recs, cuts, outcomes, ttl)
    m, want_values = _memory_fold(recs, ttl)
    _same_as_memory_fold(stores[1], values, m, want_values, outcomes)


@settings(max_examples=60, deadline=None)
@given(records, st.sampled_from(SEATS), st.sets(st.integers(0, 80), max_size=5))
def test_fast_path_check_and_dead_letters_as_the_reference(spec, bad_seat, dead_offsets):
    recs = _records(spec)
    dead = {(PARTITION, o): "an earlier failure" for o in dead_offsets}

    def check(tp, rec, event):
        assert tp == us.TopicPartition(TOPIC, PARTITION)
        if ev.seat_of(event) == bad_seat:
            raise RuntimeError(f"seat {bad_seat} fails at {rec.offset}")

    stores, values = _run_both(recs, [], True, 1000, check=check, dead=dead)
    m, want_values = _memory_fold(recs, 1000, check_seat=bad_seat, dead=dead)
    _same_as_memory_fold(stores[1], values, m, want_values, True)


def test_outcome_bytes_of_every_kind_and_the_errors_of_bad_records():
    """A fixed scenario through every outcome kind (and a long topic name,
    negative and zero timestamps, a negative amount), checked field by field
    against protobuf's own decoding; and the failures of bad records."""
    long_topic = "t" * 600
    evs = [
        (ev.reservation_requested("b1", "ü1", "seat-x"), 0),                   # held (ts 0)
        (ev.reservation_requested("b2", "u2", "seat-x"), 5),                   # rejected SEAT_HELD
        (ev.payment_received("b1", "seat-x", "p1", -7, "ü1"), -1),             # confirmed
        (ev.payment_received("b2", "seat-x", "p2", 10, "u2"), 7),              # refund RES_REJECTED
        (ev.payment_received("b3", "seat-x", "p3", 10, "u3"), 8),              # parked
        (ev.reservation_requested("b3", "u3", "seat-x"), 9),                   # rejected + refund
        (ev.reservation_requested("b4", "u4", "seat-y"), 10),                  # held
        (ev.reservation_expired("b4", "seat-y", 11), 1 << 50),                 # hold expired
        (ev.payment_received("b5", "seat-y", "p5", 3, "u5"), 12),              # parked
        (ev.reservation_expired("b5", "seat-y", 13), 13),                      # refund NO_RESERVATION
    ]
    recs = [Rec(i * 1000, ts, ev.CODEC.encode(e)) for i, (e, ts) in enumerate(evs)]
    home = {s: _home(s.encode(), PARTITIONS) for s in ("seat-x", "seat-y")}
    got = {}
    for reference in (True, False):
        s = PartitionStore(None, bulk=True)
        for r in recs:
            p = home[ev.seat_of(ev.CODEC.decode(r.value))]
            assert decide_run(s, long_topic, p, PARTITIONS, [r], 60_000, reference=reference) is None
            got.setdefault(reference, []).extend(s._outbox)
            s.flush()
    assert got[True] == got[False]
    kinds = [ev.kind_of(ev.CODEC.decode(v)) for _k, v in got[False]]
    assert set(kinds) == set(ev.OUTCOME_KINDS)
    first = ev.CODEC.decode(got[False][0][1])
    assert first.event_id == f"{long_topic}/{home['seat-x']}/0#0" and first.occurred_ms == 0
    assert first.seat_held.user_id == "ü1" and first.seat_held.expires_ms == 60_000

    bad = [None, b"\xff\x00 poison", ev.CODEC.encode(ev.reservation_requested("b", "", "seat-x")),
           struct.pack("<I", 7)]
    for value in bad + ["a str, not bytes"]:
        fails = []
        for reference in (True, False):
            s = PartitionStore(None, bulk=True)
            r = Rec(0, 1, None)
            r.value = memoryview(value) if isinstance(value, bytes) else value
            f = decide_run(s, TOPIC, home["seat-x"], PARTITIONS, [r], 10, reference=reference)
            fails.append(_failure(f))
        assert fails[0] == fails[1] and fails[0][:2] == (0, True), fails


def test_a_timestamp_beyond_int64_fails_as_in_the_reference():
    """Not from a log (its timestamps are int64), but the paths still agree:
    building outcomes, protobuf refuses the timestamp or the hold's deadline
    (the state machine raised: not applied); without outcomes nothing needs
    them to fit."""
    value = ev.CODEC.encode(ev.reservation_requested("b1", "u1", SEATS[0]))
    for outcomes in (True, False):
        for ts in (1 << 63, -(1 << 63) - 1, (1 << 63) - 1):
            got = []
            for reference in (True, False):
                s = PartitionStore(None, outbox=outcomes, bulk=True)
                f = decide_run(s, TOPIC, PARTITION, PARTITIONS, [Rec(0, ts, value)], 1000,
                               reference=reference)
                got.append((_failure(f), _staged(s), _snapshot(s)["seats"]))
            assert got[0] == got[1]
            failed = got[0][0]
            if outcomes:        # ((1 << 63) - 1 fits; its deadline, 1000 ms later, does not)
                assert failed is not None and failed[:2] == (0, False)
            else:
                assert failed is None
