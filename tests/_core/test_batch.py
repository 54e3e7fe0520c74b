"""The batch codec: what the encoder accepts and refuses, and a decoder that
never crashes, loops or returns wrong bytes on hostile input."""
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unstoppable._core.batch import BatchEncoder, decode_batches
from unstoppable._core.hashing import crc32c
from unstoppable.errors import CorruptLogError, InvalidRecordError, RecordTooLargeError

import format_reference as fr


def encode(records, ts=1000, **kw):
    e = BatchEncoder(**{k: kw.pop(k) for k in ("max_batch_bytes", "max_record_bytes") if k in kw})
    e.encode(records, ts, **kw)
    return e, bytes(e.view())


def test_round_trip_all_record_forms():
    recs = [b"v0", None, (b"k", b"v"), (None, b""), (b"", None, [("h", b"x"), ("n", None)]),
            (b"k2", b"v2", {"a": b"1"}, 5), bytearray(b"ba"), memoryview(b"mv")]
    e, data = encode(recs, ts=77)
    e2 = BatchEncoder()
    (b,) = decode_batches(data)
    rs = b.records()
    assert [None if r.key is None else bytes(r.key) for r in rs] == [None, None, b"k", None, b"", b"k2", None, None]
    assert [None if r.value is None else bytes(r.value) for r in rs] == [b"v0", None, b"v", b"", None, b"v2", b"ba", b"mv"]
    assert [r.timestamp for r in rs] == [77] * 5 + [5, 77, 77]
    assert rs[4].headers == [("h", b"x"), ("n", None)]
    assert rs[5].headers == [("a", b"1")]
    assert b.first_timestamp == 77 and b.max_timestamp == 77
    assert b.producer_id == -1 and b.base_sequence == -1 and b.producer_epoch == -1
    # A Record read back can be appended again, unchanged.
    e2.encode(rs, 1)
    again = decode_batches(bytes(e2.view()))[0].records()
    assert [(r.timestamp, r.headers) for r in again] == [(r.timestamp, r.headers) for r in rs]


@pytest.mark.parametrize("bad,msg", [
    ("text", "bytes-like"),
    (1, "bytes-like"),
    ((b"k",), "tuple record"),
    ((b"k", b"v", None, None, None), "tuple record"),
    (("k", b"v"), "key must be bytes-like"),
    ((b"k", b"v", [("h", "s")]), "header value"),
    ((b"k", b"v", [(b"h", b"s")]), "header key must be str"),
    ((b"k", b"v", "hdr"), "headers must be"),
    ((b"k", b"v", None, -1), "timestamp"),
    ((b"k", b"v", None, "x"), "timestamp"),
    ((b"k", b"v", None, 1 << 62), "timestamp"),
])
def test_encoder_refuses_bad_records_naming_them(bad, msg):
    e = BatchEncoder()
    e.encode([b"ok"], 1)
    before = bytes(e.view())
    with pytest.raises(InvalidRecordError, match=msg) as ei:
        e.encode([b"fine", bad], 1)
    assert "record 1" in str(ei.value)
    assert bytes(e.view()) == before  # a refused call leaves the buffer as it was


def test_record_too_large():
    e = BatchEncoder(max_record_bytes=100)
    with pytest.raises(RecordTooLargeError, match="max_record_bytes=100"):
        e.encode([b"x" * 200], 1)
    assert e.nbytes == 0


def test_split_into_batches_and_sequences():
    e = BatchEncoder(max_batch_bytes=1000)
    e.encode([bytes([i]) * 90 for i in range(50)], 5, producer_id=9, producer_epoch=2, base_sequence=7)
    assert e.batches > 1
    end = e.set_base_offset(100)
    assert end == 150
    bs = decode_batches(bytes(e.view()))
    assert all(b.length <= 1000 for b in bs)
    assert [b.base_offset for b in bs][0] == 100
    seq = 7
    off = 100
    for b in bs:
        assert b.base_sequence == seq and b.producer_id == 9 and b.producer_epoch == 2
        assert b.base_offset == off
        seq += len(b)
        off += len(b)
    assert [bytes(r.value)[0] for b in bs for r in b.records()] == list(range(50))


def test_bare_bytes_fast_path_encodes_like_the_general_path():
    """Exact bytes take a C fast path; memoryviews of the same values take the
    general one. Both must give the same bytes, across batch splits and
    records with their own timestamps in between."""
    vals = [bytes([i % 251]) * (i % 300) for i in range(600)]
    mixed = list(vals)
    mixed[10] = (None, vals[10], None, 5)        # an earlier timestamp: negative delta
    mixed[400] = (None, vals[400], None, 99_000)
    general = [memoryview(v) if isinstance(v, bytes) else v for v in mixed]
    for kw in ({}, {"max_batch_bytes": 4096}):
        a, da = encode(mixed, ts=1000, **kw)
        b, db = encode(general, ts=1000, **kw)
        assert da == db
        assert a.batches == b.batches and a.records == 600
        assert a.max_timestamp == b.max_timestamp == 99_000
        c, dc = encode(tuple(mixed), ts=1000, **kw)  # a tuple takes the same path
        assert dc == da


