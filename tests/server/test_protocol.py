"""The server over raw Kafka-protocol connections: versions, errors, bad input.

Every request here is encoded by kio (an independent implementation of Kafka's
schemas) and sent to a real server subprocess on a real port.
"""
import os
import socket
import struct
import time
import urllib.request

import pytest
from kio.schema.api_versions.v0.request import ApiVersionsRequest as AV0
from kio.schema.api_versions.v0.response import ApiVersionsResponse as AV0Resp
from kio.schema.create_topics.v4 import request as ct4
from kio.schema.fetch.v11 import request as f11
from kio.schema.init_producer_id.v1.request import InitProducerIdRequest
from kio.schema.metadata.v8 import request as md8
from kio.schema.produce.v8 import request as pr8
from kio.serial import entity_reader
from kafka.record.default_records import DefaultRecordBatchBuilder
from server_util import RawClient

import datetime

import unstoppable as us


def batch(values, pid=-1, epoch=-1, seq=-1, timestamp=None, codec=0):
    b = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=False,
                                  producer_id=pid, producer_epoch=epoch, base_sequence=seq,
                                  batch_size=1 << 30)
    for i, v in enumerate(values):
        b.append(i, timestamp=timestamp, key=None, value=v, headers=[])
    return bytes(b.build())


def split(records):
    """(baseOffset, the batch's bytes after baseOffset) of each batch in a records field."""
    out, pos = [], 0
    while pos < len(records):
        base, blen = struct.unpack_from(">qi", records, pos)
        out.append((base, records[pos + 8:pos + 12 + blen]))
        pos += 12 + blen
    return out


def produce(c, topic, partition, records, acks=1, transactional_id=None):
    req = pr8.ProduceRequest(transactional_id=transactional_id, acks=acks,
                             timeout=datetime.timedelta(seconds=5), topic_data=(
        pr8.TopicProduceData(name=topic, partition_data=(
            pr8.PartitionProduceData(index=partition, records=records),)),))
    r = c.request(req)
    p = r.responses[0].partition_responses[0]
    return int(p.error_code), p.base_offset


def create(c, name, partitions=1, configs=()):
    r = c.request(ct4.CreateTopicsRequest(topics=(ct4.CreatableTopic(
        name=name, num_partitions=partitions, replication_factor=1, assignments=(),
        configs=tuple(ct4.CreatableTopicConfig(name=k, value=v) for k, v in configs)),),
        timeout=datetime.timedelta(seconds=5), validate_only=False))
    return int(r.topics[0].error_code), r.topics[0].error_message


def fetch(c, topic, partition, offset, max_wait_ms=0, min_bytes=1):
    req = f11.FetchRequest(replica_id=-1, max_wait=datetime.timedelta(milliseconds=max_wait_ms),
                           min_bytes=min_bytes, max_bytes=1 << 20, isolation_level=0,
                           session_id=0, session_epoch=-1, topics=(f11.FetchTopic(
                               topic=topic, partitions=(f11.FetchPartition(
                                   partition=partition, current_leader_epoch=-1,
                                   fetch_offset=offset, log_start_offset=-1,
                                   partition_max_bytes=1 << 20),)),),
                           forgotten_topics_data=(), rack_id="")
    return c.request(req).responses[0].partitions[0]


@pytest.fixture
def client(server):
    c = RawClient(server.bootstrap)
    yield c
    c.close()


def test_api_versions_kip511_fallback(server, client):
    # ApiVersions v3 is flexible and not spoken here: error 35 with a v0 body
    client.send_frame(client.header(18, 3) + b"\x00")
    frame = client.recv_frame()
    resp, _ = entity_reader(AV0Resp)(frame, 4)
    assert int(resp.error_code) == 35
    keys = {k.api_key: (k.min_version, k.max_version) for k in resp.api_keys}
    assert keys[18] == (0, 2) and keys[0] == (3, 8) and keys[1] == (4, 11)
    r = client.request(AV0())
    assert int(r.error_code) == 0 and len(r.api_keys) == len(keys)


