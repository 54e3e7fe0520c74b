"""Topics as columnar data: Arrow and Parquet export, and Arrow ingest.

Needs pyarrow (``pip install 'unstoppable[arrow]'``); ``import unstoppable``
works without it, and this module says what to install when it is missing.

Export::

    table = unstoppable.arrow.to_arrow(topic)              # or topic.to_arrow()
    reader = unstoppable.arrow.to_batches(topic, start_time=t0)   # streams
    unstoppable.arrow.export_parquet(topic, "bookings.parquet")

Every export has the columns of :data:`SCHEMA` (``value`` may be replaced by
the typed columns of a value codec, see :func:`to_batches`). Rows come
partition by partition, in offset order within each. The buffers are built
in C straight from the CRC-checked record batches of the mapped segments;
value bytes are copied once, into the Arrow buffer.

Ingest::

    unstoppable.arrow.append_arrow(topic.partition(0), table)
    unstoppable.arrow.append_arrow(topic, table, key="user")   # split by key hash

Batches are encoded in C straight from the Arrow buffers.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from typing import TYPE_CHECKING, Any, Callable, Mapping

from unstoppable._core import arrow as _c
from unstoppable.errors import InvalidRecordError, ValueDecodeError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = [
    "SCHEMA",
    "schema",
    "header_type",
    "to_arrow",
    "to_batches",
    "export_parquet",
    "append_arrow",
    "ProtobufCodec",
    "JsonCodec",
    "RecordCodec",
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_ROW_GROUP_BYTES",
]

#: Bytes of log batches read into one Arrow record batch by the exports. Small
#: enough that the buffers of each Arrow batch stay in cache and are recycled
#: by the allocator (bigger ones come fresh from the OS, page faults and all,
#: and export at about half the speed); a streaming export's peak memory is a
#: small multiple of this, whatever the size of the topic.
DEFAULT_BATCH_BYTES = 1 << 20
#: Arrow data gathered into one Parquet row group by export_parquet.
DEFAULT_ROW_GROUP_BYTES = 16 << 20
_MAX_BATCH_BYTES = 1 << 30
_STREAM_ROWS = 8192   # ingests of at least this many rows are pipelined (Partition.append_stream)


def _pa():
    try:
        import pyarrow
    except ImportError as e:
        raise ImportError(
            "unstoppable's Arrow and Parquet support needs pyarrow: "
            "pip install 'unstoppable[arrow]'") from e
    return pyarrow


def _pq():
    _pa()
    import pyarrow.parquet
    return pyarrow.parquet


SCHEMA: "pa.Schema"  # the export schema; built on first access (pyarrow is imported lazily)


def __getattr__(name):
    if name == "SCHEMA":
        return schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def header_type(pa=None):
    """``list<struct<key: string, value: binary>>``, the type of the headers column."""
    pa = pa or _pa()
    return pa.list_(pa.struct([pa.field("key", pa.string(), nullable=False),
                               pa.field("value", pa.binary())]))


def schema(large: bool = False) -> "pa.Schema":
    """The export schema (``SCHEMA``); with ``large``, key and value are large_binary."""
    pa = _pa()
    binary = pa.large_binary() if large else pa.binary()
    return pa.schema([
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("timestamp", pa.timestamp("ms"), nullable=False),
        pa.field("key", binary),
        pa.field("value", binary),
        pa.field("headers", header_type(pa), nullable=False),
    ])


# ---------------------------------------------------------------------------
# Ranges


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def _ms(t, what: str) -> int:
    if isinstance(t, _dt.datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=_dt.timezone.utc)  # like the timestamp[ms] column: UTC
        return (t - _EPOCH) // _dt.timedelta(milliseconds=1)
    if isinstance(t, bool) or not isinstance(t, int):
        raise TypeError(f"{what} must be an int of ms since the epoch or a datetime, "
                        f"got {type(t).__name__}")
    return t


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
    from unstoppable.errors import PartitionOutOfRangeError
    from unstoppable.storage.partition import Partition

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


def _raw_batches(plan, batch_bytes: int, large: bool, release_pages: bool):
    pa = _pa()
    sch = schema(large)
    alloc = pa.allocate_buffer
    for p, idx, lo, hi in plan:
        off = lo
        while off < hi:
            batches = p.read_batches(off, batch_bytes)
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
               keep_value: bool = False, large: bool = False) -> "pa.RecordBatchReader":
    """to_batches(topic, start=None, end=None, partitions=None, *, start_time=None, end_time=None, batch_bytes=1 MiB, codec=None, keep_value=False, large=False) -> pyarrow.RecordBatchReader

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

    ``codec`` decodes values into typed columns, which replace ``value``
    (kept too with ``keep_value=True``): a protobuf message class, a
    :class:`ProtobufCodec`, :class:`JsonCodec` or :class:`RecordCodec`, any
    object with a ``schema`` (pyarrow.Schema) and a ``decode(values) ->
    pyarrow.RecordBatch`` method, or a callable ``fn(values:
    pyarrow.BinaryArray) -> pyarrow.RecordBatch | pyarrow.StructArray``. A
    null value gives a row of nulls. With ``large``, key and value are
    large_binary.
    """
    pa = _pa()
    _check_batch_bytes(batch_bytes)
    plan = _plan(source, start, end, partitions, start_time, end_time)
    raw = _raw_batches(plan, batch_bytes, large, True)
    if codec is None:
        return pa.RecordBatchReader.from_batches(schema(large), raw)
    codec = _as_codec(codec)
    out_schema = _decoded_schema(schema(large), codec, keep_value)
    return pa.RecordBatchReader.from_batches(
        out_schema, (_decode_batch(b, codec, out_schema, keep_value) for b in raw))


def to_arrow(source, start=None, end=None, partitions=None, *, start_time=None, end_time=None,
             batch_bytes: int = DEFAULT_BATCH_BYTES, codec=None, keep_value: bool = False,
             large: bool = False) -> "pa.Table":
    """to_arrow(topic, start=None, end=None, partitions=None, *, start_time=None, end_time=None, batch_bytes=1 MiB, codec=None, keep_value=False, large=False) -> pyarrow.Table

    A range of a topic (or of one Partition) as a ``pyarrow.Table`` with the
    columns partition, offset, timestamp, key, value, headers. The arguments
    are those of :func:`to_batches`; the table's chunks are its batches.
    """
    reader = to_batches(source, start, end, partitions, start_time=start_time, end_time=end_time,
                        batch_bytes=batch_bytes, codec=codec, keep_value=keep_value, large=large)
    return reader.read_all()


def export_parquet(source, path, start=None, end=None, partitions=None, *, start_time=None,
                   end_time=None, batch_bytes: int = DEFAULT_BATCH_BYTES,
                   row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES, codec=None,
                   keep_value: bool = False, compression: str = "zstd", **writer_options) -> int:
    """export_parquet(topic, path, start=None, end=None, partitions=None, *, start_time=None, end_time=None, batch_bytes=1 MiB, row_group_bytes=16 MiB, codec=None, keep_value=False, compression="zstd", **writer_options) -> int

    Write a range of a topic to the Parquet file ``path``, streaming: the
    batches of :func:`to_batches` are gathered into row groups of about
    ``row_group_bytes`` of Arrow data, each written as soon as it is full, so
    peak memory is a small multiple of ``row_group_bytes`` whatever the size
    of the range. The file appears under its name only when complete (it is
    written beside it, then renamed). Returns the number of rows written.
    ``writer_options`` go to ``pyarrow.parquet.ParquetWriter``.
    """
    pa = _pa()
    pq = _pq()
    if isinstance(row_group_bytes, bool) or not isinstance(row_group_bytes, int) or \
            row_group_bytes < 1:
        raise ValueError(f"row_group_bytes must be a positive int, got {row_group_bytes!r}")
    reader = to_batches(source, start, end, partitions, start_time=start_time, end_time=end_time,
                        batch_bytes=batch_bytes, codec=codec, keep_value=keep_value)
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


# ---------------------------------------------------------------------------
# Value codecs


class _CallableCodec:
    """A callable over a whole value array, made into a codec."""

    def __init__(self, fn):
        pa = _pa()
        self.fn = fn
        self.schema = _as_record_batch(pa, fn(pa.array([], pa.binary())), 0, fn).schema

    def decode(self, values):
        return _as_record_batch(_pa(), self.fn(values), len(values), self.fn)

    def __repr__(self):
        return f"<codec {self.fn!r}>"


def _as_record_batch(pa, out, n: int, fn):
    if isinstance(out, pa.StructArray):
        out = pa.RecordBatch.from_struct_array(out)
    elif isinstance(out, pa.Table):
        out = out.combine_chunks().to_batches()[0] if out.num_rows else \
            pa.RecordBatch.from_pylist([], schema=out.schema)
    if not isinstance(out, pa.RecordBatch):
        raise TypeError(f"value codec {fn!r} returned {type(out).__name__}; expected a "
                        "pyarrow.RecordBatch, StructArray or Table")
    if out.num_rows != n:
        raise ValueError(f"value codec {fn!r} returned {out.num_rows} rows for {n} values")
    return out


def _as_codec(codec):
    if hasattr(codec, "DESCRIPTOR") and hasattr(codec, "FromString"):
        return ProtobufCodec(codec)
    if hasattr(codec, "decode") and hasattr(codec, "schema"):
        return codec
    if callable(codec):
        return _CallableCodec(codec)
    raise TypeError(f"codec must be a protobuf message class, an object with schema and "
                    f"decode(), or a callable; got {type(codec).__name__}")


def _decoded_schema(base, codec, keep_value: bool):
    pa = _pa()
    fields = [f for f in base if keep_value or f.name != "value"]
    names = {f.name for f in fields}
    clash = [f.name for f in codec.schema if f.name in names]
    if clash:
        raise ValueError(f"the value codec's column(s) {clash} clash with the export's own "
                         f"columns {sorted(names)}; rename them in the codec (for example "
                         "ProtobufCodec(cls, prefix='value_'))")
    return pa.schema(fields + list(codec.schema))


def _decode_batch(b, codec, out_schema, keep_value: bool):
    pa = _pa()
    values = b.column("value")
    try:
        dec = codec.decode(values)
        if isinstance(dec, (pa.StructArray, pa.Table)):
            dec = _as_record_batch(pa, dec, len(values), codec)
        if dec.num_rows != len(values):
            raise ValueError(f"returned {dec.num_rows} rows for {len(values)} values")
    except Exception as e:
        part = b.column("partition")[0].as_py()
        offs = b.column("offset")
        row = getattr(e, "row", None)
        if isinstance(e, ValueDecodeError) and row is not None:
            where = f"partition {part}, offset {offs[row].as_py()}"
        else:
            where = f"partition {part}, offsets {offs[0].as_py()} .. {offs[-1].as_py()}"
        raise ValueDecodeError(f"value codec {codec!r} failed at {where}: {e}",
                               partition=part,
                               offset=offs[row].as_py() if row is not None else None) from e
    cols = [b.column(f.name) for f in b.schema if keep_value or f.name != "value"]
    cols += [dec.column(i) for i in range(dec.num_columns)]
    try:
        return pa.RecordBatch.from_arrays(cols, schema=out_schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueDecodeError(f"value codec {codec!r} returned columns that do not match its "
                               f"schema {codec.schema}: {e}") from e


class RecordCodec:
    """RecordCodec(fn, schema)

    A value codec from a per-record function ``fn(value: bytes) -> dict``
    (field name -> Python value) and the ``pyarrow.Schema`` of its output.
    A null value gives a row of nulls without calling ``fn``.
    """

    def __init__(self, fn: Callable[[bytes], Mapping[str, Any] | None], schema: "pa.Schema"):
        pa = _pa()
        if not isinstance(schema, pa.Schema):
            schema = pa.schema(schema)
        self.fn = fn
        self.schema = schema

    def decode(self, values) -> "pa.RecordBatch":
        pa = _pa()
        fn = self.fn
        rows = []
        for i, v in enumerate(values.to_pylist()):
            if v is None:
                rows.append(None)
                continue
            try:
                rows.append(fn(v))
            except Exception as e:
                raise ValueDecodeError(f"{type(e).__name__}: {e}", row=i) from e
        arr = pa.array(rows, type=pa.struct(list(self.schema)))
        return pa.RecordBatch.from_struct_array(arr)

    def __repr__(self):
        return f"RecordCodec({self.fn!r})"


class JsonCodec(RecordCodec):
    """JsonCodec(schema)

    Values are JSON objects; the fields named in ``schema`` become typed
    columns (missing fields are null, others are ignored).
    """

    def __init__(self, schema: "pa.Schema"):
        super().__init__(json.loads, schema)

    def __repr__(self):
        return f"JsonCodec({list(self.schema.names)})"


class ProtobufCodec:
    """ProtobufCodec(message_class, *, prefix="", enums_as_names=True)

    Values are serialized ``message_class`` messages; each field becomes a
    typed column named ``prefix + field name``:

    * scalars map to the Arrow type of the same width (string, binary,
      bool, int32/int64/uint32/uint64, float/double);
    * enums to their value name (string), or the number with
      ``enums_as_names=False``;
    * message fields to structs, repeated fields to lists, maps to maps;
    * a field with presence (proto2, proto3 ``optional``, messages, oneof
      members) is null when unset; a proto3 plain scalar has its default;
    * each oneof adds a string column with the name of the member that is
      set (null when none is): the event type of a oneof of events.

    A null value gives a row of nulls.
    """

    def __init__(self, message_class, *, prefix: str = "", enums_as_names: bool = True):
        if not (hasattr(message_class, "DESCRIPTOR") and hasattr(message_class, "FromString")):
            raise TypeError(f"expected a protobuf message class, got {message_class!r}")
        pa = _pa()
        self.message_class = message_class
        self.prefix = prefix
        self.enums_as_names = enums_as_names
        d = message_class.DESCRIPTOR
        fields = [pa.field(prefix + f.name, self._type(f)) for f in d.fields]
        fields += [pa.field(prefix + o.name, pa.string()) for o in _real_oneofs(d)]
        self.schema = pa.schema(fields)

    def _scalar_type(self, f):
        pa = _pa()
        from google.protobuf.descriptor import FieldDescriptor as F
        t = f.type
        if t == F.TYPE_MESSAGE or t == F.TYPE_GROUP:
            return pa.struct([pa.field(g.name, self._type(g)) for g in f.message_type.fields])
        if t == F.TYPE_ENUM:
            return pa.string() if self.enums_as_names else pa.int32()
        return _PB_SCALARS[t](pa)

    def _type(self, f):
        pa = _pa()
        if _is_map(f):
            kf, vf = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            return pa.map_(self._scalar_type(kf), self._scalar_type(vf))
        if _is_repeated(f):
            return pa.list_(self._scalar_type(f))
        return self._scalar_type(f)

    def _column(self, msgs: list, f, typ):
        """One field of a list of messages (None entries: null rows) as an Arrow array."""
        pa = _pa()
        from google.protobuf.descriptor import FieldDescriptor as F
        name = f.name
        if _is_map(f):
            vf = f.message_type.fields_by_name["value"]
            if vf.type in (F.TYPE_MESSAGE, F.TYPE_GROUP):
                offsets, keys, vals = [0], [], []
                for m in msgs:
                    if m is not None:
                        for k, v in getattr(m, name).items():
                            keys.append(k)
                            vals.append(v)
                    offsets.append(len(keys))
                return pa.MapArray.from_arrays(
                    pa.array(offsets, pa.int32()), pa.array(keys, typ.key_type),
                    self._column_of_values(vals, vf, typ.item_type),
                    mask=pa.array([m is None for m in msgs]) if None in msgs else None)
            rows = [None if m is None else list(self._plain(getattr(m, name).items(), f, True))
                    for m in msgs]
            return pa.array(rows, typ)
        if _is_repeated(f):
            if f.type in (F.TYPE_MESSAGE, F.TYPE_GROUP):
                offsets, flat = [0], []
                for m in msgs:
                    if m is not None:
                        flat.extend(getattr(m, name))
                    offsets.append(len(flat))
                child = self._column_of_values(flat, f, typ.value_type)
                return pa.ListArray.from_arrays(
                    pa.array(offsets, pa.int32()), child,
                    mask=pa.array([m is None for m in msgs]) if None in msgs else None)
            return pa.array([None if m is None else self._plain(getattr(m, name), f)
                             for m in msgs], typ)
        presence = f.has_presence
        vals = [None if m is None or (presence and not m.HasField(name)) else getattr(m, name)
                for m in msgs]
        return self._column_of_values(vals, f, typ)

    def _column_of_values(self, vals: list, f, typ):
        """Single values of field ``f`` (messages or scalars; None = null)."""
        pa = _pa()
        from google.protobuf.descriptor import FieldDescriptor as F
        if f.type in (F.TYPE_MESSAGE, F.TYPE_GROUP):
            children = [self._column(vals, g, typ.field(g.name).type)
                        for g in f.message_type.fields]
            return pa.StructArray.from_arrays(
                children, fields=list(typ),
                mask=pa.array([v is None for v in vals]) if None in vals else None)
        if f.type == F.TYPE_ENUM and self.enums_as_names:
            names = f.enum_type.values_by_number
            vals = [None if v is None else (names[v].name if v in names else str(v)) for v in vals]
        return pa.array(vals, typ)

    def _plain(self, vals, f, pairs: bool = False):
        from google.protobuf.descriptor import FieldDescriptor as F
        if pairs:
            vf = f.message_type.fields_by_name["value"]
            if vf.type == F.TYPE_ENUM and self.enums_as_names:
                names = vf.enum_type.values_by_number
                return [(k, names[v].name if v in names else str(v)) for k, v in vals]
            return list(vals)
        if f.type == F.TYPE_ENUM and self.enums_as_names:
            names = f.enum_type.values_by_number
            return [names[v].name if v in names else str(v) for v in vals]
        return list(vals)

    def decode(self, values) -> "pa.RecordBatch":
        pa = _pa()
        parse = self.message_class.FromString
        msgs = []
        for i, v in enumerate(values.to_pylist()):
            if v is None:
                msgs.append(None)
                continue
            try:
                msgs.append(parse(v))
            except Exception as e:
                raise ValueDecodeError(f"{type(e).__name__}: {e}", row=i) from e
        d = self.message_class.DESCRIPTOR
        arrays = [self._column(msgs, f, self.schema.field(self.prefix + f.name).type)
                  for f in d.fields]
        for o in _real_oneofs(d):
            arrays.append(pa.array([None if m is None else m.WhichOneof(o.name) for m in msgs],
                                   pa.string()))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def __repr__(self):
        return f"ProtobufCodec({self.message_class.DESCRIPTOR.full_name})"


def _is_repeated(f) -> bool:
    rep = getattr(f, "is_repeated", None)
    if rep is not None:
        return bool(rep)
    return f.label == f.LABEL_REPEATED  # protobuf < 5.28


def _is_map(f) -> bool:
    return _is_repeated(f) and f.message_type is not None and \
        f.message_type.GetOptions().map_entry


def _real_oneofs(d):
    """Oneofs written in the .proto (not the synthetic ones of proto3 ``optional``)."""
    out = []
    for o in d.oneofs:
        synthetic = len(o.fields) == 1 and getattr(o.fields[0], "has_presence", False) and \
            o.name == "_" + o.fields[0].name
        if not synthetic:
            out.append(o)
    return out


def _pb_scalars():
    from google.protobuf.descriptor import FieldDescriptor as F
    return {
        F.TYPE_DOUBLE: lambda pa: pa.float64(), F.TYPE_FLOAT: lambda pa: pa.float32(),
        F.TYPE_INT64: lambda pa: pa.int64(), F.TYPE_SINT64: lambda pa: pa.int64(),
        F.TYPE_SFIXED64: lambda pa: pa.int64(), F.TYPE_UINT64: lambda pa: pa.uint64(),
        F.TYPE_FIXED64: lambda pa: pa.uint64(), F.TYPE_INT32: lambda pa: pa.int32(),
        F.TYPE_SINT32: lambda pa: pa.int32(), F.TYPE_SFIXED32: lambda pa: pa.int32(),
        F.TYPE_UINT32: lambda pa: pa.uint32(), F.TYPE_FIXED32: lambda pa: pa.uint32(),
        F.TYPE_BOOL: lambda pa: pa.bool_(), F.TYPE_STRING: lambda pa: pa.string(),
        F.TYPE_BYTES: lambda pa: pa.binary(),
    }


class _LazyScalars(dict):
    def __missing__(self, key):
        self.update(_pb_scalars())
        return dict.__getitem__(self, key)


_PB_SCALARS = _LazyScalars()


# ---------------------------------------------------------------------------
# Ingest


def _binary_column(pa, arr, what: str, name: str):
    """(array, large) for a key/value/header column, or TypeError naming it."""
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    if pa.types.is_binary(t) or pa.types.is_string(t):
        return arr, False
    if pa.types.is_large_binary(t) or pa.types.is_large_string(t):
        return arr, True
    if pa.types.is_fixed_size_binary(t) or pa.types.is_null(t) or _is_view(pa, t):
        return arr.cast(pa.large_binary()), True
    raise TypeError(f"{what} column {name!r} has type {t}; expected binary, large_binary, "
                    "string or large_string")


def _is_view(pa, t) -> bool:
    """binary_view / string_view (pyarrow >= 16; absent before)."""
    return any(getattr(pa.types, f, lambda t: False)(t)
               for f in ("is_binary_view", "is_string_view"))


def _timestamp_column(pa, arr, name: str):
    """(int64 array, mul, div) turning the column's values into ms."""
    t = arr.type
    if pa.types.is_timestamp(t):
        mul, div = {"s": (1000, 1), "ms": (1, 1), "us": (1, 1000), "ns": (1, 1_000_000)}[t.unit]
        return arr.view(pa.int64()), mul, div
    if pa.types.is_date64(t):
        return arr.view(pa.int64()), 1, 1
    if pa.types.is_integer(t):
        if t != pa.int64():
            arr = arr.cast(pa.int64())
        return arr, 1, 1
    raise TypeError(f"timestamp column {name!r} has type {t}; expected a timestamp, date64 or "
                    "an integer of ms since the epoch")


