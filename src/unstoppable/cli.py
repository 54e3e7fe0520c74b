"""The ``unstoppable`` command line (also ``python -m unstoppable``).

    unstoppable demo [--dir DIR] [--log nats://...] [--seats N] [--users N] [--workers N] ...
    unstoppable topics create NAME [--partitions N] [--config KEY=VALUE ...]
    unstoppable topics list | describe NAME
    unstoppable produce TOPIC [--format lines|json] [--codec C] [--key K | --key-field F]
    unstoppable consume TOPIC [--group G] [--offset O] [-n N] [-f]
    unstoppable tail TOPIC [-n N] [-f]
    unstoppable groups [GROUP] [--sqlite DB]
    unstoppable dump TOPIC [--partition P] [--offset O] [-n N]
    unstoppable verify
    unstoppable dlq list | redrive [ID ... | --all]
    unstoppable bench [--records N] [--value-bytes B]
    unstoppable export TOPIC --format parquet|arrow|csv --out PATH [--from X] [--to Y]

Every command that reads a log takes ``--log DIR`` (default: $UNSTOPPABLE_LOG);
``topics``, ``produce``, ``consume``, ``tail`` and ``dlq`` also take
``--log nats://host:port[,host:port...]`` (a JetStream cluster, through
``unstoppable.connect``), and ``demo --log nats://...`` runs the demo there.
Output is for people by default; ``--json`` prints JSON for scripts (one
document, or one per line for record streams). Long work shows a progress bar
on stderr when it is a terminal (``--progress`` forces it). Bad input gives a
one-line error and a non-zero exit: 2 for bad usage, 1 for everything else.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time

__all__ = ["main"]

_EXIT_USAGE = 2
_EXIT_ERROR = 1


class CLIError(Exception):
    """A one-line error for the user; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = _EXIT_ERROR):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        raise CLIError(f"{message} (see '{self.prog} --help')", _EXIT_USAGE)


# ---------------------------------------------------------------- helpers

def _emit(obj) -> None:
    print(json.dumps(obj, default=str))


def _text(b) -> str | None:
    """Bytes as text for JSON (which escapes what it must): UTF-8, invalid bytes as \\xNN."""
    if b is None:
        return None
    return bytes(b).decode("utf-8", "backslashreplace")


_CONTROL = {i: f"\\x{i:02x}" for i in list(range(0x20)) + [0x7f] if i != 0x09}


def _printable(b) -> str | None:
    """Bytes as one printable line: like _text, and control characters as \\xNN."""
    t = _text(b)
    return None if t is None else t.translate(_CONTROL)


_REMOTE_COMMANDS = "topics create|list|describe, produce, consume, tail, dlq list|redrive and demo"


def _log_url(args) -> str:
    url = args.log or os.environ.get("UNSTOPPABLE_LOG")
    if not url:
        raise CLIError("no log given: pass --log DIR (or nats://host:port) or set UNSTOPPABLE_LOG")
    return url


def _is_remote(url: str) -> bool:
    from unstoppable.connect import is_remote_url
    return is_remote_url(url)


def _open_log(args):
    """The embedded log of --log (a directory that must hold a log)."""
    import unstoppable as us
    path = _log_url(args)
    if _is_remote(path):
        raise CLIError(f"{args.command} needs an embedded log (a directory); on {path.split('://')[0]}:// "
                       f"logs the CLI offers {_REMOTE_COMMANDS}")
    if path.startswith("file://"):
        path = path[len("file://"):]
    if not os.path.isdir(path):
        raise CLIError(f"no log at {path}")
    return us.Log(path, create=False)


def _run_on_log(args, work):
    """Run ``await work(log)`` on the log of --log: the embedded log, or a
    JetStream cluster for nats:// and tls:// URLs (connected inside the
    event loop that uses it)."""
    import unstoppable as us
    url = _log_url(args)
    if not _is_remote(url):
        with _open_log(args) as log:
            return asyncio.run(work(log))

    async def remote():
        log = await us.connect(url)
        try:
            return await work(log)
        finally:
            await log.close()
    return asyncio.run(remote())


def _topic(log, name: str):
    return log.topic(name)


def _codec(name):
    from unstoppable import codecs
    try:
        return codecs.get(name)
    except (ValueError, TypeError) as e:
        raise CLIError(str(e), _EXIT_USAGE) from None


def _show_value(codec, value, as_json: bool):
    """A record value for output: decoded by the codec when one is given."""
    if value is None:
        return None
    if codec is None:
        return _text(value) if as_json else _printable(value)
    from unstoppable.codecs import ProtobufCodec
    try:
        obj = codec.decode(value)
    except Exception as e:  # shown, not fatal: one bad record must not stop a dump
        return {"undecodable": _text(value), "error": str(e)} if as_json else f"<undecodable: {e}>"
    if isinstance(codec, ProtobufCodec):
        d = codec.to_dict(obj)
        kind = obj.WhichOneof("kind") if "kind" in obj.DESCRIPTOR.oneofs_by_name else None
        if kind is not None:
            d = {"kind": kind, **d}
        return d if as_json else json.dumps(d, separators=(",", ":"))
    if isinstance(obj, bytes):
        return _text(obj) if as_json else _printable(obj)
    return obj if as_json else (obj if isinstance(obj, str) else json.dumps(obj))


