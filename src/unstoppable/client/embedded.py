"""The Backend over the embedded log (:class:`EmbeddedBackend`), the loop's
group commit for ``acks="fsync"`` appends (``_LoopCommitter``), and
:func:`backend_for`, which picks the backend for what the application passed.
The interface is in backend.py.
"""
from __future__ import annotations

import asyncio
import select
import threading
import weakref
from typing import Iterable, Sequence

from unstoppable.client import _executor
from unstoppable.client._inotify import Watcher
from unstoppable.client.backend import Backend, GroupMember
from unstoppable.client._types import TopicInfo, TopicPartition
from unstoppable.client.offsets import GroupOffsetStore, OffsetStore
from unstoppable.errors import LogClosedError
from unstoppable.storage.groups import Membership, ProducerIdLock
from unstoppable.storage.log import Log, _GroupCommit

__all__ = ["EmbeddedBackend", "backend_for"]


class _LoopCommitter:
    """Group commit for ``acks="fsync"`` appends made on one event loop, run
    by that loop.

    The loop writes a batch, then asks for it to become durable. If fewer
    than ``max_rounds`` rounds are in flight, a round starts at once: the
    loop plans it (``Partition._sync_plan``: duplicated descriptors of what
    lies past each checkpoint) and hands the descriptors to a
    :class:`~unstoppable._core.segment.LoopSyncer`, a C thread that starts
    writeback of all, fdatasyncs each and makes a pipe readable. Otherwise
    the request waits for the next round, which starts as soon as one ends
    and covers everything asked for meanwhile. When a round ends the loop
    moves each checkpoint (``Partition._sync_done``) and answers every
    request that is now durable.

    Why the loop and not the log's sync thread (``_GroupCommit``) runs the
    Python of a round: a thread that wakes from fdatasync must take the GIL
    back from the loop, and each hand-off costs the loop time in both
    directions. With 1,000 fsync senders the log's sync thread ran 1,700
    rounds of 1.3 partitions each, 0.6 ms per round, and the loop's small
    pwrites took 15.7 us at the median instead of 2.4 (9,500-10,800
    voluntary context switches per 300k records). Here the sync threads
    never take the GIL. Two rounds in flight rather than one: with one, the
    senders fell into two cohorts taking turns and the loop sat idle 0.15-0.19 s
    per 300k records waiting for rounds; with two it never idled (see the
    README for the measured rates).

    Durability state is the partition's (``_durable_end``, ``_failed``), as
    with ``_GroupCommit``: a failed fdatasync fails the partition for good
    (fsyncgate); a round that fails before any fdatasync (no descriptor to
    duplicate: EMFILE) fails only the requests made before it started.
    """

    def __init__(self, loop, max_rounds: int = 2):
        self.loop = loop
        self._max_rounds = max_rounds
        self._idle: list = []       # LoopSyncers with no round in flight
        self._busy: dict = {}       # LoopSyncer -> its round: [(partition, state, n_fds)]
        self._waiters: list = []    # [partition, end_offset, callback, round_no at request]
        self._pending: dict = {}    # partition -> end offset a round must reach
        self._round_no = 0
        self._plan_errors: dict = {}  # partition -> (round_no, error)
        self._scheduled = False
        self._closed = False

    def request(self, part, end_offset: int, fn) -> None:
        """Call ``fn(error)`` on the loop once ``part`` is durable below
        ``end_offset`` (``error`` None), or cannot get there."""
        if self._closed:
            raise RuntimeError("durability requests after the committer closed")
        self._waiters.append([part, end_offset, fn, self._round_no])
        if part._durable_end < end_offset:
            self._pending[part] = max(self._pending.get(part, 0), end_offset)
        if len(self._busy) < self._max_rounds:
            self._start()

    def _syncer(self):
        if self._idle:
            return self._idle.pop()
        from unstoppable._core.segment import LoopSyncer
        sy = LoopSyncer()
        self.loop.add_reader(sy.fileno(), self._round_done, sy)
        return sy

    def _start(self) -> None:
        """Plan and hand over a round for what is pending. Requests this
        answers (already durable, or the plan failed) are answered from a
        loop callback, never from inside ``request``."""
        if self._closed or not self._pending or len(self._busy) >= self._max_rounds:
            return
        pending, self._pending = self._pending, {}
        self._round_no += 1
        no = self._round_no
        plans, fds = [], []
        for part in pending:
            if part._failed is not None or part._closed:
                continue
            try:
                plan = part._sync_plan()
            except Exception as e:  # nothing was synced: only this round fails
                self._plan_errors[part] = (no, e)
                continue
            if plan is None:
                st = part._state()
                if st.end_offset > part._durable_end:
                    part._durable_end = st.end_offset
            else:
                plans.append((part, plan[0], len(plan[1])))
                fds.extend(plan[1])
        started = False
        if fds:
            try:
                sy = self._syncer()
                sy.submit(fds)  # owns the descriptors from here on
            except Exception as e:
                for part, _, _ in plans:
                    self._plan_errors[part] = (no, e)
            else:
                self._busy[sy] = plans
                started = True
        if not started and not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._answer_later)

    def _answer_later(self) -> None:
        self._scheduled = False
        self._answer()
        self._start()

    def _round_done(self, sy) -> None:
        plans = self._busy.get(sy)
        if plans is None:
            sy.take(0)  # (a stray wake-up: drain it)
            return
        errs = sy.take(sum(n for _, _, n in plans))
        if errs is None:
            return
        del self._busy[sy]
        self._idle.append(sy)
        i = 0
        for part, st, n in plans:
            if not part._closed:
                part._sync_result(st, errs[i:i + n])
            i += n
        self._answer()
        self._start()

    def _answer(self) -> None:
        keep, done = [], []
        for w in self._waiters:
            part, end, fn, reg = w
            err = _outcome(part, end)
            if err is _WAIT:
                pe = self._plan_errors.get(part)
                if pe is not None and pe[0] > reg:
                    err = _GroupCommit._not_synced(part, pe[1])
                elif self._closed:
                    err = LogClosedError(f"{part.topic}/{part.index}: the producer's loop "
                                         f"closed before offset {end} was known durable")
            if err is _WAIT:
                keep.append(w)
                if part._durable_end < end and not self._busy:
                    self._pending[part] = max(self._pending.get(part, 0), end)
            else:
                done.append((fn, err))
        self._waiters = keep
        for fn, err in done:
            try:
                fn(err)
            except Exception as e:  # one callback's bug must not strand the others
                self.loop.call_exception_handler({"message": "unstoppable: durability callback failed",
                                                  "exception": e})

    def close(self) -> None:
        """Finish the rounds in flight (waiting for them: milliseconds),
        answer every waiter (those not durable by then get LogClosedError)
        and stop the threads."""
        if self._closed:
            return
        self._closed = True  # no new rounds
        while self._busy:
            ready, _, _ = select.select(list(self._busy), [], [])
            for sy in ready:
                self._round_done(sy)
        for sy in self._idle:
            if not self.loop.is_closed():
                self.loop.remove_reader(sy.fileno())
            sy.close()
        self._idle.clear()
        self._answer()


