"""The Consumer without groups: streaming, getmany, seeking, replay by offset
and by time, offset reset policies, errors."""
import asyncio
import time

import pytest

import unstoppable as us
from unstoppable import TopicPartition as TP

from client_util import make_log, run


def _fill(log, n=300, partitions=None, ts0=None):
    """n records round-robin over the partitions; record i has key k<i%7>,
    value v<i>, a header and (if ts0) timestamp ts0 + i."""
    t = log.topic("t")
    parts = partitions or t.partitions
    for i in range(n):
        rec = (b"k%d" % (i % 7), b"v%d" % i, [("i", b"%d" % i)])
        if ts0 is not None:
            rec = rec + (ts0 + i,)
        t.partition(i % parts).append([rec])


def test_async_for_yields_every_record_with_all_fields(tmp_path):
    log = make_log(tmp_path / "log", partitions=3)
    _fill(log, 300, ts0=1_000_000)

    async def main():
        seen = []
        async with us.Consumer(log, "t") as c:
            async for r in c:
                seen.append(r)
                if len(seen) == 300:
                    break
        return seen

    seen = run(main())
    by_part = {}
    for r in seen:
        by_part.setdefault(r.partition, []).append(r)
        i = int(bytes(r.value)[1:])
        assert r.topic == "t" and r.partition == i % 3 and r.offset == i // 3
        assert bytes(r.key) == b"k%d" % (i % 7) and r.headers == [("i", b"%d" % i)]
        assert r.timestamp == 1_000_000 + i
    for recs in by_part.values():
        assert [r.offset for r in recs] == list(range(len(recs)))   # in order per partition
    log.close()


def test_getmany_respects_max_records_and_timeout(tmp_path):
    log = make_log(tmp_path / "log", partitions=4)
    _fill(log, 1000)

    async def main():
        async with us.Consumer(log, "t", max_poll_records=100) as c:
            got = await c.getmany(max_records=250)
            assert sum(map(len, got.values())) == 250
            assert all(isinstance(tp, TP) for tp in got)
            total = 250
            while total < 1000:
                got = await c.getmany(max_records=10_000)
                total += sum(map(len, got.values()))
            assert total == 1000
            assert c.lag() == {TP("t", p): 0 for p in range(4)}
            t0 = time.perf_counter()
            assert await c.getmany(timeout_ms=150) == {}
            waited = time.perf_counter() - t0
            only = await c.getmany(TP("t", 1), timeout_ms=0)
            assert only == {}
            with pytest.raises(us.NotAssignedError):
                await c.getmany(TP("t", 9))
            return waited

    waited = run(main())
    assert 0.13 <= waited < 1.0
    log.close()


def test_getmany_wakes_as_soon_as_a_record_arrives(tmp_path):
    log = make_log(tmp_path / "log", partitions=2)

    async def main():
        async with us.Consumer(log, "t") as c:
            async def later():
                await asyncio.sleep(0.1)
                async with us.Producer(log, "t") as p:
                    await p.send(b"hello", partition=1)
            task = asyncio.ensure_future(later())
            t0 = time.perf_counter()
            got = await c.getmany(timeout_ms=5000)
            dt = time.perf_counter() - t0
            await task
            return got, dt

    got, dt = run(main())
    assert [bytes(r.value) for r in got[TP("t", 1)]] == [b"hello"]
    assert dt < 1.0
    log.close()


def test_replay_by_offset_and_seek_helpers(tmp_path):
    log = make_log(tmp_path / "log", partitions=2)
    _fill(log, 400)
    tp = TP("t", 0)

    async def main():
        async with us.Consumer(log, "t") as c:
            c.seek(tp, 150)
            assert c.position(tp) == 150
            got = await c.getmany(tp, max_records=10)
            assert [r.offset for r in got[tp]] == list(range(150, 160))
            assert c.position(tp) == 160
            await c.seek_to_end(tp)
            assert c.position(tp) == 200
            assert await c.getmany(tp) == {}
            await c.seek_to_beginning()
            first = await c.__anext__()
            assert first.offset == 0
            c.seek(tp, 42)
            r = await c.__anext__()
            while r.partition != 0:
                r = await c.__anext__()
            assert r.offset == 42
            with pytest.raises(ValueError):
                c.seek(tp, -1)
            with pytest.raises(us.NotAssignedError):
                c.seek(TP("t", 5), 0)
            with pytest.raises(us.NotAssignedError):
                c.position(TP("other", 0))

    run(main())
    log.close()