def test_produce_fetch_and_errors(server, client):
    assert create(client, "t", 2) == (0, None)
    assert create(client, "t", 2)[0] == 36                       # exists
    assert create(client, "r", 1, [("cleanup.policy", "forever")])[0] == 40
    ab, c = batch([b"a", b"b"]), batch([b"c"])
    assert produce(client, "t", 0, ab) == (0, 0)
    assert produce(client, "t", 0, c, acks=-1) == (0, 2)
    assert produce(client, "t", 2, batch([b"x"]))[0] == 3          # no partition 2
    assert produce(client, "nope", 0, batch([b"x"]))[0] == 3       # no topic
    bad = bytearray(batch([b"y"]))
    bad[-1] ^= 1
    assert produce(client, "t", 0, bytes(bad))[0] == 2             # CRC: CORRUPT_MESSAGE
    assert produce(client, "t", 0, batch([b"t"]), transactional_id="tx")[0] == 35
    assert produce(client, "t", 0, batch([b"t"], timestamp=-5))[0] == 87   # INVALID_RECORD
    p = fetch(client, "t", 0, 1)
    assert int(p.error_code) == 0 and p.high_watermark == 3
    # The batches as the client sent them, byte for byte (only baseOffset
    # rewritten): the first one holds offset 0, below the fetch offset, as
    # Kafka serves it; clients skip such records.
    got = split(bytes(p.records))
    assert [b for _, b in got] == [ab[8:], c[8:]]
    assert [base for base, _ in got] == [0, 2]
    from kafka.record.default_records import DefaultRecordBatch
    recs = [(r.offset, r.value) for base, b in got
            for r in DefaultRecordBatch(struct.pack(">q", base) + b)]
    assert recs == [(0, b"a"), (1, b"b"), (2, b"c")]
    assert int(fetch(client, "t", 0, 4).error_code) == 1          # past the end
    with us.Log(server.log_dir) as log:
        assert [bytes(r.value) for r in log.topic("t").partition(0).read(0)] == [b"a", b"b", b"c"]
        assert log.verify().ok


def test_compressed_batches_are_stored_as_sent_unless_the_topic_forces_a_codec(server, client):
    create(client, "gz")
    sent = batch([b"v%d" % i * 20 for i in range(50)], codec=1)     # gzip
    assert produce(client, "gz", 0, sent) == (0, 0)
    with us.Log(server.log_dir) as log:
        p = log.topic("gz").partition(0)
        rng = p.byte_range(0, 1 << 20)
        with open(rng.segment.path, "rb") as f:
            assert f.read()[8:] == sent[8:]                          # byte for byte, still gzip
        assert [bytes(r.value) for r in p.read(0, max_records=100)] == \
            [b"v%d" % i * 20 for i in range(50)]
        log.create_topic("forced", compression="zstd")             # the Python API, same log
    assert produce(client, "forced", 0, sent) == (0, 0)
    got = split(bytes(fetch(client, "forced", 0, 0).records))
    assert len(got) == 1 and struct.unpack_from(">h", got[0][1], 13)[0] & 7 == 4   # zstd now
    from kafka.record.default_records import DefaultRecordBatch
    assert [r.value for r in DefaultRecordBatch(struct.pack(">q", 0) + got[0][1])] == \
        [b"v%d" % i * 20 for i in range(50)]


def test_fetch_limits_whole_batches_as_kafka_does(server, client):
    """max_bytes and partition_max_bytes bound the records of a response in
    whole batches; a batch larger than the limits is served only as the
    response's first records (so a consumer always progresses)."""
    create(client, "lim", 2)
    big = os.urandom(600 << 10)
    for part in (0, 1):
        assert produce(client, "lim", part, batch([big]))[0] == 0

    def fetch_both(max_bytes, partition_max_bytes):
        req = f11.FetchRequest(
            replica_id=-1, max_wait=datetime.timedelta(0), min_bytes=1, max_bytes=max_bytes,
            isolation_level=0, session_id=0, session_epoch=-1, topics=(f11.FetchTopic(
                topic="lim", partitions=tuple(f11.FetchPartition(
                    partition=i, current_leader_epoch=-1, fetch_offset=0, log_start_offset=-1,
                    partition_max_bytes=partition_max_bytes) for i in (0, 1))),),
            forgotten_topics_data=(), rack_id="")
        return [len(p.records or b"") for p in client.request(req).responses[0].partitions]
    one = fetch_both(1 << 20, 1 << 20)[0]
    assert one > 600 << 10
    assert fetch_both(1 << 20, 1 << 20) == [one, 0]          # the second does not fit max_bytes
    assert fetch_both(2 << 20, 1 << 20) == [one, one]
    assert fetch_both(100, 1 << 20) == [one, 0]               # first batch: served anyway
    assert fetch_both(2 << 20, 100) == [one, 0]               # partition_max_bytes: the same