_WAIT = object()


def _outcome(part, end):
    """None when durable below ``end``, the error when it never will be, or _WAIT."""
    if part._durable_end >= end:
        return None
    if part._failed is not None or part._closed:
        return _GroupCommit._why_not(part, end)
    return _WAIT


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
    def __init__(self, membership: Membership, counts: dict):
        self._m = membership
        self._counts = counts
        self.member_id = membership.member_id

    async def poll(self) -> set:
        members = self._m.refresh()
        return {TopicPartition(t, p) for t, p in self._m.target(members, self._counts)}

    async def try_acquire(self, tp) -> bool:
        return self._m.try_acquire(tp.topic, tp.partition)

    async def release(self, tp) -> None:
        self._m.release(tp.topic, tp.partition)

    async def leave(self) -> None:
        self._m.leave()


class EmbeddedBackend(Backend):
    """The Backend over an embedded ``us.Log`` (in this process; other
    processes may have the same directory open).

    Appends are synchronous pwrites, done on the event loop; for
    ``acks="fsync"`` batches the loop then runs the group commit itself
    (``_LoopCommitter``), with the fdatasyncs on C threads. Offset commits and
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
        self.when_durable = self._when_durable
        self.append_arrow = self._append_arrow
        self._committers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def _partition(self, topic: str, partition: int):
        key = (topic, partition)
        p = self._parts.get(key)
        if p is None or p._closed:
            p = self._parts[key] = self.log.topic(topic).partition(partition)
        return p

    async def topic_info(self, topic: str) -> TopicInfo:
        t = self.log.topic(topic)
        cfg = t.config
        return TopicInfo(topic, t.partitions, cfg.max_record_bytes, cfg.max_batch_bytes)

    # -- producing

    @staticmethod
    def _write(part, b) -> int:
        return part.append(b.records, timestamp=b.timestamp, producer_id=b.producer_id,
                           producer_epoch=b.producer_epoch, base_sequence=b.base_sequence)

    def _append_now(self, topic: str, partition: int, batch) -> int:
        return self._write(self._partition(topic, partition), batch)

    def _when_durable(self, topic: str, partition: int, end_offset: int, fn) -> None:
        loop = asyncio.get_running_loop()
        c = self._committers.get(loop)
        if c is None or c._closed:
            c = self._committers[loop] = _LoopCommitter(loop)
        part = self._partition(topic, partition)
        part._check_written(end_offset)
        c.request(part, end_offset, fn)

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

    async def claim_producer_id(self, producer_id: int, name: str):
        return ProducerIdLock(self.log.path, producer_id, name)

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

    async def join_group(self, group: str, topics: Iterable[str]) -> GroupMember:
        topics = sorted(set(topics))
        counts = {}
        for t in topics:
            counts[t] = (await self.topic_info(t)).partitions
        return _EmbeddedMember(Membership(self.log.path, group, topics), counts)

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
