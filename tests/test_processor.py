"""us.Processor on a real log and a real SQLite database: each record's
effect is committed exactly once with its offset; failing records are
retried, then dead-lettered with their origin, and the good ones around them
committed; a handler that touches the transaction is refused; a database
locked by another writer is waited out; a run another owner committed is
fenced off; and the same code runs on JetStream against a real nats-server."""
import asyncio
import os
import sqlite3
import sys
import threading
import time

import pytest

import unstoppable as us
from unstoppable.errors import HandlerTransactionError


def _db(path, busy_ms=60000):
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA busy_timeout={busy_ms}")
    db.execute("CREATE TABLE IF NOT EXISTS effects (topic TEXT, part INTEGER, off INTEGER, "
               "value BLOB, PRIMARY KEY (topic, part, off))")
    return db


def _log(tmp_path, n=300, partitions=2, topic="t"):
    log = us.Log(str(tmp_path / "log"))
    t = log.create_topic(topic, partitions=partitions)
    for p in range(partitions):
        t.partition(p).append([b"v%d-%d" % (p, i) for i in range(n)])
    return log


def _insert(db, tp, records):
    # INSERT (not OR REPLACE): applying a record twice raises IntegrityError.
    db.executemany("INSERT INTO effects VALUES (?,?,?,?)",
                   [(tp.topic, tp.partition, r.offset, bytes(r.value)) for r in records])


async def _run_until(log, db_path, handler, ends, *, topic="t", group="g", timeout=60,
                     busy_ms=60000, **kw):
    db = _db(db_path, busy_ms)
    store = us.SQLiteOffsetStore(db)
    async with us.Consumer(log, topic, group=group, offset_store=store, max_poll_records=100) as c:
        proc = us.Processor(c, store, handler, group=group, **kw)
        deadline = time.monotonic() + timeout
        while True:
            got = await c.getmany(timeout_ms=50)
            for tp, recs in got.items():
                await proc.process(tp, recs)
            done = dict(db.execute("SELECT part, next_offset FROM unstoppable_offsets WHERE grp=?",
                                   (group,)).fetchall())
            if all(done.get(p) == e for p, e in enumerate(ends)):
                break
            assert time.monotonic() < deadline, f"not caught up: {done} vs {ends}"
    return proc, db


def test_every_record_is_applied_once_with_its_offset(tmp_path):
    log = _log(tmp_path)
    runs = []

    def handler(db, tp, records):
        runs.append(len(records))
        _insert(db, tp, records)

    proc, db = asyncio.run(_run_until(log, tmp_path / "a.db", handler, [300, 300]))
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT part || '/' || off) FROM effects").fetchone() == (600, 600)
    assert proc.metrics["handled"] == 600 and proc.metrics["dead_letters"] == 0
    assert max(runs) > 1                                   # whole runs, not one record at a time
    assert proc.metrics["transactions"] == len(runs)
    db.close()
    # A restart resumes at the committed offsets: nothing is applied again.
    proc, db = asyncio.run(_run_until(log, tmp_path / "a.db", handler, [300, 300], timeout=2))
    assert proc.metrics["handled"] == 0
    db.close()
    log.close()


@pytest.mark.parametrize("locate", [True, "applied", False],
                         ids=["RecordFailed", "RecordFailed-applied", "plain-exception"])
def test_poison_records_are_retried_then_dead_lettered_and_the_rest_committed(tmp_path, locate):
    log = _log(tmp_path, n=250)
    poison = {(0, 7), (0, 8), (1, 120), (1, 249)}
    tries: dict = {}

    def handler(db, tp, records):
        for i, r in enumerate(records):
            if (tp.partition, r.offset) in poison:
                if locate or len(records) == 1:    # halving a run is not an attempt of the record
                    tries[(tp.partition, r.offset)] = tries.get((tp.partition, r.offset), 0) + 1
                err = ValueError(f"cannot handle {r.offset}")
                if locate:
                    _insert(db, tp, records[:i])
                    raise us.RecordFailed(i, err, applied=locate == "applied")
                raise err
        _insert(db, tp, records)

    proc, db = asyncio.run(_run_until(log, tmp_path / "a.db", handler, [250, 250],
                                      max_attempts=3, backoff_ms=1))
    rows = db.execute("SELECT part, off FROM effects").fetchall()
    assert len(rows) == 500 - 4 and not poison & set(rows)
    letters = proc.dead_letters("t")
    assert [(p, o) for _t, p, o, *_ in letters] == sorted(poison)
    for topic, p, o, key, value, error, attempts, ts in letters:
        assert (topic, value, attempts) == ("t", b"v%d-%d" % (p, o), 3)
        assert error == f"ValueError: cannot handle {o}"
    assert tries == {k: 3 for k in poison}                # each poison record tried exactly 3 times
    assert proc.metrics["dead_letters"] == 4 and proc.metrics["retries"] == 8
    db.close()
    log.close()


