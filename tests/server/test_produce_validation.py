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


def test_a_topic_that_forces_a_codec_takes_a_partitions_batches_all_or_none(setup):
    """Its batches are decoded and re-encoded with the topic's codec: every
    one is checked (and re-encoded) before the first is appended, so a bad
    later batch leaves none appended, as on the zero-copy path."""
    server, c = setup
    with us.Log(server.log_dir) as log:
        log.create_topic("forced", partitions=2, compression="zstd")
        log.create_topic("fcompact", compression="gzip", cleanup_policy="compact")
    now = int(time.time() * 1000)
    good = batch([b"a", b"b"])
    bad_crc = bytearray(batch([b"c"]))
    bad_crc[-1] ^= 1
    too_new = batch([b"d"], timestamps=[now + 2 * HOUR])
    for bad, code in ((bytes(bad_crc), 2), (too_new, 32)):
        got = produce_many(c, {("forced", 0): good + bad, ("forced", 1): good})
        assert got[("forced", 0)][0] == code
        assert got[("forced", 1)][0] == 0
        assert values(server, "forced") == []
    pid = c.request(InitProducerIdRequest(
        transactional_id=None, transaction_timeout=datetime.timedelta(seconds=60))).producer_id
    got = produce_many(c, {("forced", 0): batch([b"a"], pid, 0, 0) + batch(
        [b"late"], pid, 0, 1, timestamps=[now + 2 * HOUR])})
    assert got[("forced", 0)][0] == 32 and values(server, "forced") == []
    # A keyless record in a later batch of a compacted topic: 87, none appended.
    keyed = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                      producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                      batch_size=1 << 30)
    keyed.append(0, timestamp=now, key=b"k", value=b"v", headers=[])
    got = produce_many(c, {("fcompact", 0): bytes(keyed.build()) + batch([b"no key"])})
    assert got[("fcompact", 0)][0] == 87 and values(server, "fcompact") == []
    # Good requests: plain batches in one append, idempotent ones one each
    # (deduplicated on retry), all re-encoded with the topic's codec.
    assert produce_many(c, {("forced", 0): good + batch([b"c"])})[("forced", 0)] == (0, 0)
    two = batch([b"d"], pid, 0, 0) + batch([b"e", b"f"], pid, 0, 1)
    assert produce_many(c, {("forced", 0): two})[("forced", 0)] == (0, 3)
    assert produce_many(c, {("forced", 0): two})[("forced", 0)] == (0, 3)
    assert values(server, "forced") == [b"a", b"b", b"c", b"d", b"e", b"f"]
    with us.Log(server.log_dir) as log:
        p = log.topic("forced").partition(0)
        assert {b.compression for b in p.read_batches(0)} == {"zstd"}
        assert log.verify().ok


def test_keyless_records_of_a_compacted_topic_are_named_in_record_errors(setup):
    """Produce v8's record_errors (KIP-467), as Kafka's LogValidator gives
    them: the indexes of the keyless records in their batch, so that
    librdkafka fails those with INVALID_RECORD and the batch's others with
    _INVALID_DIFFERENT_RECORD (its test 0011 checks this)."""
    server, c = setup
    with us.Log(server.log_dir) as log:
        log.create_topic("c", cleanup_policy="compact")
    b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                  producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                  batch_size=1 << 30)
    now = int(time.time() * 1000)
    for i in range(5):
        b.append(i, timestamp=now, key=None if i in (1, 3) else b"k", value=b"v", headers=[])
    r = c.request(pr8.ProduceRequest(
        transactional_id=None, acks=1, timeout=datetime.timedelta(seconds=5),
        topic_data=(pr8.TopicProduceData(name="c", partition_data=(
            pr8.PartitionProduceData(index=0, records=bytes(b.build())),)),)))
    (part,) = r.responses[0].partition_responses
    assert int(part.error_code) == 87
    assert [e.batch_index for e in part.record_errors] == [1, 3]
    assert all("without a key" in e.batch_index_error_message for e in part.record_errors)
    assert "compacted" in part.error_message
    assert values(server, "c") == []
    # A plain topic's other INVALID_RECORD answers carry no record errors.
    got = produce_many(c, {("t", 0): batch([b"a"], 5, 0, 0) + batch([b"b"])})
    assert got[("t", 0)][0] == 87


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
    with us.Log(server.log_dir) as log:
        log.create_topic("forced", compression="zstd")     # batches decoded and re-encoded
    late = batch([b"ok"]) + batch([b"late"], timestamps=[now + 2 * HOUR])
    assert produce_many(c, {("forced", 0): late})[("forced", 0)][0] == 32
    assert produce_many(c, {("forced", 0): batch([b"ok"])})[("forced", 0)] == (0, 0)
    assert values(server, "forced") == [b"ok"]


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


