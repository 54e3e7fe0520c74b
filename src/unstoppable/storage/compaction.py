"""Log compaction (Kafka's ``cleanup.policy=compact``): keep the latest record
of every key in a partition's sealed segments, with the offsets they had.

A cleaning of one partition (:func:`clean_partition`) follows Kafka's
LogCleaner in two passes:

1. **Offset map.** Over the *dirty* segments (sealed, written since the last
   cleaning: from the cleaner checkpoint on), map each key to the last offset
   it was written at (``_core.segment.OffsetMap``, in C: each key kept as a
   128-bit digest, as Kafka keeps an MD5, in a table of 24-byte slots): the
   map's memory grows with the number of distinct keys, never with the
   number of records or the size of keys.
2. **Rewrite.** Every cleanable segment, from the log's start to the end of
   the dirty part, is copied to ``<base>.log.cleaned`` keeping a record when
   the map has no later offset for its key. A tombstone (null value) stays
   until ``delete_retention_ms`` after its segment was first cleaned (the
   cleaned file's mtime); then it goes too. The last batch of each idempotent
   producer is kept whole, as Kafka keeps it, so that the producer table can
   always be rebuilt from batch headers. Batches whose records all stay are
   copied byte for byte; the kept records of the others are re-encoded into
   batches of consecutive offsets (their codec, timestamps and headers kept),
   so offsets skip only *between* batches (docs/FORMAT.md §16).

Only sealed segments wholly below the recovery checkpoint are cleaned (recovery
never rescans them), and only those whose newest record is at least
``min_compaction_lag_ms`` old; the active segment is never touched.

**Swap.** Each cleaned segment replaces its original one alone, keeping its
base (its file name): the new ``.log``, ``.index`` and ``.timeindex`` are
written as ``*.cleaned`` and fsynced, then, holding the partition's locks, the
``.log.cleaned`` is renamed over the ``.log`` (the commit point), then the two
indexes, then the directory is fsynced. :func:`finish_swaps` (run when a
partition is opened, and before each cleaning) completes a swap whose log was
renamed and removes the files of one that was not. So after a crash every
segment is either its old self or its cleaned self: old segments hold a
superset of the records, and a record is only dropped from a segment when the
record that supersedes it is kept (it lies in a later, dirty segment, whose
own cleaning keeps it), so no key loses its latest value and, offsets being
kept, no record shows twice. A tombstone is only dropped from a segment that
a previous, *finished* cleaning covered, when every older value of its key
before it is gone already.

Readers: a process that has a segment open keeps reading the old file's inode
after a swap (its mapping lives on); a segment opened afterwards is the new
file. The catalog's facts about a segment carry its inode, so facts learnt
from the old file are never applied to the new one. Offsets in a compacted
segment may skip, so readers of a partition with a cleaner checkpoint walk
batches allowing gaps (``segments.CLEANER_CHECKPOINT``).

The checkpoint ``<partition>/cleaner-checkpoint.json`` holds the offset the
last finished cleaning reached (``{"cleaned_offset": N}``); the bytes of
cleanable segments from there on are *dirty*, and a partition is worth
cleaning when dirty / cleanable bytes >= ``min_cleanable_dirty_ratio``.
"""
from __future__ import annotations

import json
import os
import threading
from typing import Callable, NamedTuple

from unstoppable._core.batch import BatchEncoder
from unstoppable._core.segment import (
    IndexBuilder,
    Mapping,
    OffsetMap,
    compact_batches,
    producer_batches,
    scan,
)
from unstoppable.compression import codec_id
from unstoppable.errors import (
    CorruptLogError,
    TopicConfigError,
    UnknownTopicError,
)
from unstoppable.storage._fs import O_CLOEXEC, flock_path, fsync_dir, pwrite_all
from unstoppable.storage.admin import write_json_atomic
from unstoppable.storage.compaction_keys import keychecked, refuse_keyless, refuse_keyless_encoded
from unstoppable.storage.recovery import now_ms
from unstoppable.storage.segments import CLEANER_CHECKPOINT, segment_name

