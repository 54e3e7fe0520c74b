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
"""
from __future__ import annotations

from typing import NamedTuple

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


def _read_all(part):
    off = part.start_offset
    while off < part.end_offset:
        recs = part.read(off, 5000)
        if not recs:
            break
        yield from recs
        off = recs[-1].offset + 1


def read_dead_letters(topic) -> list[DeadLetter]:
    """Every dead letter of the dead-letter ``topic`` (a storage Topic), oldest
    first per partition, one per origin, with ``redriven`` set for those
    re-driven already."""
    redriven = set()
    letters: dict = {}
    for p in range(topic.partitions):
        for r in _read_all(topic.partition(p)):
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


def redrive(log, dlq_topic: str, which=None) -> list[tuple]:
    """redrive(log, dlq_topic, which=None) -> [(dead letter, new offset)]

    Re-drive the dead letters of ``dlq_topic`` not re-driven yet: all of
    them, or those whose ``(partition, offset)`` in the dead-letter topic is
    in ``which``. Each is appended to its origin topic and partition (fsynced)
    before its marker is written, so a crash in between re-drives it at most
    once more, never zero times.
    """
    t = log.topic(dlq_topic)
    out = []
    want = None if which is None else {tuple(w) for w in which}
    letters = read_dead_letters(t)
    if want is not None:
        known = {(d.partition, d.offset) for d in letters}
        missing = sorted(want - known)
        if missing:
            raise KeyError(f"no dead letter at {', '.join(f'{p}/{o}' for p, o in missing)} "
                           f"in topic {dlq_topic!r}")
    for d in letters:
        if d.redriven or (want is not None and (d.partition, d.offset) not in want):
            continue
        origin = log.topic(d.origin_topic).partition(d.origin_partition)
        rec = (d.key, d.value, [(REDRIVEN_FROM, f"{dlq_topic}/{d.partition}/{d.offset}".encode())])
        new = origin.append([rec], acks="fsync")
        t.partition(d.partition).append(
            [(None, None, [(REDRIVEN, f"{d.partition}/{d.offset}".encode()),
                           ("dlq.redriven_to", f"{d.origin_topic}/{d.origin_partition}/{new}".encode())])],
            acks="fsync")
        out.append((d, new))
    return out
