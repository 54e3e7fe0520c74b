"""Producer.send_batch of (key, value) pairs: the compiled loop
(``_core.accumulate.fill_pairs``) and the batches a call seals written per
partition with one append (``EmbeddedBackend.append_now_many``). Each test
checks what send() one record at a time would have done: partitions, order,
batch limits, backpressure, errors, delivery futures."""
import asyncio
import json
import subprocess
import sys
import textwrap

import pytest

import unstoppable as us
from unstoppable.client.accumulator import RECORD_OVERHEAD
from unstoppable._core.hashing import murmur2_partition, xxh64_partition

from client_util import SlowDiskBackend, make_log, read_all, run


async def _send_per_batch(log, records):
    """send_batch(records, per_batch=True) into topic "t" (1 KiB batches), flushed: its futures."""
    async with us.Producer(log, "t", batch_bytes=1024) as p:
        futs = await p.send_batch(records, per_batch=True)
        await p.flush()
        return futs


def _pairs(n, tag=b"", klen=12, vlen=60):
    return [((b"k%d-" % (i % 37) + tag).ljust(klen, b"."), (b"v%06d-" % i + tag).ljust(vlen, b"x"))
            for i in range(n)]


def _size(r):
    return len(r[0]) + len(r[1]) + RECORD_OVERHEAD


def _by_partition(log, topic="t"):
    return {p: [(bytes(r.key) if r.key is not None else None, bytes(r.value))
                for r in recs] for p, recs in read_all(log, topic).items()}


def _expected(pairs, n, part=xxh64_partition):
    out = {p: [] for p in range(n)}
    for k, v in pairs:
        out[part(k, n)].append((k, v))
    return out


@pytest.mark.parametrize("partitioner,fn", [(None, xxh64_partition),
                                            (us.Murmur2Partitioner(), murmur2_partition)])
def test_pairs_land_where_send_puts_them_in_order_within_batch_limits(tmp_path, partitioner, fn):
    log = make_log(tmp_path / "log", partitions=5)
    pairs = _pairs(3000)

    async def main():
        kw = {} if partitioner is None else {"partitioner": partitioner}
        async with us.Producer(log, "t", batch_bytes=2048, **kw) as p:
            futs = await p.send_batch(pairs)
            batches = {id(f._b): f._b for f in futs}
            await p.flush()
            return [f.result() for f in futs], list(batches.values()), p.buffered_bytes

    metas, batches, left = run(main())
    assert left == 0
    assert [m.partition for m in metas] == [fn(k, 5) for k, _v in pairs]
    assert _by_partition(log) == _expected(pairs, 5, fn)
    # every batch within batch_bytes (its size bound), and each a storage batch of its own
    for p in range(5):
        part = log.topic("t").partition(p)
        sb = part.read_batches(0, 1 << 30)
        mine = sorted((b for b in batches if b.partition == p), key=lambda b: b.base_offset)
        assert [(x.base_offset, len(x)) for x in sb] == [(b.base_offset, len(b.records)) for b in mine]
        for b in mine:
            assert sum(_size(r) for r in b.records) == b.nbytes
            assert b.nbytes - _size(b.records[-1]) < 2048   # sealed once it reached batch_bytes
    log.close()


def test_per_batch_futures_cover_every_record_once(tmp_path):
    log = make_log(tmp_path / "log", partitions=3)
    pairs = _pairs(2000)
    mixed = list(pairs)
    mixed[500:500] = [b"keyless-a", (b"hk", b"hv", [("h", b"1")]), (bytearray(b"ba"), b"bv"), None]

    futs = run(_send_per_batch(log, mixed))
    bs = [f._b for f in futs]
    assert len({id(b) for b in bs}) == len(bs)              # one future per batch
    assert all(f._i == len(f._b.records) - 1 for f in futs)  # the last record of each
    assert sum(len(b.records) for b in bs) == len(mixed)    # and they hold every record
    got = read_all(log, "t")
    assert sum(len(v) for v in got.values()) == len(mixed)
    for f in futs:
        m = f.result()
        assert m.offset == f._b.base_offset + f._i
    log.close()


