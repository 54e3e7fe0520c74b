"""Appends: how encoded batches reach a partition's active segment, rolls to a
new segment, and the pipelined path for large appends. Every method runs with
the partition's in-process lock held; they take the append flock themselves.

How appends reach the file: ``pwrite`` of whole encoded batches at the
position the head names. On this machine class write() of large chunks runs at
2.4-3 GB/s while first-touch stores into a shared mmap fault at about 0.5 GB/s
(docs/machine-facts.md), so writes go through the page cache and reads go
through read-only mappings of the same pages.

Who sees what: the head's ``active_size`` and ``end_offset`` move only after the
bytes are written, under the append lock, through a seqlock. Readers in any
process read up to that size and never further, so they never see a
half-written batch, and bytes a dead writer left past it are cut off by the
next lock holder.
"""
from __future__ import annotations

import os

from unstoppable._core.batch import BatchEncoder
from unstoppable._core.segment import (
    HEAD_FLAG_DELETED,
    OFFSET_ENTRY_SIZE,
    TIME_ENTRY_SIZE,
    IndexBuilder,
    preallocate,
)
from unstoppable.errors import CorruptLogError, DiskFullError, UnknownTopicError, is_disk_full
from unstoppable.storage._fs import pwrite_all
from unstoppable.storage.producer_state import snapshot_path
from unstoppable.storage.recovery import now_ms
from unstoppable.storage.segments import Segment

__all__ = ["Appender", "STREAM_MIN", "MAX_APPEND_BYTES"]

# Appends reserve the active segment's disk blocks ahead of the data, in
# steps of this many bytes, without changing the file's size (fallocate
# KEEP_SIZE): writing into reserved blocks skips ext4's per-page delayed
# allocation work (106 MB of 1 MiB pwrites: 16 ms instead of 22-23 ms; 10k-record
# appends of 1M x 100 B: 34-36 ms instead of 41-44). The file still ends at its
# data, so the format and recovery see nothing of it; a roll, a torn-tail cut
# or a clean close gives the unused blocks back (ftruncate to the data size).
RESERVE_STEP = 4 << 20
# The first reservation of a segment opened here is this small (or 4 times
# the write), and each next one as large as what is reserved already (up to
# RESERVE_STEP): a partition
# written a little, then let go (storage/open_partitions.py), holds 64 KiB of
# reserved blocks rather than 4 MiB until given back (10,000 such: 0.6 GiB,
# not 40).
RESERVE_MIN = 64 << 10
RESERVE_OFF = 1 << 62   # reserving failed or is unsupported here: stop trying

MAX_APPEND_BYTES = (1 << 31) - 1  # index positions are u32; segments stay below 2**32
STREAM_MIN = 32768         # records: appends at least this large are pipelined
STREAM_TARGET = 1 << 20     # bytes per pipelined chunk


def reserve_blocks(seg: Segment, pos: int, need: int) -> None:
    """Make sure writing ``[pos, need)`` lands in reserved blocks (append lock held)."""
    if need <= seg.reserved_end:
        return
    start = max(seg.reserved_end, pos)  # (another process may have written past ours)
    step = min(RESERVE_STEP, max(RESERVE_MIN, 4 * (need - start), seg.reserved_end))
    end = max(need, start + step)
    if preallocate(seg.fd, start, end - start) == 0:
        seg.reserved_end = end
        return
    # EOPNOTSUPP, ENOSPC, EFBIG...: stop reserving here; the pwrite itself
    # will say what is wrong. A reservation that failed for space may have
    # taken some blocks before it gave up: give them back (the append lock is
    # held and the data ends at pos), or they would take the write's room.
    seg.reserved_end = RESERVE_OFF
    if os.fstat(seg.fd).st_size >= pos:  # (never extend a file someone cut short)
        os.ftruncate(seg.fd, pos)


def give_back_reserved(seg: Segment | None, st) -> None:
    """Release blocks reserved past the active segment's data (append lock held)."""
    if (seg is not None and st.active_size < seg.reserved_end < RESERVE_OFF
            and seg.size() == st.active_size):
        os.ftruncate(seg.fd, st.active_size)
        seg.reserved_end = st.active_size