def test_acks_zero(server, client):
    create(client, "z")
    req = pr8.ProduceRequest(transactional_id=None, acks=0, timeout=datetime.timedelta(seconds=5),
                             topic_data=(pr8.TopicProduceData(name="z", partition_data=(
                                 pr8.PartitionProduceData(index=0, records=batch([b"a"])),)),))
    import io
    from kio.serial import entity_writer
    buf = io.BytesIO()
    entity_writer(pr8.ProduceRequest)(buf, req)
    client.send_frame(client.header(0, 8) + buf.getvalue())     # no answer comes
    r = client.request(AV0())                                   # the next answer is this one's
    assert int(r.error_code) == 0
    # a failed acks=0 produce closes the connection: the only way to tell the client
    bad = pr8.ProduceRequest(transactional_id=None, acks=0, timeout=datetime.timedelta(seconds=5),
                             topic_data=(pr8.TopicProduceData(name="z", partition_data=(
                                 pr8.PartitionProduceData(index=7, records=batch([b"b"])),)),))
    buf = io.BytesIO()
    entity_writer(pr8.ProduceRequest)(buf, bad)
    client.send_frame(client.header(0, 8) + buf.getvalue())
    assert _closed(client.sock)
    with us.Log(server.log_dir) as log:
        assert [bytes(r.value) for r in log.topic("z").partition(0).read(0)] == [b"a"]


def test_fetch_long_poll_wakes_on_produce_from_another_process(server, client):
    create(client, "lp")
    t0 = time.monotonic()
    p = fetch(client, "lp", 0, 0, max_wait_ms=300)
    waited = time.monotonic() - t0
    assert p.records in (b"", None) and waited >= 0.25            # min_bytes not met: waited
    import threading

    def later():
        time.sleep(0.3)
        with us.Log(server.log_dir) as log:                         # the Python API, this process
            log.topic("lp").partition(0).append([b"hello"])
    th = threading.Thread(target=later)
    th.start()
    t0 = time.monotonic()
    p = fetch(client, "lp", 0, 0, max_wait_ms=5000)
    waited = time.monotonic() - t0
    th.join()
    assert p.high_watermark == 1 and p.records
    assert waited < 2.0, waited                                     # woke on the append


def test_idempotent_sequences_map_to_kafka_errors(server, client):
    create(client, "idem")
    pid = client.request(InitProducerIdRequest(
        transactional_id=None, transaction_timeout=datetime.timedelta(seconds=60))).producer_id
    assert pid >= 1 << 32
    assert produce(client, "idem", 0, batch([b"a", b"b"], pid, 0, 0)) == (0, 0)
    assert produce(client, "idem", 0, batch([b"a", b"b"], pid, 0, 0)) == (0, 0)   # retry: deduped
    assert produce(client, "idem", 0, batch([b"c"], pid, 0, 5))[0] == 45           # gap
    assert produce(client, "idem", 0, batch([b"c"], pid, 0, 2)) == (0, 2)
    for s in range(3, 9):
        assert produce(client, "idem", 0, batch([b"n"], pid, 0, s))[0] == 0
    assert produce(client, "idem", 0, batch([b"a"], pid, 0, 3))[0] == 46            # too old to know
    assert produce(client, "idem", 0, batch([b"e"], pid, 1, 0))[0] == 0             # new epoch
    assert produce(client, "idem", 0, batch([b"f"], pid, 0, 9))[0] == 47            # fenced
    assert produce(client, "idem", 0, batch([b"g"], pid + 1, 0, 7))[0] == 59        # unknown producer
    with us.Log(server.log_dir) as log:
        assert log.topic("idem").partition(0).end_offset == 10


