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


def _wait_child(pid, timeout):
    """waitpid with a deadline: SIGKILL the child if it hangs."""
    import signal
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hung"


def test_a_forked_child_can_append_and_sync_a_log_its_parent_had_open(tmp_path):
    """A child forked while the parent's sync thread and writer thread exist
    (and here, while the group-commit lock is held, as it is during a round)
    must start its own: none of the parent's threads exist in the child."""
    log = us.Log(tmp_path / "log")
    p = log.create_topic("t", partitions=1).partition(0)
    p.append([b"x" * 10] * 40_000)           # starts the C writer thread (pipelined append)
    got = []
    p.when_durable(p.end_offset, got.append)  # starts the sync thread
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [None]
    with log._group_commit._cond:             # a round in progress at the fork
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                base = p.append([b"y" * 10] * 40_000)   # pipelined: needs a writer thread
                p.flush()                               # group commit: needs the lock
                answers = []
                p.when_durable(p.end_offset, answers.append)
                assert answers == [None]                # already durable: answered at once
                assert bytes(p.read(base, 1)[0].value) == b"y" * 10
                code = 0
            finally:
                os._exit(code)
    assert _wait_child(pid, 60) == 0
    assert p.end_offset == 80_000
    log.close()
