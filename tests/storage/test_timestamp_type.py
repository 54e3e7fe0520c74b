"""message_timestamp_type="LogAppendTime" topics (Kafka's
message.timestamp.type): every append path stamps its batches with the
append time, which readers, the time index and offset_for_time then use;
the setting is persisted, altered, refused when wrong, and read by other
processes. The timestamp limits are stored for the server (tests/server)."""
import asyncio
import json
import os
import subprocess
import sys
import time

import pytest

import format_reference as fr
import unstoppable as us
from unstoppable.storage.appender import STREAM_MIN

OLD = 1_000_000          # a record timestamp from 1970: far from any append time
LAT = {"message_timestamp_type": "LogAppendTime"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def stamps(p, start=0, n=100_000):
    return [r.timestamp for r in p.read(start, max_records=n)]


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_appends_take_the_append_time(tmp_path, compression):
    with us.Log(tmp_path) as log:
        p = log.create_topic("t", **LAT).partition(0)
        before = now_ms()
        p.append([(b"k", b"a", None, OLD), (b"k", b"b", None, OLD + 5)], compression=compression)
        p.append([b"c"], timestamp=OLD)
        p.append([b"d"], producer_id=7, producer_epoch=0, base_sequence=0)
        after = now_ms()
        got = stamps(p)
        assert len(got) == 4 and all(before <= t <= after for t in got), (before, got, after)
        assert got == sorted(got)
        ref = fr.read_partition(p.path)
        assert all(b.attributes & 0x08 for b in ref.batches())
        assert [r.timestamp for r in ref.records()] == got
        assert p.offset_for_time(OLD) == 0
        assert p.offset_for_time(after + 1) is None


def test_a_streamed_append_is_one_append_time(tmp_path):
    n = STREAM_MIN + 10
    with us.Log(tmp_path) as log:
        p = log.create_topic("t", **LAT).partition(0)
        before = now_ms()
        p.append([(None, b"v", None, OLD + i) for i in range(n)])
        after = now_ms()
        got = set(stamps(p, 0, n))
        assert len(got) == 1 and before <= got.pop() <= after


def test_the_producer_and_consumer_see_the_append_time(tmp_path):
    async def main():
        with us.Log(tmp_path) as log:
            log.create_topic("t", **LAT)
            before = now_ms()
            async with us.Producer(log, "t") as prod:
                futs = [await prod.send(b"v%d" % i, timestamp=OLD) for i in range(20)]
                metas = [await f for f in futs]
            after = now_ms()
            async with us.Consumer(log, "t") as cons:
                tp = us.TopicPartition("t", 0)
                cons.seek(tp, 0)
                got = await cons.getmany(tp, max_records=100, timeout_ms=2000)
                ts = [r.timestamp for r in got[tp]]
                assert len(ts) == 20 and all(before <= t <= after for t in ts)
                # The delivery metadata carries the append time too.
                assert [m.timestamp for m in metas] == ts
                found = await cons.offsets_for_times({tp: OLD})
                assert found[tp].offset == 0 and found[tp].timestamp == ts[0]
    asyncio.run(main())


def test_altering_the_type_applies_to_later_appends_only(tmp_path):
    with us.Log(tmp_path) as log:
        p = log.create_topic("t").partition(0)
        p.append([(None, b"a", None, OLD)])
        log.alter_topic("t", **LAT)
        before = now_ms()
        p.append([(None, b"b", None, OLD)])
        log.alter_topic("t", message_timestamp_type="CreateTime")
        p.append([(None, b"c", None, OLD)])
        got = stamps(p)
        assert got[0] == OLD and got[1] >= before and got[2] == OLD


def test_another_process_appends_with_the_append_time(tmp_path):
    with us.Log(tmp_path) as log:
        log.create_topic("t", **LAT)
    code = ("import sys, unstoppable as us\n"
            "with us.Log(sys.argv[1]) as log:\n"
            "    log.topic('t').partition(0).append([(None, b'x', None, 5)])\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    before = now_ms()
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env=env, timeout=60)
    with us.Log(tmp_path) as log:
        assert log.topic("t").config.message_timestamp_type == "LogAppendTime"
        (ts,) = stamps(log.topic("t").partition(0))
        assert ts >= before


def test_settings_are_checked_and_stored_only_when_set(tmp_path):
    with us.Log(tmp_path) as log:
        for bad in ({"message_timestamp_type": "logappendtime"},
                    {"message_timestamp_before_max_ms": -1},
                    {"message_timestamp_after_max_ms": "1"}):
            with pytest.raises(us.TopicConfigError, match=next(iter(bad))):
                log.create_topic("bad", **bad)
        assert "bad" not in log
        log.create_topic("plain")
        t = log.create_topic("limits", message_timestamp_before_max_ms=60_000,
                             message_timestamp_after_max_ms=0)
        assert (t.config.message_timestamp_before_max_ms, t.config.message_timestamp_after_max_ms) \
            == (60_000, 0)
        with pytest.raises(us.TopicConfigError):
            log.alter_topic("limits", message_timestamp_type="Now")
        assert log.topic("limits").config.message_timestamp_type == "CreateTime"

    def stored(name):
        with open(os.path.join(tmp_path, "topics", name, "topic.json")) as f:
            return json.load(f)["config"]
    # A topic that sets none of them writes none (readable by earlier
    # versions); one that sets one writes that one.
    assert not any(k.startswith("message_timestamp") for k in stored("plain"))
    assert stored("limits")["message_timestamp_before_max_ms"] == 60_000
    assert "message_timestamp_type" not in stored("limits")


def test_arrow_appends_and_compaction_keep_the_append_time(tmp_path):
    pa = pytest.importorskip("pyarrow")
    with us.Log(tmp_path) as log:
        t = log.create_topic("t", cleanup_policy="compact", segment_bytes=4096, **LAT)
        before = now_ms()
        t.append_arrow(pa.table({"key": [b"a", b"b"] * 50, "value": [b"x" * 40] * 100}))
        for i in range(40):
            t.partition(0).append([(b"a", b"v%d" % i, None, OLD)])
        after = now_ms()
        p = t.partition(0)

        def every():
            out, off = {}, p.start_offset
            while off < p.end_offset:
                recs = p.read(off, max_records=1000)
                out.update((r.offset, r.timestamp) for r in recs)
                off = recs[-1].offset + 1
            return out
        stamped = every()
        assert len(stamped) == 140 and all(before <= ts <= after for ts in stamped.values())
        log.flush()                 # the cleaner takes segments below the durable checkpoint
        log.compact("t")
        kept = every()
        assert 2 <= len(kept) < len(stamped)
        assert all(stamped[o] == ts for o, ts in kept.items())
        assert log.verify().ok
