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