def _record_dict(topic, r, codec):
    return {"topic": topic, "partition": r.partition, "offset": r.offset,
            "timestamp": r.timestamp, "key": _text(r.key),
            "value": _show_value(codec, r.value, True),
            "headers": {k: _text(v) for k, v in r.headers}}


def _print_record(args, topic, r, codec):
    if args.json:
        _emit(_record_dict(topic, r, codec))
    else:
        key = _printable(r.key)
        print(f"{r.partition}/{r.offset}\t{'' if key is None else key}\t{_show_value(codec, r.value, False)}")


def _progress(args, label, total=None):
    from unstoppable._progress import Progress
    return Progress(label, total, force=getattr(args, "progress", False))


def _iso(ms: int) -> str:
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc).isoformat(timespec="milliseconds")


# ------------------------------------------------------------------- demo

def _cmd_demo(args) -> int:
    """The ticket-booking demo (see unstoppable.booking.demo)."""
    from unstoppable.booking.demo import DemoConfig, format_summary, run_demo
    for name in ("seats", "users", "workers", "producers", "partitions"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name} must be at least 1", _EXIT_USAGE)
    if args.window <= 0 or args.ttl_ms < 1:
        raise CLIError("--window and --ttl-ms must be positive", _EXIT_USAGE)
    if args.kill and args.workers < 2:
        raise CLIError("--workers must be at least 2 to survive a killed worker (or pass --no-kill)",
                       _EXIT_USAGE)
    url = getattr(args, "log", None)
    if url is not None and not _is_remote(url):
        raise CLIError(f"demo --log takes a JetStream URL (nats://host:port[,host:port...]), not {url!r}; "
                       "the embedded demo makes its own log in --dir", _EXIT_USAGE)
    if args.replicas is not None:
        if url is None:
            raise CLIError("--replicas needs --log nats://... (an embedded log keeps one copy)", _EXIT_USAGE)
        if args.replicas < 1:
            raise CLIError("--replicas must be at least 1", _EXIT_USAGE)
    tmp = None
    path = args.dir
    if path is None:
        tmp = tempfile.mkdtemp(prefix="unstoppable-demo-")
        path = tmp
    kept = tmp is None or args.keep
    cfg = DemoConfig(dir=path, seats=args.seats, users=args.users, workers=args.workers,
                     producers=args.producers, partitions=args.partitions, window_s=args.window,
                     ttl_ms=args.ttl_ms, poison=args.poison, fault_rate=args.fault_rate,
                     kill=args.kill, seed=args.seed, timeout_s=args.timeout,
                     progress=True if args.progress else None, log=url, replicas=args.replicas,
                     delete_topics=not kept)
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    try:
        summary = run_demo(cfg, out=say)
    finally:
        if not kept:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        summary["dir"] = os.path.abspath(path) if kept else None
        _emit(summary)
    else:
        print(format_summary(summary))
        if kept and url is None:
            print(f"log, read model (readmodel.db) and rebuild (rebuilt.db) kept in {os.path.abspath(path)}")
        elif kept:
            print(f"topics {', '.join(summary['topics'].values())} kept on {url}; read model "
                  f"(readmodel.db) and rebuild (rebuilt.db) kept in {os.path.abspath(path)}")
    return 0 if summary["ok"] else 1


# ----------------------------------------------------------------- topics

def _parse_config(items) -> dict:
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise CLIError(f"--config wants KEY=VALUE, got {item!r}", _EXIT_USAGE)
        if v.lower() in ("none", "null", ""):
            out[k] = None
            continue
        try:
            out[k] = int(v)
        except ValueError:
            raise CLIError(f"--config {k}: {v!r} is not an integer", _EXIT_USAGE) from None
    return out


def _topic_info(t) -> dict:
    parts = []
    for p in t:
        parts.append({"partition": p.index, "start_offset": p.start_offset,
                      "end_offset": p.end_offset, "durable_offset": p.durable_offset})
    return {"name": t.name, "partitions": t.partitions, "config": t.config.settings(),
            "records": sum(p["end_offset"] - p["start_offset"] for p in parts),
            "partition_offsets": parts}


async def _remote_topic_info(log, name: str) -> dict:
    """What _topic_info says of an embedded topic, for a JetStream topic
    (JetStream acknowledges only what it stored: no separate durable offset)."""
    from unstoppable.client.embedded import backend_for
    t = await log.describe_topic(name)
    be = backend_for(log)
    try:
        ranges = await asyncio.gather(*(be.offset_range(name, p) for p in range(t.partitions)))
    finally:
        await be.close()
    parts = [{"partition": p, "start_offset": start, "end_offset": end}
             for p, (start, end) in enumerate(ranges)]
    return {"name": name, "partitions": t.partitions,
            "config": {"replicas": t.replicas, "max_record_bytes": t.max_record_bytes,
                       "retention_ms": t.retention_ms, "retention_bytes": t.retention_bytes},
            "records": sum(p["end_offset"] - p["start_offset"] for p in parts),
            "partition_offsets": parts}


