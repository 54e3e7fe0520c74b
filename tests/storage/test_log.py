"""Log and topic management: creation, idempotence, persistence, names, errors."""
import json
import os

import pytest

import unstoppable as us
from unstoppable.errors import (
    InvalidTopicNameError, LogClosedError, NotALogError, PartitionOutOfRangeError,
    TopicConfigError, TopicExistsError, UnknownTopicError, UnsupportedFormatError)


def snapshot_tree(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def test_create_topic_is_idempotent_and_persisted(log_dir):
    with us.Log(log_dir) as log:
        t = log.create_topic("orders", partitions=3, segment_bytes=1 << 20, retention_ms=60_000)
        assert t.partitions == 3
        assert log.create_topic("orders", partitions=3, segment_bytes=1 << 20, retention_ms=60_000) is t
        with pytest.raises(TopicExistsError, match="partitions=3 \\(asked 4\\)"):
            log.create_topic("orders", partitions=4, segment_bytes=1 << 20, retention_ms=60_000)
        with pytest.raises(TopicExistsError, match="retention_ms"):
            log.create_topic("orders", partitions=3, segment_bytes=1 << 20)
        t.partition(2).append([b"x"])
    with us.Log(log_dir) as log:
        assert log.topics() == ["orders"]
        t = log.topic("orders")
        assert t.config.segment_bytes == 1 << 20 and t.config.retention_ms == 60_000
        assert t.partition(2).end_offset == 1
        assert [p.end_offset for p in t] == [0, 0, 1]


def test_topics_list_and_delete(log):
    for name in ["b", "a.x", "c_y-z"]:
        log.create_topic(name)
    assert log.topics() == ["a.x", "b", "c_y-z"]
    log.topic("b").partition(0).append([b"1", b"2"])
    log.delete_topic("b")
    assert log.topics() == ["a.x", "c_y-z"]
    with pytest.raises(UnknownTopicError, match="'b'"):
        log.topic("b")
    with pytest.raises(UnknownTopicError):
        log.delete_topic("b")
    # Recreated from scratch.
    assert log.create_topic("b").partition(0).end_offset == 0


def test_deleted_topic_refuses_appends_from_another_handle(log_dir):
    log1 = us.Log(log_dir)
    log2 = us.Log(log_dir)
    try:
        p1 = log1.create_topic("gone").partition(0)
        p1.append([b"a"])
        log2.delete_topic("gone")
        with pytest.raises(UnknownTopicError, match="deleted"):
            p1.append([b"b"])
    finally:
        log1.close()
        log2.close()


@pytest.mark.parametrize("name", [
    "", ".", "..", "a/b", "../escape", "/abs", "a\0b", "x" * 250, "sp ace", "ümlaut", "a\\b", "tab\t",
])
def test_bad_topic_names_are_refused_and_touch_nothing(log, log_dir, name):
    before = snapshot_tree(log_dir)
    with pytest.raises(InvalidTopicNameError):
        log.create_topic(name)
    with pytest.raises(InvalidTopicNameError):
        log.topic(name)
    with pytest.raises(InvalidTopicNameError):
        log.delete_topic(name)
    assert snapshot_tree(log_dir) == before
    assert not os.path.exists(os.path.join(os.path.dirname(log_dir), "escape"))


def test_name_rules_accept_kafkas_alphabet(log):
    ok = "A-z_0.9" + "x" * 242
    assert len(ok) == 249
    assert log.create_topic(ok).name == ok
    with pytest.raises(InvalidTopicNameError):
        log.create_topic(123)


@pytest.mark.parametrize("kw,msg", [
    (dict(partitions=0), "partitions"),
    (dict(partitions="3"), "partitions must be an int"),
    (dict(segment_bytes=10), "segment_bytes"),
    (dict(retention_bytes=-1), "retention_bytes"),
    (dict(nonsense=1), "unknown topic setting"),
    (dict(segment_bytes=8192, max_batch_bytes=16384), "max_batch_bytes"),
])
def test_bad_topic_config(log, log_dir, kw, msg):
    before = snapshot_tree(log_dir)
    with pytest.raises(TopicConfigError, match=msg):
        log.create_topic("t", **kw)
    assert snapshot_tree(log_dir) == before


def test_partition_out_of_range(log):
    t = log.create_topic("t", partitions=2)
    with pytest.raises(PartitionOutOfRangeError, match="0 .. 1"):
        t.partition(2)
    with pytest.raises(PartitionOutOfRangeError):
        t.partition(-1)
    with pytest.raises(TypeError):
        t.partition("0")


def test_not_a_log(tmp_path):
    d = tmp_path / "stuff"
    d.mkdir()
    (d / "file.txt").write_text("hello")
    with pytest.raises(NotALogError, match="not empty"):
        us.Log(d)
    assert os.listdir(d) == ["file.txt"]
    f = tmp_path / "plainfile"
    f.write_text("x")
    with pytest.raises(NotALogError, match="not a directory"):
        us.Log(f)
    with pytest.raises(NotALogError, match="no log"):
        us.Log(tmp_path / "missing", create=False)
    (d / "unstoppable.json").write_text("{garbage")
    with pytest.raises(NotALogError, match="unreadable"):
        us.Log(d)


def test_future_format_version(log_dir):
    us.Log(log_dir).close()
    marker = log_dir / "unstoppable.json"
    meta = json.loads(marker.read_text())
    meta["version"] = 99
    marker.write_text(json.dumps(meta))
    before = snapshot_tree(log_dir)
    with pytest.raises(UnsupportedFormatError, match="version 99"):
        us.Log(log_dir)
    assert snapshot_tree(log_dir) == before


def test_closed_log_refuses_use(log_dir):
    log = us.Log(log_dir)
    p = log.create_topic("t").partition(0)
    log.close()
    log.close()  # idempotent
    with pytest.raises(LogClosedError):
        log.topics()
    with pytest.raises(LogClosedError):
        p.append([b"x"])
    with pytest.raises(LogClosedError):
        p.read(0)


def test_verify_clean_log(log):
    t = log.create_topic("t", partitions=2, segment_bytes=8192, index_interval_bytes=512)
    for i in range(50):
        t.partition(i % 2).append([b"v" * 100] * 3)
    rep = log.verify()
    assert rep.ok, rep.problems
    assert rep.records == 150 and rep.segments > 2 and rep.topics == 1 and rep.partitions == 2