def test_mixed_list_matches_send_one_at_a_time(tmp_path):
    """Pairs between records that are not pairs of bytes (values alone,
    headers, a timestamp, bytearray/memoryview keys, None): each goes
    through send(), in its place among the pairs."""
    n = 4
    recs = []
    for i in range(600):
        k = b"key-%d" % (i % 11)
        v = b"val-%d" % i
        j = i % 7
        recs.append((k, v) if j < 3 else
                    (k, v, [("h", b"%d" % i)]) if j == 3 else
                    (bytearray(k), v) if j == 4 else
                    (k, memoryview(v), None, 1_700_000_000_000 + i) if j == 5 else
                    (k, None))

    async def produce(log, one_by_one):
        async with us.Producer(log, "t", batch_bytes=700) as p:
            if one_by_one:
                futs = [await p.send(r[1], r[0], r[2] if len(r) > 2 else None,
                                     r[3] if len(r) > 3 else None) for r in recs]
            else:
                futs = await p.send_batch(recs)
            await p.flush()
            return [f.result() for f in futs]

    a, b = make_log(tmp_path / "a", partitions=n), make_log(tmp_path / "b", partitions=n)
    ma, mb = run(produce(a, False)), run(produce(b, True))
    assert [(m.partition, m.offset) for m in ma] == [(m.partition, m.offset) for m in mb]
    ra, rb = read_all(a, "t"), read_all(b, "t")
    for p in range(n):
        assert [(bytes(r.key), None if r.value is None else bytes(r.value), r.headers,
                 r.timestamp if r.timestamp >= 1_700_000_000_000 and r.timestamp < 1_700_000_001_000
                 else None) for r in ra[p]] == \
               [(bytes(r.key), None if r.value is None else bytes(r.value), r.headers,
                 r.timestamp if r.timestamp >= 1_700_000_000_000 and r.timestamp < 1_700_000_001_000
                 else None) for r in rb[p]]
        assert len(ra[p]) > 0
    a.close()
    b.close()


def test_too_large_pair_mid_list_names_its_size_and_keeps_the_ones_before(tmp_path):
    log = make_log(tmp_path / "log", partitions=3, max_record_bytes=500)
    pairs = _pairs(300)
    big = (b"big-key", b"x" * 600)
    recs = pairs[:170] + [big] + pairs[170:]

    async def main():
        async with us.Producer(log, "t", batch_bytes=1024) as p:
            with pytest.raises(us.RecordTooLargeError, match=r"needs up to %d bytes.*max_record_bytes=500"
                               % _size(big)):
                await p.send_batch(recs, per_batch=True)
            await p.flush()
            left = p.buffered_bytes
            # the producer goes on: the rest, in a second call
            futs = await p.send_batch(pairs[170:], per_batch=True)
            await p.flush()
            return left, [f.result() for f in futs]

    left, _ = run(main())
    assert left == 0
    assert _by_partition(log) == _expected(pairs, 3)
    log.close()


def test_backpressure_waits_mid_list_and_others_interleave(tmp_path):
    """A buffer far smaller than the call: the call waits for space (the
    disk is slow) again and again, letting other tasks run and send into
    the same batches meanwhile; every record of both arrives, each sender's
    in its order, and the per-batch futures name the last record of the
    call's own in each batch."""
    log = make_log(tmp_path / "log", partitions=2)
    pairs = _pairs(1500, tag=b"A")
    others = _pairs(300, tag=b"B")
    backend = SlowDiskBackend(log, 0.002)

    async def main():
        async with us.Producer(backend, "t", batch_bytes=1024, max_buffer_bytes=4096) as p:
            ran, peak = [], []

            async def other():
                for r in others:
                    await p.send(r[1], r[0])
                    ran.append(1)
                    peak.append(p.buffered_bytes)
                    await asyncio.sleep(0)

            t = asyncio.ensure_future(other())
            await asyncio.sleep(0)
            before = len(ran)
            futs = await p.send_batch(pairs, per_batch=True)
            during = len(ran) - before
            await t
            assert max(peak) <= 4096    # the buffer limit held throughout
            await p.flush()
            assert p.buffered_bytes == 0
            return futs, during

    futs, during = run(main())
    assert 0 < during             # the call awaited, and the other task ran meanwhile
    assert backend.calls > 20     # many writes
    got = _by_partition(log)
    for p in range(2):
        assert [r for r in got[p] if b"-A" in r[1]] == \
            _expected(pairs, 2)[p]
        assert [r for r in got[p] if b"-B" in r[1]] == _expected(others, 2)[p]
    ours = set(pairs)
    for f in futs:
        recs = f._b.records
        assert recs[f._i] in ours
        assert not any(r in ours for r in recs[f._i + 1:])
    covered = sum(sum(1 for r in f._b.records if r in ours) for f in futs)
    assert covered == len(pairs)
    log.close()


