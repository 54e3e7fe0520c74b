"""The on-disk format (docs/FORMAT.md) as the library really writes it.

Every check reads the files with tests/format_reference.py, a decoder written
from FORMAT.md alone (struct + the crc32c package, nothing from
unstoppable._core), and compares with what was appended and with what the
library's own reader returns.
"""
from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
import time

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import unstoppable
from unstoppable.errors import CorruptLogError, OffsetOutOfRangeError

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import format_reference as fr  # noqa: E402

try:
    with open("/proc/sys/kernel/random/boot_id") as _f:
        BOOT_ID = bytes.fromhex(_f.read().strip().replace("-", ""))
except OSError:  # pragma: no cover
    BOOT_ID = b"\0" * 16

SMALL = dict(segment_bytes=4096, max_batch_bytes=1024)


# ---------------------------------------------------------------------------
# helpers

def pdir(log, topic, i=0):
    return os.path.join(log.path, "topics", topic, str(i))


def normalize(r, ts):
    """What FORMAT.md says an appended record reads back as: (ts, key, value, headers)."""
    if r is None:
        return (ts, None, None, [])
    if not isinstance(r, tuple):
        return (ts, None, bytes(r), [])
    key, value = r[0], r[1]
    headers = r[2] if len(r) > 2 and r[2] is not None else []
    if isinstance(headers, dict):
        headers = list(headers.items())
    t = r[3] if len(r) > 3 and r[3] is not None else ts
    return (t, None if key is None else bytes(key), None if value is None else bytes(value),
            [(k, None if v is None else bytes(v)) for k, v in headers])


def as_tuple(r):
    return (r.timestamp, r.key, r.value, r.headers)


def lib_tuple(r):
    return (r.timestamp, None if r.key is None else bytes(r.key),
            None if r.value is None else bytes(r.value), list(r.headers))


def read_all(part, start=0):
    out = []
    off = start
    while True:
        recs = part.read(off, max_records=1000)
        if not recs:
            return out
        assert recs[0].offset == off
        out.extend(recs)
        off = recs[-1].offset + 1


def check_partition(path, expected, *, interval, max_batch_bytes, part=None,
                    created_after_ms=None):
    """Decode a partition with the reference decoder and check everything
    FORMAT.md promises about it. ``expected``: [(ts, key, value, headers)]."""
    rp = fr.read_partition(path)
    h = rp.head
    recs = rp.records()

    # records and dense offsets (from the start: retention may have removed a prefix)
    start = h.start_offset
    assert [as_tuple(r) for r in recs] == expected[start:]
    assert [r.offset for r in recs] == list(range(start, len(expected)))

    # batch headers
    for b in rp.batches():
        assert b.magic == 2 and b.attributes == 0 and b.partition_leader_epoch == 0
        assert (b.producer_id, b.producer_epoch, b.base_sequence) == (-1, -1, -1)
        assert b.record_count == len(b.records) >= 1
        assert b.first_timestamp == b.records[0].timestamp
        assert b.max_timestamp == max(r.timestamp for r in b.records)
        assert b.length <= max_batch_bytes or b.record_count == 1
        assert [r.offset for r in b.records] == list(range(b.base_offset, b.next_offset))

    # segments: back to back batches, bases dense
    bases = sorted(rp.segments)
    assert bases[0] == start
    for i, base in enumerate(bases):
        batches = rp.segments[base]
        pos = 0
        for b in batches:
            assert b.position == pos
            pos += b.length
        assert pos == rp.sizes[base]
        if base != h.active_base:
            assert batches, f"sealed segment {base} is empty"
            assert os.path.getsize(os.path.join(path, fr.segment_name(base) + ".log")) == pos
        if i + 1 < len(bases):
            assert bases[i + 1] == batches[-1].next_offset

    # indexes
    for base in bases:
        batches = rp.segments[base]
        oi, ti = rp.offset_index[base], rp.time_index[base]
        assert (oi, ti) == fr.expected_index_entries(batches, base, interval)
        by_pos = {b.position: b for b in batches}
        for rel, pos in oi:
            assert pos in by_pos and by_pos[pos].base_offset == base + rel
        prev_ts = None
        for ts, rel, pos in ti:
            assert (rel, pos) in oi
            assert ts == max(b.max_timestamp for b in batches if b.position <= pos)
            assert prev_ts is None or ts >= prev_ts
            prev_ts = ts
        # sealed index files hold exactly their entries
        stem = os.path.join(path, fr.segment_name(base))
        if base != h.active_base:
            assert os.path.getsize(stem + ".index") == 8 * len(oi)
            assert os.path.getsize(stem + ".timeindex") == 16 * len(ti)

    # head
    active = rp.segments[h.active_base]
    stem = os.path.join(path, fr.segment_name(h.active_base))
    assert h.active_base == bases[-1]
    assert h.end_offset == len(expected)
    assert h.active_size == os.path.getsize(stem + ".log")
    assert h.max_timestamp == (max(b.max_timestamp for b in active) if active else -1)
    assert h.oi_count * 8 == os.path.getsize(stem + ".index")
    assert h.ti_count * 16 == os.path.getsize(stem + ".timeindex")
    oi, ti = rp.offset_index[h.active_base], rp.time_index[h.active_base]
    assert h.oi_count == len(oi) and h.ti_count == len(ti)
    assert h.oi_last_pos == (oi[-1][1] if oi else 0)
    assert h.ti_last_ts == (ti[-1][0] if ti else -1)
    assert h.flags == 0
    assert h.boot_id == BOOT_ID
    if created_after_ms is not None:
        assert created_after_ms - 1000 <= h.active_created <= time.time_ns() // 10**6 + 1000
    # the checkpoint sits on a batch boundary and names the offset there
    assert h.ckpt_base in bases and h.ckpt_base <= h.active_base
    bounds = {0: h.ckpt_base}
    bounds.update({b.position + b.length: b.next_offset for b in rp.segments[h.ckpt_base]})
    assert h.ckpt_size in bounds
    assert h.ckpt_end_offset == bounds[h.ckpt_size] <= h.end_offset

    if part is not None:
        assert part.end_offset == h.end_offset
        assert part.start_offset == h.start_offset
    return rp


