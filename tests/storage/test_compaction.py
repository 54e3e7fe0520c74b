"""Log compaction (issue 19, storage/compaction.py) against a model: what a
compacted partition must hold, what it may not, and how readers, verify(),
retention, idempotent producers and other processes see it."""
import asyncio
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

import unstoppable as us
from unstoppable.errors import (
    InvalidRecordError,
    OffsetOutOfRangeError,
    TopicConfigError,
    TopicExistsError,
)
from unstoppable.storage import compaction
from unstoppable.storage.segments import CLEANER_CHECKPOINT, segment_stem

SMALL = dict(segment_bytes=4096, max_batch_bytes=1024)


def read_all(p):
    """Every record of a partition, following offsets across gaps."""
    out = []
    off = p.start_offset
    while off < p.end_offset:
        rs = p.read(off)
        assert rs, f"read({off}) returned nothing below the end {p.end_offset}"
        assert rs[0].offset >= off
        out += rs
        off = rs[-1].offset + 1
    return out


def rec_tuple(r):
    return (bytes(r.key), None if r.value is None else bytes(r.value))


def check_against_model(p, written, cleaned_below):
    """``written``: offset -> (key, value) of every record appended.
    Every record read is the one written at its offset; every key's latest
    record is there (or it is a tombstone, which may have expired); below
    ``cleaned_below`` no record is superseded by another there."""
    recs = read_all(p)
    offs = [r.offset for r in recs]
    assert offs == sorted(set(offs)), "offsets must grow, never repeat"
    for r in recs:
        assert written[r.offset] == rec_tuple(r), f"offset {r.offset} changed"
    latest = {}
    for off, (k, v) in sorted(written.items()):
        latest[k] = (off, v)
    present = {r.offset for r in recs}
    keys_present = {bytes(r.key) for r in recs}
    for k, (off, v) in latest.items():
        if v is not None:
            assert off in present, f"key {k!r}: latest record at {off} is gone"
        elif off not in present:
            assert k not in keys_present, f"deleted key {k!r} came back"
    for r in recs:
        k = bytes(r.key)
        later = [o for o, (kk, _v) in written.items() if kk == k and r.offset < o < cleaned_below]
        assert r.offset >= cleaned_below or not later, \
            f"offset {r.offset} (key {k!r}) survived although {later[-1]} supersedes it"
    return recs


def test_compaction_keeps_latest_per_key_with_original_offsets(log):
    p = log.create_topic("s", 1, cleanup_policy="compact", **SMALL).partition(0)
    written = {}
    for i in range(800):
        k = b"k%d" % (i % 13) if i < 600 else b"hot"
        written[p.append([(k, b"v%d" % i)])] = (k, b"v%d" % i)
    p.flush()
    res = log.compact("s")
    assert len(res) == 1 and res[0].segments_cleaned > 0 and res[0].keys == 14
    assert res[0].records_removed > 0
    end = p.end_offset
    assert end == 800 and p.start_offset == 0       # offsets keep their meaning
    recs = check_against_model(p, written, compaction.read_checkpoint(p.path))
    assert len(recs) < 800
    assert log.verify().ok
    # A gap: offset 0's key was rewritten, so 0 is gone; reading there lands
    # on the next record that exists, with its own offset.
    first = recs[0].offset
    assert first > 0
    assert p.read(0)[0].offset == first
    assert p.read_batches(0)[0].base_offset == first
    inside = [o for o in range(first, recs[-1].offset) if o not in {r.offset for r in recs}]
    assert inside, "expected gaps between kept records"
    nxt = min(r.offset for r in recs if r.offset > inside[0])
    assert p.read(inside[0])[0].offset == nxt
    # Compacting again changes nothing that was already clean.
    again = log.compact("s")[0]
    assert again.records_removed == 0 and again.segments_cleaned == 0
    assert [r.offset for r in read_all(p)] == [r.offset for r in recs]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=hs.lists(hs.one_of(
    hs.tuples(hs.just("put"), hs.integers(0, 9), hs.booleans(), hs.integers(1, 60)),
    hs.tuples(hs.just("compact"), hs.just(0), hs.just(False), hs.just(0))),
    min_size=1, max_size=60))
