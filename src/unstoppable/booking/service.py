"""The booking service: a consumer-group worker that applies the seat state
machine to the input topic, keeps the SQLite read model, publishes outcomes,
fires durable timers, and dead-letters what keeps failing. Also ``rebuild``.

It runs on either backend: ``ServiceConfig.log_path`` is the directory of an
embedded log or a ``nats://host:port[,...]`` URL of a JetStream cluster. The
log is only ever used through ``Consumer``, ``Producer`` and the backend's
reads (``logio.LogReader``), so both backends run the same code.

Topics (names in :class:`ServiceConfig`)::

    bookings           inputs: SeatReservationRequested, PaymentReceived,
                       ReservationExpired; keyed by seat id
    booking-outcomes   what the service decided (SeatHeld, BookingConfirmed, ...)
    booking-dlq        dead letters (see deadletters.py)

Values are decoded by the worker itself, not by a consumer deserializer: a
record that does not decode must be dead-lettered like any other failure,
not stop the partition. Producers of events use ``value_serializer=CODEC``.

One worker, per run of records handed out by ``getmany`` for a partition::

    decide (us.Processor prepare=, no lock held): for each record: decode,
        validate, check, machine.apply against the partition's state in
        memory (loaded once when the worker took the partition over)
    BEGIN IMMEDIATE
      fence; the state must stand for the committed offset (else reload, decide again)
      write what the run changed: a row per seat and per booking, the
        timers that changed, the run's outcomes as one outbox row, counters
      SQLiteOffsetStore.save(partition: last offset + 1)
    COMMIT                         <- effects and offset, atomically
    publish the outbox (outcomes, dead letters), then delete what was published
    fire due timers: append ReservationExpired to the input topic, mark fired

Exactly-once effects: the read model, the timers, the outbox and the
committed offset change in one SQLite transaction (of the partition's own
database file, in the default "partition" layout). A worker killed at any
point leaves either all of a run's effects and its offset, or none; the next
owner of the partition resumes at the committed offset.

Fencing: the transaction first reads the partition's committed offset, and a
run that starts below it (another worker committed those records while this
one still held them: a partition moved after a lapsed JetStream lease, say)
is rolled back and skipped, and the consumer seeks past it. So even two
workers briefly handling one partition apply each record once.

At-least-once publication: outbox rows are deleted after the producer has
acknowledged them, so a crash in between publishes them again; outcome event
ids are derived from the input record (``topic/partition/offset#n``), so
readers of the outcome topic drop such repeats by id.

Durable timers: a hold's deadline is a row of ``timers``, written with the
hold. The owner of the partition appends ``ReservationExpired`` when it is
due, then marks it fired; a crash before the mark fires it again, and the
machine absorbs the second one. A pending expiry survives any restart
because it is a row, not a callback.

Failures: a record whose handling raises is retried, alone, with
exponential backoff (``max_attempts``, ``backoff_ms``). When every attempt
failed it is dead-lettered: its origin and error go to ``dead_letters`` and
the outbox (for the dead-letter topic) in the same transaction as its offset,
and the partition moves on. Nothing is dropped silently.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import sqlite3
import time
import zlib
from dataclasses import asdict, dataclass, field

import unstoppable as us
from unstoppable.booking import deadletters as dl
from unstoppable.booking import events as ev
from unstoppable.booking.logio import LogReader, close_log, ensure_topic, open_log
from unstoppable.booking._decide import decide_run as _fast_decide_run
from unstoppable.booking.booking_pb2 import BookingEvent
from unstoppable.booking.machine import InvalidEventError, apply, validate
from unstoppable.booking.seatstate import publish_seats
from unstoppable.booking.partitionstore import PartitionStore
from unstoppable.booking.readmodel import (
    LAYOUTS,
    ReadModel,
    connect,
    partition_path,
    read_model_dbs,
)
from unstoppable.errors import ValueDecodeError

__all__ = ["ServiceConfig", "BookingService", "InjectedFault", "create_topics", "run_worker",
           "committed_offsets", "config_dict", "decode_checked", "apply_run", "decide_run"]

_home = us.DefaultPartitioner()   # the producer's partitioner: where a seat's events belong

#: A worker's read model checkpoints its WAL when it holds this many bytes
#: (SQLite's default: 1,000 pages, 4 MB of 4 KiB pages); with a file per
#: partition, each file's WAL this much over the partitions, at least
#: WAL_AUTOCHECKPOINT_MIN_BYTES. Set in pages, from each file's own page size
#: (files made before PAGE_SIZE was raised keep 4 KiB pages). The writer's own
#: autocheckpoint is set at WAL_BACKSTOP_FACTOR times that: its WalCheckpointer
#: checkpoints on a thread of its own before.
WAL_AUTOCHECKPOINT_BYTES = 64 << 20
WAL_AUTOCHECKPOINT_MIN_BYTES = 1000 * 4096
WAL_BACKSTOP_FACTOR = 4
#: A worker checkpoints each read-model file it writes at most this often, on a
#: thread of its own (us.WalCheckpointer). Rare checkpoints: after each one the
#: writer's next commit restarts the WAL and syncs its new header (SQLite does,
#: on the writer's thread). Measured over 1 M events (strace): the worker's own
#: thread spent 0.24 s in fdatasync (68 of them creating the files, 30 header
#: syncs), against 0.7-1.1 s (196-208) when it checkpointed itself; at 1 s it
#: did 140 header syncs.
WAL_CHECKPOINT_INTERVAL_S = 5.0


class InjectedFault(RuntimeError):
    """A failure the configuration asked for (``fault_rate`` / ``fail_seats``),
    to exercise retries and dead letters."""


@dataclass
class ServiceConfig:
    """Where the service works and how. Plain data, so it can go to worker processes.

    ``log_path`` is the embedded log's directory or a ``nats://`` URL;
    ``log_options`` go to the JetStream connection (``lease_ttl`` ...)."""
    log_path: str
    db_path: str
    topic: str = "bookings"
    outcomes_topic: str = "booking-outcomes"
    dlq_topic: str = "booking-dlq"
    group: str = "booking-service"
    ttl_ms: int = 5000                 # how long a hold (or a parked payment) waits
    max_attempts: int = 4              # tries before a record is dead-lettered
    backoff_ms: float = 10.0           # first retry pause; doubles each time
    batch: int = 5000                  # records per getmany (and per transaction, at most)
    timer_interval_ms: float = 50.0    # longest wait for records before timers are checked
    fault_rate: float = 0.0            # share of records whose first attempt fails (demo)
    fail_seats: tuple = ()             # seats whose records always fail (tests)
    status_path: str | None = None     # JSON file the worker rewrites with its metrics
    membership_poll_ms: float = 100.0
    initial_rebalance_delay_ms: float = 0.0   # the Consumer's (Kafka's group.initial.rebalance.delay.ms)
    log_options: dict = field(default_factory=dict)
    #: A compacted topic the workers keep each seat's latest state in
    #: (booking/seatstate.py), or None for none. Compaction needs the
    #: embedded log: JetStream refuses the topic.
    seats_topic: str | None = None
    #: The read model's layout (readmodel.py): "partition", a directory of
    #: one SQLite file per partition, each holding its rows and its committed
    #: offset (workers never share a write lock); or "shared", one file.
    db_layout: str = "partition"


async def create_topics(log, cfg: ServiceConfig, partitions: int = 8, *,
                        replicas: int | None = None) -> None:
    """Create the service's topics (if missing) in ``log`` (``replicas``:
    copies of each partition on JetStream)."""
    for name, n in ((cfg.topic, partitions), (cfg.outcomes_topic, partitions), (cfg.dlq_topic, 1)):
        await ensure_topic(log, name, n, replicas=replicas)
    if cfg.seats_topic:
        await ensure_topic(log, cfg.seats_topic, partitions, replicas=replicas,
                           cleanup_policy="compact")


def _faulty(cfg: ServiceConfig, partition: int, offset: int) -> bool:
    if cfg.fault_rate <= 0:
        return False
    h = zlib.crc32(b"%d:%d" % (partition, offset))
    return (h % 1_000_000) < cfg.fault_rate * 1_000_000


_from_string = BookingEvent.FromString
_homes: dict = {}        # partitions -> {seat: the seat's partition} (seats are few; hashing is not free)


def _decode(value) -> BookingEvent:
    try:
        return _from_string(value)
    except Exception as e:          # protobuf's DecodeError (and RuntimeWarning/ValueError)
        raise ValueDecodeError(f"value is not a valid {BookingEvent.DESCRIPTOR.full_name}: {e}") from None


def decode_checked(value, partition: int, partitions: int):
    """Decode an input record and check it belongs where it is: events of a
    seat must be on the seat's partition, or two workers could decide on one
    seat at once; and that the state machine can apply it (``validate``).
    Raises ValueDecodeError or InvalidEventError."""
    if value is None:
        raise InvalidEventError("record has no value")
    event = _decode(value)
    kind = validate(event)
    seat = getattr(event, kind).seat_id
    homes = _homes.get(partitions)
    if homes is None:
        homes = _homes[partitions] = {}
    home = homes.get(seat)
    if home is None:
        home = homes[seat] = _home(seat.encode(), partitions)
    if home != partition:
        raise InvalidEventError(f"event for seat {seat!r} is on partition {partition}, but the "
                                f"seat's events belong on partition {home}")
    return event


def _decide_one(st, r, i: int, prefix: str, tp, partition: int, partitions: int, ttl_ms: int,
                check):
    """The reference path for one record: decode_checked, check, machine.apply.
    Returns None, or its failure as decide_run does."""
    try:
        e = decode_checked(r.value, partition, partitions)
        if check is not None:
            check(tp, r, e)
    except Exception as exc:        # before apply: the prefix's state is whole
        f = us.RecordFailed(i, exc, applied=True)
        f.__cause__ = exc
        return f
    try:
        apply(st, e, r.timestamp, ttl_ms, prefix + str(r.offset))
    except Exception as exc:
        st.discard()
        f = us.RecordFailed(i, exc)
        f.__cause__ = exc
        return f
    return None


def decide_run(st: PartitionStore, topic: str, partition: int, partitions: int, recs: list,
               ttl_ms: int, *, check=None, dead: dict | None = None, reference: bool = False):
    """decide_run(st, topic, partition, partitions, recs, ttl_ms, *, check=None, dead=None,
    reference=False) -> None or us.RecordFailed

    Decide a run of input records of one partition against ``st`` (a
    PartitionStore holding the partition's state in memory) and stage the
    effects in it, touching no database: decode and validate every record,
    then apply the state machine. ``check(tp, rec, event)`` may raise to
    fail a record (on the fast path ``event`` stands for the decoded
    BookingEvent, decoded when ``check`` first reads an attribute); ``dead`` maps the ``(partition, offset)`` of records
    already dead-lettered to their error (the rebuild), which are recorded as
    dead letters instead of applied.

    Returns None, or the failure of the first record that failed (decided
    records after it: none): ``RecordFailed(index, cause, applied=True)``
    when it did not decode, is invalid or failed ``check`` (the state and
    the staged rows hold exactly the records before it), or
    ``RecordFailed(index, cause)`` should the state machine itself raise (it
    cannot for a validated event; the state is then partly changed and must
    be dropped, and nothing is staged).

    The records are decided by the compiled fast path (``booking._decide``:
    the wire bytes parsed and the outcomes encoded in C), which hands every
    record it does not accept plainly (errors included) to the reference
    path, ``decode_checked`` + ``machine.apply``. ``reference=True`` (or a
    store that is not a PartitionStore) decides every record the reference
    way; the two give the same states, counters, outcomes and failures
    (tests/booking/test_decide.py).
    """
    tp = us.TopicPartition(topic, partition) if check is not None else None
    homes = _homes.get(partitions)
    if homes is None:
        homes = _homes[partitions] = {}

    def slow(st, r, i, prefix, tp):
        return _decide_one(st, r, i, prefix, tp, partition, partitions, ttl_ms, check)

    if not reference and type(st) is PartitionStore:
        return _fast_decide_run(st, topic, partition, partitions, recs if type(recs) is list
                                else list(recs), ttl_ms, check, tp, dead, homes, _home,
                                _from_string, slow)
    st.begin(partition)
    prefix = f"{topic}/{partition}/"
    for i, r in enumerate(recs):
        off = r.offset
        if dead and (partition, off) in dead:
            st.add_dead_letter(topic, partition, off, dead[(partition, off)])
            continue
        f = slow(st, r, i, prefix, tp)
        if f is not None:
            return f
    return None


def apply_run(st: PartitionStore, topic: str, partition: int, partitions: int, recs: list,
              ttl_ms: int, *, check=None, dead: dict | None = None) -> None:
    """apply_run(st, topic, partition, partitions, recs, ttl_ms, *, check=None, dead=None)

    :func:`decide_run`, then write what it staged (``st.flush()``, in the
    caller's transaction; in bulk mode, keep it) and raise its failure, if
    any: the processor commits the records before a ``RecordFailed(applied=True)``
    as they are.
    """
    failed = decide_run(st, topic, partition, partitions, recs, ttl_ms, check=check, dead=dead)
    if failed is None or failed.applied:
        st.flush()
    if failed is not None:
        raise failed


class BookingService:
    """BookingService(cfg)

    One worker of the booking service's consumer group. ``await run(stop)``
    works until ``stop`` (an asyncio.Event) is set; any number of workers (in
    any number of processes) may run against the same log and read model.

    The read model is ``cfg.db_path``: a directory of one SQLite file per
    partition (``db_layout="partition"``, the default), each holding the
    partition's rows and committed offset, so that workers owning different
    partitions never wait for one write lock; or one file shared by every
    worker (``db_layout="shared"``). The layout of an existing read model
    must match the configuration (a clear error otherwise).
    """

    def __init__(self, cfg: ServiceConfig):
        self.cfg = cfg
        self.metrics = {"pid": os.getpid(), "handled": 0, "transactions": 0, "retries": 0,
                        "dead_letters": 0, "published": 0, "timers_fired": 0, "fenced": 0,
                        "assigned": [], "started": time.time(), "updated": 0.0}
        self.metrics["lock_waits"] = 0
        self._fail_seats = frozenset(cfg.fail_seats)
        self._injected: set = set()
        self.seats_p = None             # the seats topic's producer, while run() runs

    # ------------------------------------------------------------------ run

    async def run(self, stop: asyncio.Event, log=None) -> None:
        """Work until ``stop`` is set (on ``log``, or on the log the config names)."""
        cfg = self.cfg
        own_log = log is None
        log = await open_log(cfg.log_path, **cfg.log_options) if own_log else log
        try:
            async with LogReader(log) as reader:
                self.partitions = await reader.partitions(cfg.topic)
            self.open_db()
            async with us.Consumer(log, cfg.topic, group=cfg.group, offset_store=self.store,
                                   max_poll_records=cfg.batch,
                                   membership_poll_ms=cfg.membership_poll_ms,
                                   initial_rebalance_delay_ms=cfg.initial_rebalance_delay_ms) as c, \
                    us.Producer(log, cfg.outcomes_topic) as self.out_p, \
                    us.Producer(log, cfg.topic, value_serializer=ev.CODEC) as self.in_p, \
                    us.Producer(log, cfg.dlq_topic, acks="fsync") as self.dlq_p, \
                    _maybe_producer(log, cfg.seats_topic) as self.seats_p:
                self.consumer = self.processor.consumer = c
                last_status = 0.0
                while not stop.is_set():
                    got = await c.getmany(timeout_ms=cfg.timer_interval_ms)
                    self.processor.release_unassigned()
                    for tp, recs in got.items():
                        await self.processor.process(tp, recs)
                    owned = sorted(tp.partition for tp in c.assignment())
                    await self.publish_outbox(owned)
                    await self.fire_timers(owned)
                    now = time.monotonic()
                    if cfg.status_path and now - last_status > 0.2:
                        self.metrics["assigned"] = owned
                        self._write_status()
                        last_status = now
                owned = sorted(tp.partition for tp in c.assignment())
                await self.publish_outbox(owned)
                self.metrics["assigned"] = []
                if cfg.status_path:
                    self._write_status()
        finally:
            self.close_db()
            if own_log:
                await close_log(log)

    def open_db(self):
        """Open the read model (``db``, ``rm``), the offset store kept in it
        (``store``) and the exactly-once processor over them (``processor``),
        as :meth:`run` does; returns the connection."""
        cfg = self.cfg
        if cfg.db_layout not in LAYOUTS:
            raise ValueError(f"db_layout must be one of {LAYOUTS}, got {cfg.db_layout!r}")
        self._dbs: dict = {}
        # The WAL checkpoints (and their syncs) run on a thread of their own; a
        # writer's own autocheckpoint is only the backstop (see _writer).
        self._ckpt = us.WalCheckpointer(interval=WAL_CHECKPOINT_INTERVAL_S)
        self._checkpointed: set = set()
        if cfg.db_layout == "partition":
            if os.path.exists(cfg.db_path) and not os.path.isdir(cfg.db_path):
                raise ValueError(f"{cfg.db_path} is a file (a read model of the \"shared\" layout) "
                                 "but db_layout is \"partition\", a directory of one file per "
                                 "partition: choose the layout the read model has")
            os.makedirs(cfg.db_path, exist_ok=True)
            for p in range(getattr(self, "partitions", 0) or 0):    # readers see every file
                self.partition_db(p)
            # For reading across partitions (views over every file); the worker
            # itself writes through partition_db().
            self.db = connect(cfg.db_path)
            self.state = PartitionStore(self.db, outcomes_topic=cfg.outcomes_topic,
                                        db_for=self.partition_db)
            self.store = us.PartitionedSQLiteOffsetStore(lambda tp: self.partition_db(tp.partition))
        else:
            if os.path.isdir(cfg.db_path):
                raise ValueError(f"{cfg.db_path} is a directory (a read model of the \"partition\" "
                                 "layout) but db_layout is \"shared\", one file: choose the layout "
                                 "the read model has")
            self.db = _writer(connect(cfg.db_path), WAL_AUTOCHECKPOINT_BYTES)
            self._ckpt.add(cfg.db_path)
            self.state = PartitionStore(self.db, outcomes_topic=cfg.outcomes_topic)
            self.store = us.SQLiteOffsetStore(self.db)
        self.rm = ReadModel(self.db, outcomes_topic=cfg.outcomes_topic)
        self.processor = us.Processor(getattr(self, "consumer", None), self.store, self._apply_run,
                                      group=cfg.group, max_attempts=cfg.max_attempts,
                                      backoff_ms=cfg.backoff_ms, dead_letter=self._dead_letter,
                                      state=self.state, prepare=self._prepare)
        self._prepared = None
        self.processor.metrics = self.metrics        # one set of counters
        return self.db

    def partition_db(self, partition: int):
        """The connection of ``partition``'s database (the "partition" layout:
        opened, and created, when first needed); the shared one otherwise."""
        if self.cfg.db_layout != "partition":
            return self.db
        db = self._dbs.get(partition)
        if db is None:
            path = partition_path(self.cfg.db_path, partition)
            if not os.path.exists(path):
                _create_partition_db(path)
            # Each file takes 1/n of the writes: its WAL may hold 1/n of the
            # shared file's bytes, so the WALs together stay as bounded.
            nbytes = max(WAL_AUTOCHECKPOINT_MIN_BYTES,
                         WAL_AUTOCHECKPOINT_BYTES // max(1, getattr(self, "partitions", 0) or 8))
            db = self._dbs[partition] = _writer(connect(path), nbytes)
        return db

    def close_db(self) -> None:
        """Close every connection :meth:`open_db` opened (after a last checkpoint)."""
        if getattr(self, "_ckpt", None) is not None:
            self._ckpt.close()
            self._ckpt = None
        for db in getattr(self, "_dbs", {}).values():
            db.close()
        self._dbs = {}
        if getattr(self, "db", None) is not None:
            self.db.close()
            self.db = None

    def _owned_dbs(self, owned: list) -> list:
        """``[(connection, partitions)]`` holding the rows of the ``owned`` partitions."""
        if self.cfg.db_layout != "partition":
            return [(self.db, owned)]
        return [(self.partition_db(p), [p]) for p in owned]

    async def process(self, tp, recs) -> None:
        """Apply a run of records of partition ``tp`` exactly once (what
        :meth:`run` does with each run ``getmany`` hands out)."""
        await self.processor.process(tp, recs)

    def _write_status(self) -> None:
        self.metrics["updated"] = time.time()
        tmp = f"{self.cfg.status_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.metrics, f)
        os.replace(tmp, self.cfg.status_path)

    # ------------------------------------------------------------- handling

    def _check(self, tp, rec, event) -> None:
        """The configured failures (``fault_rate``: each chosen record fails
        once in this worker; ``fail_seats``: always)."""
        cfg = self.cfg
        if _faulty(cfg, tp.partition, rec.offset) and (tp.partition, rec.offset) not in self._injected:
            self._injected.add((tp.partition, rec.offset))
            raise InjectedFault(f"injected transient failure at {tp.topic}/{tp.partition}/{rec.offset}")
        if self._fail_seats and ev.seat_of(event) in self._fail_seats:
            raise InjectedFault(f"seat {ev.seat_of(event)!r} is configured to fail")

    def _prepare(self, tp, recs) -> None:
        """The processor's ``prepare``: decide the run in memory, before the
        write lock is taken (other workers of the database write meanwhile)."""
        check = self._check if (self.cfg.fault_rate > 0 or self._fail_seats) else None
        failed = decide_run(self.state, tp.topic, tp.partition, self.partitions, recs,
                            self.cfg.ttl_ms, check=check)
        self._prepared = (tp.partition, self.state.run, recs[0].offset, len(recs), failed)

    def _apply_run(self, db, tp, recs) -> None:
        """The processor's handler: the run's effects, inside its transaction
        (decided by ``_prepare`` unless the state was reloaded since)."""
        if tp.partition not in self._checkpointed:
            # The files this worker writes (not every file it opens for reading:
            # each worker would checkpoint every file).
            self._checkpointed.add(tp.partition)
            if self.cfg.db_layout == "partition":
                self._ckpt.add(partition_path(self.cfg.db_path, tp.partition))
        st, prep, self._prepared = self.state, self._prepared, None
        if prep is not None and prep[:4] == (tp.partition, st.run, recs[0].offset, len(recs)) \
                and st.partition == tp.partition:
            failed = prep[4]
        else:
            check = self._check if (self.cfg.fault_rate > 0 or self._fail_seats) else None
            failed = decide_run(st, tp.topic, tp.partition, self.partitions, recs, self.cfg.ttl_ms,
                                check=check)
        if failed is None or failed.applied:
            st.flush()
        if failed is not None:
            raise failed

    def _dead_letter(self, db, tp, rec, error: str, attempts: int) -> None:
        """The processor's dead-letter hook: a ``dead_letters`` row and the
        dead letter in the outbox, in the transaction that moves past it."""
        cfg, rm = self.cfg, self.rm
        if rm.db is not db:         # the partition's own database
            rm = ReadModel(db, outcomes_topic=cfg.outcomes_topic)
        headers = dl.headers_for(tp.topic, tp.partition, rec.offset, error, attempts)
        rm.discard_counts()
        rm.partition = tp.partition
        rm.add_dead_letter(tp.topic, tp.partition, rec.offset, error,
                           publish=(cfg.dlq_topic,
                                    None if rec.key is None else bytes(rec.key),
                                    None if rec.value is None else bytes(rec.value), headers))
        rm.flush_counts()

    # ------------------------------------------------------ outbox, timers

    async def publish_outbox(self, owned: list, limit: int = 500) -> int:
        """Publish the outbox rows of the partitions this worker owns, in order,
        and delete them once acknowledged. Returns how many were published."""
        n = 0
        for db, parts in self._owned_dbs(owned) if owned else ():
            n += await self._publish_outbox(db, parts, limit)
        return n

    async def _publish_outbox(self, db, owned: list, limit: int) -> int:
        marks = ",".join("?" * len(owned))
        rows = db.execute(
            f"SELECT seq, topic, key, value, headers, part FROM outbox WHERE part IN ({marks}) "
            f"ORDER BY seq LIMIT {int(limit)}", owned).fetchall()
        if not rows:
            return 0
        futs = []
        for _seq, topic, key, value, headers, part in rows:
            if topic == self.cfg.outcomes_topic and key is None:     # a run's outcomes, packed
                pairs = self.state.outcomes_for((part, _seq), value)
                futs += await self.out_p.send_batch(pairs, per_batch=True)
                if self.seats_p is not None:    # then the seats they name, as they are now
                    futs += await publish_seats(self.seats_p, self.state, [k for k, _v in pairs])
            elif topic == self.cfg.outcomes_topic:
                futs.append(await self.out_p.send(value, key=key))
            else:
                hs = [(k, v.encode()) for k, v in json.loads(headers or "[]")]
                futs.append(await self.dlq_p.send(value, key=key, headers=hs))
        await self.out_p.flush()
        await self.dlq_p.flush()
        if self.seats_p is not None:
            await self.seats_p.flush()
        _raise_failed(futs)
        # The rows selected are every owned row up to the last seq: one statement
        # (an executemany outside a transaction would commit once per row).
        db.execute(f"DELETE FROM outbox WHERE part IN ({marks}) AND seq <= ?",
                   (*owned, rows[-1][0]))
        published = len(futs)
        self.metrics["published"] += published
        return published

    async def fire_timers(self, owned: list, now_ms: int | None = None, limit: int = 5000) -> int:
        """Append ReservationExpired for every due, unfired timer of the owned
        partitions, then mark them fired. Returns how many fired."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        n = 0
        for db, parts in self._owned_dbs(owned) if owned else ():
            n += await self._fire_timers(db, parts, now_ms, limit)
        return n

    async def _fire_timers(self, db, owned: list, now_ms: int, limit: int) -> int:
        marks = ",".join("?" * len(owned))
        rows = db.execute(
            f"SELECT seat_id, booking_id, part, deadline_ms FROM timers WHERE part IN ({marks}) "
            f"AND fired=0 AND deadline_ms<=? LIMIT {int(limit)}", (*owned, now_ms)).fetchall()
        if not rows:
            return 0
        futs = []
        for seat, booking, part, deadline in rows:
            e = ev.reservation_expired(booking, seat, deadline, occurred_ms=now_ms)
            futs.append(await self.in_p.send(e, key=seat.encode(), partition=part))
        await self.in_p.flush()
        _raise_failed(futs)
        with _transaction(db):
            db.executemany("UPDATE timers SET fired=1 WHERE seat_id=? AND booking_id=? "
                           "AND deadline_ms=?", [(s, b, d) for s, b, _p, d in rows])
        self.metrics["timers_fired"] += len(rows)
        return len(rows)


def _create_partition_db(path: str) -> None:
    """Make a partition's database whole (schema, offsets table, WAL) under
    another name, then link it into place: a reader never finds the file
    without its tables, and of two workers creating it at once one wins."""
    tmp = f"{path}.{os.getpid()}.new"
    _unlink_db(tmp)
    db = connect(tmp)
    us.SQLiteOffsetStore(db)            # its offsets table, for readers' views from the start
    db.close()
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        _unlink_db(tmp)


@contextlib.asynccontextmanager
async def _maybe_producer(log, topic: str | None):
    """A Producer of ``topic``, or None when there is no topic."""
    if topic is None:
        yield None
        return
    async with us.Producer(log, topic) as p:
        yield p


class _transaction:
    """``with _transaction(db):`` one BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)
    on an autocommit connection."""

    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, et, e, tb):
        self.db.execute("COMMIT" if et is None else "ROLLBACK")


