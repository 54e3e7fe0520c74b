"""Bad input at the API and the command line: hostile topic and group names,
wrong types, negative offsets, offsets past the end, records over the topic's
max_record_bytes, a directory that is not a log, a log from a future format.
Each gives one specific error, and a refused call changes nothing on disk (the
directory is compared byte for byte before and after; a head's seqlock
counter, which every open of a partition bumps, is the one field left out)."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

import unstoppable as us
from unstoppable import TopicPartition
from unstoppable.errors import (
    CommitError,
    InvalidGroupNameError,
    InvalidRecordError,
    InvalidTopicNameError,
    NotALogError,
    OffsetOutOfRangeError,
    PartitionOutOfRangeError,
    RecordTooLargeError,
    UnknownTopicError,
    UnsupportedFormatError,
)

from .util import snapshot_tree

HOSTILE_NAMES = [
    "", ".", "..", "../escape", "../../etc/passwd", "/abs", "a/b", "a\\b", "a\0b", "\0",
    "x" * 250, "x" * 100_000, "tоpic",          # Cyrillic o
    " t", "t ", "t\n", "t\t", "*", "t?", "$(rm -rf ~)", "%2e%2e", "~",
]
NOT_NAMES = [None, 1, 1.5, b"bytes", ["t"], ("t",), {"t": 1}, object()]


def _snap(root) -> dict:
    """The tree, with each head's seqlock counter (bytes 8..15) masked."""
    out = snapshot_tree(root)
    for k, (kind, data, mode) in list(out.items()):
        if kind == "file" and os.path.basename(k) == "head" and data and len(data) >= 16:
            out[k] = (kind, data[:8] + b"\0" * 8 + data[16:], mode)
    return out


@pytest.fixture
def log_with_data(tmp_path):
    d = tmp_path / "log"
    log = us.Log(d)
    t = log.create_topic("t", partitions=2, max_record_bytes=1000, segment_bytes=8192)
    for i in range(40):
        t.partition(i % 2).append([b"v%d" % i])
    yield log, d
    log.close()


def _refused(figures, root, fn, exc, match=None):
    """``fn()`` raises exactly ``exc`` (a subclass is not enough) and the tree is unchanged."""
    before = _snap(root)
    with pytest.raises(exc, match=match) as ei:
        fn()
    assert type(ei.value) is exc, f"{type(ei.value).__name__}: {ei.value} (wanted {exc.__name__})"
    assert _snap(root) == before, f"{fn} changed the log directory"
    assert not os.path.exists(os.path.join(os.path.dirname(str(root)), "escape"))
    figures.add("bad_inputs_refused")
    return ei.value


def test_hostile_topic_names_everywhere(log_with_data, figures):
    log, d = log_with_data
    for name in HOSTILE_NAMES:
        for fn in (lambda: log.create_topic(name), lambda: log.topic(name),
                   lambda: log.delete_topic(name)):
            _refused(figures, d, fn, InvalidTopicNameError)
        assert name not in log
        _refused(figures, d, lambda: asyncio.run(us.Producer(log, name).start()),
                 InvalidTopicNameError)
        _refused(figures, d, lambda: asyncio.run(us.Consumer(log, name).start()),
                 InvalidTopicNameError)
    for name in NOT_NAMES:
        for fn in (lambda: log.create_topic(name), lambda: log.topic(name)):
            _refused(figures, d, fn, InvalidTopicNameError)
        _refused(figures, d, lambda: us.Producer(log, name), TypeError)


def test_hostile_group_names(log_with_data, figures):
    log, d = log_with_data
    for name in ["", "..", "../escape", "a/b", "a\0b", "x" * 250, " g"]:
        _refused(figures, d, lambda: us.Consumer(log, "t", group=name), InvalidGroupNameError)
    _refused(figures, d, lambda: us.Consumer(log, "t", group=7), InvalidGroupNameError)


