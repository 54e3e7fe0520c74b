"""The ``topics`` commands: create, list, describe, alter (settings, partitions), delete."""
from __future__ import annotations

import os

from unstoppable.cli._common import (
    _EXIT_USAGE,
    CLIError,
    _emit,
    _is_remote,
    _log_url,
    _n,
    _Parser,
    _run_admin,
)


# Kafka's names of the settings whose name is not the setting's with dots
# (retention.ms is retention_ms, cleanup.policy cleanup_policy, ...).
_KAFKA_NAMES = {"max.message.bytes": "max_record_bytes", "compression.type": "compression"}
#: Settings whose Kafka value -1 means "no limit" (None here).
_UNLIMITED = ("retention_ms", "retention_bytes")


def _setting_name(k: str) -> str:
    """A setting named as here (retention_ms) or as in Kafka and rpk (retention.ms)."""
    return _KAFKA_NAMES.get(k, k.replace(".", "_"))


def _parse_config(items) -> dict:
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise CLIError(f"--config wants KEY=VALUE, got {item!r}", _EXIT_USAGE)
        k = _setting_name(k)
        if k in _UNLIMITED and v == "-1":
            out[k] = None
            continue
        if v.lower() in ("none", "null", ""):
            out[k] = None
            continue
        if k in _TEXT_SETTINGS:
            out[k] = v
            continue
        try:
            out[k] = float(v) if k in _FLOAT_SETTINGS else int(v)
        except ValueError:
            raise CLIError(f"--config {k}: {v!r} is not "
                           f"{'a number' if k in _FLOAT_SETTINGS else 'an integer'}",
                           _EXIT_USAGE) from None
    # Kafka's deprecated message.timestamp.difference.max.ms: both limits,
    # where they are not named themselves.
    if _DIFFERENCE in out:
        diff = out.pop(_DIFFERENCE)
        for k in ("message_timestamp_before_max_ms", "message_timestamp_after_max_ms"):
            out.setdefault(k, diff)
    return out


# Settings --config takes as text or as a number with a fraction (the rest are integers).
_TEXT_SETTINGS = ("cleanup_policy", "compression", "message_timestamp_type")
_DIFFERENCE = "message_timestamp_difference_max_ms"
_FLOAT_SETTINGS = ("min_cleanable_dirty_ratio",)
# The compaction options of ``topics create``: option attribute -> setting.
_COMPACTION_OPTIONS = ("cleanup_policy", "min_compaction_lag_ms", "delete_retention_ms",
                       "min_cleanable_dirty_ratio")


def _description(d) -> dict:
    """A :class:`unstoppable.admin.TopicDescription` as the CLI shows it
    (no ``durable_offset`` where the backend has none)."""
    parts = []
    for p in d.offsets:
        row = {"partition": p.partition, "start_offset": p.start_offset, "end_offset": p.end_offset}
        if p.durable_offset is not None:
            row["durable_offset"] = p.durable_offset
        parts.append(row)
    # A compacted topic's offsets skip (the cleaner removes superseded
    # records and keeps the offsets of the rest), so end - start is an
    # offset range, not a count of records; counting them would read every
    # batch header. Like rpk (which shows offsets, never counts), its
    # "records" is null and "offset_range" says what end - start is.
    compacted = "compact" in str(d.config.get("cleanup_policy", "delete")).split(",")
    return {"name": d.name, "partitions": d.partitions, "config": d.config,
            "records": None if compacted else d.records, "offset_range": d.records,
            "partition_offsets": parts}


def _size(info) -> str:
    """``600 records``, or for a compacted topic ``600 offsets (compacted: fewer records)``."""
    if info["records"] is None:
        return f"{_n(info['offset_range'], 'offset')} (compacted: fewer records, offsets skip)"
    return _n(info["records"], "record")


def _where(args) -> str:
    url = _log_url(args)
    return f"on {url}" if _is_remote(url) else f"in {os.path.abspath(url)}"


