"""The Produce path of the broker: requests framed by hand (wire.py), each
partition's batches checked as a whole and appended as the client built them
(the zero-copy path), as Kafka's LogValidator and log append do."""
from __future__ import annotations

import asyncio
import logging
import struct
import time

from unstoppable._core.batch import BatchEncoder
from unstoppable._core.batch import decode_batches as decode_core_batches
from unstoppable.compression import codec_id
from unstoppable.errors import (
    CodecUnavailableError,
    CorruptLogError,
    DiskFullError,
    DuplicateSequenceError,
    InvalidRecordError,
    InvalidTimestampError,
    InvalidTopicNameError,
    OutOfOrderSequenceError,
    PartitionOutOfRangeError,
    ProducerFencedError,
    RecordTooLargeError,
    UnknownProducerError,
    UnknownTopicError,
)
from unstoppable.server import protocol as P
from unstoppable.server import wire as W
from unstoppable.server.codes import (
    CORRUPT_MESSAGE,
    DUPLICATE_SEQUENCE_NUMBER,
    INVALID_PRODUCER_EPOCH,
    INVALID_RECORD,
    INVALID_TIMESTAMP,
    INVALID_TOPIC_EXCEPTION,
    KAFKA_STORAGE_ERROR,
    MESSAGE_TOO_LARGE,
    NONE,
    OUT_OF_ORDER_SEQUENCE_NUMBER,
    RECORD_LIST_TOO_LARGE,
    UNKNOWN_PRODUCER_ID,
    UNKNOWN_SERVER_ERROR,
    UNKNOWN_TOPIC_OR_PARTITION,
    UNSUPPORTED_COMPRESSION_TYPE,
    UNSUPPORTED_VERSION,
)
from unstoppable.server.recordbatch import (
    ATTR_CONTROL,
    ATTR_TRANSACTIONAL,
    HEADER_SIZE,
    MAX_TIMESTAMP,
    InvalidBatchError,
    UnsupportedCompressionError,
    decode_batches,
    split_batches,
)
from unstoppable.storage.compaction_keys import refuse_keyless

__all__ = ["ProduceHandler", "append_error", "DEFAULT_TIMESTAMP_AFTER_MAX_MS"]

log = logging.getLogger("unstoppable.server")

#: Kafka 4's log.message.timestamp.after.max.ms default (KIP-937): a record
#: stamped more than an hour ahead of the server's clock is refused (error 32).
#: Its before.max.ms default is unlimited (None).
DEFAULT_TIMESTAMP_AFTER_MAX_MS = 3_600_000
_I32 = struct.Struct(">i")
# The words of a compacted topic's refusal of a keyless record (compaction_keys).
_KEYLESS = "without a key"
_RECORD_COUNT_AT = 57          # a RecordBatch v2's records count, from its first byte


def append_error(exc: BaseException) -> int:
    """The Kafka error code for an exception raised by ``Partition.append``."""
    if isinstance(exc, DuplicateSequenceError):
        return DUPLICATE_SEQUENCE_NUMBER
    if isinstance(exc, UnknownProducerError):
        return UNKNOWN_PRODUCER_ID
    if isinstance(exc, OutOfOrderSequenceError):
        return OUT_OF_ORDER_SEQUENCE_NUMBER
    if isinstance(exc, ProducerFencedError):
        return INVALID_PRODUCER_EPOCH
    if isinstance(exc, RecordTooLargeError):
        return MESSAGE_TOO_LARGE
    if isinstance(exc, (UnknownTopicError, PartitionOutOfRangeError)):
        return UNKNOWN_TOPIC_OR_PARTITION
    if isinstance(exc, InvalidTopicNameError):
        return INVALID_TOPIC_EXCEPTION
    if isinstance(exc, DiskFullError):
        return KAFKA_STORAGE_ERROR
    if isinstance(exc, CodecUnavailableError):
        return UNSUPPORTED_COMPRESSION_TYPE
    if isinstance(exc, CorruptLogError):     # BatchEncoder.add_batches' checks of a client's batch
        return CORRUPT_MESSAGE
    if isinstance(exc, InvalidBatchError):
        return UNSUPPORTED_COMPRESSION_TYPE if isinstance(exc, UnsupportedCompressionError) \
            else CORRUPT_MESSAGE
    if isinstance(exc, InvalidTimestampError):
        return INVALID_TIMESTAMP
    if isinstance(exc, InvalidRecordError):
        return INVALID_RECORD
    if isinstance(exc, ValueError) and "one batch" in str(exc):
        return RECORD_LIST_TOO_LARGE
    return UNKNOWN_SERVER_ERROR


