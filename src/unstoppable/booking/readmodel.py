"""The read model (the "Q" of CQRS) in SQLite, and the Stores the state
machine decides against.

Each database file (WAL mode, so readers never block the writers; one per
partition, or one for all, see the layouts below) holds:

==============  ====================================================================
table           rows
==============  ====================================================================
seats           one per seat ever touched: state (available/held/booked), holder
bookings        one per (seat, booking): state, reason, payment, deadline, and the
                booking's own log (``log``, JSON ``[history, payments]``): every step
                of the booking and every payment seen for it, with what happened to
                it (captured/parked/refunded). Index on user_id (a user's history).
booking_users   (user, seat, booking) for the rare history step filed under another
                user than the booking's (a payment parked under one user id, then
                requested by another), so a user's history misses nothing
timers          pending deadlines (holds, parked payments): the durable timer
stats           counters per partition (events, duplicates absorbed, ...)
outbox          records decided but not yet published: a run's outcome events packed in
                one row (key NULL, see pack_outcomes), or one dead letter
dead_letters    origins of input records sent to the dead-letter topic
unstoppable_offsets   the consumer group's committed offsets (SQLiteOffsetStore)
==============  ====================================================================

Why seats and bookings are keyed by rowid, ``partition << 40 | n`` (``n``
counting up per partition as rows are first written), with no index on
their ids: a key index (the old WITHOUT ROWID primary keys) receives the
rows in random order, so once the table outgrows a run every row written
dirties its own page, and each commit writes that many pages to the WAL;
measured here, writes of booking rows in 2,500-row transactions fell from
12k to 6k rows/s as the table grew to 360k rows. Rowids that count up
append instead. The worker keeps each row's rowid with the state it holds
in memory; lookups by id scan (SQLite builds a transient index for joins).

Why the history and the payments live in the booking's row: they are only
ever read per booking or per user, and a row per step made the history the
read model's largest write (about one row per event; SQLite inserts some
100k rows/s). Packed, a booking is one row, written once per run that
changes it. ``snapshot()`` unpacks them into the ``history`` and
``payments`` rows they stand for.

The worker changes all of them for a run of records, and saves the offset
after the last one, in one transaction: after a crash the state and the
offsets agree, so every record's effect happens exactly once.

Two layouts (``ServiceConfig.db_layout``):

* ``"partition"`` (the default): the read model is a directory holding one
  database per partition of the input topic, ``p<N>.db``, with the tables
  above for that partition's rows and that partition's committed offset.
  Each worker writes only the files of the partitions it owns, so workers
  never wait for each other's write lock (see :func:`partition_path`).
* ``"shared"``: one database file for every partition; the workers take
  turns at its write lock.

:func:`connect` of a directory opens it for reading: every partition's file
attached to one connection, and a temporary view per table (``seats``,
``bookings``, ..., ``unstoppable_offsets``) reading them all, so SQL written
for one file works unchanged. SQLite attaches at most
``SQLITE_LIMIT_ATTACHED`` databases to a connection (10 in this Python's
SQLite, whose compile-time maximum is 10 too); with more partitions than
that the views are not made (a query names a missing table) and the
queries of :class:`ReadModel` read the files in turn, which they always do
for a directory.

``snapshot()`` gives the state (all tables but the outbox, the offsets and
the timers' ``fired`` flag, which are delivery bookkeeping) as sorted rows;
two read models are identical when their snapshots are equal.
"""
from __future__ import annotations

import json
import json.encoder
import os
import re
import sqlite3

from unstoppable.booking.machine import Booking, Seat, Store

__all__ = ["ReadModel", "SCHEMA", "INDEXES", "PAGE_SIZE",
           "SNAPSHOT_TABLES", "connect", "create_indexes", "diff_snapshots", "pack_log",
           "unpack_log", "partition_path", "partition_paths", "read_model_dbs", "query_all",
           "LAYOUTS"]

#: ``ServiceConfig.db_layout``: one database per partition in a directory, or one file.
LAYOUTS = ("partition", "shared")

