"""Altering a topic's settings (Log.alter_topic, issue 19's "switching a
topic's policy from compact to delete and back while a cleaning runs"):
checked like create_topic, followed at once by this process and by other
processes before they delete anything, and a cleaning in flight (in this
thread, another thread, another process) stops cleanly when the policy
loses "compact" and goes on when it is back."""
import os
import subprocess
import sys
import threading
import time

import pytest

import unstoppable as us
from unstoppable.errors import (
    InvalidRecordError,
    ReadOnlyLogError,
    RecordTooLargeError,
    TopicConfigError,
    TopicExistsError,
    UnknownTopicError,
)
from unstoppable.storage import compaction

from test_compaction import SMALL, check_against_model, read_all  # noqa: E402

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


def fill(p, n, keys=7, start=0, pad=0):
    """Append ``n`` keyed records one by one (many small segments); returns offset -> (key, value)."""
    written = {}
    for i in range(start, start + n):
        k, v = b"k%d" % (i % keys), b"v%d" % i + b"." * pad
        written[p.append([(k, v)])] = (k, v)
    p.flush()
    return written


def no_cleaned_files(p):
    return not [n for n in os.listdir(p.path) if n.endswith(compaction.CLEANED_SUFFIX)]


def test_alter_topic_checks_like_create_topic(log, log_dir):
    t = log.create_topic("t", 2, **SMALL)
    before = t.config
    for kw, msg in [(dict(partitions=3), "cannot alter the partitions"),
                    (dict(min_compaction_lag_ms=-1), "min_compaction_lag_ms must be in 0"),
                    (dict(delete_retention_ms=1 << 63), "delete_retention_ms must be in 0"),
                    (dict(retention_ms=-5), "retention_ms must be in 0"),
                    (dict(min_cleanable_dirty_ratio=1.5), "min_cleanable_dirty_ratio must be"),
                    (dict(cleanup_policy="forever"), "cleanup_policy must be one of"),
                    (dict(segment_bytes=2048), "segment_bytes must be in 4096"),
                    (dict(no_such_setting=1), "unknown topic setting")]:
        with pytest.raises(TopicConfigError, match=msg):
            log.alter_topic("t", **kw)
        assert log.topic("t").config == before
    with pytest.raises(UnknownTopicError):
        log.alter_topic("nope", cleanup_policy="compact")
    assert log.alter_topic("t", validate_only=True, cleanup_policy="compact").config == before
    t2 = log.alter_topic("t", cleanup_policy="compact", delete_retention_ms=5)
    assert t2 is t and t.config.cleanup_policy == "compact" and t.config.delete_retention_ms == 5
    assert t.config.partitions == 2 and t.config.segment_bytes == SMALL["segment_bytes"]
    # segment_bytes alone: the max_batch_bytes that followed it follows it again.
    u = log.create_topic("u", 1, segment_bytes=8192)
    assert log.alter_topic("u", segment_bytes=1 << 20).config.max_batch_bytes == 1 << 20
    with pytest.raises(TopicExistsError, match="cleanup_policy='compact'"):
        log.create_topic("t", 2, **SMALL)             # the topic is what was altered
    log.close()
    with us.Log(log_dir) as again:                     # persisted
        assert again.topic("t").config.cleanup_policy == "compact"
        assert again.topic("u").config.segment_bytes == 1 << 20
    with us.Log(log_dir, readonly=True) as ro, pytest.raises(ReadOnlyLogError):
        ro.alter_topic("t", cleanup_policy="delete")
    del u


def test_alter_applies_at_once_in_this_process(log):
    p = log.create_topic("t", 1, **SMALL).partition(0)
    p.append([b"keyless, accepted while the policy is delete"])
    log.alter_topic("t", cleanup_policy="compact")
    with pytest.raises(InvalidRecordError, match="refuses records without a key"):
        p.append([b"keyless"])
    p.append([(b"k", b"v")])
    log.alter_topic("t", cleanup_policy="delete", max_record_bytes=100)
    p.append([b"keyless again"])
    with pytest.raises(RecordTooLargeError):
        p.append([b"x" * 200])
    assert [r.value for r in p.read(0)] == [b"keyless, accepted while the policy is delete", b"v",
                                             b"keyless again"]


def test_another_process_follows_before_it_deletes(log_dir):
    """A writer that opened the topic as "delete" with a retention rolls
    segments after another Log altered it to "compact": its retention reads
    topic.json again first and deletes nothing. (The control, without the
    alter, deletes.)"""
    for alter in (False, True):
        name = f"t{int(alter)}"
        a, b = us.Log(log_dir), us.Log(log_dir)
        try:
            p = a.create_topic(name, 1, retention_ms=1, **SMALL).partition(0)
            b.topic(name)
            if alter:
                b.alter_topic(name, cleanup_policy="compact")
            time.sleep(0.01)
            fill(p, 300)        # many rolls in a, which never calls a.topic() again
            assert (p.start_offset == 0) == alter
            if alter:
                assert p.config.cleanup_policy == "compact"
                with pytest.raises(InvalidRecordError):
                    p.append([b"keyless"])
                time.sleep(0.11)
                assert a.topic(name).config.cleanup_policy == "compact"
        finally:
            a.close()
            b.close()