__all__ = ["CleanResult", "clean_partition", "cleanable_bytes", "dirty_ratio", "finish_swaps",
           "refuse_keyless", "refuse_keyless_encoded", "keychecked", "BackgroundCleaner",
           "read_checkpoint", "CLEANED_SUFFIX"]

CLEANED_SUFFIX = ".cleaned"
#: flocked by a cleaning of the partition from start to end (_cleaner_lock).
CLEANER_LOCK = "cleaner.lock"
#: ``<base>.merged``: the marker of a merge of segments into ``<base>`` (_swap).
MERGED_SUFFIX = ".merged"
# The order the .cleaned files are removed in when a swap is undone: the log
# last, since an index file without its log means "committed" (finish_swaps).
_EXTS = (".index", ".timeindex", ".log")


# ---------------------------------------------------------------- checkpoint

def read_checkpoint(dirpath: str) -> int:
    """The offset the last finished cleaning of a partition reached (0: never)."""
    try:
        with open(os.path.join(dirpath, CLEANER_CHECKPOINT)) as f:
            v = json.load(f).get("cleaned_offset", 0)
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, AttributeError):
        return 0  # unreadable: everything counts as dirty, which is safe
    return v if isinstance(v, int) and v >= 0 else 0


def _write_checkpoint(dirpath: str, offset: int) -> None:
    write_json_atomic(os.path.join(dirpath, CLEANER_CHECKPOINT), {"cleaned_offset": offset})
    fsync_dir(dirpath)


# ---------------------------------------------------------------------- swap

def _cleaner_lock(dirpath: str, wait: bool) -> int:
    """A descriptor of ``<partition>/cleaner.lock`` flocked exclusively,
    held by a cleaning from its start to its end: one cleaning of a
    partition at a time, across threads and processes (each open has its own
    flock), and no :func:`finish_swaps` removes the files of a live one.
    Without ``wait``, -1 when another holds it."""
    return flock_path(os.path.join(dirpath, CLEANER_LOCK), wait)


def finish_swaps(dirpath: str) -> int:
    """Complete or roll back the swaps a dead cleaner left (append lock held).
    A merge's marker ``<base>.merged`` with no ``<base>.log.cleaned`` beside
    it was committed: the segments it names are removed; otherwise it only
    goes. Then, per segment:
    a ``<base>.log.cleaned`` still there means the swap never reached its
    commit point, so every ``<base>.*.cleaned`` goes; without it the new log
    is in place and its indexes are renamed in. Returns the segments fixed.
    Nothing is done while a live cleaning holds the partition's cleaner
    lock: the ``.cleaned`` files are its own."""
    if not any(n.endswith((CLEANED_SUFFIX, MERGED_SUFFIX)) for n in _listdir(dirpath)):
        return 0
    lock = _cleaner_lock(dirpath, wait=False)
    if lock < 0:
        return 0
    try:
        return _finish_swaps(dirpath)
    finally:
        os.close(lock)


def _listdir(dirpath: str) -> list[str]:
    try:
        return os.listdir(dirpath)
    except FileNotFoundError:
        return []


def _finish_swaps(dirpath: str) -> int:
    """finish_swaps with the cleaner lock held."""
    try:
        names = os.listdir(dirpath)
    except FileNotFoundError:
        return 0
    merged = 0
    for n in names:
        if not n.endswith(MERGED_SUFFIX):
            continue
        stem = n[:-len(MERGED_SUFFIX)]
        if not os.path.exists(os.path.join(dirpath, stem + ".log" + CLEANED_SUFFIX)):
            # Committed: the merged segment is in place; its sources go.
            try:
                with open(os.path.join(dirpath, n)) as f:
                    others = json.load(f)["merged"]
            except (OSError, ValueError, KeyError, TypeError):
                others = None   # a marker cut short: written before the commit, so never here
            if others is not None:
                dfd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY | O_CLOEXEC)
                try:
                    _unlink_merged(dfd, [int(b) for b in others])
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        os.unlink(os.path.join(dirpath, n))
        merged += 1
    if merged:
        fsync_dir(dirpath)
    stems = {n.split(".", 1)[0] for n in names if n.endswith(CLEANED_SUFFIX)}
    for stem in stems:
        path = os.path.join(dirpath, stem)
        if os.path.exists(path + ".log" + CLEANED_SUFFIX):
            for ext in _EXTS:
                try:
                    os.unlink(path + ext + CLEANED_SUFFIX)
                except FileNotFoundError:
                    pass
        else:
            for ext in (".index", ".timeindex"):
                try:
                    os.rename(path + ext + CLEANED_SUFFIX, path + ext)
                except FileNotFoundError:
                    pass
    if stems:
        fsync_dir(dirpath)
    return len(stems | {n.split(".", 1)[0] for n in names if n.endswith(MERGED_SUFFIX)})