def test_bytes_subclass_takes_the_general_path():
    class Value(bytes):
        pass

    e, data = encode([Value(b"k")] + [b"c"] * 3)
    assert [bytes(r.value) for r in decode_batches(data)[0].records()] == [b"k", b"c", b"c", b"c"]


def test_a_list_resized_during_encode_is_refused_cleanly():
    """The fast path walks the list's item array directly; Python code run by
    the general path (here a timestamp's __int__) may shrink the list, which
    must give a clean error, never a read past the end."""
    class Ts:
        def __init__(self, lst):
            self.lst = lst

        def __index__(self):
            del self.lst[4:]
            return 7

        __int__ = __index__

    recs = [b"a"] * 3 + [None] + [b"b"] * 300
    recs[3] = (None, b"v", None, Ts(recs))
    e = BatchEncoder()
    e.encode([b"ok"], 1)
    before = bytes(e.view())
    with pytest.raises(RuntimeError, match="changed size"):
        e.encode(recs, 1)
    assert bytes(e.view()) == before


def test_view_pins_buffer():
    e = BatchEncoder()
    e.encode([b"a"], 1)
    v = e.view()
    with pytest.raises(BufferError):
        e.clear()
    v.release()
    e.clear()
    assert e.nbytes == 0


def _valid_batch():
    _, data = encode([(b"key", b"value", [("h", b"v")]), b"second"], ts=10)
    return data


def test_every_single_bit_flip_is_caught():
    data = _valid_batch()
    # baseOffset (0..7) lies outside the CRC by design (offset checks catch
    # it); so does partitionLeaderEpoch (12..15), which readers require to be 0.
    for i in range(8, len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(CorruptLogError):
                decode_batches(bytes(bad))


def test_a_partition_leader_epoch_other_than_0_is_refused():
    data = _valid_batch()
    (b,) = decode_batches(data)
    assert b.partition_leader_epoch == 0
    bad = bytearray(data)
    bad[12:16] = (7).to_bytes(4, "big")     # outside the CRC: caught by its fixed value
    with pytest.raises(CorruptLogError, match="partitionLeaderEpoch"):
        decode_batches(bytes(bad))


def test_every_truncation_is_caught():
    data = _valid_batch()
    for n in range(1, len(data)):
        with pytest.raises(CorruptLogError):
            decode_batches(data[:n])


def _reseal(buf: bytearray) -> bytes:
    """Recompute batchLength and the CRC-32C of attributes..end (Kafka v2)."""
    struct.pack_into(">i", buf, 8, len(buf) - 12)
    struct.pack_into(">I", buf, 17, crc32c(bytes(buf[21:])))
    return bytes(buf)


def test_valid_crc_but_broken_records_are_caught():
    data = bytearray(_valid_batch())
    # record count (and lastOffsetDelta) larger than the records present
    bad = bytearray(data)
    struct.pack_into(">i", bad, 57, 3)
    struct.pack_into(">i", bad, 23, 2)
    with pytest.raises(CorruptLogError, match="records do not parse"):
        decode_batches(_reseal(bad))[0].records()
    bad = bytearray(data)
    struct.pack_into(">i", bad, 57, 3)   # lastOffsetDelta left at 1: they disagree
    with pytest.raises(CorruptLogError, match="lastOffsetDelta"):
        decode_batches(_reseal(bad))
    bad = bytearray(data)
    struct.pack_into(">i", bad, 57, 0)
    with pytest.raises(CorruptLogError, match="zero records"):
        decode_batches(_reseal(bad))
    bad = bytearray(data)
    bad[16] = 9  # future magic
    with pytest.raises(CorruptLogError, match="magic"):
        decode_batches(_reseal(bad))
    bad = bytearray(data)
    bad[22] = 5  # compression codec 5: unknown
    with pytest.raises(CorruptLogError, match="attributes"):
        decode_batches(_reseal(bad))
    bad = bytearray(data)
    bad[21] = 0x80  # a reserved attribute bit
    with pytest.raises(CorruptLogError, match="attributes"):
        decode_batches(_reseal(bad))


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=400))
def test_decoder_on_arbitrary_bytes_never_crashes(data):
    try:
        for b in decode_batches(data):
            for r in b.records():
                r.key, r.value, r.headers
    except CorruptLogError:
        pass