def test_wrong_types_and_values_on_append_and_read(log_with_data, figures):
    log, d = log_with_data
    p = log.topic("t").partition(0)
    end = p.end_offset
    for recs in (["text"], [1], [{"k": b"v"}], [(b"k",)], [(b"k", b"v", "hdr")],
                 [(b"k", b"v", [(b"h", b"x")])], [(b"k", b"v", None, -5)], [(b"k", b"v", None, 1 << 62)],
                 [(b"k", b"v", None, "now")], [b"ok", "then text"]):
        _refused(figures, d, lambda: p.append(recs), InvalidRecordError)
    _refused(figures, d, lambda: p.append([b"x" * 1001]), RecordTooLargeError, "max_record_bytes")
    _refused(figures, d, lambda: p.append([b"ok"] * 3 + [b"y" * 5000]), RecordTooLargeError)
    _refused(figures, d, lambda: p.append([b"x"], acks="all"), ValueError, "acks")
    _refused(figures, d, lambda: p.append([b"x"], producer_id=1, producer_epoch=-1, base_sequence=0),
             ValueError, "producer_epoch")
    _refused(figures, d, lambda: p.append([b"x"], producer_id=1, producer_epoch=0, base_sequence=-3),
             ValueError, "base_sequence")
    for off in (-1, -(1 << 63), end + 1, (1 << 63) - 1):
        _refused(figures, d, lambda: p.read(off), OffsetOutOfRangeError)
        _refused(figures, d, lambda: p.read_batches(off), OffsetOutOfRangeError)
    for off in ("0", 0.0, None, True, b"0"):
        _refused(figures, d, lambda: p.read(off), TypeError)
    _refused(figures, d, lambda: p.read(0, max_records=0), ValueError)
    _refused(figures, d, lambda: p.read(0, max_bytes=-1), ValueError)
    _refused(figures, d, lambda: p.offset_for_time("yesterday"), TypeError)
    for i in (2, -1, 1 << 40):
        _refused(figures, d, lambda: log.topic("t").partition(i), PartitionOutOfRangeError)
    _refused(figures, d, lambda: log.topic("t").partition("0"), TypeError)
    assert p.end_offset == end
    assert p.read(end) == []                       # the end itself is a valid, empty read


def test_wrong_input_to_the_producer_and_consumer(log_with_data, figures):
    log, d = log_with_data

    for kw, exc in ((dict(acks="all"), ValueError), (dict(batch_bytes=0), ValueError),
                    (dict(linger_ms=-1), ValueError), (dict(backpressure="wait"), TypeError),
                    (dict(partitioner=5), TypeError), (dict(producer_id=""), TypeError),
                    (dict(max_buffer_bytes=True), ValueError)):
        _refused(figures, d, lambda: us.Producer(log, "t", **kw), exc)

    async def sends():
        async with us.Producer(log, "t") as prod:
            errs = []
            for kwargs, exc in ((dict(value="text"), InvalidRecordError),
                                (dict(value=b"x" * 1001), RecordTooLargeError),
                                (dict(value=b"x", partition=2), PartitionOutOfRangeError),
                                (dict(value=b"x", partition="0"), TypeError),
                                (dict(value=b"x", key="k"), InvalidRecordError),
                                (dict(value=b"x", timestamp=-7), InvalidRecordError)):
                before = _snap(d)
                with pytest.raises(exc):
                    await prod.send(**kwargs)
                assert _snap(d) == before
                errs.append(exc)
            return errs

    figures.add("bad_inputs_refused", len(asyncio.run(sends())))
    ends = log.topic("t").end_offsets()

    async def consumer_calls():
        async with us.Consumer(log, "t", group="g") as c:
            tp = TopicPartition("t", 0)
            await c.getmany(tp, max_records=3)
            for offs, exc in (({tp: -1}, CommitError), ({tp: 10 ** 9}, CommitError),
                              ({TopicPartition("t", 9): 0}, CommitError)):
                before = _snap(d)
                with pytest.raises(exc):
                    await c.commit(offs)
                assert _snap(d) == before
            with pytest.raises((ValueError, OffsetOutOfRangeError)):
                c.seek(tp, -5)
        return 4

    figures.add("bad_inputs_refused", asyncio.run(consumer_calls()))
    assert log.topic("t").end_offsets() == ends
    _refused(figures, d, lambda: us.Consumer(log, []), ValueError)
    _refused(figures, d, lambda: us.Consumer(log, "t", auto_offset_reset="never"), ValueError)


def test_not_a_log_and_a_future_format(tmp_path, figures):
    cases = []
    stuff = tmp_path / "stuff"                     # a directory of other files
    stuff.mkdir()
    (stuff / "notes.txt").write_text("mine")
    cases.append((stuff, NotALogError))
    plain = tmp_path / "plain"                     # a file
    plain.write_bytes(b"\x00" * 10)
    cases.append((plain, NotALogError))
    for k, marker in enumerate([b"{garbage", b"[]", json.dumps({"format": "kafka", "version": 1}).encode(),
                                json.dumps({"format": "unstoppable-log"}).encode()]):
        m = tmp_path / f"marker{k}"
        m.mkdir()
        (m / "unstoppable.json").write_bytes(marker)
        cases.append((m, NotALogError if k < 3 else UnsupportedFormatError))
    for v in (3, 99, 0, -1, "1", 1.5):   # 1 and 2 are read (format 2 reads format-1 logs)
        f = tmp_path / f"future{v}"
        us.Log(f).close()
        (f / "unstoppable.json").write_text(json.dumps({"format": "unstoppable-log", "version": v}))
        cases.append((f, UnsupportedFormatError))
    for path, exc in cases:
        e = _refused(figures, path if path.is_dir() else tmp_path, lambda: us.Log(path), exc)
        assert str(path) in str(e) or os.path.basename(str(path)) in str(e), e
    _refused(figures, tmp_path, lambda: us.Log(tmp_path / "missing", create=False), NotALogError)
    assert not (tmp_path / "missing").exists()
    # A topic written by a future format version, and one whose file is garbage.
    d = tmp_path / "topics"
    with us.Log(d) as log:
        log.create_topic("new")
        log.create_topic("junk")
    tj = d / "topics" / "new" / "topic.json"
    meta = json.loads(tj.read_text())
    meta["version"] = 2
    tj.write_text(json.dumps(meta))
    (d / "topics" / "junk" / "topic.json").write_text("{not json")
    with us.Log(d) as log:
        _refused(figures, d, lambda: log.topic("new"), UnsupportedFormatError, "format version 2")
        _refused(figures, d, lambda: log.topic("junk"), us.CorruptLogError, "not valid JSON")
        _refused(figures, d, lambda: log.topic("nothing"), UnknownTopicError)