def _cmd_topics(args) -> int:
    if args.topics_cmd == "create":
        import unstoppable as us
        path = _log_url(args)
        if args.partitions < 1:
            raise CLIError("--partitions must be at least 1", _EXIT_USAGE)
        if _is_remote(path):
            async def create(log):
                cfg = _parse_config(args.config)
                await log.create_topic(args.name, partitions=args.partitions, **cfg)
                return (await log.topic_info(args.name)).partitions
            n = _run_on_log(args, create)
            if args.json:
                _emit({"name": args.name, "partitions": n})
            else:
                print(f"topic {args.name!r}: {n} partitions (on {path})")
            return 0
        with us.Log(path) as log:
            t = log.create_topic(args.name, partitions=args.partitions, **_parse_config(args.config))
            info = _topic_info(t)
        if args.json:
            _emit(info)
        else:
            print(f"topic {info['name']!r}: {info['partitions']} partitions (in {os.path.abspath(path)})")
        return 0
    listing = args.topics_cmd == "list"
    if _is_remote(_log_url(args)):
        async def describe(log):
            names = await log.topics() if listing else [args.name]
            return [await _remote_topic_info(log, n) for n in names]
        infos = _run_on_log(args, describe)
    else:
        with _open_log(args) as log:
            infos = [_topic_info(log.topic(n)) for n in (log.topics() if listing else [args.name])]
    if listing:
        if args.json:
            _emit([{k: i[k] for k in ("name", "partitions", "records")} for i in infos])
        elif not infos:
            print("no topics")
        else:
            w = max(len(i["name"]) for i in infos)
            print(f"{'TOPIC':<{w}}  PARTITIONS      RECORDS")
            for i in infos:
                print(f"{i['name']:<{w}}  {i['partitions']:>10}  {i['records']:>11,}")
        return 0
    (info,) = infos
    if args.json:
        _emit(info)
        return 0
    print(f"topic {info['name']!r}: {info['partitions']} partitions, {info['records']:,} records")
    for k, v in info["config"].items():
        print(f"  {k} = {v}")
    durable = all("durable_offset" in p for p in info["partition_offsets"])
    print("  PARTITION  START OFFSET    END OFFSET" + ("  DURABLE OFFSET" if durable else ""))
    for p in info["partition_offsets"]:
        print(f"  {p['partition']:>9}  {p['start_offset']:>12,}  {p['end_offset']:>12,}" +
              (f"  {p['durable_offset']:>14,}" if durable else ""))
    return 0


# ---------------------------------------------------------------- produce

