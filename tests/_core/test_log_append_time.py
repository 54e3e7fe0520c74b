"""LogAppendTime batches (attribute bit 3, Kafka's KIP-32): every record's
timestamp is the batch's maxTimestamp, whatever its own delta says. The C
decoder's every path (decode_batches, the one-pass check-and-decode of a
read, a compressed batch, the time search) is checked against the reference
decoder and kafka-python's, both independent of the compiled core."""
import struct

import pytest
from kafka.record.default_records import DefaultRecordBatch

import format_reference as fr
import unstoppable as us
from unstoppable._core.batch import BatchEncoder, decode_batches
from unstoppable.compression import codec_id

APPENDED = 1_700_000_123_456
# Record timestamps far from the append time, so a decoder that reads a
# record's own delta gives a different answer.
CREATED = [1_000, 5_000, 3_000]


def stamped(raw: bytes, ts: int = APPENDED) -> bytes:
    """``raw`` (one sealed format-2 batch) as a broker stamps it for a
    LogAppendTime topic, done here with struct and the crc32c package: bit 3
    set, maxTimestamp = ts, CRC resealed."""
    b = bytearray(raw)
    (attrs,) = struct.unpack_from(">h", b, 21)
    struct.pack_into(">h", b, 21, attrs | 0x08)
    struct.pack_into(">q", b, 35, ts)
    struct.pack_into(">I", b, 17, fr.crc32c(bytes(b[21:])))
    return bytes(b)


def reference_batch() -> bytes:
    return fr.encode_batch(0, [(t, b"k%d" % i, b"v%d" % i, []) for i, t in enumerate(CREATED)])


def test_every_decoder_reads_the_append_time():
    raw = stamped(reference_batch())
    (b,) = decode_batches(raw)
    assert b.attributes & 0x08 and b.max_timestamp == APPENDED
    assert [r.timestamp for r in b.records()] == [APPENDED] * 3
    assert [r.timestamp for r in fr.decode_batch(raw).records] == [APPENDED] * 3
    kb = DefaultRecordBatch(raw)
    assert kb.timestamp_type == 1
    assert [r.timestamp for r in kb] == [APPENDED] * 3
    # CreateTime: the records' own timestamps, in all three.
    (c,) = decode_batches(reference_batch())
    assert [r.timestamp for r in c.records()] == CREATED
    assert [r.timestamp for r in fr.decode_batch(reference_batch()).records] == CREATED


def test_encoder_stamps_its_batches_and_reseals_them():
    e = BatchEncoder(max_batch_bytes=200)
    e.encode([(b"k", b"x" * 60, None, t) for t in CREATED], 7)
    assert e.batches > 1
    e.set_log_append_time(APPENDED)
    assert e.max_timestamp == APPENDED
    e.set_base_offset(0)
    data = bytes(e.view())
    batches = fr.decode_batches(data)          # CRCs checked by the reference
    assert len(batches) == e.batches
    assert all(b.attributes & 0x08 and b.max_timestamp == APPENDED for b in batches)
    assert [r.timestamp for b in batches for r in b.records] == [APPENDED] * 3
    with pytest.raises(us.InvalidRecordError):
        e.set_log_append_time(-1)


@pytest.mark.parametrize("codec", [None, "zstd", "gzip"])
def test_a_partition_reads_and_searches_by_the_append_time(tmp_path, codec):
    """Appended through append_encoded as the server does: the read path
    (one pass, or decompression) and offset_for_time both see the stamp."""
    with us.Log(tmp_path) as log:
        p = log.create_topic("t").partition(0)
        for i, ts in enumerate((APPENDED, APPENDED + 10)):
            e = BatchEncoder()
            e.encode([(b"k", b"a%d" % i, None, t) for t in CREATED], 1)
            if codec:
                e.compress(codec_id(codec))
            e.set_log_append_time(ts)
            p.append_encoded(e)
        assert [r.timestamp for r in p.read(0)] == [APPENDED] * 3 + [APPENDED + 10] * 3
        assert p.offset_for_time(0) == 0
        assert p.offset_for_time(APPENDED) == 0
        assert p.offset_for_time(APPENDED + 1) == 3
        assert p.offset_for_time(APPENDED + 11) is None
        ref = fr.read_partition(p.path)
        assert [r.timestamp for r in ref.records()] == [APPENDED] * 3 + [APPENDED + 10] * 3
        # The time index holds the append times (the batches' maxTimestamp).
        assert {ts for entries in ref.time_index.values() for ts, _, _ in entries} <= {
            APPENDED, APPENDED + 10}
