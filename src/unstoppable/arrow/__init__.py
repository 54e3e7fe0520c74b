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

import sys as _sys
from typing import TYPE_CHECKING

from unstoppable import columnar

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from unstoppable.arrow.codecs import JsonCodec, ProtobufCodec, RecordCodec
    from unstoppable.arrow.columns import header_type, require_pyarrow, schema
    from unstoppable.arrow.export import (
        DEFAULT_BATCH_BYTES,
        DEFAULT_ROW_GROUP_BYTES,
        export_parquet,
        to_arrow,
        to_batches,
    )
    from unstoppable.arrow.ingest import append_arrow

__all__ = [
    # export
    "to_arrow", "to_batches", "export_parquet", "SCHEMA", "schema", "header_type",
    "DEFAULT_BATCH_BYTES", "DEFAULT_ROW_GROUP_BYTES",
    # value codecs of the exports
    "ProtobufCodec", "JsonCodec", "RecordCodec",
    # ingest
    "append_arrow",
    # the pyarrow import, with what to install when it is missing
    "require_pyarrow",
]

SCHEMA: "pa.Schema"  # the export schema; built on first access (pyarrow is imported lazily)

# `import unstoppable` imports this package (see the end of this file), so its
# submodules load on first use: that keeps the import of the package as
# cheap as before Arrow became a package.
_EXPORT = {"to_arrow", "to_batches", "export_parquet", "DEFAULT_BATCH_BYTES",
           "DEFAULT_ROW_GROUP_BYTES"}
_CODECS = {"ProtobufCodec", "JsonCodec", "RecordCodec"}
_COLUMNS = {"schema", "header_type", "require_pyarrow"}


def __getattr__(name):
    if name == "SCHEMA":
        from unstoppable.arrow.columns import schema
        return schema()
    if name in _EXPORT:
        from unstoppable.arrow import export as m
    elif name in _CODECS:
        from unstoppable.arrow import codecs as m
    elif name in _COLUMNS:
        from unstoppable.arrow import columns as m
    elif name == "append_arrow":
        from unstoppable.arrow import ingest as m
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(m, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


# Topic.to_arrow, Topic.to_batches and the append_arrow methods of Topic and
# Partition call these functions through unstoppable.columnar (storage does
# not import this package).
columnar.register(_sys.modules[__name__])
