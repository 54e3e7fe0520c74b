"""Kafka's RecordBatch v2, translated to and from the log's records.

This module is the server's whole data-path translation, behind two calls:

* :func:`decode_batches` turns the ``records`` bytes of a Produce request into
  :class:`ProducedBatch` objects (records as ``(key, value, headers,
  timestamp)`` tuples that ``Partition.append`` takes, plus the idempotent
  producer fields), after checking each batch's header and CRC-32C and
  decompressing it;
* :func:`encode_records` turns the Record views ``Partition.read`` returns into
  one uncompressed RecordBatch v2 for a Fetch response.

The log keeps its own batch format on disk (docs/FORMAT.md section 4, magic 1),
so every produce and fetch re-encodes. Once the log stores RecordBatch v2 itself
(issue 16), Produce can append the client's batch as it is after rewriting its
base offset and Fetch can hand segment byte ranges to ``sendfile``; only the
callers of these two functions change.

RecordBatch v2 (big-endian; Kafka's ``DefaultRecordBatch``):

====== ==== ======================= =========================================
offset size field                   meaning
====== ==== ======================= =========================================
0      8    baseOffset              offset of the first record
8      4    batchLength             bytes after this field
12     4    partitionLeaderEpoch
16     1    magic                   2
17     4    crc                     CRC-32C of bytes 21 .. end
21     2    attributes              bits 0-2 compression, 3 timestamp type,
                                    4 transactional, 5 control
23     4    lastOffsetDelta
27     8    baseTimestamp
35     8    maxTimestamp
43     8    producerId              -1: not idempotent
51     2    producerEpoch
53     4    baseSequence
57     4    record count
61     ..   records (compressed as one block when attributes say so)
====== ==== ======================= =========================================

Record: length (varint), attributes (i8), timestampDelta (varlong),
offsetDelta (varint), key length (varint, -1 null), key, value length, value,
header count (varint), then per header: key length, key (UTF-8), value
length (-1 null), value. Varints are zigzag-encoded.
"""
from __future__ import annotations

import struct
import zlib

from unstoppable._core.hashing import crc32c

__all__ = [
    "ProducedBatch",
    "InvalidBatchError",
    "UnsupportedCompressionError",
    "decode_batches",
    "encode_records",
    "COMPRESSION_NAMES",
    "HEADER_SIZE",
]

