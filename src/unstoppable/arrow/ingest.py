"""Ingest: the rows of Arrow tables appended as records, partitioned and
encoded in C (``unstoppable._core.arrow``) straight from the Arrow buffers."""
from __future__ import annotations

import time

from unstoppable._core import arrow as _c
from unstoppable._core.batch import MAX_TIMESTAMP
from unstoppable.arrow.columns import (
    _binary_column,
    _checked,
    _column,
    _headers_column,
    _ms,
    _pa,
    _timestamp_column,
)
from unstoppable.errors import InvalidRecordError, PartitionOutOfRangeError
from unstoppable.partitioning import partitioner_kind
from unstoppable.storage.partition import Partition

__all__ = ["append_arrow"]

_STREAM_ROWS = 8192   # ingests of at least this many rows are pipelined (Partition.append_stream)


def _source(pa, batches, value, key, timestamp, headers):
    """An ArrowSource over the record batches (columns checked), kept beside it."""
    src = _c.ArrowSource()
    for b in batches:
        if b.num_rows == 0:
            continue
        v, vlarge = _binary_column(pa, _column(pa, b, value, "value"), "value", value)
        _checked(pa, v, "value", value)
        kw = {}
        if key is not None:
            k, kw["key_large"] = _binary_column(pa, _column(pa, b, key, "key"), "key", key)
            kw["key"] = _checked(pa, k, "key", key)
        if timestamp is not None:
            kw["timestamp"], kw["ts_mul"], kw["ts_div"] = _timestamp_column(
                pa, _checked(pa, _column(pa, b, timestamp, "timestamp"), "timestamp", timestamp),
                timestamp)
        if headers is not None:
            h, hk, hv, hkl, hvl = _headers_column(
                pa, _checked(pa, _column(pa, b, headers, "headers"), "headers", headers), headers)
            kw.update(headers=h, header_key=hk, header_value=hv, hkey_large=hkl,
                      hvalue_large=hvl)
        src.add(b.num_rows, v, value_large=vlarge, **kw)
    return src


def _batches_of(pa, table) -> list:
    if isinstance(table, pa.RecordBatch):
        return [table]
    if isinstance(table, pa.Table):
        return table.to_batches()
    raise TypeError(f"expected a pyarrow.Table, RecordBatch or RecordBatchReader, "
                    f"got {type(table).__name__}")


def _append_rows(part, src, ts: int, acks) -> int:
    """Write all rows of ``src`` to one partition, atomically; returns the first offset."""
    cfg = part.config
    if len(src) >= _STREAM_ROWS:
        encs = (_c.ArrowEncoder(cfg.max_batch_bytes, cfg.max_record_bytes),
                _c.ArrowEncoder(cfg.max_batch_bytes, cfg.max_record_bytes))
        return part.append_stream(src, encs, timestamp=ts, acks=acks)
    enc = _c.ArrowEncoder(cfg.max_batch_bytes, cfg.max_record_bytes)
    enc.encode(src[:], ts)
    return part.append_encoded(enc, acks=acks)[0]


def append_arrow(target, table, value: str = "value", key: str | None = "key",
                 timestamp: str | None = None, headers: str | None = None, *,
                 partition: str | None = None, partitioner=None, default_timestamp=None,
                 acks: str | None = None):
    """append_arrow(partition_or_topic, table, value="value", key="key", timestamp=None, headers=None, *, partition=None, partitioner=None, default_timestamp=None, acks=None) -> int | dict[int, int]

    Append the rows of a ``pyarrow.Table`` or ``RecordBatch`` as records,
    encoded in C straight from the Arrow buffers. Column arguments name
    columns of ``table``:

    * ``value``: binary or string (large, view and dictionary forms too);
      null values are stored as null.
    * ``key``: same types, or None for no keys. A table without a column
      named ``"key"`` (the default) has no keys.
    * ``timestamp``: a timestamp column (any unit; stored as ms, truncated),
      date64, or integer ms. Rows without one (or a null) get
      ``default_timestamp`` (ms or datetime; default: now).
    * ``headers``: ``list<struct<key: string, value: binary>>`` (what the
      export produces) or ``map<string, binary>``.

    A Partition target gets every row, all visible at once, and the call
    returns the first offset, like ``Partition.append``. A Topic target splits
    the rows by partition, keeping their order within each: by the
    ``partition`` column (partition numbers) when given, else by
    ``partitioner``: ``"xxh64"`` (the default, the same as the Producer's
    DefaultPartitioner) or ``"murmur2"`` (Kafka's), computed in C from the
    key, or a callable ``(key: bytes, n) -> int`` called per row. Rows without
    a key go round-robin. Each partition's rows become visible at once; the
    call returns ``{partition: first offset}`` for the partitions written.

    A ``pyarrow.RecordBatchReader`` is appended batch by batch (each batch
    is one append as above; memory stays bounded), returning the result of
    the first.
    """
    pa = _pa()
    if isinstance(table, pa.RecordBatchReader):
        return _append_reader(target, table, value, key, timestamp, headers, partition=partition,
                              partitioner=partitioner, default_timestamp=default_timestamp,
                              acks=acks)
    batches = _batches_of(pa, table)
    if key == "key" and table.schema.get_field_index("key") < 0:
        key = None
    _check_columns(table.schema, value=value, key=key, timestamp=timestamp, headers=headers,
                   partition=partition)
    ts = _default_ms(default_timestamp)
    src = _source(pa, batches, value, key, timestamp, headers)

    if isinstance(target, Partition):
        if partition is not None or partitioner is not None:
            raise ValueError("partition= and partitioner= split rows over a topic's partitions; "
                             "the target is one Partition")
        if len(src) == 0:
            return target.end_offset
        return _append_rows(target, src, ts, acks)
    if not (hasattr(target, "partition") and hasattr(target, "partitions")):
        raise TypeError(f"expected a Topic or a Partition, got {type(target).__name__}")
    if len(src) == 0:
        return {}
    parts = _split(pa, target, src, batches, key, partition, partitioner)
    out = {}
    for i, rows in enumerate(parts):
        if rows is not None:
            out[i] = _append_rows(target.partition(i), rows, ts, acks)
    return out


