"""The embedded log: a directory of topics, each a set of partitions.

Layout::

    <log>/unstoppable.json      {"format": "unstoppable-log", "version": 1}
    <log>/meta.lock             flock()ed while topics are created or deleted
    <log>/staging/              topics being created or deleted (renamed in/out whole)
    <log>/topics/<name>/topic.json
    <log>/topics/<name>/<partition>/...     (see storage/partition.py)
    <log>/groups/...            consumer-group state (client layer)
"""
from __future__ import annotations

import fcntl
import json
import os
import queue
import re
import shutil
import struct
import threading
import time
import uuid
import weakref
from dataclasses import asdict, dataclass, fields
from typing import Iterator

from unstoppable._core.segment import (
    HEAD_FLAG_DELETED,
    OFFSET_ENTRY_SIZE,
    OFFSET_MISMATCH,
    TIME_ENTRY_SIZE,
    Head,
    Writer,
    find_batch,
    sync_files,
    read_batches,
    scan,
)
from unstoppable.errors import (
    CorruptLogError,
    InvalidTopicNameError,
    LogClosedError,
    NotALogError,
    PartitionOutOfRangeError,
    TopicConfigError,
    TopicExistsError,
    UnknownTopicError,
    UnstoppableError,
    UnsupportedFormatError,
    corrupt_from_code,
)
from unstoppable.storage._fs import O_CLOEXEC, fsync_dir
from unstoppable.storage.partition import Partition, segment_stem

__all__ = ["Log", "Topic", "TopicConfig", "validate_topic_name", "VerifyReport"]

FORMAT_NAME = "unstoppable-log"
FORMAT_VERSION = 1
MARKER = "unstoppable.json"
_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")


def validate_topic_name(name) -> str:
    """Check a topic name the way Kafka does: 1-249 characters of
    ``[A-Za-z0-9._-]``, and not ``.`` or ``..``. Returns the name."""
    if not isinstance(name, str):
        raise InvalidTopicNameError(f"topic name must be a str, got {type(name).__name__}")
    if not name:
        raise InvalidTopicNameError("topic name is empty")
    if len(name) > 249:
        raise InvalidTopicNameError(f"topic name is {len(name)} characters long; the limit is 249")
    if name in (".", ".."):
        raise InvalidTopicNameError(f"topic name {name!r} is not allowed")
    if not _TOPIC_RE.fullmatch(name):
        bad = sorted({c for c in name if not re.fullmatch(r"[A-Za-z0-9._-]", c)})
        raise InvalidTopicNameError(
            f"topic name {name!r} contains {''.join(bad)!r}; only letters, digits, '.', '_' and '-' are allowed")
    return name


@dataclass(frozen=True)
class TopicConfig:
    """Per-topic settings, persisted in ``topic.json``.

    segment_bytes: roll the active segment when an append would pass this size.
    segment_ms: also roll when the active segment is older than this (None: never).
    retention_bytes: per partition, delete the oldest sealed segments while the
        partition is larger than this (None: keep everything).
    retention_ms: delete sealed segments whose newest record is older than this.
    index_interval_bytes: one sparse index entry per this many bytes of log.
    max_record_bytes: the largest encoded record accepted.
    max_batch_bytes: appends are split into batches of about this size
        (default: 1 MiB, or segment_bytes when that is smaller).
    """

    partitions: int = 1
    segment_bytes: int = 256 << 20
    segment_ms: int | None = None
    retention_bytes: int | None = None
    retention_ms: int | None = None
    index_interval_bytes: int = 4096
    max_record_bytes: int = 1 << 20
    max_batch_bytes: int = 1 << 20

    @classmethod
    def build(cls, partitions, config: dict) -> "TopicConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise TopicConfigError(
                f"unknown topic setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "max_batch_bytes" not in config and isinstance(config.get("segment_bytes"), int):
            config = {**config, "max_batch_bytes": min(cls.max_batch_bytes, config["segment_bytes"])}
        cfg = cls(partitions=partitions, **config)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def need_int(name, lo, hi, optional=False):
            v = getattr(self, name)
            if v is None and optional:
                return
            if isinstance(v, bool) or not isinstance(v, int):
                raise TopicConfigError(f"{name} must be an int, got {type(v).__name__}")
            if not lo <= v <= hi:
                raise TopicConfigError(f"{name} must be in {lo} .. {hi}, got {v}")

        need_int("partitions", 1, 100_000)
        need_int("segment_bytes", 4096, 1 << 30)
        need_int("segment_ms", 1, 1 << 62, optional=True)
        need_int("retention_bytes", 0, 1 << 62, optional=True)
        need_int("retention_ms", 0, 1 << 62, optional=True)
        need_int("index_interval_bytes", 1, 1 << 30)
        need_int("max_batch_bytes", 1024, 1 << 30)
        need_int("max_record_bytes", 16, 1 << 30)
        if self.max_batch_bytes > self.segment_bytes:
            raise TopicConfigError(
                f"max_batch_bytes ({self.max_batch_bytes}) must not exceed segment_bytes ({self.segment_bytes})")

    def settings(self) -> dict:
        d = asdict(self)
        d.pop("partitions")
        return d