SCHEMA = """
CREATE TABLE IF NOT EXISTS seats (
    seat_id TEXT NOT NULL, state TEXT NOT NULL, booking_id TEXT NOT NULL,
    user_id TEXT NOT NULL, updated_ms INTEGER NOT NULL, part INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS bookings (
    seat_id TEXT NOT NULL, booking_id TEXT NOT NULL, user_id TEXT NOT NULL, state TEXT NOT NULL,
    reason TEXT NOT NULL, payment_id TEXT NOT NULL, amount_cents INTEGER NOT NULL,
    created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, deadline_ms INTEGER NOT NULL,
    nevents INTEGER NOT NULL, part INTEGER NOT NULL, log TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS bookings_user ON bookings (user_id);
CREATE TABLE IF NOT EXISTS booking_users (
    user_id TEXT NOT NULL, seat_id TEXT NOT NULL, booking_id TEXT NOT NULL,
    PRIMARY KEY (user_id, seat_id, booking_id)) WITHOUT ROWID;
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

#: Tables compared by ``snapshot()``, with the columns compared. ``history``
#: and ``payments`` are unpacked from ``bookings.log``.
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


#: The page size of read-model files made from now on (SQLite's default: 4,096).
#: A commit appends every page it changed to the WAL with two ``pwrite`` calls
#: each (frame header, page), and a checkpoint copies them again: the worker's
#: ~1 MB commits were ~250 pages of 4 KiB, ~60 of 16 KiB. Measured here by
#: replaying one worker's recorded statements over the 1M-event log (same
#: rows, fresh files, WAL at the same bytes): 3.2 -> 2.7 CPU-us/event of
#: SQLite, the system time halved (0.75 -> 0.47 us/event).
PAGE_SIZE = 16384

#: The secondary indexes of SCHEMA; a bulk load (``connect(..., bulk=True)``)
#: creates them after the rows are in (``create_indexes``).
INDEXES = [line for line in SCHEMA.splitlines() if line.startswith("CREATE INDEX")]

_BOOKING_COLS = ("seat_id, booking_id, user_id, state, reason, payment_id, amount_cents, "
                 "created_ms, updated_ms, deadline_ms, nevents")
_INSERT_SEAT = "INSERT OR REPLACE INTO seats (rowid, seat_id, state, booking_id, user_id, " \
               "updated_ms, part) VALUES (?,?,?,?,?,?,?)"
_INSERT_BOOKING = "INSERT OR REPLACE INTO bookings (rowid, seat_id, booking_id, user_id, state, " \
                  "reason, payment_id, amount_cents, created_ms, updated_ms, deadline_ms, nevents, " \
                  "part, log) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
_ROWID_BITS = 40
# A row's rowid when first written by the reference store: the next of its partition's.
_NEXT_ROWID = "(SELECT COALESCE(MAX(rowid), ?) + 1 FROM {t} WHERE rowid >= ? AND rowid < ?)"


def _rowid_range(partition: int) -> tuple[int, int]:
    return partition << _ROWID_BITS, (partition + 1) << _ROWID_BITS
_NEW_SEAT = _INSERT_SEAT.replace("INSERT OR REPLACE", "INSERT")
_NEW_BOOKING = _INSERT_BOOKING.replace("INSERT OR REPLACE", "INSERT")
_INSERT_USER = "INSERT OR IGNORE INTO booking_users VALUES (?,?,?)"
_SET_TIMER = ("INSERT OR REPLACE INTO timers (seat_id, booking_id, part, deadline_ms, fired) "
              "VALUES (?,?,?,?,0)")
_ADD_STATS = ("INSERT INTO stats (part, name, value) VALUES (?,?,?) "
              "ON CONFLICT (part, name) DO UPDATE SET value = value + excluded.value")


def partition_path(path, partition: int) -> str:
    """The database file of ``partition`` in the read-model directory ``path``."""
    return os.path.join(str(path), f"p{int(partition)}.db")


_PART_FILE = re.compile(r"p(\d+)\.db")


def partition_paths(path) -> dict:
    """``{partition: file}`` of the read-model directory ``path``."""
    out = {}
    for name in os.listdir(str(path)):
        m = _PART_FILE.fullmatch(name)
        if m:
            out[int(m.group(1))] = os.path.join(str(path), name)
    return dict(sorted(out.items()))


#: Tables a directory's reading connection shows as views over every partition.
_VIEW_TABLES = ("seats", "bookings", "booking_users", "timers", "stats", "outbox", "dead_letters",
                "unstoppable_offsets", "unstoppable_dead_letters")


class _DirectoryConnection(sqlite3.Connection):
    """A connection for reading a read-model directory (see :func:`connect`):
    ``parts`` maps each partition to its file."""
    parts: dict
    _dbs: list | None

    def close(self) -> None:
        """Close this connection and the partition connections it opened."""
        for d in self._dbs or ():
            d.close()
        self._dbs = None
        super().close()


def _connect_directory(path: str, timeout: float) -> sqlite3.Connection:
    parts = partition_paths(path)
    db = sqlite3.connect(":memory:", timeout=timeout, isolation_level=None,
                         check_same_thread=False, factory=_DirectoryConnection)
    db.parts, db._dbs = parts, None
    if parts and len(parts) <= db.getlimit(sqlite3.SQLITE_LIMIT_ATTACHED):
        tables = None
        for p, f in parts.items():
            db.execute(f"ATTACH DATABASE ? AS p{p}", (f,))
            db.execute(f"PRAGMA p{p}.busy_timeout={int(timeout * 1000)}")
            have = {r[0] for r in db.execute(f"SELECT name FROM p{p}.sqlite_master WHERE type='table'")}
            tables = have if tables is None else tables & have
        for t in _VIEW_TABLES:
            if t in tables:
                db.execute(f"CREATE TEMP VIEW {t} AS " + " UNION ALL ".join(
                    f"SELECT * FROM p{p}.{t}" for p in parts))
    return db


def read_model_dbs(db: sqlite3.Connection) -> list:
    """The connections a read model's rows are in: ``[db]`` for one file; for
    a directory's reading connection, one connection per partition's file
    (opened once, read in turn)."""
    if not isinstance(db, _DirectoryConnection):
        return [db]
    if db._dbs is None:
        db._dbs = [sqlite3.connect(f, timeout=60.0, isolation_level=None, check_same_thread=False)
                   for f in db.parts.values()]
    return db._dbs


def query_all(db: sqlite3.Connection, sql: str, params: tuple = ()) -> list:
    """The rows of ``sql`` run on each of the read model's files (see
    :func:`read_model_dbs`), concatenated: for queries whose per-file
    answers add up (``COUNT(*)`` gives a row per file: sum them)."""
    out: list = []
    for d in read_model_dbs(db):
        out += d.execute(sql, params).fetchall()
    return out


def connect(path, *, timeout: float = 60.0, bulk: bool = False) -> sqlite3.Connection:
    """Open (creating if needed) a read-model database: WAL, NORMAL sync
    (durable at each checkpoint, atomic always), autocommit mode so that the
    worker's explicit BEGIN/COMMIT are the transactions.

    ``bulk=True`` is for a fresh database filled once (the rebuild): no
    journal, no sync, no secondary indexes until :func:`create_indexes`.
    A crash during a bulk load leaves a file to throw away, not to use.

    A directory (the ``"partition"`` layout) is opened for reading: an
    in-memory connection with every partition's file attached and a
    temporary view per table over them all (when they fit in SQLite's limit
    of attached databases; see the module docstring). :class:`ReadModel`'s
    queries over it read the partitions' files in turn."""
    if os.path.isdir(str(path)):
        if bulk:
            raise IsADirectoryError(f"{path} is a read-model directory; bulk-load its partitions' files")
        return _connect_directory(str(path), timeout)
    db = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    # Only a new, empty file takes it (before its first table, and before
    # WAL mode, which fixes it): an existing read model keeps the page size
    # it was made with.
    db.execute(f"PRAGMA page_size={PAGE_SIZE}")
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


