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

from unstoppable import errors
from unstoppable._core.batch import Record, RecordBatch
from unstoppable.errors import *  # noqa: F401,F403
from unstoppable.storage import Log, Partition, Topic, TopicConfig, VerifyReport

__version__ = "0.1.0"

__all__ = [
    "Log",
    "Topic",
    "TopicConfig",
    "Partition",
    "Record",
    "RecordBatch",
    "VerifyReport",
    "errors",
] + list(errors.__all__)

# The asyncio client (producer, consumer, groups).
from unstoppable.client import (  # noqa: E402
    Block,
    BlockWithTimeout,
    Consumer,
    ConsumerRecord,
    DefaultPartitioner,
    FailImmediately,
    GroupOffsetStore,
    Murmur2Partitioner,
    OffsetAndTimestamp,
    OffsetStore,
    Producer,
    RecordMetadata,
    SQLiteOffsetStore,
    TopicPartition,
)

__all__ += [
    "Producer", "Consumer", "ConsumerRecord", "Block", "BlockWithTimeout", "FailImmediately",
    "DefaultPartitioner", "Murmur2Partitioner", "RecordMetadata", "TopicPartition",
    "OffsetAndTimestamp", "OffsetStore", "GroupOffsetStore", "SQLiteOffsetStore",
]

from unstoppable.connect import connect as connect  # noqa: E402  (re-exported)

__all__.append("connect")

from unstoppable.processor import Processor, RecordFailed  # noqa: E402

__all__ += ["Processor", "RecordFailed"]
