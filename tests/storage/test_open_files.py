"""A partition with many segments keeps a bounded number of them open: a
long-lived writer, a full replay, a time lookup, retention and verify() each
touch every segment, and none of them may run out of file descriptors."""
import os
import subprocess
import sys
import textwrap

import pytest


SCRIPT = textwrap.dedent(r"""
    import os, resource, sys, time
    import unstoppable as us
    from unstoppable.storage import partition as P

    path, segments = sys.argv[1], int(sys.argv[2])

    def open_fds():
        return len(os.listdir("/proc/self/fd"))

    with us.Log(path) as log:
        # 4 KiB segments: each 1 KiB record batch, four per segment.
        t = log.create_topic("t", partitions=1, segment_bytes=4096,
                             retention_bytes=None)
        p = t.partition(0)
        base_fds = open_fds()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # Two partitions' worth of open segments and a few more, far fewer
        # descriptors than 3 per segment would need.
        limit = base_fds + 2 * 3 * (P.OPEN_SEGMENTS + 2) + 24
        assert limit < 3 * segments, (limit, segments)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        n = segments * 4 + 4
        for i in range(n):
            p.append([(None, b"%08d" % i + b"x" * 900, None, 1000 + i)])
        nseg = sum(f.endswith(".log") for f in os.listdir(p.path))
        assert nseg >= segments, nseg
        # A full replay from the start.
        off, got = 0, 0
        while off < p.end_offset:
            rs = p.read(off, max_records=7)
            assert [bytes(r.value)[:8] for r in rs] == [b"%08d" % k for k in range(off, off + len(rs))]
            got += len(rs)
            off = rs[-1].offset + 1
        assert got == n
        # A lookup by time that must pass every segment's time index.
        assert p.offset_for_time(1000 + n - 1) == n - 1
        assert p.offset_for_time(1000 + n) is None
        # verify() reads every segment and its indexes.
        rep = log.verify()
        assert rep.ok, rep.problems
        assert rep.segments == nseg
        # fsync everything (a group commit over every unsynced segment).
        p.flush()
        assert p.durable_offset == n
        # Retention that has to size every sealed segment.
        t2 = log.create_topic("r", partitions=1, segment_bytes=4096, retention_bytes=40960)
        q = t2.partition(0)
        for i in range(n):
            q.append([b"y" * 900])
        assert q.start_offset > 0
        assert open_fds() <= limit
        print("ok", nseg, open_fds(), limit)
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_many_segments_stay_within_a_small_descriptor_limit(tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "log"), "300"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok"), r.stdout


def test_readers_in_threads_while_segments_come_and_go(tmp_path):
    """Threads reading at random offsets across many more segments than stay
    open, and near the end, while another appends (rolling) and retention
    deletes: every read returns the right records, and none fails on a
    descriptor let go under it. (Near the end, a reader that refreshed the
    segment list from the head it started with used to hide a segment another
    thread had just rolled to from the others: CorruptLogError 'segment ends
    before the offsets its successor starts at', thousands per run.)"""
    import random
    import threading

    import unstoppable as us
    from unstoppable.errors import OffsetOutOfRangeError
    from unstoppable.storage import partition as P

    with us.Log(tmp_path / "log") as log:
        p = log.create_topic("t", partitions=1, segment_bytes=4096,
                             retention_bytes=4096 * 120).partition(0)
        for i in range(400):
            p.append([b"%08d" % i + b"x" * 900])
        errors, stop = [], threading.Event()

        def reader(seed):
            rnd = random.Random(seed)
            try:
                while not stop.is_set():
                    lo, hi = p.start_offset, p.end_offset
                    off = rnd.randrange(lo, hi) if rnd.random() < 0.5 else \
                        rnd.randrange(max(lo, hi - 20), hi)
                    try:
                        rs = p.read(off, max_records=3)
                    except OffsetOutOfRangeError:
                        continue  # retention moved the start past it meanwhile
                    assert rs and rs[0].offset == off
                    for r in rs:
                        assert bytes(r.value)[:8] == b"%08d" % r.offset
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=reader, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        try:
            for i in range(400, 1600):
                p.append([b"%08d" % i + b"x" * 900])
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not errors, errors[0]
        assert p.start_offset > 0                      # retention ran
        assert p.catalog.open_count <= P.OPEN_SEGMENTS + 1
        assert log.verify().ok


SYNC_SCRIPT = textwrap.dedent(r"""
    import os, resource, sys, threading
    import unstoppable as us
    from unstoppable.errors import UnstoppableError

    path = sys.argv[1]
    with us.Log(path) as log:
        p = log.create_topic("t", partitions=1, segment_bytes=4096).partition(0)
        p.flush()
        # Segments written after the checkpoint and no longer open here, so
        # a sync round has to open and duplicate descriptors for them.
        log._flusher.submit = lambda part: None   # keep them unsynced (no flush after rolls)
        for i in range(200):
            p.append([b"x" * 900])
        assert p.durable_offset < p.end_offset
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        fill = []
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        try:
            while True:                      # use up every descriptor left
                fill.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        try:
            p.flush()
            raise SystemExit("flush succeeded without descriptors")
        except UnstoppableError as e:
            assert "could not sync" in str(e) and isinstance(e.__cause__, OSError), e
        got = []
        done = threading.Event()
        p.when_durable(p.end_offset, lambda err: (got.append(err), done.set()))
        assert done.wait(10)
        assert isinstance(got[0], UnstoppableError) and "could not sync" in str(got[0]), got
        for fd in fill:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        # Not failed for good: the next round syncs, appends go on.
        p.flush()
        assert p.durable_offset == p.end_offset
        p.append([b"more"])
        got.clear(); done.clear()
        p.when_durable(p.end_offset, lambda err: (got.append(err), done.set()))
        assert done.wait(10) and got == [None], got
        print("ok")
""")


def _run_ok(script: str, tmp_path) -> None:
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "log")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "ok", r.stdout


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_sync_round_that_cannot_open_files_fails_its_waiters_not_the_partition(tmp_path):
    _run_ok(SYNC_SCRIPT, tmp_path)


PRODUCER_SYNC_SCRIPT = textwrap.dedent(r"""
    import asyncio, os, resource, sys
    import unstoppable as us
    from unstoppable.errors import UnstoppableError

    async def main(log, p1):
        async with us.Producer(log, "t", acks="fsync") as prod:
            await (await prod.send(b"warm", partition=0))   # the loop's committer exists
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
            fill = []
            try:
                while True:
                    fill.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                pass
            try:
                await (await prod.send(b"x" * 100, partition=1))
                raise SystemExit("delivered as durable without descriptors to sync")
            except UnstoppableError as e:
                assert "could not sync" in str(e) and isinstance(e.__cause__, OSError), repr(e)
            for fd in fill:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            md = await (await prod.send(b"y", partition=1))   # not failed for good
            assert p1.durable_offset > md.offset == 2, (p1.durable_offset, md)

    with us.Log(sys.argv[1]) as log:
        p1 = log.create_topic("t", partitions=2).partition(1)
        p1.append([b"first"])   # written, not synced: a round must duplicate its descriptor
        asyncio.run(main(log, p1))
    print("ok")
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_the_producers_sync_round_without_descriptors_fails_those_records_only(tmp_path):
    _run_ok(PRODUCER_SYNC_SCRIPT, tmp_path)


BEHIND_SCRIPT = textwrap.dedent(r"""
    import asyncio, os, resource, sys, threading
    import unstoppable as us
    from unstoppable.storage import partition as P

    path = sys.argv[1]

    def open_fds():
        return len(os.listdir("/proc/self/fd"))

    with us.Log(path) as log:
        t = log.create_topic("t", partitions=3, segment_bytes=4096, retention_bytes=None)
        p, q, r = (t.partition(i) for i in range(3))
        for x in (p, q, r):
            x.flush()
        # The flusher thread far behind (descheduled under load, say): here
        # it never runs, so the checkpoints stay where they are while
        # hundreds of 4 KiB segments roll.
        log._flusher.submit = lambda part: None
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # Each partition's open segments (3 descriptors each) and a few more:
        # fewer descriptors than one per segment behind.
        limit = open_fds() + 3 * 3 * (P.OPEN_SEGMENTS + 2) + 24
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        for x in (p, q, r):
            for i in range(1200):
                x.append([b"x" * 900])
        behind = sum(f.endswith(".log") for f in os.listdir(p.path))
        assert behind > 100 and limit < behind, (behind, limit)
        assert p.durable_offset < p.end_offset
        # A blocking sync (the thread driver) brings it all the way, in rounds.
        p.flush()
        assert p.durable_offset == p.end_offset
        # The sync thread's callback form.
        got, done = [], threading.Event()
        q.when_durable(q.end_offset, lambda err: (got.append(err), done.set()))
        assert done.wait(60) and got == [None], got
        assert q.durable_offset == q.end_offset
        # The event loop's driver (acks="fsync" producers).
        async def main():
            async with us.Producer(log, "t", acks="fsync") as prod:
                md = await (await prod.send(b"y", partition=2))
            return md
        md = asyncio.run(main())
        assert r.durable_offset == r.end_offset == md.offset + 1
        assert open_fds() <= limit
        print("ok")
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_checkpoint_hundreds_of_segments_behind_syncs_within_the_limit(tmp_path):
    """A sync round holds a descriptor of each segment it syncs: one that
    covered every segment past a checkpoint far behind ran out of
    descriptors (EMFILE under a small limit: the descriptor-limit test
    above failed so once under load, its flusher thread behind). Rounds
    cover at most SYNC_SEGMENTS_PER_ROUND segments of a partition and go on
    from there, in all three ways of waiting for durability."""
    _run_ok(BEHIND_SCRIPT, tmp_path)
