"""The exactly-once processor: apply a run of records and the offset after it
in one SQLite transaction.

A consumer that keeps its state in SQLite gets exactly-once effects by
writing its effects and its committed offset in the same transaction
(``SQLiteOffsetStore``). :class:`Processor` does that a run at a time::

    import sqlite3, unstoppable as us

    db = sqlite3.connect("app.db", isolation_level=None)     # autocommit: the processor owns BEGIN/COMMIT
    db.execute("CREATE TABLE IF NOT EXISTS totals (k TEXT PRIMARY KEY, n INTEGER)")
    store = us.SQLiteOffsetStore(db)

    def handle(db, tp, records):                             # inside the processor's transaction
        db.executemany("INSERT INTO totals VALUES (?, 1) "
                       "ON CONFLICT (k) DO UPDATE SET n = n + 1",
                       [(bytes(r.key).decode(),) for r in records])

    async with us.Consumer(log, "clicks", group="totals", offset_store=store) as c:
        await us.Processor(c, store, handle, group="totals").run(stop)

Per run of one partition's records (as ``getmany`` hands them out)::

    BEGIN IMMEDIATE
      fence: the committed offset must not be past the run's first record
      handler(db, tp, records)
      SQLiteOffsetStore.save(tp: last offset + 1)
    COMMIT

Fencing: a run that starts below the partition's committed offset (another
owner of the partition committed those records: a JetStream lease that
lapsed under a stalled worker, say) is rolled back; the records below the
committed offset are dropped and the consumer seeks past them. Two
processors briefly holding one partition still apply each record once.

Failures: when the handler raises, the transaction is rolled back. If it
raised :class:`RecordFailed` naming the index of the failing record, the
records before it are applied again and committed; otherwise the run is
split in halves until the failing record is alone. The failing record is
then retried alone ``max_attempts - 1`` more times with exponential backoff
(``backoff_ms``, doubling), and when every attempt failed it is
dead-lettered: ``dead_letter(db, tp, record, error, attempts)`` runs in the
same transaction as the offset past it (by default a row of the
``unstoppable_dead_letters`` table: origin topic, partition, offset, key,
value, error, attempts), and the partition moves on. Nothing is skipped
silently and nothing is applied twice.

The processor owns the transaction: a handler that runs COMMIT, ROLLBACK
or BEGIN (``db.commit()``, ``with db:``) is stopped by SQLite's authorizer
and :class:`~unstoppable.errors.HandlerTransactionError` is raised from
:meth:`Processor.process`; nothing of that run is committed.

A database locked by another writer (``BEGIN IMMEDIATE`` or ``COMMIT``
failing with SQLITE_BUSY after the connection's busy timeout) is retried
with backoff, without limit, doubling up to ``max_lock_backoff_ms``.

State kept in memory (``state=``): a handler that decides against state
it would otherwise read from the database on every run (the rows of the
partition's entities) can keep it in memory while it owns the partition.
``state`` is an object with ``load(db, tp)`` and ``drop(tp)``. The
processor remembers the committed offset the state of each partition
stands for, and inside each transaction, after the fence, calls
``load(db, tp)`` when it holds none that matches the committed offset: the
first run after taking the partition over, and after another owner
committed records of it meanwhile. It calls ``drop(tp)`` when the state may
no longer match what is committed: after a rolled-back handler (unless the
handler raised ``RecordFailed(applied=True)``, which says its state holds
exactly ``records[:index]``) and for partitions no longer assigned
(:meth:`Processor.release_unassigned`, which :meth:`Processor.run` calls
after each poll). So the state is always that of the committed offset when
the handler runs.

Deciding outside the write lock (``prepare=``, with ``state=``): SQLite has
one writer at a time, so a handler that decides inside the transaction
holds every other worker of the database back while it thinks.
``prepare(tp, records)`` is called before BEGIN IMMEDIATE, when the
partition's state is loaded, to decide against the in-memory state and stage
the writes; the handler then only writes them inside the transaction. If
the transaction finds the state stale (another owner committed meanwhile),
the processor drops it before the handler runs (``drop`` must discard what
``prepare`` staged) and loads it afresh; the handler must then decide
itself. A run that is fenced off drops the state too. ``prepare`` must not touch the database;
an exception from it drops the state, and the handler decides itself.

A database per partition: ``store`` may be a
:class:`~unstoppable.PartitionedSQLiteOffsetStore`, which gives each
partition its own connection (``store.store_for(tp).db``) holding that
partition's effects and committed offset. Each run's transaction is then
on its partition's connection, and that connection is the ``db`` the
handler, ``dead_letter`` and ``state.load`` are given; processors (in other
processes) working on different partitions take different write locks.
Everything above holds per partition.

It runs on any backend the Consumer runs on (the embedded log, JetStream).
"""
from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Callable