def _append_time(p, offset: int) -> int:
    """The time a LogAppendTime topic's partition ``p`` appended the batch
    holding ``offset`` (a retry's: the original append's), which the Produce
    response carries as Kafka's log_append_time_ms; -1 when it is gone."""
    try:
        recs = p.read(offset, max_records=1)
    except Exception:  # noqa: BLE001  (retention may have taken it: Kafka's "none", -1)
        return -1
    return recs[0].timestamp if recs else -1


def _record_errors(records, exc) -> tuple[list, str]:
    """Produce v8's detail of an INVALID_RECORD answer (KIP-467): the
    indexes, within their batch, of the records without a key in the first
    batch that has one (a compacted topic refuses them, as Kafka's
    LogValidator, which stops at that batch), and the error's message.
    librdkafka fails those records with INVALID_RECORD and the batch's
    others with _INVALID_DIFFERENT_RECORD."""
    try:
        for b in decode_core_batches(records):
            keyless = [i for i, r in enumerate(b.records()) if r.key is None]
            if keyless:
                return [(i, "a compacted topic refuses a record without a key")
                        for i in keyless], str(exc)
    except Exception:  # noqa: BLE001  (a batch that does not decode: no per-record detail)
        pass
    return [], str(exc)


def _check_sequences(records, spans) -> None:
    """The idempotent batches of one partition in one request must be one
    producer's, with each sequence continuing the one before (Kafka's
    producer sends one batch per partition per request; a gap or a second
    producer here would fail after earlier batches were appended)."""
    prev = None
    for s in spans:
        if s.producer_id < 0:
            raise InvalidRecordError(
                "a request mixes idempotent and plain batches for one partition: not taken")
        if prev is not None:
            if (s.producer_id, s.producer_epoch) != (prev.producer_id, prev.producer_epoch):
                raise InvalidRecordError(
                    f"batches of producer {prev.producer_id} epoch {prev.producer_epoch} and "
                    f"producer {s.producer_id} epoch {s.producer_epoch} for one partition in one "
                    "request: not taken")
            (count,) = _I32.unpack_from(records, prev.position + _RECORD_COUNT_AT)
            expected = (prev.base_sequence + count) % (1 << 31)
            if s.base_sequence != expected:
                raise OutOfOrderSequenceError(
                    f"producer {s.producer_id}: a batch with sequence {s.base_sequence} follows one "
                    f"that ends before {expected} in the same request")
        prev = s


