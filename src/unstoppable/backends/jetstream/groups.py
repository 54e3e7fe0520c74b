"""Consumer-group membership on JetStream, as leases."""
from __future__ import annotations

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
    _LEASE,
    _TRANSIENT,
    LEASES_STREAM,
)
from unstoppable.backends.jetstream.leases import _Lease
from unstoppable.backends.jetstream.records import _enc
from unstoppable.client._types import TopicPartition
from unstoppable.client.backend import GroupMember
from unstoppable.errors import (
    BackendError,
)


class _JetStreamMember(GroupMember):
    """Group membership as leases: ``usx.lease.g.<group>.m.<member id>``
    (value: the member's description) and, per owned partition,
    ``usx.lease.g.<group>.o.<topic>.<partition>`` (value: the member id).
    Every member lists the live member leases and computes the same
    assignment as on the embedded log (``groups.assign``)."""

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
        for tp, lease in list(self._owned.items()):
            if lease.lost:  # someone else may own it now: give it up at the next safe point
                del self._owned[tp]
                self._lost.add(tp)
        try:
            if self._lease is None or self._lease.lost:
                await self._join()  # our lease lapsed (a long pause, a partition): join again
            members = await self._members()
        except _TRANSIENT:
            # No answer now (a failover): keep the last view; the leases tell
            # the truth once the cluster answers again.
            return self._target - self._lost
        mine = assign(members, self._counts).get(self.member_id, ())
        self._target = {TopicPartition(t, p) for t, p in mine}
        return self._target - self._lost

    async def try_acquire(self, tp: TopicPartition) -> bool:
        tp = TopicPartition(*tp)
        lease = self._owned.get(tp)
        if lease is not None and not lease.lost:
            return True
        if tp in self._lost:
            return False
        lease, _ = await self._leases.acquire(
            f"{self._g}.o.{_enc(tp.topic)}.{tp.partition}".encode(), self.member_id.encode())
        if lease is None:
            return False
        self._owned[tp] = lease
        return True

    async def release(self, tp: TopicPartition) -> None:
        tp = TopicPartition(*tp)
        self._lost.discard(tp)
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
