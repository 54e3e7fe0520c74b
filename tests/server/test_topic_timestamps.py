"""Kafka's per-topic timestamp configs through the server, with real clients:
message.timestamp.type=LogAppendTime (the log's time replaces the client's,
KIP-32) and message.timestamp.before/after.max.ms (and the deprecated
difference.max.ms) overriding the server's --message-timestamp-*-max-ms."""
import asyncio
import time

import pytest
from server_util import ServerProcess

import unstoppable as us

ck = pytest.importorskip("confluent_kafka")
from confluent_kafka.admin import (  # noqa: E402
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

pytestmark = pytest.mark.slow
OLD = 1_000_000_000_000          # 2001: outside any limit tested here
MINUTE, HOUR = 60_000, 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("ts") / "log", metrics=False).start()
    yield s
    s.stop()


def describe(admin, name):
    res = admin.describe_configs([ConfigResource("topic", name)])
    return {k: v for k, v in list(res.values())[0].result(10).items()}


def produce(bootstrap, topic, timestamps, value=b"v"):
    """One confluent-kafka message (and batch) per timestamp: [(error,
    (ts type, ts))] of the delivery reports."""
    p = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "retries": 0,
                     "enable.idempotence": False})
    out = []
    for ts in timestamps:
        p.produce(topic, value=value, timestamp=ts,
                  on_delivery=lambda e, m: out.append((e, m.timestamp())))
        assert p.flush(20) == 0
    return out


