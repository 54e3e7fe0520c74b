"""How the booking code reaches its log, on either backend.

The service, its rebuild, the dead-letter tools and the demo read the log
through the client's :class:`~unstoppable.client.backend.Backend` interface
(``topic_info``, ``offset_range``, ``fetch``) and write it through
``Producer``, so one code path serves the embedded log and a JetStream
cluster. Only opening, closing and creating topics differ per backend, and
that is all this module does besides reading.

A *log URL* is a directory path (the embedded log), ``file:///path``, or
``nats://host:port[,host:port...]`` (``tls://`` too) for JetStream.
"""
from __future__ import annotations

import asyncio
import inspect

import unstoppable as us
from unstoppable.admin import admin_for
from unstoppable.client.embedded import EmbeddedBackend, backend_for
from unstoppable.connect import is_remote_url

__all__ = ["is_remote", "open_log", "close_log", "ensure_topic", "LogReader"]

def is_remote(url) -> bool:
    """Whether ``url`` names a JetStream cluster rather than an embedded log
    (:func:`unstoppable.connect.is_remote_url`)."""
    return is_remote_url(url)


async def open_log(url: str, *, create: bool = False, **options):
    """The log at ``url``: ``us.Log(path, create=create)`` for a path, the
    connected JetStreamLog for a NATS URL (``options`` go to the connection,
    e.g. ``lease_ttl``)."""
    if is_remote(url):
        return await us.connect(url, **options)
    return await us.connect(url, create=create, **options)


async def close_log(log) -> None:
    """Close what :func:`open_log` returned (``us.Log.close`` is
    synchronous, ``JetStreamLog.close`` a coroutine)."""
    closing = log.close()
    if inspect.isawaitable(closing):
        await closing


async def ensure_topic(log, name: str, partitions: int, *, replicas: int | None = None,
                       **config) -> None:
    """Create topic ``name`` unless it exists. ``replicas`` (JetStream only;
    default 1) is how many servers keep each partition; an embedded log
    keeps one (ValueError for more). ``config``: topic settings such as
    ``cleanup_policy`` (the backend refuses what it cannot keep)."""
    admin = admin_for(log)
    try:
        if name not in await admin.list_topics():
            await admin.create_topic(name, partitions, replicas=replicas, **config)
    finally:
        await admin.close()


class LogReader:
    """LogReader(log)

    Reads of any backend's log for tools (rebuild, checks, dead letters):
    ``await partitions(topic)``, ``await ranges(topic)``, ``await ends(topic)``
    and ``async for recs in chunks(topic, partition)``. Use as ``async with``
    (it closes the backend it made)."""

    def __init__(self, log, *, max_bytes: int = 1 << 20):
        self.backend = backend_for(log)
        self._own = self.backend is not log
        self.max_bytes = max_bytes

    async def __aenter__(self) -> "LogReader":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own:
            await self.backend.close()

    async def partitions(self, topic: str) -> int:
        """The partition count of ``topic`` (UnknownTopicError if there is none)."""
        return (await self.backend.topic_info(topic)).partitions

    async def ranges(self, topic: str) -> list[tuple[int, int]]:
        """``[(start offset, end offset)]`` of every partition of ``topic``."""
        n = await self.partitions(topic)
        return list(await asyncio.gather(*(self.backend.offset_range(topic, p) for p in range(n))))

    async def ends(self, topic: str) -> list[int]:
        """The end offset of every partition of ``topic``."""
        return [end for _start, end in await self.ranges(topic)]

    async def chunks(self, topic: str, partition: int, start: int | None = None,
                     end: int | None = None, chunk: int = 5000):
        """Async iterator of record lists of one partition, from ``start``
        (default: its start offset) up to ``end`` (exclusive; default: its end
        offset now). Raises OffsetOutOfRangeError when retention removed
        records in between, and BackendError when the backend cannot produce
        every record up to ``end`` (CorruptLogError on the embedded log): a
        reader of this never misses a record silently."""
        be = self.backend
        if start is None or end is None:
            first, last = await be.offset_range(topic, partition)
            start = first if start is None else start
            end = last if end is None else end
        off = start
        while off < end:
            recs = await be.fetch(topic, partition, off, chunk, self.max_bytes)
            if not recs:
                err = us.CorruptLogError if isinstance(self.backend, EmbeddedBackend) else us.BackendError
                raise err(f"a read of {topic}/{partition} at offset {off} found nothing, but the "
                          f"partition ended at {end} when the read began")
            if recs[-1].offset >= end:
                recs = [r for r in recs if r.offset < end]
            yield recs
            off = recs[-1].offset + 1