def test_model(tmp_path_factory, ops):
    log = us.Log(tmp_path_factory.mktemp("m") / "log")
    try:
        p = log.create_topic("s", 1, cleanup_policy="compact", delete_retention_ms=0,
                             **SMALL).partition(0)
        written = {}
        n = 0
        for op, key, tomb, size in ops:
            if op == "put":
                k = b"key-%d" % key
                v = None if tomb else (b"%d:" % n) * size
                written[p.append([(k, v)])] = (k, v)
                n += 1
            else:
                p.flush()   # the checkpoint passes sealed data, which may then be cleaned
                log.compact("s")
                check_against_model(p, written, compaction.read_checkpoint(p.path))
        p.flush()
        log.compact("s")
        log.compact("s")   # second pass: tombstones of cleaned segments expire (retention 0)
        check_against_model(p, written, compaction.read_checkpoint(p.path))
        assert log.verify().ok
    finally:
        log.close()


def test_tombstones_kept_for_delete_retention_then_removed(log):
    p = log.create_topic("s", 1, cleanup_policy="compact", delete_retention_ms=60_000,
                         **SMALL).partition(0)
    p.append([(b"a", b"1"), (b"b", b"1")])
    p.append([(b"a", None)])                      # tombstone for a
    for i in range(300):
        p.append([(b"x%d" % (i % 5), b"y" * 40)])
    p.flush()
    log.compact("s")
    recs = {r.offset: rec_tuple(r) for r in read_all(p)}
    assert recs.get(2) == (b"a", None)           # within delete_retention_ms: consumers see it
    assert 0 not in recs and recs[1] == (b"b", b"1")
    # Cleaned again an hour later (``now``): the tombstone's segment was
    # cleaned more than delete_retention_ms before, so it goes.
    res = compaction.clean_partition(p, now=int(time.time() * 1000) + 3_600_000)
    assert res.tombstones_removed >= 1
    recs = {r.offset: rec_tuple(r) for r in read_all(p)}
    assert 2 not in recs and recs[1] == (b"b", b"1")


def test_active_segment_and_lagged_records_left_alone(log):
    p = log.create_topic("s", 1, cleanup_policy="compact", min_compaction_lag_ms=3_600_000,
                         **SMALL).partition(0)
    for i in range(300):
        p.append([(b"k", b"v%d" % i)])
    p.flush()
    res = log.compact("s")[0]
    assert res.records_removed == 0 and res.segments_cleaned == 0
    assert len(read_all(p)) == 300
    q = log.create_topic("t", 1, cleanup_policy="compact", **SMALL).partition(0)
    for i in range(300):
        q.append([(b"k", b"v%d" % i)])
    q.flush()
    st = q.head_state()
    log.compact("t")
    recs = read_all(q)
    active = [r for r in recs if r.offset >= st.active_base]
    assert len(active) == 300 - st.active_base      # the active segment: untouched
    # Sealed: only the latest "k" of the cleaned part (the active segment's
    # records are not in the offset map, as in Kafka).
    assert [r.offset for r in recs if r.offset < st.active_base] == [st.active_base - 1]


def test_keyless_records_refused_on_compacted_topic(log):
    t = log.create_topic("s", 1, cleanup_policy="compact")
    p = t.partition(0)
    for bad in ([b"v"], [None], [(None, b"v")], [(b"k", b"v"), (None, b"v")]):
        with pytest.raises(InvalidRecordError, match="'s' is compacted"):
            p.append(bad)
    assert p.end_offset == 0                        # nothing of a refused append is written
    from unstoppable._core.batch import BatchEncoder
    enc = BatchEncoder()
    enc.encode([(b"k", b"v"), b"keyless"], 0)
    with pytest.raises(InvalidRecordError, match="without a key"):
        p.append_encoded(enc)
    assert p.end_offset == 0
    assert p.append([(b"k", None)]) == 0           # a tombstone has a key: accepted
    d = log.create_topic("d", 1)
    assert d.partition(0).append([b"keyless"]) == 0  # delete topics take anything


