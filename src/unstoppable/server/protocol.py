"""Kafka wire framing and the request/response codecs, through kio.

A request on the wire is ``[i32 size][header][body]``; the header (v1, the
non-flexible one) is ``i16 api_key, i16 api_version, i32 correlation_id,
nullable string client_id``. A response is ``[i32 size][i32 correlation_id][body]``
(response header v0). The server advertises only non-flexible versions, so no
tagged fields appear in either header; ApiVersions v3+ (flexible) is answered
as KIP-511 says, with error 35 and a v0 body, after which clients retry with v0-2.

Bodies are decoded and encoded by kio, whose types are generated from Kafka's
JSON schemas. :func:`build` constructs a response of any version from keyword
arguments: fields the version lacks are dropped, and fields the caller leaves
out get Kafka's neutral value (0, empty, null).
"""
from __future__ import annotations

import dataclasses
import datetime
import io
import struct
from functools import lru_cache

from kio.index import load_payload_module
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer
from kio.static.constants import EntityType

__all__ = ["SUPPORTED", "API_NAMES", "ProtocolError", "parse_header", "decode_body",
           "response_module", "build", "encode_response", "ms", "ErrorCode"]

# api_key: (min_version, max_version), non-flexible versions only (see the module docstring).
SUPPORTED: dict[int, tuple[int, int]] = {
    0: (3, 8),     # Produce
    1: (4, 11),    # Fetch
    2: (1, 5),     # ListOffsets
    3: (1, 8),     # Metadata
    8: (2, 7),     # OffsetCommit
    9: (1, 5),     # OffsetFetch
    10: (0, 2),    # FindCoordinator
    11: (0, 5),    # JoinGroup
    12: (0, 3),    # Heartbeat
    13: (0, 3),    # LeaveGroup
    14: (0, 3),    # SyncGroup
    15: (0, 4),    # DescribeGroups
    16: (0, 2),    # ListGroups
    18: (0, 2),    # ApiVersions
    19: (2, 4),    # CreateTopics
    20: (1, 3),    # DeleteTopics
    22: (0, 1),    # InitProducerId
    32: (1, 3),    # DescribeConfigs
    33: (0, 1),    # AlterConfigs
    37: (0, 1),    # CreatePartitions
    44: (0, 0),    # IncrementalAlterConfigs
}

API_NAMES = {0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 8: "OffsetCommit",
             9: "OffsetFetch", 10: "FindCoordinator", 11: "JoinGroup", 12: "Heartbeat",
             13: "LeaveGroup", 14: "SyncGroup", 15: "DescribeGroups", 16: "ListGroups",
             18: "ApiVersions", 19: "CreateTopics", 20: "DeleteTopics", 22: "InitProducerId",
             24: "AddPartitionsToTxn", 25: "AddOffsetsToTxn", 26: "EndTxn",
             28: "TxnOffsetCommit", 32: "DescribeConfigs", 33: "AlterConfigs",
             37: "CreatePartitions", 44: "IncrementalAlterConfigs"}

_HEAD = struct.Struct(">hhih")
_SIZE_CORR = struct.Struct(">ii")


class ProtocolError(ValueError):
    """A frame that does not parse; the server closes that connection."""


def parse_header(frame) -> tuple[int, int, int, int]:
    """(api_key, api_version, correlation_id, body offset) of a request frame."""
    if len(frame) < _HEAD.size:
        raise ProtocolError(f"request of {len(frame)} bytes is shorter than a request header")
    key, ver, corr, cl = _HEAD.unpack_from(frame, 0)
    pos = _HEAD.size + max(cl, 0)
    if cl < -1 or pos > len(frame):
        raise ProtocolError("client_id runs past the request")
    return key, ver, corr, pos


@lru_cache(maxsize=None)
def _request_class(key: int, version: int):
    mod = load_payload_module(key, version, EntityType.request)
    return next(v for v in vars(mod).values()
                if isinstance(v, type) and getattr(v, "__type__", None) is EntityType.request)


