"""The JetStream log handle: connection, topics, atomic publishes.

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
import itertools
import json
import os
import time
import uuid
from collections.abc import Sequence
from typing import NamedTuple

from unstoppable.backends.jetstream._borrowed import validate_topic_name
from unstoppable.backends.jetstream._constants import (
    _E_INSUFFICIENT,
    _E_JS_UNAVAILABLE,
    _E_NO_MESSAGE,
    _E_STREAM_EXISTS,
    _E_STREAM_NOT_FOUND,
    _LEASE,
    _MAX_HEADER,
    _OFFSETS,
    _TRANSIENT,
    LEASES_STREAM,
    MAX_BATCH_BYTES,
    OFFSETS_STREAM,
)
from unstoppable.backends.jetstream._wire import (
    Wire,
    api_error,
    status_of,
)
from unstoppable.backends.jetstream.admin import JetStreamAdmin
from unstoppable.backends.jetstream.backend import JetStreamBackend
from unstoppable.backends.jetstream.leases import _Leases
from unstoppable.backends.jetstream.records import (
    _Part,
)
from unstoppable.client._types import TopicInfo
from unstoppable.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    InvalidTopicNameError,
    RecordTooLargeError,
    TopicConfigError,
    TopicExistsError,
    UnknownTopicError,
)


class JetStreamTopic(NamedTuple):
    """A topic on JetStream as ``create_topic`` made (or found) it."""
    name: str
    partitions: int
    replicas: int
    max_record_bytes: int
    retention_ms: int | None
    retention_bytes: int | None


def _check_topic_config(name: str, partitions, replicas, retention_ms, retention_bytes, max_record_bytes,
                        duplicate_window_ms) -> None:
    """Refuse a bad name or configuration of ``create_topic`` with an error naming it."""
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


def _refuse_compaction(name: str, cleanup_policy) -> None:
    """JetStream has no faithful equivalent of a compacted topic, so
    ``cleanup_policy`` other than "delete" is refused. The near miss is a
    subject per key with ``max_msgs_per_subject=1``, but a partition here is
    one stream whose records share one subject space in offset order: the
    servers would drop a key's older value at once (no min_compaction_lag_ms,
    so a consumer behind the writer misses updates Kafka would still show),
    a tombstone would have to be a purge that removes the delete itself (no
    delete_retention_ms, so consumers never see it), and keys would have to
    be encoded into subject tokens."""
    if cleanup_policy == "delete":
        return
    if isinstance(cleanup_policy, str) and "compact" in cleanup_policy:
        raise TopicConfigError(
            f"topic {name!r}: cleanup_policy={cleanup_policy!r} is not supported on JetStream; "
            "its per-subject message limit drops a key's older values at once and has no "
            "tombstone retention, which is not Kafka's compaction. Use an embedded log "
            "(us.Log) for compacted topics")
    raise TopicConfigError(f"cleanup_policy must be 'delete' on JetStream, got {cleanup_policy!r}")


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
                           duplicate_window_ms: int = 120_000,
                           cleanup_policy: str = "delete") -> JetStreamTopic:
        """Create a topic of ``partitions`` streams with ``replicas`` copies
        each (1, 3 or 5; at most the cluster size), or return the existing one
        when it has the same partition and replica counts (TopicExistsError
        otherwise).

        ``retention_ms``/``retention_bytes`` limit each partition (JetStream's
        ``max_age``/``max_bytes``; the oldest records go first).
        ``duplicate_window_ms`` is how long the servers remember message ids
        (the stream's duplicate window). ``max_record_bytes`` defaults to what
        fits in one NATS message of the server's ``max_payload``.
        ``cleanup_policy`` must be "delete": compaction is refused (see
        :func:`_refuse_compaction`).
        """
        _refuse_compaction(name, cleanup_policy)
        _check_topic_config(name, partitions, replicas, retention_ms, retention_bytes, max_record_bytes,
                            duplicate_window_ms)
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

    async def alter_topic(self, name: str, **config) -> JetStreamTopic:
        """Change ``retention_ms`` and/or ``retention_bytes`` (None: no limit)
        of every partition of topic ``name``; the other settings are fixed at
        creation (TopicConfigError)."""
        fixed = sorted(set(config) - {"retention_ms", "retention_bytes"})
        if fixed:
            raise TopicConfigError(
                f"on JetStream only retention_ms and retention_bytes of a topic can change; "
                f"{', '.join(fixed)} {'is' if len(fixed) == 1 else 'are'} fixed when it is created")
        for what, v in config.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise TopicConfigError(f"{what} must be None or an int >= 1, got {v!r}")
        t = await self.describe_topic(name)
        for p in range(t.partitions):
            part = _Part(name, p)
            cfg = (await self._retrying(lambda part=part: self.wire.api(part.info_api)))["config"]
            if "retention_ms" in config:
                cfg["max_age"] = (config["retention_ms"] or 0) * 1_000_000
                if cfg["max_age"]:
                    cfg["duplicate_window"] = min(cfg.get("duplicate_window") or cfg["max_age"], cfg["max_age"])
            if "retention_bytes" in config:
                rb = config["retention_bytes"]
                cfg["max_bytes"] = -1 if rb is None else rb
            await self._retrying(lambda part=part, cfg=cfg: self.wire.api("STREAM.UPDATE." + part.stream, cfg))
        return await self.describe_topic(name)

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

    def __unstoppable_admin__(self) -> JetStreamAdmin:
        """The :class:`unstoppable.admin.Admin` of this log (what ``admin_for`` returns)."""
        return JetStreamAdmin(self)

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
