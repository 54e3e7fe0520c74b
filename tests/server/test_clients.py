"""Real Kafka clients nobody here wrote, against a server subprocess on a real port:
confluent-kafka (librdkafka), aiokafka, kafka-python and kcat.

Each creates a topic, produces with idempotence and with every compression
codec, consumes by assign + seek, looks offsets up by timestamp, runs in a
group of 3 that rebalances after one member is SIGKILLed, and finds its
commits again after a SIGKILL of the server.
"""
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from server_util import wait_until

import unstoppable as us

pytestmark = pytest.mark.slow
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
HERE = os.path.dirname(os.path.abspath(__file__))


def expected_values(topic, n):
    return sorted(f"{topic}-{codec}-{i}".encode() for codec in CODECS for i in range(n))


def log_values(log_dir, topic):
    with us.Log(log_dir) as log:
        t = log.topic(topic)
        out = []
        for i in range(t.partitions):
            p = t.partition(i)
            off = p.start_offset
            while off < p.end_offset:
                recs = p.read(off)
                out += [bytes(r.value) for r in recs]
                off = recs[-1].offset + 1
        assert log.verify().ok
        return sorted(out)


# ---------------------------------------------------------------- confluent-kafka

def test_confluent_kafka(server):
    ck = pytest.importorskip("confluent_kafka")
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
    bs = server.bootstrap
    admin = AdminClient({"bootstrap.servers": bs})
    admin.create_topics([NewTopic("ck", num_partitions=3, replication_factor=1)])["ck"].result(10)
    with pytest.raises(ck.KafkaException, match="TOPIC_ALREADY_EXISTS"):
        admin.create_topics([NewTopic("ck", num_partitions=3, replication_factor=1)])["ck"].result(10)
    cfg = admin.describe_configs([ConfigResource("topic", "ck")])
    entries = list(cfg.values())[0].result(10)
    assert entries["cleanup.policy"].value == "delete"
    assert entries["max.message.bytes"].value == str(1 << 20)
    t_before = int(time.time() * 1000)
    for codec in CODECS:
        p = ck.Producer({"bootstrap.servers": bs, "enable.idempotence": True,
                         "compression.type": codec, "linger.ms": 5, "acks": "all"})
        errors = []
        for i in range(300):
            p.produce("ck", key=b"%d" % i, value=f"ck-{codec}-{i}".encode(),
                      headers=[("codec", codec.encode())],
                      on_delivery=lambda e, m: errors.append(e) if e else None)
        assert p.flush(20) == 0
        assert errors == []
    assert log_values(server.log_dir, "ck") == expected_values("ck", 300)

    # assign + seek
    c = ck.Consumer({"bootstrap.servers": bs, "group.id": "ck-assign", "enable.auto.commit": False})
    c.assign([ck.TopicPartition("ck", 1, 5)])
    got = []
    deadline = time.time() + 20
    with us.Log(server.log_dir) as log:
        want = log.topic("ck").partition(1).end_offset - 5
    while len(got) < want and time.time() < deadline:
        got += [m for m in c.consume(1000, 0.5) if not m.error()]
    assert len(got) == want and got[0].offset() == 5
    assert got[0].headers()[0][0] == "codec"
    # offsets by timestamp
    [tp] = c.offsets_for_times([ck.TopicPartition("ck", 1, t_before)], 10)
    assert tp.offset == 0
    [tp] = c.offsets_for_times([ck.TopicPartition("ck", 1, int(time.time() * 1000) + 60_000)], 10)
    assert tp.offset == -1
    assert c.get_watermark_offsets(ck.TopicPartition("ck", 1), 10) == (0, want + 5)
    # a commit survives a SIGKILL of the server
    c.commit(offsets=[ck.TopicPartition("ck", 1, 42)], asynchronous=False)
    c.close()
    server.kill()
    server.start()
    c = ck.Consumer({"bootstrap.servers": bs, "group.id": "ck-assign"})
    [tp] = c.committed([ck.TopicPartition("ck", 1)], 10)
    assert tp.offset == 42
    c.close()
    out = subprocess.run([sys.executable, "-m", "unstoppable", "groups", "ck-assign",
                          "--log", server.log_dir], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.path.join(HERE, "..", "..", "src")))
    assert out.returncode == 0, out.stderr
    assert " 42 " in out.stdout and "ck" in out.stdout