def append_all(part, appends):
    """appends: [(records, ts)] -> [(base, count)]; checks the returned bases."""
    spans = []
    expect = part.end_offset
    for records, ts in appends:
        base = part.append(records, timestamp=ts)
        assert base == expect
        spans.append((base, len(records)))
        expect += len(records)
    assert part.end_offset == expect
    return spans


def expected_of(appends):
    return [normalize(r, ts) for records, ts in appends for r in records]


# ---------------------------------------------------------------------------
# JSON files, directory layout, a fresh head

def test_layout_json_and_fresh_head(log):
    t0 = time.time_ns() // 10**6
    log.create_topic("orders", partitions=3, segment_bytes=65536, index_interval_bytes=512,
                     max_batch_bytes=4096, retention_ms=86_400_000)
    with open(os.path.join(log.path, "unstoppable.json")) as f:
        text = f.read()
    assert json.loads(text) == {"format": "unstoppable-log", "version": 2}
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert os.path.getsize(os.path.join(log.path, "meta.lock")) == 0

    tdir = os.path.join(log.path, "topics", "orders")
    with open(os.path.join(tdir, "topic.json")) as f:
        text = f.read()
    meta = json.loads(text)
    assert text == json.dumps(meta, indent=2, sort_keys=True) + "\n"
    assert set(meta) == {"version", "name", "partitions", "config", "created_ms"}
    assert meta["version"] == 1 and meta["name"] == "orders" and meta["partitions"] == 3
    assert t0 - 1000 <= meta["created_ms"] <= time.time_ns() // 10**6 + 1000
    assert meta["config"] == {
        "segment_bytes": 65536, "segment_ms": None, "retention_bytes": None,
        "retention_ms": 86_400_000, "index_interval_bytes": 512,
        "max_record_bytes": 1 << 20, "max_batch_bytes": 4096, "compression": "producer"}
    assert sorted(os.listdir(tdir)) == ["0", "1", "2", "topic.json"]
    # Partitions open on first use: until then a partition is an empty directory.
    assert all(os.listdir(os.path.join(tdir, str(i))) == [] for i in range(3))
    topic = log.topic("orders")
    for i in range(3):
        assert topic.partition(i).end_offset == 0

    for i in range(3):
        p = os.path.join(tdir, str(i))
        z = fr.segment_name(0)
        assert sorted(os.listdir(p)) == sorted(
            ["head", "lock", z + ".log", z + ".index", z + ".timeindex"])
        assert os.path.getsize(os.path.join(p, "head")) == fr.HEAD_FILE_SIZE
        for name in ("lock", z + ".log", z + ".index", z + ".timeindex"):
            assert os.path.getsize(os.path.join(p, name)) == 0
        with open(os.path.join(p, "head"), "rb") as f:
            raw = f.read()
        assert raw[:4] == b"USHD"
        h = fr.read_head(os.path.join(p, "head"))
        assert (h.version, h.start_offset, h.end_offset, h.active_base, h.active_size) == (1, 0, 0, 0, 0)
        assert (h.ckpt_base, h.ckpt_size, h.ckpt_end_offset) == (0, 0, 0)
        assert (h.max_timestamp, h.flags, h.oi_count, h.ti_count, h.oi_last_pos, h.ti_last_ts) == \
            (-1, 0, 0, 0, 0, -1)
        assert h.boot_id == BOOT_ID and h.seq % 2 == 0 and h.seq > 0
        assert t0 - 1000 <= h.active_created <= time.time_ns() // 10**6 + 1000
        check_partition(p, [], interval=512, max_batch_bytes=4096)


