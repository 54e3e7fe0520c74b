"""Produce requests built by hand (kafka-python's record builder, kio's request
types): a partition's batches are appended all or none, as Kafka validates a
partition's records as a whole before appending; record timestamps are
checked against the batch header and the server's window (error 32)."""
import datetime
import struct
import time

import pytest
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.util import calc_crc32c
from kio.schema.init_producer_id.v1.request import InitProducerIdRequest
from kio.schema.produce.v8 import request as pr8
from server_util import RawClient, ServerProcess

import unstoppable as us

HOUR = 3_600_000


def batch(values, pid=-1, epoch=-1, seq=-1, timestamps=None, codec=0):
    b = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=False,
                                  producer_id=pid, producer_epoch=epoch, base_sequence=seq,
                                  batch_size=1 << 30)
    now = int(time.time() * 1000)
    for i, v in enumerate(values):
        b.append(i, timestamp=now if timestamps is None else timestamps[i], key=None, value=v,
                 headers=[])
    return bytes(b.build())


def with_max_timestamp(raw: bytes, max_ts: int) -> bytes:
    """The batch with its header's maxTimestamp replaced and its CRC resealed:
    a client that states the wrong maxTimestamp."""
    b = bytearray(raw)
    struct.pack_into(">q", b, 35, max_ts)
    struct.pack_into(">I", b, 17, calc_crc32c(bytes(b[21:])))
    return bytes(b)


def produce_many(c, parts, acks=1):
    """{(topic, partition): records} in one request -> {(topic, partition): (error, base)}."""
    topics: dict = {}
    for (t, p), records in parts.items():
        topics.setdefault(t, []).append(pr8.PartitionProduceData(index=p, records=records))
    r = c.request(pr8.ProduceRequest(
        transactional_id=None, acks=acks, timeout=datetime.timedelta(seconds=5),
        topic_data=tuple(pr8.TopicProduceData(name=t, partition_data=tuple(ps))
                         for t, ps in topics.items())))
    return {(t.name, p.index): (int(p.error_code), p.base_offset)
            for t in r.responses for p in t.partition_responses}


@pytest.fixture
def setup(tmp_path):
    server = ServerProcess(tmp_path / "log", metrics=False,
                           extra=["--message-timestamp-before-max-ms", str(24 * HOUR)]).start()
    with us.Log(server.log_dir) as log:
        log.create_topic("t", partitions=2)
    c = RawClient(server.bootstrap)
    yield server, c
    c.close()
    server.stop()


def values(server, topic="t", partition=0):
    with us.Log(server.log_dir) as log:
        p = log.topic(topic).partition(partition)
        return [bytes(r.value) for r in p.read(0, max_records=1000)]


def test_a_bad_later_batch_appends_none_of_its_partition(setup):
    server, c = setup
    good = batch([b"a", b"b"])
    bad_crc = bytearray(batch([b"c"]))
    bad_crc[-1] ^= 1
    too_new = batch([b"d"], timestamps=[int(time.time() * 1000) + 2 * HOUR])
    for bad, code in ((bytes(bad_crc), 2), (too_new, 32)):
        got = produce_many(c, {("t", 0): good + bad, ("t", 1): good})
        assert got[("t", 0)][0] == code
        assert got[("t", 1)] == (0, len(values(server, "t", 1)) - 2)   # the other partition is taken
        assert values(server) == []
    assert produce_many(c, {("t", 0): good + batch([b"e"])})[("t", 0)] == (0, 0)
    assert values(server) == [b"a", b"b", b"e"]
    with us.Log(server.log_dir) as log:
        assert log.verify().ok


