"""The interface the Producer and Consumer run on: :class:`Backend` and
:class:`GroupMember`. Interfaces only; the implementations are
:class:`~unstoppable.client.embedded.EmbeddedBackend` (the embedded log) and
:class:`~unstoppable.backends.jetstream.JetStreamBackend` (NATS JetStream).

A backend is what stands between the asyncio client and the storage: it
appends batches, reads records, waits for new ones, and provides group
membership and committed offsets. :class:`Backend` lists everything the client
needs. Optional capabilities are attributes that are None when a backend
lacks them (``append_now``, ``when_durable``, ``append_arrow``); the client
asks for the capability, never for the backend's class.

Contract for the batches handed to :meth:`Backend.append`: each has
``records`` (a list of storage records: bytes, None, or ``(key, value,
headers, timestamp)`` tuples), ``timestamp`` (ms, for records without one),
``nbytes`` (an upper bound of the encoded size), and ``producer_id``,
``producer_epoch``, ``base_sequence`` (-1 when not idempotent). A batch always
fits in one storage batch of its topic.
"""
from __future__ import annotations

import abc
import asyncio
from typing import Callable, Iterable, Sequence

from unstoppable.client._types import TopicInfo, TopicPartition
from unstoppable.client.offsets import OffsetStore

__all__ = ["Backend", "GroupMember"]


class GroupMember(abc.ABC):
    """This consumer's membership of a group, as a backend provides it."""

    member_id: str

    @abc.abstractmethod
    async def poll(self) -> set:
        """Refresh the view of live members; return this member's target
        assignment (a set of TopicPartition)."""

    @abc.abstractmethod
    async def try_acquire(self, tp: TopicPartition) -> bool:
        """Take exclusive ownership of a partition if nobody holds it."""

    @abc.abstractmethod
    async def release(self, tp: TopicPartition) -> None:
        """Give a partition up (after its offsets are committed)."""

    @abc.abstractmethod
    async def leave(self) -> None:
        """Release everything and leave the group."""

    #: Seconds without a poll or heartbeat after which the others take this
    #: member's partitions (None: the backend has no such timeout).
    session_timeout: float | None = None

    def formation(self) -> tuple[bool, list[int]] | None:
        """What the last ``poll`` saw of the group's formation, for the
        consumer's ``initial_rebalance_delay_ms``: (whether a live member
        owns a partition of the group, the join times of the live members
        in ms since the epoch), or None where the backend cannot tell (the
        consumer then takes its share at once)."""
        return None

    def take_lost(self) -> set:
        """Partitions (TopicPartition) other members took over while this one
        was silent past the session timeout, each reported once. They are no
        longer this member's: not to be committed, nor released."""
        return set()

    async def commit(self, store: OffsetStore, group: str, offsets: dict) -> None:
        """Commit ``offsets`` to ``store`` as this member: a backend that can
        fence checks, atomically with the write, that the member still owns
        every partition, and raises FencedMemberError otherwise."""
        await store.commit(group, offsets)