def test_confluent_kafka_transactions_get_unsupported_version(server):
    ck = pytest.importorskip("confluent_kafka")
    p = ck.Producer({"bootstrap.servers": server.bootstrap, "transactional.id": "tx-1"})
    with pytest.raises(ck.KafkaException) as e:
        p.init_transactions(3)
    assert e.value.args[0].code() == ck.KafkaError.UNSUPPORTED_VERSION


# ---------------------------------------------------------------- aiokafka

def test_aiokafka(server):
    aiokafka = pytest.importorskip("aiokafka")
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.structs import TopicPartition
    bs = server.bootstrap

    async def produce_and_read():
        admin = AIOKafkaAdminClient(bootstrap_servers=bs)
        await admin.start()
        await admin.create_topics([NewTopic("aio", 2, 1)])
        await admin.close()
        t_before = int(time.time() * 1000)
        for codec in CODECS:
            p = aiokafka.AIOKafkaProducer(bootstrap_servers=bs, enable_idempotence=True,
                                          compression_type=None if codec == "none" else codec)
            await p.start()
            futs = [await p.send("aio", f"aio-{codec}-{i}".encode(), key=b"%d" % i)
                    for i in range(300)]
            await asyncio.gather(*futs)
            await p.stop()
        c = aiokafka.AIOKafkaConsumer(bootstrap_servers=bs, group_id="aio-g",
                                      enable_auto_commit=False)
        await c.start()
        tp = TopicPartition("aio", 0)
        c.assign([tp])
        c.seek(tp, 3)
        got = await c.getmany(tp, timeout_ms=5000, max_records=5)
        assert [r.offset for r in got[tp]] == [3, 4, 5, 6, 7]
        found = await c.offsets_for_times({tp: t_before})
        assert found[tp].offset == 0 and found[tp].timestamp >= t_before
        await c.commit({tp: 7})
        await c.stop()
    asyncio.run(produce_and_read())
    assert log_values(server.log_dir, "aio") == expected_values("aio", 300)
    server.kill()
    server.start()

    async def committed():
        c = aiokafka.AIOKafkaConsumer(bootstrap_servers=bs, group_id="aio-g")
        await c.start()
        try:
            return await c.committed(TopicPartition("aio", 0))
        finally:
            await c.stop()
    assert asyncio.run(committed()) == 7


# ---------------------------------------------------------------- kafka-python

def test_kafka_python(server):
    kafka = pytest.importorskip("kafka")
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.structs import OffsetAndMetadata, TopicPartition
    bs = server.bootstrap
    admin = KafkaAdminClient(bootstrap_servers=bs)
    admin.create_topics([NewTopic("kp", 2, 1)])
    t_before = int(time.time() * 1000)
    for codec in CODECS:
        p = kafka.KafkaProducer(bootstrap_servers=bs, enable_idempotence=True,
                                compression_type=None if codec == "none" else codec)
        futs = [p.send("kp", f"kp-{codec}-{i}".encode(), key=b"%d" % i) for i in range(300)]
        p.flush()
        for f in futs:
            f.get(10)
        p.close()
    assert log_values(server.log_dir, "kp") == expected_values("kp", 300)
    c = kafka.KafkaConsumer(bootstrap_servers=bs, group_id="kp-g", enable_auto_commit=False)
    tp = TopicPartition("kp", 1)
    c.assign([tp])
    c.seek(tp, 10)
    got = c.poll(5000, max_records=3)
    assert [r.offset for r in got[tp]] == [10, 11, 12]
    assert c.offsets_for_times({tp: t_before})[tp].offset == 0
    c.commit({tp: OffsetAndMetadata(11, "", -1)})
    c.close()
    admin.close()
    server.kill()
    server.start()
    c = kafka.KafkaConsumer(bootstrap_servers=bs, group_id="kp-g")
    assert c.committed(tp) == 11
    c.close()