def _undo_write(seg: Segment, pos: int, st) -> None:
    """Cut a failed write back off, so nothing of it is ever visible."""
    try:
        os.ftruncate(seg.fd, pos)
        os.ftruncate(seg.oi_fd, st.oi_count * OFFSET_ENTRY_SIZE)
        os.ftruncate(seg.ti_fd, st.ti_count * TIME_ENTRY_SIZE)
    except OSError:
        # The head was not advanced, so readers ignore the bytes anyway and
        # the next lock holder truncates them.
        pass


class _Pipeline:
    """Up to two chunk writes in flight on the C writer thread, one per encoder."""

    def __init__(self, writer):
        self.writer = writer
        self.pending: list = [None, None]  # per encoder: (job, view) of its write in flight

    def finish(self, slot: int) -> None:
        job, mv = self.pending[slot]
        self.pending[slot] = None
        try:
            job.wait()
        finally:
            mv.release()

    def drain(self) -> None:
        for k in (0, 1):
            if self.pending[k] is not None:
                self.finish(k)

    def abandon(self) -> None:
        """Wait for what is in flight, ignoring its errors (the append failed)."""
        for k in (0, 1):
            if self.pending[k] is not None:
                try:
                    self.finish(k)
                except OSError:
                    pass

    def submit(self, slot: int, fd: int, mv, pos: int) -> None:
        self.pending[slot] = (self.writer.submit(fd, mv, pos), mv)


