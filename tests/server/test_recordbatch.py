"""RecordBatch v2 translation, checked against kafka-python's independent codec.

kafka-python's DefaultRecordBatchBuilder writes the batches a Kafka producer
sends (every codec); its DefaultRecordBatch reads what the server encodes for a
Fetch and checks the CRC-32C.
"""
import struct

import pytest

import unstoppable as us
from unstoppable.server.recordbatch import (
    InvalidBatchError,
    UnsupportedCompressionError,
    decode_batches,
    encode_records,
)

kafka_records = pytest.importorskip("kafka.record.default_records")
Builder = kafka_records.DefaultRecordBatchBuilder
Reader = kafka_records.DefaultRecordBatch

# kafka-python's codec ids are Kafka's attribute values
CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def build(records, codec=0, pid=-1, epoch=-1, seq=-1, transactional=False):
    b = Builder(magic=2, compression_type=codec, is_transactional=transactional,
                producer_id=pid, producer_epoch=epoch, base_sequence=seq, batch_size=1 << 30)
    for i, (key, value, headers, ts) in enumerate(records):
        b.append(i, timestamp=ts, key=key, value=value, headers=headers)
    return bytes(b.build())


SAMPLE = [(b"k0", b"v0" * 100, [], 1_700_000_000_000),
          (None, b"value without key", [("trace", b"1"), ("empty", None)], 1_700_000_000_005),
          (b"k2", None, [], 1_700_000_000_002),
          (b"", b"", [("h", b"")], 1_699_999_999_999)]


@pytest.mark.parametrize("codec", list(CODECS))
def test_decode_every_codec(codec):
    data = build(SAMPLE, CODECS[codec], pid=7, epoch=2, seq=40)
    [b] = decode_batches(data)
    assert (b.producer_id, b.producer_epoch, b.base_sequence) == (7, 2, 40)
    assert b.compression == (None if codec == "none" else codec)
    assert not b.transactional and not b.control
    assert [(k, v, h or [], ts) for k, v, h, ts in b.records] == SAMPLE


def test_several_batches_in_one_records_field():
    data = build(SAMPLE[:2]) + build(SAMPLE[2:], CODECS["zstd"])
    got = decode_batches(data)
    assert [len(b.records) for b in got] == [2, 2]


def test_bad_crc_is_refused():
    data = bytearray(build(SAMPLE))
    data[-1] ^= 0xFF
    with pytest.raises(InvalidBatchError, match="CRC"):
        decode_batches(bytes(data))


def test_truncated_and_wrong_magic_are_refused():
    data = build(SAMPLE)
    with pytest.raises(InvalidBatchError, match="does not fit"):
        decode_batches(data[:-3])
    with pytest.raises(InvalidBatchError, match="shorter than a batch header"):
        decode_batches(data[:30])
    bad = bytearray(data)
    bad[16] = 1
    with pytest.raises(InvalidBatchError, match="magic 1"):
        decode_batches(bytes(bad))


def test_record_count_must_match():
    data = bytearray(build(SAMPLE))
    struct.pack_into(">i", data, 57, 5)           # count 5, lastOffsetDelta still 3
    from unstoppable._core.hashing import crc32c
    struct.pack_into(">I", data, 17, crc32c(bytes(data[21:])))
    with pytest.raises(InvalidBatchError, match="record count"):
        decode_batches(bytes(data))


def test_unknown_codec_is_its_own_error():
    data = bytearray(build(SAMPLE))
    struct.pack_into(">h", data, 21, 6)
    from unstoppable._core.hashing import crc32c
    struct.pack_into(">I", data, 17, crc32c(bytes(data[21:])))
    with pytest.raises(UnsupportedCompressionError):
        decode_batches(bytes(data))


def test_encode_reads_back_with_kafka_python(tmp_path):
    with us.Log(tmp_path / "log") as log:
        p = log.create_topic("t").partition(0)
        p.append([(k, v, h or None, ts) for k, v, h, ts in SAMPLE])
        p.append([b"later"])
        recs = p.read(1)
        data = encode_records(recs)
    batch = Reader(data)
    assert batch.validate_crc()
    assert batch.base_offset == 1 and batch.magic == 2
    got = [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in batch]
    want = [(1 + i, ts, k, v, h) for i, (k, v, h, ts) in enumerate(SAMPLE[1:])]
    assert got[:3] == want
    assert got[3][0] == 4 and got[3][3] == b"later"
    # and our decoder agrees with our encoder
    [b] = decode_batches(data)
    assert [r[1] for r in b.records] == [v for _, v, _, _ in SAMPLE[1:]] + [b"later"]


def test_damaged_records_with_a_valid_crc_raise_only_invalid_batch():
    """Bytes a client got wrong before computing the CRC: every outcome is a
    decoded batch or InvalidBatchError, never another exception or a crash."""
    import random
    from unstoppable._core.hashing import crc32c
    rnd = random.Random(17)
    for codec in (0, 1, 4):
        good = build(SAMPLE * 3, codec)
        for _ in range(300):
            data = bytearray(good)
            for _ in range(rnd.randint(1, 4)):
                data[rnd.randrange(61, len(data))] = rnd.randrange(256)
            struct.pack_into(">I", data, 17, crc32c(bytes(data[21:])))
            try:
                [b] = decode_batches(bytes(data))
            except InvalidBatchError:
                continue
            assert len(b.records) == len(SAMPLE) * 3