def test_fail_immediately_stops_at_the_first_pair_that_does_not_fit(tmp_path):
    """acks="fsync": written batches hold their space until durable, so
    nothing frees up within the call; FailImmediately refuses the first
    pair past max_buffer_bytes, and exactly the ones before it are kept."""
    log = make_log(tmp_path / "log", partitions=3)
    pairs = _pairs(400)
    limit = 8000
    used, stop = 0, None
    for i, r in enumerate(pairs):
        if used + _size(r) > limit:
            stop = i
            break
        used += _size(r)

    async def main():
        async with us.Producer(log, "t", batch_bytes=1024, max_buffer_bytes=limit, acks="fsync",
                               backpressure=us.FailImmediately()) as p:
            with pytest.raises(us.BufferFullError, match="a record of up to %d bytes" % _size(pairs[stop])):
                await p.send_batch(pairs)
            await p.flush()
            return p.buffered_bytes

    assert run(main()) == 0
    assert _by_partition(log) == _expected(pairs[:stop], 3)
    log.close()


@pytest.mark.parametrize("cfg,kw", [({"message_timestamp_type": "LogAppendTime"}, {}),
                                    ({}, {"compression": "gzip"}),
                                    ({}, {"producer_id": "pairs"}),
                                    ({}, {"acks": "fsync"})])
def test_every_kind_of_batch_is_written_and_read_back(tmp_path, cfg, kw):
    """Batches the one-append path does not take (LogAppendTime, compressed,
    idempotent) are written one at a time; fsync acks complete on the group
    commit. All read back in order."""
    log = make_log(tmp_path / "log", partitions=2, **cfg)
    pairs = _pairs(2500)

    async def main():
        async with us.Producer(log, "t", **kw) as p:
            futs = await p.send_batch(pairs, per_batch=True)
            await p.flush()
            return [f.result() for f in futs]

    metas = run(main())
    assert len(metas) > 2
    assert _by_partition(log) == _expected(pairs, 2)
    log.close()


def test_one_append_writes_the_calls_batches_together(tmp_path):
    """The sealed batches of a call reach the partition with one append
    (several storage batches, one write), not one each."""
    log = make_log(tmp_path / "log", partitions=1)
    part = log.topic("t").partition(0)
    pairs = _pairs(2000)
    counts = []
    part.add_listener(lambda: counts.append(part.end_offset))

    futs = run(_send_per_batch(log, pairs))
    assert len(futs) > 20                   # that many batches of batch_bytes...
    assert len(part.read_batches(0, 1 << 30)) == len(futs)
    assert len(counts) <= 3                 # ...written in (at most) a few appends
    assert counts[-1] == 2000
    log.close()


EFBIG_CHILD = textwrap.dedent("""
    import asyncio, json, resource, sys
    import unstoppable as us
    log = us.Log(sys.argv[1])
    log.create_topic("t", partitions=1, segment_bytes=1 << 20)
    pairs = [(b"key-%05d" % i, b"value-%05d-" % i + b"x" * 80) for i in range(4000)]
    # The segment file may grow to 150 kB: about half the pairs fit.
    resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))

    async def main():
        async with us.Producer(log, "t", batch_bytes=2048, delivery_timeout_ms=200,
                               retry_backoff_ms=20) as p:
            futs = await p.send_batch(pairs)
            await p.flush()
            out = []
            for f in futs:
                e = f.exception()
                out.append(None if e is None else [type(e).__name__, type(e.__cause__).__name__])
            return out

    print(json.dumps(asyncio.run(main())))
    log.close()
""")


def test_a_failed_many_batch_write_leaves_nothing_and_the_batches_go_one_by_one(tmp_path):
    """The file reaches its size limit (EFBIG) while the call's batches are
    written with one append: that append writes nothing, the batches are
    then written one at a time until the limit, and the rest fail (after
    their retries) with DeliveryTimeoutError caused by DiskFullError. The
    log holds exactly the records whose futures succeeded, once, in order."""
    d = tmp_path / "log"
    out = subprocess.run([sys.executable, "-c", EFBIG_CHILD, str(d)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    ok = [i for i, r in enumerate(res) if r is None]
    failed = [r for r in res if r is not None]
    assert 500 < len(ok) < 3500, len(ok)
    assert failed and all(r == ["DeliveryTimeoutError", "DiskFullError"] for r in failed)
    assert ok == list(range(len(ok)))         # a prefix: batches are written in order
    with us.Log(d) as log:
        assert log.verify().ok
        got = [bytes(r.key) for r in read_all(log, "t")[0]]
    assert got == [b"key-%05d" % i for i in ok]
