"""Several processes on one log: serialized appends, whole batches, live readers."""
import multiprocessing as mp
import os
import time

import unstoppable as us

CTX = mp.get_context("spawn")


def _writer(path, wid, appends, segment_bytes):
    log = us.Log(path)
    t = log.create_topic("shared", partitions=2, segment_bytes=segment_bytes)
    for i in range(appends):
        n = 1 + (i * 7 + wid) % 5
        t.partition(i % 2).append([b"%d:%d:%d:%d" % (wid, i, j, n) for j in range(n)])
    log.close()


def _reader(path, total, q):
    """Follow partition 0 from another process until `total` records arrive."""
    log = us.Log(path)
    while "shared" not in log.topics():
        time.sleep(0.001)
    p = log.topic("shared").partition(0)
    off = 0
    seen = []
    deadline = time.monotonic() + 60
    while off < total and time.monotonic() < deadline:
        c = p.change_counter
        rs = p.read(off, max_records=10_000) if off < p.end_offset else []
        for r in rs:
            seen.append(bytes(r.value))
        if rs:
            off = rs[-1].offset + 1
        else:
            while p.change_counter == c and time.monotonic() < deadline:
                time.sleep(0.0005)
    q.put(seen)
    log.close()


def test_many_processes_append_and_read(tmp_path):
    path = str(tmp_path / "log")
    us.Log(path).close()
    writers, appends = 4, 300
    per_partition0 = sum(1 + (i * 7 + w) % 5 for w in range(writers) for i in range(0, appends, 2))
    q = CTX.Queue()
    reader = CTX.Process(target=_reader, args=(path, per_partition0, q))
    reader.start()
    procs = [CTX.Process(target=_writer, args=(path, w, appends, 8192)) for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    live = q.get(timeout=60)
    reader.join(30)

    with us.Log(path) as log:
        t = log.topic("shared")
        assert log.verify().ok
        for part in range(2):
            p = t.partition(part)
            vals = []
            off = 0
            while off < p.end_offset:
                rs = p.read(off, max_records=5000)
                vals += [bytes(r.value) for r in rs]
                off = rs[-1].offset + 1
            expected = sum(1 + (i * 7 + w) % 5 for w in range(writers) for i in range(part, appends, 2))
            assert len(vals) == expected
            rows = [tuple(map(int, v.split(b":"))) for v in vals]
            # No append is interleaved with another: its records sit together, in order.
            k = 0
            while k < len(rows):
                w, i, j, n = rows[k]
                assert j == 0
                assert rows[k:k + n] == [(w, i, jj, n) for jj in range(n)]
                k += n
            # Each writer's appends appear in the order it made them.
            for w in range(writers):
                mine = [r[1] for r in rows if r[0] == w and r[2] == 0]
                assert mine == list(range(part, appends, 2))
            if part == 0:
                # The live reader in another process saw exactly the same records.
                assert live == vals
