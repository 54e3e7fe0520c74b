"""Hand-written framing of the two hot paths: Produce requests and responses,
and Fetch responses. Every other request and response goes through kio
(protocol.py).

Why by hand: kio copies every record field it decodes (a 1 MiB Produce
request's records are copied once more than needed) and builds a dataclass
per partition; a Fetch response built by kio must hold the records as bytes,
which rules out ``sendfile``. Measured on this machine class
(docs/machine-facts.md): kio encodes FetchResponse v11 of 16 x 16 KiB in 65 us
against 5.5 us by ``struct``. Here a Fetch response is a list of chunks:
``bytes`` for the framing and :class:`~unstoppable.storage.partition.ByteRange`
for records, which the connection hands to ``sendfile``.

Produce request v3-v8 (non-flexible; all big-endian)::

    transactional_id  nullable string (i16 length, -1 null)
    acks              i16
    timeout_ms        i32
    topic_data        [i32 n] name: string, partition_data: [i32 n]
                          index: i32, records: nullable bytes (i32 length)

Produce response v3-v8::

    responses   [i32 n] name: string, partition_responses: [i32 n]
                    index i32, error_code i16, base_offset i64,
                    log_append_time_ms i64, log_start_offset i64 (v5+),
                    record_errors [i32 n] (v8+; always empty here),
                    error_message nullable string (v8+; always null here)
    throttle_time_ms  i32

Fetch response v4-v11::

    throttle_time_ms i32, error_code i16 (v7+), session_id i32 (v7+),
    responses   [i32 n] topic: string, partitions: [i32 n]
                    partition_index i32, error_code i16, high_watermark i64,
                    last_stable_offset i64, log_start_offset i64 (v5+),
                    aborted_transactions nullable array (null here),
                    preferred_read_replica i32 (v11+), records nullable bytes
"""
from __future__ import annotations

import struct

from unstoppable.server.protocol import ProtocolError

__all__ = ["parse_produce", "produce_acks", "produce_response", "fetch_response"]

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_H_I_ = struct.Struct(">hi")
_SIZE_CORR = struct.Struct(">ii")


def produce_acks(frame, off: int) -> int | None:
    """The acks of a Produce request whose body starts at ``off`` (after the
    request header), or None when the frame is too short to say (the full
    parse then names the fault)."""
    try:
        (tl,) = _I16.unpack_from(frame, off)
        return _I16.unpack_from(frame, off + 2 + max(tl, 0))[0]
    except struct.error:
        return None


