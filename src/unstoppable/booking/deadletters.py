"""The dead-letter topic: records a handler kept failing on, with why and
where they came from; listing them and re-driving them.

A dead letter is a record of the dead-letter topic whose key and value are
those of the failed record, with these headers (values UTF-8):

=====================  ==============================================
header                 meaning
=====================  ==============================================
``dlq.origin.topic``   topic of the failed record
``dlq.origin.partition``  its partition
``dlq.origin.offset``  its offset
``dlq.error``          the last error, ``Type: message``
``dlq.attempts``       how many times the handler tried
=====================  ==============================================

Re-driving appends the record again to its origin topic and partition (with
a ``dlq.redriven_from`` header naming the dead letter), so it is handled
again in order with what came after, and then appends a marker to the
dead-letter topic (header ``dlq.redriven`` = ``partition/offset`` of the dead
letter) so it is not listed or re-driven twice. A dead letter that was
published twice (a crash between publishing and recording it) is listed once.

Both work on either backend, a ``us.Log`` or a JetStreamLog: they read
through the backend interface (``logio.LogReader``) and write through
``Producer``.
"""
from __future__ import annotations

from typing import NamedTuple

import unstoppable as us
from unstoppable.booking.logio import LogReader
from unstoppable.errors import UnknownTopicError

__all__ = ["DeadLetter", "ORIGIN_TOPIC", "ORIGIN_PARTITION", "ORIGIN_OFFSET", "ERROR", "ATTEMPTS",
           "REDRIVEN", "REDRIVEN_FROM", "headers_for", "read_dead_letters", "redrive"]

ORIGIN_TOPIC = "dlq.origin.topic"
ORIGIN_PARTITION = "dlq.origin.partition"
ORIGIN_OFFSET = "dlq.origin.offset"
ERROR = "dlq.error"
ATTEMPTS = "dlq.attempts"
REDRIVEN = "dlq.redriven"
REDRIVEN_FROM = "dlq.redriven_from"


class DeadLetter(NamedTuple):
    """One dead letter, as listed."""
    partition: int          # where it is in the dead-letter topic
    offset: int
    timestamp: int
    origin_topic: str
    origin_partition: int
    origin_offset: int
    error: str
    attempts: int
    key: bytes | None
    value: bytes | None
    redriven: bool


def headers_for(topic: str, partition: int, offset: int, error: str, attempts: int) -> list:
    """The headers of a dead letter, as ``[(name, str)]``."""
    return [(ORIGIN_TOPIC, topic), (ORIGIN_PARTITION, str(partition)),
            (ORIGIN_OFFSET, str(offset)), (ERROR, error), (ATTEMPTS, str(attempts))]


def _h(headers) -> dict:
    return {k: (bytes(v).decode("utf-8", "replace") if v is not None else None) for k, v in headers}


async def read_dead_letters(log, dlq_topic: str = "booking-dlq", *,
                            missing_ok: bool = False) -> list[DeadLetter]:
    """await read_dead_letters(log, dlq_topic="booking-dlq") -> [DeadLetter]

    Every dead letter of the dead-letter topic of ``log`` (a ``us.Log`` or a
    JetStreamLog), oldest first per partition, one per origin, with
    ``redriven`` set for those re-driven already. A missing topic raises
    UnknownTopicError, or gives ``[]`` with ``missing_ok``."""
    redriven = set()
    letters: dict = {}
    async with LogReader(log) as reader:
        try:
            n = await reader.partitions(dlq_topic)
        except UnknownTopicError:
            if missing_ok:
                return []
            raise
        for p in range(n):
            async for recs in reader.chunks(dlq_topic, p):
                for r in recs:
                    h = _h(r.headers)
                    if REDRIVEN in h:
                        a, _, b = (h[REDRIVEN] or "").partition("/")
                        if a.isdigit() and b.isdigit():
                            redriven.add((int(a), int(b)))
                        continue
                    if ORIGIN_TOPIC not in h:
                        continue
                    try:
                        origin = (h[ORIGIN_TOPIC], int(h.get(ORIGIN_PARTITION) or -1),
                                  int(h.get(ORIGIN_OFFSET) or -1))
                        attempts = int(h.get(ATTEMPTS) or 0)
                    except ValueError:
                        continue
                    if origin in letters:
                        continue        # published twice: the first one counts
                    letters[origin] = DeadLetter(
                        p, r.offset, r.timestamp, origin[0], origin[1], origin[2], h.get(ERROR) or "",
                        attempts, None if r.key is None else bytes(r.key),
                        None if r.value is None else bytes(r.value), False)
    by_pos = {(d.partition, d.offset): d for d in letters.values()}
    return [d._replace(redriven=True) if (d.partition, d.offset) in redriven else d
            for d in sorted(by_pos.values(), key=lambda d: (d.partition, d.offset))]


async def redrive(log, dlq_topic: str, which=None) -> list[tuple]:
    """await redrive(log, dlq_topic, which=None) -> [(dead letter, new offset)]

    Re-drive the dead letters of ``dlq_topic`` not re-driven yet: all of
    them, or those whose ``(partition, offset)`` in the dead-letter topic is
    in ``which``. Each is appended to its origin topic and partition
    (``acks="fsync"``: fsynced on the embedded log, acknowledged by the
    stream on JetStream) before its marker is written, so a crash in between
    re-drives it at most once more, never zero times.
    """
    want = None if which is None else {tuple(w) for w in which}
    letters = await read_dead_letters(log, dlq_topic)
    if want is not None:
        known = {(d.partition, d.offset) for d in letters}
        missing = sorted(want - known)
        if missing:
            raise KeyError(f"no dead letter at {', '.join(f'{p}/{o}' for p, o in missing)} "
                           f"in topic {dlq_topic!r}")
    todo = [d for d in letters
            if not d.redriven and (want is None or (d.partition, d.offset) in want)]
    out = []
    producers: dict = {}
    try:
        marks = producers[dlq_topic] = us.Producer(log, dlq_topic, acks="fsync")
        for d in todo:
            origin = producers.get(d.origin_topic)
            if origin is None:
                origin = producers[d.origin_topic] = us.Producer(log, d.origin_topic, acks="fsync")
            md = await origin.send_and_wait(
                d.value, key=d.key, partition=d.origin_partition,
                headers=[(REDRIVEN_FROM, f"{dlq_topic}/{d.partition}/{d.offset}".encode())])
            await marks.send_and_wait(
                None, partition=d.partition,
                headers=[(REDRIVEN, f"{d.partition}/{d.offset}".encode()),
                         ("dlq.redriven_to", f"{d.origin_topic}/{d.origin_partition}/{md.offset}".encode())])
            out.append((d, md.offset))
    finally:
        for p in producers.values():
            await p.close()
    return out