# ---------------------------------------------------------------------------
# Exact bytes (FORMAT.md section 15)

# One batch exactly as Kafka writes a RecordBatch v2 (docs/FORMAT.md §4):
# header big-endian, CRC-32C of attributes..end, zigzag varints in the records.
GOLDEN = bytes.fromhex(
    "0000000000000000" "0000004b" "00000000" "02" "fcb083ac" "0000" "00000001"
    "00000000000003e8" "00000000000003e8" "ffffffffffffffff" "ffff" "ffffffff" "00000002"
    "24" "00" "00" "00" "06" "6b6579" "0a" "76616c7565" "02" "02" "68" "02" "31"
    "0c" "00" "01" "02" "01" "01" "00")

# The same records as the library wrote them in format 1, which it still reads.
GOLDEN_V1 = bytes.fromhex(
    "0000000000000000" "4a000000" "707f8217" "01" "00" "ffff" "02000000"
    "e803000000000000" "e803000000000000" "ffffffffffffffff" "ffffffff"
    "10" "00" "046b6579" "0676616c7565" "01" "0168" "0231"
    "04" "01" "00" "00" "00")


def test_golden_batch_bytes(log):
    part = log.create_topic("g").partition(0)
    assert part.append([(b"key", b"value", [("h", b"1")]), (None, None, [], 999)],
                       timestamp=1000) == 0
    path = os.path.join(pdir(log, "g"), fr.segment_name(0) + ".log")
    with open(path, "rb") as f:
        data = f.read()
    assert data == GOLDEN
    assert fr.crc32c(GOLDEN[21:]) == 0xFCB083AC
    assert fr.encode_batch(0, [(1000, b"key", b"value", [("h", b"1")]),
                               (999, None, None, [])]) == GOLDEN
    b = fr.decode_batch(data)
    assert (b.base_offset, b.length, b.crc, b.record_count, b.first_timestamp, b.max_timestamp) == \
        (0, 87, 0xFCB083AC, 2, 1000, 1000)
    assert (b.magic, b.partition_leader_epoch, b.attributes) == (2, 0, 0)
    assert [as_tuple(r) for r in b.records] == [(1000, b"key", b"value", [("h", b"1")]),
                                                (999, None, None, [])]
    h = fr.read_head(os.path.join(pdir(log, "g"), "head"))
    assert (h.end_offset, h.active_size, h.max_timestamp, h.oi_count, h.ti_count) == (2, 87, 1000, 0, 0)
    assert fr.crc32c(b"123456789") == 0xE3069283


def test_format_1_batches_are_still_read(log):
    """A log written before format 2 keeps its batches: readers tell the
    formats apart per batch by the magic byte at offset 16 (§4.8), so a
    segment may hold format-1 batches followed by format-2 ones."""
    assert fr.encode_batch_v1(0, [(1000, b"key", b"value", [("h", b"1")]),
                                  (999, None, None, [])]) == GOLDEN_V1
    b1 = fr.decode_batch(GOLDEN_V1)
    assert b1.magic == 1 and [as_tuple(r) for r in b1.records] == \
        [(1000, b"key", b"value", [("h", b"1")]), (999, None, None, [])]
    from unstoppable._core.batch import decode_batches as core_decode
    (cb,) = core_decode(GOLDEN_V1)
    assert cb.magic == 1 and [(r.timestamp, bytes(r.key) if r.key is not None else None,
                               None if r.value is None else bytes(r.value), r.headers)
                              for r in cb.records()] == \
        [(1000, b"key", b"value", [("h", b"1")]), (999, None, None, [])]
    # A flipped bit in a format-1 batch is still caught by its own CRC range.
    bad = bytearray(GOLDEN_V1)
    bad[30] ^= 1
    with pytest.raises(CorruptLogError, match="CRC"):
        core_decode(bytes(bad))


# ---------------------------------------------------------------------------
# Every record form