class Appender:
    """The write side of one partition.

    ``locked_state()`` reads the head with the append lock held (repairing a
    half-written one); ``on_roll(st)`` runs after each roll (retention and
    the flusher); ``listeners`` is the partition's list of callbacks to call
    after each append (the list itself, shared); ``writer()`` gives the log's
    C writer thread.
    """

    def __init__(self, topic: str, index: int, config, head, catalog, producers, flock,
                 locked_state, on_roll, listeners: list, writer):
        self.name = f"{topic}/{index}"
        self._topic = topic
        self._index = index
        self._config = config
        self._head = head
        self._catalog = catalog
        self._producers = producers
        self._flock = flock
        self._locked_state = locked_state
        self._on_roll = on_roll
        self._listeners = listeners
        self._writer = writer
        self.encoder = BatchEncoder(config.max_batch_bytes, config.max_record_bytes)
        self._encoder2 = BatchEncoder(config.max_batch_bytes, config.max_record_bytes)
        self._stream_chunk = 256  # records per pipelined chunk; adapts to ~1 MiB

    def reconfigure(self, config) -> None:
        """Follow altered settings (the partition's lock held): new encoders
        when the batch or record limits changed."""
        old, self._config = self._config, config
        if (old.max_batch_bytes, old.max_record_bytes) != (config.max_batch_bytes,
                                                           config.max_record_bytes):
            self.encoder = BatchEncoder(config.max_batch_bytes, config.max_record_bytes)
            self._encoder2 = BatchEncoder(config.max_batch_bytes, config.max_record_bytes)

    def _live_state(self):
        st = self._locked_state()
        if st.flags & HEAD_FLAG_DELETED:
            raise UnknownTopicError(f"topic {self._topic!r} was deleted")
        return st

    def _disk_full(self, e: OSError, what: str) -> DiskFullError:
        return DiskFullError(e.errno, f"no space to {what} {self.name}: {os.strerror(e.errno)}")

    # ------------------------------------------------------------ one batch

    def write_encoded(self, enc: BatchEncoder, idem=None):
        """Write what ``enc`` holds at the end of the partition. ``idem`` is
        ``(producer_id, epoch, base_sequence, count)`` of an idempotent batch:
        a retry is answered with the original ``(base, end)``, unwritten."""
        nbytes = enc.nbytes
        if nbytes > MAX_APPEND_BYTES:
            raise ValueError(
                f"one append of {nbytes} bytes is over the {MAX_APPEND_BYTES}-byte limit "
                "(index positions are 32-bit); pass the records as a list to stream them, "
                "or split the call")
        with self._flock:
            st = self._locked_state()
            if st.flags & HEAD_FLAG_DELETED:
                raise UnknownTopicError(f"topic {self._topic!r} was deleted")
            if idem is not None:
                self._producers.catch_up(self._catalog, st)
                dup = self._producers.check(*idem)
                if dup is not None:
                    return dup
            seg = self.active(st)
            cfg = self._config
            if cfg.log_append_time:
                # Stamped under the partition's file lock, so a LogAppendTime
                # topic's append times follow its offsets across processes
                # (unless the clock steps back, as in Kafka).
                enc.set_log_append_time(now_ms())
            if (st.active_size > 0 and (
                    st.active_size + nbytes > cfg.segment_bytes
                    or (cfg.segment_ms is not None
                        and now_ms() - st.active_created >= cfg.segment_ms))):
                seg, st = self.roll(st)
            base, end = self._write_at(seg, st, enc, nbytes)
            if idem is not None:
                pid, epoch, seq, count = idem
                self._producers.apply(base, count, pid, epoch, seq)
                self._producers.synced = (st.active_base, st.active_size)
        for cb in self._listeners:
            cb()
        return base, end

    def _write_at(self, seg: Segment, st, enc: BatchEncoder, nbytes: int):
        """pwrite the batches and their index entries at the head's position,
        then publish them through the head."""
        pos = st.active_size
        base = st.end_offset
        end = enc.set_base_offset(base)
        builder = IndexBuilder(seg.base, self._config.index_interval_bytes,
                               st.oi_last_pos, st.ti_last_ts, st.max_timestamp)
        mv = enc.view()
        try:
            builder.add_encoded(mv, pos, base)
            oi, ti = builder.take()
            try:
                reserve_blocks(seg, pos, pos + nbytes)
                pwrite_all(seg.fd, mv, pos)
                if oi:
                    pwrite_all(seg.oi_fd, oi, st.oi_count * OFFSET_ENTRY_SIZE)
                if ti:
                    pwrite_all(seg.ti_fd, ti, st.ti_count * TIME_ENTRY_SIZE)
            except OSError as e:
                _undo_write(seg, pos, st)
                if is_disk_full(e):
                    raise self._disk_full(e, f"append {nbytes} bytes to") from None
                raise
        finally:
            mv.release()
        st.end_offset = end
        st.active_size = pos + nbytes
        if enc.max_timestamp > st.max_timestamp:
            st.max_timestamp = enc.max_timestamp
        st.oi_count += len(oi) // OFFSET_ENTRY_SIZE
        st.ti_count += len(ti) // TIME_ENTRY_SIZE
        st.oi_last_pos = builder.last_entry_pos
        st.ti_last_ts = builder.last_time_ts
        self._head.write(st)
        return base, end

    # ------------------------------------------------------------ pipelined

    def append_stream(self, records, ts: int, encs=None, codec: int = 0):
        """A large append, pipelined: encode chunk k+1 (holding the GIL) while
        a C writer thread (no GIL) copies chunk k into the page cache, so the
        append costs about max(encode, write) instead of their sum.

        The head is written once at the end, so all records still become
        visible together; segments this append starts stay unpublished until
        then, and recovery deletes them if the process dies first.
        Returns ``(first offset, end offset)``.
        """
        with self._flock:
            st = self._live_state()
            seg = self.active(st, check_tail=True)
            cfg = self._config
            if (st.active_size > 0 and cfg.segment_ms is not None
                    and now_ms() - st.active_created >= cfg.segment_ms):
                seg, st = self.roll(st)
            run = _StreamRun(self, st, seg, records, encs)
            run.codec = codec
            try:
                run.write_all(ts)
            except BaseException as e:
                run.undo()
                if isinstance(e, OSError) and is_disk_full(e):
                    raise self._disk_full(e, f"append {len(records)} records to") from None
                raise
            first_base = run.publish()
        for cb in self._listeners:
            cb()
        return first_base, st.end_offset

    # ---------------------------------------------------------------- rolls

    def new_segment(self, base: int) -> Segment:
        """Create the files of a new segment starting at ``base`` (lock held),
        with the producer-state snapshot for its start. Not yet published."""
        if self._producers.producers:
            self._producers.write_snapshot(snapshot_path(self._catalog.path, base))
        seg = self._catalog.get(base, create=True)
        for fd in (seg.fd, seg.oi_fd, seg.ti_fd):
            os.ftruncate(fd, 0)  # leftovers of a writer that died mid-roll
        return seg

    def active(self, st, check_tail: bool = False) -> Segment:
        """The active segment (lock held). With ``check_tail``, cut off any
        torn tail a dead writer left past the head. Ordinary appends skip that
        fstat: they write at ``active_size`` whatever lies beyond, readers never
        look past the head, and the tail is cut at the next roll or open."""
        seg = self._catalog.get_open(st.active_base)
        if seg is None:
            self._catalog.refresh(st)
            seg = self._catalog.get(st.active_base, create=True)
            check_tail = True
        if not check_tail:
            return seg
        size = seg.size()
        if size != st.active_size:
            if size < st.active_size:
                raise CorruptLogError(
                    f"active segment is {size} bytes, shorter than the {st.active_size} "
                    "recorded as written (truncated by something else?)",
                    topic=self._topic, partition=self._index, segment=seg.path, position=size)
            os.ftruncate(seg.fd, st.active_size)
        return seg

    def roll(self, st):
        """Seal the active segment and start a new one at the end offset (lock
        held). No room for the new files raises DiskFullError."""
        try:
            return self._roll_unchecked(st)
        except OSError as e:
            if is_disk_full(e):  # the producer snapshot or the new files found no room
                raise self._disk_full(e, "roll") from None
            raise

    def _roll_unchecked(self, st):
        old = self._catalog.get(st.active_base)
        os.ftruncate(old.fd, st.active_size)  # a dead writer's leftovers past the head
        # Producer state as of the new segment's start, so rebuilding it on
        # open only walks the active segment.
        self._producers.catch_up(self._catalog, st)
        # Cut the index files of the sealed segment to their counted entries.
        os.ftruncate(old.oi_fd, st.oi_count * OFFSET_ENTRY_SIZE)
        os.ftruncate(old.ti_fd, st.ti_count * TIME_ENTRY_SIZE)
        new = self.new_segment(st.end_offset)
        st.active_base = st.end_offset
        st.active_size = 0
        st.active_created = now_ms()
        st.max_timestamp = -1
        st.oi_count = st.ti_count = 0
        st.oi_last_pos = 0
        st.ti_last_ts = -1
        self._head.write(st)
        self._on_roll(st)
        return new, st