def test_replay_by_time_and_replayed_records_look_like_live_ones(tmp_path):
    log = make_log(tmp_path / "log", partitions=2)
    ts0 = 1_700_000_000_000
    _fill(log, 200, ts0=ts0)

    async def main():
        live = {}
        async with us.Consumer(log, "t") as c:
            while sum(map(len, live.values())) < 200:
                for tp, recs in (await c.getmany(max_records=1000)).items():
                    live.setdefault(tp, []).extend(recs)
        async with us.Consumer(log, "t") as c:
            tps = [TP("t", 0), TP("t", 1)]
            found = await c.offsets_for_times({tp: ts0 + 101 for tp in tps})
            # partition 1 holds odd i: first with ts >= ts0+101 is i=101 at offset 50
            assert found[TP("t", 1)] == us.OffsetAndTimestamp(50, ts0 + 101)
            assert found[TP("t", 0)] == us.OffsetAndTimestamp(51, ts0 + 102)
            assert (await c.offsets_for_times({tps[0]: ts0 + 10_000})) == {tps[0]: None}
            for tp in tps:
                c.seek(tp, found[tp].offset)
            replay = {}
            while sum(map(len, replay.values())) < 99:
                for tp, recs in (await c.getmany(max_records=1000)).items():
                    replay.setdefault(tp, []).extend(recs)
        return live, replay

    live, replay = run(main())
    for tp, recs in replay.items():
        assert all(r.timestamp >= ts0 + 101 for r in recs)
        for r in recs:
            l = live[tp][r.offset]
            assert (type(r), r.topic, r.partition, r.offset, r.timestamp, bytes(r.key), bytes(r.value), r.headers) == \
                   (type(l), l.topic, l.partition, l.offset, l.timestamp, bytes(l.key), bytes(l.value), l.headers)
    log.close()


def test_manual_partitions_and_auto_offset_reset_latest(tmp_path):
    log = make_log(tmp_path / "log", partitions=3)
    _fill(log, 30)

    async def main():
        async with us.Consumer(log, [TP("t", 2)], auto_offset_reset="latest") as c:
            assert c.assignment() == {TP("t", 2)}
            assert c.position(TP("t", 2)) == 10
            assert await c.getmany() == {}
            log.topic("t").partition(2).append([b"new"])
            log.topic("t").partition(0).append([b"elsewhere"])
            got = await c.getmany(timeout_ms=1000)
            return got

    got = run(main())
    assert list(got) == [TP("t", 2)] and [bytes(r.value) for r in got[TP("t", 2)]] == [b"new"]
    log.close()


def test_offsets_outside_the_range_follow_auto_offset_reset(tmp_path):
    log = make_log(tmp_path / "log", partitions=1)
    _fill(log, 20)
    tp = TP("t", 0)

    async def main():
        async with us.Consumer(log, "t", auto_offset_reset="error") as c:
            c.seek(tp, 500)
            with pytest.raises(us.OffsetOutOfRangeError, match="500"):
                await c.getmany()
        async with us.Consumer(log, "t", auto_offset_reset="earliest") as c:
            c.seek(tp, 500)
            got = await c.getmany(max_records=5)
            assert [r.offset for r in got[tp]] == [0, 1, 2, 3, 4]
        async with us.Consumer(log, "t", auto_offset_reset="latest") as c:
            c.seek(tp, 500)
            assert await c.getmany() == {}
            assert c.position(tp) == 20

    run(main())
    log.close()


def test_consumer_errors_are_clear(tmp_path):
    log = make_log(tmp_path / "log", partitions=2)

    async def main():
        with pytest.raises(us.UnknownTopicError, match="missing"):
            async with us.Consumer(log, ["t", "missing"]):
                pass
        with pytest.raises(us.PartitionOutOfRangeError):
            async with us.Consumer(log, [TP("t", 5)]):
                pass
        c = us.Consumer(log, "t")
        async with c:
            with pytest.raises(us.CommitError, match="no group"):
                await c.commit()
            assert await c.committed(TP("t", 0)) is None
        with pytest.raises(us.ConsumerClosedError):
            await c.getmany()
        with pytest.raises(us.ConsumerClosedError):
            c.seek(TP("t", 0), 0)
        # Iterating a closed consumer simply ends.
        assert [r async for r in c] == []

    run(main())
    with pytest.raises(ValueError, match="auto_offset_reset"):
        us.Consumer(log, "t", auto_offset_reset="smallest")
    with pytest.raises(ValueError, match="needs a group"):
        us.Consumer(log, "t", enable_auto_commit=True)
    with pytest.raises(ValueError, match="group=None"):
        us.Consumer(log, [TP("t", 0)], group="g")
    with pytest.raises(us.InvalidGroupNameError):
        us.Consumer(log, "t", group="../escape")
    log.close()


def test_close_from_another_task_ends_a_waiting_iteration(tmp_path):
    log = make_log(tmp_path / "log", partitions=1)

    async def main():
        c = us.Consumer(log, "t")
        await c.start()

        async def consume():
            return [r async for r in c]

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.05)
        await c.close()
        return await asyncio.wait_for(task, 2)

    assert run(main()) == []
    log.close()


def test_position_deleted_by_retention_follows_auto_offset_reset(tmp_path):
    log = us.Log(tmp_path / "log")
    t = log.create_topic("t", partitions=1, segment_bytes=4096, retention_bytes=8192)
    part = t.partition(0)
    tp = TP("t", 0)

    async def main():
        async with us.Consumer(log, "t", group="r", auto_offset_reset="earliest") as c, \
                us.Consumer(log, "t", group="r2", auto_offset_reset="error") as strict:
            strict.seek(tp, 0)
            for i in range(200):
                part.append([b"%04d" % i + b"x" * 200])
            part.enforce_retention()
            start = part.start_offset
            assert start > 0
            got = await c.getmany(max_records=3)
            assert [r.offset for r in got[tp]] == [start, start + 1, start + 2]
            with pytest.raises(us.OffsetOutOfRangeError, match="outside its range"):
                await strict.getmany()

    run(main())
    log.close()