def test_record_forms_round_trip(log):
    t0 = time.time_ns() // 10**6
    topic = log.create_topic("forms", partitions=2, segment_bytes=8192, max_batch_bytes=1024,
                             index_interval_bytes=100)
    recs = [
        b"plain", b"", None, bytearray(b"ba"), memoryview(b"mv"),
        (b"k", b"v"), (None, b"v"), (b"k", None), (b"", b""), (None, None),
        (b"k", b"v", [("h1", b"a"), ("h2", None), ("h1", b""), ("ключ", b"\x00\xff")]),
        (b"k", b"v", []), (b"k", b"v", None), (b"k", b"v", {"d1": b"x", "d2": None}),
        (b"k", b"v", [("t", b"1")], 5), (b"k", b"v", [], 0), (None, b"v", None, None),
        (b"k", b"v", [], 2**40), (b"big" * 200, b"v" * 900),  # a record larger than a batch
        (b"\x80" * 130, b"\x7f" * 16384, [("x" * 200, b"y" * 300)]),  # multi-byte varints
    ]
    appends = [(recs, 1_700_000_000_000), (recs[::-1], 42), ([b"tail"], 1_700_000_000_001)]
    part = topic.partition(1)
    append_all(part, appends)
    expected = expected_of(appends)
    check_partition(pdir(log, "forms", 1), expected, interval=100, max_batch_bytes=1024,
                    part=part, created_after_ms=t0)
    assert [lib_tuple(r) for r in read_all(part)] == expected
    # the other partition was not touched
    check_partition(pdir(log, "forms", 0), [], interval=100, max_batch_bytes=1024,
                    part=topic.partition(0))


# ---------------------------------------------------------------------------
# Rolls

def test_rolls_keep_offsets_dense_and_appends_whole(log):
    seg_bytes = 4096
    topic = log.create_topic("roll", segment_bytes=seg_bytes, max_batch_bytes=1024,
                             index_interval_bytes=256)
    part = topic.partition(0)
    appends = []
    for i in range(60):
        n = (i * 7) % 9 + 1
        size = (i * 131) % 400
        appends.append(([(b"k%d" % i, bytes([i]) * size, [("i", b"%d" % i)]) for _ in range(n)],
                        1000 + i))
    # one append larger than a whole segment, and one right after it
    appends.insert(30, ([b"z" * 700 for _ in range(9)], 5000))
    appends.insert(31, ([b"after"], 5001))
    spans = append_all(part, appends)
    rp = check_partition(pdir(log, "roll"), expected_of(appends), interval=256,
                         max_batch_bytes=1024, part=part)
    assert len(rp.segments) > 5

    # Recompute the segment layout from the roll rule of FORMAT.md 10.2.
    batches = rp.batches()
    seg_of_offset = {}
    for base, bs in rp.segments.items():
        for b in bs:
            for r in b.records:
                seg_of_offset[r.offset] = base
    bases, size = [0], 0
    for base, count in spans:
        nbytes = sum(b.length for b in batches if base <= b.base_offset < base + count)
        assert all(b.next_offset <= base + count for b in batches if base <= b.base_offset < base + count)
        if size > 0 and size + nbytes > seg_bytes:
            bases.append(base)
            size = 0
        size += nbytes
        # an append never straddles segments
        assert {seg_of_offset[o] for o in range(base, base + count)} == {bases[-1]}
    assert sorted(rp.segments) == bases
    big_base = spans[30][0]
    for base in bases:
        seg_size = sum(b.length for b in rp.segments[base])
        assert seg_size <= seg_bytes or base == big_base
    assert sum(b.length for b in rp.segments[big_base]) > seg_bytes
    assert rp.segments[big_base][0].base_offset == big_base
    assert [lib_tuple(r) for r in read_all(part)] == expected_of(appends)


# ---------------------------------------------------------------------------
# Index entry placement