def _frame(c, req):
    import io
    from kio.serial import entity_writer
    buf = io.BytesIO()
    entity_writer(type(req))(buf, req)
    payload = c.header(type(req).__api_key__, type(req).__version__) + buf.getvalue()
    return struct.pack(">i", len(payload)) + payload


def test_pipelined_produces_are_answered_in_order_and_before_a_long_poll(setup):
    """Answers to pipelined Produce requests are held and written together;
    a request that may wait (a Fetch long poll) does not hold them back."""
    from kio.index import load_response_schema
    from kio.schema.fetch.v11 import request as f11
    from kio.serial import entity_reader
    server, c = setup

    def produce_req(v, acks=1):
        return pr8.ProduceRequest(transactional_id=None, acks=acks,
                                  timeout=datetime.timedelta(seconds=5),
                                  topic_data=(pr8.TopicProduceData(name="t", partition_data=(
                                      pr8.PartitionProduceData(index=0, records=batch([v])),)),))
    n = 40
    first_corr = c.corr + 1
    data = b"".join(_frame(c, produce_req(b"%d" % i, acks=0 if i == 7 else 1)) for i in range(n))
    long_poll = f11.FetchRequest(
        replica_id=-1, max_wait=datetime.timedelta(seconds=4), min_bytes=1 << 30,
        max_bytes=1 << 20, isolation_level=0, session_id=0, session_epoch=-1,
        topics=(f11.FetchTopic(topic="t", partitions=(f11.FetchPartition(
            partition=1, current_leader_epoch=-1, fetch_offset=0, log_start_offset=-1,
            partition_max_bytes=1 << 20),)),), forgotten_topics_data=(), rack_id="")
    data += _frame(c, long_poll)
    t0 = time.monotonic()
    c.sock.sendall(data)
    got = []
    for _ in range(n - 1):                          # the acks=0 one has no answer
        frame = c.recv_frame()
        corr = struct.unpack_from(">i", frame, 0)[0]
        resp, _ = entity_reader(load_response_schema(0, 8))(frame, 4)
        p = resp.responses[0].partition_responses[0]
        got.append((corr - first_corr, int(p.error_code), p.base_offset))
    produced_in = time.monotonic() - t0
    assert got == [(i, 0, i) for i in range(n) if i != 7]
    assert produced_in < 3.0, produced_in           # not held behind the 4 s long poll
    frame = c.recv_frame()
    assert struct.unpack_from(">i", frame, 0)[0] == first_corr + n
    assert time.monotonic() - t0 >= 3.5             # the long poll waited its time
    assert values(server) == [b"%d" % i for i in range(n)]


def test_frames_split_anywhere_are_read_whole(setup):
    """Requests arriving in pieces of any size, small ones several per read
    and a large one (over the 64 KiB scratch buffer) across many, are read
    whole and answered in order."""
    import random
    from kio.schema.api_versions.v0.request import ApiVersionsRequest
    server, c = setup
    big = bytes(random.Random(3).randbytes(300 << 10))
    reqs = [ApiVersionsRequest(),
            pr8.ProduceRequest(transactional_id=None, acks=1, timeout=datetime.timedelta(seconds=5),
                               topic_data=(pr8.TopicProduceData(name="t", partition_data=(
                                   pr8.PartitionProduceData(index=0, records=batch([big])),)),)),
            ApiVersionsRequest(), ApiVersionsRequest()]
    first = c.corr + 1
    data = b"".join(_frame(c, r) for r in reqs)
    rnd = random.Random(7)
    pos = 0
    while pos < len(data):
        n = rnd.choice([1, 3, 5, 17, 4096, 70_000])
        c.sock.sendall(data[pos:pos + n])
        pos += n
        if rnd.random() < 0.05:
            time.sleep(0.01)
    corrs = [struct.unpack_from(">i", c.recv_frame(), 0)[0] for _ in reqs]
    assert corrs == [first + i for i in range(len(reqs))]
    assert values(server) == [big]