@lru_cache(maxsize=None)
def response_module(key: int, version: int):
    """kio's module holding the response types of ``key`` at ``version``."""
    return load_payload_module(key, version, EntityType.response)


@lru_cache(maxsize=None)
def _response_class(key: int, version: int):
    mod = response_module(key, version)
    return next(v for v in vars(mod).values()
                if isinstance(v, type) and getattr(v, "__type__", None) is EntityType.response)


def decode_body(key: int, version: int, frame, offset: int):
    """The request body, decoded by kio; ProtocolError when it does not parse."""
    cls = _request_class(key, version)
    try:
        obj, _ = entity_reader(cls)(frame, offset)
    except Exception as e:  # kio raises several types (DecodeError, ValueError, struct.error)
        raise ProtocolError(f"{API_NAMES.get(key, key)} v{version} request does not parse: {e}") from None
    return obj


def preload() -> None:
    """Import kio's schema modules of every supported version and build their
    codecs now, so no client's first request pays for it (measured: the first
    Metadata v8 took tens of milliseconds of imports)."""
    for key, (lo, hi) in SUPPORTED.items():
        for ver in range(lo, hi + 1):
            entity_reader(_request_class(key, ver))
            entity_writer(_response_class(key, ver))
    entity_writer(_response_class(18, 0))


def ms(td) -> int:
    """Milliseconds of a kio timedelta field."""
    return round(td.total_seconds() * 1000)


_I32_NEG = {"leader_id", "controller_id", "node_id", "coordinator_node_id", "producer_id",
            "producer_epoch", "leader_epoch", "preferred_read_replica", "last_stable_offset",
            "log_start_offset", "high_watermark", "offset", "timestamp", "committed_leader_epoch"}


@lru_cache(maxsize=None)
def _fields(cls):
    return tuple(dataclasses.fields(cls))


def _neutral(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    kt = f.metadata.get("kafka_type")
    if kt is None:
        return ()
    if kt == "error_code":
        return ErrorCode.none
    if kt.startswith("timedelta"):
        return datetime.timedelta(0)
    if kt in ("string",):
        return ""
    if kt in ("bytes", "records"):
        return b""
    if kt == "bool":
        return False
    return -1 if f.name in _I32_NEG else 0


def _convert(f, v):
    kt = f.metadata.get("kafka_type")
    if kt == "error_code" and not isinstance(v, ErrorCode):
        return ErrorCode(int(v))
    if kt and kt.startswith("timedelta") and isinstance(v, int):
        return datetime.timedelta(milliseconds=v)
    if kt == "datetime_i64" and isinstance(v, int):
        return datetime.datetime.fromtimestamp(v / 1000, datetime.timezone.utc)
    return v


def build(cls, **kw):
    """An instance of kio type ``cls`` from ``kw``: unknown names are dropped,
    missing ones get a neutral value, ints become ErrorCodes and timedeltas."""
    args = {}
    for f in _fields(cls):
        if f.name in kw:
            args[f.name] = _convert(f, kw[f.name])
        else:
            args[f.name] = _neutral(f)
    return cls(**args)


def nested(key: int, version: int, name: str):
    """The nested response type ``name`` of ``key`` at ``version`` (None when absent)."""
    return getattr(response_module(key, version), name, None)


def response(key: int, version: int, **kw):
    """The top-level response of ``key`` at ``version``, built from ``kw``."""
    return build(_response_class(key, version), **kw)


def encode_response(correlation_id: int, resp) -> bytes:
    """A whole response frame: size, correlation id (header v0), body."""
    buf = io.BytesIO()
    buf.write(b"\0" * 8)
    entity_writer(type(resp))(buf, resp)
    out = buf.getbuffer()
    _SIZE_CORR.pack_into(out, 0, len(out) - 4, correlation_id)
    del out
    return buf.getvalue()


def encode_raw_response(correlation_id: int, body: bytes) -> bytes:
    """A response frame around an already encoded body."""
    return _SIZE_CORR.pack(len(body) + 4, correlation_id) + body
