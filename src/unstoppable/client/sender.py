"""The producer's sender: writes the sealed batches of each partition, in
order, through the backend, and settles their delivery futures.

* At most one flush per partition is in flight. A batch that fails with a
  retriable error is retried (same sequence numbers) before any later batch
  of that partition is written, so order within a partition always holds.
* With a backend that can write synchronously (``append_now``) the batches
  are written on the loop as soon as they are sealed; with ``acks="fsync"``
  they then wait in the partition's ``unsynced`` queue until the backend's
  group commit (``when_durable``) reports them durable. Otherwise, and for
  every retry, a flush task per partition awaits ``backend.append``.
* Idempotence: each batch is stamped once with the producer id, the epoch and
  the partition's next sequence number; retries keep them.

What happens to a batch whose write failed is decided in one place,
:func:`decide`, from the error's ``retriable`` attribute
(:func:`unstoppable.errors.is_retriable`).
"""
from __future__ import annotations

import asyncio
import functools

from unstoppable._core.delivery import finish as _finish
from unstoppable.client.accumulator import DONE, FAILED, Batch
from unstoppable.errors import (
    DeliveryTimeoutError,
    ProducerClosedError,
    ProducerFencedError,
    UnknownProducerError,
    is_retriable,
)

__all__ = ["Sender", "decide", "RETRY", "RESTART", "FAIL", "TIMEOUT"]

SEQ_MASK = 0x7FFF_FFFF
#: At most this many bytes of batches (their nbytes bounds) in one write of
#: several batches (``Backend.append_now_many``).
MANY_BYTES = 1 << 20

# The retry/restart table: what the sender does with a batch whose write failed.
#
#   the error                            | within delivery_timeout | past it
#   -------------------------------------+-------------------------+---------
#   retriable (error.retriable)          | RETRY                   | TIMEOUT
#   UnknownProducerError, first time     | RESTART                 | RESTART
#   anything else                        | FAIL                    | FAIL
#
# RETRY: write the same batch again (same sequence numbers) after
# retry_backoff_ms. RESTART: the log forgot this producer (retention deleted
# all it wrote) and nothing of the batch was written: continue the sequence
# from what the log holds and write the batch again, once. TIMEOUT: fail the
# batch with DeliveryTimeoutError, the last error as its cause. FAIL: fail it
# with the error.
RETRY, RESTART, FAIL, TIMEOUT = "retry", "restart", "fail", "timeout"


def decide(err: BaseException, batch: Batch, expired: bool) -> str:
    """The table above: the action for ``batch`` after ``err``; ``expired``
    when the batch is older than delivery_timeout_ms."""
    if is_retriable(err):
        return TIMEOUT if expired else RETRY
    if isinstance(err, UnknownProducerError) and not batch.restarted:
        return RESTART
    return FAIL


