"""The one exception hierarchy of unstoppable.

Every error the library raises on purpose is an :class:`UnstoppableError`, and
where a built-in exception describes the same kind of failure the class also
derives from it (``CorruptLogError`` is a ``ValueError``, ``DiskFullError`` an
``OSError``), so callers can catch either.

Each class says whether the failed operation is worth retrying as it was
(``retriable``, as in aiokafka's errors.py): the producer's sender asks
:func:`is_retriable`, which reads that attribute, and knows no classes itself.

The compiled core reports failures as small integer codes (see csrc/batch.h);
:data:`ERROR_MAP` is the one table from those codes to exceptions, and
:func:`for_code` the one function that applies it (py-lmdb's ``error_map[]``).
"""
from __future__ import annotations

import errno as _errno

__all__ = [
    "CodecUnavailableError",
    "UnstoppableError",
    # the log: files, topics, partitions
    "CorruptLogError", "NotALogError", "UnsupportedFormatError", "InvalidTopicNameError",
    "UnknownTopicError", "TopicExistsError", "TopicConfigError", "InvalidPartitionsError",
    "PartitionOutOfRangeError",
    "OffsetOutOfRangeError", "DiskFullError", "LogClosedError", "ReadOnlyLogError",
    "TooManyOpenFilesError",
    # records and idempotent producers
    "RecordTooLargeError", "InvalidRecordError", "InvalidTimestampError",
    "OutOfOrderSequenceError",
    "DuplicateSequenceError", "UnknownProducerError", "ProducerFencedError",
    # the asyncio client
    "BufferFullError", "ProducerClosedError", "ConsumerClosedError", "CommitError",
    "FencedMemberError",
    "NoOffsetForPartitionError", "InvalidGroupNameError", "NotAssignedError",
    "ProducerIdInUseError", "DeliveryTimeoutError", "ValueDecodeError",
    # the exactly-once processor
    "HandlerTransactionError",
    # remote backends
    "InvalidURLError", "BackendUnavailableError", "BackendTimeoutError", "BackendError",
]
# (ERROR_MAP, for_code and is_retriable are used as unstoppable.errors.<name>;
# `from unstoppable.errors import *` brings only the exception classes.)


class UnstoppableError(Exception):
    """Base class of every error raised by unstoppable.

    ``retriable`` (a class attribute) is True when the same operation may
    succeed if tried again unchanged (space returns, a server comes back).
    """

    retriable = False


class CorruptLogError(UnstoppableError, ValueError):
    """Stored data failed a check (CRC, length, format) inside data that must be whole.

    Attributes name the place: ``topic``, ``partition``, ``segment`` (file path),
    ``position`` (byte offset in the segment), ``offset`` (the record offset the
    damaged batch claims or was expected to have), and ``reason``.
    """

    def __init__(self, reason: str, *, topic=None, partition=None, segment=None,
                 position=None, offset=None):
        self.reason = reason
        self.topic = topic
        self.partition = partition
        self.segment = segment
        self.position = position
        self.offset = offset
        where = []
        if topic is not None:
            where.append(f"topic {topic!r}")
        if partition is not None:
            where.append(f"partition {partition}")
        if segment is not None:
            where.append(f"segment {segment}")
        if position is not None:
            where.append(f"byte {position}")
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{reason}" + (f" ({', '.join(where)})" if where else ""))

    def __reduce__(self):
        return (_rebuild_corrupt, (self.reason, self.topic, self.partition, self.segment,
                                   self.position, self.offset))


def _rebuild_corrupt(reason, topic, partition, segment, position, offset):
    return CorruptLogError(reason, topic=topic, partition=partition, segment=segment,
                           position=position, offset=offset)


class NotALogError(UnstoppableError, ValueError):
    """The directory exists and holds files, but it is not an unstoppable log."""


class UnsupportedFormatError(UnstoppableError, ValueError):
    """The files were written by a format version this library does not read."""


class InvalidTopicNameError(UnstoppableError, ValueError):
    """A topic name breaks the rules: 1-249 of [A-Za-z0-9._-], not '.' or '..'."""


