"""Consumer-group membership on JetStream, as leases."""
from __future__ import annotations

import asyncio

import json
import os
import socket
import time
import uuid

from unstoppable.backends.jetstream._borrowed import (
    ASSIGNORS,
    MemberInfo,
    assign,
    member_description,
    parse_member_description,
)
from unstoppable.backends.jetstream._constants import (
    _E_WRONG_LAST_SEQ,
    _LEASE,
    _TRANSIENT,
    LEASES_STREAM,
    OFFSETS_STREAM,
)
from unstoppable.backends.jetstream._wire import (
    api_error,
)
from unstoppable.backends.jetstream.leases import _Lease
from unstoppable.backends.jetstream.offsets import JetStreamOffsetStore
from unstoppable.backends.jetstream.records import _enc
from unstoppable.client._types import TopicPartition
from unstoppable.client.backend import GroupMember
from unstoppable.errors import (
    BackendError,
    FencedMemberError,
    UnknownTopicError,
)


class _JetStreamMember(GroupMember):
    """Group membership as leases: ``usx.lease.g.<group>.m.<member id>``
    (value: the member's description) and, per owned partition,
    ``usx.lease.g.<group>.o.<topic>.<partition>`` (value: the member id).
    Every member lists the live member leases and computes the same
    assignment as on the embedded log (``groups.assign``), from the partition
    counts of every topic any live member subscribes to.

    Session timeout: the lease TTL. A member that stops renewing (a stopped
    or hung process) loses its leases ``lease_ttl`` seconds after its last
    renewal and the others take its partitions. Commit fencing: a new owner
    first rewrites the partition's offset message (same offset) expecting
    the subject's last sequence it read, and every commit of an owner
    expects the sequence of its own last write (``Nats-Expected-Last-
    Subject-Sequence`` on each message of the atomic batch). A member that
    lost a partition therefore has its commit refused (FencedMemberError,
    nothing stored) as soon as the new owner has taken it."""

    def __init__(self, backend, group: str, topics: list, counts: dict):
        self._backend = backend
        self._leases = backend.log._leases
        self.group = group
        self.topics = tuple(topics)
        self._counts = counts
        self.member_id = f"{int(time.time() * 1000):013d}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.info = MemberInfo(self.member_id, self.topics, os.getpid(), socket.gethostname(),
                               time.time_ns() // 1_000_000, tuple(ASSIGNORS))
        self._g = f"{_LEASE}.g.{_enc(group)}"
        self._lease: _Lease | None = None
        self._owned: dict[TopicPartition, _Lease] = {}
        self._lost: set = set()
        self._infos: dict[str, MemberInfo] = {}
        self._target: set = set()
        self._left = False
        self.session_timeout = backend.log.lease_ttl
        self._oseq: dict[TopicPartition, int] = {}   # our last write on each owned offset subject
        self._last_poll = time.monotonic()

    async def _join(self) -> None:
        value = member_description(self.info)
        lease, _ = await self._leases.acquire(f"{self._g}.m.{self.member_id}".encode(), value)
        if lease is None:
            raise BackendError(f"member id {self.member_id} of group {self.group!r} is taken")
        self._lease = lease

    async def _members(self) -> list:
        log = self._backend.log
        si = await log.wire.api(f"STREAM.INFO.{LEASES_STREAM}", {"subjects_filter": f"{self._g}.m.*"})
        subjects = (si.get("state") or {}).get("subjects") or {}
        out = [self.info]
        cut = len(self._g) + 3
        for subject in sorted(subjects):
            mid = subject[cut:]
            if mid == self.member_id:
                continue
            info = self._infos.get(mid)
            if info is None:
                msg = await log._retrying(lambda subject=subject: log._last_message(LEASES_STREAM, subject))
                if msg is None:
                    continue  # left meanwhile
                info = parse_member_description(msg[1], mid)
                self._infos[mid] = info
            out.append(info)
        return out

    async def poll(self) -> set:
        now = time.monotonic()
        if now - self._last_poll > self.session_timeout / 2:
            # Silent for a while (stopped, or the loop was blocked): the
            # keeper may not have noticed yet that others took leases over.
            for lease in list(self._owned.values()):
                try:
                    held = await self._leases.holder(lease.subject)
                except _TRANSIENT:
                    break
                if held is None or held[0] != lease.rev:
                    lease.lost = True
                    self._leases.held.discard(lease)
        self._last_poll = now
        for tp, lease in list(self._owned.items()):
            if lease.lost:  # someone else may own it now: not ours to commit or release
                del self._owned[tp]
                self._oseq.pop(tp, None)
                self._lost.add(tp)
        try:
            if self._lease is None or self._lease.lost:
                await self._join()  # our lease lapsed (a long pause, a partition): join again
            members = await self._members()
        except _TRANSIENT:
            # No answer now (a failover): keep the last view; the leases tell
            # the truth once the cluster answers again.
            return self._target - self._lost
        # The same inputs on every member: the partition counts of every topic
        # any live member subscribes to (not only this member's own).
        for m in members:
            for t in m.topics:
                if t not in self._counts:
                    try:
                        self._counts[t] = (await self._backend.topic_info(t)).partitions
                    except UnknownTopicError:
                        pass  # deleted since that member joined
                    except _TRANSIENT:
                        return self._target - self._lost  # keep the last view (as above)
        wanted = {t: self._counts[t] for m in members for t in m.topics if t in self._counts}
        mine = assign(members, wanted).get(self.member_id, ())
        self._target = {TopicPartition(t, p) for t, p in mine}
        return self._target - self._lost

    async def try_acquire(self, tp: TopicPartition) -> bool:
        tp = TopicPartition(*tp)
        lease = self._owned.get(tp)
        if lease is not None and not lease.lost:
            return True
        if tp in self._lost:
            return False
        # The acquisition runs to its end even if the caller is cancelled (a
        # consumer closing while its membership task takes a partition): a
        # lease taken on the server but not yet in _owned would outlive
        # leave() until its TTL, keeping the partition from the next member.
        task = asyncio.ensure_future(self._acquire(tp))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait([task])      # recorded in _owned (or given back) before we go
            if not task.cancelled():
                task.exception()            # retrieved: the caller's cancellation is what counts
            raise

    async def _acquire(self, tp: TopicPartition) -> bool:
        lease, _ = await self._leases.acquire(
            f"{self._g}.o.{_enc(tp.topic)}.{tp.partition}".encode(), self.member_id.encode())
        if lease is None:
            return False
        try:
            self._oseq[tp] = await self._fence_offsets(tp)
        except BaseException:
            await self._leases.release(lease)
            raise
        self._owned[tp] = lease
        return True

    async def _fence_offsets(self, tp: TopicPartition) -> int:
        """Rewrite the partition's offset message as it is, expecting its
        last sequence: a commit by the previous owner, which expects its own
        last write, fails from now on. Returns our write's sequence."""
        log = self._backend.log
        await log._ensure_internal_streams()
        subject = JetStreamOffsetStore._subject(self.group, tp)
        for _ in range(10):
            last = await log._retrying(lambda: log._last_message(OFFSETS_STREAM, subject))
            seq, payload = (0, b"") if last is None else (last[0], last[1])
            hdr = b"NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: %d\r\nUs-Owner: %s\r\n\r\n" % (
                seq, self.member_id.encode())
            _, p = await log._retrying(
                lambda payload=payload, hdr=hdr: log.wire.request(subject.encode(), payload, hdr))
            ack = json.loads(p)
            err = ack.get("error")
            if err is None:
                return int(ack["seq"])
            if err.get("err_code") != _E_WRONG_LAST_SEQ:
                raise api_error(f"fencing the offsets of {tp.topic}/{tp.partition}", err)
            # The previous owner committed meanwhile: read again.
        raise BackendError(f"could not fence the offsets of {tp.topic}/{tp.partition} "
                           f"in group {self.group!r}: they kept changing")

    def take_lost(self) -> set:
        lost, self._lost = self._lost, set()
        return lost

    async def commit(self, store, group: str, offsets: dict) -> None:
        if not (isinstance(store, JetStreamOffsetStore) and store.log is self._backend.log
                and group == self.group):
            await store.commit(group, offsets)
            return
        expect = {}
        for tp in offsets:
            tp = TopicPartition(*tp)
            lease = self._owned.get(tp)
            if lease is None or lease.lost or tp not in self._oseq:
                raise FencedMemberError(
                    f"member {self.member_id} of group {self.group!r} does not own "
                    f"{tp.topic}/{tp.partition} (its lease lapsed after {self.session_timeout:g} s "
                    f"without renewal, or it was given up); nothing was committed")
            expect[tp] = self._oseq[tp]
        try:
            seqs = await store.commit_expecting(group, offsets, expect, self.member_id)
        except FencedMemberError:
            # Refused, or an earlier commit of ours landed unacknowledged (a
            # timeout): subjects whose last write is ours move our sequence on.
            log = self._backend.log
            mine = b"\r\nUs-Owner: " + self.member_id.encode() + b"\r\n"
            again = False
            for tp in expect:
                last = await log._retrying(lambda tp=tp: log._last_message(
                    OFFSETS_STREAM, JetStreamOffsetStore._subject(self.group, tp)))
                if last is not None and last[0] != expect[tp] and mine in last[2]:
                    expect[tp] = self._oseq[tp] = last[0]
                    again = True
            if not again:
                raise
            seqs = await store.commit_expecting(group, offsets, expect, self.member_id)
        for tp, seq in seqs.items():
            if self._oseq.get(tp) == expect[tp]:
                self._oseq[tp] = seq

    async def release(self, tp: TopicPartition) -> None:
        tp = TopicPartition(*tp)
        self._lost.discard(tp)
        self._oseq.pop(tp, None)
        lease = self._owned.pop(tp, None)
        if lease is not None:
            await self._leases.release(lease)

    async def leave(self) -> None:
        if self._left:
            return
        self._left = True
        self._backend._members.discard(self)
        for tp in list(self._owned):
            await self.release(tp)
        if self._lease is not None:
            lease, self._lease = self._lease, None
            await self._leases.release(lease)