def test_producer_ids_are_persisted_and_clear_of_python_producers(tmp_path):
    from server_util import ServerProcess
    log_dir = tmp_path / "log"
    first = 1 << 32
    # a Python producer whose id is the counter's first value has a lock file
    us.Log(log_dir).close()
    os.makedirs(log_dir / "producers", exist_ok=True)
    (log_dir / "producers" / f"{first:016x}.lock").touch()
    s = ServerProcess(log_dir, metrics=False).start()
    req = InitProducerIdRequest(transactional_id=None,
                                transaction_timeout=datetime.timedelta(seconds=60))
    try:
        c = RawClient(s.bootstrap)
        a = c.request(req).producer_id
        b = c.request(req).producer_id
        c.close()
        assert (a, b) == (first + 1, first + 2)
        s.kill()
        s.start()
        c = RawClient(s.bootstrap)
        assert c.request(req).producer_id == first + 3
        r = c.request(InitProducerIdRequest(transactional_id="tx",
                                            transaction_timeout=datetime.timedelta(seconds=60)))
        assert int(r.error_code) == 35
        c.close()
    finally:
        s.stop()


def test_topic_names_cannot_escape_the_directory(server, client):
    for name in ("../escape", "..", "a/b", "x" * 300):
        code, msg = create(client, name)
        assert code == 17, (name, code, msg)
    r = client.request(md8.MetadataRequest(
        topics=(md8.MetadataRequestTopic(name="../../etc"),), allow_auto_topic_creation=True,
        include_cluster_authorized_operations=False, include_topic_authorized_operations=False))
    assert int(r.topics[0].error_code) == 17
    assert produce(client, "../x", 0, batch([b"a"]))[0] == 17
    assert int(fetch(client, "../x", 0, 0).error_code) == 17
    root = os.path.dirname(server.log_dir)
    assert sorted(os.listdir(root)) == sorted(["log", os.path.basename(server.stderr_path)])


def test_metadata_auto_creates(server, client):
    r = client.request(md8.MetadataRequest(
        topics=(md8.MetadataRequestTopic(name="auto"),), allow_auto_topic_creation=True,
        include_cluster_authorized_operations=False, include_topic_authorized_operations=False))
    assert int(r.topics[0].error_code) == 0 and len(r.topics[0].partitions) == 1
    assert r.controller_id == 0 and r.brokers[0].port == server.port
    r = client.request(md8.MetadataRequest(
        topics=(md8.MetadataRequestTopic(name="noauto"),), allow_auto_topic_creation=False,
        include_cluster_authorized_operations=False, include_topic_authorized_operations=False))
    assert int(r.topics[0].error_code) == 3