class _Reader:
    """Bounds-checked reads from a request frame (views, no copies)."""

    __slots__ = ("mv", "pos", "end")

    def __init__(self, frame, pos: int):
        self.mv = memoryview(frame)
        self.pos = pos
        self.end = len(self.mv)

    def _need(self, n: int, what: str) -> int:
        p = self.pos
        if n < 0 or p + n > self.end:
            raise ProtocolError(f"Produce request: {what} runs past the end of the frame")
        self.pos = p + n
        return p

    def i16(self, what: str) -> int:
        return _I16.unpack_from(self.mv, self._need(2, what))[0]

    def i32(self, what: str) -> int:
        return _I32.unpack_from(self.mv, self._need(4, what))[0]

    def string(self, what: str, nullable: bool = False) -> str | None:
        n = self.i16(what)
        if n == -1 and nullable:
            return None
        if n < 0:
            raise ProtocolError(f"Produce request: {what} has length {n}")
        p = self._need(n, what)
        try:
            return str(self.mv[p:p + n], "utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"Produce request: {what} is not UTF-8") from None

    def nullable_bytes(self, what: str):
        n = self.i32(what)
        if n == -1:
            return None
        if n < 0:
            raise ProtocolError(f"Produce request: {what} has length {n}")
        p = self._need(n, what)
        return self.mv[p:p + n]

    def count(self, what: str) -> int:
        n = self.i32(what)
        if n < 0:
            raise ProtocolError(f"Produce request: {what} count {n}")
        return n


def parse_produce(frame, pos: int):
    """parse_produce(frame, pos) -> (transactional_id, acks, timeout_ms, topics)

    The body of a Produce request v3-v8 starting at ``pos`` of ``frame``.
    ``topics`` is a list of ``(name, [(partition, records or None), ...])``;
    ``records`` are memoryviews into ``frame``. Raises ProtocolError when the
    body does not parse or leaves bytes over.
    """
    r = _Reader(frame, pos)
    txn = r.string("transactional_id", nullable=True)
    acks = r.i16("acks")
    timeout = r.i32("timeout_ms")
    topics = []
    for _ in range(r.count("topic_data")):
        name = r.string("topic name")
        parts = []
        for _ in range(r.count("partition_data")):
            index = r.i32("partition index")
            parts.append((index, r.nullable_bytes("records")))
        topics.append((name, parts))
    if r.pos != r.end:
        raise ProtocolError(f"Produce request: {r.end - r.pos} bytes left after the body")
    return txn, acks, timeout, topics


def _string(s: str) -> bytes:
    b = s.encode()
    return _I16.pack(len(b)) + b


def produce_response(corr: int, ver: int, topics) -> bytes:
    """produce_response(corr, ver, topics) -> bytes

    A whole Produce response frame (v3-v8). ``topics`` is a list of
    ``(name, [(partition, error_code, base_offset, log_start_offset,
    log_append_time, detail), ...])``: log_append_time -1, or a
    LogAppendTime topic's append time; detail None, or (v8, KIP-467)
    ``(record_errors, error_message)`` with record_errors a list of
    ``(batch_index, message)``.
    """
    out = [b"", _I32.pack(len(topics))]
    tail = b""
    if ver >= 8:
        tail += b"\0\0\0\0\xff\xff"          # record_errors: empty; error_message: null
    for name, parts in topics:
        out.append(_string(name))
        out.append(_I32.pack(len(parts)))
        for index, err, base, start, append_time, detail in parts:
            if ver >= 5:
                out.append(struct.pack(">ihqqq", index, err, base, append_time, start))
            else:
                out.append(struct.pack(">ihqq", index, err, base, append_time))
            if detail is not None and tail:
                out.append(_record_errors(*detail))
            elif tail:
                out.append(tail)
    out.append(b"\0\0\0\0")                 # throttle_time_ms
    body_len = sum(map(len, out)) + 4
    out[0] = _SIZE_CORR.pack(body_len, corr)
    return b"".join(out)


def _record_errors(record_errors, message) -> bytes:
    """Produce v8's record_errors array and error_message (KIP-467)."""
    out = [_I32.pack(len(record_errors))]
    for i, msg in record_errors:
        out += [_I32.pack(i), _I16.pack(-1) if msg is None else _string(msg)]
    out.append(_I16.pack(-1) if message is None else _string(message))
    return b"".join(out)


def fetch_response(corr: int, ver: int, topics) -> list:
    """fetch_response(corr, ver, topics) -> list of chunks

    A whole Fetch response frame (v4-v11) as chunks to send in order:
    ``bytes``, and the records of each partition as given (any object with a
    ``length``, e.g. a ByteRange, or bytes). ``topics`` is a list of
    ``(name, [(partition, error_code, high_watermark, log_start_offset,
    records or None), ...])``.
    """
    chunks: list = []
    cur = bytearray()
    cur += b"\0\0\0\0"                      # throttle_time_ms
    if ver >= 7:
        cur += b"\0\0\0\0\0\0"              # error_code 0, session_id 0 (sessions declined)
    cur += _I32.pack(len(topics))
    total = 0
    v5 = ver >= 5
    v11 = ver >= 11
    for name, parts in topics:
        cur += _string(name)
        cur += _I32.pack(len(parts))
        for index, err, hw, start, records in parts:
            cur += struct.pack(">ihqq", index, err, hw, hw)
            if v5:
                cur += struct.pack(">q", start)
            cur += b"\xff\xff\xff\xff"      # aborted_transactions: null
            if v11:
                cur += b"\xff\xff\xff\xff"  # preferred_read_replica: -1
            if records is None:
                cur += _I32.pack(0)
                continue
            n = len(records) if isinstance(records, (bytes, bytearray)) else records.length
            cur += _I32.pack(n)
            total += len(cur) + n
            chunks.append(bytes(cur))
            chunks.append(records)
            cur = bytearray()
    total += len(cur)
    if cur:
        chunks.append(bytes(cur))
    chunks.insert(0, _SIZE_CORR.pack(total + 4, corr))
    return chunks
