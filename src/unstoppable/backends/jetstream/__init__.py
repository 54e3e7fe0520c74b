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

Modules: :mod:`.records` (how a record travels as a message), :mod:`.leases`
(leases on ``US__LEASES``), :mod:`.log` (the connection and topic admin),
:mod:`.backend` (appends, fetches, waits), :mod:`.groups` (group membership),
:mod:`.offsets` (committed offsets), :mod:`._wire` (the NATS wire layer) and
:mod:`._constants` (limits, names, error codes).
"""
from unstoppable.backends.jetstream._constants import MAX_ATOMIC_BATCH, MAX_BATCH_BYTES
from unstoppable.backends.jetstream.backend import JetStreamBackend
from unstoppable.backends.jetstream.log import JetStreamLog, JetStreamTopic
from unstoppable.backends.jetstream.offsets import JetStreamOffsetStore
from unstoppable.backends.jetstream.records import JetStreamRecord

__all__ = ["JetStreamLog", "JetStreamBackend", "JetStreamTopic", "JetStreamRecord",
           "JetStreamOffsetStore", "MAX_ATOMIC_BATCH", "MAX_BATCH_BYTES"]