@pytest.mark.parametrize("interval", [1, 100, 1000, 1 << 20])
def test_index_entries(log, interval):
    topic = log.create_topic("idx", segment_bytes=1 << 20, max_batch_bytes=4096,
                             index_interval_bytes=interval)
    part = topic.partition(0)
    # timestamps that go back and forth, so the time index only grows sometimes
    stamps = [100, 50, 200, 200, 150, 300, 10, 301, 301, 5, 400] * 6
    appends = [([(None, b"v" * (17 * i % 150))] * (i % 4 + 1), ts) for i, ts in enumerate(stamps)]
    append_all(part, appends)
    rp = check_partition(pdir(log, "idx"), expected_of(appends), interval=interval,
                         max_batch_bytes=4096, part=part)
    batches = rp.segments[0]
    oi, ti = rp.offset_index[0], rp.time_index[0]
    if interval == 1:
        assert oi == [(b.base_offset, b.position) for b in batches[1:]]
    if interval == 1 << 20:
        assert oi == [] and ti == []
    else:
        assert oi
        for (_, p1), (_, p2) in zip(oi, oi[1:]):
            assert p2 - p1 >= interval
    # strictly growing running max; not every offset entry has a time entry
    assert all(a[0] < b[0] for a, b in zip(ti, ti[1:]))
    if interval == 1:
        assert len(ti) < len(oi)
    # lookups through the indexes agree with the reference
    for ts in sorted(set(stamps)) + [0, 401]:
        want = next((r.offset for r in rp.records() if r.timestamp >= ts), None)
        assert part.offset_for_time(ts) == want


# ---------------------------------------------------------------------------
# Head fields and durability levels

def test_head_tracks_appends_and_acks(log):
    topic = log.create_topic("h", partitions=2, segment_bytes=1 << 20, max_batch_bytes=4096,
                             index_interval_bytes=64)
    part = topic.partition(0)
    path = os.path.join(pdir(log, "h"), "head")
    appends = []
    seq = fr.read_head(path).seq
    for i in range(20):
        appends.append(([b"x" * i, (b"k", None)], 10 * i))
        part.append(appends[-1][0], timestamp=10 * i)  # acks="written" (the default)
        h = fr.read_head(path)
        assert h.seq == seq + 2, "one head update per append"
        seq = h.seq
        assert part.change_counter == h.seq
        assert h.end_offset == part.end_offset == 2 * (i + 1)
        assert h.start_offset == part.start_offset == 0
        assert (h.ckpt_base, h.ckpt_size, h.ckpt_end_offset) == (0, 0, 0)
        assert part.durable_offset == 0
    check_partition(pdir(log, "h"), expected_of(appends), interval=64, max_batch_bytes=4096,
                    part=part)

    part.append([b"durable"], timestamp=7, acks="fsync")
    appends.append(([b"durable"], 7))
    h = fr.read_head(path)
    assert (h.ckpt_base, h.ckpt_size, h.ckpt_end_offset) == (h.active_base, h.active_size, h.end_offset)
    assert part.durable_offset == h.end_offset == 41
    part.append([b"after"], timestamp=8)
    appends.append(([b"after"], 8))
    h = fr.read_head(path)
    assert h.ckpt_end_offset == 41 < h.end_offset == 42 and h.ckpt_size < h.active_size
    # the other partition is untouched
    assert topic.partition(1).end_offset == 0  # opened on first use
    h1 = fr.read_head(os.path.join(pdir(log, "h", 1), "head"))
    assert (h1.end_offset, h1.active_size) == (0, 0)

    log.close()  # a clean close moves the checkpoint to the end
    h = fr.read_head(path)
    assert (h.ckpt_base, h.ckpt_size, h.ckpt_end_offset) == (h.active_base, h.active_size, h.end_offset)
    check_partition(pdir(log, "h"), expected_of(appends), interval=64, max_batch_bytes=4096)


def test_segment_ms_rolls_by_age(log):
    part = log.create_topic("age", segment_ms=1).partition(0)
    hp = os.path.join(pdir(log, "age"), "head")
    appends, created = [], []
    for i in range(3):
        appends.append(([b"a%d" % i], 10 + i))
        part.append(appends[-1][0], timestamp=10 + i)
        created.append(fr.read_head(hp).active_created)
        time.sleep(0.003)
    rp = check_partition(pdir(log, "age"), expected_of(appends), interval=4096,
                         max_batch_bytes=1 << 20, part=part)
    assert sorted(rp.segments) == [0, 1, 2]
    assert created[0] < created[1] < created[2]


def test_retention_moves_start_offset_first(log):
    topic = log.create_topic("ret", segment_bytes=4096, max_batch_bytes=1024,
                             index_interval_bytes=300, retention_bytes=10000)
    part = topic.partition(0)
    appends = [([b"v" * 200, (b"k", b"w" * 100)], i) for i in range(100)]
    append_all(part, appends)
    path = pdir(log, "ret")
    rp = check_partition(path, expected_of(appends), interval=300, max_batch_bytes=1024,
                         part=part)
    bases = sorted(rp.segments)
    assert bases[0] > 0 and part.start_offset == rp.head.start_offset == bases[0]
    # retention runs at the roll, before the new active segment fills
    assert sum(rp.sizes[b] for b in bases[:-1]) <= 10000
    stems = {name.split(".")[0] for name in os.listdir(path) if name[0].isdigit()}
    assert stems == {fr.segment_name(b) for b in bases}
    with pytest.raises(OffsetOutOfRangeError):
        part.read(bases[0] - 1)
    assert [lib_tuple(r) for r in read_all(part, bases[0])] == expected_of(appends)[bases[0]:]