def _write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


_COMMIT_DELAY_STEP = 0.0001   # s: wait this long for more partitions to join a sync
_COMMIT_DELAY_MAX = 0.001     # s: but never longer than this in all


_WAIT = object()  # a durability request that needs another round


class _GroupCommit:
    """Group commit for every partition of a log.

    A thread that needs durability registers (partition, end offset). If no
    sync is running it becomes the leader: it takes every registered
    partition, has the kernel start writing all their dirty segment files at
    once and then fdatasyncs them one by one (``sync_files``, without the
    GIL), and moves each checkpoint. Threads that arrive meanwhile wait and are covered by the
    next round. Measured here: 8 files of 13 KB took 2.3 ms as 8 plain
    fdatasyncs and 1.2 ms with the writeback started for all first.

    Event loops use :meth:`request` instead of blocking a thread each: a
    single syncer thread runs rounds back to back while requests are pending
    and answers them by callback.

    A failed fdatasync marks its partition failed for good (after a failed
    fsync the kernel may have dropped the dirty pages, so a retry could report
    success for lost data: PostgreSQL's "fsyncgate"). A failure before any
    fdatasync (opening or duplicating a segment's descriptor: EMFILE, say)
    fails only the waiters that round was for; a later request gets a new round.
    """

    def __init__(self):
        self._reset()
        _THREAD_OWNERS.add(self)

    def _reset(self) -> None:
        """Fresh state (also in a forked child, which has none of the
        parent's threads and may have inherited the lock held)."""
        self._cond = threading.Condition(threading.Lock())
        self._syncing = False
        self._pending: dict = {}
        # Asynchronous waiters (request()): [partition, end_offset, callback],
        # served by one syncer thread that runs rounds back to back while any
        # are pending, so an event loop never parks a thread per flush.
        self._requests: list = []
        self._syncer: threading.Thread | None = None
        self._stopping = False
        # Rounds are numbered as they start. A request registered while round
        # k runs (or after it) is served by round k+1 or later, so a round
        # that could not even start syncing a partition (_plan_errors:
        # partition -> (round, error)) fails just the requests before it.
        self._round_no = 0
        self._plan_errors: dict = {}

    def request(self, partition: Partition, end_offset: int, callback) -> None:
        """Call ``callback(error)`` (``None`` on success) once every offset of
        ``partition`` below ``end_offset`` is on stable storage, or it can no
        longer get there. The callback runs on a sync thread (or right here
        when nothing is left to do); it must be quick and must not block."""
        with self._cond:
            reg = self._round_no
            err = self._outcome(partition, end_offset, reg)
            if err is _WAIT:
                self._requests.append((partition, end_offset, callback, reg))
                if self._syncer is None:
                    self._syncer = threading.Thread(target=self._run_syncer,
                                                    name="unstoppable-sync", daemon=True)
                    self._syncer.start()
                elif not self._syncing:
                    self._cond.notify_all()
                return
        callback(err)

    def _outcome(self, partition, end_offset, reg):
        """(Lock held.) None when the offsets are durable, the error when they
        never will be or the round for them failed, or _WAIT. ``reg`` is the
        round number when the request was made."""
        if partition._durable_end >= end_offset:
            return None
        if partition._failed is not None or partition._closed or self._stopping:
            return self._why_not(partition, end_offset)
        pe = self._plan_errors.get(partition)
        if pe is not None and pe[0] > reg:
            return self._not_synced(partition, pe[1])
        return _WAIT

    @staticmethod
    def _not_synced(partition, cause):
        """The error for waiters of a round that could not start syncing
        ``partition`` (``cause``: EMFILE, say); the partition is not failed."""
        e = UnstoppableError(
            f"could not sync {partition.topic}/{partition.index} (the records are "
            f"written, not known durable): {cause}")
        e.__cause__ = cause
        return e

    @staticmethod
    def _why_not(partition, end_offset):
        if partition._failed is not None:
            e = UnstoppableError(f"fsync of {partition.topic}/{partition.index} failed")
            e.__cause__ = partition._failed
            return e
        return LogClosedError(
            f"partition {partition.topic}/{partition.index} was closed before "
            f"offset {end_offset} was known durable")

    def _take_answered(self) -> list:
        """(lock held) Remove and return the requests that have their answer."""
        if not self._requests:
            return []
        done, keep = [], []
        for req in self._requests:
            err = self._outcome(req[0], req[1], req[3])
            if err is _WAIT:
                keep.append(req)
            else:
                done.append((req[2], err))
        self._requests = keep
        return done

    @staticmethod
    def _answer(done) -> None:
        for cb, err in done:
            try:
                cb(err)
            except Exception:  # a callback's bug must not stop the sync thread
                import traceback
                traceback.print_exc()

    def _run_syncer(self) -> None:
        cond = self._cond
        cond.acquire()
        try:
            while True:
                done = self._take_answered()
                if done:
                    cond.release()
                    try:
                        self._answer(done)
                    finally:
                        cond.acquire()
                    continue
                if self._stopping and not self._requests:
                    return
                if not self._requests or self._syncing:
                    cond.wait()
                    continue
                # Requests need a round and none is running: run one now. No
                # commit delay: whatever is written while this round runs
                # joins the next one, which starts as soon as this one ends.
                # (What they need goes into _pending here, not at request():
                # a blocking leader's round may have taken it since.)
                for part, end, _, _ in self._requests:
                    self._pending[part] = max(self._pending.get(part, 0), end)
                self._round()
        finally:
            cond.release()

    def stop(self) -> None:
        """Answer every request (closed partitions get LogClosedError) and end
        the syncer thread."""
        with self._cond:
            self._stopping = True
            t = self._syncer
            self._cond.notify_all()
        if t is not None and t is not threading.current_thread():
            t.join()
        with self._cond:
            done = self._take_answered()
        self._answer(done)

    def wait(self, partition: Partition, end_offset: int) -> None:
        cond = self._cond
        with cond:
            reg = self._round_no
            while partition._durable_end < end_offset:
                # Failed for good, closed under us (topic deleted or log
                # closed), or the round for these offsets failed before
                # syncing: say so instead of waiting forever.
                err = self._outcome(partition, end_offset, reg)
                if err is not _WAIT:
                    raise err
                self._pending[partition] = max(self._pending.get(partition, 0), end_offset)
                if self._syncing:
                    cond.wait()
                    continue
                self._syncing = True
                # Commit delay: while other partitions keep arriving (flushes
                # started together, each from its own thread), give them a
                # moment to join this round; alone, this costs one short wait.
                deadline = time.monotonic() + _COMMIT_DELAY_MAX
                seen = len(self._pending)
                while True:
                    cond.wait(_COMMIT_DELAY_STEP)
                    if len(self._pending) == seen or time.monotonic() > deadline:
                        break
                    seen = len(self._pending)
                self._round()

    def _round(self) -> None:
        """(Lock held.) Sync every pending partition, with the lock released
        meanwhile; then wake every waiter (the syncer thread answers the
        asynchronous requests)."""
        self._syncing = True
        self._round_no += 1
        no = self._round_no
        batch = list(self._pending)
        self._pending.clear()
        self._cond.release()
        errors = {}
        try:
            self._sync(batch, errors)
        finally:
            self._cond.acquire()
            for p, e in errors.items():
                self._plan_errors[p] = (no, e)
            self._syncing = False
            self._cond.notify_all()

    @staticmethod
    def _sync(partitions, errors: dict) -> None:
        plans = []
        for p in partitions:
            if p._failed is not None or p._closed:
                continue
            try:
                plan = p._sync_plan()
            except Exception as e:
                # Nothing was fdatasync'ed: no fsyncgate here, only this round fails.
                errors[p] = e
                continue
            if plan is None:
                p._durable_end = max(p._durable_end, p._state().end_offset)
            else:
                plans.append((p, plan[0], plan[1]))
        all_fds = [fd for _, _, fds in plans for fd in fds]
        try:
            # close=True: the duplicates are closed in the same GIL-free call.
            errs = iter(sync_files(all_fds, True))
        except BaseException:
            for fd in all_fds:  # it raised before touching them
                os.close(fd)
            raise
        for p, st, fds in plans:
            p._sync_result(st, [next(errs) for _ in fds])


