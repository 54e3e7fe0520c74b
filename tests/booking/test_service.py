"""The booking worker on a real log and a real read model: failing handlers
are retried then dead-lettered with their origin and the partition moves on;
re-driven dead letters are applied; a pending expiry survives a restart and
takes effect once even when its timer fires twice; outcomes are published."""
import asyncio
import os
import time

import pytest

import unstoppable as us
from unstoppable.booking import deadletters as dl
from unstoppable.booking import events as ev
from unstoppable.booking.readmodel import connect, diff_snapshots
from unstoppable.booking.rebuild import rebuild
from unstoppable.booking.service import BookingService, ServiceConfig, create_topics

from booking_util import caught_up, outcomes, read_topic, run_service, snapshot


def _cfg(tmp_path, **kw):
    return ServiceConfig(log_path=str(tmp_path / "log"), db_path=str(tmp_path / "live.db"), **kw)


def _send(log, cfg, events):
    """Append events keyed by seat, on the seat's partition (like the Producer)."""
    t = log.topic(cfg.topic)
    for e in events:
        seat = ev.seat_of(e).encode()
        t.partition(us.DefaultPartitioner()(seat, t.partitions)).append([(seat, ev.CODEC.encode(e))])


def _requests_and_payments(n: int, seats: int) -> list:
    """``n`` reservation requests over ``seats`` seats, every other one paid."""
    es = []
    for i in range(n):
        es.append(ev.reservation_requested(f"b{i}", f"u{i}", f"S{i % seats}"))
        if i % 2:
            es.append(ev.payment_received(f"b{i}", f"S{i % seats}", f"p{i}", 100, f"u{i}"))
    return es


def test_failing_records_are_retried_then_dead_lettered_and_can_be_redriven(tmp_path):
    cfg = _cfg(tmp_path, fail_seats=("seat-bad",), backoff_ms=1, max_attempts=3, ttl_ms=60_000)
    log = us.Log(cfg.log_path)
    asyncio.run(create_topics(log, cfg, partitions=2))
    _send(log, cfg, [ev.reservation_requested("b1", "u1", "seat-ok"),
                     ev.reservation_requested("b2", "u2", "seat-bad"),
                     ev.payment_received("b1", "seat-ok", "p1", 100, "u1"),
                     ev.payment_received("b2", "seat-bad", "p2", 100, "u2")])
    log.topic(cfg.topic).partition(0).append([(b"seat-x", b"\x07garbage")])
    svc = run_service(cfg, log, caught_up(log, cfg))
    assert svc.metrics["dead_letters"] == 3 and svc.metrics["retries"] == 3 * 2
    letters = asyncio.run(dl.read_dead_letters(log, cfg.dlq_topic))
    assert len(letters) == 3
    by_error = sorted(d.error.split(":")[0] for d in letters)
    assert by_error == ["InjectedFault", "InjectedFault", "ValueDecodeError"]
    for d in letters:
        assert d.origin_topic == cfg.topic and d.attempts == 3
        raw = log.topic(cfg.topic).partition(d.origin_partition).read(d.origin_offset, 1)[0]
        assert bytes(raw.value) == d.value                     # the failed record itself
    db = connect(cfg.db_path)
    assert db.execute("SELECT state FROM bookings WHERE booking_id='b1'").fetchone() == ("confirmed",)
    assert db.execute("SELECT COUNT(*) FROM bookings WHERE booking_id='b2'").fetchone() == (0,)
    db.close()

    # The bug is fixed: re-drive the two injected failures (not the garbage).
    fixed = ServiceConfig(**{**cfg.__dict__, "fail_seats": ()})
    redo = [(d.partition, d.offset) for d in letters if d.error.startswith("InjectedFault")]
    done = asyncio.run(dl.redrive(log, cfg.dlq_topic, redo))
    assert len(done) == 2
    assert asyncio.run(dl.redrive(log, cfg.dlq_topic, redo)) == []          # never twice
    left = [d for d in asyncio.run(dl.read_dead_letters(log, cfg.dlq_topic)) if not d.redriven]
    assert [d.error.split(":")[0] for d in left] == ["ValueDecodeError"]
    run_service(fixed, log, caught_up(log, fixed))
    db = connect(cfg.db_path)
    assert db.execute("SELECT state FROM bookings WHERE booking_id='b2'").fetchone() == ("confirmed",)
    db.close()
    # The rebuild makes the same decisions, dead letters included.
    asyncio.run(rebuild(log, fixed, str(tmp_path / "rebuilt.db"))).db.close()
    assert diff_snapshots(snapshot(cfg.db_path), snapshot(str(tmp_path / "rebuilt.db"))) == []
    with pytest.raises(KeyError, match="no dead letter"):
        asyncio.run(dl.redrive(log, cfg.dlq_topic, [(0, 999)]))
    log.close()


