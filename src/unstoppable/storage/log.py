"""The embedded log: a directory of topics, each a set of partitions.

Layout::

    <log>/unstoppable.json      {"format": "unstoppable-log", "version": 2}
    <log>/meta.lock             flock()ed while topics are created or deleted
    <log>/staging/              topics being created or deleted (renamed in/out whole)
    <log>/topics/<name>/topic.json
    <log>/topics/<name>/<partition>/...     (see storage/partition.py)
    <log>/groups/...            consumer-group state (storage/groups.py)

The directory itself (marker, staging, topic.json) is storage/admin.py's; the
group commit and the flusher thread are storage/durability.py's; verify() is
storage/verify.py's.
"""
from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import Iterator

from unstoppable._core.segment import Writer
from unstoppable._names import validate_topic_name
from unstoppable.errors import (
    CorruptLogError,
    InvalidPartitionsError,
    LogClosedError,
    PartitionOutOfRangeError,
    ReadOnlyLogError,
    TopicConfigError,
    TopicExistsError,
    UnknownTopicError,
    too_many_open_files,
)
from unstoppable.storage import admin
from unstoppable.storage._fs import Flock
from unstoppable.storage.compaction import BackgroundCleaner, CleanResult, clean_partition
from unstoppable.storage.durability import Flusher, ThreadCommitter
from unstoppable.storage.open_partitions import OpenPartitions
from unstoppable.storage.partition import Partition, PartitionServices
from unstoppable.storage.producer_ids import ProducerEpochs
from unstoppable.storage.verify import VerifyReport, verify

__all__ = ["Log", "Topic", "TopicConfig", "validate_topic_name", "VerifyReport"]

FORMAT_NAME = admin.FORMAT_NAME
FORMAT_VERSION = admin.FORMAT_VERSION
MARKER = admin.MARKER