# Objects that own a thread and its lock: a forked child has none of the
# parent's threads, and a lock one of them held at the fork would never be
# released there, so each starts over (``_reset``) in the child. The parent's
# pending requests belong to its own event loops and stay with it.
_THREAD_OWNERS: "weakref.WeakSet" = weakref.WeakSet()


def _reset_thread_owners_in_child() -> None:
    for owner in list(_THREAD_OWNERS):
        owner._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_thread_owners_in_child)


class _Flusher:
    """One background thread per log that fsyncs segments sealed by a roll and
    moves their partition's recovery checkpoint past them, so recovery after a
    power loss never has to rescan more than about the active segment."""

    def __init__(self):
        self._reset()
        _THREAD_OWNERS.add(self)

    def _reset(self) -> None:
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, partition: Partition) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="unstoppable-flusher",
                                                daemon=True)
                self._thread.start()
        self._q.put(partition)

    def _run(self) -> None:
        while True:
            p = self._q.get()
            if p is None:
                return
            try:
                if not p._closed:
                    p.flush()
            except Exception:
                # The partition records fsync failures itself (and refuses
                # further writes); a closed partition needs nothing.
                pass

    def stop(self) -> None:
        with self._lock:
            t, self._thread = self._thread, None
        if t is not None:
            self._q.put(None)
            t.join()


