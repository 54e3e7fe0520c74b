"""Producer.send_arrow: Arrow rows land where send() would put them, after
everything sent before, and read back intact."""
import asyncio

import pyarrow as pa

import unstoppable as us
from unstoppable._core.hashing import murmur2_partition, xxh64_partition


def _rows(log, topic):
    out = {}
    for p in log.topic(topic):
        out[p.index] = [(None if r.key is None else bytes(r.key), bytes(r.value)) for r in p.read(0, 100000)]
    return out


def test_send_arrow_partitions_like_send_and_keeps_order(tmp_path):
    log = us.Log(tmp_path / "log")
    log.create_topic("t", partitions=4)
    keys = [b"k%d" % (i % 37) for i in range(5000)]
    vals = [b"v%d" % i for i in range(5000)]
    table = pa.table({"key": pa.array(keys, pa.binary()), "value": pa.array(vals, pa.binary())})

    async def main():
        async with us.Producer(log, "t") as p:
            md = await p.send_and_wait(b"before", key=b"k1")
            first = await p.send_arrow(table)
            return md, first

    md, first = asyncio.run(main())
    rows = _rows(log, "t")
    assert sum(len(v) for v in rows.values()) == 5001
    for k, v in zip(keys, vals):
        assert (k, v) in rows[xxh64_partition(k, 4)]
    # The record sent before comes first in its partition.
    assert rows[md.partition][0] == (b"k1", b"before")
    assert first[md.partition] == 1
    for part, off in first.items():
        assert log.topic("t").partition(part).read(off, 1)[0].value is not None
    log.close()


def test_send_arrow_with_murmur2_and_custom_partitioner(tmp_path):
    log = us.Log(tmp_path / "log")
    log.create_topic("m", partitions=3)
    log.create_topic("c", partitions=3)
    keys = [b"key-%d" % i for i in range(300)]
    table = pa.table({"key": pa.array(keys, pa.binary()), "value": pa.array(keys, pa.binary())})

    async def main():
        async with us.Producer(log, "m", partitioner=us.Murmur2Partitioner()) as p:
            await p.send_arrow(table)
        async with us.Producer(log, "c", partitioner=lambda k, n: 2) as p:
            await p.send_arrow(table)

    asyncio.run(main())
    m = _rows(log, "m")
    for k in keys:
        assert (k, k) in m[murmur2_partition(k, 3)]
    c = _rows(log, "c")
    assert len(c[2]) == 300 and not c[0] and not c[1]
    log.close()
