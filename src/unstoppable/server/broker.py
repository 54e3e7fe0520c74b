"""The Kafka-protocol server: one asyncio listener in front of an embedded log.

Requests on one connection are answered one at a time and in order, as a Kafka
broker does (it mutes a connection while a request is in flight), so a client
that stops reading stops being read: the server's memory per connection is
bounded by one request (at most ``max_request_bytes``), what the receive
buffer holds beyond it (reading pauses at 4 MiB: connection.py), the answers
held for one write (at most 64 Produce answers or 1 MiB, while further
requests are already buffered) and the transport's write buffer. A frame
larger than ``max_request_bytes`` is refused from its size field, before its
body is read.

Appends with ``acks=-1`` wait for fdatasync (``acks="fsync"``) on a thread, so
the event loop goes on serving other connections meanwhile.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import unstoppable as us
from unstoppable._core.batch import BatchEncoder
from unstoppable.errors import (
    CorruptLogError,
    InvalidTopicNameError,
    OffsetOutOfRangeError,
    PartitionOutOfRangeError,
    TopicConfigError,
    TopicExistsError,
    UnknownTopicError,
)
from unstoppable.server import protocol as P
from unstoppable.server import wire as W
from unstoppable.server.connection import FrameConnection, FrameSizeError
from unstoppable.server._log import ProducerIdCounter, validate_topic_name
from unstoppable.server.codes import (  # noqa: F401  (re-exported: the codes were defined here)
    CORRUPT_MESSAGE,
    DUPLICATE_SEQUENCE_NUMBER,
    INVALID_CONFIG,
    INVALID_PARTITIONS,
    INVALID_PRODUCER_EPOCH,
    INVALID_RECORD,
    INVALID_REPLICATION_FACTOR,
    INVALID_REQUEST,
    INVALID_TIMESTAMP,
    INVALID_TOPIC_EXCEPTION,
    KAFKA_STORAGE_ERROR,
    MESSAGE_TOO_LARGE,
    NONE,
    OFFSET_OUT_OF_RANGE,
    OUT_OF_ORDER_SEQUENCE_NUMBER,
    RECORD_LIST_TOO_LARGE,
    TOPIC_ALREADY_EXISTS,
    UNKNOWN_PRODUCER_ID,
    UNKNOWN_SERVER_ERROR,
    UNKNOWN_TOPIC_OR_PARTITION,
    UNSUPPORTED_COMPRESSION_TYPE,
    UNSUPPORTED_VERSION,
)
from unstoppable.server.produce import (  # noqa: F401  (append_error re-exported)
    DEFAULT_TIMESTAMP_AFTER_MAX_MS,
    ProduceHandler,
    append_error,
)
from unstoppable.server.recordbatch import encode_records
from unstoppable.server.topic_configs import (
    alter_configs,
    create_partitions,
    describe_topic_config,
    incremental_alter_configs,
)
from unstoppable.server.topic_configs import kafka_topic_config as _topic_config

__all__ = ["Broker", "DEFAULT_MAX_REQUEST_BYTES"]

log = logging.getLogger("unstoppable.server")

#: Kafka's socket.request.max.bytes default.
DEFAULT_MAX_REQUEST_BYTES = 100 << 20
NODE_ID = 0
CLUSTER_ID = "unstoppable"


#: Record ranges below this many bytes are copied from the mapped segment
#: into the socket; larger ones go through sendfile. Measured on loopback on
#: this 2-core machine: for 4 KiB, send() of the mapped bytes took 4.4-10.8 us
#: against sendfile's 9.3-13.3 us; from 64 KiB up the two were within noise of
#: each other (0.46x-1.24x), and kcat reading 1 M 100-byte records cost the
#: server 0.06-0.07 s of CPU with sendfile against 0.08-0.09 s without it.
#: sendfile also keeps a slow reader's unsent bytes out of the process.
SENDFILE_MIN = 64 << 10


#: At most this many answers (or bytes of them) are held for one write.
_MAX_HELD = 64
_MAX_HELD_BYTES = 1 << 20


class _Held:
    """Answers held for one write. Produce answers (acks 0/1, answered
    without waiting) are held while the next request is already buffered and
    then written together with writelines: one send() for a pipelined run
    instead of one each (on loopback each send also runs the receiver's
    wake-up)."""

    __slots__ = ("writer", "items", "nbytes")

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.items: list[bytes] = []
        self.nbytes = 0

    def hold(self, answer: bytes) -> bool:
        """Hold ``answer``; False when the held ones were written instead
        (the limits reached)."""
        self.items.append(answer)
        self.nbytes += len(answer)
        if len(self.items) < _MAX_HELD and self.nbytes < _MAX_HELD_BYTES:
            return True
        self.flush()
        return False

    def flush(self) -> None:
        if self.items:
            self.writer.writelines(self.items)
            self.items.clear()
            self.nbytes = 0


def _answers_at_once(frame) -> bool:
    """Whether a request is answered without waiting: a Produce with acks 0
    or 1 (ApiVersions and Metadata too, but those are rare on a hot path)."""
    if len(frame) < 10 or frame[0] != 0 or frame[1] != 0:
        return False
    try:
        off = P.parse_header(frame)[3]
    except P.ProtocolError:
        return False                      # dispatch names the fault
    return W.produce_acks(frame, off) in (0, 1)


class _SegmentFile:
    """What ``loop.sendfile`` needs of a file: a descriptor (the segment's,
    kept open by the ByteRange that holds the segment) and a binary mode.
    Offsets are passed explicitly, so ``seek`` has nothing to move."""

    __slots__ = ("fd",)
    mode = "rb"

    def __init__(self, fd: int):
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def seek(self, pos: int, whence: int = 0) -> int:
        return pos


class Broker(ProduceHandler):
    """A single-node Kafka broker over the log at ``log_path``.

    ``await broker.start()`` listens; ``await broker.close()`` stops listening,
    closes every connection and the log. ``port=0`` picks a free port
    (``broker.port`` tells which). ``advertised_host`` is the host clients are
    told to connect to (default: ``host``). ``timestamp_before_max_ms`` /
    ``timestamp_after_max_ms``: how far before / after the server's clock a
    produced record's timestamp may be (Kafka's
    ``log.message.timestamp.before.max.ms`` / ``after.max.ms``; None: no
    limit); others are refused with INVALID_TIMESTAMP (32). A topic's own
    ``message.timestamp.*.max.ms`` replace them for that topic.
    """

    def __init__(self, log_path: str, host: str = "127.0.0.1", port: int = 9092, *,
                 advertised_host: str | None = None, auto_create_topics: bool = True,
                 default_partitions: int = 1, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 metrics=None, timestamp_before_max_ms: int | None = None,
                 timestamp_after_max_ms: int | None = DEFAULT_TIMESTAMP_AFTER_MAX_MS):
        self.log_path = os.path.abspath(log_path)
        self.log = us.Log(self.log_path)
        self.host = host
        self.port = port
        self.advertised_host = advertised_host or host
        self.auto_create_topics = auto_create_topics
        self.default_partitions = default_partitions
        self.max_request_bytes = max_request_bytes
        self.metrics = metrics
        self.timestamp_before_max_ms = timestamp_before_max_ms
        self.timestamp_after_max_ms = timestamp_after_max_ms
        self.producer_ids = ProducerIdCounter(self.log_path)
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task] = set()
        self._appended = asyncio.Event()
        self._encoder = BatchEncoder()   # used between awaits only: one for all connections
        self._sync_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="us-server-sync")
        from unstoppable.server.coordinator import Coordinator
        self.coordinator = Coordinator(self)
        self._handlers = {
            0: self.produce, 1: self.fetch, 2: self.list_offsets, 3: self.metadata,
            8: self.coordinator.offset_commit, 9: self.coordinator.offset_fetch,
            10: self.coordinator.find_coordinator, 11: self.coordinator.join_group,
            12: self.coordinator.heartbeat, 13: self.coordinator.leave_group,
            14: self.coordinator.sync_group, 15: self.coordinator.describe_groups,
            16: self.coordinator.list_groups, 19: self.create_topics,
            20: self.delete_topics, 22: self.init_producer_id, 32: self.describe_configs,
            33: functools.partial(alter_configs, self),
            37: functools.partial(create_partitions, self),
            44: functools.partial(incremental_alter_configs, self),
        }

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen on (host, port)."""
        P.preload()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: FrameConnection(self._connection, self.max_request_bytes),
            self.host, self.port, backlog=2048)
        self.port = self._server.sockets[0].getsockname()[1]
        self.coordinator.start()
        log.info("serving %s on %s:%d", self.log_path, self.host, self.port)

    async def close(self) -> None:
        """Stop listening, end every connection, and close the log cleanly."""
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        await self.coordinator.close()
        if self._server is not None:
            await self._server.wait_closed()
        self._sync_pool.shutdown(wait=True)
        self.log.close()

    # ------------------------------------------------------------ connections

    async def _connection(self, conn: FrameConnection, writer: asyncio.StreamWriter):
        task = asyncio.current_task()
        self._conns.add(task)
        m = self.metrics
        if m:
            m.connections.inc()
        peer = writer.get_extra_info("peername")
        held = _Held(writer)
        try:
            while True:
                if held.items and not conn.frame_buffered():
                    held.flush()
                    await writer.drain()
                try:
                    frame = await conn.read_frame()
                except FrameSizeError as e:
                    log.warning("closing %s: request size %d is outside 8 .. %d bytes",
                                peer, e.args[0], self.max_request_bytes)
                    return
                if frame is None:
                    return
                if held.items and not _answers_at_once(frame):
                    held.flush()          # this request may wait: what is held goes out first
                try:
                    out = await self._dispatch(frame)
                except P.ProtocolError as e:
                    log.warning("closing %s: %s", peer, e)
                    return
                except Exception:  # noqa: BLE001  (a bug must not take the server down)
                    log.exception("closing %s: the request failed", peer)
                    return
                if out is None:
                    continue
                if isinstance(out, bytes):
                    if held.hold(out):
                        continue
                else:
                    held.flush()
                    await self._send_chunks(writer, out)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(task)
            if m:
                m.connections.dec()
            writer.close()

    async def _send_chunks(self, writer: asyncio.StreamWriter, chunks: list) -> None:
        """Write a Fetch response: framing bytes, and records as ByteRanges
        of segment files (sendfile) or bytes."""
        tr = writer.transport
        for c in chunks:
            if isinstance(c, (bytes, bytearray)):
                tr.write(c)
                continue
            pos, n = c.position, c.length
            if n < SENDFILE_MIN:
                # Small ranges: one copy from the mapped segment into the
                # socket beats sendfile's setup (see SENDFILE_MIN).
                with c.segment.data(pos + n).view[pos:pos + n] as mv:
                    tr.write(mv)
                continue
            sock = tr.get_extra_info("socket")
            if tr.get_write_buffer_size() == 0 and sock is not None:
                # Nothing queued before it: sendfile straight to the socket
                # (non-blocking; what it cannot take now goes below).
                try:
                    sent = os.sendfile(sock.fileno(), c.segment.fd, pos, n)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                pos += sent
                n -= sent
            if n:
                try:
                    await asyncio.get_running_loop().sendfile(
                        tr, _SegmentFile(c.segment.fd), pos, n, fallback=False)
                except (NotImplementedError, AttributeError, RuntimeError,
                        asyncio.SendfileNotAvailableError):
                    # A loop or transport without native sendfile (uvloop, TLS): the
                    # mapped segment's bytes instead.
                    with c.segment.data(pos + n).view[pos:pos + n] as mv:
                        tr.write(mv)

    async def _dispatch(self, frame):
        """Answer one request frame (a memoryview into the connection's
        buffer, valid until the connection reads the next one)."""
        key, ver, corr, off = P.parse_header(frame)
        if key != 0:
            frame = bytes(frame)        # kio's decoders, and small requests: a copy is cheap
        t0 = time.perf_counter()
        name = P.API_NAMES.get(key, str(key))
        if key == 18:
            out = self.api_versions(ver, corr)
        else:
            rng = P.SUPPORTED.get(key)
            if rng is None:
                raise P.ProtocolError(f"API key {key} ({name}) is not supported")
            if not rng[0] <= ver <= rng[1]:
                raise P.ProtocolError(
                    f"{name} v{ver} is not supported (this server answers v{rng[0]}-v{rng[1]})")
            if key == 0:
                out = await self.produce(frame, off, ver, corr)
            elif key == 1:
                out = await self.fetch(P.decode_body(key, ver, frame, off), ver, corr)
            else:
                req = P.decode_body(key, ver, frame, off)
                resp = await self._handlers[key](req, ver)
                out = None if resp is None else P.encode_response(corr, resp)
        if self.metrics:
            self.metrics.request(name, time.perf_counter() - t0)
        return out

    # ------------------------------------------------------------ ApiVersions

    def api_versions(self, ver: int, corr: int) -> bytes:
        keys = [dict(api_key=k, min_version=lo, max_version=hi)
                for k, (lo, hi) in sorted(P.SUPPORTED.items())]
        err = NONE
        if ver > 2 or ver < 0:
            # KIP-511: an unsupported version gets error 35 and a v0 body,
            # from which the client picks a version both sides know.
            ver, err = 0, UNSUPPORTED_VERSION
        item = P.nested(18, ver, "ApiVersion")
        resp = P.response(18, ver, error_code=err,
                          api_keys=tuple(P.build(item, **k) for k in keys))
        if err and self.metrics:
            self.metrics.error("ApiVersions", err)
        return P.encode_response(corr, resp)

    # ------------------------------------------------------------ topics

    def _topic(self, name: str, create: bool = False):
        """The topic, auto-created when allowed; raises UnknownTopicError."""
        try:
            return self.log.topic(name)
        except UnknownTopicError:
            if not (create and self.auto_create_topics):
                raise
        validate_topic_name(name)
        return self.log.create_topic(name, partitions=self.default_partitions)

    async def metadata(self, req, ver):
        mod = P.response_module(3, ver)
        if req.topics is None:
            names = self.log.topics()
            create = False
        else:
            names = [t.name for t in req.topics]
            create = bool(getattr(req, "allow_auto_topic_creation", True))
        topics = []
        for name in names:
            try:
                t = self._topic(name, create)
                parts = tuple(P.build(mod.MetadataResponsePartition, error_code=NONE,
                                      partition_index=i, leader_id=NODE_ID, leader_epoch=0,
                                      replica_nodes=(NODE_ID,), isr_nodes=(NODE_ID,))
                              for i in range(t.partitions))
                err = NONE
            except InvalidTopicNameError:
                parts, err = (), INVALID_TOPIC_EXCEPTION
            except UnknownTopicError:
                parts, err = (), UNKNOWN_TOPIC_OR_PARTITION
            topics.append(P.build(mod.MetadataResponseTopic, error_code=err, name=name,
                                  partitions=parts))
        broker = P.build(mod.MetadataResponseBroker, node_id=NODE_ID,
                         host=self.advertised_host, port=self.port)
        return P.response(3, ver, brokers=(broker,), cluster_id=CLUSTER_ID,
                          controller_id=NODE_ID, topics=tuple(topics))

    async def create_topics(self, req, ver):
        mod = P.response_module(19, ver)
        out = []
        for t in req.topics:
            err, msg = NONE, None
            try:
                config = _topic_config(t.configs)
                parts = self.default_partitions if t.num_partitions == -1 else t.num_partitions
                if t.assignments:
                    parts = len(t.assignments)
                if t.replication_factor not in (-1, 1) and not t.assignments:
                    err = INVALID_REPLICATION_FACTOR
                    msg = (f"replication factor {t.replication_factor}: this is a single "
                           "node, only 1 is possible")
                elif parts < 1:
                    err, msg = INVALID_PARTITIONS, f"{parts} partitions: need at least 1"
                else:
                    validate_topic_name(t.name)
                    if t.name in self.log:
                        err, msg = TOPIC_ALREADY_EXISTS, f"topic {t.name!r} already exists"
                    elif not req.validate_only:
                        self.log.create_topic(t.name, partitions=parts, **config)
            except InvalidTopicNameError as e:
                err, msg = INVALID_TOPIC_EXCEPTION, str(e)
            except (TopicConfigError, ValueError) as e:
                err, msg = INVALID_CONFIG, str(e)
            except TopicExistsError as e:
                err, msg = TOPIC_ALREADY_EXISTS, str(e)
            if err and self.metrics:
                self.metrics.error("CreateTopics", err)
            out.append(P.build(mod.CreatableTopicResult, name=t.name, error_code=err,
                               error_message=msg))
        return P.response(19, ver, topics=tuple(out))

    async def delete_topics(self, req, ver):
        mod = P.response_module(20, ver)
        out = []
        for name in req.topic_names:
            err = NONE
            try:
                validate_topic_name(name)
                self.log.delete_topic(name)
            except InvalidTopicNameError:
                err = INVALID_TOPIC_EXCEPTION
            except UnknownTopicError:
                err = UNKNOWN_TOPIC_OR_PARTITION
            out.append(P.build(mod.DeletableTopicResult, name=name, error_code=err))
        return P.response(20, ver, responses=tuple(out))

    async def describe_configs(self, req, ver):
        mod = P.response_module(32, ver)
        res_cls = mod.DescribeConfigsResult
        cfg_cls = mod.DescribeConfigsResourceResult
        out = []
        for r in req.resources:
            if r.resource_type == 2:      # TOPIC
                try:
                    t = self._topic(r.resource_name)
                    values = describe_topic_config(t.config, self)
                    if r.configuration_keys:
                        values = {k: v for k, v in values.items() if k in r.configuration_keys}
                    # config_source 1 TOPIC_CONFIG, 5 DEFAULT_CONFIG (Kafka's ConfigSource).
                    configs = tuple(P.build(cfg_cls, name=k, value=str(v), read_only=False,
                                            is_default=d, config_source=5 if d else 1,
                                            is_sensitive=False, synonyms=())
                                    for k, (v, d) in values.items())
                    out.append(P.build(res_cls, error_code=NONE, error_message=None,
                                       resource_type=2, resource_name=r.resource_name,
                                       configs=configs))
                except (UnknownTopicError, InvalidTopicNameError) as e:
                    out.append(P.build(res_cls, error_code=UNKNOWN_TOPIC_OR_PARTITION,
                                       error_message=str(e), resource_type=2,
                                       resource_name=r.resource_name, configs=()))
            elif r.resource_type == 4:    # BROKER: nothing configurable
                out.append(P.build(res_cls, error_code=NONE, error_message=None,
                                   resource_type=4, resource_name=r.resource_name, configs=()))
            else:
                out.append(P.build(res_cls, error_code=INVALID_REQUEST,
                                   error_message=f"resource type {r.resource_type} is not supported",
                                   resource_type=r.resource_type, resource_name=r.resource_name,
                                   configs=()))
        return P.response(32, ver, results=tuple(out))

    # ------------------------------------------------------------ fetch

    async def fetch(self, req, ver: int, corr: int):
        """Fetch v4-v11: the response is framed by hand, and each partition's
        records are a ByteRange of its segment file (sent with sendfile), or
        bytes translated from format-1 batches of an old log."""
        deadline = time.monotonic() + P.ms(req.max_wait) / 1000
        min_bytes = req.min_bytes
        while True:
            waiter = self._appended
            counters = []
            topics, total = self._fetch_once(req, counters)
            remaining = deadline - time.monotonic()
            if total >= min_bytes or remaining <= 0 or total < 0:
                break
            # Wait for an append through this server, or poll for appends made
            # by other processes (their change counter) every 20 ms.
            try:
                await asyncio.wait_for(waiter.wait(), min(remaining, 0.02))
            except asyncio.TimeoutError:
                pass
            if not waiter.is_set() and all(p.change_counter == c for p, c in counters) \
                    and deadline - time.monotonic() > 0:
                while deadline - time.monotonic() > 0:
                    try:
                        await asyncio.wait_for(self._appended.wait(),
                                               min(deadline - time.monotonic(), 0.02))
                        break
                    except asyncio.TimeoutError:
                        if any(p.change_counter != c for p, c in counters):
                            break
        return W.fetch_response(corr, ver, topics)

    def _fetch_once(self, req, counters):
        budget = req.max_bytes if req.max_bytes > 0 else DEFAULT_MAX_REQUEST_BYTES
        total = 0
        topics = []
        failed = False
        m = self.metrics
        for ft in req.topics:
            parts = []
            for fp in ft.partitions:
                err, hw, start, data = NONE, -1, -1, None
                try:
                    p = self.log.topic(ft.topic).partition(fp.partition)
                    counters.append((p, p.change_counter))
                    hw, start = p.end_offset, p.start_offset
                    if budget > 0 and fp.fetch_offset != hw:
                        # Both limits apply. byte_range gives at least one
                        # whole batch; a larger one is served only as the
                        # response's first records, as Kafka does.
                        limit = min(fp.partition_max_bytes, budget)
                        data = self._records_at(p, fp.fetch_offset, max(limit, 1))
                        n = 0 if data is None else \
                            len(data) if isinstance(data, bytes) else data.length
                        if total and n > limit:
                            data = None
                        if data is not None:
                            total += n
                            budget -= n
                            if m:
                                m.fetched_bytes(ft.topic, fp.partition, n)
                except OffsetOutOfRangeError:
                    err = OFFSET_OUT_OF_RANGE
                    failed = True
                except (UnknownTopicError, PartitionOutOfRangeError):
                    err = UNKNOWN_TOPIC_OR_PARTITION
                    failed = True
                except InvalidTopicNameError:
                    err = INVALID_TOPIC_EXCEPTION
                    failed = True
                except CorruptLogError as e:
                    log.error("fetch from %s/%d: %s", ft.topic, fp.partition, e)
                    err = KAFKA_STORAGE_ERROR
                    failed = True
                if err and m:
                    m.error("Fetch", err)
                parts.append((fp.partition, err, hw, start, data))
            topics.append((ft.topic, parts))
        return topics, (-1 if failed and total == 0 else total)

    @staticmethod
    def _records_at(p, offset: int, max_bytes: int):
        """The records field for a fetch: a ByteRange of format-2 batches as
        they lie on disk, bytes translated from format-1 batches, or None."""
        rng = p.byte_range(offset, max_bytes)
        if rng is None or rng.magic == 2:
            return rng
        # Format 1 (a log written before format 2): Kafka clients cannot read
        # it, so its records are re-encoded as one RecordBatch v2.
        recs = p.read(offset, max_records=1 << 20, max_bytes=max_bytes)
        return encode_records(recs) if recs else None

    # ------------------------------------------------------------ offsets

    async def list_offsets(self, req, ver):
        mod = P.response_module(2, ver)
        topics = []
        for t in req.topics:
            parts = []
            for lp in t.partitions:
                err, ts, off = NONE, -1, -1
                try:
                    p = self.log.topic(t.name).partition(lp.partition_index)
                    want = lp.timestamp
                    if want == -1:
                        off = p.end_offset
                    elif want == -2:
                        off = p.start_offset
                    else:
                        found = p.offset_for_time(want)
                        if found is not None:
                            off = found
                            ts = p.read(found, max_records=1)[0].timestamp
                except (UnknownTopicError, PartitionOutOfRangeError):
                    err = UNKNOWN_TOPIC_OR_PARTITION
                except InvalidTopicNameError:
                    err = INVALID_TOPIC_EXCEPTION
                parts.append(P.build(mod.ListOffsetsPartitionResponse,
                                     partition_index=lp.partition_index, error_code=err,
                                     old_style_offsets=(), timestamp=ts, offset=off,
                                     leader_epoch=0))
            topics.append(P.build(mod.ListOffsetsTopicResponse, name=t.name,
                                  partitions=tuple(parts)))
        return P.response(2, ver, topics=tuple(topics))

    # ------------------------------------------------------------ producer ids

    async def init_producer_id(self, req, ver):
        if req.transactional_id is not None:
            return P.response(22, ver, error_code=UNSUPPORTED_VERSION, producer_id=-1,
                              producer_epoch=-1)
        pid = await asyncio.get_running_loop().run_in_executor(self._sync_pool,
                                                               self.producer_ids.allocate)
        return P.response(22, ver, error_code=NONE, producer_id=pid, producer_epoch=0)