def _cmd_create(args) -> int:
    if args.partitions < 1:
        raise CLIError("--partitions must be at least 1", _EXIT_USAGE)
    cfg = _parse_config(args.config)
    for k in _COMPACTION_OPTIONS:
        v = getattr(args, k, None)
        if v is not None:
            cfg[k] = v

    async def create(admin):
        if args.name in await admin.list_topics():
            if not args.if_not_exists:
                raise CLIError(f"topic {args.name!r} exists ({_where(args)}); "
                               "pass --if-not-exists to accept an existing topic")
            return _description(await admin.describe_topic(args.name))
        return _description(await admin.create_topic(args.name, args.partitions, **cfg))
    info = _run_admin(args, create, create=True, writes=f"create topic {args.name!r}")
    if args.json:
        _emit(info)
    else:
        print(f"topic {info['name']!r}: {_n(info['partitions'], 'partition')} ({_where(args)})")
    return 0


def _cmd_delete(args) -> int:
    async def delete(admin):
        if args.if_exists and args.name not in await admin.list_topics():
            return False
        await admin.delete_topic(args.name)
        return True
    deleted = _run_admin(args, delete, writes=f"delete topic {args.name!r}")
    if args.json:
        _emit({"name": args.name, "deleted": deleted})
    else:
        print(f"topic {args.name!r} {'deleted' if deleted else 'did not exist'} ({_where(args)})")
    return 0


def _cmd_alter_config(args) -> int:
    cfg = _parse_config(args.config)
    total = getattr(args, "partitions", None)
    if not cfg and total is None:
        raise CLIError("topics alter needs at least one --config KEY=VALUE (or --partitions N)",
                       _EXIT_USAGE)

    async def alter(admin):
        if total is not None:       # as kafka-topics --alter --partitions: first, then the configs
            d = await admin.create_partitions(args.name, total)
            if not cfg:
                return _description(d)
        return _description(await admin.alter_topic_config(args.name, **cfg))
    info = _run_admin(args, alter, writes=f"alter topic {args.name!r}")
    if args.json:
        _emit(info)
    elif not cfg:
        print(f"topic {args.name!r}: {_n(info['partitions'], 'partition')}")
    else:
        # A setting back at its default may be left out of the description
        # (topic.json stores some only when set): then it is what was asked.
        print(f"topic {args.name!r}: " + ", ".join(
            f"{k} = {info['config'][k] if k in info['config'] else cfg[k]}" for k in cfg))
    return 0


def _cmd_add_partitions(args) -> int:
    if args.total is None:
        raise CLIError("topics add-partitions needs --total N (the partition count wanted)",
                       _EXIT_USAGE)
    args.partitions, args.config = args.total, None
    return _cmd_alter_config(args)


def _cmd_list(args) -> int:
    async def describe(admin):
        return [_description(await admin.describe_topic(n)) for n in await admin.list_topics()]
    infos = _run_admin(args, describe)
    if args.json:
        _emit([{k: i[k] for k in ("name", "partitions", "records")} for i in infos])
    elif not infos:
        print("no topics")
    else:
        w = max(len(i["name"]) for i in infos)
        print(f"{'TOPIC':<{w}}  PARTITIONS      RECORDS")
        for i in infos:
            n = f"{i['records']:>11,}" if i["records"] is not None else \
                f"{i['offset_range']:>11,} offsets (compacted: fewer records)"
            print(f"{i['name']:<{w}}  {i['partitions']:>10}  {n}")
    return 0


def _cmd_describe(args) -> int:
    async def describe(admin):
        return _description(await admin.describe_topic(args.name))
    info = _run_admin(args, describe)
    if args.json:
        _emit(info)
        return 0
    print(f"topic {info['name']!r}: {_n(info['partitions'], 'partition')}, {_size(info)}")
    for k, v in info["config"].items():
        print(f"  {k} = {v}")
    durable = all("durable_offset" in p for p in info["partition_offsets"])
    print("  PARTITION  START OFFSET    END OFFSET" + ("  DURABLE OFFSET" if durable else ""))
    for p in info["partition_offsets"]:
        print(f"  {p['partition']:>9}  {p['start_offset']:>12,}  {p['end_offset']:>12,}" +
              (f"  {p['durable_offset']:>14,}" if durable else ""))
    return 0