def _closed(sock, timeout=5.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_bad_frames_close_only_their_connection(server, client):
    create(client, "ok")
    # malformed: a Metadata v8 body cut short
    c1 = RawClient(server.bootstrap)
    c1.send_frame(c1.header(3, 8) + b"\x00\x00\x00\x05\x00")
    assert _closed(c1.sock)
    # unknown API key
    c2 = RawClient(server.bootstrap)
    c2.send_frame(c2.header(999, 0))
    assert _closed(c2.sock)
    # an unsupported version of a known API
    c3 = RawClient(server.bootstrap)
    c3.send_frame(c3.header(0, 99))
    assert _closed(c3.sock)
    # a header shorter than a header
    c4 = RawClient(server.bootstrap)
    c4.send_frame(b"\x00\x03\x00")
    assert _closed(c4.sock)
    # oversized: refused from the size field alone, before the body arrives
    c5 = RawClient(server.bootstrap)
    c5.sock.sendall(struct.pack(">i", 1 << 30) + b"\x00" * 100)
    t0 = time.monotonic()
    assert _closed(c5.sock)
    assert time.monotonic() - t0 < 3
    for c in (c1, c2, c3, c4, c5):
        c.close()
    # the first connection is still served, the log is intact
    assert produce(client, "ok", 0, batch([b"still here"])) == (0, 0)
    with us.Log(server.log_dir) as log:
        assert log.verify().ok
    assert "request size 1073741824 is outside" in server.stderr()


def test_a_client_that_stops_reading_keeps_memory_bounded(server, client):
    create(client, "big")
    value = os.urandom(512 << 10)
    for _ in range(8):
        assert produce(client, "big", 0, batch([value]))[0] == 0
    # A batch over max.message.bytes (1 MiB, the record limit, plus the
    # batch header) is refused whole, as Kafka refuses it: MESSAGE_TOO_LARGE.
    assert produce(client, "big", 0, batch([value, value]))[0] == 10
    base = server.rss_kib()
    slow = RawClient(server.bootstrap)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    req = f11.FetchRequest(replica_id=-1, max_wait=datetime.timedelta(0), min_bytes=1,
                           max_bytes=8 << 20, isolation_level=0, session_id=0, session_epoch=-1,
                           topics=(f11.FetchTopic(topic="big", partitions=(f11.FetchPartition(
                               partition=0, current_leader_epoch=-1, fetch_offset=0,
                               log_start_offset=-1, partition_max_bytes=8 << 20),)),),
                           forgotten_topics_data=(), rack_id="")
    import io
    from kio.serial import entity_writer
    buf = io.BytesIO()
    entity_writer(f11.FetchRequest)(buf, req)
    body = buf.getvalue()
    slow.sock.setblocking(False)
    sent = 0
    for _ in range(200):        # 200 fetches of 4 MiB each = 800 MiB if all were answered at once
        frame = slow.header(1, 11) + body
        try:
            slow.sock.send(struct.pack(">i", len(frame)) + frame)
            sent += 1
        except BlockingIOError:
            break
    time.sleep(2)
    grown = server.rss_kib() - base
    assert grown < 64 << 10, f"server RSS grew {grown} KiB for {sent} unread fetches"
    # other clients are still served meanwhile
    assert produce(client, "big", 0, batch([b"small"]))[0] == 0
    slow.close()


def test_a_thousand_idle_connections(server, client):
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2200:
        pytest.skip(f"needs 2,200 descriptors, the limit is {soft}")
    create(client, "idle")
    conns = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(1000)]
    try:
        assert produce(client, "idle", 0, batch([b"v"])) == (0, 0)
        # each idle connection is still served
        c = RawClient(server.bootstrap)
        assert int(c.request(AV0()).error_code) == 0
        c.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as r:
            text = r.read().decode()
        line = next(l for l in text.splitlines() if l.startswith("unstoppable_server_connections"))
        assert float(line.split()[1]) >= 1001
    finally:
        for s in conns:
            s.close()


def test_sigterm_stops_cleanly(server, client):
    create(client, "st")
    assert produce(client, "st", 0, batch([b"a"] * 10)) == (0, 0)
    assert server.stop() == 0
    assert "Traceback" not in server.stderr()
    with us.Log(server.log_dir) as log:
        assert log.topic("st").partition(0).end_offset == 10
        assert log.verify().ok


def test_acks_all_survives_sigkill(server, client):
    create(client, "k")
    for i in range(20):
        assert produce(client, "k", 0, batch([b"%d" % i] * 5), acks=-1) == (0, i * 5)
    server.kill()
    with us.Log(server.log_dir) as log:
        assert log.topic("k").partition(0).end_offset == 100
        assert log.verify().ok


def test_metrics(server, client):
    create(client, "m", 2)
    produce(client, "m", 1, batch([b"a", b"b"]))
    produce(client, "m", 5, batch([b"a"]))
    fetch(client, "m", 1, 0)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as r:
        text = r.read().decode()
    assert 'unstoppable_partition_end_offset{partition="1",topic="m"} 2.0' in text
    assert 'unstoppable_server_requests_total{api="Produce"} 2.0' in text
    assert 'unstoppable_server_errors_total{api="Produce",code="3"} 1.0' in text
    assert 'unstoppable_server_request_seconds_count{api="Fetch"} 1.0' in text
    # The event loop's lag: a 10 ms timer fires, and how late it was is recorded
    # (the requests above may all finish before the first one fires).
    import re
    deadline = time.monotonic() + 5
    while True:
        lag = re.search(r"^unstoppable_server_loop_lag_seconds_count (\S+)$", text, re.M)
        assert lag, "no loop-lag histogram"
        if float(lag.group(1)) >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as r:
            text = r.read().decode()
    assert float(lag.group(1)) >= 1
    assert 'unstoppable_server_produced_bytes_total{partition="1",topic="m"}' in text
