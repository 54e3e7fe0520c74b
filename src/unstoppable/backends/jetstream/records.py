"""Records on JetStream: how a record's key, headers, timestamp and null value
travel as message headers, the record view the consumer gets, and the names
of a partition's stream and subjects.
"""
from __future__ import annotations

import base64
import datetime

from unstoppable.backends.jetstream._constants import (
    _H_HDRS,
    _H_KEY,
    _H_NULL,
    _H_STORED,
    _H_TS,
)
from unstoppable.backends.jetstream._wire import (
    header_value,
)


def _enc(name: str) -> str:
    """A topic or group name inside stream names and subject tokens, where
    ``.`` separates tokens: it is written ``=`` (which names cannot contain)."""
    return name.replace(".", "=")


def _ms_to_rfc3339(ms: int) -> str | None:
    """RFC 3339 UTC time of ``ms``; None past the year 9999."""
    try:
        dt = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _rfc3339_to_ms(s: bytes | str) -> int:
    if isinstance(s, bytes):
        s = s.decode()
    head, _, frac = s.rstrip("Z").partition(".")
    dt = datetime.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return int(dt.timestamp()) * 1000 + int((frac + "000")[:3])


# ---------------------------------------------------------------------------
# Records

class JetStreamRecord:
    """One record read from JetStream: the counterpart of ``us.Record``, with
    the same attributes (``topic``, ``partition``, ``offset``, ``timestamp``,
    ``key``, ``value``, ``headers``). ``key`` and ``value`` are memoryviews
    (or None); key and headers are decoded from the message headers on
    first use."""

    __slots__ = ("topic", "partition", "offset", "timestamp", "_payload", "_hdr")

    def __init__(self, topic: str, partition: int, offset: int, timestamp: int, payload: bytes,
                 hdr: bytes):
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp
        self._payload = payload
        self._hdr = hdr

    @property
    def value(self) -> memoryview | None:
        """The value as a memoryview, or None."""
        if self._hdr.find(_H_NULL) >= 0:
            return None
        return memoryview(self._payload)

    @property
    def key(self) -> memoryview | None:
        """The key as a memoryview, or None."""
        k = header_value(self._hdr, _H_KEY)
        if k is None:
            return None
        return memoryview(b"" if k == b"-" else base64.b64decode(k))

    @property
    def headers(self) -> list:
        """A list of ``(key: str, value: bytes | None)`` pairs, in stored order."""
        raw = header_value(self._hdr, _H_HDRS)
        return [] if raw is None else _decode_headers(raw)

    def __repr__(self):
        return (f"<JetStreamRecord {self.topic}/{self.partition}@{self.offset} ts={self.timestamp} "
                f"value={len(self._payload)} bytes>")


def _encode_headers(headers) -> bytes:
    """Record headers as one header value: comma-separated ``b64(name)`` items,
    followed by ``:b64(value)`` unless the value is None."""
    out = []
    for k, v in headers:
        name = base64.b64encode(k.encode("utf-8", "surrogateescape"))
        out.append(name if v is None else name + b":" + base64.b64encode(v))
    return b",".join(out)


def _decode_headers(raw: bytes) -> list:
    out = []
    for item in raw.split(b","):
        if not item:
            continue
        name, sep, val = item.partition(b":")
        out.append((base64.b64decode(name).decode("utf-8", "surrogateescape"),
                    base64.b64decode(val) if sep else None))
    return out


def _record_ts(hdr: bytes) -> int:
    i = hdr.find(_H_TS)
    if i >= 0:
        i += 9
        return int(hdr[i:hdr.index(b"\r", i)])
    stored = header_value(hdr, _H_STORED)  # written by another client: the server's time
    return _rfc3339_to_ms(stored) if stored else 0


def _record_headers(rec, ts: int) -> tuple[bytes, bytes]:
    """(extra header lines, payload) of one storage record."""
    if rec.__class__ is bytes:
        return b"Us-Ts: %d\r\n" % ts, rec
    if rec is None:
        return b"Us-Ts: %d\r\nUs-Null: 1\r\n" % ts, b""
    if isinstance(rec, (bytearray, memoryview)):
        return b"Us-Ts: %d\r\n" % ts, bytes(rec)
    key, value = rec[0], rec[1]
    hs = rec[2] if len(rec) > 2 else None
    if len(rec) > 3 and rec[3] is not None:
        ts = rec[3]
    h = b"Us-Ts: %d\r\n" % ts
    if key is not None:
        h += b"Us-Key: " + (base64.b64encode(key) if len(key) else b"-") + b"\r\n"
    if value is None:
        h += b"Us-Null: 1\r\n"
        value = b""
    elif value.__class__ is not bytes:
        value = bytes(value)
    if hs:
        h += b"Us-Headers: " + _encode_headers(hs) + b"\r\n"
    return h, value


class _Part:
    """Names of one partition's stream and subjects."""

    __slots__ = ("topic", "partition", "key", "stream", "prefix", "plain", "info_api", "get_api",
                 "direct")

    def __init__(self, topic: str, partition: int):
        self.topic = topic
        self.partition = partition
        self.key = (topic, partition)
        self.stream = f"US_{_enc(topic)}_{partition}"
        self.prefix = f"us.{_enc(topic)}.{partition}"
        self.plain = (self.prefix + ".x").encode()
        self.info_api = "STREAM.INFO." + self.stream
        self.get_api = "STREAM.MSG.GET." + self.stream
        self.direct = ("$JS.API.DIRECT.GET." + self.stream).encode()

    def pid_subject(self, pid: int) -> bytes:
        return f"{self.prefix}.p{pid}".encode()