# ------------------------------------------------------------------ cleaning

class CleanResult(NamedTuple):
    """What one cleaning of one partition did."""

    topic: str
    partition: int
    segments_cleaned: int      # segments replaced by a cleaned copy
    bytes_read: int            # bytes of segments read (both passes count once)
    bytes_written: int         # bytes of cleaned segments written
    records_kept: int
    records_removed: int
    tombstones_removed: int
    keys: int                  # distinct keys in the offset map
    map_bytes: int = 0         # memory of the offset map


def _cleanable(part, st, now: int) -> list[int]:
    """Sealed segments that may be cleaned, oldest first: wholly below the
    recovery checkpoint, and (a prefix) whose newest record is older than
    ``min_compaction_lag_ms``."""
    catalog = part.catalog
    catalog.refresh(st)
    lag = part.config.min_compaction_lag_ms
    out = []
    for b in catalog.bases:
        if b >= st.ckpt_base or b >= st.active_base:
            break
        if lag:
            try:
                if catalog.sealed_max_ts(b) > now - lag:
                    break
            except (CorruptLogError, FileNotFoundError):
                break
        out.append(b)
    return out


def dirty_ratio(part) -> float:
    """Share of a partition's cleanable bytes written since its last
    cleaning (0.0 when nothing can be cleaned)."""
    st = part.head_state()
    bases = _cleanable(part, st, now_ms())
    if not bases:
        return 0.0
    done = read_checkpoint(part.path)
    total = dirty = 0
    for b in bases:
        try:
            size = part.catalog.sealed_size(b)
        except FileNotFoundError:
            continue
        total += size
        if b >= done:
            dirty += size
    return dirty / total if total else 0.0


def cleanable_bytes(part) -> int:
    """Bytes of the segments a cleaning of ``part`` would read (for progress bars)."""
    st = part.head_state()
    total = 0
    for b in _cleanable(part, st, now_ms()):
        try:
            total += part.catalog.sealed_size(b)
        except FileNotFoundError:
            pass
    return total


def _batches(part, base: int):
    """(segment, its inode, size, every batch) of a sealed segment."""
    seg = part.catalog.get(base)
    size = part.catalog.sealed(seg).size
    ino = os.fstat(seg.fd).st_ino
    if size == 0:
        return seg, ino, 0, []
    try:
        batches = compact_batches(seg.data(size), size, part.topic, part.index)
    except CorruptLogError as e:
        raise CorruptLogError(f"cannot compact: {e.reason}", topic=part.topic,
                              partition=part.index, segment=seg.path, position=e.position,
                              offset=e.offset) from None
    return seg, ino, size, batches


def clean_partition(part, *, force: bool = True, now: int | None = None,
                    progress: Callable[[int], None] | None = None,
                    _hook: Callable[[str, int], None] | None = None) -> CleanResult:
    """clean_partition(part, *, force=True, now=None, progress=None) -> CleanResult

    Compact one partition of a compacted topic (see the module docstring).
    Without ``force`` it does nothing unless the dirty ratio reaches the
    topic's ``min_cleanable_dirty_ratio``. ``progress(n)`` is called with the
    bytes of each cleanable segment as its rewrite pass reads it (their sum is
    :func:`cleanable_bytes`). ``_hook(step, base)`` is for the
    crash tests: called at each step of a swap.
    """
    part._refresh_config()   # the policy in topic.json now (Log.alter_topic)
    cfg = part.config
    name, idx = part.topic, part.index
    nothing = CleanResult(name, idx, 0, 0, 0, 0, 0, 0, 0)
    if not cfg.compacted:
        raise TopicConfigError(f"topic {name!r} has cleanup_policy={cfg.cleanup_policy!r}: "
                               f"only a topic whose policy has 'compact' is compacted")
    part._check_open()
    part._check_writable("compact")
    lock = _cleaner_lock(part.path, wait=force)
    if lock < 0:
        return nothing      # (not forced) another cleaning of this partition is running
    try:
        return _clean_locked(part, cfg, nothing, force, now, progress, _hook)
    finally:
        os.close(lock)      # (drops the flock)


