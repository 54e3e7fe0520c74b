"""Log.create_partitions: a topic's partition count grows (only grows), other
handles and processes follow, and the asyncio Producer and a consumer group
take the new partitions while they run."""
import asyncio
import os
import subprocess
import sys
import time

import pytest

import format_reference as fr
import unstoppable as us


def test_partitions_grow_only(tmp_path):
    with us.Log(tmp_path) as log, us.Log(tmp_path) as other:
        t = log.create_topic("t", partitions=2, retention_ms=60_000)
        t.partition(1).append([b"a"])
        seen = other.topic("t")
        assert seen.partitions == 2
        for bad in (2, 1, 0):
            with pytest.raises(us.InvalidPartitionsError, match="can only grow"):
                log.create_partitions("t", bad)
        with pytest.raises(us.InvalidPartitionsError, match="partitions must be in 1 .. 100000"):
            log.create_partitions("t", 100_001)
        with pytest.raises(us.UnknownTopicError):
            log.create_partitions("nope", 3)
        log.create_partitions("t", 3, validate_only=True)
        assert log.topic("t").partitions == 2
        assert log.create_partitions("t", 4) is t and t.partitions == 4
        assert t.partition(3).append([b"x"]) == 0
        assert t.config.retention_ms == 60_000          # the other settings stay
        time.sleep(0.15)                                # another handle: within 0.1 s
        assert other.topic("t").partitions == 4
        assert [p.end_offset for p in other.topic("t")] == [0, 1, 0, 1]
        assert log.verify().ok
    for i in range(4):                                  # the reference reads every partition
        fr.read_partition(os.path.join(tmp_path, "topics", "t", str(i)))
    with pytest.raises(us.TopicConfigError, match="create_partitions"):
        with us.Log(tmp_path) as log:
            log.alter_topic("t", partitions=8)


def test_another_process_adds_partitions(tmp_path):
    with us.Log(tmp_path) as log:
        t = log.create_topic("t", partitions=1)
        code = ("import sys, unstoppable as us\n"
                "with us.Log(sys.argv[1]) as log:\n"
                "    log.create_partitions('t', 3)\n")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env=env,
                       timeout=60)
        time.sleep(0.15)
        assert log.topic("t").partitions == 3
        assert t.partition(2).append([b"z"]) == 0


def test_a_leftover_directory_of_a_crashed_add_is_replaced(tmp_path):
    """A crash between the new directories and topic.json leaves directories
    no topic.json names: nothing opens them, and the next add replaces them."""
    with us.Log(tmp_path) as log:
        log.create_topic("t", partitions=1)
    leftover = os.path.join(tmp_path, "topics", "t", "1")
    os.makedirs(leftover)
    with open(os.path.join(leftover, "debris"), "w") as f:
        f.write("x")
    with us.Log(tmp_path) as log:
        assert log.topic("t").partitions == 1
        assert log.verify().ok
        log.create_partitions("t", 2)
        assert os.listdir(leftover) == [] or "debris" not in os.listdir(leftover)
        assert log.topic("t").partition(1).append([b"ok"]) == 0


def test_producer_and_group_take_new_partitions(tmp_path):
    async def main():
        with us.Log(tmp_path) as log:
            log.create_topic("t", partitions=1)
            async with us.Producer(log, "t", producer_id="p1") as prod, \
                    us.Consumer(log, "t", group="g") as cons:
                assert prod.partitions == 1
                await asyncio.to_thread(log.create_partitions, "t", 3)
                deadline = time.monotonic() + 10
                while prod.partitions < 3 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert prod.partitions == 3
                futs = [await prod.send(b"v%d" % i, key=b"k%d" % i) for i in range(60)]
                metas = [await f for f in futs]
                assert {m.partition for m in metas} == {0, 1, 2}
                got = {}
                while len(got) < 60 and time.monotonic() < deadline + 10:
                    batch = await cons.getmany(timeout_ms=200)
                    for tp, recs in batch.items():
                        for r in recs:
                            got[bytes(r.value)] = tp.partition
                assert len(got) == 60 and set(got.values()) == {0, 1, 2}
                assert cons.assignment() == {us.TopicPartition("t", i) for i in range(3)}
            # the idempotent producer's sequences on the new partitions are the log's
            with us.Log(tmp_path) as again:
                assert again.verify().ok
    asyncio.run(main())
