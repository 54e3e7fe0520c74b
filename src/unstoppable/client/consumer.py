"""The asyncio Consumer: an async stream of records, batches with getmany,
committed offsets, seeking and replay, and consumer groups.

Positions and commits
    ``position(tp)`` is the offset of the next record the consumer will hand
    out for a partition. ``commit()`` stores, per partition, the position
    after everything handed out so far (the next offset to consume), durably,
    in the group's offset store. ``commit({tp: offset})`` stores chosen
    offsets; an offset past ``position(tp)`` (records not yet handed out) is
    rejected with CommitError, as is a partition this consumer does not hold.

Groups
    Consumers with the same ``group`` (in one process or many) split the
    partitions of their topics. On the embedded log a member is alive while it
    holds a lock file the kernel releases when its process dies; each member
    checks the others every ``membership_poll_ms`` and every member computes
    the same assignment from the live member list (``groups.assign``:
    ``assign_sticky`` by default, balanced, and a death or a join moves few
    other partitions; members advertise the assignors they can run, so
    members of different versions agree on one). A partition is
    taken over only through its owner lock, so two members never consume it at
    once. A member that stops polling and heartbeating (a stopped or hung
    process, a handler blocking the event loop) for ``session_timeout_ms``
    is counted out and its partitions move to the others, although its process
    still holds its locks; when it wakes, it learns which partitions it
    lost before handing out more records, and its commits for them fail with
    FencedMemberError (nothing is stored). A member whose loop runs (so it
    heartbeats) but whose application has not called ``getmany`` or reached
    the end of a batch in ``async for`` for ``max_poll_interval_ms`` (Kafka's
    ``max.poll.interval.ms``, default 300,000) leaves the group: its
    partitions go to the others at once, its commits for them fail with
    FencedMemberError, and its next poll joins the group again. A member gives a partition up only at a *safe point*, the start of
    the next ``getmany`` or ``__anext__`` call, after the application has
    finished with what it was handed: first ``on_assignment_change`` is told
    (so it can commit), then auto-commit runs (if enabled), then the lock is
    released. The new owner resumes from the committed offset: records after
    the last commit are delivered again, nothing is skipped (at-least-once).

Auto-commit (``enable_auto_commit=True``)
    commits at safe points at most every ``auto_commit_interval_ms``, when a
    partition is given up, and on ``close()``. It only ever commits records the
    application has moved past: a record counts as handled once the next
    ``__anext__``/``getmany`` call starts. The records from the last call are
    therefore not auto-committed by ``close()``; call ``commit()`` after handling
    them if they should count.

Waiting
    With no records available the consumer sleeps: appends in this process wake
    it directly; appends from other processes are noticed by polling a shared
    counter every millisecond or so (see EmbeddedBackend). It never busy-waits.
"""
from __future__ import annotations

import asyncio
from typing import Callable

from unstoppable.client._types import ConsumerRecord, OffsetAndTimestamp, TopicPartition
from unstoppable.client.embedded import backend_for
from unstoppable.client._membership import GroupMembership
from unstoppable.client.positions import Positions
from unstoppable.errors import (
    CommitError,
    ConsumerClosedError,
    FencedMemberError,
    NoOffsetForPartitionError,
    NotAssignedError,
    OffsetOutOfRangeError,
    PartitionOutOfRangeError,
)
from unstoppable._names import validate_group_name

__all__ = ["Consumer", "OFFSET_RESETS"]

OFFSET_RESETS = ("earliest", "latest", "error")