def _clean_locked(part, cfg, nothing: CleanResult, force: bool, now: int | None, progress,
                  _hook) -> CleanResult:
    """clean_partition with the partition's cleaner lock held."""
    name, idx = part.topic, part.index
    with part._lock, part._flock:
        _finish_swaps(part.path)
    now = now_ms() if now is None else now
    st = part.head_state()
    bases = _cleanable(part, st, now)
    done = read_checkpoint(part.path)
    dirty = [b for b in bases if b >= done]
    if not bases or (not dirty and not force):
        return nothing  # (forced with nothing dirty: a pass that only expires tombstones)
    if not force and dirty_ratio(part) < cfg.min_cleanable_dirty_ratio:
        return nothing
    # Where the dirty part ends: the segment after the last cleanable one.
    later = [b for b in part.catalog.bases if b > bases[-1]]
    dirty_end = later[0] if later else st.active_base

    # Pass 1: the offset map over the dirty part, and each producer's last batch.
    omap, keep_pids, read_bytes = _offset_map(part, dirty, bases)

    # Pass 2: rewrite every cleanable segment up to the dirty end. Files are
    # named relative to the directory opened here: should the topic be
    # deleted (and made anew under its name) meanwhile, nothing of this
    # cleaning lands in the new one's directory.
    horizon = now - cfg.delete_retention_ms
    enc = BatchEncoder(cfg.max_batch_bytes, cfg.max_record_bytes)
    kept = removed = tomb_removed = written = cleaned = 0
    dfd = os.open(part.path, os.O_RDONLY | os.O_DIRECTORY | O_CLOEXEC)
    try:
        cleaned, kept, removed, tomb_removed, read_bytes, written = _rewrite(
            part, dfd, bases, dirty, done, horizon, omap, keep_pids, enc, progress, _hook,
            read_bytes)
    except FileNotFoundError:
        if part.deleted:
            _check_not_deleted(part)
        raise
    finally:
        os.close(dfd)
    if _hook is not None:
        _hook("checkpoint", dirty_end)
    with part._lock, part._flock:
        _check_not_deleted(part)
        part._refresh_config()
        _check_still_compacted(part, cleaned)
        _write_checkpoint(part.path, dirty_end)
        part.catalog.gaps = True
    return CleanResult(name, idx, cleaned, read_bytes, written, kept, removed, tomb_removed,
                       len(omap), omap.nbytes)


