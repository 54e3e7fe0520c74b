"""One small test per bug the reliability suite found, each failing on the
code before its fix (the commit that added it says what changed)."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

import unstoppable as us
from unstoppable.errors import CorruptLogError


def _fill(p, n, per=3):
    for i in range(n):
        p.append([b"v%d-%d" % (i, j) for j in range(per)], timestamp=1000 + i)


def test_active_index_lost_in_the_same_boot_is_rebuilt_not_zero_filled(tmp_path):
    """Tail recovery used to ftruncate a missing (recreated empty) or cut
    active index up to the head's entry count, so zeroed entries counted as
    real ones: verify() reported the log corrupt from then on."""
    log = us.Log(tmp_path / "l")
    p = log.create_topic("t", index_interval_bytes=64).partition(0)
    _fill(p, 40)
    st = p._head.read()
    assert st.oi_count > 3 and st.ti_count > 3
    stem = os.path.join(p.path, f"{st.active_base:020d}")
    # A crashed writer's process is gone; something removed one index and cut the other.
    os.unlink(stem + ".index")
    os.truncate(stem + ".timeindex", 16)
    log2 = us.Log(tmp_path / "l")
    q = log2.topic("t").partition(0)
    assert q.end_offset == 120
    rep = log2.verify()
    assert rep.ok, rep.problems
    assert os.path.getsize(stem + ".index") == st.oi_count * 8   # rebuilt, same entries
    assert q.offset_for_time(1020) == 60
    assert [bytes(r.value) for r in q.read(90, max_records=3)] == [b"v30-0", b"v30-1", b"v30-2"]
    log2.close()
    log.close()


def _batch_positions(path):
    data = Path(path).read_bytes()
    pos, out = 0, []
    while pos < len(data):
        base, blen = struct.unpack_from(">qi", data, pos)   # RecordBatch v2 (FORMAT.md §4.1)
        out.append((pos, base))
        pos += blen + 12
    return out


def test_a_damaged_base_offset_never_moves_records_to_other_offsets(tmp_path):
    """base_offset is not under the batch CRC. Reads used to trust it: a bit
    flip there returned records under wrong offsets and skipped others (a
    consumer would have lost them). Now the batch raises CorruptLogError and
    the batches around it read correctly."""
    log = us.Log(tmp_path / "l")
    p = log.create_topic("t", segment_bytes=4096, index_interval_bytes=10_000).partition(0)
    _fill(p, 100)
    log.close()
    seg = os.path.join(p.path, "00000000000000000000.log")
    (pos, base) = _batch_positions(seg)[1]
    assert base == 3
    with open(seg, "r+b") as f:
        f.seek(pos)
        f.write(struct.pack(">q", base + 1))   # baseOffset is big-endian (FORMAT.md §4.1)
    with us.Log(tmp_path / "l") as log:
        p = log.topic("t").partition(0)
        for off in (3, 4, 5):
            with pytest.raises(CorruptLogError, match="not consecutive") as ei:
                p.read(off, max_records=1)
            assert (ei.value.segment, ei.value.position, ei.value.offset) == (seg, pos, 3)
        assert [r.offset for r in p.read(0, max_records=3)] == [0, 1, 2]
        rs = p.read(6, max_records=4)
        assert [(r.offset, bytes(r.value)) for r in rs] == [
            (6, b"v2-0"), (7, b"v2-1"), (8, b"v2-2"), (9, b"v3-0")]
        with pytest.raises(CorruptLogError):
            p.read(0, max_records=10)          # a run through the damaged batch
        with pytest.raises(CorruptLogError):
            p.read_batches(3)


def test_an_index_entry_naming_the_wrong_batch_is_not_believed(tmp_path):
    """An offset-index entry whose relative offset names another batch than
    the one at its position used to make reads start there and label its
    records with the asked-for offsets."""
    log = us.Log(tmp_path / "l")
    p = log.create_topic("t", segment_bytes=4096, index_interval_bytes=100).partition(0)
    _fill(p, 100)
    log.close()
    idx = os.path.join(p.path, "00000000000000000000.index")
    data = bytearray(Path(idx).read_bytes())
    rel, ipos = struct.unpack_from("<II", data, 8)
    struct.pack_into("<II", data, 8, rel - 1, ipos)      # the batch at ipos starts at rel, not rel-1
    with open(idx, "wb") as f:
        f.write(data)
    with us.Log(tmp_path / "l") as log:
        p = log.topic("t").partition(0)
        for off in range(0, 60):
            r = p.read(off, max_records=1)[0]
            assert r.offset == off and bytes(r.value) == b"v%d-%d" % (off // 3, off % 3)


def test_a_commit_to_an_offsets_file_without_its_header_writes_the_header(tmp_path):
    """An empty (or shorter than 8 bytes) groups/<g>/offsets file used to get
    the next commit's record at position 0, without the magic: from then on
    every reader refused the file (bad magic) and the group lost its offsets."""
    from unstoppable.storage.groups import OffsetsFile
    us.Log(tmp_path / "l").close()
    for junk in (b"", b"USG"):
        f = OffsetsFile(str(tmp_path / "l"), "g")
        with open(f.path if os.path.exists(f.path) else os.path.join(f.dir, "offsets"), "wb") as fh:
            fh.write(junk)
        assert f.load() == {}
        f.commit({("t", 0): 42})
        again = OffsetsFile(str(tmp_path / "l"), "g")
        assert again.load() == {("t", 0): 42}
        again.close()
        f.close()


def test_a_topic_name_that_is_not_a_str_is_an_invalid_name_everywhere(tmp_path):
    """Log.topic() looked the name up in its cache before checking it, so an
    unhashable name raised the dict's TypeError ('unhashable type: list')
    instead of InvalidTopicNameError, unlike create_topic and delete_topic."""
    with us.Log(tmp_path / "l") as log:
        log.create_topic("t")
        for name in (["t"], {"t": 1}, None, 7, b"t"):
            with pytest.raises(us.InvalidTopicNameError, match="must be a str"):
                log.topic(name)


def test_oldest_segments_deleted_by_hand_move_the_start(tmp_path):
    """After the oldest sealed segment files were deleted (by hand, to free
    space), a same-boot reopen kept the head's start_offset below the first
    segment: start_offset still said 0, every read there raised
    OffsetOutOfRangeError, and a consumer with auto_offset_reset="earliest"
    kept resetting to that missing start instead of the first record left."""
    import asyncio
    log = us.Log(tmp_path / "l")
    p = log.create_topic("t", segment_bytes=4096).partition(0)
    for i in range(300):
        p.append([b"v%03d" % i + b"." * 40])
    segs = sorted(f for f in os.listdir(p.path) if f.endswith(".log"))
    for f in segs[:2]:
        os.unlink(os.path.join(p.path, f))
    first = int(segs[2][:20])
    with us.Log(tmp_path / "l") as log2:
        q = log2.topic("t").partition(0)
        assert q.start_offset == first and q.end_offset == 300
        assert bytes(q.read(first, max_records=1)[0].value[:4]) == b"v%03d" % first

        async def consume():
            async with us.Consumer(log2, "t", auto_offset_reset="earliest") as c:
                got = await c.getmany(timeout_ms=1000)
                return min(r.offset for rs in got.values() for r in rs)

        assert asyncio.run(consume()) == first
    log.close()


@pytest.mark.parametrize("suffix,cut", [(".timeindex", 8), (".timeindex", 20), (".index", 4), (".index", 12)])
def test_verify_reports_an_index_file_cut_short_instead_of_crashing(tmp_path, suffix, cut):
    """Found by the truncation suite (about one run in four): verify() read
    the active segment's index entries the head counts, got fewer bytes from
    a file cut meanwhile, and died in struct.iter_unpack."""
    with us.Log(tmp_path / "log") as log:
        p = log.create_topic("t", index_interval_bytes=64).partition(0)
        for i in range(200):
            p.append([b"r%03d" % i + b"." * 40], timestamp=1000 + i)
        st = p._head.read()
        assert st.oi_count >= 3 and st.ti_count >= 3
        f = os.path.join(p.path, "00000000000000000000" + suffix)
        os.truncate(f, cut)                       # not a whole number of entries
        rep = log.verify()
        assert not rep.ok
        assert any("whole entries" in str(e) and e.segment.endswith(suffix) for e in rep.problems)


def test_a_damaged_index_entry_and_first_batch_leave_later_batches_readable(tmp_path):
    """The partition fuzz target (seed 218): an offset-index entry whose
    position became huge, and the segment's first batch zeroed. The floor
    entry was unusable, so the lookup walked from the segment's start, hit the
    damaged first batch and raised for every later offset, even a batch
    appended after the damage. Now it falls back to the floor among the
    index's leading well-formed entries first."""
    log = us.Log(tmp_path / "l")
    p = log.create_topic("t", index_interval_bytes=128).partition(0)
    _fill(p, 40)
    st = p._head.read()
    assert st.oi_count > 6
    stem = os.path.join(p.path, f"{st.active_base:020d}")
    log.close()
    with open(stem + ".index", "r+b") as f:        # the last entry's position: far past the data
        f.seek((st.oi_count - 1) * 8 + 4)
        f.write(struct.pack("<I", 0x7FFF0000))
    with open(stem + ".log", "r+b") as f:          # the first batch: zeroed
        f.write(bytes(16))
    with us.Log(tmp_path / "l") as log2:
        q = log2.topic("t").partition(0)
        with pytest.raises(CorruptLogError):
            q.read(0)                              # the damage itself is reported
        for off in (60, 90, 119):                  # what lies past it is readable
            assert bytes(q.read(off, 1)[0].value) == b"v%d-%d" % (off // 3, off % 3)
        n = q.end_offset
        assert q.append([b"after"]) == n
        assert bytes(q.read(n)[0].value) == b"after"


def test_a_head_cut_short_after_its_fields_is_not_trusted(tmp_path):
    """The partition fuzz target (CI seed 1328366756, and 7 of 30 fresh
    processes): a head file cut to 49 bytes keeps its magic, seqlock and the
    first fields, and reads zeros after them, so the checkpoint said segment
    80 with end offset 0. Recovery scanned from there expecting offset 0, cut
    the log back to nothing, and the next append reused offset 0 while the
    old records stayed readable there. A head whose fields disagree is now
    rebuilt from the segments."""
    log = us.Log(tmp_path / "l")
    p = log.create_topic("t", segment_bytes=4096, index_interval_bytes=128).partition(0)
    _fill(p, 60)
    p.flush()                                      # the checkpoint moves into a later segment
    st = p._head.read()
    assert st.ckpt_base > 0 and st.ckpt_size > 0
    end = st.end_offset
    head = os.path.join(p.path, "head")
    log.close()
    with open(head, "r+b") as f:
        f.truncate(49)
    with us.Log(tmp_path / "l") as log2:
        q = log2.topic("t").partition(0)
        assert q.end_offset == end
        assert [bytes(r.value) for r in q.read(0, 3)] == [b"v0-0", b"v0-1", b"v0-2"]
        assert q.append([b"after"]) == end
        assert bytes(q.read(end)[0].value) == b"after"
        assert log2.verify().ok
        assert q.recovery.mode == "rebuild"
