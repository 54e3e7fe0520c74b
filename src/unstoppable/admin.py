"""One asynchronous admin interface for every backend.

``admin = admin_for(log)`` gives an :class:`Admin` for an embedded
``us.Log`` or a JetStream ``JetStreamLog`` alike: create, delete, list and
describe topics, and their offset ranges and ends. The command line, the
booking tools and the backend tests use it, so none of them branches on the
kind of log. The embedded ``Log`` keeps its own synchronous API;
:class:`EmbeddedAdmin` adapts it (metadata writes, which fsync, run in a
thread off the event loop). A backend's log class supplies its admin through
a ``__unstoppable_admin__()`` method (JetStream does).

An admin does not own its log: ``close()`` releases what the admin itself
opened, never the log.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = ["Admin", "EmbeddedAdmin", "GroupDescription", "PartitionOffsets", "TopicDescription", "admin_for"]


class PartitionOffsets(NamedTuple):
    """Offsets of one partition: records are ``start_offset .. end_offset - 1``.
    ``durable_offset`` is the end known to be fsynced (embedded log), or None
    where the backend acknowledges only what it stored (JetStream)."""
    partition: int
    start_offset: int
    end_offset: int
    durable_offset: int | None = None


@dataclass(frozen=True)
class TopicDescription:
    """A topic's partition count, settings (``config``, backend-specific
    keys) and the offsets of each partition when it was described."""
    name: str
    partitions: int
    config: dict
    offsets: tuple[PartitionOffsets, ...]

    @property
    def records(self) -> int:
        """Records held now (end minus start, summed over the partitions)."""
        return sum(p.end_offset - p.start_offset for p in self.offsets)


@dataclass(frozen=True)
class GroupDescription:
    """A consumer group now: its live members (``MemberInfo``: member id,
    topics, pid, host, join time, assignors) and ``assignment``, ``{member
    id: [(topic, partition), ...]}``."""
    group: str
    members: tuple
    assignment: dict


def assignment_of(members: list, partitions: dict) -> dict:
    """``{member id: sorted [(topic, partition)]}`` as the group's assignor
    computes it for ``members`` over ``partitions`` ({topic: count})."""
    from unstoppable.groups.assign import assign
    return {m: sorted(tps) for m, tps in assign(members, partitions).items()} if members else {}


def refuse_if_active(group: str, d: GroupDescription, what: str) -> None:
    """CommitError when ``d`` has live members (they would undo the change)."""
    from unstoppable.errors import CommitError
    if d.members:
        raise CommitError(f"cannot {what} group {group!r}: it has {len(d.members)} live "
                          f"member{'s' if len(d.members) != 1 else ''} (stop its consumers first)")


@runtime_checkable
class Admin(Protocol):
    """What every backend's admin offers (all coroutines)."""

    async def create_topic(self, name: str, partitions: int = 1, *, replicas: int | None = None,
                           **config) -> TopicDescription:
        """Create topic ``name``, or return the existing one when its
        configuration is the same (TopicExistsError otherwise). ``replicas``
        is the number of copies of each partition (None: the backend's
        default; an embedded log keeps one). ``config`` holds backend
        settings such as ``retention_bytes``."""
        ...

    async def delete_topic(self, name: str) -> None:
        """Delete a topic and its records (UnknownTopicError if there is none)."""
        ...

    async def list_topics(self) -> list[str]:
        """Names of all topics, sorted."""
        ...

    async def describe_topic(self, name: str) -> TopicDescription:
        """Partitions, settings and offsets of ``name`` (UnknownTopicError)."""
        ...

    async def offset_ranges(self, topic: str) -> list[tuple[int, int]]:
        """``[(start offset, end offset)]`` of every partition of ``topic``."""
        ...

    async def end_offsets(self, topic: str) -> list[int]:
        """The end offset of every partition of ``topic``."""
        ...

    async def offset_for_time(self, topic: str, partition: int, ts_ms: int) -> int | None:
        """The first offset whose record has a timestamp >= ``ts_ms`` (None: none yet)."""
        ...

    async def list_groups(self) -> list[str]:
        """Names of the consumer groups that have committed offsets, sorted."""
        ...

    async def committed_offsets(self, group: str) -> dict[tuple[str, int], int]:
        """``{(topic, partition): next offset}`` committed by ``group``
        (empty for a group without commits)."""
        ...

    async def describe_group(self, group: str) -> GroupDescription:
        """The live members of ``group`` and the partitions each one is
        assigned (as the group's assignor computes it)."""
        ...

    async def set_committed_offsets(self, group: str, offsets: dict[tuple[str, int], int]) -> None:
        """Commit ``{(topic, partition): next offset}`` for ``group`` (a reset:
        refused while the group has live members, who would overwrite it)."""
        ...

    async def delete_group(self, group: str) -> None:
        """Forget ``group``'s committed offsets (refused while it has live members)."""
        ...

    async def alter_topic_config(self, name: str, **config) -> TopicDescription:
        """Change settings of an existing topic, where the backend can
        (TopicConfigError naming what cannot be changed, and why)."""
        ...

    async def create_partitions(self, name: str, total: int) -> TopicDescription:
        """Grow topic ``name`` to ``total`` partitions, where the backend can
        (InvalidPartitionsError for a count that does not grow;
        TopicConfigError where the backend's count is fixed)."""
        ...

    async def close(self) -> None:
        """Release what this admin opened (not the log)."""
        ...


