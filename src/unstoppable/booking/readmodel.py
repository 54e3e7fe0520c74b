"""The read model (the "Q" of CQRS) in SQLite, and the Store the state
machine decides against.

One database file (WAL mode, so readers never block the writers) holds:

==============  ====================================================================
table           rows
==============  ====================================================================
seats           one per seat ever touched: state (available/held/booked), holder
bookings        one per (seat, booking): state, reason, payment, deadline
payments        every payment seen, with what happened to it (captured/parked/refunded)
history         every step of every booking, per user (index on user_id)
timers          pending deadlines (holds, parked payments): the durable timer
stats           counters per partition (events, duplicates absorbed, ...)
outbox          records decided but not yet published: a run's outcome events packed in
                one row (key NULL, see pack_outcomes), or one dead letter
dead_letters    origins of input records sent to the dead-letter topic
unstoppable_offsets   the consumer group's committed offsets (SQLiteOffsetStore)
==============  ====================================================================

The worker changes all of them for a run of records, and saves the offset
after the last one, in one transaction: after a crash the state and the
offsets agree, so every record's effect happens exactly once.

``snapshot()`` gives the state (all tables but the outbox, the offsets and
the timers' ``fired`` flag, which are delivery bookkeeping) as sorted rows;
two read models are identical when their snapshots are equal.
"""
from __future__ import annotations

import json
import sqlite3
import struct

from unstoppable.booking.machine import Booking, Seat, Store