async def _stdin_lines():
    """Lines of stdin (bytes, without the newline), read in chunks off the
    event loop so that the producer keeps writing while input trickles in."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    buf = b""
    while True:
        chunk = await loop.run_in_executor(None, os.read, fd, 1 << 16)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line
    if buf:
        yield buf


def _cmd_produce(args) -> int:
    import unstoppable as us
    from unstoppable.codecs import BytesCodec, JsonCodec, ProtobufCodec, StrCodec

    codec = _codec(args.codec) if args.codec else None
    if args.key is not None and (args.key_field or args.key_separator):
        raise CLIError("--key cannot be combined with --key-field or --key-separator", _EXIT_USAGE)
    if args.format == "lines" and args.key_field:
        raise CLIError("--key-field needs --format json", _EXIT_USAGE)
    if args.format == "json" and args.key_separator:
        raise CLIError("--key-separator needs --format lines", _EXIT_USAGE)
    if args.format == "lines" and isinstance(codec, (JsonCodec, ProtobufCodec)):
        raise CLIError(f"--codec {args.codec} needs --format json", _EXIT_USAGE)
    counts: dict = {}
    total = 0

    def make(line: bytes, n: int):
        key = None if args.key is None else args.key.encode()
        if args.format == "lines":
            if args.key_separator:
                k, sep, v = line.partition(args.key_separator.encode())
                if not sep:
                    raise CLIError(f"line {n}: no key separator {args.key_separator!r}")
                return k, v
            return key, line
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise CLIError(f"line {n}: not valid JSON ({e})") from None
        if args.key_field:
            if not isinstance(obj, dict) or args.key_field not in obj:
                raise CLIError(f"line {n}: no field {args.key_field!r} for the key")
            key = str(obj[args.key_field]).encode()
        if isinstance(codec, ProtobufCodec):
            try:
                msg = codec.from_json(obj)
            except ValueError as e:
                raise CLIError(f"line {n}: {e}") from None
            if key is None and "kind" in msg.DESCRIPTOR.oneofs_by_name:
                from unstoppable.booking.events import seat_of
                seat = seat_of(msg) if msg.DESCRIPTOR.full_name.endswith("BookingEvent") else ""
                key = seat.encode() if seat else None
            return key, codec.encode(msg)
        if isinstance(codec, (BytesCodec, StrCodec)):
            if not isinstance(obj, str):
                raise CLIError(f"line {n}: --codec {args.codec} wants JSON strings")
            return key, obj.encode()
        return key, JsonCodec().encode(obj)

    async def run(log):
        nonlocal total
        n = 0
        async with us.Producer(log, args.topic, acks=args.acks) as p:
            if args.partition is not None and not 0 <= args.partition < p.partitions:
                raise CLIError(f"topic {args.topic!r} has partitions 0 .. {p.partitions - 1}, "
                               f"not {args.partition}")
            futs = []
            try:
                async for line in _stdin_lines():
                    n += 1
                    if line.endswith(b"\r"):
                        line = line[:-1]
                    if not line.strip() and args.format == "json":
                        continue
                    key, value = make(line, n)
                    futs.append(await p.send(value, key=key, partition=args.partition))
                    if len(futs) >= 10000:
                        await _settle(p, futs)
            finally:
                await _settle(p, futs)

    async def _settle(p, futs):
        nonlocal total
        await p.flush()
        for f in futs:
            e = f.exception()
            if e is not None:
                raise e
            md = f.result()
            counts[md.partition] = counts.get(md.partition, 0) + 1
            total += 1
        futs.clear()

    try:
        _run_on_log(args, run)
    except CLIError as e:
        if total:
            raise CLIError(f"{e} ({total} records before it were produced)", e.code) from None
        raise
    if args.json:
        _emit({"topic": args.topic, "records": total,
               "partitions": {str(k): v for k, v in sorted(counts.items())}})
    else:
        print(f"produced {total:,} records to {args.topic!r}", file=sys.stderr)
    return 0


# ------------------------------------------------------- consume and tail

def _cmd_consume(args, tail: bool = False) -> int:
    import unstoppable as us
    from unstoppable.client import TopicPartition

    codec = _codec(args.codec) if args.codec else None
    limit = args.max_records
    if limit is not None and limit < 0:
        raise CLIError("-n must be >= 0", _EXIT_USAGE)
    group = None if tail else args.group

    async def run(log):
        from unstoppable.client.embedded import backend_for
        be = backend_for(log)
        n = (await be.topic_info(args.topic)).partitions
        parts = list(range(n))
        if args.partition is not None:
            if not 0 <= args.partition < n:
                raise us.PartitionOutOfRangeError(
                    f"topic {args.topic!r} has partitions 0 .. {n - 1}, not {args.partition}")
            parts = [args.partition]
        ranges = {p: await be.offset_range(args.topic, p) for p in parts}
        if isinstance(log, us.Log):
            await be.close()      # a private one; the consumer makes its own
        if group is None:
            topics = [TopicPartition(args.topic, p) for p in parts]
        else:
            if args.partition is not None:
                raise CLIError("--partition cannot be used with --group (the group assigns them)",
                               _EXIT_USAGE)
            topics = args.topic
        reset = "earliest"      # a group without commits, and consume without one: from the start
        seen = 0
        async with us.Consumer(log, topics, group=group, auto_offset_reset=reset) as c:
            if tail:
                for tp in c.assignment():
                    start, end = ranges[tp.partition]
                    c.seek(tp, max(start, end - (10 if limit is None else limit)))
            elif args.offset is not None:
                for tp in c.assignment():
                    c.seek(tp, args.offset)
            ends = {p: ranges[p][1] for p in parts}
            recent = []
            while True:
                got = await c.getmany(timeout_ms=200 if (args.follow and not tail) or
                                      (tail and args.follow and recent is None) else 0)
                if not got:
                    if tail and recent is not None:
                        recent.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
                        keep = recent[-(10 if limit is None else limit):] if (limit or limit is None) else []
                        for r in keep:
                            _print_record(args, args.topic, r, codec)
                        recent = None
                        if not args.follow:
                            return seen
                        continue
                    if args.follow:
                        continue
                    if all(c.position(tp) >= ends[tp.partition] for tp in c.assignment()):
                        return seen
                    continue
                printed = {}
                for tp, recs in got.items():
                    for r in recs:
                        if tail and recent is not None:
                            recent.append(r)
                            continue
                        if limit is not None and seen >= limit and not tail:
                            break
                        _print_record(args, args.topic, r, codec)
                        printed[tp] = r.offset + 1
                        seen += 1
                if group is not None and printed:
                    await c.commit(printed)   # what was printed, not all that was fetched
                if limit is not None and seen >= limit and not tail:
                    return seen

    try:
        _run_on_log(args, run)
    except KeyboardInterrupt:
        return 130
    return 0


# ----------------------------------------------------------------- groups

def _cmd_groups(args) -> int:
    import unstoppable as us
    from unstoppable.storage.groups import OffsetsFile, list_groups
    rows = []
    with _open_log(args) as log:
        ends_cache: dict = {}

        def end_of(topic, p):
            if (topic, p) not in ends_cache:
                try:
                    ends_cache[(topic, p)] = log.topic(topic).partition(p).end_offset
                except Exception:
                    ends_cache[(topic, p)] = None
            return ends_cache[(topic, p)]

        if args.sqlite:
            import sqlite3
            if not os.path.exists(args.sqlite):
                raise CLIError(f"no database at {args.sqlite}")
            db = sqlite3.connect(f"file:{args.sqlite}?mode=ro", uri=True)
            try:
                got = db.execute(f"SELECT grp, topic, part, next_offset FROM {args.table}").fetchall()
            except sqlite3.Error as e:
                raise CLIError(f"{args.sqlite}: cannot read table {args.table!r}: {e}") from None
            finally:
                db.close()
            for g, t, p, off in got:
                if args.group is None or g == args.group:
                    rows.append((g, t, p, off))
        else:
            groups = list_groups(log.path)
            if args.group is not None:
                if args.group not in groups:
                    raise CLIError(f"no group {args.group!r} in {log.path}")
                groups = [args.group]
            for g in groups:
                f = OffsetsFile(log.path, g)
                try:
                    for (t, p), off in sorted(f.load().items()):
                        rows.append((g, t, p, off))
                finally:
                    f.close()
        # Every partition of each topic a group committed on, so partitions it
        # never committed show their whole backlog as lag.
        have = {(g, t, p): off for g, t, p, off in rows}
        for g, t in {(g, t) for g, t, _p, _o in rows}:
            try:
                n = log.topic(t).partitions
            except us.UnknownTopicError:
                continue
            for p in range(n):
                have.setdefault((g, t, p), None)
        out = []
        for (g, t, p), off in sorted(have.items()):
            end = end_of(t, p)
            if end is None:
                lag = None
            else:
                lag = max(end - (log.topic(t).partition(p).start_offset if off is None else off), 0)
            out.append({"group": g, "topic": t, "partition": p, "committed": off,
                        "end_offset": end, "lag": lag})
    if args.json:
        _emit(out)
        return 0
    if not out:
        print("no committed offsets")
        return 0
    wg = max(5, *(len(r["group"]) for r in out))
    wt = max(5, *(len(r["topic"]) for r in out))
    print(f"{'GROUP':<{wg}}  {'TOPIC':<{wt}}  PARTITION     COMMITTED    END OFFSET          LAG")
    for r in out:
        end = "?" if r["end_offset"] is None else f"{r['end_offset']:,}"
        lag = "?" if r["lag"] is None else f"{r['lag']:,}"
        com = "-" if r["committed"] is None else f"{r['committed']:,}"
        print(f"{r['group']:<{wg}}  {r['topic']:<{wt}}  {r['partition']:>9}  {com:>12}  "
              f"{end:>12}  {lag:>11}")
    return 0


# ------------------------------------------------------------------- dump

def _cmd_dump(args) -> int:
    codec = _codec(args.codec) if args.codec else None
    with _open_log(args) as log:
        t = _topic(log, args.topic)
        parts = [args.partition] if args.partition is not None else list(range(t.partitions))
        shown = 0
        for pi in parts:
            part = t.partition(pi)
            off = part.start_offset if args.offset is None else max(args.offset, part.start_offset)
            if off > part.end_offset:
                raise CLIError(f"offset {off} is past the end of {args.topic}/{pi} ({part.end_offset})")
            while off < part.end_offset:
                if args.max_records is not None and shown >= args.max_records:
                    return 0
                batches = part.read_batches(off, 1 << 20)
                if not batches:
                    break
                for b in batches:
                    info = {"partition": pi, "base_offset": b.base_offset, "last_offset": b.last_offset,
                            "records": b.record_count, "bytes": b.length, "crc": f"0x{b.crc:08x}",
                            "magic": b.magic, "attributes": b.attributes,
                            "first_timestamp": b.first_timestamp, "max_timestamp": b.max_timestamp,
                            "producer_id": b.producer_id, "producer_epoch": b.producer_epoch,
                            "base_sequence": b.base_sequence}
                    recs = b.records(off)
                    if args.max_records is not None:
                        recs = recs[:max(args.max_records - shown, 0)]
                    if args.json:
                        info["records_decoded"] = [_record_dict(args.topic, r, codec) for r in recs]
                        _emit(info)
                    else:
                        pid = "" if b.producer_id < 0 else (f" producer={b.producer_id} epoch="
                                                           f"{b.producer_epoch} seq={b.base_sequence}")
                        print(f"batch {pi}/{b.base_offset}..{b.last_offset}  records={b.record_count} "
                              f"bytes={b.length} crc=0x{b.crc:08x} (ok) "
                              f"time={_iso(b.first_timestamp)}{pid}")
                        for r in recs:
                            hs = " ".join(f"{k}={_printable(v)}" for k, v in r.headers)
                            key = _printable(r.key)
                            print(f"  {r.offset}  {_iso(r.timestamp)}  key={key!r}"
                                  f"{'  ' + hs if hs else ''}  {_show_value(codec, r.value, False)}")
                    shown += len(recs)
                    off = b.next_offset
                    if args.max_records is not None and shown >= args.max_records:
                        return 0
    return 0


# ----------------------------------------------------------------- verify

def _cmd_verify(args) -> int:
    with _open_log(args) as log:
        bar = _progress(args, "verify")
        try:
            rep = log.verify(progress=bar)
        finally:
            bar.close()
    if args.json:
        _emit(rep.as_dict())
    else:
        print(f"verified {rep.topics} topics, {rep.partitions} partitions, {rep.segments} segments, "
              f"{rep.batches:,} batches, {rep.records:,} records, {rep.bytes:,} bytes")
        for p in rep.problems:
            print(f"PROBLEM: {p}")
        print("OK: every CRC, offset and index entry checks" if rep.ok
              else f"FAILED: {len(rep.problems)} problems")
    return 0 if rep.ok else 1


# -------------------------------------------------------------------- dlq

def _cmd_dlq(args) -> int:
    from unstoppable.booking import deadletters as dl
    if args.dlq_cmd == "list":
        letters = _run_on_log(args, lambda log: dl.read_dead_letters(log, args.topic))
        if not args.all:
            letters = [d for d in letters if not d.redriven]
        if args.json:
            _emit([{"id": f"{d.partition}/{d.offset}", "origin": f"{d.origin_topic}/"
                    f"{d.origin_partition}/{d.origin_offset}", "error": d.error,
                    "attempts": d.attempts, "timestamp": d.timestamp, "key": _text(d.key),
                    "redriven": d.redriven} for d in letters])
        elif not letters:
            print("no dead letters")
        else:
            print("ID        ORIGIN                          ATTEMPTS  ERROR")
            for d in letters:
                origin = f"{d.origin_topic}/{d.origin_partition}/{d.origin_offset}"
                mark = " (redriven)" if d.redriven else ""
                print(f"{d.partition}/{d.offset:<7} {origin:<32} {d.attempts:>8}  {d.error}{mark}")
        return 0
    if not args.all and not args.ids:
        raise CLIError("dlq redrive needs dead-letter ids (PARTITION/OFFSET, see dlq list) or --all",
                       _EXIT_USAGE)
    which = None
    if not args.all:
        which = []
        for i in args.ids:
            a, sep, b = i.partition("/")
            if not sep or not a.isdigit() or not b.isdigit():
                raise CLIError(f"bad dead-letter id {i!r}: write PARTITION/OFFSET", _EXIT_USAGE)
            which.append((int(a), int(b)))
    try:
        done = _run_on_log(args, lambda log: dl.redrive(log, args.topic, which))
    except KeyError as e:
        raise CLIError(str(e.args[0])) from None
    if args.json:
        _emit([{"id": f"{d.partition}/{d.offset}", "to": f"{d.origin_topic}/{d.origin_partition}/{new}"}
               for d, new in done])
    else:
        for d, new in done:
            print(f"re-drove {d.partition}/{d.offset} to {d.origin_topic}/{d.origin_partition} "
                  f"at offset {new}")
        print(f"{len(done)} dead letters re-driven")
    return 0


# ------------------------------------------------------------------ bench

def _cmd_bench(args) -> int:
    import unstoppable as us
    if args.records < 1 or args.value_bytes < 0 or args.partitions < 1:
        raise CLIError("--records and --partitions must be >= 1, --value-bytes >= 0", _EXIT_USAGE)
    tmp = tempfile.mkdtemp(prefix="unstoppable-bench-", dir=args.dir)
    n, value = args.records, b"x" * args.value_bytes
    result = {"records": n, "value_bytes": args.value_bytes, "partitions": args.partitions,
              "acks": args.acks}
    try:
        log = us.Log(os.path.join(tmp, "log"))
        log.create_topic("bench", partitions=args.partitions)
        bar = _progress(args, "produce", n)

        async def produce():
            async with us.Producer(log, "bench", acks=args.acks, linger_ms=1) as p:
                t0 = time.perf_counter()
                for i in range(n):
                    await p.send(value, key=b"%d" % (i % 1000))
                    if i % 20000 == 0:
                        bar.update(i)
                await p.flush()
                return time.perf_counter() - t0

        async def consume():
            got = 0
            async with us.Consumer(log, "bench") as c:
                t0 = time.perf_counter()
                while got < n:
                    batch = await c.getmany(max_records=10000, timeout_ms=1000)
                    if not batch:
                        break
                    got += sum(len(v) for v in batch.values())
                    bar.update(got)
                return got, time.perf_counter() - t0

        dt = asyncio.run(produce())
        bar.close()
        bar = _progress(args, "consume", n)
        got, dt2 = asyncio.run(consume())
        bar.close()
        log.close()
        if got != n:
            raise CLIError(f"bench read back {got} of {n} records")
        result.update({"produce_s": round(dt, 3), "produce_records_per_s": round(n / dt),
                       "produce_mb_per_s": round(n * args.value_bytes / dt / 1e6, 1),
                       "consume_s": round(dt2, 3), "consume_records_per_s": round(n / dt2),
                       "consume_mb_per_s": round(n * args.value_bytes / dt2 / 1e6, 1)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        _emit(result)
    else:
        print(f"produce: {n:,} records of {args.value_bytes} bytes to {args.partitions} partitions "
              f"(acks={args.acks}) in {result['produce_s']} s: "
              f"{result['produce_records_per_s']:,} records/s, {result['produce_mb_per_s']} MB/s")
        print(f"consume: {n:,} records in {result['consume_s']} s: "
              f"{result['consume_records_per_s']:,} records/s, {result['consume_mb_per_s']} MB/s")
    return 0


# ----------------------------------------------------------------- export

def _bound(s: str, what: str):
    """An export bound: an int offset, or an ISO-8601 time (naive = UTC)."""
    if s is None:
        return None, None
    try:
        return int(s), None
    except ValueError:
        pass
    try:
        t = _dt.datetime.fromisoformat(s)
    except ValueError:
        raise CLIError(f"--{what} {s!r} is neither an offset nor an ISO-8601 time", _EXIT_USAGE) from None
    return None, t


def _csv_ready(pa, batch):
    """CSV has no binary or list columns: keys and values become text
    (UTF-8, invalid bytes escaped), headers a JSON object."""
    cols, names = [], []
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        t = col.type
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            col = pa.array([_printable(v) for v in col.to_pylist()], pa.string())
        elif pa.types.is_list(t) or pa.types.is_struct(t) or pa.types.is_map(t):
            col = pa.array([None if v is None else json.dumps(
                {k: _text(x) for k, x in v} if name == "headers" else v, default=_text)
                for v in col.to_pylist()], pa.string())
        cols.append(col)
        names.append(name)
    return pa.RecordBatch.from_arrays(cols, names=names)


def _cmd_export(args) -> int:
    try:
        import pyarrow as pa
    except ImportError:
        raise CLIError("export needs pyarrow: pip install 'unstoppable[arrow]'") from None
    from unstoppable import arrow as ua
    start, start_time = _bound(args.from_, "from")
    end, end_time = _bound(args.to, "to")
    codec = None
    if args.codec:
        c = _codec(args.codec)
        from unstoppable.codecs import JsonCodec, ProtobufCodec
        if isinstance(c, ProtobufCodec):
            codec = ua.ProtobufCodec(c.message_class)
        elif isinstance(c, JsonCodec):
            raise CLIError("export --codec json needs a schema; use the Python API "
                           "(unstoppable.arrow.JsonCodec)", _EXIT_USAGE)
    parts = None
    if args.partitions:
        try:
            parts = [int(x) for x in args.partitions.split(",")]
        except ValueError:
            raise CLIError(f"--partitions wants numbers separated by commas, got {args.partitions!r}",
                           _EXIT_USAGE) from None
    out = args.out
    with _open_log(args) as log:
        t = _topic(log, args.topic)
        kw = dict(start_time=start_time, end_time=end_time, codec=codec, keep_value=args.keep_value)
        bar = _progress(args, f"export {args.format}")
        rows = 0
        tmp = f"{out}.tmp{os.getpid()}"
        try:
            if args.format == "parquet":
                rows = ua.export_parquet(t, out, start, end, parts, **kw)
            else:
                reader = ua.to_batches(t, start, end, parts, **kw)
                if args.format == "arrow":
                    with pa.OSFile(tmp, "wb") as f, pa.ipc.new_file(f, reader.schema) as w:
                        for b in reader:
                            w.write_batch(b)
                            rows += b.num_rows
                            bar.update(rows)
                else:
                    import pyarrow.csv as pcsv
                    writer = None
                    with open(tmp, "wb") as f:
                        for b in reader:
                            b = _csv_ready(pa, b)
                            if writer is None:
                                writer = pcsv.CSVWriter(f, b.schema)
                            writer.write_batch(b)
                            rows += b.num_rows
                            bar.update(rows)
                        if writer is not None:
                            writer.close()
                        else:
                            f.write(b",".join(f'"{n}"'.encode() for n in reader.schema.names) + b"\n")
                os.replace(tmp, out)
        finally:
            bar.close()
            if os.path.exists(tmp):
                os.unlink(tmp)
    if args.json:
        _emit({"topic": args.topic, "format": args.format, "out": os.path.abspath(out), "rows": rows})
    else:
        print(f"exported {rows:,} records of {args.topic!r} to {out} ({args.format})")
    return 0


# ----------------------------------------------------------------- parser

def _parser() -> argparse.ArgumentParser:
    # The common options work before and after the command name; the
    # subcommands' copies default to SUPPRESS so they never overwrite a value
    # given before the command.
    def common_options(parser, default):
        parser.add_argument("--json", action="store_true", default=default(False),
                            help="print JSON for scripts")
        parser.add_argument("--progress", action="store_true", default=default(False),
                            help="show the progress bar even when stderr is not a terminal")

    common = _Parser(add_help=False)
    common_options(common, lambda v: argparse.SUPPRESS)
    withlog = _Parser(add_help=False, parents=[common])
    withlog.add_argument("--log", metavar="DIR", default=argparse.SUPPRESS,
                         help="the log directory (default: $UNSTOPPABLE_LOG)")

    p = _Parser(prog="unstoppable", description="An embedded, durable, partitioned event log.",
                epilog="Run 'unstoppable COMMAND --help' for a command's options.")
    common_options(p, lambda v: v)
    p.add_argument("--log", metavar="DIR", help="the log directory (default: $UNSTOPPABLE_LOG)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("demo", parents=[common], help="the ticket-booking demo (the main job)",
                       description="A concert hall sells out: users, payments, a consumer group of "
                                   "worker processes (one SIGKILLed), then a rebuild and the invariants.")
    d.add_argument("--dir", help="work in this directory and keep it (default: a temporary one)")
    d.add_argument("--keep", action="store_true",
                   help="keep the temporary directory (and, on JetStream, the run's topics)")
    d.add_argument("--log", metavar="URL", default=argparse.SUPPRESS,
                   help="run on this JetStream cluster, nats://host:port[,host:port...] (default: an "
                        "embedded log in the demo directory); the run's topics are deleted at the end "
                        "unless the directory is kept (--dir or --keep)")
    d.add_argument("--replicas", type=int, help="JetStream: copies of each partition (default 1)")
    d.add_argument("--seats", type=int, default=10_000)
    d.add_argument("--users", type=int, default=100_000)
    d.add_argument("--workers", type=int, default=3, help="booking worker processes")
    d.add_argument("--producers", type=int, default=2, help="user producer processes")
    d.add_argument("--partitions", type=int, default=8)
    d.add_argument("--window", type=float, default=25.0, help="seconds over which users arrive")
    d.add_argument("--ttl-ms", type=int, default=2000, help="how long a hold waits for payment")
    d.add_argument("--poison", type=int, default=6, help="records that must be dead-lettered")
    d.add_argument("--fault-rate", type=float, default=0.001,
                   help="share of records whose first handling attempt fails")
    d.add_argument("--no-kill", dest="kill", action="store_false", help="do not SIGKILL a worker")
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("topics", help="create, list and describe topics")
    tsub = t.add_subparsers(dest="topics_cmd", required=True, metavar="ACTION", parser_class=_Parser)
    tc = tsub.add_parser("create", parents=[withlog], help="create a topic (and the log if needed)")
    tc.add_argument("name")
    tc.add_argument("--partitions", type=int, default=1)
    tc.add_argument("--config", action="append", metavar="KEY=VALUE",
                    help="a topic setting, e.g. retention_bytes=1073741824 (repeatable)")
    tsub.add_parser("list", parents=[withlog], help="list topics")
    td = tsub.add_parser("describe", parents=[withlog], help="settings and offsets of a topic")
    td.add_argument("name")
    t.set_defaults(func=_cmd_topics)

    pr = sub.add_parser("produce", parents=[withlog], help="append records read from stdin")
    pr.add_argument("topic")
    pr.add_argument("--format", choices=("lines", "json"), default="lines",
                    help="lines: each line is a value; json: each line is a JSON document")
    pr.add_argument("--codec", help="encode JSON input: json (default), booking, "
                                    "proto:module:Class, str, bytes")
    pr.add_argument("--key", help="the key of every record")
    pr.add_argument("--key-field", help="(json) take the key from this field")
    pr.add_argument("--key-separator", help="(lines) split KEY<sep>VALUE at the first separator")
    pr.add_argument("--partition", type=int, help="write to this partition")
    pr.add_argument("--acks", choices=("written", "fsync"), default="written")
    pr.set_defaults(func=_cmd_produce)

    for name, helptext in (("consume", "print the records there are (-f: and then new ones; with a "
                                       "group: from its committed offsets)"),
                           ("tail", "the last records of a topic, then (-f) new ones")):
        c = sub.add_parser(name, parents=[withlog], help=helptext)
        c.add_argument("topic")
        c.add_argument("-n", "--max-records", type=int, help="stop after this many (tail: show this many)")
        c.add_argument("-f", "--follow", action="store_true", help="keep waiting for new records")
        c.add_argument("--codec", help="decode values: bytes, str, json, booking, proto:module:Class")
        c.add_argument("--partition", type=int, help="only this partition")
        if name == "consume":
            c.add_argument("--group", help="consume as this group and commit what was printed")
            c.add_argument("--offset", type=int, help="start every partition at this offset")
            c.set_defaults(func=_cmd_consume)
        else:
            c.set_defaults(func=lambda a: _cmd_consume(a, tail=True))

    g = sub.add_parser("groups", parents=[withlog], help="committed offsets and lag per partition")
    g.add_argument("group", nargs="?")
    g.add_argument("--sqlite", metavar="DB", help="read offsets kept by a SQLiteOffsetStore in DB")
    g.add_argument("--table", default="unstoppable_offsets", help="its table (default: %(default)s)")
    g.set_defaults(func=_cmd_groups)

    du = sub.add_parser("dump", parents=[withlog], help="batches, CRCs and decoded records")
    du.add_argument("topic")
    du.add_argument("--partition", type=int)
    du.add_argument("--offset", type=int, help="start at this offset")
    du.add_argument("-n", "--max-records", type=int)
    du.add_argument("--codec", help="decode values: bytes, str, json, booking, proto:module:Class")
    du.set_defaults(func=_cmd_dump)

    v = sub.add_parser("verify", parents=[withlog], help="check every CRC, offset and index entry")
    v.set_defaults(func=_cmd_verify)

    q = sub.add_parser("dlq", help="dead letters: list and re-drive")
    qsub = q.add_subparsers(dest="dlq_cmd", required=True, metavar="ACTION", parser_class=_Parser)
    ql = qsub.add_parser("list", parents=[withlog], help="list dead letters")
    ql.add_argument("--topic", default="booking-dlq", help="the dead-letter topic (default: %(default)s)")
    ql.add_argument("--all", action="store_true", help="include those re-driven already")
    qr = qsub.add_parser("redrive", parents=[withlog],
                         help="append dead letters to their origin partition again")
    qr.add_argument("ids", nargs="*", metavar="ID", help="PARTITION/OFFSET of a dead letter")
    qr.add_argument("--topic", default="booking-dlq", help="the dead-letter topic (default: %(default)s)")
    qr.add_argument("--all", action="store_true", help="re-drive every dead letter not re-driven yet")
    q.set_defaults(func=_cmd_dlq)

    b = sub.add_parser("bench", parents=[common], help="a quick produce and consume throughput run")
    b.add_argument("--records", type=int, default=500_000)
    b.add_argument("--value-bytes", type=int, default=100)
    b.add_argument("--partitions", type=int, default=4)
    b.add_argument("--acks", choices=("written", "fsync"), default="written")
    b.add_argument("--dir", help="make the temporary log under this directory")
    b.set_defaults(func=_cmd_bench)

    e = sub.add_parser("export", parents=[withlog], help="a topic to Parquet, Arrow IPC or CSV")
    e.add_argument("topic")
    e.add_argument("--format", choices=("parquet", "arrow", "csv"), required=True)
    e.add_argument("--out", required=True, metavar="PATH")
    e.add_argument("--from", dest="from_", metavar="OFFSET|TIME",
                   help="first offset (every partition), or an ISO-8601 time")
    e.add_argument("--to", metavar="OFFSET|TIME", help="end offset (exclusive), or an ISO-8601 time")
    e.add_argument("--partitions", help="only these, e.g. 0,2")
    e.add_argument("--codec", help="decode values into columns: booking or proto:module:Class")
    e.add_argument("--keep-value", action="store_true", help="with --codec, keep the raw value column")
    e.set_defaults(func=_cmd_export)
    return p


def main(argv=None) -> int:
    """Run the command line; returns the exit status."""
    import unstoppable as us
    try:
        args = _parser().parse_args(argv)
        return args.func(args)
    except CLIError as e:
        msg, code = str(e), e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (| head): not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (us.UnstoppableError, OSError, ValueError, KeyError, TypeError, ImportError,
            TimeoutError, RuntimeError) as e:
        if os.environ.get("UNSTOPPABLE_DEBUG") == "1":
            raise
        text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        msg, code = text or type(e).__name__, _EXIT_ERROR
    print(f"unstoppable: error: {msg}".splitlines()[0], file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
