"""The Backend that Producer and Consumer run on over a :class:`JetStreamLog`:
atomic-batch appends, idempotent producers, direct-get fetches, waits for
data, offsets for times.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import socket
import uuid
from collections.abc import Iterable, Sequence

from unstoppable.backends.jetstream._borrowed import (
    validate_group_name,
)
from unstoppable.backends.jetstream._constants import (
    _E_BATCH_DUPLICATE,
    _E_NO_MESSAGE,
    _E_WRONG_LAST_SEQ,
    _GROUP_BYTES,
    _H_LAST,
    _H_MSGID,
    _H_PENDING,
    _H_SEQ,
    _H_TS,
    _LEASE,
    _SEQ_MOD,
    _TRANSIENT,
    MAX_ATOMIC_BATCH,
    MAX_BATCH_BYTES,
)
from unstoppable.backends.jetstream._wire import (
    header_value,
    status_of,
)
from unstoppable.backends.jetstream.groups import _JetStreamMember
from unstoppable.backends.jetstream.leases import _Lease
from unstoppable.backends.jetstream.offsets import JetStreamOffsetStore
from unstoppable.backends.jetstream.records import (
    JetStreamRecord,
    _ms_to_rfc3339,
    _Part,
    _record_headers,
    _record_ts,
)
from unstoppable.client._types import TopicInfo
from unstoppable.client.backend import Backend, GroupMember
from unstoppable.client.offsets import OffsetStore
from unstoppable.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    DuplicateSequenceError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    PartitionOutOfRangeError,
    ProducerFencedError,
    ProducerIdInUseError,
)


class _PidState:
    """What this client knows about an idempotent producer on one partition."""

    __slots__ = ("epoch", "next", "last_sseq", "recent", "dirty", "loaded")

    def __init__(self):
        self.epoch = 0
        self.next = 0         # sequence its next record must carry
        self.last_sseq = 0    # stream sequence of its last record (0: none)
        self.recent: collections.deque = collections.deque(maxlen=64)  # (first_seq, count, epoch, base)
        self.dirty = True     # in doubt: look at the stream leader before using it
        self.loaded = False   # looked at least once

    def find(self, first: int, count: int, epoch: int):
        for f, c, e, base in self.recent:
            if f == first and c == count and e == epoch:
                return base
        return None


class _Claim:
    """A producer-id claim; ``release()`` gives it up without waiting and
    returns the task that deletes the lease (None when there is nothing to
    wait for), which an async caller may await."""

    def __init__(self, backend: "JetStreamBackend", lease: _Lease):
        self._backend = backend
        self._lease = lease

    def release(self):
        lease, self._lease = self._lease, None
        if lease is None:
            return None
        self._backend._claims.discard(self)
        task = self._backend.log._leases.release_soon(lease)
        if task is not None:
            self._backend._releasing.add(task)  # close() waits for it
        return task


class JetStreamBackend(Backend):
    """The Backend over a :class:`JetStreamLog` (one per Producer/Consumer;
    they share the log's connection). ``close()`` gives up what this backend
    holds (producer-id claims, group memberships), not the connection."""

    #: Seconds between authoritative looks at the partitions while waiting
    #: for data (wake-ups normally come sooner, from the published messages).
    max_poll = 0.5

    def __init__(self, log):  # a JetStreamLog (not imported: it imports this module)
        self.log = log
        self._parts: dict[tuple, _Part] = {}
        self._pids: dict[tuple, _PidState] = {}
        self._claims: set = set()
        self._releasing: set = set()
        self._members: set = set()
        self._starts: dict[tuple, int] = {}

    async def _part(self, topic: str, partition: int) -> _Part:
        part = self._parts.get((topic, partition))
        if part is None:
            info = await self.log.topic_info(topic)
            if isinstance(partition, bool) or not isinstance(partition, int) or not 0 <= partition < info.partitions:
                raise PartitionOutOfRangeError(
                    f"topic {topic!r} has partitions 0 .. {info.partitions - 1}, not {partition}")
            part = self._parts[(topic, partition)] = _Part(topic, partition)
        return part

    async def topic_info(self, topic: str) -> TopicInfo:
        return await self.log.topic_info(topic)

    # -------------------------------------------------------------- producing

    async def append(self, topic: str, partition: int, batches: Sequence, acks: str):
        """Publish the batches in order, up to 1000 records per atomic batch
        (one acknowledgement each). ``acks`` "written" and "fsync" both wait
        for JetStream's acknowledgement: the stream leader has the records
        and, on a replicated stream, a majority of replicas do (see
        docs/JETSTREAM.md on disk syncs)."""
        bases: list = []
        try:
            part = await self._part(topic, partition)
            i, n = 0, len(batches)
            while i < n:
                if batches[i].producer_id >= 0:
                    i = await self._append_idempotent(part, batches, i, bases)
                    continue
                j = _group_end(batches, i, contiguous=False)
                items = []
                for b in batches[i:j]:
                    ts = b.timestamp
                    items.extend(_record_headers(r, ts) for r in b.records)
                ack = await self.log._atomic(part.plain, items)
                base = int(ack["seq"]) - len(items)
                for b in batches[i:j]:
                    bases.append(base)
                    base += len(b.records)
                self.log._advanced(part.key, int(ack["seq"]))
                i = j
        except Exception as e:
            return bases, e
        return bases, None

    async def _pid_state(self, part: _Part, pid: int) -> _PidState:
        """The producer's state on this partition, loaded from the stream
        leader when unknown or in doubt."""
        key = (part.key, pid)
        st = self._pids.get(key)
        if st is None:
            st = self._pids[key] = _PidState()
        if st.dirty:
            # Asked on the producer's path: each attempt waits publish_timeout
            # at most, so a leader election delays it no more than a publish.
            last = await self.log._retrying(lambda: self.log._last_message(
                part.stream, part.pid_subject(pid).decode(), self.log.publish_timeout))
            if last is None:
                st.epoch, st.next, st.last_sseq = 0, 0, 0
            else:
                sseq, _, hdr = last
                mid = header_value(b"\r\n" + hdr.partition(b"\r\n")[2], _H_MSGID) if hdr else None
                try:
                    p_pid, _, epoch, seq = mid.decode().split("-")
                    assert int(p_pid) == pid
                except Exception:
                    raise BackendError(
                        f"message {sseq} on {part.pid_subject(pid).decode()} has no unstoppable message id "
                        f"({mid!r}); was it written by another client?") from None
                st.epoch, st.next, st.last_sseq = int(epoch), (int(seq) + 1) % _SEQ_MOD, sseq
            st.dirty = False
            st.loaded = True
        return st

    def _check_sequence(self, part: _Part, pid: int, st: _PidState, b) -> None:
        where = f"{part.topic}/{part.partition}"
        if st.last_sseq and b.producer_epoch != st.epoch:
            if b.producer_epoch < st.epoch:
                raise ProducerFencedError(
                    f"producer {pid} writes epoch {b.producer_epoch} to {where}, which already has "
                    f"epoch {st.epoch}: a newer instance took over")
            if b.base_sequence != 0:
                raise OutOfOrderSequenceError(
                    f"producer {pid} starts epoch {b.producer_epoch} on {where} at sequence "
                    f"{b.base_sequence}; a new epoch starts at 0")
            return
        d = (b.base_sequence - st.next) % _SEQ_MOD
        if d == 0:
            return
        if d < _SEQ_MOD // 2:
            raise OutOfOrderSequenceError(
                f"producer {pid}'s batch for {where} starts at sequence {b.base_sequence}, but the "
                f"partition expects {st.next}: records in between were never written")
        raise DuplicateSequenceError(
            f"producer {pid}'s batch for {where} at sequence {b.base_sequence} was written before, "
            f"and its offsets are no longer known to this client (next expected: {st.next})")

    async def _append_idempotent(self, part: _Part, batches: Sequence, i: int, bases: list) -> int:
        pid = batches[i].producer_id
        st = self._pids.get((part.key, pid))
        if st is not None and st.dirty and st.loaded:
            # An attempt's outcome was unknown: it may have landed since.
            old_next, old_sseq = st.next, st.last_sseq
            st = await self._pid_state(part, pid)
            if st.last_sseq != old_sseq:
                return self._explain(part, pid, st, batches, i, bases, old_next)
        else:
            st = await self._pid_state(part, pid)
        # Retries of batches this client saw acknowledged: their first offsets.
        while i < len(batches):
            b = batches[i]
            base = st.find(b.base_sequence, len(b.records), b.producer_epoch)
            if base is None:
                break
            bases.append(base)
            i += 1
        if i == len(batches):
            return i
        self._check_sequence(part, pid, st, batches[i])
        j = _group_end(batches, i, contiguous=True)
        epoch = batches[i].producer_epoch
        items = []
        p = part.partition
        for b in batches[i:j]:
            ts, seq = b.timestamp, b.base_sequence
            for r in b.records:
                extra, payload = _record_headers(r, ts)
                items.append((b"Nats-Msg-Id: %d-%d-%d-%d\r\n" % (pid, p, epoch, seq) + extra, payload))
                seq = (seq + 1) % _SEQ_MOD
        expect = b"Nats-Expected-Last-Subject-Sequence: %d\r\n" % st.last_sseq
        try:
            ack = await self.log._atomic(part.pid_subject(pid), items, expect)
        except BackendError as e:
            if e.err_code in (_E_WRONG_LAST_SEQ, _E_BATCH_DUPLICATE):
                return await self._resolve(part, pid, st, batches, i, bases, e)
            st.dirty = True
            raise
        except BaseException:
            st.dirty = True  # the outcome is unknown: look before the next attempt
            raise
        last = int(ack["seq"])
        bases.extend(self._landed(part, st, batches, i, j, last - len(items), last))
        return j

    def _landed(self, part: _Part, st: _PidState, batches: Sequence, i: int, j: int, base: int,
                last_sseq: int) -> list:
        out = []
        for b in batches[i:j]:
            st.recent.append((b.base_sequence, len(b.records), b.producer_epoch, base))
            out.append(base)
            base += len(b.records)
        b = batches[j - 1]
        st.epoch = b.producer_epoch
        st.next = (b.base_sequence + len(b.records)) % _SEQ_MOD
        st.last_sseq = last_sseq
        self.log._advanced(part.key, last_sseq)
        return out

    async def _resolve(self, part: _Part, pid: int, st: _PidState, batches: Sequence, i: int,
                       bases: list, err: BackendError) -> int:
        """The stream refused an atomic publish because the producer's subject
        moved on (or its message ids were seen): an earlier attempt whose
        acknowledgement never came has landed since. Every attempt expects the
        subject's last sequence as this client knew it, so at most one of them
        lands per known state, as one contiguous run of records starting at
        the known next sequence. Work out which batches it held and where."""
        old_next, old_sseq = st.next, st.last_sseq
        st.dirty = True
        st = await self._pid_state(part, pid)
        if st.last_sseq == old_sseq:
            if err.err_code == _E_BATCH_DUPLICATE:
                raise DuplicateSequenceError(
                    f"producer {pid}'s records for {part.topic}/{part.partition} from sequence {old_next} "
                    f"were published before (duplicate message ids): {err.description}")
            raise BackendUnavailableError(
                f"an earlier attempt for {part.topic}/{part.partition} is still being applied "
                f"({err.description}); retrying")
        return self._explain(part, pid, st, batches, i, bases, old_next)

    def _explain(self, part: _Part, pid: int, st: _PidState, batches: Sequence, i: int, bases: list,
                 old_next: int) -> int:
        """Records from ``old_next`` up to the fresh state ``st`` landed
        without an acknowledgement reaching us. Every attempt expects the
        subject's last sequence as this client knew it, so at most one attempt
        lands per known state: one atomic batch, contiguous, ending at
        ``st.last_sseq``, holding the batches from ``i`` on that it covers.
        Returns the index of the first batch still to write."""
        landed = (st.next - old_next) % _SEQ_MOD
        k, total = i, 0
        while k < len(batches) and total < landed:
            b = batches[k]
            if b.producer_id != pid or b.base_sequence != (old_next + total) % _SEQ_MOD:
                break
            total += len(b.records)
            k += 1
        if k == i or total != landed:
            raise ProducerFencedError(
                f"another writer with producer id {pid} appended to {part.topic}/{part.partition} "
                f"(its sequence moved from {old_next} to {st.next} in a way this producer's batches "
                "do not explain)")
        bases.extend(self._landed(part, st, batches, i, k, st.last_sseq - total, st.last_sseq))
        return k

    async def producer_state(self, topic: str, partition: int, producer_id: int):
        part = await self._part(topic, partition)
        key = (part.key, producer_id)
        if key in self._pids:
            self._pids[key].dirty = True
        st = await self._pid_state(part, producer_id)
        return None if st.last_sseq == 0 else (st.epoch, st.next)

    async def claim_producer_id(self, producer_id: int, name: str, *, fence: bool = False,
                                timeout_ms: int = 60_000):
        # Takeover here is by lease: a stopped holder's claim lapses lease_ttl
        # after its last renewal (timeout_ms does not apply), and fence=True
        # is not offered (a live holder keeps renewing).
        if fence:
            raise ValueError(
                "fence=True is not supported on the JetStream backend: a producer id's claim "
                f"passes to a new instance {self.log.lease_ttl:g} s (lease_ttl) after its "
                "holder stops renewing it")
        host = socket.gethostname()
        value = json.dumps({"name": name, "pid": os.getpid(), "host": host,
                            "claim": uuid.uuid4().hex}).encode()
        lease, holder = await self.log._leases.acquire(f"{_LEASE}.pid.{producer_id}".encode(), value)
        if lease is None:
            try:
                who = json.loads(holder)
                who = f"process {who['pid']} on {who['host']}"
            except Exception:
                who = "another client"
            raise ProducerIdInUseError(
                f"producer id {name!r} ({producer_id}) is held by {who}; each idempotent producer "
                f"needs its own id (a claim lapses {self.log.lease_ttl:g} s after its holder stops)")
        claim = _Claim(self, lease)
        self._claims.add(claim)
        return claim

    # -------------------------------------------------------------- consuming

    async def fetch(self, topic: str, partition: int, offset: int, max_records: int,
                    max_bytes: int) -> list:
        """Records from ``offset`` on, read with one JetStream direct get of a
        batch (served by the nearest replica, which may trail the leader by a
        moment). Empty at the end; OffsetOutOfRangeError outside [start, end]."""
        part = await self._part(topic, partition)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise OffsetOutOfRangeError(f"offset {offset!r} of {topic}/{partition} is not an int >= 0")
        recs, end = await self.log._retrying(
            lambda: self._direct_get(part, {"seq": offset + 1, "batch": max(1, max_records),
                                            "max_bytes": max(1, max_bytes)}))
        if recs:
            if recs[0].offset != offset:
                start, end = await self.offset_range(topic, partition)
                raise OffsetOutOfRangeError(
                    f"offset {offset} of {topic}/{partition} is outside [{start}, {end}] "
                    "(deleted by retention)")
            if recs[-1].offset - offset + 1 != len(recs):
                # Streams lose records only at the front: a gap is a fault.
                raise BackendError(f"a read of {topic}/{partition} from {offset} came back with a gap "
                                   f"({len(recs)} records up to offset {recs[-1].offset})")
            return recs
        # Nothing at or after offset on the replica that answered.
        known = self.log._ends.get(part.key, 0)
        if offset == known and self._starts.get(part.key, 0) <= offset:
            return []
        start, end = await self.offset_range(topic, partition)
        if offset < start or offset > end:
            raise OffsetOutOfRangeError(f"offset {offset} of {topic}/{partition} is outside [{start}, {end}]")
        if offset == end:
            return []
        # That replica trails the leader: read one record from the leader.
        got = await self.log._retrying(lambda: self._leader_get(part, offset + 1))
        return [] if got is None else [got]

    async def _direct_get(self, part: _Part, req: dict) -> tuple[list, int | None]:
        """Run one batched direct get; returns (records, end offset or None)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        out: list = []
        topic, p = part.topic, part.partition
        state = {"end": None}

        def on(hdr, payload):
            if hdr is not None and hdr[8] == 0x0D:  # "NATS/1.0\r\n": a message
                i = hdr.find(_H_SEQ) + 17
                seq = int(hdr[i:hdr.index(b"\r", i)])
                i = hdr.find(_H_TS)
                if i >= 0:
                    i += 9
                    ts = int(hdr[i:hdr.index(b"\r", i)])
                else:
                    ts = _record_ts(hdr)
                out.append(JetStreamRecord(topic, p, seq - 1, ts, payload, hdr))
                return False
            st = status_of(hdr)
            if st == 204:  # end of batch: the last sequence sent and how many follow it
                last = header_value(hdr, _H_LAST)
                pend = header_value(hdr, _H_PENDING)
                if last is not None and pend is not None:
                    state["end"] = int(last) + int(pend)
            if not fut.done():
                fut.set_result(st)
            return True

        token, reply = self.log.wire.new_reply(on)
        try:
            await self.log.wire.publish(part.direct, json.dumps(req).encode(), reply)
            t = self.log.wire.request_timeout
            try:
                st = await asyncio.wait_for(fut, t)
            except asyncio.TimeoutError:
                raise BackendTimeoutError(f"no reply to a read of {topic}/{p} within {t:g} s") from None
        finally:
            self.log.wire.drop(token)
        if st == 503:
            raise BackendUnavailableError(f"no replica of {topic}/{p} answers reads now (no responders)")
        if st not in (204, 404):
            raise BackendError(f"read of {topic}/{p} failed with status {st}")
        end = state["end"]
        if end is not None:
            self.log._advanced(part.key, end)
        return out, end

    async def _leader_get(self, part: _Part, seq: int):
        try:
            r = await self.log.wire.api(part.get_api, {"seq": seq})
        except BackendError as e:
            if e.err_code == _E_NO_MESSAGE:
                return None
            raise
        m = r["message"]
        hdr = base64.b64decode(m.get("hdrs") or b"") or b"NATS/1.0\r\n\r\n"
        hdr = hdr[:-2] + b"Nats-Time-Stamp: " + m["time"].encode() + b"\r\n\r\n"
        return JetStreamRecord(part.topic, part.partition, int(m["seq"]) - 1, _record_ts(hdr),
                               base64.b64decode(m.get("data") or b""), hdr)

    async def _range(self, part: _Part) -> tuple[int, int]:
        si = await self.log.wire.api(part.info_api)
        s = si["state"]
        first, last = int(s.get("first_seq", 0)), int(s.get("last_seq", 0))
        start = min(max(first - 1, 0), last)
        self._starts[part.key] = start
        self.log._advanced(part.key, last)
        return start, last

    async def offset_range(self, topic: str, partition: int) -> tuple[int, int]:
        part = await self._part(topic, partition)
        return await self.log._retrying(lambda: self._range(part))

    async def offset_for_time(self, topic: str, partition: int, ts_ms: int) -> int | None:
        """First offset whose record timestamp is >= ts_ms, or None.

        JetStream indexes its own store times, not record timestamps, so this
        starts from the first message the leader stored at ``ts_ms - 2 s``,
        binary-searches the records stored before ``ts_ms`` and scans forward
        from there. Exact when record timestamps are not ahead of the servers'
        clocks by more than those 2 s and do not go backwards within them."""
        part = await self._part(topic, partition)
        slack = 2000

        async def first_at(ms: int):
            when = _ms_to_rfc3339(max(ms, 0))
            if when is None:
                return None
            recs, _ = await self.log._retrying(
                lambda: self._direct_get(part, {"start_time": when, "batch": 1}))
            return recs[0] if recs else None

        lo_rec = await first_at(ts_ms - slack)
        if lo_rec is None:
            return None
        if lo_rec.timestamp >= ts_ms:
            return lo_rec.offset
        hi_rec = await first_at(ts_ms)
        _, end = await self.offset_range(topic, partition)
        a, b = lo_rec.offset + 1, (hi_rec.offset if hi_rec is not None else end)
        while a < b:
            mid = (a + b) // 2
            recs = await self.fetch(topic, partition, mid, 1, 1)
            if recs and recs[0].timestamp >= ts_ms:
                b = mid
            else:
                a = mid + 1
        pos = a
        while True:
            recs = await self.fetch(topic, partition, pos, 1000, 1 << 20)
            if not recs:
                return None
            for r in recs:
                if r.timestamp >= ts_ms:
                    return r.offset
            pos = recs[-1].offset + 1

    def known_end_offset(self, topic: str, partition: int) -> int:
        return self.log._ends.get((topic, partition), 0)

    def known_start_offset(self, topic: str, partition: int) -> int | None:
        return self._starts.get((topic, partition))

    async def wait_for_data(self, positions: dict, timeout: float | None,
                            interrupt: asyncio.Future | None = None) -> bool:
        """Sleep until a partition may hold records at or past its position.

        Wake-ups come from appends through this connection, and from the
        records' own messages: while waiting, the backend subscribes (plain
        NATS) to the partitions' subjects, then confirms with the stream
        leader that the end really moved (an atomic batch's messages arrive
        before it commits). A look at the leader every ``max_poll`` seconds
        is the safety net."""
        loop = asyncio.get_running_loop()
        if interrupt is not None and interrupt.done():
            return True
        deadline = None if timeout is None else loop.time() + timeout
        parts = [(await self._part(tp.topic, tp.partition), pos) for tp, pos in positions.items()]
        ends = self.log._ends
        if any(ends.get(part.key, 0) > pos for part, pos in parts):
            return True
        ev = asyncio.Event()

        def poke(*_):
            ev.set()

        waiters = self.log._waiters
        for part, _ in parts:
            waiters[part.key].add(poke)
        if interrupt is not None:
            interrupt.add_done_callback(poke)
        subs = []
        try:
            subs = await self._subscribe_parts(parts, poke)
            confirm = 0
            while True:
                if interrupt is not None and interrupt.done():
                    return True
                if await self._moved(parts):
                    return True
                now = loop.time()
                if deadline is not None and now >= deadline:
                    return False
                wait, confirm = self._next_wait(confirm, None if deadline is None else deadline - now)
                try:
                    await asyncio.wait_for(ev.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                if ev.is_set():
                    ev.clear()
                    confirm = 1
        finally:
            if interrupt is not None:
                interrupt.remove_done_callback(poke)
            for part, _ in parts:
                waiters[part.key].discard(poke)
            for sub in subs:
                await self.log.wire.unsubscribe(sub)

    async def _subscribe_parts(self, parts: list, poke) -> list:
        """Plain NATS subscriptions to the partitions' subjects, calling
        ``poke`` on every message; none when disconnected (polls still look)."""
        subs: list = []
        try:
            for part, _ in parts:
                subs.append(await self.log.wire.subscribe_raw(part.prefix + ".>", poke))
            if subs:
                await self.log.nc.flush(max(self.log.wire.request_timeout, 1.0))
        except Exception:
            pass  # disconnected: the polls in wait_for_data still notice data
        return subs

    async def _moved(self, parts: list) -> bool:
        """Whether some partition's end passed its position: known here, or
        confirmed by its stream leader."""
        ends = self.log._ends
        if any(ends.get(part.key, 0) > pos for part, pos in parts):
            return True
        if parts:
            try:
                got = await asyncio.gather(*(self._range(part) for part, _ in parts))
                return any(end > pos for (_, end), (_, pos) in zip(got, parts))
            except _TRANSIENT:
                pass
        return False

    def _next_wait(self, confirm: int, left: float | None) -> tuple[float, int]:
        """Seconds to sleep before the next look (at most ``left``), and the
        next ``confirm`` step: after a wake-up by a message (``confirm`` > 0),
        short backing-off looks until its batch commits; otherwise ``max_poll``."""
        if confirm:
            wait, confirm = min(0.001 * (2 ** confirm), 0.1), (confirm + 1 if confirm < 8 else 0)
        else:
            wait = self.max_poll
        return (wait if left is None else min(wait, left)), confirm

    # ----------------------------------------------------------------- groups

    async def join_group(self, group: str, topics: Iterable[str], *,
                         session_timeout_ms: float | None = None) -> GroupMember:
        """A member of ``group`` as leases. Its session timeout is the
        connection's lease TTL (``connect(..., lease_ttl=...)``, 10 s by
        default): a member that stops renewing loses its member and owner
        leases that long after its last renewal."""
        validate_group_name(group)
        ttl_ms = self.log.lease_ttl * 1000
        if session_timeout_ms is not None and session_timeout_ms != ttl_ms:
            raise ValueError(f"on JetStream a member's session timeout is the connection's lease TTL "
                             f"({ttl_ms:g} ms), not {session_timeout_ms!r}: set it with "
                             f"connect(..., lease_ttl=seconds)")
        topics = sorted(set(topics))
        counts = {t: (await self.topic_info(t)).partitions for t in topics}
        m = _JetStreamMember(self, group, topics, counts)
        await m._join()
        self._members.add(m)
        return m

    def offset_store(self, group: str) -> OffsetStore:
        return JetStreamOffsetStore(self.log)

    async def close(self) -> None:
        for claim in list(self._claims):
            claim.release()
        tasks, self._releasing = self._releasing, set()
        for task in tasks:
            try:
                await asyncio.shield(task)
            except Exception:
                pass  # the lease expires within the TTL
        for m in list(self._members):
            try:
                await m.leave()
            except Exception:
                pass  # the leases expire within the TTL

    def __repr__(self):
        return f"<JetStreamBackend {','.join(self.log.servers)}>"


def _group_end(batches: Sequence, i: int, contiguous: bool) -> int:
    """End of the run of batches from ``i`` that fits one atomic batch."""
    n = len(batches)
    count = len(batches[i].records)
    if count > MAX_ATOMIC_BATCH:
        raise ValueError(
            f"a batch of {count} records is more than the {MAX_ATOMIC_BATCH} messages of one JetStream "
            f"atomic batch (keep batches under TopicInfo.max_batch_bytes={MAX_BATCH_BYTES})")
    size = batches[i].nbytes
    j = i + 1
    while j < n:
        b = batches[j]
        if count + len(b.records) > MAX_ATOMIC_BATCH or size + b.nbytes > _GROUP_BYTES:
            break
        if contiguous:
            prev = batches[j - 1]
            if (b.producer_id != prev.producer_id or b.producer_epoch != prev.producer_epoch
                    or b.base_sequence != (prev.base_sequence + len(prev.records)) % _SEQ_MOD):
                break
        count += len(b.records)
        size += b.nbytes
        j += 1
    return j
