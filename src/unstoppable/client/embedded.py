"""The Backend over the embedded log (:class:`EmbeddedBackend`), and
:func:`backend_for`, which picks the backend for what the application passed.
The group commit of ``acks="fsync"`` appends made on the event loop is
``storage.durability.LoopCommitter``.
The interface is in backend.py.
"""
from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Iterable, Sequence

from unstoppable._core.batch import BatchEncoder
from unstoppable.client import _executor
from unstoppable.client._inotify import Watcher
from unstoppable.client.backend import Backend, GroupMember
from unstoppable.client._types import TopicInfo, TopicPartition
from unstoppable.client.offsets import GroupOffsetStore, OffsetStore
from unstoppable.compression import codec_id
from unstoppable.errors import UnknownTopicError
from unstoppable.storage.groups import ProducerIdLock
from unstoppable.storage.membership import Membership
from unstoppable.storage.durability import LoopCommitter
from unstoppable.storage.log import Log

__all__ = ["EmbeddedBackend", "backend_for"]


def backend_for(log) -> Backend:
    """The backend for what the application passed as ``log``: a ``us.Log``,
    a Backend, or an object with ``__unstoppable_backend__()``."""
    if isinstance(log, Backend):
        return log
    make = getattr(log, "__unstoppable_backend__", None)
    if make is not None:
        return make()
    if isinstance(log, Log):
        return EmbeddedBackend(log)
    raise TypeError(f"expected a unstoppable Log (or a backend), got {type(log).__name__}")


# ---------------------------------------------------------------------------
# The embedded log

class _EmbeddedMember(GroupMember):
    def __init__(self, backend: "EmbeddedBackend", membership: Membership, counts: dict):
        self._backend = backend
        self._m = membership
        self._counts = counts    # partition counts of every topic a live member subscribes to
        self.member_id = membership.member_id
        self.session_timeout = membership.session_timeout_ns / 1e9
        self._last: tuple = ([], {})   # (live members, {topic: partitions}) of the last poll

    async def poll(self) -> set:
        members = self._m.refresh()
        # Every member must compute the assignment from the same inputs: the
        # partition counts of all topics any live member subscribes to, not
        # only of its own (else each sizes its quotas differently and some
        # partitions end up with no owner).
        # Counts are read again each time (a stat of topic.json at most every
        # 0.1 s): partitions added by Log.create_partitions join the
        # assignment at every member's next poll.
        counts = self._counts
        for t in sorted({t for m in members for t in m.topics} | set(counts)):
            try:
                counts[t] = (await self._backend.topic_info(t)).partitions
            except UnknownTopicError:
                pass  # deleted since that member joined: nobody can own its partitions
        wanted = {t: counts[t] for m in members for t in m.topics if t in counts}
        self._last = (members, wanted)
        return {TopicPartition(t, p) for t, p in self._m.target(members, wanted)}

    def formation(self) -> tuple[bool, list[int]] | None:
        members, wanted = self._last
        return self._m.owned_by_live(members, wanted), [m.started_ms for m in members]

    async def try_acquire(self, tp) -> bool:
        return self._m.try_acquire(tp.topic, tp.partition)

    async def release(self, tp) -> None:
        self._m.release(tp.topic, tp.partition)

    def take_lost(self) -> set:
        return {TopicPartition(t, p) for t, p in self._m.take_lost()}

    async def commit(self, store: OffsetStore, group: str, offsets: dict) -> None:
        if isinstance(store, GroupOffsetStore) and store.log_path == self._backend.log.path:
            await store.commit(group, offsets, fence=self._m.fence())
        else:  # the application's own store: its transaction is its fence
            await store.commit(group, offsets)

    async def leave(self) -> None:
        self._m.leave()


