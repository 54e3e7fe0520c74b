"""The read model a worker writes: :class:`PartitionStore`, the decision
state of the partitions a worker owns, kept in memory while it owns them,
and the rows a run changed written in the run's transaction (or, for the
rebuild, every partition's final rows once). The schema, the layouts and
the readers are in :mod:`unstoppable.booking.readmodel`.
"""
from __future__ import annotations

import sqlite3
import struct

from unstoppable.booking._decide import (
    booking_rows as _c_booking_rows,
    pack_outcomes as _c_pack_outcomes,
    seat_rows as _c_seat_rows,
    thaw_log,
)
from unstoppable.booking.machine import Booking, Seat, Store
from unstoppable.booking.readmodel import (
    _ADD_STATS,
    _BOOKING_COLS,
    _INSERT_BOOKING,
    _INSERT_SEAT,
    _INSERT_USER,
    _NEW_BOOKING,
    _NEW_SEAT,
    _SET_TIMER,
    _Queries,
    _other_users,
    _rowid_range,
    pack_log,
)

__all__ = ["PartitionStore", "pack_outcomes", "unpack_outcomes"]


_LENS = struct.Struct("<II")


def pack_outcomes(pairs) -> bytes:
    """A run's outcomes ``[(key, value)]`` as one outbox value: for each,
    key length and value length (u32 LE each), then the key and value bytes.
    (The worker's runs use the compiled ``_decide.pack_outcomes``: the same bytes.)"""
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


class _Part:
    """The decision state of one partition: its seats, its bookings with their
    logs, and the timers the database holds for it."""
    __slots__ = ("seats", "bookings", "logs", "timers", "rowids", "next_rowid")

    def __init__(self):
        self.seats: dict = {}        # seat_id -> Seat
        self.bookings: dict = {}     # (seat_id, booking_id) -> Booking
        # (seat_id, booking_id) -> (history list, {payment_id: (outcome, amount)}), or, once
        # written (or loaded) and until a run changes it again, its log column's text
        self.logs: dict = {}
        self.timers: dict = {}       # (seat_id, booking_id) -> deadline_ms of its timers row
        self.rowids: dict = {}       # seat_id or (seat_id, booking_id) -> its row's rowid
        self.next_rowid = 0          # the next new row's (seats and bookings share the count)


