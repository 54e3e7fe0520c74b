"""Committed offsets on JetStream, in the replicated stream ``US__OFFSETS``."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable

from unstoppable.backends.jetstream._constants import (
    _E_STREAM_NOT_FOUND,
    _E_WRONG_LAST_SEQ,
    _OFFSETS,
    MAX_ATOMIC_BATCH,
    OFFSETS_STREAM,
)
from unstoppable.backends.jetstream._wire import (
    api_error,
)
from unstoppable.backends.jetstream.records import _enc
from unstoppable.client._types import TopicPartition
from unstoppable.client.offsets import OffsetStore
from unstoppable.errors import BackendError, FencedMemberError


class JetStreamOffsetStore(OffsetStore):
    """Committed offsets in the replicated stream ``US__OFFSETS``: subject
    ``usx.offsets.<group>.<topic>.<partition>``, payload the offset in ASCII,
    only the last message per subject kept. A commit is one atomic batch:
    all of its offsets are stored, or none."""

    def __init__(self, log):  # a JetStreamLog
        self.log = log

    @staticmethod
    def _subject(group: str, tp) -> str:
        return f"{_OFFSETS}.{_enc(group)}.{_enc(tp.topic)}.{tp.partition}"

    async def load(self, group: str, partitions: Iterable[TopicPartition]) -> dict:
        await self.log._ensure_internal_streams()
        tps = [TopicPartition(*tp) for tp in partitions]

        async def one(tp):
            return await self.log._retrying(
                lambda: self.log._last_message(OFFSETS_STREAM, self._subject(group, tp)))

        got = await asyncio.gather(*(one(tp) for tp in tps))
        # (An empty payload is a new owner's fence before any commit: none.)
        return {tp: int(m[1]) for tp, m in zip(tps, got) if m is not None and m[1]}

    async def committed_partitions(self, group: str | None = None) -> list[tuple[str, TopicPartition]]:
        """``[(group, TopicPartition)]`` with a committed offset, sorted (of
        ``group`` only when given), from the subjects of ``US__OFFSETS``."""
        prefix = _OFFSETS + "." + ("" if group is None else _enc(group) + ".")
        subjects: dict = {}
        offset = 0
        while True:
            try:
                info = await self.log._retrying(lambda offset=offset: self.log.wire.api(
                    "STREAM.INFO." + OFFSETS_STREAM, {"subjects_filter": prefix + ">", "offset": offset}))
            except BackendError as e:
                if e.err_code == _E_STREAM_NOT_FOUND:
                    return []  # nothing was ever committed
                raise
            page = (info.get("state") or {}).get("subjects") or {}
            subjects.update(page)
            offset = len(subjects)
            if not page or offset >= int(info.get("total") or 0):
                break
        out = []
        for subject in subjects:
            _, _, g, t, p = subject.split(".")
            out.append((g.replace("=", "."), TopicPartition(t.replace("=", "."), int(p))))
        return sorted(out)

    async def commit(self, group: str, offsets: dict) -> None:
        if not offsets:
            return
        await self.log._ensure_internal_streams()
        items = sorted((TopicPartition(*tp), int(off)) for tp, off in offsets.items())
        for k in range(0, len(items), MAX_ATOMIC_BATCH):
            chunk = items[k:k + MAX_ATOMIC_BATCH]
            # One subject per message: an atomic batch may mix subjects of its stream.
            await self.log._retrying(lambda chunk=chunk: self._commit_chunk(group, chunk))

    async def commit_expecting(self, group: str, offsets: dict, expect: dict, member_id: str) -> dict:
        """Commit as a group member: each offset message expects its
        subject's last sequence to be ``expect[tp]`` (the member's own last
        write). All or nothing; FencedMemberError when another member wrote
        since (it took the partition over). Returns ``{tp: new sequence}``."""
        await self.log._ensure_internal_streams()
        items = sorted((TopicPartition(*tp), int(off)) for tp, off in offsets.items())
        out = {}
        for k in range(0, len(items), MAX_ATOMIC_BATCH):
            chunk = items[k:k + MAX_ATOMIC_BATCH]
            subjects = [self._subject(group, tp).encode() for tp, _ in chunk]
            owner = b"Us-Owner: %s\r\n" % member_id.encode()
            msgs = [(b"Nats-Expected-Last-Subject-Sequence: %d\r\n%s" % (expect[tp], owner), b"%d" % off)
                    for tp, off in chunk]
            try:
                # Retried on transient failures as every commit is; an attempt
                # that landed unacknowledged makes the retry find the sequence
                # moved, which the member recognises by its Us-Owner header.
                ack = await self.log._retrying(
                    lambda subjects=subjects, msgs=msgs: self.log._atomic(subjects[0], msgs, subjects=subjects))
            except BackendError as e:
                if e.err_code != _E_WRONG_LAST_SEQ:
                    raise
                raise FencedMemberError(
                    f"commit of {len(chunk)} offset(s) in group {group!r} refused: another member "
                    f"took over one of {', '.join(f'{tp.topic}/{tp.partition}' for tp, _ in chunk)} "
                    f"after this member's lease lapsed; nothing of this batch was committed") from None
            last = int(ack["seq"])
            for i, (tp, _) in enumerate(chunk):
                out[tp] = last - len(chunk) + 1 + i
        return out

    async def _commit_chunk(self, group: str, chunk: list) -> None:
        if len(chunk) == 1:
            tp, off = chunk[0]
            _, p = await self.log.wire.request(self._subject(group, tp).encode(), b"%d" % off)
            ack = json.loads(p)
            if "error" in ack:
                raise api_error(f"commit of {tp.topic}/{tp.partition}", ack["error"])
            return
        subjects = [self._subject(group, tp).encode() for tp, _ in chunk]
        await self.log._atomic(subjects[0], [(b"", b"%d" % off) for _, off in chunk], subjects=subjects)
