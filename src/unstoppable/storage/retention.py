"""Retention: delete a partition's oldest sealed segments past its topic's
``retention_bytes`` / ``retention_ms`` (append lock held). Never the active one.

Readers learn the new start from the head before any file goes away.
"""
from __future__ import annotations

from unstoppable.errors import CorruptLogError
from unstoppable.storage.recovery import now_ms

__all__ = ["doomed_segments", "apply_retention"]


def doomed_segments(sealed: list[int], total: int, config, size_of, max_ts_of, now: int) -> list[int]:
    """The oldest sealed segments (``sealed``, sorted) to delete, given the
    partition's ``total`` size. ``size_of(base)`` and ``max_ts_of(base)``
    answer for one segment; a segment whose timestamps cannot be read is
    kept (reads and verify() report it)."""
    doomed = []
    for b in sealed:
        too_big = config.retention_bytes is not None and total > config.retention_bytes
        too_old = False
        if config.retention_ms is not None and not too_big:
            try:
                too_old = max_ts_of(b) < now - config.retention_ms
            except CorruptLogError:
                too_old = False
        if not (too_big or too_old):
            break
        doomed.append(b)
        total -= size_of(b)
    return doomed


def apply_retention(st, head, catalog, config) -> int:
    """Delete what retention allows (append lock held; ``st`` is the head's
    state, written back with the new start). Returns the number deleted."""
    if (config.retention_bytes is None and config.retention_ms is None) or not config.deletes:
        return 0  # cleanup_policy="compact" alone keeps segments (the compactor thins them)
    catalog.refresh(st)
    sealed = [b for b in catalog.bases if b < st.active_base]
    if not sealed:
        return 0
    sizes = {b: catalog.sealed_size(b) for b in sealed}
    total = sum(sizes.values()) + st.active_size
    doomed = doomed_segments(sealed, total, config, sizes.__getitem__, catalog.sealed_max_ts,
                             now_ms())
    if not doomed:
        return 0
    remaining = [b for b in catalog.bases if b not in doomed]
    st.start_offset = max(st.start_offset, remaining[0])
    if st.ckpt_base < remaining[0]:
        st.ckpt_base, st.ckpt_size = remaining[0], 0
        st.ckpt_end_offset = max(st.ckpt_end_offset, remaining[0])
    head.write(st)  # readers learn the new start before files vanish
    for b in doomed:
        catalog.drop(b, unlink=True)
    return len(doomed)
