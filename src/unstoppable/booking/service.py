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

    BEGIN IMMEDIATE
      for each record: decode, check, machine.apply -> read-model rows,
                       outcomes into the outbox, timers set or cleared
      SQLiteOffsetStore.save(partition: last offset + 1)
    COMMIT                         <- effects and offset, atomically
    publish the outbox (outcomes, dead letters), then delete what was published
    fire due timers: append ReservationExpired to the input topic, mark fired

Exactly-once effects: the read model, the timers, the outbox and the
committed offset change in one SQLite transaction. A worker killed at any
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
import json
import os
import signal
import time
import zlib
from dataclasses import asdict, dataclass, field

import unstoppable as us
from unstoppable._core.hashing import xxh64_partition
from unstoppable.booking import deadletters as dl
from unstoppable.booking import events as ev
from unstoppable.booking.logio import LogReader, close_log, ensure_topic, open_log
from unstoppable.booking.machine import InvalidEventError, apply
from unstoppable.booking.readmodel import ReadModel, connect
from unstoppable.client import TopicPartition

__all__ = ["ServiceConfig", "BookingService", "InjectedFault", "create_topics", "run_worker",
           "rebuild", "committed_offsets", "config_dict", "decode_checked"]


class _Fenced(Exception):
    """Another owner of the partition committed up to ``committed``, past the
    first record of the run being applied."""

    def __init__(self, committed: int):
        super().__init__(committed)
        self.committed = committed


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
    batch: int = 1000                  # records per getmany (and per transaction, at most)
    timer_interval_ms: float = 50.0    # longest wait for records before timers are checked
    fault_rate: float = 0.0            # share of records whose first attempt fails (demo)
    fail_seats: tuple = ()             # seats whose records always fail (tests)
    status_path: str | None = None     # JSON file the worker rewrites with its metrics
    membership_poll_ms: float = 100.0
    log_options: dict = field(default_factory=dict)


async def create_topics(log, cfg: ServiceConfig, partitions: int = 8, *,
                        replicas: int | None = None) -> None:
    """Create the service's topics (if missing) in ``log`` (``replicas``:
    copies of each partition on JetStream)."""
    for name, n in ((cfg.topic, partitions), (cfg.outcomes_topic, partitions), (cfg.dlq_topic, 1)):
        await ensure_topic(log, name, n, replicas=replicas)


def _faulty(cfg: ServiceConfig, partition: int, offset: int) -> bool:
    if cfg.fault_rate <= 0:
        return False
    h = zlib.crc32(b"%d:%d" % (partition, offset))
    return (h % 1_000_000) < cfg.fault_rate * 1_000_000


def decode_checked(value, partition: int, partitions: int):
    """Decode an input record and check it belongs where it is: events of a
    seat must be on the seat's partition, or two workers could decide on one
    seat at once. Raises ValueDecodeError or InvalidEventError."""
    if value is None:
        raise InvalidEventError("record has no value")
    event = ev.CODEC.decode(value)
    seat = ev.seat_of(event)
    if not seat:
        raise InvalidEventError(f"event {ev.kind_of(event)!r} has no seat_id")
    home = xxh64_partition(seat.encode(), partitions)
    if home != partition:
        raise InvalidEventError(f"event for seat {seat!r} is on partition {partition}, but the "
                                f"seat's events belong on partition {home}")
    return event


