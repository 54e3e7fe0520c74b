"""Appending and reading one partition: offsets, limits, segments, indexes,
timestamps, retention, idempotent producers."""
import os
import threading

import pytest

import unstoppable as us
from unstoppable.storage.appender import STREAM_MIN
from unstoppable.errors import (
    DuplicateSequenceError, InvalidRecordError, OffsetOutOfRangeError, OutOfOrderSequenceError,
    ProducerFencedError, RecordTooLargeError)


def values(records):
    return [bytes(r.value) for r in records]


def read_all(p, start=None):
    off = p.start_offset if start is None else start
    out = []
    while off < p.end_offset:
        rs = p.read(off, max_records=1000)
        assert rs, off
        assert [r.offset for r in rs] == list(range(off, off + len(rs)))
        out += rs
        off = rs[-1].offset + 1
    return out


def test_dense_offsets_and_round_trip(log):
    p = log.create_topic("t").partition(0)
    assert (p.start_offset, p.end_offset) == (0, 0)
    assert p.read(0) == []
    assert p.append([b"a", b"b"]) == 0
    assert p.append([(b"k", b"c", [("h", b"1")], 42)]) == 2
    assert p.end_offset == 3
    rs = p.read(0)
    assert values(rs) == [b"a", b"b", b"c"]
    assert [r.offset for r in rs] == [0, 1, 2]
    assert bytes(rs[2].key) == b"k" and rs[2].headers == [("h", b"1")] and rs[2].timestamp == 42
    assert rs[0].topic == "t" and rs[0].partition == 0
    assert isinstance(rs[0].value, memoryview) and rs[0].value.readonly


def test_read_limits(log):
    p = log.create_topic("t").partition(0)
    for i in range(10):
        p.append([b"%d-%d" % (i, j) for j in range(10)])
    assert len(p.read(0, max_records=7)) == 7
    assert p.read(55, max_records=3)[0].offset == 55
    # max_bytes: at least one batch, then whole batches up to the limit
    rs = p.read(0, max_bytes=1)
    assert len(rs) == 10
    assert len(p.read(5, max_bytes=1)) == 5
    assert len(p.read(0, max_records=1000, max_bytes=1 << 20)) == 100
    with pytest.raises(ValueError):
        p.read(0, max_records=0)


def test_offset_errors(log):
    p = log.create_topic("t").partition(0)
    p.append([b"x"] * 3)
    with pytest.raises(OffsetOutOfRangeError, match="outside"):
        p.read(4)
    with pytest.raises(OffsetOutOfRangeError):
        p.read(-1)
    with pytest.raises(TypeError):
        p.read("0")
    assert p.read(3) == []


def test_refused_append_writes_nothing(log):
    p = log.create_topic("t", max_record_bytes=1000).partition(0)
    p.append([b"ok"])
    size = os.path.getsize(os.path.join(p.path, "00000000000000000000.log"))
    with pytest.raises(RecordTooLargeError):
        p.append([b"a", b"x" * 2000])
    with pytest.raises(InvalidRecordError):
        p.append([b"a", "text"])
    with pytest.raises(ValueError, match="acks"):
        p.append([b"a"], acks="maybe")
    assert p.end_offset == 1
    assert os.path.getsize(os.path.join(p.path, "00000000000000000000.log")) == size