class UnknownTopicError(UnstoppableError, KeyError):
    """No topic of that name exists (or it was deleted)."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class TopicExistsError(UnstoppableError, ValueError):
    """The topic exists with a different configuration than the one asked for."""


class TopicConfigError(UnstoppableError, ValueError):
    """A topic configuration value is missing, of the wrong type, or out of range."""


class InvalidPartitionsError(TopicConfigError):
    """A partition count that a topic cannot take: ``Log.create_partitions``
    only increases it (Kafka's INVALID_PARTITIONS)."""


class PartitionOutOfRangeError(UnstoppableError, IndexError):
    """A partition number outside ``0 .. partitions - 1``."""


class OffsetOutOfRangeError(UnstoppableError, IndexError):
    """An offset below the log start (deleted by retention) or past the end."""


class RecordTooLargeError(UnstoppableError, ValueError):
    """One record is larger than the topic's ``max_record_bytes``."""


class InvalidRecordError(UnstoppableError, TypeError):
    """A record, key, value, header or timestamp has the wrong type or value."""


class InvalidTimestampError(InvalidRecordError):
    """A record's timestamp is outside the window an append accepts
    (``BatchEncoder.add_batches``' bounds: Kafka's
    ``message.timestamp.before.max.ms`` / ``after.max.ms``, error 32)."""


class DiskFullError(UnstoppableError, OSError):
    """The file system refused an append (ENOSPC, EDQUOT or EFBIG).

    Nothing of the failed append is visible; data acknowledged before stays
    readable, and appends work again once space returns.
    """

    retriable = True


class LogClosedError(UnstoppableError, RuntimeError):
    """The log, topic or partition was used after ``close()``."""


class ReadOnlyLogError(UnstoppableError, PermissionError):
    """A write (append, topic creation or deletion, retention, a group's
    commit) to a log opened read-only: with ``Log(path, readonly=True)``, or
    on its own because the directory is not writable (EACCES, EROFS)."""


class TooManyOpenFilesError(UnstoppableError, OSError):
    """The process (EMFILE) or the system (ENFILE) ran out of file
    descriptors. The message names the limit and how to raise it."""


def too_many_open_files(exc: OSError, doing: str) -> "TooManyOpenFilesError | None":
    """The library error for an EMFILE/ENFILE ``exc`` met while ``doing``
    something, or None for any other error."""
    if exc.errno == _errno.EMFILE:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return TooManyOpenFilesError(
            _errno.EMFILE,
            f"too many open files while {doing}: this process may open {soft} "
            f"(RLIMIT_NOFILE soft limit; hard limit {hard}). Raise it with `ulimit -n` "
            f"in the shell, or resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard)) "
            f"at start-up")
    if exc.errno == _errno.ENFILE:
        return TooManyOpenFilesError(
            _errno.ENFILE,
            f"too many open files while {doing}: the system-wide limit is reached "
            f"(/proc/sys/fs/file-max; raise it with `sysctl fs.file-max=N`)")
    return None


class BufferFullError(UnstoppableError):
    """The producer's buffer is full and the backpressure mode says not to wait."""


class ProducerClosedError(UnstoppableError, RuntimeError):
    """``send`` was called on a closed producer."""


class ConsumerClosedError(UnstoppableError, RuntimeError):
    """The consumer was used after ``close()``."""


class OutOfOrderSequenceError(UnstoppableError):
    """An idempotent producer's batch skipped sequence numbers: records in
    between were never written. Raised instead of silently accepting the gap."""


class ProducerFencedError(UnstoppableError):
    """A newer instance of the same ``producer_id`` has taken over."""


class CommitError(UnstoppableError, ValueError):
    """A commit was refused (an offset beyond what the partition holds, or a
    partition this group member does not own)."""


class CodecUnavailableError(UnstoppableError, ImportError):
    """A batch is compressed (or an append asks for compression) with a codec
    whose library is not installed: ``pip install 'unstoppable[compression]'``."""


class FencedMemberError(CommitError):
    """A commit by a group member that no longer owns the partition: it
    stopped polling and heartbeating for longer than the session timeout (a
    hung process, a stopped one, a long blocking call), the others took the
    partition over, and the ownership epoch moved on. Nothing of the commit
    was stored. Not retriable: the partition belongs to another member now,
    which resumes from the last commit accepted before the takeover."""


class NoOffsetForPartitionError(UnstoppableError):
    """No committed offset and ``auto_offset_reset="error"``."""


# The one table from the C result codes (csrc/batch.h, enum US_*) to
# exceptions: code -> (class, reason). Code 0 (US_OK) is not an error.
ERROR_MAP: dict[int, tuple[type, str]] = {
    1: (CorruptLogError, "incomplete batch (torn write)"),          # US_INCOMPLETE
    2: (CorruptLogError, "unknown batch magic (format version)"),   # US_BAD_MAGIC
    3: (CorruptLogError, "impossible batch length"),                # US_BAD_LENGTH
    4: (CorruptLogError, "CRC-32C mismatch"),                       # US_BAD_CRC
    5: (CorruptLogError, "unknown batch attributes"),               # US_BAD_ATTRIBUTES
    6: (CorruptLogError, "records do not parse within the batch"),  # US_BAD_RECORDS
    7: (CorruptLogError, "batch with zero records, or a lastOffsetDelta that disagrees with its record count"),  # US_BAD_COUNT
    8: (CorruptLogError, "compressed batch read without decompression"),  # US_COMPRESSED
    9: (CorruptLogError, "partitionLeaderEpoch is not 0 (damaged header)"),  # US_BAD_EPOCH
}


def for_code(code: int, **where) -> UnstoppableError:
    """for_code(code, **where) -> UnstoppableError

    The exception for a C result code (``where`` names the place: topic,
    partition, segment, position, offset). An unknown code still gives a
    CorruptLogError that names it."""
    cls, reason = ERROR_MAP.get(code, (CorruptLogError, f"batch check failed (code {code})"))
    return cls(reason, **where)


def corrupt_from_code(code: int, **where) -> CorruptLogError:
    """The exception for a C result code from the batch checker (:func:`for_code`)."""
    return for_code(code, **where)


_DISK_FULL = {_errno.ENOSPC, _errno.EFBIG, getattr(_errno, "EDQUOT", _errno.ENOSPC)}


def is_disk_full(exc: OSError) -> bool:
    """True for the errnos that mean 'no room': ENOSPC, EDQUOT, EFBIG."""
    return exc.errno in _DISK_FULL


# Built-in exceptions carry no ``retriable`` attribute: these are the ones an
# operation may raise that are worth retrying (a timeout, a dropped
# connection, an interrupted call).
_RETRIABLE_BUILTINS = (TimeoutError, ConnectionError, InterruptedError)


def is_retriable(exc: BaseException) -> bool:
    """Whether retrying the same operation may succeed: ``exc.retriable`` for
    the library's errors, and for built-in exceptions True for timeouts,
    connection errors and interrupted calls."""
    r = getattr(exc, "retriable", None)
    if r is not None:
        return bool(r)
    return isinstance(exc, _RETRIABLE_BUILTINS)


class DuplicateSequenceError(OutOfOrderSequenceError):
    """A retry of an idempotent batch older than the last five the log
    remembers for that producer: it was written before, but its offsets are no
    longer known, so it is refused rather than written twice."""



class UnknownProducerError(OutOfOrderSequenceError):
    """The log holds no state for this idempotent producer (it never wrote
    to the partition, or retention deleted everything it wrote, and the log
    forgot it) and the batch does not start at sequence 0. Nothing of the
    batch was written. The Producer restarts the partition's sequence from 0
    and writes the batch again, as Kafka's client does for UNKNOWN_PRODUCER_ID."""



# Client layer (producer, consumer, consumer groups).

class InvalidGroupNameError(UnstoppableError, ValueError):
    """A consumer-group name breaks the rules: 1-249 of [A-Za-z0-9._-], not '.' or '..'."""


class NotAssignedError(UnstoppableError, ValueError):
    """The consumer does not hold that partition (it is not subscribed to its
    topic, or the group assigned it to another member)."""


class ProducerIdInUseError(UnstoppableError, RuntimeError):
    """Another live producer holds the same ``producer_id``; each idempotent
    producer needs its own id."""


class DeliveryTimeoutError(UnstoppableError, TimeoutError):
    """A batch could not be written within the producer's ``delivery_timeout_ms``;
    the last error is its ``__cause__``."""

    retriable = True  # a TimeoutError, and as retriable as one



class ValueDecodeError(UnstoppableError, ValueError):
    """A value codec of a decoded export could not decode a record's value.

    ``partition`` and ``offset`` name the record when known; ``row`` is its
    index in the array the codec was given.
    """

    def __init__(self, message: str, *, row=None, partition=None, offset=None):
        super().__init__(message)
        self.row = row
        self.partition = partition
        self.offset = offset



# Remote backends (unstoppable.backends: NATS JetStream).

class InvalidURLError(UnstoppableError, ValueError):
    """A log URL that cannot be used: unknown scheme, missing host or port."""


class BackendUnavailableError(UnstoppableError, ConnectionError):
    """A remote backend cannot serve the request now: its servers are
    unreachable, or the partition has no leader (an election is under way).
    Retriable: the producer retries it within ``delivery_timeout_ms``."""

    retriable = True


class BackendTimeoutError(UnstoppableError, TimeoutError):
    """A request to a remote backend got no answer in time, so its outcome is
    unknown. Retriable: an idempotent producer's retry cannot duplicate."""

    retriable = True


class BackendError(UnstoppableError):
    """A remote backend refused a request. ``code``, ``err_code`` and
    ``description`` are what the server sent."""

    def __init__(self, message: str, *, code: int = 0, err_code: int = 0, description: str = ""):
        super().__init__(message)
        self.code = code
        self.err_code = err_code
        self.description = description

    def __reduce__(self):
        return (_rebuild_backend_error, (str(self), self.code, self.err_code, self.description))


def _rebuild_backend_error(message, code, err_code, description):
    return BackendError(message, code=code, err_code=err_code, description=description)



class HandlerTransactionError(UnstoppableError, RuntimeError):
    """A :class:`~unstoppable.Processor` handler ran BEGIN, COMMIT or ROLLBACK
    (``db.commit()``, ``with db:``): the processor owns the transaction, which
    commits the handler's effects together with the offset past them."""
