"""Kafka's classic consumer-group protocol, for Kafka clients of the server.

One coordinator (this node) keeps each group's membership in memory:

* **JoinGroup** adds or refreshes a member and starts a rebalance. The join
  completes when every known member has joined again, or when the largest
  rebalance timeout of the members has passed (members that did not rejoin are
  dropped). A group with no generation yet waits ``initial_delay`` first (as
  Kafka's group.initial.rebalance.delay.ms), so members starting together land
  in one generation. Each completion starts a new generation; the leader gets
  every member's metadata for the protocol all members support.
* **SyncGroup** from the leader carries the assignments, which are handed to
  each member as they are: metadata and assignments are passed through
  untouched, so client-side assignors work.
* **Heartbeat** keeps a member alive; a member silent for longer than its
  session timeout is dropped and the group rebalances. During a rebalance a
  heartbeat is answered REBALANCE_IN_PROGRESS (27), which makes the client rejoin.
* **LeaveGroup** drops members at once.

Committed offsets (OffsetCommit/OffsetFetch) live in the log's own group
offset files (``<log>/groups/<group>/offsets``), the ones the Python Consumer
and ``unstoppable groups`` use; a commit is fdatasynced before it is answered.
Membership is not persisted: after a restart of the server, members get
UNKNOWN_MEMBER_ID and join again, as after a Kafka coordinator failover.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid

from unstoppable.errors import UnstoppableError
from unstoppable.server import protocol as P
from unstoppable.server._log import (
    MAX_METADATA_BYTES,
    OffsetsFile,
    list_groups,
    validate_group_name,
)

__all__ = ["Coordinator", "Group"]

log = logging.getLogger("unstoppable.server.groups")

NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
OFFSET_METADATA_TOO_LARGE = 12
COORDINATOR_NOT_AVAILABLE = 15
ILLEGAL_GENERATION = 22
INCONSISTENT_GROUP_PROTOCOL = 23
INVALID_GROUP_ID = 24
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
REBALANCE_IN_PROGRESS = 27
UNSUPPORTED_VERSION = 35

EMPTY, PREPARING, COMPLETING, STABLE = "Empty", "PreparingRebalance", "CompletingRebalance", "Stable"


class Member:
    __slots__ = ("member_id", "client_id", "session_ms", "rebalance_ms", "protocols",
                 "assignment", "last_seen", "join", "sync")

    def __init__(self, member_id: str, session_ms: int, rebalance_ms: int, protocols):
        self.member_id = member_id
        self.client_id = ""
        self.session_ms = session_ms
        self.rebalance_ms = rebalance_ms
        self.protocols = protocols          # [(name, metadata bytes)] in the member's order
        self.assignment = b""
        self.last_seen = time.monotonic()
        self.join: asyncio.Future | None = None   # pending JoinGroup answer
        self.sync: asyncio.Future | None = None   # pending SyncGroup answer


class Group:
    """The in-memory state of one group."""

    def __init__(self, group_id: str):
        self.group_id = group_id
        self.state = EMPTY
        self.generation = 0
        self.protocol_type = ""
        self.protocol: str | None = None
        self.leader: str | None = None
        self.members: dict[str, Member] = {}
        self.rebalance_deadline = 0.0
        self.join_ready_at = 0.0

    def start_rebalance(self, now: float, initial_delay: float) -> None:
        if self.state != PREPARING:
            self.state = PREPARING
            timeout = max((m.rebalance_ms for m in self.members.values()), default=0) / 1000
            self.rebalance_deadline = now + timeout
            self.join_ready_at = now + (initial_delay if self.generation == 0 else 0.0)
            for m in self.members.values():
                if m.sync is not None and not m.sync.done():
                    m.sync.set_result((REBALANCE_IN_PROGRESS, b""))
                m.sync = None

    def try_complete_join(self, now: float) -> None:
        """Finish the rebalance when everyone rejoined (or the timeout passed)."""
        if self.state != PREPARING or now < self.join_ready_at:
            return
        waiting = [m for m in self.members.values() if m.join is not None]
        if len(waiting) < len(self.members) and now < self.rebalance_deadline:
            return
        for mid in [mid for mid, m in self.members.items() if m.join is None]:
            log.info("group %s: %s did not rejoin within the rebalance timeout", self.group_id, mid)
            del self.members[mid]
        if not self.members:
            self.state = EMPTY
            self.generation += 1
            self.leader = self.protocol = None
            return
        names = [n for n, _ in next(iter(self.members.values())).protocols]
        if self.leader in self.members:
            names = [n for n, _ in self.members[self.leader].protocols]
        common = [n for n in names if all(any(n == q for q, _ in m.protocols)
                                          for m in self.members.values())]
        self.generation += 1
        if not common:  # checked on join, so only a race of changing members gets here
            for m in self.members.values():
                m.join.set_result(dict(error_code=INCONSISTENT_GROUP_PROTOCOL))
                m.join = None
            self.members.clear()
            self.state = EMPTY
            return
        self.protocol = common[0]
        if self.leader not in self.members:
            self.leader = next(iter(self.members))
        self.state = COMPLETING
        log.info("group %s: generation %d, leader %s, members %s", self.group_id, self.generation,
                 self.leader, sorted(self.members))
        metas = tuple((m.member_id, dict(m.protocols)[self.protocol]) for m in self.members.values())
        for m in self.members.values():
            m.last_seen = now
            m.join.set_result(dict(
                error_code=NONE, generation_id=self.generation, protocol_name=self.protocol,
                leader=self.leader, member_id=m.member_id,
                members=metas if m.member_id == self.leader else ()))
            m.join = None

    def remove(self, member_id: str, now: float, initial_delay: float) -> None:
        m = self.members.pop(member_id, None)
        if m is None:
            return
        for fut in (m.join, m.sync):
            if fut is not None and not fut.done():
                fut.set_result(dict(error_code=UNKNOWN_MEMBER_ID) if fut is m.join
                               else (UNKNOWN_MEMBER_ID, b""))
        if self.leader == member_id:
            self.leader = None
        if self.members:
            self.start_rebalance(now, initial_delay)
            self.try_complete_join(now)
        else:
            self.state = EMPTY
            self.generation += 1
            self.protocol = None


class Coordinator:
    """The group coordinator of a :class:`~unstoppable.server.broker.Broker`."""

    def __init__(self, broker, initial_delay: float = 0.3):
        self.broker = broker
        self.initial_delay = initial_delay
        self.groups: dict[str, Group] = {}
        self._offsets: dict[str, OffsetsFile] = {}
        self._files_lock = threading.Lock()   # files are opened on the executor's threads
        self._ticker: asyncio.Task | None = None

    def start(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
        for f in self._offsets.values():
            f.close()
        self._offsets.clear()

    async def _tick(self) -> None:
        """Expire silent members and finish rebalances whose timeout passed."""
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            for g in list(self.groups.values()):
                for m in list(g.members.values()):
                    # a member waiting in JoinGroup or SyncGroup is alive: the
                    # group's progress, not the member, is what it waits for
                    if m.join is None and m.sync is None \
                            and now - m.last_seen > m.session_ms / 1000:
                        log.info("group %s: %s silent for %.1f s, past its session timeout",
                                 g.group_id, m.member_id, now - m.last_seen)
                        g.remove(m.member_id, now, self.initial_delay)
                g.try_complete_join(now)

    def _group(self, group_id: str) -> Group:
        g = self.groups.get(group_id)
        if g is None:
            validate_group_name(group_id)
            g = self.groups[group_id] = Group(group_id)
        return g

    def _file(self, group_id: str) -> OffsetsFile:
        """The group's offsets file (opening one fsyncs directories: call it
        through :meth:`_run`, off the event loop)."""
        with self._files_lock:
            f = self._offsets.get(group_id)
            if f is None:
                f = self._offsets[group_id] = OffsetsFile(self.broker.log_path, group_id)
            return f

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.broker._sync_pool, fn, *args)

    def _commit(self, group_id: str, offsets: dict, metadata: dict) -> None:
        self._file(group_id).commit(offsets, metadata=metadata)

    def _load(self, group_id: str) -> dict:
        """{(topic, partition): (offset, metadata)} of the group."""
        if group_id not in self._offsets and group_id not in list_groups(self.broker.log_path):
            return {}   # never committed: nothing to read, and no directory to create
        return self._file(group_id).load_with_metadata()

    # ------------------------------------------------------------ membership

    async def find_coordinator(self, req, ver):
        b = self.broker
        # Transaction coordinators (key_type 1) are found here too: the
        # transactional InitProducerId that follows answers UNSUPPORTED_VERSION,
        # which clients take as "transactions not supported" at once, where an
        # error here would only be retried until their timeout.
        return P.response(10, ver, error_code=NONE, error_message=None, node_id=0,
                          host=b.advertised_host, port=b.port)

    async def join_group(self, req, ver):
        try:
            g = self._group(req.group_id)
        except UnstoppableError:
            return P.response(11, ver, error_code=INVALID_GROUP_ID, generation_id=-1,
                              protocol_name="", leader="", member_id="", members=())
        session_ms = P.ms(req.session_timeout)
        rebalance_ms = P.ms(req.rebalance_timeout) if ver >= 1 else session_ms
        protocols = [(p.name, bytes(p.metadata)) for p in req.protocols]

        def fail(code):
            return P.response(11, ver, error_code=code, generation_id=-1, protocol_name="",
                              leader="", member_id=req.member_id, members=())
        if not 1 <= session_ms <= 30 * 60 * 1000:
            return fail(INVALID_SESSION_TIMEOUT)
        if not protocols or (g.members and g.protocol_type != req.protocol_type):
            return fail(INCONSISTENT_GROUP_PROTOCOL)
        if g.members and not any(all(any(n == q for q, _ in m.protocols)
                                     for m in g.members.values() if m.member_id != req.member_id)
                                 for n, _ in protocols):
            return fail(INCONSISTENT_GROUP_PROTOCOL)
        now = time.monotonic()
        if req.member_id:
            m = g.members.get(req.member_id)
            if m is None:
                return fail(UNKNOWN_MEMBER_ID)
            m.session_ms, m.rebalance_ms, m.protocols = session_ms, rebalance_ms, protocols
        else:
            m = Member(f"member-{uuid.uuid4()}", session_ms, rebalance_ms, protocols)
            g.members[m.member_id] = m
        g.protocol_type = req.protocol_type
        m.last_seen = now
        if m.join is not None and not m.join.done():
            m.join.set_result(dict(error_code=UNKNOWN_MEMBER_ID))  # superseded by this join
        m.join = asyncio.get_running_loop().create_future()
        fut = m.join
        g.start_rebalance(now, self.initial_delay)
        g.try_complete_join(now)
        res = await fut
        if res.get("error_code", NONE) != NONE:
            return fail(res["error_code"])
        return P.response(11, ver, **{**res, "members": tuple(
            P.build(P.nested(11, ver, "JoinGroupResponseMember"), member_id=mid, metadata=meta)
            for mid, meta in res["members"])})

    async def sync_group(self, req, ver):
        g = self.groups.get(req.group_id)
        m = None if g is None else g.members.get(req.member_id)
        if m is None:
            return P.response(14, ver, error_code=UNKNOWN_MEMBER_ID, assignment=b"")
        if req.generation_id != g.generation:
            return P.response(14, ver, error_code=ILLEGAL_GENERATION, assignment=b"")
        if g.state == PREPARING:
            return P.response(14, ver, error_code=REBALANCE_IN_PROGRESS, assignment=b"")
        m.last_seen = time.monotonic()
        if g.state == STABLE:
            return P.response(14, ver, error_code=NONE, assignment=m.assignment)
        if req.member_id == g.leader:
            given = {a.member_id: bytes(a.assignment) for a in req.assignments}
            for member in g.members.values():
                member.assignment = given.get(member.member_id, b"")
            g.state = STABLE
            for member in g.members.values():
                if member.sync is not None and not member.sync.done():
                    member.sync.set_result((NONE, member.assignment))
                member.sync = None
            return P.response(14, ver, error_code=NONE, assignment=m.assignment)
        m.sync = asyncio.get_running_loop().create_future()
        err, assignment = await m.sync
        return P.response(14, ver, error_code=err, assignment=assignment)

    async def heartbeat(self, req, ver):
        g = self.groups.get(req.group_id)
        m = None if g is None else g.members.get(req.member_id)
        if m is None:
            return P.response(12, ver, error_code=UNKNOWN_MEMBER_ID)
        if req.generation_id != g.generation:
            return P.response(12, ver, error_code=ILLEGAL_GENERATION)
        m.last_seen = time.monotonic()
        if g.state == PREPARING:
            return P.response(12, ver, error_code=REBALANCE_IN_PROGRESS)
        return P.response(12, ver, error_code=NONE)

    async def leave_group(self, req, ver):
        g = self.groups.get(req.group_id)
        ids = [req.member_id] if ver < 3 else [mi.member_id for mi in req.members]
        now = time.monotonic()
        codes = []
        for mid in ids:
            known = g is not None and mid in g.members
            if known:
                g.remove(mid, now, self.initial_delay)
            codes.append((mid, NONE if known else UNKNOWN_MEMBER_ID))
        item = P.nested(13, ver, "MemberResponse")     # v3+: one result per member
        results = () if item is None else tuple(
            P.build(item, member_id=mid, group_instance_id=None, error_code=code)
            for mid, code in codes)
        top = NONE if ver >= 3 else codes[0][1]
        return P.response(13, ver, error_code=top, members=results)

    async def list_groups(self, req, ver):
        names = {gid: g.protocol_type for gid, g in self.groups.items()}
        for gid in list_groups(self.broker.log_path):
            names.setdefault(gid, "consumer")
        item = P.nested(16, ver, "ListedGroup")
        return P.response(16, ver, error_code=NONE, groups=tuple(
            P.build(item, group_id=gid, protocol_type=pt) for gid, pt in sorted(names.items())))

    async def describe_groups(self, req, ver):
        mod = P.response_module(15, ver)
        out = []
        for gid in req.groups:
            g = self.groups.get(gid)
            if g is None:
                # a group with committed offsets in the log but no members is Empty
                known = gid in list_groups(self.broker.log_path)
                out.append(P.build(mod.DescribedGroup, error_code=NONE, group_id=gid,
                                   group_state="Empty" if known else "Dead",
                                   protocol_type="consumer" if known else "",
                                   protocol_data="", members=()))
                continue
            members = tuple(P.build(
                mod.DescribedGroupMember, member_id=m.member_id, group_instance_id=None,
                client_id=m.client_id, client_host="",
                member_metadata=dict(m.protocols).get(g.protocol, b"") if g.protocol else b"",
                member_assignment=m.assignment) for m in g.members.values())
            out.append(P.build(mod.DescribedGroup, error_code=NONE, group_id=gid,
                               group_state=g.state, protocol_type=g.protocol_type,
                               protocol_data=g.protocol or "", members=members))
        return P.response(15, ver, groups=tuple(out))

    # ------------------------------------------------------------ offsets

    def _partition_error(self, topic: str, partition: int, metadata: str) -> int:
        """The error code of one partition of an OffsetCommit (0: none)."""
        try:
            if not 0 <= partition < self.broker.log.topic(topic).partitions:
                return UNKNOWN_TOPIC_OR_PARTITION
        except UnstoppableError:
            return UNKNOWN_TOPIC_OR_PARTITION
        if len(metadata.encode()) > MAX_METADATA_BYTES:
            return OFFSET_METADATA_TOO_LARGE     # Kafka's offset.metadata.max.bytes
        return NONE

    async def offset_commit(self, req, ver):
        mod = P.response_module(8, ver)
        gen = req.generation_id_or_member_epoch
        err = NONE
        try:
            validate_group_name(req.group_id)
        except UnstoppableError:
            err = INVALID_GROUP_ID
        if not err and gen >= 0:
            g = self.groups.get(req.group_id)
            m = None if g is None else g.members.get(req.member_id)
            if m is None:
                err = UNKNOWN_MEMBER_ID
            elif gen != g.generation:
                err = ILLEGAL_GENERATION
            elif g.state == PREPARING:
                err = REBALANCE_IN_PROGRESS
            else:
                m.last_seen = time.monotonic()
        codes: dict = {}
        offsets = {}
        metadata = {}
        for t in req.topics:
            for p in t.partitions:
                meta = p.committed_metadata or ""
                code = err or self._partition_error(t.name, p.partition_index, meta)
                if not code and p.committed_offset >= 0:
                    offsets[(t.name, p.partition_index)] = p.committed_offset
                    if meta:
                        metadata[(t.name, p.partition_index)] = meta
                codes[(t.name, p.partition_index)] = code
        if offsets:
            await self._run(self._commit, req.group_id, offsets, metadata)
        topics = []
        for t in req.topics:
            topics.append(P.build(mod.OffsetCommitResponseTopic, name=t.name, partitions=tuple(
                P.build(mod.OffsetCommitResponsePartition, partition_index=p.partition_index,
                        error_code=codes[(t.name, p.partition_index)]) for p in t.partitions)))
        return P.response(8, ver, topics=tuple(topics))

    async def offset_fetch(self, req, ver):
        mod = P.response_module(9, ver)
        try:
            validate_group_name(req.group_id)
        except UnstoppableError:
            return P.response(9, ver, error_code=INVALID_GROUP_ID, topics=())
        committed = await self._run(self._load, req.group_id)
        if req.topics is None:
            wanted: dict = {}
            for (t, p) in sorted(committed):
                wanted.setdefault(t, []).append(p)
        else:
            wanted = {t.name: list(t.partition_indexes) for t in req.topics}
        topics = []
        for name, parts in wanted.items():
            topics.append(P.build(mod.OffsetFetchResponseTopic, name=name, partitions=tuple(
                P.build(mod.OffsetFetchResponsePartition, partition_index=i,
                        committed_offset=committed.get((name, i), (-1, ""))[0],
                        committed_leader_epoch=-1, metadata=committed.get((name, i), (-1, ""))[1],
                        error_code=NONE) for i in parts)))
        return P.response(9, ver, error_code=NONE, topics=tuple(topics))
