"""The segment files are Kafka RecordBatch v2 (docs/FORMAT.md §4): third-party
decoders read them, batches built by a Kafka client library are taken as
they are, and compressed batches keep every guarantee of the log.

kafka-python and aiokafka are test dependencies; their record readers and
builders share no code with the library's C core.
"""
from __future__ import annotations

import glob
import os
import struct
import subprocess
import sys

import pytest

import unstoppable as us
from unstoppable._core.batch import BatchEncoder, decode_batches
from unstoppable.errors import CodecUnavailableError, CorruptLogError

from kafka.record.default_records import DefaultRecordBatch as KDecoder
from kafka.record.default_records import DefaultRecordBatchBuilder as KBuilder
from aiokafka.record.default_records import DefaultRecordBatch as ADecoder

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import format_reference as fr  # noqa: E402

CODECS = [None, "gzip", "snappy", "lz4", "zstd"]
# kafka-python's attribute values of the codecs (the same as Kafka's).
KCODEC = {None: 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def _records(n=300):
    out = []
    for i in range(n):
        if i % 5 == 0:
            out.append(b'{"seat": %d, "event": "reserved"}' % i)
        elif i % 5 == 1:
            out.append((b"seat-%d" % i, b'{"seat": %d, "event": "paid", "user": "u%d"}' % (i, i),
                        [("trace", b"%d" % i), ("empty", None)]))
        elif i % 5 == 2:
            out.append((None, None))
        elif i % 5 == 3:
            out.append((b"k", b"", [], 1000 + (i % 7)))           # own timestamp, out of order
        else:
            out.append((b"\x80" * 130, b"\x7f" * 300, [("ключ", b"\x00\xff")]))
    return out


def _expect(recs, ts):
    out = []
    for r in recs:
        if isinstance(r, bytes):
            out.append((ts, None, r, []))
        else:
            k, v, *rest = r
            hs = rest[0] if rest else []
            t = rest[1] if len(rest) > 1 else ts
            out.append((t, k, v, list(hs)))
    return out


def _segments(part):
    return sorted(glob.glob(os.path.join(part.path, "*.log")))


def _third_party(data, decoder):
    """Every record of every batch in ``data`` through a third-party decoder."""
    out, pos = [], 0
    while pos < len(data):
        length = struct.unpack_from(">i", data, pos + 8)[0] + 12
        b = decoder(bytes(data[pos:pos + length]))
        assert b.validate_crc()
        assert b.magic == 2
        for r in b:
            hs = [(k, None if v is None else bytes(v)) for k, v in r.headers]
            out.append((r.offset, r.timestamp, None if r.key is None else bytes(r.key),
                        None if r.value is None else bytes(r.value), hs))
        pos += length
    return out


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("decoder", [KDecoder, ADecoder], ids=["kafka-python", "aiokafka"])
def test_third_party_decoders_read_the_segment_files(tmp_path, codec, decoder):
    with us.Log(tmp_path / "log") as log:
        part = log.create_topic("t", max_batch_bytes=4096).partition(0)
        recs = _records()
        part.append(recs[:100], timestamp=1000, compression=codec)
        part.append(recs[100:], timestamp=2000, compression=codec)
        expected = _expect(recs[:100], 1000) + _expect(recs[100:], 2000)
        # ... and the library's own reader agrees.
        got = part.read(0, max_records=1000)
        assert [(r.timestamp, None if r.key is None else bytes(r.key),
                 None if r.value is None else bytes(r.value), r.headers) for r in got] == expected
        (seg,) = _segments(part)
        with open(seg, "rb") as f:
            data = f.read()
        seen = _third_party(data, decoder)
        assert [s[0] for s in seen] == list(range(len(recs)))
        assert [s[1:] for s in seen] == expected
        batches = fr.decode_batches(data, expected_offset=0)
        assert len(batches) > 2  # several batches (max_batch_bytes), each checked
        assert {b.compression for b in batches} == {codec}
        assert log.verify().ok


@pytest.mark.parametrize("codec", CODECS)
def test_a_batch_built_by_kafka_python_is_appended_as_it_is(tmp_path, codec):
    b = KBuilder(magic=2, compression_type=KCODEC[codec], is_transactional=False,
                 producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    sent = []
    for i in range(50):
        key = None if i % 3 == 0 else b"key-%d" % i
        value = b'{"n": %d, "payload": "%s"}' % (i, b"x" * (i % 40))
        hs = [("h", b"%d" % i)] if i % 2 else []
        b.append(i, timestamp=1_700_000_000_000 + i, key=key, value=value, headers=hs)
        sent.append((1_700_000_000_000 + i, key, value, hs))
    raw = bytes(b.build())
    with us.Log(tmp_path / "log") as log:
        part = log.create_topic("t").partition(0)
        part.append([b"before"], timestamp=5)
        enc = BatchEncoder()
        assert enc.add_batches(raw) == 50
        base, end = part.append_encoded(enc)
        assert (base, end) == (1, 51)
        got = part.read(1, max_records=100)
        assert [(r.offset, r.timestamp, None if r.key is None else bytes(r.key), bytes(r.value),
                 r.headers) for r in got] == [(1 + i, *s) for i, s in enumerate(sent)]
        assert part.offset_for_time(1_700_000_000_010) == 11  # the time index from maxTimestamp
        (seg,) = _segments(part)
        with open(seg, "rb") as f:
            data = f.read()
        # Stored byte for byte but for the base offset (outside the CRC).
        assert data.endswith(raw[8:]) and struct.unpack_from(">q", data, len(data) - len(raw)) == (1,)
        assert log.verify().ok
    with us.Log(tmp_path / "log") as log:   # recovery and reopen keep it
        assert len(log.topic("t").partition(0).read(0, max_records=100)) == 51


def _resealed(raw: bytearray) -> bytes:
    struct.pack_into(">i", raw, 8, len(raw) - 12)
    struct.pack_into(">I", raw, 17, fr.crc32c(bytes(raw[21:])))
    return bytes(raw)


def test_corrupt_compressed_payload_with_a_valid_crc_is_refused(tmp_path):
    enc = BatchEncoder()
    enc.encode([b"value %d" % i for i in range(100)], 1000)
    enc.compress(4)
    raw = bytearray(bytes(enc.view()))
    raw[70] ^= 0xFF                       # inside the zstd frame
    bad = _resealed(raw)
    with pytest.raises(CorruptLogError, match="zstd payload does not decompress") as e:
        decode_batches(bad)[0].records()
    assert e.value.position == 0
    with pytest.raises(CorruptLogError, match="zstd"):
        BatchEncoder().add_batches(bad)   # never stored


def test_compressed_records_disagreeing_with_the_count_are_refused():
    enc = BatchEncoder()
    enc.encode([b"a", b"b", b"c"], 1000)
    enc.compress(1)
    raw = bytearray(bytes(enc.view()))
    struct.pack_into(">i", raw, 57, 4)    # records count 4 ...
    struct.pack_into(">i", raw, 23, 3)    # ... and lastOffsetDelta agreeing with it
    with pytest.raises(CorruptLogError, match="disagree with its record count|too few"):
        decode_batches(_resealed(raw))[0].records()
    struct.pack_into(">i", raw, 23, 1)    # lastOffsetDelta disagreeing with the count
    with pytest.raises(CorruptLogError, match="lastOffsetDelta"):
        decode_batches(_resealed(raw))


def test_unknown_codec_is_refused():
    enc = BatchEncoder()
    enc.encode([b"a"], 1000)
    raw = bytearray(bytes(enc.view()))
    raw[22] = 5                           # codec 5: not defined
    with pytest.raises(CorruptLogError, match="attributes"):
        decode_batches(_resealed(raw))
    with pytest.raises(ValueError, match="unknown compression 'brotli'"):
        us.compression.codec_id("brotli")


def _without(blocked: tuple, body: str) -> str:
    """Run ``body`` in a fresh interpreter where the ``blocked`` modules cannot be imported."""
    code = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked) + body
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_missing_codec_library_is_a_specific_error(tmp_path):
    """Without any library for a codec, writing or reading a compressed batch
    names the codec and the packages; uncompressed logs keep working."""
    with us.Log(tmp_path / "log") as log:
        part = log.create_topic("t").partition(0)
        part.append([b"plain"])
        part.append([b"squeezed"], compression="zstd")
    body = f"""
import unstoppable as us
from unstoppable.errors import CodecUnavailableError
with us.Log({str(tmp_path / 'log')!r}) as log:
    p = log.topic("t").partition(0)
    assert bytes(p.read(0, max_records=1)[0].value) == b"plain"
    try:
        p.read(1)
    except CodecUnavailableError as e:
        assert "zstd" in str(e) and "zstandard or cramjam" in str(e), e
    else:
        raise SystemExit("read did not fail")
    try:
        p.append([b"x"], compression="lz4")
    except CodecUnavailableError as e:
        assert "lz4" in str(e) and "lz4 or cramjam" in str(e), e
    else:
        raise SystemExit("append did not fail")
print("ok")
"""
    assert _without(("cramjam", "zstandard", "lz4", "lz4.frame"), body) == "ok"
    assert issubclass(CodecUnavailableError, ImportError)


@pytest.mark.parametrize("blocked", [(), ("zstandard", "lz4", "lz4.frame"), ("cramjam",)])
def test_every_library_choice_reads_what_the_others_wrote(tmp_path, blocked):
    """The fastest libraries (zstandard, lz4) and their fallbacks (cramjam;
    zlib and python-snappy without it) write and read the same framings."""
    codecs = ["gzip", "snappy", "lz4", "zstd"]
    with us.Log(tmp_path / "log") as log:
        part = log.create_topic("t").partition(0)
        for c in codecs:
            part.append([b"%s record %d" % (c.encode(), i) for i in range(200)], compression=c)
    body = f"""
import unstoppable as us
from unstoppable import compression
from unstoppable.errors import CodecUnavailableError
libs = compression.libraries()
with us.Log({str(tmp_path / 'log')!r}) as log:
    p = log.topic("t").partition(0)
    for c in {codecs!r}:
        if libs[c] is None:
            continue
        p.append([b"%s record %d" % (c.encode(), i) for i in range(200, 400)], compression=c)
    got, off = [], 0
    while off < p.end_offset:              # every batch holds 200 records
        try:
            (b,) = p.read_batches(off, 1)
        except CodecUnavailableError:      # only snappy, without cramjam
            assert libs["snappy"] is None
        else:
            got.append((b.compression, [bytes(r.value) for r in b]))
        off += 200
print(sorted(set(libs.values()), key=str))
for c, values in got:
    assert values == [b"%s record %d" % (c.encode(), i) for i in range(len(values) and
                      int(values[0].split()[-1]), int(values[-1].split()[-1]) + 1)], c
"""
    printed = _without(blocked, body)
    with us.Log(tmp_path / "log") as log:       # and this process reads what the other wrote
        got = [(b.compression, len(b)) for b in log.topic("t").partition(0).read_batches(0, 1 << 30)]
    expect = {(): "['cramjam', 'lz4', 'zstandard']",
              ("zstandard", "lz4", "lz4.frame"): "['cramjam']",
              ("cramjam",): "[None, 'lz4', 'zlib', 'zstandard']"}[blocked]
    assert printed == expect
    written = [c for c in codecs if not (c == "snappy" and blocked == ("cramjam",))]
    assert got == [(c, 200) for c in codecs] + [(c, 200) for c in written]


def test_kafka_framings_of_other_writers_are_read(tmp_path):
    """zstd frames without a content size (librdkafka streams them), and
    several zstd or lz4 frames back to back, decompress whole; the lz4 this
    module writes has independent blocks, which Kafka's Java reader needs."""
    import lz4.frame
    import zstandard
    from unstoppable import compression
    data = b"".join(b"event %d " % i for i in range(50_000))
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(data)
    assert zstandard.frame_content_size(unsized) == -1
    assert bytes(compression.decompress(4, unsized)) == data
    two = zstandard.ZstdCompressor().compress(data[:1000]) + zstandard.ZstdCompressor().compress(data[1000:])
    assert bytes(compression.decompress(4, two)) == data
    assert bytes(compression.decompress(3, lz4.frame.compress(data[:7]) + lz4.frame.compress(data[7:]))) == data
    info = lz4.frame.get_frame_info(compression.compress(3, data))
    assert not info["block_linked"] and info["content_size"] == len(data)
    with pytest.raises(CorruptLogError, match="zstd payload does not decompress"):
        compression.decompress(4, zstandard.ZstdCompressor().compress(data) + b"junk", topic="t")
    with pytest.raises(CorruptLogError, match="lz4 payload does not decompress"):
        compression.decompress(3, lz4.frame.compress(data)[:-9], topic="t")


def test_topic_compression_setting(tmp_path):
    with us.Log(tmp_path / "log") as log:
        forced = log.create_topic("forced", compression="gzip").partition(0)
        forced.append([b"a" * 100] * 10)                      # the topic's codec
        forced.append([b"b" * 100] * 10, compression="lz4")   # the topic wins
        keep = log.create_topic("keep").partition(0)          # "producer" by default
        keep.append([b"c" * 100] * 10, compression="snappy")
        keep.append([b"d" * 100] * 10)
        comp = [b.compression for b in forced.read_batches(0)]
        assert comp == ["gzip", "gzip"]
        assert [b.compression for b in keep.read_batches(0)] == ["snappy", None]
        with pytest.raises(us.TopicConfigError, match="compression"):
            log.create_topic("bad", compression="brotli")


def test_control_batches_are_skipped_and_the_transactional_bit_carried(tmp_path):
    data = fr.encode_batch(0, [(10, None, b"txn data", [])], attributes=0x10)   # transactional
    marker = fr.encode_batch(0, [(11, b"\x00\x00\x00\x01", b"\x00\x00\x00\x00\x00\x00", [])],
                             attributes=0x30)                                  # control
    with us.Log(tmp_path / "log") as log:
        part = log.create_topic("t").partition(0)
        enc = BatchEncoder()
        enc.add_batches(data)
        part.append_encoded(enc)
        (b,) = part.read_batches(0)
        assert b.is_transactional and not b.is_control
        # A control batch is written only by a transaction coordinator, not taken from clients.
        with pytest.raises(CorruptLogError, match="control"):
            BatchEncoder().add_batches(marker)
    (cb,) = decode_batches(marker)
    assert cb.is_control


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_compressed_log_survives_a_torn_tail_at_every_byte(tmp_path, codec):
    """Recovery cuts a torn compressed batch at any byte, like a plain one."""
    import shutil
    src = tmp_path / "src"
    with us.Log(src) as log:
        part = log.create_topic("t").partition(0)
        part.append([b"first %d" % i for i in range(30)], compression=codec)
        before = os.path.getsize(_segments(part)[0])
        part.append([b"second %d" % i for i in range(30)], compression=codec)
        full = os.path.getsize(_segments(part)[0])
        rel = os.path.relpath(_segments(part)[0], src)
    for cut in range(before, full + 1):
        dst = tmp_path / "dst"
        shutil.copytree(src, dst)
        seg = dst / rel
        os.truncate(seg, cut)
        with us.Log(dst) as log:
            p = log.topic("t").partition(0)
            n = 60 if cut == full else 30
            assert p.end_offset == n, cut
            assert [bytes(r.value) for r in p.read(0, max_records=100)][-1] == \
                (b"second 29" if n == 60 else b"first 29")
            assert p.append([b"again"]) == n
        shutil.rmtree(dst)


def test_readers_decompress_transparently(tmp_path):
    """Arrow export, the Consumer's getmany and find-by-time read compressed
    batches like plain ones."""
    import asyncio
    pytest.importorskip("pyarrow")
    with us.Log(tmp_path / "log") as log:
        t = log.create_topic("t", partitions=2)
        for i, p in enumerate(t):
            p.append([(b"k%d" % j, b"v%d" % j, [("h", b"x")]) for j in range(5000)],
                     compression=["zstd", "lz4"][i], timestamp=7 + i)
        tbl = us.arrow.to_arrow(t)
        assert tbl.num_rows == 10000
        assert sorted(tbl.column("value").to_pylist()) == sorted([b"v%d" % j for j in range(5000)] * 2)
        assert t.partition(1).offset_for_time(8) == 0 and t.partition(0).offset_for_time(8) is None

        async def main():
            got = []
            async with us.Consumer(log, "t") as c:
                await c.seek_to_beginning()
                while len(got) < 10000:
                    batch = await c.getmany(max_records=3000, timeout_ms=1000)
                    for recs in batch.values():
                        got += [(r.partition, bytes(r.value), r.headers) for r in recs]
            return got

        got = asyncio.run(main())
        assert sorted(got) == sorted((p, b"v%d" % j, [("h", b"x")]) for p in (0, 1) for j in range(5000))


def test_a_damaged_attributes_field_is_never_read_as_a_control_batch(tmp_path):
    """The control bit lies inside the CRC: a batch whose attributes were damaged
    into "control" is reported as corrupt, never skipped with its records (found
    by the partition fuzz target)."""
    with us.Log(tmp_path / "log") as log:
        part = log.create_topic("t").partition(0)
        part.append([b"a%d" % i for i in range(5)])
        part.append([b"b%d" % i for i in range(5)])
        (seg,) = _segments(part)
    with open(seg, "r+b") as f:
        f.seek(21)                                         # attributes, big-endian i16
        f.write(struct.pack(">h", 0x20))
    with us.Log(tmp_path / "log") as log:
        part = log.topic("t").partition(0)
        with pytest.raises(CorruptLogError):
            part.read(0, max_records=100)
        with pytest.raises(CorruptLogError):
            part.read_batches(0)
        assert [bytes(r.value) for r in part.read(5)] == [b"b%d" % i for i in range(5)]


@pytest.mark.parametrize("codec", [None, "gzip"])
def test_add_batches_checks_record_timestamps_and_corrects_max_timestamp(tmp_path, codec):
    """Kafka's LogValidator for a CreateTime topic: every record inside the
    window, else InvalidTimestampError naming it; a header maxTimestamp other
    than the records' largest is set from the records and the CRC resealed."""
    from unstoppable.errors import InvalidTimestampError
    b = KBuilder(magic=2, compression_type=KCODEC[codec], is_transactional=False,
                 producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for i, ts in enumerate([1000, 5000, 3000]):
        b.append(i, timestamp=ts, key=None, value=b"v%d" % i, headers=[])
    raw = bytearray(b.build())
    assert struct.unpack_from(">q", raw, 35) == (5000,)
    with pytest.raises(InvalidTimestampError, match="timestamp 5000 of record 1 of batch 0"):
        BatchEncoder().add_batches(bytes(raw), 0, 4999)
    with pytest.raises(InvalidTimestampError, match="timestamp 1000 of record 0"):
        BatchEncoder().add_batches(bytes(raw), 1001, 10_000)
    struct.pack_into(">q", raw, 35, 1000)           # a client that understated it
    wrong = _resealed(raw)
    enc = BatchEncoder()
    assert enc.add_batches(wrong, 1000, 5000) == 3
    assert enc.max_timestamp == 5000
    stored = bytes(enc.view())
    assert struct.unpack_from(">q", stored, 35) == (5000,)
    assert fr.crc32c(stored[21:]) == struct.unpack_from(">I", stored, 17)[0]
    with us.Log(tmp_path / "log") as log:
        part = log.create_topic("t").partition(0)
        part.append_encoded(enc)
        assert part.offset_for_time(4000) == 1
        assert [r.timestamp for r in part.read(0)] == [1000, 5000, 3000]
        assert log.verify().ok
