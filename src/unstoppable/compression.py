"""Batch compression codecs of the on-disk format (Kafka RecordBatch v2).

The attribute bits 0-2 of a batch name its codec: 0 none, 1 gzip, 2 snappy,
3 lz4, 4 zstd (docs/FORMAT.md §4). A compressed batch holds its records,
encoded as usual, compressed as one block after the 61-byte header.

Each codec uses the fastest library installed, measured on booking-event
batches (docs/FORMAT.md §4.6): zstd goes through ``zstandard`` (one
reused context per thread each way), lz4 through ``lz4``, gzip and snappy
through cramjam; cramjam is the fallback for zstandard and lz4, and the
standard library for gzip (python-snappy is no fallback for snappy: version
0.7 is built on cramjam).

Kafka's framings: gzip is a gzip member, lz4 an LZ4 *frame* with
independent blocks (Kafka's Java reader refuses linked blocks), zstd a zstd
frame (read with or without its content size: librdkafka writes it
without), and snappy is written raw (as librdkafka writes it) and read
either raw or in the xerial framing that Java's snappy-java and
kafka-python write.
"""
from __future__ import annotations

import threading

from unstoppable.errors import CodecUnavailableError, CorruptLogError

__all__ = ["CODECS", "GZIP_LEVEL", "ZSTD_LEVEL", "codec_id", "compress", "decompress", "libraries"]

#: Codec names as accepted by ``compression=...``, and their attribute values.
CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
_NAMES = {v: k for k, v in CODECS.items()}
_XERIAL_MAGIC = b"\x82SNAPPY\x00"

#: zstd level of the writer: 1, not Kafka's default 3 (measured in docs/FORMAT.md §4.6).
ZSTD_LEVEL = 1
#: gzip level of the writer (Kafka's default).
GZIP_LEVEL = 6

try:
    import cramjam as _cramjam
except ImportError:  # pragma: no cover - exercised by a subprocess test
    _cramjam = None
try:
    import zstandard as _zstd
except ImportError:  # pragma: no cover
    _zstd = None
try:
    import lz4.frame as _lz4
except ImportError:  # pragma: no cover
    _lz4 = None

# The libraries each codec can use, fastest first (measured on booking-event
# batches, docs/FORMAT.md §4.6); the same one reads and writes.
_CHOICES = {
    1: (("cramjam", _cramjam), ("zlib", True)),
    2: (("cramjam", _cramjam),),    # python-snappy 0.7 is itself built on cramjam
    3: (("lz4", _lz4), ("cramjam", _cramjam)),
    4: (("zstandard", _zstd), ("cramjam", _cramjam)),
}
_PACKAGES = {1: "cramjam", 2: "cramjam", 3: "lz4 or cramjam", 4: "zstandard or cramjam"}


def _first(libs) -> str | None:
    return next((name for name, mod in libs if mod is not None), None)


_LIB = {cid: _first(libs) for cid, libs in _CHOICES.items()}


def libraries() -> dict:
    """libraries() -> {codec name: library name or None}

    The library each codec reads and writes with in this process; None: not
    installed."""
    return {_NAMES[cid]: lib for cid, lib in _LIB.items()}


def codec_id(compression: str | None) -> int:
    """codec_id(compression) -> int

    The attribute value of a codec name (None or "none" -> 0). Raises
    ValueError for an unknown name and CodecUnavailableError when the codec
    library is not installed."""
    if compression is None or compression == "none":
        return 0
    try:
        cid = CODECS[compression]
    except (KeyError, TypeError):
        raise ValueError(f"unknown compression {compression!r}: use None, "
                         + ", ".join(repr(c) for c in CODECS)) from None
    _need(cid)
    return cid


def _need(cid: int, where: str = "") -> None:
    if _LIB.get(cid) is None:
        raise CodecUnavailableError(
            f"{where}compression {_NAMES.get(cid, cid)!r} needs the {_PACKAGES[cid]} package, which "
            "is not installed: pip install 'unstoppable[compression]'")


# zstandard's contexts are not thread-safe (it releases the GIL while it
# works), and a fresh one per call (zstandard.compress) compressed a 1.1 MB
# block at 71 MiB/s against 268 with a reused one, in one run here.
_local = threading.local()


def _zstd_compressor():
    c = getattr(_local, "zc", None)
    if c is None:
        c = _local.zc = _zstd.ZstdCompressor(level=ZSTD_LEVEL)
    return c