def _append_reader(target, reader, *args, **kwargs):
    """append_arrow of a RecordBatchReader: batch by batch; the first result
    (for a Topic, each partition's first offset)."""
    first = None
    for b in reader:
        r = append_arrow(target, b, *args, **kwargs)
        if first is None:
            first = r
        elif isinstance(first, dict):
            for p, o in r.items():
                first.setdefault(p, o)
    return first if first is not None else ({} if not isinstance(target, Partition)
                                            else target.end_offset)


def _check_columns(schema_, **names) -> None:
    """Each given name (``what=name``) names a column of ``schema_``."""
    for what, name in names.items():
        if name is not None:
            if not isinstance(name, str):
                raise TypeError(f"{what} must name a column (a str), got {type(name).__name__}")
            if schema_.get_field_index(name) < 0:
                raise ValueError(f"no {what} column {name!r}; the columns are {schema_.names}")


def _default_ms(default_timestamp) -> int:
    """The timestamp (ms) of rows without their own: ``default_timestamp`` or now."""
    if default_timestamp is None:
        ts = time.time_ns() // 1_000_000
    else:
        ts = _ms(default_timestamp, "default_timestamp")
    if not 0 <= ts <= MAX_TIMESTAMP:
        raise InvalidRecordError(f"default_timestamp {ts} is outside 0 .. {MAX_TIMESTAMP} ms (9999-12-31T23:59:59.999Z)")
    return ts


def _split(pa, target, src, batches, key, partition, partitioner) -> list:
    """The rows of ``src`` per partition of the topic ``target`` (None where none)."""
    n = target.partitions
    if partition is not None:
        if partitioner is not None:
            raise ValueError("give either partition= (a column) or partitioner=, not both")
        col = pa.concat_arrays([b.column(partition) for b in batches if b.num_rows])
        if not pa.types.is_integer(col.type):
            raise TypeError(f"partition column {partition!r} has type {col.type}; expected integers")
        if col.null_count:
            raise ValueError(f"partition column {partition!r} has {col.null_count} null(s)")
        col = _checked(pa, col.cast(pa.int64()), "partition", partition)
        try:
            return src.split(n, 0, col)
        except ValueError as e:
            raise PartitionOutOfRangeError(
                f"topic {target.name!r} has partitions 0 .. {n - 1}; partition column "
                f"{partition!r}: {e}") from None
    kind = partitioner if isinstance(partitioner, str) else partitioner_kind(partitioner)
    if partitioner is None or kind == "xxh64":
        return src.split(n, _c.PARTITION_XXH64)
    if kind == "murmur2":
        return src.split(n, _c.PARTITION_MURMUR2)
    if callable(partitioner):
        return src.split(n, 0, _call_partitioner(pa, partitioner, batches, key, n))
    raise TypeError(f"partitioner must be 'xxh64', 'murmur2' or a callable (key, n) -> int, "
                    f"got {partitioner!r}")


def _call_partitioner(pa, fn, batches, key, n):
    """Partition numbers from a per-key Python callable (keyless rows round-robin)."""
    ids = []
    nul = 0
    for b in batches:
        if not b.num_rows:
            continue
        keys = b.column(b.schema.get_field_index(key)).to_pylist() if key is not None \
            else [None] * b.num_rows
        for k in keys:
            if k is None:
                ids.append(nul % n)
                nul += 1
                continue
            if isinstance(k, str):
                k = k.encode()
            p = fn(k, n)
            if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < n:
                raise ValueError(f"partitioner {fn!r} returned {p!r} for key {k!r}; it must "
                                 f"return an int in 0 .. {n - 1}")
            ids.append(p)
    return pa.array(ids, pa.int64())