_COMPRESSION_SETTINGS = ("producer", None, "none", "gzip", "snappy", "lz4", "zstd")


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
    compression: the codec of the batches appends write: "producer" (the
        default) keeps what each writer asks for (``append(compression=...)``,
        ``Producer(compression=...)``), as Kafka's ``compression.type=producer``;
        None, "gzip", "snappy", "lz4" or "zstd" applies to every append that
        the log encodes. Batches handed over already encoded
        (``append_encoded``) are stored as they are.
    message_timestamp_type: "CreateTime" (the default: a record keeps the
        timestamp its writer gave it) or "LogAppendTime" (Kafka's
        ``message.timestamp.type``): every batch appended is stamped with the
        time of its append (attribute bit 3 and maxTimestamp, docs/FORMAT.md
        4.1), which readers, the time index and ``offset_for_time`` then take
        as each of its records' timestamp.
    message_timestamp_before_max_ms, message_timestamp_after_max_ms: how far
        before / after the clock a record's timestamp may be when a Kafka
        client produces it through ``unstoppable serve`` (Kafka's topic
        configs of these names; INVALID_TIMESTAMP otherwise). None: the
        server's ``--message-timestamp-*-max-ms``. Ignored for LogAppendTime
        topics, as in Kafka; appends through the Python API are not checked.
    """

    partitions: int = 1
    segment_bytes: int = 256 << 20
    segment_ms: int | None = None
    retention_bytes: int | None = None
    retention_ms: int | None = None
    index_interval_bytes: int = 4096
    max_record_bytes: int = 1 << 20
    max_batch_bytes: int = 1 << 20
    compression: str | None = "producer"
    cleanup_policy: str = "delete"
    min_compaction_lag_ms: int = 0
    delete_retention_ms: int = 86_400_000
    min_cleanable_dirty_ratio: float = 0.5
    message_timestamp_type: str = "CreateTime"
    message_timestamp_before_max_ms: int | None = None
    message_timestamp_after_max_ms: int | None = None

    @property
    def log_append_time(self) -> bool:
        """Whether appends stamp batches with their append time (LogAppendTime)."""
        return self.message_timestamp_type == "LogAppendTime"

    @property
    def compacted(self) -> bool:
        """Whether the cleaner compacts this topic (``cleanup_policy`` has "compact")."""
        return "compact" in self.cleanup_policy.split(",")

    @property
    def deletes(self) -> bool:
        """Whether retention deletes old segments (``cleanup_policy`` has "delete")."""
        return "delete" in self.cleanup_policy.split(",")

    @classmethod
    def build(cls, partitions, config: dict) -> "TopicConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise TopicConfigError(
                f"unknown topic setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "max_batch_bytes" not in config and isinstance(config.get("segment_bytes"), int):
            config = {**config, "max_batch_bytes": min(cls.max_batch_bytes, config["segment_bytes"])}
        if "cleanup_policy" in config:
            config = {**config, "cleanup_policy": normalize_cleanup_policy(config["cleanup_policy"])}
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
        if self.compression not in _COMPRESSION_SETTINGS:
            raise TopicConfigError(
                f"compression must be one of {', '.join(map(repr, _COMPRESSION_SETTINGS))}, "
                f"got {self.compression!r}")
        normalize_cleanup_policy(self.cleanup_policy)
        # Lags and retentions up to 2**62 ms like retention_ms; negative ones
        # are refused (Kafka refuses them too).
        need_int("min_compaction_lag_ms", 0, 1 << 62)
        need_int("delete_retention_ms", 0, 1 << 62)
        r = self.min_cleanable_dirty_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r <= 1.0:
            raise TopicConfigError(
                f"min_cleanable_dirty_ratio must be a number in 0.0 .. 1.0, got {r!r}")
        if self.message_timestamp_type not in TIMESTAMP_TYPES:
            raise TopicConfigError(
                f"message_timestamp_type must be one of {', '.join(map(repr, TIMESTAMP_TYPES))}, "
                f"got {self.message_timestamp_type!r}")
        need_int("message_timestamp_before_max_ms", 0, (1 << 63) - 1, optional=True)
        need_int("message_timestamp_after_max_ms", 0, (1 << 63) - 1, optional=True)
        if self.max_batch_bytes > self.segment_bytes:
            raise TopicConfigError(
                f"max_batch_bytes ({self.max_batch_bytes}) must not exceed segment_bytes ({self.segment_bytes})")

    def settings(self) -> dict:
        d = asdict(self)
        d.pop("partitions")
        # The compaction settings are written only when one differs from its
        # default: a delete topic's topic.json stays what it was before they
        # existed (readable by earlier versions), and a version that does not
        # know them refuses a compacted topic (it would accept keyless records).
        if all(d[k] == _COMPACTION_DEFAULTS[k] for k in _COMPACTION_DEFAULTS):
            for k in _COMPACTION_DEFAULTS:
                del d[k]
        # The timestamp settings likewise, each on its own: a version that
        # does not know them refuses a topic that sets one (it would append
        # CreateTime batches to a LogAppendTime topic).
        for k, default in _TIMESTAMP_DEFAULTS.items():
            if d[k] == default:
                del d[k]
        return d


#: Kafka's message.timestamp.type values.
TIMESTAMP_TYPES = ("CreateTime", "LogAppendTime")
_TIMESTAMP_DEFAULTS = {"message_timestamp_type": "CreateTime",
                       "message_timestamp_before_max_ms": None,
                       "message_timestamp_after_max_ms": None}
_CLEANUP_POLICIES = ("delete", "compact", "compact,delete")
_COMPACTION_DEFAULTS = {"cleanup_policy": "delete", "min_compaction_lag_ms": 0,
                        "delete_retention_ms": 86_400_000, "min_cleanable_dirty_ratio": 0.5}


def normalize_cleanup_policy(value) -> str:
    """The canonical spelling of a cleanup policy: "delete", "compact" or
    "compact,delete" (Kafka's list form, in any order, with or without
    spaces, or a list of the words). Raises TopicConfigError otherwise."""
    words = value if isinstance(value, (list, tuple)) else None
    if isinstance(value, str):
        words = [w.strip() for w in value.split(",")]
    if words is None or not words or not all(isinstance(w, str) for w in words) \
            or len(set(words)) != len(words) or not set(words) <= {"compact", "delete"}:
        raise TopicConfigError(
            f"cleanup_policy must be one of {', '.join(map(repr, _CLEANUP_POLICIES))}, "
            f"got {value!r}")
    return ",".join(sorted(words))


class Log:
    """Log(path, *, create=True, readonly=False, max_open_partitions=None)

    Open (or create) an embedded, durable, partitioned event log in the
    directory ``path``. Any number of processes may open the same directory.
    Use as a context manager, or call :meth:`close`.

    With ``readonly=True`` nothing under ``path`` is ever written: reads,
    ``verify()``, consumers without a group and exports work; appends, topic
    creation or deletion, retention and group commits raise
    :class:`~unstoppable.errors.ReadOnlyLogError`. A partition whose tail was
    torn by a crash is recovered in memory (the tail is ignored), not on
    disk. A log whose directory cannot be written (EACCES, EPERM, EROFS: a
    read-only mount, another user's files) opens read-only on its own;
    :attr:`readonly` and ``repr()`` say so, and :attr:`readonly_reason` why.

    ``max_open_partitions`` bounds the partitions that hold descriptors at
    once (4 each, plus 3 per sealed segment being read): past it, the least
    recently used idle partition lets go of its files and opens them again,
    transparently, when next used (storage/open_partitions.py). None (the
    default) is RLIMIT_NOFILE's soft limit / 8, read again as partitions
    open: 128 under ``ulimit -n 1024``.
    """

    def __init__(self, path, *, create: bool = True, readonly: bool = False,
                 max_open_partitions: int | None = None):
        self.path = os.path.abspath(os.fspath(path))
        self._open_partitions = OpenPartitions(max_open_partitions)
        self._closed = False
        self._topics: dict[str, Topic] = {}
        self._lock = threading.RLock()
        self._flusher = Flusher()
        self._group_commit = ThreadCommitter()
        self._writer_pool = None
        self._writer_pid = -1
        self._topics_dir = os.path.join(self.path, "topics")
        # Topics are built and torn down in staging/, outside topics/, and
        # renamed in or out in one step; a crash leaves debris only there.
        self._staging_dir = os.path.join(self.path, "staging")
        self._meta_lock = None
        self._readonly_reason = None
        self._cleaner = None  # compaction.BackgroundCleaner, once a compacted topic is opened
        if readonly:
            self._open_readonly("opened with readonly=True")
        else:
            try:
                admin.open_log_dir(self.path, create)
                os.makedirs(self._staging_dir, exist_ok=True)
                self._meta_lock = Flock(os.path.join(self.path, "meta.lock"))
            except OSError as e:
                if not admin.is_read_only_error(e) or not os.path.isdir(self.path):
                    raise
                self._open_readonly(f"the directory is not writable "
                                    f"({errno.errorcode.get(e.errno, e.errno)}: {e.strerror})")
        self._producer_epochs = ProducerEpochs(self.path)
        self._services = PartitionServices(self._group_commit, self._flusher, self._writer,
                                           self.readonly, self._producer_epochs,
                                           self._open_partitions)
        if self._meta_lock is not None:
            with self._meta_lock:
                admin.clear_staging(self._staging_dir)

    def _open_readonly(self, reason: str) -> None:
        admin.open_log_dir_readonly(self.path)
        self._readonly_reason = reason

    @property
    def max_open_partitions(self) -> int:
        """How many partitions may hold descriptors at once (see the class
        docstring); idle ones past it are let go, least recently used first."""
        return self._open_partitions.bound

    @property
    def open_partitions(self) -> int:
        """How many partitions hold descriptors now (busy ones may take this
        past :attr:`max_open_partitions` for a while)."""
        return len(self._open_partitions)

    @property
    def readonly(self) -> bool:
        """Whether this log was opened read-only (see the class docstring)."""
        return self._readonly_reason is not None

    @property
    def readonly_reason(self) -> str | None:
        """Why the log is read-only (``readonly=True``, or the error that
        showed the directory cannot be written), or None when it is writable."""
        return self._readonly_reason

    def check_writable(self, what: str) -> None:
        """Raise ReadOnlyLogError, saying ``what`` cannot be done, when the
        log is read-only (for modules that write under the log directory:
        groups, producer ids)."""
        self._check_writable(what)

    def _check_writable(self, what: str) -> None:
        if self._readonly_reason is not None:
            raise ReadOnlyLogError(f"cannot {what}: log {self.path} is read-only "
                                   f"({self._readonly_reason})")

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

    def _topic_dir(self, name: str) -> str:
        return os.path.join(self._topics_dir, validate_topic_name(name))

    @staticmethod
    def _read_topic_json(tdir: str, name: str) -> TopicConfig:
        meta, path = admin.read_topic_meta(tdir, name)
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
        if self.readonly:
            if os.path.exists(os.path.join(tdir, "topic.json")) \
                    and self._read_topic_json(tdir, name) == cfg:
                return self.topic(name)  # nothing to write: the topic is there as asked
            self._check_writable(f"create topic {name!r}")
        try:
            return self._create_topic(name, tdir, cfg)
        except OSError as e:
            err = too_many_open_files(e, f"creating topic {name!r}")
            if err is None:
                raise
            raise err from None

    def _create_topic(self, name: str, tdir: str, cfg: TopicConfig) -> "Topic":
        # Built in staging/ and renamed into topics/ whole: a failure leaves
        # no topic and no half-made directory (clear_staging removes debris).
        with self._lock, self._meta_lock:
            if os.path.exists(os.path.join(tdir, "topic.json")):
                existing = self._read_topic_json(tdir, name)
                if existing != cfg:
                    diff = {k: (getattr(existing, k), getattr(cfg, k))
                            for k in asdict(cfg) if getattr(existing, k) != getattr(cfg, k)}
                    raise TopicExistsError(
                        f"topic {name!r} exists with a different configuration: "
                        + ", ".join(f"{k}={a!r} (asked {b!r})" for k, (a, b) in diff.items()))
                return self.topic(name)
            admin.create_topic_dir(self._staging_dir, self._topics_dir, tdir, name,
                                   cfg.partitions, cfg.settings())
        return self.topic(name)

    def alter_topic(self, name: str, *, validate_only: bool = False, **config) -> "Topic":
        """alter_topic(name, *, validate_only=False, **config) -> Topic

        Change settings of an existing topic (Kafka's AlterConfigs): any
        :class:`TopicConfig` setting but ``partitions``, checked as
        :meth:`create_topic` checks them (TopicConfigError, and nothing
        changes). ``topic.json`` is replaced whole under the log's meta lock.

        This process follows the new settings at once. Other processes that
        have the topic open follow them within 0.1 s of their next
        :meth:`topic` call, and at once wherever something is deleted:
        retention (at each roll) and a cleaning (before each segment it
        swaps in) read topic.json again first. So a cleaning that is running
        when ``cleanup_policy`` loses "compact" stops before its next swap
        (TopicConfigError; every segment swapped before is whole), and one
        that finds "compact" back by then goes on: what it drops is only
        ever a record that a later one of the same key supersedes, whatever
        the policy was meanwhile. Records appended without a key while the
        policy was "delete" are kept by every later cleaning (Kafka's
        cleaner drops them). A cleaning keeps the lag and retention settings
        it started with.

        With ``validate_only`` the settings are checked and nothing changes
        (Kafka's ``validate_only``).
        """
        self._check_open()
        validate_topic_name(name)
        if "partitions" in config:
            raise TopicConfigError(
                f"alter_topic cannot alter the partitions of topic {name!r}: "
                f"Log.create_partitions({name!r}, total) adds partitions (the count only grows)")
        self._check_writable(f"alter topic {name!r}")
        tdir = self._topic_dir(name)
        with self._lock, self._meta_lock:
            meta, _path = admin.read_topic_meta(tdir, name)
            old = self._read_topic_json(tdir, name)
            settings = {k: v for k, v in asdict(old).items() if k != "partitions"}
            if "segment_bytes" in config and "max_batch_bytes" not in config \
                    and old.max_batch_bytes == min(TopicConfig.max_batch_bytes, old.segment_bytes):
                del settings["max_batch_bytes"]   # the default follows segment_bytes
            settings.update(config)
            cfg = TopicConfig.build(old.partitions, settings)
            if cfg != old and not validate_only:
                admin.write_topic_config(tdir, meta, cfg.settings())
        t = self.topic(name)
        t._apply_config(t._disk_config())
        return t

    def create_partitions(self, name: str, total: int, *, validate_only: bool = False) -> "Topic":
        """create_partitions(name, total, *, validate_only=False) -> Topic

        Grow topic ``name`` to ``total`` partitions (Kafka's CreatePartitions,
        ``kafka-topics --alter --partitions``). Only an increase:
        InvalidPartitionsError otherwise, and nothing changes. The new
        partitions start empty; records already written stay where they are,
        so a key's records written before and after may lie in different
        partitions, as in Kafka. This process sees the new count at once,
        others within 0.1 s of their next :meth:`topic` call; a ``Producer``
        and the members of a consumer group pick it up as they check the
        topic (see their docs).
        """
        self._check_open()
        validate_topic_name(name)
        if isinstance(total, bool) or not isinstance(total, int):
            raise TypeError(f"total must be an int, got {type(total).__name__}")
        self._check_writable(f"add partitions to topic {name!r}")
        tdir = self._topic_dir(name)
        with self._lock, self._meta_lock:
            meta, _path = admin.read_topic_meta(tdir, name)
            old = self._read_topic_json(tdir, name)
            if total <= old.partitions:
                raise InvalidPartitionsError(
                    f"topic {name!r} has {old.partitions} partitions; the count can only grow, "
                    f"so {total} is refused")
            try:
                TopicConfig.build(total, {k: v for k, v in asdict(old).items()
                                          if k != "partitions"})
            except TopicConfigError as e:
                raise InvalidPartitionsError(str(e)) from None
            if not validate_only:
                admin.add_partition_dirs(tdir, meta, old.partitions, total)
        t = self.topic(name)
        t._apply_config(t._disk_config())
        return t

    def topic(self, name: str) -> "Topic":
        """topic(name) -> Topic; raises UnknownTopicError."""
        self._check_open()
        if not isinstance(name, str):
            validate_topic_name(name)  # InvalidTopicNameError, not the dict lookup's TypeError
        with self._lock:
            t = self._topics.get(name)
            if t is None or t._deleted():
                return self._open_topic(name, t)
        t._maybe_refresh()  # outside the log's lock: it takes the partitions' locks
        return t

    def _open_topic(self, name: str, gone: "Topic | None") -> "Topic":
        """Open topic ``name`` (the log's lock held); ``gone`` is a deleted one to drop."""
        if gone is not None:
            gone._close(flush=False)
            del self._topics[name]
        t = Topic(self, name, self._topic_dir(name))
        self._topics[name] = t
        if t.config.compacted and not self.readonly:
            self.cleaner.ensure_started()
        return t

    def topics(self) -> list[str]:
        """Names of all topics, sorted."""
        self._check_open()
        return admin.list_topic_names(self._topics_dir)

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in self.topics()

    def delete_topic(self, name: str) -> None:
        """Delete a topic and all its data. Processes that still have it open
        get UnknownTopicError on their next append."""
        self._check_open()
        self._check_writable(f"delete topic {name!r}")
        tdir = self._topic_dir(name)
        with self._lock, self._meta_lock:
            cfg = self._read_topic_json(tdir, name)
            trash = admin.delete_topic_dir(self._staging_dir, self._topics_dir, tdir,
                                           cfg.partitions)
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
        self._check_writable("enforce retention")
        return sum(self.topic(n).enforce_retention() for n in self.topics())

    @property
    def cleaner(self) -> BackgroundCleaner:
        """The background cleaner of this process (storage/compaction.py): it
        starts when a compacted topic is first opened and compacts partitions
        whose dirty ratio reached ``min_cleanable_dirty_ratio``, every
        ``cleaner.interval`` seconds."""
        with self._lock:
            if self._cleaner is None:
                self._cleaner = BackgroundCleaner(self)
            return self._cleaner

    def compact(self, topic: str | None = None, progress=None) -> list[CleanResult]:
        """compact(topic=None, progress=None) -> list[CleanResult]

        Compact now, whatever the dirty ratio: every partition of ``topic``
        (which must be compacted: TopicConfigError otherwise), or of every
        compacted topic. ``progress(nbytes)`` is called as segments are read.
        Returns one CleanResult per partition."""
        self._check_open()
        self._check_writable("compact")
        if topic is not None:
            names = [topic]
            cfg = self.topic(topic).config
            if not cfg.compacted:
                raise TopicConfigError(
                    f"topic {topic!r} has cleanup_policy={cfg.cleanup_policy!r}; only topics "
                    f"created with cleanup_policy='compact' (or 'compact,delete') are compacted")
        else:
            names = [n for n in self.topics() if self.topic(n).config.compacted]
        return [clean_partition(p, progress=progress) for n in names for p in self.topic(n)]

    def verify(self, progress=None) -> "VerifyReport":
        """Check every batch of every segment (CRC, framing, dense offsets,
        record parsing) and every index entry, without changing anything.
        ``progress(done_bytes, total_bytes)`` is called as it goes."""
        self._check_open()
        return verify(self, progress)

    def close(self) -> None:
        """fsync and close every open topic. The log is unusable afterwards."""
        if self._closed:
            return
        first = None
        try:
            if self._cleaner is not None:
                self._cleaner.stop()
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
            self._producer_epochs.close()
            self._topics.clear()
            self._closed = True
            try:
                if self._meta_lock is not None:
                    self._meta_lock.close()
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
        ro = f" read-only ({self._readonly_reason})" if self.readonly else ""
        return f"<Log {self.path}{ro}{' closed' if self._closed else ''}>"


class Topic:
    """A named, partitioned stream of records. Obtained from ``Log.create_topic``
    or ``Log.topic``."""

    def __init__(self, log: Log, name: str, path: str):
        self._log = log
        self.name = name
        self.path = path
        self._json = os.path.join(path, "topic.json")
        # topic.json's (inode, mtime, size) when self.config was read from it:
        # alter_topic renames a new file in, so any change shows in a stat.
        self._stamp = self._stat()
        self.config: TopicConfig = log._read_topic_json(path, name)
        self._checked = time.monotonic()
        self._clock = threading.Lock()
        self._partitions: list[Partition | None] = [None] * self.config.partitions
        self._plock = threading.Lock()
        # Partitions open (and recover, up to their last valid batch) on first
        # use: a topic of many partitions costs no descriptors until used.

    @property
    def partitions(self) -> int:
        """Number of partitions."""
        return self.config.partitions

    # ------------------------------------------------ altered settings

    def _stat(self):
        try:
            st = os.stat(self._json)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _disk_config(self) -> TopicConfig:
        """The settings in topic.json now: read again only when a stat shows
        that the file changed (Log.alter_topic). Those of this object when
        the file is gone (the topic was deleted: its partitions say so)."""
        stamp = self._stat()
        with self._clock:
            if stamp is not None and stamp != self._stamp:
                try:
                    cfg = self._log._read_topic_json(self.path, self.name)
                except UnknownTopicError:
                    return self.config
                self._stamp = stamp
                if cfg.partitions > len(self._partitions):       # Log.create_partitions
                    with self._plock:
                        self._partitions.extend(
                            [None] * (cfg.partitions - len(self._partitions)))
                if cfg != self.config and cfg.partitions >= self.config.partitions:
                    self.config = cfg
            self._checked = time.monotonic()
            return self.config

    def _apply_config(self, cfg: TopicConfig) -> None:
        """Have every open partition follow ``cfg`` (no lock of the log held)."""
        for p in self._partitions:
            if p is not None and p.config != cfg:
                p._reconfigure(cfg)

    def _maybe_refresh(self) -> None:
        """Follow settings another process altered, looking at most every
        0.1 s (a stat of topic.json)."""
        if time.monotonic() - self._checked >= 0.1:
            self._apply_config(self._disk_config())

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
                    p = self._open_partition(i)
                    self._partitions[i] = p
                    self._log._open_partitions.opened(p)
        return p

    def _open_partition(self, i: int) -> Partition:
        """Open partition ``i``. Out of descriptors, every idle partition of
        the log lets go of its files and the open is tried once more; then
        TooManyOpenFilesError names the limit."""
        path = os.path.join(self.path, str(i))
        for attempt in (0, 1):
            try:
                p = Partition(self.name, i, path, self._disk_config(), self._log._services)
                p._config_source = self._disk_config
                return p
            except OSError as e:
                err = too_many_open_files(e, f"opening partition {self.name}/{i}")
                if err is None:
                    raise
                if attempt == 0 and self._log._open_partitions.park_idle():
                    continue
                raise err from None
        raise AssertionError("unreachable")

    def __iter__(self) -> Iterator[Partition]:
        return (self.partition(i) for i in range(self.config.partitions))

    def _deleted(self) -> bool:
        p = self._partitions[0]
        if p is None or p.closed:
            return not os.path.exists(os.path.join(self.path, "topic.json"))
        return p.deleted

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
            if p is not None and not p.closed:
                p.flush()

    def enforce_retention(self) -> int:
        return sum(p.enforce_retention() for p in self)

    def compact(self, progress=None) -> list[CleanResult]:
        """Compact every partition now (the topic must be compacted): ``Log.compact``."""
        return self._log.compact(self.name, progress)

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
                    p.abandon()
            except BaseException as e:  # keep closing the others
                first = first or e
        if first is not None:
            raise first

    def __repr__(self):
        return f"<Topic {self.name!r} partitions={self.config.partitions}>"