# ------------------------------------------------------------------- CLI

def _cli_env():
    return {k: v for k, v in os.environ.items() if k not in ("UNSTOPPABLE_LOG", "UNSTOPPABLE_DEBUG")}


def test_the_cli_refuses_bad_input_and_changes_nothing(tmp_path, figures):
    d = tmp_path / "log"
    with us.Log(d) as log:
        t = log.create_topic("t", partitions=2, max_record_bytes=100)
        for i in range(10):
            t.partition(i % 2).append([b"v%d" % i])
    stuff = tmp_path / "stuff"
    stuff.mkdir()
    (stuff / "keep.txt").write_text("mine")
    future = tmp_path / "future"
    us.Log(future).close()
    (future / "unstoppable.json").write_text(json.dumps({"format": "unstoppable-log", "version": 9}))
    L = ["--log", str(d)]
    cases = [  # (argv, stdin, expected exit code, text the one line must contain)
        (["topics", "create", "../escape", *L], None, 1, "topic name"),
        (["topics", "create", "a/b", *L], None, 1, "topic name"),
        (["topics", "create", "x" * 300, *L], None, 1, "249"),
        (["topics", "create", "u", "--partitions", "0", *L], None, 2, "partitions"),
        (["topics", "create", "u", "--partitions", "-3", *L], None, 2, "partitions"),
        (["topics", "create", "u", "--config", "segment_bytes=-1", *L], None, 1, "segment_bytes"),
        (["topics", "describe", "../t", *L], None, 1, "topic name"),
        (["produce", "../t", *L], "x\n", 1, "topic name"),
        (["produce", "t", "--partition", "7", *L], "x\n", 1, "partitions"),
        (["produce", "t", "--partition", "-1", *L], "x\n", 1, "partitions"),
        (["produce", "t", *L], "y" * 500 + "\n", 1, "max_record_bytes"),
        (["dump", "t", "--offset", "999", "--partition", "0", *L], None, 1, "past the end"),
        (["dump", "t", "--partition", "-1", *L], None, 1, "partition"),
        (["consume", "t", "--partition", "9", *L], None, 1, "partition"),
        (["consume", "t", "-n", "-1", *L], None, 2, "-n"),
        (["consume", "t", "--group", "../g", *L], None, 1, "group name"),
        (["groups", "../g", *L], None, 1, "group"),
        (["topics", "list", "--log", str(stuff)], None, 1, "not empty"),
        (["verify", "--log", str(stuff)], None, 1, "not empty"),
        (["topics", "list", "--log", str(future)], None, 1, "version 9"),
        (["produce", "t", "--log", str(future)], "x\n", 1, "version 9"),
        (["topics", "list", "--log", str(tmp_path / "nowhere")], None, 1, "no log"),
        (["topics", "list", "--log", str(stuff / "keep.txt")], None, 1, "no log"),
    ]
    before = {p: _snap(p) for p in (d, stuff, future)}

    def run(case):
        argv, stdin, code, text = case
        r = subprocess.run([sys.executable, "-m", "unstoppable", *argv], input=stdin or "",
                           capture_output=True, text=True, env=_cli_env(), timeout=120)
        lines = r.stderr.strip().splitlines()
        ok = (r.returncode == code and len(lines) == 1 and lines[0].startswith("unstoppable: error: ")
              and text.lower() in lines[0].lower() and "Traceback" not in r.stderr)
        return None if ok else (argv[:4], r.returncode, r.stderr.strip()[-400:])

    with ThreadPoolExecutor(4) as pool:          # a few interpreters at a time
        failures = [f for f in pool.map(run, cases) if f is not None]
    assert not failures, failures
    for p, snap in before.items():
        assert _snap(p) == snap, f"the refused commands changed {p}"
    assert not (tmp_path / "escape").exists() and not (tmp_path / "nowhere").exists()
    with us.Log(d) as log:
        assert log.topics() == ["t"] and sum(log.topic("t").end_offsets()) == 10
    figures.add("bad_inputs_refused", len(cases))
