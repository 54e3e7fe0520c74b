"""Kill loops: a producer process SIGKILLed at random moments, again and
again, on one log; after every kill the log is reopened and checked against
everything the producer had acknowledged. Then the same for consumers killed
between applying a record's effect and committing its offset, with
SQLiteOffsetStore and with the booking service's read model."""
from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from pathlib import Path

import pytest

import unstoppable as us

from .util import Zygote, check_log, drop_torn_line, read_acks

TOPIC = "t"


@pytest.fixture
def zygote():
    z = Zygote()
    yield z
    z.close()


def _wait_for_growth(path, size0: int, timeout: float, pid: int, zygote) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.path.getsize(path) > size0:
                return True
        except FileNotFoundError:
            pass
        if zygote.wait(pid, block=False) is not None:
            return False
        time.sleep(0.002)
    return False


def _out_of(path) -> str:
    try:
        with open(path) as f:
            return f.read()[-3000:]
    except FileNotFoundError:
        return ""


# Each acks mode runs with a topic that makes rolls, index entries and (for
# "written") retention happen many times per round, so kills land in them too.
CONFIGS = {
    "fsync": dict(partitions=3, segment_bytes=16384, index_interval_bytes=512),
    "written": dict(partitions=3, segment_bytes=8192, index_interval_bytes=256,
                    retention_bytes=64 * 1024),
}


@pytest.mark.parametrize("acks", ["fsync", "written"])
def test_producer_sigkilled_at_random_moments(tmp_path, zygote, figures, scale, acks):
    rnd = random.Random(f"producer-{acks}")
    d = tmp_path / "log"
    with us.Log(d) as log:
        log.create_topic(TOPIC, **CONFIGS[acks])
    acks_file = tmp_path / "acks"
    all_acks = []
    early_kills = 0
    for inc in range(scale.producer_kills):
        out = tmp_path / f"out{inc}"
        size0 = os.path.getsize(acks_file) if acks_file.exists() else 0
        pid = zygote.spawn("produce", {
            "log": str(d), "topic": TOPIC, "acks": acks, "producer": "p0", "inc": inc,
            "seed": rnd.randrange(1 << 30), "acks_file": str(acks_file), "keys": 12,
            "pad_max": 300, "window": rnd.choice([1, 8, 64, 256]),
            "batch_bytes": rnd.choice([512, 4096]),
        }, out)
        if rnd.random() < 0.2:
            # Anywhere in the start: opening the log (recovery), claiming the
            # producer id, loading the sequences, the first sends.
            time.sleep(rnd.uniform(0, 0.06))
            early_kills += 1
        else:
            grew = _wait_for_growth(acks_file, size0, 20, pid, zygote)
            assert grew, f"round {inc}: the producer acknowledged nothing:\n{_out_of(out)}"
            time.sleep(rnd.uniform(0, 0.15))
        status = zygote.kill(pid)
        assert status == -9, f"round {inc}: the producer exited by itself ({status}):\n{_out_of(out)}"
        drop_torn_line(acks_file)
        acked, errors = read_acks(acks_file)
        assert not errors, errors[:5]
        res = check_log(d, TOPIC, acked, figures)
        figures.add("kills_survived")
        all_acks = acked
    # Every incarnation acknowledged something (except some killed early), and
    # the last check covered all of it.
    incs = {a[4] for a in all_acks}
    assert len(incs) >= scale.producer_kills - early_kills
    figures.add("acked_records_checked", res["checked"])
    if acks == "fsync":
        assert res["checked"] == len(all_acks)   # no retention: every ack still there


# ---------------------------------------------------------------- consumers

def _effects_state(dbpath):
    db = sqlite3.connect(dbpath, timeout=60)
    try:
        rows = db.execute("SELECT part, off, digest, COUNT(*) FROM effects GROUP BY part, off").fetchall()
        offs = dict(((p, o) for _g, _t, p, o in db.execute(
            "SELECT grp, topic, part, next_offset FROM unstoppable_offsets").fetchall()))
        order = db.execute("SELECT part, off FROM effects ORDER BY seq").fetchall()
    finally:
        db.close()
    return rows, offs, order


def _progress(path):
    """(records handed out, whether the last transaction began but never committed)."""
    try:
        lines = Path(path).read_bytes().split(b"\n")[:-1]
    except FileNotFoundError:
        return 0, False
    delivered = 0
    for ln in lines:
        if ln.startswith(b"B "):
            _, _p, first, last = ln.split()
            delivered += int(last) - int(first) + 1
    return delivered, bool(lines) and lines[-1].startswith(b"B ")