def _rewrite(part, dfd: int, bases, dirty, done, horizon, omap, keep_pids, enc, progress, hook,
             read_bytes):
    """Pass 2 over ``bases``; returns the counts for CleanResult.

    Adjacent segments are grouped, as Kafka's cleaner groups them, into one
    cleaned segment while what they keep fits in ``segment_bytes`` (counted
    from the batches kept, a batch that loses records at its whole length,
    so a group never outgrows a segment) and its offsets in an index's
    32-bit relative offsets, at most _MAX_GROUP segments. A group of one
    unchanged segment is left alone. (Re-encoded runs of small records may
    take a little more than the batch they came from: a merged segment can
    pass segment_bytes by that much.)"""
    kept = removed = tomb_removed = written = cleaned = 0
    limit = part.config.segment_bytes
    group: list = []     # [(base, seg, ino, out, changed)]
    size = 0

    def flush_group():
        nonlocal written, cleaned
        if not group:
            return
        if len(group) > 1 or group[0][4]:
            written += _write_cleaned(part, dfd, group, enc, hook)
            if _swap(part, dfd, group, hook, cleaned):
                cleaned += len(group)
        group.clear()

    for b in bases:
        seg, ino, seg_size, batches = _batches(part, b)
        # Tombstones go only from segments a finished cleaning covered, once
        # delete_retention_ms has passed since that cleaning wrote the file.
        drop_tombs = b < done and os.fstat(seg.fd).st_mtime_ns // 1_000_000 <= horizon
        out, changed, seg_kept, seg_removed, seg_tombs = _plan(batches, omap, keep_pids,
                                                               drop_tombs)
        del batches
        if progress is not None:
            progress(seg_size)
        if b not in dirty:
            read_bytes += seg_size
        kept += seg_kept
        removed += seg_removed
        tomb_removed += seg_tombs
        est = sum(item[2] if isinstance(item, tuple) else item.length for item in out)
        last = _last_offset(out)
        if group and (size + est > limit or len(group) >= _MAX_GROUP
                      or (last is not None and last - group[0][0] >= _MAX_RELATIVE)):
            flush_group()
            size = 0
        group.append((b, seg, ino, out, changed))
        size += est
        del seg, out
    flush_group()
    return cleaned, kept, removed, tomb_removed, read_bytes, written


#: A segment's offsets relative to its base must fit an index entry's 32 bits.
_MAX_RELATIVE = (1 << 31) - 1
#: Segments merged at most into one: a group holds every one's files open
#: (3 descriptors each) until it is written.
_MAX_GROUP = 64


def _last_offset(out: list):
    """The last offset a segment's plan keeps (None: it keeps nothing)."""
    if not out:
        return None
    item = out[-1]
    if isinstance(item, tuple):
        return item[0][-1].offset
    return item.last_offset


def _offset_map(part, dirty: list[int], bases: list[int]):
    """Pass 1: the offset map over the ``dirty`` segments, the ``(producer id,
    base offset)`` of each producer's last batch in ``bases`` (from the headers
    alone), and the bytes read."""
    omap = OffsetMap()
    last_batch: dict[int, int] = {}
    read_bytes = 0
    for b in dirty:
        seg, _ino, size, batches = _batches(part, b)
        for batch in batches:
            if not batch.is_control:
                omap.add_batch(batch)
        read_bytes += size
        del batches, seg
    for b in bases:
        seg = part.catalog.get(b)
        size = part.catalog.sealed(seg).size
        if size:
            found, _ = producer_batches(seg.data(size), 0, size)
            for base_offset, _n, pid, _epoch, _seq in found:
                last_batch[pid] = base_offset
        del seg
    return omap, set(last_batch.items()), read_bytes


def _plan(batches, omap, keep_pids: set, drop_tombs: bool):
    """What of one segment's batches stays: ``(out, changed, kept, removed,
    tombstones removed)``; ``out`` holds whole batches (copied as they are)
    and ``(records, codec)`` for batches that lost records."""
    out: list = []
    changed = False
    kept = removed = tombs_removed = 0
    for batch in batches:
        if batch.is_control or (batch.producer_id, batch.base_offset) in keep_pids:
            out.append(batch)
            kept += len(batch)
            continue
        mask, n_kept, tombs = omap.keep_mask(batch, drop_tombs)
        n = len(batch)
        kept += n_kept
        removed += n - n_kept
        tombs_removed += tombs
        if n_kept == n:
            out.append(batch)
        else:
            changed = True
            if n_kept:
                out.append(([batch[i] for i, k in enumerate(mask) if k], batch.compression,
                            batch.length))
    return out, changed, kept, removed, tombs_removed


