"""Where a consumer group's committed offsets live.

A committed offset is the next offset a group will consume from a partition.
The Consumer reads it when it takes a partition over and writes it on
``commit()``. Two stores come with the library:

* :class:`GroupOffsetStore`, the default of the embedded log: an append-only,
  CRC-framed, fdatasync'ed file per group under ``<log>/groups/<group>/``
  (see ``unstoppable.storage.groups``).
* :class:`SQLiteOffsetStore`, which keeps them in a table of the application's
  own SQLite database. The application writes them with :meth:`SQLiteOffsetStore.save`
  in the same transaction as the state its handler changes; after a crash the
  state and the offsets agree, so every record's effect happens exactly once.
* :class:`PartitionedSQLiteOffsetStore`, the same with a database per
  partition (each partition's offset beside its own state), for
  applications that shard their state so that the writers of different
  partitions never wait for one SQLite write lock.

Any object implementing :class:`OffsetStore` works; pass it as
``Consumer(..., offset_store=...)``.
"""
from __future__ import annotations

import abc
import sqlite3
from typing import Iterable

from unstoppable.client import _executor
from unstoppable.client._types import TopicPartition
from unstoppable.storage.groups import OffsetsFile

__all__ = ["OffsetStore", "GroupOffsetStore", "SQLiteOffsetStore", "PartitionedSQLiteOffsetStore"]


class OffsetStore(abc.ABC):
    """The interface of an offset store. Methods are coroutines; an
    implementation over a synchronous database may simply do its work inline
    when it is fast (a local SQLite file) and use a thread otherwise."""

    @abc.abstractmethod
    async def load(self, group: str, partitions: Iterable[TopicPartition]) -> dict:
        """The committed offsets of ``partitions`` in ``group``, as
        ``{TopicPartition: offset}``; partitions never committed are left out."""

    @abc.abstractmethod
    async def commit(self, group: str, offsets: dict) -> None:
        """Store ``{TopicPartition: offset}`` durably before returning."""

    async def close(self) -> None:  # noqa: B027  (optional hook: nothing to release by default)
        """Release resources (the consumer calls this when it closes)."""


class GroupOffsetStore(OffsetStore):
    """Committed offsets in ``<log>/groups/<group>/offsets`` of an embedded log.

    Commits fdatasync on the client's thread pool; reads see commits made by
    every process.
    """

    def __init__(self, log_path: str):
        self.log_path = log_path
        self._files: dict[str, OffsetsFile] = {}

    def _file(self, group: str) -> OffsetsFile:
        f = self._files.get(group)
        if f is None:
            f = self._files[group] = OffsetsFile(self.log_path, group)
        return f

    async def load(self, group: str, partitions: Iterable[TopicPartition]) -> dict:
        allc = self._file(group).load()
        out = {}
        for tp in partitions:
            off = allc.get((tp.topic, tp.partition))
            if off is not None:
                out[TopicPartition(tp.topic, tp.partition)] = off
        return out

    async def commit(self, group: str, offsets: dict, *, fence=None) -> None:
        """Store ``{TopicPartition: offset}`` durably. ``fence`` (a group
        member's ownership check, run under the group's mutex before anything
        is written) makes a member that lost a partition fail with
        FencedMemberError instead of committing over its new owner."""
        f = self._file(group)
        await _executor.run(lambda: f.commit(
            {(tp.topic, tp.partition): off for tp, off in offsets.items()}, fence=fence))

    async def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


class SQLiteOffsetStore(OffsetStore):
    """Committed offsets in a table of the application's SQLite database.

    ``save(offsets, group=...)`` writes them without committing, for use inside
    the application's own transaction::

        with db:                                   # one transaction
            apply_effects(db, record)
            store.save({TopicPartition(record.topic, record.partition): record.offset + 1},
                       group="bookings")

    The consumer's ``load`` then resumes exactly after the last record whose
    effects were committed. ``commit`` (what ``consumer.commit()`` calls) saves
    and commits the connection's transaction.
    """

    def __init__(self, connection: sqlite3.Connection, table: str = "unstoppable_offsets"):
        if not table.replace("_", "").isalnum():
            raise ValueError(f"table name {table!r} must be letters, digits and underscores")
        self.db = connection
        self.table = table
        with self.db:
            self.db.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (grp TEXT NOT NULL, topic TEXT NOT NULL, "
                "part INTEGER NOT NULL, next_offset INTEGER NOT NULL, PRIMARY KEY (grp, topic, part))")

    def save(self, offsets: dict, *, group: str) -> None:
        """Write ``{TopicPartition: offset}`` in the current transaction (no commit)."""
        self.db.executemany(
            f"INSERT INTO {self.table} (grp, topic, part, next_offset) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (grp, topic, part) DO UPDATE SET next_offset = excluded.next_offset",
            [(group, tp.topic, tp.partition, off) for tp, off in offsets.items()])

    async def load(self, group: str, partitions: Iterable[TopicPartition]) -> dict:
        rows = self.db.execute(
            f"SELECT topic, part, next_offset FROM {self.table} WHERE grp = ?", (group,)).fetchall()
        have = {TopicPartition(t, p): off for t, p, off in rows}
        return {TopicPartition(tp.topic, tp.partition): have[tp] for tp in partitions if tp in have}

    async def commit(self, group: str, offsets: dict) -> None:
        with self.db:
            self.save(offsets, group=group)


class PartitionedSQLiteOffsetStore(OffsetStore):
    """PartitionedSQLiteOffsetStore(connect, table="unstoppable_offsets")

    Committed offsets kept per partition, each in the SQLite database that
    holds that partition's state: ``connect(tp)`` returns the connection of
    partition ``tp`` (called once per partition, when it is first needed).
    :meth:`store_for` gives the partition's :class:`SQLiteOffsetStore`, whose
    ``save`` writes inside the application's transaction on that connection;
    :class:`~unstoppable.Processor` given this store runs each partition's
    transactions on the partition's own connection. Writers of different
    partitions then never share a write lock.
    """

    def __init__(self, connect, table: str = "unstoppable_offsets"):
        if not callable(connect):
            raise TypeError(f"connect must be a callable returning a partition's sqlite3 "
                            f"connection, got {type(connect).__name__}")
        self._connect = connect
        self.table = table
        self._stores: dict[TopicPartition, SQLiteOffsetStore] = {}

    def store_for(self, tp: TopicPartition) -> SQLiteOffsetStore:
        """The offset store (and, as its ``db``, the connection) of partition ``tp``."""
        tp = TopicPartition(tp.topic, tp.partition)
        s = self._stores.get(tp)
        if s is None:
            db = self._connect(tp)
            if not isinstance(db, sqlite3.Connection):
                raise TypeError(f"connect({tp}) must return an sqlite3.Connection, "
                                f"got {type(db).__name__}")
            s = self._stores[tp] = SQLiteOffsetStore(db, self.table)
        return s

    def stores(self) -> dict:
        """``{TopicPartition: SQLiteOffsetStore}`` of the partitions opened so far."""
        return dict(self._stores)

    def save(self, offsets: dict, *, group: str) -> None:
        """Write each ``{TopicPartition: offset}`` in its partition's current
        transaction (no commit)."""
        for tp, off in offsets.items():
            self.store_for(tp).save({tp: off}, group=group)

    async def load(self, group: str, partitions: Iterable[TopicPartition]) -> dict:
        out = {}
        for tp in partitions:
            out.update(await self.store_for(tp).load(group, [tp]))
        return out

    async def commit(self, group: str, offsets: dict) -> None:
        for tp, off in offsets.items():
            await self.store_for(tp).commit(group, {tp: off})