def test_switch_to_delete_stops_a_cleaning_in_flight(log_dir):
    """Another Log (as another process would) alters the policy between a
    cleaned segment's write and its swap: the cleaning stops with
    TopicConfigError, leaves no .cleaned file, and nothing was lost. Altered
    to delete and straight back, the cleaning goes on."""
    a, other = us.Log(log_dir), us.Log(log_dir)
    try:
        p = a.create_topic("s", 1, cleanup_policy="compact", **SMALL).partition(0)
        written = fill(p, 600, keys=5)
        steps = []

        def to_delete(step, base):
            steps.append(step)
            if step == "written":
                other.alter_topic("s", cleanup_policy="delete")
        with pytest.raises(TopicConfigError, match=r"altered to cleanup_policy='delete' while "
                                                   r"partition 0 was being compacted.*after "
                                                   r"swapping 0 segment"):
            compaction.clean_partition(p, _hook=to_delete)
        assert steps.count("renamed") == 0 and no_cleaned_files(p)
        assert compaction.read_checkpoint(p.path) == 0     # not a finished cleaning
        check_against_model(p, written, 0)
        with pytest.raises(TopicConfigError, match="cleanup_policy='delete'"):
            a.compact("s")

        other.alter_topic("s", cleanup_policy="compact")
        flips = []

        def and_back(step, base):
            if step == "written" and not flips:
                other.alter_topic("s", cleanup_policy="delete")
                other.alter_topic("s", cleanup_policy="compact,delete")
                flips.append(base)
        res = compaction.clean_partition(p, _hook=and_back)
        assert flips and res.segments_cleaned > 1 and no_cleaned_files(p)
        assert len(p.catalog.bases) < 5        # the cleaned segments were merged
        recs = check_against_model(p, written, compaction.read_checkpoint(p.path))
        assert len(recs) < len(written) / 2
        assert a.verify().ok
    finally:
        a.close()
        other.close()


def test_policy_flipping_in_another_thread_while_cleanings_run(log):
    """One thread flips the policy compact -> delete -> compact (a few ms of
    "delete" in every 100 ms) while this one cleans over and over and
    appends: every cleaning finishes or stops with TopicConfigError, and the
    partition matches the model."""
    t = log.create_topic("s", 1, cleanup_policy="compact", **SMALL)
    p = t.partition(0)
    written = fill(p, 200, keys=9)
    stop = threading.Event()
    flips = [0]

    def flipper():
        while not stop.is_set():
            log.alter_topic("s", cleanup_policy="delete")
            time.sleep(0.003)
            log.alter_topic("s", cleanup_policy="compact")
            flips[0] += 1
            time.sleep(0.1)
    th = threading.Thread(target=flipper)
    th.start()
    outcomes = {"done": 0, "stopped": 0}
    try:
        deadline = time.monotonic() + 1.5
        n = 200
        while time.monotonic() < deadline or not (outcomes["done"] and outcomes["stopped"]):
            if time.monotonic() > deadline + 15:
                break
            try:
                compaction.clean_partition(p)
                outcomes["done"] += 1
            except TopicConfigError as e:
                assert "was altered to cleanup_policy='delete'" in str(e) or \
                    "has cleanup_policy='delete'" in str(e)
                outcomes["stopped"] += 1
            for i in range(n, n + 20):
                k, v = b"k%d" % (i % 9), b"v%d" % i
                written[p.append([(k, v)])] = (k, v)
            n += 20
    finally:
        stop.set()
        th.join()
    assert flips[0] >= 5 and outcomes["done"] and outcomes["stopped"], (flips, outcomes)
    log.alter_topic("s", cleanup_policy="compact")
    p.flush()
    log.compact("s")
    assert no_cleaned_files(p)
    check_against_model(p, written, compaction.read_checkpoint(p.path))
    assert log.verify().ok


_CLEANER = r"""
import os, sys, time
import unstoppable as us
from unstoppable.errors import TopicConfigError
from unstoppable.storage import compaction
d = sys.argv[1]
def hook(step, base):
    if step == "written":
        open(os.path.join(d, "written"), "w").close()
        while not os.path.exists(os.path.join(d, "go")):
            time.sleep(0.01)
with us.Log(os.path.join(d, "log")) as log:
    try:
        compaction.clean_partition(log.topic("s").partition(0), _hook=hook)
        print("finished")
    except TopicConfigError as e:
        print("stopped:", e)
"""


def test_switch_to_delete_stops_a_cleaning_in_another_process(tmp_path):
    """A cleaning in another process, paused between writing a cleaned
    segment and swapping it in, while this process alters the topic to
    "delete": it stops before the swap (topic.json is read under the
    partition's lock) and the partition holds every record."""
    log = us.Log(tmp_path / "log")
    try:
        p = log.create_topic("s", 1, cleanup_policy="compact", **SMALL).partition(0)
        written = fill(p, 300, keys=4)
        proc = subprocess.Popen([sys.executable, "-c", _CLEANER, str(tmp_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=os.path.abspath(SRC)))
        try:
            deadline = time.monotonic() + 60
            while not (tmp_path / "written").exists():
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.01)
            log.alter_topic("s", cleanup_policy="delete")
            (tmp_path / "go").touch()
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        assert out.startswith("stopped:") and "after swapping 0 segment" in out, out + err
        assert no_cleaned_files(p)
        assert [(bytes(r.key), bytes(r.value)) for r in read_all(p)] == \
            [written[o] for o in sorted(written)]
        assert log.verify().ok
    finally:
        log.close()