from unstoppable.errors import HandlerTransactionError

__all__ = ["Processor", "RecordFailed", "DEAD_LETTER_SCHEMA"]

# sqlite3 authorizer action code for BEGIN/COMMIT/ROLLBACK (SQLITE_TRANSACTION).
_SQLITE_TRANSACTION = 22
_UNSET = object()

DEAD_LETTER_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    topic TEXT NOT NULL, part INTEGER NOT NULL, off INTEGER NOT NULL,
    key BLOB, value BLOB, error TEXT NOT NULL, attempts INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL, PRIMARY KEY (topic, part, off)) WITHOUT ROWID
"""


class RecordFailed(Exception):
    """RecordFailed(index, cause)

    Raised by a handler to say that ``records[index]`` failed with ``cause``
    (and the records before it did not). The processor then commits
    ``records[:index]`` and retries the failing record alone. By default the
    transaction is rolled back and the handler runs again on
    ``records[:index]``; with ``applied=True`` the handler says the effects of
    ``records[:index]``, and nothing of the failing record, are already
    written in the transaction, which is then committed as it is (with the
    offset of the failing record). A handler that raises anything else gets
    the failing record found by halving the run.
    """

    def __init__(self, index: int, cause: BaseException, *, applied: bool = False):
        super().__init__(index, cause)
        self.index = index
        self.cause = cause
        self.applied = applied

    def __str__(self):
        return f"record {self.index} of the run failed: {type(self.cause).__name__}: {self.cause}"


class _Fenced(Exception):
    """Another owner of the partition committed up to ``committed``, past the
    first record of the run being applied."""

    def __init__(self, committed: int):
        super().__init__(committed)
        self.committed = committed


def _is_locked(e: sqlite3.OperationalError) -> bool:
    m = str(e).lower()
    return "locked" in m or "busy" in m


class Processor:
    """Processor(consumer, store, handler, *, group, max_attempts=4, backoff_ms=10.0,
    dead_letter=None, dead_letter_table="unstoppable_dead_letters")

    Applies runs of records with ``handler(db, tp, records)`` and commits each
    run's effects with the offset after it in one SQLite transaction of
    ``store``'s connection (``store`` is the consumer's
    :class:`~unstoppable.SQLiteOffsetStore`, or a
    :class:`~unstoppable.PartitionedSQLiteOffsetStore` for a database per
    partition; ``group`` its group). The
    connection must be in autocommit mode (``isolation_level=None``): the
    processor issues BEGIN IMMEDIATE and COMMIT itself.

    With ``arrow=True`` the handler is called as ``handler(db, tp, records,
    columns)``, ``columns`` being the run as a ``pyarrow.RecordBatch``
    (partition, offset, timestamp, key, value) for vectorized handlers.

    ``dead_letter(db, tp, record, error: str, attempts)`` replaces the default
    dead-letter row (it runs inside the transaction that moves past the record).
    ``state`` (an object with ``load(db, tp)`` and ``drop(tp)``) is the
    handler's in-memory state per partition, loaded and dropped as the
    module docstring says; ``prepare(tp, records)`` decides a run against it
    before the write lock is taken.
    ``metrics`` counts handled records, transactions, retries, dead letters,
    fenced runs, lock waits and state loads. See the module docstring for the semantics.
    """

    def __init__(self, consumer, store, handler: Callable, *, group: str,
                 max_attempts: int = 4, backoff_ms: float = 10.0,
                 dead_letter: Callable | None = None,
                 dead_letter_table: str = "unstoppable_dead_letters",
                 lock_backoff_ms: float = 5.0, max_lock_backoff_ms: float = 1000.0,
                 arrow: bool = False, state=None, prepare: Callable | None = None):
        self._partitioned = callable(getattr(store, "store_for", None))
        self._dbs: dict = {}           # tp -> its connection, once found fit (partitioned store)
        db = None if self._partitioned else getattr(store, "db", None)
        if not self._partitioned:
            if not isinstance(db, sqlite3.Connection):
                raise TypeError(f"store must be an SQLiteOffsetStore or a PartitionedSQLiteOffsetStore "
                                f"(its connection holds the transaction), got {type(store).__name__}")
            _check_autocommit(db)
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        if not group or not isinstance(group, str):
            raise ValueError(f"group must be the consumer's group name, got {group!r}")
        if state is not None and not (callable(getattr(state, "load", None))
                                      and callable(getattr(state, "drop", None))):
            raise TypeError(f"state must have load(db, tp) and drop(tp) methods, "
                            f"got {type(state).__name__}")
        if prepare is not None and state is None:
            raise ValueError("prepare needs state: it decides against the in-memory state")
        self.state = state
        self.prepare = prepare
        self._state_at: dict = {}      # tp -> the committed offset (None: none) the state stands for
        self.consumer = consumer
        self.store = store
        self.db = db
        self.handler = handler
        self.group = group
        self.max_attempts = max_attempts
        self.backoff_ms = float(backoff_ms)
        self.lock_backoff_ms = float(lock_backoff_ms)
        self.max_lock_backoff_ms = float(max_lock_backoff_ms)
        self.metrics = {"handled": 0, "transactions": 0, "retries": 0, "dead_letters": 0,
                        "fenced": 0, "lock_waits": 0, "state_loads": 0}
        self._committed_sql = (f"SELECT next_offset FROM {store.table} "
                               "WHERE grp=? AND topic=? AND part=?")
        if dead_letter is None:
            if not dead_letter_table.replace("_", "").isalnum():
                raise ValueError(f"table name {dead_letter_table!r} must be letters, digits and underscores")
            self.dead_letter_table = dead_letter_table
            if db is not None:
                db.execute(DEAD_LETTER_SCHEMA.format(table=dead_letter_table))
            dead_letter = self._default_dead_letter
        else:
            self.dead_letter_table = None
        self.dead_letter = dead_letter
        self._tx_violation: str | None = None
        if arrow:
            try:
                import pyarrow as pa
            except ImportError as e:      # pragma: no cover - pyarrow is installed in the tests
                raise ImportError("Processor(arrow=True) needs pyarrow "
                                  "(pip install 'unstoppable[arrow]')") from e
            self._pa = pa
            self._schema = pa.schema([
                pa.field("partition", pa.int32(), nullable=False),
                pa.field("offset", pa.int64(), nullable=False),
                pa.field("timestamp", pa.timestamp("ms"), nullable=False),
                pa.field("key", pa.binary()), pa.field("value", pa.binary())])
        self.arrow = arrow

    # ------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event | None = None, *, timeout_ms: float = 100.0,
                  max_records: int | None = None, idle: Callable | None = None) -> None:
        """await run(stop=None, *, timeout_ms=100, max_records=None, idle=None)

        Fetch runs with ``consumer.getmany`` and :meth:`process` them until
        ``stop`` is set (forever without one). ``idle()`` (a coroutine
        function), when given, is awaited after each poll, for work such as
        publishing an outbox."""
        while stop is None or not stop.is_set():
            got = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
            self.release_unassigned()
            for tp, recs in got.items():
                await self.process(tp, recs)
            if idle is not None:
                await idle()

    def release_unassigned(self) -> None:
        """Drop the state (``state=``) of partitions the consumer no longer owns."""
        if self.state is None or not self._state_at:
            return
        owned = self.consumer.assignment() if self.consumer is not None else set()
        for tp in [tp for tp in self._state_at if tp not in owned]:
            self._forget(tp)

    def _forget(self, tp) -> None:
        if self.state is not None:
            self._state_at.pop(tp, None)
            self.state.drop(tp)

    async def process(self, tp, records: list) -> None:
        """Apply ``records`` (one partition's, in offset order) exactly once:
        commit what applies, retry and then dead-letter what keeps failing,
        skip what another owner already committed."""
        recs = list(records)
        while recs:
            try:
                await self._process(tp, recs)
                return
            except _Fenced as f:
                # Someone else applied the records below f.committed: skip
                # them (and seek past them when this run held no more).
                self.metrics["fenced"] += 1
                recs = [r for r in recs if r.offset >= f.committed]
                c = self.consumer
                if (not recs and c is not None and tp in c.assignment()
                        and c.position(tp) < f.committed):
                    c.seek(tp, f.committed)

    async def _process(self, tp, recs: list) -> None:
        while recs:
            failed = await self._attempt(tp, recs)
            if failed is None:
                return
            k, err, committed = failed
            if committed:                       # the prefix is committed already
                await self._retry_one(tp, recs[k], err)
                recs = recs[k + 1:]
                continue
            if k is None:                       # not located: halve the run
                if len(recs) == 1:
                    k = 0
                else:
                    half = len(recs) // 2
                    await self._process(tp, recs[:half])
                    recs = recs[half:]
                    continue
            if k > 0:
                # The records before the failing one succeeded: commit them
                # (if one of them fails now, that was transient: recurse).
                await self._process(tp, recs[:k])
            await self._retry_one(tp, recs[k], err)
            recs = recs[k + 1:]

    async def _retry_one(self, tp, rec, err) -> None:
        for attempt in range(1, self.max_attempts):
            self.metrics["retries"] += 1
            await asyncio.sleep(self.backoff_ms / 1000.0 * (2 ** (attempt - 1)))
            failed = await self._attempt(tp, [rec])
            if failed is None:
                return
            err = failed[1]
        await self._transaction(tp, rec.offset, lambda: rec.offset + 1,
                                self._dead_letter_body(tp, rec, err))
        self.metrics["dead_letters"] += 1

    def _dead_letter_body(self, tp, rec, err):
        error = f"{type(err).__name__}: {err}"

        def body():
            self.dead_letter(self._db(tp), tp, rec, error, self.max_attempts)
        return body

    def _db(self, tp) -> sqlite3.Connection:
        """The connection holding ``tp``'s effects and offset."""
        if not self._partitioned:
            return self.db
        db = self.store.store_for(tp).db
        if self._dbs.get(tp) is not db:     # a partition's connection is checked once
            _check_autocommit(db)
            if self.dead_letter_table is not None:
                db.execute(DEAD_LETTER_SCHEMA.format(table=self.dead_letter_table))
            self._dbs[tp] = db
        return db

    def _default_dead_letter(self, db, tp, rec, error: str, attempts: int) -> None:
        db.execute(f"INSERT OR REPLACE INTO {self.dead_letter_table} VALUES (?,?,?,?,?,?,?,?)",
                   (tp.topic, tp.partition, rec.offset,
                    None if rec.key is None else bytes(rec.key),
                    None if rec.value is None else bytes(rec.value),
                    error, attempts, int(rec.timestamp)))

    async def _attempt(self, tp, recs):
        """One transaction applying ``recs``: None when committed, else
        ``(index or None, exception, prefix committed)``: with the last true,
        ``recs[:index]`` were committed (RecordFailed(applied=True)), else nothing was."""
        failure = []

        def next_offset():
            # The offset after what commits: the run, or a prefix the handler applied.
            return recs[failure[0][0]].offset if failure else recs[-1].offset + 1

        if self.prepare is not None and tp in self._state_at:
            try:
                self.prepare(tp, recs)
            except Exception:
                self._forget(tp)

        def body():
            try:
                if self.arrow:
                    self.handler(self._db(tp), tp, recs, self.columns(tp, recs))
                else:
                    self.handler(self._db(tp), tp, recs)
            except HandlerTransactionError:
                raise
            except RecordFailed as e:
                if not 0 <= e.index < len(recs):
                    raise ValueError(f"the handler raised RecordFailed({e.index}) for a run of "
                                     f"{len(recs)} records") from e
                failure.append((e.index, e.cause, e.applied and e.index > 0, e.applied))
            except Exception as e:
                failure.append((None, e, False, False))
        await self._transaction(tp, recs[0].offset, next_offset, body,
                                abort=lambda: bool(failure) and not failure[0][2],
                                state_kept=lambda: bool(failure) and failure[0][3])
        if failure:
            k, err, committed, _applied = failure[0]
            if committed:
                self.metrics["handled"] += k
            return failure[0][:3]
        self.metrics["handled"] += len(recs)
        return None

    async def _transaction(self, tp, first: int, next_offset, body, abort=lambda: False,
                           state_kept=lambda: False):
        """BEGIN IMMEDIATE, fence, (load the state), body(), save ``next_offset()``,
        COMMIT; rolled back when ``abort()`` is true after body (the state is
        dropped then unless ``state_kept()``). Waits out a locked database."""
        db = self._db(tp)
        store = self.store.store_for(tp) if self._partitioned else self.store
        delay = self.lock_backoff_ms
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as e:
                if not _is_locked(e):
                    raise
                self.metrics["lock_waits"] += 1
                await asyncio.sleep(delay / 1000.0)
                delay = min(delay * 2, self.max_lock_backoff_ms)
        try:
            row = db.execute(self._committed_sql, (self.group, tp.topic, tp.partition)).fetchone()
            if row is not None and row[0] > first:
                raise _Fenced(row[0])
            if self.state is not None:
                self._ensure_state(tp, None if row is None else row[0])
            self._run_body(tp, body)
            if abort():
                db.execute("ROLLBACK")
                if not state_kept():
                    self._forget(tp)
                return
            nxt = next_offset()
            store.save({tp: nxt}, group=self.group)
            while True:
                try:
                    db.execute("COMMIT")
                    break
                except sqlite3.OperationalError as e:
                    if not _is_locked(e):
                        raise
                    self.metrics["lock_waits"] += 1
                    time.sleep(delay / 1000.0)   # the write lock is held: do not yield
                    delay = min(delay * 2, self.max_lock_backoff_ms)
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._forget(tp)       # (fenced: the state is behind the committed offset too)
            raise
        if self.state is not None:
            self._state_at[tp] = nxt
        self.metrics["transactions"] += 1

    def _run_body(self, tp, body) -> None:
        """body() under the authorizer that stops transaction statements."""
        db = self._db(tp)
        self._tx_violation = None
        db.set_authorizer(self._authorize)
        try:
            body()
        except sqlite3.DatabaseError:
            if self._tx_violation is None:
                raise
        finally:
            db.set_authorizer(None)
        if self._tx_violation is not None:
            raise HandlerTransactionError(
                f"the handler for {tp.topic}/{tp.partition} ran {self._tx_violation}: the "
                "processor owns the transaction (it commits the effects with the offset); "
                "a handler must not BEGIN, COMMIT or ROLLBACK (db.commit(), `with db:`)")

    def _ensure_state(self, tp, committed) -> None:
        """Inside the transaction: (re)load tp's state unless it stands for ``committed``."""
        if self._state_at.get(tp, _UNSET) != committed:
            self._state_at.pop(tp, None)
            self.state.drop(tp)
            self.state.load(self._db(tp), tp)
            self._state_at[tp] = committed
            self.metrics["state_loads"] = self.metrics.get("state_loads", 0) + 1

    def _authorize(self, action, arg1, arg2, dbname, source):
        if action == _SQLITE_TRANSACTION:
            self._tx_violation = arg1 or "a transaction statement"
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def columns(self, tp, recs: list):
        """The run ``recs`` of ``tp`` as a ``pyarrow.RecordBatch`` (needs ``arrow=True``)."""
        b = lambda v: None if v is None else bytes(v)  # noqa: E731
        return self._pa.RecordBatch.from_arrays([
            self._pa.array([tp.partition] * len(recs), self._pa.int32()),
            self._pa.array([r.offset for r in recs], self._pa.int64()),
            self._pa.array([r.timestamp for r in recs], self._pa.timestamp("ms")),
            self._pa.array([b(r.key) for r in recs], self._pa.binary()),
            self._pa.array([b(r.value) for r in recs], self._pa.binary())], schema=self._schema)

    # ------------------------------------------------------------ reading

    def dead_letters(self, topic: str | None = None) -> list[tuple]:
        """Rows of the default dead-letter table: ``(topic, partition, offset,
        key, value, error, attempts, timestamp_ms)``, in origin order."""
        if self.dead_letter_table is None:
            raise ValueError("this processor was given its own dead_letter function; "
                             "its dead letters are wherever that function put them")
        sql = f"SELECT * FROM {self.dead_letter_table}"
        if self._partitioned:       # every partition's database opened so far
            dbs = list({id(s.db): s.db for s in self.store.stores().values()}.values())
        else:
            dbs = [self.db]
        rows = []
        for db in dbs:
            rows += (db.execute(sql + " WHERE topic=?", (topic,)) if topic
                     else db.execute(sql)).fetchall()
        rows.sort(key=lambda r: (r[0], r[1], r[2]))
        return rows


def _check_autocommit(db) -> None:
    if db.isolation_level is not None:
        raise ValueError("the store's sqlite3 connection must be in autocommit mode "
                         "(sqlite3.connect(..., isolation_level=None)): the processor "
                         f"issues BEGIN and COMMIT itself; isolation_level is {db.isolation_level!r}")
