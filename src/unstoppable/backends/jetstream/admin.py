"""The :class:`unstoppable.admin.Admin` of a JetStream log."""
from __future__ import annotations

import asyncio

from unstoppable.admin import (
    GroupDescription,
    PartitionOffsets,
    TopicDescription,
    assignment_of,
    refuse_if_active,
)
from unstoppable.backends.jetstream._borrowed import parse_member_description
from unstoppable.backends.jetstream._constants import (
    _E_STREAM_NOT_FOUND,
    _LEASE,
    _OFFSETS,
    LEASES_STREAM,
    OFFSETS_STREAM,
)
from unstoppable.backends.jetstream.records import _enc
from unstoppable.client._types import TopicPartition
from unstoppable.errors import BackendError, CommitError, TopicConfigError
from unstoppable.backends.jetstream._borrowed import validate_group_name
from unstoppable.backends.jetstream.backend import JetStreamBackend
from unstoppable.backends.jetstream.offsets import JetStreamOffsetStore

__all__ = ["JetStreamAdmin"]


class JetStreamAdmin:
    """Topic administration on a :class:`JetStreamLog` (``admin_for(log)``
    returns one). JetStream acknowledges only what it stored, so partitions
    have no separate durable offset (``durable_offset`` is None)."""

    def __init__(self, log):  # a JetStreamLog (not imported: it imports this module)
        self.log = log
        self._backend: JetStreamBackend | None = None

    def _be(self) -> JetStreamBackend:
        if self._backend is None:
            self._backend = JetStreamBackend(self.log)
        return self._backend

    async def create_topic(self, name: str, partitions: int = 1, *, replicas: int | None = None,
                           **config) -> TopicDescription:
        await self.log.create_topic(name, partitions, replicas=1 if replicas is None else replicas, **config)
        return await self.describe_topic(name)

    async def delete_topic(self, name: str) -> None:
        await self.log.delete_topic(name)

    async def list_topics(self) -> list[str]:
        return await self.log.topics()

    async def describe_topic(self, name: str) -> TopicDescription:
        t = await self.log.describe_topic(name)
        ranges = await self.offset_ranges(name)
        offsets = tuple(PartitionOffsets(p, start, end) for p, (start, end) in enumerate(ranges))
        return TopicDescription(name, t.partitions,
                                {"replicas": t.replicas, "max_record_bytes": t.max_record_bytes,
                                 "retention_ms": t.retention_ms, "retention_bytes": t.retention_bytes},
                                offsets)

    async def offset_ranges(self, topic: str) -> list[tuple[int, int]]:
        be = self._be()
        n = (await be.topic_info(topic)).partitions
        return list(await asyncio.gather(*(be.offset_range(topic, p) for p in range(n))))

    async def end_offsets(self, topic: str) -> list[int]:
        return [end for _start, end in await self.offset_ranges(topic)]

    async def offset_for_time(self, topic: str, partition: int, ts_ms: int) -> int | None:
        return await self._be().offset_for_time(topic, partition, ts_ms)

    async def list_groups(self) -> list[str]:
        return sorted({g for g, _tp in await JetStreamOffsetStore(self.log).committed_partitions()})

    async def committed_offsets(self, group: str) -> dict[tuple[str, int], int]:
        validate_group_name(group)
        store = JetStreamOffsetStore(self.log)
        tps = [tp for _g, tp in await store.committed_partitions(group)]
        return {(tp.topic, tp.partition): off for tp, off in (await store.load(group, tps)).items()}

    async def describe_group(self, group: str) -> GroupDescription:
        validate_group_name(group)
        log = self.log
        prefix = f"{_LEASE}.g.{_enc(group)}.m."
        try:
            si = await log._retrying(lambda: log.wire.api(f"STREAM.INFO.{LEASES_STREAM}",
                                                          {"subjects_filter": prefix + "*"}))
        except BackendError as e:
            if e.err_code != _E_STREAM_NOT_FOUND:
                raise
            si = {}
        members = []
        for subject in sorted((si.get("state") or {}).get("subjects") or {}):
            msg = await log._retrying(lambda subject=subject: log._last_message(LEASES_STREAM, subject))
            if msg is not None:     # None: it left meanwhile
                members.append(parse_member_description(msg[1], subject[len(prefix):]))
        names = set(await self.list_topics())
        counts = {t: (await self.log.describe_topic(t)).partitions
                  for t in sorted({t for m in members for t in m.topics} & names)}
        return GroupDescription(group, tuple(members), assignment_of(members, counts))

    async def set_committed_offsets(self, group: str, offsets: dict[tuple[str, int], int]) -> None:
        refuse_if_active(group, await self.describe_group(group), "reset the offsets of")
        await JetStreamOffsetStore(self.log).commit(
            group, {TopicPartition(t, p): off for (t, p), off in offsets.items()})

    async def delete_group(self, group: str) -> None:
        if group not in await self.list_groups():
            raise CommitError(f"no group {group!r} on {', '.join(self.log.servers)}")
        refuse_if_active(group, await self.describe_group(group), "delete")
        await self.log._retrying(lambda: self.log.wire.api(
            f"STREAM.PURGE.{OFFSETS_STREAM}", {"filter": f"{_OFFSETS}.{_enc(group)}.>"}))

    async def alter_topic_config(self, name: str, **config) -> TopicDescription:
        await self.log.alter_topic(name, **config)
        return await self.describe_topic(name)

    async def create_partitions(self, name: str, total: int) -> TopicDescription:
        await self.describe_topic(name)               # UnknownTopicError first
        raise TopicConfigError(
            f"topic {name!r}: a JetStream topic's partition count is fixed when it is created "
            "(its partitions are subjects its consumers were set up for); create a new topic "
            "with more partitions and copy the records")

    async def close(self) -> None:
        be, self._backend = self._backend, None
        if be is not None:
            await be.close()

    def __repr__(self):
        return f"<JetStreamAdmin {','.join(self.log.servers)}>"