class Log:
    """Log(path, *, create=True)

    Open (or create) an embedded, durable, partitioned event log in the
    directory ``path``. Any number of processes may open the same directory.
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path, *, create: bool = True):
        self.path = os.path.abspath(os.fspath(path))
        self._closed = False
        self._topics: dict[str, Topic] = {}
        self._lock = threading.RLock()
        self._flusher = _Flusher()
        self._group_commit = _GroupCommit()
        self._writer_pool = None
        self._writer_pid = -1
        self._open_dir(create)
        self._topics_dir = os.path.join(self.path, "topics")
        # Topics are built and torn down in staging/, outside topics/, and
        # renamed in or out in one step; a crash leaves debris only there.
        self._staging_dir = os.path.join(self.path, "staging")
        os.makedirs(self._staging_dir, exist_ok=True)
        self._meta_lock_fd = os.open(os.path.join(self.path, "meta.lock"),
                                     os.O_RDWR | os.O_CREAT | O_CLOEXEC, 0o644)
        with self._meta_locked():
            for leftover in os.listdir(self._staging_dir):
                shutil.rmtree(os.path.join(self._staging_dir, leftover), ignore_errors=True)

    def _open_dir(self, create: bool) -> None:
        marker = os.path.join(self.path, MARKER)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise NotALogError(f"{self.path} exists and is not a directory")
        if not os.path.exists(self.path):
            if not create:
                raise NotALogError(f"no log at {self.path}")
            os.makedirs(self.path, exist_ok=True)
        if os.path.exists(marker):
            try:
                with open(marker) as f:
                    meta = json.load(f)
            except (OSError, ValueError) as e:
                raise NotALogError(f"{marker} is unreadable: {e}") from None
            if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
                raise NotALogError(f"{marker} does not describe an unstoppable log")
            version = meta.get("version")
            if not isinstance(version, int) or version > FORMAT_VERSION:
                raise UnsupportedFormatError(
                    f"{self.path} was written by log format version {version!r}; this "
                    f"library reads version {FORMAT_VERSION} (upgrade unstoppable)")
            if version < 1:
                raise UnsupportedFormatError(f"{self.path}: invalid format version {version!r}")
            os.makedirs(os.path.join(self.path, "topics"), exist_ok=True)
            return
        entries = [e for e in os.listdir(self.path) if e != "meta.lock"]
        if entries:
            raise NotALogError(
                f"{self.path} is not empty and has no {MARKER}; refusing to treat it as a log")
        if not create:
            raise NotALogError(f"no log at {self.path}")
        os.makedirs(os.path.join(self.path, "topics"), exist_ok=True)
        _write_json_atomic(marker, {"format": FORMAT_NAME, "version": FORMAT_VERSION})
        fsync_dir(self.path)

    # ---------------------------------------------------------------- helpers

    def _writer(self) -> Writer:
        """The C thread that writes chunks of pipelined appends (started on first use)."""
        with self._lock:
            if self._writer_pool is None or self._writer_pid != os.getpid():
                # (In a forked child the parent's writer thread does not exist:
                # start another, and leave the copy alone.)
                self._writer_pool = Writer()
                self._writer_pid = os.getpid()
            return self._writer_pool

    def _check_open(self):
        if self._closed:
            raise LogClosedError(f"log {self.path} is closed")

    def _meta_locked(self):
        log = self

        class _Ctx:
            def __enter__(self):
                fcntl.flock(log._meta_lock_fd, fcntl.LOCK_EX)

            def __exit__(self, *exc):
                fcntl.flock(log._meta_lock_fd, fcntl.LOCK_UN)

        return _Ctx()

    def _topic_dir(self, name: str) -> str:
        return os.path.join(self._topics_dir, validate_topic_name(name))

    @staticmethod
    def _read_topic_json(tdir: str, name: str) -> TopicConfig:
        path = os.path.join(tdir, "topic.json")
        try:
            with open(path) as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise UnknownTopicError(f"unknown topic {name!r}") from None
        except ValueError as e:
            raise CorruptLogError(f"{path} is not valid JSON: {e}", topic=name) from None
        version = meta.get("version")
        if version != FORMAT_VERSION:
            raise UnsupportedFormatError(f"topic {name!r} has format version {version!r}")
        try:
            return TopicConfig.build(meta["partitions"], meta["config"])
        except (KeyError, TypeError, TopicConfigError) as e:
            raise CorruptLogError(f"{path} holds an invalid configuration: {e}", topic=name) from None

    # ----------------------------------------------------------------- topics

    def create_topic(self, name: str, partitions: int = 1, **config) -> "Topic":
        """create_topic(name, partitions=1, **config) -> Topic

        Create a topic, or return the existing one when its configuration is
        the same. A different configuration raises TopicExistsError. See
        :class:`TopicConfig` for the settings.
        """
        self._check_open()
        validate_topic_name(name)
        cfg = TopicConfig.build(partitions, config)
        tdir = self._topic_dir(name)
        with self._lock, self._meta_locked():
            if os.path.exists(os.path.join(tdir, "topic.json")):
                existing = self._read_topic_json(tdir, name)
                if existing != cfg:
                    diff = {k: (getattr(existing, k), getattr(cfg, k))
                            for k in asdict(cfg) if getattr(existing, k) != getattr(cfg, k)}
                    raise TopicExistsError(
                        f"topic {name!r} exists with a different configuration: "
                        + ", ".join(f"{k}={a!r} (asked {b!r})" for k, (a, b) in diff.items()))
                return self.topic(name)
            tmp = os.path.join(self._staging_dir, f"creating-{uuid.uuid4().hex}")
            os.makedirs(tmp)
            try:
                for i in range(cfg.partitions):
                    os.makedirs(os.path.join(tmp, str(i)))
                _write_json_atomic(os.path.join(tmp, "topic.json"), {
                    "version": FORMAT_VERSION, "name": name, "partitions": cfg.partitions,
                    "config": cfg.settings(), "created_ms": time.time_ns() // 1_000_000})
                for i in range(cfg.partitions):
                    fsync_dir(os.path.join(tmp, str(i)))
                fsync_dir(tmp)
                if os.path.exists(tdir):  # a leftover without topic.json
                    shutil.rmtree(tdir)
                os.rename(tmp, tdir)
                fsync_dir(self._topics_dir)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return self.topic(name)

    def topic(self, name: str) -> "Topic":
        """topic(name) -> Topic; raises UnknownTopicError."""
        self._check_open()
        if not isinstance(name, str):
            validate_topic_name(name)  # InvalidTopicNameError, not the dict lookup's TypeError
        with self._lock:
            t = self._topics.get(name)
            if t is not None and not t._deleted():
                return t
            if t is not None:
                t._close(flush=False)
                del self._topics[name]
            tdir = self._topic_dir(name)
            cfg = self._read_topic_json(tdir, name)
            t = Topic(self, name, tdir, cfg)
            self._topics[name] = t
            return t

    def topics(self) -> list[str]:
        """Names of all topics, sorted."""
        self._check_open()
        out = []
        for name in os.listdir(self._topics_dir):
            if _TOPIC_RE.fullmatch(name) and name not in (".", "..") and \
                    os.path.exists(os.path.join(self._topics_dir, name, "topic.json")):
                out.append(name)
        return sorted(out)

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in self.topics()

    def delete_topic(self, name: str) -> None:
        """Delete a topic and all its data. Processes that still have it open
        get UnknownTopicError on their next append."""
        self._check_open()
        tdir = self._topic_dir(name)
        with self._lock, self._meta_locked():
            cfg = self._read_topic_json(tdir, name)
            # Mark every partition deleted under its append lock, so no other
            # process can append into files that are about to disappear.
            for i in range(cfg.partitions):
                pdir = os.path.join(tdir, str(i))
                hp = os.path.join(pdir, "head")
                if not os.path.exists(hp):
                    continue
                lfd = os.open(os.path.join(pdir, "lock"), os.O_RDWR | os.O_CREAT | O_CLOEXEC, 0o644)
                hfd = os.open(hp, os.O_RDWR | O_CLOEXEC)
                try:
                    fcntl.flock(lfd, fcntl.LOCK_EX)
                    if os.fstat(hfd).st_size >= 4096:
                        head = Head(hfd)
                        st = head.read()
                        if st is not None and head.valid():
                            st.flags |= HEAD_FLAG_DELETED
                            head.write(st)
                        del head
                finally:
                    os.close(hfd)
                    os.close(lfd)  # closing drops the flock
            trash = os.path.join(self._staging_dir, f"deleted-{uuid.uuid4().hex}")
            os.rename(tdir, trash)
            fsync_dir(self._topics_dir)
            t = self._topics.pop(name, None)
            if t is not None:
                t._close(flush=False)
            shutil.rmtree(trash, ignore_errors=True)

    # -------------------------------------------------------------- lifecycle

    def flush(self) -> None:
        """fsync every open partition."""
        self._check_open()
        for t in list(self._topics.values()):
            t.flush()

    def enforce_retention(self) -> int:
        """Apply every topic's retention now; returns the number of segments deleted."""
        self._check_open()
        return sum(self.topic(n).enforce_retention() for n in self.topics())

    def verify(self, progress=None) -> "VerifyReport":
        """Check every batch of every segment (CRC, framing, dense offsets,
        record parsing) and every index entry, without changing anything.
        ``progress(done_bytes, total_bytes)`` is called as it goes."""
        self._check_open()
        return _verify(self, progress)

    def close(self) -> None:
        """fsync and close every open topic. The log is unusable afterwards."""
        if self._closed:
            return
        first = None
        try:
            self._flusher.stop()
            if self._writer_pool is not None and self._writer_pid == os.getpid():
                self._writer_pool.close()
            for t in list(self._topics.values()):
                try:
                    t._close(flush=True)
                except BaseException as e:  # close the rest, then report
                    first = first or e
            if first is not None:
                raise first
        finally:
            self._group_commit.stop()
            self._topics.clear()
            self._closed = True
            try:
                os.close(self._meta_lock_fd)
            except OSError:
                pass

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Log":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self):
        return f"<Log {self.path}{' closed' if self._closed else ''}>"