__all__ = ["ReadModel", "RunStore", "pack_outcomes", "unpack_outcomes", "SCHEMA", "INDEXES",
           "SNAPSHOT_TABLES", "connect", "create_indexes", "diff_snapshots"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS seats (
    seat_id TEXT PRIMARY KEY, state TEXT NOT NULL, booking_id TEXT NOT NULL,
    user_id TEXT NOT NULL, updated_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bookings (
    seat_id TEXT NOT NULL, booking_id TEXT NOT NULL, user_id TEXT NOT NULL, state TEXT NOT NULL,
    reason TEXT NOT NULL, payment_id TEXT NOT NULL, amount_cents INTEGER NOT NULL,
    created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, deadline_ms INTEGER NOT NULL,
    nevents INTEGER NOT NULL, PRIMARY KEY (seat_id, booking_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS bookings_state ON bookings (state);
CREATE TABLE IF NOT EXISTS payments (
    seat_id TEXT NOT NULL, booking_id TEXT NOT NULL, payment_id TEXT NOT NULL,
    outcome TEXT NOT NULL, amount_cents INTEGER NOT NULL,
    PRIMARY KEY (seat_id, booking_id, payment_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    seat_id TEXT NOT NULL, booking_id TEXT NOT NULL, seq INTEGER NOT NULL, user_id TEXT NOT NULL,
    ts_ms INTEGER NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL,
    PRIMARY KEY (seat_id, booking_id, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS history_user ON history (user_id, ts_ms);
CREATE TABLE IF NOT EXISTS timers (
    seat_id TEXT NOT NULL, booking_id TEXT NOT NULL, part INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL, fired INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (seat_id, booking_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS timers_due ON timers (part, fired, deadline_ms);
CREATE TABLE IF NOT EXISTS stats (
    part INTEGER NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (part, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, part INTEGER NOT NULL, topic TEXT NOT NULL,
    key BLOB, value BLOB, headers TEXT);
CREATE TABLE IF NOT EXISTS dead_letters (
    topic TEXT NOT NULL, part INTEGER NOT NULL, off INTEGER NOT NULL, error TEXT NOT NULL,
    PRIMARY KEY (topic, part, off)) WITHOUT ROWID;
"""

#: Tables compared by ``snapshot()``, with the columns compared.
SNAPSHOT_TABLES = {
    "seats": "seat_id, state, booking_id, user_id, updated_ms",
    "bookings": "seat_id, booking_id, user_id, state, reason, payment_id, amount_cents, "
                "created_ms, updated_ms, deadline_ms, nevents",
    "payments": "seat_id, booking_id, payment_id, outcome, amount_cents",
    "history": "seat_id, booking_id, seq, user_id, ts_ms, kind, detail",
    "timers": "seat_id, booking_id, deadline_ms",
    "stats": "name, SUM(value)",
    "dead_letters": "topic, part, off",
}


#: The secondary indexes of SCHEMA; a bulk load (``connect(..., bulk=True)``)
#: creates them after the rows are in (``create_indexes``).
INDEXES = [line for line in SCHEMA.splitlines() if line.startswith("CREATE INDEX")]


def connect(path, *, timeout: float = 60.0, bulk: bool = False) -> sqlite3.Connection:
    """Open (creating if needed) a read-model database: WAL, NORMAL sync
    (durable at each checkpoint, atomic always), autocommit mode so that the
    worker's explicit BEGIN/COMMIT are the transactions.

    ``bulk=True`` is for a fresh database filled once (the rebuild): no
    journal, no sync, no secondary indexes until :func:`create_indexes`.
    A crash during a bulk load leaves a file to throw away, not to use."""
    db = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    if bulk:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("PRAGMA cache_size=-262144")
        db.executescript("\n".join(line for line in SCHEMA.splitlines() if line not in INDEXES))
        return db
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    # The read model's keys arrive in no order: a page cache that holds the
    # tables' working set keeps random upserts off the disk (default: 2 MiB).
    db.execute("PRAGMA cache_size=-131072")
    db.executescript(SCHEMA)
    return db


def create_indexes(db: sqlite3.Connection) -> None:
    """Create the secondary indexes a bulk load left out, then switch the
    database to WAL like any read model."""
    db.executescript("\n".join(INDEXES))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")


class ReadModel(Store):
    """ReadModel(db, partition=0)

    The state machine's Store over a read-model connection. It issues only
    reads and writes; the caller owns the transaction. ``partition`` (set per
    record by the worker) is where counters and timers are filed. Outcomes go
    to the outbox, keyed by seat, for the worker to publish after commit;
    ``pending_outcomes`` counts those added since it was last reset.
    """

    def __init__(self, db: sqlite3.Connection, partition: int = 0,
                 outcomes_topic: str = "booking-outcomes"):
        self.db = db
        self.outcomes_topic = outcomes_topic
        self.partition = partition
        self._counts: dict = {}
        self.pending_outcomes = 0
        self._x = db.execute

    # -- Store
    def get_seat(self, seat_id):
        r = self._x("SELECT state, booking_id, user_id, updated_ms FROM seats WHERE seat_id=?",
                    (seat_id,)).fetchone()
        return None if r is None else Seat(seat_id, *r)

    def put_seat(self, s):
        self._x("INSERT OR REPLACE INTO seats VALUES (?,?,?,?,?)",
                (s.seat_id, s.state, s.booking_id, s.user_id, s.updated_ms))

    def get_booking(self, seat_id, booking_id):
        r = self._x("SELECT user_id, state, reason, payment_id, amount_cents, created_ms, "
                    "updated_ms, deadline_ms, nevents FROM bookings WHERE seat_id=? AND booking_id=?",
                    (seat_id, booking_id)).fetchone()
        return None if r is None else Booking(seat_id, booking_id, *r)

    def put_booking(self, b):
        self._x("INSERT OR REPLACE INTO bookings VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (b.seat_id, b.booking_id, b.user_id, b.state, b.reason, b.payment_id,
                 b.amount_cents, b.created_ms, b.updated_ms, b.deadline_ms, b.nevents))

    def has_payment(self, seat_id, booking_id, payment_id):
        return self._x("SELECT 1 FROM payments WHERE seat_id=? AND booking_id=? AND payment_id=?",
                       (seat_id, booking_id, payment_id)).fetchone() is not None

    def add_payment(self, seat_id, booking_id, payment_id, outcome, amount_cents):
        self._x("INSERT OR REPLACE INTO payments VALUES (?,?,?,?,?)",
                (seat_id, booking_id, payment_id, outcome, amount_cents))

    def set_timer(self, seat_id, booking_id, deadline_ms):
        self._x("INSERT OR REPLACE INTO timers (seat_id, booking_id, part, deadline_ms, fired) "
                "VALUES (?,?,?,?,0)", (seat_id, booking_id, self.partition, deadline_ms))

    def clear_timer(self, seat_id, booking_id):
        self._x("DELETE FROM timers WHERE seat_id=? AND booking_id=?", (seat_id, booking_id))

    def add_history(self, b, ts_ms, kind, detail):
        self._x("INSERT OR REPLACE INTO history VALUES (?,?,?,?,?,?,?)",
                (b.seat_id, b.booking_id, b.nevents, b.user_id, ts_ms, kind, detail))
        b.nevents += 1

    def emit(self, event):
        seat = event.WhichOneof("kind")
        seat = getattr(event, seat).seat_id
        self._x("INSERT INTO outbox (part, topic, key, value) VALUES (?,?,?,?)",
                (self.partition, self.outcomes_topic, seat.encode(),
                 event.SerializeToString(deterministic=True)))
        self.pending_outcomes += 1

    def count(self, name, n=1):
        k = (self.partition, name)
        self._counts[k] = self._counts.get(k, 0) + n

    # -- worker helpers
    def flush_counts(self) -> None:
        """Write the counters gathered since the last flush (inside the transaction)."""
        if self._counts:
            self.db.executemany(
                "INSERT INTO stats (part, name, value) VALUES (?,?,?) "
                "ON CONFLICT (part, name) DO UPDATE SET value = value + excluded.value",
                [(p, n, v) for (p, n), v in self._counts.items()])
            self._counts.clear()

    def discard_counts(self) -> None:
        """Forget counters of a transaction that was rolled back."""
        self._counts.clear()
        self.pending_outcomes = 0

    def add_dead_letter(self, topic: str, partition: int, offset: int, error: str,
                        publish: tuple | None = None) -> None:
        """Record that a record was dead-lettered; with ``publish`` = ``(dlq_topic,
        key, value, headers)`` also queue the dead letter itself in the outbox,
        so the decision and its publication commit together."""
        self._x("INSERT OR REPLACE INTO dead_letters VALUES (?,?,?,?)",
                (topic, partition, offset, error))
        if publish is not None:
            dlq, key, value, headers = publish
            self._x("INSERT INTO outbox (part, topic, key, value, headers) VALUES (?,?,?,?,?)",
                    (self.partition, dlq, key, value, json.dumps(headers)))
        self.count("dead_letters")

    def dead_lettered(self, topic: str) -> set:
        """{(partition, offset)} of the records of ``topic`` that were dead-lettered."""
        return {(p, o) for p, o in self.db.execute(
            "SELECT part, off FROM dead_letters WHERE topic=?", (topic,))}

    # -- queries
    def stats(self) -> dict:
        """Counters summed over partitions."""
        return {n: v for n, v in self.db.execute("SELECT name, SUM(value) FROM stats GROUP BY name")}

    def snapshot(self) -> dict:
        """The read model as {table: sorted list of row tuples} (see module docstring)."""
        out = {}
        for t, cols in SNAPSHOT_TABLES.items():
            if t == "stats":
                rows = self.db.execute("SELECT name, SUM(value) FROM stats GROUP BY name "
                                       "HAVING SUM(value) != 0").fetchall()
            else:
                rows = self.db.execute(f"SELECT {cols} FROM {t}").fetchall()
            out[t] = sorted(rows)
        return out

    def double_booked(self) -> list:
        """Seats with more than one confirmed booking, or whose booked holder
        is not its confirmed booking: must always be empty."""
        bad = self.db.execute(
            "SELECT seat_id FROM bookings WHERE state='confirmed' GROUP BY seat_id "
            "HAVING COUNT(*) > 1").fetchall()
        bad += self.db.execute(
            "SELECT s.seat_id FROM seats s WHERE s.state='booked' AND NOT EXISTS ("
            "SELECT 1 FROM bookings b WHERE b.seat_id=s.seat_id AND b.booking_id=s.booking_id "
            "AND b.state='confirmed')").fetchall()
        bad += self.db.execute(
            "SELECT b.seat_id FROM bookings b JOIN seats s ON s.seat_id=b.seat_id "
            "WHERE b.state='confirmed' AND (s.state!='booked' OR s.booking_id!=b.booking_id)").fetchall()
        return sorted({r[0] for r in bad})

    def user_history(self, user_id: str) -> list:
        """A user's booking steps in time order: (ts_ms, seat, booking, kind, detail)."""
        return self.db.execute(
            "SELECT ts_ms, seat_id, booking_id, kind, detail FROM history WHERE user_id=? "
            "ORDER BY ts_ms, seat_id, booking_id, seq", (user_id,)).fetchall()


_LENS = struct.Struct("<II")


def pack_outcomes(pairs) -> bytes:
    """A run's outcomes ``[(key, value)]`` as one outbox value: for each,
    key length and value length (u32 LE each), then the key and value bytes."""
    pack = _LENS.pack
    return b"".join(pack(len(k), len(v)) + k + v for k, v in pairs)


def unpack_outcomes(blob: bytes) -> list:
    """The ``[(key, value)]`` that :func:`pack_outcomes` packed."""
    out, pos, n = [], 0, len(blob)
    unpack = _LENS.unpack_from
    while pos < n:
        kl, vl = unpack(blob, pos)
        pos += 8
        out.append((blob[pos:pos + kl], blob[pos + kl:pos + kl + vl]))
        pos += kl + vl
    return out


_SEAT_SQL = ("SELECT s.seat_id, s.state, s.booking_id, s.user_id, s.updated_ms "
             "FROM json_each(?) j JOIN seats s ON s.seat_id = j.value")
_BOOKING_SQL = ("SELECT b.seat_id, b.booking_id, b.user_id, b.state, b.reason, b.payment_id, "
                "b.amount_cents, b.created_ms, b.updated_ms, b.deadline_ms, b.nevents "
                "FROM json_each(?) j JOIN bookings b ON b.seat_id = json_extract(j.value, '$[0]') "
                "AND b.booking_id = json_extract(j.value, '$[1]')")
_PAYMENT_SQL = ("SELECT p.seat_id, p.booking_id, p.payment_id "
                "FROM json_each(?) j JOIN payments p ON p.seat_id = json_extract(j.value, '$[0]') "
                "AND p.booking_id = json_extract(j.value, '$[1]')")


class RunStore(ReadModel):
    """RunStore(db, partition=0, outcomes_topic="booking-outcomes", outbox=True)

    The read model a run of records at a time: :meth:`load` reads the seats,
    bookings and payments the run touches in three set queries, the state
    machine decides in memory, and :meth:`flush` writes what changed with
    one ``executemany`` per table (inside the caller's transaction). Between
    ``load`` and ``flush`` the Store methods touch no database; after a
    rollback, :meth:`discard` forgets the run. ``outbox=False`` (the
    rebuild) keeps outcomes out of the outbox, since nothing is published.
    """

    def __init__(self, db: sqlite3.Connection, partition: int = 0,
                 outcomes_topic: str = "booking-outcomes", outbox: bool = True):
        super().__init__(db, partition, outcomes_topic)
        self.outbox = outbox
        self.discard()

    def discard(self) -> None:
        """Forget the current run (and its counters)."""
        self._seats: dict = {}
        self._bookings: dict = {}
        self._paid: set = set()
        self._dirty_seats: set = set()
        self._dirty_bookings: set = set()
        self._new_payments: dict = {}
        self._timers: dict = {}
        self._history: list = []
        self._outbox: list = []
        self.discard_counts()

    def load(self, keys) -> None:
        """Start a run touching ``keys``, ``[(seat_id, booking_id)]``: read
        their seats, bookings and payments."""
        self.discard()
        pairs = json.dumps(list({k: None for k in keys}))
        seats = json.dumps(list({s: None for s, _b in keys}))
        x = self._x
        self._seats = {r[0]: Seat(*r) for r in x(_SEAT_SQL, (seats,))}
        self._bookings = {(r[0], r[1]): Booking(*r) for r in x(_BOOKING_SQL, (pairs,))}
        self._paid = set(x(_PAYMENT_SQL, (pairs,)).fetchall())

    def flush(self) -> None:
        """Write the run's changes (inside the caller's transaction)."""
        em = self.db.executemany
        if self._dirty_seats:
            seats = self._seats
            em("INSERT OR REPLACE INTO seats VALUES (?,?,?,?,?)",
               [(s.seat_id, s.state, s.booking_id, s.user_id, s.updated_ms)
                for s in (seats[k] for k in sorted(self._dirty_seats))])
        if self._dirty_bookings:
            bks = self._bookings
            em("INSERT OR REPLACE INTO bookings VALUES (?,?,?,?,?,?,?,?,?,?,?)",
               [(b.seat_id, b.booking_id, b.user_id, b.state, b.reason, b.payment_id,
                 b.amount_cents, b.created_ms, b.updated_ms, b.deadline_ms, b.nevents)
                for b in (bks[k] for k in sorted(self._dirty_bookings))])
        if self._new_payments:
            em("INSERT OR REPLACE INTO payments VALUES (?,?,?,?,?)",
               sorted(k + v for k, v in self._new_payments.items()))
        if self._history:
            self._history.sort()       # key order: fewer B-tree pages touched per run
            em("INSERT OR REPLACE INTO history VALUES (?,?,?,?,?,?,?)", self._history)
        if self._timers:
            sets = [k + v for k, v in self._timers.items() if v is not None]
            dels = [k for k, v in self._timers.items() if v is None]
            if dels:
                em("DELETE FROM timers WHERE seat_id=? AND booking_id=?", dels)
            if sets:
                em("INSERT OR REPLACE INTO timers (seat_id, booking_id, part, deadline_ms, fired) "
                   "VALUES (?,?,?,?,0)", sets)
        if self._outbox:
            # One row for the run's outcomes (key NULL, value packed): one row
            # per run instead of one per outcome.
            self._x("INSERT INTO outbox (part, topic, key, value) VALUES (?,?,NULL,?)",
                    (self.partition, self.outcomes_topic, pack_outcomes(self._outbox)))
        self.flush_counts()
        self.discard()

    # -- Store, in memory. The machine writes back every object it changes,
    #    so the loaded objects are handed out without copies.
    def get_seat(self, seat_id):
        return self._seats.get(seat_id)

    def put_seat(self, s):
        self._seats[s.seat_id] = s
        self._dirty_seats.add(s.seat_id)

    def get_booking(self, seat_id, booking_id):
        return self._bookings.get((seat_id, booking_id))

    def put_booking(self, b):
        k = (b.seat_id, b.booking_id)
        self._bookings[k] = b
        self._dirty_bookings.add(k)

    def has_payment(self, seat_id, booking_id, payment_id):
        return (seat_id, booking_id, payment_id) in self._paid

    def add_payment(self, seat_id, booking_id, payment_id, outcome, amount_cents):
        k = (seat_id, booking_id, payment_id)
        self._paid.add(k)
        self._new_payments[k] = (outcome, amount_cents)

    def set_timer(self, seat_id, booking_id, deadline_ms):
        self._timers[(seat_id, booking_id)] = (self.partition, deadline_ms)

    def clear_timer(self, seat_id, booking_id):
        self._timers[(seat_id, booking_id)] = None

    def add_history(self, b, ts_ms, kind, detail):
        self._history.append((b.seat_id, b.booking_id, b.nevents, b.user_id, ts_ms, kind, detail))
        b.nevents += 1

    def emit(self, event):
        if self.outbox:
            seat = getattr(event, event.WhichOneof("kind")).seat_id
            self._outbox.append((seat.encode(), event.SerializeToString(deterministic=True)))
        self.pending_outcomes += 1


def diff_snapshots(a: dict, b: dict, limit: int = 5) -> list[str]:
    """Human-readable differences between two snapshots (empty when identical)."""
    out = []
    for t in sorted(set(a) | set(b)):
        ra, rb = a.get(t, []), b.get(t, [])
        if ra == rb:
            continue
        sa, sb = set(ra), set(rb)
        only_a, only_b = sorted(sa - sb)[:limit], sorted(sb - sa)[:limit]
        out.append(f"{t}: {len(ra)} vs {len(rb)} rows; only in first: {only_a}; "
                   f"only in second: {only_b}")
    return out