def test_idempotent_batches_of_one_request_all_or_none(setup):
    server, c = setup
    pid = c.request(InitProducerIdRequest(
        transactional_id=None, transaction_timeout=datetime.timedelta(seconds=60))).producer_id
    # a gap between the request's batches: none appended, 45
    got = produce_many(c, {("t", 0): batch([b"a", b"b"], pid, 0, 0) + batch([b"c"], pid, 0, 3)})
    assert got[("t", 0)][0] == 45 and values(server) == []
    # a bad CRC in the second: none appended, 2
    bad = bytearray(batch([b"c"], pid, 0, 2))
    bad[-1] ^= 1
    got = produce_many(c, {("t", 0): batch([b"a", b"b"], pid, 0, 0) + bytes(bad)})
    assert got[("t", 0)][0] == 2 and values(server) == []
    # two producers' batches for one partition in one request: refused whole, 87
    other = c.request(InitProducerIdRequest(
        transactional_id=None, transaction_timeout=datetime.timedelta(seconds=60))).producer_id
    got = produce_many(c, {("t", 0): batch([b"a"], pid, 0, 0) + batch([b"x"], other, 0, 0)})
    assert got[("t", 0)][0] == 87 and values(server) == []
    # consecutive sequences: all appended, and the retry of the whole request is deduplicated
    two = batch([b"a", b"b"], pid, 0, 0) + batch([b"c"], pid, 0, 2)
    assert produce_many(c, {("t", 0): two})[("t", 0)] == (0, 0)
    assert produce_many(c, {("t", 0): two})[("t", 0)] == (0, 0)
    assert values(server) == [b"a", b"b", b"c"]
    # the first batch is new but the second is out of order against the log: the
    # sequence of the second (4) does not continue the first (3, 1 record)
    got = produce_many(c, {("t", 0): batch([b"d"], pid, 0, 3) + batch([b"e"], pid, 0, 5)})
    assert got[("t", 0)][0] == 45 and values(server) == [b"a", b"b", b"c"]
    # a first batch out of order against the log refuses the whole request
    got = produce_many(c, {("t", 0): batch([b"d"], pid, 0, 4) + batch([b"e"], pid, 0, 5)})
    assert got[("t", 0)][0] == 45 and values(server) == [b"a", b"b", b"c"]
    assert produce_many(c, {("t", 0): batch([b"d"], pid, 0, 3) + batch([b"e"], pid, 0, 4)}) \
        == {("t", 0): (0, 3)}
    assert values(server) == [b"a", b"b", b"c", b"d", b"e"]


def test_record_timestamps_against_the_window(setup):
    server, c = setup
    now = int(time.time() * 1000)
    cases = [([now - 25 * HOUR], 32),              # before.max.ms (24 h here)
             ([now, now + 2 * HOUR], 32),          # after.max.ms: Kafka 4's default, 1 h
             ([now + 2 * HOUR, now], 32),          # the first record too (the header said so)
             ([now - 23 * HOUR, now + HOUR // 2], 0)]
    for ts, code in cases:
        for codec in (0, 1):                       # uncompressed, and gzip: records checked inside
            got = produce_many(c, {("t", 0): batch([b"v"] * len(ts), timestamps=ts, codec=codec)})
            assert got[("t", 0)][0] == code, (ts, codec)
    assert values(server) == [b"v"] * 4


def test_max_timestamp_is_set_from_the_records(setup):
    """A header whose maxTimestamp is not its records' largest is corrected,
    as Kafka's LogValidator does, so lookups by time find the records."""
    server, c = setup
    now = int(time.time() * 1000)
    ts = [now - 5000, now - 1000, now - 3000]
    for codec in (0, 1):
        wrong = with_max_timestamp(batch([b"x", b"y", b"z"], timestamps=ts, codec=codec), now - 5000)
        assert DefaultRecordBatch(wrong).validate_crc()
        assert produce_many(c, {("t", codec): wrong})[("t", codec)] == (0, 0)
        with us.Log(server.log_dir) as log:
            p = log.topic("t").partition(codec)
            # the header said now-5000: a lookup would have skipped the batch
            assert p.offset_for_time(now - 2000) == 1
            rng = p.byte_range(0, 1 << 20)
            with open(rng.segment.path, "rb") as f:
                stored = f.read()[:rng.length]
        assert struct.unpack_from(">q", stored, 35)[0] == now - 1000
        got = DefaultRecordBatch(stored)
        assert got.validate_crc()
        assert [r.timestamp for r in got] == ts