# ---------------------------------------------------------------------------
# Recovery rules (FORMAT.md 12)

def _snapshot(path):
    out = {}
    for name in sorted(os.listdir(path)):
        if name != "head":
            with open(os.path.join(path, name), "rb") as f:
                out[name] = f.read()
    return out


def _fill(log, name, n_appends=80):
    topic = log.create_topic(name, index_interval_bytes=200, **SMALL)
    appends = [([(b"k", b"v" * (i % 50 + 1), [("n", b"%d" % i)])] * (i % 3 + 1), 1000 + i)
               for i in range(n_appends)]
    append_all(topic.partition(0), appends)
    return appends


def test_same_boot_reopen_cuts_unacknowledged_tail(log_dir):
    with unstoppable.Log(log_dir) as log:
        appends = _fill(log, "r")
        path = pdir(log, "r")
    before = _snapshot(path)
    h = fr.read_head(os.path.join(path, "head"))
    stem = os.path.join(path, fr.segment_name(h.active_base))
    assert len(before) > 6
    # a whole valid batch with the right offset, then garbage, past active_size
    extra = fr.encode_batch(h.end_offset, [(5, b"never", b"acknowledged", [])]) + b"\x00garbage"
    with open(stem + ".log", "ab") as f:
        f.write(extra)
    with open(stem + ".index", "ab") as f:
        f.write(struct.pack("<II", 999999, 999999))
    with open(stem + ".timeindex", "ab") as f:
        f.write(b"\x01" * 5)
    with unstoppable.Log(log_dir) as log:
        part = log.topic("r").partition(0)
        assert part.recovery.mode == "tail"
        assert part.recovery.truncated_bytes == len(extra)
        assert part.end_offset == h.end_offset
        assert _snapshot(path) == before
        check_partition(path, expected_of(appends), interval=200, max_batch_bytes=1024, part=part)


def test_new_boot_rescans_from_checkpoint(log_dir):
    with unstoppable.Log(log_dir) as log:
        appends = _fill(log, "b")
        path = pdir(log, "b")
    hp = os.path.join(path, "head")
    h = fr.read_head(hp)
    before = _snapshot(path)
    stem = os.path.join(path, fr.segment_name(h.active_base))
    assert len(fr.read_offset_index(stem + ".index")) >= 1
    # Pretend the machine rebooted with the checkpoint at the start of the
    # active segment, index files lost, and one more valid batch on disk past
    # the head's active_size (the head was stale), then a torn batch.
    with open(hp, "r+b") as f:
        raw = bytearray(f.read())
        struct.pack_into("<qQq16s", raw, 48, h.active_base, 0, h.active_base, b"\x01" * 16)
        f.seek(0)
        f.write(raw)
    os.truncate(stem + ".index", 0)
    os.truncate(stem + ".timeindex", 0)
    new = [(7, b"adopted", b"from disk", [("h", None)]), (6, None, b"", [])]
    extra = fr.encode_batch(h.end_offset, new)
    with open(stem + ".log", "ab") as f:
        f.write(extra + extra[:30])
    with unstoppable.Log(log_dir) as log:
        part = log.topic("b").partition(0)
        assert part.recovery.mode == "checkpoint"
        assert part.recovery.truncated_bytes == 30
        assert part.end_offset == h.end_offset + 2
        expected = expected_of(appends) + new
        check_partition(path, expected, interval=200, max_batch_bytes=1024, part=part)
        assert [lib_tuple(r) for r in read_all(part)] == expected
        h2 = fr.read_head(hp)
        assert h2.boot_id == BOOT_ID
        assert (h2.ckpt_base, h2.ckpt_size, h2.ckpt_end_offset) == \
            (h2.active_base, h2.active_size, h2.end_offset)
        after = _snapshot(path)
    # the rebuilt indexes start with exactly the entries the appends had written
    name = fr.segment_name(h.active_base)
    for ext in (".index", ".timeindex"):
        assert after[name + ext].startswith(before[name + ext])
    for k in before:
        if not k.startswith(name):
            assert after[k] == before[k]