# ---------------------------------------------------------------- kcat

def test_kcat(server):
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.skip("kcat is not installed (.ci/run installs it)")
    for codec in CODECS:
        lines = "".join(f"kcat-{codec}-{i}\n" for i in range(300))
        r = subprocess.run([kcat, "-b", server.bootstrap, "-P", "-t", "kc", "-z", codec,
                            "-X", "enable.idempotence=true"],
                           input=lines, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    r = subprocess.run([kcat, "-b", server.bootstrap, "-C", "-t", "kc", "-o", "beginning", "-e",
                        "-f", "%o %s\n"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = r.stdout.splitlines()
    assert len(got) == 1500 and got[0] == "0 kcat-none-0" and got[-1] == "1499 kcat-zstd-299"
    assert log_values(server.log_dir, "kc") == expected_values("kcat", 300)
    # by timestamp (-o s@ts) and from an offset
    r = subprocess.run([kcat, "-b", server.bootstrap, "-C", "-t", "kc", "-o", "1490", "-e",
                        "-f", "%o\n"], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == [str(i) for i in range(1490, 1500)]
    r = subprocess.run([kcat, "-b", server.bootstrap, "-C", "-t", "kc", "-o", "s@0", "-c", "1",
                        "-f", "%o\n"], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["0"], r.stderr


# ---------------------------------------------------------------- groups of 3

class Member:
    def __init__(self, client, bootstrap, topic, group, session_ms, stderr_path):
        with open(stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "group_member.py"), client, bootstrap, topic,
                 group, str(session_ms)], stdout=subprocess.PIPE, stderr=err, text=True)
        self.state = {"assigned": [], "consumed": 0}
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self.state = json.loads(line)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stdout.close()


@pytest.mark.parametrize("client", ["confluent", "aiokafka", "kafka-python"])
def test_group_of_three_rebalances_after_sigkill(server, client, tmp_path):
    pytest.importorskip({"confluent": "confluent_kafka", "aiokafka": "aiokafka",
                         "kafka-python": "kafka"}[client])
    with us.Log(server.log_dir) as log:
        p = log.create_topic("g3", partitions=6)
        for i in range(6):
            p.partition(i).append([b"before-%d" % j for j in range(50)])
    session_ms = 6000                 # Kafka's group.min.session.timeout.ms
    members = [Member(client, server.bootstrap, "g3", f"grp-{client}", session_ms,
                      tmp_path / f"member-{i}.err") for i in range(3)]
    try:
        def settled(ms):
            parts = [m.state["assigned"] for m in ms]
            flat = sorted(x for ps in parts for x in ps)
            return flat == list(range(6)) and all(parts)
        assert wait_until(lambda: settled(members), 60), (
            [m.state for m in members], [m.proc.poll() for m in members])
        assert wait_until(lambda: sum(m.state["consumed"] for m in members) >= 300, 30)
        members[0].kill()
        t0 = time.monotonic()
        assert wait_until(lambda: settled(members[1:]), 30), [m.state for m in members[1:]]
        took = time.monotonic() - t0
        # the dead member's partitions move once its session times out (plus a rejoin round)
        assert took < session_ms / 1000 + 10, took
        before = sum(m.state["consumed"] for m in members[1:])
        with us.Log(server.log_dir) as log:             # appended by this process, not the server
            for i in range(6):
                log.topic("g3").partition(i).append([b"after-%d" % j for j in range(10)])
        assert wait_until(lambda: sum(m.state["consumed"] for m in members[1:]) >= before + 60, 30)
    finally:
        for m in members:
            m.kill()