class Consumer(GroupMembership):
    """Consumer(log, topics, *, group=None, auto_offset_reset="earliest",
    enable_auto_commit=False, offset_store=None, ...)

    An asyncio consumer of one or more topics of ``log`` (a ``us.Log`` or
    another backend). Use ``async with Consumer(...) as c:`` and then
    ``async for record in c`` or ``await c.getmany(...)``.

    * ``topics``: a topic name, or a list of names; without a group the list
      may also hold TopicPartition entries to read just those partitions.
    * ``group``: the consumer group. None reads without committing (replay,
      tools); all partitions of the topics are read.
    * ``auto_offset_reset``: where to start without a committed offset, and
      what to do when the position falls outside the partition (retention
      removed it, or a seek went past the end): ``"earliest"``, ``"latest"``
      or ``"error"`` (raise NoOffsetForPartitionError / OffsetOutOfRangeError).
    * ``enable_auto_commit``, ``auto_commit_interval_ms``: see the module docstring.
    * ``offset_store``: an :class:`~unstoppable.client.offsets.OffsetStore`
      (default: the log's own group offsets).
    * ``on_assignment_change``: ``callback(assigned, revoked)`` (sets of
      TopicPartition; may be a coroutine function), called at safe points:
      revoked partitions before they are released, assigned ones once their
      positions are known. Partitions lost to a takeover (this member was
      silent past its session timeout) are reported as revoked too, but
      are no longer this member's: committing them raises FencedMemberError.
    * ``max_poll_records``: records fetched per partition at a time (also the
      default ``max_records`` of getmany); ``fetch_max_bytes``: bytes per fetch.
    * ``membership_poll_ms``: how often a group member checks who is alive
      (and heartbeats). A consumer kept busy (records always available, so
      its event loop seldom idles) checks at the start of ``getmany`` /
      ``__anext__`` once a check is overdue by half this interval.
    * ``initial_rebalance_delay_ms``: Kafka's
      ``group.initial.rebalance.delay.ms``, per consumer. A member that finds
      the group empty (no live member owns any of its partitions) waits before
      taking partitions until no new member has joined for this long (so the
      first assignment is made with everyone that started together, rather
      than one member taking every partition and handing them over one by one
      as the others arrive), and at most ``max_poll_interval_ms`` (5 minutes
      without one) after the first member of the forming group joined: as
      Kafka's coordinator extends the delay with each join, up to the
      rebalance timeout. A member joining a group that has formed takes its
      share at once. Default 0 (no wait), unlike the Kafka broker's 3,000: on
      one machine a lone consumer (the CLI, a script, a test) is the common
      case, and processes started together join within milliseconds of each
      other; set it where several processes start at once (the booking
      service uses 1,000). The embedded log only: on JetStream (leases) the
      consumer takes its share at once.
    * ``session_timeout_ms``: how long a member may go without heartbeating
      before the others take its partitions (None: the backend's default,
      ``storage.membership.SESSION_TIMEOUT_MS`` = 10 s on the embedded log, the
      lease TTL on JetStream). Must exceed ``membership_poll_ms``.
    * ``max_poll_interval_ms``: the longest the application may go between
      polls (the return of one ``getmany``, or of the ``__anext__`` that
      fetched a batch, and the next such call) before this member leaves
      the group; the next poll rejoins (default 300,000, as Kafka's
      ``max.poll.interval.ms``; None: no limit). Time spent waiting inside
      ``getmany`` counts as polling. Must exceed ``membership_poll_ms``.
    * ``key_deserializer``/``value_deserializer``: a callable ``bytes -> obj``
      or a codec (an object with ``decode``); with either, records are
      :class:`ConsumerRecord` tuples holding the decoded key and value (None
      stays None). A record that fails to decode raises when its turn comes,
      with ``position(tp)`` at its offset: ``seek`` past it to skip it.
    """

    def __init__(self, log, topics, *, group: str | None = None,
                 auto_offset_reset: str = "earliest", enable_auto_commit: bool = False,
                 auto_commit_interval_ms: float = 5000, offset_store=None,
                 on_assignment_change: Callable | None = None, max_poll_records: int = 500,
                 fetch_max_bytes: int = 1 << 20, membership_poll_ms: float = 100,
                 session_timeout_ms: float | None = None,
                 max_poll_interval_ms: float | None = 300_000,
                 initial_rebalance_delay_ms: float = 0,
                 key_deserializer=None, value_deserializer=None):
        if isinstance(topics, (str, TopicPartition)):
            topics = [topics]
        topics = list(topics)
        if not topics:
            raise ValueError("a consumer needs at least one topic")
        self._manual = [TopicPartition(*t) for t in topics if isinstance(t, tuple)]
        names = [t for t in topics if not isinstance(t, tuple)]
        for t in names:
            if not isinstance(t, str):
                raise TypeError(f"topics must be names (str) or TopicPartition, got {t!r}")
        if self._manual and group is not None:
            raise ValueError("TopicPartition entries (manual assignment) need group=None; "
                             "a group assigns partitions itself")
        if auto_offset_reset not in OFFSET_RESETS:
            raise ValueError(f"auto_offset_reset must be one of {OFFSET_RESETS}, got {auto_offset_reset!r}")
        if group is not None:
            validate_group_name(group)
        elif enable_auto_commit:
            raise ValueError("enable_auto_commit needs a group (group=None never commits)")
        elif offset_store is not None:
            raise ValueError("offset_store needs a group (offsets are stored per group)")
        for name, v in (("max_poll_records", max_poll_records), ("fetch_max_bytes", fetch_max_bytes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self._topics = sorted(set(names) | {tp.topic for tp in self._manual})
        self._group = group
        self._reset = auto_offset_reset
        self._auto_commit = enable_auto_commit
        self._auto_commit_interval = auto_commit_interval_ms / 1000.0
        self._store = offset_store
        self._own_store = offset_store is None
        self._on_change = on_assignment_change
        self.max_poll_records = max_poll_records
        self.fetch_max_bytes = fetch_max_bytes
        self._membership_poll = membership_poll_ms / 1000.0
        if session_timeout_ms is not None and (
                isinstance(session_timeout_ms, bool) or not isinstance(session_timeout_ms, (int, float))
                or not session_timeout_ms > membership_poll_ms):
            raise ValueError(f"session_timeout_ms must be a number greater than membership_poll_ms "
                             f"({membership_poll_ms}), got {session_timeout_ms!r}")
        self._session_timeout_ms = session_timeout_ms
        if max_poll_interval_ms is not None and (
                isinstance(max_poll_interval_ms, bool)
                or not isinstance(max_poll_interval_ms, (int, float))
                or not max_poll_interval_ms > membership_poll_ms):
            raise ValueError(f"max_poll_interval_ms must be None or a number greater than "
                             f"membership_poll_ms ({membership_poll_ms}), got {max_poll_interval_ms!r}")
        self._max_poll_interval = None if max_poll_interval_ms is None else max_poll_interval_ms / 1000.0
        if (isinstance(initial_rebalance_delay_ms, bool)
                or not isinstance(initial_rebalance_delay_ms, (int, float))
                or not initial_rebalance_delay_ms >= 0):
            raise ValueError(f"initial_rebalance_delay_ms must be a number >= 0, "
                             f"got {initial_rebalance_delay_ms!r}")
        self._initial_delay = initial_rebalance_delay_ms / 1000.0
        self._formed = False            # the group had formed when this member last looked
        self._forming_until = None      # loop time at which a forming group takes its partitions
        self._poll_lock = asyncio.Lock()  # one membership poll at a time (task and safe point)
        self._in_poll = 0               # getmany/__anext__ fetches under way
        self._last_app_poll = 0.0       # loop time the last of them returned
        self._left_for_poll = False     # left the group: no poll within max_poll_interval_ms
        self._last_member_poll = 0.0
        self._pending_lost: set = set()
        self._fenced: set = set()       # lost to a takeover and not assigned again since
        self.key_deserializer = _decoder_of(key_deserializer, "key_deserializer")
        self.value_deserializer = _decoder_of(value_deserializer, "value_deserializer")
        self._decode = self.key_deserializer is not None or self.value_deserializer is not None
        self._backend = backend_for(log)
        self._own_backend = self._backend is not log
        self._started = False
        self._closed = False
        self._loop = None
        self._pos = Positions()                    # every position, and the __anext__ cursor
        self._cursor = self._pos.cursor
        self._assigned = self._pos.states          # TopicPartition -> PartitionState
        self._member = None
        self._held: set = set()                    # partitions whose owner lock we hold
        self._pending_assign: set = set()
        self._pending_revoke: set = set()
        self._bg_task = None
        self._bg_error: BaseException | None = None
        self._interrupt = None
        self._last_auto_commit = 0.0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> "Consumer":
        """Check the topics, join the group (if any) and take the first
        assignment. Called by ``async with``."""
        if self._started:
            return self
        if self._closed:
            raise ConsumerClosedError("consumer is closed")
        self._loop = asyncio.get_running_loop()
        counts = {t: (await self._backend.topic_info(t)).partitions for t in self._topics}
        for tp in self._manual:
            if not 0 <= tp.partition < counts[tp.topic]:
                raise PartitionOutOfRangeError(
                    f"topic {tp.topic!r} has partitions 0 .. {counts[tp.topic] - 1}, not {tp.partition}")
        self._started = True
        self._last_auto_commit = self._loop.time()
        if self._group is None:
            tps = self._manual or [TopicPartition(t, p) for t in self._topics for p in range(counts[t])]
            await self._assign(set(tps))
            return self
        if self._store is None:
            self._store = self._backend.offset_store(self._group)
        try:
            kw = {} if self._session_timeout_ms is None else {
                "session_timeout_ms": self._session_timeout_ms}
            self._member = await self._backend.join_group(self._group, self._topics, **kw)
            await self._poll_membership()
            await self._apply_changes()
        except BaseException:
            await self._leave()
            raise
        self._last_app_poll = self._loop.time()
        self._bg_task = self._loop.create_task(self._membership_loop())
        return self

    async def __aenter__(self) -> "Consumer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        """Commit (when auto-commit is on) what the application moved past,
        release every partition and leave the group. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._interrupt is not None and not self._interrupt.done():
            self._interrupt.set_result(None)
        if self._bg_task is not None:
            self._bg_task.cancel()
            try:
                await self._bg_task
            except BaseException:
                pass
        try:
            if self._auto_commit and self._started:
                offs = {tp: pos for tp in self._assigned
                        if (pos := self._pos.consumed(tp)) is not None
                        and self._assigned[tp].moved(pos)}
                if offs:
                    await self._commit_what_we_own(offs)
        finally:
            await self._leave()
            if self._own_store and self._store is not None:
                await self._store.close()
            if self._own_backend:
                await self._backend.close()
            self._pos.clear()

    async def _leave(self):
        if self._member is not None:
            m, self._member = self._member, None
            self._held.clear()
            await m.leave()

    def _check(self):
        if self._closed:
            raise ConsumerClosedError("consumer is closed")
        if not self._started:
            raise ConsumerClosedError("consumer is not started; use `async with` or await start()")

    # ------------------------------------------------------------ iteration

    def __aiter__(self):
        return self

    async def __anext__(self):
        c = self._cursor
        i = c.i
        if i < c.end:
            c.i = i + 1
            return c.records[i]
        return await self._next_slow()

    async def _next_slow(self):
        self._in_poll += 1
        try:
            return await self._next_batch()
        finally:
            self._in_poll -= 1
            if self._loop is not None:
                self._last_app_poll = self._loop.time()

    async def _next_batch(self):
        if not self._started and not self._closed:
            await self.start()
        while True:
            if self._closed:
                self._pos.fold()
                raise StopAsyncIteration
            self._pos.next_call()
            await self._safe_point()
            for tp in self._pos.fetch_order():
                recs, _ = await self._fetch(tp, self.max_poll_records)
                if recs:
                    self._pos.fetched_up_to(tp)
                    return self._pos.hand_out_one(tp, recs)
            await self._wait(None)

    async def getmany(self, *partitions, max_records: int | None = None,
                      timeout_ms: float = 0) -> dict:
        """getmany(*partitions, max_records=None, timeout_ms=0) -> {TopicPartition: [records]}

        Records available now, at most ``max_records`` in all (default
        ``max_poll_records``), from the given partitions (default: all
        assigned). With nothing available, waits up to ``timeout_ms`` for
        records; returns an empty dict when none came.
        """
        if not self._started:
            await self.start()
        self._check()
        self._in_poll += 1
        try:
            return await self._getmany(partitions, max_records, timeout_ms)
        finally:
            self._in_poll -= 1
            self._last_app_poll = self._loop.time()

    async def _getmany(self, partitions, max_records, timeout_ms) -> dict:
        limit = self.max_poll_records if max_records is None else max_records
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_records must be an int >= 1, got {max_records!r}")
        only = None
        if partitions:
            only = set()
            for tp in partitions:
                tp = TopicPartition(*tp)
                if tp not in self._assigned:
                    raise NotAssignedError(f"{tp.topic}/{tp.partition} is not assigned to this consumer")
                only.add(tp)
        self._pos.next_call()
        deadline = None
        while True:
            await self._safe_point()
            out = await self._fetch_many(limit, only)
            if out or self._closed:
                return out
            if deadline is None:
                deadline = self._loop.time() + timeout_ms / 1000.0
            left = deadline - self._loop.time()
            if left <= 0:
                return out
            await self._wait(left)

    async def _fetch(self, tp, limit: int):
        """Records of ``tp`` from its position (at most ``limit``), and the
        error of a record that does not deserialize (the records before it
        are returned; with none before it, it is raised, and the position
        stays at that record)."""
        st = self._assigned[tp]
        if st.position is None:
            raise NoOffsetForPartitionError(
                f"{tp.topic}/{tp.partition} has no committed offset and auto_offset_reset='error'; "
                "seek() to choose where to start")
        fetch = self._backend.fetch
        try:
            recs = await fetch(tp.topic, tp.partition, st.position, limit, self.fetch_max_bytes)
        except OffsetOutOfRangeError:
            await self._reset_out_of_range(tp, st)
            recs = await fetch(tp.topic, tp.partition, st.position, limit, self.fetch_max_bytes)
        bad = None
        if recs:
            if len(recs) > limit:
                recs = recs[:limit]
            if self._decode:
                recs, bad = self._decode_records(tp, recs)
                if bad is not None and not recs:
                    raise bad
        return recs, bad

    async def _fetch_many(self, limit: int, only) -> dict:
        """getmany's round: from the partitions round-robin, at most ``limit``
        records in all; each partition's records are handed out at once."""
        out = {}
        for tp in self._pos.fetch_order():
            if only is not None and tp not in only:
                continue
            recs, bad = await self._fetch(tp, limit)
            if recs:
                self._pos.hand_out_all(tp, recs)
                out[tp] = recs
                limit -= len(recs)
                if limit <= 0 or bad is not None:
                    self._pos.fetched_up_to(tp)
                    break
        return out

    def _decode_records(self, tp, recs):
        """Deserialize; stop before the first record that fails, returning the
        ones before it and the error (raised when that record's turn comes)."""
        kd, vd = self.key_deserializer, self.value_deserializer
        out = []
        for r in recs:
            try:
                k, v = r.key, r.value
                if kd is not None and k is not None:
                    k = kd(k)
                if vd is not None and v is not None:
                    v = vd(v)
            except Exception as e:
                e.add_note(f"while deserializing {tp.topic}/{tp.partition} offset {r.offset}; "
                           f"seek({tp!r}, {r.offset + 1}) skips it")
                return out, e
            out.append(ConsumerRecord(r.topic, r.partition, r.offset, r.timestamp, k, v, r.headers))
        return out, None

    async def _reset_out_of_range(self, tp, st) -> None:
        start, end = await self._backend.offset_range(tp.topic, tp.partition)
        if self._reset == "error":
            raise OffsetOutOfRangeError(
                f"position {st.position} of {tp.topic}/{tp.partition} is outside its range "
                f"[{start}, {end}] and auto_offset_reset='error'")
        st.position = start if self._reset == "earliest" else end

    async def _wait(self, timeout) -> bool:
        if self._bg_error is not None:
            return True
        positions = {tp: st.position for tp, st in self._assigned.items() if st.position is not None}
        self._interrupt = fut = self._loop.create_future()
        if self._pending_assign or self._pending_revoke:
            fut.set_result(None)
        try:
            return await self._backend.wait_for_data(positions, timeout, fut)
        finally:
            self._interrupt = None

    # -------------------------------------------------------------- commits

    async def commit(self, offsets: dict | None = None) -> None:
        """commit(offsets=None)

        Durably store committed offsets for the group. None means the position
        after every record handed out so far, for each assigned partition.
        ``{TopicPartition: offset}`` commits exactly those (the next offset to
        consume); an offset past ``position(tp)`` or a partition this consumer
        does not hold raises CommitError.
        """
        self._check()
        if self._group is None:
            raise CommitError("this consumer has no group (group=None reads without committing)")
        if offsets is None:
            offsets = {}
            for tp, st in self._assigned.items():
                if st.position is None or tp in self._fenced:
                    continue
                pos = self.position(tp)
                if pos != st.committed:
                    offsets[tp] = pos
        else:
            checked = {}
            for tp, off in dict(offsets).items():
                tp = TopicPartition(*tp)
                st = self._assigned.get(tp)
                if tp in self._fenced:
                    raise FencedMemberError(
                        f"cannot commit {tp.topic}/{tp.partition}: this member of group "
                        f"{self._group!r} lost it (silent for longer than its session timeout, "
                        f"or no poll within max_poll_interval_ms); nothing was committed")
                if st is None:
                    raise CommitError(f"cannot commit {tp.topic}/{tp.partition}: it is not assigned "
                                      f"to this member of group {self._group!r}")
                if isinstance(off, bool) or not isinstance(off, int) or off < 0:
                    raise CommitError(f"offset for {tp.topic}/{tp.partition} must be an int >= 0, got {off!r}")
                pos = self.position(tp) if st.position is not None else None
                if pos is None or off > pos:
                    raise CommitError(
                        f"cannot commit offset {off} for {tp.topic}/{tp.partition}: the consumer's "
                        f"position is {pos}, so records from {pos} on have not been handed out yet")
                checked[tp] = off
            offsets = checked
        if not offsets:
            return
        await self._store_commit(offsets)

    async def _store_commit(self, offsets: dict) -> None:
        """Commit through the group member (which fences it, where the
        backend can) and note what was committed."""
        fenced = self._fenced.intersection(offsets)
        if fenced:
            # Lost to a takeover; even when this member has just taken the
            # partition back (a new epoch), these positions are from before.
            tp = min(fenced)
            raise FencedMemberError(
                f"cannot commit {tp.topic}/{tp.partition}: this member of group {self._group!r} "
                f"lost it (silent for longer than its session timeout, or no poll within "
                f"max_poll_interval_ms); nothing was committed")
        if self._member is not None:
            await self._member.commit(self._store, self._group, offsets)
        else:
            await self._store.commit(self._group, offsets)
        self._pos.committed(offsets)
        self._last_auto_commit = self._loop.time()

    async def _commit_what_we_own(self, offsets: dict) -> None:
        """Auto-commit: like ``commit``, but partitions this member turns out
        to have lost (FencedMemberError) are left out instead of failing the
        rest; their new owner delivers those records again."""
        try:
            await self._store_commit(offsets)
        except FencedMemberError:
            for tp, off in offsets.items():
                try:
                    await self._store_commit({tp: off})
                except FencedMemberError:
                    pass

    async def committed(self, tp) -> int | None:
        """The offset committed for a partition in this consumer's group (read
        from the store, so it includes other members' commits), or None."""
        self._check()
        if self._group is None:
            return None
        tp = TopicPartition(*tp)
        got = await self._store.load(self._group, [tp])
        return got.get(tp)

    # -------------------------------------------------------------- positions

    def assignment(self) -> set:
        """The partitions this consumer holds now."""
        return set(self._assigned)

    def _state(self, tp) -> tuple:
        return self._pos.state(tp)

    def position(self, tp) -> int:
        """The offset of the next record this consumer will hand out for ``tp``."""
        tp, _ = self._pos.state(tp)
        return self._pos.position(tp)

    def lag(self) -> dict:
        """``{TopicPartition: end offset - committed offset}`` for the assigned
        partitions (the position stands in for the committed offset when there
        is none). Records retention has deleted are not counted: a committed
        offset before the partition's first offset counts from that offset."""
        out = {}
        for tp, st in self._assigned.items():
            end = self._backend.known_end_offset(tp.topic, tp.partition)
            start = self._backend.known_start_offset(tp.topic, tp.partition)
            base = st.committed
            if base is None:
                base = self.position(tp) if st.position is not None else 0
            if start is not None:
                base = max(base, start)
            out[tp] = max(end - base, 0)
        return out

    def seek(self, tp, offset: int) -> None:
        """Hand out ``tp``'s records from ``offset`` on. An offset outside the
        partition's range is handled by ``auto_offset_reset`` on the next fetch."""
        self._check()
        tp, st = self._state(tp)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be an int >= 0, got {offset!r}")
        self._pos.seek(tp, offset)

    async def seek_to_beginning(self, *partitions) -> None:
        """Seek the given partitions (default: all assigned) to their first offset."""
        self._check()
        for tp in partitions or list(self._assigned):
            tp, _ = self._state(tp)
            start, _ = await self._backend.offset_range(tp.topic, tp.partition)
            self.seek(tp, start)

    async def seek_to_end(self, *partitions) -> None:
        """Seek the given partitions (default: all assigned) to their end: only
        records appended from now on will be handed out."""
        self._check()
        for tp in partitions or list(self._assigned):
            tp, _ = self._state(tp)
            _, end = await self._backend.offset_range(tp.topic, tp.partition)
            self.seek(tp, end)

    async def offsets_for_times(self, timestamps: dict) -> dict:
        """offsets_for_times({tp: ts_ms}) -> {tp: OffsetAndTimestamp | None}

        For each partition, the first record whose timestamp is >= ts_ms (None
        when every record is older). Works for any partition of the topics,
        assigned or not. Replay from a time with ``seek(tp, result.offset)``.
        With arrays of timestamps (numpy or lists of ints) as values, the
        result is ``{tp: numpy int64 array of offsets}`` with -1 for None.
        """
        self._check()
        if any(isinstance(ts, (list, tuple)) or hasattr(ts, "__array__") for ts in timestamps.values()):
            return await self._offsets_for_times_arrays(timestamps)
        out = {}
        for tp, ts in timestamps.items():
            tp = TopicPartition(*tp)
            if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
                raise ValueError(f"timestamp for {tp.topic}/{tp.partition} must be an int of ms >= 0, got {ts!r}")
            off = await self._backend.offset_for_time(tp.topic, tp.partition, ts)
            if off is None:
                out[tp] = None
                continue
            recs = await self._backend.fetch(tp.topic, tp.partition, off, 1, 1)
            out[tp] = OffsetAndTimestamp(off, recs[0].timestamp if recs else ts)
        return out

    # ----------------------------------------------------- assignment changes

    async def _assign(self, tps: set) -> None:
        """Start consuming ``tps``: positions from committed offsets or the reset policy."""
        committed = {}
        if self._group is not None and tps:
            committed = await self._store.load(self._group, tps)
        self._fenced -= tps
        for tp in sorted(tps):
            c = committed.get(tp)
            start, end = await self._backend.offset_range(tp.topic, tp.partition)
            if c is not None and start <= c <= end:
                pos = c
            elif c is not None and self._reset == "error":
                raise OffsetOutOfRangeError(
                    f"committed offset {c} of {tp.topic}/{tp.partition} in group {self._group!r} is "
                    f"outside its range [{start}, {end}] and auto_offset_reset='error'")
            elif self._reset == "earliest":
                pos = start
            elif self._reset == "latest":
                pos = end
            else:
                pos = None
            self._pos.assign(tp, pos, c)

    def __repr__(self):
        st = "closed" if self._closed else ("running" if self._started else "new")
        return f"<Consumer topics={self._topics} group={self._group!r} {st}>"

    async def _offsets_for_times_arrays(self, timestamps: dict) -> dict:
        """offsets_for_times with arrays of timestamps (client/_arrays.py)."""
        from unstoppable.client import _arrays
        return await _arrays.offsets_for_times(self._backend, timestamps)


def _decoder_of(des, what: str):
    """A deserializer given as a callable or as a codec with ``decode``."""
    if des is None:
        return None
    dec = getattr(des, "decode", None)
    if callable(dec) and not isinstance(des, (str, bytes)):
        return dec
    if callable(des):
        return des
    raise TypeError(f"{what} must be a callable bytes -> obj or a codec with decode(), got {des!r}")