class EmbeddedBackend(Backend):
    """The Backend over an embedded ``us.Log`` (in this process; other
    processes may have the same directory open).

    Appends are synchronous pwrites, done on the event loop; for
    ``acks="fsync"`` batches the loop then runs the group commit itself
    (``storage.durability.LoopCommitter``), with the fdatasyncs on C threads. Offset commits and
    writes of more than ``inline_bytes`` at once go to the client's thread
    pool.

    Waiting consumers are woken
      * by appends made in this process, directly: a partition listener plus
        ``call_soon_threadsafe``;
      * by appends from other processes, through inotify on the partition
        directories (the segment write raises IN_MODIFY; the shared change
        counter then says whether the end offset moved), with a poll of the
        change counters as the safety net: every ``max_poll`` seconds for
        ``fast_poll_for`` seconds after the wait began or the last event,
        then every ``idle_poll`` seconds (an idle consumer costs next to no
        CPU; a 4 ms poll kept one at about 2% of a core here);
      * without inotify (``use_inotify=False``, not Linux, or out of watches),
        by polling the counters every ``min_poll`` seconds for the first
        ``fast_poll_for`` seconds of a wait, then every ``max_poll`` seconds.
    Measured p50/p99 from another process: see bench/test_client_bench.py.
    """

    partitions_grow = True      # Log.create_partitions

    def __init__(self, log: Log, *, inline_bytes: int = 1 << 20, min_poll: float = 0.001,
                 max_poll: float = 0.004, fast_poll_for: float = 0.5, idle_poll: float = 0.1,
                 use_inotify: bool = True):
        self.log = log
        self.use_inotify = use_inotify
        self._watcher = None
        self._watch_tried = False
        self._reader_loops: set = set()
        self.inline_bytes = inline_bytes
        self.min_poll = min_poll
        self.max_poll = max_poll
        self.fast_poll_for = fast_poll_for
        self.idle_poll = idle_poll
        self._parts: dict = {}
        self.append_now = self._append_now
        self.append_now_many = self._append_now_many
        self._encoder: BatchEncoder | None = None
        self.when_durable = self._when_durable
        self.append_arrow = self._append_arrow
        self._committers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def _partition(self, topic: str, partition: int):
        key = (topic, partition)
        p = self._parts.get(key)
        if p is None or p.closed:
            p = self._parts[key] = self.log.topic(topic).partition(partition)
        return p

    async def topic_info(self, topic: str) -> TopicInfo:
        t = self.log.topic(topic)
        cfg = t.config
        return TopicInfo(topic, t.partitions, cfg.max_record_bytes, cfg.max_batch_bytes)

    # -- producing

    @staticmethod
    def _write(part, b) -> int:
        base = part.append(b.records, timestamp=b.timestamp, producer_id=b.producer_id,
                           producer_epoch=b.producer_epoch, base_sequence=b.base_sequence,
                           compression=getattr(b, "compression", None))
        if part.config.log_append_time:
            # A LogAppendTime topic: the append time is every record's
            # timestamp, and the RecordMetadata says so, as Kafka's does.
            recs = part.read(base, max_records=1)
            if recs:
                b.timestamp, b.own_ts = recs[0].timestamp, False
        return base

    def _append_now(self, topic: str, partition: int, batch) -> int:
        return self._write(self._partition(topic, partition), batch)

    def _append_now_many(self, topic: str, partition: int, batches: Sequence) -> list | None:
        """Write several batches of one partition with one append: each is
        encoded as its own storage batch (its timestamp, its records), all
        into one buffer, written and made visible together (one file lock,
        one pwrite, one index update instead of one each). Returns each
        batch's base offset; on an error nothing was written.

        Only for batches the plain append would write byte for byte the same
        way: not idempotent, not compressed, not on a LogAppendTime topic
        (its timestamps are read back per batch); for others it returns
        None, having written nothing (the sender writes them one by one)."""
        part = self._partition(topic, partition)
        cfg = part.config
        setting = cfg.compression
        if cfg.log_append_time or (setting != "producer" and codec_id(setting)):
            return None                 # LogAppendTime or a compressed topic: one at a time
        enc = self._encoder
        if enc is None or enc.max_batch_bytes != cfg.max_batch_bytes \
                or enc.max_record_bytes != cfg.max_record_bytes:
            enc = self._encoder = BatchEncoder(cfg.max_batch_bytes, cfg.max_record_bytes)
        for b in batches:
            if b.producer_id >= 0 or (setting == "producer" and b.compression):
                return None             # idempotent or compressed batches: one at a time
        enc.clear()
        try:
            counts = []
            for b in batches:
                counts.append(enc.encode(b.records, b.timestamp))
            base = part.append_encoded(enc)[0]
        finally:
            enc.clear()
            enc.shrink()    # (only past 1 MiB: the sender writes about that much at most)
        bases = []
        for c in counts:
            bases.append(base)
            base += c
        return bases

    def _when_durable(self, topic: str, partition: int, end_offset: int, fn) -> None:
        loop = asyncio.get_running_loop()
        c = self._committers.get(loop)
        if c is None or c.closed:
            c = self._committers[loop] = LoopCommitter(loop)
        durability = self._partition(topic, partition).durability
        durability.check_written(end_offset)
        c.request(durability, end_offset, fn)

    def _append_blocking(self, part, batches, acks):
        bases = []
        try:
            for b in batches:
                bases.append(self._write(part, b))
        except Exception as e:
            return bases, e
        if acks == "fsync":
            try:
                part.wait_durable(bases[-1] + len(batches[-1].records))
            except Exception as e:
                return [], e
        return bases, None

    async def append(self, topic: str, partition: int, batches: Sequence, acks: str):
        try:
            part = self._partition(topic, partition)
        except Exception as e:
            return [], e
        if acks == "fsync" or sum(b.nbytes for b in batches) > self.inline_bytes:
            # With fsync acks the write goes to the thread too: a pwrite into
            # pages another partition's fsync is writing back can stall for
            # the length of that fsync (measured: 175 us per 16 KiB batch on
            # the loop versus 24 us without concurrent fsyncs).
            return await _executor.run(self._append_blocking, part, batches, acks)
        bases = []
        try:
            for b in batches:
                bases.append(self._write(part, b))
        except Exception as e:
            return bases, e
        return bases, None

    async def _append_arrow(self, topic: str, table, value, key, timestamp, headers,
                            partitioner, acks: str) -> dict:
        """Arrow ingest (the ``append_arrow`` capability): the rows are split
        and encoded in C from the Arrow buffers, on the client's thread pool."""
        t = self.log.topic(topic)
        return await _executor.run(
            lambda: t.append_arrow(table, value, key, timestamp, headers,
                                   partitioner=partitioner, acks=acks))

    async def producer_state(self, topic: str, partition: int, producer_id: int):
        part = self._partition(topic, partition)
        return await _executor.run(part.producer_state, producer_id)

    async def claim_producer_id(self, producer_id: int, name: str, *, fence: bool = False,
                                timeout_ms: int = 60_000):
        self.log.check_writable(f"claim producer id {name!r}")
        return await _executor.run(lambda: ProducerIdLock(
            self.log.path, producer_id, name, fence=fence, timeout_ms=timeout_ms))

    # -- consuming

    async def fetch(self, topic: str, partition: int, offset: int, max_records: int,
                    max_bytes: int) -> list:
        return self._partition(topic, partition).read(offset, max_records, max_bytes)

    async def offset_range(self, topic: str, partition: int) -> tuple[int, int]:
        p = self._partition(topic, partition)
        return p.start_offset, p.end_offset

    async def offset_for_time(self, topic: str, partition: int, ts_ms: int) -> int | None:
        return self._partition(topic, partition).offset_for_time(ts_ms)

    def known_end_offset(self, topic: str, partition: int) -> int:
        return self._partition(topic, partition).end_offset

    def known_start_offset(self, topic: str, partition: int) -> int:
        return self._partition(topic, partition).start_offset

    def _inotify(self):
        if not self._watch_tried:
            self._watch_tried = True
            self._watcher = Watcher.create() if self.use_inotify else None
        return self._watcher

    async def wait_for_data(self, positions: dict, timeout: float | None,
                            interrupt: asyncio.Future | None = None) -> bool:
        loop = asyncio.get_running_loop()
        parts = [(self._partition(tp.topic, tp.partition), pos) for tp, pos in positions.items()]
        w = _DataWait(self, loop, parts, timeout)
        for p, _ in parts:
            p.add_listener(w.listener)
        try:
            if interrupt is not None:
                if interrupt.done():
                    return True
                interrupt.add_done_callback(w.wake)
            watcher = self._inotify() if parts else None
            if watcher is not None and all(watcher.watch(p.path) for p, _ in parts):
                watcher.drain()  # stale events: the counters below are the truth
                w.watcher = watcher
            # Look after registering, so an append in between is not missed.
            w.counters = [p.change_counter for p, _ in parts]
            if any(p.end_offset > pos for p, pos in parts):
                return True
            w.arm()
            if w.watcher is not None:
                self._reader_loops.add(loop)
            return await w.fut
        finally:
            w.disarm()
            if interrupt is not None:
                interrupt.remove_done_callback(w.wake)
            for p, _ in parts:
                p.remove_listener(w.listener)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        c = self._committers.pop(loop, None)
        if c is not None:
            c.close()
        if self._watcher is not None:
            for loop in self._reader_loops:  # a wait may still be registered
                if not loop.is_closed():
                    loop.remove_reader(self._watcher.fd)
            self._reader_loops.clear()
            self._watcher.close()
            self._watcher = None

    # -- groups

    async def join_group(self, group: str, topics: Iterable[str], *,
                         session_timeout_ms: float | None = None) -> GroupMember:
        """A member of ``group`` (see ``storage.membership.Membership``): alive
        while its process lives and heartbeats at least every
        ``session_timeout_ms`` (default ``storage.membership.SESSION_TIMEOUT_MS``)."""
        self.log.check_writable(f"join consumer group {group!r}")
        topics = sorted(set(topics))
        counts = {}
        for t in topics:
            counts[t] = (await self.topic_info(t)).partitions
        kw = {} if session_timeout_ms is None else {"session_timeout_ms": session_timeout_ms}
        return _EmbeddedMember(self, Membership(self.log.path, group, topics, **kw), counts)

    def offset_store(self, group: str) -> OffsetStore:
        return GroupOffsetStore(self.log.path)

    def __repr__(self):
        return f"<EmbeddedBackend {self.log.path}>"