class PartitionStore(_Queries, Store):
    """PartitionStore(db, outcomes_topic="booking-outcomes", *, outbox=True, bulk=False)

    The read model for a worker that keeps the decision state of the
    partitions it owns in memory. :meth:`load` reads one partition's seats,
    bookings and timers once (when the worker takes the partition over);
    :meth:`drop` forgets them (when it gives the partition up, or when its
    state may no longer match the committed offset). These two are the
    ``state`` hooks of :class:`unstoppable.Processor`, which calls them.

    A run: :meth:`begin` (the partition), the state machine decides against
    the in-memory state (objects are handed out without copies: the machine
    writes back every object it changes), and :meth:`flush` writes what the
    run changed, coalesced to its final value: one row per seat and per
    booking the run touched, the timers that changed, one outbox row with
    the run's outcomes, and the counters (inside the caller's transaction).
    :meth:`discard` forgets a run's staged rows but not its changes to the
    state: after a rollback the state must be dropped (the Processor does).

    ``bulk=True`` (the rebuild) writes nothing per run: :meth:`write_all`
    writes every partition's final rows once, in key order. ``outbox=False``
    keeps outcomes out of the outbox (nothing is published), and tells the
    machine not to build them (``wants_outcomes``).

    ``db_for(partition)``, when given, is the connection of each partition's
    own database (the ``"partition"`` layout): :meth:`begin` and
    :meth:`load_partition` point ``db`` at it, so a run's rows go to its
    partition's file.
    """

    def __init__(self, db: sqlite3.Connection, outcomes_topic: str = "booking-outcomes", *,
                 outbox: bool = True, bulk: bool = False, db_for=None):
        self.db = db
        self.db_for = db_for
        self.outcomes_topic = outcomes_topic
        self.outbox = outbox
        self.wants_outcomes = outbox        # no outbox: the machine need not build outcomes
        self.bulk = bulk
        self.parts: dict = {}
        self.partition = -1
        self.run = 0                 # counts begin(): which run the staged rows belong to
        self._cur = None
        self._bulk_counts: dict = {}
        self._dead: list = []
        # The outcomes of outbox rows this store wrote: (partition, seq) -> (packed value,
        # [(key, value)]), so that publishing need not unpack them again. An
        # entry stands for a row only while the row's value equals the packed
        # value (a rolled-back row's seq is used again); see outcomes_for().
        self.outcomes_of: dict = {}
        self.discard()

    # -- the Processor's state hooks
    def load(self, db, tp) -> None:
        """Read partition ``tp.partition``'s state from the database."""
        self.load_partition(tp.partition)

    def drop(self, tp) -> None:
        """Forget partition ``tp.partition``'s state."""
        self.parts.pop(tp.partition, None)
        if self.partition == tp.partition:
            self._cur, self.partition = None, -1
            self.discard()

    def load_partition(self, partition: int) -> None:
        """(Re)read one partition's seats, bookings (with their logs) and timers."""
        if self.db_for is not None:
            self.db = self.db_for(partition)
        part = _Part()
        x = self.db.execute
        lo, hi = _rowid_range(partition)
        top = lo
        seats, rowids = part.seats, part.rowids
        for r in x("SELECT seat_id, state, booking_id, user_id, updated_ms, rowid FROM seats "
                   "WHERE rowid >= ? AND rowid < ?", (lo, hi)):
            seats[r[0]] = Seat(*r[:5])
            rowids[r[0]] = r[5]
            top = max(top, r[5])
        bookings, logs = part.bookings, part.logs
        for r in x(f"SELECT {_BOOKING_COLS}, log, rowid FROM bookings WHERE rowid >= ? AND rowid < ?",
                   (lo, hi)):
            k = (r[0], r[1])
            bookings[k] = Booking(*r[:11])
            logs[k] = r[11]           # its text, until a run changes it (thaw_log)
            rowids[k] = r[12]
            top = max(top, r[12])
        part.next_rowid = top + 1
        part.timers = {(s, b): d for s, b, d in x(
            "SELECT seat_id, booking_id, deadline_ms FROM timers WHERE part=?", (partition,))}
        self.parts[partition] = part

    # -- a run
    def begin(self, partition: int) -> None:
        """Start a run of ``partition`` (its state must be loaded, or new: an
        empty partition in a bulk load)."""
        part = self.parts.get(partition)
        if part is None:
            if not self.bulk:
                raise RuntimeError(f"partition {partition}'s state is not loaded")
            part = self.parts[partition] = _Part()
            part.next_rowid = _rowid_range(partition)[0] + 1
        self.discard()
        self._cur = part
        self.partition = partition
        self.run += 1
        if self.db_for is not None:
            self.db = self.db_for(partition)

    def discard(self) -> None:
        """Forget the rows staged by the current run (not its state changes)."""
        self._dirty_seats: set = set()
        self._dirty_bookings: set = set()
        self._timers: dict = {}
        self._outbox: list = []
        self._counts: dict = {}
        self._run_dead: list = []
        self.pending_outcomes = 0

    def flush(self) -> None:
        """Write the run's changes (inside the caller's transaction); in bulk
        mode, keep them for :meth:`write_all`."""
        part, p = self._cur, self.partition
        sets, dels = self._coalesce_timers() if self._timers else ((), ())
        if self.bulk:
            bc = self._bulk_counts
            for n, v in self._counts.items():
                bc[(p, n)] = bc.get((p, n), 0) + v
            self._dead += self._run_dead
            self.discard()
            return
        em = self.db.executemany
        # Rows new to the table are INSERTed (a row whose rowid the state does
        # not hold yet is in no committed transaction: a rolled-back run drops
        # the state), the others replaced; rowids are handed out seats first,
        # then bookings, in the order of the dirty sets. New rows ascend already.
        if self._dirty_seats:
            new, old = [], []
            _c_seat_rows(part, self._dirty_seats, p, new, old)
            if new:
                em(_NEW_SEAT, new)
            if old:
                old.sort()
                em(_INSERT_SEAT, old)
        if self._dirty_bookings:
            new, old, users = [], [], []
            _c_booking_rows(part, self._dirty_bookings, p, new, old, users, pack_log)
            if new:
                em(_NEW_BOOKING, new)
            if old:
                old.sort()
                em(_INSERT_BOOKING, old)
            if users:
                em(_INSERT_USER, users)
        if dels:
            em("DELETE FROM timers WHERE seat_id=? AND booking_id=?", dels)
        if sets:
            em(_SET_TIMER, sets)
        if self._run_dead:
            em("INSERT OR REPLACE INTO dead_letters VALUES (?,?,?,?)", self._run_dead)
        if self._outbox:
            # One row for the run's outcomes (key NULL, value packed): one row
            # per run instead of one per outcome.
            blob = _c_pack_outcomes(self._outbox)
            seq = self.db.execute("INSERT INTO outbox (part, topic, key, value) VALUES (?,?,NULL,?)",
                                  (p, self.outcomes_topic, blob)).lastrowid
            self.outcomes_of[(p, seq)] = (blob, self._outbox)   # (seqs count per file)
        if self._counts:
            em(_ADD_STATS, [(p, n, v) for n, v in self._counts.items()])
        self.discard()

    def outcomes_for(self, seq: tuple, value: bytes) -> list:
        """The ``[(key, value)]`` of the packed outbox row ``seq`` (``(partition,
        row seq)``: with a file per partition, each file counts its own seqs)
        holding ``value``: kept from when this store wrote it, else unpacked."""
        kept = self.outcomes_of.pop(seq, None)
        if kept is not None and kept[0] == value:
            return kept[1]
        if len(self.outcomes_of) > 10_000:      # rows rolled back, or published by another owner
            self.outcomes_of.clear()
        return unpack_outcomes(value)

    def _coalesce_timers(self) -> tuple[list, list]:
        """The run's timer changes against the rows the database holds:
        ``(rows to set, keys to delete)``; a timer set and cleared within the
        run writes nothing."""
        sets, dels = [], []
        have, p = self._cur.timers, self.partition
        for k, d in self._timers.items():
            was = have.get(k)
            if d is None:
                if was is not None:
                    dels.append(k)
                    del have[k]
            elif was != d:
                sets.append((k[0], k[1], p, d))
                have[k] = d
        return sets, dels

    @staticmethod
    def _rowid(part: _Part, k) -> int:
        r = part.rowids.get(k)
        if r is None:
            r = part.rowids[k] = part.next_rowid
            part.next_rowid += 1
        return r

    def _seat_rows(self, part: _Part, keys, p: int) -> list:
        """The seats table's rows of seats ``keys`` (compiled: ``_decide.seat_rows``)."""
        rows: list = []
        _c_seat_rows(part, keys, p, rows, rows)
        return rows

    def _booking_rows(self, part: _Part, keys, p: int) -> tuple[list, list]:
        """The bookings table's rows of bookings ``keys`` and the
        ``booking_users`` rows they need (compiled: ``_decide.booking_rows``;
        :meth:`_booking_rows_reference` is the same in Python)."""
        rows: list = []
        users: list = []
        _c_booking_rows(part, keys, p, rows, rows, users, pack_log, False)
        return rows, users

    def _seat_rows_reference(self, part: _Part, keys, p: int) -> list:
        seats, rowid = part.seats, self._rowid
        return [(rowid(part, s.seat_id), s.seat_id, s.state, s.booking_id, s.user_id, s.updated_ms, p)
                for s in (seats[k] for k in keys)]

    def _booking_rows_reference(self, part: _Part, keys, p: int) -> tuple[list, list]:
        bks, logs, rowid = part.bookings, part.logs, self._rowid
        rows, users = [], []
        empty = ([], {})
        for k in keys:
            b = bks[k]
            log = logs.get(k, empty)
            if log.__class__ is str:
                text, h = log, []
            else:
                h, pay = log
                text = pack_log(h, pay)
            rows.append((rowid(part, k), b.seat_id, b.booking_id, b.user_id, b.state, b.reason, b.payment_id,
                         b.amount_cents, b.created_ms, b.updated_ms, b.deadline_ms, b.nevents, p, text))
            for e in h:
                if e[0] != b.user_id:
                    users += [(u, k[0], k[1]) for u in _other_users(b, h)]
                    break
        return rows, users

    def write_all(self, partitions=None) -> None:
        """Bulk mode: write every partition's final state (or only that of
        ``partitions``), in key order (in the caller's transaction)."""
        em = self.db.executemany
        seats, bookings, timers = [], [], []
        want = None if partitions is None else set(partitions)
        for p, part in self.parts.items():
            if want is not None and p not in want:
                continue
            seats += self._seat_rows(part, part.seats, p)
            bookings.append((p, part))
            timers += [(k[0], k[1], p, d) for k, d in part.timers.items()]
        seats.sort()
        em(_INSERT_SEAT, seats)
        rows, users = [], []
        for p, part in bookings:
            r, u = self._booking_rows(part, part.bookings, p)
            rows += r
            users += u
        rows.sort()
        em(_INSERT_BOOKING, rows)
        em(_INSERT_USER, sorted(set(users)))
        timers.sort()
        em(_SET_TIMER, timers)
        em("INSERT OR REPLACE INTO dead_letters VALUES (?,?,?,?)",
           sorted(d for d in self._dead if want is None or d[1] in want))
        em(_ADD_STATS, sorted((p, n, v) for (p, n), v in self._bulk_counts.items()
                              if want is None or p in want))

    def add_dead_letter(self, topic: str, partition: int, offset: int, error: str) -> None:
        """Record (in the run) that a record was dead-lettered (the rebuild)."""
        self._run_dead.append((topic, partition, offset, error))
        self.count("dead_letters")

    # -- Store, in memory. The machine writes back every object it changes,
    #    so the objects are handed out without copies.
    def get_seat(self, seat_id):
        return self._cur.seats.get(seat_id)

    def put_seat(self, s):
        self._cur.seats[s.seat_id] = s
        self._dirty_seats.add(s.seat_id)

    def get_booking(self, seat_id, booking_id):
        return self._cur.bookings.get((seat_id, booking_id))

    def put_booking(self, b):
        k = (b.seat_id, b.booking_id)
        self._cur.bookings[k] = b
        self._dirty_bookings.add(k)

    def _log(self, k) -> tuple:
        """Booking ``k``'s (history, payments), made if it has none."""
        logs = self._cur.logs
        log = logs.get(k)
        if log is None:
            log = logs[k] = ([], {})
        elif log.__class__ is str:
            log = thaw_log(logs, k, log)
        return log

    def has_payment(self, seat_id, booking_id, payment_id):
        k = (seat_id, booking_id)
        return k in self._cur.logs and payment_id in self._log(k)[1]

    def add_payment(self, seat_id, booking_id, payment_id, outcome, amount_cents):
        k = (seat_id, booking_id)
        self._log(k)[1][payment_id] = (outcome, amount_cents)
        self._dirty_bookings.add(k)

    def set_timer(self, seat_id, booking_id, deadline_ms):
        self._timers[(seat_id, booking_id)] = deadline_ms

    def clear_timer(self, seat_id, booking_id):
        self._timers[(seat_id, booking_id)] = None

    def add_history(self, b, ts_ms, kind, detail):
        k = (b.seat_id, b.booking_id)
        self._log(k)[0].append((b.user_id, ts_ms, kind, detail))
        b.nevents += 1
        self._dirty_bookings.add(k)

    def emit(self, event):
        if self.outbox:
            seat = getattr(event, event.WhichOneof("kind")).seat_id
            self._outbox.append((seat.encode(), event.SerializeToString(deterministic=True)))
        self.pending_outcomes += 1

    def count(self, name, n=1):
        c = self._counts
        c[name] = c.get(name, 0) + n