class Sender:
    """Writes one producer's sealed batches (see the module docstring).

    It owns the per-partition sequence state of an idempotent producer
    (``epochs``, ``next_seq`` and ``seq_dirty``: the next batch must first
    ask the log where the sequence continues) and the flush tasks.
    """

    def __init__(self, topic: str, backend, acks: str, buffers, space, loop, *, producer_id: int,
                 epochs: list, next_seq: list, delivery_timeout: float, retry_backoff: float,
                 heartbeat=None):
        self.topic = topic
        self.acks = acks
        self._backend = backend
        self._buffers = buffers
        self._ready = buffers.ready
        self._unsynced = buffers.unsynced
        self._in_flight = buffers.in_flight
        self._release = space.release
        self._loop = loop
        self._pid = producer_id
        self.epochs = epochs
        self.next_seq = next_seq
        self.seq_dirty = [False] * len(buffers.ready)
        self.delivery_timeout = delivery_timeout
        self.retry_backoff = retry_backoff
        self._tasks: set = set()
        # Called after each write: tells a new instance of this producer id
        # that this one is alive (storage/producer_ids.py).
        self._heartbeat = heartbeat
        # Set once a newer instance of the producer id took over: every batch
        # fails with it from then on, and the epoch is never taken from the log.
        self.fenced: ProducerFencedError | None = None
        self._when_durable = backend.when_durable
        self._append_now = backend.append_now
        self._inline = self._append_now is not None and (
            acks == "written" or self._when_durable is not None)
        # Several batches of a partition in one write (not for an idempotent
        # producer: the log checks each batch's sequence on its own append).
        self._append_many = getattr(backend, "append_now_many", None) if producer_id < 0 else None

    def grow(self, partitions: int, epoch: int) -> None:
        """Sequence state for partitions added to the topic: an idempotent
        producer starts them at ``epoch`` and asks the log where each
        sequence continues before its first write there (seq_dirty)."""
        extra = partitions - len(self.seq_dirty)
        if extra <= 0:
            return
        if self._pid >= 0:
            self.epochs.extend([epoch] * extra)
            self.next_seq.extend([0] * extra)
        self.seq_dirty.extend([self._pid >= 0] * extra)

    def _stamp(self, b: Batch, p: int) -> None:
        """Give a batch its producer id, epoch and sequence (once: retries keep them)."""
        if self._pid >= 0 and b.base_sequence < 0:
            b.producer_id = self._pid
            b.producer_epoch = self.epochs[p]
            b.base_sequence = self.next_seq[p]
            self.next_seq[p] = (b.base_sequence + len(b.records)) & SEQ_MASK

    def kick(self, p: int) -> None:
        """Start writing partition p's ready batches (at most one flush in flight)."""
        ready = self._ready[p]
        if self.fenced is not None:
            while ready:
                self._fail(ready.popleft(), self.fenced)
            return
        if self._inline and not self.seq_dirty[p]:
            self._write_inline(p, ready)
            if not ready:
                return
        self._in_flight[p] = True
        t = self._loop.create_task(self._flush_partition(p))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _write_inline(self, p: int, ready) -> None:
        """Write p's ready batches on the loop until one fails with something
        the flush task must handle (a retry, a sequence restart or resync)."""
        append_now = self._append_now
        synced = self.acks == "written"
        end = -1
        many = self._append_many if len(ready) > 1 else None
        while ready:
            if many is not None and len(ready) > 1:
                written = self._write_many(many, p, ready, synced)
                if written is None:
                    many = None     # none written: one by one below meets the error again
                else:
                    end = max(end, written)
                continue
            b = ready[0]
            self._stamp(b, p)
            try:
                base = append_now(self.topic, p, b)
            except Exception as e:
                action = decide(e, b, False)
                if action == RESTART:
                    b.restarted = True
                    self.seq_dirty[p] = True
                if action != FAIL:
                    break  # the flush task retries it, in order (after a restart: resynced)
                ready.popleft()
                self._fail(b, e)
                if self.seq_dirty[p]:
                    break  # the flush task resyncs the sequence first
                continue
            ready.popleft()
            end = max(end, self._written(p, b, base, synced))
        if self._heartbeat is not None:
            self._heartbeat()
        if end >= 0:
            try:
                self._when_durable(self.topic, p, end, functools.partial(self._durable, p, end))
            except Exception as e:
                self._durable(p, end, e)

    def _write_many(self, many, p: int, ready, synced: bool) -> int | None:
        """Several sealed batches of p (a send_batch filled them): one append
        (``Backend.append_now_many``) for as many as fit in MANY_BYTES.
        Returns the end offset written awaiting its fsync (-1: none), or
        None when the append failed or declined them (then nothing was written)."""
        batches, nbytes = [], 0
        for b in ready:
            if batches and nbytes + b.nbytes > MANY_BYTES:
                break
            batches.append(b)
            nbytes += b.nbytes
        try:
            bases = many(self.topic, p, batches)
        except Exception:  # noqa: BLE001  (reported by the one-at-a-time path)
            return None
        if bases is None:       # not batches it writes together: one at a time
            return None
        end = -1
        for b, base in zip(batches, bases):
            ready.popleft()
            end = max(end, self._written(p, b, base, synced))
        return end

    def _written(self, p: int, b, base: int, synced: bool) -> int:
        """Batch b of p is written at ``base``: completed now (acks="written"),
        or (acks="fsync") when the log's group commit (its own thread) says
        it is durable. Returns the end offset awaiting that fsync (-1: none)."""
        if synced:
            self._complete(b, base)
            return -1
        b.base_offset = base
        self._unsynced[p].append(b)
        return base + len(b.records)

    async def _flush_partition(self, p: int) -> None:
        ready = self._ready[p]
        backend = self._backend
        try:
            while ready:
                if self.fenced is None and self.seq_dirty[p]:
                    await self._resync(p)
                if self.fenced is not None:
                    self._fence(self.fenced)
                    break
                batches = list(ready)
                for b in batches:
                    self._stamp(b, p)
                bases, err = await backend.append(self.topic, p, batches, self.acks)
                if bases and self._heartbeat is not None:
                    self._heartbeat()
                if bases and self._unsynced[p]:
                    self._durable(p, bases[0], None)  # earlier written batches: durable too
                for b, base in zip(batches, bases):
                    ready.popleft()
                    self._complete(b, base)
                if err is not None:
                    await self._after_error(p, ready[0], err)
        except BaseException as e:  # cancelled (loop shutting down) or a bug: fail, never drop
            while ready:
                self._fail(ready.popleft(), e if isinstance(e, Exception) else
                           ProducerClosedError(f"flush of {self.topic}/{p} was cancelled"))
            raise
        finally:
            self._in_flight[p] = False

    async def _after_error(self, p: int, b: Batch, err: BaseException) -> None:
        """Apply the table to the first unwritten batch of partition p."""
        action = decide(err, b, self._loop.time() - b.created >= self.delivery_timeout)
        if action == RETRY:
            await asyncio.sleep(self.retry_backoff)
            return
        if action == RESTART:
            b.restarted = True
            self.seq_dirty[p] = True
            return
        self._ready[p].popleft()
        if action == TIMEOUT:
            e2 = DeliveryTimeoutError(
                f"{len(b.records)} records for {self.topic}/{p} could not be written "
                f"within delivery_timeout_ms={self.delivery_timeout * 1000:g}: {err}")
            e2.__cause__ = err
            err = e2
        self._fail(b, err)

    async def _resync(self, p: int) -> None:
        """After a batch failed for good, continue the sequence from what the log holds."""
        st = await self._backend.producer_state(self.topic, p, self._pid)
        epoch, seq = st if st is not None else (self.epochs[p], 0)
        if epoch > self.epochs[p]:
            # A newer instance wrote here: never continue under its epoch.
            self._fence(ProducerFencedError(
                f"producer {self._pid} epoch {self.epochs[p]} is fenced on {self.topic}/{p} "
                f"by epoch {epoch}: a newer instance of this producer id took over"))
            return
        if epoch < self.epochs[p]:
            seq = 0  # our epoch has not written here yet: it starts at 0
        self.next_seq[p] = seq
        for b in self._ready[p]:
            b.base_sequence = -1  # not yet attempted: restamp from the log's state
        self.seq_dirty[p] = False

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
        b.state = DONE
        _finish(b)  # wakes its waiters and callbacks from one loop callback
        self._release(b.nbytes)

    def _fence(self, exc: ProducerFencedError) -> None:
        """Fail everything waiting, now and from now on, with ``exc``."""
        if self.fenced is None:
            self.fenced = exc
        for ready in self._ready:
            while ready:
                self._fail(ready.popleft(), self.fenced)

    def _fail(self, b: Batch, exc: BaseException) -> None:
        if isinstance(exc, ProducerFencedError) and self.fenced is None:
            self.fenced = exc
        b.error = exc
        b.state = FAILED
        if self._pid >= 0:
            # The failed batch may or may not have used its sequence numbers:
            # the next batch continues from what the log holds.
            self.seq_dirty[b.partition] = True
        _finish(b)  # wakes its waiters and callbacks from one loop callback
        self._release(b.nbytes)