def test_a_pending_expiry_survives_a_restart_and_takes_effect_once(tmp_path):
    cfg = _cfg(tmp_path, ttl_ms=400)
    log = us.Log(cfg.log_path)
    asyncio.run(create_topics(log, cfg, partitions=2))
    _send(log, cfg, [ev.reservation_requested("b1", "u1", "A")])
    # Worker 1 holds the seat, then stops before the deadline.
    run_service(cfg, log, caught_up(log, cfg, timers=False))
    db = connect(cfg.db_path)
    assert db.execute("SELECT state FROM seats WHERE seat_id='A'").fetchone() == ("held",)
    (deadline,) = db.execute("SELECT deadline_ms FROM timers").fetchone()
    db.close()
    time.sleep(max(0.0, deadline / 1000 - time.time()) + 0.05)

    # Worker 2 (a restart) finds the due timer; we make it fire twice, as a
    # crash between appending the expiry and marking the timer fired would.
    async def fire_twice():
        svc = BookingService(cfg)
        svc.partitions = 2
        svc.open_db()
        async with us.Producer(log, cfg.topic, value_serializer=ev.CODEC) as svc.in_p:
            assert await svc.fire_timers([0, 1]) == 1
            for p in (0, 1):                                    # the mark was lost
                svc.partition_db(p).execute("UPDATE timers SET fired=0")
            assert await svc.fire_timers([0, 1]) == 1
        svc.close_db()

    asyncio.run(fire_twice())
    expiries = [v for *_x, v, _h in read_topic(log, cfg.topic)
                if ev.kind_of(ev.CODEC.decode(v)) == "reservation_expired"]
    assert len(expiries) == 2
    run_service(cfg, log, caught_up(log, cfg))
    db = connect(cfg.db_path)
    assert db.execute("SELECT state FROM seats WHERE seat_id='A'").fetchone() == ("available",)
    assert db.execute("SELECT state FROM bookings").fetchall() == [("expired",)]
    stats = dict(db.execute("SELECT name, SUM(value) FROM stats GROUP BY name").fetchall())
    assert stats["expired"] == 1 and stats["duplicates"] == 1
    db.close()
    kinds = [ev.kind_of(e) for e in outcomes(log, cfg)]
    assert kinds == ["seat_held", "hold_expired"]
    log.close()


def test_events_on_the_wrong_partition_are_refused(tmp_path):
    """Two workers must never decide on one seat: an event whose seat lives on
    another partition is dead-lettered, not applied."""
    cfg = _cfg(tmp_path, backoff_ms=1, max_attempts=2)
    log = us.Log(cfg.log_path)
    asyncio.run(create_topics(log, cfg, partitions=4))
    home = us.DefaultPartitioner()(b"A", 4)
    log.topic(cfg.topic).partition((home + 1) % 4).append(
        [(b"A", ev.CODEC.encode(ev.reservation_requested("b1", "u1", "A")))])
    run_service(cfg, log, caught_up(log, cfg))
    (d,) = asyncio.run(dl.read_dead_letters(log, cfg.dlq_topic))
    assert "belong on partition" in d.error and d.origin_partition == (home + 1) % 4
    assert snapshot(cfg.db_path)["seats"] == []
    log.close()