def register(sub, common, withlog) -> None:
    """Add the command's parser to ``sub``."""
    t = sub.add_parser("topics", help="create, list, describe, alter and delete topics")
    tsub = t.add_subparsers(dest="topics_cmd", required=True, metavar="ACTION", parser_class=_Parser)
    tc = tsub.add_parser("create", parents=[withlog], help="create a topic (and the log if needed)")
    tc.add_argument("name", help="the topic's name")
    tc.add_argument("--partitions", type=int, default=1, metavar="N",
                    help="how many partitions (default: %(default)s)")
    tc.add_argument("--config", action="append", metavar="KEY=VALUE",
                    help="a topic setting, e.g. retention_bytes=1073741824 (repeatable); on JetStream "
                         "also replicas=3")
    tc.add_argument("--cleanup-policy", dest="cleanup_policy", metavar="POLICY",
                    choices=("delete", "compact", "compact,delete", "delete,compact"),
                    help="delete (default: retention deletes old segments), compact (keep the "
                         "latest record of every key; records need a key) or compact,delete")
    tc.add_argument("--min-compaction-lag-ms", dest="min_compaction_lag_ms", type=int, metavar="MS",
                    help="records younger than this are never compacted (default: 0)")
    tc.add_argument("--delete-retention-ms", dest="delete_retention_ms", type=int, metavar="MS",
                    help="how long a tombstone (a record with no value) stays after its segment "
                         "was cleaned (default: 86400000, one day)")
    tc.add_argument("--min-cleanable-dirty-ratio", dest="min_cleanable_dirty_ratio", type=float,
                    metavar="R", help="the background cleaner compacts a partition once this "
                                      "share of it was written since its last cleaning "
                                      "(0.0 .. 1.0, default: 0.5)")
    tc.add_argument("--if-not-exists", action="store_true",
                    help="succeed when the topic exists already (without it, that is an error)")
    tc.set_defaults(func=_cmd_create)
    tsub.add_parser("list", parents=[withlog], help="list topics").set_defaults(func=_cmd_list)
    td = tsub.add_parser("describe", parents=[withlog], help="settings and offsets of a topic")
    td.add_argument("name", help="the topic's name")
    td.set_defaults(func=_cmd_describe)
    tx = tsub.add_parser("delete", parents=[withlog], help="delete a topic and all its records")
    tx.add_argument("name", help="the topic's name")
    tx.add_argument("--if-exists", action="store_true", help="succeed when there is no such topic")
    tx.set_defaults(func=_cmd_delete)
    ta = tsub.add_parser("alter-config", parents=[withlog], aliases=["alter"],
                         help="change a topic's settings (embedded: any, and --partitions; "
                              "JetStream: retention_ms, retention_bytes)")
    ta.add_argument("name", help="the topic's name")
    ta.add_argument("--config", "--set", action="append", metavar="KEY=VALUE",
                    help="the new value of a setting, named as here (cleanup_policy) or as in "
                         "Kafka (cleanup.policy); repeatable; none, null or, for retention, -1: "
                         "no limit")
    ta.add_argument("--partitions", type=int, metavar="N",
                    help="grow the topic to N partitions (only more: Kafka's kafka-topics --alter "
                         "--partitions; the embedded log)")
    ta.set_defaults(func=_cmd_alter_config)
    tp = tsub.add_parser("add-partitions", parents=[withlog],
                         help="grow a topic to --total N partitions (the embedded log; JetStream "
                              "refuses)")
    tp.add_argument("name", help="the topic's name")
    tp.add_argument("--total", type=int, metavar="N", help="the partition count wanted")
    tp.set_defaults(func=_cmd_add_partitions)
