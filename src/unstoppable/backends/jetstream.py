"""The Producer and Consumer on a NATS JetStream cluster.

``log = await unstoppable.connect("nats://h1:4222,h2:4222")`` returns a
:class:`JetStreamLog`; ``Producer(log, ...)`` and ``Consumer(log, ...)`` run
on it unchanged, each through its own :class:`JetStreamBackend`.

The mapping (docs/JETSTREAM.md has the full story):

* topic ``t`` with N partitions = N streams ``US_<t>_<p>``, each with the
  subjects ``us.<t>.<p>.>``, its own replicas and its own RAFT leader. In
  names and subjects a ``.`` of a topic or group name is written ``=``.
* offset = stream sequence - 1: dense, from 0, one message per record. The
  value is the payload; key, record headers and the record timestamp travel
  as message headers (``Us-Key``, ``Us-Headers``, ``Us-Ts``; ``Us-Null`` for
  a None value).
* appends are JetStream atomic batches (all-or-nothing, contiguous): every
  batch of one ``append`` call, up to 1000 records, in one. Contiguity is
  what makes ``base offset + i`` the offset of a batch's i-th record.
* an idempotent producer publishes on ``us.<t>.<p>.p<producer id>``; every
  record carries ``Nats-Msg-Id: <pid>-<partition>-<epoch>-<sequence>`` and
  the first message of each atomic batch expects the last stream sequence
  of that subject (``Nats-Expected-Last-Subject-Sequence``), so an attempt
  lands only on top of the state it was built from: a retry after an unknown
  outcome can never append twice, however late the first attempt arrives.
* group membership, partition ownership and producer-id claims are leases:
  messages on ``usx.lease.>`` in the stream ``US__LEASES``, whose ``max_age``
  is the lease TTL; holders renew them, the server expires the rest.
* committed offsets live in the replicated stream ``US__OFFSETS`` (one
  subject per group and partition, the last message kept), written as one
  atomic batch per commit.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import datetime
import itertools
import json
import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from unstoppable.backends._wire import Wire, api_error, header_value, status_of
from unstoppable.client._types import TopicInfo, TopicPartition
from unstoppable.client.backend import Backend, GroupMember
from unstoppable.client.offsets import OffsetStore
from unstoppable.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    DuplicateSequenceError,
    FencedMemberError,
    InvalidTopicNameError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    PartitionOutOfRangeError,
    ProducerFencedError,
    ProducerIdInUseError,
    RecordTooLargeError,
    TopicConfigError,
    TopicExistsError,
    UnknownTopicError,
)
from unstoppable.storage.groups import (ASSIGNORS, MemberInfo, assign, member_description,
                                        parse_member_description, validate_group_name)
from unstoppable.storage.log import validate_topic_name

__all__ = ["JetStreamLog", "JetStreamBackend", "JetStreamTopic", "JetStreamRecord",
           "JetStreamOffsetStore", "MAX_ATOMIC_BATCH", "MAX_BATCH_BYTES"]

#: Messages in one JetStream atomic batch (a server limit).
MAX_ATOMIC_BATCH = 1000
#: ``TopicInfo.max_batch_bytes`` of every JetStream topic. The producer sizes a
#: record at >= 22 bytes (its framing estimate) and keeps batches under this
#: bound minus a 52-byte header, so no producer batch exceeds one atomic batch.
MAX_BATCH_BYTES = MAX_ATOMIC_BATCH * 22 + 52
_GROUP_BYTES = 8 << 20         # payload bytes of one atomic publish, at most
_SEQ_MOD = 1 << 31             # producer sequence numbers wrap here
_MAX_HEADER = 65535            # JetStream stores a header block's length in 16 bits

LEASES_STREAM = "US__LEASES"
OFFSETS_STREAM = "US__OFFSETS"
_LEASE = "usx.lease"
_OFFSETS = "usx.offsets"

# JetStream error codes the backend reacts to.
_E_STREAM_NOT_FOUND = 10059
_E_NO_MESSAGE = 10037
_E_MSG_DELETE_NONE = 10057
_E_WRONG_LAST_SEQ = 10071
_E_BATCH_DUPLICATE = 10201
_E_STREAM_EXISTS = 10058
_E_INSUFFICIENT = 10023
_E_JS_UNAVAILABLE = 10008

_H_SEQ = b"\r\nNats-Sequence: "
_H_TS = b"\r\nUs-Ts: "
_H_KEY = b"\r\nUs-Key: "
_H_NULL = b"\r\nUs-Null: "
_H_HDRS = b"\r\nUs-Headers: "
_H_STORED = b"\r\nNats-Time-Stamp: "
_H_MSGID = b"\r\nNats-Msg-Id: "
_H_LAST = b"\r\nNats-Last-Sequence: "
_H_PENDING = b"\r\nNats-Num-Pending: "

_TRANSIENT = (BackendUnavailableError, BackendTimeoutError, ConnectionError, TimeoutError)


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


# ---------------------------------------------------------------------------
# Topics, partitions, leases

class JetStreamTopic(NamedTuple):
    """A topic on JetStream as ``create_topic`` made (or found) it."""
    name: str
    partitions: int
    replicas: int
    max_record_bytes: int
    retention_ms: int | None
    retention_bytes: int | None


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


class _Lease:
    __slots__ = ("subject", "value", "rev", "lost")

    def __init__(self, subject: bytes, value: bytes, rev: int):
        self.subject = subject
        self.value = value
        self.rev = rev          # stream sequence of our current lease message
        self.lost = False


class _Leases:
    """Leases on ``US__LEASES``: taken with an expected last subject sequence
    of 0 (nobody holds it), renewed every ttl/4 with our own last sequence,
    released by deleting our message. The server forgets a lease whose holder
    stopped renewing it ``ttl`` seconds after the last renewal."""

    def __init__(self, log: "JetStreamLog"):
        self.log = log
        self.held: set = set()
        self._task: asyncio.Task | None = None
        self._releasing: dict[bytes, asyncio.Task] = {}

    async def _put(self, subject: bytes, value: bytes, expected: int) -> int | None:
        hdr = b"NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: %d\r\n\r\n" % expected
        _, p = await self.log.wire.request(subject, value, hdr)
        ack = json.loads(p)
        err = ack.get("error")
        if err is not None:
            if err.get("err_code") == _E_WRONG_LAST_SEQ:
                return None
            raise api_error(f"lease {subject.decode()}", err)
        return int(ack["seq"])

    async def holder(self, subject: bytes) -> tuple[int, bytes] | None:
        """``(stream sequence, value)`` of the current lease message, or None."""
        msg = await self.log._last_message(LEASES_STREAM, subject.decode())
        return None if msg is None else (msg[0], msg[1])

    async def acquire(self, subject: bytes, value: bytes) -> tuple[_Lease | None, bytes | None]:
        """``(lease, None)``, or ``(None, holder's value)`` when someone holds
        it. ``value`` must be unique to this holder: an attempt whose
        acknowledgement was lost is recognised as ours by it."""
        pending = self._releasing.get(subject)
        if pending is not None:
            await asyncio.shield(pending)
        await self.log._ensure_internal_streams()
        for _ in range(3):
            try:
                rev = await self.log._retrying(lambda: self._put(subject, value, 0))
            except BackendTimeoutError:
                rev = None  # it may have landed: look below
            if rev is None:
                held = await self.log._retrying(lambda: self.holder(subject))
                if held is None:
                    continue  # released or expired meanwhile: try again
                if held[1] != value:
                    return None, held[1]
                rev = held[0]  # our own attempt, acknowledgement lost
            lease = _Lease(subject, value, rev)
            self.held.add(lease)
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._keeper())
            return lease, None
        return None, b""

    async def release(self, lease: _Lease) -> None:
        self.held.discard(lease)
        if lease.lost:
            return
        lease.lost = True
        try:
            await self.log.wire.api(f"STREAM.MSG.DELETE.{LEASES_STREAM}", {"seq": lease.rev})
        except BackendError as e:
            if e.err_code != _E_MSG_DELETE_NONE:
                raise
        except _TRANSIENT:
            pass  # it expires by itself within the TTL

    def release_soon(self, lease: _Lease) -> asyncio.Task | None:
        """Release without waiting (for synchronous callers); a later acquire
        of the same subject in this process waits for it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.held.discard(lease)
            return None  # no loop: the lease expires within the TTL
        task = loop.create_task(self.release(lease))
        self._releasing[lease.subject] = task
        task.add_done_callback(lambda t, s=lease.subject: (
            self._releasing.pop(s, None) if self._releasing.get(s) is t else None,
            t.cancelled() or t.exception()))
        return task

    async def _renew(self, lease: _Lease) -> None:
        try:
            rev = await self._put(lease.subject, lease.value, lease.rev)
            if rev is None:
                held = await self.holder(lease.subject)
                if held is not None and held[1] == lease.value:
                    rev = held[0]  # an earlier renewal landed unacknowledged
                elif held is None:  # expired meanwhile; take it again unless somebody else did
                    rev = await self._put(lease.subject, lease.value, 0)
        except (BackendError, *_TRANSIENT):
            return  # try again at the next round; the TTL gives us time
        if rev is None:
            lease.lost = True
            self.held.discard(lease)
        else:
            lease.rev = rev

    async def _keeper(self) -> None:
        while self.held:
            await asyncio.sleep(self.log.lease_ttl / 4)
            leases = [lease for lease in list(self.held) if not lease.lost]
            if leases:
                # One failed renewal must not end the others' (return_exceptions).
                await asyncio.gather(*(self._renew(lease) for lease in leases), return_exceptions=True)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:
                pass
        for lease in list(self.held):
            try:
                await asyncio.wait_for(self.release(lease), 1.0)
            except Exception:
                pass  # expires within the TTL
        for task in list(self._releasing.values()):
            try:
                await asyncio.wait_for(asyncio.shield(task), 1.0)
            except BaseException:
                pass


# ---------------------------------------------------------------------------
# The log handle

class JetStreamLog:
    """A connection to a NATS JetStream cluster, used as a log: pass it to
    ``Producer``/``Consumer`` as you would a ``us.Log``. Made by
    ``await unstoppable.connect("nats://...")`` or :meth:`connect`.

    Options (all keyword): ``request_timeout`` (s, every request),
    ``publish_timeout`` (s, each atomic publish's acknowledgement; past it
    the producer retries with the same message ids), ``lease_ttl`` (s, how
    long a dead consumer or producer keeps its group membership, partitions
    and producer id), ``retry_for`` (s, how long reads and administrative
    calls retry while the cluster has no leader or no connection),
    ``max_in_flight`` (atomic publishes awaiting acknowledgement at once),
    ``internal_replicas`` (replicas of the lease and offset streams; default
    3 in a cluster of 3 or more, else 1), ``fast`` (False: use only nats-py's
    public calls), ``connect_timeout``, and ``nats_options`` (a dict passed
    to ``nats.connect``: credentials, TLS).
    """

    def __init__(self, nc, wire: Wire, servers: list[str], *, publish_timeout: float, lease_ttl: float,
                 retry_for: float, max_in_flight: int, internal_replicas: int):
        self.nc = nc
        self.wire = wire
        self.servers = servers
        self.publish_timeout = publish_timeout
        self.lease_ttl = lease_ttl
        self.retry_for = retry_for
        self.internal_replicas = internal_replicas
        self.max_payload = int(getattr(nc, "max_payload", 0) or nc._server_info.get("max_payload", 1 << 20))
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._topics: dict[str, TopicInfo] = {}
        self._ends: dict[tuple, int] = {}
        self._waiters: dict[tuple, set] = collections.defaultdict(set)
        self._leases = _Leases(self)
        self._internal_ready = False
        self._internal_lock = asyncio.Lock()
        self._batch_ids = itertools.count(1)
        self._batch_prefix = uuid.uuid4().hex[:12].encode()
        self._closed = False

    @classmethod
    async def connect(cls, servers: Sequence[str], *, request_timeout: float = 5.0,
                      publish_timeout: float = 5.0, lease_ttl: float = 10.0, retry_for: float = 30.0,
                      max_in_flight: int = 64, internal_replicas: int | None = None, fast: bool = True,
                      connect_timeout: float = 2.0, name: str | None = None,
                      nats_options: dict | None = None) -> "JetStreamLog":
        """Connect to ``servers`` (``nats://host:port`` URLs of one cluster)
        and check that JetStream answers."""
        try:
            import nats
        except ImportError as e:
            raise ImportError("the JetStream backend needs nats-py: pip install 'unstoppable[nats]'") from e
        for name_, v in (("request_timeout", request_timeout), ("publish_timeout", publish_timeout),
                         ("lease_ttl", lease_ttl), ("connect_timeout", connect_timeout)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name_} must be a positive number of seconds, got {v!r}")
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"max_in_flight must be an int >= 1, got {max_in_flight!r}")
        servers = list(servers)

        async def quiet(*_):  # reconnects are routine; errors surface on the calls
            return None

        opts = dict(servers=servers, name=name or f"unstoppable-{os.getpid()}",
                    connect_timeout=connect_timeout, allow_reconnect=True, max_reconnect_attempts=-1,
                    reconnect_time_wait=0.25, error_cb=quiet, disconnected_cb=quiet,
                    reconnected_cb=quiet, closed_cb=quiet)
        opts.update(nats_options or {})
        reconnects = opts["max_reconnect_attempts"]
        # nats-py retries a first connection forever when reconnects are
        # unlimited: try each server twice, then allow unlimited reconnects.
        opts["max_reconnect_attempts"] = 1
        try:
            nc = await nats.connect(**opts)
        except Exception as e:
            raise BackendUnavailableError(
                f"cannot connect to NATS at {', '.join(servers)}: {type(e).__name__}: {e}") from e
        nc.options["max_reconnect_attempts"] = reconnects
        wire = Wire(nc, request_timeout=request_timeout, fast=fast)
        try:
            await wire.start()
            info = nc._server_info or {}
            if not info.get("jetstream", True):
                raise BackendError(f"JetStream is not enabled on the NATS server at {nc.connected_url.netloc}"
                                   " (start nats-server with -js)")
            deadline = time.monotonic() + max(request_timeout, connect_timeout)
            while True:
                try:
                    await wire.api("INFO")
                    break
                except BackendUnavailableError:
                    raise BackendError(f"JetStream is not enabled on the NATS servers at {', '.join(servers)}"
                                       " (no JetStream API responder; start nats-server with -js)") from None
                except BackendError as e:
                    if e.err_code != _E_JS_UNAVAILABLE or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)  # a fresh cluster still electing its metadata leader
            if internal_replicas is None:
                nodes = len(info.get("connect_urls") or ()) if info.get("cluster") else 1
                internal_replicas = 3 if nodes >= 3 else 1
        except BaseException:
            await nc.close()
            raise
        return cls(nc, wire, servers, publish_timeout=publish_timeout, lease_ttl=lease_ttl,
                   retry_for=retry_for, max_in_flight=max_in_flight, internal_replicas=internal_replicas)

    # ---------------------------------------------------------------- topics

    async def create_topic(self, name: str, partitions: int = 1, *, replicas: int = 1,
                           retention_ms: int | None = None, retention_bytes: int | None = None,
                           max_record_bytes: int | None = None,
                           duplicate_window_ms: int = 120_000) -> JetStreamTopic:
        """Create a topic of ``partitions`` streams with ``replicas`` copies
        each (1, 3 or 5; at most the cluster size), or return the existing one
        when it has the same partition and replica counts (TopicExistsError
        otherwise).

        ``retention_ms``/``retention_bytes`` limit each partition (JetStream's
        ``max_age``/``max_bytes``; the oldest records go first).
        ``duplicate_window_ms`` is how long the servers remember message ids
        (the stream's duplicate window). ``max_record_bytes`` defaults to what
        fits in one NATS message of the server's ``max_payload``.
        """
        validate_topic_name(name)
        if len(name) > 240:
            raise InvalidTopicNameError(
                f"topic name is {len(name)} characters long; on JetStream the limit is 240 "
                "(stream names carry a prefix and the partition number)")
        for what, v, lo in (("partitions", partitions, 1), ("replicas", replicas, 1),
                            ("duplicate_window_ms", duplicate_window_ms, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise TopicConfigError(f"{what} must be an int >= {lo}, got {v!r}")
        if replicas > 5:
            raise TopicConfigError(f"replicas must be at most 5 on JetStream, got {replicas}")
        for what, v in (("retention_ms", retention_ms), ("retention_bytes", retention_bytes),
                        ("max_record_bytes", max_record_bytes)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise TopicConfigError(f"{what} must be None or an int >= 1, got {v!r}")
        limit = self._record_limit()
        if max_record_bytes is None:
            max_record_bytes = limit
        elif max_record_bytes > limit:
            raise TopicConfigError(
                f"max_record_bytes={max_record_bytes} does not fit in one NATS message: the server's "
                f"max_payload is {self.max_payload} bytes, so at most {limit}")
        existing = await self._topic_streams(name)
        if existing is not None:
            if (existing.partitions, existing.replicas) != (partitions, replicas):
                raise TopicExistsError(
                    f"topic {name!r} exists with partitions={existing.partitions}, "
                    f"replicas={existing.replicas}; asked for partitions={partitions}, replicas={replicas}")
            return existing
        dup_ns = duplicate_window_ms * 1_000_000
        if retention_ms is not None:
            dup_ns = min(dup_ns, retention_ms * 1_000_000)
        meta = {"unstoppable.topic": name, "unstoppable.partitions": str(partitions),
                "unstoppable.replicas": str(replicas), "unstoppable.max_record_bytes": str(max_record_bytes)}
        # Partition 0 last: the topic exists for readers once its stream does.
        for p in reversed(range(partitions)):
            part = _Part(name, p)
            cfg = {"name": part.stream, "subjects": [part.prefix + ".>"], "retention": "limits",
                   "storage": "file", "num_replicas": replicas, "discard": "old",
                   "max_age": (retention_ms or 0) * 1_000_000,
                   "max_bytes": retention_bytes if retention_bytes is not None else -1,
                   "duplicate_window": dup_ns, "allow_atomic": True, "allow_direct": True,
                   "metadata": dict(meta, **{"unstoppable.partition": str(p)})}
            try:
                await self._retrying(lambda part=part, cfg=cfg: self.wire.api("STREAM.CREATE." + part.stream, cfg))
            except BackendError as e:
                if e.err_code == _E_STREAM_EXISTS:
                    raise TopicExistsError(
                        f"stream {part.stream} of topic {name!r} exists with another configuration: "
                        f"{e.description}") from None
                if e.err_code == _E_INSUFFICIENT or "insufficient" in e.description or "replicas" in e.description:
                    raise TopicConfigError(
                        f"cannot create topic {name!r} with replicas={replicas}: {e.description} "
                        "(a stream needs as many JetStream servers as replicas)") from None
                raise
        return JetStreamTopic(name, partitions, replicas, max_record_bytes, retention_ms, retention_bytes)

    async def delete_topic(self, name: str) -> None:
        """Delete a topic and all its records (UnknownTopicError if there is none)."""
        info = await self._topic_streams(name)
        if info is None:
            raise UnknownTopicError(f"no topic {name!r} on {', '.join(self.servers)}")
        self._topics.pop(name, None)
        for p in range(info.partitions):
            try:
                await self._retrying(lambda p=p: self.wire.api("STREAM.DELETE." + _Part(name, p).stream))
            except BackendError as e:
                if e.err_code != _E_STREAM_NOT_FOUND:
                    raise
            self._ends.pop((name, p), None)

    async def _topic_streams(self, name: str) -> JetStreamTopic | None:
        try:
            si = await self._retrying(lambda: self.wire.api(_Part(name, 0).info_api))
        except BackendError as e:
            if e.err_code == _E_STREAM_NOT_FOUND:
                return None
            raise
        cfg = si["config"]
        meta = cfg.get("metadata") or {}
        if meta.get("unstoppable.topic") != name:
            raise TopicExistsError(f"stream {cfg['name']} exists but was not made by unstoppable "
                                   f"for topic {name!r}")
        age = cfg.get("max_age") or 0
        mb = cfg.get("max_bytes", -1)
        return JetStreamTopic(name, int(meta["unstoppable.partitions"]), int(cfg.get("num_replicas", 1)),
                              int(meta["unstoppable.max_record_bytes"]), age // 1_000_000 or None,
                              mb if mb and mb > 0 else None)

    async def topics(self) -> list[str]:
        """Names of the topics on the cluster, sorted (as ``us.Log.topics()``):
        those whose partition 0 stream exists, made by unstoppable (that stream
        is created last, so a listed topic has all its partitions)."""
        names: set = set()
        offset = 0
        while True:
            r = await self._retrying(lambda offset=offset: self.wire.api(
                "STREAM.LIST", {"offset": offset, "subject": "us.>"}))
            streams = r.get("streams") or []
            for s in streams:
                cfg = s.get("config") or {}
                meta = cfg.get("metadata") or {}
                name = meta.get("unstoppable.topic")
                if (name and meta.get("unstoppable.partition") == "0"
                        and cfg.get("name") == _Part(name, 0).stream):
                    names.add(name)
            offset += len(streams)
            if not streams or offset >= int(r.get("total") or 0):
                return sorted(names)

    async def describe_topic(self, name: str) -> JetStreamTopic:
        """The topic as :meth:`create_topic` made it (partitions, replicas,
        limits); UnknownTopicError when there is none."""
        validate_topic_name(name)
        t = await self._topic_streams(name)
        if t is None:
            raise UnknownTopicError(f"no topic {name!r} on {', '.join(self.servers)}")
        return t

    async def topic_info(self, name: str) -> TopicInfo:
        """Partition count and limits of a topic (cached: they never change)."""
        info = self._topics.get(name)
        if info is None:
            validate_topic_name(name)
            t = await self._topic_streams(name)
            if t is None:
                raise UnknownTopicError(f"no topic {name!r} on {', '.join(self.servers)}")
            info = self._topics[name] = TopicInfo(name, t.partitions, t.max_record_bytes, MAX_BATCH_BYTES)
        return info

    def _record_limit(self) -> int:
        # Keys and headers travel base64-encoded (4/3 of their size) beside
        # about 300 bytes of control headers: 3/4 of max_payload, less 1 KiB,
        # always fits.
        return max((self.max_payload - 1024) * 3 // 4, 1)

    # -------------------------------------------------------------- internals

    async def _retrying(self, fn):
        """``await fn()``, retried on transient failures (no leader, no
        connection, timeouts) for up to ``retry_for`` seconds."""
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            try:
                return await fn()
            except _TRANSIENT:
                if self._closed or time.monotonic() + delay > deadline:
                    raise
            except BackendError as e:
                if e.err_code != _E_JS_UNAVAILABLE or time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _ensure_internal_streams(self) -> None:
        if self._internal_ready:
            return
        async with self._internal_lock:
            if self._internal_ready:
                return
            ttl_ns = int(self.lease_ttl * 1e9)
            leases = {"name": LEASES_STREAM, "subjects": [_LEASE + ".>"], "storage": "file",
                      "num_replicas": self.internal_replicas, "max_age": ttl_ns,
                      "max_msgs_per_subject": 1, "duplicate_window": min(ttl_ns, 120_000_000_000),
                      "discard": "old"}
            offsets = {"name": OFFSETS_STREAM, "subjects": [_OFFSETS + ".>"], "storage": "file",
                       "num_replicas": self.internal_replicas, "max_msgs_per_subject": 1,
                       "allow_atomic": True, "discard": "old"}
            for cfg in (leases, offsets):
                try:
                    await self._retrying(lambda cfg=cfg: self.wire.api("STREAM.INFO." + cfg["name"]))
                    continue
                except BackendError as e:
                    if e.err_code != _E_STREAM_NOT_FOUND:
                        raise
                try:
                    await self._retrying(lambda cfg=cfg: self.wire.api("STREAM.CREATE." + cfg["name"], cfg))
                except BackendError as e:
                    if e.err_code != _E_STREAM_EXISTS:  # another client made it first
                        raise
            self._internal_ready = True

    async def _last_message(self, stream: str, subject: str, timeout: float | None = None):
        """``(stream seq, payload, header bytes)`` of the last message on
        ``subject``, from the stream leader; None if there is none."""
        try:
            r = await self.wire.api(f"STREAM.MSG.GET.{stream}", {"last_by_subj": subject}, timeout)
        except BackendError as e:
            if e.err_code == _E_NO_MESSAGE:
                return None
            raise
        m = r["message"]
        return (int(m["seq"]), base64.b64decode(m.get("data") or b""),
                base64.b64decode(m.get("hdrs") or b""))

    async def _atomic(self, subject: bytes, items: list, first_extra: bytes = b"",
                      timeout: float | None = None, subjects: list | None = None) -> dict:
        """Publish ``items`` (``(extra header lines, payload)``) on ``subject``
        (or message i on ``subjects[i]``, all of one stream) as one atomic
        batch; returns the PubAck (``seq`` of the last message, ``count``).
        Raises BackendError (refused), BackendUnavailableError (no leader),
        BackendTimeoutError (outcome unknown)."""
        wire = self.wire
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def on(h, p):
            if not fut.done():
                fut.set_result((h, p))
            return True

        bid = self._batch_prefix + b"%x" % next(self._batch_ids)
        head = b"NATS/1.0\r\nNats-Batch-Id: " + bid + b"\r\nNats-Batch-Sequence: "
        n = len(items)
        limit = self.max_payload
        async with self._in_flight:
            token, reply = wire.new_reply(on)
            try:
                frames = []
                fast = wire.fast
                for i, (extra, payload) in enumerate(items, 1):
                    if i == 1 and first_extra:
                        extra = first_extra + extra
                    last = i == n
                    h = (b"%s%d\r\n%sNats-Batch-Commit: 1\r\n\r\n" if last else b"%s%d\r\n%s\r\n") % (
                        head, i, extra)
                    lh = len(h)
                    size = lh + len(payload)
                    if size > limit or lh > _MAX_HEADER:
                        raise RecordTooLargeError(
                            f"a record of {len(payload)} value bytes and {lh} header bytes does not "
                            f"fit in one NATS message (max_payload={limit}, headers < 64 KiB)")
                    subj = subject if subjects is None else subjects[i - 1]
                    if not fast:
                        frames.append((subj, payload, reply if last else b"", h))
                    elif last:
                        frames.append(b"HPUB %s %s %d %d\r\n%s%s\r\n" % (subj, reply, lh, size, h, payload))
                    else:
                        frames.append(b"HPUB %s %d %d\r\n%s%s\r\n" % (subj, lh, size, h, payload))
                if fast:
                    await wire.send(b"".join(frames))
                else:
                    for args in frames:
                        await wire.publish_slow(*args)
                t = self.publish_timeout if timeout is None else timeout
                try:
                    h, p = await asyncio.wait_for(fut, t)
                except asyncio.TimeoutError:
                    raise BackendTimeoutError(
                        f"no acknowledgement for {n} records on {subject.decode()} within {t:g} s "
                        "(the outcome is unknown; a retry reuses the message ids)") from None
            finally:
                wire.drop(token)
        if status_of(h) == 503:
            raise BackendUnavailableError(
                f"no JetStream leader takes {subject.decode()} now (no responders; an election may be under way)")
        try:
            ack = json.loads(p)
        except ValueError:
            raise BackendError(f"unreadable acknowledgement on {subject.decode()}: {p[:200]!r}") from None
        err = ack.get("error")
        if err is not None:
            raise api_error(f"publish on {subject.decode()}", err)
        if int(ack.get("count", 1)) != n:
            raise BackendError(f"atomic publish of {n} records on {subject.decode()} was acknowledged "
                               f"for {ack.get('count')} (server too old for atomic batches?)")
        return ack

    def _advanced(self, key: tuple, end: int) -> None:
        if end > self._ends.get(key, 0):
            self._ends[key] = end
            for fn in list(self._waiters.get(key, ())):
                fn()

    # ------------------------------------------------------------- lifecycle

    def __unstoppable_backend__(self) -> "JetStreamBackend":
        """A fresh backend over this connection (what Producer/Consumer use)."""
        return JetStreamBackend(self)

    def backend(self) -> "JetStreamBackend":
        """Same as ``__unstoppable_backend__``."""
        return JetStreamBackend(self)

    async def close(self) -> None:
        """Release leases held through this connection and close it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._leases.close()
        finally:
            await self.wire.close()
            await self.nc.close()

    async def __aenter__(self) -> "JetStreamLog":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def __repr__(self):
        return f"<JetStreamLog {','.join(self.servers)}{' closed' if self._closed else ''}>"


# ---------------------------------------------------------------------------
# The backend

class _PidState:
    """What this client knows about an idempotent producer on one partition."""

    __slots__ = ("epoch", "next", "last_sseq", "recent", "dirty", "loaded")

    def __init__(self):
        self.epoch = 0
        self.next = 0         # sequence its next record must carry
        self.last_sseq = 0    # stream sequence of its last record (0: none)
        self.recent: collections.deque = collections.deque(maxlen=64)  # (first_seq, count, epoch, base)
        self.dirty = True     # in doubt: look at the stream leader before using it
        self.loaded = False   # looked at least once

    def find(self, first: int, count: int, epoch: int):
        for f, c, e, base in self.recent:
            if f == first and c == count and e == epoch:
                return base
        return None


class _Claim:
    """A producer-id claim; ``release()`` gives it up (without waiting)."""

    def __init__(self, backend: "JetStreamBackend", lease: _Lease):
        self._backend = backend
        self._lease = lease

    def release(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            self._backend._claims.discard(self)
            task = self._backend.log._leases.release_soon(lease)
            if task is not None:
                self._backend._releasing.add(task)  # close() waits for it


class JetStreamBackend(Backend):
    """The Backend over a :class:`JetStreamLog` (one per Producer/Consumer;
    they share the log's connection). ``close()`` gives up what this backend
    holds (producer-id claims, group memberships), not the connection."""

    #: Seconds between authoritative looks at the partitions while waiting
    #: for data (wake-ups normally come sooner, from the published messages).
    max_poll = 0.5

    def __init__(self, log: JetStreamLog):
        self.log = log
        self._parts: dict[tuple, _Part] = {}
        self._pids: dict[tuple, _PidState] = {}
        self._claims: set = set()
        self._releasing: set = set()
        self._members: set = set()
        self._starts: dict[tuple, int] = {}

    async def _part(self, topic: str, partition: int) -> _Part:
        part = self._parts.get((topic, partition))
        if part is None:
            info = await self.log.topic_info(topic)
            if isinstance(partition, bool) or not isinstance(partition, int) or not 0 <= partition < info.partitions:
                raise PartitionOutOfRangeError(
                    f"topic {topic!r} has partitions 0 .. {info.partitions - 1}, not {partition}")
            part = self._parts[(topic, partition)] = _Part(topic, partition)
        return part

    async def topic_info(self, topic: str) -> TopicInfo:
        return await self.log.topic_info(topic)

    # -------------------------------------------------------------- producing

    async def append(self, topic: str, partition: int, batches: Sequence, acks: str):
        """Publish the batches in order, up to 1000 records per atomic batch
        (one acknowledgement each). ``acks`` "written" and "fsync" both wait
        for JetStream's acknowledgement: the stream leader has the records
        and, on a replicated stream, a majority of replicas do (see
        docs/JETSTREAM.md on disk syncs)."""
        bases: list = []
        try:
            part = await self._part(topic, partition)
            i, n = 0, len(batches)
            while i < n:
                if batches[i].producer_id >= 0:
                    i = await self._append_idempotent(part, batches, i, bases)
                    continue
                j = _group_end(batches, i, contiguous=False)
                items = []
                for b in batches[i:j]:
                    ts = b.timestamp
                    items.extend(_record_headers(r, ts) for r in b.records)
                ack = await self.log._atomic(part.plain, items)
                base = int(ack["seq"]) - len(items)
                for b in batches[i:j]:
                    bases.append(base)
                    base += len(b.records)
                self.log._advanced(part.key, int(ack["seq"]))
                i = j
        except Exception as e:
            return bases, e
        return bases, None

    async def _pid_state(self, part: _Part, pid: int) -> _PidState:
        """The producer's state on this partition, loaded from the stream
        leader when unknown or in doubt."""
        key = (part.key, pid)
        st = self._pids.get(key)
        if st is None:
            st = self._pids[key] = _PidState()
        if st.dirty:
            # Asked on the producer's path: each attempt waits publish_timeout
            # at most, so a leader election delays it no more than a publish.
            last = await self.log._retrying(lambda: self.log._last_message(
                part.stream, part.pid_subject(pid).decode(), self.log.publish_timeout))
            if last is None:
                st.epoch, st.next, st.last_sseq = 0, 0, 0
            else:
                sseq, _, hdr = last
                mid = header_value(b"\r\n" + hdr.partition(b"\r\n")[2], _H_MSGID) if hdr else None
                try:
                    p_pid, _, epoch, seq = mid.decode().split("-")
                    assert int(p_pid) == pid
                except Exception:
                    raise BackendError(
                        f"message {sseq} on {part.pid_subject(pid).decode()} has no unstoppable message id "
                        f"({mid!r}); was it written by another client?") from None
                st.epoch, st.next, st.last_sseq = int(epoch), (int(seq) + 1) % _SEQ_MOD, sseq
            st.dirty = False
            st.loaded = True
        return st

    def _check_sequence(self, part: _Part, pid: int, st: _PidState, b) -> None:
        where = f"{part.topic}/{part.partition}"
        if st.last_sseq and b.producer_epoch != st.epoch:
            if b.producer_epoch < st.epoch:
                raise ProducerFencedError(
                    f"producer {pid} writes epoch {b.producer_epoch} to {where}, which already has "
                    f"epoch {st.epoch}: a newer instance took over")
            if b.base_sequence != 0:
                raise OutOfOrderSequenceError(
                    f"producer {pid} starts epoch {b.producer_epoch} on {where} at sequence "
                    f"{b.base_sequence}; a new epoch starts at 0")
            return
        d = (b.base_sequence - st.next) % _SEQ_MOD
        if d == 0:
            return
        if d < _SEQ_MOD // 2:
            raise OutOfOrderSequenceError(
                f"producer {pid}'s batch for {where} starts at sequence {b.base_sequence}, but the "
                f"partition expects {st.next}: records in between were never written")
        raise DuplicateSequenceError(
            f"producer {pid}'s batch for {where} at sequence {b.base_sequence} was written before, "
            f"and its offsets are no longer known to this client (next expected: {st.next})")

    async def _append_idempotent(self, part: _Part, batches: Sequence, i: int, bases: list) -> int:
        pid = batches[i].producer_id
        st = self._pids.get((part.key, pid))
        if st is not None and st.dirty and st.loaded:
            # An attempt's outcome was unknown: it may have landed since.
            old_next, old_sseq = st.next, st.last_sseq
            st = await self._pid_state(part, pid)
            if st.last_sseq != old_sseq:
                return self._explain(part, pid, st, batches, i, bases, old_next)
        else:
            st = await self._pid_state(part, pid)
        # Retries of batches this client saw acknowledged: their first offsets.
        while i < len(batches):
            b = batches[i]
            base = st.find(b.base_sequence, len(b.records), b.producer_epoch)
            if base is None:
                break
            bases.append(base)
            i += 1
        if i == len(batches):
            return i
        self._check_sequence(part, pid, st, batches[i])
        j = _group_end(batches, i, contiguous=True)
        epoch = batches[i].producer_epoch
        items = []
        p = part.partition
        for b in batches[i:j]:
            ts, seq = b.timestamp, b.base_sequence
            for r in b.records:
                extra, payload = _record_headers(r, ts)
                items.append((b"Nats-Msg-Id: %d-%d-%d-%d\r\n" % (pid, p, epoch, seq) + extra, payload))
                seq = (seq + 1) % _SEQ_MOD
        expect = b"Nats-Expected-Last-Subject-Sequence: %d\r\n" % st.last_sseq
        try:
            ack = await self.log._atomic(part.pid_subject(pid), items, expect)
        except BackendError as e:
            if e.err_code in (_E_WRONG_LAST_SEQ, _E_BATCH_DUPLICATE):
                return await self._resolve(part, pid, st, batches, i, bases, e)
            st.dirty = True
            raise
        except BaseException:
            st.dirty = True  # the outcome is unknown: look before the next attempt
            raise
        last = int(ack["seq"])
        bases.extend(self._landed(part, st, batches, i, j, last - len(items), last))
        return j

    def _landed(self, part: _Part, st: _PidState, batches: Sequence, i: int, j: int, base: int,
                last_sseq: int) -> list:
        out = []
        for b in batches[i:j]:
            st.recent.append((b.base_sequence, len(b.records), b.producer_epoch, base))
            out.append(base)
            base += len(b.records)
        b = batches[j - 1]
        st.epoch = b.producer_epoch
        st.next = (b.base_sequence + len(b.records)) % _SEQ_MOD
        st.last_sseq = last_sseq
        self.log._advanced(part.key, last_sseq)
        return out

    async def _resolve(self, part: _Part, pid: int, st: _PidState, batches: Sequence, i: int,
                       bases: list, err: BackendError) -> int:
        """The stream refused an atomic publish because the producer's subject
        moved on (or its message ids were seen): an earlier attempt whose
        acknowledgement never came has landed since. Every attempt expects the
        subject's last sequence as this client knew it, so at most one of them
        lands per known state, as one contiguous run of records starting at
        the known next sequence. Work out which batches it held and where."""
        old_next, old_sseq = st.next, st.last_sseq
        st.dirty = True
        st = await self._pid_state(part, pid)
        if st.last_sseq == old_sseq:
            if err.err_code == _E_BATCH_DUPLICATE:
                raise DuplicateSequenceError(
                    f"producer {pid}'s records for {part.topic}/{part.partition} from sequence {old_next} "
                    f"were published before (duplicate message ids): {err.description}")
            raise BackendUnavailableError(
                f"an earlier attempt for {part.topic}/{part.partition} is still being applied "
                f"({err.description}); retrying")
        return self._explain(part, pid, st, batches, i, bases, old_next)

    def _explain(self, part: _Part, pid: int, st: _PidState, batches: Sequence, i: int, bases: list,
                 old_next: int) -> int:
        """Records from ``old_next`` up to the fresh state ``st`` landed
        without an acknowledgement reaching us. Every attempt expects the
        subject's last sequence as this client knew it, so at most one attempt
        lands per known state: one atomic batch, contiguous, ending at
        ``st.last_sseq``, holding the batches from ``i`` on that it covers.
        Returns the index of the first batch still to write."""
        landed = (st.next - old_next) % _SEQ_MOD
        k, total = i, 0
        while k < len(batches) and total < landed:
            b = batches[k]
            if b.producer_id != pid or b.base_sequence != (old_next + total) % _SEQ_MOD:
                break
            total += len(b.records)
            k += 1
        if k == i or total != landed:
            raise ProducerFencedError(
                f"another writer with producer id {pid} appended to {part.topic}/{part.partition} "
                f"(its sequence moved from {old_next} to {st.next} in a way this producer's batches "
                "do not explain)")
        bases.extend(self._landed(part, st, batches, i, k, st.last_sseq - total, st.last_sseq))
        return k

    async def producer_state(self, topic: str, partition: int, producer_id: int):
        part = await self._part(topic, partition)
        key = (part.key, producer_id)
        if key in self._pids:
            self._pids[key].dirty = True
        st = await self._pid_state(part, producer_id)
        return None if st.last_sseq == 0 else (st.epoch, st.next)

    async def claim_producer_id(self, producer_id: int, name: str):
        host = socket.gethostname()
        value = json.dumps({"name": name, "pid": os.getpid(), "host": host,
                            "claim": uuid.uuid4().hex}).encode()
        lease, holder = await self.log._leases.acquire(f"{_LEASE}.pid.{producer_id}".encode(), value)
        if lease is None:
            try:
                who = json.loads(holder)
                who = f"process {who['pid']} on {who['host']}"
            except Exception:
                who = "another client"
            raise ProducerIdInUseError(
                f"producer id {name!r} ({producer_id}) is held by {who}; each idempotent producer "
                f"needs its own id (a claim lapses {self.log.lease_ttl:g} s after its holder stops)")
        claim = _Claim(self, lease)
        self._claims.add(claim)
        return claim

    # -------------------------------------------------------------- consuming

    async def fetch(self, topic: str, partition: int, offset: int, max_records: int,
                    max_bytes: int) -> list:
        """Records from ``offset`` on, read with one JetStream direct get of a
        batch (served by the nearest replica, which may trail the leader by a
        moment). Empty at the end; OffsetOutOfRangeError outside [start, end]."""
        part = await self._part(topic, partition)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise OffsetOutOfRangeError(f"offset {offset!r} of {topic}/{partition} is not an int >= 0")
        recs, end = await self.log._retrying(
            lambda: self._direct_get(part, {"seq": offset + 1, "batch": max(1, max_records),
                                            "max_bytes": max(1, max_bytes)}))
        if recs:
            if recs[0].offset != offset:
                start, end = await self.offset_range(topic, partition)
                raise OffsetOutOfRangeError(
                    f"offset {offset} of {topic}/{partition} is outside [{start}, {end}] "
                    "(deleted by retention)")
            if recs[-1].offset - offset + 1 != len(recs):
                # Streams lose records only at the front: a gap is a fault.
                raise BackendError(f"a read of {topic}/{partition} from {offset} came back with a gap "
                                   f"({len(recs)} records up to offset {recs[-1].offset})")
            return recs
        # Nothing at or after offset on the replica that answered.
        known = self.log._ends.get(part.key, 0)
        if offset == known and self._starts.get(part.key, 0) <= offset:
            return []
        start, end = await self.offset_range(topic, partition)
        if offset < start or offset > end:
            raise OffsetOutOfRangeError(f"offset {offset} of {topic}/{partition} is outside [{start}, {end}]")
        if offset == end:
            return []
        # That replica trails the leader: read one record from the leader.
        got = await self.log._retrying(lambda: self._leader_get(part, offset + 1))
        return [] if got is None else [got]

    async def _direct_get(self, part: _Part, req: dict) -> tuple[list, int | None]:
        """Run one batched direct get; returns (records, end offset or None)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        out: list = []
        topic, p = part.topic, part.partition
        state = {"end": None}

        def on(hdr, payload):
            if hdr is not None and hdr[8] == 0x0D:  # "NATS/1.0\r\n": a message
                i = hdr.find(_H_SEQ) + 17
                seq = int(hdr[i:hdr.index(b"\r", i)])
                i = hdr.find(_H_TS)
                if i >= 0:
                    i += 9
                    ts = int(hdr[i:hdr.index(b"\r", i)])
                else:
                    ts = _record_ts(hdr)
                out.append(JetStreamRecord(topic, p, seq - 1, ts, payload, hdr))
                return False
            st = status_of(hdr)
            if st == 204:  # end of batch: the last sequence sent and how many follow it
                last = header_value(hdr, _H_LAST)
                pend = header_value(hdr, _H_PENDING)
                if last is not None and pend is not None:
                    state["end"] = int(last) + int(pend)
            if not fut.done():
                fut.set_result(st)
            return True

        token, reply = self.log.wire.new_reply(on)
        try:
            await self.log.wire.publish(part.direct, json.dumps(req).encode(), reply)
            t = self.log.wire.request_timeout
            try:
                st = await asyncio.wait_for(fut, t)
            except asyncio.TimeoutError:
                raise BackendTimeoutError(f"no reply to a read of {topic}/{p} within {t:g} s") from None
        finally:
            self.log.wire.drop(token)
        if st == 503:
            raise BackendUnavailableError(f"no replica of {topic}/{p} answers reads now (no responders)")
        if st not in (204, 404):
            raise BackendError(f"read of {topic}/{p} failed with status {st}")
        end = state["end"]
        if end is not None:
            self.log._advanced(part.key, end)
        return out, end

    async def _leader_get(self, part: _Part, seq: int):
        try:
            r = await self.log.wire.api(part.get_api, {"seq": seq})
        except BackendError as e:
            if e.err_code == _E_NO_MESSAGE:
                return None
            raise
        m = r["message"]
        hdr = base64.b64decode(m.get("hdrs") or b"") or b"NATS/1.0\r\n\r\n"
        hdr = hdr[:-2] + b"Nats-Time-Stamp: " + m["time"].encode() + b"\r\n\r\n"
        return JetStreamRecord(part.topic, part.partition, int(m["seq"]) - 1, _record_ts(hdr),
                               base64.b64decode(m.get("data") or b""), hdr)

    async def _range(self, part: _Part) -> tuple[int, int]:
        si = await self.log.wire.api(part.info_api)
        s = si["state"]
        first, last = int(s.get("first_seq", 0)), int(s.get("last_seq", 0))
        start = min(max(first - 1, 0), last)
        self._starts[part.key] = start
        self.log._advanced(part.key, last)
        return start, last

    async def offset_range(self, topic: str, partition: int) -> tuple[int, int]:
        part = await self._part(topic, partition)
        return await self.log._retrying(lambda: self._range(part))

    async def offset_for_time(self, topic: str, partition: int, ts_ms: int) -> int | None:
        """First offset whose record timestamp is >= ts_ms, or None.

        JetStream indexes its own store times, not record timestamps, so this
        starts from the first message the leader stored at ``ts_ms - 2 s``,
        binary-searches the records stored before ``ts_ms`` and scans forward
        from there. Exact when record timestamps are not ahead of the servers'
        clocks by more than those 2 s and do not go backwards within them."""
        part = await self._part(topic, partition)
        slack = 2000

        async def first_at(ms: int):
            when = _ms_to_rfc3339(max(ms, 0))
            if when is None:
                return None
            recs, _ = await self.log._retrying(
                lambda: self._direct_get(part, {"start_time": when, "batch": 1}))
            return recs[0] if recs else None

        lo_rec = await first_at(ts_ms - slack)
        if lo_rec is None:
            return None
        if lo_rec.timestamp >= ts_ms:
            return lo_rec.offset
        hi_rec = await first_at(ts_ms)
        _, end = await self.offset_range(topic, partition)
        a, b = lo_rec.offset + 1, (hi_rec.offset if hi_rec is not None else end)
        while a < b:
            mid = (a + b) // 2
            recs = await self.fetch(topic, partition, mid, 1, 1)
            if recs and recs[0].timestamp >= ts_ms:
                b = mid
            else:
                a = mid + 1
        pos = a
        while True:
            recs = await self.fetch(topic, partition, pos, 1000, 1 << 20)
            if not recs:
                return None
            for r in recs:
                if r.timestamp >= ts_ms:
                    return r.offset
            pos = recs[-1].offset + 1

    def known_end_offset(self, topic: str, partition: int) -> int:
        return self.log._ends.get((topic, partition), 0)

    def known_start_offset(self, topic: str, partition: int) -> int | None:
        return self._starts.get((topic, partition))

    async def wait_for_data(self, positions: dict, timeout: float | None,
                            interrupt: asyncio.Future | None = None) -> bool:
        """Sleep until a partition may hold records at or past its position.

        Wake-ups come from appends through this connection, and from the
        records' own messages: while waiting, the backend subscribes (plain
        NATS) to the partitions' subjects, then confirms with the stream
        leader that the end really moved (an atomic batch's messages arrive
        before it commits). A look at the leader every ``max_poll`` seconds
        is the safety net."""
        loop = asyncio.get_running_loop()
        if interrupt is not None and interrupt.done():
            return True
        deadline = None if timeout is None else loop.time() + timeout
        parts = [(await self._part(tp.topic, tp.partition), pos) for tp, pos in positions.items()]
        ends = self.log._ends
        if any(ends.get(part.key, 0) > pos for part, pos in parts):
            return True
        ev = asyncio.Event()

        def poke(*_):
            ev.set()

        subs = []
        waiters = self.log._waiters
        for part, _ in parts:
            waiters[part.key].add(poke)
        if interrupt is not None:
            interrupt.add_done_callback(poke)
        try:
            try:
                for part, _ in parts:
                    subs.append(await self.log.wire.subscribe_raw(part.prefix + ".>", poke))
                if subs:
                    await self.log.nc.flush(max(self.log.wire.request_timeout, 1.0))
            except Exception:
                pass  # disconnected: the polls below still notice data
            confirm = 0
            while True:
                if interrupt is not None and interrupt.done():
                    return True
                if any(ends.get(part.key, 0) > pos for part, pos in parts):
                    return True
                if parts:
                    try:
                        got = await asyncio.gather(*(self._range(part) for part, _ in parts))
                        if any(end > pos for (_, end), (_, pos) in zip(got, parts)):
                            return True
                    except _TRANSIENT:
                        pass
                now = loop.time()
                if deadline is not None and now >= deadline:
                    return False
                if confirm:
                    # Woken by a message: it shows up once its batch commits.
                    wait = min(0.001 * (2 ** confirm), 0.1)
                    confirm = confirm + 1 if confirm < 8 else 0
                else:
                    wait = self.max_poll
                if deadline is not None:
                    wait = min(wait, deadline - now)
                try:
                    await asyncio.wait_for(ev.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                if ev.is_set():
                    ev.clear()
                    confirm = 1
        finally:
            if interrupt is not None:
                interrupt.remove_done_callback(poke)
            for part, _ in parts:
                waiters[part.key].discard(poke)
            for sub in subs:
                await self.log.wire.unsubscribe(sub)

    # ----------------------------------------------------------------- groups

    async def join_group(self, group: str, topics: Iterable[str], *,
                         session_timeout_ms: float | None = None) -> GroupMember:
        """A member of ``group`` as leases. Its session timeout is the
        connection's lease TTL (``connect(..., lease_ttl=...)``, 10 s by
        default): a member that stops renewing loses its member and owner
        leases that long after its last renewal."""
        validate_group_name(group)
        ttl_ms = self.log.lease_ttl * 1000
        if session_timeout_ms is not None and session_timeout_ms != ttl_ms:
            raise ValueError(f"on JetStream a member's session timeout is the connection's lease TTL "
                             f"({ttl_ms:g} ms), not {session_timeout_ms!r}: set it with "
                             f"connect(..., lease_ttl=seconds)")
        topics = sorted(set(topics))
        counts = {t: (await self.topic_info(t)).partitions for t in topics}
        m = _JetStreamMember(self, group, topics, counts)
        await m._join()
        self._members.add(m)
        return m

    def offset_store(self, group: str) -> OffsetStore:
        return JetStreamOffsetStore(self.log)

    async def close(self) -> None:
        for claim in list(self._claims):
            claim.release()
        tasks, self._releasing = self._releasing, set()
        for task in tasks:
            try:
                await asyncio.shield(task)
            except Exception:
                pass  # the lease expires within the TTL
        for m in list(self._members):
            try:
                await m.leave()
            except Exception:
                pass  # the leases expire within the TTL

    def __repr__(self):
        return f"<JetStreamBackend {','.join(self.log.servers)}>"


def _group_end(batches: Sequence, i: int, contiguous: bool) -> int:
    """End of the run of batches from ``i`` that fits one atomic batch."""
    n = len(batches)
    count = len(batches[i].records)
    if count > MAX_ATOMIC_BATCH:
        raise ValueError(
            f"a batch of {count} records is more than the {MAX_ATOMIC_BATCH} messages of one JetStream "
            f"atomic batch (keep batches under TopicInfo.max_batch_bytes={MAX_BATCH_BYTES})")
    size = batches[i].nbytes
    j = i + 1
    while j < n:
        b = batches[j]
        if count + len(b.records) > MAX_ATOMIC_BATCH or size + b.nbytes > _GROUP_BYTES:
            break
        if contiguous:
            prev = batches[j - 1]
            if (b.producer_id != prev.producer_id or b.producer_epoch != prev.producer_epoch
                    or b.base_sequence != (prev.base_sequence + len(prev.records)) % _SEQ_MOD):
                break
        count += len(b.records)
        size += b.nbytes
        j += 1
    return j


# ---------------------------------------------------------------------------
# Groups and committed offsets

class _JetStreamMember(GroupMember):
    """Group membership as leases: ``usx.lease.g.<group>.m.<member id>``
    (value: the member's description) and, per owned partition,
    ``usx.lease.g.<group>.o.<topic>.<partition>`` (value: the member id).
    Every member lists the live member leases and computes the same
    assignment as on the embedded log (``groups.assign``), from the partition
    counts of every topic any live member subscribes to.

    Session timeout: the lease TTL. A member that stops renewing (a stopped
    or hung process) loses its leases ``lease_ttl`` seconds after its last
    renewal and the others take its partitions. Commit fencing: a new owner
    first rewrites the partition's offset message (same offset) expecting
    the subject's last sequence it read, and every commit of an owner
    expects the sequence of its own last write (``Nats-Expected-Last-
    Subject-Sequence`` on each message of the atomic batch). A member that
    lost a partition therefore has its commit refused (FencedMemberError,
    nothing stored) as soon as the new owner has taken it."""

    def __init__(self, backend: JetStreamBackend, group: str, topics: list, counts: dict):
        self._backend = backend
        self._leases = backend.log._leases
        self.group = group
        self.topics = tuple(topics)
        self._counts = counts
        self.member_id = f"{int(time.time() * 1000):013d}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.info = MemberInfo(self.member_id, self.topics, os.getpid(), socket.gethostname(),
                               time.time_ns() // 1_000_000, tuple(ASSIGNORS))
        self._g = f"{_LEASE}.g.{_enc(group)}"
        self._lease: _Lease | None = None
        self._owned: dict[TopicPartition, _Lease] = {}
        self._lost: set = set()
        self._infos: dict[str, MemberInfo] = {}
        self._target: set = set()
        self._left = False
        self.session_timeout = backend.log.lease_ttl
        self._oseq: dict[TopicPartition, int] = {}   # our last write on each owned offset subject
        self._last_poll = time.monotonic()

    async def _join(self) -> None:
        value = member_description(self.info)
        lease, _ = await self._leases.acquire(f"{self._g}.m.{self.member_id}".encode(), value)
        if lease is None:
            raise BackendError(f"member id {self.member_id} of group {self.group!r} is taken")
        self._lease = lease

    async def _members(self) -> list:
        log = self._backend.log
        si = await log.wire.api(f"STREAM.INFO.{LEASES_STREAM}", {"subjects_filter": f"{self._g}.m.*"})
        subjects = (si.get("state") or {}).get("subjects") or {}
        out = [self.info]
        cut = len(self._g) + 3
        for subject in sorted(subjects):
            mid = subject[cut:]
            if mid == self.member_id:
                continue
            info = self._infos.get(mid)
            if info is None:
                msg = await log._retrying(lambda subject=subject: log._last_message(LEASES_STREAM, subject))
                if msg is None:
                    continue  # left meanwhile
                info = parse_member_description(msg[1], mid)
                self._infos[mid] = info
            out.append(info)
        return out

    async def poll(self) -> set:
        now = time.monotonic()
        if now - self._last_poll > self.session_timeout / 2:
            # Silent for a while (stopped, or the loop was blocked): the
            # keeper may not have noticed yet that others took leases over.
            for tp, lease in list(self._owned.items()):
                try:
                    held = await self._leases.holder(lease.subject)
                except _TRANSIENT:
                    break
                if held is None or held[0] != lease.rev:
                    lease.lost = True
                    self._leases.held.discard(lease)
        self._last_poll = now
        for tp, lease in list(self._owned.items()):
            if lease.lost:  # someone else may own it now: not ours to commit or release
                del self._owned[tp]
                self._oseq.pop(tp, None)
                self._lost.add(tp)
        try:
            if self._lease is None or self._lease.lost:
                await self._join()  # our lease lapsed (a long pause, a partition): join again
            members = await self._members()
        except _TRANSIENT:
            # No answer now (a failover): keep the last view; the leases tell
            # the truth once the cluster answers again.
            return self._target - self._lost
        # The same inputs on every member: the partition counts of every topic
        # any live member subscribes to (not only this member's own).
        for m in members:
            for t in m.topics:
                if t not in self._counts:
                    try:
                        self._counts[t] = (await self._backend.topic_info(t)).partitions
                    except UnknownTopicError:
                        pass  # deleted since that member joined
                    except _TRANSIENT:
                        return self._target - self._lost  # keep the last view (as above)
        wanted = {t: self._counts[t] for m in members for t in m.topics if t in self._counts}
        mine = assign(members, wanted).get(self.member_id, ())
        self._target = {TopicPartition(t, p) for t, p in mine}
        return self._target - self._lost

    async def try_acquire(self, tp: TopicPartition) -> bool:
        tp = TopicPartition(*tp)
        lease = self._owned.get(tp)
        if lease is not None and not lease.lost:
            return True
        if tp in self._lost:
            return False
        lease, _ = await self._leases.acquire(
            f"{self._g}.o.{_enc(tp.topic)}.{tp.partition}".encode(), self.member_id.encode())
        if lease is None:
            return False
        try:
            self._oseq[tp] = await self._fence_offsets(tp)
        except BaseException:
            await self._leases.release(lease)
            raise
        self._owned[tp] = lease
        return True

    async def _fence_offsets(self, tp: TopicPartition) -> int:
        """Rewrite the partition's offset message as it is, expecting its
        last sequence: a commit by the previous owner, which expects its own
        last write, fails from now on. Returns our write's sequence."""
        log = self._backend.log
        await log._ensure_internal_streams()
        subject = JetStreamOffsetStore._subject(self.group, tp)
        for _ in range(10):
            last = await log._retrying(lambda: log._last_message(OFFSETS_STREAM, subject))
            seq, payload = (0, b"") if last is None else (last[0], last[1])
            hdr = b"NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: %d\r\nUs-Owner: %s\r\n\r\n" % (
                seq, self.member_id.encode())
            _, p = await log._retrying(lambda: log.wire.request(subject.encode(), payload, hdr))
            ack = json.loads(p)
            err = ack.get("error")
            if err is None:
                return int(ack["seq"])
            if err.get("err_code") != _E_WRONG_LAST_SEQ:
                raise api_error(f"fencing the offsets of {tp.topic}/{tp.partition}", err)
            # The previous owner committed meanwhile: read again.
        raise BackendError(f"could not fence the offsets of {tp.topic}/{tp.partition} "
                           f"in group {self.group!r}: they kept changing")

    def take_lost(self) -> set:
        lost, self._lost = self._lost, set()
        return lost

    async def commit(self, store, group: str, offsets: dict) -> None:
        if not (isinstance(store, JetStreamOffsetStore) and store.log is self._backend.log
                and group == self.group):
            await store.commit(group, offsets)
            return
        expect = {}
        for tp in offsets:
            tp = TopicPartition(*tp)
            lease = self._owned.get(tp)
            if lease is None or lease.lost or tp not in self._oseq:
                raise FencedMemberError(
                    f"member {self.member_id} of group {self.group!r} does not own "
                    f"{tp.topic}/{tp.partition} (its lease lapsed after {self.session_timeout:g} s "
                    f"without renewal, or it was given up); nothing was committed")
            expect[tp] = self._oseq[tp]
        try:
            seqs = await store.commit_expecting(group, offsets, expect, self.member_id)
        except FencedMemberError:
            # Refused, or an earlier commit of ours landed unacknowledged (a
            # timeout): subjects whose last write is ours move our sequence on.
            log = self._backend.log
            mine = b"\r\nUs-Owner: " + self.member_id.encode() + b"\r\n"
            again = False
            for tp in expect:
                last = await log._retrying(lambda tp=tp: log._last_message(
                    OFFSETS_STREAM, JetStreamOffsetStore._subject(self.group, tp)))
                if last is not None and last[0] != expect[tp] and mine in last[2]:
                    expect[tp] = self._oseq[tp] = last[0]
                    again = True
            if not again:
                raise
            seqs = await store.commit_expecting(group, offsets, expect, self.member_id)
        for tp, seq in seqs.items():
            if self._oseq.get(tp) == expect[tp]:
                self._oseq[tp] = seq

    async def release(self, tp: TopicPartition) -> None:
        tp = TopicPartition(*tp)
        self._lost.discard(tp)
        self._oseq.pop(tp, None)
        lease = self._owned.pop(tp, None)
        if lease is not None:
            await self._leases.release(lease)

    async def leave(self) -> None:
        if self._left:
            return
        self._left = True
        self._backend._members.discard(self)
        for tp in list(self._owned):
            await self.release(tp)
        if self._lease is not None:
            lease, self._lease = self._lease, None
            await self._leases.release(lease)


class JetStreamOffsetStore(OffsetStore):
    """Committed offsets in the replicated stream ``US__OFFSETS``: subject
    ``usx.offsets.<group>.<topic>.<partition>``, payload the offset in ASCII,
    only the last message per subject kept. A commit is one atomic batch:
    all of its offsets are stored, or none."""

    def __init__(self, log: JetStreamLog):
        self.log = log

    @staticmethod
    def _subject(group: str, tp) -> str:
        return f"{_OFFSETS}.{_enc(group)}.{_enc(tp.topic)}.{tp.partition}"

    async def load(self, group: str, partitions: Iterable[TopicPartition]) -> dict:
        await self.log._ensure_internal_streams()
        tps = [TopicPartition(*tp) for tp in partitions]

        async def one(tp):
            return await self.log._retrying(
                lambda: self.log._last_message(OFFSETS_STREAM, self._subject(group, tp)))

        got = await asyncio.gather(*(one(tp) for tp in tps))
        # (An empty payload is a new owner's fence before any commit: none.)
        return {tp: int(m[1]) for tp, m in zip(tps, got) if m is not None and m[1]}

    async def commit(self, group: str, offsets: dict) -> None:
        if not offsets:
            return
        await self.log._ensure_internal_streams()
        items = sorted((TopicPartition(*tp), int(off)) for tp, off in offsets.items())
        for k in range(0, len(items), MAX_ATOMIC_BATCH):
            chunk = items[k:k + MAX_ATOMIC_BATCH]
            # One subject per message: an atomic batch may mix subjects of its stream.
            await self.log._retrying(lambda chunk=chunk: self._commit_chunk(group, chunk))

    async def commit_expecting(self, group: str, offsets: dict, expect: dict, member_id: str) -> dict:
        """Commit as a group member: each offset message expects its
        subject's last sequence to be ``expect[tp]`` (the member's own last
        write). All or nothing; FencedMemberError when another member wrote
        since (it took the partition over). Returns ``{tp: new sequence}``."""
        await self.log._ensure_internal_streams()
        items = sorted((TopicPartition(*tp), int(off)) for tp, off in offsets.items())
        out = {}
        for k in range(0, len(items), MAX_ATOMIC_BATCH):
            chunk = items[k:k + MAX_ATOMIC_BATCH]
            subjects = [self._subject(group, tp).encode() for tp, _ in chunk]
            owner = b"Us-Owner: %s\r\n" % member_id.encode()
            msgs = [(b"Nats-Expected-Last-Subject-Sequence: %d\r\n%s" % (expect[tp], owner), b"%d" % off)
                    for tp, off in chunk]
            try:
                # Retried on transient failures as every commit is; an attempt
                # that landed unacknowledged makes the retry find the sequence
                # moved, which the member recognises by its Us-Owner header.
                ack = await self.log._retrying(
                    lambda subjects=subjects, msgs=msgs: self.log._atomic(subjects[0], msgs, subjects=subjects))
            except BackendError as e:
                if e.err_code != _E_WRONG_LAST_SEQ:
                    raise
                raise FencedMemberError(
                    f"commit of {len(chunk)} offset(s) in group {group!r} refused: another member "
                    f"took over one of {', '.join(f'{tp.topic}/{tp.partition}' for tp, _ in chunk)} "
                    f"after this member's lease lapsed; nothing of this batch was committed") from None
            last = int(ack["seq"])
            for i, (tp, _) in enumerate(chunk):
                out[tp] = last - len(chunk) + 1 + i
        return out

    async def _commit_chunk(self, group: str, chunk: list) -> None:
        if len(chunk) == 1:
            tp, off = chunk[0]
            _, p = await self.log.wire.request(self._subject(group, tp).encode(), b"%d" % off)
            ack = json.loads(p)
            if "error" in ack:
                raise api_error(f"commit of {tp.topic}/{tp.partition}", ack["error"])
            return
        subjects = [self._subject(group, tp).encode() for tp, _ in chunk]
        await self.log._atomic(subjects[0], [(b"", b"%d" % off) for _, off in chunk], subjects=subjects)