def _headers_column(pa, arr, name: str):
    """(list array, key child, value child, key large, value large)."""
    t = arr.type
    if pa.types.is_large_list(t):
        arr = arr.cast(pa.list_(t.value_type))
        t = arr.type
    if pa.types.is_map(t):
        entries = arr.values
        k, v = entries.field(0), entries.field(1)
    elif pa.types.is_list(t) and pa.types.is_struct(t.value_type):
        st = t.value_type
        names = [st.field(i).name for i in range(st.num_fields)]
        if "key" not in names or "value" not in names:
            raise TypeError(f"headers column {name!r} is a list of {st}; the struct needs fields "
                            "'key' (string) and 'value' (binary)")
        entries = arr.values
        k, v = entries.field(names.index("key")), entries.field(names.index("value"))
    else:
        raise TypeError(f"headers column {name!r} has type {t}; expected "
                        "list<struct<key: string, value: binary>> or map<string, binary>")
    if not (pa.types.is_string(k.type) or pa.types.is_large_string(k.type)):
        raise TypeError(f"headers column {name!r}: header keys have type {k.type}; expected string")
    v, vlarge = _binary_column(pa, v, "header value of the headers", name)
    return arr, k, v, pa.types.is_large_string(k.type), vlarge


def _column(pa, batch, name, what):
    if not isinstance(name, str):
        raise TypeError(f"{what} must name a column (a str), got {type(name).__name__}")
    i = batch.schema.get_field_index(name)
    if i < 0:
        raise ValueError(f"no {what} column {name!r}; the columns are {batch.schema.names}")
    return batch.column(i)