def test_a_run_another_owner_committed_is_fenced_off(tmp_path):
    """Two workers holding one partition at once (a JetStream lease that
    lapsed under a stalled owner, say) still apply each record once: a run
    that starts below the committed offset is rolled back and skipped."""
    from unstoppable.booking.readmodel import ReadModel
    TopicPartition = us.TopicPartition
    cfg = _cfg(tmp_path, ttl_ms=60_000)
    log = us.Log(cfg.log_path)
    asyncio.run(create_topics(log, cfg, partitions=1))
    _send(log, cfg, [ev.reservation_requested(f"b{i}", f"u{i}", f"S{i}") for i in range(3)])
    part = log.topic(cfg.topic).partition(0)
    first = part.read(0, 10)
    tp = TopicPartition(cfg.topic, 0)

    def worker():
        svc = BookingService(cfg)
        svc.partitions = 1
        svc.open_db()
        return svc

    a, b = worker(), worker()
    asyncio.run(a.process(tp, first))
    asyncio.run(b.process(tp, first))                       # stale: a committed these
    assert (a.metrics["handled"], b.metrics["handled"], b.metrics["fenced"]) == (3, 0, 1)
    _send(log, cfg, [ev.reservation_requested("b3", "u3", "S3")])
    asyncio.run(b.process(tp, first[1:] + part.read(3, 1)))  # two stale, one new
    assert (b.metrics["handled"], b.metrics["fenced"]) == (1, 2)
    stats = ReadModel(b.db).stats()
    assert stats["requests"] == 4 and stats.get("duplicates", 0) == 0
    assert b.db.execute("SELECT next_offset FROM unstoppable_offsets").fetchone() == (4,)
    for svc in (a, b):
        svc.close_db()
    # Without the fence the stale run would have been applied a second time.
    assert asyncio.run(rebuild(log, cfg, str(tmp_path / "rebuilt.db"))).stats()["requests"] == 4
    log.close()


@pytest.mark.parametrize("layout", ["partition", "shared"])
def test_a_rebuild_in_several_processes_equals_one_in_one_process(tmp_path, layout):
    """Partitions decided in forked helpers, each bulk-loaded into its own
    files (the "partition" layout) or into a file of its own and appended
    (the "shared" layout): the same read model as one process makes, offsets
    included; a record that fails in a helper's share stops the rebuild with
    its own error, and leaves no file behind."""
    cfg = _cfg(tmp_path, ttl_ms=60_000, db_layout=layout)
    log = us.Log(cfg.log_path)
    asyncio.run(create_topics(log, cfg, partitions=5))
    es = []
    for i in range(300):
        seat = f"S{i % 40}"
        es.append(ev.reservation_requested(f"b{i}", f"u{i}", seat))
        if i % 3:
            es.append(ev.payment_received(f"b{i}", seat, f"p{i}", 100, f"u{i}"))
        if i % 7 == 0:
            es.append(ev.payment_received(f"x{i}", seat, f"q{i}", 100, f"v{i}"))   # before its request
    _send(log, cfg, es)
    one = asyncio.run(rebuild(log, cfg, str(tmp_path / "one.db"), processes=1))
    three = asyncio.run(rebuild(log, cfg, str(tmp_path / "three.db"), processes=3))
    assert one.stats()["events"] == len(es)
    assert diff_snapshots(one.snapshot(), three.snapshot()) == []
    offsets = "SELECT part, next_offset FROM unstoppable_offsets ORDER BY part"
    assert one.db.execute(offsets).fetchall() == three.db.execute(offsets).fetchall()
    assert len(three.db.execute(offsets).fetchall()) == 5
    one.db.close()
    three.db.close()
    # A poison record in the last partition (a helper's share), not dead-lettered.
    log.topic(cfg.topic).partition(4).append([(b"S1", b"\x07garbage")])
    with pytest.raises(us.errors.ValueDecodeError, match="not a valid"):
        asyncio.run(rebuild(log, cfg, str(tmp_path / "bad.db"), processes=3))
    assert sorted(os.listdir(tmp_path)) == sorted(["log", "one.db", "three.db"])
    log.close()


