"""The producer's accumulator: records become batches, per partition, and
accepted bytes count against the buffer limit (backpressure).

* :class:`PartitionBuffers`: per partition one open :class:`Batch`, a queue
  of sealed batches waiting to be written (the first of which may be in
  flight), whether a flush is in flight, and the written batches waiting for
  their fsync. It opens and seals batches (on ``batch_bytes``, on
  ``linger_ms``, or when asked) and tells the sender when a partition has a
  sealed batch.
* :class:`BufferSpace`: the count of accepted bytes not yet written, and the
  senders waiting for room, served first come, first served.
* The backpressure modes :class:`Block`, :class:`BlockWithTimeout` and
  :class:`FailImmediately`.
* :func:`make_record`: checks one record and bounds its encoded size.

Nothing here does I/O; the sender (sender.py) writes what is sealed.
"""
from __future__ import annotations

import collections
import random
import time

from unstoppable._core import batch as _batch
from unstoppable._core.batch import MAX_TIMESTAMP
from unstoppable.errors import BufferFullError, InvalidRecordError, ProducerClosedError, RecordTooLargeError

__all__ = [
    "Block", "BlockWithTimeout", "FailImmediately",
    "Batch", "PartitionBuffers", "BufferSpace", "make_record",
    "KEYLESS_RECORD_OVERHEAD", "RECORD_OVERHEAD", "BATCH_HEADER_SIZE",
]

# ---------------------------------------------------------------------------
# Sizes of the storage format, from the compiled core that defines it
# (csrc/batch.h). Upper bounds of one record's framing around its key, value
# and headers; a keyless, headerless record needs at most
# KEYLESS_RECORD_OVERHEAD of them. The sums are upper bounds, so a batch
# estimated below max_batch_bytes always encodes as one storage batch.
KEYLESS_RECORD_OVERHEAD = _batch.RECORD_MAX_OVERHEAD_PLAIN
RECORD_OVERHEAD = _batch.RECORD_MAX_OVERHEAD
#: The fixed header of a record batch.
BATCH_HEADER_SIZE = _batch.HEADER_SIZE
#: Framing bytes of one header beyond its key and value (key length <= 5,
#: value length <= 5).
HEADER_OVERHEAD = 10

#: Batch states.
PENDING, DONE, FAILED = 0, 1, 2


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


BACKPRESSURE_MODES = (Block, BlockWithTimeout, FailImmediately)


# ---------------------------------------------------------------------------
# Batches

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
                 "compression", "__weakref__")

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
        self.state = PENDING
        self.base_offset = -1
        self.error: BaseException | None = None
        self.waiters: list | None = None
        self.callbacks: list | None = None
        self.error_seen = False
        self.timer = None
        self.own_ts = False  # some record carries its own timestamp
        self.restarted = False  # rewritten once after UnknownProducerError
        self.compression: str | None = None  # the producer's codec for this batch

    def __len__(self):
        return len(self.records)

    def __del__(self):
        if self.state == FAILED and not self.error_seen:
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