class EmbeddedAdmin:
    """The :class:`Admin` of an embedded ``us.Log`` (an adapter over its
    synchronous API)."""

    def __init__(self, log):
        self.log = log

    async def create_topic(self, name: str, partitions: int = 1, *, replicas: int | None = None,
                           **config) -> TopicDescription:
        if replicas not in (None, 1):
            raise ValueError(f"replicas={replicas}: an embedded log keeps one copy "
                             "(replicas are for JetStream topics)")
        await asyncio.to_thread(self.log.create_topic, name, partitions, **config)
        return await self.describe_topic(name)

    async def delete_topic(self, name: str) -> None:
        await asyncio.to_thread(self.log.delete_topic, name)

    async def list_topics(self) -> list[str]:
        return self.log.topics()

    async def describe_topic(self, name: str) -> TopicDescription:
        t = self.log.topic(name)
        offsets = tuple(PartitionOffsets(p.index, p.start_offset, p.end_offset, p.durable_offset)
                        for p in t)
        return TopicDescription(name, t.partitions, t.config.settings(), offsets)

    async def offset_ranges(self, topic: str) -> list[tuple[int, int]]:
        t = self.log.topic(topic)
        return list(zip(t.start_offsets(), t.end_offsets(), strict=True))

    async def end_offsets(self, topic: str) -> list[int]:
        return self.log.topic(topic).end_offsets()

    async def offset_for_time(self, topic: str, partition: int, ts_ms: int) -> int | None:
        return await asyncio.to_thread(self.log.topic(topic).partition(partition).offset_for_time, ts_ms)

    async def list_groups(self) -> list[str]:
        from unstoppable.storage.groups import list_groups
        return list_groups(self.log.path)

    async def committed_offsets(self, group: str) -> dict[tuple[str, int], int]:
        from unstoppable._names import validate_group_name
        from unstoppable.storage.groups import OffsetsFile
        validate_group_name(group)
        if group not in await self.list_groups():
            return {}  # opening an OffsetsFile would create the group
        f = OffsetsFile(self.log.path, group)
        try:
            return dict(f.load())
        finally:
            f.close()

    def _live_members(self, group: str) -> list:
        """Members whose member file is locked by a live process (probed
        with a shared non-blocking flock; nothing is changed)."""
        import fcntl
        import os

        from unstoppable.groups.assign import parse_member_description
        from unstoppable.storage.groups import group_dir
        d = os.path.join(group_dir(self.log.path, group), "members")
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if not name.endswith(".member"):
                continue
            try:
                fd = os.open(os.path.join(d, name), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    continue        # nobody holds it: that member is gone
                except BlockingIOError:
                    pass
                out.append(parse_member_description(os.pread(fd, 1 << 16, 0), name[:-len(".member")]))
            finally:
                os.close(fd)
        return out

    async def describe_group(self, group: str) -> GroupDescription:
        from unstoppable._names import validate_group_name
        validate_group_name(group)
        members = self._live_members(group)
        topics = sorted({t for m in members for t in m.topics} & set(self.log.topics()))
        counts = {t: self.log.topic(t).partitions for t in topics}
        return GroupDescription(group, tuple(members), assignment_of(members, counts))

    async def set_committed_offsets(self, group: str, offsets: dict[tuple[str, int], int]) -> None:
        from unstoppable.storage.groups import OffsetsFile
        refuse_if_active(group, await self.describe_group(group), "reset the offsets of")
        f = OffsetsFile(self.log.path, group)
        try:
            await asyncio.to_thread(f.commit, dict(offsets))
        finally:
            f.close()

    async def delete_group(self, group: str) -> None:
        import os
        import shutil

        from unstoppable.errors import CommitError
        from unstoppable.storage.groups import group_dir
        if group not in await self.list_groups():
            raise CommitError(f"no group {group!r} in {self.log.path}")
        refuse_if_active(group, await self.describe_group(group), "delete")
        d = group_dir(self.log.path, group)
        trash = f"{d}.deleting-{os.getpid()}"
        os.rename(d, trash)       # gone for everyone at once, then removed
        await asyncio.to_thread(shutil.rmtree, trash, True)

    async def alter_topic_config(self, name: str, **config) -> TopicDescription:
        await asyncio.to_thread(self.log.alter_topic, name, **config)
        return await self.describe_topic(name)

    async def create_partitions(self, name: str, total: int) -> TopicDescription:
        await asyncio.to_thread(self.log.create_partitions, name, total)
        return await self.describe_topic(name)

    async def close(self) -> None:
        return None

    def __repr__(self):
        return f"<EmbeddedAdmin {self.log!r}>"


def admin_for(log) -> Admin:
    """The :class:`Admin` of ``log``: an embedded ``us.Log``, a log whose
    class has ``__unstoppable_admin__()`` (JetStreamLog), or an Admin already."""
    hook = getattr(type(log), "__unstoppable_admin__", None)
    if hook is not None:
        return hook(log)
    from unstoppable.storage.log import Log
    if isinstance(log, Log):
        return EmbeddedAdmin(log)
    if isinstance(log, Admin):
        return log
    raise TypeError(f"no admin for {type(log).__name__}: pass a us.Log or a log from us.connect()")