HEADER_SIZE = 61
_HEAD = struct.Struct(">qiibIhiqqqhii")
_CRC_START = 21
COMPRESSION_NAMES = {0: None, 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
_XERIAL_MAGIC = b"\x82SNAPPY\x00"


class InvalidBatchError(ValueError):
    """A produced batch failed a check (length, magic, CRC, record framing).
    The server answers it with Kafka's CORRUPT_MESSAGE (2)."""


class UnsupportedCompressionError(InvalidBatchError):
    """The batch names a compression codec that is unknown or not installed.
    The server answers it with UNSUPPORTED_COMPRESSION_TYPE (76)."""


class ProducedBatch:
    """One decoded batch: its records and its idempotent-producer fields."""

    __slots__ = ("records", "producer_id", "producer_epoch", "base_sequence",
                 "transactional", "control", "compression")

    def __init__(self, records, producer_id, producer_epoch, base_sequence,
                 transactional, control, compression):
        self.records = records            # list of (key, value, headers, timestamp)
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.base_sequence = base_sequence
        self.transactional = transactional
        self.control = control
        self.compression = compression    # None or a COMPRESSION_NAMES value


# ----------------------------------------------------------------- codecs

def _gunzip(data: bytes) -> bytes:
    return zlib.decompress(data, 47)      # 32 + 15: gzip or zlib header, auto-detected


def _unsnappy(data: bytes) -> bytes:
    import cramjam
    if data[:8] == _XERIAL_MAGIC:
        # Java's xerial SnappyOutputStream framing, which Kafka's own clients
        # and kafka-python write: 8-byte magic, two i32 versions, then blocks of
        # [i32 length][raw snappy].
        out = []
        pos = 16
        n = len(data)
        while pos < n:
            if pos + 4 > n:
                raise InvalidBatchError("truncated xerial snappy block header")
            (ln,) = struct.unpack_from(">i", data, pos)
            pos += 4
            if ln < 0 or pos + ln > n:
                raise InvalidBatchError("xerial snappy block runs past the batch")
            out.append(bytes(cramjam.snappy.decompress_raw(data[pos:pos + ln])))
            pos += ln
        return b"".join(out)
    return bytes(cramjam.snappy.decompress_raw(data))


def _unlz4(data: bytes) -> bytes:
    import lz4.frame
    return lz4.frame.decompress(data)


def _unzstd(data: bytes) -> bytes:
    import cramjam
    return bytes(cramjam.zstd.decompress(data))


_DECOMPRESS = {1: _gunzip, 2: _unsnappy, 3: _unlz4, 4: _unzstd}


def _decompress(codec: int, data: bytes) -> bytes:
    fn = _DECOMPRESS.get(codec)
    if fn is None:
        raise UnsupportedCompressionError(f"unknown compression codec {codec} in the batch attributes")
    try:
        return fn(data)
    except ImportError as e:
        raise UnsupportedCompressionError(
            f"compression codec {COMPRESSION_NAMES[codec]} needs {e.name!r}: "
            "pip install 'unstoppable[server]'") from None
    except InvalidBatchError:
        raise
    except Exception as e:  # each codec library raises its own error type
        raise InvalidBatchError(
            f"{COMPRESSION_NAMES[codec]} data of the batch does not decompress: {e}") from None


# ----------------------------------------------------------------- varints

def _varint(buf, pos: int, end: int):
    """Zigzag varint at ``pos``: (value, next position)."""
    shift = 0
    result = 0
    while True:
        if pos >= end:
            raise InvalidBatchError("record varint runs past the batch")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 63:
            raise InvalidBatchError("record varint longer than 10 bytes")
    return (result >> 1) ^ -(result & 1), pos


def _put_varint(out: bytearray, v: int) -> None:
    v = (v << 1) ^ (v >> 63)
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


# ----------------------------------------------------------------- decode

def _decode_records(buf, pos: int, end: int, count: int, base_ts: int, log_append_time: bool,
                    max_ts: int) -> list:
    records = []
    for _ in range(count):
        length, pos = _varint(buf, pos, end)
        rec_end = pos + length
        if length < 0 or rec_end > end:
            raise InvalidBatchError("record length runs past the batch")
        pos += 1                                   # record attributes: unused
        ts_delta, pos = _varint(buf, pos, rec_end)
        _, pos = _varint(buf, pos, rec_end)         # offsetDelta: offsets are the log's
        kl, pos = _varint(buf, pos, rec_end)
        if kl < -1 or pos + max(kl, 0) > rec_end:
            raise InvalidBatchError("record key runs past the record")
        key = None if kl < 0 else bytes(buf[pos:pos + kl])
        pos += max(kl, 0)
        vl, pos = _varint(buf, pos, rec_end)
        if vl < -1 or pos + max(vl, 0) > rec_end:
            raise InvalidBatchError("record value runs past the record")
        value = None if vl < 0 else bytes(buf[pos:pos + vl])
        pos += max(vl, 0)
        hn, pos = _varint(buf, pos, rec_end)
        if hn < 0:
            raise InvalidBatchError("negative header count")
        headers = []
        for _ in range(hn):
            hkl, pos = _varint(buf, pos, rec_end)
            if hkl < 0 or pos + hkl > rec_end:
                raise InvalidBatchError("header key runs past the record")
            try:
                hk = bytes(buf[pos:pos + hkl]).decode()
            except UnicodeDecodeError:
                raise InvalidBatchError("header key is not UTF-8") from None
            pos += hkl
            hvl, pos = _varint(buf, pos, rec_end)
            if hvl < -1 or pos + max(hvl, 0) > rec_end:
                raise InvalidBatchError("header value runs past the record")
            hv = None if hvl < 0 else bytes(buf[pos:pos + hvl])
            pos += max(hvl, 0)
            headers.append((hk, hv))
        if pos != rec_end:
            raise InvalidBatchError("record length does not match its fields")
        ts = max_ts if log_append_time else base_ts + ts_delta
        records.append((key, value, headers, ts) if headers else (key, value, None, ts))
    if pos != end:
        raise InvalidBatchError("bytes left over after the batch's records")
    return records


def decode_batches(data) -> list[ProducedBatch]:
    """decode_batches(data) -> list[ProducedBatch]

    Every RecordBatch v2 in ``data`` (a Produce request's records field),
    checked and decompressed. Raises InvalidBatchError on the first bad one;
    nothing is returned for a request that holds one.
    """
    mv = memoryview(data)
    n = len(mv)
    pos = 0
    out = []
    while pos < n:
        if n - pos < HEADER_SIZE:
            raise InvalidBatchError(f"{n - pos} bytes left: shorter than a batch header")
        (_, blen, _, magic, crc, attrs, last_delta, base_ts, max_ts, pid, epoch, seq,
         count) = _HEAD.unpack_from(mv, pos)
        if magic != 2:
            raise InvalidBatchError(f"record batch magic {magic}: only v2 (magic 2) is accepted")
        end = pos + 12 + blen
        if blen < HEADER_SIZE - 12 or end > n:
            raise InvalidBatchError(f"batch length {blen} does not fit the {n - pos} bytes left")
        if crc32c(mv[pos + _CRC_START:end]) != crc:
            raise InvalidBatchError("record batch CRC-32C mismatch")
        if count < 0 or last_delta != count - 1:
            raise InvalidBatchError(
                f"record count {count} does not match lastOffsetDelta {last_delta}")
        codec = attrs & 7
        if codec:
            body = _decompress(codec, bytes(mv[pos + HEADER_SIZE:end]))
            recs = _decode_records(body, 0, len(body), count, base_ts, bool(attrs & 8), max_ts)
        else:
            recs = _decode_records(mv, pos + HEADER_SIZE, end, count, base_ts, bool(attrs & 8),
                                   max_ts)
        out.append(ProducedBatch(recs, pid, epoch, seq, bool(attrs & 16), bool(attrs & 32),
                                 COMPRESSION_NAMES.get(codec)))
        pos = end
    return out


# ----------------------------------------------------------------- encode

def encode_records(records) -> bytes:
    """encode_records(records) -> bytes

    One uncompressed RecordBatch v2 holding ``records`` (Record views of one
    partition with dense offsets, as ``Partition.read`` returns them).
    """
    first = records[0]
    base = first.offset
    base_ts = first.timestamp
    max_ts = base_ts
    body = bytearray()
    rec = bytearray()
    for i, r in enumerate(records):
        ts = r.timestamp
        if ts > max_ts:
            max_ts = ts
        rec.clear()
        rec.append(0)
        _put_varint(rec, ts - base_ts)
        _put_varint(rec, r.offset - base)
        k = r.key
        if k is None:
            rec.append(1)                      # zigzag(-1)
        else:
            _put_varint(rec, len(k))
            rec += k
        v = r.value
        if v is None:
            rec.append(1)
        else:
            _put_varint(rec, len(v))
            rec += v
        hs = r.headers
        _put_varint(rec, len(hs))
        for hk, hv in hs:
            hkb = hk.encode()
            _put_varint(rec, len(hkb))
            rec += hkb
            if hv is None:
                rec.append(1)
            else:
                _put_varint(rec, len(hv))
                rec += hv
        _put_varint(body, len(rec))
        body += rec
    n = len(records)
    last_delta = records[-1].offset - base
    tail = struct.pack(">hiqqqhii", 0, last_delta, base_ts, max_ts, -1, -1, -1, n) + body
    crc = crc32c(tail)
    return struct.pack(">qiibI", base, 9 + len(tail), 0, 2, crc) + tail