def _checked(pa, arr, what: str, name: str):
    """Prove an array's offsets and buffer sizes sound (O(n), without the UTF-8
    check of strings): the C loops trust them."""
    t = arr.type
    try:
        if pa.types.is_string(t):
            arr.view(pa.binary()).validate(full=True)
        elif pa.types.is_large_string(t):
            arr.view(pa.large_binary()).validate(full=True)
        else:
            arr.validate(full=True)
    except pa.ArrowInvalid as e:
        raise ValueError(f"{what} column {name!r} is not valid Arrow data: {e}") from None
    return arr


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
    cfg = part._config
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
    from unstoppable.errors import PartitionOutOfRangeError
    from unstoppable.storage.partition import Partition

    if isinstance(table, pa.RecordBatchReader):
        first = None
        for b in table:
            r = append_arrow(target, b, value, key, timestamp, headers, partition=partition,
                             partitioner=partitioner, default_timestamp=default_timestamp,
                             acks=acks)
            if first is None:
                first = r
            elif isinstance(first, dict):
                for p, o in r.items():
                    first.setdefault(p, o)
        return first if first is not None else ({} if not isinstance(target, Partition)
                                                else target.end_offset)
    batches = _batches_of(pa, table)
    schema_ = table.schema
    if key == "key" and schema_.get_field_index("key") < 0:
        key = None
    for name, what in ((value, "value"), (key, "key"), (timestamp, "timestamp"),
                       (headers, "headers"), (partition, "partition")):
        if name is not None:
            if not isinstance(name, str):
                raise TypeError(f"{what} must name a column (a str), got {type(name).__name__}")
            if schema_.get_field_index(name) < 0:
                raise ValueError(f"no {what} column {name!r}; the columns are {schema_.names}")
    if default_timestamp is None:
        import time
        ts = time.time_ns() // 1_000_000
    else:
        ts = _ms(default_timestamp, "default_timestamp")
    if not 0 <= ts < (1 << 62):
        raise InvalidRecordError(f"default_timestamp {ts} is outside 0 .. 2**62-1 ms")
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
    n = target.partitions
    if len(src) == 0:
        return {}
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
            parts = src.split(n, 0, col)
        except ValueError as e:
            raise PartitionOutOfRangeError(
                f"topic {target.name!r} has partitions 0 .. {n - 1}; partition column "
                f"{partition!r}: {e}") from None
    elif partitioner is None or partitioner == "xxh64" or _is_client_partitioner(partitioner, "Default"):
        parts = src.split(n, _c.PARTITION_XXH64)
    elif partitioner == "murmur2" or _is_client_partitioner(partitioner, "Murmur2"):
        parts = src.split(n, _c.PARTITION_MURMUR2)
    elif callable(partitioner):
        ids = _call_partitioner(pa, partitioner, batches, key, n)
        parts = src.split(n, 0, ids)
    else:
        raise TypeError(f"partitioner must be 'xxh64', 'murmur2' or a callable (key, n) -> int, "
                        f"got {partitioner!r}")
    out = {}
    for i, rows in enumerate(parts):
        if rows is not None:
            out[i] = _append_rows(target.partition(i), rows, ts, acks)
    return out


def _is_client_partitioner(p, kind: str) -> bool:
    try:
        from unstoppable.client import producer
    except ImportError:  # pragma: no cover - the client ships with the package
        return False
    cls = getattr(producer, f"{kind}Partitioner", None)
    return cls is not None and type(p) is cls


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
