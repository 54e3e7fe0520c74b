"""Kafka topic configs on the embedded log: their names and values
(CreateTopics), and AlterConfigs (API key 33, v0-1) and
IncrementalAlterConfigs (API key 44, v0), which ``Log.alter_topic`` carries
out; and CreatePartitions (API key 37, v0-1), which ``Log.create_partitions``
does. The error codes are Kafka's: UNKNOWN_TOPIC_OR_PARTITION for a topic that
does not exist, INVALID_TOPIC_EXCEPTION for a bad name, INVALID_CONFIG for a
config that is unknown, fixed or out of range (the message says which),
INVALID_REQUEST for a resource type other than a topic or a broker, or a
config named twice in one resource.
"""
from __future__ import annotations

import asyncio
import dataclasses
import re

from unstoppable.errors import (
    InvalidPartitionsError,
    InvalidTopicNameError,
    ReadOnlyLogError,
    TopicConfigError,
    UnknownTopicError,
)
from unstoppable.server import protocol as P
from unstoppable.storage.log import TopicConfig, normalize_cleanup_policy

__all__ = ["kafka_topic_config", "describe_topic_config", "alter_configs",
           "incremental_alter_configs", "create_partitions"]

E = P.ErrorCode
TOPIC, BROKER = 2, 4
# IncrementalAlterConfigs' operations (KIP-339).
SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3

#: Configs whose -1 means "no limit" in Kafka (None in create_topic).
UNLIMITED_CONFIGS = frozenset({"retention.ms", "retention.bytes"})
# Kafka topic config name -> TopicConfig field, for integer configs.
TOPIC_CONFIGS = {
    "retention.ms": "retention_ms",
    "retention.bytes": "retention_bytes",
    "segment.bytes": "segment_bytes",
    "segment.ms": "segment_ms",
    "max.message.bytes": "max_record_bytes",
    "min.compaction.lag.ms": "min_compaction_lag_ms",
    "delete.retention.ms": "delete_retention_ms",
    "message.timestamp.before.max.ms": "message_timestamp_before_max_ms",
    "message.timestamp.after.max.ms": "message_timestamp_after_max_ms",
}
#: Kafka's deprecated message.timestamp.difference.max.ms (KIP-937): the
#: before and after limits both, where the same request names neither.
DIFFERENCE_CONFIG = "message.timestamp.difference.max.ms"
# Topic configs passed on as they are (text) or as a number with a fraction.
TEXT_CONFIGS = {"cleanup.policy": "cleanup_policy",
                "message.timestamp.type": "message_timestamp_type"}
FLOAT_CONFIGS = {"min.cleanable.dirty.ratio": "min_cleanable_dirty_ratio"}
# Settings the log always has; a request for these values is accepted, any other refused.
FIXED_CONFIGS = {"compression.type": "producer"}
#: Configs taken and ignored, as Kafka 3.x does: message.format.version is
#: ignored by a broker on inter.broker.protocol.version 3.0 or later
#: (KIP-724; batches stay RecordBatch v2). Its value must still look like a
#: Kafka version ("0.10.0", "2.8-IV1", ...).
IGNORED_CONFIGS = {"message.format.version": re.compile(r"\d+\.\d+(\.\d+){0,2}(-IV\d+)?")}
_FIELDS = {**TOPIC_CONFIGS, **TEXT_CONFIGS, **FLOAT_CONFIGS}


def kafka_topic_config(configs) -> dict:
    """Kafka configs (objects with ``name`` and ``value``) as ``create_topic``
    keyword arguments (TopicConfigError for one that is not supported)."""
    config: dict = {}
    difference = None
    for c in configs:
        if c.name == DIFFERENCE_CONFIG:
            difference = None if c.value is None else int(c.value)
        elif c.name in TOPIC_CONFIGS:
            value = None if c.value is None else int(c.value)
            if value == -1 and c.name in UNLIMITED_CONFIGS:
                value = None                    # Kafka's -1: no limit
            config[TOPIC_CONFIGS[c.name]] = value
        elif c.name in TEXT_CONFIGS:
            config[TEXT_CONFIGS[c.name]] = c.value
        elif c.name in FLOAT_CONFIGS:
            config[FLOAT_CONFIGS[c.name]] = None if c.value is None else float(c.value)
        elif c.name in FIXED_CONFIGS and c.value == FIXED_CONFIGS[c.name]:
            pass
        elif c.name in IGNORED_CONFIGS and IGNORED_CONFIGS[c.name].fullmatch(c.value or ""):
            pass
        else:
            raise TopicConfigError(
                f"topic config {c.name}={c.value} is not supported; supported: "
                + ", ".join(sorted([*_FIELDS, DIFFERENCE_CONFIG])) + ", "
                + ", ".join(f"{k}={v}" for k, v in FIXED_CONFIGS.items())
                + ", " + ", ".join(f"{k} (ignored, as Kafka 3.x)" for k in IGNORED_CONFIGS))
    if difference is not None:
        config.setdefault("message_timestamp_before_max_ms", difference)
        config.setdefault("message_timestamp_after_max_ms", difference)
    return config