@pytest.mark.parametrize("bad, match", [
    (dict(cleanup_policy="compacted"), "cleanup_policy must be one of"),
    (dict(cleanup_policy=""), "cleanup_policy"),
    (dict(cleanup_policy="compact,compact"), "cleanup_policy"),
    (dict(cleanup_policy=3), "cleanup_policy"),
    (dict(cleanup_policy="compact", min_compaction_lag_ms=-1), "min_compaction_lag_ms"),
    (dict(cleanup_policy="compact", delete_retention_ms=-5), "delete_retention_ms"),
    (dict(cleanup_policy="compact", delete_retention_ms=1 << 63), "delete_retention_ms"),
    (dict(cleanup_policy="compact", min_compaction_lag_ms=1.5), "min_compaction_lag_ms must be an int"),
    (dict(cleanup_policy="compact", min_cleanable_dirty_ratio=1.5), "min_cleanable_dirty_ratio"),
    (dict(cleanup_policy="compact", min_cleanable_dirty_ratio=-0.1), "min_cleanable_dirty_ratio"),
    (dict(cleanup_policy="compact", min_cleanable_dirty_ratio="0.5"), "min_cleanable_dirty_ratio"),
])
def test_bad_settings_have_specific_errors(log, bad, match):
    with pytest.raises(TopicConfigError, match=match):
        log.create_topic("s", 1, **bad)
    assert "s" not in log


def test_policy_is_persisted_and_normalized(log_dir):
    with us.Log(log_dir) as log:
        t = log.create_topic("s", 2, cleanup_policy="delete, compact", delete_retention_ms=5)
        assert t.config.cleanup_policy == "compact,delete" and t.config.compacted
        assert t.config.deletes
        plain = log.create_topic("d", 1)
        assert not plain.config.compacted
        with pytest.raises(TopicExistsError, match="cleanup_policy"):
            log.create_topic("s", 2, cleanup_policy="compact", delete_retention_ms=5)
        with pytest.raises(TopicConfigError, match="cleanup_policy='delete'"):
            log.compact("d")
    import json
    meta = json.load(open(log_dir / "topics" / "s" / "topic.json"))
    assert meta["config"]["cleanup_policy"] == "compact,delete"
    assert meta["config"]["delete_retention_ms"] == 5
    # A delete topic's topic.json is as before the settings existed.
    assert "cleanup_policy" not in json.load(open(log_dir / "topics" / "d" / "topic.json"))["config"]
    with us.Log(log_dir) as log:
        assert log.topic("s").config.delete_retention_ms == 5
        assert log.topic("s").config.cleanup_policy == "compact,delete"


def test_retention_with_compact_delete_and_compact_alone(log):
    both = log.create_topic("b", 1, cleanup_policy="compact,delete", retention_bytes=8192,
                            **SMALL).partition(0)
    only = log.create_topic("c", 1, cleanup_policy="compact", retention_bytes=8192,
                            **SMALL).partition(0)
    for i in range(400):
        both.append([(b"k%d" % i, b"x" * 50)])
        only.append([(b"k%d" % i, b"x" * 50)])
    assert both.start_offset > 0                    # "delete" still deletes old segments
    assert only.start_offset == 0                   # "compact" alone keeps every key
    assert len(read_all(only)) == 400


def test_idempotent_producer_state_survives_compaction(log_dir):
    with us.Log(log_dir) as log:
        p = log.create_topic("s", 1, cleanup_policy="compact", **SMALL).partition(0)
        for i in range(200):
            p.append([(b"k", b"v%d" % i)], producer_id=7, producer_epoch=0, base_sequence=i)
        for i in range(200):
            p.append([(b"k", b"w%d" % i)])          # supersedes every record of producer 7
        p.flush()
        log.compact("s")
        offs = {r.offset for r in read_all(p)}
        # Producer 7's last batch stays (Kafka keeps it for the producer
        # state); its earlier ones, superseded, go.
        assert 199 in offs and 198 not in offs
        # A retry of the producer's last batch is still recognized.
        assert p.append([(b"k", b"v199")], producer_id=7, producer_epoch=0,
                        base_sequence=199) == 199
    with us.Log(log_dir) as log:
        p = log.topic("s").partition(0)
        assert p.append([(b"k", b"v199")], producer_id=7, producer_epoch=0,
                        base_sequence=199) == 199
        assert p.append([(b"k", b"v200")], producer_id=7, producer_epoch=0,
                        base_sequence=200) == p.end_offset - 1
        assert log.verify().ok