def _not_json(o):
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


# json's C encoder, made once: JSONEncoder.encode makes a new one on every call
# (measured here: 10.9 us -> 2.7 us per booking log, same output).
_c_encode = (None if json.encoder.c_make_encoder is None else json.encoder.c_make_encoder(
    None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True))
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def pack_log(history: list, payments: dict) -> str:
    """A booking's ``log`` column: JSON ``[history, payments]``, history a
    list of ``[user_id, ts_ms, kind, detail]`` (its index is the step's seq),
    payments a list of ``[payment_id, outcome, amount_cents]`` in the order
    first seen."""
    obj = [history, [[k, o, a] for k, (o, a) in payments.items()]]
    if _c_encode is not None:
        return "".join(_c_encode(obj, 0))
    return _dumps(obj)


def unpack_log(text: str) -> tuple[list, dict]:
    """``(history, payments)`` of a ``log`` column (see :func:`pack_log`);
    history entries as tuples, payments as ``{payment_id: (outcome, amount_cents)}``."""
    h, p = json.loads(text)
    return [tuple(e) for e in h], {k: (o, a) for k, o, a in p}


def _other_users(b: Booking, history: list) -> set:
    """Users a history step is filed under other than the booking's own."""
    return {e[0] for e in history if e[0] != b.user_id} if history else set()