#: Kafka's names of the topic's compression setting values.
_COMPRESSION_NAMES = {None: "uncompressed", "none": "uncompressed"}
#: Kafka's "no limit" for the timestamp limits (Long.MAX_VALUE).
_NO_LIMIT = (1 << 63) - 1


def describe_topic_config(c: TopicConfig, server=None) -> dict:
    """A topic's configs as DescribeConfigs shows them: Kafka name ->
    ``(value, is_default)``. The timestamp limits a topic leaves unset are
    ``server``'s (its ``timestamp_before_max_ms`` / ``timestamp_after_max_ms``;
    None there: Kafka's no-limit Long.MAX_VALUE), shown as defaults."""
    def limit(own, server_attr):
        if own is not None:
            return own, False
        v = getattr(server, server_attr, None)
        return (_NO_LIMIT if v is None else v), True

    return {
        "retention.ms": (-1 if c.retention_ms is None else c.retention_ms, False),
        "retention.bytes": (-1 if c.retention_bytes is None else c.retention_bytes, False),
        "cleanup.policy": (c.cleanup_policy, False),
        "min.compaction.lag.ms": (c.min_compaction_lag_ms, False),
        "delete.retention.ms": (c.delete_retention_ms, False),
        "min.cleanable.dirty.ratio": (c.min_cleanable_dirty_ratio, False),
        "compression.type": (_COMPRESSION_NAMES.get(c.compression, c.compression), False),
        "max.message.bytes": (c.max_record_bytes, False),
        "segment.bytes": (c.segment_bytes, False),
        "message.timestamp.type": (c.message_timestamp_type,
                                   c.message_timestamp_type == _default("message_timestamp_type")),
        "message.timestamp.before.max.ms": limit(c.message_timestamp_before_max_ms,
                                                 "timestamp_before_max_ms"),
        "message.timestamp.after.max.ms": limit(c.message_timestamp_after_max_ms,
                                                "timestamp_after_max_ms"),
    }


def _default(field: str):
    return next(f.default for f in dataclasses.fields(TopicConfig) if f.name == field)


def _full_config(configs) -> dict:
    """AlterConfigs replaces a topic's configs: those not given go back to
    their defaults, as Kafka's non-incremental AlterConfigs does."""
    config = {field: _default(field) for field in _FIELDS.values()}
    config.update(kafka_topic_config(configs))
    return config


def _incremental_config(configs, current: TopicConfig) -> dict:
    """IncrementalAlterConfigs' operations as alter_topic keyword arguments:
    SET, DELETE (back to the default), and APPEND / SUBTRACT on the one list
    config, cleanup.policy."""
    config: dict = {}
    for c in configs:
        op = c.config_operation
        if op == SET:
            config.update(kafka_topic_config([c]))
        elif op == DELETE:
            if c.name in FIXED_CONFIGS or c.name in IGNORED_CONFIGS:
                continue
            if c.name == DIFFERENCE_CONFIG:
                for field in ("message_timestamp_before_max_ms", "message_timestamp_after_max_ms"):
                    config[field] = _default(field)
                continue
            if c.name not in _FIELDS:
                kafka_topic_config([c])         # the error naming what is supported
            config[_FIELDS[c.name]] = _default(_FIELDS[c.name])
        elif op in (APPEND, SUBTRACT):
            if c.name != "cleanup.policy":
                raise TopicConfigError(f"{'APPEND' if op == APPEND else 'SUBTRACT'} applies to "
                                       f"list configs only (cleanup.policy), not {c.name}")
            words = set(config.get("cleanup_policy", current.cleanup_policy).split(","))
            given = {w.strip() for w in (c.value or "").split(",") if w.strip()}
            words = words | given if op == APPEND else words - given
            if not words:
                raise TopicConfigError("cleanup.policy cannot become empty: it needs compact "
                                       "and/or delete")
            config["cleanup_policy"] = normalize_cleanup_policy(sorted(words))
        else:
            raise TopicConfigError(f"config {c.name}: unknown operation {op} (0 SET, 1 DELETE, "
                                   f"2 APPEND, 3 SUBTRACT)")
    return config


