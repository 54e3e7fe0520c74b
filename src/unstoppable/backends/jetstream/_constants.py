"""Constants of the JetStream backend: limits, stream and subject names,
the JetStream error codes it reacts to, and the message headers it reads."""
from __future__ import annotations

from unstoppable._core import batch as _batch
from unstoppable.errors import BackendTimeoutError, BackendUnavailableError

# Sizes of the record batch format that this backend's batch bound depends
# on, from the compiled core that defines them (csrc/batch.h).
#: Bytes the producer counts at least for one record (keyless, headerless:
#: the upper bounds of its framing).
RECORD_MIN_BYTES = _batch.RECORD_MAX_OVERHEAD_PLAIN
#: Bytes of a record batch header.
BATCH_HEADER_BYTES = _batch.HEADER_SIZE

#: Messages in one JetStream atomic batch (a server limit).
MAX_ATOMIC_BATCH = 1000
#: ``TopicInfo.max_batch_bytes`` of every JetStream topic. The producer sizes a
#: record at >= RECORD_MIN_BYTES (its framing estimate) and keeps batches under
#: this bound minus a BATCH_HEADER_BYTES header, so no producer batch exceeds
#: one atomic batch.
MAX_BATCH_BYTES = MAX_ATOMIC_BATCH * RECORD_MIN_BYTES + BATCH_HEADER_BYTES
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
