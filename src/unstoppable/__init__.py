"""unstoppable: an embedded, durable, partitioned event log with Kafka's
semantics, and an asyncio producer and consumer on top of it.

    import unstoppable as us
    with us.Log("data") as log:
        t = log.create_topic("bookings", partitions=8)
        base = t.partition(0).append([b"hello", (b"key", b"value")])
        for r in t.partition(0).read(base):
            print(r.offset, bytes(r.value))
"""
try:
    from unstoppable._core import (  # noqa: F401
        batch as _batch, delivery as _delivery, hashing as _hashing, segment as _segment)
except ImportError as _e:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "unstoppable's compiled core (unstoppable._core) is not built, so the package "
        "refuses to run (there is no slow fallback). Build it with "
        "`python -m pip install -e .` (needs a C compiler and Cython), or install a "
        f"wheel. Original error: {_e}") from _e

# arrow: Arrow and Parquet (pyarrow is imported on first use); importing it
# gives Topic and Partition their Arrow methods (see unstoppable.columnar).
from unstoppable import arrow, errors  # noqa: F401
from unstoppable._core.batch import Record, RecordBatch
from unstoppable.client import (
    Block,
    BlockWithTimeout,
    Consumer,
    ConsumerRecord,
    FailImmediately,
    GroupOffsetStore,
    OffsetAndTimestamp,
    OffsetStore,
    PartitionedSQLiteOffsetStore,
    Producer,
    RecordMetadata,
    SQLiteOffsetStore,
    TopicPartition,
)
from unstoppable.connect import connect
from unstoppable.errors import *  # noqa: F401,F403
from unstoppable.partitioning import DefaultPartitioner, Murmur2Partitioner
from unstoppable.processor import Processor, RecordFailed
from unstoppable.walcheckpoint import WalCheckpointer
from unstoppable.storage import Log, Partition, Topic, TopicConfig, VerifyReport

__version__ = "0.1.0"

__all__ = [
    # the log (synchronous storage API)
    "Log", "Topic", "TopicConfig", "Partition", "Record", "RecordBatch", "VerifyReport",
    # the asyncio client
    "Producer", "Block", "BlockWithTimeout", "FailImmediately", "RecordMetadata",
    "DefaultPartitioner", "Murmur2Partitioner",
    "Consumer", "ConsumerRecord", "TopicPartition", "OffsetAndTimestamp",
    "OffsetStore", "GroupOffsetStore", "SQLiteOffsetStore", "PartitionedSQLiteOffsetStore",
    # exactly-once processing: a run of records and its offset in one SQLite transaction
    "Processor", "RecordFailed", "WalCheckpointer",
    # any backend from a URL
    "connect",
    # errors (the classes are also importable from here)
    "errors", *errors.__all__,
]
