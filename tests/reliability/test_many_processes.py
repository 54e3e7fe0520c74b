"""Many processes on one log: 8 idempotent producer processes and 4 consumer
processes in one group, for a fixed time, with members SIGKILLed and restarted
at random. At the end every acknowledged record is in the log once and
intact, every record's effect was committed exactly once in the consumers'
SQLite read model (SQLiteOffsetStore, effect and offset in one transaction),
and per key the order holds, in the log and in the order effects were applied."""
from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

import pytest

import unstoppable as us

from .util import Zygote, check_log, digest, drop_torn_line, read_acks, read_partition

PRODUCERS = 8
CONSUMERS = 4
PARTITIONS = 8


@pytest.fixture
def zygote():
    z = Zygote()
    yield z
    z.close()


def _out(path) -> str:
    try:
        return Path(path).read_text()[-3000:]
    except FileNotFoundError:
        return ""


def test_producers_and_a_consumer_group_killed_at_random(tmp_path, zygote, figures, scale):
    rnd = random.Random("many")
    d = tmp_path / "log"
    with us.Log(d) as log:
        log.create_topic("m", partitions=PARTITIONS, segment_bytes=65536, index_interval_bytes=1024)
    db = str(tmp_path / "read-model.db")
    stop_producers = tmp_path / "stop-producers"
    stop_consumers = tmp_path / "stop-consumers"

    def producer(k, inc):
        return zygote.spawn("produce", {
            "log": str(d), "topic": "m", "acks": "fsync" if k % 2 else "written",
            "producer": f"p{k}", "inc": inc, "seed": rnd.randrange(1 << 30),
            "acks_file": str(tmp_path / f"acks-p{k}"), "keys": 32, "pad_max": 100,
            "window": 16, "pause_ms": 30, "stop_file": str(stop_producers)},
            tmp_path / f"p{k}.{inc}.out")

    def consumer(k, inc):
        return zygote.spawn("consume", {
            "log": str(d), "topic": "m", "group": "g", "db": db, "member": f"c{k}.{inc}",
            "progress_file": str(tmp_path / f"progress-c{k}.{inc}"), "hold_ms": 2,
            "max_records": 100, "stop_file": str(stop_consumers), "membership_poll_ms": 50},
            tmp_path / f"c{k}.{inc}.out")

    members = {("p", k): [producer(k, 0), 0] for k in range(PRODUCERS)}
    members.update({("c", k): [consumer(k, 0), 0] for k in range(CONSUMERS)})
    kills = {"p": 0, "c": 0}
    in_txn = 0
    deadline = time.monotonic() + scale.many_seconds
    while time.monotonic() < deadline:
        time.sleep(rnd.uniform(0.2, 0.8))
        key = rnd.choice(sorted(members))
        pid, inc = members[key]
        status = zygote.kill(pid)
        kind, k = key
        assert status == -9, f"{kind}{k}.{inc} exited by itself ({status}):\n" + \
            _out(tmp_path / f"{kind}{k}.{inc}.out")
        if kind == "p":
            drop_torn_line(tmp_path / f"acks-p{k}")
        if kind == "c":
            lines = Path(tmp_path / f"progress-c{k}.{inc}").read_bytes().split(b"\n")[:-1] \
                if (tmp_path / f"progress-c{k}.{inc}").exists() else []
            in_txn += bool(lines) and lines[-1].startswith(b"B ")
        kills[kind] += 1
        members[key] = [(producer if kind == "p" else consumer)(k, inc + 1), inc + 1]
    # Producers stop (cleanly, after their last acks); consumers catch up.
    stop_producers.touch()
    for k in range(PRODUCERS):
        pid, inc = members[("p", k)]
        assert zygote.wait(pid) == 0, _out(tmp_path / f"p{k}.{inc}.out")
    with us.Log(d) as log:
        ends = {p.index: p.end_offset for p in log.topic("m")}
    caught_up = False
    t_end = time.monotonic() + 120
    while time.monotonic() < t_end and not caught_up:
        time.sleep(0.1)
        con = sqlite3.connect(db, timeout=60)
        try:
            offs = dict(((p, o) for p, o in con.execute(
                "SELECT part, next_offset FROM unstoppable_offsets WHERE grp = 'g'")))
        finally:
            con.close()
        caught_up = all(offs.get(p) == e for p, e in ends.items())
    assert caught_up, (offs, ends)
    stop_consumers.touch()
    for k in range(CONSUMERS):
        pid, inc = members[("c", k)]
        assert zygote.wait(pid) == 0, _out(tmp_path / f"c{k}.{inc}.out")

    # The log: every acknowledged record there once and intact, per-key order.
    acked = []
    for k in range(PRODUCERS):
        a, errors = read_acks(tmp_path / f"acks-p{k}")
        assert not errors, errors[:5]
        acked += a
    res = check_log(d, "m", acked, figures)
    assert res["checked"] == len(acked) > 1000
    # The read model: each record's effect exactly once, in offset order per partition.
    with us.Log(d) as log:
        digests = {(p.index, off): digest(v) for p in log.topic("m") for off, v in read_partition(p)}
    con = sqlite3.connect(db, timeout=60)
    try:
        rows = con.execute("SELECT part, off, digest FROM effects ORDER BY seq").fetchall()
    finally:
        con.close()
    applied = {}
    twice = []
    order_breaks = []
    last = {}
    for part, off, dig in rows:
        if (part, off) in applied:
            twice.append((part, off))
        applied[(part, off)] = dig
        if last.get(part, -1) >= off:
            order_breaks.append((part, last[part], off))
        last[part] = off
    lost = [k for k in digests if k not in applied]
    wrong = [k for k, dig in applied.items() if digests.get(k) != dig]
    deliveries = 0
    for f in tmp_path.glob("progress-c*"):
        for ln in Path(f).read_bytes().split(b"\n")[:-1]:
            if ln.startswith(b"B "):
                _, _p, first, lst = ln.split()
                deliveries += int(lst) - int(first) + 1
    figures.add("kills_survived", kills["p"] + kills["c"])
    figures.add("acked_records_checked", res["checked"])
    figures.add("effects_checked", len(applied))
    figures.add("effects_applied_twice", len(twice))
    figures.add("effects_lost", len(lost))
    figures.add("kills_between_effect_and_commit", in_txn)
    figures.add("redeliveries", deliveries - len(rows))
    assert not twice, twice[:5]
    assert not lost and not wrong, (lost[:5], wrong[:5])
    assert not order_breaks, order_breaks[:5]
    assert kills["p"] >= 3 and kills["c"] >= 3, kills