class Backend(abc.ABC):
    """What the Producer and Consumer need from a log."""

    #: The optional synchronous fast path for ``acks="written"``: a backend
    #: whose writes never wait on the network or the disk sets this to a
    #: callable ``(topic, partition, batch) -> base offset``.
    append_now: Callable | None = None

    #: The optional companion of ``append_now`` for several batches of one
    #: partition: a callable ``(topic, partition, batches) -> [base offset of
    #: each]`` that writes them all at once, or raises with none written.
    #: It returns None, writing nothing, for batches it does not write
    #: together; the sender then writes them one by one.
    append_now_many: Callable | None = None

    #: The optional companion of ``append_now`` for ``acks="fsync"``: a
    #: callable ``(topic, partition, end_offset, fn)`` that returns at once
    #: and later calls ``fn(error)`` on the running loop, ``error`` None once
    #: every offset below ``end_offset`` is durable.
    when_durable: Callable | None = None

    #: The optional Arrow ingest: a coroutine function ``(topic, table,
    #: value, key, timestamp, headers, partitioner, acks) -> {partition:
    #: first offset}`` that partitions and encodes the rows of a
    #: ``pyarrow.Table`` without a Python object per row (``partitioner`` is
    #: ``"xxh64"``, ``"murmur2"`` or a callable ``(key, n) -> int``). Without
    #: it, ``Producer.send_arrow`` sends the rows one by one.
    append_arrow: Callable | None = None

    #: Whether a topic's partition count can grow while producers run
    #: (``Log.create_partitions``): a running Producer then looks the count
    #: up again every PARTITIONS_CHECK_INTERVAL (client/producer.py).
    partitions_grow: bool = False

    # -- topics

    @abc.abstractmethod
    async def topic_info(self, topic: str) -> TopicInfo:
        """Partition count and limits of a topic; raises UnknownTopicError."""

    # -- producing

    @abc.abstractmethod
    async def append(self, topic: str, partition: int, batches: Sequence, acks: str):
        """Append ``batches`` in order; return ``(bases, error)``: the base
        offsets of the leading batches that are written (and durable, for
        ``acks="fsync"``), and the error that stopped the rest (None when all
        succeeded)."""

    @abc.abstractmethod
    async def producer_state(self, topic: str, partition: int, producer_id: int):
        """``(epoch, next_sequence)`` of an idempotent producer id, or None."""

    @abc.abstractmethod
    async def claim_producer_id(self, producer_id: int, name: str, *, fence: bool = False,
                                timeout_ms: int = 60_000):
        """Make sure no other live producer uses this id; returns an object
        with ``release()``, ``heartbeat()`` and ``epoch`` (the epoch to write
        with). A holder that has not written for ``timeout_ms``, or any
        holder with ``fence``, is fenced where the backend supports it.
        Raises ProducerIdInUseError."""

    # -- consuming

    @abc.abstractmethod
    async def fetch(self, topic: str, partition: int, offset: int, max_records: int,
                    max_bytes: int) -> list:
        """Records from ``offset`` on (empty at the end); raises
        OffsetOutOfRangeError outside [start, end]."""

    @abc.abstractmethod
    async def offset_range(self, topic: str, partition: int) -> tuple[int, int]:
        """``(start_offset, end_offset)``."""

    @abc.abstractmethod
    async def offset_for_time(self, topic: str, partition: int, ts_ms: int) -> int | None:
        """First offset with a timestamp >= ts_ms, or None."""

    @abc.abstractmethod
    def known_end_offset(self, topic: str, partition: int) -> int:
        """The end offset as far as this client knows it without waiting
        (exact on the embedded log; the last value seen on a remote one)."""

    def known_start_offset(self, topic: str, partition: int) -> int | None:
        """The first offset retention has not deleted, as far as this client
        knows it without waiting (None: unknown). ``Consumer.lag()`` counts
        from here at the earliest."""
        return None

    @abc.abstractmethod
    async def wait_for_data(self, positions: dict, timeout: float | None,
                            interrupt: asyncio.Future | None = None) -> bool:
        """Sleep until some partition in ``{TopicPartition: offset}`` may hold
        records at or past its offset, ``interrupt`` completes, or ``timeout``
        seconds pass. Returns False on timeout. Spurious wake-ups are allowed;
        busy-waiting is not."""

    # -- groups

    @abc.abstractmethod
    async def join_group(self, group: str, topics: Iterable[str], *,
                         session_timeout_ms: float | None = None) -> GroupMember:
        """Register as a member of ``group`` consuming ``topics``; one silent
        (no poll, no heartbeat) for ``session_timeout_ms`` (None: the
        backend's default) loses its partitions to the others."""

    @abc.abstractmethod
    def offset_store(self, group: str) -> OffsetStore:
        """The default committed-offset store of a group."""

    async def close(self) -> None:  # noqa: B027  (optional hook: nothing to release by default)
        """Release what the backend holds for this client."""