class _DataWait:
    """One wait_for_data call: its future, and the three ways it ends
    (an append in this process calls ``listener``; inotify calls
    ``on_event``; ``poll`` checks the shared change counters on a timer,
    and ends the wait at its deadline)."""

    def __init__(self, backend: "EmbeddedBackend", loop, parts: list, timeout: float | None):
        self.b = backend
        self.loop = loop
        self.parts = parts
        self.fut = loop.create_future()
        self.thread = threading.get_ident()
        self.watcher = None
        self.counters: list = []
        self.handle = None
        self.timeout = timeout
        self.start = self.last_event = 0.0
        self.deadline = None
        self.burst_until = 0.0

    def wake(self, _=None) -> None:
        if not self.fut.done():
            self.fut.set_result(True)

    def listener(self) -> None:  # runs in whichever thread appended
        if self.fut.done():
            return
        if threading.get_ident() == self.thread:
            self.wake()
        else:
            self.loop.call_soon_threadsafe(self.wake)

    def changed(self) -> bool:
        for (p, _), c in zip(self.parts, self.counters):
            if p.change_counter != c:
                return True
        return False

    def _delay(self, now: float) -> float:
        b = self.b
        if self.watcher is not None and now >= self.burst_until:
            # inotify wakes us; this is the safety net (a head
            # published long after its segment write raises no event)
            return b.max_poll if now - self.last_event < b.fast_poll_for else b.idle_poll
        if now - self.start < b.fast_poll_for or now < self.burst_until:
            return b.min_poll
        return b.max_poll

    def poll(self) -> None:
        if self.fut.done():
            return
        if self.changed():
            self.fut.set_result(True)
            return
        now = self.loop.time()
        if self.deadline is not None and now >= self.deadline:
            self.fut.set_result(False)
            return
        delay = self._delay(now)
        if self.deadline is not None:
            delay = min(delay, self.deadline - now)
        self.handle = self.loop.call_at(now + delay, self.poll)

    def on_event(self) -> None:
        # A segment was written; its end offset is published in the
        # mmap'ed head right after, which raises no event of its own:
        # look now, then every min_poll for a short while.
        self.watcher.drain()
        if self.fut.done():
            return
        if self.changed():
            self.fut.set_result(True)
            return
        self.last_event = self.loop.time()
        self.burst_until = self.last_event + 0.02
        if self.handle is not None:
            self.handle.cancel()
        self.handle = self.loop.call_soon(self.poll)

    def arm(self) -> None:
        """Start the inotify reader and the first poll (the wait's clock starts now)."""
        self.start = self.last_event = self.loop.time()
        if self.timeout is not None:
            self.deadline = self.start + self.timeout
        if self.watcher is not None:
            self.loop.add_reader(self.watcher.fd, self.on_event)
        timeout = self.timeout
        if self.parts:
            first = self.b.max_poll if self.watcher is not None else self.b.min_poll
            self.handle = self.loop.call_at(
                self.start + (first if timeout is None else min(first, timeout)), self.poll)
        elif self.deadline is not None:  # nothing to watch: sleep until the deadline
            self.handle = self.loop.call_at(self.deadline, self.poll)

    def disarm(self) -> None:
        if self.watcher is not None and self.watcher.fd >= 0:  # close() may have come first
            self.loop.remove_reader(self.watcher.fd)
        if self.handle is not None:
            self.handle.cancel()