@settings(max_examples=1000, deadline=None)
@given(st.binary(min_size=62, max_size=300), st.booleans())
def test_decoder_on_resealed_garbage_never_crashes(body, v1):
    """Garbage that passes the CRC, in either batch format: only the record
    parser stands between it and the caller, so it must bounds-check everything."""
    buf = bytearray(body)
    if v1:   # the earlier format 1, still read (docs/FORMAT.md §4.8)
        struct.pack_into("<qI", buf, 0, 0, len(buf))
        buf[16] = 1
        buf[17] = 0
        struct.pack_into("<I", buf, 20, max(1, buf[20] % 8))
        struct.pack_into("<I", buf, 12, crc32c(bytes(buf[16:])))
        data = bytes(buf)
    else:
        n = max(1, buf[60] % 8)
        struct.pack_into(">q", buf, 0, 0)
        buf[16] = 2
        buf[21:23] = b"\0\0"
        struct.pack_into(">i", buf, 23, n - 1)
        struct.pack_into(">i", buf, 57, n)
        data = _reseal(buf)
    try:
        for b in decode_batches(data):
            for r in b.records():
                v = r.value
                if v is not None:
                    assert len(bytes(v)) == len(v)
                r.headers
    except CorruptLogError:
        pass


def test_recycled_record_view_arrays_never_mix_batches():
    """Decoded batches borrow their per-record arrays from a small cache of
    freed ones; batches alive at the same time must never share one."""
    import random
    rnd = random.Random(5)
    alive = []
    for round_ in range(60):
        n = rnd.choice([1, 7, 300, 5000, 12000])
        vals = [b"%d-%d-" % (round_, i) + bytes(rnd.randrange(0, 40)) for i in range(n)]
        _, data = encode(vals)
        (b,) = decode_batches(data)
        assert len(b.records()) == n  # decoded now: its array is taken
        alive.append((b, vals))
        rnd.shuffle(alive)
        for _ in range(rnd.randrange(0, 3)):  # drop some: their arrays go back to the cache
            if alive:
                del alive[rnd.randrange(len(alive))]
        for bb, vv in alive:
            rs = bb.records()
            assert [bytes(r.value) for r in rs] == vv


def test_encode_a_range_of_a_list_equals_encoding_its_slice():
    vals = [b"v%d" % i for i in range(100)] + [(b"k", b"v", [("h", b"x")], 9)] + [b"w"] * 50
    for start, stop in [(0, -1), (0, 151), (10, 20), (95, 120), (150, 151), (151, 151), (30, 1000)]:
        a = BatchEncoder()
        na = a.encode(vals, 5, start=start, stop=stop)
        b = BatchEncoder()
        nb = b.encode(vals[start:None if stop < 0 else stop], 5)
        assert na == nb and bytes(a.view()) == bytes(b.view())
    with pytest.raises(ValueError, match="start"):
        BatchEncoder().encode(vals, 5, start=20, stop=10)
    with pytest.raises(ValueError, match="start"):
        BatchEncoder().encode(vals, 5, start=-1)


_record = st.tuples(
    st.integers(0, 2**62),                                   # timestamp delta: 1- to 9-byte varints
    st.none() | st.binary(max_size=70),                      # keys across the 1/2-byte length boundary
    st.none() | st.binary(max_size=200)
    | st.integers(8180, 8200).map(lambda n: bytes([n % 251]) * n),  # 2- and 3-byte lengths
    st.lists(st.tuples(st.text("hké", max_size=4), st.none() | st.binary(max_size=80)), max_size=2))


def _views(b):
    return [(r.offset, r.timestamp, None if r.key is None else bytes(r.key),
             None if r.value is None else bytes(r.value), r.headers) for r in b.records()]


@settings(max_examples=300, deadline=None)
@given(st.lists(_record, min_size=1, max_size=12), st.integers(0, 1 << 20), st.integers(0, 255),
       st.booleans())
def test_decoder_agrees_with_the_reference_decoder_on_damaged_records(records, where, byte, damage):
    """The record decoder reads varints without a bounds check per byte where
    the batch leaves room (csrc/batch.c), and the checked decoder near the
    batch's end. Whatever a resealed batch holds (one record byte replaced),
    it must accept exactly what the independent struct-only decoder of
    tests/format_reference.py accepts, and return the same records."""
    batch = bytearray(fr.encode_batch(0, [(1000 + d, k, v, h) for d, k, v, h in records]))
    if damage:
        batch[fr.BATCH_HEADER_SIZE + where % (len(batch) - fr.BATCH_HEADER_SIZE)] = byte
        struct.pack_into(">I", batch, 17, crc32c(bytes(batch[21:])))
    data = bytes(batch)
    try:
        want = fr.decode_batch(data, strict_timestamps=False).records
    except fr.FormatError as e:
        assert e.reason in ("records", "utf8"), e
        want = None if e.reason == "records" else "utf8"
    try:
        (b,) = decode_batches(data)
        got = _views(b)
    except CorruptLogError:
        got = None
    if want == "utf8":
        # The reference stops at the first header key that is not UTF-8
        # (this decoder reads keys with surrogateescape): nothing to compare.
        return
    assert got == (None if want is None else
                   [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in want])
