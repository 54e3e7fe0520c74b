"""The asyncio Producer: the public API. Batches and backpressure are in
accumulator.py, writing and retries in sender.py, partitioners in
unstoppable.partitioning.

How a record travels::

    send() -> partition (sticky / key hash / explicit) -> the partition's open
    Batch -> sealed when it reaches batch_bytes, when linger_ms passes, or on
    flush()/close() -> the partition's ready queue -> one flush at a time per
    partition -> backend.append -> delivery futures resolve

* **Buffers** (accumulator.PartitionBuffers): one open batch per partition and a
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
* **send_batch of (key, value) pairs**: one compiled loop
  (``_core.accumulate.fill_pairs``) takes send()'s steps for each pair; the
  batches one call seals are handed to the sender when the call ends (or
  before it waits for buffer space, or after each MiB), and the embedded
  log writes each partition's share with one append
  (``EmbeddedBackend.append_now_many``: one lock, one pwrite for many
  storage batches) instead of one per batch.
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
import types
import warnings

from unstoppable._core.accumulate import (
    ALG_MURMUR2,
    ALG_XXH64,
    STOP_END as _STOP_END,
    STOP_SEALED as _STOP_SEALED,
    STOP_SPACE as _STOP_SPACE,
    STOP_TOO_LARGE as _STOP_TOO_LARGE,
    fill_pairs as _fill_pairs,
)
from unstoppable._core.delivery import DeliveryFuture, new_waiter as _new_waiter
from unstoppable._core.hashing import murmur2_partition, xxh64, xxh64_partition
from unstoppable.client._types import RecordMetadata, TopicPartition
from unstoppable.compression import codec_id
from unstoppable.client.accumulator import (
    BACKPRESSURE_MODES,
    BATCH_HEADER_SIZE,
    KEYLESS_RECORD_OVERHEAD,
    PENDING,
    RECORD_OVERHEAD,
    Block,
    BlockWithTimeout,
    BufferSpace,
    FailImmediately,
    PartitionBuffers,
    make_record,
)
from unstoppable.client.embedded import backend_for
from unstoppable.client.sender import Sender
from unstoppable.errors import (
    InvalidRecordError,
    PartitionOutOfRangeError,
    ProducerClosedError,
    ProducerFencedError,
    RecordTooLargeError,
)
from unstoppable.partitioning import DefaultPartitioner, Murmur2Partitioner, compiled_partition_fn, partitioner_kind
from unstoppable.storage.partition import ACKS

__all__ = [
    "Producer",
    "DeliveryFuture",
    "Block",
    "BlockWithTimeout",
    "FailImmediately",
    "DefaultPartitioner",
    "Murmur2Partitioner",
    "RecordMetadata",
    "TopicPartition",
    "producer_id_for",
]

_PID_MASK = 0x7FFF_FFFF_FFFF_FFFF

_NEW, _RUNNING, _CLOSING, _CLOSED = 0, 1, 2, 3
#: How often (s) a running producer looks the topic up again, to take
#: partitions added meanwhile (``Log.create_partitions``); Kafka's producer
#: does the same with its metadata.max.age.ms.
PARTITIONS_CHECK_INTERVAL = 1.0


def producer_id_for(name: str) -> int:
    """The 63-bit producer id of a producer name: ``xxh64(name) & (2**63 - 1)``."""
    return xxh64(name.encode()) & _PID_MASK


@types.coroutine
def _park(w):
    """Wait on a delivery waiter (for flush(): the outcome is not needed)."""
    yield w


#: The built-in partitioners' functions, by the hash send_batch's compiled loop computes.
_ALGS = {xxh64_partition: ALG_XXH64, murmur2_partition: ALG_MURMUR2}

#: The default backpressure mode (stateless, so one instance serves every producer).
_BLOCK = Block()

def _record_args(i: int, r) -> tuple:
    """``(value, key, headers, timestamp)`` of a send_batch record (see there)."""
    if r is None or r.__class__ is bytes or isinstance(r, (bytearray, memoryview)):
        return r, None, None, None
    if r.__class__ is tuple and 2 <= len(r) <= 4:
        return r[1], r[0], r[2] if len(r) > 2 else None, r[3] if len(r) > 3 else None
    raise InvalidRecordError(
        f"record {i}: expected bytes, None or a (key, value[, headers[, timestamp]]) "
        f"tuple, got {type(r).__name__}")


class Producer:
    """Producer(log, topic, *, partitioner=None, batch_bytes=16384, linger_ms=0,
    max_buffer_bytes=32 MiB, backpressure=Block(), acks="written",
    producer_id=None, delivery_timeout_ms=120000, retry_backoff_ms=100,
    fence=False, producer_timeout_ms=60000)

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
    * ``producer_id``: a stable name makes the producer idempotent. One live
      producer owns an id at a time. A new instance takes over from one that
      has not written for ``producer_timeout_ms`` (stopped, hung or idle;
      default 60 s, Kafka's transaction.timeout.ms), or at once with
      ``fence=True``; it bumps the id's epoch, and every later write of the
      old instance fails with ProducerFencedError (none reaches the log). A
      holder that died is replaced at once, without a new epoch.
    * ``delivery_timeout_ms``: how long a batch may keep failing with retriable
      errors (disk full, timeouts) before its records fail; ``retry_backoff_ms``
      is the pause between attempts.
    * ``key_serializer``/``value_serializer``: a callable ``obj -> bytes`` or a
      codec (an object with ``encode``, e.g. ``unstoppable.codecs.JsonCodec()``)
      applied in ``send`` before partitioning; None keys and values (tombstones)
      are passed through unchanged.
    * ``compression``: None, ``"gzip"``, ``"snappy"``, ``"lz4"`` or ``"zstd"``:
      each batch is stored compressed (unless the topic's ``compression``
      setting names another codec); readers decompress transparently.
    """

    def __init__(self, log, topic: str, *, partitioner=None, batch_bytes: int = 16384,
                 linger_ms: float = 0, max_buffer_bytes: int = 32 << 20, backpressure=_BLOCK,
                 acks: str = "written", producer_id: str | None = None,
                 delivery_timeout_ms: float = 120_000, retry_backoff_ms: float = 100,
                 key_serializer=None, value_serializer=None, compression: str | None = None,
                 fence: bool = False, producer_timeout_ms: int = 60_000):
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
        if not isinstance(backpressure, BACKPRESSURE_MODES):
            raise TypeError(f"backpressure must be Block(), BlockWithTimeout(s) or "
                            f"FailImmediately(), got {backpressure!r}")
        if partitioner is not None and not callable(partitioner):
            raise TypeError(f"partitioner must be a callable (key, n) -> int, got {partitioner!r}")
        if producer_id is not None and (not isinstance(producer_id, str) or not producer_id):
            raise TypeError(f"producer_id must be a non-empty str (a stable name), got {producer_id!r}")
        if compression is not None:
            codec_id(compression)  # an unknown name or a missing codec library fails here
        if isinstance(producer_timeout_ms, bool) or not isinstance(producer_timeout_ms, int) \
                or producer_timeout_ms < 1:
            raise ValueError(f"producer_timeout_ms must be an int >= 1, got {producer_timeout_ms!r}")
        if fence and producer_id is None:
            raise ValueError("fence=True needs a producer_id (only idempotent producers are fenced)")
        self.fence = bool(fence)
        self.producer_timeout_ms = producer_timeout_ms
        self.topic = topic
        self.acks = acks
        self.compression = compression
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
        fn = compiled_partition_fn(self.partitioner)
        self._part_fn, self._trusted = (fn, True) if fn is not None else (self.partitioner, False)
        #: The hash send_batch's compiled loop computes for this partitioner (None: not built in).
        self._alg = _ALGS.get(fn)
        self._backend = backend_for(log)
        self._own_backend = self._backend is not log
        self._state = _NEW
        self._start_lock: asyncio.Lock | None = None
        self._loop = None
        self._n = 0
        self._buffers: PartitionBuffers | None = None
        self._space = BufferSpace(max_buffer_bytes, backpressure, topic)
        self._sender: Sender | None = None
        self._pid = -1 if producer_id is None else producer_id_for(producer_id)
        self._id_lock = None
        self._check_timer: asyncio.TimerHandle | None = None
        self._check_task: asyncio.Task | None = None

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
            self._hard_limit = max(info.max_batch_bytes - BATCH_HEADER_SIZE, 1)
            self._batch_bytes = min(self.batch_bytes, self._hard_limit)
            self._max_record = info.max_record_bytes
            epochs, next_seq = [], []
            if self._pid >= 0:
                self._id_lock = await self._backend.claim_producer_id(
                    self._pid, self.producer_id, fence=self.fence,
                    timeout_ms=self.producer_timeout_ms)
                own = getattr(self._id_lock, "epoch", None)
                try:
                    # (On the embedded log this also takes each partition's
                    # append lock once: an append a fenced instance began
                    # before the takeover has finished before we write.)
                    for p in range(n):
                        st = await self._backend.producer_state(self.topic, p, self._pid)
                        epoch, seq = st if st is not None else (0, 0)
                        if own is not None and epoch != own:
                            epoch, seq = own, 0  # a new epoch starts at sequence 0
                        epochs.append(epoch)
                        next_seq.append(seq)
                except BaseException:
                    self._id_lock.release()
                    raise
            buffers = PartitionBuffers(n, self.topic, loop, self.linger_ms / 1000.0)
            buffers.compression = self.compression
            self._sender = Sender(self.topic, self._backend, self.acks, buffers, self._space, loop,
                                  producer_id=self._pid, epochs=epochs, next_seq=next_seq,
                                  delivery_timeout=self.delivery_timeout,
                                  retry_backoff=self.retry_backoff,
                                  heartbeat=getattr(self._id_lock, "heartbeat", None))
            buffers.on_sealed = self._sender.kick
            self._buffers = buffers
            self._open = buffers.open
            self._state = _RUNNING
            if getattr(self._backend, "partitions_grow", False):
                self._check_timer = loop.call_later(PARTITIONS_CHECK_INTERVAL,
                                                    self._check_partitions)
        return self

    def _check_partitions(self) -> None:
        """Every PARTITIONS_CHECK_INTERVAL: look the partition count up again (a task)."""
        if self._state != _RUNNING:
            return
        self._check_task = self._loop.create_task(self._grow_partitions())

    async def _grow_partitions(self) -> None:
        """Take partitions added to the topic since the producer started: the
        partitioner spreads keys over the new count from then on, as Kafka's
        producer does after a metadata refresh."""
        try:
            info = await self._backend.topic_info(self.topic)
        except Exception:  # noqa: BLE001  (deleted, or the backend is away: sends report that)
            info = None
        if self._state != _RUNNING:
            return
        if info is not None and info.partitions > self._n:
            own = getattr(self._id_lock, "epoch", None)
            epochs = self._sender.epochs
            self._buffers.grow(info.partitions)
            self._sender.grow(info.partitions, own if own is not None else max(epochs or [0]))
            self._n = info.partitions
        self._check_timer = self._loop.call_later(PARTITIONS_CHECK_INTERVAL,
                                                  self._check_partitions)

    def _check_not_fenced(self) -> None:
        lock = self._id_lock
        fenced = self._sender.fenced if self._sender is not None else None
        if fenced is None and lock is not None and hasattr(lock, "current_epoch") \
                and lock.current_epoch() != lock.epoch:
            fenced = ProducerFencedError(
                f"producer {self.producer_id!r} epoch {lock.epoch} is fenced: a newer "
                f"instance took over with epoch {lock.current_epoch()}")
        if fenced is not None:
            raise ProducerFencedError(str(fenced))

    async def __aenter__(self) -> "Producer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def flush(self) -> None:
        """Seal every open batch and wait until every record accepted so far is
        written (or has failed; failures are reported on the delivery futures)."""
        if self._state == _NEW:
            return
        self._buffers.seal_all()
        for b in self._buffers.last_batches():
            if b.state == PENDING:
                await _park(_new_waiter(b, -1))  # failures are reported on the delivery futures

    async def close(self) -> None:
        """Flush, then release the producer id. Further sends raise
        ProducerClosedError. Safe to call twice."""
        if self._state in (_CLOSED, _NEW):
            self._state = _CLOSED
            return
        self._state = _CLOSING
        if self._check_timer is not None:
            self._check_timer.cancel()
        try:
            while self._buffers.pending():
                await self.flush()
        finally:
            self._state = _CLOSED
            self._space.close()
            if self._id_lock is not None:
                lock, self._id_lock = self._id_lock, None
                released = lock.release()
                if released is not None:
                    # A remote claim is given up by a task: once close()
                    # returns, another instance can claim the id at once (a
                    # release that fails leaves the claim to lapse by its TTL).
                    await asyncio.wait([released])
            if self._own_backend:
                await self._backend.close()

    @property
    def buffered_bytes(self) -> int:
        """Bytes of accepted records not yet written (the backpressure count)."""
        return self._space.used if self._buffers is not None else 0

    @property
    def partitions(self) -> int:
        """Partition count of the topic (after start). Partitions added to an
        embedded log's topic (``Log.create_partitions``) join within
        PARTITIONS_CHECK_INTERVAL (1 s); keys then spread over the new count."""
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
            value, key = self._serialized(value, key)
        if headers is None and timestamp is None and value.__class__ is bytes:
            if key is None:
                rec = value
                size = len(value) + KEYLESS_RECORD_OVERHEAD
            elif key.__class__ is bytes:
                rec = (key, value)
                size = len(key) + len(value) + RECORD_OVERHEAD
            else:
                rec, size = make_record(value, key, headers, timestamp)
        else:
            rec, size = make_record(value, key, headers, timestamp)
        if partition is None:
            if key is None:
                p = self._buffers.sticky
            elif self._trusted:
                p = self._part_fn(key, self._n)
            else:
                p = self._custom_partition(key)
        else:
            p = self._check_partition(partition)
        if size > self._max_record:
            self._too_large(size)
        space = self._space
        if space.used + size > space.limit or space.waiters:
            await self._reserve(size)
        else:
            space.used += size
        b = self._open[p]
        if b is None or b.nbytes + size > self._hard_limit:
            b = self._buffers.new_batch(p)
        i = len(b.records)
        b.records.append(rec)
        if timestamp is not None:
            b.own_ts = True
        b.nbytes += size
        if b.nbytes >= self._batch_bytes:
            self._buffers.seal(p, True)
        return DeliveryFuture(b, i)

    async def send_and_wait(self, value, key=None, headers=None, timestamp=None, partition=None):
        """Send one record and wait for its RecordMetadata."""
        fut = await self.send(value, key, headers, timestamp, partition)
        return await fut

    async def send_batch(self, records, *, partition=None, per_batch: bool = False) -> list:
        """send_batch(records, *, partition=None, per_batch=False) -> list[DeliveryFuture]

        Accept many records: each a bytes-like value, None, or a tuple
        ``(key, value[, headers[, timestamp]])``. Returns their delivery futures
        in order. Records go through the same partitioning and backpressure as
        ``send``; they are not written atomically as a group.

        ``per_batch=True`` returns instead one delivery future per batch the
        records went into (for the last of them in it): a batch is written,
        or fails, as a whole, so awaiting these covers every record, without
        a future per record.
        """
        if self._state != _RUNNING:
            await self._ensure_running()
        if partition is None and self._alg is not None and not self._serialize:
            return await self._send_pairs(records, per_batch)
        return await self._send_each(records, partition, per_batch)

    async def _send_pairs(self, records, per_batch: bool) -> list:
        """send_batch, partitioned by key: ``(key, value)`` pairs of bytes go
        through send()'s own steps in one compiled loop
        (``_core.accumulate.fill_pairs``: size check, partition, buffer
        space, batch, append, seal), without a coroutine or a Python step per
        record (the booking service publishes its outcome events this way);
        any other record through send(). The loop stops where a record needs
        more (send(), an error, or a wait for buffer space), and goes on after it.

        Batches sealed meanwhile are handed to the sender when the call ends
        or before it awaits anything (``PartitionBuffers.hold``): the sender
        then writes each partition's batches with one append. Nothing can
        tell the difference but the cost: no other code runs in between.
        """
        if records.__class__ is not list and records.__class__ is not tuple:
            return await self._send_each(records, None, per_batch)  # (an iterator: one at a time)
        out: list | None = None if per_batch else []
        last: dict = {}          # per_batch: batch -> index of its last record of ours
        cur: list = [None, 0]    # per_batch: the batch the last record went into, and its index
        buffers, space, n_rec = self._buffers, self._space, len(records)
        i = reserved = 0         # reserved: bytes already taken for record i (after a wait)
        buffers.hold()
        try:
            while i < n_rec:
                i, why = _fill_pairs(records, i, buffers, space, self._open, self._alg, self._n,
                                     self._hard_limit, self._batch_bytes, self._max_record,
                                     RECORD_OVERHEAD, out, last, cur, reserved)
                reserved = 0
                if why == _STOP_END:
                    break
                if why == _STOP_SEALED:  # a MiB sealed: written now, not all at the end
                    buffers.release()
                    buffers.hold()
                    continue
                r = records[i]
                if why == _STOP_TOO_LARGE:
                    self._too_large(len(r[0]) + len(r[1]) + RECORD_OVERHEAD)
                buffers.release()       # the sender writes what is sealed before any wait
                if why == _STOP_SPACE:
                    reserved = len(r[0]) + len(r[1]) + RECORD_OVERHEAD
                    await self._reserve(reserved)
                    buffers.hold()
                    continue
                f = await self.send(*_record_args(i, r), None)     # _STOP_OTHER
                buffers.hold()
                i += 1
                if out is not None:
                    out.append(f)
                    continue
                if cur[0] is not None:
                    last[cur[0]] = cur[1]
                    cur[0] = None
                last[f._b] = f._i
        except BaseException:
            space.release(0)    # a reservation given back on the way out: wake whoever fits now
            raise
        finally:
            buffers.release()
        if out is not None:
            return out
        if cur[0] is not None:
            last[cur[0]] = cur[1]
        return [DeliveryFuture(b, i) for b, i in last.items()]

    async def _send_each(self, records, partition, per_batch: bool) -> list:
        """send_batch one record at a time through send()."""
        out: list = []
        last: dict = {}
        for i, r in enumerate(records):
            f = await self.send(*_record_args(i, r), partition)
            if per_batch:
                last[id(f._b)] = (f._b, f._i)
            else:
                out.append(f)
        return [DeliveryFuture(b, i) for b, i in last.values()] if per_batch else out

    async def send_arrow(self, table, value: str = "value", key: str | None = "key",
                         timestamp: str | None = None, headers: str | None = None) -> dict:
        """send_arrow(table, value="value", key="key", timestamp=None, headers=None) -> dict[int, int]

        Send the rows of a ``pyarrow.Table`` (or RecordBatch) as records,
        partitioned like ``send`` (the producer's partitioner on the key
        column; rows without a key round-robin). Everything sent before is
        flushed first, so the rows come after it in every partition. On a
        backend with the Arrow ingest capability (``Backend.append_arrow``;
        the embedded log has it) the rows are partitioned and encoded in C
        straight from the Arrow buffers (``unstoppable.arrow.append_arrow``),
        each partition's rows visible at once; on others they are sent row by
        row.
        Returns ``{partition: offset of its first row}``, once written at the
        producer's ``acks``. Key/value serializers do not apply (the columns
        are bytes already). Rows are not covered by idempotent sequence numbers.
        """
        if self._state != _RUNNING:
            await self._ensure_running()
        await self.flush()
        self._check_not_fenced()  # these rows carry no epoch for the log to check
        append_arrow = self._backend.append_arrow
        if append_arrow is not None:
            # A built-in partitioner's hash runs in C per row; any other is
            # called per row, as send() would.
            kind = partitioner_kind(self.partitioner) or self.partitioner
            return await append_arrow(self.topic, table, value, key, timestamp, headers, kind,
                                      self.acks)
        return await self._send_rows(table, value, key, timestamp, headers)

    async def _send_rows(self, table, value, key, timestamp, headers) -> dict:
        """send_arrow without the backend capability: row by row through send()."""
        from unstoppable.arrow import require_pyarrow
        pa = require_pyarrow()
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

    def _serialized(self, value, key):
        """``(value, key)`` through the serializers (None stays None)."""
        if value is not None and self.value_serializer is not None:
            value = self.value_serializer(value)
        if key is not None and self.key_serializer is not None:
            key = self.key_serializer(key)
        return value, key

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

    async def _reserve(self, size: int) -> None:
        """Wait until ``size`` bytes fit in the buffer, then take them."""
        if size <= self.max_buffer_bytes:
            # Space frees up only when batches are written: seal them all now
            # rather than waiting for batch_bytes or linger_ms.
            self._buffers.seal_all()
        await self._space.reserve(size, self._loop,
                                  lambda: self._state == _RUNNING or self._state == _CLOSING)

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
