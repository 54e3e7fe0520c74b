"""``Consumer.offsets_for_times`` for arrays of timestamps (numpy).

On the embedded log every partition's array is answered by
``Partition.offsets_for_times`` (one ``np.searchsorted`` over the mapped
time indexes per segment, then the C scan); other backends are asked once
per distinct timestamp.
"""
from __future__ import annotations

from unstoppable.client._types import TopicPartition


async def offsets_for_times(backend, timestamps: dict) -> dict:
    """{tp: timestamps} -> {tp: numpy.ndarray[int64] of offsets, -1 where none}."""
    from unstoppable.storage.index_views import as_timestamps, np
    out = {}
    for tp, ts in timestamps.items():
        tp = TopicPartition(*tp)
        try:
            q = as_timestamps(ts)
        except (TypeError, ValueError) as e:
            raise type(e)(f"timestamps for {tp.topic}/{tp.partition}: {e}") from None
        if q.size and q.min() < 0:
            raise ValueError(f"timestamps for {tp.topic}/{tp.partition} must be ms >= 0, "
                             f"got {int(q.min())}")
        part_of = getattr(backend, "_partition", None)
        if part_of is not None:
            out[tp] = part_of(tp.topic, tp.partition).offsets_for_times(q)
            continue
        uniq, inverse = np.unique(q.ravel(), return_inverse=True)
        res = np.empty(uniq.size, dtype=np.int64)
        for i, t in enumerate(uniq.tolist()):
            off = await backend.offset_for_time(tp.topic, tp.partition, t)
            res[i] = -1 if off is None else off
        out[tp] = res[inverse.ravel()].reshape(q.shape)
    return out