def test_segment_roll_and_index_lookups(log):
    p = log.create_topic("t", segment_bytes=16384, index_interval_bytes=256).partition(0)
    n = 0
    for i in range(300):
        k = 1 + i % 7
        p.append([b"%08d" % (n + j) + b"." * 50 for j in range(k)])
        n += k
    segs = sorted(f for f in os.listdir(p.path) if f.endswith(".log"))
    assert len(segs) > 5
    assert int(segs[1][:20]) > 0
    for off in [0, 1, 17, n // 2, n - 1] + [int(s[:20]) for s in segs[1:]] + [int(s[:20]) - 1 for s in segs[1:]]:
        (r,) = p.read(off, max_records=1)
        assert r.offset == off and bytes(r.value[:8]) == b"%08d" % off
    assert len(read_all(p)) == n
    assert log.verify().ok


def test_single_append_larger_than_a_segment(log):
    p = log.create_topic("t", segment_bytes=8192).partition(0)
    p.append([b"s"])
    p.append([b"%05d" % i + b"x" * 195 for i in range(200)])  # ~40 KiB in one append
    p.append([b"after"])
    rs = read_all(p)
    assert len(rs) == 202 and bytes(rs[-1].value) == b"after"
    assert bytes(p.read(150, max_records=1)[0].value[:5]) == b"00149"


def test_offset_for_time(log):
    p = log.create_topic("t", segment_bytes=8192, index_interval_bytes=200).partition(0)
    ts = []
    for i in range(400):
        t = 1_000_000 + i * 10
        p.append([(None, b"v" * 40, None, t)])
        ts.append(t)
    assert p.offset_for_time(0) == 0
    assert p.offset_for_time(1_000_000) == 0
    assert p.offset_for_time(1_000_001) == 1
    assert p.offset_for_time(1_000_000 + 2345) == 235
    assert p.offset_for_time(ts[-1]) == 399
    assert p.offset_for_time(ts[-1] + 1) is None
    # Non-monotonic timestamps: the first offset whose timestamp is >= target.
    q = log.create_topic("u").partition(0)
    q.append([(None, b"a", None, 50), (None, b"b", None, 10), (None, b"c", None, 60), (None, b"d", None, 20)])
    assert q.offset_for_time(15) == 0
    assert q.offset_for_time(55) == 2
    assert q.offset_for_time(61) is None


def test_retention_by_bytes_never_touches_active(log):
    p = log.create_topic("t", segment_bytes=4096, retention_bytes=10_000).partition(0)
    for i in range(200):
        p.append([b"%05d" % i + b"-" * 95])
    assert p.start_offset > 0
    assert p.end_offset == 200
    rs = read_all(p)
    assert bytes(rs[0].value[:5]) == b"%05d" % p.start_offset
    total = sum(os.path.getsize(os.path.join(p.path, f)) for f in os.listdir(p.path) if f.endswith(".log"))
    assert total <= 10_000 + 4096
    with pytest.raises(OffsetOutOfRangeError):
        p.read(0)
    assert log.verify().ok


def test_retention_by_time(log):
    p = log.create_topic("t", segment_bytes=4096, retention_ms=1000).partition(0)
    import time
    now = time.time_ns() // 1_000_000
    for i in range(100):
        p.append([(None, b"o" * 100, None, now - 10_000)])  # ten seconds old
    for i in range(5):
        p.append([(None, b"n" * 100, None, now)])
    p.enforce_retention()
    assert p.start_offset > 0
    assert p.end_offset == 105
    # The active segment is never removed, even when old.
    q = log.create_topic("q", retention_ms=1).partition(0)
    q.append([(None, b"x", None, 1)])
    assert q.enforce_retention() == 0 and q.end_offset == 1


def test_concurrent_threads_append_atomically(log):
    p = log.create_topic("t", segment_bytes=1 << 16).partition(0)

    def work(t):
        for i in range(200):
            p.append([b"%d:%d:%d" % (t, i, j) for j in range(5)])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    rs = read_all(p)
    assert len(rs) == 4000
    # Each append's five records sit together, and each thread's appends are in order.
    for k in range(0, 4000, 5):
        group = [bytes(r.value).split(b":") for r in rs[k:k + 5]]
        assert len({(g[0], g[1]) for g in group}) == 1
        assert [g[2] for g in group] == [b"0", b"1", b"2", b"3", b"4"]
    for t in range(4):
        seq = [int(bytes(r.value).split(b":")[1]) for r in rs if bytes(r.value).startswith(b"%d:" % t)]
        assert seq == sorted(seq)


def test_fsync_acks_and_durable_offset(log):
    p = log.create_topic("t").partition(0)
    p.append([b"a"])
    assert p.durable_offset == 0
    p.append([b"b"], acks="fsync")
    assert p.durable_offset == 2
    results = []

    def w(i):
        results.append(p.append([b"%d" % i], acks="fsync"))

    ts = [threading.Thread(target=w, args=(i,)) for i in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(results) == list(range(2, 22))
    assert p.durable_offset == 22


def test_listener_called_after_append(log):
    p = log.create_topic("t").partition(0)
    seen = []
    cb = lambda: seen.append(p.end_offset)  # noqa: E731
    p.add_listener(cb)
    c0 = p.change_counter
    p.append([b"a"])
    p.append([b"b", b"c"])
    assert seen == [1, 3]
    assert p.change_counter != c0
    p.remove_listener(cb)
    p.append([b"d"])
    assert seen == [1, 3]


def test_idempotent_producer_dedup_gap_and_fencing(log):
    p = log.create_topic("t", segment_bytes=4096).partition(0)
    assert p.producer_state(5) is None
    with pytest.raises(OutOfOrderSequenceError, match="sequence 0"):
        p.append([b"x"], producer_id=5, producer_epoch=0, base_sequence=3)
    assert p.append([b"a", b"b"], producer_id=5, producer_epoch=0, base_sequence=0) == 0
    assert p.append([b"c"], producer_id=5, producer_epoch=0, base_sequence=2) == 2
    # A retry is dropped and answered with the original offset.
    assert p.append([b"a", b"b"], producer_id=5, producer_epoch=0, base_sequence=0) == 0
    assert p.end_offset == 3
    with pytest.raises(OutOfOrderSequenceError, match="never written"):
        p.append([b"z"], producer_id=5, producer_epoch=0, base_sequence=9)
    with pytest.raises(DuplicateSequenceError):
        p.append([b"b"], producer_id=5, producer_epoch=0, base_sequence=1)
    assert p.producer_state(5) == (0, 3)
    # Many more batches than are remembered, across segment rolls.
    for s in range(3, 200):
        p.append([b"%d" % s], producer_id=5, producer_epoch=0, base_sequence=s)
    with pytest.raises(DuplicateSequenceError):
        p.append([b"c"], producer_id=5, producer_epoch=0, base_sequence=2)
    assert p.append([b"199"], producer_id=5, producer_epoch=0, base_sequence=199) == 199
    # A new epoch starts over at 0 and fences the old one.
    assert p.append([b"e1"], producer_id=5, producer_epoch=1, base_sequence=0) == 200
    with pytest.raises(ProducerFencedError):
        p.append([b"old"], producer_id=5, producer_epoch=0, base_sequence=200)
    assert p.end_offset == 201 and p.producer_state(5) == (1, 1)


def test_idempotent_state_survives_reopen_and_other_handles(log_dir):
    with us.Log(log_dir) as log:
        p = log.create_topic("t", segment_bytes=4096).partition(0)
        for s in range(100):
            p.append([b"v%d" % s], producer_id=11, producer_epoch=0, base_sequence=s)
        # Another handle (as another process would) appends for the same producer.
        with us.Log(log_dir) as other:
            q = other.topic("t").partition(0)
            assert q.producer_state(11) == (0, 100)
            q.append([b"v100"], producer_id=11, producer_epoch=0, base_sequence=100)
        assert p.append([b"v100"], producer_id=11, producer_epoch=0, base_sequence=100) == 100
        assert p.producer_state(11) == (0, 101)
    with us.Log(log_dir) as log:
        p = log.topic("t").partition(0)
        assert p.producer_state(11) == (0, 101)
        assert p.append([b"v99"], producer_id=11, producer_epoch=0, base_sequence=99) == 99
        assert p.end_offset == 101


def test_idempotent_append_must_fit_one_batch(log):
    p = log.create_topic("t", segment_bytes=8192).partition(0)
    with pytest.raises(ValueError, match="one batch"):
        p.append([b"x" * 1000] * 20, producer_id=1, producer_epoch=0, base_sequence=0)
    assert p.end_offset == 0


def test_large_pipelined_append_across_many_segments(log_dir):
    with us.Log(log_dir) as log:
        p = log.create_topic("t", segment_bytes=65536, index_interval_bytes=1024).partition(0)
        p.append([b"first"], timestamp=1)
        n = STREAM_MIN + 5000  # large enough to take the pipelined path
        vals = [b"%07d" % i + b"~" * (i % 90) for i in range(n)]
        assert p.append(vals, timestamp=7) == 1
        assert p.append([b"last"]) == n + 1
        segs = [f for f in os.listdir(p.path) if f.endswith(".log")]
        assert len(segs) > 20
        rs = read_all(p)
        assert [bytes(r.value) for r in rs] == [b"first"] + vals + [b"last"]
        for off in (1, 2, 9999, 15000, n):
            assert bytes(p.read(off, max_records=1)[0].value[:7]) == b"%07d" % (off - 1)
        assert p.offset_for_time(7) == 1
        assert log.verify().ok
    with us.Log(log_dir) as log:
        p = log.topic("t").partition(0)
        assert p.recovery.mode == "tail" and p.end_offset == n + 2


def test_pipelined_append_is_atomic_for_readers(log):
    """A reader polling during a multi-chunk append sees all of it or none."""
    p = log.create_topic("t", segment_bytes=1 << 16).partition(0)
    seen = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(p.end_offset)

    n = STREAM_MIN  # the pipelined path
    th = threading.Thread(target=watch)
    th.start()
    for k in range(5):
        p.append([b"x" * 40] * n)
    stop.set()
    th.join()
    assert set(seen) <= {k * n for k in range(6)}


def test_durability_wait_on_a_partition_closed_under_it_raises(log):
    p = log.create_topic("t").partition(0)
    p.append([b"x"])
    p._closed = True  # what Topic._close(flush=False) does when a topic is deleted
    p._close_files()
    from unstoppable.errors import LogClosedError
    with pytest.raises(LogClosedError, match="closed before"):
        p.wait_durable(1)


def _disk_bytes(path):
    return os.stat(path).st_blocks * 512


def test_appends_reserve_blocks_ahead_and_give_them_back(log_dir):
    """The active segment's blocks are reserved ahead of its data (fallocate
    KEEP_SIZE) without changing its size; a roll and a clean close give the
    unused ones back, so sealed and closed segments take what their data takes."""
    from unstoppable._core.segment import preallocate
    probe = os.path.join(os.path.dirname(str(log_dir)), "probe")
    fd = os.open(probe, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if preallocate(fd, 0, 4096) != 0:
            pytest.skip("this filesystem cannot reserve blocks")
    finally:
        os.close(fd)
        os.unlink(probe)
    log = us.Log(log_dir)
    p = log.create_topic("t", partitions=1, segment_bytes=8 << 20).partition(0)
    p.append([b"x" * 1000] * 1000)                 # ~1 MB
    seg = os.path.join(p.path, sorted(f for f in os.listdir(p.path) if f.endswith(".log"))[0])
    size = os.path.getsize(seg)
    assert size < 1_100_000
    assert _disk_bytes(seg) >= size + (2 << 20)    # reserved ahead, size unchanged
    for _ in range(10):                            # past 8 MiB: a roll
        p.append([b"y" * 1000] * 1000)
    logs = sorted(f for f in os.listdir(p.path) if f.endswith(".log"))
    assert len(logs) >= 2
    sealed = os.path.join(p.path, logs[0])
    assert _disk_bytes(sealed) < os.path.getsize(sealed) + (64 << 10)
    active = os.path.join(p.path, logs[-1])
    end = p.end_offset
    log.close()
    assert _disk_bytes(active) < os.path.getsize(active) + (64 << 10)
    with us.Log(log_dir) as again:                 # nothing of it shows in the data
        q = again.topic("t").partition(0)
        assert q.end_offset == end
        assert bytes(q.read(end - 1, 1)[0].value) == b"y" * 1000
        assert again.verify().ok


def test_file_lock_excludes_other_processes_and_dies_with_them(tmp_path):
    """lock_file/unlock_file (the append lock, taken without letting go of
    the GIL when free) still exclude another process, and a waiter gets the
    lock once the holder releases it."""
    import subprocess
    import sys
    from unstoppable._core.segment import lock_file, unlock_file
    path = str(tmp_path / "lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    probe = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR)\n"
             "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError:\n    print('held')")
    try:
        lock_file(fd)
        out = subprocess.run([sys.executable, "-c", probe, path], capture_output=True, text=True)
        assert out.stdout.strip() == "held"
        unlock_file(fd)
        out = subprocess.run([sys.executable, "-c", probe, path], capture_output=True, text=True)
        assert out.stdout.strip() == "free"
        # Held by another process: lock_file blocks until it lets go.
        holder = subprocess.Popen(
            [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
             "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(0.3)", path],
            stdout=subprocess.PIPE, text=True)
        with holder:
            assert holder.stdout.readline().strip() == "locked"
            lock_file(fd)  # returns once the holder exits (the kernel drops its lock)
            assert holder.wait() == 0
        unlock_file(fd)
        with pytest.raises(OSError):
            lock_file(-1)
    finally:
        os.close(fd)


def test_sync_files_closes_duplicates(tmp_path):
    import errno
    from unstoppable._core.segment import dup_fd, sync_files
    fd = os.open(str(tmp_path / "f"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x" * 100)
        dups = [dup_fd(fd), dup_fd(fd)]
        assert all(d != fd for d in dups)
        assert all(os.get_inheritable(d) is False for d in dups)
        assert sync_files(dups, True) == [0, 0]
        for d in dups:
            with pytest.raises(OSError):
                os.fstat(d)
        assert sync_files([fd]) == [0]
        os.fstat(fd)  # close defaults to False
        assert sync_files([-1]) == [errno.EBADF]  # reported, not raised
    finally:
        os.close(fd)


def test_loop_syncer_runs_one_round_at_a_time_and_owns_its_descriptors(tmp_path):
    import errno
    import select
    from unstoppable._core.segment import LoopSyncer, dup_fd
    fd = os.open(str(tmp_path / "f"), os.O_RDWR | os.O_CREAT, 0o644)
    sy = LoopSyncer()
    try:
        os.write(fd, b"x" * 100)
        assert sy.take(1) is None                     # nothing submitted yet
        dups = [dup_fd(fd), dup_fd(fd)]
        sy.submit(dups)
        other = dup_fd(fd)
        # One round at a time: refused until its result is taken, done or
        # not, and the refused descriptor is closed all the same.
        with pytest.raises(OSError) as ei:
            sy.submit([other])
        assert ei.value.errno == errno.EBUSY
        with pytest.raises(OSError):
            os.fstat(other)
        assert select.select([sy], [], [], 10)[0] == [sy]
        assert sy.take(2) == [0, 0]
        assert sy.take(2) is None                     # taken once
        for d in dups:
            with pytest.raises(OSError):
                os.fstat(d)                           # closed after their fdatasync
        sy.submit([-1])
        assert select.select([sy], [], [], 10)[0]
        assert sy.take(1) == [errno.EBADF]            # reported, not raised
    finally:
        sy.close()
        os.close(fd)
    with pytest.raises(ValueError):
        sy.fileno()


def test_producer_state_of_producers_retention_deleted_is_forgotten(log_dir):
    """The dedup table does not keep every producer id that ever wrote: once
    retention has deleted all of a producer's batches, it is forgotten (in
    the table and the snapshots), and its next batch counts as a new
    producer's. Producers with records still in the log keep their dedup."""
    log = us.Log(log_dir)
    p = log.create_topic("t", partitions=1, segment_bytes=4096,
                         retention_bytes=4096 * 4).partition(0)
    for pid in range(200):                         # 200 short-lived producer ids
        p.append([b"x" * 10], producer_id=pid, producer_epoch=0, base_sequence=0)
    assert len(p._producers.producers) == 200
    for _ in range(40):                            # rolls; retention deletes the early segments
        p.append([b"y" * 900])
    assert p.start_offset > 200
    base = p.append([b"recent"], producer_id=999, producer_epoch=0, base_sequence=0)
    p.append([b"z" * 900])
    assert p.producer_state(999) == (0, 1)
    assert p.producer_state(5) is None             # forgotten
    assert set(p._producers.producers) == {999}
    # A retry from a producer still in the log is still answered with its offset.
    assert p.append([b"recent"], producer_id=999, producer_epoch=0, base_sequence=0) == base
    # A forgotten producer continuing its sequence is a gap (the client resyncs)...
    with pytest.raises(OutOfOrderSequenceError):
        p.append([b"again"], producer_id=5, producer_epoch=0, base_sequence=1)
    # ...and starting over from 0 is written.
    p.append([b"again"], producer_id=5, producer_epoch=0, base_sequence=0)
    for _ in range(8):
        p.append([b"w" * 900])                     # a roll writes a snapshot of the table
    snaps = sorted(f for f in os.listdir(p.path) if f.endswith(".producers"))
    assert snaps and os.path.getsize(os.path.join(p.path, snaps[-1])) < 200
    log.close()
    with us.Log(log_dir) as again:                 # rebuilt from the snapshot: the same
        q = again.topic("t").partition(0)
        assert q.producer_state(5) == (0, 1) and q.producer_state(999) == (0, 1)
        assert q.producer_state(7) is None