def test_a_transient_failure_is_retried_and_applied_once(tmp_path):
    log = _log(tmp_path, n=50, partitions=1)
    failed = set()

    def handler(db, tp, records):
        for r in records:
            if r.offset % 10 == 3 and r.offset not in failed:
                failed.add(r.offset)
                raise RuntimeError("flaky")
        _insert(db, tp, records)

    proc, db = asyncio.run(_run_until(log, tmp_path / "a.db", handler, [50], backoff_ms=1))
    assert db.execute("SELECT COUNT(*) FROM effects").fetchone() == (50,)
    assert failed == {3, 13, 23, 33, 43} and proc.dead_letters() == []
    db.close()
    log.close()


@pytest.mark.parametrize("misuse", ["commit()", "with db", "ROLLBACK", "COMMIT; BEGIN"])
def test_a_handler_that_ends_the_transaction_is_refused(tmp_path, misuse):
    log = _log(tmp_path, n=20, partitions=1)

    def handler(db, tp, records):
        _insert(db, tp, records)
        if misuse == "commit()":
            db.commit()
        elif misuse == "with db":
            with db:
                pass
        elif misuse == "ROLLBACK":
            db.execute("ROLLBACK")
        else:
            db.execute("COMMIT")
            db.execute("BEGIN")

    with pytest.raises(HandlerTransactionError, match="processor owns the transaction"):
        asyncio.run(_run_until(log, tmp_path / "a.db", handler, [20], timeout=5))
    db = _db(tmp_path / "a.db")
    assert db.execute("SELECT COUNT(*) FROM effects").fetchone() == (0,)    # nothing committed
    assert db.execute("SELECT COUNT(*) FROM unstoppable_offsets").fetchone() == (0,)
    db.close()
    log.close()


def test_a_database_locked_by_another_writer_is_waited_out(tmp_path):
    log = _log(tmp_path, n=100, partitions=1)
    path = tmp_path / "a.db"
    db = _db(path)
    us.Processor(None, us.SQLiteOffsetStore(db), _insert, group="g")    # makes the tables
    db.close()
    other = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")                    # another writer holds the lock for 0.5 s
    release = threading.Timer(0.5, lambda: other.execute("COMMIT"))
    release.start()
    t0 = time.monotonic()
    proc, db = asyncio.run(_run_until(log, path, _insert, [100], busy_ms=10))
    release.join()
    assert proc.metrics["lock_waits"] > 0 and time.monotonic() - t0 >= 0.4
    assert db.execute("SELECT COUNT(*) FROM effects").fetchone() == (100,)
    db.close()
    other.close()
    log.close()


def test_a_run_another_owner_committed_is_fenced_off(tmp_path):
    log = _log(tmp_path, n=10, partitions=1)
    tp = us.TopicPartition("t", 0)
    recs = log.topic("t").partition(0).read(0, 10)
    db_a, db_b = _db(tmp_path / "a.db"), _db(tmp_path / "a.db")
    a = us.Processor(None, us.SQLiteOffsetStore(db_a), _insert, group="g")
    b = us.Processor(None, us.SQLiteOffsetStore(db_b), _insert, group="g")
    asyncio.run(a.process(tp, recs[:6]))
    asyncio.run(b.process(tp, recs))                     # 0-5 are stale: b applies 6-9 only
    assert (a.metrics["handled"], b.metrics["handled"], b.metrics["fenced"]) == (6, 4, 1)
    asyncio.run(b.process(tp, recs[3:]))                 # all stale
    assert b.metrics["fenced"] == 2 and b.metrics["handled"] == 4
    assert db_a.execute("SELECT COUNT(*) FROM effects").fetchone() == (10,)
    assert db_a.execute("SELECT next_offset FROM unstoppable_offsets").fetchone() == (10,)
    db_a.close()
    db_b.close()
    log.close()