class _StreamRun:
    """One pipelined append: its position, the segments it started, and the
    writes in flight (the append lock is held throughout)."""

    def __init__(self, app: Appender, st, seg: Segment, records, encs):
        self.app = app
        self.codec = 0  # compress each chunk's batches with this codec (0: none)
        self.st = st
        self.orig = st.copy()
        self.seg = seg
        self.first = seg  # held: with many new segments it may leave the open set
        self.records = records
        # Our own encoders take a list by index range: slicing a large list
        # would write the reference count of every record (a cache miss
        # each: 25 ms per million records measured here).
        self.ranged = encs is None and isinstance(records, (list, tuple))
        self.encs = tuple(encs) if encs else (app.encoder, app._encoder2)
        self.new_segs: list[Segment] = []
        self.pipe = _Pipeline(app._writer())
        self.pos, self.off = st.active_size, st.end_offset
        self.oi_n, self.ti_n, self.max_ts = st.oi_count, st.ti_count, st.max_timestamp
        self.builder = IndexBuilder(seg.base, app._config.index_interval_bytes, st.oi_last_pos,
                                    st.ti_last_ts, st.max_timestamp)
        # A LogAppendTime topic's batches: one append time for the whole append.
        self.append_time = now_ms()

    def write_all(self, ts: int) -> None:
        app, cfg = self.app, self.app._config
        n = len(self.records)
        # At least four chunks, so encoding and writing overlap even in a
        # medium-sized append; at most about STREAM_TARGET bytes each.
        chunk = max(16, min(app._stream_chunk, n // 4))
        # Chunks of at most half a segment, so a segment overshoots
        # segment_bytes by less than one chunk.
        target = min(STREAM_TARGET, cfg.segment_bytes // 2)
        i = j = 0
        while i < n:
            slot = j & 1
            enc = self.encs[slot]
            if self.pipe.pending[slot] is not None:
                self.pipe.finish(slot)  # that buffer's earlier write is done
            enc.clear()
            if self.ranged:  # a list: encode records[i:i + chunk] without slicing it
                took = enc.encode(self.records, ts, start=i, stop=i + chunk)
            else:
                took = enc.encode(self.records[i:i + chunk], ts)
            i += took
            if self.codec:
                enc.compress(self.codec)
            if cfg.log_append_time:
                enc.set_log_append_time(self.append_time)
            nb = enc.nbytes
            app._stream_chunk = max(16, min(1 << 16, target * took // max(nb, 1)))
            chunk = max(16, min(app._stream_chunk, n // 4))
            if self.pos > 0 and self.pos + nb > cfg.segment_bytes:
                self._next_segment()
            self._write_chunk(slot, enc, nb)
            j += 1
        self.pipe.drain()

    def _next_segment(self) -> None:
        app = self.app
        self.pipe.drain()
        if not self.new_segs:
            app._producers.catch_up(app._catalog, self.st)
        if self.seg.reserved_end > self.pos:
            os.ftruncate(self.seg.fd, self.pos)  # give back its unused reserved blocks
        self.seg = app.new_segment(self.off)
        self.new_segs.append(self.seg)
        self.pos, self.oi_n, self.ti_n, self.max_ts = 0, 0, 0, -1
        self.builder = IndexBuilder(self.seg.base, app._config.index_interval_bytes, 0, -1, -1)

    def _write_chunk(self, slot: int, enc, nb: int) -> None:
        seg, pos = self.seg, self.pos
        base = self.off
        self.off = enc.set_base_offset(base)
        mv = enc.view()
        reserve_blocks(seg, pos, pos + nb)
        self.pipe.submit(slot, seg.fd, mv, pos)
        self.builder.add_encoded(mv, pos, base)
        oi, ti = self.builder.take()
        if oi:
            pwrite_all(seg.oi_fd, oi, self.oi_n * OFFSET_ENTRY_SIZE)
        if ti:
            pwrite_all(seg.ti_fd, ti, self.ti_n * TIME_ENTRY_SIZE)
        self.pos += nb
        self.oi_n += len(oi) // OFFSET_ENTRY_SIZE
        self.ti_n += len(ti) // TIME_ENTRY_SIZE
        if enc.max_timestamp > self.max_ts:
            self.max_ts = enc.max_timestamp

    def undo(self) -> None:
        self.pipe.abandon()
        _undo_write(self.first, self.orig.active_size, self.orig)
        for sg in self.new_segs:
            self.app._catalog.drop(sg.base, unlink=True)

    def publish(self) -> int:
        """Write the head once for the whole append; returns its first offset."""
        st, app = self.st, self.app
        first_base = self.orig.end_offset
        st.end_offset = self.off
        st.active_size = self.pos
        st.max_timestamp = self.max_ts
        st.oi_count, st.ti_count = self.oi_n, self.ti_n
        st.oi_last_pos, st.ti_last_ts = self.builder.last_entry_pos, self.builder.last_time_ts
        if self.new_segs:
            st.active_base = self.seg.base
            st.active_created = now_ms()
        app._head.write(st)
        if self.new_segs:
            app._on_roll(st)
        return first_base