def _write_cleaned(part, dfd: int, group: list, enc: BatchEncoder, hook) -> int:
    """Write the kept batches of a group of adjacent segments (``[(base,
    seg, ino, out, changed)]``) as one segment named by the first base, with
    its indexes, as ``*.cleaned`` files, fsynced. Returns the bytes of the new log."""
    base = group[0][0]
    stem = segment_name(base)
    tmp = stem + ".log" + CLEANED_SUFFIX
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | O_CLOEXEC, 0o644, dir_fd=dfd)
    try:
        pos = 0
        chunk: list = []
        chunk_len = 0
        for _b, seg, _ino, out, _changed in group:
            m = seg.data(part.catalog.sealed(seg).size)
            view = m.view
            for item in out:
                if isinstance(item, tuple):
                    records, codec, _length = item
                    run: list = []
                    for r in records:
                        if run and r.offset != run[-1].offset + 1:
                            chunk.append(_encode_run(enc, run, codec))
                            chunk_len += len(chunk[-1])
                            run = []
                        run.append(r)
                    if run:
                        chunk.append(_encode_run(enc, run, codec))
                        chunk_len += len(chunk[-1])
                else:
                    chunk.append(view[item.position:item.position + item.length])
                    chunk_len += item.length
                if chunk_len >= (4 << 20):
                    data = b"".join(chunk)
                    pwrite_all(fd, data, pos)
                    pos += len(data)
                    chunk, chunk_len = [], 0
            if chunk:   # (before this segment's mapping goes)
                data = b"".join(chunk)
                pwrite_all(fd, data, pos)
                pos += len(data)
                chunk, chunk_len = [], 0
            del view, m
        del chunk
        if hook is not None:
            hook("written", base)
        builder = IndexBuilder(base, part.config.index_interval_bytes, 0, -1, -1)
        if pos:
            nm = Mapping(fd, pos)
            r = scan(nm, 0, pos, -1, builder, True)
            del nm
            if r.position != pos:  # our own output: a bug, never written over the original
                raise CorruptLogError(f"cleaned segment failed its own check at {r.position}",
                                      topic=part.topic, partition=part.index, segment=tmp)
        os.fsync(fd)
    finally:
        os.close(fd)
    oi, ti = builder.take()
    for ext, data in ((".index", oi), (".timeindex", ti)):
        ifd = os.open(stem + ext + CLEANED_SUFFIX,
                      os.O_RDWR | os.O_CREAT | os.O_TRUNC | O_CLOEXEC, 0o644, dir_fd=dfd)
        try:
            if data:
                pwrite_all(ifd, data, 0)
            os.fsync(ifd)
        finally:
            os.close(ifd)
    return pos


def _encode_run(enc: BatchEncoder, run: list, codec) -> bytes:
    """Records of consecutive offsets as batches starting at the first's offset."""
    enc.clear()
    enc.encode(run, 0)
    if codec:
        enc.compress(codec_id(codec))
    enc.set_base_offset(run[0].offset)
    return bytes(enc.view())


def _swap(part, dfd: int, group: list, hook, swapped: int) -> bool:
    """Put a cleaned segment in place of the group of originals it was
    made from (both locks held throughout). False, with the cleaned files
    removed, when an original changed meanwhile (retention deleted it,
    another cleaner replaced it); TopicConfigError, with them removed, when
    the topic's policy in topic.json lost "compact" (``swapped``: segments
    this cleaning swapped).

    A group of several segments is merged: a marker ``<first>.merged``
    naming the others is written first; the rename of the cleaned log over
    the first segment's is the commit point; then the others' files and the
    marker go. :func:`finish_swaps` completes this after a crash from the
    marker (committed when no ``.log.cleaned`` is left) or rolls it back."""
    base = group[0][0]
    stem = segment_name(base)
    others = [g[0] for g in group[1:]]
    with part._lock, part._flock:
        _check_not_deleted(part)
        current = []
        for b, _seg, _ino, _out, _changed in group:
            try:
                current.append(os.stat(segment_name(b) + ".log", dir_fd=dfd).st_ino)
            except FileNotFoundError:
                current.append(-1)
        part._refresh_config()
        if current != [g[2] for g in group] or not part.config.compacted:
            for ext in _EXTS:
                try:
                    os.unlink(stem + ext + CLEANED_SUFFIX, dir_fd=dfd)
                except FileNotFoundError:
                    pass
            _check_still_compacted(part, swapped)
            return False
        if not os.path.exists(os.path.join(part.path, CLEANER_CHECKPOINT)):
            # Before the first compacted segment appears: readers must know
            # that offsets may skip (segments.CLEANER_CHECKPOINT).
            _write_checkpoint(part.path, 0)
        part.catalog.gaps = True
        if others:
            write_json_atomic(os.path.join(part.path, stem + MERGED_SUFFIX), {"merged": others})
            os.fsync(dfd)
        if hook is not None:
            hook("swap", base)
        # The commit point:
        os.rename(stem + ".log" + CLEANED_SUFFIX, stem + ".log", src_dir_fd=dfd, dst_dir_fd=dfd)
        if hook is not None:
            hook("renamed", base)
        for ext in (".index", ".timeindex"):
            os.rename(stem + ext + CLEANED_SUFFIX, stem + ext, src_dir_fd=dfd, dst_dir_fd=dfd)
        os.fsync(dfd)
        part.catalog.replaced(base)
        if others:
            if hook is not None:
                hook("merging", base)
            _unlink_merged(dfd, others)
            os.fsync(dfd)
            os.unlink(stem + MERGED_SUFFIX, dir_fd=dfd)
            os.fsync(dfd)
            for b in others:
                part.catalog.drop(b, unlink=False)
    return True


