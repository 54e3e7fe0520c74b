"""An independent reference decoder (and tiny encoder) for the on-disk format.

It implements docs/FORMAT.md with nothing but ``struct`` and the ``crc32c``
package, so it can check what the compiled core writes without sharing a line
of code with it. It deliberately imports nothing from ``unstoppable``.

Everything here is strict: any byte that does not follow FORMAT.md raises
:class:`FormatError` with a short ``reason`` code, never a silent skip.
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field

import crc32c as _crc32c

__all__ = [
    "FormatError", "Record", "Batch", "Head", "Partition",
    "BATCH_HEADER", "BATCH_HEADER_SIZE", "OFFSET_ENTRY", "TIME_ENTRY", "HEAD_FIELDS",
    "HEAD_FILE_SIZE", "HEAD_MAGIC", "crc32c", "read_varint", "put_varint", "zigzag",
    "unzigzag", "decode_batch", "decode_batches", "read_segment", "decode_offset_index",
    "decode_time_index", "read_offset_index", "read_time_index", "decode_head", "read_head",
    "segment_bases", "segment_name", "read_partition", "encode_record", "encode_batch",
    "encode_batch_v1", "BATCH_HEADER_V1", "BATCH_HEADER_SIZE_V1",
    "expected_index_entries",
]

# ---------------------------------------------------------------------------
# Constants (FORMAT.md sections 4-8)

#: Format 2 (Kafka RecordBatch v2), big-endian: baseOffset, batchLength,
#: partitionLeaderEpoch, magic, crc, attributes, lastOffsetDelta,
#: baseTimestamp, maxTimestamp, producerId, producerEpoch, baseSequence, records count
BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")
BATCH_HEADER_SIZE = 61
CRC_START = 21
MAGIC = 2
PARTITION_LEADER_EPOCH = 0
MIN_RECORD_SIZE = 7
#: Format 1 (read only), little-endian: base_offset, length, crc, magic,
#: attributes, producer_epoch, record_count, first_timestamp, max_timestamp,
#: producer_id, base_sequence
BATCH_HEADER_V1 = struct.Struct("<qIIBBhIqqqi")
BATCH_HEADER_SIZE_V1 = 52
CRC_START_V1 = 16
MAGIC_V1 = 1
MIN_RECORD_SIZE_V1 = 5
MAX_BATCH_LENGTH = 0x7FFFFFFF
ATTR_COMPRESSION = 0x07
#: Timestamp type (FORMAT.md 4.1): set = LogAppendTime, every record's
#: timestamp is the batch's maxTimestamp (the time the log appended it).
ATTR_LOG_APPEND_TIME = 0x08
ATTR_CONTROL = 0x20
ATTR_RESERVED = 0xFF80
CODECS = {0: None, 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}

OFFSET_ENTRY = struct.Struct("<II")    # relative_offset, position
TIME_ENTRY = struct.Struct("<qII")     # max_timestamp, relative_offset, position

HEAD_FILE_SIZE = 4096
HEAD_MAGIC = 0x44485355  # b"USHD" read as a little-endian u32
HEAD_VERSION = 1
HEAD_FLAG_DELETED = 1
#: magic, version, seq, start_offset, end_offset, active_base, active_size,
#: ckpt_base, ckpt_size, ckpt_end_offset, boot_id, max_timestamp,
#: active_created, flags, oi_count, ti_count, oi_last_pos, ti_last_ts
HEAD_FIELDS = struct.Struct("<IIQqqqQqQq16sqqQQQQq")
HEAD_USED = 144

SEGMENT_RE = re.compile(r"^(\d{20})\.log$")

assert BATCH_HEADER.size == BATCH_HEADER_SIZE
assert BATCH_HEADER_V1.size == BATCH_HEADER_SIZE_V1
assert HEAD_FIELDS.size == HEAD_USED


class FormatError(ValueError):
    """Bytes that do not follow FORMAT.md. ``reason`` is one of: incomplete,
    magic, length, crc, attributes, count, records, timestamps, utf8, offsets,
    index, head."""

    def __init__(self, reason: str, message: str, position: int | None = None):
        super().__init__(f"{reason}: {message}" + ("" if position is None else f" (at {position})"))
        self.reason = reason
        self.position = position


def crc32c(data) -> int:
    """CRC-32C (Castagnoli), as the `crc32c` package computes it."""
    return _crc32c.crc32c(bytes(data))


# ---------------------------------------------------------------------------
# Varints (FORMAT.md 1)

def read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    """Unsigned LEB128 from buf[pos:end] -> (value, new_pos); at most 10 bytes."""
    value = 0
    shift = 0
    for i in range(10):
        if pos >= end:
            raise FormatError("records", "varint runs past its bounds", pos)
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
    raise FormatError("records", "varint longer than 10 bytes", pos)


def put_varint(v: int) -> bytes:
    if v < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def zigzag(v: int) -> int:
    return ((v << 1) ^ (v >> 63)) & 0xFFFFFFFFFFFFFFFF


def unzigzag(v: int) -> int:
    return (v >> 1) ^ -(v & 1)


# ---------------------------------------------------------------------------
# Batches and records (FORMAT.md 4)

@dataclass
class Record:
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


@dataclass
class Batch:
    position: int            # byte position of the batch in its buffer/segment
    base_offset: int
    length: int              # the whole batch, header included (batchLength + 12 in format 2)
    crc: int
    magic: int
    attributes: int
    producer_epoch: int
    record_count: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    base_sequence: int
    partition_leader_epoch: int = -1
    records: list[Record] = field(default_factory=list)

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.record_count

    @property
    def compression(self) -> str | None:
        return CODECS[self.attributes & ATTR_COMPRESSION] if self.magic == MAGIC else None


def _nullable_v1(buf, pos: int, end: int) -> tuple[bytes | None, int]:
    """A format-1 length varint (0 = null, else length + 1) and its bytes."""
    n, pos = read_varint(buf, pos, end)
    if n == 0:
        return None, pos
    n -= 1
    if n > end - pos:
        raise FormatError("records", f"a length of {n} runs past the record", pos)
    return bytes(buf[pos:pos + n]), pos + n


def _svarint(buf, pos: int, end: int) -> tuple[int, int]:
    v, pos = read_varint(buf, pos, end)
    return unzigzag(v), pos


def _nullable_v2(buf, pos: int, end: int) -> tuple[bytes | None, int]:
    """A format-2 zigzag length (-1 = null) and its bytes."""
    n, pos = _svarint(buf, pos, end)
    if n == -1:
        return None, pos
    if n < 0 or n > end - pos:
        raise FormatError("records", f"a length of {n} runs past the record", pos)
    return bytes(buf[pos:pos + n]), pos + n


def _decompress(codec: int, data: bytes, pos: int) -> bytes:
    """Kafka's framings, each through its reference library (not cramjam,
    which the library writes with): gzip member, xerial-or-raw snappy, LZ4
    frame, zstd frame."""
    try:
        if codec == 1:
            import zlib
            return zlib.decompress(data, 16 + zlib.MAX_WBITS)
        if codec == 2:
            import snappy
            if data[:8] == b"\x82SNAPPY\x00":
                out, p = bytearray(), 16
                while p < len(data):
                    (n,) = struct.unpack_from(">i", data, p)
                    out += snappy.uncompress(data[p + 4:p + 4 + n])
                    p += 4 + n
                return bytes(out)
            return snappy.uncompress(data)
        if codec == 3:
            import lz4.frame
            return lz4.frame.decompress(data)
        if codec == 4:
            import zstandard
            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    except ImportError:
        raise
    except Exception as e:
        raise FormatError("compression", f"{CODECS[codec]} payload does not decompress: {e}", pos) from None
    raise FormatError("attributes", f"unknown compression codec {codec}", pos)


def _records_v2(buf, p: int, bend: int, base_offset: int, first_ts: int, count: int) -> list[Record]:
    out = []
    for i in range(count):
        body, p = _svarint(buf, p, bend)
        if body < 0 or body > bend - p:
            raise FormatError("records", f"record {i} body of {body} bytes runs past the batch", p)
        rend = p + body
        if p >= rend:
            raise FormatError("records", f"record {i} has no attributes byte", p)
        p += 1          # record attributes: unused
        delta, p = _svarint(buf, p, rend)
        odelta, p = _svarint(buf, p, rend)
        if odelta != i:
            raise FormatError("records", f"record {i} has offsetDelta {odelta}", p)
        key, p = _nullable_v2(buf, p, rend)
        value, p = _nullable_v2(buf, p, rend)
        nh, p = _svarint(buf, p, rend)
        if nh < 0:
            raise FormatError("records", f"record {i} has {nh} headers", p)
        headers = []
        for _ in range(nh):
            klen, p = _svarint(buf, p, rend)
            if klen < 0 or klen > rend - p:
                raise FormatError("records", "header key runs past the record", p)
            try:
                hk = bytes(buf[p:p + klen]).decode("utf-8")
            except UnicodeDecodeError as e:
                raise FormatError("utf8", f"header key is not UTF-8: {e}", p) from None
            p += klen
            hv, p = _nullable_v2(buf, p, rend)
            headers.append((hk, hv))
        if p != rend:
            raise FormatError("records", f"record {i} has {rend - p} unparsed bytes", p)
        out.append(Record(base_offset + i, first_ts + delta, key, value, headers))
    if p != bend:
        raise FormatError("records", f"{bend - p} bytes after the last record", p)
    return out


def _records_v1(buf, p: int, bend: int, base_offset: int, first_ts: int, count: int) -> list[Record]:
    out = []
    for i in range(count):
        body, p = read_varint(buf, p, bend)
        if body > bend - p:
            raise FormatError("records", f"record {i} body of {body} bytes runs past the batch", p)
        rend = p + body
        delta, p = read_varint(buf, p, rend)
        key, p = _nullable_v1(buf, p, rend)
        value, p = _nullable_v1(buf, p, rend)
        nh, p = read_varint(buf, p, rend)
        headers = []
        for _ in range(nh):
            klen, p = read_varint(buf, p, rend)
            if klen > rend - p:
                raise FormatError("records", "header key runs past the record", p)
            try:
                hk = bytes(buf[p:p + klen]).decode("utf-8")
            except UnicodeDecodeError as e:
                raise FormatError("utf8", f"header key is not UTF-8: {e}", p) from None
            p += klen
            hv, p = _nullable_v1(buf, p, rend)
            headers.append((hk, hv))
        if p != rend:
            raise FormatError("records", f"record {i} has {rend - p} unparsed bytes", p)
        out.append(Record(base_offset + i, first_ts + unzigzag(delta), key, value, headers))
    if p != bend:
        raise FormatError("records", f"{bend - p} bytes after the last record", p)
    return out


def decode_batch(buf, pos: int = 0, end: int | None = None, *, check_crc: bool = True,
                 strict_timestamps: bool = True) -> Batch:
    """Decode and check the batch at ``buf[pos:]`` (not reading past ``end``),
    of either format: the magic byte at ``pos + 16`` says which."""
    buf = memoryview(buf).cast("B") if not isinstance(buf, (bytes, bytearray)) else buf
    if end is None:
        end = len(buf)
    avail = end - pos
    if avail < 17:
        raise FormatError("incomplete", f"{avail} bytes, fewer than a batch header", pos)
    magic = buf[pos + 16]
    if magic == MAGIC:
        if avail < BATCH_HEADER_SIZE:
            raise FormatError("incomplete", f"{avail} bytes, fewer than a batch header", pos)
        (base_offset, blen, leader_epoch, _magic, crc, attributes, last_delta, first_ts, max_ts,
         producer_id, producer_epoch, base_sequence, record_count) = BATCH_HEADER.unpack_from(buf, pos)
        attributes &= 0xFFFF
        length = blen + 12
        hsize, crc_start = BATCH_HEADER_SIZE, CRC_START
    elif magic == MAGIC_V1:
        if avail < BATCH_HEADER_SIZE_V1:
            raise FormatError("incomplete", f"{avail} bytes, fewer than a batch header", pos)
        (base_offset, length, crc, _magic, attributes, producer_epoch, record_count,
         first_ts, max_ts, producer_id, base_sequence) = BATCH_HEADER_V1.unpack_from(buf, pos)
        leader_epoch, last_delta = -1, record_count - 1
        hsize, crc_start = BATCH_HEADER_SIZE_V1, CRC_START_V1
    else:
        raise FormatError("magic", f"magic {magic}, expected {MAGIC} (or {MAGIC_V1})", pos)
    if length < hsize or length > MAX_BATCH_LENGTH:
        raise FormatError("length", f"length {length}", pos)
    if avail < length:
        raise FormatError("incomplete", f"batch claims {length} bytes, {avail} available", pos)
    if check_crc:
        actual = crc32c(buf[pos + crc_start:pos + length])
        if actual != crc:
            raise FormatError("crc", f"stored 0x{crc:08x}, computed 0x{actual:08x}", pos)
    if magic == MAGIC_V1 and attributes != 0:
        raise FormatError("attributes", f"attributes 0x{attributes:02x}", pos)
    if magic == MAGIC and (attributes & ATTR_RESERVED or (attributes & ATTR_COMPRESSION) > 4):
        raise FormatError("attributes", f"attributes 0x{attributes:04x}", pos)
    if magic == MAGIC and leader_epoch != PARTITION_LEADER_EPOCH:
        # Outside the CRC, but always written 0 (FORMAT.md 4.1).
        raise FormatError("header", f"partitionLeaderEpoch {leader_epoch}, written as 0", pos)
    if record_count <= 0:
        raise FormatError("count", "record_count is 0", pos)
    if last_delta != record_count - 1:
        raise FormatError("count", f"lastOffsetDelta {last_delta} with {record_count} records", pos)
    b = Batch(pos, base_offset, length, crc, magic, attributes, producer_epoch, record_count,
              first_ts, max_ts, producer_id, base_sequence, leader_epoch)
    if magic == MAGIC_V1:
        if record_count * MIN_RECORD_SIZE_V1 > length - hsize:
            raise FormatError("records", f"{record_count} records cannot fit in {length} bytes", pos)
        b.records = _records_v1(buf, pos + hsize, pos + length, base_offset, first_ts, record_count)
    else:
        codec = attributes & ATTR_COMPRESSION
        if codec:
            data = _decompress(codec, bytes(buf[pos + hsize:pos + length]), pos)
            b.records = _records_v2(data, 0, len(data), base_offset, first_ts, record_count)
        else:
            if record_count * MIN_RECORD_SIZE > length - hsize:
                raise FormatError("records", f"{record_count} records cannot fit in {length} bytes", pos)
            b.records = _records_v2(buf, pos + hsize, pos + length, base_offset, first_ts, record_count)
    log_append_time = magic == MAGIC and attributes & ATTR_LOG_APPEND_TIME
    if strict_timestamps:
        if b.records[0].timestamp != first_ts:
            raise FormatError("timestamps", "first record's timestamp_delta is not 0", pos)
        if not log_append_time and max(r.timestamp for r in b.records) != max_ts:
            raise FormatError("timestamps", "max_timestamp is not the largest record timestamp", pos)
    if log_append_time:
        # The records keep the deltas their writer gave them; the batch's
        # maxTimestamp is every record's timestamp (Kafka's KIP-32).
        for r in b.records:
            r.timestamp = max_ts
    return b


def decode_batches(buf, start: int = 0, end: int | None = None, *,
                   expected_offset: int | None = None, **kw) -> list[Batch]:
    """Every batch in buf[start:end], back to back, with consecutive offsets
    (the first one must be ``expected_offset`` when given)."""
    if end is None:
        end = len(buf)
    out = []
    pos = start
    expect = expected_offset
    while pos < end:
        b = decode_batch(buf, pos, end, **kw)
        if expect is not None and b.base_offset != expect:
            raise FormatError("offsets", f"batch base_offset {b.base_offset}, expected {expect}", pos)
        out.append(b)
        expect = b.next_offset
        pos += b.length
    return out


def read_segment(path, limit: int | None = None, **kw) -> list[Batch]:
    """The batches of a ``.log`` file (up to ``limit`` bytes: the head's
    active_size for the active segment). Its first batch must carry the
    segment's base offset (the file name)."""
    with open(path, "rb") as f:
        data = f.read() if limit is None else f.read(limit)
    if limit is not None and len(data) < limit:
        raise FormatError("incomplete", f"{path} has {len(data)} bytes, fewer than {limit}")
    base = int(os.path.basename(path)[:-4])
    return decode_batches(data, expected_offset=base, **kw)


