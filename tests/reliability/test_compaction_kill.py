"""Kill loop for compaction (issue 19): a process that does nothing but clean
a compacted topic is SIGKILLed at random moments (and, half of the time, at a
chosen step of a swap, merges of segments included), while this process keeps appending. After every kill
the log is reopened (which finishes or rolls back a half-done swap) and
checked against a model of everything appended: every key's latest value is
there, every record read is the one appended at its offset, offsets only grow.

About 20 s by default; ``UNSTOPPABLE_SOAK=1`` runs it for 3 minutes."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import unstoppable as us

from .conftest import SOAK

TOPIC = "c"
PARTITIONS = 2
SECONDS = 180.0 if SOAK else 20.0

CHILD = r"""
import os, signal, sys
import unstoppable as us
from unstoppable.storage import compaction
path, kill_step, kill_nth, ready = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
seen = [0]
def hook(step, base):
    if step == kill_step:
        seen[0] += 1
        if seen[0] >= kill_nth:
            os.kill(os.getpid(), signal.SIGKILL)
log = us.Log(path)
t = log.topic("c")
open(ready, "w").close()
while True:
    for p in t:
        compaction.clean_partition(p, _hook=hook)
"""


def _read_all(p) -> list:
    out = []
    off = p.start_offset
    while off < p.end_offset:
        rs = p.read(off)
        assert rs, f"read({off}) gave nothing below the end {p.end_offset}"
        out += rs
        off = rs[-1].offset + 1
    return out


def _check(log, written: list[dict]) -> int:
    kept = 0
    for i, p in enumerate(log.topic(TOPIC)):
        recs = _read_all(p)
        offs = [r.offset for r in recs]
        assert offs == sorted(set(offs)), f"partition {i}: offsets repeat or go back"
        model = written[i]
        for r in recs:
            got = (bytes(r.key), None if r.value is None else bytes(r.value))
            assert model.get(r.offset) == got, \
                f"partition {i} offset {r.offset}: {got!r} was never appended there"
        present = set(offs)
        latest: dict = {}
        for off in sorted(model):
            latest[model[off][0]] = off
        keys_present = {bytes(r.key) for r in recs}
        for k, off in latest.items():
            if model[off][1] is not None:
                assert off in present, f"partition {i}: key {k!r} lost its latest value ({off})"
            elif off not in present:
                # The delete itself expired: then nothing older of the key
                # may be left, or the key would come back to life.
                assert k not in keys_present, f"partition {i}: deleted key {k!r} resurrected"
        kept += len(recs)
    return kept


def test_cleaner_sigkilled_inside_cleanings(tmp_path, figures):
    rnd = random.Random("compaction-kill")
    d = tmp_path / "log"
    log = us.Log(d)
    log.create_topic(TOPIC, PARTITIONS, cleanup_policy="compact", delete_retention_ms=0,
                     segment_bytes=4096, max_batch_bytes=1024, index_interval_bytes=256)
    written: list[dict] = [{} for _ in range(PARTITIONS)]
    seq = 0
    kills = hook_kills = appended = 0
    deadline = time.monotonic() + SECONDS
    env = dict(os.environ)
    while time.monotonic() < deadline:
        ready = tmp_path / f"ready{kills}"
        step = rnd.choice(["written", "swap", "renamed", "merging", "checkpoint", "none"])
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(d), step, str(rnd.randint(1, 6)), str(ready)],
            env=env, stderr=subprocess.PIPE)
        # Appends go on while the child cleans (another process, same files).
        t = log.topic(TOPIC)
        while not ready.exists() and child.poll() is None:
            time.sleep(0.005)
        t_end = time.monotonic() + rnd.uniform(0.0, 0.4)
        while time.monotonic() < t_end and child.poll() is None:
            for i, p in enumerate(t):
                recs = []
                for _ in range(rnd.randint(1, 20)):
                    k = b"key-%d" % rnd.randrange(40)
                    v = None if rnd.random() < 0.1 else b"%d:" % seq + b"x" * rnd.randrange(80)
                    seq += 1
                    recs.append((k, v))
                base = p.append(recs)
                for j, r in enumerate(recs):
                    written[i][base + j] = r
                appended += len(recs)
            if rnd.random() < 0.3:
                log.flush()  # moves the checkpoints: more segments become cleanable
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        else:
            hook_kills += 1
        child.wait()
        err = child.stderr.read().decode()
        assert child.returncode == -signal.SIGKILL, f"cleaner died otherwise: {err[-2000:]}"
        kills += 1
        # This process's view (catalog facts from before the swaps) must hold.
        _check(log, written)
        if rnd.random() < 0.5:
            # Reopen: finishes or rolls back the dead cleaner's swap.
            log.close()
            log = us.Log(d)
            _check(log, written)   # opening the partitions finished the swaps
            assert not [n for i in range(PARTITIONS)
                        for n in os.listdir(d / "topics" / TOPIC / str(i))
                        if n.endswith((".cleaned", ".merged"))]
    log.flush()
    log.compact(TOPIC)
    kept = _check(log, written)
    # Cleaned segments were merged: far fewer segments than were rolled.
    merges = sum(1 for i in range(PARTITIONS)
                 for n in os.listdir(d / "topics" / TOPIC / str(i)) if n.endswith(".log"))
    rep = log.verify()
    assert rep.ok, rep.as_dict()["problems"][:3]
    log.close()
    assert kills >= 5 and hook_kills >= 1
    assert kept < appended  # compaction did happen
    assert merges < appended * 60 / 4096 / 4, merges     # (segments of 4096 bytes)
    figures.add("kills_survived", kills)
    figures.add("acked_records_checked", kept)
