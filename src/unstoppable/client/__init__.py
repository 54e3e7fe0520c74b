"""The asyncio client: Producer and Consumer over a backend (the embedded log
by default). See producer.py and consumer.py."""
from unstoppable.client._types import (
    ConsumerRecord,
    OffsetAndTimestamp,
    RecordMetadata,
    TopicInfo,
    TopicPartition,
)
from unstoppable.client.backend import Backend, EmbeddedBackend, GroupMember, backend_for
from unstoppable.client.consumer import Consumer
from unstoppable.client.offsets import GroupOffsetStore, OffsetStore, SQLiteOffsetStore
from unstoppable.client.producer import (
    Batch,
    Block,
    BlockWithTimeout,
    DefaultPartitioner,
    DeliveryFuture,
    FailImmediately,
    Murmur2Partitioner,
    PartitionBuffers,
    Producer,
    producer_id_for,
)

__all__ = [
    "Producer", "PartitionBuffers", "Batch", "DeliveryFuture", "Block", "BlockWithTimeout",
    "FailImmediately", "DefaultPartitioner", "Murmur2Partitioner", "RecordMetadata",
    "TopicPartition", "OffsetAndTimestamp", "TopicInfo", "Backend", "EmbeddedBackend",
    "GroupMember", "backend_for", "OffsetStore", "GroupOffsetStore", "SQLiteOffsetStore",
    "producer_id_for", "Consumer", "ConsumerRecord",
]
