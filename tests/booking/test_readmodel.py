"""The SQLite read model is a fold over the log, whatever crashes happen
between effects and commits.

The property test writes random schedules to a real log and folds them into
a real SQLite read model the way the worker does (effects and the offset in
one transaction), "crashing" at random points: the connection goes away
before COMMIT, a new one resumes at the committed offset. The result must
equal the plain in-memory fold. The process test does the same with the
real worker, killed with SIGKILL three times mid-stream."""
import asyncio
import multiprocessing as mp
import os
import random
import signal
import tempfile
import time

from hypothesis import given, settings, strategies as st

import unstoppable as us
from unstoppable import TopicPartition
from unstoppable.booking import events as ev
from unstoppable.booking.machine import MemoryStore, apply
from unstoppable.booking.readmodel import ReadModel, connect, diff_snapshots
from unstoppable.booking.rebuild import rebuild
from unstoppable.booking.service import ServiceConfig, config_dict, create_topics, run_worker

from booking_util import caught_up, outcomes, run_service, snapshot
from test_machine import TTL, run, schedules

SPAWN = mp.get_context("spawn")


def _fold_with_crashes(log_part, dbpath, crash_plan, chunk_sizes):
    """Fold a partition into the read model at dbpath, the worker's way."""
    step = 0
    while True:
        db = connect(dbpath)
        rm = ReadModel(db)
        store = us.SQLiteOffsetStore(db)
        rows = db.execute("SELECT next_offset FROM unstoppable_offsets WHERE grp='g'").fetchall()
        pos = rows[0][0] if rows else 0
        if pos >= log_part.end_offset:
            return db
        k = chunk_sizes[step % len(chunk_sizes)]
        recs = log_part.read(pos, k)
        db.execute("BEGIN IMMEDIATE")
        crash_at = crash_plan[step % len(crash_plan)]
        crashed = False
        for i, r in enumerate(recs):
            if crash_at is not None and i == crash_at:
                crashed = True
                break
            apply(rm, ev.CODEC.decode(r.value), r.timestamp, TTL, f"t/0/{r.offset}")
        if not crashed:
            store.save({TopicPartition("t", 0): recs[-1].offset + 1}, group="g")
            rm.flush_counts()
            if crash_at == -1:
                crashed = True          # crash after the effects and the offset, before COMMIT
            else:
                db.execute("COMMIT")
        db.close()                      # a crash: the open transaction is rolled back
        step += 1


@settings(max_examples=60, deadline=None)
@given(schedules(), st.lists(st.one_of(st.none(), st.integers(-1, 5)), min_size=1, max_size=6),
       st.lists(st.integers(1, 7), min_size=1, max_size=4))
def test_read_model_equals_the_fold_over_the_log_across_crashes(steps, crash_plan, chunks):
    reference, applied = run(steps)
    if all(c is not None for c in crash_plan):
        crash_plan = crash_plan + [None]           # some step must get through
    with tempfile.TemporaryDirectory() as d:
        log = us.Log(os.path.join(d, "log"))
        part = log.create_topic("t", partitions=1).partition(0)
        part.append([(ev.seat_of(e).encode(), ev.CODEC.encode(e), None, ts) for e, ts in applied])
        db = _fold_with_crashes(part, os.path.join(d, "rm.db"), crash_plan, chunks)
        got = ReadModel(db).snapshot()
        db.close()
        log.close()
    want = reference.snapshot()
    assert diff_snapshots(got, want) == []
    assert got == want


def test_workers_killed_mid_stream_lose_and_repeat_nothing(tmp_path):
    cfg = ServiceConfig(log_path=str(tmp_path / "log"), db_path=str(tmp_path / "live.db"),
                        ttl_ms=300, batch=200)
    log = us.Log(cfg.log_path)
    asyncio.run(create_topics(log, cfg, partitions=3))
    rnd = random.Random(7)
    topic = log.topic(cfg.topic)
    batch = {p: [] for p in range(3)}
    from unstoppable._core.hashing import xxh64_partition
    for i in range(20000):
        seat = f"s{rnd.randrange(400)}"
        p = xxh64_partition(seat.encode(), 3)
        batch[p].append((seat.encode(), ev.CODEC.encode(ev.reservation_requested(f"b{i}", f"u{i}", seat))))
        if rnd.random() < 0.5:
            batch[p].append((seat.encode(), ev.CODEC.encode(
                ev.payment_received(f"b{i}", seat, f"p{i}", 100, f"u{i}"))))
    for p, recs in batch.items():
        topic.partition(p).append(recs)
    handled = [0]

    def events_done():
        # Opened afresh: the worker makes the read model (a directory of one
        # file per partition) when it starts.
        if not os.path.exists(cfg.db_path):
            return 0
        db = connect(cfg.db_path)
        try:
            return ReadModel(db).stats().get("events", 0)
        finally:
            db.close()

    for _round in range(3):
        proc = SPAWN.Process(target=run_worker, args=(config_dict(cfg),))
        proc.start()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and events_done() < handled[-1] + 500:
                time.sleep(0.002)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(10)
        assert proc.exitcode == -signal.SIGKILL
        handled.append(events_done())
    handled = handled[1:]
    total = sum(topic.end_offsets())
    assert 0 < handled[0] < handled[1] < handled[2] < total       # killed mid-stream each time
    run_service(cfg, log, caught_up(log, cfg), timeout=60)
    rebuilt = asyncio.run(rebuild(log, cfg, str(tmp_path / "rebuilt.db")))
    rebuilt.db.close()
    live = snapshot(cfg.db_path)
    assert diff_snapshots(live, snapshot(str(tmp_path / "rebuilt.db"))) == []
    # The outcome topic (repeats dropped by id) has one terminal outcome per booking.
    terminal = {}
    for e in outcomes(log, cfg):
        if ev.is_terminal(e):
            terminal[(ev.seat_of(e), ev.booking_of(e))] = terminal.get((ev.seat_of(e), ev.booking_of(e)), 0) + 1
    assert len(live["bookings"]) == len(terminal) and set(terminal.values()) == {1}
    assert dict(live["stats"])["events"] == sum(topic.end_offsets())   # every record once
    log.close()


def test_memory_store_snapshot_format_matches_the_read_model(tmp_path):
    m = MemoryStore()
    db = connect(tmp_path / "x.db")
    rm = ReadModel(db)
    db.execute("BEGIN")
    for store in (m, rm):
        apply(store, ev.payment_received("b", "A", "p", 5, "u"), 10, TTL, "t/0/0")
        apply(store, ev.reservation_requested("b", "u", "A"), 11, TTL, "t/0/1")
        apply(store, ev.reservation_requested("c", "v", "A"), 12, TTL, "t/0/2")
    rm.flush_counts()
    db.execute("COMMIT")
    assert rm.snapshot() == m.snapshot()
    assert rm.double_booked() == []
    assert [h[3] for h in rm.user_history("u")] == ["payment_parked", "booking_confirmed"]