def test_more_partitions_than_sqlite_attaches_are_read_in_turn(tmp_path):
    """12 partitions, a file each: more than SQLite attaches to one connection
    here, so connect() of the directory makes no views (a query names a
    missing table) and ReadModel reads the files in turn; the live read model
    still equals the rebuild, and every partition's offset is in its file."""
    import sqlite3

    from unstoppable.booking.readmodel import ReadModel, partition_paths, read_model_dbs
    from unstoppable.booking.service import committed_offsets
    cfg = _cfg(tmp_path, ttl_ms=60_000)
    log = us.Log(cfg.log_path)
    asyncio.run(create_topics(log, cfg, partitions=12))
    es = _requests_and_payments(120, 30)
    _send(log, cfg, es)
    ends = log.topic(cfg.topic).end_offsets()

    def done(db):
        com = committed_offsets(db, cfg.group, cfg.topic)
        return (all(com.get(p, 0) == e for p, e in enumerate(ends))
                and all(d.execute("SELECT COUNT(*) FROM outbox").fetchone() == (0,)
                        for d in read_model_dbs(db)))
    run_service(cfg, log, done)
    assert sorted(partition_paths(cfg.db_path)) == list(range(12))
    db = connect(cfg.db_path)
    assert sqlite3.connect(":memory:").getlimit(sqlite3.SQLITE_LIMIT_ATTACHED) < 12
    with pytest.raises(sqlite3.OperationalError, match="no such table: seats"):
        db.execute("SELECT * FROM seats")
    rm = ReadModel(db)
    assert rm.stats()["events"] == len(es) and rm.double_booked() == []
    assert [h[1:4] for h in rm.user_history("u1")][:2] == [("S1", "b1", "seat_held"),
                                                         ("S1", "b1", "booking_confirmed")]
    assert committed_offsets(db, cfg.group, cfg.topic) == {p: e for p, e in enumerate(ends) if e}
    live = rm.snapshot()
    db.close()
    rebuilt = asyncio.run(rebuild(log, cfg, str(tmp_path / "rebuilt.db")))
    assert diff_snapshots(live, rebuilt.snapshot()) == []
    rebuilt.db.close()
    log.close()


def test_a_read_model_of_the_other_layout_is_refused(tmp_path):
    """A worker configured for one layout does not write into a read model of
    the other: it says which it found."""
    log = us.Log(str(tmp_path / "log"))
    for layout, make in (("partition", lambda p: connect(p).close()),
                         ("shared", os.makedirs)):
        path = str(tmp_path / f"{layout}.db")
        make(path)
        svc = BookingService(ServiceConfig(str(tmp_path / "log"), path, db_layout=layout))
        with pytest.raises(ValueError, match="choose the layout the read model has"):
            svc.open_db()
    with pytest.raises(ValueError, match="db_layout must be one of"):
        BookingService(_cfg(tmp_path, db_layout="sharded")).open_db()
    log.close()


def test_a_worker_checkpoints_the_files_it_writes_on_a_thread_of_its_own(tmp_path, monkeypatch):
    """Each partition file the worker writes is checkpointed by its
    WalCheckpointer (the rows reach the database file, not only the WAL),
    and only those: not the files of partitions it merely opens to read."""
    from unstoppable.booking import readmodel, service
    from unstoppable.booking.readmodel import partition_path
    monkeypatch.setattr(service, "WAL_CHECKPOINT_INTERVAL_S", 0.05)
    cfg = _cfg(tmp_path)
    log = us.Log(cfg.log_path)
    asyncio.run(create_topics(log, cfg, partitions=4))
    part = us.DefaultPartitioner()
    seats = [s for s in (f"seat-{i}" for i in range(200)) if part(s.encode(), 4) in (0, 1)]
    _send(log, cfg, [ev.reservation_requested(f"b{i}", f"u{i}", seats[i % len(seats)])
                     for i in range(600)])
    paths = [partition_path(cfg.db_path, p) for p in range(4)]

    async def main():
        stop = asyncio.Event()
        svc = BookingService(cfg)
        task = asyncio.create_task(svc.run(stop, log))
        done = caught_up(log, cfg, timers=False)
        sizes, deadline = None, time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                if task.done():
                    task.result()
                if sizes is None and all(os.path.exists(p) for p in paths):
                    sizes = [os.path.getsize(p) for p in paths]     # as made, before the rows
                if os.path.isdir(cfg.db_path) and len(os.listdir(cfg.db_path)) >= 4:
                    db = connect(cfg.db_path)
                    try:
                        ok = done(db)
                    finally:
                        db.close()
                    if ok and svc._ckpt.checkpoints >= 2 and all(
                            os.path.getsize(paths[p]) > sizes[p] for p in (0, 1)):
                        break
            written = sorted(svc._ckpt._paths)
            backstop = svc.partition_db(0).execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            # Before the worker closes (closing checkpoints what is left, by itself).
            grown = [os.path.getsize(p) > s for p, s in zip(paths, sizes)]
            return grown, written, backstop, svc._ckpt.checkpoints
        finally:
            stop.set()
            await task

    grown, written, backstop, checkpoints = asyncio.run(main())
    assert written == paths[:2]                   # the files of the partitions it wrote
    assert checkpoints >= 2
    assert grown == [True, True, False, False]
    assert backstop == service.WAL_BACKSTOP_FACTOR * service.WAL_AUTOCHECKPOINT_BYTES // 4 \
        // readmodel.PAGE_SIZE                    # its own autocheckpoint: the backstop


