"""The Producer against a real embedded log: delivery, partitioning, batching,
ordering, validation, lifecycle."""
import asyncio
import collections
import time

import pytest

import unstoppable as us
from unstoppable._core.hashing import murmur2_partition, xxh64_partition
from unstoppable.client.producer import producer_id_for

from client_util import make_log, read_all, run


def test_send_resolves_to_metadata_and_records_read_back(tmp_path):
    log = make_log(tmp_path / "log", partitions=3)

    async def main():
        async with us.Producer(log, "t") as p:
            f1 = await p.send(b"v1", key=b"k1", headers=[("h", b"x"), ("n", None)], timestamp=1234)
            f2 = await p.send(b"v2", partition=2)
            f3 = await p.send(None, key=b"tomb")
            return await f1, await f2, await f3

    m1, m2, m3 = run(main())
    assert isinstance(m1, us.RecordMetadata)
    assert (m1.topic, m1.partition, m1.timestamp) == ("t", xxh64_partition(b"k1", 3), 1234)
    assert m2.partition == 2
    assert abs(m2.timestamp - time.time() * 1000) < 60_000
    r1 = log.topic("t").partition(m1.partition).read(m1.offset, 1)[0]
    assert (bytes(r1.key), bytes(r1.value), r1.headers, r1.timestamp) == (b"k1", b"v1", [("h", b"x"), ("n", None)], 1234)
    r2 = log.topic("t").partition(2).read(m2.offset, 1)[0]
    assert r2.key is None and bytes(r2.value) == b"v2" and r2.timestamp == m2.timestamp
    r3 = log.topic("t").partition(m3.partition).read(m3.offset, 1)[0]
    assert bytes(r3.key) == b"tomb" and r3.value is None
    log.close()


def test_keyed_partitioning_default_murmur2_and_custom(tmp_path):
    log = make_log(tmp_path / "log", partitions=7)
    keys = [b"user-%d" % i for i in range(200)]

    async def main():
        out = {}
        for name, part in (("xx", None), ("mm", us.Murmur2Partitioner()), ("custom", lambda k, n: len(k) % n)):
            async with us.Producer(log, "t", partitioner=part) as p:
                futs = [await p.send(b"v", key=k) for k in keys]
                out[name] = [(await f).partition for f in futs]
        return out

    got = run(main())
    assert got["xx"] == [xxh64_partition(k, 7) for k in keys]
    assert got["mm"] == [murmur2_partition(k, 7) for k in keys]
    assert got["custom"] == [len(k) % 7 for k in keys]
    assert len(set(got["xx"])) == 7  # keys spread over every partition
    log.close()


def test_bad_partitioner_result_is_a_clear_error(tmp_path):
    log = make_log(tmp_path / "log", partitions=2)

    async def main():
        async with us.Producer(log, "t", partitioner=lambda k, n: 5) as p:
            with pytest.raises(ValueError, match="returned 5"):
                await p.send(b"v", key=b"k")
            with pytest.raises(us.PartitionOutOfRangeError):
                await p.send(b"v", partition=2)
            with pytest.raises(TypeError):
                await p.send(b"v", partition="0")
            return await (await p.send(b"ok", partition=1))

    assert run(main()).offset == 0
    log.close()


def test_order_per_key_holds_with_many_concurrent_senders(tmp_path):
    """Tasks send interleaved records for many keys, under fsync acks and a
    linger; every key's records come back in the order each task sent them."""
    log = make_log(tmp_path / "log", partitions=8)
    keys = [b"k%d" % i for i in range(40)]

    async def sender(p, key, n):
        futs = []
        for i in range(n):
            futs.append(await p.send(b"%s:%d" % (key, i), key=key))
            if i % 7 == 0:
                await asyncio.sleep(0)
        return [await f for f in futs]

    async def main():
        async with us.Producer(log, "t", acks="fsync", linger_ms=2, batch_bytes=2048) as p:
            return await asyncio.gather(*(sender(p, k, 150) for k in keys))

    metas = run(main())
    for key, ms in zip(keys, metas):
        assert {m.partition for m in ms} == {xxh64_partition(key, 8)}
        offs = [m.offset for m in ms]
        assert offs == sorted(offs)
    data = read_all(log, "t")
    per_key = collections.defaultdict(list)
    for recs in data.values():
        for r in recs:
            k, i = bytes(r.value).split(b":")
            per_key[k].append(int(i))
    assert set(per_key) == set(keys)
    for k in keys:
        assert per_key[k] == list(range(150)), k
    log.close()


