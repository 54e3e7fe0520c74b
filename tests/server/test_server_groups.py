"""The classic group protocol over raw connections (kio-encoded requests):
generations, passed-through metadata and assignments, heartbeats, session
expiry, commits in the log's group offsets, ListGroups/DescribeGroups, lag
metrics, and DeleteTopics."""
import datetime
import threading
import time
import urllib.request

import pytest
from kio.schema.delete_topics.v3.request import DeleteTopicsRequest
from kio.schema.describe_groups.v4.request import DescribeGroupsRequest
from kio.schema.heartbeat.v3.request import HeartbeatRequest
from kio.schema.join_group.v5 import request as jg
from kio.schema.leave_group.v3 import request as lg
from kio.schema.list_groups.v2.request import ListGroupsRequest
from kio.schema.offset_commit.v7 import request as oc
from kio.schema.offset_fetch.v5 import request as of
from kio.schema.sync_group.v3 import request as sg
from server_util import RawClient

import unstoppable as us

MS = datetime.timedelta(milliseconds=1)


def join(c, member_id="", session_ms=6000, meta=b"\x00\x01meta"):
    return c.request(jg.JoinGroupRequest(
        group_id="g", session_timeout=session_ms * MS, rebalance_timeout=10_000 * MS,
        member_id=member_id, group_instance_id=None, protocol_type="consumer",
        protocols=(jg.JoinGroupRequestProtocol(name="range", metadata=meta),)))


def sync(c, gen, member_id, assignments=()):
    return c.request(sg.SyncGroupRequest(
        group_id="g", generation_id=gen, member_id=member_id, group_instance_id=None,
        assignments=tuple(sg.SyncGroupRequestAssignment(member_id=m, assignment=a)
                          for m, a in assignments)))


def heartbeat(c, gen, member_id):
    return int(c.request(HeartbeatRequest(group_id="g", generation_id=gen, member_id=member_id,
                                          group_instance_id=None)).error_code)


def commit(c, gen, member_id, offsets):
    r = c.request(oc.OffsetCommitRequest(
        group_id="g", generation_id_or_member_epoch=gen, member_id=member_id,
        group_instance_id=None, topics=tuple(oc.OffsetCommitRequestTopic(name=t, partitions=(
            oc.OffsetCommitRequestPartition(partition_index=p, committed_offset=o,
                                            committed_leader_epoch=-1, committed_metadata=""),))
            for (t, p), o in offsets.items())))
    return [int(p.error_code) for t in r.topics for p in t.partitions]


def test_group_lifecycle(server):
    with us.Log(server.log_dir) as log:
        log.create_topic("t", partitions=2).partition(0).append([b"x"] * 10)
    a, b = RawClient(server.bootstrap), RawClient(server.bootstrap)
    r1 = join(a, meta=b"member-a")
    assert int(r1.error_code) == 0 and r1.generation_id == 1 and r1.leader == r1.member_id
    assert [(m.member_id, bytes(m.metadata)) for m in r1.members] == [(r1.member_id, b"member-a")]
    ma = r1.member_id
    s = sync(a, 1, ma, [(ma, b"assign-a")])
    assert int(s.error_code) == 0 and bytes(s.assignment) == b"assign-a"
    assert heartbeat(a, 1, ma) == 0
    assert commit(a, 1, ma, {("t", 0): 7}) == [0]

    # a second member: the first learns of the rebalance from its heartbeat
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("b", join(b, meta=b"member-b")))
    th.start()
    time.sleep(0.3)
    assert heartbeat(a, 1, ma) == 27                           # REBALANCE_IN_PROGRESS
    assert commit(a, 1, ma, {("t", 0): 8}) == [27]
    r2 = join(a, member_id=ma, meta=b"member-a2")
    th.join(10)
    rb = out["b"]
    assert r2.generation_id == rb.generation_id == 2 and r2.leader == ma == rb.leader
    assert sorted((m.member_id, bytes(m.metadata)) for m in r2.members) == sorted(
        [(ma, b"member-a2"), (rb.member_id, b"member-b")])   # passed through untouched
    assert rb.members == ()                                   # only the leader sees them
    th = threading.Thread(target=lambda: out.setdefault("sb", sync(b, 2, rb.member_id)))
    th.start()
    time.sleep(0.2)
    sync(a, 2, ma, [(ma, b"A"), (rb.member_id, b"B")])
    th.join(10)
    assert bytes(out["sb"].assignment) == b"B"
    assert heartbeat(a, 1, ma) == 22                          # ILLEGAL_GENERATION
    assert commit(b, 2, rb.member_id, {("t", 1): 0, ("t", 9): 1, ("nope", 0): 1}) == [0, 3, 3]
    assert commit(b, 2, "stranger", {("t", 1): 0}) == [25]    # UNKNOWN_MEMBER_ID

    # ListGroups, DescribeGroups
    groups = {g.group_id: g.protocol_type for g in a.request(ListGroupsRequest()).groups}
    assert groups["g"] == "consumer"
    [d] = a.request(DescribeGroupsRequest(groups=("g",), include_authorized_operations=False)).groups
    assert d.group_state == "Stable" and d.protocol_data == "range"
    assert sorted(bytes(m.member_assignment) for m in d.members) == [b"A", b"B"]

    # b stops heartbeating: after its session timeout a is alone in generation 3
    deadline = time.monotonic() + 15
    code = 0
    while time.monotonic() < deadline and code != 27:
        code = heartbeat(a, 2, ma)
        time.sleep(0.5)
    assert code == 27
    r3 = join(a, member_id=ma)
    assert r3.generation_id == 3 and [m.member_id for m in r3.members] == [ma]
    sync(a, 3, ma, [(ma, b"all")])

    # leave: the group is empty, its offsets stay
    r = a.request(lg.LeaveGroupRequest(group_id="g", members=(
        lg.MemberIdentity(member_id=ma, group_instance_id=None),)))
    assert int(r.error_code) == 0 and int(r.members[0].error_code) == 0
    f = a.request(of.OffsetFetchRequest(group_id="g", topics=(
        of.OffsetFetchRequestTopic(name="t", partition_indexes=(0, 1)),)))
    assert [(p.partition_index, p.committed_offset) for p in f.topics[0].partitions] == [(0, 7), (1, 0)]
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as resp:
        text = resp.read().decode()
    assert 'unstoppable_group_lag{group="g",partition="0",topic="t"} 3.0' in text
    a.close()
    b.close()
    # the offsets are the log's own group offsets
    from unstoppable.storage.groups import OffsetsFile
    f = OffsetsFile(server.log_dir, "g")
    assert f.load() == {("t", 0): 7, ("t", 1): 0}
    f.close()


