"""Value codecs of the exports: typed columns decoded from the value bytes
(protobuf messages, JSON objects, any function of a record)."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, Mapping

from unstoppable.arrow.columns import _pa
from unstoppable.errors import ValueDecodeError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = ["ProtobufCodec", "JsonCodec", "RecordCodec"]


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


#: What a decoded export does with a value its codec cannot decode.
ON_ERROR = ("raise", "skip", "null")


def _check_on_error(on_error) -> str:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    return on_error


def _null_rows(pa, codec, n: int):
    return pa.RecordBatch.from_arrays([pa.nulls(n, f.type) for f in codec.schema],
                                      schema=codec.schema)


def _decode_tolerant(pa, codec, values, bad: list, base: int = 0):
    """Decode ``values``, a row of nulls for each value that does not decode
    (``base`` + its index appended to ``bad``). The built-in codecs do it in
    their one pass; any other codec is given the rows before the one its
    error names (``row``), or halves of the array when the error names none."""
    if isinstance(codec, (RecordCodec, ProtobufCodec)):
        sub: list = []
        out = codec._decode(values, sub)
        bad.extend(base + i for i in sub)
        return out
    pieces, i, n = [], 0, len(values)
    while i < n:
        m = n - i
        try:
            dec = codec.decode(values.slice(i))
        except Exception as e:
            row = 0 if m == 1 else getattr(e, "row", None)
            if isinstance(row, int) and 0 <= row < m:
                if row:
                    pieces.append(_decode_tolerant(pa, codec, values.slice(i, row), bad, base + i))
                pieces.append(_null_rows(pa, codec, 1))
                bad.append(base + i + row)
                i += row + 1
            else:
                h = m // 2
                pieces.append(_decode_tolerant(pa, codec, values.slice(i, h), bad, base + i))
                pieces.append(_decode_tolerant(pa, codec, values.slice(i + h), bad, base + i + h))
                i = n
            continue
        pieces.append(_as_record_batch(pa, dec, m, codec))
        break
    if len(pieces) == 1:
        return pieces[0]
    batches = [pa.RecordBatch.from_arrays(list(p.columns), schema=codec.schema) for p in pieces]
    t = pa.Table.from_batches(batches, schema=codec.schema).combine_chunks()
    return t.to_batches()[0] if t.num_rows else _null_rows(pa, codec, 0)


def _decode_batch(b, codec, out_schema, keep_value: bool, on_error: str = "raise",
                  bad_rows: list | None = None):
    """``b`` with its values decoded by ``codec``. A value that does not
    decode raises ValueDecodeError naming it (``on_error="raise"``), drops
    its row (``"skip"``) or leaves its decoded columns null (``"null"``);
    ``(partition, offset)`` of each such row is appended to ``bad_rows``."""
    pa = _pa()
    values = b.column("value")
    bad: list = []
    try:
        if on_error == "raise":
            dec = codec.decode(values)
        else:
            dec = _decode_tolerant(pa, codec, values, bad)
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
        out = pa.RecordBatch.from_arrays(cols, schema=out_schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueDecodeError(f"value codec {codec!r} returned columns that do not match its "
                               f"schema {codec.schema}: {e}") from e
    if bad:
        if bad_rows is not None:
            part = b.column("partition")[0].as_py()
            offs = b.column("offset").take(pa.array(bad, pa.int64())).to_pylist()
            bad_rows.extend((part, o) for o in offs)
        if on_error == "skip":
            keep = [True] * len(values)
            for i in bad:
                keep[i] = False
            out = out.filter(pa.array(keep, pa.bool_()))
    return out


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
        return self._decode(values, None)

    def _decode(self, values, bad: list | None) -> "pa.RecordBatch":
        """Decode; with a list ``bad``, a value that does not decode gives a
        row of nulls and its index is appended to ``bad`` instead of raising."""
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
                if bad is None:
                    raise ValueDecodeError(f"{type(e).__name__}: {e}", row=i) from e
                bad.append(i)
                rows.append(None)
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
        return self._decode(values, None)

    def _decode(self, values, bad: list | None) -> "pa.RecordBatch":
        """Decode; with a list ``bad``, a value that does not parse gives a
        row of nulls and its index is appended to ``bad`` instead of raising."""
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
                if bad is None:
                    raise ValueDecodeError(f"{type(e).__name__}: {e}", row=i) from e
                bad.append(i)
                msgs.append(None)
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