def test_sticky_partitioning_switches_when_a_batch_fills(tmp_path):
    log = make_log(tmp_path / "log", partitions=4)

    async def main():
        async with us.Producer(log, "t", batch_bytes=1200, linger_ms=10_000) as p:
            futs = [await p.send(b"x" * 100) for _ in range(200)]
            return [(await f).partition for f in futs]

    parts = run(main())
    # Consecutive runs of one partition, each about one batch long, rotating.
    runs = [len(list(g)) for _, g in __import__("itertools").groupby(parts)]
    assert len(runs) >= 15
    assert max(runs[:-1]) <= 11 and min(runs[:-1]) >= 8
    assert set(parts) == {0, 1, 2, 3}
    # The storage batches are the producer's batches: about batch_bytes each.
    for p in range(4):
        for b in log.topic("t").partition(p).read_batches(0, 1 << 30):
            assert len(b) <= 11
    log.close()


def test_linger_holds_a_batch_and_flush_forces_it(tmp_path):
    log = make_log(tmp_path / "log", partitions=1)

    async def main():
        async with us.Producer(log, "t", linger_ms=300) as p:
            t0 = time.perf_counter()
            f = await p.send(b"a")
            await asyncio.sleep(0.05)
            assert not f.done()  # still lingering
            assert log.topic("t").partition(0).end_offset == 0
            await f
            lingered = time.perf_counter() - t0
            f2 = await p.send(b"b")
            t1 = time.perf_counter()
            await p.flush()
            assert f2.done()
            return lingered, time.perf_counter() - t1

    lingered, flushed = run(main())
    assert lingered >= 0.25
    assert flushed < 0.2
    log.close()


def test_linger_zero_batches_what_arrives_in_one_loop_iteration(tmp_path):
    log = make_log(tmp_path / "log", partitions=1)

    async def one(p, i):
        return await p.send_and_wait(b"%d" % i)

    async def main():
        async with us.Producer(log, "t") as p:
            return await asyncio.gather(*(one(p, i) for i in range(300)))

    run(main())
    batches = log.topic("t").partition(0).read_batches(0, 1 << 30)
    assert sum(len(b) for b in batches) == 300
    assert len(batches) <= 5  # not one batch per record
    log.close()


def test_invalid_records_are_refused_at_send_and_do_not_poison_the_batch(tmp_path):
    log = make_log(tmp_path / "log", partitions=1, max_record_bytes=1024)

    async def main():
        async with us.Producer(log, "t", linger_ms=1000) as p:
            good = await p.send(b"good-1")
            with pytest.raises(us.InvalidRecordError, match="got str"):
                await p.send("text")
            with pytest.raises(us.InvalidRecordError, match="key"):
                await p.send(b"v", key=42)
            with pytest.raises(us.InvalidRecordError, match="header"):
                await p.send(b"v", headers=[("k", "not bytes")])
            with pytest.raises(us.InvalidRecordError, match="header"):
                await p.send(b"v", headers=[(1, b"x")])
            with pytest.raises(us.InvalidRecordError, match="timestamp"):
                await p.send(b"v", timestamp=-5)
            with pytest.raises(us.RecordTooLargeError, match="max_record_bytes=1024"):
                await p.send(b"x" * 2000)
            good2 = await p.send(bytearray(b"good-2"), headers={"a": memoryview(b"b")})
            await p.flush()
            return await good, await good2

    m1, m2 = run(main())
    recs = log.topic("t").partition(0).read(0)
    assert [bytes(r.value) for r in recs] == [b"good-1", b"good-2"]
    assert recs[1].headers == [("a", b"b")]
    log.close()


def test_mutating_a_sent_buffer_does_not_change_the_record(tmp_path):
    log = make_log(tmp_path / "log", partitions=1)

    async def main():
        buf = bytearray(b"original")
        async with us.Producer(log, "t", linger_ms=1000) as p:
            f = await p.send(buf)
            buf[:] = b"CHANGED!"
            await p.flush()
            await f

    run(main())
    assert bytes(log.topic("t").partition(0).read(0)[0].value) == b"original"
    log.close()


def test_close_flushes_everything_accepted_and_refuses_more(tmp_path):
    log = make_log(tmp_path / "log", partitions=4)

    async def main():
        p = us.Producer(log, "t", linger_ms=60_000, batch_bytes=1 << 20)
        await p.start()
        futs = [await p.send(b"%d" % i, key=b"%d" % (i % 13)) for i in range(5000)]
        assert sum(log.topic("t").end_offsets()) == 0  # all still buffered
        await p.close()
        assert all(f.done() for f in futs)
        with pytest.raises(us.ProducerClosedError):
            await p.send(b"late")
        await p.close()  # twice is fine
        return futs

    futs = run(main())
    assert all(f.result().topic == "t" for f in futs)
    assert sum(log.topic("t").end_offsets()) == 5000
    got = sorted(int(bytes(r.value)) for recs in read_all(log, "t").values() for r in recs)
    assert got == list(range(5000))
    log.close()