def test_delete_topics(server):
    with us.Log(server.log_dir) as log:
        log.create_topic("gone")
    c = RawClient(server.bootstrap)
    r = c.request(DeleteTopicsRequest(topic_names=("gone", "never", "../x"), timeout=5000 * MS))
    assert [(x.name, int(x.error_code)) for x in r.responses] == [
        ("gone", 0), ("never", 3), ("../x", 17)]
    c.close()
    with us.Log(server.log_dir) as log:
        assert "gone" not in log.topics()


def test_offset_commit_metadata_is_kept(server):
    """OffsetCommit's metadata is stored with the offset in the log's group
    offsets and OffsetFetch answers it (librdkafka's test 0099 checks this);
    over 4096 bytes is refused with 12 OFFSET_METADATA_TOO_LARGE."""
    with us.Log(server.log_dir) as log:
        log.create_topic("t", partitions=2)
    c = RawClient(server.bootstrap)

    def commit_meta(parts):
        r = c.request(oc.OffsetCommitRequest(
            group_id="m", generation_id_or_member_epoch=-1, member_id="",
            group_instance_id=None, topics=(oc.OffsetCommitRequestTopic(name="t", partitions=tuple(
                oc.OffsetCommitRequestPartition(partition_index=p, committed_offset=o,
                                                committed_leader_epoch=-1, committed_metadata=m)
                for p, o, m in parts)),)))
        return [int(p.error_code) for p in r.topics[0].partitions]

    def fetched():
        f = c.request(of.OffsetFetchRequest(group_id="m", topics=(
            of.OffsetFetchRequestTopic(name="t", partition_indexes=(0, 1)),)))
        return [(p.committed_offset, p.metadata) for p in f.topics[0].partitions]

    assert commit_meta([(0, 3, "state:ü"), (1, 4, None)]) == [0, 0]
    assert fetched() == [(3, "state:ü"), (4, "")]
    assert commit_meta([(0, 5, "x" * 4097), (1, 6, "y" * 4096)]) == [12, 0]
    assert fetched() == [(3, "state:ü"), (6, "y" * 4096)]
    c.close()
    server.kill()                               # kept durably, with the offsets
    server.start()
    c = RawClient(server.bootstrap)
    assert fetched() == [(3, "state:ü"), (6, "y" * 4096)]
    c.close()


def test_commit_metadata_with_confluent_kafka(server):
    """The same through a real client: librdkafka commits metadata with an
    offset and reads it back with committed()."""
    ck = pytest.importorskip("confluent_kafka")
    with us.Log(server.log_dir) as log:
        log.create_topic("cm", partitions=2)
    c = ck.Consumer({"bootstrap.servers": server.bootstrap, "group.id": "cmg",
                     "enable.auto.commit": False})
    try:
        c.commit(offsets=[ck.TopicPartition("cm", 0, 4, metadata="app-state:42"),
                          ck.TopicPartition("cm", 1, 2)], asynchronous=False)
        got = c.committed([ck.TopicPartition("cm", 0), ck.TopicPartition("cm", 1)], timeout=10)
        assert [(t.partition, t.offset, t.metadata) for t in got] == [
            (0, 4, "app-state:42"), (1, 2, None)]
    finally:
        c.close()
