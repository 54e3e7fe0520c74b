"""Small value types shared by the producer, the consumer and the backends
(named as in aiokafka)."""
from __future__ import annotations

from typing import NamedTuple

__all__ = ["TopicPartition", "RecordMetadata", "OffsetAndTimestamp", "TopicInfo", "ConsumerRecord"]


class TopicPartition(NamedTuple):
    """A (topic, partition) pair; hashable, usable as a dict key."""
    topic: str
    partition: int


class RecordMetadata(NamedTuple):
    """Where a sent record landed: what a delivery future resolves to."""
    topic: str
    partition: int
    offset: int
    timestamp: int


class OffsetAndTimestamp(NamedTuple):
    """The answer of ``Consumer.offsets_for_times`` for one partition."""
    offset: int
    timestamp: int


class TopicInfo(NamedTuple):
    """What the client needs to know about a topic."""
    name: str
    partitions: int
    max_record_bytes: int
    max_batch_bytes: int


class ConsumerRecord(NamedTuple):
    """A record whose key and value went through the consumer's deserializers
    (the same fields as the storage Record the consumer yields without them)."""
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: object
    value: object
    headers: list