class BookingService:
    """BookingService(cfg)

    One worker of the booking service's consumer group. ``await run(stop)``
    works until ``stop`` (an asyncio.Event) is set; any number of workers (in
    any number of processes) may run against the same log and database.
    """

    def __init__(self, cfg: ServiceConfig):
        self.cfg = cfg
        self.metrics = {"pid": os.getpid(), "handled": 0, "transactions": 0, "retries": 0,
                        "dead_letters": 0, "published": 0, "timers_fired": 0, "fenced": 0,
                        "assigned": [], "started": time.time(), "updated": 0.0}
        self._fail_seats = frozenset(cfg.fail_seats)

    # ------------------------------------------------------------------ run

    async def run(self, stop: asyncio.Event, log=None) -> None:
        cfg = self.cfg
        own_log = log is None
        log = await open_log(cfg.log_path, **cfg.log_options) if own_log else log
        db = None
        try:
            async with LogReader(log) as reader:
                self.partitions = await reader.partitions(cfg.topic)
            db = self.open_db()
            async with us.Consumer(log, cfg.topic, group=cfg.group, offset_store=self.store,
                                   max_poll_records=cfg.batch,
                                   membership_poll_ms=cfg.membership_poll_ms) as c, \
                    us.Producer(log, cfg.outcomes_topic) as self.out_p, \
                    us.Producer(log, cfg.topic, value_serializer=ev.CODEC) as self.in_p, \
                    us.Producer(log, cfg.dlq_topic, acks="fsync") as self.dlq_p:
                self.consumer = c
                last_status = 0.0
                while not stop.is_set():
                    got = await c.getmany(timeout_ms=cfg.timer_interval_ms)
                    for tp, recs in got.items():
                        await self._handle(tp, recs)
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
            if db is not None:
                db.close()
            if own_log:
                await close_log(log)

    def open_db(self):
        """Open the read model (``db``, ``rm``) and the offset store kept in
        it (``store``), as :meth:`run` does; returns the connection."""
        self.db = connect(self.cfg.db_path)
        self.rm = ReadModel(self.db, outcomes_topic=self.cfg.outcomes_topic)
        self.store = us.SQLiteOffsetStore(self.db)
        self._committed_sql = (f"SELECT next_offset FROM {self.store.table} "
                               "WHERE grp=? AND topic=? AND part=?")
        return self.db

    def _write_status(self) -> None:
        self.metrics["updated"] = time.time()
        tmp = f"{self.cfg.status_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.metrics, f)
        os.replace(tmp, self.cfg.status_path)

    # ------------------------------------------------------------- handling

    def _apply_one(self, tp, rec, attempt: int) -> None:
        cfg = self.cfg
        event = decode_checked(rec.value, tp.partition, self.partitions)
        if attempt == 0 and _faulty(cfg, tp.partition, rec.offset):
            raise InjectedFault(f"injected transient failure at {tp.topic}/{tp.partition}/{rec.offset}")
        if self._fail_seats and ev.seat_of(event) in self._fail_seats:
            raise InjectedFault(f"seat {ev.seat_of(event)!r} is configured to fail")
        apply(self.rm, event, rec.timestamp, cfg.ttl_ms, f"{tp.topic}/{tp.partition}/{rec.offset}")

    def _fence(self, tp, first: int) -> None:
        """Inside the transaction: raise _Fenced (after rolling back) when the
        committed offset is past ``first``, the offset this run starts at."""
        row = self.db.execute(self._committed_sql, (self.cfg.group, tp.topic, tp.partition)).fetchone()
        if row is not None and row[0] > first:
            self.db.execute("ROLLBACK")
            raise _Fenced(row[0])

    def _try_run(self, tp, recs, attempt: int = 0):
        """Apply ``recs`` and commit them with the offset after the last, in one
        transaction. Returns None, or the (index, exception) of the first
        failure, in which case nothing was committed. Raises _Fenced when
        another owner committed past the first record."""
        db, rm = self.db, self.rm
        rm.partition = tp.partition
        db.execute("BEGIN IMMEDIATE")
        self._fence(tp, recs[0].offset)
        try:
            for i, r in enumerate(recs):
                try:
                    self._apply_one(tp, r, attempt)
                except Exception as e:
                    db.execute("ROLLBACK")
                    rm.discard_counts()
                    return i, e
            self.store.save({tp: recs[-1].offset + 1}, group=self.cfg.group)
            rm.flush_counts()
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            rm.discard_counts()
            raise
        self.metrics["handled"] += len(recs)
        self.metrics["transactions"] += 1
        return None

    async def _handle(self, tp, recs) -> None:
        while recs:
            try:
                await self._handle_run(tp, recs)
                return
            except _Fenced as f:
                # Someone else applied the records below f.committed: skip
                # them (and seek past them when this run held no more).
                self.metrics["fenced"] += 1
                recs = [r for r in recs if r.offset >= f.committed]
                c = getattr(self, "consumer", None)
                if not recs and c is not None and tp in c.assignment() and c.position(tp) < f.committed:
                    c.seek(tp, f.committed)

    async def _handle_run(self, tp, recs) -> None:
        while recs:
            failed = self._try_run(tp, recs)
            if failed is None:
                return
            k, err = failed
            if k > 0:
                # The records before the failing one succeeded: commit them
                # (if one of them fails now, that was transient: recurse).
                if self._try_run(tp, recs[:k]) is not None:
                    await self._handle_run(tp, recs[:k])
            await self._one(tp, recs[k], 1, err)
            recs = recs[k + 1:]

    async def _one(self, tp, rec, first_attempt: int, err) -> None:
        cfg = self.cfg
        for attempt in range(first_attempt, cfg.max_attempts):
            if attempt > 0:
                self.metrics["retries"] += 1
                await asyncio.sleep(cfg.backoff_ms / 1000.0 * (2 ** (attempt - 1)))
            failed = self._try_run(tp, [rec], attempt)
            if failed is None:
                return
            err = failed[1]
        self._dead_letter(tp, rec, err, max(cfg.max_attempts, first_attempt))

    def _dead_letter(self, tp, rec, err, attempts: int) -> None:
        cfg, db, rm = self.cfg, self.db, self.rm
        error = f"{type(err).__name__}: {err}"
        headers = dl.headers_for(tp.topic, tp.partition, rec.offset, error, attempts)
        rm.partition = tp.partition
        db.execute("BEGIN IMMEDIATE")
        self._fence(tp, rec.offset)
        try:
            rm.add_dead_letter(tp.topic, tp.partition, rec.offset, error,
                               publish=(cfg.dlq_topic,
                                        None if rec.key is None else bytes(rec.key),
                                        None if rec.value is None else bytes(rec.value), headers))
            self.store.save({tp: rec.offset + 1}, group=cfg.group)
            rm.flush_counts()
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            rm.discard_counts()
            raise
        self.metrics["dead_letters"] += 1

    # ------------------------------------------------------ outbox, timers

    async def publish_outbox(self, owned: list, limit: int = 20000) -> int:
        """Publish the outbox rows of the partitions this worker owns, in order,
        and delete them once acknowledged. Returns how many were published."""
        if not owned:
            return 0
        marks = ",".join("?" * len(owned))
        rows = self.db.execute(
            f"SELECT seq, topic, key, value, headers FROM outbox WHERE part IN ({marks}) "
            f"ORDER BY seq LIMIT {int(limit)}", owned).fetchall()
        if not rows:
            return 0
        futs = []
        for _seq, topic, key, value, headers in rows:
            if topic == self.cfg.outcomes_topic:
                futs.append(await self.out_p.send(value, key=key))
            else:
                hs = [(k, v.encode()) for k, v in json.loads(headers or "[]")]
                futs.append(await self.dlq_p.send(value, key=key, headers=hs))
        await self.out_p.flush()
        await self.dlq_p.flush()
        _raise_failed(futs)
        self.db.executemany("DELETE FROM outbox WHERE seq=?", [(r[0],) for r in rows])
        self.metrics["published"] += len(rows)
        return len(rows)

    async def fire_timers(self, owned: list, now_ms: int | None = None, limit: int = 5000) -> int:
        """Append ReservationExpired for every due, unfired timer of the owned
        partitions, then mark them fired. Returns how many fired."""
        if not owned:
            return 0
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        marks = ",".join("?" * len(owned))
        rows = self.db.execute(
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
        self.db.executemany("UPDATE timers SET fired=1 WHERE seat_id=? AND booking_id=? "
                            "AND deadline_ms=?", [(s, b, d) for s, b, _p, d in rows])
        self.metrics["timers_fired"] += len(rows)
        return len(rows)


def _raise_failed(futs) -> None:
    """Raise the first delivery error among flushed delivery futures."""
    for f in futs:
        e = f.exception()
        if e is not None:
            raise e


def run_worker(cfg: ServiceConfig | dict) -> None:
    """Entry point of a worker process: run until SIGTERM or SIGINT."""
    if isinstance(cfg, dict):
        cfg = ServiceConfig(**cfg)

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, stop.set)
        await BookingService(cfg).run(stop)

    asyncio.run(main())