class PartitionBuffers:
    """The accumulator: per partition one open batch, a queue of sealed
    batches waiting to be written (the first of which may be in flight),
    whether a flush is in flight, and the written batches waiting for their
    fsync.

    ``on_sealed(p)`` is called when partition p gets a sealed batch and has
    no flush in flight. Keyless records go to ``sticky``, which moves on when
    its batch fills.
    """

    __slots__ = ("open", "ready", "in_flight", "unsynced", "sticky", "_n", "_topic", "_loop",
                 "_linger", "on_sealed", "_sweep_pending", "_closed", "compression", "held")

    def __init__(self, partitions: int, topic: str = "", loop=None, linger: float = 0.0,
                 on_sealed=None):
        self.open: list[Batch | None] = [None] * partitions
        self.ready: list[collections.deque] = [collections.deque() for _ in range(partitions)]
        self.in_flight = [False] * partitions
        #: Written batches waiting for their fsync (acks="fsync" written
        #: inline), oldest first; they complete in this order.
        self.unsynced: list[collections.deque] = [collections.deque() for _ in range(partitions)]
        self.sticky = random.randrange(partitions) if partitions else 0
        self._n = partitions
        self._topic = topic
        self._loop = loop
        self._linger = linger
        self.on_sealed = on_sealed
        self._sweep_pending = False
        self._closed = False
        self.compression: str | None = None  # given to every new batch (Producer(compression=...))
        #: While not None (see :meth:`hold`), partitions whose batches were
        #: sealed, whose ``on_sealed`` waits for :meth:`release`.
        self.held: list | None = None

    def grow(self, partitions: int) -> None:
        """Take partitions added to the topic (``Log.create_partitions``):
        ``partitions`` more than now; the lists grow in place, so whoever
        holds them (the sender) sees the new ones."""
        extra = partitions - self._n
        if extra <= 0:
            return
        self.open.extend([None] * extra)
        self.ready.extend(collections.deque() for _ in range(extra))
        self.in_flight.extend([False] * extra)
        self.unsynced.extend(collections.deque() for _ in range(extra))
        self._n = partitions

    def pending(self) -> int:
        """Batches not yet completed (open ones included)."""
        return (sum(len(q) for q in self.ready) + sum(len(q) for q in self.unsynced)
                + sum(b is not None for b in self.open))

    def new_batch(self, p: int) -> Batch:
        """Open a batch for partition p (sealing the one open there)."""
        if self.open[p] is not None:
            self.seal(p, True)
        b = self.open[p] = Batch(self._topic, p, self._loop, time.time_ns() // 1_000_000)
        b.compression = self.compression
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
        if self.open[b.partition] is b:
            self.seal(b.partition, False)

    def _sweep(self) -> None:
        self._sweep_pending = False
        self.seal_all()

    def seal(self, p: int, full: bool) -> None:
        """Move partition p's open batch to its ready queue; ``full`` when it
        reached batch_bytes (keyless records then move to the next partition)."""
        b = self.open[p]
        self.open[p] = None
        if b.timer is not None:
            b.timer.cancel()  # drops the timer's reference to the batch
            b.timer = None
        self.ready[p].append(b)
        if full and p == self.sticky and self._n > 1:
            self.sticky = (p + 1) % self._n
        if self.held is not None:
            self.held.append(p)
        elif not self.in_flight[p]:
            self.on_sealed(p)

    def hold(self) -> None:
        """Keep the batches sealed from now on in their ready queues, without
        telling the sender, until :meth:`release`: a send_batch call fills
        many batches of a partition, which the sender then writes with one
        append instead of one each. Only for a stretch of code that does not
        await (the caller releases before any await and in a ``finally``)."""
        if self.held is None:
            self.held = []

    def release(self) -> None:
        """End :meth:`hold`: tell the sender of every partition sealed meanwhile."""
        held, self.held = self.held, None
        if held:
            for p in dict.fromkeys(held):
                if self.ready[p] and not self.in_flight[p]:
                    self.on_sealed(p)

    def seal_all(self) -> None:
        """Seal every open batch."""
        for p in range(self._n):
            if self.open[p] is not None:
                self.seal(p, False)

    def last_batches(self) -> list:
        """Per partition with batches not yet completed, the newest of them."""
        return [q[-1] if q else u[-1] for q, u in zip(self.ready, self.unsynced) if q or u]


# ---------------------------------------------------------------------------
# Backpressure

class BufferSpace:
    """Accepted bytes not yet written (``used``) against ``limit``, and the
    senders waiting for room (``waiters``: ``(size, future)``, FIFO).

    Records already accepted are never dropped: a full buffer only makes
    new senders wait (:class:`Block`), wait at most a while
    (:class:`BlockWithTimeout`) or fail (:class:`FailImmediately`).
    """

    __slots__ = ("used", "limit", "mode", "waiters", "_topic")

    def __init__(self, limit: int, mode, topic: str):
        self.used = 0
        self.limit = limit
        self.mode = mode
        self.waiters: collections.deque = collections.deque()
        self._topic = topic

    def release(self, nbytes: int) -> None:
        """``nbytes`` were written (or failed): wake the waiters that fit now."""
        self.used -= nbytes
        waiters = self.waiters
        while waiters:
            entry = waiters[0]
            if entry[1].done():
                waiters.popleft()
                continue
            if self.used + entry[0] > self.limit:
                break
            waiters.popleft()
            self.used += entry[0]  # reserved for that sender
            entry[1].set_result(None)

    async def reserve(self, size: int, loop, still_open) -> None:
        """Wait until ``size`` bytes fit, then take them (per the mode).
        ``still_open()`` is asked after a wait: False gives the bytes back and
        raises ProducerClosedError."""
        if size > self.limit:
            raise RecordTooLargeError(
                f"a record of up to {size} bytes can never fit in max_buffer_bytes={self.limit}")
        if self.used + size <= self.limit and not self.waiters:
            self.used += size
            return
        mode = self.mode
        if isinstance(mode, FailImmediately):
            raise BufferFullError(
                f"producer buffer for {self._topic!r} holds {self.used} bytes of "
                f"max_buffer_bytes={self.limit}; a record of up to {size} bytes "
                "was refused (backpressure=FailImmediately())")
        w = loop.create_future()
        entry = (size, w)
        self.waiters.append(entry)
        timer = None
        if mode.timeout is not None:
            def expire():
                if not w.done():
                    w.set_exception(BufferFullError(
                        f"producer buffer for {self._topic!r} stayed full ({self.used} bytes "
                        f"of max_buffer_bytes={self.limit}) for {mode.timeout:g} s; "
                        f"a record of up to {size} bytes was refused (backpressure={mode!r})"))
            timer = loop.call_later(mode.timeout, expire)
        try:
            await w
        except BaseException:
            if w.done() and not w.cancelled() and w.exception() is None:
                self.release(size)  # granted, but the sender went away
            try:
                self.waiters.remove(entry)
            except ValueError:
                pass
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if not still_open():
            self.release(size)
            raise ProducerClosedError(f"producer for {self._topic!r} closed while waiting for space")

    def close(self) -> None:
        """Fail every sender still waiting for room."""
        for entry in list(self.waiters):
            if not entry[1].done():
                entry[1].set_exception(ProducerClosedError(f"producer for {self._topic!r} closed"))


# ---------------------------------------------------------------------------
# Records

def as_bytes(obj, what: str):
    """``obj`` as bytes (a copy of a buffer) or None; InvalidRecordError otherwise."""
    if obj is None or obj.__class__ is bytes:
        return obj
    if isinstance(obj, str):
        raise InvalidRecordError(f"{what} must be bytes-like or None, got str (encode it first)")
    try:
        return bytes(memoryview(obj))  # a copy: the caller may reuse its buffer
    except TypeError:
        raise InvalidRecordError(
            f"{what} must be bytes-like or None, got {type(obj).__name__}") from None


def _headers(headers) -> tuple[list, int]:
    """Checked headers as a list of (str, bytes | None), and their framing-inclusive size."""
    items = headers.items() if isinstance(headers, dict) else headers
    if not isinstance(items, (list, tuple, type({}.items()))):
        raise InvalidRecordError(
            f"headers must be a list of (str, bytes | None) pairs or a dict, got {type(headers).__name__}")
    hs = []
    size = 0
    for h in items:
        if not isinstance(h, tuple) or len(h) != 2:
            raise InvalidRecordError(f"each header must be a (str, bytes | None) pair, got {h!r}")
        k, v = h
        if not isinstance(k, str):
            raise InvalidRecordError(f"header key must be str, got {type(k).__name__}")
        v = as_bytes(v, f"header {k!r} value")
        size += len(k.encode("utf-8", "surrogateescape")) + (len(v) if v is not None else 0) + HEADER_OVERHEAD
        hs.append((k, v))
    return hs, size


def make_record(value, key, headers, timestamp):
    """Validate one record; return (storage record, upper bound of its encoded size)."""
    value = as_bytes(value, "value")
    key = as_bytes(key, "key")
    size = RECORD_OVERHEAD + (len(value) if value is not None else 0) + (len(key) if key is not None else 0)
    hs = None
    if headers is not None:
        hs, hsize = _headers(headers)
        size += hsize
    if timestamp is not None:
        if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp <= MAX_TIMESTAMP:
            raise InvalidRecordError(
                f"timestamp must be an int of ms since the epoch in 0 .. {MAX_TIMESTAMP} (9999-12-31T23:59:59.999Z), got {timestamp!r}")
        return (key, value, hs, timestamp), size
    if hs is not None:
        return (key, value, hs), size
    return (key, value), size

