"""The asyncio Producer: partitioning, per-partition batches, backpressure,
idempotence.

How a record travels::

    send() -> partition (sticky / key hash / explicit) -> the partition's open
    Batch -> sealed when it reaches batch_bytes, when linger_ms passes, or on
    flush()/close() -> the partition's ready queue -> one flush at a time per
    partition -> backend.append -> delivery futures resolve

* **Buffers** (:class:`PartitionBuffers`): one open batch per partition and a
  queue of sealed ones. At most one flush per partition is in flight, and a
  batch that fails with a retriable error is retried (same sequence numbers)
  before any later batch of that partition is written, so order within a
  partition always holds.
* **Where the work happens**: on the embedded log the write is a synchronous
  C encode plus pwrite, done right on the event loop when a batch is sealed.
  With ``acks="written"`` the batch completes there. With ``acks="fsync"`` it
  waits in the partition's ``unsynced`` queue until the backend's group
  commit reports it durable: on the embedded log the loop itself plans each
  round (every partition written since the last) and C threads, which never
  take the GIL, run its fdatasyncs, at most two rounds at a time; meanwhile
  later batches keep being written and join the next round.
* **Waking senders**: a task awaiting a delivery future sleeps on a private
  waiter; a settled batch wakes all of its waiters from one loop callback
  rather than one ``call_soon`` each (about 1.6 us apiece on the reference
  machine, which was a third of a record's cost with 1,000 senders). The
  futures, the waiters and the wake-up are compiled
  (``unstoppable._core.delivery``): with 1,000 senders, most of a record's
  time on the loop is the trip between a task and what it awaits.
* **Backpressure**: accepted records that are not yet written count against
  ``max_buffer_bytes``. When a record would pass it, the producer seals every
  open batch at once (so space frees up as soon as possible) and then, per
  mode: :class:`Block` waits (FIFO, no polling), :class:`BlockWithTimeout`
  waits at most its timeout, :class:`FailImmediately` raises BufferFullError.
  Records already accepted are never dropped.
* **Record timestamps**: a record without an explicit timestamp gets the time
  its batch was opened (milliseconds); with ``linger_ms=0`` that is the moment
  of the send, give or take the loop iteration.
* **Idempotence**: with ``producer_id="name"``, the id is
  ``xxh64(name) & (2**63 - 1)``. Each batch carries the id, the epoch and the
  partition's next sequence number, continued from what the log already holds
  (``producer_state``). The log drops a repeated batch and answers with its
  original offsets, so retries never duplicate. One live producer per id: a
  second one gets ProducerIdInUseError (the embedded log enforces this with a
  lock the kernel releases when the holder dies).

Delivery futures are light objects (a batch and an index; no asyncio
future behind them); they support ``await``, ``done()``, ``result()``,
``exception()`` and ``add_done_callback()``, and work with
``asyncio.gather``/``wait_for``/``wait``. Cancelling a wait never cancels the
write.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import random
import time
import types
import warnings

from unstoppable._core.hashing import murmur2_partition, xxh64, xxh64_partition
from unstoppable.client._types import RecordMetadata, TopicPartition
from unstoppable._core.delivery import DeliveryFuture, finish as _finish, new_waiter as _new_waiter
from unstoppable.client import _executor
from unstoppable.client.backend import EmbeddedBackend, backend_for, is_retriable
from unstoppable.errors import (
    BufferFullError,
    DeliveryTimeoutError,
    InvalidRecordError,
    PartitionOutOfRangeError,
    ProducerClosedError,
    RecordTooLargeError,
    UnknownProducerError,
)
from unstoppable.storage.partition import ACKS

__all__ = [
    "Producer",
    "PartitionBuffers",
    "Batch",
    "Block",
    "BlockWithTimeout",
    "FailImmediately",
    "DefaultPartitioner",
    "Murmur2Partitioner",
    "RecordMetadata",
    "TopicPartition",
    "producer_id_for",
]

# Upper bounds of one record's framing around its key, value and headers
# (csrc/batch.h): body length <= 5 bytes, timestamp delta <= 10 (any two
# timestamps may share a batch), key length <= 5, value length <= 5, header
# count <= 5. A keyless, headerless record needs at most 22 of them (its key
# length and header count take 1 byte each). The sums are upper bounds, so a
# batch estimated below max_batch_bytes always encodes as one storage batch.
_FAST_OVERHEAD = 22
_SLOW_OVERHEAD = 30
_BATCH_HEADER = 52
_SEQ_MASK = 0x7FFF_FFFF
_PID_MASK = 0x7FFF_FFFF_FFFF_FFFF

_NEW, _RUNNING, _CLOSING, _CLOSED = 0, 1, 2, 3
_PENDING, _DONE, _FAILED = 0, 1, 2


def producer_id_for(name: str) -> int:
    """The 63-bit producer id of a producer name: ``xxh64(name) & (2**63 - 1)``."""
    return xxh64(name.encode()) & _PID_MASK


# ---------------------------------------------------------------------------
# Backpressure modes

class Block:
    """When the buffer is full, wait until enough of it is written (the default)."""

    __slots__ = ()
    timeout = None

    def __repr__(self):
        return "Block()"


class BlockWithTimeout:
    """When the buffer is full, wait at most ``seconds``, then raise BufferFullError."""

    __slots__ = ("timeout",)

    def __init__(self, seconds: float):
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError(f"BlockWithTimeout needs a positive number of seconds, got {seconds!r}")
        self.timeout = float(seconds)

    def __repr__(self):
        return f"BlockWithTimeout({self.timeout})"


class FailImmediately:
    """When the buffer is full, raise BufferFullError at once."""

    __slots__ = ()
    timeout = 0.0

    def __repr__(self):
        return "FailImmediately()"


# ---------------------------------------------------------------------------
# Partitioners (any callable (key, n) -> int works as well)

class DefaultPartitioner:
    """The default: ``xxh64(key) % n`` (in C)."""

    __slots__ = ()

    def __call__(self, key, n: int) -> int:
        return xxh64_partition(key, n)

    def __repr__(self):
        return "DefaultPartitioner()"

    def partition_many(self, keys, n: int):
        """partition_many(keys, n) -> numpy.ndarray[int32]

        This partitioner's partition of every key, in C without the GIL:
        ``keys`` is a list of bytes, a numpy bytes array or a pyarrow binary
        array (``unstoppable._core.hashing.xxh64_partition_many``). Needs numpy.
        """
        from unstoppable._core.hashing import xxh64_partition_many
        return xxh64_partition_many(keys, n)


class Murmur2Partitioner:
    """Kafka's partitioner, ``toPositive(murmur2(key)) % n``: a key lands on the
    same partition number as with a Kafka producer."""

    __slots__ = ()

    def __call__(self, key, n: int) -> int:
        return murmur2_partition(key, n)

    def __repr__(self):
        return "Murmur2Partitioner()"

    def partition_many(self, keys, n: int):
        """partition_many(keys, n) -> numpy.ndarray[int32]

        This partitioner's partition of every key, in C without the GIL:
        ``keys`` is a list of bytes, a numpy bytes array or a pyarrow binary
        array (``unstoppable._core.hashing.murmur2_partition_many``). Needs numpy.
        """
        from unstoppable._core.hashing import murmur2_partition_many
        return murmur2_partition_many(keys, n)


# ---------------------------------------------------------------------------
# Batches and delivery futures

class Batch:
    """Records bound for one partition, written together as one storage batch.

    ``records`` holds storage records (bytes, or ``(key, value, headers,
    timestamp)`` tuples); ``nbytes`` is an upper bound of their encoded size;
    ``created`` is the loop time it was opened, ``timestamp`` the ms
    timestamp of records without their own.
    """

    __slots__ = ("topic", "partition", "records", "nbytes", "created", "timestamp",
                 "producer_id", "producer_epoch", "base_sequence", "state", "base_offset",
                 "error", "waiters", "callbacks", "loop", "error_seen", "timer", "own_ts", "restarted",
                 "__weakref__")

    def __init__(self, topic: str, partition: int, loop, timestamp: int):
        self.topic = topic
        self.partition = partition
        self.records: list = []
        self.nbytes = 0
        self.loop = loop
        self.created = loop.time()
        self.timestamp = timestamp
        self.producer_id = -1
        self.producer_epoch = -1
        self.base_sequence = -1
        self.state = _PENDING
        self.base_offset = -1
        self.error: BaseException | None = None
        self.waiters: list | None = None
        self.callbacks: list | None = None
        self.error_seen = False
        self.timer = None
        self.own_ts = False  # some record carries its own timestamp
        self.restarted = False  # rewritten once after UnknownProducerError

    def __len__(self):
        return len(self.records)

    def __del__(self):
        if self.state == _FAILED and not self.error_seen:
            try:
                self.loop.call_exception_handler({
                    "message": (f"unstoppable: {len(self.records)} records for "
                                f"{self.topic}/{self.partition} failed delivery and no delivery "
                                "future was awaited to see the error"),
                    "exception": self.error,
                })
            except Exception:
                pass

    def __repr__(self):
        st = ("pending", "done", "failed")[self.state]
        return f"<Batch {self.topic}/{self.partition} records={len(self.records)} {st}>"


@types.coroutine
def _park(w):
    """Wait on a delivery waiter (for flush(): the outcome is not needed)."""
    yield w


class PartitionBuffers:
    """The accumulator: per partition one open batch, a queue of sealed
    batches waiting to be written (the first of which may be in flight), and
    whether a flush is in flight. (The producer keeps the buffered byte count
    itself: it is read on every send.)"""

    __slots__ = ("open", "ready", "in_flight", "unsynced")

    def __init__(self, partitions: int):
        self.open: list[Batch | None] = [None] * partitions
        self.ready: list[collections.deque] = [collections.deque() for _ in range(partitions)]
        self.in_flight = [False] * partitions
        #: Written batches waiting for their fsync (acks="fsync" written
        #: inline), oldest first; they complete in this order.
        self.unsynced: list[collections.deque] = [collections.deque() for _ in range(partitions)]

    def pending(self) -> int:
        """Batches not yet completed (open ones included)."""
        return (sum(len(q) for q in self.ready) + sum(len(q) for q in self.unsynced)
                + sum(b is not None for b in self.open))


# ---------------------------------------------------------------------------
# The producer

class Producer:
    """Producer(log, topic, *, partitioner=None, batch_bytes=16384, linger_ms=0,
    max_buffer_bytes=32 MiB, backpressure=Block(), acks="written",
    producer_id=None, delivery_timeout_ms=120000, retry_backoff_ms=100)

    An asyncio producer for one topic of ``log`` (a ``us.Log`` or another
    backend). Use as ``async with Producer(...) as p:`` (or ``await
    p.start()`` / ``await p.close()``).

    * ``partitioner``: a callable ``(key, n) -> int`` for keyed records;
      default :class:`DefaultPartitioner` (xxh64), or :class:`Murmur2Partitioner`.
      Keyless records stick to one partition until its batch fills.
    * ``batch_bytes``: seal a partition's batch when it reaches this size.
    * ``linger_ms``: seal it at the latest this long after it was opened
      (0: on the next event-loop iteration).
    * ``max_buffer_bytes``/``backpressure``: see the module docstring.
    * ``acks``: ``"written"`` (page cache; survives a crash of this process) or
      ``"fsync"`` (on stable storage; survives power loss).
    * ``producer_id``: a stable name makes the producer idempotent.
    * ``delivery_timeout_ms``: how long a batch may keep failing with retriable
      errors (disk full, timeouts) before its records fail; ``retry_backoff_ms``
      is the pause between attempts.
    * ``key_serializer``/``value_serializer``: a callable ``obj -> bytes`` or a
      codec (an object with ``encode``, e.g. ``unstoppable.codecs.JsonCodec()``)
      applied in ``send`` before partitioning; None keys and values (tombstones)
      are passed through unchanged.
    """

    def __init__(self, log, topic: str, *, partitioner=None, batch_bytes: int = 16384,
                 linger_ms: float = 0, max_buffer_bytes: int = 32 << 20, backpressure=Block(),
                 acks: str = "written", producer_id: str | None = None,
                 delivery_timeout_ms: float = 120_000, retry_backoff_ms: float = 100,
                 key_serializer=None, value_serializer=None):
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, got {type(topic).__name__}")
        if acks not in ACKS:
            raise ValueError(f"acks must be one of {ACKS}, got {acks!r}")
        for name, v, lo in (("batch_bytes", batch_bytes, 1), ("max_buffer_bytes", max_buffer_bytes, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        for name, v in (("linger_ms", linger_ms), ("delivery_timeout_ms", delivery_timeout_ms),
                        ("retry_backoff_ms", retry_backoff_ms)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if backpressure is None:
            backpressure = Block()
        if not isinstance(backpressure, (Block, BlockWithTimeout, FailImmediately)):
            raise TypeError(f"backpressure must be Block(), BlockWithTimeout(s) or "
                            f"FailImmediately(), got {backpressure!r}")
        if partitioner is not None and not callable(partitioner):
            raise TypeError(f"partitioner must be a callable (key, n) -> int, got {partitioner!r}")
        if producer_id is not None and (not isinstance(producer_id, str) or not producer_id):
            raise TypeError(f"producer_id must be a non-empty str (a stable name), got {producer_id!r}")
        self.topic = topic
        self.acks = acks
        self.batch_bytes = batch_bytes
        self.linger_ms = linger_ms
        self.max_buffer_bytes = max_buffer_bytes
        self.backpressure = backpressure
        self.producer_id = producer_id
        self.delivery_timeout = delivery_timeout_ms / 1000.0
        self.retry_backoff = retry_backoff_ms / 1000.0
        self.key_serializer = _encoder_of(key_serializer, "key_serializer")
        self.value_serializer = _encoder_of(value_serializer, "value_serializer")
        self._serialize = self.key_serializer is not None or self.value_serializer is not None
        self.partitioner = partitioner if partitioner is not None else DefaultPartitioner()
        if isinstance(self.partitioner, DefaultPartitioner):
            self._part_fn, self._trusted = xxh64_partition, True
        elif isinstance(self.partitioner, Murmur2Partitioner):
            self._part_fn, self._trusted = murmur2_partition, True
        else:
            self._part_fn, self._trusted = self.partitioner, False
        self._backend = backend_for(log)
        self._own_backend = self._backend is not log
        self._state = _NEW
        self._start_lock: asyncio.Lock | None = None
        self._loop = None
        self._n = 0
        self._buffers: PartitionBuffers | None = None
        self._space_waiters: collections.deque = collections.deque()
        self._tasks: set = set()
        self._pid = -1 if producer_id is None else producer_id_for(producer_id)
        self._epochs: list[int] = []
        self._next_seq: list[int] = []
        self._seq_dirty: list[bool] = []
        self._id_lock = None
        self._inline = False
        self._unsynced: list = []
        self._when_durable = None
        self._sweep_pending = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> "Producer":
        """Look the topic up and, for an idempotent producer, claim the id and
        load where each partition's sequence continues. Called by ``async with``
        and, if needed, by the first ``send``."""
        if self._state == _RUNNING:
            return self
        if self._state != _NEW:
            raise ProducerClosedError(f"producer for {self.topic!r} is closed")
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._state != _NEW:
                return self
            loop = asyncio.get_running_loop()
            info = await self._backend.topic_info(self.topic)
            self._loop = loop
            self._n = n = info.partitions
            self._hard_limit = max(info.max_batch_bytes - _BATCH_HEADER, 1)
            self._batch_bytes = min(self.batch_bytes, self._hard_limit)
            self._max_record = info.max_record_bytes
            self._buffers = PartitionBuffers(n)
            self._open = self._buffers.open
            self._ready = self._buffers.ready
            self._in_flight = self._buffers.in_flight
            self._sticky = random.randrange(n)
            self._buffered = 0
            self._linger = self.linger_ms / 1000.0
            self._when_durable = self._backend.when_durable
            self._inline = self._backend.append_now is not None and (
                self.acks == "written" or self._when_durable is not None)
            self._append_now = self._backend.append_now
            self._unsynced = self._buffers.unsynced
            self._seq_dirty = [False] * n
            if self._pid >= 0:
                self._id_lock = await self._backend.claim_producer_id(self._pid, self.producer_id)
                try:
                    for p in range(n):
                        st = await self._backend.producer_state(self.topic, p, self._pid)
                        epoch, seq = st if st is not None else (0, 0)
                        self._epochs.append(epoch)
                        self._next_seq.append(seq)
                except BaseException:
                    self._id_lock.release()
                    raise
            self._state = _RUNNING
        return self

    async def __aenter__(self) -> "Producer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def flush(self) -> None:
        """Seal every open batch and wait until every record accepted so far is
        written (or has failed; failures are reported on the delivery futures)."""
        if self._state == _NEW:
            return
        self._seal_all()
        last = [q[-1] if q else u[-1] for q, u in zip(self._ready, self._unsynced) if q or u]
        for b in last:
            if b.state == _PENDING:
                await _park(_new_waiter(b, -1))  # failures are reported on the delivery futures

    async def close(self) -> None:
        """Flush, then release the producer id. Further sends raise
        ProducerClosedError. Safe to call twice."""
        if self._state in (_CLOSED, _NEW):
            self._state = _CLOSED
            return
        self._state = _CLOSING
        try:
            while self._buffers.pending():
                await self.flush()
        finally:
            self._state = _CLOSED
            for entry in list(self._space_waiters):
                if not entry[1].done():
                    entry[1].set_exception(ProducerClosedError(f"producer for {self.topic!r} closed"))
            if self._id_lock is not None:
                self._id_lock.release()
                self._id_lock = None
            if self._own_backend:
                await self._backend.close()

    @property
    def buffered_bytes(self) -> int:
        """Bytes of accepted records not yet written (the backpressure count)."""
        return self._buffered if self._buffers is not None else 0

    @property
    def partitions(self) -> int:
        """Partition count of the topic (after start)."""
        return self._n

    # ----------------------------------------------------------------- send

    async def send(self, value, key=None, headers=None, timestamp=None, partition=None):
        """send(value, key=None, headers=None, timestamp=None, partition=None) -> DeliveryFuture

        Accept one record (waiting for buffer space per the backpressure mode)
        and return its delivery future. ``value`` and ``key`` are bytes-like or
        None, ``headers`` a list of ``(str, bytes | None)`` or a dict,
        ``timestamp`` ms since the epoch. Invalid records raise here, never
        later inside a batch.
        """
        if self._state != _RUNNING:
            await self._ensure_running()
        if self._serialize:
            if value is not None and self.value_serializer is not None:
                value = self.value_serializer(value)
            if key is not None and self.key_serializer is not None:
                key = self.key_serializer(key)
        if headers is None and timestamp is None and value.__class__ is bytes:
            if key is None:
                rec = value
                size = len(value) + _FAST_OVERHEAD
            elif key.__class__ is bytes:
                rec = (key, value)
                size = len(key) + len(value) + _SLOW_OVERHEAD
            else:
                rec, size = _make_record(value, key, headers, timestamp)
        else:
            rec, size = _make_record(value, key, headers, timestamp)
        if partition is None:
            if key is None:
                p = self._sticky
            elif self._trusted:
                p = self._part_fn(key, self._n)
            else:
                p = self._custom_partition(key)
        else:
            p = self._check_partition(partition)
        if size > self._max_record:
            self._too_large(size)
        if self._buffered + size > self.max_buffer_bytes or self._space_waiters:
            await self._reserve(size)
        else:
            self._buffered += size
        b = self._open[p]
        if b is None or b.nbytes + size > self._hard_limit:
            b = self._new_batch(p)
        i = len(b.records)
        b.records.append(rec)
        if timestamp is not None:
            b.own_ts = True
        b.nbytes += size
        if b.nbytes >= self._batch_bytes:
            self._seal(p, True)
        return DeliveryFuture(b, i)

    async def send_and_wait(self, value, key=None, headers=None, timestamp=None, partition=None):
        """Send one record and wait for its RecordMetadata."""
        fut = await self.send(value, key, headers, timestamp, partition)
        return await fut

    async def send_batch(self, records, *, partition=None) -> list:
        """send_batch(records, *, partition=None) -> list[DeliveryFuture]

        Accept many records: each a bytes-like value, None, or a tuple
        ``(key, value[, headers[, timestamp]])``. Returns their delivery futures
        in order. Records go through the same partitioning and backpressure as
        ``send``; they are not written atomically as a group.
        """
        if self._state != _RUNNING:
            await self._ensure_running()
        out = []
        for i, r in enumerate(records):
            if r is None or r.__class__ is bytes:
                key = headers = ts = None
                value = r
            elif r.__class__ is tuple and 2 <= len(r) <= 4:
                key, value = r[0], r[1]
                headers = r[2] if len(r) > 2 else None
                ts = r[3] if len(r) > 3 else None
            elif isinstance(r, (bytearray, memoryview)):
                key = headers = ts = None
                value = r
            else:
                raise InvalidRecordError(
                    f"record {i}: expected bytes, None or a (key, value[, headers[, timestamp]]) "
                    f"tuple, got {type(r).__name__}")
            out.append(await self.send(value, key, headers, ts, partition))
        return out

    async def send_arrow(self, table, value: str = "value", key: str | None = "key",
                         timestamp: str | None = None, headers: str | None = None) -> dict:
        """send_arrow(table, value="value", key="key", timestamp=None, headers=None) -> dict[int, int]

        Send the rows of a ``pyarrow.Table`` (or RecordBatch) as records,
        partitioned like ``send`` (the producer's partitioner on the key
        column; rows without a key round-robin). Everything sent before is
        flushed first, so the rows come after it in every partition. On the
        embedded log the rows are partitioned and encoded in C straight from
        the Arrow buffers (``unstoppable.arrow.append_arrow``), each
        partition's rows visible at once; other backends send them row by row.
        Returns ``{partition: offset of its first row}``, once written at the
        producer's ``acks``. Key/value serializers do not apply (the columns
        are bytes already). Rows are not covered by idempotent sequence numbers.
        """
        if self._state != _RUNNING:
            await self._ensure_running()
        await self.flush()
        from unstoppable import arrow as _arrow

        if isinstance(self._backend, EmbeddedBackend):
            if isinstance(self.partitioner, Murmur2Partitioner):
                kind = "murmur2"
            elif isinstance(self.partitioner, DefaultPartitioner):
                kind = "xxh64"
            else:
                kind = self.partitioner  # called per row, as send() would
            topic = self._backend.log.topic(self.topic)
            return await _executor.run(
                lambda: _arrow.append_arrow(topic, table, value, key, timestamp, headers,
                                            partitioner=kind, acks=self.acks))
        pa = _arrow._pa()
        cols = table.to_pydict() if hasattr(table, "to_pydict") else pa.table(table).to_pydict()
        if value not in cols:
            raise KeyError(f"send_arrow: the table has no column {value!r}")
        n = len(cols[value])
        keys = cols.get(key) if key is not None else None
        tss = cols.get(timestamp) if timestamp is not None else None
        hdrs = cols.get(headers) if headers is not None else None
        futs = []
        for i in range(n):
            ts = tss[i] if tss is not None else None
            if ts is not None and not isinstance(ts, int):
                ts = int(ts.timestamp() * 1000)
            h = hdrs[i] if hdrs is not None else None
            if h is not None and not isinstance(h, dict):
                h = [(x["key"], x["value"]) for x in h]
            futs.append(await self.send(cols[value][i], keys[i] if keys is not None else None,
                                        h, ts))
        first: dict = {}
        for f in futs:
            md = await f
            if md.partition not in first or md.offset < first[md.partition]:
                first[md.partition] = md.offset
        return first

    # ------------------------------------------------------------- internals

    async def _ensure_running(self):
        if self._state == _NEW:
            await self.start()
        if self._state != _RUNNING:
            raise ProducerClosedError(f"producer for {self.topic!r} is closed; send refused")

    def _custom_partition(self, key) -> int:
        p = self._part_fn(key, self._n)
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < self._n:
            raise ValueError(f"partitioner {self.partitioner!r} returned {p!r} for a topic with "
                             f"{self._n} partitions; it must return an int in 0 .. {self._n - 1}")
        return p

    def _check_partition(self, partition) -> int:
        if isinstance(partition, bool) or not isinstance(partition, int):
            raise TypeError(f"partition must be an int, got {type(partition).__name__}")
        if not 0 <= partition < self._n:
            raise PartitionOutOfRangeError(
                f"topic {self.topic!r} has partitions 0 .. {self._n - 1}, not {partition}")
        return partition

    def _too_large(self, size: int):
        raise RecordTooLargeError(
            f"record needs up to {size} bytes encoded, more than the topic's "
            f"max_record_bytes={self._max_record}")

    def _new_batch(self, p: int) -> Batch:
        if self._open[p] is not None:
            self._seal(p, True)
        b = self._open[p] = Batch(self.topic, p, self._loop, time.time_ns() // 1_000_000)
        if self._linger:
            b.timer = self._loop.call_later(self._linger, self._linger_expired, b)
        elif not self._sweep_pending:
            # linger_ms=0: one callback per loop iteration seals whatever is
            # open then (not one per batch: a send loop that never yields
            # would pile them up, each holding a written batch alive).
            self._sweep_pending = True
            self._loop.call_soon(self._sweep)
        return b

    def _linger_expired(self, b: Batch) -> None:
        b.timer = None
        if self._open[b.partition] is b:
            self._seal(b.partition, False)

    def _sweep(self) -> None:
        self._sweep_pending = False
        if self._buffers is not None:
            self._seal_all()

    def _seal(self, p: int, full: bool) -> None:
        b = self._open[p]
        self._open[p] = None
        if b.timer is not None:
            b.timer.cancel()  # drops the timer's reference to the batch
            b.timer = None
        self._ready[p].append(b)
        if full and p == self._sticky and self._n > 1:
            self._sticky = (p + 1) % self._n
        if not self._in_flight[p]:
            self._kick(p)

    def _seal_all(self) -> None:
        for p in range(self._n):
            if self._open[p] is not None:
                self._seal(p, False)

    def _stamp(self, b: Batch, p: int) -> None:
        """Give a batch its producer id, epoch and sequence (once: retries keep them)."""
        if self._pid >= 0 and b.base_sequence < 0:
            b.producer_id = self._pid
            b.producer_epoch = self._epochs[p]
            b.base_sequence = self._next_seq[p]
            self._next_seq[p] = (b.base_sequence + len(b.records)) & _SEQ_MASK

    def _kick(self, p: int) -> None:
        """Start writing partition p's ready batches (at most one flush in flight)."""
        ready = self._ready[p]
        if self._inline and not self._seq_dirty[p]:
            append_now = self._append_now
            synced = self.acks == "written"
            end = -1
            while ready:
                b = ready[0]
                self._stamp(b, p)
                try:
                    base = append_now(self.topic, p, b)
                except Exception as e:
                    if is_retriable(e):
                        break  # the flush task retries it, in order
                    if self._restart_sequence(e, b, p):
                        break  # the flush task starts the sequence over and retries it
                    ready.popleft()
                    self._fail(b, e)
                    if self._seq_dirty[p]:
                        break  # the flush task resyncs the sequence first
                    continue
                ready.popleft()
                if synced:
                    self._complete(b, base)
                else:
                    # acks="fsync": written on the loop; it completes when the
                    # log's group commit (its own thread) says it is durable.
                    b.base_offset = base
                    self._unsynced[p].append(b)
                    end = base + len(b.records)
            if end >= 0:
                try:
                    self._when_durable(self.topic, p, end, functools.partial(self._durable, p, end))
                except Exception as e:
                    self._durable(p, end, e)
            if not ready:
                return
        self._in_flight[p] = True
        t = self._loop.create_task(self._flush_partition(p))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _flush_partition(self, p: int) -> None:
        ready = self._ready[p]
        backend = self._backend
        try:
            while ready:
                if self._seq_dirty[p]:
                    await self._resync(p)
                batches = list(ready)
                for b in batches:
                    self._stamp(b, p)
                bases, err = await backend.append(self.topic, p, batches, self.acks)
                if bases and self._unsynced[p]:
                    self._durable(p, bases[0], None)  # earlier written batches: durable too
                for b, base in zip(batches, bases):
                    ready.popleft()
                    self._complete(b, base)
                if err is None:
                    continue
                b = ready[0]
                if is_retriable(err) and self._loop.time() - b.created < self.delivery_timeout:
                    await asyncio.sleep(self.retry_backoff)
                    continue
                if self._restart_sequence(err, b, p):
                    continue
                ready.popleft()
                if is_retriable(err):
                    e2 = DeliveryTimeoutError(
                        f"{len(b.records)} records for {self.topic}/{p} could not be written "
                        f"within delivery_timeout_ms={self.delivery_timeout * 1000:g}: {err}")
                    e2.__cause__ = err
                    err = e2
                self._fail(b, err)
        except BaseException as e:  # cancelled (loop shutting down) or a bug: fail, never drop
            while ready:
                self._fail(ready.popleft(), e if isinstance(e, Exception) else
                           ProducerClosedError(f"flush of {self.topic}/{p} was cancelled"))
            raise
        finally:
            self._in_flight[p] = False

    def _restart_sequence(self, err: BaseException, b: Batch, p: int) -> bool:
        """After UnknownProducerError (the log forgot this producer: retention
        deleted all it wrote, and nothing of ``b`` was written), have the
        flush task start partition p's sequence over from what the log holds
        and write ``b`` again, once. True when it will."""
        if not isinstance(err, UnknownProducerError) or b.restarted:
            return False
        b.restarted = True
        self._seq_dirty[p] = True
        return True

    async def _resync(self, p: int) -> None:
        """After a batch failed for good, continue the sequence from what the log holds."""
        st = await self._backend.producer_state(self.topic, p, self._pid)
        epoch, seq = st if st is not None else (0, 0)
        self._epochs[p] = epoch
        self._next_seq[p] = seq
        for b in self._ready[p]:
            b.base_sequence = -1  # not yet attempted: restamp from the log's state
        self._seq_dirty[p] = False

    def _durable(self, p: int, end: int, err: BaseException | None) -> None:
        """The log says partition p is durable below ``end`` (``err`` None),
        or cannot get there: settle the written batches that end by then."""
        q = self._unsynced[p]
        while q and q[0].base_offset + len(q[0].records) <= end:
            b = q.popleft()
            if err is None:
                self._complete(b, b.base_offset)
            else:
                self._fail(b, err)

    def _complete(self, b: Batch, base: int) -> None:
        b.base_offset = base
        b.state = _DONE
        _finish(b)  # wakes its waiters and callbacks from one loop callback
        self._release(b.nbytes)

    def _fail(self, b: Batch, exc: BaseException) -> None:
        b.error = exc
        b.state = _FAILED
        if self._pid >= 0:
            # The failed batch may or may not have used its sequence numbers:
            # the next batch continues from what the log holds.
            self._seq_dirty[b.partition] = True
        _finish(b)  # wakes its waiters and callbacks from one loop callback
        self._release(b.nbytes)

    # ---------------------------------------------------------- backpressure

    def _release(self, nbytes: int) -> None:
        self._buffered -= nbytes
        waiters = self._space_waiters
        while waiters:
            entry = waiters[0]
            if entry[1].done():
                waiters.popleft()
                continue
            if self._buffered + entry[0] > self.max_buffer_bytes:
                break
            waiters.popleft()
            self._buffered += entry[0]  # reserved for that sender
            entry[1].set_result(None)

    async def _reserve(self, size: int) -> None:
        """Wait until ``size`` bytes fit in the buffer, then take them."""
        if size > self.max_buffer_bytes:
            raise RecordTooLargeError(
                f"a record of up to {size} bytes can never fit in max_buffer_bytes="
                f"{self.max_buffer_bytes}")
        # Space frees up only when batches are written: seal them all now
        # rather than waiting for batch_bytes or linger_ms.
        self._seal_all()
        if self._buffered + size <= self.max_buffer_bytes and not self._space_waiters:
            self._buffered += size
            return
        mode = self.backpressure
        if isinstance(mode, FailImmediately):
            raise BufferFullError(
                f"producer buffer for {self.topic!r} holds {self._buffered} bytes of "
                f"max_buffer_bytes={self.max_buffer_bytes}; a record of up to {size} bytes "
                "was refused (backpressure=FailImmediately())")
        w = self._loop.create_future()
        entry = (size, w)
        self._space_waiters.append(entry)
        timer = None
        if mode.timeout is not None:
            def expire():
                if not w.done():
                    w.set_exception(BufferFullError(
                        f"producer buffer for {self.topic!r} stayed full ({self._buffered} bytes "
                        f"of max_buffer_bytes={self.max_buffer_bytes}) for {mode.timeout:g} s; "
                        f"a record of up to {size} bytes was refused (backpressure={mode!r})"))
            timer = self._loop.call_later(mode.timeout, expire)
        try:
            await w
        except BaseException:
            if w.done() and not w.cancelled() and w.exception() is None:
                self._release(size)  # granted, but the sender went away
            try:
                self._space_waiters.remove(entry)
            except ValueError:
                pass
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if self._state != _RUNNING and self._state != _CLOSING:
            self._release(size)
            raise ProducerClosedError(f"producer for {self.topic!r} closed while waiting for space")

    def __del__(self):
        if getattr(self, "_state", None) == _RUNNING and self._buffers is not None and self._buffers.pending():
            warnings.warn(f"Producer for {self.topic!r} was garbage-collected with records not "
                          "written; use `async with` or await close()", ResourceWarning, stacklevel=2)

    def __repr__(self):
        st = ("new", "running", "closing", "closed")[self._state]
        return f"<Producer topic={self.topic!r} acks={self.acks!r} {st}>"