def _zstd_decompressor():
    d = getattr(_local, "zd", None)
    if d is None:
        d = _local.zd = _zstd.ZstdDecompressor()
    return d


def compress(cid: int, data) -> bytes:
    """compress(codec_id, data) -> bytes: one block in Kafka's framing of the codec."""
    _need(cid)
    lib = _LIB[cid]
    if cid == 4:
        if lib == "zstandard":
            return _zstd_compressor().compress(data)
        return bytes(_cramjam.zstd.compress(data, level=ZSTD_LEVEL))
    if cid == 3:
        if lib == "lz4":
            # As librdkafka writes it: independent blocks, the content size, no checksums.
            return _lz4.compress(data, compression_level=0, block_linked=False, store_size=True,
                                 content_checksum=False)
        return bytes(_cramjam.lz4.compress(data))
    if cid == 1:
        if lib == "cramjam":
            return bytes(_cramjam.gzip.compress(data, level=GZIP_LEVEL))
        import gzip
        return gzip.compress(bytes(data), GZIP_LEVEL, mtime=0)
    if cid == 2:
        return bytes(_cramjam.snappy.compress_raw(data))
    raise ValueError(f"unknown codec {cid}")


def decompress(cid: int, data, **where):
    """decompress(codec_id, data, **where) -> bytes-like (buffer protocol)

    Raises CorruptLogError naming ``where`` (topic, partition, position,
    offset) for an unknown codec or a payload that does not decompress, and
    CodecUnavailableError when the codec library is missing."""
    if cid not in _NAMES:
        raise CorruptLogError(f"batch compressed with unknown codec {cid}", **where)
    _need(cid, f"a batch at {where} is compressed with {_NAMES[cid]}: ")
    lib = _LIB[cid]
    try:
        if cid == 4:
            return _unzstd(data) if lib == "zstandard" else _cramjam.zstd.decompress(data)
        if cid == 3:
            return _unlz4(data) if lib == "lz4" else _cramjam.lz4.decompress(data)
        if cid == 2:
            if bytes(data[:8]) == _XERIAL_MAGIC:
                return _xerial(data)
            return _unsnappy(data)
        if lib == "cramjam":
            return _cramjam.gzip.decompress(data)
        import gzip
        return gzip.decompress(data)
    except CorruptLogError:
        raise
    except Exception as e:  # each library raises its own error type
        raise CorruptLogError(f"{_NAMES[cid]} payload does not decompress ({e})", **where) from None


def _unzstd(data):
    """A zstd payload through zstandard: one-shot when the frame states its
    size (the fast path, for frames this module and Java's zstd-jni write);
    otherwise, or when more than one frame follows, streaming (cramjam's, when
    installed, measured faster for that)."""
    if _zstd.frame_content_size(data) >= 0:
        try:
            return _zstd_decompressor().decompress(data, allow_extra_data=False)
        except _zstd.ZstdError as e:
            if "unused data" not in str(e):
                raise
    if _cramjam is not None:
        return _cramjam.zstd.decompress(data)
    obj = _zstd_decompressor().decompressobj(write_size=1 << 20, read_across_frames=True)
    out = obj.decompress(data)
    if obj.unused_data:
        raise ValueError(f"{len(obj.unused_data)} bytes after the last zstd frame")
    return out


def _unlz4(data):
    """LZ4 frames through the lz4 package; frames written back to back are
    all read (lz4.frame.decompress stops after the first)."""
    out, n = _lz4.decompress(data, return_bytes_read=True)
    if n == len(data):
        return out
    parts = [out]
    mv = memoryview(data)
    while n < len(mv):
        more, used = _lz4.decompress(mv[n:], return_bytes_read=True)
        if used == 0:
            raise ValueError(f"{len(mv) - n} bytes after the last lz4 frame")
        parts.append(more)
        n += used
    return b"".join(parts)


def _unsnappy(data):
    return _cramjam.snappy.decompress_raw(data)


def _xerial(data) -> bytes:
    """Snappy in the xerial framing: a 16-byte header, then (u32 BE length, block) pairs."""
    mv = memoryview(data)
    pos, out = 16, []
    while pos < len(mv):
        if pos + 4 > len(mv):
            raise ValueError("truncated xerial block length")
        n = int.from_bytes(mv[pos:pos + 4], "big")
        pos += 4
        if pos + n > len(mv):
            raise ValueError("truncated xerial block")
        out.append(bytes(_unsnappy(mv[pos:pos + n])))
        pos += n
    return b"".join(out)
