"""One partition of a topic: a directory of segment files plus a shared head.

Layout of ``<log>/topics/<topic>/<partition>/``::

    head                      shared state, mmap'ed by every process (csrc/head.h)
    lock                      flock()ed by the process appending; the kernel
                              releases it when that process dies
    00000000000000000000.log  segment: record batches back to back (csrc/batch.h)
    00000000000000000000.index      sparse offset index (csrc/index.h)
    00000000000000000000.timeindex  sparse time index

This module is the partition's API (reads, appends, durability requests) and
its locking. The work lives in one module per concern: ``segments`` (the
files and what is known of sealed ones), ``appender`` (writes and rolls),
``recovery`` (on open), ``retention``, ``durability`` (group commit),
``producer_state`` (idempotent producers), ``seek`` (byte ranges for
``sendfile``, offsets by time) and ``open_partitions`` (parking).

Locking: ``_lock`` (a ``threading.RLock``) orders this process's threads;
the append flock orders processes. Writers hold both; readers hold neither
and read the head through its seqlock.
"""
from __future__ import annotations

import os
import threading
from typing import Callable, Iterable, NamedTuple, NoReturn

from unstoppable._core.batch import BatchEncoder, RecordBatch
from unstoppable.compression import codec_id
from unstoppable._core.segment import (
    HEAD_FILE_SIZE,
    HEAD_FLAG_DELETED,
    Head,
    read_batches,
    read_records,
)
from unstoppable.errors import (
    CorruptLogError,
    DiskFullError,
    LogClosedError,
    OffsetOutOfRangeError,
    ReadOnlyLogError,
    UnstoppableError,
    is_disk_full,
    too_many_open_files,
)
from unstoppable.storage._fs import O_CLOEXEC, open_readonly
from unstoppable.storage.appender import (
    STREAM_MIN,
    Appender,
    give_back_reserved,
)
from unstoppable.storage.compaction import (
    finish_swaps,
    keychecked,
    refuse_keyless,
    refuse_keyless_encoded,
)
from unstoppable.storage.durability import DurableState
from unstoppable.storage import seek
from unstoppable.storage.open_partitions import AppendLock
from unstoppable.storage.seek import ByteRange
from unstoppable.storage.producer_state import ProducerStateTable
from unstoppable.storage.readonly import recover_readonly
from unstoppable.storage.recovery import Recovery, now_ms, recover
from unstoppable.storage.retention import apply_retention
from unstoppable.storage.segments import OPEN_SEGMENTS, Segment, SegmentCatalog, position_of

__all__ = ["Partition", "PartitionServices", "ByteRange", "ACKS", "OPEN_SEGMENTS", "Recovery"]

ACKS = ("written", "fsync")


class PartitionServices(NamedTuple):
    """What a partition uses of its log: the thread group commit, the
    flusher thread, ``writer()``, the C writer thread of pipelined appends,
    whether the log is read-only, and the current epoch of each producer id
    (``ProducerEpochs``, for fencing), and the log's bound on open
    partitions (``open_partitions.OpenPartitions``, or None for none)."""

    group_commit: object
    flusher: object
    writer: Callable
    readonly: bool = False
    producer_epochs: object = None
    open_partitions: object = None


