"""Arrow types and columns: the export schema, the pyarrow import with its
install hint, and the checks that turn a user's column into what the C
ingest reads (binary/string in their large, view and dictionary forms,
timestamps, headers)."""
from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = ["require_pyarrow", "header_type", "schema"]


def require_pyarrow():
    """The pyarrow module, or ImportError saying what to install."""
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



_pa = require_pyarrow


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
