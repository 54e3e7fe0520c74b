"""Compacted topics refuse records without a key (Kafka: INVALID_RECORD):
the checks of every append path (``Partition.append``, ``append_encoded``,
``append_stream``), kept apart from the cleaner (storage/compaction.py,
which re-exports them)."""
from __future__ import annotations

from unstoppable._core.batch import decode_batches
from unstoppable.errors import InvalidRecordError

__all__ = ["refuse_keyless", "refuse_keyless_encoded", "keychecked"]


def _keyless_error(topic: str) -> InvalidRecordError:
    return InvalidRecordError(
        f"topic {topic!r} is compacted (cleanup_policy has 'compact') and refuses records "
        f"without a key: compaction keeps the latest record per key (Kafka: INVALID_RECORD)")


def refuse_keyless(records, topic: str) -> None:
    """Raise InvalidRecordError when any of ``records`` (in the forms
    ``Partition.append`` takes) has no key."""
    for r in records:
        if r is None or isinstance(r, (bytes, bytearray, memoryview)):
            raise _keyless_error(topic)
        if isinstance(r, tuple):
            if not r or r[0] is None:
                raise _keyless_error(topic)
        elif getattr(r, "key", None) is None:
            raise _keyless_error(topic)


def refuse_keyless_encoded(data, topic: str) -> None:
    """Raise InvalidRecordError when a record of the encoded batches ``data`` has no key.

    The error's traceback holds no view of ``data``: the caller (the Kafka
    server) clears and reuses the encoder that ``data`` views."""
    keyless = _has_keyless(data)
    del data
    if keyless:
        raise _keyless_error(topic)


def _has_keyless(data) -> bool:
    for b in decode_batches(data):
        if b.is_control:
            continue
        for r in b:
            if r.key is None:
                return True
    return False


def keychecked(encoders, topic: str) -> tuple:
    """Wrap the encoders of a pipelined append (``Partition.append_stream``)
    so that every chunk they encode is refused when a record has no key."""
    return tuple(_KeyCheckedEncoder(e, topic) for e in encoders)


class _KeyCheckedEncoder:
    """An encoder whose ``encode`` refuses keyless records (the rest is the
    wrapped encoder's). The appender undoes the whole append on the error."""

    def __init__(self, enc, topic: str):
        self._enc = enc
        self._topic = topic

    def encode(self, *args, **kwargs):
        took = self._enc.encode(*args, **kwargs)
        refuse_keyless_encoded(self._enc.view(), self._topic)
        return took

    def __getattr__(self, name):
        return getattr(self._enc, name)