def _encoder_of(ser, what: str):
    """A serializer given as a callable or as a codec with ``encode``."""
    if ser is None:
        return None
    enc = getattr(ser, "encode", None)
    if callable(enc) and not isinstance(ser, (str, bytes)):
        return enc
    if callable(ser):
        return ser
    raise TypeError(f"{what} must be a callable obj -> bytes or a codec with encode(), got {ser!r}")


def _as_bytes(obj, what: str):
    if obj is None or obj.__class__ is bytes:
        return obj
    if isinstance(obj, str):
        raise InvalidRecordError(f"{what} must be bytes-like or None, got str (encode it first)")
    try:
        return bytes(memoryview(obj))  # a copy: the caller may reuse its buffer
    except TypeError:
        raise InvalidRecordError(
            f"{what} must be bytes-like or None, got {type(obj).__name__}") from None


def _make_record(value, key, headers, timestamp):
    """Validate one record; return (storage record, upper bound of its encoded size)."""
    value = _as_bytes(value, "value")
    key = _as_bytes(key, "key")
    size = _SLOW_OVERHEAD + (len(value) if value is not None else 0) + (len(key) if key is not None else 0)
    hs = None
    if headers is not None:
        items = headers.items() if isinstance(headers, dict) else headers
        if not isinstance(items, (list, tuple, type({}.items()))):
            raise InvalidRecordError(
                f"headers must be a list of (str, bytes | None) pairs or a dict, got {type(headers).__name__}")
        hs = []
        for h in items:
            if not isinstance(h, tuple) or len(h) != 2:
                raise InvalidRecordError(f"each header must be a (str, bytes | None) pair, got {h!r}")
            k, v = h
            if not isinstance(k, str):
                raise InvalidRecordError(f"header key must be str, got {type(k).__name__}")
            v = _as_bytes(v, f"header {k!r} value")
            size += len(k.encode("utf-8", "surrogateescape")) + (len(v) if v is not None else 0) + 10
            hs.append((k, v))
    if timestamp is not None:
        if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp < (1 << 62):
            raise InvalidRecordError(
                f"timestamp must be an int of ms since the epoch in 0 .. 2**62-1, got {timestamp!r}")
        return (key, value, hs, timestamp), size
    if hs is not None:
        return (key, value, hs), size
    return (key, value), size