def test_a_vectorized_handler_gets_the_run_as_arrow_columns(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pc = pytest.importorskip("pyarrow.compute")
    log = _log(tmp_path, n=120)
    seen = []

    def handler(db, tp, records, columns):
        assert isinstance(columns, pa.RecordBatch) and columns.num_rows == len(records)
        assert columns.column("offset").to_pylist() == [r.offset for r in records]
        assert pc.all(pc.equal(columns.column("partition"), tp.partition)).as_py()
        seen.append(columns.num_rows)
        db.executemany("INSERT INTO effects VALUES (?,?,?,?)",
                       zip([tp.topic] * columns.num_rows, columns.column("partition").to_pylist(),
                           columns.column("offset").to_pylist(), columns.column("value").to_pylist()))

    proc, db = asyncio.run(_run_until(log, tmp_path / "a.db", handler, [120, 120], arrow=True))
    assert sum(seen) == 240
    assert db.execute("SELECT value FROM effects WHERE part=1 AND off=5").fetchone() == (b"v1-5",)
    db.close()
    log.close()


def test_bad_configuration_is_refused_clearly(tmp_path):
    db = sqlite3.connect(str(tmp_path / "a.db"))        # default: implicit transactions
    with pytest.raises(ValueError, match="autocommit mode"):
        us.Processor(None, us.SQLiteOffsetStore(db), _insert, group="g")
    db.close()
    db = _db(tmp_path / "b.db")
    with pytest.raises(TypeError, match="SQLiteOffsetStore"):
        us.Processor(None, object(), _insert, group="g")
    with pytest.raises(ValueError, match="max_attempts"):
        us.Processor(None, us.SQLiteOffsetStore(db), _insert, group="g", max_attempts=0)
    db.close()


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "backends"))
from nats_servers import server_binary, start_single, wait_for_jetstream  # noqa: E402


@pytest.mark.skipif(server_binary() is None, reason="the nats-server binary is not installed")
def test_the_processor_runs_on_jetstream(tmp_path):
    pytest.importorskip("nats")
    s = start_single(str(tmp_path / "nats"))
    try:
        asyncio.run(wait_for_jetstream([s.url]))

        async def main():
            log = await us.connect(s.url)
            try:
                await log.create_topic("t", partitions=2)
                async with us.Producer(log, "t") as p:
                    for i in range(200):
                        await p.send(b"v%d" % i, partition=i % 2)
                    await p.flush()
                poison = {(1, 17)}

                def handler(db, tp, records):
                    for i, r in enumerate(records):
                        if (tp.partition, r.offset) in poison:
                            _insert(db, tp, records[:i])
                            raise us.RecordFailed(i, ValueError("poison"))
                    _insert(db, tp, records)

                return await _run_until(log, tmp_path / "a.db", handler, [100, 100],
                                        max_attempts=2, backoff_ms=1)
            finally:
                await log.close()

        proc, db = asyncio.run(main())
        assert db.execute("SELECT COUNT(*) FROM effects").fetchone() == (199,)
        assert [(p, o, a) for _t, p, o, _k, _v, _e, a, _ts in proc.dead_letters()] == [(1, 17, 2)]
        db.close()
    finally:
        s.stop()


class _SumState:
    """Per-partition state kept in memory: the sum of the effects table's
    offsets, as the handler's decisions would need it."""

    def __init__(self):
        self.sums, self.loads, self.drops = {}, [], []

    def load(self, db, tp):
        self.loads.append(tp.partition)
        self.sums[tp.partition] = db.execute(
            "SELECT COALESCE(SUM(off), 0) FROM effects WHERE part=?", (tp.partition,)).fetchone()[0]

    def drop(self, tp):
        self.drops.append(tp.partition)
        self.sums.pop(tp.partition, None)