def test_a_read_model_made_with_smaller_pages_keeps_them_and_works(tmp_path):
    """Files are made with PAGE_SIZE pages from now on; a partition's file
    made before (4 KiB pages, SQLite's default) keeps its page size, the
    worker writes it, its WAL checkpoints at the same bytes (pages of its own
    size), and the whole equals a rebuild made of new files."""
    import sqlite3

    from unstoppable.booking.readmodel import (
        PAGE_SIZE,
        SCHEMA,
        ReadModel,
        partition_path,
        read_model_dbs,
    )
    from unstoppable.booking.service import (
        WAL_AUTOCHECKPOINT_BYTES,
        WAL_AUTOCHECKPOINT_MIN_BYTES,
        WAL_BACKSTOP_FACTOR,
    )
    assert PAGE_SIZE != 4096
    cfg = _cfg(tmp_path, ttl_ms=60_000)
    log = us.Log(cfg.log_path)
    asyncio.run(create_topics(log, cfg, partitions=2))
    os.makedirs(cfg.db_path)
    old = sqlite3.connect(partition_path(cfg.db_path, 0), isolation_level=None)
    old.execute("PRAGMA page_size=4096")
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(SCHEMA)
    us.SQLiteOffsetStore(old)
    old.close()
    es = _requests_and_payments(60, 20)
    _send(log, cfg, es)
    assert all(log.topic(cfg.topic).end_offsets())          # both partitions have records
    run_service(cfg, log, caught_up(log, cfg, timers=False))
    sizes = {p: sqlite3.connect(partition_path(cfg.db_path, p)).execute("PRAGMA page_size").fetchone()[0]
             for p in (0, 1)}
    assert sizes == {0: 4096, 1: PAGE_SIZE}
    svc = BookingService(cfg)
    svc.partitions = 2
    svc.open_db()
    nbytes = max(WAL_AUTOCHECKPOINT_MIN_BYTES, WAL_AUTOCHECKPOINT_BYTES // 2)
    assert {p: svc.partition_db(p).execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            for p in (0, 1)} == {p: WAL_BACKSTOP_FACTOR * (nbytes // sizes[p]) for p in (0, 1)}
    svc.close_db()
    db = connect(cfg.db_path)
    rm = ReadModel(db)
    assert rm.stats()["events"] == len(es) and rm.double_booked() == []
    live = rm.snapshot()
    db.close()
    rebuilt = asyncio.run(rebuild(log, cfg, str(tmp_path / "rebuilt.db")))
    assert diff_snapshots(live, rebuilt.snapshot()) == []
    assert {d.execute("PRAGMA page_size").fetchone()[0] for d in read_model_dbs(rebuilt.db)} \
        == {PAGE_SIZE}                                   # the rebuild's files are new
    rebuilt.db.close()
    log.close()