def _writer(db, nbytes: int):
    """``db`` set up for a worker's writes: SQLite checkpoints (and syncs)
    inside the COMMIT that takes the WAL past ``wal_autocheckpoint`` pages,
    here WAL_BACKSTOP_FACTOR times ``nbytes`` of the file's pages; at SQLite's
    default (1,000 pages of 4 KiB) one worker over the 305k bench log made
    101 fdatasyncs (0.53 s), 29 (0.30 s) at 16,384. The worker's
    WalCheckpointer checkpoints on its own thread before: this is the
    backstop for when it falls behind."""
    page = db.execute("PRAGMA page_size").fetchone()[0]
    db.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP_FACTOR * max(1, int(nbytes) // page)}")
    return db


def _raise_failed(futs) -> None:
    """Raise the first delivery error among flushed delivery futures."""
    for f in futs:
        e = f.exception()
        if e is not None:
            raise e


#: The worker's young-generation collection threshold (allocations less
#: deallocations of tracked objects between young collections; Python's default 700).
_GC_YOUNG = int(os.environ.get("BOOKING_GC_YOUNG", 50_000))


def _freeze_survivors(phase: str, info: dict) -> None:
    """A gc callback: after a full collection, move its survivors (just found
    reachable) out of the collector's sight (``gc.freeze``). The worker's
    in-memory state is millions of long-lived objects; without this every
    full collection walks all of them again (measured on the 1M-event log's
    decisions: 14-15k events/s with the collector as it is, 18k without it,
    under load). Survivors that later become cyclic garbage are not
    collected; the state's objects hold no cycles."""
    if phase == "stop" and info.get("generation") == 2:
        gc.freeze()


def run_worker(cfg: ServiceConfig | dict) -> None:
    """Entry point of a worker process: run until SIGTERM or SIGINT."""
    # A signal that comes while the worker is still starting (before the loop
    # has its handlers) stops it as cleanly as one that comes later; one that
    # a parent kept blocked across the fork is delivered here, once handled.
    early: list = []
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, frame: early.append(signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    if isinstance(cfg, dict):
        cfg = ServiceConfig(**cfg)
    gc.callbacks.append(_freeze_survivors)
    # A run allocates thousands of short-lived containers (its records, rows,
    # outcome pairs); at the default threshold of 700 the young collections
    # walk those still alive, promote them, and so bring on full collections.
    gc.set_threshold(_GC_YOUNG, 10, 10)

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, stop.set)
        if early:
            stop.set()
        await BookingService(cfg).run(stop)

    asyncio.run(main())


# ---------------------------------------------------------------- rebuild

def committed_offsets(db, group: str, topic: str) -> dict:
    """{partition: committed offset} of the service's group in a read model."""
    out: dict = {}
    for d in read_model_dbs(db):
        try:
            out.update(d.execute("SELECT part, next_offset FROM unstoppable_offsets WHERE grp=? "
                                 "AND topic=?", (group, topic)).fetchall())
        except sqlite3.OperationalError:        # no offsets table yet
            pass
    return out


def _unlink_db(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)


def config_dict(cfg: ServiceConfig) -> dict:
    """A ServiceConfig as a plain dict (for worker processes)."""
    return asdict(cfg)