# ---------------------------------------------------------------------------
# Indexes (FORMAT.md 5, 6)

def decode_offset_index(data) -> list[tuple[int, int]]:
    """[(relative_offset, position)] from offset-index bytes (strictly increasing)."""
    if len(data) % OFFSET_ENTRY.size:
        raise FormatError("index", f"offset index of {len(data)} bytes is not a multiple of 8")
    out = [tuple(e) for e in OFFSET_ENTRY.iter_unpack(data)]
    for i in range(1, len(out)):
        if not (out[i][0] > out[i - 1][0] and out[i][1] > out[i - 1][1]):
            raise FormatError("index", f"offset index entry {i} {out[i]} does not increase")
    return out


def decode_time_index(data) -> list[tuple[int, int, int]]:
    """[(max_timestamp, relative_offset, position)] from time-index bytes."""
    if len(data) % TIME_ENTRY.size:
        raise FormatError("index", f"time index of {len(data)} bytes is not a multiple of 16")
    out = [tuple(e) for e in TIME_ENTRY.iter_unpack(data)]
    for i in range(1, len(out)):
        if not (out[i][0] >= out[i - 1][0] and out[i][1] > out[i - 1][1]
                and out[i][2] > out[i - 1][2]):
            raise FormatError("index", f"time index entry {i} {out[i]} is out of order")
    return out