def test_log_append_time_with_real_clients(server):
    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    admin.create_topics([NewTopic("lat", 2, 1, config={
        "message.timestamp.type": "LogAppendTime",
        # limits are ignored for LogAppendTime topics, as in Kafka
        "message.timestamp.before.max.ms": "1000"})])["lat"].result(10)
    d = describe(admin, "lat")
    assert d["message.timestamp.type"].value == "LogAppendTime"
    assert not d["message.timestamp.type"].is_default
    before = now_ms()
    reports = produce(server.bootstrap, "lat", [OLD] * 10)
    after = now_ms()
    # The delivery reports carry the Produce response's log_append_time.
    assert all(e is None for e, _ in reports)
    assert {t for _, (tt, t) in reports if tt == ck.TIMESTAMP_LOG_APPEND_TIME} and \
        all(tt == ck.TIMESTAMP_LOG_APPEND_TIME and before <= t <= after for _, (tt, t) in reports)

    c = ck.Consumer({"bootstrap.servers": server.bootstrap, "group.id": "g-lat",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([ck.TopicPartition("lat", i, 0) for i in range(2)])
    got = []
    deadline = time.monotonic() + 20
    while len(got) < 10 and time.monotonic() < deadline:
        for m in c.consume(10, 1.0):
            assert m.error() is None
            got.append(m.timestamp())
    assert len(got) == 10
    assert all(tt == ck.TIMESTAMP_LOG_APPEND_TIME and before <= t <= after for tt, t in got)
    # ListOffsets by timestamp finds them by their append time, not OLD.
    found = c.offsets_for_times([ck.TopicPartition("lat", i, after + 1) for i in range(2)], 10)
    assert all(tp.offset == -1 for tp in found)
    found = c.offsets_for_times([ck.TopicPartition("lat", i, OLD + 1) for i in range(2)], 10)
    assert sorted(tp.offset for tp in found) == [0, 0]
    c.close()

    # aiokafka and kafka-python read the same timestamp type and times.
    async def aio():
        from aiokafka import AIOKafkaConsumer, TopicPartition
        cons = AIOKafkaConsumer(bootstrap_servers=server.bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
        await cons.start()
        try:
            cons.assign([TopicPartition("lat", i) for i in range(2)])
            batch = await cons.getmany(timeout_ms=5000)
            return [(m.timestamp_type, m.timestamp) for ms in batch.values() for m in ms]
        finally:
            await cons.stop()
    assert sorted(asyncio.run(aio())) == sorted((1, t) for _, t in got)
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP
    kc = KafkaConsumer(bootstrap_servers=server.bootstrap, enable_auto_commit=False,
                       auto_offset_reset="earliest", consumer_timeout_ms=5000)
    kc.assign([KTP("lat", i) for i in range(2)])
    kgot = []
    for m in kc:
        kgot.append((m.timestamp_type, m.timestamp))
        if len(kgot) == 10:
            break
    kc.close()
    assert sorted(kgot) == sorted((1, t) for _, t in got)

    # The Python API reads the same times from the log.
    with us.Log(server.log_dir) as log:
        t = log.topic("lat")
        assert t.config.message_timestamp_type == "LogAppendTime"
        assert sorted(r.timestamp for i in range(2) for r in t.partition(i).read(0)) \
            == sorted(t for _, t in got)

    # Switched back to CreateTime (IncrementalAlterConfigs): the client's time again.
    r = ConfigResource("topic", "lat", incremental_configs=[ConfigEntry(
        "message.timestamp.type", None, incremental_operation=AlterConfigOpType.DELETE)])
    list(admin.incremental_alter_configs([r]).values())[0].result(10)
    assert describe(admin, "lat")["message.timestamp.type"].value == "CreateTime"
    recent = now_ms() - 500
    [(e, (tt, t))] = produce(server.bootstrap, "lat", [recent])
    assert e is None and (tt, t) == (ck.TIMESTAMP_CREATE_TIME, recent)
    with pytest.raises(ck.KafkaException, match="INVALID_CONFIG"):
        r = ConfigResource("topic", "lat", incremental_configs=[ConfigEntry(
            "message.timestamp.type", "WallClock", incremental_operation=AlterConfigOpType.SET)])
        list(admin.incremental_alter_configs([r]).values())[0].result(10)


def test_per_topic_timestamp_limits(server):
    """The server's defaults: before unlimited, after 1 hour. A topic's own
    limits replace them; difference.max.ms sets both."""
    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    fs = admin.create_topics([
        NewTopic("plain", 1, 1),
        NewTopic("strict", 1, 1, config={"message.timestamp.before.max.ms": str(MINUTE),
                                         "message.timestamp.after.max.ms": str(MINUTE)}),
        NewTopic("loose", 1, 1, config={"message.timestamp.after.max.ms": str(48 * HOUR)}),
        NewTopic("diff", 1, 1, config={"message.timestamp.difference.max.ms": str(HOUR)}),
    ])
    for f in fs.values():
        f.result(10)
    d = describe(admin, "plain")
    assert d["message.timestamp.after.max.ms"].value == str(HOUR)
    assert d["message.timestamp.after.max.ms"].is_default
    assert d["message.timestamp.before.max.ms"].value == str((1 << 63) - 1)
    d = describe(admin, "diff")
    assert (d["message.timestamp.before.max.ms"].value,
            d["message.timestamp.after.max.ms"].value) == (str(HOUR), str(HOUR))
    assert not d["message.timestamp.before.max.ms"].is_default

    now = now_ms()
    ten_min_ago, ten_min_ahead = now - 10 * MINUTE, now + 10 * MINUTE
    two_h_ago, two_h_ahead = now - 2 * HOUR, now + 2 * HOUR
    invalid = ck.KafkaError.INVALID_TIMESTAMP

    def codes(topic, stamps):
        return [None if e is None else e.code() for e, _ in produce(server.bootstrap, topic, stamps)]

    assert codes("plain", [two_h_ago, ten_min_ahead, two_h_ahead]) == [None, None, invalid]
    assert codes("strict", [ten_min_ago, ten_min_ahead, now]) == [invalid, invalid, None]
    assert codes("loose", [two_h_ahead]) == [None]
    assert codes("diff", [two_h_ago, ten_min_ago, two_h_ahead]) == [invalid, None, invalid]

    # Altered through kafka-python's IncrementalAlterConfigs: the limit follows.
    from kafka.admin import ConfigResource as KConfigResource
    from kafka.admin import ConfigResourceType, KafkaAdminClient
    k = KafkaAdminClient(bootstrap_servers=server.bootstrap, request_timeout_ms=10000)
    try:
        resp = k.alter_configs([KConfigResource(ConfigResourceType.TOPIC, "plain", configs={
            "message.timestamp.before.max.ms": str(MINUTE)})])
        assert resp == {"topic": {"plain": "OK"}}
    finally:
        k.close()
    assert codes("plain", [two_h_ago]) == [invalid]
    with us.Log(server.log_dir) as log:
        assert log.topic("plain").config.message_timestamp_before_max_ms == MINUTE
        assert [bytes(r.value) for r in log.topic("strict").partition(0).read(0)] == [b"v"]


def test_message_format_version_is_taken_and_ignored(server):
    """As a Kafka 3.x broker (KIP-724): AlterConfigs of message.format.version
    succeeds when the value is a Kafka version and changes nothing (batches
    stay RecordBatch v2); librdkafka's test 0092 sets it midway."""
    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    admin.create_topics([NewTopic("fmt", 1, 1)])["fmt"].result(10)
    produce(server.bootstrap, "fmt", [now_ms()])
    list(admin.alter_configs([ConfigResource("topic", "fmt", set_config={
        "message.format.version": "0.10.0.0"})]).values())[0].result(10)
    produce(server.bootstrap, "fmt", [now_ms()])
    with pytest.raises(ck.KafkaException, match="INVALID_CONFIG"):
        list(admin.alter_configs([ConfigResource("topic", "fmt", set_config={
            "message.format.version": "newest"})]).values())[0].result(10)
    with us.Log(server.log_dir) as log:
        batches = log.topic("fmt").partition(0).read_batches(0)
        assert [b.magic for b in batches] == [2, 2]