def test_state_is_loaded_once_kept_and_reloaded_when_it_may_be_stale(tmp_path):
    """state=: loaded in the first transaction of a partition, kept across
    runs, dropped after a rolled-back handler (and reloaded), kept after
    RecordFailed(applied=True), reloaded after another owner committed, and
    dropped for partitions no longer assigned. The handler always sees the
    state of the committed offset."""
    log = _log(tmp_path, n=40, partitions=1)
    part = log.topic("t").partition(0)
    tp = us.TopicPartition("t", 0)
    st = _SumState()
    fail = {"raise": None}

    def handler(db, tp, records):
        # The in-memory sum must equal the table's: the state is never stale.
        want = db.execute("SELECT COALESCE(SUM(off), 0) FROM effects WHERE part=?",
                          (tp.partition,)).fetchone()[0]
        assert st.sums[tp.partition] == want
        for i, r in enumerate(records):
            if fail["raise"] == ("applied", r.offset):
                raise us.RecordFailed(i, ValueError("bad"), applied=True) if i == 0 else \
                    us.RecordFailed(i, ValueError("bad"))
            if fail["raise"] == ("boom", r.offset):
                st.sums[tp.partition] += 10 ** 9          # a half-made change...
                raise RuntimeError("boom")                # ...then a failure: rolled back
            st.sums[tp.partition] += r.offset
        _insert(db, tp, records)

    db = _db(tmp_path / "s.db")
    store = us.SQLiteOffsetStore(db)
    proc = us.Processor(None, store, handler, group="g", state=st, backoff_ms=1, max_attempts=2)
    asyncio.run(proc.process(tp, part.read(0, 10)))
    asyncio.run(proc.process(tp, part.read(10, 10)))
    assert st.loads == [0] and proc.metrics["state_loads"] == 1        # loaded once, kept
    fail["raise"] = ("boom", 25)
    asyncio.run(proc.process(tp, part.read(20, 10)))
    # Each attempt that failed was rolled back and its state dropped, so the
    # next one ran on a reloaded state (the handler's own check); 25 was
    # dead-lettered after its retry, the others applied.
    loads = len(st.loads)
    assert loads > 2 and len(st.drops) >= loads - 1 and len(proc.dead_letters()) == 1
    fail["raise"] = ("applied", 30)
    asyncio.run(proc.process(tp, part.read(30, 5)))
    assert len(st.loads) == loads, "RecordFailed(applied=True) says the state holds the prefix"
    assert len(proc.dead_letters()) == 2
    fail["raise"] = None
    # Another owner of the partition commits 35..37: this state is stale now.
    other = us.Processor(None, us.SQLiteOffsetStore(_db(tmp_path / "s.db")), lambda d, t, r: _insert(d, t, r),
                         group="g")
    asyncio.run(other.process(tp, part.read(35, 3)))
    asyncio.run(proc.process(tp, part.read(38, 2)))
    assert len(st.loads) == loads + 1
    assert db.execute("SELECT next_offset FROM unstoppable_offsets").fetchone() == (40,)
    assert db.execute("SELECT COUNT(*) FROM effects").fetchone() == (38,)    # 40 less 2 dead letters
    proc.release_unassigned()                    # no consumer: nothing is assigned
    assert st.sums == {} and proc._state_at == {}
    db.close()
    log.close()


def test_state_must_have_load_and_drop(tmp_path):
    db = _db(tmp_path / "x.db")
    with pytest.raises(TypeError, match="load"):
        us.Processor(None, us.SQLiteOffsetStore(db), lambda *a: None, group="g", state=object())
    db.close()