def _unlink_merged(dfd: int, bases) -> None:
    """Remove the files of segments merged into an earlier one (their log last)."""
    for b in bases:
        for ext in (".index", ".timeindex", ".producers", ".log"):
            try:
                os.unlink(segment_name(b) + ext, dir_fd=dfd)
            except FileNotFoundError:
                pass


def _check_still_compacted(part, swapped: int) -> None:
    """Raise TopicConfigError when the topic's policy (as read from
    topic.json by the caller, append lock held) no longer has "compact": the
    cleaning stops there (Log.alter_topic)."""
    cfg = part.config
    if not cfg.compacted:
        raise TopicConfigError(
            f"topic {part.topic!r} was altered to cleanup_policy={cfg.cleanup_policy!r} while "
            f"partition {part.index} was being compacted: the cleaning stopped after swapping "
            f"{swapped} segment(s), each whole (no record was lost)")


def _check_not_deleted(part) -> None:
    """Raise UnknownTopicError when the topic was deleted (by any process)
    while the cleaning ran (append lock held). Deletion sets the head's flag
    under this lock before it moves the topic's directory away, so with the
    lock held and no flag the directory is still this topic's: a topic made
    anew under the same name (say with cleanup_policy="delete") never gets a
    cleaned file or a cleaner checkpoint of the old one."""
    if part.deleted:
        raise UnknownTopicError(f"topic {part.topic!r} was deleted while partition "
                                f"{part.index} was being compacted; the cleaning was dropped")


# ---------------------------------------------------------------- background

class BackgroundCleaner:
    """A daemon thread of the writing process that cleans the partitions of
    its log's compacted topics whose dirty ratio reached their topic's
    ``min_cleanable_dirty_ratio``, every ``interval`` seconds. It runs
    outside the append path: appends take the partition's locks only while
    it renames files."""

    def __init__(self, log, interval: float = 5.0):
        self._log = log
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = -1
        self.runs = 0
        self.errors: list[BaseException] = []

    def ensure_started(self) -> None:
        """Start the thread (again in a forked child) if it is not running."""
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        self._stop.clear()
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="unstoppable-cleaner",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for a cleaning in progress to finish."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread() and self._pid == os.getpid():
            t.join()
        self._thread = None

    def run_once(self) -> list[CleanResult]:
        """One round over every compacted topic of the log."""
        out = []
        for name in self._log.topics():
            if self._stop.is_set():
                break
            try:
                topic = self._log.topic(name)
            except Exception:
                continue  # deleted meanwhile
            if not topic.config.compacted:
                continue
            for i in range(topic.partitions):
                if self._stop.is_set():
                    break
                part = topic.partition(i)
                try:
                    res = clean_partition(part, force=False)
                except (TopicConfigError, UnknownTopicError):
                    break   # altered to "delete", or deleted, meanwhile
                if res.segments_cleaned or res.records_kept:
                    out.append(res)
        self.runs += 1
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception as e:  # a closed log, a full disk: try again next round
                if len(self.errors) < 100:
                    self.errors.append(e)
                if getattr(self._log, "closed", False):
                    return