# ---------------------------------------------------------------- rebuild

def committed_offsets(db, group: str, topic: str) -> dict:
    """{partition: committed offset} of the service's group in a read model."""
    try:
        rows = db.execute("SELECT part, next_offset FROM unstoppable_offsets WHERE grp=? AND topic=?",
                          (group, topic)).fetchall()
    except Exception:
        return {}
    return dict(rows)


async def rebuild(log, cfg: ServiceConfig, db_path, *, progress=None, chunk: int = 5000) -> ReadModel:
    """await rebuild(log, cfg, db_path, *, progress=None) -> ReadModel

    Replay the input topic from offset 0 into a fresh read model at
    ``db_path`` (which must not exist), with the same state machine and the
    same decisions about dead letters (taken from the dead-letter topic), and
    return it. It must equal the live read model once that has caught up:
    that is the event-sourcing check. ``log`` is a ``us.Log`` or a
    JetStreamLog; records are read through the backend interface.
    ``progress(done, total)`` is called as records are replayed.
    """
    if os.path.exists(db_path):
        raise FileExistsError(f"{db_path} exists; rebuild writes a fresh read model")
    dead = {}
    async with LogReader(log) as reader:
        n = await reader.partitions(cfg.topic)
        for d in await dl.read_dead_letters(log, cfg.dlq_topic, missing_ok=True):
            if d.origin_topic == cfg.topic:
                dead[(d.origin_partition, d.origin_offset)] = d.error
        db = connect(db_path)
        rm = ReadModel(db, outcomes_topic=cfg.outcomes_topic)
        store = us.SQLiteOffsetStore(db)
        ranges = await reader.ranges(cfg.topic)
        total, done = sum(e for _s, e in ranges), 0
        for p, (start, end) in enumerate(ranges):
            rm.partition = p
            async for recs in reader.chunks(cfg.topic, p, start, end, chunk):
                db.execute("BEGIN IMMEDIATE")
                for r in recs:
                    origin = f"{cfg.topic}/{p}/{r.offset}"
                    if (p, r.offset) in dead:
                        rm.add_dead_letter(cfg.topic, p, r.offset, dead[(p, r.offset)])
                        continue
                    event = decode_checked(r.value, p, n)
                    apply(rm, event, r.timestamp, cfg.ttl_ms, origin)
                store.save({TopicPartition(cfg.topic, p): recs[-1].offset + 1}, group=cfg.group)
                rm.flush_counts()
                db.execute("COMMIT")
                done += len(recs)
                if progress is not None:
                    progress(done, total)
    db.execute("DELETE FROM outbox")   # a rebuild publishes nothing
    return rm


def config_dict(cfg: ServiceConfig) -> dict:
    """A ServiceConfig as a plain dict (for worker processes)."""
    return asdict(cfg)