def read_offset_index(path, count: int | None = None):
    with open(path, "rb") as f:
        data = f.read()
    if count is not None:
        data = data[:count * OFFSET_ENTRY.size]
    return decode_offset_index(data)


def read_time_index(path, count: int | None = None):
    with open(path, "rb") as f:
        data = f.read()
    if count is not None:
        data = data[:count * TIME_ENTRY.size]
    return decode_time_index(data)


def expected_index_entries(batches: list[Batch], segment_base: int, interval: int):
    """The index entries FORMAT.md 7 says a segment holding ``batches`` gets:
    ([(rel, pos)], [(max_ts, rel, pos)])."""
    oi, ti = [], []
    last_pos, last_ts, run_ts = 0, -1, -1
    for b in batches:
        run_ts = max(run_ts, b.max_timestamp)
        if b.position == 0 or b.position - last_pos < max(interval, 1):
            continue
        rel = b.base_offset - segment_base
        oi.append((rel, b.position))
        last_pos = b.position
        if run_ts > last_ts:
            ti.append((run_ts, rel, b.position))
            last_ts = run_ts
    return oi, ti


# ---------------------------------------------------------------------------
# Partition head (FORMAT.md 8)

@dataclass
class Head:
    magic: int
    version: int
    seq: int
    start_offset: int
    end_offset: int
    active_base: int
    active_size: int
    ckpt_base: int
    ckpt_size: int
    ckpt_end_offset: int
    boot_id: bytes
    max_timestamp: int
    active_created: int
    flags: int
    oi_count: int
    ti_count: int
    oi_last_pos: int
    ti_last_ts: int

    @property
    def deleted(self) -> bool:
        return bool(self.flags & HEAD_FLAG_DELETED)


