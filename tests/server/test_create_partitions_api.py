"""CreatePartitions (API 37) with real clients: confluent-kafka's and
kafka-python's admin grow a topic, Kafka's errors for what cannot be done,
and producers, consumers and the Python API use the new partitions."""
import time

import pytest
from server_util import RawClient, ServerProcess

import unstoppable as us

ck = pytest.importorskip("confluent_kafka")
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic  # noqa: E402

pytestmark = pytest.mark.slow


def test_create_partitions_with_real_clients(tmp_path):
    s = ServerProcess(tmp_path / "log", metrics=False).start()
    try:
        admin = AdminClient({"bootstrap.servers": s.bootstrap})
        admin.create_topics([NewTopic("t", 2, 1)])["t"].result(10)

        def grow(n, topic="t", validate_only=False):
            f = admin.create_partitions([NewPartitions(topic, n)], validate_only=validate_only)
            return f[topic].result(10)

        with pytest.raises(ck.KafkaException, match="INVALID_PARTITIONS"):
            grow(2)
        with pytest.raises(ck.KafkaException, match="INVALID_PARTITIONS"):
            grow(1)
        with pytest.raises(ck.KafkaException, match="UNKNOWN_TOPIC_OR_PART"):
            grow(3, topic="nope")
        # Assignments (a raw request: confluent-kafka checks them itself):
        # one node, so only [0] for each new partition; and a topic named twice.
        import datetime

        from kio.schema.create_partitions.v1 import request as cp
        raw = RawClient(s.bootstrap)
        try:
            def raw_grow(*topics):
                r = raw.request(cp.CreatePartitionsRequest(
                    topics=tuple(cp.CreatePartitionsTopic(name=n, count=c, assignments=None if a is None
                                 else tuple(cp.CreatePartitionsAssignment(broker_ids=b) for b in a))
                                 for n, c, a in topics),
                    timeout=datetime.timedelta(seconds=5), validate_only=False))
                return [int(x.error_code) for x in r.results]
            assert raw_grow(("t", 3, ((1,),))) == [39]
            assert raw_grow(("t", 4, ((0,),))) == [39]          # two new partitions, one assignment
            assert raw_grow(("t", 3, None), ("t", 4, None)) == [42, 42]
            md = admin.list_topics(timeout=10)
            assert len(md.topics["t"].partitions) == 2
            assert raw_grow(("t", 3, ((0,),))) == [0]
        finally:
            raw.close()
        grow(5, validate_only=True)
        md = admin.list_topics(timeout=10)
        assert len(md.topics["t"].partitions) == 3
        grow(4)
        md = admin.list_topics(timeout=10)
        assert len(md.topics["t"].partitions) == 4

        from kafka.admin import KafkaAdminClient
        from kafka.admin import NewPartitions as KNewPartitions
        k = KafkaAdminClient(bootstrap_servers=s.bootstrap, request_timeout_ms=10000)
        try:
            k.create_partitions({"t": KNewPartitions(total_count=5)})
        finally:
            k.close()

        # A producer and a consumer of the new count, and the Python API.
        p = ck.Producer({"bootstrap.servers": s.bootstrap, "linger.ms": 0})
        for i in range(5):
            p.produce("t", value=b"v%d" % i, partition=i)
        assert p.flush(20) == 0
        c = ck.Consumer({"bootstrap.servers": s.bootstrap, "group.id": "g",
                         "auto.offset.reset": "earliest"})
        c.subscribe(["t"])
        got = {}
        deadline = time.monotonic() + 30
        while len(got) < 5 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got[m.partition()] = m.value()
        c.close()
        assert got == {i: b"v%d" % i for i in range(5)}
        with us.Log(s.log_dir) as log:
            t = log.topic("t")
            assert t.partitions == 5
            assert [p.end_offset for p in t] == [1] * 5
            assert log.verify().ok
    finally:
        s.stop()