def test_reader_of_another_log_instance_sees_a_consistent_log(log_dir):
    """A second Log on the same directory stands in for another process: it
    has segments open (old inodes) and facts learnt before the swap."""
    a = us.Log(log_dir)
    p = a.create_topic("s", 1, cleanup_policy="compact", **SMALL).partition(0)
    written = {}
    for i in range(1500):
        k = b"k%d" % (i % 11)
        written[p.append([(k, b"%d" % i * 20)])] = (k, b"%d" % i * 20)
    p.flush()
    b = us.Log(log_dir)
    q = b.topic("s").partition(0)
    before = read_all(q)                            # opens (and LRU-closes) segments
    assert len(before) == 1500
    a.compact("s")
    # Some of b's segments are still open on the old files, others reopen on
    # the new ones with facts from the old: every read stays consistent.
    for _ in range(2):
        check_against_model(q, written, 0)
    assert b.verify().ok
    b.close()
    a.close()
    with us.Log(log_dir) as c:
        check_against_model(c.topic("s").partition(0), written, 0)


def test_verify_still_catches_damage_in_compacted_segments(log):
    p = log.create_topic("s", 1, cleanup_policy="compact", **SMALL).partition(0)
    for i in range(600):
        p.append([(b"k%d" % (i % 7), b"v" * 30)])
    p.flush()
    log.compact("s")
    assert log.verify().ok
    st = p.head_state()
    # A cleaned segment with more than one batch.
    base = next(b for b in p.catalog.bases if b < st.active_base
                and p.catalog.sealed_size(b) > 200 and len(p.read_batches(b)) > 1)
    path = segment_stem(p.path, base) + ".log"
    data = bytearray(open(path, "rb").read())
    batches = p.read_batches(base)
    second = batches[1].position
    # An offset moved backwards (base_offset is outside the CRC).
    damaged = bytearray(data)
    damaged[second:second + 8] = (batches[0].base_offset).to_bytes(8, "big")
    open(path, "wb").write(damaged)
    rep = log.verify()
    assert not rep.ok and "not consecutive" in rep.problems[0].reason
    # A flipped bit in a record: the CRC.
    damaged = bytearray(data)
    damaged[-3] ^= 0x40
    open(path, "wb").write(damaged)
    assert not log.verify().ok
    # Offsets that run into the next segment's.
    damaged = bytearray(data)
    nxt = next(b for b in p.catalog.bases if b > base)
    damaged[second:second + 8] = (nxt + 5).to_bytes(8, "big")
    open(path, "wb").write(damaged)
    rep = log.verify()
    assert not rep.ok
    open(path, "wb").write(data)
    assert log.verify().ok


def test_half_done_swaps_finish_or_roll_back_on_open(log_dir):
    with us.Log(log_dir) as log:
        p = log.create_topic("s", 1, cleanup_policy="compact", **SMALL).partition(0)
        written = {}
        for i in range(600):
            k = b"k%d" % (i % 5)
            written[p.append([(k, b"%d" % i)])] = (k, b"%d" % i)
        p.flush()
        steps = []

        class Stop(Exception):
            pass

        def hook(step, base):
            steps.append((step, base))
            if step == "renamed":
                raise Stop  # a merge committed: log renamed, indexes and sources not yet
        with pytest.raises(Stop):
            compaction.clean_partition(p, _hook=hook)
        pdir = p.path
    left = sorted(n for n in os.listdir(pdir) if n.endswith(".cleaned"))
    assert left and all(not n.endswith(".log.cleaned") for n in left)
    assert [n for n in os.listdir(pdir) if n.endswith(compaction.MERGED_SUFFIX)]
    with us.Log(log_dir) as log:
        p = log.topic("s").partition(0)
        assert not [n for n in os.listdir(pdir) if n.endswith((".cleaned", ".merged"))]
        check_against_model(p, written, 0)
        assert log.verify().ok
        log.compact("s")
        check_against_model(p, written, compaction.read_checkpoint(p.path))
    # Killed before the commit point: the .cleaned files go, the old stays.
    with us.Log(log_dir) as log:
        p = log.topic("s").partition(0)
        for i in range(600, 1200):
            k = b"k%d" % (i % 5)
            written[p.append([(k, b"%d" % i)])] = (k, b"%d" % i)
        p.flush()

        def hook2(step, base):
            if step == "written":
                raise Stop
        with pytest.raises(Stop):
            compaction.clean_partition(p, _hook=hook2)
        assert any(n.endswith(".log.cleaned") for n in os.listdir(pdir))
    assert compaction.finish_swaps(pdir) >= 1
    assert not [n for n in os.listdir(pdir) if n.endswith(".cleaned")]
    with us.Log(log_dir) as log:
        check_against_model(log.topic("s").partition(0), written, 0)