def test_consumers_sigkilled_between_effect_and_commit(tmp_path, zygote, figures, scale):
    """Two group members apply effects and save offsets in one SQLite
    transaction (SQLiteOffsetStore); one of them is SIGKILLed at a random
    moment, often inside the transaction, and restarted, while a producer keeps
    appending. At the end every record's effect is in the database exactly once,
    in offset order per partition."""
    rnd = random.Random("consumers")
    d = tmp_path / "log"
    with us.Log(d) as log:
        log.create_topic(TOPIC, partitions=4, segment_bytes=16384)
    dbpath = str(tmp_path / "app.db")
    stop = tmp_path / "stop-producer"
    stop_members = tmp_path / "stop-members"
    acks_file = tmp_path / "acks"
    prod_out = tmp_path / "producer.out"
    producer = zygote.spawn("produce", {
        "log": str(d), "topic": TOPIC, "acks": "written", "producer": "p0", "inc": 0,
        "acks_file": str(acks_file), "keys": 50, "pad_max": 50, "window": 20, "pause_ms": 20,
        "stop_file": str(stop)}, prod_out)

    def consumer(k, inc):
        return zygote.spawn("consume", {
            "log": str(d), "topic": TOPIC, "group": "g", "db": dbpath, "member": f"c{k}.{inc}",
            "progress_file": str(tmp_path / f"progress{k}.{inc}"), "hold_ms": 4,
            "max_records": rnd.choice([1, 5, 50]), "stop_file": str(stop_members)},
            tmp_path / f"consumer{k}.{inc}.out")

    members = {0: (consumer(0, 0), 0), 1: (consumer(1, 0), 0)}
    in_txn = redelivered = 0
    for n in range(scale.consumer_kills):
        time.sleep(rnd.uniform(0.05, 0.25))
        k = rnd.randrange(2)
        pid, inc = members[k]
        status = zygote.kill(pid)
        assert status == -9, f"consumer {k}.{inc} exited by itself ({status}):\n" + \
            _out_of(tmp_path / f"consumer{k}.{inc}.out")
        _, mid_txn = _progress(tmp_path / f"progress{k}.{inc}")
        in_txn += mid_txn
        figures.add("kills_survived")
        members[k] = (consumer(k, inc + 1), inc + 1)
    # Stop producing, let the members catch up, then stop them.
    stop.touch()
    assert zygote.wait(producer) == 0, _out_of(prod_out)
    acked, errors = read_acks(acks_file)
    assert not errors, errors[:5]
    with us.Log(d) as log:
        ends = {p.index: p.end_offset for p in log.topic(TOPIC)}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _, offs, _ = _effects_state(dbpath)
        if all(offs.get(p) == e for p, e in ends.items()):
            break
        time.sleep(0.05)
    stop_members.touch()
    for k, (pid, inc) in members.items():
        assert zygote.wait(pid) == 0, _out_of(tmp_path / f"consumer{k}.{inc}.out")
    rows, offs, order = _effects_state(dbpath)
    assert offs == ends, (offs, ends)
    twice = [r for r in rows if r[3] != 1]
    applied = {(p, o): dig for p, o, dig, _ in rows}
    lost = [a for a in acked if applied.get((a[0], a[1])) != a[2]]
    assert set(applied) == {(p, o) for p, e in ends.items() for o in range(e)}
    # Per partition, effects were applied in offset order, each once.
    per_part = {}
    for p, o in order:
        per_part.setdefault(p, []).append(o)
    delivered = sum(_progress(f)[0] for f in tmp_path.glob("progress*"))
    redelivered = delivered - len(rows)
    figures.add("effects_checked", len(rows))
    figures.add("effects_applied_twice", len(twice))
    figures.add("effects_lost", len(lost))
    figures.add("kills_between_effect_and_commit", in_txn)
    figures.add("redeliveries", redelivered)
    figures.add("acked_records_checked", len(acked))
    assert not twice, twice[:5]
    assert not lost, lost[:5]
    assert all(v == list(range(ends[p])) for p, v in per_part.items())
    assert in_txn > 0, "no kill landed between effect and commit; the test proved nothing"


