"""The :class:`unstoppable.admin.Admin` of a JetStream log."""
from __future__ import annotations

import asyncio

from unstoppable.admin import PartitionOffsets, TopicDescription
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

    async def list_groups(self) -> list[str]:
        return sorted({g for g, _tp in await JetStreamOffsetStore(self.log).committed_partitions()})

    async def committed_offsets(self, group: str) -> dict[tuple[str, int], int]:
        validate_group_name(group)
        store = JetStreamOffsetStore(self.log)
        tps = [tp for _g, tp in await store.committed_partitions(group)]
        return {(tp.topic, tp.partition): off for tp, off in (await store.load(group, tps)).items()}

    async def close(self) -> None:
        be, self._backend = self._backend, None
        if be is not None:
            await be.close()

    def __repr__(self):
        return f"<JetStreamAdmin {','.join(self.log.servers)}>"
