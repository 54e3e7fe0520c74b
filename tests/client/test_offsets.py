"""Committed offsets: commit semantics, auto-commit, the offsets file (read by
an independent decoder, torn tails, compaction, several processes), and an
application-owned SQLite store giving exactly-once effects across SIGKILL."""
import asyncio
import os
import signal
import sqlite3
import struct
import time

import pytest

import unstoppable as us
from unstoppable import TopicPartition as TP
from unstoppable._core.hashing import crc32c
from unstoppable.storage.groups import OffsetsFile

from client_util import SPAWN, make_log, run, wait_until


def _fill(log, n, partitions):
    t = log.topic("t")
    for i in range(n):
        t.partition(i % partitions).append([b"v%d" % i])


def decode_offsets_file(path):
    """Independent reader of <group>/offsets, written from the format table in
    storage/groups.py: returns the latest {(topic, partition): offset}."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"USGOFF1\n"
    pos, out = 8, {}
    while pos + 8 <= len(data):
        n, crc = struct.unpack_from("<II", data, pos)
        body = data[pos + 8:pos + 8 + n]
        if len(body) < n or crc32c(body) != crc:
            break
        _ts, count = struct.unpack_from("<qI", body, 0)
        p = 12
        for _ in range(count):
            (tl,) = struct.unpack_from("<H", body, p)
            topic = body[p + 2:p + 2 + tl].decode()
            part, off = struct.unpack_from("<Iq", body, p + 2 + tl)
            p += 2 + tl + 12
            out[(topic, part)] = off
        assert p == n
        pos += 8 + n
    return out, pos


def test_commit_none_commits_what_was_handed_out_and_a_new_member_resumes_there(tmp_path):
    log = make_log(tmp_path / "log", partitions=2)
    _fill(log, 100, 2)

    async def main():
        async with us.Consumer(log, "t", group="g") as c:
            got = await c.getmany(TP("t", 0), max_records=7)
            assert len(got[TP("t", 0)]) == 7
            r = await c.__anext__()                     # one more from the stream
            await c.commit()
            committed = {tp: await c.committed(tp) for tp in (TP("t", 0), TP("t", 1))}
            pos = {tp: c.position(tp) for tp in (TP("t", 0), TP("t", 1))}
        async with us.Consumer(log, "t", group="g") as c2:
            resumed = {tp: c2.position(tp) for tp in (TP("t", 0), TP("t", 1))}
        return r, committed, pos, resumed

    r, committed, pos, resumed = run(main())
    assert committed == pos == resumed
    assert committed[TP("t", r.partition)] == r.offset + 1
    on_disk, _ = decode_offsets_file(str(tmp_path / "log" / "groups" / "g" / "offsets"))
    assert on_disk == {(tp.topic, tp.partition): off for tp, off in committed.items()}
    log.close()


def test_commit_rejects_offsets_not_yet_handed_out_and_foreign_partitions(tmp_path):
    log = make_log(tmp_path / "log", partitions=2)
    _fill(log, 40, 2)
    tp = TP("t", 0)

    async def main():
        async with us.Consumer(log, "t", group="g") as c:
            await c.getmany(tp, max_records=5)
            assert c.position(tp) == 5
            with pytest.raises(us.CommitError, match="position is 5"):
                await c.commit({tp: 6})
            with pytest.raises(us.CommitError, match="not assigned"):
                await c.commit({TP("t", 7): 0})
            with pytest.raises(us.CommitError, match="int >= 0"):
                await c.commit({tp: -1})
            await c.commit({tp: 5})
            assert await c.committed(tp) == 5
            await c.commit({tp: 2})             # moving back is allowed: records 2.. come again
            assert await c.committed(tp) == 2
            c.seek(tp, 15)                       # a seek moves the position: 15 may be committed
            await c.commit({tp: 15})
            assert await c.committed(tp) == 15
            assert c.lag()[tp] == 20 - 15

    run(main())
    log.close()


def test_auto_commit_never_commits_the_record_in_hand(tmp_path):
    log = make_log(tmp_path / "log", partitions=1)
    _fill(log, 50, 1)
    tp = TP("t", 0)

    async def main():
        async with us.Consumer(log, "t", group="g", enable_auto_commit=True,
                               auto_commit_interval_ms=0, max_poll_records=10) as c:
            n = 0
            async for r in c:
                n += 1
                if r.offset == 24:
                    break          # the application failed while handling offset 24
        async with us.Consumer(log, "t", group="g") as c2:
            return await c2.committed(tp), (await c2.__anext__()).offset

    committed, first = run(main())
    assert committed == 24 and first == 24   # 24 is delivered again
    log.close()


def test_auto_commit_on_getmany_commits_the_previous_batch_at_the_next_call(tmp_path):
    log = make_log(tmp_path / "log", partitions=1)
    _fill(log, 50, 1)
    tp = TP("t", 0)

    async def main():
        async with us.Consumer(log, "t", group="g", enable_auto_commit=True,
                               auto_commit_interval_ms=0) as c:
            await c.getmany(max_records=10)
            assert await c.committed(tp) is None
            await c.getmany(max_records=10)        # the first 10 are handled now
            assert await c.committed(tp) == 10
        async with us.Consumer(log, "t", group="g") as c2:
            return await c2.committed(tp)

    assert run(main()) == 10                       # close did not commit the last batch
    log.close()


def test_offsets_file_ignores_and_repairs_a_torn_tail(tmp_path):
    us.Log(tmp_path / "log").close()
    f = OffsetsFile(str(tmp_path / "log"), "g")
    f.commit({("t", 0): 5, ("t", 1): 9})
    path = f.path
    good_size = os.path.getsize(path)
    with open(path, "ab") as fh:                   # a committer died mid-record
        fh.write(struct.pack("<II", 40, 123) + b"\x01" * 17)
    other = OffsetsFile(str(tmp_path / "log"), "g")
    assert other.load() == {("t", 0): 5, ("t", 1): 9}
    other.commit({("t", 0): 6})
    assert decode_offsets_file(path)[0] == {("t", 0): 6, ("t", 1): 9}
    assert decode_offsets_file(path)[1] == os.path.getsize(path)   # torn bytes were cut
    assert os.path.getsize(path) > good_size
    assert f.get("t", 0) == 6                      # the first reader sees the other's commit
    f.close()
    other.close()


def test_offsets_file_compacts_and_readers_follow(tmp_path):
    us.Log(tmp_path / "log").close()
    a = OffsetsFile(str(tmp_path / "log"), "g", compact_bytes=2048)
    b = OffsetsFile(str(tmp_path / "log"), "g")
    for i in range(300):
        a.commit({("t", i % 5): i, ("u", 0): i * 2}, sync=False)
        if i % 37 == 0:
            assert b.get("t", i % 5) == i
    assert os.path.getsize(a.path) < 4096          # rewritten, not 300 records long
    want = {("t", p): max(i for i in range(300) if i % 5 == p) for p in range(5)}
    want[("u", 0)] = 598
    assert b.load() == want == decode_offsets_file(a.path)[0]
    a.close()
    b.close()


def _committer(path, wid, n):
    f = OffsetsFile(path, "shared")
    for i in range(n):
        f.commit({("t", wid): i + 1, ("w%d" % wid, 0): i + 1})
    f.close()


def test_offsets_file_with_several_committing_processes(tmp_path):
    path = str(tmp_path / "log")
    us.Log(path).close()
    procs = [SPAWN.Process(target=_committer, args=(path, w, 150)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    got, end = decode_offsets_file(os.path.join(path, "groups", "shared", "offsets"))
    assert got == {**{("t", w): 150 for w in range(4)}, **{("w%d" % w, 0): 150 for w in range(4)}}
    assert end == os.path.getsize(os.path.join(path, "groups", "shared", "offsets"))


# -- exactly-once effects through the application's own store

def _exactly_once_worker(path, dbpath, progress_file):
    log = us.Log(path)
    db = sqlite3.connect(dbpath, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS effects (part INTEGER, off INTEGER, value BLOB)")
    store = us.SQLiteOffsetStore(db)

    async def main():
        n = 0
        async with us.Consumer(log, "t", group="eo", offset_store=store) as c:
            async for r in c:
                db.execute("BEGIN")
                db.execute("INSERT INTO effects VALUES (?, ?, ?)", (r.partition, r.offset, bytes(r.value)))
                store.save({TP(r.topic, r.partition): r.offset + 1}, group="eo")
                db.execute("COMMIT")
                n += 1
                if n % 50 == 0:
                    with open(progress_file, "w") as fh:
                        fh.write(str(n))
    asyncio.run(main())


def test_offsets_in_the_applications_transaction_give_exactly_once_effects(tmp_path):
    path = str(tmp_path / "log")
    log = make_log(path, partitions=3)
    total = 3000
    _fill(log, total, 3)
    dbpath = str(tmp_path / "app.db")
    progress = str(tmp_path / "progress")
    counts = []
    for round_ in range(3):
        if os.path.exists(progress):
            os.unlink(progress)
        proc = SPAWN.Process(target=_exactly_once_worker, args=(path, dbpath, progress))
        proc.start()
        try:
            assert wait_until(lambda: os.path.exists(progress), timeout=30)
            time.sleep(0.01 * (round_ + 1))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(10)
        assert proc.exitcode == -signal.SIGKILL
        with sqlite3.connect(dbpath) as db:
            counts.append(db.execute("SELECT COUNT(*) FROM effects").fetchone()[0])
    assert 0 < counts[0] < counts[1] < counts[2] < total   # really killed mid-stream, each time
    # A last run that is allowed to finish.
    proc = SPAWN.Process(target=_exactly_once_worker, args=(path, dbpath, progress))
    proc.start()
    db = sqlite3.connect(dbpath)
    try:
        assert wait_until(lambda: db.execute("SELECT COUNT(*) FROM effects").fetchone()[0] >= total,
                          timeout=30)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
    rows = db.execute("SELECT part, off, COUNT(*) FROM effects GROUP BY part, off").fetchall()
    assert len(rows) == total
    assert all(c == 1 for _, _, c in rows)              # every effect exactly once
    assert sorted((p, o) for p, o, _ in rows) == sorted((i % 3, i // 3) for i in range(total))
    offs = dict(((t, p), o) for t, p, o in
                db.execute("SELECT topic, part, next_offset FROM unstoppable_offsets").fetchall())
    assert offs == {("t", p): total // 3 for p in range(3)}
    log.close()