def test_send_batch_and_send_and_wait(tmp_path):
    log = make_log(tmp_path / "log", partitions=2)

    async def main():
        async with us.Producer(log, "t") as p:
            futs = await p.send_batch([b"a", (b"k", b"b"), (b"k", b"c", [("h", b"1")]),
                                       (None, b"d", None, 77), None], partition=1)
            metas = [await f for f in futs]
            with pytest.raises(us.InvalidRecordError, match="record 0"):
                await p.send_batch([42])
            m = await p.send_and_wait(b"e", partition=0)
            return metas, m

    metas, m = run(main())
    assert [x.offset for x in metas] == [0, 1, 2, 3, 4]
    assert metas[3].timestamp == 77
    recs = log.topic("t").partition(1).read(0)
    assert [None if r.value is None else bytes(r.value) for r in recs] == [b"a", b"b", b"c", b"d", None]
    assert recs[2].headers == [("h", b"1")]
    assert m.partition == 0 and m.offset == 0
    log.close()



def test_send_batch_keyed_pairs_match_send_and_per_batch_futures_cover_them(tmp_path):
    """(key, value) pairs take send_batch's inlined path: the same partitions
    and order as send() one at a time; per_batch=True gives one future per
    batch, for the last of the records in it, and small batch_bytes
    spreads the records over several batches of each partition."""
    log = make_log(tmp_path / "log", partitions=3)
    pairs = [(b"k%d" % (i % 7), b"v%04d" % i) for i in range(500)]

    async def main():
        async with us.Producer(log, "t", batch_bytes=512) as p:
            each = await p.send_batch(pairs)
            per = await p.send_batch(pairs, per_batch=True)
            await p.flush()
            return [f.result() for f in each], [f.result() for f in per]

    each, per = run(main())
    part = us.DefaultPartitioner()
    assert [m.partition for m in each] == [part(k, 3) for k, _v in pairs]
    got = read_all(log, "t")
    for p in range(3):
        vals = [bytes(r.value) for r in got[p]]
        mine = [v for k, v in pairs if part(k, 3) == p]
        assert vals == mine + mine          # both calls, each in order
    # per batch: one future per batch of the second call, the last record of each
    by_part: dict = {}
    for m in per:
        by_part.setdefault(m.partition, []).append(m.offset)
    assert len(per) > 3                     # several batches per partition
    for p, offs in by_part.items():
        n = len([1 for k, _v in pairs if part(k, 3) == p])
        assert offs == sorted(offs) and offs[-1] == 2 * n - 1
        assert all(n <= o < 2 * n for o in offs)
    log.close()

def test_delivery_futures_work_with_asyncio_helpers(tmp_path):
    log = make_log(tmp_path / "log", partitions=1)

    async def main():
        async with us.Producer(log, "t", linger_ms=20) as p:
            futs = [await p.send(b"%d" % i) for i in range(10)]
            assert not futs[0].done()
            with pytest.raises(asyncio.InvalidStateError):
                futs[0].result()
            seen = []
            futs[1].add_done_callback(lambda f: seen.append(f.result().offset))
            gathered = await asyncio.gather(*futs[:5])
            one = await asyncio.wait_for(futs[5], 5)
            done, pending = await asyncio.wait(futs[6:])
            assert not pending
            await asyncio.sleep(0)
            # Cancelling a waiter (here by a timeout) never cancels the write.
            late = await p.send(b"late")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(late)), 0.001)
            assert (await late).offset == 10
            return [m.offset for m in gathered], one.offset, seen, futs[9].exception()

    offs, one, seen, exc = run(main())
    assert offs == [0, 1, 2, 3, 4] and one == 5 and seen == [1] and exc is None
    log.close()


def test_fsync_acks_are_durable_when_the_future_resolves(tmp_path):
    log = make_log(tmp_path / "log", partitions=2)

    async def main():
        async with us.Producer(log, "t", acks="fsync") as p:
            ms = await asyncio.gather(*(p.send_and_wait(b"v%d" % i, key=b"%d" % i) for i in range(200)))
            for m in ms:
                assert log.topic("t").partition(m.partition).durable_offset > m.offset
            return ms

    assert len(run(main())) == 200
    log.close()


def test_unknown_topic_and_bad_arguments(tmp_path):
    log = make_log(tmp_path / "log")
    with pytest.raises(ValueError, match="acks"):
        us.Producer(log, "t", acks="all")
    with pytest.raises(TypeError, match="backpressure"):
        us.Producer(log, "t", backpressure="block")
    with pytest.raises(ValueError, match="BlockWithTimeout"):
        us.BlockWithTimeout(0)
    with pytest.raises(TypeError, match="producer_id"):
        us.Producer(log, "t", producer_id=7)

    async def main():
        with pytest.raises(us.UnknownTopicError, match="nope"):
            async with us.Producer(log, "nope"):
                pass

    run(main())
    log.close()


def test_producer_id_maps_to_a_63_bit_xxh64(tmp_path):
    from unstoppable._core.hashing import xxh64
    assert producer_id_for("orders-api") == xxh64(b"orders-api") & 0x7FFF_FFFF_FFFF_FFFF
    assert 0 <= producer_id_for("x") < 2 ** 63
