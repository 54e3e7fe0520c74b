"""Export: ranges of a topic as Arrow record batches, tables and Parquet
files, built in C (``unstoppable._core.arrow.export_columns``) from the
CRC-checked batches of the mapped segments."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Mapping

from unstoppable._core import arrow as _c
from unstoppable.arrow.codecs import _as_codec, _check_on_error, _decode_batch, _decoded_schema
from unstoppable.arrow.columns import _ms, _pa, _pq, schema
from unstoppable.errors import OffsetOutOfRangeError, PartitionOutOfRangeError
from unstoppable.storage.partition import Partition

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = ["to_batches", "to_arrow", "export_parquet", "DEFAULT_BATCH_BYTES", "DEFAULT_ROW_GROUP_BYTES"]

#: Bytes of log batches read into one Arrow record batch by the exports. Small
#: enough that the buffers of each Arrow batch stay in cache and are recycled
#: by the allocator (bigger ones come fresh from the OS, page faults and all,
#: and export at about half the speed); a streaming export's peak memory is a
#: small multiple of this, whatever the size of the topic.
DEFAULT_BATCH_BYTES = 1 << 20
#: Arrow data gathered into one Parquet row group by export_parquet.
DEFAULT_ROW_GROUP_BYTES = 16 << 20
_MAX_BATCH_BYTES = 1 << 30
#: What a stream does when retention deletes offsets it has not read yet.
ON_RETENTION = ("raise", "clamp")


def _per_partition(v, p: int, what: str):
    if isinstance(v, Mapping):
        v = v.get(p)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
        raise TypeError(f"{what} must be an int offset, a dict of partition -> offset, or None; "
                        f"got {type(v).__name__}")
    return v


def _plan(source, start, end, partitions, start_time, end_time):
    """[(partition object, index, first offset, end offset)] of the export,
    with the end offsets taken now (later appends are not exported)."""
    if isinstance(source, Partition):
        if partitions is not None:
            raise ValueError("partitions= selects partitions of a topic; a Partition was given")
        parts = [source]
    elif hasattr(source, "partition") and hasattr(source, "partitions"):
        n = source.partitions
        if partitions is None:
            idx = list(range(n))
        else:
            idx = [partitions] if isinstance(partitions, int) else list(partitions)
            for i in idx:
                if isinstance(i, bool) or not isinstance(i, int):
                    raise TypeError(f"partitions must be ints, got {i!r}")
                if not 0 <= i < n:
                    raise PartitionOutOfRangeError(
                        f"topic {source.name!r} has partitions 0 .. {n - 1}, not {i}")
        parts = [source.partition(i) for i in idx]
    else:
        raise TypeError(f"expected a Topic or a Partition, got {type(source).__name__}")
    for name, m in (("start", start), ("end", end)):
        if isinstance(m, Mapping):
            unknown = sorted(set(m) - {p.index for p in parts})
            if unknown:
                raise PartitionOutOfRangeError(
                    f"{name} names partition(s) {unknown}, which are not exported")
    t0 = None if start_time is None else _ms(start_time, "start_time")
    t1 = None if end_time is None else _ms(end_time, "end_time")
    plan = []
    for p in parts:
        first, last = p.start_offset, p.end_offset
        lo = _per_partition(start, p.index, "start")
        hi = _per_partition(end, p.index, "end")
        lo = first if lo is None else max(lo, first)
        hi = last if hi is None else min(hi, last)
        if t0 is not None:
            o = p.offset_for_time(t0)
            lo = max(lo, last if o is None else o)
        if t1 is not None:
            o = p.offset_for_time(t1)
            hi = min(hi, last if o is None else o)
        plan.append((p, p.index, lo, max(lo, hi)))
    return plan


# ---------------------------------------------------------------------------
# Export


def _columns_to_batch(pa, cols, sch) -> "pa.RecordBatch":
    n = cols.rows
    binary = pa.large_binary() if cols.large else pa.binary()
    h = cols.header_count
    hk_offs, hk_data = cols.header_key
    hv_valid, hv_offs, hv_data, hv_nulls = cols.header_value
    entries = pa.StructArray.from_arrays(
        [pa.Array.from_buffers(pa.string(), h, [None, hk_offs, hk_data], 0),
         pa.Array.from_buffers(pa.binary(), h, [hv_valid, hv_offs, hv_data], hv_nulls)],
        fields=list(sch.field("headers").type.value_type))
    kv, ko, kd, kn = cols.key
    vv, vo, vd, vn = cols.value
    arrays = [
        pa.Array.from_buffers(pa.int32(), n, [None, cols.partition], 0),
        pa.Array.from_buffers(pa.int64(), n, [None, cols.offset], 0),
        pa.Array.from_buffers(pa.timestamp("ms"), n, [None, cols.timestamp], 0),
        pa.Array.from_buffers(binary, n, [kv, ko, kd], kn),
        pa.Array.from_buffers(binary, n, [vv, vo, vd], vn),
        pa.Array.from_buffers(sch.field("headers").type, n, [None, cols.header_offsets], 0,
                              children=[entries]),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=sch)


def _overtaken(p, idx: int, off: int, hi: int, clamp: bool, err: BaseException) -> int:
    """Retention deleted ``off`` under a stream: where to go on (``clamp``),
    or the error to raise. Re-raises ``err`` when ``off`` is still held."""
    start = p.start_offset
    if off >= start:
        raise err
    if not clamp:
        raise OffsetOutOfRangeError(
            f"retention deleted offsets {off} .. {start - 1} of {p.topic}/{idx} before this "
            f"export read them (the partition now starts at {start}); pass "
            f"on_retention='clamp' to skip to the new start instead") from None
    return min(start, hi)


def _raw_batches(plan, batch_bytes: int, large: bool, release_pages: bool,
                 on_retention: str = "raise"):
    pa = _pa()
    sch = schema(large)
    alloc = pa.allocate_buffer
    clamp = on_retention == "clamp"
    for p, idx, lo, hi in plan:
        off = lo
        while off < hi:
            try:
                batches = p.read_batches(off, batch_bytes)
            except (OffsetOutOfRangeError, FileNotFoundError) as e:
                off = _overtaken(p, idx, off, hi, clamp, e)
                continue
            if not batches:
                break
            cols = _c.export_columns(batches, off, hi, idx, alloc, large, release_pages)
            off = batches[-1].next_offset
            del batches
            if cols.rows:
                yield _columns_to_batch(pa, cols, sch)


def _check_batch_bytes(batch_bytes) -> int:
    if isinstance(batch_bytes, bool) or not isinstance(batch_bytes, int) or \
            not 1 <= batch_bytes <= _MAX_BATCH_BYTES:
        raise ValueError(f"batch_bytes must be an int in 1 .. {_MAX_BATCH_BYTES}, got {batch_bytes!r}")
    return batch_bytes


def to_batches(source, start=None, end=None, partitions=None, *, start_time=None,
               end_time=None, batch_bytes: int = DEFAULT_BATCH_BYTES, codec=None,
               keep_value: bool = False, large: bool = False,
               on_retention: str = "raise", on_error: str = "raise",
               bad_rows: list | None = None) -> "pa.RecordBatchReader":
    """to_batches(topic, start=None, end=None, partitions=None, *, start_time=None, end_time=None, batch_bytes=1 MiB, codec=None, keep_value=False, large=False, on_retention="raise", on_error="raise", bad_rows=None) -> pyarrow.RecordBatchReader

    Stream a range of a topic (or of one Partition) as Arrow record batches
    of about ``batch_bytes`` of log data each, so memory stays bounded
    however large the range is. Rows come partition by partition, in offset
    order within each; each record batch holds rows of one partition.

    Range (offsets are per partition; end bounds are exclusive):

    * ``start``, ``end``: an offset for every partition, or a dict
      ``{partition: offset}``; None means the partition's start / end. Bounds
      outside what a partition holds are clamped to it, as in slicing.
    * ``start_time``, ``end_time``: ms since the epoch or a datetime (naive
      means UTC). They narrow the range to the offsets from the first record
      with a timestamp >= ``start_time`` up to (not including) the first with
      a timestamp >= ``end_time``, as Kafka's offsetsForTimes finds them.
    * ``partitions``: an int or a list of partition numbers (default: all).

    The end of each partition is taken when the call is made: later appends
    are not exported.

    ``on_retention`` says what the stream does when retention deletes
    records it has not read yet (a slow reader of a topic with retention):
    ``"raise"`` (the default: an export never skips records silently) raises
    OffsetOutOfRangeError, naming the deleted range, from the reader's next
    batch; ``"clamp"`` goes on from the partition's new start, leaving the
    deleted records out.

    ``codec`` decodes values into typed columns, which replace ``value``
    (kept too with ``keep_value=True``): a protobuf message class, a
    :class:`ProtobufCodec`, :class:`JsonCodec` or :class:`RecordCodec`, any
    object with a ``schema`` (pyarrow.Schema) and a ``decode(values) ->
    pyarrow.RecordBatch`` method, or a callable ``fn(values:
    pyarrow.BinaryArray) -> pyarrow.RecordBatch | pyarrow.StructArray``. A
    null value gives a row of nulls. With ``large``, key and value are
    large_binary.

    ``on_error`` says what happens to a value the codec cannot decode:
    ``"raise"`` (the default) raises ValueDecodeError naming its partition
    and offset; ``"skip"`` leaves its row out; ``"null"`` keeps the row with
    its decoded columns null. The schema is the same either way. With a list
    ``bad_rows``, ``(partition, offset)`` of each row skipped or nulled is
    appended to it as the stream is read.
    """
    pa = _pa()
    _check_batch_bytes(batch_bytes)
    if on_retention not in ON_RETENTION:
        raise ValueError(f"on_retention must be one of {ON_RETENTION}, got {on_retention!r}")
    _check_on_error(on_error)
    plan = _plan(source, start, end, partitions, start_time, end_time)
    raw = _raw_batches(plan, batch_bytes, large, True, on_retention)
    if codec is None:
        return pa.RecordBatchReader.from_batches(schema(large), raw)
    codec = _as_codec(codec)
    out_schema = _decoded_schema(schema(large), codec, keep_value)
    return pa.RecordBatchReader.from_batches(
        out_schema, (_decode_batch(b, codec, out_schema, keep_value, on_error, bad_rows) for b in raw))


def to_arrow(source, start=None, end=None, partitions=None, *, start_time=None, end_time=None,
             batch_bytes: int = DEFAULT_BATCH_BYTES, codec=None, keep_value: bool = False,
             large: bool = False, on_retention: str = "raise", on_error: str = "raise",
             bad_rows: list | None = None) -> "pa.Table":
    """to_arrow(topic, start=None, end=None, partitions=None, *, start_time=None, end_time=None, batch_bytes=1 MiB, codec=None, keep_value=False, large=False, on_retention="raise", on_error="raise", bad_rows=None) -> pyarrow.Table

    A range of a topic (or of one Partition) as a ``pyarrow.Table`` with the
    columns partition, offset, timestamp, key, value, headers. The arguments
    are those of :func:`to_batches`; the table's chunks are its batches.
    """
    reader = to_batches(source, start, end, partitions, start_time=start_time, end_time=end_time,
                        batch_bytes=batch_bytes, codec=codec, keep_value=keep_value, large=large,
                        on_retention=on_retention, on_error=on_error, bad_rows=bad_rows)
    return reader.read_all()


def export_parquet(source, path, start=None, end=None, partitions=None, *, start_time=None,
                   end_time=None, batch_bytes: int = DEFAULT_BATCH_BYTES,
                   row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES, codec=None,
                   keep_value: bool = False, compression: str = "zstd",
                   on_retention: str = "raise", on_error: str = "raise",
                   bad_rows: list | None = None, **writer_options) -> int:
    """export_parquet(topic, path, start=None, end=None, partitions=None, *, start_time=None, end_time=None, batch_bytes=1 MiB, row_group_bytes=16 MiB, codec=None, keep_value=False, compression="zstd", on_retention="raise", on_error="raise", bad_rows=None, **writer_options) -> int

    Write a range of a topic to the Parquet file ``path``, streaming: the
    batches of :func:`to_batches` are gathered into row groups of about
    ``row_group_bytes`` of Arrow data, each written as soon as it is full, so
    peak memory is a small multiple of ``row_group_bytes`` whatever the size
    of the range. The file appears under its name only when complete (it is
    written beside it, then renamed). Returns the number of rows written
    (without the rows ``on_error="skip"`` left out). The other arguments
    are those of :func:`to_batches`.
    ``writer_options`` go to ``pyarrow.parquet.ParquetWriter``.
    """
    pa = _pa()
    pq = _pq()
    if isinstance(row_group_bytes, bool) or not isinstance(row_group_bytes, int) or \
            row_group_bytes < 1:
        raise ValueError(f"row_group_bytes must be a positive int, got {row_group_bytes!r}")
    reader = to_batches(source, start, end, partitions, start_time=start_time, end_time=end_time,
                        batch_bytes=batch_bytes, codec=codec, keep_value=keep_value,
                        on_retention=on_retention, on_error=on_error, bad_rows=bad_rows)
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    rows = 0
    try:
        with pq.ParquetWriter(tmp, reader.schema, compression=compression,
                              **writer_options) as w:
            group: list = []
            size = 0
            for b in reader:
                group.append(b)
                size += b.nbytes
                if size >= row_group_bytes:
                    rows += _write_group(pa, w, group)
                    group, size = [], 0
            if group:
                rows += _write_group(pa, w, group)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return rows


def _write_group(pa, writer, batches) -> int:
    table = pa.Table.from_batches(batches)
    writer.write_table(table, row_group_size=max(table.num_rows, 1))
    return table.num_rows
