"""A compacted topic through the Kafka-protocol server, with a real Kafka
client (confluent-kafka) on a real port: CreateTopics takes cleanup.policy
and the compaction settings, DescribeConfigs reports them, and a keyless
record is refused with INVALID_RECORD (87), as Kafka refuses it."""
from __future__ import annotations

import os
import sys

import pytest

import unstoppable as us

pytest.importorskip("kio", reason="the server needs kio (Python >= 3.11)")
ck = pytest.importorskip("confluent_kafka")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "server"))
from server_util import ServerProcess  # noqa: E402


@pytest.mark.slow
def test_compacted_topic_over_the_kafka_protocol(tmp_path):
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
    s = ServerProcess(tmp_path / "log").start()
    try:
        admin = AdminClient({"bootstrap.servers": s.bootstrap})
        admin.create_topics([NewTopic("state", num_partitions=1, replication_factor=1, config={
            "cleanup.policy": "compact", "delete.retention.ms": "1000",
            "min.compaction.lag.ms": "5", "min.cleanable.dirty.ratio": "0.2",
            "retention.ms": "-1", "retention.bytes": "-1"})])["state"].result(10)   # as quixstreams asks
        with pytest.raises(ck.KafkaException, match="INVALID_CONFIG|cleanup_policy"):
            admin.create_topics([NewTopic("bad", num_partitions=1, replication_factor=1,
                                          config={"cleanup.policy": "forever"})])["bad"].result(10)
        entries = list(admin.describe_configs([ConfigResource("topic", "state")]).values())[0].result(10)
        assert entries["cleanup.policy"].value == "compact"
        assert entries["delete.retention.ms"].value == "1000"
        assert entries["min.compaction.lag.ms"].value == "5"
        assert float(entries["min.cleanable.dirty.ratio"].value) == 0.2
        assert entries["retention.ms"].value == "-1" and entries["retention.bytes"].value == "-1"
        p = ck.Producer({"bootstrap.servers": s.bootstrap, "linger.ms": 0, "retries": 0})
        results = []
        p.produce("state", key=b"seat-1", value=b"held", on_delivery=lambda e, m: results.append(e))
        p.flush(10)
        p.produce("state", value=b"no key", on_delivery=lambda e, m: results.append(e))
        p.flush(10)
        assert results[0] is None
        assert results[1] is not None and results[1].code() == ck.KafkaError.INVALID_RECORD
    finally:
        s.stop()
    with us.Log(tmp_path / "log") as log:
        t = log.topic("state")
        assert t.config.cleanup_policy == "compact" and t.config.delete_retention_ms == 1000
        assert [bytes(r.key) for r in t.partition(0).read(0)] == [b"seat-1"]


@pytest.mark.slow
def test_alter_configs_with_real_clients(tmp_path):
    """AlterConfigs (33) and IncrementalAlterConfigs (44) from confluent-kafka
    and kafka-python: the policy of a topic switches both ways, the log
    follows at once (a keyless record is refused, then accepted), and bad
    requests get Kafka's error codes."""
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewTopic,
    )
    s = ServerProcess(tmp_path / "log").start()
    try:
        admin = AdminClient({"bootstrap.servers": s.bootstrap})
        admin.create_topics([NewTopic("t", num_partitions=1, replication_factor=1)])["t"].result(10)

        def describe(name="t"):
            res = admin.describe_configs([ConfigResource("topic", name)])
            return {k: v.value for k, v in list(res.values())[0].result(10).items()}

        def incremental(*entries, name="t", validate_only=False):
            r = ConfigResource("topic", name, incremental_configs=[
                ConfigEntry(k, v, incremental_operation=op) for k, v, op in entries])
            return list(admin.incremental_alter_configs(
                [r], validate_only=validate_only).values())[0].result(10)

        def produce(key):
            p = ck.Producer({"bootstrap.servers": s.bootstrap, "linger.ms": 0, "retries": 0})
            errs = []
            p.produce("t", key=key, value=b"v", on_delivery=lambda e, m: errs.append(e))
            p.flush(10)
            return errs[0]

        assert produce(None) is None
        incremental(("cleanup.policy", "compact", AlterConfigOpType.APPEND),
                    ("min.compaction.lag.ms", "250", AlterConfigOpType.SET))
        d = describe()
        assert d["cleanup.policy"] == "compact,delete" and d["min.compaction.lag.ms"] == "250"
        assert produce(None).code() == ck.KafkaError.INVALID_RECORD
        incremental(("cleanup.policy", "delete", AlterConfigOpType.SUBTRACT))
        assert describe()["cleanup.policy"] == "compact"
        incremental(("min.compaction.lag.ms", None, AlterConfigOpType.DELETE))
        assert describe()["min.compaction.lag.ms"] == "0"
        incremental(("cleanup.policy", "delete", AlterConfigOpType.SET), validate_only=True)
        assert describe()["cleanup.policy"] == "compact"

        with pytest.raises(ck.KafkaException, match="INVALID_CONFIG"):
            incremental(("cleanup.policy", "forever", AlterConfigOpType.SET))
        with pytest.raises(ck.KafkaException, match="INVALID_CONFIG"):
            incremental(("delete.retention.ms", "-5", AlterConfigOpType.SET))
        with pytest.raises(ck.KafkaException, match="INVALID_CONFIG"):
            incremental(("retention.ms", "5", AlterConfigOpType.APPEND))
        with pytest.raises(ck.KafkaException, match="INVALID_CONFIG"):
            incremental(("cleanup.policy", "compact", AlterConfigOpType.SUBTRACT))
        with pytest.raises(ck.KafkaException, match="UNKNOWN_TOPIC_OR_PART"):
            incremental(("cleanup.policy", "delete", AlterConfigOpType.SET), name="nope")

        # AlterConfigs (non-incremental; confluent-kafka's legacy alter_configs
        # sends exactly what it is given): the configs given, every other
        # back to its default, as Kafka does.
        incremental(("retention.ms", "3600000", AlterConfigOpType.SET))
        list(admin.alter_configs([ConfigResource("topic", "t", set_config={
            "cleanup.policy": "delete"})]).values())[0].result(10)
        d = describe()
        assert d["cleanup.policy"] == "delete" and d["retention.ms"] == "-1"
        assert produce(None) is None

        # kafka-python: IncrementalAlterConfigs by default, AlterConfigs when asked.
        from kafka.admin import ConfigResource as KConfigResource
        from kafka.admin import ConfigResourceType, KafkaAdminClient
        k = KafkaAdminClient(bootstrap_servers=s.bootstrap, request_timeout_ms=10000)
        try:
            resp = k.alter_configs([KConfigResource(ConfigResourceType.TOPIC, "t",
                                                    configs={"cleanup.policy": "compact"})])
            assert resp == {"topic": {"t": "OK"}}
            assert describe()["cleanup.policy"] == "compact"
            resp = k.alter_configs([KConfigResource(ConfigResourceType.TOPIC, "t",
                                                    configs={"segment.bytes": "12"})],
                                   incremental=False)
            msg = resp["topic"]["t"]
            assert "Error 40" in msg and "segment_bytes must be in 4096" in msg
            assert describe()["cleanup.policy"] == "compact"
        finally:
            k.close()
    finally:
        assert s.stop() == 0
    with us.Log(tmp_path / "log") as log:
        assert log.topic("t").config.cleanup_policy == "compact"
        assert [r.key for r in log.topic("t").partition(0).read(0)] == [None, None]
        assert log.verify().ok