async def _alter(log, r, validate_only: bool, incremental: bool):
    """(error code, message) of altering one resource."""
    names = [c.name for c in r.configs]
    if len(set(names)) != len(names):
        return E.invalid_request, f"a config is named more than once for {r.resource_name!r}"
    if r.resource_type == BROKER:
        if not r.configs:
            return E.none, None
        return E.invalid_config, ("no broker config can change on this server: "
                                  + ", ".join(sorted(set(names))))
    if r.resource_type != TOPIC:
        return E.invalid_request, f"resource type {r.resource_type} is not supported"
    try:
        current = log.topic(r.resource_name).config
        config = (_incremental_config(r.configs, current) if incremental
                  else _full_config(r.configs))
        await asyncio.to_thread(log.alter_topic, r.resource_name, validate_only=validate_only,
                                **config)
    except InvalidTopicNameError as e:
        return E.invalid_topic_exception, str(e)
    except UnknownTopicError as e:
        return E.unknown_topic_or_partition, str(e)
    except (TopicConfigError, ValueError) as e:
        return E.invalid_config, str(e)
    except ReadOnlyLogError as e:
        return E.kafka_storage_error, str(e)
    return E.none, None


async def _respond(broker, key: int, req, ver: int, incremental: bool):
    mod = P.response_module(key, ver)
    out = []
    for r in req.resources:
        err, msg = await _alter(broker.log, r, req.validate_only, incremental)
        if err != E.none and broker.metrics:
            broker.metrics.error(P.API_NAMES[key], int(err))
        out.append(P.build(mod.AlterConfigsResourceResponse, error_code=err, error_message=msg,
                           resource_type=r.resource_type, resource_name=r.resource_name))
    return P.response(key, ver, responses=tuple(out))


async def alter_configs(broker, req, ver):
    """AlterConfigs (33): each topic's configs become those given, the others
    their defaults (Kafka's non-incremental semantics)."""
    return await _respond(broker, 33, req, ver, incremental=False)


async def incremental_alter_configs(broker, req, ver):
    """IncrementalAlterConfigs (44): SET, DELETE, APPEND and SUBTRACT on a topic's configs."""
    return await _respond(broker, 44, req, ver, incremental=True)


# ------------------------------------------------------------ CreatePartitions

#: Kafka's INVALID_REPLICA_ASSIGNMENT.
INVALID_REPLICA_ASSIGNMENT = 39


async def _create_partitions(log, t, validate_only: bool):
    """(error code, message) of growing one topic of a CreatePartitions request."""
    try:
        current = log.topic(t.name).partitions
        if t.assignments is not None:
            # One node: a new partition's replicas can only be this broker (0).
            if len(t.assignments) != t.count - current:
                return INVALID_REPLICA_ASSIGNMENT, (
                    f"{len(t.assignments)} assignments for {t.count - current} new partitions")
            if any(tuple(a.broker_ids) != (0,) for a in t.assignments):
                return INVALID_REPLICA_ASSIGNMENT, ("this is a single node (broker 0): every new "
                                                    "partition's replicas must be [0]")
        await asyncio.to_thread(log.create_partitions, t.name, t.count,
                                validate_only=validate_only)
    except InvalidTopicNameError as e:
        return E.invalid_topic_exception, str(e)
    except UnknownTopicError as e:
        return E.unknown_topic_or_partition, str(e)
    except InvalidPartitionsError as e:
        return E.invalid_partitions, str(e)
    except ReadOnlyLogError as e:
        return E.kafka_storage_error, str(e)
    return E.none, None


async def create_partitions(broker, req, ver):
    """CreatePartitions (37, v0-1): each topic grows to ``count`` partitions
    (``Log.create_partitions``): 37 INVALID_PARTITIONS when that is not more
    than it has, 3 for an unknown topic, 39 INVALID_REPLICA_ASSIGNMENT for
    assignments that name another broker or do not match the new partitions,
    42 INVALID_REQUEST for a topic named twice."""
    mod = P.response_module(37, ver)
    names = [t.name for t in req.topics]
    out = []
    for t in req.topics:
        if names.count(t.name) > 1:
            err, msg = E.invalid_request, f"topic {t.name!r} is named more than once"
        else:
            err, msg = await _create_partitions(broker.log, t, req.validate_only)
        if err != E.none and broker.metrics:
            broker.metrics.error("CreatePartitions", int(err))
        out.append(P.build(mod.CreatePartitionsTopicResult, name=t.name, error_code=err,
                           error_message=msg))
    return P.response(37, ver, results=tuple(out))
