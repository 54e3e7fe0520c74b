"""Batch compression codecs of the on-disk format (Kafka RecordBatch v2).

The attribute bits 0-2 of a batch name its codec: 0 none, 1 gzip, 2 snappy,
3 lz4, 4 zstd (docs/FORMAT.md §4). A compressed batch holds its records,
encoded as usual, compressed as one block after the 61-byte header.

All four codecs come from cramjam (one small wheel with no dependencies;
chosen by the measurements in docs/FORMAT.md §4.7). Kafka's framings:
gzip is a gzip member, lz4 an LZ4 *frame*, zstd a zstd frame, and snappy is
written raw (as librdkafka writes it) and read either raw or in the xerial
framing that Java's snappy-java and kafka-python write.
"""
from __future__ import annotations

from unstoppable.errors import CodecUnavailableError, CorruptLogError

__all__ = ["CODECS", "codec_id", "compress", "decompress"]

#: Codec names as accepted by ``compression=...``, and their attribute values.
CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
_NAMES = {v: k for k, v in CODECS.items()}
_XERIAL_MAGIC = b"\x82SNAPPY\x00"

try:
    import cramjam as _cramjam
except ImportError:  # pragma: no cover - exercised by a subprocess test
    _cramjam = None


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


def _need(cid: int) -> None:
    if _cramjam is None:
        raise CodecUnavailableError(
            f"compression {_NAMES.get(cid, cid)!r} needs the cramjam package, which is not "
            "installed: pip install 'unstoppable[compression]'")


def compress(cid: int, data) -> bytes:
    """compress(codec_id, data) -> bytes: one block in Kafka's framing of the codec."""
    _need(cid)
    if cid == 1:
        return bytes(_cramjam.gzip.compress(data, level=6))
    if cid == 2:
        return bytes(_cramjam.snappy.compress_raw(data))
    if cid == 3:
        return bytes(_cramjam.lz4.compress(data))
    if cid == 4:
        # Level 1: 2.6x the speed of level 3 on booking events here, for a
        # ratio of 1.96 instead of 2.06 (docs/FORMAT.md §4.6).
        return bytes(_cramjam.zstd.compress(data, level=1))
    raise ValueError(f"unknown codec {cid}")


def decompress(cid: int, data, **where):
    """decompress(codec_id, data, **where) -> bytes-like (buffer protocol)

    Raises CorruptLogError naming ``where`` (topic, partition, position,
    offset) for an unknown codec or a payload that does not decompress, and
    CodecUnavailableError when the codec library is missing."""
    if cid not in _NAMES:
        raise CorruptLogError(f"batch compressed with unknown codec {cid}", **where)
    if _cramjam is None:
        raise CodecUnavailableError(
            f"a batch at {where} is compressed with {_NAMES[cid]}, which needs the cramjam "
            "package: pip install 'unstoppable[compression]'")
    try:
        if cid == 1:
            return _cramjam.gzip.decompress(data)
        if cid == 2:
            if bytes(data[:8]) == _XERIAL_MAGIC:
                return _xerial(data)
            return _cramjam.snappy.decompress_raw(data)
        if cid == 3:
            return _cramjam.lz4.decompress(data)
        return _cramjam.zstd.decompress(data)
    except CorruptLogError:
        raise
    except Exception as e:  # cramjam raises its own DecompressionError
        raise CorruptLogError(f"{_NAMES[cid]} payload does not decompress ({e})", **where) from None


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
        out.append(bytes(_cramjam.snappy.decompress_raw(mv[pos:pos + n])))
        pos += n
    return b"".join(out)