class _Queries:
    """The read model's queries, over ``self.db``: one file, or a directory's
    reading connection (see :func:`connect`), whose partitions' files are
    read in turn. Every row of a seat (its bookings, their users and timers)
    is in its partition's file, so a query per file and a merge give the
    whole."""

    db: sqlite3.Connection

    def _rows(self, sql: str, params: tuple = ()):
        for db in read_model_dbs(self.db):
            yield from db.execute(sql, params)

    def stats(self) -> dict:
        """Counters summed over partitions."""
        out: dict = {}
        for n, v in self._rows("SELECT name, SUM(value) FROM stats GROUP BY name"):
            out[n] = out.get(n, 0) + v
        return out

    def snapshot(self) -> dict:
        """The read model as {table: sorted list of row tuples} (see module docstring)."""
        out = {}
        for t, cols in SNAPSHOT_TABLES.items():
            if t == "stats":
                rows = sorted((n, v) for n, v in self.stats().items() if v != 0)
            elif t in ("history", "payments"):
                continue
            else:
                rows = list(self._rows(f"SELECT {cols} FROM {t}"))
            out[t] = sorted(rows)
        history, payments = [], []
        for s, b, log in self._rows("SELECT seat_id, booking_id, log FROM bookings"):
            h, p = unpack_log(log)
            history += [(s, b, i) + e for i, e in enumerate(h)]
            payments += [(s, b, k) + v for k, v in p.items()]
        out["history"] = sorted(history)
        out["payments"] = sorted(payments)
        return out

    def double_booked(self) -> list:
        """Seats with more than one confirmed booking, or whose booked holder
        is not its confirmed booking: must always be empty. (Two scans joined
        in Python: seats and bookings have no index on their ids.)"""
        confirmed: dict = {}
        bad = set()
        for seat, booking in self._rows(
                "SELECT seat_id, booking_id FROM bookings WHERE state='confirmed'"):
            if seat in confirmed:
                bad.add(seat)
            confirmed[seat] = booking
        seats = {}
        for seat, state, holder in self._rows("SELECT seat_id, state, booking_id FROM seats"):
            seats[seat] = (state, holder)
            if state == "booked" and confirmed.get(seat) != holder:
                bad.add(seat)
        for seat, booking in confirmed.items():
            s = seats.get(seat)
            if s is not None and s != ("booked", booking):
                bad.add(seat)
        return sorted(bad)

    def user_history(self, user_id: str) -> list:
        """A user's booking steps in time order: (ts_ms, seat, booking, kind, detail)."""
        rows = list(self._rows(
            "SELECT seat_id, booking_id, log FROM bookings WHERE user_id=? UNION "
            "SELECT b.seat_id, b.booking_id, b.log FROM booking_users u JOIN bookings b "
            "ON b.seat_id=u.seat_id AND b.booking_id=u.booking_id WHERE u.user_id=?",
            (user_id, user_id)))
        out = []
        for s, b, log in rows:
            h, _p = unpack_log(log)
            out += [(e[1], s, b, i, e[2], e[3]) for i, e in enumerate(h) if e[0] == user_id]
        out.sort()
        return [(ts, s, b, kind, detail) for ts, s, b, _i, kind, detail in out]

    def dead_lettered(self, topic: str) -> set:
        """{(partition, offset)} of the records of ``topic`` that were dead-lettered."""
        return {(p, o) for p, o in self._rows(
            "SELECT part, off FROM dead_letters WHERE topic=?", (topic,))}