class Topic:
    """A named, partitioned stream of records. Obtained from ``Log.create_topic``
    or ``Log.topic``."""

    def __init__(self, log: Log, name: str, path: str, config: TopicConfig):
        self._log = log
        self.name = name
        self.path = path
        self.config = config
        self._partitions: list[Partition | None] = [None] * config.partitions
        self._plock = threading.Lock()
        # Open (and recover) every partition now: opening a topic brings each
        # partition to its last valid batch.
        for i in range(config.partitions):
            self.partition(i)

    @property
    def partitions(self) -> int:
        """Number of partitions."""
        return self.config.partitions

    def partition(self, i: int) -> Partition:
        """partition(i) -> Partition"""
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"partition must be an int, got {type(i).__name__}")
        if not 0 <= i < self.config.partitions:
            raise PartitionOutOfRangeError(
                f"topic {self.name!r} has partitions 0 .. {self.config.partitions - 1}, not {i}")
        p = self._partitions[i]
        if p is None:
            with self._plock:
                p = self._partitions[i]
                if p is None:
                    self._log._check_open()
                    p = Partition(self, i, os.path.join(self.path, str(i)), self.config)
                    self._partitions[i] = p
        return p

    def __iter__(self) -> Iterator[Partition]:
        return (self.partition(i) for i in range(self.config.partitions))

    def _deleted(self) -> bool:
        p = self._partitions[0]
        if p is None or p._closed:
            return not os.path.exists(os.path.join(self.path, "topic.json"))
        st = p._head.read()
        return st is not None and bool(st.flags & HEAD_FLAG_DELETED)

    def end_offsets(self) -> list[int]:
        return [p.end_offset for p in self]

    def start_offsets(self) -> list[int]:
        return [p.start_offset for p in self]

    def offsets_for_time(self, ts_ms: int) -> list[int | None]:
        return [p.offset_for_time(ts_ms) for p in self]

    def to_arrow(self, *args, **kwargs):
        """A range of this topic as a ``pyarrow.Table``: :func:`unstoppable.arrow.to_arrow`."""
        from unstoppable import columnar  # registered by unstoppable.arrow, which builds on storage
        return columnar.implementation().to_arrow(self, *args, **kwargs)

    def to_batches(self, *args, **kwargs):
        """A range of this topic as a ``pyarrow.RecordBatchReader``: :func:`unstoppable.arrow.to_batches`."""
        from unstoppable import columnar  # registered by unstoppable.arrow, which builds on storage
        return columnar.implementation().to_batches(self, *args, **kwargs)

    def append_arrow(self, table, *args, **kwargs) -> dict[int, int]:
        """Append a ``pyarrow.Table``, split over the partitions: :func:`unstoppable.arrow.append_arrow`."""
        from unstoppable import columnar  # registered by unstoppable.arrow, which builds on storage
        return columnar.implementation().append_arrow(self, table, *args, **kwargs)

    def flush(self) -> None:
        for p in self._partitions:
            if p is not None and not p._closed:
                p.flush()

    def enforce_retention(self) -> int:
        return sum(p.enforce_retention() for p in self)

    def _close(self, flush: bool) -> None:
        """Close every partition; the first error is raised after all are closed."""
        first = None
        for p in self._partitions:
            if p is None:
                continue
            try:
                if flush:
                    p.close()
                else:
                    p._closed = True
                    p._close_files()
            except BaseException as e:  # keep closing the others
                first = first or e
        if first is not None:
            raise first

    def __repr__(self):
        return f"<Topic {self.name!r} partitions={self.config.partitions}>"