def test_booking_workers_sigkilled_at_random(tmp_path, zygote, figures, scale):
    """The booking service's read model (effects, outbox and offset in one
    SQLite transaction) with two workers in its group, SIGKILLed at random
    moments and restarted: once caught up it equals the fold of the whole
    input log (rebuild), so no record's effect was lost or applied twice."""
    from unstoppable._core.hashing import xxh64_partition
    from unstoppable.booking import events as ev
    from unstoppable.booking.readmodel import ReadModel, connect, diff_snapshots
    from unstoppable.booking.rebuild import rebuild
    from unstoppable.booking.service import ServiceConfig, committed_offsets, config_dict, create_topics
    rnd = random.Random("booking")
    cfg = ServiceConfig(log_path=str(tmp_path / "log"), db_path=str(tmp_path / "live.db"),
                        ttl_ms=600_000, batch=100, membership_poll_ms=50)
    parts = 4
    n_kills = max(scale.consumer_kills // 2, 10)
    with us.Log(cfg.log_path) as log:
        asyncio.run(create_topics(log, cfg, partitions=parts))
        recs = {p: [] for p in range(parts)}
        for i in range(5000 * n_kills):             # work enough for the kills to land in
            seat = f"s{rnd.randrange(500)}"
            p = xxh64_partition(seat.encode(), parts)
            recs[p].append((seat.encode(), ev.CODEC.encode(ev.reservation_requested(f"b{i}", f"u{i}", seat))))
            if rnd.random() < 0.6:
                recs[p].append((seat.encode(), ev.CODEC.encode(
                    ev.payment_received(f"b{i}", seat, f"p{i}", 100, f"u{i}"))))
        t = log.topic(cfg.topic)
        for p, rs in recs.items():
            for k in range(0, len(rs), 500):
                t.partition(p).append(rs[k:k + 500])
        ends = t.end_offsets()
    total = sum(ends)

    def worker(k, inc):
        return zygote.spawn("booking_worker", {"cfg": config_dict(cfg)}, tmp_path / f"w{k}.{inc}.out")

    workers = {0: (worker(0, 0), 0), 1: (worker(1, 0), 0)}
    kills = mid_stream = 0

    def committed() -> int:
        # Opened afresh: the workers make the read model (a directory of one
        # file per partition) when they start.
        if not os.path.exists(cfg.db_path):
            return 0
        db = connect(cfg.db_path)
        try:
            return sum(committed_offsets(db, cfg.group, cfg.topic).values())
        finally:
            db.close()

    for _ in range(n_kills):
        time.sleep(rnd.uniform(0.03, 0.2))
        k = rnd.randrange(2)
        pid, inc = workers[k]
        assert zygote.kill(pid) == -9, _out_of(tmp_path / f"w{k}.{inc}.out")
        kills += 1
        mid_stream += committed() < total
        workers[k] = (worker(k, inc + 1), inc + 1)
    assert mid_stream >= kills // 2, (mid_stream, kills)   # most kills found work left
    db = connect(cfg.db_path)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            com = committed_offsets(db, cfg.group, cfg.topic)
            pending = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            if all(com.get(p, 0) == e for p, e in enumerate(ends)) and pending == 0:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"the workers did not catch up: {com} of {ends}")
        handled_events = ReadModel(db).stats().get("events", 0)
    finally:
        db.close()
    for k, (pid, inc) in workers.items():
        os.kill(pid, 15)
        assert zygote.wait(pid) == 0, _out_of(tmp_path / f"w{k}.{inc}.out")
    with us.Log(cfg.log_path) as log:
        rebuilt = asyncio.run(rebuild(log, cfg, str(tmp_path / "rebuilt.db")))
        want = rebuilt.snapshot()
        rebuilt.db.close()
    live_db = connect(cfg.db_path)
    try:
        live = ReadModel(live_db).snapshot()
    finally:
        live_db.close()
    assert diff_snapshots(live, want) == []
    assert handled_events == total                   # every input record counted once
    figures.add("kills_survived", kills)
    figures.add("effects_checked", total)


def test_a_booking_worker_stopped_as_soon_as_it_is_spawned_exits_cleanly(tmp_path, zygote):
    """SIGTERM at any moment of a worker's start stops it with exit 0: the
    signal waits (blocked across the fork) until run_worker has its handler.
    The booking kill loop's last SIGTERM found a just-spawned worker."""
    from unstoppable.booking.service import ServiceConfig, config_dict, create_topics
    cfg = ServiceConfig(log_path=str(tmp_path / "log"), db_path=str(tmp_path / "live.db"))
    with us.Log(cfg.log_path) as log:
        asyncio.run(create_topics(log, cfg, partitions=2))
    for k in range(5):
        pid = zygote.spawn("booking_worker", {"cfg": config_dict(cfg)}, tmp_path / f"w{k}.out")
        os.kill(pid, 15)
        assert zygote.wait(pid) == 0, (tmp_path / f"w{k}.out").read_text()
