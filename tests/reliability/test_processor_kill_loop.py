"""Kill loop for the generic exactly-once processor (us.Processor): two
group members whose handler fails on poison records (always) and on others
now and then (once), SIGKILLed at random moments, often inside the
processor's transaction, and restarted. At the end every good record's
effect is in the database exactly once, every poison record is dead-lettered
exactly once (after its attempts) and has no effect, and the committed
offsets are the log's ends."""
from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

import pytest

import unstoppable as us

from .util import Zygote

TOPIC = "t"


@pytest.fixture
def zygote():
    z = Zygote()
    yield z
    z.close()


def _out_of(path) -> str:
    try:
        return Path(path).read_text()[-3000:]
    except FileNotFoundError:
        return ""


def _mid_txn(path) -> bool:
    try:
        lines = Path(path).read_bytes().split(b"\n")[:-1]
    except FileNotFoundError:
        return False
    return bool(lines) and lines[-1].startswith(b"B ")


def test_processor_members_sigkilled_at_random(tmp_path, zygote, figures, scale):
    rnd = random.Random("processor")
    d = tmp_path / "log"
    parts = 3
    n_kills = max(scale.consumer_kills // 2, 10)
    poison = set()
    with us.Log(d) as log:
        t = log.create_topic(TOPIC, partitions=parts)
        for p in range(parts):
            vals = []
            for o in range(700 * n_kills // parts):
                if rnd.random() < 0.003:
                    poison.add((p, o))
                    vals.append(b"poison %d" % o)
                else:
                    vals.append(b"good %d" % o)
            for k in range(0, len(vals), 500):
                t.partition(p).append(vals[k:k + 500])
        ends = t.end_offsets()
    assert poison
    dbpath = str(tmp_path / "app.db")
    stop = tmp_path / "stop"

    def member(k, inc):
        return zygote.spawn("processor", {
            "log": str(d), "topic": TOPIC, "group": "g", "db": dbpath, "member": f"m{k}.{inc}",
            "progress_file": str(tmp_path / f"progress{k}.{inc}"), "stop_file": str(stop),
            "max_records": rnd.choice([7, 50, 200])}, tmp_path / f"m{k}.{inc}.out")

    members = {0: (member(0, 0), 0), 1: (member(1, 0), 0)}
    in_txn = 0
    for _ in range(n_kills):
        time.sleep(rnd.uniform(0.03, 0.2))
        k = rnd.randrange(2)
        pid, inc = members[k]
        assert zygote.kill(pid) == -9, _out_of(tmp_path / f"m{k}.{inc}.out")
        in_txn += _mid_txn(tmp_path / f"progress{k}.{inc}")
        members[k] = (member(k, inc + 1), inc + 1)

    def state():
        db = sqlite3.connect(dbpath, timeout=60)
        try:
            offs = dict(db.execute("SELECT part, next_offset FROM unstoppable_offsets").fetchall())
            effects = db.execute("SELECT part, off, COUNT(*) FROM effects GROUP BY part, off").fetchall()
            dead = db.execute("SELECT part, off, COUNT(*), MAX(attempts) FROM dead GROUP BY part, off").fetchall()
        finally:
            db.close()
        return offs, effects, dead

    deadline = time.monotonic() + 120
    while True:
        offs, effects, dead = state()
        if all(offs.get(p) == e for p, e in enumerate(ends)):
            break
        assert time.monotonic() < deadline, f"the members did not catch up: {offs} of {ends}"
        time.sleep(0.05)
    stop.touch()
    for k, (pid, inc) in members.items():
        assert zygote.wait(pid) == 0, _out_of(tmp_path / f"m{k}.{inc}.out")
    offs, effects, dead = state()
    good = {(p, o) for p, e in enumerate(ends) for o in range(e)} - poison
    assert [e for e in effects if e[2] != 1] == []                 # none applied twice
    assert {(p, o) for p, o, _n in effects} == good                # none lost, no poison applied
    assert {(p, o) for p, o, _n, _a in dead} == poison             # every poison record dead-lettered
    assert all(n == 1 and a == 3 for _p, _o, n, a in dead)         # once each, after 3 attempts
    assert in_txn > 0, "no kill landed inside a transaction; the test proved nothing"
    figures.add("kills_survived", n_kills)
    figures.add("kills_between_effect_and_commit", in_txn)
    figures.add("effects_checked", len(effects))
