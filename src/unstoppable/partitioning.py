"""Partitioners: which partition a keyed record goes to.

A partitioner is any callable ``(key: bytes, n: int) -> int`` returning a
partition number in ``0 .. n - 1``. The two built in here hash in C, and carry
``kind``, the name under which the compiled Arrow ingest
(``unstoppable.arrow.append_arrow``) computes the same hash per row without
calling Python. Keyless records are not partitioned here: the producer sticks
them to one partition until its batch fills.

This module sits at the bottom layer: it imports only the compiled hashing.
"""
from __future__ import annotations

from unstoppable._core.hashing import (
    murmur2_partition,
    murmur2_partition_many,
    xxh64_partition,
    xxh64_partition_many,
)

__all__ = ["DefaultPartitioner", "Murmur2Partitioner", "compiled_partition_fn", "partitioner_kind"]


class DefaultPartitioner:
    """The default: ``xxh64(key) % n`` (in C)."""

    __slots__ = ()
    #: The name of this hash for the compiled Arrow ingest.
    kind = "xxh64"

    def __call__(self, key, n: int) -> int:
        return xxh64_partition(key, n)

    def __repr__(self):
        return "DefaultPartitioner()"

    def partition_many(self, keys, n: int):
        """partition_many(keys, n) -> numpy.ndarray[int32]

        This partitioner's partition of every key, in C without the GIL:
        ``keys`` is a list of bytes, a numpy bytes array or a pyarrow binary
        array (``unstoppable._core.hashing.xxh64_partition_many``). Needs numpy.
        """
        return xxh64_partition_many(keys, n)


class Murmur2Partitioner:
    """Kafka's partitioner, ``toPositive(murmur2(key)) % n``: a key lands on the
    same partition number as with a Kafka producer."""

    __slots__ = ()
    #: The name of this hash for the compiled Arrow ingest.
    kind = "murmur2"

    def __call__(self, key, n: int) -> int:
        return murmur2_partition(key, n)

    def __repr__(self):
        return "Murmur2Partitioner()"

    def partition_many(self, keys, n: int):
        """partition_many(keys, n) -> numpy.ndarray[int32]

        This partitioner's partition of every key, in C without the GIL:
        ``keys`` is a list of bytes, a numpy bytes array or a pyarrow binary
        array (``unstoppable._core.hashing.murmur2_partition_many``). Needs numpy.
        """
        return murmur2_partition_many(keys, n)


_COMPILED = {DefaultPartitioner: xxh64_partition, Murmur2Partitioner: murmur2_partition}


def compiled_partition_fn(partitioner):
    """The C function a built-in partitioner calls (its result needs no
    checking), or None for any other callable."""
    return _COMPILED.get(type(partitioner))


def partitioner_kind(partitioner) -> str | None:
    """``"xxh64"`` or ``"murmur2"`` for the built-in partitioners (exactly
    these classes, not subclasses that may override ``__call__``), else None."""
    return partitioner.kind if type(partitioner) in _COMPILED else None