def test_reboot_recovery_keeps_running_max_when_time_index_is_lost(log_dir):
    with unstoppable.Log(log_dir) as log:
        part = log.create_topic("ti", index_interval_bytes=1).partition(0)
        for ts in (10, 1000, 20, 20, 20, 20):
            part.append([b"v"], timestamp=ts)
        path = pdir(log, "ti")
    hp = os.path.join(path, "head")
    stem = os.path.join(path, fr.segment_name(0))
    assert fr.read_time_index(stem + ".timeindex") == [(1000, 1, 69)]  # 61 + 8-byte record
    assert fr.read_head(hp).ckpt_end_offset == 6  # the data itself was fsynced
    # Power loss: the fsynced .log survives, the unsynced .timeindex does not.
    with open(hp, "r+b") as f:
        f.seek(72)
        f.write(b"\x01" * 16)  # another boot id
    os.truncate(stem + ".timeindex", 0)
    with unstoppable.Log(log_dir) as log:
        part = log.topic("ti").partition(0)
        assert part.recovery.mode == "checkpoint"
        part.append([b"w"], timestamp=500)
        assert part.offset_for_time(600) == 1  # offset 1 has timestamp 1000
        h = fr.read_head(hp)
        assert h.max_timestamp == 1000  # FORMAT.md 8.1: largest timestamp in the active segment
        batches = fr.read_segment(stem + ".log", h.active_size)
        for ts, rel, pos in fr.read_time_index(stem + ".timeindex", h.ti_count):
            assert ts == max(b.max_timestamp for b in batches if b.position <= pos)


# ---------------------------------------------------------------------------
# Checksums

def test_reference_decoder_rejects_every_flipped_bit():
    batch = GOLDEN
    fr.decode_batches(batch, expected_offset=0)
    for byte in range(len(batch)):
        for bit in range(8):
            bad = bytearray(batch)
            bad[byte] ^= 1 << bit
            if byte < 8:  # base_offset: not covered by the CRC, caught by offset checks
                assert fr.decode_batch(bytes(bad)).base_offset != 0
                with pytest.raises(fr.FormatError) as e:
                    fr.decode_batches(bytes(bad), expected_offset=0)
                assert e.value.reason == "offsets"
                continue
            with pytest.raises(fr.FormatError) as e:
                fr.decode_batch(bytes(bad))
            if byte == 16:
                assert e.value.reason == "magic"
            elif 12 <= byte < 16:   # partitionLeaderEpoch: outside the CRC, written 0
                assert e.value.reason == "header", (byte, bit, e.value)
            elif byte > 16:
                assert e.value.reason == "crc", (byte, bit, e.value)