def test_background_cleaner_runs_at_the_dirty_ratio(log):
    t = log.create_topic("s", 1, cleanup_policy="compact", min_cleanable_dirty_ratio=0.3,
                         **SMALL)
    p = t.partition(0)
    log.cleaner.interval = 0.05
    log.cleaner.stop()
    log.cleaner.ensure_started()
    for i in range(800):
        p.append([(b"k%d" % (i % 3), b"v" * 30)])
    p.flush()
    deadline = time.monotonic() + 20
    end = p.head_state().active_base
    while time.monotonic() < deadline and compaction.read_checkpoint(p.path) < end:
        time.sleep(0.05)
    assert compaction.read_checkpoint(p.path) == end, log.cleaner.errors
    assert os.path.exists(os.path.join(p.path, CLEANER_CHECKPOINT))
    assert compaction.dirty_ratio(p) < 0.3
    assert len(read_all(p)) < 800


def test_consumer_lag_end_offsets_and_arrow_on_a_compacted_topic(log):
    pa = pytest.importorskip("pyarrow")
    t = log.create_topic("s", 1, cleanup_policy="compact", **SMALL)
    p = t.partition(0)
    for i in range(500):
        p.append([(b"k%d" % (i % 4), b"v%d" % i)])
    p.flush()
    log.compact("s")
    expect = [(r.offset, rec_tuple(r)) for r in read_all(p)]
    assert t.end_offsets() == [500]

    async def main():
        got = []
        async with us.Consumer(log, "s") as c:
            async for r in c:
                got.append((r.offset, rec_tuple(r)))
                if r.offset == 499:
                    break
            lag = c.lag()
        return got, lag

    got, lag = asyncio.run(main())
    assert got == expect
    assert list(lag.values()) == [0]
    table = t.to_arrow()
    assert isinstance(table, pa.Table)
    assert table.column("offset").to_pylist() == [o for o, _ in expect]


def test_offsets_out_of_range_keep_their_meaning(log):
    p = log.create_topic("s", 1, cleanup_policy="compact", **SMALL).partition(0)
    for i in range(300):
        p.append([(b"k", b"v%d" % i)])
    p.flush()
    log.compact("s")
    assert p.read(p.end_offset) == []
    with pytest.raises(OffsetOutOfRangeError):
        p.read(p.end_offset + 1)


@settings(max_examples=50, deadline=None)
@given(puts=hs.lists(hs.tuples(hs.binary(max_size=40), hs.integers(0, 1 << 40)), max_size=3000))
def test_offset_map_against_a_dict(puts):
    from unstoppable._core.segment import OffsetMap
    m = OffsetMap(4)
    model: dict = {}
    for k, off in puts:
        m.put(k, off)
        model[k] = max(model.get(k, -1), off)
    assert len(m) == len(model)
    for k, off in model.items():
        assert m.get(k) == off
    assert m.get(b"\xff" * 41) == -1
    assert m.nbytes >= 24 * 2 * len(model)   # at most half full
    with pytest.raises(ValueError, match="offset must be >= 0"):
        m.put(b"k", -1)