def test_prepare_decides_outside_the_transaction_and_is_redone_on_a_stale_state(tmp_path):
    """prepare= runs before BEGIN (no transaction open, so other writers of
    the database are not held back), only when the state is loaded; when
    another owner committed meanwhile, the state is reloaded before the
    handler runs and what prepare staged is gone: the handler decides itself."""
    log = _log(tmp_path, n=30, partitions=1)
    part = log.topic("t").partition(0)
    tp = us.TopicPartition("t", 0)
    st = _SumState()
    db = _db(tmp_path / "p.db")
    seen = []

    def prepare(tp, records):
        seen.append(("prepare", db.in_transaction, records[0].offset))
        st.sums[tp.partition] += sum(r.offset for r in records)
        st.sums["staged"] = records[0].offset

    def handler(db, tp, records):
        staged = st.sums.pop("staged", None) == records[0].offset
        seen.append(("handler", db.in_transaction, staged))
        if not staged:
            st.sums[tp.partition] += sum(r.offset for r in records)
        _insert(db, tp, records)
        want = db.execute("SELECT SUM(off) FROM effects WHERE part=?", (tp.partition,)).fetchone()[0]
        assert st.sums[tp.partition] == want

    class State(_SumState):
        def drop(self, tp):
            super().drop(tp)
            self.sums.pop("staged", None)            # what prepare staged goes with the state

    st = State()
    proc = us.Processor(None, us.SQLiteOffsetStore(db), handler, group="g", state=st, prepare=prepare)
    asyncio.run(proc.process(tp, part.read(0, 10)))     # not loaded yet: no prepare
    asyncio.run(proc.process(tp, part.read(10, 10)))    # loaded: prepared outside the transaction
    assert seen == [("handler", True, False), ("prepare", False, 10), ("handler", True, True)]
    other = us.Processor(None, us.SQLiteOffsetStore(_db(tmp_path / "p.db")),
                         lambda d, t, r: _insert(d, t, r), group="g")
    asyncio.run(other.process(tp, part.read(20, 5)))    # another owner commits 20..24
    seen.clear()
    asyncio.run(proc.process(tp, part.read(25, 5)))
    assert seen == [("prepare", False, 25), ("handler", True, False)]   # stale: decided again
    assert db.execute("SELECT COUNT(*) FROM effects").fetchone() == (30,)
    with pytest.raises(ValueError, match="prepare needs state"):
        us.Processor(None, us.SQLiteOffsetStore(db), handler, group="g", prepare=prepare)
    db.close()
    log.close()


def test_a_database_per_partition(tmp_path):
    """With a PartitionedSQLiteOffsetStore each partition's effects, offset
    and dead letters are in its own file, each run a transaction of that
    file's connection; a restart resumes from every file's offset, and a run
    another owner committed is fenced off per partition."""
    log = _log(tmp_path, n=200, partitions=3)
    dbs: dict = {}

    def connect(tp):
        return dbs.setdefault(tp.partition, _db(tmp_path / f"p{tp.partition}.db"))

    def handler(db, tp, records):
        assert db is dbs[tp.partition]
        for i, r in enumerate(records):
            if bytes(r.value) == b"v1-50":
                _insert(db, tp, records[:i])
                raise us.RecordFailed(i, ValueError("poison"), applied=True)
        _insert(db, tp, records)

    async def run(timeout=30):
        store = us.PartitionedSQLiteOffsetStore(connect)
        async with us.Consumer(log, "t", group="g", offset_store=store, max_poll_records=64) as c:
            proc = us.Processor(c, store, handler, group="g", max_attempts=2, backoff_ms=1)
            deadline = time.monotonic() + timeout
            while sum((await store.load("g", [us.TopicPartition("t", p) for p in range(3)])).values()) < 600:
                for tp, recs in (await c.getmany(timeout_ms=50)).items():
                    await proc.process(tp, recs)
                assert time.monotonic() < deadline, "not caught up"
        return proc

    proc = asyncio.run(run())
    for p in range(3):
        db = dbs[p]
        offs = db.execute("SELECT part, next_offset FROM unstoppable_offsets").fetchall()
        assert offs == [(p, 200)]                      # this partition's offset only
        parts = db.execute("SELECT DISTINCT part FROM effects").fetchall()
        assert parts == [(p,)]
        n = 199 if p == 1 else 200
        assert db.execute("SELECT COUNT(*) FROM effects").fetchone() == (n,)
    assert [(r[1], r[2], r[5]) for r in proc.dead_letters("t")] == [(1, 50, "ValueError: poison")]
    assert dbs[0].execute("SELECT COUNT(*) FROM unstoppable_dead_letters").fetchone() == (0,)
    assert proc.metrics["handled"] == 599 and proc.metrics["dead_letters"] == 1
    # A stale run of partition 2 (committed already) is fenced off, nothing applied twice.
    stale = log.topic("t").partition(2).read(0, 10)
    asyncio.run(proc.process(us.TopicPartition("t", 2), stale))
    assert proc.metrics["fenced"] == 1
    assert dbs[2].execute("SELECT COUNT(*) FROM effects").fetchone() == (200,)
    # A restart resumes at every file's committed offset.
    assert asyncio.run(run(timeout=2)).metrics["handled"] == 0
    with pytest.raises(TypeError, match="callable"):
        us.PartitionedSQLiteOffsetStore("p.db")
    for db in dbs.values():
        db.close()
    log.close()