class Partition:
    """One partition: dense 64-bit offsets from 0, appended and read.

    Obtained with ``topic.partition(i)``. Safe to use from several threads; any
    number of processes may open the same partition, and appends from all of
    them are serialized by an OS lock the kernel releases on death.

    ``recovery`` says what opening it had to do (a :class:`Recovery`);
    ``durability`` is its :class:`~unstoppable.storage.durability.DurableState`,
    which the group-commit drivers (the log's threads, a producer's event
    loop) share.
    """

    def __init__(self, topic: str, index: int, path: str, config, services: PartitionServices):
        self.topic = topic
        self.index = index
        self.path = path
        self._config = config
        self._config_source: Callable[[], object] | None = None  # Topic._disk_config
        self._services = services
        self._lock = threading.RLock()
        self._listeners: list[Callable[[], None]] = []
        self._producers = ProducerStateTable(services.producer_epochs)
        self._flock = None
        self._headfd = -1
        self._catalog = None
        self._durability = None
        # The log's bound on open partitions (storage/open_partitions.py):
        # ``_cold`` is its CLOCK mark, cleared by any use; ``_parked`` says
        # this partition let go of its descriptors (they open again on use).
        self._cold = False
        self._parked = False
        self._readonly = services.readonly
        if self._readonly:
            self._open_readonly()
            return
        os.makedirs(path, exist_ok=True)
        try:
            self._flock = AppendLock(os.path.join(path, "lock"), on_reopen=self._reopened)
            self._headfd = os.open(os.path.join(path, "head"),
                                   os.O_RDWR | os.O_CREAT | O_CLOEXEC, 0o644)
            with self._flock:
                # Allocate the head's blocks, not just its size: a store through
                # the mapping into a hole of a full file system raises SIGBUS,
                # and the guard would turn the head into private zero pages
                # other processes never see.
                os.posix_fallocate(self._headfd, 0, HEAD_FILE_SIZE)
                self._head = Head(self._headfd)
                self._close_head_fd()  # the mapping outlives the descriptor: one fewer per partition
                self._catalog = SegmentCatalog(path, f"{topic}/{index}", config, self._lock,
                                               self._flock, self._head)
                finish_swaps(path)  # a compaction's swap a crash interrupted
                self._catalog.on_open = self._reopened
                self.recovery = recover(self._head, self._catalog, config, topic)
        except BaseException as e:
            self._close_files()
            if isinstance(e, OSError) and is_disk_full(e):
                raise DiskFullError(e.errno, f"no space to open {self.topic}/{self.index}: "
                                             f"{os.strerror(e.errno)}") from None
            raise
        self._durability = DurableState(topic, index, path, self._lock, self._flock, self._head,
                                        self._catalog, self._state, self._locked_state)
        self._appender = Appender(topic, index, config, self._head, self._catalog,
                                  self._producers, self._flock, self._locked_state,
                                  self._after_roll, self._listeners, services.writer)
        self._durability.durable_end = self._head.read().ckpt_end_offset

    def _open_readonly(self) -> None:
        """Open without writing anything: the head is mapped copy-on-write
        (an in-memory one when the file is missing) and recovered in memory
        (storage/readonly.py)."""
        if not os.path.isdir(self.path):
            raise CorruptLogError(f"the directory of partition {self.topic}/{self.index} "
                                  f"is missing: {self.path}", topic=self.topic,
                                  partition=self.index)
        try:
            self._flock = AppendLock(os.path.join(self.path, "lock"), readonly=True,
                                     on_reopen=self._reopened)
            self._headfd = open_readonly(os.path.join(self.path, "head"), missing_ok=True,
                                         min_size=HEAD_FILE_SIZE)
            with self._flock:
                self._head = Head(self._headfd, private=True)
                self._close_head_fd()
                self._catalog = SegmentCatalog(self.path, f"{self.topic}/{self.index}",
                                               self._config, self._lock, self._flock,
                                               self._head)
                self._catalog.readonly = True
                self._catalog.on_open = self._reopened
                self.recovery = recover_readonly(self._head, self._catalog, self.topic)
        except BaseException:
            self._close_files()
            raise
        self._durability = DurableState(self.topic, self.index, self.path, self._lock,
                                        self._flock, self._head, self._catalog, self._state,
                                        self._locked_state)
        self._appender = None
        self._durability.durable_end = self._head.read().ckpt_end_offset

    @property
    def readonly(self) -> bool:
        """Whether the log was opened read-only: appends and retention raise
        ReadOnlyLogError, and nothing is written to the partition's files."""
        return self._readonly

    def _check_writable(self, what: str) -> None:
        if self._readonly:
            raise ReadOnlyLogError(f"cannot {what} partition {self.topic}/{self.index}: "
                                   f"the log is read-only ({self.path})")

    # ------------------------------------------------------------------ state

    def _locked_state(self):
        """The head's state, with both locks held: a head a writer left
        half-updated (an odd seqlock count) is rewritten whole from the files
        (in memory only, for a read-only log)."""
        st = self._head.read()
        if st is None:
            if self._readonly:
                return recover_readonly(self._head, self._catalog, self.topic,
                                        force_scan=True).state
            st = recover(self._head, self._catalog, self._config, self.topic,
                         force_scan=True).state
        return st

    def _state(self):
        st = self._head.read()
        if st is None:
            # A writer died between the two halves of a head update; whoever
            # takes the lock next rewrites it whole.
            with self._lock, self._flock:
                st = self._locked_state()
        return st

    def head_state(self):
        """head_state() -> HeadState

        A consistent snapshot of the partition's shared head (offsets, active
        segment, checkpoint): what ``verify()`` and tools read."""
        return self._state()

    @property
    def config(self):
        """The topic's settings (a ``TopicConfig``)."""
        return self._config

    def _reconfigure(self, config) -> None:
        """Use ``config`` (checked by ``Log.alter_topic``) from now on: the
        next append, roll, retention or cleaning follows it."""
        with self._lock:
            self._config = config
            if self._catalog is not None:
                self._catalog.reconfigure(config)
            if self._appender is not None:
                self._appender.reconfigure(config)

    def _refresh_config(self) -> None:
        """Take the topic's settings from topic.json when they changed there
        (``_config_source``, set by the Topic: a stat, and a read only after
        an alter). Retention and the cleaner call this before they delete
        anything, so no process deletes by a policy altered since it opened
        the topic."""
        source = self._config_source
        if source is not None:
            cfg = source()
            if cfg != self._config:
                self._reconfigure(cfg)

    @property
    def catalog(self) -> SegmentCatalog:
        """The partition's segments and what is known of the sealed ones."""
        self._cold = False
        return self._catalog

    @property
    def durability(self) -> DurableState:
        """The partition's :class:`~unstoppable.storage.durability.DurableState`."""
        self._cold = False
        return self._durability

    @property
    def closed(self) -> bool:
        """Whether the partition is closed (the log closed or the topic was deleted)."""
        return self._durability.closed

    @property
    def deleted(self) -> bool:
        """Whether the topic was deleted (by any process) while this was open."""
        st = self._head.read()
        return st is not None and bool(st.flags & HEAD_FLAG_DELETED)

    @property
    def _closed(self) -> bool:
        return self._durability.closed

    @_closed.setter
    def _closed(self, value: bool) -> None:
        self._durability.closed = value

    def _check_open(self):
        if self._cold:  # (the one cost of the open-partition bound on the hot paths)
            self._cold = False
        if self._durability.closed:
            raise LogClosedError(f"partition {self.topic}/{self.index} is closed")
        failed = self._durability.failed
        if failed is not None:
            raise UnstoppableError(
                f"partition {self.topic}/{self.index} failed earlier and refuses writes "
                f"until the log is reopened: {failed}") from failed

    @property
    def start_offset(self) -> int:
        """The first offset still held (it moves up when retention deletes segments)."""
        self._check_open()
        return self._state().start_offset

    @property
    def end_offset(self) -> int:
        """The next offset to be written (the high watermark)."""
        self._check_open()
        return self._state().end_offset

    @property
    def durable_offset(self) -> int:
        """Offsets below this one are known to be on stable storage (fsynced)."""
        self._check_open()
        return self._state().ckpt_end_offset

    @property
    def change_counter(self) -> int:
        """A number that changes whenever anything is appended, in any process."""
        return self._head.seq

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after each append made by this process (from the
        appending thread). Appends by other processes are seen by polling
        :attr:`change_counter`."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback`` (no error when it was not registered)."""
        try:
            self._listeners.remove(callback)
        except ValueError:
            pass

    # ------------------------------------------------------------------ reads

    def _wrap_corrupt(self, e: CorruptLogError, seg: Segment) -> CorruptLogError:
        return CorruptLogError(e.reason, topic=self.topic, partition=self.index,
                               segment=seg.path, position=e.position, offset=e.offset)

    def read(self, offset: int, max_records: int = 500, max_bytes: int = 1 << 20) -> list:
        """read(offset, max_records=500, max_bytes=1 MiB) -> list[Record]

        Records from ``offset`` on, at most ``max_records`` of them and about
        ``max_bytes`` bytes of batches (at least one record when any is there).
        An empty list means ``offset`` is the end. Keys and values are
        zero-copy memoryviews over the mapped segment, and every batch they come
        from has passed its CRC check.

        Raises OffsetOutOfRangeError below ``start_offset`` or past ``end_offset``.
        """
        self._check_open()
        offset = self._check_offset(offset)
        if max_records <= 0:
            raise ValueError(f"max_records must be positive, got {max_records}")
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        st = self._state()
        index = self.index

        def read(m, pos, limit, offset, gaps):
            return read_records(m, pos, limit, offset, max_records, max_bytes, self.topic,
                                index, gaps)[0]
        records, offset, seg = self._read_segments(offset, st, read)
        if not records and offset < st.end_offset:
            raise CorruptLogError("segment ends before the offsets its successor starts at",
                                  topic=self.topic, partition=self.index, segment=seg.path,
                                  offset=offset)
        return records

    def read_batches(self, offset: int, max_bytes: int = 1 << 20) -> list[RecordBatch]:
        """read_batches(offset, max_bytes=1 MiB) -> list[RecordBatch]

        Whole CRC-checked batches from the one holding ``offset`` (at least
        one, then up to ``max_bytes``), without creating a Python object per
        record. The first batch may start before ``offset``.
        """
        self._check_open()
        offset = self._check_offset(offset)
        index = self.index

        def read(m, pos, limit, offset, gaps):
            return read_batches(m, pos, limit, offset, max_bytes, self.topic, index, gaps)[0]
        return self._read_segments(offset, self._state(), read)[0]

    def _read_segments(self, offset: int, st, read) -> tuple:
        """``read(mapping, pos, limit, offset, gaps)`` on the segment holding
        ``offset``; when a compacted segment has nothing at or after it, on the
        next one. Returns (what read returned, the offset read from, the
        segment), or ([], end, None) at the end."""
        while True:
            if offset == st.end_offset:
                return [], offset, None
            seg = self._segment_for(offset, st)
            limit, oi_n, _ = self._catalog.limits(seg, st)
            gaps = self._catalog.gaps
            try:
                out = read(seg.data(limit), position_of(seg, offset, limit, oi_n, gaps), limit,
                           offset, gaps)
            except CorruptLogError as e:
                raise self._wrap_corrupt(e, seg) from None
            if out or not gaps:
                return out, offset, seg
            offset = self._after_gap(seg, st)  # compacted away up to the segment's end

    def _segment_for(self, offset: int, st) -> Segment:
        """The segment holding ``offset``; a find that ran out of descriptors
        parks idle partitions and tries once more (storage/open_partitions.py)."""
        try:
            return self._catalog.find(offset, st, self._state)
        except OSError as e:
            return self._find_again(e, offset, st)

    def _after_gap(self, seg: Segment, st) -> int:
        """Where reading goes on after a compacted segment that has nothing
        at or after the offset asked for: the next segment's base (or the end)."""
        if seg.base == st.active_base:
            return st.end_offset
        later = [b for b in self._catalog.bases if seg.base < b <= st.active_base]
        return later[0] if later else st.active_base

    def byte_range(self, offset: int, max_bytes: int) -> ByteRange | None:
        """byte_range(offset, max_bytes) -> ByteRange | None

        Where the whole batches from the one holding ``offset`` lie in their
        segment file, up to ``max_bytes`` (at least one batch), every batch
        checked but not decoded: what a Kafka fetch hands to ``sendfile``.
        None at the end. The details: :func:`unstoppable.storage.seek.byte_range`.
        """
        return seek.byte_range(self, offset, max_bytes)

    def _check_offset(self, offset) -> int:
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int, got {type(offset).__name__}")
        st = self._state()
        if offset < st.start_offset or offset > st.end_offset:
            raise OffsetOutOfRangeError(
                f"offset {offset} is outside {self.topic}/{self.index}'s range "
                f"[{st.start_offset}, {st.end_offset}]")
        return offset

    def offset_for_time(self, ts_ms: int) -> int | None:
        """The first offset whose record timestamp is >= ``ts_ms``, or None when
        every record is older. Uses the time indexes, then scans a few batches."""
        return seek.offset_for_time(self, ts_ms)

    # ---------------------------------------------------------------- appends

    def append(self, records: Iterable, *, timestamp: int | None = None, acks: str | None = None,
               producer_id: int = -1, producer_epoch: int = -1, base_sequence: int = -1,
               compression: str | None = None) -> int:
        """append(records, *, timestamp=None, acks=None, ...) -> int

        Append records and return the offset of the first. Each record is a
        bytes-like value, ``None``, a tuple ``(key, value[, headers[, timestamp]])``
        or a Record read from a log. ``timestamp`` (ms) applies to records
        without their own; it defaults to now.

        ``acks="written"`` (the default) returns once the bytes are in the OS
        page cache, which survives a crash of this process; ``acks="fsync"``
        returns after fdatasync, shared with every append waiting at that moment
        (group commit), which survives power loss.

        All records of one call become visible to readers at once, or not at all.

        ``compression`` (None, "gzip", "snappy", "lz4" or "zstd") compresses
        each batch written, unless the topic's ``compression`` setting names a
        codec of its own; readers decompress transparently.
        """
        acks = self._check_acks(acks)
        self._check_open()
        self._check_writable("append to")
        setting = self._config.compression
        codec = codec_id(compression if setting == "producer" else setting)
        if producer_id >= 0:
            if not 0 <= producer_epoch <= 0x7FFF:
                raise ValueError(f"producer_epoch must be in 0 .. 32767, got {producer_epoch}")
            if not 0 <= base_sequence < (1 << 31):
                raise ValueError(f"base_sequence must be in 0 .. 2**31-1, got {base_sequence}")
        ts = now_ms() if timestamp is None else timestamp
        if self._config.compacted:
            if not isinstance(records, (list, tuple)):
                records = list(records)
            refuse_keyless(records, self.topic)
        if producer_id < 0 and isinstance(records, (list, tuple)) and len(records) >= STREAM_MIN:
            with self._lock:
                try:
                    base, end = self._appender.append_stream(records, ts, codec=codec)
                except OSError as e:
                    self._raise_files_error(e, "appending to")
        else:
            with self._lock:
                enc = self._appender.encoder
                enc.clear()
                if enc.encode(records, ts, producer_id, producer_epoch, base_sequence) == 0:
                    return self._state().end_offset
                idem = None
                if producer_id >= 0:
                    if enc.batches != 1:
                        enc.clear()
                        raise ValueError(
                            "an idempotent append must fit in one batch "
                            f"(max_batch_bytes={self._config.max_batch_bytes})")
                    idem = (producer_id, producer_epoch, base_sequence, enc.records)
                if codec:
                    enc.compress(codec)
                try:
                    base, end = self._appender.write_encoded(enc, idem=idem)
                except OSError as e:
                    self._raise_files_error(e, "appending to")
                if enc.nbytes > (8 << 20):
                    enc.clear()
                    enc.shrink()
        if acks == "fsync":
            self.wait_durable(end)
        return base

    def append_encoded(self, encoder: BatchEncoder, *, acks: str | None = None,
                       producer: tuple[int, int, int] | None = None):
        """Write batches already encoded by ``encoder`` (offsets are assigned
        here). Returns ``(base, end)``.

        ``producer`` is ``(producer_id, producer_epoch, base_sequence)`` of an
        idempotent batch (``encoder`` must then hold exactly one): its
        sequence is checked against the partition's producer state as
        :meth:`append` checks it, and a retry of the last batches is answered
        with their original ``(base, end)``, unwritten.
        """
        acks = self._check_acks(acks)
        self._check_open()
        self._check_writable("append to")
        if self._config.compacted and encoder.records:
            refuse_keyless_encoded(encoder.view(), self.topic)
        idem = None
        if producer is not None:
            pid, epoch, seq = producer
            if encoder.batches != 1:
                raise ValueError(f"an idempotent append must be one batch, got {encoder.batches}")
            if not 0 <= epoch <= 0x7FFF:
                raise ValueError(f"producer_epoch must be in 0 .. 32767, got {epoch}")
            if not 0 <= seq < (1 << 31):
                raise ValueError(f"base_sequence must be in 0 .. 2**31-1, got {seq}")
            idem = (pid, epoch, seq, encoder.records)
        with self._lock:
            if encoder.records == 0:
                end = self._state().end_offset
                return end, end
            try:
                result = self._appender.write_encoded(encoder, idem=idem)
            except OSError as e:
                self._raise_files_error(e, "appending to")
        if acks == "fsync":
            self.wait_durable(result[1])
        return result

    def append_stream(self, source, encoders, *, timestamp: int | None = None,
                      acks: str | None = None) -> int:
        """Pipelined append of a large ``source`` (``len()`` and slicing into
        row ranges) encoded by a pair of ``encoders`` (BatchEncoder's clear,
        encode(rows, ts), nbytes, set_base_offset, view, max_timestamp), as
        the Arrow ingest does. All rows become visible at once, as with
        :meth:`append`. Returns the first offset."""
        acks = self._check_acks(acks)
        self._check_open()
        self._check_writable("append to")
        if len(source) == 0:
            return self._state().end_offset
        ts = now_ms() if timestamp is None else timestamp
        if self._config.compacted:
            encoders = keychecked(encoders, self.topic)
        with self._lock:
            try:
                base, end = self._appender.append_stream(source, ts, tuple(encoders))
            except OSError as e:
                self._raise_files_error(e, "appending to")
        if acks == "fsync":
            self.wait_durable(end)
        return base

    def append_arrow(self, table, *args, **kwargs) -> int:
        """Append the rows of a ``pyarrow.Table``, encoded in C from its
        buffers: :func:`unstoppable.arrow.append_arrow`. Returns the first offset."""
        from unstoppable import columnar  # registered by unstoppable.arrow, which builds on storage
        return columnar.implementation().append_arrow(self, table, *args, **kwargs)

    @staticmethod
    def _check_acks(acks):
        if acks is None:
            return "written"
        if acks not in ACKS:
            raise ValueError(f"acks must be one of {ACKS}, got {acks!r}")
        return acks

    def _after_roll(self, st) -> None:
        """After a roll (append lock held): retention, by the settings in
        topic.json now (another process may have altered them), and the
        flusher syncs the sealed segment."""
        self._refresh_config()
        apply_retention(st, self._head, self._catalog, self._config)
        self._services.flusher.submit(self)

    def producer_state(self, producer_id: int):
        """producer_state(producer_id) -> (epoch, next_sequence) | None

        Where an idempotent producer with this id continues: its epoch and the
        sequence its next batch must carry. None when it never wrote here.
        """
        self._check_open()
        with self._lock, self._flock:
            st = self._locked_state()
            self._producers.catch_up(self._catalog, st)
            return self._producers.state(producer_id)

    def enforce_retention(self) -> int:
        """Delete whole sealed segments past the topic's retention_bytes /
        retention_ms. Returns the number deleted. Never touches the active one."""
        self._check_open()
        self._check_writable("enforce retention on")
        self._refresh_config()
        with self._lock, self._flock:
            st = self._locked_state()
            return apply_retention(st, self._head, self._catalog, self._config)

    # ------------------------------------------------------------- durability

    def wait_durable(self, end_offset: int) -> None:
        """Block until every offset below ``end_offset`` is on stable storage.

        Group commit across the whole log: one waiting thread (the leader)
        syncs every partition that someone is waiting on, all at once, and the
        others sleep and share its result (see ``storage.durability``).
        """
        self._services.group_commit.wait(self.durability, end_offset)

    def when_durable(self, end_offset: int, callback) -> None:
        """Call ``callback(error)`` once every offset below ``end_offset`` is
        on stable storage (``error`` is None), or with the error that keeps
        it from getting there. The non-blocking form of :meth:`wait_durable`
        for event loops: it shares the log's group commit, and the callback
        runs on the log's sync thread, so it must only hand the result over
        (``loop.call_soon_threadsafe``)."""
        self._durability.check_written(end_offset)
        self._services.group_commit.request(self.durability, end_offset, callback)

    def flush(self) -> None:
        """fsync everything appended so far (in any process) and move the
        checkpoint. Nothing to do on a read-only log."""
        self._check_open()
        if self._readonly:
            return
        self.wait_durable(self._state().end_offset)

    # ------------------------------------------------------------------ close

    def close(self) -> None:
        """fsync what this partition holds (the clean-shutdown marker: the
        checkpoint reaches the end) and release files."""
        if self._durability.closed:
            return
        try:
            st = self._head.read()
            if self._durability.failed is None and st is not None and not self._readonly \
                    and not st.flags & HEAD_FLAG_DELETED:
                self.wait_durable(st.end_offset)
                self._give_back_reserved()
        finally:
            self._durability.closed = True
            self._forget()
            self._close_files()

    def abandon(self) -> None:
        """Close without syncing (the topic was deleted): release files."""
        self._durability.closed = True
        self._forget()
        self._close_files()

    def _forget(self) -> None:
        lru = self._services.open_partitions
        if lru is not None:
            lru.closed(self)

    # ------------------------------------- the log's bound on open partitions

    def _raise_files_error(self, e: OSError, doing: str) -> NoReturn:
        """Raise ``e``, as TooManyOpenFilesError naming the limit when it is
        EMFILE/ENFILE; then every idle partition of the log has let go of its
        files first, so that the next attempt can succeed."""
        err = too_many_open_files(e, f"{doing} partition {self.topic}/{self.index}")
        if err is None:
            raise e
        lru = self._services.open_partitions
        if lru is not None:
            lru.park_idle(keep=self)
        raise err from None

    def _find_again(self, e: OSError, offset: int, st) -> Segment:
        """A read that ran out of descriptors opening a segment: once more,
        with every idle partition's files let go."""
        lru = self._services.open_partitions
        if too_many_open_files(e, "") is None or lru is None or not lru.park_idle(keep=self):
            self._raise_files_error(e, "reading")
        try:
            return self._catalog.find(offset, st, self._state)
        except OSError as e2:
            self._raise_files_error(e2, "reading")
            raise

    def _reopened(self) -> None:
        """This partition opened a descriptor (a segment's files, its append
        lock): if it was parked, it counts as open again."""
        if self._parked:
            self._parked = False
            lru = self._services.open_partitions
            if lru is not None and not self._durability.closed:
                lru.opened(self)

    @property
    def parked(self) -> bool:
        """Whether this partition has let go of its descriptors to keep the
        log within ``max_open_partitions`` (it reopens them on next use)."""
        return self._parked

    def _give_back_reserved(self) -> None:
        """Release the blocks this process reserved past the active segment's
        data (ftruncate to the data size, under the append lock so no append
        is half done). Only an optimization: errors are ignored."""
        try:
            with self._lock, self._flock:
                st = self._head.read()
                if st is not None:
                    give_back_reserved(self._catalog.get_open(st.active_base), st)
        except OSError:
            pass

    def _close_head_fd(self) -> None:
        fd, self._headfd = self._headfd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def _close_files(self):
        if self._catalog is not None:
            self._catalog.close()
        if self._durability is not None:
            self._durability.close()
        self._close_head_fd()
        if self._flock is not None:
            try:
                self._flock.close()
            except OSError:
                pass

    def __repr__(self):
        ro = " read-only" if self._readonly else ""
        return f"<Partition {self.topic}/{self.index} at {self.path}{ro}>"

    # ------------------------------------------- numpy views (storage/index_views.py)

    def offset_index(self, segment: int | None = None):
        """offset_index(segment=None) -> IndexArray | PartitionIndex

        The offset index as a read-only numpy structured array (fields
        ``relative_offset``, ``position``; attribute ``base_offset``) over the
        mapped index file, never a copy: of the segment whose base offset is
        ``segment``, or with None a tuple of every segment's view. Needs numpy.
        """
        from unstoppable.storage import index_views
        return index_views.index_view(self, "offset", segment)

    def time_index(self, segment: int | None = None):
        """time_index(segment=None) -> IndexArray | PartitionIndex

        The time index as a read-only numpy structured array (fields
        ``timestamp``, ``relative_offset``, ``position``), like
        :meth:`offset_index`. Needs numpy.
        """
        from unstoppable.storage import index_views
        return index_views.index_view(self, "time", segment)

    def offsets_for_times(self, timestamps):
        """offsets_for_times(timestamps) -> numpy.ndarray[int64]

        :meth:`offset_for_time` of every timestamp (int milliseconds, or
        datetime64) in one call, in the input's shape; -1 where it is None.
        Needs numpy.
        """
        from unstoppable.storage import index_views
        return index_views.offsets_for_times(self, timestamps)