class ReadModel(_Queries, Store):
    """ReadModel(db, partition=0)

    The state machine's Store over a read-model connection, a statement per
    read and write (the reference the batch store, :class:`PartitionStore`,
    is tested against), plus the read model's queries. It issues only reads
    and writes; the caller owns the transaction. ``partition`` (set per
    record by the worker) is where counters, timers and rows are filed.
    Outcomes go to the outbox, keyed by seat, for the worker to publish
    after commit; ``pending_outcomes`` counts those added since it was last
    reset. Counters are written by :meth:`flush_counts`.
    """

    def __init__(self, db: sqlite3.Connection, partition: int = 0,
                 outcomes_topic: str = "booking-outcomes"):
        self.db = db
        self.outcomes_topic = outcomes_topic
        self.partition = partition
        self._counts: dict = {}
        self._logs: dict = {}          # (seat, booking) -> (history, payments) being changed
        self.pending_outcomes = 0
        self._x = db.execute

    # -- Store
    def get_seat(self, seat_id):
        r = self._x("SELECT state, booking_id, user_id, updated_ms FROM seats WHERE seat_id=?",
                    (seat_id,)).fetchone()
        return None if r is None else Seat(seat_id, *r)

    def _upsert(self, table: str, key_sql: str, key: tuple, cols: str, values: tuple) -> None:
        sets = ", ".join(f"{c}=?" for c in cols.split(", "))
        if self._x(f"UPDATE {table} SET {sets} WHERE {key_sql}", values + key).rowcount == 0:
            lo, hi = _rowid_range(self.partition)
            self._x(f"INSERT INTO {table} (rowid, {cols}) VALUES "
                    f"({_NEXT_ROWID.format(t=table)}, {', '.join('?' * len(values))})",
                    (lo, lo, hi) + values)

    def put_seat(self, s):
        self._upsert("seats", "seat_id=?", (s.seat_id,),
                     "seat_id, state, booking_id, user_id, updated_ms, part",
                     (s.seat_id, s.state, s.booking_id, s.user_id, s.updated_ms, self.partition))

    def _log(self, seat_id, booking_id) -> tuple:
        k = (seat_id, booking_id)
        log = self._logs.get(k)
        if log is None:
            r = self._x("SELECT log FROM bookings WHERE seat_id=? AND booking_id=?", k).fetchone()
            log = self._logs[k] = ([], {}) if r is None else unpack_log(r[0])
        return log

    def get_booking(self, seat_id, booking_id):
        r = self._x(f"SELECT {_BOOKING_COLS}, log FROM bookings WHERE seat_id=? AND booking_id=?",
                    (seat_id, booking_id)).fetchone()
        self._logs[(seat_id, booking_id)] = ([], {}) if r is None else unpack_log(r[-1])
        return None if r is None else Booking(*r[:-1])

    def put_booking(self, b):
        h, p = self._log(b.seat_id, b.booking_id)
        self._upsert("bookings", "seat_id=? AND booking_id=?", (b.seat_id, b.booking_id),
                     _BOOKING_COLS + ", part, log",
                     (b.seat_id, b.booking_id, b.user_id, b.state, b.reason, b.payment_id,
                      b.amount_cents, b.created_ms, b.updated_ms, b.deadline_ms, b.nevents,
                      self.partition, pack_log(h, p)))
        for u in _other_users(b, h):
            self._x(_INSERT_USER, (u, b.seat_id, b.booking_id))

    def has_payment(self, seat_id, booking_id, payment_id):
        return payment_id in self._log(seat_id, booking_id)[1]

    def add_payment(self, seat_id, booking_id, payment_id, outcome, amount_cents):
        self._log(seat_id, booking_id)[1][payment_id] = (outcome, amount_cents)

    def set_timer(self, seat_id, booking_id, deadline_ms):
        self._x(_SET_TIMER, (seat_id, booking_id, self.partition, deadline_ms))

    def clear_timer(self, seat_id, booking_id):
        self._x("DELETE FROM timers WHERE seat_id=? AND booking_id=?", (seat_id, booking_id))

    def add_history(self, b, ts_ms, kind, detail):
        self._log(b.seat_id, b.booking_id)[0].append((b.user_id, ts_ms, kind, detail))
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
            self.db.executemany(_ADD_STATS, [(p, n, v) for (p, n), v in self._counts.items()])
            self._counts.clear()
        self._logs.clear()

    def discard_counts(self) -> None:
        """Forget counters of a transaction that was rolled back."""
        self._counts.clear()
        self._logs.clear()
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
                    (partition, dlq, key, value, json.dumps(headers)))
        self.count("dead_letters")


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