def decode_head(data) -> Head:
    if len(data) != HEAD_FILE_SIZE:
        raise FormatError("head", f"head file is {len(data)} bytes, not {HEAD_FILE_SIZE}")
    h = Head(*HEAD_FIELDS.unpack_from(data, 0))
    if h.magic != HEAD_MAGIC or bytes(data[0:4]) != b"USHD":
        raise FormatError("head", f"head magic 0x{h.magic:08x}")
    if h.version != HEAD_VERSION:
        raise FormatError("head", f"head version {h.version}")
    if h.seq & 1:
        raise FormatError("head", f"odd seq {h.seq}: a writer is (or died) mid-update")
    if any(bytes(data[HEAD_USED:])):
        raise FormatError("head", "reserved bytes 144..4095 are not zero")
    if h.flags & ~HEAD_FLAG_DELETED:
        raise FormatError("head", f"unknown flag bits 0x{h.flags:x}")
    return h


def read_head(path, tries: int = 1000) -> Head:
    """Read a head file the way FORMAT.md 8.2 tells an outside reader to:
    copy it, and accept the copy only if ``seq`` was even and unchanged."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(tries):
            data = os.pread(fd, HEAD_FILE_SIZE, 0)
            seq1 = struct.unpack_from("<Q", data, 8)[0]
            if seq1 & 1:
                continue
            seq2 = struct.unpack_from("<Q", os.pread(fd, 16, 0), 8)[0]
            if seq1 == seq2:
                return decode_head(data)
        raise FormatError("head", f"{path}: no consistent copy after {tries} tries")
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# A partition directory (FORMAT.md 2, 13)

def segment_name(base: int) -> str:
    return f"{base:020d}"


def segment_bases(pdir) -> list[int]:
    return sorted(int(m.group(1)) for m in map(SEGMENT_RE.match, os.listdir(pdir)) if m)


@dataclass
class Partition:
    head: Head
    segments: dict[int, list[Batch]]          # base -> batches
    sizes: dict[int, int]                     # base -> readable bytes
    offset_index: dict[int, list[tuple[int, int]]]
    time_index: dict[int, list[tuple[int, int, int]]]

    def records(self) -> list[Record]:
        return [r for base in sorted(self.segments) for b in self.segments[base] for r in b.records]

    def batches(self) -> list[Batch]:
        return [b for base in sorted(self.segments) for b in self.segments[base]]


def read_partition(pdir) -> Partition:
    """Read a partition exactly as FORMAT.md 13 allows a reader to: the head
    first, then every segment up to its readable size (the head's active_size
    for the active segment, the file size for sealed ones), the indexes up to
    the head's counts (active) or their file size (sealed). Checks that offsets
    are dense from segment to segment."""
    head = read_head(os.path.join(pdir, "head"))
    bases = [b for b in segment_bases(pdir) if b <= head.active_base]
    if head.active_base not in bases:
        raise FormatError("head", f"active segment {head.active_base} is missing")
    segs, sizes, ois, tis = {}, {}, {}, {}
    expect = None
    for base in bases:
        stem = os.path.join(pdir, segment_name(base))
        active = base == head.active_base
        limit = head.active_size if active else os.path.getsize(stem + ".log")
        if expect is not None and base != expect:
            raise FormatError("offsets", f"segment {base} follows one that ends at {expect}")
        batches = read_segment(stem + ".log", limit)
        segs[base], sizes[base] = batches, limit
        expect = batches[-1].next_offset if batches else base
        ois[base] = read_offset_index(stem + ".index", head.oi_count if active else None)
        tis[base] = read_time_index(stem + ".timeindex", head.ti_count if active else None)
    if expect != head.end_offset:
        raise FormatError("head", f"segments end at offset {expect}, head says {head.end_offset}")
    return Partition(head, segs, sizes, ois, tis)


# ---------------------------------------------------------------------------
# A minimal encoder (one batch), to compare bytes with what the library writes

def _put_svarint(v: int) -> bytes:
    return put_varint(zigzag(v))


def encode_record(ts_delta: int, key, value, headers=(), offset_delta: int = 0) -> bytes:
    """One format-2 record (Kafka's record encoding)."""
    def nullable(b):
        return _put_svarint(-1) if b is None else _put_svarint(len(b)) + bytes(b)

    body = bytearray(b"\x00") + _put_svarint(ts_delta) + _put_svarint(offset_delta)
    body += nullable(key) + nullable(value) + _put_svarint(len(headers))
    for hk, hv in headers:
        kb = hk.encode("utf-8")
        body += _put_svarint(len(kb)) + kb + nullable(hv)
    return _put_svarint(len(body)) + bytes(body)


def encode_batch(base_offset: int, records, *, producer_id: int = -1, producer_epoch: int = -1,
                 base_sequence: int = -1, attributes: int = 0) -> bytes:
    """records: [(timestamp, key, value, headers)] -> one sealed, uncompressed format-2 batch."""
    first_ts = records[0][0]
    max_ts = max(r[0] for r in records)
    body = b"".join(encode_record(ts - first_ts, k, v, h, i)
                    for i, (ts, k, v, h) in enumerate(records))
    length = BATCH_HEADER_SIZE + len(body)
    tail = struct.pack(">hiqqqhii", attributes, len(records) - 1, first_ts, max_ts, producer_id,
                       producer_epoch, base_sequence, len(records)) + body
    return struct.pack(">qiib", base_offset, length - 12, PARTITION_LEADER_EPOCH, MAGIC) + \
        struct.pack(">I", crc32c(tail)) + tail


def encode_batch_v1(base_offset: int, records) -> bytes:
    """records: [(timestamp, key, value, headers)] -> one format-1 batch, as
    the library wrote them before format 2 (to check that they are still read)."""
    def nullable(b):
        return put_varint(0) if b is None else put_varint(len(b) + 1) + bytes(b)

    def rec(ts_delta, key, value, headers):
        body = bytearray(put_varint(zigzag(ts_delta)))
        body += nullable(key) + nullable(value) + put_varint(len(headers))
        for hk, hv in headers:
            kb = hk.encode("utf-8")
            body += put_varint(len(kb)) + kb + nullable(hv)
        return put_varint(len(body)) + bytes(body)

    first_ts = records[0][0]
    max_ts = max(r[0] for r in records)
    body = b"".join(rec(ts - first_ts, k, v, h) for ts, k, v, h in records)
    length = BATCH_HEADER_SIZE_V1 + len(body)
    tail = BATCH_HEADER_V1.pack(base_offset, length, 0, MAGIC_V1, 0, -1, len(records),
                                first_ts, max_ts, -1, -1)[CRC_START_V1:] + body
    return struct.pack("<qII", base_offset, length, crc32c(tail)) + tail