class ProduceHandler:
    """The Produce request handler of :class:`~unstoppable.server.broker.Broker`
    (a base class: it uses the broker's log, encoder, sync pool, metrics,
    timestamp limits and append event)."""

    async def produce(self, frame, off: int, ver: int, corr: int):
        """Produce v3-v8, framed by hand (wire.py): each partition's batches
        are checked and appended as the client built them (zero-copy path)."""
        txn, acks, _timeout, topic_data = W.parse_produce(frame, off)
        fsync = acks == -1
        topics = []
        failed: list[str] = []
        m = self.metrics
        for name, partition_data in topic_data:
            parts = []
            for index, records in partition_data:
                err, base, start, append_time, detail = NONE, -1, -1, -1, None
                try:
                    if txn is not None:
                        err = UNSUPPORTED_VERSION     # transactions are not supported
                    else:
                        p = self.log.topic(name).partition(index)
                        base = await self._append(p, records, fsync)
                        if base is None:
                            err, base = UNSUPPORTED_VERSION, -1
                        else:
                            start = p.start_offset
                            if p.config.log_append_time:
                                append_time = _append_time(p, base)
                            if m:
                                m.produced_bytes(name, index, 0 if records is None else len(records))
                except Exception as e:  # noqa: BLE001  (mapped to Kafka's codes; unknown -> -1)
                    err = append_error(e)
                    if err == INVALID_RECORD and records and _KEYLESS in str(e):
                        detail = _record_errors(records, e)
                    if err == UNKNOWN_SERVER_ERROR:
                        log.exception("produce to %s/%d failed", name, index)
                if err:
                    failed.append(f"{name}/{index}: error {err}")
                    if m:
                        m.error("Produce", err)
                parts.append((index, err, base, start, append_time, detail))
            topics.append((name, parts))
        self._appended.set()
        self._appended = asyncio.Event()
        if acks == 0:
            if failed:
                # No response carries the error with acks=0: closing the
                # connection is how Kafka tells the client (it reconnects).
                raise P.ProtocolError(f"closing after an acks=0 produce that failed: {failed}")
            return None
        return W.produce_response(corr, ver, topics)

    def timestamp_window(self, now_ms: int, config=None) -> tuple[int, int]:
        """The record timestamps a Produce accepts at ``now_ms`` (Kafka's
        ``message.timestamp.before.max.ms`` / ``after.max.ms``: the topic's
        ``config`` where it sets them, else the server's), clipped to the
        log's 0 .. MAX_TIMESTAMP. A LogAppendTime topic checks none (the
        log's time replaces the client's), as Kafka."""
        if config is not None and config.log_append_time:
            return 0, MAX_TIMESTAMP
        before = self.timestamp_before_max_ms
        after = self.timestamp_after_max_ms
        if config is not None:
            if config.message_timestamp_before_max_ms is not None:
                before = config.message_timestamp_before_max_ms
            if config.message_timestamp_after_max_ms is not None:
                after = config.message_timestamp_after_max_ms
        lo = 0 if before is None else now_ms - before
        hi = MAX_TIMESTAMP if after is None else now_ms + after
        return max(lo, 0), min(hi, MAX_TIMESTAMP)

    async def _append(self, p, records, fsync: bool):
        """Append a Produce request's records field to ``p``; the first offset,
        or None for batches this server does not take (transactional, control).

        All or nothing per partition, as Kafka: its LogValidator checks every
        batch of a partition's records (CRC, records, timestamps), and the log
        checks every batch's producer sequence, before any is appended. So
        every batch is checked here (``add_batches``) before the first is
        appended, and a request's idempotent batches must continue each
        other's sequences (then the first one's check against the producer
        state decides for all)."""
        if not records:
            return p.end_offset
        spans = split_batches(records)
        if any(s.attributes & (ATTR_TRANSACTIONAL | ATTR_CONTROL) for s in spans):
            return None
        cfg = p.config
        limit = cfg.max_record_bytes + HEADER_SIZE
        for s in spans:
            if s.length > limit:
                raise RecordTooLargeError(
                    f"a batch of {s.length} bytes is over the topic's max.message.bytes "
                    f"({cfg.max_record_bytes}) plus the {HEADER_SIZE}-byte header")
        lo, hi = self.timestamp_window(time.time_ns() // 1_000_000, cfg)
        idempotent = spans[0].producer_id >= 0
        if idempotent or any(s.producer_id >= 0 for s in spans):
            _check_sequences(records, spans)
        forced = cfg.compression
        if forced != "producer" and any(s.codec != codec_id(forced) for s in spans):
            return await self._append_recompressed(p, records, spans, fsync, lo, hi)
        enc = self._encoder
        try:
            enc.clear()
            enc.add_batches(records, lo, hi)           # every batch checked, nothing appended yet
            if not idempotent:
                first, end = p.append_encoded(enc)
            else:
                if len(spans) > 1:                   # one idempotent batch per append
                    enc.clear()
                    enc.add_batches(records[:spans[0].length], lo, hi)
                first, end, duplicate = self._append_idempotent(p, enc, spans[0])
                if len(spans) > 1 and not duplicate:
                    # The first batch was new, so the others (continuing its
                    # sequence) are too: one append each, as the producer
                    # state takes them. (After a duplicate Kafka answers with
                    # its offsets and appends none of the rest.)
                    for s in spans[1:]:
                        enc.clear()
                        enc.add_batches(records[s.position:s.position + s.length], lo, hi)
                        _, end, _ = self._append_idempotent(p, enc, s)
        finally:
            enc.clear()
            if enc.nbytes > (8 << 20):
                enc.shrink()
        if fsync and end >= 0:
            await asyncio.get_running_loop().run_in_executor(self._sync_pool, p.wait_durable, end)
        return first

    @staticmethod
    def _append_idempotent(p, enc, span) -> tuple[int, int, bool]:
        """One idempotent batch: ``(first, end, duplicate)``. A retry of one
        of the producer's last batches is answered with its original offsets,
        and ``duplicate`` says so."""
        before = p.end_offset
        first, end = p.append_encoded(
            enc, producer=(span.producer_id, span.producer_epoch, span.base_sequence))
        return first, end, first < before

    async def _append_recompressed(self, p, records, spans, fsync: bool, lo: int, hi: int) -> int:
        """The topic forces a codec other than the batches': every batch is
        decoded and re-encoded with it (:func:`_reencode`) before the first
        is appended, so a failing batch leaves none appended, as on the
        zero-copy path. Plain batches go in one append (atomic); an
        idempotent producer's batches (``_check_sequences`` made them continue
        each other) one append each, the first one's sequence check deciding
        for all."""
        encoders = _reencode(p, records, spans, lo, hi)
        if not encoders:
            return p.end_offset
        first = end = -1
        for k, (producer, enc) in enumerate(encoders):
            before = p.end_offset
            base, end = p.append_encoded(enc, producer=producer)
            if k == 0:
                first = base
                if base < before:
                    break                       # a retry: answered with its offsets, as Kafka
        if fsync and end >= 0:
            await asyncio.get_running_loop().run_in_executor(self._sync_pool, p.wait_durable, end)
        return first


def _reencode(p, records, spans, lo: int, hi: int) -> list:
    """A Produce request's batches for ``p`` decoded, their timestamps checked
    against ``lo .. hi``, and re-encoded with the topic's codec:
    ``[(producer, BatchEncoder)]``, where ``producer`` is None for one
    encoder holding every plain record, else ``(id, epoch, base_sequence)``
    of one idempotent batch. Raises what an append would (a record over
    ``max.message.bytes``, a keyless one in a compacted topic) before
    anything is appended."""
    batches = decode_batches(records)
    for i, b in enumerate(batches):
        for j, r in enumerate(b.records):
            if not lo <= r[3] <= hi:
                raise InvalidTimestampError(
                    f"timestamp {r[3]} of record {j} of batch {i} is out of range: the "
                    f"timestamp should be within [{lo}, {hi}] ms")
    cfg = p.config
    codec = codec_id(cfg.compression)
    now = time.time_ns() // 1_000_000
    if spans[0].producer_id < 0:
        groups = [(None, [r for b in batches for r in b.records])]
    else:
        groups = [((b.producer_id, b.producer_epoch, b.base_sequence), b.records)
                  for b in batches]
    out = []
    for producer, recs in groups:
        if not recs:
            continue
        if cfg.compacted:
            refuse_keyless(recs, p.topic)
        enc = BatchEncoder(cfg.max_batch_bytes, cfg.max_record_bytes)
        enc.encode(recs, now, *(producer or ()))
        if producer is not None and enc.batches != 1:
            raise RecordTooLargeError(
                f"an idempotent batch of {len(recs)} records re-encodes to {enc.batches} batches "
                f"of the topic's max_batch_bytes ({cfg.max_batch_bytes}); its sequence must stay "
                "one batch")
        if codec:
            enc.compress(codec)
        out.append((producer, enc))
    return out
