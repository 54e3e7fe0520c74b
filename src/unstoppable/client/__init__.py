"""The asyncio client: Producer and Consumer over a backend (the embedded log
by default).

Modules: producer.py (the public Producer) over accumulator.py (batches,
backpressure) and sender.py (writes, retries); consumer.py over positions.py;
backend.py (the Backend interface) with embedded.py (the embedded log) and
offsets.py (committed-offset stores). Internals are imported from their own
modules.
"""
from unstoppable.client._types import (
    ConsumerRecord,
    OffsetAndTimestamp,
    RecordMetadata,
    TopicInfo,
    TopicPartition,
)
from unstoppable.client.backend import Backend, GroupMember
from unstoppable.client.consumer import Consumer
from unstoppable.client.embedded import EmbeddedBackend
from unstoppable.client.offsets import (
    GroupOffsetStore,
    OffsetStore,
    PartitionedSQLiteOffsetStore,
    SQLiteOffsetStore,
)
from unstoppable.client.producer import (
    Block,
    BlockWithTimeout,
    DeliveryFuture,
    FailImmediately,
    Producer,
    producer_id_for,
)
from unstoppable.partitioning import DefaultPartitioner, Murmur2Partitioner

__all__ = [
    # producing
    "Producer", "DeliveryFuture", "RecordMetadata", "producer_id_for",
    "Block", "BlockWithTimeout", "FailImmediately",
    "DefaultPartitioner", "Murmur2Partitioner",
    # consuming
    "Consumer", "ConsumerRecord", "OffsetAndTimestamp",
    "OffsetStore", "GroupOffsetStore", "SQLiteOffsetStore", "PartitionedSQLiteOffsetStore",
    # backends and shared types
    "Backend", "GroupMember", "EmbeddedBackend", "TopicPartition", "TopicInfo",
]