def test_flipped_bit_on_disk(log_dir):
    with unstoppable.Log(log_dir) as log:
        appends = _fill(log, "c", n_appends=120)
        path = pdir(log, "c")
    seg0 = os.path.join(path, fr.segment_name(0) + ".log")
    batches = fr.read_segment(seg0)
    victim = batches[len(batches) // 2]
    flip_at = victim.position + victim.length - 3  # inside the last record's value
    with open(seg0, "r+b") as f:
        f.seek(flip_at)
        byte = f.read(1)[0]
        f.seek(flip_at)
        f.write(bytes([byte ^ 0x10]))
    with pytest.raises(fr.FormatError) as e:
        fr.read_segment(seg0)
    assert e.value.reason == "crc" and e.value.position == victim.position
    with pytest.raises(fr.FormatError):
        fr.read_partition(path)
    # the library refuses the damaged batch too, and only that one
    with unstoppable.Log(log_dir) as log:
        part = log.topic("c").partition(0)
        with pytest.raises(CorruptLogError):
            read_all(part)
        assert part.read(victim.base_offset - 1, max_records=1)[0].offset == victim.base_offset - 1
        with pytest.raises(CorruptLogError):
            part.read(victim.base_offset)
        assert [lib_tuple(r) for r in read_all(part, victim.next_offset)] == \
            expected_of(appends)[victim.next_offset:]
        report = log.verify()
        assert not report.ok and report.problems[0].position == victim.position


# ---------------------------------------------------------------------------
# Producer fields

def test_idempotent_batch_header_fields(log):
    part = log.create_topic("p").partition(0)
    part.append([b"a", b"b"], timestamp=1, producer_id=7, producer_epoch=3, base_sequence=0)
    part.append([b"c"], timestamp=2, producer_id=7, producer_epoch=3, base_sequence=2)
    part.append([b"d"], timestamp=3)
    batches = fr.read_partition(pdir(log, "p")).batches()
    assert [(b.producer_id, b.producer_epoch, b.base_sequence, b.record_count) for b in batches] == \
        [(7, 3, 0, 2), (7, 3, 2, 1), (-1, -1, -1, 1)]


# ---------------------------------------------------------------------------
# Topic directory names

def test_staging_debris_is_never_a_topic(log_dir):
    import shutil
    with unstoppable.Log(log_dir) as log:
        log.create_topic("real")
        log.create_topic("gone")
        log.delete_topic("gone")
        assert sorted(os.listdir(log.path)) == ["meta.lock", "staging", "topics", "unstoppable.json"]
        assert os.listdir(os.path.join(log.path, "topics")) == ["real"]
        assert os.listdir(os.path.join(log.path, "staging")) == []
        # what a crash in the middle of create_topic / delete_topic leaves behind
        staging = os.path.join(log.path, "staging")
        shutil.copytree(os.path.join(log.path, "topics", "real"),
                        os.path.join(staging, "creating-" + "0" * 32))
        shutil.copytree(os.path.join(log.path, "topics", "real"),
                        os.path.join(staging, "deleted-" + "1" * 32))
        assert log.topics() == ["real"]
    with unstoppable.Log(log_dir) as log:
        assert log.topics() == ["real"]
        assert os.listdir(os.path.join(log.path, "staging")) == []


# ---------------------------------------------------------------------------
# Property: random records round-trip through the log and the reference decoder

_blob = st.one_of(st.binary(max_size=24), st.binary(min_size=100, max_size=900))
_nblob = st.one_of(st.none(), _blob)
_ts = st.integers(0, 2**40)
_headers = st.lists(st.tuples(st.text(max_size=6), _nblob), max_size=3)
_record = st.one_of(
    _blob,
    st.none(),
    st.tuples(_nblob, _nblob),
    st.tuples(_nblob, _nblob, st.one_of(st.none(), _headers)),
    st.tuples(_nblob, _nblob, _headers, st.one_of(st.none(), _ts)),
)
_appends = st.lists(st.tuples(st.lists(_record, max_size=12), _ts), min_size=1, max_size=16)
# filler appends between the random ones push the segments over their size
_filler = st.lists(st.integers(0, 3000), max_size=4)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(appends=_appends,
       interval=st.sampled_from([1, 64, 700, 4096]),
       segment_bytes=st.sampled_from([4096, 4096, 8192, 65536]),
       filler=_filler)
def test_property_round_trip(appends, interval, segment_bytes, filler):
    appends = list(appends)
    for i, size in enumerate(filler):
        appends.insert(i * len(appends) // len(filler), ([b"f" * size], 1))
    with tempfile.TemporaryDirectory() as d:
        with unstoppable.Log(os.path.join(d, "log")) as log:
            part = log.create_topic("prop", segment_bytes=segment_bytes, max_batch_bytes=1024,
                                    index_interval_bytes=interval).partition(0)
            append_all(part, appends)
            expected = expected_of(appends)
            rp = check_partition(pdir(log, "prop"), expected, interval=interval,
                                 max_batch_bytes=1024, part=part)
            event(f"segments: {min(len(rp.segments), 3)}{'+' if len(rp.segments) >= 3 else ''}")
            event(f"index entries: {'yes' if any(rp.offset_index.values()) else 'no'}")
            got = read_all(part)
            assert [r.offset for r in got] == list(range(len(expected)))
            assert [lib_tuple(r) for r in got] == expected
            for r in got:
                assert r.key is None or isinstance(r.key, memoryview)
                assert r.value is None or isinstance(r.value, memoryview)
            # every offset is found on its own (index floor + header walk)
            for o in range(len(expected)):
                (r,) = part.read(o, max_records=1)
                assert r.offset == o and lib_tuple(r) == expected[o]
            # the library's batch view agrees with the reference header by header
            lib_batches = []
            off = 0
            while off < part.end_offset:
                bs = part.read_batches(off)
                lib_batches.extend(bs)
                off = bs[-1].next_offset
            assert [(b.base_offset, b.length, b.crc, b.record_count, b.first_timestamp,
                     b.max_timestamp) for b in lib_batches] == \
                [(b.base_offset, b.length, b.crc, b.record_count, b.first_timestamp,
                  b.max_timestamp) for b in rp.batches()]
        # after a clean close the files still decode and the checkpoint is at the end
        rp = check_partition(os.path.join(d, "log", "topics", "prop", "0"), expected,
                             interval=interval, max_batch_bytes=1024)
        h = rp.head
        assert (h.ckpt_base, h.ckpt_size, h.ckpt_end_offset) == \
            (h.active_base, h.active_size, h.end_offset)