def test_policy_switch_while_a_cleaning_runs(log_dir):
    """A topic deleted and created anew with another policy (by another Log,
    as another process would) in the middle of a cleaning: the cleaning is
    dropped and the new topic gets nothing of it. (Altering the policy in
    place: test_compaction_alter.py.)"""
    from unstoppable.errors import UnknownTopicError
    a = us.Log(log_dir)
    p = a.create_topic("s", 1, cleanup_policy="compact", **SMALL).partition(0)
    for i in range(600):
        p.append([(b"k%d" % (i % 5), b"v%d" % i)])
    p.flush()
    other = us.Log(log_dir)
    switched = []

    def hook(step, base):
        if step == "written" and not switched:
            other.delete_topic("s")
            q = other.create_topic("s", 1, cleanup_policy="delete", **SMALL).partition(0)
            q.append([b"a keyless record", b"another"])
            switched.append(q)
    with pytest.raises(UnknownTopicError, match="deleted while partition 0 was being compacted"):
        compaction.clean_partition(p, _hook=hook)
    q = switched[0]
    assert [bytes(r.value) for r in q.read(0)] == [b"a keyless record", b"another"]
    assert sorted(os.listdir(q.path)) == sorted(
        n for n in os.listdir(q.path) if not n.endswith(".cleaned") and n != CLEANER_CHECKPOINT)
    assert not q.catalog.gaps
    a.close()
    other.close()
    with us.Log(log_dir) as log:
        assert log.topic("s").config.cleanup_policy == "delete"
        assert log.verify().ok


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_compressed_batches_are_compacted_and_keep_their_codec(log, codec):
    pytest.importorskip("cramjam")
    p = log.create_topic("s", 1, cleanup_policy="compact", compression=codec,
                         **SMALL).partition(0)
    written = {}
    for i in range(400):
        recs = [(b"k%d" % ((i * 3 + j) % 17), b"%d-%d" % (i, j), [("h", b"%d" % j)])
                for j in range(3)]
        base = p.append(recs)
        for j, (k, v, _h) in enumerate(recs):
            written[base + j] = (k, v)
    p.flush()
    log.compact("s")
    recs = check_against_model(p, written, compaction.read_checkpoint(p.path))
    assert len(recs) < 1200
    assert all(r.headers and r.headers[0][0] == "h" for r in recs)
    st = p.head_state()
    sealed = [b for b in p.read_batches(0) if b.base_offset < st.active_base]
    assert sealed and all(b.compression == codec for b in sealed)
    assert log.verify().ok


def test_arrow_ingest_into_a_compacted_topic_refuses_keyless_rows(log):
    pa = pytest.importorskip("pyarrow")
    from unstoppable.arrow import append_arrow
    p = log.create_topic("s", 1, cleanup_policy="compact").partition(0)
    for n in (100, 20_000):                     # one encoded append, and a pipelined one
        keys = [b"k%d" % i for i in range(n)]
        keys[n - 7] = None
        table = pa.table({"key": pa.array(keys, pa.binary()),
                          "value": pa.array([b"v"] * n, pa.binary())})
        with pytest.raises(InvalidRecordError, match="without a key"):
            append_arrow(p, table)
        assert p.end_offset == 0                # nothing of it was written
    ok = pa.table({"key": pa.array([b"k%d" % i for i in range(20_000)], pa.binary()),
                   "value": pa.array([b"v"] * 20_000, pa.binary())})
    assert append_arrow(p, ok) == 0 and p.end_offset == 20_000


def test_cleaned_segments_are_merged_up_to_segment_bytes(log):
    """Adjacent cleaned segments become one while what they keep fits in
    segment_bytes (Kafka's grouping): far fewer, fuller segments, the same
    records."""
    p = log.create_topic("s", 1, cleanup_policy="compact", **SMALL).partition(0)
    log.cleaner.stop()
    written = {}
    for i in range(3000):
        k, v = b"k%d" % (i % 150), b"v%d-" % i + b"." * 20
        written[p.append([(k, v)])] = (k, v)
    p.flush()
    before = len(p.catalog.bases)
    log.compact("s")
    sealed = [b for b in p.catalog.bases if b < p.head_state().active_base]
    sizes = [os.path.getsize(segment_stem(p.path, b) + ".log") for b in sealed]
    assert before > 40 and len(p.catalog.bases) < before / 5, (before, len(p.catalog.bases))
    assert max(sizes) <= SMALL["segment_bytes"] * 1.1
    assert sum(sizes[:-1]) / max(len(sizes) - 1, 1) > SMALL["segment_bytes"] / 3  # fuller
    check_against_model(p, written, compaction.read_checkpoint(p.path))
    assert log.verify().ok
    assert not [n for n in os.listdir(p.path) if n.endswith((".cleaned", ".merged"))]