# ---------------------------------------------------------------------------
# verify()

class VerifyReport:
    """Result of :meth:`Log.verify`: counts, plus every problem found."""

    def __init__(self):
        self.topics = 0
        self.partitions = 0
        self.segments = 0
        self.batches = 0
        self.records = 0
        self.bytes = 0
        self.problems: list[CorruptLogError] = []

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {
            "ok": self.ok, "topics": self.topics, "partitions": self.partitions,
            "segments": self.segments, "batches": self.batches, "records": self.records,
            "bytes": self.bytes,
            "problems": [{"reason": p.reason, "topic": p.topic, "partition": p.partition,
                          "segment": p.segment, "position": p.position, "offset": p.offset}
                         for p in self.problems],
        }

    def __repr__(self):
        return (f"VerifyReport(ok={self.ok}, segments={self.segments}, batches={self.batches}, "
                f"records={self.records}, problems={len(self.problems)})")


def _verify(log: Log, progress) -> VerifyReport:
    rep = VerifyReport()
    work = []
    for name in log.topics():
        t = log.topic(name)
        rep.topics += 1
        for p in t:
            rep.partitions += 1
            st = p._state()
            p._refresh_segments(st)
            for b in list(p._bases):
                if b > st.active_base:
                    break  # rolled meanwhile (by another thread): past this view
                if b == st.active_base:
                    limit = st.active_size
                else:
                    try:
                        limit = os.stat(segment_stem(p.path, b) + ".log").st_size
                    except FileNotFoundError:
                        continue  # removed by retention meanwhile
                work.append((t, p, b, limit, st))
    total = sum(w[3] for w in work)
    done = 0
    # One segment open at a time (a partition keeps only OPEN_SEGMENTS open).
    for t, p, b, limit, st in work:
        try:
            seg = p._segment(b)
        except FileNotFoundError:
            continue
        rep.segments += 1
        where = dict(topic=t.name, partition=p.index, segment=seg.path)
        if limit:
            m = seg.data(limit)
            # Framing, CRC and dense offsets of every batch...
            r = scan(m, 0, limit, seg.base)
            rep.batches += r.batches
            if r.position != limit:
                reason = ("batch offsets are not consecutive" if r.code == OFFSET_MISMATCH
                          else corrupt_from_code(r.code).reason)
                rep.problems.append(CorruptLogError(
                    reason, position=r.position,
                    offset=r.bad_offset if r.bad_offset >= 0 else r.next_offset, **where))
            # ...then every record of the valid part must parse.
            pos = 0
            while pos < r.position:
                try:
                    batches, npos = read_batches(m, pos, r.position, -1, 16 << 20, t.name, p.index)
                except CorruptLogError as e:
                    rep.problems.append(CorruptLogError(e.reason, position=e.position,
                                                        offset=e.offset, **where))
                    break
                rep.records += sum(len(b) for b in batches)
                if npos == pos:
                    break
                pos = npos
            _verify_index(seg, m, limit, rep, where, st, b_active=(seg.base == st.active_base))
        rep.bytes += limit
        done += limit
        if progress is not None:
            progress(done, total)
    return rep


