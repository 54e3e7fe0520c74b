"""The log directory on disk: the format marker, topic directories built in
``staging/`` and renamed in or out whole, ``topic.json``, and marking a
deleted topic's partitions. :class:`~unstoppable.storage.log.Log` calls these
with its meta lock held where it says so.

Layout::

    <log>/unstoppable.json      {"format": "unstoppable-log", "version": 2}
    <log>/meta.lock             flock()ed while topics are created or deleted
    <log>/staging/              topics being created or deleted (renamed in/out whole)
    <log>/topics/<name>/topic.json
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
import uuid

from unstoppable._core.segment import HEAD_FILE_SIZE, HEAD_FLAG_DELETED, Head
from unstoppable._names import is_valid_name
from unstoppable.errors import CorruptLogError, NotALogError, UnknownTopicError, UnsupportedFormatError
from unstoppable.storage._fs import O_CLOEXEC, Flock, fsync_dir

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MARKER", "open_log_dir", "write_json_atomic",
           "read_topic_meta", "write_topic_config", "create_topic_dir", "delete_topic_dir", "list_topic_names",
           "clear_staging", "open_log_dir_readonly", "is_read_only_error"]

FORMAT_NAME = "unstoppable-log"
#: Log format version written to unstoppable.json: 2 since batches are Kafka
#: RecordBatch v2 (docs/FORMAT.md §4). A log of version 1 is still read (its
#: format-1 batches are told apart by their magic byte) and its marker is
#: raised to 2 when it is opened, before anything of format 2 is written, so
#: a library that knows only format 1 refuses it instead of cutting format-2
#: batches it cannot parse as a torn tail.
FORMAT_VERSION = 2
#: topic.json's own version: unchanged by format 2.
TOPIC_VERSION = 1
MARKER = "unstoppable.json"


def _json_tmp_name(path: str) -> str:
    return f"{path}.tmp{os.getpid()}.{threading.get_ident()}"


def write_json_atomic(path: str, obj) -> None:
    """Write ``obj`` as JSON to ``path`` through a fsynced temporary file and a rename."""
    tmp = _json_tmp_name(path)
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def _check_marker(path: str, marker: str) -> None:
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
            f"{path} was written by log format version {version!r}; this "
            f"library reads version {FORMAT_VERSION} (upgrade unstoppable)")
    if version < 1:
        raise UnsupportedFormatError(f"{path}: invalid format version {version!r}")
    if version < FORMAT_VERSION:
        write_json_atomic(marker, {**meta, "version": FORMAT_VERSION})
        fsync_dir(path)


def open_log_dir_readonly(path: str) -> None:
    """Check that ``path`` holds a log of a format this version reads,
    changing nothing."""
    marker = os.path.join(path, MARKER)
    if not os.path.isdir(path):
        raise NotALogError(f"no log at {path}" if not os.path.exists(path)
                           else f"{path} exists and is not a directory")
    if not os.path.exists(marker):
        raise NotALogError(f"{path} has no {MARKER}: not a log (and, read-only, not made one)")
    _check_marker(path, marker)


def is_read_only_error(exc: OSError) -> bool:
    """Whether ``exc`` says the log's directory cannot be written: no
    permission (EACCES, EPERM) or a read-only file system (EROFS)."""
    return exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)


def open_log_dir(path: str, create: bool) -> None:
    """Check that ``path`` holds a log of a format this version reads, or
    (with ``create``) make an empty directory one."""
    marker = os.path.join(path, MARKER)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotALogError(f"{path} exists and is not a directory")
    if not os.path.exists(path):
        if not create:
            raise NotALogError(f"no log at {path}")
        os.makedirs(path, exist_ok=True)
    if os.path.exists(marker):
        _check_marker(path, marker)
        os.makedirs(os.path.join(path, "topics"), exist_ok=True)
        return
    entries = [e for e in os.listdir(path) if e != "meta.lock"]
    if entries:
        raise NotALogError(
            f"{path} is not empty and has no {MARKER}; refusing to treat it as a log")
    if not create:
        raise NotALogError(f"no log at {path}")
    os.makedirs(os.path.join(path, "topics"), exist_ok=True)
    write_json_atomic(marker, {"format": FORMAT_NAME, "version": FORMAT_VERSION})
    fsync_dir(path)


def clear_staging(staging_dir: str) -> None:
    """Remove what crashed creations or deletions left in ``staging/`` (meta lock held)."""
    for leftover in os.listdir(staging_dir):
        shutil.rmtree(os.path.join(staging_dir, leftover), ignore_errors=True)


def read_topic_meta(tdir: str, name: str) -> tuple[dict, str]:
    """The contents of a topic's ``topic.json`` and its path; raises
    UnknownTopicError, CorruptLogError or UnsupportedFormatError."""
    path = os.path.join(tdir, "topic.json")
    try:
        with open(path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise UnknownTopicError(f"unknown topic {name!r}") from None
    except ValueError as e:
        raise CorruptLogError(f"{path} is not valid JSON: {e}", topic=name) from None
    version = meta.get("version")
    if version != TOPIC_VERSION:
        raise UnsupportedFormatError(f"topic {name!r} has format version {version!r}")
    return meta, path


def write_topic_config(tdir: str, meta: dict, settings: dict) -> None:
    """Replace the settings in a topic's ``topic.json`` (meta lock held):
    ``meta`` as read_topic_meta gave it, its other fields kept. The new file
    is renamed in whole, so every reader sees the old settings or the new."""
    write_json_atomic(os.path.join(tdir, "topic.json"), {**meta, "config": settings})
    fsync_dir(tdir)


def add_partition_dirs(tdir: str, meta: dict, old: int, new: int) -> None:
    """Grow a topic from ``old`` to ``new`` partitions (meta lock held): the
    new partition directories first, made durable, then ``topic.json`` with
    the new count, renamed in whole. A crash in between leaves directories
    that no topic.json names (nothing opens them); the next call replaces
    them."""
    for i in range(old, new):
        pdir = os.path.join(tdir, str(i))
        if os.path.lexists(pdir):
            shutil.rmtree(pdir)
        os.makedirs(pdir)
        fsync_dir(pdir)
    fsync_dir(tdir)
    write_json_atomic(os.path.join(tdir, "topic.json"), {**meta, "partitions": new})
    fsync_dir(tdir)


def list_topic_names(topics_dir: str) -> list[str]:
    """Names of the topics in ``topics/`` (those with a ``topic.json``), sorted."""
    out = []
    try:
        names = os.listdir(topics_dir)
    except FileNotFoundError:  # a read-only log that never had a topic
        return []
    for name in names:
        if is_valid_name(name) and os.path.exists(os.path.join(topics_dir, name, "topic.json")):
            out.append(name)
    return sorted(out)


def create_topic_dir(staging_dir: str, topics_dir: str, tdir: str, name: str,
                     partitions: int, settings: dict) -> None:
    """Build a topic's directory in staging and rename it into place (meta lock held)."""
    tmp = os.path.join(staging_dir, f"creating-{uuid.uuid4().hex}")
    os.makedirs(tmp)
    try:
        for i in range(partitions):
            os.makedirs(os.path.join(tmp, str(i)))
        write_json_atomic(os.path.join(tmp, "topic.json"), {
            "version": TOPIC_VERSION, "name": name, "partitions": partitions,
            "config": settings, "created_ms": time.time_ns() // 1_000_000})
        for i in range(partitions):
            fsync_dir(os.path.join(tmp, str(i)))
        fsync_dir(tmp)
        if os.path.exists(tdir):  # a leftover without topic.json
            shutil.rmtree(tdir)
        os.rename(tmp, tdir)
        fsync_dir(topics_dir)
    except BaseException:
        if os.path.exists(tmp):
            _remove_staged_topic(tmp, partitions)
        raise


def _remove_staged_topic(tmp: str, partitions: int) -> None:
    """Remove a topic directory being built, by the names create_topic_dir
    gives its entries: this needs no file descriptor, so it works after the
    creation failed for lack of one (EMFILE), where rmtree cannot list it."""
    meta = os.path.join(tmp, "topic.json")
    for name in (meta, _json_tmp_name(meta)):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass
    for i in range(partitions):
        try:
            os.rmdir(os.path.join(tmp, str(i)))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(tmp)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # something else in it; clear_staging also removes it


def _mark_deleted(pdir: str) -> None:
    """Set the deleted flag in a partition's head, under its append lock."""
    hp = os.path.join(pdir, "head")
    if not os.path.exists(hp):
        return
    lock = Flock(os.path.join(pdir, "lock"))
    hfd = os.open(hp, os.O_RDWR | O_CLOEXEC)
    try:
        with lock:
            if os.fstat(hfd).st_size >= HEAD_FILE_SIZE:
                head = Head(hfd)
                st = head.read()
                if st is not None and head.valid():
                    st.flags |= HEAD_FLAG_DELETED
                    head.write(st)
                del head
    finally:
        os.close(hfd)
        lock.close()  # closing drops the flock


def delete_topic_dir(staging_dir: str, topics_dir: str, tdir: str, partitions: int) -> str:
    """Mark every partition deleted under its append lock, so no other
    process can append into files that are about to disappear, then move the
    topic out of ``topics/`` (meta lock held). Returns where it now is: the
    caller removes it."""
    for i in range(partitions):
        _mark_deleted(os.path.join(tdir, str(i)))
    trash = os.path.join(staging_dir, f"deleted-{uuid.uuid4().hex}")
    os.rename(tdir, trash)
    fsync_dir(topics_dir)
    return trash
