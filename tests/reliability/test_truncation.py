"""No SIGBUS through mmap, ever: while reader and writer processes work on a
log, another process (this one) truncates its files (sealed and active
segments, offset and time indexes, heads) to random sizes, over and over.
Every reader and writer must live on and see only the library's own errors
(CorruptLogError and friends); afterwards the log opens, and whatever reads
is what was written."""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

import unstoppable as us
from unstoppable.errors import UnstoppableError

from .util import Zygote


@pytest.fixture
def zygote():
    z = Zygote()
    yield z
    z.close()


def _build(path, rnd):
    expected = {}
    with us.Log(path) as log:
        t = log.create_topic("t", partitions=3, segment_bytes=8192, index_interval_bytes=256)
        for i in range(900):
            v = b"%05d:" % i + bytes([97 + i % 26]) * rnd.randrange(10, 200)
            p = t.partition(i % 3)
            off = p.append([v])
            expected[(i % 3, off)] = v
    return expected


@pytest.mark.parametrize("what", ["segments", "indexes", "heads", "anything"])
def test_files_truncated_under_readers_and_writers(tmp_path, zygote, figures, scale, what):
    rnd = random.Random(what)
    d = tmp_path / "log"
    expected = _build(d, rnd)
    stop = tmp_path / "stop"
    kids = []
    for k, role in enumerate(["churn_read", "churn_read", "churn_write"]):
        counts = tmp_path / f"counts{k}.json"
        pid = zygote.spawn(role, {"log": str(d), "topic": "t", "stop_file": str(stop),
                                  "counts_file": str(counts)}, tmp_path / f"out{k}")
        kids.append((pid, counts, tmp_path / f"out{k}"))
    time.sleep(0.2)
    parts = [os.path.join(d, "topics", "t", str(i)) for i in range(3)]
    exts = {"segments": (".log",), "indexes": (".index", ".timeindex"), "heads": ("head",),
            "anything": (".log", ".index", ".timeindex", "head")}[what]
    cuts = 0
    for _ in range(scale.truncation_rounds):
        part = rnd.choice(parts)
        names = [n for n in os.listdir(part) if n.endswith(exts)]
        if not names:
            continue
        victim = os.path.join(part, rnd.choice(names))
        try:
            size = os.path.getsize(victim)
            os.truncate(victim, rnd.choice([0, size // 2, rnd.randrange(size + 1), max(size - 1, 0)]))
            cuts += 1
        except FileNotFoundError:
            continue
        time.sleep(rnd.uniform(0.002, 0.03))
    stop.touch()
    absorbed = 0
    for pid, counts, out in kids:
        status = zygote.wait(pid)
        assert status == 0, f"a child died ({status}):\n{Path(out).read_text()[-3000:]}"
        c = json.loads(Path(counts).read_text())
        assert not c["other"], c["other"][:5]
        absorbed += c["sigbus_absorbed"]
    figures.add("truncations_under_readers", cuts)
    figures.add("sigbus_absorbed", absorbed)
    assert cuts >= scale.truncation_rounds // 2
    # The damaged log opens; what reads is what was written (or the writer's).
    with us.Log(d) as log:
        for p in log.topic("t"):
            off = p.start_offset
            while off < p.end_offset:
                try:
                    rs = p.read(off, max_records=100)
                except UnstoppableError:
                    off += 1
                    continue
                assert rs and rs[0].offset == off
                for r in rs:
                    want = expected.get((p.index, r.offset))
                    got = bytes(r.value)
                    # The first writer's record at its offset, or one the churn writer added.
                    assert got == want or got.startswith(b"w"), (p.index, r.offset, got[:20])
                off = rs[-1].offset + 1
        log.verify()