def _read_entries(fd: int, n: int, size: int, rep, where: dict) -> bytes:
    """The first ``n`` entries of an index file; a file that turns out
    shorter (cut by someone, or shrinking while we read) is reported, and the
    whole entries it does hold are returned."""
    data = os.pread(fd, n * size, 0)
    if len(data) < n * size:
        rep.problems.append(CorruptLogError(
            f"index file holds {len(data) // size} whole entries of the {n} expected",
            position=len(data), **where))
        data = data[:len(data) - len(data) % size]
    return data


def _verify_index(seg, m, valid_end, rep, where, st, b_active):
    """Index entries must name real batch starts (checked by walking headers,
    so damage inside a batch is reported once, by the batch scan)."""
    if b_active:
        oi_n, ti_n = st.oi_count, st.ti_count
    else:
        oi_n = os.fstat(seg.oi_fd).st_size // OFFSET_ENTRY_SIZE
        ti_n = os.fstat(seg.ti_fd).st_size // TIME_ENTRY_SIZE
    oi_where = {**where, "segment": where["segment"][:-4] + ".index"}
    ti_where = {**where, "segment": where["segment"][:-4] + ".timeindex"}
    if oi_n:
        data = _read_entries(seg.oi_fd, oi_n, OFFSET_ENTRY_SIZE, rep, oi_where)
        for i, (rel, pos) in enumerate(struct.iter_unpack("<II", data)):
            ok = pos < valid_end
            if ok:
                try:
                    ok = find_batch(m, pos, valid_end, seg.base + rel) == pos and \
                        struct.unpack_from("<q", m, pos)[0] == seg.base + rel
                except CorruptLogError:
                    ok = False
            if not ok:
                rep.problems.append(CorruptLogError(
                    f"offset index entry {i} (relative offset {rel}, position {pos}) does not "
                    "point at the batch it names", offset=seg.base + rel, position=pos,
                    **oi_where))
                break
    if ti_n:
        data = _read_entries(seg.ti_fd, ti_n, TIME_ENTRY_SIZE, rep, ti_where)
        prev = None
        for i, (ts, rel, pos) in enumerate(struct.iter_unpack("<qII", data)):
            ok = pos < valid_end and (prev is None or (ts >= prev[0] and rel > prev[1]))
            if ok:
                try:
                    ok = struct.unpack_from("<q", m, pos)[0] == seg.base + rel
                except (struct.error, ValueError):
                    ok = False
            if not ok:
                rep.problems.append(CorruptLogError(
                    f"time index entry {i} (timestamp {ts}, position {pos}) is inconsistent",
                    offset=seg.base + rel, position=pos, **ti_where))
                break
            prev = (ts, rel)
